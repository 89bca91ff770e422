//! `larder-webapp`: the larder example web app. `larder-webapp --help` lists the flags.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let config = larder_webapp::Config::parse();
    match larder_webapp::serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("larder-webapp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
