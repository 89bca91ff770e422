//! A task's run history: a record of its own beside the task's (so the task's record keeps
//! the layout earlier versions read), appended to after the write that ends a run (its
//! finish, or the claim that takes it over or records it abandoned), by compare-and-swap on
//! this process's last write of it when it has one (no read).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use larder_cache_api::{Cache, ErrorKind, Key, Result, Version};

use super::record::{append_history, HistoryEntry, DEFAULT_HISTORY};
use super::Scheduler;

/// The key of a task's history (not under `larder:task:`, where a task named `x:y` could
/// have it as its record's key).
pub(super) fn key(name: &str) -> Result<Key> {
    Key::new(format!("larder:task-history:{name}"))
}

/// The history of each task as this process last wrote it.
#[derive(Debug, Default)]
pub(super) struct LastHistory(Mutex<HashMap<String, (Vec<HistoryEntry>, Version)>>);

/// The stored history of task `name`, oldest first.
pub(super) async fn read(cache: &Cache, name: &str) -> Result<Vec<HistoryEntry>> {
    Ok(cache
        .get::<Vec<HistoryEntry>>(&key(name)?)
        .await?
        .unwrap_or_default())
}

impl Scheduler {
    /// Adds `entries` to the history of task `name`: one compare-and-swap, on this process's
    /// last write of it if it has one (else after a read), retried on conflict. A failure is
    /// logged, not returned: the run itself is recorded in the task's record already.
    pub(super) async fn add_history(&self, name: &str, entries: Vec<HistoryEntry>) {
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.try_add_history(name, &entries).await {
            tracing::warn!(task = %name, error = %e, "recording the run history failed");
        }
    }

    async fn try_add_history(&self, name: &str, entries: &[HistoryEntry]) -> Result<()> {
        let key = key(name)?;
        let bound = self
            .tasks
            .iter()
            .find(|t| t.name == name)
            .map_or(DEFAULT_HISTORY, |t| t.history);
        let mut tries = larder_cache_api::retry::Backoff::new(
            Duration::from_micros(500),
            Duration::from_millis(50),
        )
        .max_attempts(16);
        while tries.next_attempt().await {
            let known = self.history.0.lock().get(name).cloned();
            let (mut list, version) = match known {
                Some((list, v)) => (list, Some(v)),
                None => match self.cache.get_versioned::<Vec<HistoryEntry>>(&key).await? {
                    Some((list, v)) => (list, Some(v)),
                    None => (Vec::new(), None),
                },
            };
            append_history(&mut list, entries, bound);
            let res = match version {
                None => self.cache.create(&key, &list, None).await,
                Some(v) => self.cache.replace(&key, &list, None, v).await,
            };
            match res {
                Ok(v) => {
                    self.history.0.lock().insert(name.to_owned(), (list, v));
                    return Ok(());
                }
                Err(e) => {
                    self.history.0.lock().remove(name);
                    if e.kind() != ErrorKind::Conflict {
                        return Err(e);
                    }
                }
            }
        }
        Err(super::store::lost_races(name, "recording the run history"))
    }
}
