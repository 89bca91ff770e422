//! The adapters around the stores: [`Compat`] puts a peer written for tower-sessions-core
//! 0.14 behind 0.15's trait; [`Observed`] keeps the first errors a store returns.

use std::sync::Arc;

use async_trait::async_trait;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error as StoreError, Result as StoreResult};
use tower_sessions::SessionStore;
use tower_sessions_core_014 as core014;

/// A tower-sessions 0.15 store over a peer written for tower-sessions-core 0.14.
#[derive(Debug, Clone)]
pub(crate) struct Compat<S>(pub(crate) S);

fn to_014(r: &Record) -> core014::session::Record {
    core014::session::Record {
        id: core014::session::Id(r.id.0),
        data: r.data.clone(),
        expiry_date: r.expiry_date,
    }
}

fn from_014(r: core014::session::Record) -> Record {
    Record {
        id: Id(r.id.0),
        data: r.data,
        expiry_date: r.expiry_date,
    }
}

fn err_014(e: core014::session_store::Error) -> StoreError {
    use core014::session_store::Error as E;
    match e {
        E::Encode(s) => StoreError::Encode(s),
        E::Decode(s) => StoreError::Decode(s),
        E::Backend(s) => StoreError::Backend(s),
    }
}

#[async_trait]
impl<S: core014::SessionStore> SessionStore for Compat<S> {
    async fn create(&self, record: &mut Record) -> StoreResult<()> {
        let mut old = to_014(record);
        self.0.create(&mut old).await.map_err(err_014)?;
        // The peer may have picked another id on a collision.
        record.id = Id(old.id.0);
        Ok(())
    }

    async fn save(&self, record: &Record) -> StoreResult<()> {
        self.0.save(&to_014(record)).await.map_err(err_014)
    }

    async fn load(&self, id: &Id) -> StoreResult<Option<Record>> {
        let r = self.0.load(&core014::session::Id(id.0)).await;
        r.map(|o| o.map(from_014)).map_err(err_014)
    }

    async fn delete(&self, id: &Id) -> StoreResult<()> {
        self.0
            .delete(&core014::session::Id(id.0))
            .await
            .map_err(err_014)
    }
}

/// Store errors seen by one app instance: a count and the first few messages.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    /// A std mutex is enough: held only to push a string, never across an await.
    pub(crate) inner: std::sync::Mutex<(usize, Vec<String>)>,
}

impl ErrorLog {
    pub(crate) fn note(&self, op: &str, e: &StoreError) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        if g.1.len() < 3 {
            g.1.push(format!("{op}: {e}"));
        }
    }

    pub(crate) fn take(&self) -> (usize, Vec<String>) {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Delegates to the store and notes its errors (the same wrapper around every store).
#[derive(Debug, Clone)]
pub(crate) struct Observed<S> {
    pub(crate) inner: S,
    pub(crate) errors: Arc<ErrorLog>,
}

impl<S> Observed<S> {
    pub(crate) fn check<T>(&self, op: &str, r: StoreResult<T>) -> StoreResult<T> {
        if let Err(e) = &r {
            self.errors.note(op, e);
        }
        r
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for Observed<S> {
    async fn create(&self, record: &mut Record) -> StoreResult<()> {
        let r = self.inner.create(record).await;
        self.check("create", r)
    }

    async fn save(&self, record: &Record) -> StoreResult<()> {
        let r = self.inner.save(record).await;
        self.check("save", r)
    }

    async fn load(&self, id: &Id) -> StoreResult<Option<Record>> {
        let r = self.inner.load(id).await;
        self.check("load", r)
    }

    async fn delete(&self, id: &Id) -> StoreResult<()> {
        let r = self.inner.delete(id).await;
        self.check("delete", r)
    }
}
