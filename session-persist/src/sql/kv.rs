//! A compare-and-swap key-value store in the same database as the sessions: a larder cache
//! backend whose versions are enforced by the database. Coordination (leases, periodic
//! tasks) runs on it; it also passes the whole cache conformance suite.
//!
//! Expiry uses the database clock, so every process agrees on it whatever its own clock
//! says.

/// Implements `CacheBackend` for `$kv` (holding `pool` and `caps`) over `$db`.
/// `$now` is the SQL expression for the database clock in milliseconds; `$next` the SQL
/// that returns the next version.
macro_rules! sql_kv {
    ($kv:ident, $db:ty, $name:literal, $now:literal, $next:literal) => {
        impl $kv {
            async fn next_version(
                tx: &mut sqlx::Transaction<'static, $db>,
            ) -> larder_cache_api::Result<i64> {
                let (v,): (i64,) = sqlx::query_as($next)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "version", e))?;
                Ok(v)
            }

            async fn current(
                tx: &mut sqlx::Transaction<'static, $db>,
                key: &larder_cache_api::Key,
            ) -> larder_cache_api::Result<Option<larder_cache_api::Entry>> {
                let row: Option<(Vec<u8>, i64)> = sqlx::query_as(concat!(
                    "SELECT value, version FROM larder_kv WHERE key = $1 \
                     AND (expires_at IS NULL OR expires_at > ", $now, ")"
                ))
                .bind(key.as_str())
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| $crate::sql::db_error($name, "get", e))?;
                Ok(row.map(|(v, ver)| {
                    larder_cache_api::Entry::new(v, larder_cache_api::Version::from_raw(ver as u64))
                }))
            }

            async fn begin(&self) -> larder_cache_api::Result<sqlx::Transaction<'static, $db>> {
                self.pool
                    .begin()
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "begin", e))
            }

            async fn commit(tx: sqlx::Transaction<'static, $db>) -> larder_cache_api::Result<()> {
                tx.commit()
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "commit", e))
            }

            /// Removes expired entries in batches of `batch`; returns how many.
            pub async fn purge_expired(&self, batch: u32) -> larder_cache_api::Result<u64> {
                let mut total = 0;
                loop {
                    let n = sqlx::query(concat!(
                        "DELETE FROM larder_kv WHERE key IN (SELECT key FROM larder_kv \
                         WHERE expires_at IS NOT NULL AND expires_at <= ", $now, " LIMIT $1)"
                    ))
                    .bind(i64::from(batch.max(1)))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "purge", e))?
                    .rows_affected();
                    total += n;
                    if n < u64::from(batch.max(1)) {
                        return Ok(total);
                    }
                }
            }

            /// Milliseconds since the Unix epoch by the database clock.
            pub async fn now_ms(&self) -> larder_cache_api::Result<i64> {
                let (n,): (i64,) = sqlx::query_as(concat!("SELECT ", $now))
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| $crate::sql::db_error($name, "clock", e))?;
                Ok(n)
            }
        }

        #[async_trait::async_trait]
        impl larder_cache_api::CacheBackend for $kv {
            fn capabilities(&self) -> &larder_cache_api::Capabilities {
                &self.caps
            }

            async fn get(
                &self,
                key: &larder_cache_api::Key,
            ) -> larder_cache_api::Result<Option<larder_cache_api::Entry>> {
                let row: Option<(Vec<u8>, i64)> = sqlx::query_as(concat!(
                    "SELECT value, version FROM larder_kv WHERE key = $1 \
                     AND (expires_at IS NULL OR expires_at > ", $now, ")"
                ))
                .bind(key.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "get", e))?;
                Ok(row.map(|(v, ver)| {
                    larder_cache_api::Entry::new(v, larder_cache_api::Version::from_raw(ver as u64))
                }))
            }

            async fn put(
                &self,
                key: &larder_cache_api::Key,
                value: larder_cache_api::Bytes,
                ttl: Option<larder_cache_api::Ttl>,
                mode: larder_cache_api::PutMode,
            ) -> larder_cache_api::Result<larder_cache_api::Version> {
                self.caps.check_value_size(value.len())?;
                let ttl_ms = ttl.map(|t| t.as_millis() as i64);
                let mut tx = self.begin().await?;
                let version = Self::next_version(&mut tx).await?;
                let written: Result<Option<(i64,)>, sqlx::Error> = match mode {
                    larder_cache_api::PutMode::Overwrite => sqlx::query_as(concat!(
                        "INSERT INTO larder_kv (key, value, version, expires_at) VALUES ($1, $2, $3, \
                         CASE WHEN $4 IS NULL THEN NULL ELSE ", $now, " + $4 END) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                         version = excluded.version, expires_at = excluded.expires_at \
                         RETURNING version"
                    ))
                    .bind(key.as_str())
                    .bind(&value[..])
                    .bind(version)
                    .bind(ttl_ms)
                    .fetch_optional(&mut *tx)
                    .await,
                    larder_cache_api::PutMode::Create => sqlx::query_as(concat!(
                        "INSERT INTO larder_kv (key, value, version, expires_at) VALUES ($1, $2, $3, \
                         CASE WHEN $4 IS NULL THEN NULL ELSE ", $now, " + $4 END) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                         version = excluded.version, expires_at = excluded.expires_at \
                         WHERE larder_kv.expires_at IS NOT NULL AND larder_kv.expires_at <= ", $now, " \
                         RETURNING version"
                    ))
                    .bind(key.as_str())
                    .bind(&value[..])
                    .bind(version)
                    .bind(ttl_ms)
                    .fetch_optional(&mut *tx)
                    .await,
                    larder_cache_api::PutMode::Update(expected) => sqlx::query_as(concat!(
                        "UPDATE larder_kv SET value = $2, version = $3, expires_at = \
                         CASE WHEN $4 IS NULL THEN NULL ELSE ", $now, " + $4 END \
                         WHERE key = $1 AND version = $5 \
                         AND (expires_at IS NULL OR expires_at > ", $now, ") RETURNING version"
                    ))
                    .bind(key.as_str())
                    .bind(&value[..])
                    .bind(version)
                    .bind(ttl_ms)
                    .bind(expected.into_raw() as i64)
                    .fetch_optional(&mut *tx)
                    .await,
                };
                let written = written.map_err(|e| $crate::sql::db_error($name, "put", e))?;
                match written {
                    Some((v,)) => {
                        Self::commit(tx).await?;
                        Ok(larder_cache_api::Version::from_raw(v as u64))
                    }
                    None => {
                        let current = Self::current(&mut tx, key).await?;
                        Self::commit(tx).await?;
                        let msg = match (mode, &current) {
                            (larder_cache_api::PutMode::Create, _) => "key already exists",
                            (_, Some(_)) => "stored version differs",
                            (_, None) => "key is absent",
                        };
                        Err(larder_cache_api::Error::conflict(msg, current).with_backend($name))
                    }
                }
            }

            async fn delete(
                &self,
                key: &larder_cache_api::Key,
                mode: larder_cache_api::DeleteMode,
            ) -> larder_cache_api::Result<bool> {
                match mode {
                    larder_cache_api::DeleteMode::Any => {
                        let n = sqlx::query(concat!(
                            "DELETE FROM larder_kv WHERE key = $1 \
                             AND (expires_at IS NULL OR expires_at > ", $now, ")"
                        ))
                        .bind(key.as_str())
                        .execute(&self.pool)
                        .await
                        .map_err(|e| $crate::sql::db_error($name, "delete", e))?
                        .rows_affected();
                        Ok(n > 0)
                    }
                    larder_cache_api::DeleteMode::IfVersion(v) => {
                        let mut tx = self.begin().await?;
                        let n = sqlx::query(concat!(
                            "DELETE FROM larder_kv WHERE key = $1 AND version = $2 \
                             AND (expires_at IS NULL OR expires_at > ", $now, ")"
                        ))
                        .bind(key.as_str())
                        .bind(v.into_raw() as i64)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| $crate::sql::db_error($name, "delete", e))?
                        .rows_affected();
                        if n > 0 {
                            Self::commit(tx).await?;
                            return Ok(true);
                        }
                        let current = Self::current(&mut tx, key).await?;
                        Self::commit(tx).await?;
                        Err(larder_cache_api::Error::conflict(
                            if current.is_some() { "stored version differs" } else { "key is absent" },
                            current,
                        )
                        .with_backend($name))
                    }
                }
            }

            async fn touch(
                &self,
                key: &larder_cache_api::Key,
                ttl: Option<larder_cache_api::Ttl>,
            ) -> larder_cache_api::Result<bool> {
                let n = sqlx::query(concat!(
                    "UPDATE larder_kv SET expires_at = \
                     CASE WHEN $1 IS NULL THEN NULL ELSE ", $now, " + $1 END \
                     WHERE key = $2 AND (expires_at IS NULL OR expires_at > ", $now, ")"
                ))
                .bind(ttl.map(|t| t.as_millis() as i64))
                .bind(key.as_str())
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::sql::db_error($name, "touch", e))?
                .rows_affected();
                Ok(n > 0)
            }
        }
    };
}
pub(crate) use sql_kv;
