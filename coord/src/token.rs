//! Fencing tokens that never go backwards, even across the loss of the record holding them.
//!
//! A lease or task record keeps the last token it handed out; the next one is that plus one,
//! written by compare-and-swap, so within the life of a record tokens strictly grow. A record
//! that is **created** (absent: never written, or lost with the store's data) starts at a
//! time-based epoch instead of 1: the creator's wall clock in milliseconds, shifted left by
//! [`SHIFT`] bits. So the first token after a loss exceeds every token of the lost record
//! as long as
//!
//! > `clock(re-creator, at re-creation) − clock(creator of the lost record, at its creation)
//! > > n / 2^20 ms`, where `n` is the number of tokens the lost record handed out.
//!
//! `n / 2^20 ms` is below the record's lifetime unless one key took over a million
//! compare-and-swaps per millisecond, which no store does; so it holds whenever the two
//! clocks disagree by less than the time the lost record lived (minus `n / 2^20 ms`: 1 ms per
//! million tokens). It fails for a record lost sooner after its creation than the clock
//! skew between the processes, and for a store that **rolls back** to an older copy of the
//! record instead of losing it (an RDB snapshot, a replica promoted after asynchronous
//! replication): the old record's tokens go on from where the copy was taken.
//!
//! Tokens fit the `BIGINT` of SQL fences: the clock is clamped to `[0, 2^43)` ms (until the
//! year 2248), so a first token is below `2^63`, leaving room for `2^20` tokens per
//! millisecond of the clock's range.

/// Bits below the milliseconds of the epoch.
pub(crate) const SHIFT: u32 = 20;

/// Milliseconds beyond which the clock is clamped (the first token stays below `2^63`).
const MAX_MS: i64 = (1 << (63 - SHIFT)) - 1;

/// The first token of a record created when the creator's wall clock reads `now_ms`.
pub(crate) fn first(now_ms: i64) -> u64 {
    // Never 0: a token is at least 1 even for a clock at (or before) the epoch.
    ((now_ms.clamp(0, MAX_MS) as u64) << SHIFT).max(1)
}

/// The token after `prev`, the last one the record handed out.
pub(crate) fn after(prev: u64) -> u64 {
    prev.saturating_add(1)
}

/// The token after `prev`, or, if there is no record (`None`), the first one.
pub(crate) fn next(prev: Option<u64>, now_ms: i64) -> u64 {
    prev.map_or_else(|| first(now_ms), after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_record_starts_above_every_token_of_an_older_one() {
        // A record created at t0 that handed out a million tokens, lost, and re-created 1 s
        // later by a clock that agrees: the new first token is above all of them.
        let t0 = 1_795_000_000_000;
        let old_last = first(t0) + 1_000_000;
        assert!(first(t0 + 1000) > old_last);
        // Re-created within a millisecond of its creation: not above (the stated limit).
        assert!(first(t0) <= old_last);
    }

    #[test]
    fn tokens_grow_by_one_and_fit_a_bigint() {
        assert_eq!(next(Some(41), 0), 42);
        assert_eq!(next(None, 5), 5 << SHIFT);
        assert_eq!(first(0), 1);
        assert_eq!(first(-10), 1);
        assert!(first(i64::MAX) <= i64::MAX as u64);
        assert!(i64::try_from(first(MAX_MS) + (1 << SHIFT) - 1).is_ok());
        // Today's clock leaves room to spare.
        assert!(first(1_795_000_000_000) < (i64::MAX as u64) / 4);
    }
}
