//! The session migrations, and the two that earlier versions ran and that now belong to
//! `larder-backend-sql`.
//!
//! Up to version 0.1.0 the session migrations also created the compare-and-swap table
//! `larder_kv` (`20261127000002_kv`) and `larder_fences` (`20261127000003_fences`), which only
//! the SQL cache backend uses. They are retired here: a new database gets only the session
//! tables, and `larder-backend-sql` creates its own tables with its own migrations (tracked
//! in its own table, every object `IF NOT EXISTS`, so it adopts tables an earlier version
//! made, rows included).
//!
//! A database migrated by an earlier version still lists the two retired versions in
//! `_sqlx_migrations`, and sqlx refuses to run a migrator on a database that has applied a
//! version the migrator does not know (`VersionMissing`). The retired versions are accepted
//! as applied; any other unknown version (a database migrated by a newer larder, say) is
//! still refused. Their files are kept in `migrations/retired/` so that tests can build a
//! database exactly as an earlier version left it (the checksums sqlx recorded are those of
//! these files).

use larder_sql_common::{Dialect, SqlDatabase};
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::Pool;

/// sqlx's default migrations table, where the session migrations are tracked.
const TABLE: &str = "_sqlx_migrations";

/// The versions earlier versions of this crate applied that now belong to
/// `larder-backend-sql`.
pub(crate) const RETIRED: [i64; 2] = [20261127000002, 20261127000003];

/// The session migrations for the database.
pub(crate) fn migrator<D: Dialect>() -> Migrator {
    match D::DATABASE {
        SqlDatabase::Postgres => sqlx::migrate!("./migrations/postgres"),
        SqlDatabase::Sqlite => sqlx::migrate!("./migrations/sqlite"),
    }
}

/// Runs the session migrations on `pool`, accepting the retired versions as applied. An
/// unknown version that is not retired is refused before anything runs, named in the error.
pub(crate) async fn run<D: Dialect>(pool: &Pool<D>) -> Result<(), MigrateError> {
    let mut m = migrator::<D>();
    let unknown = unknown_versions(&m, pool).await;
    if let Some(v) = unknown.iter().find(|v| !RETIRED.contains(v)) {
        return Err(MigrateError::VersionMissing(*v));
    }
    if !unknown.is_empty() {
        m.set_ignore_missing(true);
    }
    m.run(pool).await
}

/// The versions the database lists that `m` does not know. A database without the
/// migrations table (a new one), or a listing that fails, gives none: the run then checks
/// every version as sqlx always does.
async fn unknown_versions<D: Dialect>(m: &Migrator, pool: &Pool<D>) -> Vec<i64> {
    let Ok(mut conn) = pool.acquire().await else {
        return Vec::new();
    };
    let Ok(applied) = conn.list_applied_migrations(TABLE).await else {
        return Vec::new();
    };
    applied
        .iter()
        .map(|a| a.version)
        .filter(|v| !m.version_exists(*v))
        .collect()
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{SessionData, SessionStore, SqliteStore, Timestamp};
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

    /// The session migrations as an earlier version ran them, retired ones included.
    fn previous() -> Migrator {
        let retired = sqlx::migrate!("./migrations/retired/sqlite");
        Migrator::with_migrations(
            migrator::<sqlx::Sqlite>()
                .iter()
                .chain(retired.iter())
                .cloned()
                .collect(),
        )
    }

    async fn pool(dir: &tempfile::TempDir) -> SqlitePool {
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("s.db"))
            .create_if_missing(true);
        SqlitePoolOptions::new().connect_with(opts).await.unwrap()
    }

    async fn tables(pool: &SqlitePool) -> Vec<String> {
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    async fn versions(pool: &SqlitePool) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_database_gets_only_the_session_tables() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        let store = SqliteStore::from_pool(pool.clone());
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        let t = tables(&pool).await;
        assert!(t.contains(&"larder_sessions".to_owned()), "{t:?}");
        assert!(!t.iter().any(|t| t.starts_with("larder_kv")), "{t:?}");
        assert!(!t.contains(&"larder_fences".to_owned()), "{t:?}");
        assert!(
            versions(&pool).await.iter().all(|v| !RETIRED.contains(v)),
            "no retired version recorded"
        );
    }

    #[tokio::test]
    async fn a_database_migrated_by_an_earlier_version_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        previous().run(&pool).await.unwrap();
        let before = versions(&pool).await;
        assert!(RETIRED.iter().all(|r| before.contains(r)), "{before:?}");
        sqlx::query("INSERT INTO larder_fences (name, token) VALUES ('kept', 7)")
            .execute(&pool)
            .await
            .unwrap();
        let store = SqliteStore::from_pool(pool.clone());
        let s = store
            .create(
                SessionData::new(),
                None,
                Timestamp::now().plus(std::time::Duration::from_secs(60)),
            )
            .await
            .unwrap();
        // A newer version opens it: the retired versions are accepted, nothing is dropped.
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        assert_eq!(versions(&pool).await, before);
        assert!(store.load(&s.id).await.unwrap().is_some());
        let token: i64 = sqlx::query_scalar("SELECT token FROM larder_fences WHERE name = 'kept'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(token, 7);
    }

    #[tokio::test]
    async fn an_unknown_version_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        previous().run(&pool).await.unwrap();
        // As a newer version would leave it: a version this one does not know.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (29991231000001, 'from the future', TRUE, X'00', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let e = SqliteStore::from_pool(pool).migrate().await.unwrap_err();
        assert_eq!(e.kind(), larder_cache_api::ErrorKind::Backend, "{e}");
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.contains("29991231000001"), "{source}");
    }
}
