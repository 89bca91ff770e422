//! A session's stored data reads back as it was written, on every codec, and its stored form
//! (the one in the database) keeps its layout.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use larder_cache_api::codec::{Bincode, Json, Postcard};
use larder_cache_api::envelope;
use larder_session_persist::SessionData;
use proptest::prelude::*;

fn session_data() -> impl Strategy<Value = SessionData> {
    proptest::collection::btree_map(".{0,8}", proptest::collection::vec(any::<u8>(), 0..16), 0..6)
        .prop_map(|m: BTreeMap<String, Vec<u8>>| {
            let mut d = SessionData::new();
            for (k, v) in m {
                d.insert_raw(&k, v);
            }
            d
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn session_data_opens_as_sealed_on_every_codec(d in session_data()) {
        prop_assert_eq!(SessionData::from_bytes(&d.to_bytes().unwrap()).unwrap(), d.clone());
        let json: SessionData = envelope::open(&Json, &envelope::seal(&Json, &d).unwrap()).unwrap();
        prop_assert_eq!(&json, &d);
        let bin: SessionData =
            envelope::open(&Bincode, &envelope::seal(&Bincode, &d).unwrap()).unwrap();
        prop_assert_eq!(&bin, &d);
        let post: SessionData =
            envelope::open(&Postcard, &envelope::seal(&Postcard, &d).unwrap()).unwrap();
        prop_assert_eq!(&post, &d);
    }
}

/// The stored form of `{"a": [1], "b": []}`: the envelope header, then a postcard map (length,
/// then each key and value length-prefixed), as every version has written it.
#[test]
fn the_stored_form_keeps_its_layout() {
    let mut d = SessionData::new();
    d.insert_raw("a", vec![1]);
    d.insert_raw("b", Vec::new());
    let bytes = [
        &envelope::MAGIC[..],
        &[envelope::FORMAT_VERSION, 1, 0],
        &[2, 1, b'a', 1, 1, 1, b'b', 0],
    ]
    .concat();
    assert_eq!(d.to_bytes().unwrap().as_ref(), &bytes[..]);
    assert_eq!(SessionData::from_bytes(&bytes).unwrap(), d);
}
