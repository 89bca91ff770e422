//! Operator text quoted in error messages, shared by the schedule parsers (kept apart so
//! that `schedule` and `zoned_cron` do not import each other).

/// `text` quoted for an error message: a bounded prefix only, as the text may be arbitrarily
/// long.
pub(crate) fn quoted(text: &str) -> String {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{:?}{}",
        &text[..end],
        if end < text.len() { "…" } else { "" }
    )
}
