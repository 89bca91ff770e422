//! In-process single flight: one computation per key at a time; the others wait for it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{Error, Key};

/// What the leader shares: the sealed value, or its error.
pub(crate) type Shared = Result<Bytes, Arc<Error>>;

type Slot = watch::Receiver<Option<Shared>>;

#[derive(Debug, Default)]
pub(crate) struct SingleFlight {
    inflight: Mutex<HashMap<Key, Slot>>,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Follower(Slot),
}

/// Held by the one caller that computes. Dropping it without [`Leader::finish`] (the caller
/// was cancelled) closes the channel and the followers try again.
pub(crate) struct Leader<'a> {
    flights: &'a SingleFlight,
    key: Key,
    tx: watch::Sender<Option<Shared>>,
}

impl SingleFlight {
    pub(crate) fn join(&self, key: &Key) -> Role<'_> {
        let mut map = self.inflight.lock();
        if let Some(rx) = map.get(key) {
            if rx.has_changed().is_ok() {
                return Role::Follower(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Role::Leader(Leader {
            flights: self,
            key: key.clone(),
            tx,
        })
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight.lock().len()
    }
}

impl Leader<'_> {
    pub(crate) fn finish(self, result: Shared) {
        self.tx.send_replace(Some(result));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.inflight.lock();
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

/// Waits for the leader. `None`: it went away without a result; try again.
pub(crate) async fn follow(mut rx: Slot) -> Option<Shared> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

/// A copy of a shared error for one follower, the original kept as source.
pub(crate) fn share(err: &Arc<Error>) -> Error {
    Error::new(err.kind(), err.message().to_owned()).with_source(Arc::clone(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelled_leader_lets_a_follower_take_over() {
        let sf = SingleFlight::default();
        let key = Key::new("k").unwrap();
        let Role::Leader(leader) = sf.join(&key) else {
            panic!("first caller must lead")
        };
        let Role::Follower(rx) = sf.join(&key) else {
            panic!("second caller must follow")
        };
        drop(leader);
        assert!(follow(rx).await.is_none());
        assert_eq!(sf.len(), 0);
        let Role::Leader(l2) = sf.join(&key) else {
            panic!("after a cancelled leader the next caller leads")
        };
        let Role::Follower(rx) = sf.join(&key) else {
            panic!("follower")
        };
        l2.finish(Ok(Bytes::from_static(b"v")));
        assert_eq!(follow(rx).await.unwrap().unwrap(), Bytes::from_static(b"v"));
        assert_eq!(sf.len(), 0);
    }
}
