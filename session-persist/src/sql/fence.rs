//! Fenced writes: an SQL effect that commits only if its fencing token is not older than
//! the newest token already seen for the resource.
//!
//! A lease alone never guarantees mutual exclusion: a holder paused past its lease (GC,
//! SIGSTOP, a slow disk) wakes up still believing it holds it. Run the effect in the same
//! transaction as [`advance`](PgFence::advance) and the database itself refuses the stale
//! holder's write.

/// Implements the fence for `$fence` over `$db`.
macro_rules! sql_fence {
    ($fence:ident, $db:ty, $name:literal) => {
        impl $fence {
            /// Records `token` for the resource and returns `true` if it is at least the
            /// newest token seen (`UPDATE ... WHERE token <= $token`); `false` means a newer
            /// holder has written: roll the transaction back and stop.
            pub async fn advance(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                token: u64,
            ) -> larder_cache_api::Result<bool> {
                let token = i64::try_from(token).map_err(|_| {
                    larder_cache_api::Error::new(
                        larder_cache_api::ErrorKind::Config,
                        "fencing token too large for the database",
                    )
                })?;
                let row: Option<(i64,)> = sqlx::query_as(
                    "INSERT INTO larder_fences (name, token) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET token = excluded.token \
                     WHERE larder_fences.token <= excluded.token RETURNING token",
                )
                .bind(&self.resource)
                .bind(token)
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| $crate::sql::db_error($name, "fence", e))?;
                Ok(row.is_some())
            }

            /// Runs `effect` in a transaction guarded by the fence: it commits only if
            /// `token` is not stale. Returns `Ok(None)` (and writes nothing) if it is.
            pub async fn run<T, F>(
                &self,
                token: u64,
                effect: F,
            ) -> larder_cache_api::Result<Option<T>>
            where
                F: for<'t> FnOnce(
                    &'t mut sqlx::Transaction<'static, $db>,
                ) -> std::pin::Pin<
                    Box<dyn std::future::Future<Output = larder_cache_api::Result<T>> + Send + 't>,
                >,
            {
                let mut tx = self
                    .pool
                    .begin()
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "fence", e))?;
                if !self.advance(&mut tx, token).await? {
                    tx.rollback()
                        .await
                        .map_err(|e| $crate::sql::db_error($name, "fence", e))?;
                    return Ok(None);
                }
                let out = effect(&mut tx).await?;
                tx.commit()
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "fence", e))?;
                Ok(Some(out))
            }

            /// The newest token seen for the resource.
            pub async fn current(&self) -> larder_cache_api::Result<Option<u64>> {
                let row: Option<(i64,)> =
                    sqlx::query_as("SELECT token FROM larder_fences WHERE name = $1")
                        .bind(&self.resource)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(|e| $crate::sql::db_error($name, "fence", e))?;
                Ok(row.map(|(t,)| t as u64))
            }
        }
    };
}
pub(crate) use sql_fence;
