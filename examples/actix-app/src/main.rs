//! `larder-actix-app`: the larder example actix-web app.
//!
//! Settings from the environment:
//!
//! * `DATABASE_URL`: `postgres://…` or `sqlite://path` (default `sqlite://larder-actix.db`);
//! * `LISTEN`: the address to serve on (default `127.0.0.1:8080`);
//! * `SESSION_KEY`: at least 64 bytes of secret, as hex, sealing the session cookie; every
//!   instance and every restart must use the same one. Without it a random key is drawn, and
//!   sessions do not outlive the process (their cookies can no longer be opened).
//! * `COOKIE_SECURE=0` for plain-HTTP development (the cookie is `Secure` by default).

use std::net::TcpListener;
use std::process::ExitCode;

use actix_web::cookie::Key;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn key_from_env() -> Result<Key, String> {
    let Ok(hex) = std::env::var("SESSION_KEY") else {
        tracing::warn!("SESSION_KEY is not set: a random key, sessions end with the process");
        return Ok(Key::generate());
    };
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|b| b.len() >= 64)
        .ok_or("SESSION_KEY must be at least 64 bytes written as hex")?;
    Ok(Key::from(&bytes))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let run = || -> Result<(), String> {
        let url = env_or("DATABASE_URL", "sqlite://larder-actix.db");
        let listen = env_or("LISTEN", "127.0.0.1:8080");
        let secure = env_or("COOKIE_SECURE", "1") != "0";
        let key = key_from_env()?;
        let listener = TcpListener::bind(&listen).map_err(|e| format!("{listen}: {e}"))?;
        actix_web::rt::System::new().block_on(async move {
            let store = larder_actix_app::store(&url)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("larder-actix-app listening on http://{listen}");
            larder_actix_app::server(store, key, secure, listener, 2)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        })
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("larder-actix-app: {e}");
            ExitCode::FAILURE
        }
    }
}
