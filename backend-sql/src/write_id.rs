//! Write ids (PostgreSQL): how a write resent after an ambiguous failure (the connection died
//! after the server committed, before its reply arrived) recognises its own committed write.
//!
//! Every write draws a fresh id. A put pushes it, with the version it wrote, onto the row's
//! `write_ids` (the last [`KEPT`] writes, newest first); a delete records it in
//! `larder_kv_deleted` in the same statement. After a lost reply the store looks for its id
//! before sending the write again, and once more if the resend is refused, and answers what
//! the first attempt did: a compare-and-swap that applied answers the version it wrote, not a
//! conflict with itself; a create that applied answers created; a delete answers deleted.
//!
//! A put is recognised as long as fewer than [`KEPT`] other writes to the key followed it
//! before the resend and the row was not deleted in between (a resent create then creates
//! the entry again, a resent update finds it absent); a delete for ten minutes.

use larder_cache_api::Version;

/// How many writes' ids a row keeps.
pub(crate) const KEPT: usize = 16;

/// Length of one id in its text form.
const ID_LEN: usize = 16;

/// Length of one entry of `write_ids`: the id, then the version as 16 hex digits.
const ENTRY_LEN: usize = 32;

/// SQL for the `write_ids` entry of the write id `$n` that wrote version `v` (an SQL
/// expression).
pub(crate) fn entry(n: u8, v: &str) -> String {
    format!("${n} || lpad(to_hex({v}), 16, '0')")
}

/// SQL keeping the newest [`KEPT`] entries of `ids` (an SQL expression, newest first).
pub(crate) fn kept(ids: &str) -> String {
    format!("substr({ids}, 1, {})", KEPT * ENTRY_LEN)
}

pub(crate) use larder_sql_common::write_id::fresh;

/// The version the write `own` wrote, if `ids` (a row's `write_ids`; empty for rows written
/// before the column existed) holds it.
pub(crate) fn written(ids: &[u8], own: &str) -> Option<Version> {
    ids.chunks_exact(ENTRY_LEN)
        .find(|e| &e[..ID_LEN] == own.as_bytes())
        .and_then(|e| std::str::from_utf8(&e[ID_LEN..]).ok())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map(Version::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_id_with_their_version() {
        let ids: Vec<String> = (0..KEPT + 1).map(|_| fresh().unwrap()).collect();
        assert!(ids.iter().all(|id| id.len() == ID_LEN));
        // Newest first, truncated to KEPT as the SQL does.
        let mut row = String::new();
        for (v, id) in ids.iter().enumerate() {
            row = format!("{id}{v:016x}{row}");
            row.truncate(KEPT * ENTRY_LEN);
        }
        let row = row.as_bytes();
        assert_eq!(written(row, &ids[KEPT]), Some(Version::from_raw(16)));
        assert_eq!(written(row, &ids[1]), Some(Version::from_raw(1)));
        assert_eq!(written(row, &ids[0]), None, "pushed out by later writes");
        assert_eq!(written(b"", &ids[1]), None);
    }

    #[test]
    fn sql_fragments_keep_kept_entries() {
        assert_eq!(entry(4, "n.v"), "$4 || lpad(to_hex(n.v), 16, '0')");
        assert_eq!(kept("x"), "substr(x, 1, 512)");
    }
}
