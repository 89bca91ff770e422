//! Write ids: how a statement resent after an ambiguous failure (the connection died after
//! the server committed, before its reply arrived) recognises its own committed write.
//!
//! Every session write draws a fresh id and pushes it onto the row's `write_ids` (the ids of
//! the last [`KEPT`] writes, newest first). A resent versioned save then finds the version
//! moved, a resent insert finds the id taken, a resent delete finds no live row: each looks
//! for its id in the row before answering, and answers what the first attempt did instead
//! of a conflict with itself (which would have the session handle apply its changes twice).

/// How many writes' ids a row keeps: a resent write is recognised as long as fewer than this
/// many other writes followed it in between.
pub(crate) const KEPT: usize = 32;

// `push!` keeps 512 characters: KEPT ids.
const _: () = assert!(KEPT * LEN == 512);

/// Length of one id in its text form.
const LEN: usize = 16;

/// SQL (`write_ids = …`) pushing the write id bound as parameter `$n` onto the row's
/// `write_ids`, keeping the newest [`KEPT`](crate::sql::write_id::KEPT) (512 characters).
macro_rules! push {
    ($n:literal) => {
        concat!(
            "write_ids = substr($",
            $n,
            " || COALESCE(write_ids, ''), 1, 512)"
        )
    };
}
pub(crate) use push;

pub(crate) use larder_sql_common::write_id::fresh;

/// Whether `ids` (a row's `write_ids`; `None` for rows written before the column existed)
/// holds `own`.
pub(crate) fn holds(ids: Option<&str>, own: &str) -> bool {
    ids.is_some_and(|ids| ids.as_bytes().chunks(LEN).any(|id| id == own.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_keeps_kept_ids() {
        assert!(push!(7).ends_with(&format!(", 1, {})", KEPT * LEN)));
        assert!(push!(7).starts_with("write_ids = substr($7 ||"));
    }

    #[test]
    fn fresh_ids_are_recognised_among_the_kept() {
        let ids: Vec<String> = (0..KEPT + 1).map(|_| fresh().unwrap()).collect();
        assert!(ids.iter().all(|id| id.len() == LEN));
        // Newest first, truncated to KEPT as the SQL does.
        let mut row = String::new();
        for id in &ids {
            row = format!("{id}{row}");
            row.truncate(KEPT * LEN);
        }
        assert!(holds(Some(&row), &ids[KEPT]));
        assert!(holds(Some(&row), &ids[1]));
        assert!(!holds(Some(&row), &ids[0]), "pushed out by later writes");
        assert!(!holds(None, &ids[1]));
    }
}
