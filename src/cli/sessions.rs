//! `larder sessions ...`: the session store, opened without migrating.

use std::fmt::Write as _;

use larder_cache_api::Result;
use larder_session_persist::{open_existing, CachedStore, SessionStore};

use super::{database_url, open_cache, Cli, SessionsCmd};

pub(super) async fn run(cli: &Cli, cmd: &SessionsCmd) -> Result<String> {
    // Pointed at the wrong database, an operator gets an error, not new empty tables.
    let store = open_existing(database_url(cli)?).await?;
    match cmd {
        SessionsCmd::Count => Ok(format!("{}\n", store.count().await?)),
        SessionsCmd::Sweep { batch } => {
            let n = store.sweep(*batch).await?;
            Ok(format!("removed {n} expired session row(s)\n"))
        }
        SessionsCmd::Revoke { principal } => {
            if cli.cache_url.as_deref().is_some_and(|u| !u.is_empty()) {
                let cached = CachedStore::new(store, open_cache(cli).await?);
                let gone = cached.delete_principal(principal).await?;
                let failed = cached.pending_invalidations();
                let mut out = format!(
                    "revoked {} session(s) of {principal:?} (database and cache)\n",
                    gone.len()
                );
                if failed > 0 {
                    let _ = writeln!(
                        out,
                        "warning: {failed} cache tombstone(s) could not be written here; \
                         the application's instances write them from the database's outbox"
                    );
                }
                Ok(out)
            } else {
                let gone = store.delete_principal(principal).await?;
                Ok(format!(
                    "revoked {} session(s) of {principal:?} (database; the application's \
                     instances clear their caches from the database's outbox)\n",
                    gone.len()
                ))
            }
        }
    }
}
