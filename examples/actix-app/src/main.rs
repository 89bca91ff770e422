//! `larder-actix-app`: the larder example actix-web app. `larder-actix-app --help` lists the
//! settings, each a flag or an environment variable:
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
use clap::Parser;

/// An example actix-web app whose sessions live in larder (SQL behind a write-through
/// cache).
// Values from the environment are never shown by --help: a URL or a key may be a secret.
#[derive(Debug, Parser)]
#[command(name = "larder-actix-app", version, about)]
struct Config {
    /// The session database: `postgres://user@host/db` or `sqlite://path`.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://larder-actix.db",
        value_name = "URL"
    )]
    database_url: String,
    /// The address to serve on.
    #[arg(
        long,
        env = "LISTEN",
        hide_env_values = true,
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    listen: String,
    /// At least 64 bytes of secret, as hex, sealing the session cookie; the same for every
    /// instance and restart. Without it a random key is drawn, and sessions end with the
    /// process. Prefer the environment variable: flags show in process lists.
    #[arg(long, env = "SESSION_KEY", hide_env_values = true, value_name = "HEX")]
    session_key: Option<String>,
    /// `0` for plain-HTTP development (the cookie is `Secure` otherwise).
    #[arg(
        long,
        env = "COOKIE_SECURE",
        hide_env_values = true,
        default_value = "1",
        value_name = "0|1"
    )]
    cookie_secure: String,
}

fn key_from_hex(hex: Option<&str>) -> Result<Key, String> {
    let Some(hex) = hex else {
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
    // --help, --version and usage errors: clap prints them and exits before anything starts.
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let run = || -> Result<(), String> {
        let Config {
            database_url: url,
            listen,
            session_key,
            cookie_secure,
        } = config;
        let secure = cookie_secure != "0";
        let key = key_from_hex(session_key.as_deref())?;
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
