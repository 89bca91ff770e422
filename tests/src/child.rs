//! What the helper programs in `src/bin` share: they run as children of a test and must not
//! outlive it.

use std::future::Future;
use std::io::Read;

/// Exits this process when the test that started it goes away (its end of our stdin closes),
/// so that a test that fails or is killed leaves no node running.
pub fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// Runs `f` to completion on a current-thread runtime with I/O and timers.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}
