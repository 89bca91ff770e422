//! `larder`: the operator command line (feature `cli`). See [`larder::cli`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // --help, --version and usage errors: clap prints them (usage errors exit with 2).
    let cli = match larder::cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match larder::cli::execute(cli).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("larder: error: {}", larder::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
