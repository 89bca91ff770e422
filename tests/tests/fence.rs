//! Fenced writes on PostgreSQL and SQLite: a stale token's effect never commits.
#![allow(clippy::unwrap_used)]

use larder_backend_sql::{Dialect, SqlKv};
use sqlx::{ColumnIndex, Decode, Encode, Executor, Type};

async fn stale_tokens_are_refused_and_their_effect_rolled_back<DB>(kv: SqlKv<DB>)
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    sqlx::query("CREATE TABLE report (token BIGINT, note TEXT)")
        .execute(kv.pool())
        .await
        .unwrap();
    let fence = kv.fence("report");
    assert_eq!(fence.current().await.unwrap(), None);
    let write = |token: u64, note: &'static str| {
        let fence = fence.clone();
        async move {
            fence
                .run(token, move |tx| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO report (token, note) VALUES ($1, $2)")
                            .bind(token as i64)
                            .bind(note)
                            .execute(&mut **tx)
                            .await
                            .unwrap();
                        Ok(())
                    })
                })
                .await
                .unwrap()
        }
    };
    assert!(write(5, "holder five").await.is_some());
    assert!(
        write(5, "five again").await.is_some(),
        "the same holder may write again"
    );
    assert!(
        write(3, "paused old holder").await.is_none(),
        "an older token is refused"
    );
    assert!(write(7, "successor").await.is_some());
    assert!(write(6, "late").await.is_none());
    assert_eq!(fence.current().await.unwrap(), Some(7));
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT token, note FROM report ORDER BY token")
        .fetch_all(kv.pool())
        .await
        .unwrap();
    let tokens: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(tokens, vec![5, 5, 7], "refused effects were rolled back");
    assert!(
        kv.fence("other").current().await.unwrap().is_none(),
        "fences are per resource"
    );
}

mod postgres {
    #[tokio::test]
    async fn stale_tokens_are_refused_and_their_effect_rolled_back() {
        let (kv, _schema) = larder_tests::db::pg_kv().await;
        super::stale_tokens_are_refused_and_their_effect_rolled_back(kv).await;
    }
}

mod sqlite {
    #[tokio::test]
    async fn stale_tokens_are_refused_and_their_effect_rolled_back() {
        let (kv, _dir) = larder_tests::db::sqlite_kv().await;
        super::stale_tokens_are_refused_and_their_effect_rolled_back(kv).await;
    }
}
