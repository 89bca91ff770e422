//! Connections the store keeps between statements, outside sqlx's pool (see
//! `larder_sql_common::held`, shared with the compare-and-swap table), and the macro that
//! runs one statement on them.

pub(crate) use larder_sql_common::held::Held;

/// How many times a statement whose connection was lost is sent again.
pub(crate) const RESENDS: u32 = 3;

/// Runs one statement (`$statement`, an sqlx query executed on `$conn`) on a connection
/// from [`Held::take`], gives the connection back after a success, and runs the statement
/// again on a checked connection, up to [`RESENDS`] times, if the connection turned out
/// dead (see `lost`).
/// Evaluates to a future of `Result<_, sqlx::Error>`. Only for statements whose repetition
/// is harmless: reads, versioned or conditional writes, and inserts of a fresh id.
///
/// The form `statement!(store, resent = flag, |conn| …)` also sets the caller's `flag` when
/// the statement was sent again: an earlier attempt may have committed with its reply lost,
/// so a write that then finds nothing to do checks whether it was its own (see `write_id`).
macro_rules! statement {
    ($store:expr, resent = $resent:ident, |$conn:ident| $statement:expr) => {
        async { $crate::sql::held::statement!(@run $store, $resent, |$conn| $statement) }
    };
    ($store:expr, |$conn:ident| $statement:expr) => {
        async {
            let mut resent = false;
            let done = $crate::sql::held::statement!(@run $store, resent, |$conn| $statement);
            let _ = resent;
            done
        }
    };
    (@run $store:expr, $resent:ident, |$conn:ident| $statement:expr) => {{
        let mut resends = 0u32;
        loop {
            let checked = resends > 0;
            let mut lent = match $store.held.take(&$store.pool, checked).await {
                Ok(conn) => conn,
                Err(e) => break Err(e),
            };
            let $conn = &mut *lent;
            match $statement.await {
                Ok(done) => {
                    $store.held.give(&$store.pool, lent);
                    break Ok(done);
                }
                // The statement carries its write id, so a resend that finds its own
                // committed write answers what the first attempt would have: resending
                // again after a resend's reply was lost too is as safe as the first time.
                Err(e) if resends < $crate::sql::held::RESENDS
                    && ::larder_sql_common::lost::is_lost(&e) =>
                {
                    ::larder_sql_common::lost::note();
                    resends += 1;
                    $resent = true;
                }
                Err(e) => break Err(e),
            }
        }
    }};
}
pub(crate) use statement;
