//! The run loops: a claimed run beside its heartbeats, and the loop of each task of a
//! spawned scheduler (when to wake, jitter, runs beside the loop).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::last_write::LastWrite;
use super::record::MAX_WAITING_REQUESTS;
use super::spec::{Claim, RunContext, TaskSpec};
use super::store::lost_races;
use super::{Scheduler, Step};
use crate::random::random_u64;
use larder_cache_api::Result;

/// The heartbeat in flight, if any, with when it started; pending forever without one.
async fn in_flight<F: Future + Unpin>(
    pending: &mut Option<(tokio::time::Instant, F)>,
) -> (tokio::time::Instant, F::Output) {
    match pending {
        Some((started, f)) => (*started, f.await),
        None => std::future::pending().await,
    }
}

/// When a task loop wakes next: the wall-clock time of its next claim attempt, or a monotonic
/// instant (a run to look at again, a failed attempt to retry), whichever comes first.
#[derive(Debug, Clone, Copy, Default)]
struct Wake {
    at_ms: Option<i64>,
    watch: Option<Instant>,
    /// A due period waits for runs in progress: try again when one of ours ends.
    blocked: bool,
}

/// Marks a run as going on in this process while it lives.
struct RunHere<'a> {
    here: &'a Mutex<HashSet<(String, u64)>>,
    id: (String, u64),
}

impl Drop for RunHere<'_> {
    fn drop(&mut self) {
        self.here.lock().remove(&self.id);
    }
}

