use std::sync::Arc;
use std::time::{Duration, Instant};

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let url = "postgres://postgres@127.0.0.1:5432/postgres";
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .test_before_acquire(false)
        .connect(url)
        .await
        .unwrap();
    let held: Arc<std::sync::Mutex<Vec<sqlx::pool::PoolConnection<sqlx::Postgres>>>> =
        Arc::default();
    for round in 0..4 {
        for mode in 0..2 {
            let dur = Duration::from_secs(2);
            let (t, c) = (Instant::now(), cpu());
            let mut tasks = Vec::new();
            for _ in 0..10 {
                let pool = pool.clone();
                let held = held.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    let end = Instant::now() + dur;
                    while Instant::now() < end {
                        if mode == 0 {
                            let _: (i64,) = sqlx::query_as("SELECT $1::int8")
                                .bind(1i64)
                                .fetch_one(&pool)
                                .await
                                .unwrap();
                        } else {
                            let got = held.lock().unwrap().pop();
                            let mut conn = match got {
                                Some(c) => c,
                                None => pool.acquire().await.unwrap(),
                            };
                            let _: (i64,) = sqlx::query_as("SELECT $1::int8")
                                .bind(1i64)
                                .fetch_one(&mut *conn)
                                .await
                                .unwrap();
                            held.lock().unwrap().push(conn);
                        }
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            let el = t.elapsed().as_secs_f64();
            println!(
                "round {round} mode {}: {:.0} stmt/s, {:.1} µs app cpu/stmt",
                if mode == 0 { "pool" } else { "held" },
                total as f64 / el,
                (cpu() - c) * 1e6 / total as f64
            );
            held.lock().unwrap().clear();
        }
    }
}
