//! The change log's SQL: the entries the `larder_session_outbox` triggers recorded, read
//! after a reader's cursor; nothing is removed by reading (the sweep ages entries out).

use std::time::Duration;

use async_trait::async_trait;
use larder_cache_api::Result;
use sqlx::{ColumnIndex, Decode, Encode, Executor, Type};

use super::{db_error, Dialect, SqlStore};
use crate::id::IdHash;
use crate::outbox::{Invalidation, Outbox};
use crate::record::Timestamp;

/// A row `(seq, id_hash, version, deleted)` of the log.
type Row = (i64, Vec<u8>, Option<i64>, bool);

fn to_entries(rows: Vec<Row>) -> Result<Vec<Invalidation>> {
    rows.into_iter()
        .map(|(seq, h, version, deleted)| {
            Ok(Invalidation {
                seq,
                hash: IdHash::from_slice(&h)?,
                // Deletions recorded before the log carried versions outrank every version.
                version: version.unwrap_or(i64::MAX),
                deleted,
            })
        })
        .collect()
}

// The bounds of the `SessionStore` impl (queries.rs), which `Outbox` extends.
#[async_trait]
impl<DB> Outbox for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> Option<i64>: Decode<'r, DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn log_after(&self, after: i64, limit: u32) -> Result<Vec<Invalidation>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, id_hash, version, deleted FROM larder_session_outbox \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(DB::BACKEND, "log", e))?;
        to_entries(rows)
    }

    async fn log_at(&self, seqs: &[i64]) -> Result<Vec<Invalidation>> {
        let mut out = Vec::new();
        // Bounded batches keep the statement's parameter list small.
        for chunk in seqs.chunks(256) {
            let mut q = String::from(
                "SELECT seq, id_hash, version, deleted FROM larder_session_outbox WHERE seq IN (",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    q.push(',');
                }
                q.push_str(&format!("${}", i + 1));
            }
            q.push_str(") ORDER BY seq");
            // Only placeholders are spliced in: the values are bound.
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(q));
            for s in chunk {
                query = query.bind(*s);
            }
            let rows: Vec<Row> = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(DB::BACKEND, "log", e))?;
            out.extend(to_entries(rows)?);
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    async fn log_start(&self, before: Timestamp) -> Result<i64> {
        let (start,): (i64,) = sqlx::query_as(
            "SELECT COALESCE( \
                 (SELECT MAX(seq) FROM larder_session_outbox WHERE created_at < $1), \
                 (SELECT MIN(seq) - 1 FROM larder_session_outbox), 0)",
        )
        .bind(before.0)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error(DB::BACKEND, "log", e))?;
        Ok(start)
    }

    fn log_retention(&self) -> Duration {
        self.options.tombstone_ttl
    }
}
