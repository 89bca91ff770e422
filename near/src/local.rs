//! One entry of the local tier, and the rules that decide whether it may be served.

use larder_cache_api::{Entry, Version};

use crate::tag::Tag;

/// An entry kept in process memory, with what decides whether it may still be served.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub(crate) entry: Entry,
    /// The key's tag taken *before* the read that fetched the entry was sent.
    pub(crate) tag: Tag,
    /// The key's stripe, so that a hit does not hash the key a second time.
    pub(crate) stripe: u32,
    /// Served until this tick of the coherence clock (max age, or the hinted expiry).
    pub(crate) until: u64,
}

impl Local {
    /// Whether the entry may be served at tick `now`, its key's tag being `current`: nothing
    /// was invalidated or flushed since its read was sent, and it is not past its time.
    pub(crate) fn servable(&self, current: Tag, now: u64) -> bool {
        self.tag == current && now < self.until
    }

    /// Whether a read of the same invalidation window (`tag`) that saw `version` contradicts
    /// this live entry: a write's invalidation is then on its way, and which of the two
    /// versions is newer is unknown (versions of some backends are random).
    pub(crate) fn contradicted_by(&self, tag: Tag, version: Version, now: u64) -> bool {
        self.tag == tag && self.until > now && self.entry.version != version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: Tag = Tag { epoch: 3, seq: 7 };

    fn local(version: u64) -> Local {
        Local {
            entry: Entry::new(&b"v"[..], Version::from_raw(version)),
            tag: TAG,
            stripe: 0,
            until: 100,
        }
    }

    #[test]
    fn served_only_with_the_tag_it_was_read_under_and_before_its_time() {
        let l = local(1);
        assert!(l.servable(TAG, 99));
        assert!(!l.servable(TAG, 100), "served past its time");
        assert!(
            !l.servable(Tag { epoch: 3, seq: 8 }, 1),
            "served after an invalidation of its stripe"
        );
        assert!(
            !l.servable(Tag { epoch: 4, seq: 7 }, 1),
            "served after a flush"
        );
    }

    #[test]
    fn another_version_of_the_same_window_contradicts_it() {
        let l = local(1);
        assert!(l.contradicted_by(TAG, Version::from_raw(2), 50));
        assert!(
            !l.contradicted_by(TAG, Version::from_raw(1), 50),
            "same version"
        );
        assert!(
            !l.contradicted_by(Tag { epoch: 3, seq: 8 }, Version::from_raw(2), 50),
            "a later window replaces it"
        );
        assert!(
            !l.contradicted_by(TAG, Version::from_raw(2), 100),
            "an expired entry contradicts nothing"
        );
    }
}
