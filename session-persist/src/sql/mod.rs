//! The authoritative store on sqlx: PostgreSQL and SQLite share one implementation, stamped
//! per database by a macro (the SQL is portable; parameters are `$n` in both).

use std::sync::Arc;
use std::time::Duration;

use larder_cache_api::{Error, ErrorKind};

use crate::id::{IdSource, OsRandom};
use crate::store::DEFAULT_TOMBSTONE_TTL;

mod fence;
mod kv;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::{PgFence, PgKv, PgStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteFence, SqliteKv, SqliteStore};

/// How many fresh ids `create` and `rotate` try before giving up.
const MAX_ID_ATTEMPTS: u32 = 8;

/// Settings shared by the SQL stores.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqlOptions {
    /// How long a deleted session's tombstone is kept.
    pub tombstone_ttl: Duration,
    /// Where new ids come from.
    pub ids: Arc<dyn IdSource>,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            ids: Arc::new(OsRandom),
        }
    }
}

impl SqlOptions {
    /// Sets the tombstone lifetime.
    pub fn tombstone_ttl(mut self, d: Duration) -> Self {
        self.tombstone_ttl = d;
        self
    }

    /// Sets the id source (tests inject colliding ones).
    pub fn ids(mut self, ids: Arc<dyn IdSource>) -> Self {
        self.ids = ids;
        self
    }
}

/// Maps a database error: connection trouble is `Unavailable` (retryable), the rest
/// `Backend`; the sqlx error is kept as the source.
pub(crate) fn db_error(backend: &'static str, op: &'static str, e: sqlx::Error) -> Error {
    let kind = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Backend,
    };
    Error::new(kind, format!("session {op} failed"))
        .with_backend(backend)
        .with_source(e)
}

/// A row `(principal, data, version, expires_at)` of `larder_sessions` as a record.
pub(crate) fn record(
    id: &crate::id::SessionId,
    (principal, data, version, expires_at): (Option<String>, Vec<u8>, i64, i64),
) -> larder_cache_api::Result<crate::record::Record> {
    Ok(crate::record::Record {
        id: id.clone(),
        data: crate::record::SessionData::from_bytes(&data)?,
        principal,
        expires_at: crate::record::Timestamp(expires_at),
        version,
    })
}

