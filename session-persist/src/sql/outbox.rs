//! The outbox's SQL: the invalidations the `larder_session_outbox` trigger recorded, read
//! oldest first and removed once their tombstones are in the cache.

use async_trait::async_trait;
use larder_cache_api::Result;
use sqlx::{ColumnIndex, Decode, Encode, Executor, Type};

use super::{db_error, Dialect, SqlStore};
use crate::id::IdHash;
use crate::outbox::{Invalidation, Outbox};

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
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<Invalidation>> {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, id_hash FROM larder_session_outbox ORDER BY seq LIMIT $1")
                .bind(i64::from(limit.max(1)))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(DB::BACKEND, "outbox", e))?;
        rows.into_iter()
            .map(|(seq, h)| {
                Ok(Invalidation {
                    seq,
                    hash: IdHash::from_slice(&h)?,
                })
            })
            .collect()
    }

    async fn outbox_ack(&self, seqs: &[i64]) -> Result<()> {
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
                .map_err(|e| db_error(DB::BACKEND, "outbox", e))?;
        }
        Ok(())
    }
}
