//! Waiting for something that happens in another task, process or server: one poll loop
//! for every test, async ([`eventually`]) and blocking ([`wait_until`]).
//!
//! Both look first, give up once `limit` has passed, and sleep between looks: 50 ms, or the
//! pace [`Patience::every`] sets where a test needs its own.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How long to wait, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    limit: Duration,
    every: Duration,
}

impl Patience {
    /// Looks every 50 ms for up to `limit`.
    pub const fn new(limit: Duration) -> Self {
        Patience {
            limit,
            every: Duration::from_millis(50),
        }
    }

    /// The same limit, looking every `every` instead.
    pub const fn every(self, every: Duration) -> Self {
        Patience { every, ..self }
    }
}

impl From<Duration> for Patience {
    fn from(limit: Duration) -> Self {
        Patience::new(limit)
    }
}

/// What one look found: done (with a value), or not yet (perhaps with the reason).
pub trait Ready {
    /// What the wait returns once done.
    type Value;
    /// `Ok` when done; `Err` with what to report if this was the last look.
    fn ready(self) -> Result<Self::Value, Option<String>>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Ready for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

fn give_up(limit: Duration, what: &dyn Display, last: Option<String>) -> ! {
    match last {
        Some(e) => panic!("timed out after {limit:?} waiting until {what}: {e}"),
        None => panic!("timed out after {limit:?} waiting until {what}"),
    }
}

/// Calls `f` until it is ready (`true`, `Some`, `Ok`) and returns its value; panics naming
/// `what` (and the last error) once `limit` has passed without that.
pub async fn eventually<R: Ready>(
    limit: impl Into<Patience>,
    what: impl Display,
    mut f: impl AsyncFnMut() -> R,
) -> R::Value {
    let Patience { limit, every } = limit.into();
    let deadline = Instant::now() + limit;
    loop {
        match f().await.ready() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => give_up(limit, &what, last),
            // A pace of zero looks again at once (a loop whose every look does I/O).
            Err(_) if every.is_zero() => tokio::task::yield_now().await,
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// [`eventually`] for code outside a runtime: blocks the thread between looks.
pub fn wait_until<R: Ready>(
    limit: impl Into<Patience>,
    what: impl Display,
    mut ok: impl FnMut() -> R,
) -> R::Value {
    let Patience { limit, every } = limit.into();
    let deadline = Instant::now() + limit;
    loop {
        match ok().ready() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => give_up(limit, &what, last),
            Err(_) if every.is_zero() => {}
            Err(_) => std::thread::sleep(every),
        }
    }
}
