//! The session store's SQL, once for every [`Dialect`]: one statement per operation (two
//! for a save that lost a race, a transaction for a rotation).

use async_trait::async_trait;
use larder_cache_api::{Error, ErrorKind, Result};
use sqlx::{ColumnIndex, Decode, Encode, Executor, Type};

use super::write_id::{self, push};
use super::{db_error, held, lost, Dialect, SqlStore, MAX_ID_ATTEMPTS};
use crate::id::{IdHash, SessionId};
use crate::record::{Record, SessionData, Timestamp};
use crate::store::{ApplyFn, SaveOutcome, SessionStore};

/// A row `(principal, data, version, expires_at)` of `larder_sessions` as a record.
fn to_record(
    id: &SessionId,
    (principal, data, version, expires_at): (Option<String>, Vec<u8>, i64, i64),
) -> Result<Record> {
    Ok(Record {
        id: id.clone(),
        data: SessionData::from_bytes(&data)?,
        principal,
        expires_at: Timestamp(expires_at),
        version,
    })
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Whether the row of `hash` (live or a tombstone) holds the write id `own`: after a
    /// lost reply, whether that write committed.
    async fn written(&self, hash: &[u8], own: &str, op: &'static str) -> Result<bool> {
        let ids: Option<(Option<String>,)> = held::statement!(self, |conn| {
            sqlx::query_as("SELECT write_ids FROM larder_sessions WHERE id_hash = $1")
                .bind(hash)
                .fetch_optional(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, op, e))?;
        Ok(ids.is_some_and(|(ids,)| write_id::holds(ids.as_deref(), own)))
    }

    /// For a write whose resend failed too: whether its first attempt, whose reply was
    /// lost, committed after all (then the write is reported done, not failed). `false`
    /// when that cannot be told either.
    async fn committed_anyway(&self, resent: bool, hash: &[u8], own: &str) -> bool {
        resent && self.written(hash, own, "write").await.unwrap_or(false)
    }
}

// What sqlx needs to run these statements on `DB`; PostgreSQL and SQLite provide all of it.
#[async_trait]
impl<DB> SessionStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn create(
        &self,
        data: SessionData,
        principal: Option<String>,
        expires_at: Timestamp,
    ) -> Result<Record> {
        let blob = data.to_bytes()?;
        let now = Timestamp::now();
        let own = write_id::fresh()?;
        for _ in 0..MAX_ID_ATTEMPTS {
            let id = self.options.ids.generate()?;
            let hash = id.hash();
            let mut resent = false;
            let done = held::statement!(self, resent = resent, |conn| {
                sqlx::query(
                    "INSERT INTO larder_sessions \
                     (id_hash, principal, data, version, expires_at, deleted, updated_at, \
                     write_ids) \
                     VALUES ($1, $2, $3, 1, $4, FALSE, $5, $6) ON CONFLICT (id_hash) DO NOTHING",
                )
                .bind(&hash.0[..])
                .bind(principal.as_deref())
                .bind(&blob[..])
                .bind(expires_at.0)
                .bind(now.0)
                .bind(own.as_str())
                .execute(conn)
            })
            .await;
            let inserted = match done {
                Ok(done) => DB::rows_affected(&done) == 1,
                Err(e) if !self.committed_anyway(resent, &hash.0, &own).await => {
                    return Err(db_error(DB::BACKEND, "create", e));
                }
                Err(_) => true,
            };
            // Resent after a lost reply, the insert finds the row the first one made.
            if inserted || (resent && self.written(&hash.0, &own, "create").await?) {
                return Ok(Record {
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
        Err(Error::new(
            ErrorKind::Backend,
            "could not find a free session id (is the id source random?)",
        )
        .with_backend(DB::BACKEND))
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let hash = id.hash();
        let now = Timestamp::now();
        let row: Option<(Option<String>, Vec<u8>, i64, i64)> = held::statement!(self, |conn| {
            sqlx::query_as(
                "SELECT principal, data, version, expires_at FROM larder_sessions \
                 WHERE id_hash = $1 AND deleted = FALSE AND expires_at > $2",
            )
            .bind(&hash.0[..])
            .bind(now.0)
            .fetch_optional(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, "load", e))?;
        row.map(|row| to_record(id, row)).transpose()
    }

    async fn save_or_current(&self, record: &Record) -> Result<SaveOutcome> {
        let blob = record.data.to_bytes()?;
        let hash = record.id.hash();
        let now = Timestamp::now();
        let own = write_id::fresh()?;
        // Repeated after a lost reply to an applied update, this finds the version moved:
        // the write id below tells that the move was this save's own.
        let mut resent = false;
        let updated: sqlx::Result<Option<(i64,)>> =
            held::statement!(self, resent = resent, |conn| {
                sqlx::query_as(concat!(
                    "UPDATE larder_sessions SET principal = $1, data = $2, expires_at = $3, \
                 version = version + 1, updated_at = $4, ",
                    push!(7),
                    " WHERE id_hash = $5 AND version = $6 AND deleted = FALSE AND expires_at > $4 \
                 RETURNING version"
                ))
                .bind(record.principal.as_deref())
                .bind(&blob[..])
                .bind(record.expires_at.0)
                .bind(now.0)
                .bind(&hash.0[..])
                .bind(record.version)
                .bind(own.as_str())
                .fetch_optional(conn)
            })
            .await;
        let updated = match updated {
            Ok(updated) => updated,
            Err(e) if !self.committed_anyway(resent, &hash.0, &own).await => {
                return Err(db_error(DB::BACKEND, "save", e));
            }
            Err(_) => Some((record.version + 1,)),
        };
        if let Some((version,)) = updated {
            let mut saved = record.clone();
            saved.version = version;
            return Ok(SaveOutcome::Saved(saved));
        }
        // A lost race or a session that is no more: one more statement tells which,
        // and hands back the current record so the caller need not load it again.
        type Current = (Option<String>, Vec<u8>, i64, i64, Option<String>);
        let current: Option<Current> = held::statement!(self, |conn| {
            sqlx::query_as(
                "SELECT principal, data, version, expires_at, write_ids FROM larder_sessions \
                 WHERE id_hash = $1 AND deleted = FALSE AND expires_at > $2",
            )
            .bind(&hash.0[..])
            .bind(now.0)
            .fetch_optional(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, "save", e))?;
        match current {
            // This save's own update, committed with its reply lost: it made the version
            // after the one it was conditioned on.
            Some((.., ids)) if write_id::holds(ids.as_deref(), &own) => {
                let mut saved = record.clone();
                saved.version = record.version + 1;
                Ok(SaveOutcome::Saved(saved))
            }
            Some((principal, data, version, expires_at, _)) => Ok(SaveOutcome::Stale(to_record(
                &record.id,
                (principal, data, version, expires_at),
            )?)),
            None => Err(Error::new(
                ErrorKind::NotFound,
                "session was deleted or has expired; it is not recreated",
            )
            .with_backend(DB::BACKEND)),
        }
    }

    async fn save_locked(
        &self,
        id: &SessionId,
        apply: &ApplyFn,
        expires_at: Timestamp,
    ) -> Result<Record> {
        let hash = id.hash();
        let now = Timestamp::now();
        let own = write_id::fresh()?;
        let err = |e| db_error(DB::BACKEND, "save", e);
        let mut tx = lost::retried(|| self.pool.begin_with(DB::BEGIN_WRITE))
            .await
            .map_err(err)?;
        let row: Option<(Option<String>, Vec<u8>, i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT principal, data, version, expires_at FROM larder_sessions \
                 WHERE id_hash = $1 AND deleted = FALSE AND expires_at > $2{}",
                DB::LOCK_ROW
            )))
            .bind(&hash.0[..])
            .bind(now.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        let Some(row) = row else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "session was deleted or has expired; it is not recreated",
            )
            .with_backend(DB::BACKEND));
        };
        let mut rec = to_record(id, row)?;
        apply(&mut rec)?;
        rec.expires_at = rec.expires_at.max(expires_at);
        let blob = rec.data.to_bytes()?;
        let (version,): (i64,) = sqlx::query_as(concat!(
            "UPDATE larder_sessions SET principal = $1, data = $2, expires_at = $3, \
             version = version + 1, updated_at = $4, ",
            push!(6),
            " WHERE id_hash = $5 RETURNING version"
        ))
        .bind(rec.principal.as_deref())
        .bind(&blob[..])
        .bind(rec.expires_at.0)
        .bind(now.0)
        .bind(&hash.0[..])
        .bind(own.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        // A commit whose reply was lost may have committed: the row tells (so that the
        // caller does not apply its change again).
        if let Err(e) = tx.commit().await {
            if !(lost::is_lost(&e) && self.written(&hash.0, &own, "save").await?) {
                return Err(err(e));
            }
        }
        rec.version = version;
        Ok(rec)
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<Option<Record>> {
        let hash = id.hash();
        let now = Timestamp::now();
        let row: Option<(Option<String>, Vec<u8>, i64, i64)> = held::statement!(self, |conn| {
            sqlx::query_as(
                "UPDATE larder_sessions SET expires_at = $1, updated_at = $2 \
                 WHERE id_hash = $3 AND deleted = FALSE AND expires_at > $2 \
                 RETURNING principal, data, version, expires_at",
            )
            .bind(expires_at.0)
            .bind(now.0)
            .bind(&hash.0[..])
            .fetch_optional(conn)
        })
        .await
        .map_err(|e| db_error(DB::BACKEND, "touch", e))?;
        row.map(|row| to_record(id, row)).transpose()
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        let now = Timestamp::now();
        let hash = id.hash();
        let own = write_id::fresh()?;
        let mut resent = false;
        let done = held::statement!(self, resent = resent, |conn| {
            sqlx::query(concat!(
                "UPDATE larder_sessions SET deleted = TRUE, data = $1, principal = NULL, \
                 version = version + 1, expires_at = $2, updated_at = $3, ",
                push!(5),
                " WHERE id_hash = $4 AND deleted = FALSE AND expires_at > $3"
            ))
            .bind(&[][..] as &[u8])
            .bind(now.plus(self.options.tombstone_ttl).0)
            .bind(now.0)
            .bind(&hash.0[..])
            .bind(own.as_str())
            .execute(conn)
        })
        .await;
        let deleted = match done {
            Ok(done) => DB::rows_affected(&done) == 1,
            Err(e) if !self.committed_anyway(resent, &hash.0, &own).await => {
                return Err(db_error(DB::BACKEND, "delete", e));
            }
            Err(_) => true,
        };
        // Resent after a lost reply, the delete finds the tombstone the first one left.
        Ok(deleted || (resent && self.written(&hash.0, &own, "delete").await?))
    }

    async fn rotate(&self, id: &SessionId) -> Result<Option<Record>> {
        let now = Timestamp::now();
        let own = write_id::fresh()?;
        let mut tx = lost::retried(|| self.pool.begin())
            .await
            .map_err(|e| db_error(DB::BACKEND, "rotate", e))?;
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
        .map_err(|e| db_error(DB::BACKEND, "rotate", e))?;
        let Some((principal, data, version, expires_at)) = old else {
            return Ok(None);
        };
        let mut new_id = None;
        for _ in 0..MAX_ID_ATTEMPTS {
            let candidate = self.options.ids.generate()?;
            let done = sqlx::query(
                "INSERT INTO larder_sessions \
                 (id_hash, principal, data, version, expires_at, deleted, updated_at, \
                 write_ids) \
                 VALUES ($1, $2, $3, $4, $5, FALSE, $6, $7) ON CONFLICT (id_hash) DO NOTHING",
            )
            .bind(&candidate.hash().0[..])
            .bind(principal.as_deref())
            .bind(&data[..])
            .bind(version + 1)
            .bind(expires_at)
            .bind(now.0)
            .bind(own.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(DB::BACKEND, "rotate", e))?;
            if DB::rows_affected(&done) == 1 {
                new_id = Some(candidate);
                break;
            }
            metrics::counter!("larder_session_id_collisions_total").increment(1);
        }
        let Some(new_id) = new_id else {
            return Err(Error::new(
                ErrorKind::Backend,
                "could not find a free session id (is the id source random?)",
            )
            .with_backend(DB::BACKEND));
        };
        sqlx::query(concat!(
            "UPDATE larder_sessions SET deleted = TRUE, data = $1, principal = NULL, \
             version = version + 1, expires_at = $2, ",
            push!(4),
            " WHERE id_hash = $3"
        ))
        .bind(&[][..] as &[u8])
        .bind(now.plus(self.options.tombstone_ttl).0)
        .bind(&id.hash().0[..])
        .bind(own.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(DB::BACKEND, "rotate", e))?;
        // A commit whose reply was lost may have committed: the old row's tombstone tells.
        if let Err(e) = tx.commit().await {
            if !(lost::is_lost(&e) && self.written(&id.hash().0, &own, "rotate").await?) {
                return Err(db_error(DB::BACKEND, "rotate", e));
            }
        }
        Ok(Some(Record {
            id: new_id,
            data: SessionData::from_bytes(&data)?,
            principal,
            expires_at: Timestamp(expires_at),
            version: version + 1,
        }))
    }

    async fn delete_principal(&self, principal: &str) -> Result<Vec<IdHash>> {
        let now = Timestamp::now();
        let own = write_id::fresh()?;
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(concat!(
            "UPDATE larder_sessions SET deleted = TRUE, data = $1, principal = NULL, \
             version = version + 1, expires_at = $2, updated_at = $3, ",
            push!(5),
            " WHERE principal = $4 AND deleted = FALSE AND expires_at > $3 \
             RETURNING id_hash"
        ))
        .bind(&[][..] as &[u8])
        .bind(now.plus(self.options.tombstone_ttl).0)
        .bind(now.0)
        .bind(principal)
        .bind(own.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(DB::BACKEND, "delete_principal", e))?;
        rows.iter().map(|(h,)| IdHash::from_slice(h)).collect()
    }

    async fn sweep(&self, batch: u32) -> Result<u64> {
        let batch = i64::from(batch.max(1));
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM larder_sessions WHERE id_hash IN \
                 (SELECT id_hash FROM larder_sessions WHERE expires_at <= $1 LIMIT $2)",
            )
            .bind(Timestamp::now().0)
            .bind(batch)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(DB::BACKEND, "sweep", e))?;
            let n = DB::rows_affected(&done);
            total += n;
            if (n as i64) < batch {
                break;
            }
        }
        // Log entries older than a tombstone's life are moot: every cache entry of the
        // session has expired by then (cached stores cap entries at it). In batches, as
        // saves are logged too.
        let cutoff = Timestamp::now().0
            - i64::try_from(self.options.tombstone_ttl.as_millis()).unwrap_or(i64::MAX / 2);
        loop {
            let done = sqlx::query(
                "DELETE FROM larder_session_outbox WHERE seq IN \
                 (SELECT seq FROM larder_session_outbox WHERE created_at <= $1 LIMIT $2)",
            )
            .bind(cutoff)
            .bind(batch)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(DB::BACKEND, "sweep", e))?;
            if (DB::rows_affected(&done) as i64) < batch {
                break;
            }
        }
        Ok(total)
    }

    async fn count(&self) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM larder_sessions WHERE deleted = FALSE AND expires_at > $1",
        )
        .bind(Timestamp::now().0)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error(DB::BACKEND, "count", e))?;
        Ok(n.max(0) as u64)
    }
}
