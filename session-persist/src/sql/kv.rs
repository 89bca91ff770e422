//! A compare-and-swap key-value store in the same database as the sessions: a larder cache
//! backend whose versions are enforced by the database. Coordination (leases, periodic
//! tasks) runs on it; it also passes the whole cache conformance suite.
//!
//! Expiry uses the database clock, so every process agrees on it whatever its own clock
//! says.

/// Implements `CacheBackend` for `$kv` (holding `pool` and `caps`) over `$db`.
/// `$now` is the SQL expression for the database clock in milliseconds; `$next` the SQL
/// expression for a new version, evaluated inside the one statement of each write so a
/// compare-and-swap is a single round trip.
macro_rules! sql_kv {
    ($kv:ident, $db:ty, $name:literal, $now:literal, $next:literal) => {
        impl $kv {
            async fn current(
                &self,
                key: &larder_cache_api::Key,
            ) -> larder_cache_api::Result<Option<larder_cache_api::Entry>> {
                larder_cache_api::CacheBackend::get(self, key).await
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
                let written: Result<Option<(i64,)>, sqlx::Error> = match mode {
                    larder_cache_api::PutMode::Overwrite => sqlx::query_as(concat!(
                        "INSERT INTO larder_kv (key, value, version, expires_at) VALUES ($1, $2, ", $next, ", \
                         CASE WHEN $3 IS NULL THEN NULL ELSE ", $now, " + $3 END) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                         version = excluded.version, expires_at = excluded.expires_at \
                         RETURNING version"
                    ))
                    .bind(key.as_str())
                    .bind(&value[..])
                    .bind(ttl_ms)
                    .fetch_optional(&self.pool)
                    .await,
                    larder_cache_api::PutMode::Create => sqlx::query_as(concat!(
                        "INSERT INTO larder_kv (key, value, version, expires_at) VALUES ($1, $2, ", $next, ", \
                         CASE WHEN $3 IS NULL THEN NULL ELSE ", $now, " + $3 END) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                         version = excluded.version, expires_at = excluded.expires_at \
                         WHERE larder_kv.expires_at IS NOT NULL AND larder_kv.expires_at <= ", $now, " \
                         RETURNING version"
                    ))
                    .bind(key.as_str())
                    .bind(&value[..])
                    .bind(ttl_ms)
                    .fetch_optional(&self.pool)
                    .await,
                    larder_cache_api::PutMode::Update(expected) => sqlx::query_as(concat!(
                        "UPDATE larder_kv SET value = $2, version = ", $next, ", expires_at = \
                         CASE WHEN $3 IS NULL THEN NULL ELSE ", $now, " + $3 END \
                         WHERE key = $1 AND version = $4 \
                         AND (expires_at IS NULL OR expires_at > ", $now, ") RETURNING version"
                    ))
                    .bind(key.as_str())
                    .bind(&value[..])
                    .bind(ttl_ms)
                    .bind(expected.into_raw() as i64)
                    .fetch_optional(&self.pool)
                    .await,
                };
                let written = written.map_err(|e| $crate::sql::db_error($name, "put", e))?;
                match written {
                    Some((v,)) => Ok(larder_cache_api::Version::from_raw(v as u64)),
                    None => {
                        // The conflict carries what is stored now (read right after the
                        // refused write; it may already have moved on again).
                        let current = self.current(key).await?;
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
                        let n = sqlx::query(concat!(
                            "DELETE FROM larder_kv WHERE key = $1 AND version = $2 \
                             AND (expires_at IS NULL OR expires_at > ", $now, ")"
                        ))
                        .bind(key.as_str())
                        .bind(v.into_raw() as i64)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| $crate::sql::db_error($name, "delete", e))?
                        .rows_affected();
                        if n > 0 {
                            return Ok(true);
                        }
                        let current = self.current(key).await?;
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
