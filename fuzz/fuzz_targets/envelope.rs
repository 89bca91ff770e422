//! Bytes read back from a store are untrusted: corrupt, truncated, written by another program
//! or another codec. `envelope::open` must refuse them with a `Decode` error, never panic or
//! allocate what a length prefix claims, and whatever it accepts must seal and open again to
//! the same value.
#![no_main]

use std::collections::BTreeMap;
use std::fmt::Debug;

use larder_cache_api::codec::{Bincode, Codec, Json, Postcard};
use larder_cache_api::{envelope, ErrorKind};
use larder_coord::{LeaseRecord, TaskRecord};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn one<C: Codec, T: Serialize + DeserializeOwned + PartialEq + Debug>(codec: &C, bytes: &[u8]) {
    match envelope::open::<C, T>(codec, bytes) {
        Ok(v) => {
            let header = &bytes[..envelope::HEADER_LEN];
            assert_eq!(header[..2], envelope::MAGIC);
            assert_eq!(header[2], envelope::FORMAT_VERSION);
            assert_eq!(header[3], C::ID);
            assert_eq!(header[4], 0);
            let sealed = envelope::seal(codec, &v).expect("an opened value seals");
            let again: T = envelope::open(codec, &sealed).expect("a sealed value opens");
            assert_eq!(again, v);
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Decode, "{e}"),
    }
}

fn all_types<C: Codec>(codec: &C, bytes: &[u8]) {
    one::<C, Vec<u8>>(codec, bytes);
    one::<C, String>(codec, bytes);
    one::<C, u64>(codec, bytes);
    one::<C, Option<(i64, String, bool)>>(codec, bytes);
    one::<C, BTreeMap<String, Vec<u8>>>(codec, bytes);
    one::<C, Vec<String>>(codec, bytes);
    one::<C, TaskRecord>(codec, bytes);
    one::<C, LeaseRecord>(codec, bytes);
}

fn with_header<C: Codec>(codec: &C, payload: &[u8]) {
    let mut b = Vec::with_capacity(payload.len() + envelope::HEADER_LEN);
    b.extend_from_slice(&envelope::MAGIC);
    b.push(envelope::FORMAT_VERSION);
    b.push(C::ID);
    b.push(0);
    b.extend_from_slice(payload);
    all_types(codec, &b);
}

fuzz_target!(|data: &[u8]| {
    // As found in the store...
    all_types(&Postcard, data);
    all_types(&Json, data);
    all_types(&Bincode, data);
    // ...and behind a valid header, so that the payload decoders get the mutations.
    with_header(&Postcard, data);
    with_header(&Json, data);
    with_header(&Bincode, data);
});
