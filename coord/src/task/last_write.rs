//! The record of a task as this process last wrote it: its next write is tried on it
//! without a read. (Apart from the writes in `store`, which the scheduler's own file uses
//! too, so that no two files import each other.)

use parking_lot::Mutex;

use larder_cache_api::Version;

use super::record::TaskRecord;

/// The record of one task as this process last wrote it, kept while no one else is known to
/// have written it since: the next write of this process is tried on it directly, without a
/// read (the compare-and-swap on its version still decides). Cleared as soon as a conflict
/// or an unknown outcome shows it may be out of date.
#[derive(Debug, Default)]
pub(super) struct LastWrite(Mutex<Option<(TaskRecord, Version)>>);

impl LastWrite {
    pub(super) fn get(&self) -> Option<(TaskRecord, Version)> {
        self.0.lock().clone()
    }
    pub(super) fn set(&self, rec: TaskRecord, version: Version) {
        *self.0.lock() = Some((rec, version));
    }
    pub(super) fn clear(&self) {
        *self.0.lock() = None;
    }
}