/// Implements [`SessionStore`](crate::SessionStore) for `$store` over database `$db`.
macro_rules! sql_store {
    ($store:ident, $db:ty, $name:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::SessionStore for $store {
            async fn create(
                &self,
                data: $crate::record::SessionData,
                principal: Option<String>,
                expires_at: $crate::record::Timestamp,
            ) -> larder_cache_api::Result<$crate::record::Record> {
                let blob = data.to_bytes()?;
                let now = $crate::record::Timestamp::now();
                for _ in 0..$crate::sql::MAX_ID_ATTEMPTS {
                    let id = self.options.ids.generate()?;
                    let inserted = sqlx::query(
                        "INSERT INTO larder_sessions \
                         (id_hash, principal, data, version, expires_at, deleted, updated_at) \
                         VALUES ($1, $2, $3, 1, $4, FALSE, $5) ON CONFLICT (id_hash) DO NOTHING",
                    )
                    .bind(&id.hash().0[..])
                    .bind(principal.as_deref())
                    .bind(&blob[..])
                    .bind(expires_at.0)
                    .bind(now.0)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "create", e))?
                    .rows_affected();
                    if inserted == 1 {
                        return Ok($crate::record::Record {
                            id,
                            data,
                            principal,
                            expires_at,
                            version: 1,
                        });
                    }
                    tracing::warn!("session id collision; generating another id");
                    metrics::counter!("larder_session_id_collisions_total").increment(1);
                }
                Err(larder_cache_api::Error::new(
                    larder_cache_api::ErrorKind::Backend,
                    "could not find a free session id (is the id source random?)",
                )
                .with_backend($name))
            }

            async fn load(
                &self,
                id: &$crate::id::SessionId,
            ) -> larder_cache_api::Result<Option<$crate::record::Record>> {
                let row: Option<(Option<String>, Vec<u8>, i64, i64)> = sqlx::query_as(
                    "SELECT principal, data, version, expires_at FROM larder_sessions \
                     WHERE id_hash = $1 AND deleted = FALSE AND expires_at > $2",
                )
                .bind(&id.hash().0[..])
                .bind($crate::record::Timestamp::now().0)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "load", e))?;
                row.map(|row| $crate::sql::record(id, row)).transpose()
            }

            async fn save_or_current(
                &self,
                record: &$crate::record::Record,
            ) -> larder_cache_api::Result<$crate::store::SaveOutcome> {
                let blob = record.data.to_bytes()?;
                let hash = record.id.hash();
                let now = $crate::record::Timestamp::now();
                let updated: Option<(i64,)> = sqlx::query_as(
                    "UPDATE larder_sessions SET principal = $1, data = $2, expires_at = $3, \
                     version = version + 1, updated_at = $4 \
                     WHERE id_hash = $5 AND version = $6 AND deleted = FALSE AND expires_at > $4 \
                     RETURNING version",
                )
                .bind(record.principal.as_deref())
                .bind(&blob[..])
                .bind(record.expires_at.0)
                .bind(now.0)
                .bind(&hash.0[..])
                .bind(record.version)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "save", e))?;
                if let Some((version,)) = updated {
                    let mut saved = record.clone();
                    saved.version = version;
                    return Ok($crate::store::SaveOutcome::Saved(saved));
                }
                // A lost race or a session that is no more: one more statement tells which,
                // and hands back the current record so the caller need not load it again.
                let current: Option<(Option<String>, Vec<u8>, i64, i64)> = sqlx::query_as(
                    "SELECT principal, data, version, expires_at FROM larder_sessions \
                     WHERE id_hash = $1 AND deleted = FALSE AND expires_at > $2",
                )
                .bind(&hash.0[..])
                .bind(now.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "save", e))?;
                match current {
                    Some(row) => Ok($crate::store::SaveOutcome::Stale(
                        $crate::sql::record(&record.id, row)?,
                    )),
                    None => Err(larder_cache_api::Error::new(
                        larder_cache_api::ErrorKind::Gone,
                        "session was deleted or has expired; it is not recreated",
                    )
                    .with_backend($name)),
                }
            }

            async fn save_locked(
                &self,
                id: &$crate::id::SessionId,
                apply: &$crate::store::ApplyFn,
                expires_at: $crate::record::Timestamp,
            ) -> larder_cache_api::Result<$crate::record::Record> {
                let hash = id.hash();
                let now = $crate::record::Timestamp::now();
                let err = |e| $crate::sql::db_error($name, "save", e);
                let mut tx = self.pool.begin_with(Self::BEGIN_WRITE).await.map_err(err)?;
                let row: Option<(Option<String>, Vec<u8>, i64, i64)> = sqlx::query_as(
                    sqlx::AssertSqlSafe(format!(
                        "SELECT principal, data, version, expires_at FROM larder_sessions \
                         WHERE id_hash = $1 AND deleted = FALSE AND expires_at > $2{}",
                        Self::LOCK_ROW
                    )),
                )
                .bind(&hash.0[..])
                .bind(now.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(err)?;
                let Some(row) = row else {
                    return Err(larder_cache_api::Error::new(
                        larder_cache_api::ErrorKind::Gone,
                        "session was deleted or has expired; it is not recreated",
                    )
                    .with_backend($name));
                };
                let mut rec = $crate::sql::record(id, row)?;
                apply(&mut rec)?;
                rec.expires_at = rec.expires_at.max(expires_at);
                let (version,): (i64,) = sqlx::query_as(
                    "UPDATE larder_sessions SET principal = $1, data = $2, expires_at = $3, \
                     version = version + 1, updated_at = $4 WHERE id_hash = $5 RETURNING version",
                )
                .bind(rec.principal.as_deref())
                .bind(&rec.data.to_bytes()?[..])
                .bind(rec.expires_at.0)
                .bind(now.0)
                .bind(&hash.0[..])
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
                tx.commit().await.map_err(err)?;
                rec.version = version;
                Ok(rec)
            }

            async fn touch(
                &self,
                id: &$crate::id::SessionId,
                expires_at: $crate::record::Timestamp,
            ) -> larder_cache_api::Result<Option<$crate::record::Record>> {
                let row: Option<(Option<String>, Vec<u8>, i64, i64)> = sqlx::query_as(
                    "UPDATE larder_sessions SET expires_at = $1, updated_at = $2 \
                     WHERE id_hash = $3 AND deleted = FALSE AND expires_at > $2 \
                     RETURNING principal, data, version, expires_at",
                )
                .bind(expires_at.0)
                .bind($crate::record::Timestamp::now().0)
                .bind(&id.hash().0[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "touch", e))?;
                row.map(|row| $crate::sql::record(id, row)).transpose()
            }

            async fn delete(&self, id: &$crate::id::SessionId) -> larder_cache_api::Result<bool> {
                let now = $crate::record::Timestamp::now();
                let done = sqlx::query(
                    "UPDATE larder_sessions SET deleted = TRUE, data = $1, principal = NULL, \
                     version = version + 1, expires_at = $2, updated_at = $3 \
                     WHERE id_hash = $4 AND deleted = FALSE AND expires_at > $3",
                )
                .bind(&[][..] as &[u8])
                .bind(now.plus(self.options.tombstone_ttl).0)
                .bind(now.0)
                .bind(&id.hash().0[..])
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "delete", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn rotate(
                &self,
                id: &$crate::id::SessionId,
            ) -> larder_cache_api::Result<Option<$crate::record::Record>> {
                let now = $crate::record::Timestamp::now();
                let mut tx = self
                    .pool
                    .begin()
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "rotate", e))?;
                // Claim the old row first (a write, so SQLite takes its write lock at once and
                // concurrent rotations serialise); RETURNING hands back its data.
                let old: Option<(Option<String>, Vec<u8>, i64, i64)> = sqlx::query_as(
                    "UPDATE larder_sessions SET version = version + 1, updated_at = $1 \
                     WHERE id_hash = $2 AND deleted = FALSE AND expires_at > $1 \
                     RETURNING principal, data, version, expires_at",
                )
                .bind(now.0)
                .bind(&id.hash().0[..])
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| $crate::sql::db_error($name, "rotate", e))?;
                let Some((principal, data, version, expires_at)) = old else {
                    return Ok(None);
                };
                let mut new_id = None;
                for _ in 0..$crate::sql::MAX_ID_ATTEMPTS {
                    let candidate = self.options.ids.generate()?;
                    let inserted = sqlx::query(
                        "INSERT INTO larder_sessions \
                         (id_hash, principal, data, version, expires_at, deleted, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, FALSE, $6) ON CONFLICT (id_hash) DO NOTHING",
                    )
                    .bind(&candidate.hash().0[..])
                    .bind(principal.as_deref())
                    .bind(&data[..])
                    .bind(version + 1)
                    .bind(expires_at)
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "rotate", e))?
                    .rows_affected();
                    if inserted == 1 {
                        new_id = Some(candidate);
                        break;
                    }
                    metrics::counter!("larder_session_id_collisions_total").increment(1);
                }
                let Some(new_id) = new_id else {
                    return Err(larder_cache_api::Error::new(
                        larder_cache_api::ErrorKind::Backend,
                        "could not find a free session id (is the id source random?)",
                    )
                    .with_backend($name));
                };
                sqlx::query(
                    "UPDATE larder_sessions SET deleted = TRUE, data = $1, principal = NULL, \
                     version = version + 1, expires_at = $2 WHERE id_hash = $3",
                )
                .bind(&[][..] as &[u8])
                .bind(now.plus(self.options.tombstone_ttl).0)
                .bind(&id.hash().0[..])
                .execute(&mut *tx)
                .await
                .map_err(|e| $crate::sql::db_error($name, "rotate", e))?;
                tx.commit()
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "rotate", e))?;
                Ok(Some($crate::record::Record {
                    id: new_id,
                    data: $crate::record::SessionData::from_bytes(&data)?,
                    principal,
                    expires_at: $crate::record::Timestamp(expires_at),
                    version: version + 1,
                }))
            }

            async fn delete_principal(
                &self,
                principal: &str,
            ) -> larder_cache_api::Result<Vec<$crate::id::IdHash>> {
                let now = $crate::record::Timestamp::now();
                let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
                    "UPDATE larder_sessions SET deleted = TRUE, data = $1, principal = NULL, \
                     version = version + 1, expires_at = $2, updated_at = $3 \
                     WHERE principal = $4 AND deleted = FALSE AND expires_at > $3 \
                     RETURNING id_hash",
                )
                .bind(&[][..] as &[u8])
                .bind(now.plus(self.options.tombstone_ttl).0)
                .bind(now.0)
                .bind(principal)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "delete_principal", e))?;
                rows.iter()
                    .map(|(h,)| $crate::id::IdHash::from_slice(h))
                    .collect()
            }

            async fn sweep(&self, batch: u32) -> larder_cache_api::Result<u64> {
                let batch = i64::from(batch.max(1));
                let mut total = 0;
                loop {
                    let n = sqlx::query(
                        "DELETE FROM larder_sessions WHERE id_hash IN \
                         (SELECT id_hash FROM larder_sessions WHERE expires_at <= $1 LIMIT $2)",
                    )
                    .bind($crate::record::Timestamp::now().0)
                    .bind(batch)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "sweep", e))?
                    .rows_affected();
                    total += n;
                    if (n as i64) < batch {
                        break;
                    }
                }
                // Invalidations older than a tombstone's life are moot: every cache entry of
                // the session has expired by then (cached stores cap entries below it).
                sqlx::query("DELETE FROM larder_session_outbox WHERE created_at <= $1")
                    .bind(
                        $crate::record::Timestamp::now().0
                            - i64::try_from(self.options.tombstone_ttl.as_millis())
                                .unwrap_or(i64::MAX / 2),
                    )
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "sweep", e))?;
                Ok(total)
            }

            async fn count(&self) -> larder_cache_api::Result<u64> {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM larder_sessions WHERE deleted = FALSE AND expires_at > $1",
                )
                .bind($crate::record::Timestamp::now().0)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "count", e))?;
                Ok(n.max(0) as u64)
            }

            async fn outbox_pending(
                &self,
                limit: u32,
            ) -> larder_cache_api::Result<Vec<$crate::store::Invalidation>> {
                let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT seq, id_hash FROM larder_session_outbox ORDER BY seq LIMIT $1",
                )
                .bind(i64::from(limit.max(1)))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "outbox", e))?;
                rows.into_iter()
                    .map(|(seq, h)| {
                        Ok($crate::store::Invalidation {
                            seq,
                            hash: $crate::id::IdHash::from_slice(&h)?,
                        })
                    })
                    .collect()
            }

            async fn outbox_ack(&self, seqs: &[i64]) -> larder_cache_api::Result<()> {
                // Bounded batches keep the statement's parameter list small.
                for chunk in seqs.chunks(256) {
                    let mut q = String::from("DELETE FROM larder_session_outbox WHERE seq IN (");
                    for i in 0..chunk.len() {
                        if i > 0 {
                            q.push(',');
                        }
                        q.push_str(&format!("${}", i + 1));
                    }
                    q.push(')');
                    // Only placeholders are spliced in: the values are bound.
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
                    for s in chunk {
                        query = query.bind(*s);
                    }
                    query
                        .execute(&self.pool)
                        .await
                        .map_err(|e| $crate::sql::db_error($name, "outbox", e))?;
                }
                Ok(())
            }
        }
    };
}
pub(crate) use sql_store;