impl Scheduler {
    /// [`tick`](Scheduler::tick), with runs cancelled when `stop` is.
    pub(super) async fn tick_until(&self, stop: &CancellationToken) -> Result<Vec<Claim>> {
        let mut done = Vec::new();
        for task in &self.tasks {
            let last = LastWrite::default();
            // The misfire policy may leave several due periods, and run-now requests may be
            // waiting: claim them one by one.
            let most = task.misfire.claims_per_pass() as usize + MAX_WAITING_REQUESTS;
            for _ in 0..most {
                let Some((claim, claimed_at)) = self.step(task, &last).await?.claim else {
                    break;
                };
                let ended = self
                    .run(task, &claim, claimed_at, stop.child_token(), &last)
                    .await?;
                done.push(claim);
                if !ended {
                    // Lost (taken over, or its heartbeats failed): claim no more here.
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Runs a claimed period: heartbeats every retry period, concurrently with the job; stops
    /// the job (cancels it) as soon as the run may be lost; records its end. `false`: the
    /// run was lost (stopped, or found taken over).
    async fn run(
        &self,
        task: &TaskSpec,
        claim: &Claim,
        claimed_at: tokio::time::Instant,
        cancel: CancellationToken,
        last: &LastWrite,
    ) -> Result<bool> {
        let id = (claim.task.clone(), claim.token);
        self.here.lock().insert(id.clone());
        let _here = RunHere {
            here: &self.here,
            id,
        };
        let ctx = RunContext {
            task: claim.task.clone(),
            period: claim.period,
            token: claim.token,
            trigger: claim.trigger.clone(),
            cancel: cancel.clone(),
        };
        let timing = self.config.lease;
        let mut job = (task.job)(ctx);
        let mut beat =
            tokio::time::interval_at(claimed_at + timing.retry_period, timing.retry_period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the last write that proved the run alive began (the claim, then each heartbeat
        // that succeeded): nobody takes the run over within a lease of it.
        let mut proven = claimed_at;
        let mut pending = None;
        let outcome = loop {
            let lost_at = proven + timing.renew_deadline;
            let beat_due = pending.is_none();
            tokio::select! {
                out = &mut job => break out,
                _ = beat.tick(), if beat_due => {
                    pending = Some((tokio::time::Instant::now(), Box::pin(self.beat(claim, last))));
                }
                (started, res) = in_flight(&mut pending) => {
                    pending = None;
                    match res {
                        Ok(true) => proven = proven.max(started),
                        Ok(false) => {
                            // Someone else owns this run now: stop ours at once.
                            tracing::warn!(task = %claim.task, period = claim.period, token = claim.token,
                                "run taken over by another process; cancelling it");
                            cancel.cancel();
                            return Ok(false);
                        }
                        Err(e) => tracing::warn!(task = %claim.task, error = %e, "heartbeat failed"),
                    }
                }
                _ = tokio::time::sleep_until(lost_at) => {
                    // No heartbeat for the renew deadline: others may take the run over a
                    // lease after the last one. Stop now, and record nothing.
                    tracing::warn!(task = %claim.task, period = claim.period, token = claim.token,
                        "no heartbeat succeeded within the renew deadline; cancelling the run");
                    cancel.cancel();
                    drop(pending);
                    // The job may return by itself until halfway to the moment others may
                    // take over; then it is dropped, with half the margin still to spare.
                    let deadline = lost_at + (timing.lease - timing.renew_deadline) / 2;
                    if tokio::time::timeout_at(deadline, &mut job).await.is_err() {
                        tracing::warn!(task = %claim.task, period = claim.period,
                            "the cancelled run did not return before it could be taken over; dropped");
                    }
                    return Ok(false);
                }
            }
        };
        // A heartbeat still in flight is abandoned: the end is recorded by compare-and-swap.
        drop(pending);
        if let Err(e) = &outcome {
            tracing::warn!(task = %claim.task, period = claim.period, error = %e, "task run failed");
        }
        // A job that returns once its run was cancelled (the scheduler stopping) is
        // recorded as cancelled in the history.
        self.finish_retrying(claim, outcome, cancel.is_cancelled(), last)
            .await
    }

    /// [`finish`](Scheduler::finish), retried with backoff until the end is recorded (`true`),
    /// the run is found taken over (`false`), or a lease has passed (the last error).
    async fn finish_retrying(
        &self,
        claim: &Claim,
        outcome: std::result::Result<(), String>,
        cancelled: bool,
        last: &LastWrite,
    ) -> Result<bool> {
        let timing = self.config.lease;
        let mut tries =
            larder_cache_api::retry::Backoff::new(Duration::from_millis(10), timing.retry_period)
                .deadline(timing.lease);
        let mut failure = None;
        while tries.next_attempt().await {
            match self
                .record_end(claim, outcome.clone(), cancelled, last)
                .await
            {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    tracing::warn!(task = %claim.task, period = claim.period, token = claim.token,
                        "run taken over before its end was recorded");
                    return Ok(false);
                }
                Err(e) => {
                    tracing::warn!(task = %claim.task, period = claim.period, attempt = tries.attempts(),
                        error = %e, "recording the end of a run failed; retrying");
                    failure = Some(e);
                }
            }
        }
        Err(failure.unwrap_or_else(|| lost_races(&claim.task, "recording the end of a run")))
    }

    /// Reads the deployment's run-now doorbell every
    /// [`request_check`](crate::SchedulerConfig::request_check) and rings `bells` (one per
    /// task loop) when it changed (and at the first read: a request made before it).
    pub(super) async fn doorbell(
        self: Arc<Self>,
        bells: Vec<Arc<tokio::sync::Notify>>,
        stop: CancellationToken,
    ) {
        let Some(every) = self.config.request_check else {
            return;
        };
        let key = match super::admin::doorbell_key() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "no run-now doorbell");
                return;
            }
        };
        let mut seen = None;
        loop {
            match self.cache.get::<u64>(&key).await {
                Ok(now) => {
                    let now = now.unwrap_or(0);
                    if seen != Some(now) {
                        seen = Some(now);
                        for bell in &bells {
                            bell.notify_one();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the run-now doorbell failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// The loop of the task at `index`; `bell` rings when run-now requests may be waiting.
    pub(super) async fn task_loop(
        self: Arc<Self>,
        index: usize,
        bell: Arc<tokio::sync::Notify>,
        stop: CancellationToken,
    ) {
        let task = &self.tasks[index];
        let last = Arc::new(LastWrite::default());
        let mut runs = tokio::task::JoinSet::new();
        let mut wake = Wake::default();
        let mut attempt_now = true;
        loop {
            if !attempt_now {
                tokio::select! {
                    // A stopped scheduler claims nothing more, whatever else is ready.
                    biased;
                    _ = stop.cancelled() => break,
                    _ = self.until(wake) => {}
                    _ = bell.notified() => {}
                    ended = runs.join_next(), if !runs.is_empty() => {
                        if let Some(Err(e)) = ended {
                            tracing::warn!(task = %task.name, error = %e, "a run panicked");
                        }
                        // A due period that waited for this run may be claimed now.
                        if !wake.blocked {
                            continue;
                        }
                    }
                }
            }
            attempt_now = false;
            wake = match self.claim_due(index, &last, &mut runs, &stop).await {
                Ok(step) => self.next_wake(task, &step, last.get().is_some()),
                Err(e) => {
                    tracing::warn!(task = %task.name, error = %e, "claim attempt failed; retrying");
                    Wake {
                        watch: Some(Instant::now() + self.config.poll),
                        ..Wake::default()
                    }
                }
            };
        }
        while runs.join_next().await.is_some() {}
    }

    /// Claims what is due for the task at `index` and starts each run beside the loop; the
    /// last step (the one that claimed nothing).
    async fn claim_due(
        self: &Arc<Self>,
        index: usize,
        last: &Arc<LastWrite>,
        runs: &mut tokio::task::JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<Step> {
        let task = &self.tasks[index];
        loop {
            let mut step = self.step(task, last).await?;
            let Some((claim, claimed_at)) = step.claim.take() else {
                return Ok(step);
            };
            let (me, last, cancel) = (self.clone(), last.clone(), stop.child_token());
            runs.spawn(async move {
                let task = &me.tasks[index];
                if let Err(e) = me.run(task, &claim, claimed_at, cancel, &last).await {
                    tracing::warn!(task = %claim.task, period = claim.period, error = %e,
                        "the end of a run could not be recorded");
                }
            });
        }
    }

    /// When the loop of `task` wakes after `step`: at the start of the next period plus
    /// jitter, or sooner to look again at a run in progress. The last writer of the record
    /// (`wrote_last`: normally the process that ran the last period) goes first, without
    /// jitter: its compare-and-swap needs no read and, made before the others look, wins,
    /// so they find the period claimed with one read each and no failed write.
    fn next_wake(&self, task: &TaskSpec, step: &Step, wrote_last: bool) -> Wake {
        let now = self.clock.now_ms();
        let at_ms = task
            .schedule
            .period_at(now)
            .and_then(|p| task.schedule.next(p))
            .map(|start| {
                let jitter = if wrote_last {
                    0
                } else {
                    self.jitter_ms(task, start)
                };
                start.saturating_add(jitter)
            });
        Wake {
            at_ms,
            watch: step.watch,
            blocked: step.blocked,
        }
    }

    /// A random delay for the claim of the period starting at `start`, between half of the
    /// jitter and all of it ([`jitter`](SchedulerConfig::jitter), at most a tenth of the
    /// period): the first half is left to the last writer, which goes at once.
    fn jitter_ms(&self, task: &TaskSpec, start: i64) -> i64 {
        let period = task
            .schedule
            .next(start)
            .map_or(0, |n| n.saturating_sub(start));
        let cap = (self.config.jitter.as_millis() as i64).min(period / 10);
        if cap <= 0 {
            return 0;
        }
        let half = cap / 2;
        half + (random_u64() % ((cap - half) as u64 + 1)) as i64
    }

    /// Waits until `wake`: the wall clock reaching its time, or the monotonic instant,
    /// whichever comes first (neither: forever).
    async fn until(&self, wake: Wake) {
        let clock = async {
            match wake.at_ms {
                Some(ms) => self.clock.sleep_until(ms).await,
                None => std::future::pending().await,
            }
        };
        let watch = async {
            match wake.watch {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = clock => {}
            _ = watch => {}
        }
    }
}
