//! Holding a lease in the background, for singleton work.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::lease::Lease;
use crate::random::random_u64;

/// A term of leadership.
#[derive(Debug, Clone)]
pub struct Term {
    /// The fencing token of this term: pass it to fenced writes.
    pub token: u64,
    /// When the term began (wall clock, for display).
    pub since: SystemTime,
    /// Cancelled the moment this process stops being the holder (a renewal failed, timed
    /// out or lost). Work guarded by the lease must watch it.
    pub cancel: CancellationToken,
}

/// This process's role for one lease.
#[derive(Debug, Clone)]
pub enum Role {
    /// Someone else holds the lease, or nobody does and this process has not won it yet.
    Follower,
    /// This process holds the lease.
    Leader(Term),
}

impl Role {
    /// The term, if leader.
    pub fn term(&self) -> Option<&Term> {
        match self {
            Role::Leader(t) => Some(t),
            Role::Follower => None,
        }
    }
}

/// Runs for the lease in the background: acquires it when free, renews it every retry
/// period, and steps down **at once** (cancelling the term) when a renewal fails, conflicts
/// or does not finish before the lease could lapse. The store it runs on was checked, with
/// the lease's [`Durability`](crate::Durability), when the [`Lease`] was made.
///
/// A follower looks at the lease about once per renew deadline (plus up to 10 % jitter), not
/// every retry period, and exactly when the record it saw would have been unchanged for a
/// whole lease: so the store sees one read per follower per renew deadline, and a holder
/// that dies is replaced within `lease + renew_deadline` (+ jitter) of its last renewal
/// (`tests/tests/coord_faults.rs` measures it with SIGKILL).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_cache_api::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use larder_coord::{Durability, Elector, HolderId, Lease, LeaseConfig};
/// # let backend: larder_cache_api::DynBackend = Arc::new(larder_backend_memory::MemoryBackend::default());
/// // (The memory backend keeps nothing past this process: say that this is fine.)
/// let cfg = LeaseConfig::new(Duration::from_secs(3), Duration::from_secs(2), Duration::from_millis(500))?
///     .with_durability(Durability::AcceptLoss);
/// let lease = Arc::new(Lease::new(backend, "reports", HolderId::generate(), cfg)?);
/// let mut elector = Elector::spawn(lease);
/// let term = elector.leader().await;
/// assert!(term.token >= 1);
/// elector.stop().await; // releases the lease
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Elector {
    rx: watch::Receiver<Role>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Elector {
    /// Starts running for `lease` on the current tokio runtime.
    pub fn spawn(lease: Arc<Lease>) -> Self {
        let (tx, rx) = watch::channel(Role::Follower);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(lease, tx, stop.clone()));
        Elector { rx, stop, task }
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.rx.borrow().clone()
    }

    /// Waits until this process is the leader and returns the term.
    pub async fn leader(&mut self) -> Term {
        loop {
            if let Role::Leader(t) = &*self.rx.borrow_and_update() {
                return t.clone();
            }
            if self.rx.changed().await.is_err() {
                // The loop ended; wait forever rather than claim leadership.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A receiver of role changes.
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.rx.clone()
    }

    /// Stops running; a held lease is released (and its term cancelled) first.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// `d` plus up to a tenth of it, so candidates do not look in lockstep.
fn jittered(d: Duration) -> Duration {
    let extra = d.as_millis() as u64 / 10;
    d + Duration::from_millis(if extra == 0 { 0 } else { random_u64() % extra })
}

/// The pause of a follower before its next look at the lease: about a renew deadline, or
/// until the record it saw would have been unchanged for a whole lease, if sooner (a small
/// margin after it, so that the look decides).
fn follower_pause(lease: &Lease, failed: bool) -> Duration {
    let config = lease.config();
    if failed {
        return jittered(config.retry_period);
    }
    let check = jittered(config.renew_deadline);
    match lease.takeover_in() {
        Some(left) if !left.is_zero() => check.min(left + Duration::from_millis(5)),
        _ => check,
    }
}

async fn run(lease: Arc<Lease>, tx: watch::Sender<Role>, stop: CancellationToken) {
    let retry = lease.config().retry_period;
    let mut held = None;
    let mut cancel = CancellationToken::new();
    // The first look at the lease is at once (after a short jitter).
    let mut follower_wait = Some(jittered(Duration::from_millis(10)));
    loop {
        let pause = if held.is_some() {
            retry
        } else {
            follower_wait
                .take()
                .unwrap_or_else(|| follower_pause(&lease, false))
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        match held.take() {
            None => match lease.try_acquire().await {
                Ok(Some(h)) => {
                    cancel = CancellationToken::new();
                    tracing::info!(lease = lease.name(), token = h.token, "lease acquired");
                    tx.send_replace(Role::Leader(Term {
                        token: h.token,
                        since: SystemTime::now(),
                        cancel: cancel.clone(),
                    }));
                    held = Some(h);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(lease = lease.name(), error = %e, "lease acquisition failed");
                    follower_wait = Some(follower_pause(&lease, true));
                }
            },
            Some(mut h) => {
                let deadline = tokio::time::Instant::from_std(h.valid_until);
                match tokio::time::timeout_at(deadline, lease.renew(&mut h)).await {
                    Ok(Ok(())) => held = Some(h),
                    outcome => {
                        let why = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => "renewal did not finish before the lease could lapse".into(),
                        };
                        tracing::warn!(lease = lease.name(), token = h.token, %why, "stepping down");
                        cancel.cancel();
                        tx.send_replace(Role::Follower);
                        // Still named in the record: take it back as soon as a renewal
                        // would have come, if no one else has.
                        follower_wait = Some(jittered(retry));
                    }
                }
            }
        }
    }
    cancel.cancel();
    if let Some(h) = held {
        if let Err(e) = lease.release(h).await {
            tracing::warn!(lease = lease.name(), error = %e, "lease release failed");
        }
    }
    tx.send_replace(Role::Follower);
}
