//! A second process for the sled tests, which need one to hold a database directory or to
//! die mid-flight. Not a user tool.
//!
//! * `sled_child hold <dir>`: opens `<dir>`, writes `child:hold`, prints `ready`, and keeps
//!   the database open until its stdin closes.
//! * `sled_child write <dir> <n>`: opens `<dir>` with a flush after every write, writes
//!   `child:0` .. `child:<n-1>`, prints `done`, and waits to be killed (or for stdin to
//!   close).

use std::io::{BufRead, Write};
use std::process::ExitCode;

use larder_backend_sled::{Flush, SledBackend, SledConfig};
use larder_cache_api::{Bytes, CacheBackend, Key, PutMode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("runtime: {e}")),
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("sled_child: {msg}");
    ExitCode::FAILURE
}

async fn run(args: &[String]) -> Result<(), String> {
    let (mode, dir) = match args {
        [mode, dir, ..] => (mode.as_str(), dir),
        _ => return Err("usage: sled_child hold|write <dir> [n]".into()),
    };
    let mut config = SledConfig::new(dir).with_sweep_interval(None);
    if mode == "write" {
        config = config.with_flush(Flush::EveryWrite);
    }
    let backend = SledBackend::new(config).await.map_err(|e| e.to_string())?;
    let put = |k: String, v: String| {
        let backend = &backend;
        async move {
            let key = Key::new(k).map_err(|e| e.to_string())?;
            backend
                .put(&key, Bytes::from(v), None, PutMode::Overwrite)
                .await
                .map_err(|e| e.to_string())
        }
    };
    match mode {
        "hold" => {
            put("child:hold".into(), "held".into()).await?;
            say("ready")?;
        }
        "write" => {
            let n: usize = args
                .get(2)
                .and_then(|n| n.parse().ok())
                .ok_or("write needs a count")?;
            for i in 0..n {
                put(format!("child:{i}"), i.to_string()).await?;
            }
            say("done")?;
        }
        other => return Err(format!("unknown mode {other:?}")),
    }
    // Wait for the parent: it closes our stdin (or kills us).
    let mut line = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?
        > 0
    {
        line.clear();
    }
    drop(backend);
    Ok(())
}

fn say(what: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{what}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
}
