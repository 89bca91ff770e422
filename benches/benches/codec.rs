//! Encode and decode of a session-like struct ([`Session`], 12 fields) with each codec, and
//! through the envelope (`envelope::seal` / `envelope::open`) with postcard to show what
//! the 5-byte header costs.
//!
//! `encode` writes into a fresh `Vec::with_capacity(64)` on every iteration, exactly as
//! `envelope::seal` does, so `encode` and `envelope_seal` differ only by the header and the
//! `Vec` to `Bytes` conversion. The encoded sizes are printed to stderr before the benches
//! run.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use larder_benches::Session;
use larder_cache_api::codec::{Bincode, Codec, Json, Postcard};
use larder_cache_api::envelope;

fn encode_to_vec<C: Codec>(codec: &C, s: &Session) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    codec.encode(s, &mut buf).expect("encode");
    buf
}

fn bench_codec<C: Codec>(g: &mut BenchmarkGroup<'_, WallTime>, codec: C, s: &Session) {
    let encoded = encode_to_vec(&codec, s);
    let back: Session = codec.decode(&encoded).expect("decode");
    assert_eq!(&back, s);
    eprintln!(
        "codec size: {:<8} {:>4} bytes ({} with envelope)",
        C::NAME,
        encoded.len(),
        encoded.len() + envelope::HEADER_LEN
    );
    g.bench_function(format!("{}/encode", C::NAME), |b| {
        b.iter(|| encode_to_vec(&codec, black_box(s)))
    });
    g.bench_function(format!("{}/decode", C::NAME), |b| {
        b.iter(|| {
            codec
                .decode::<Session>(black_box(&encoded))
                .expect("decode")
        })
    });
}

fn codecs(c: &mut Criterion) {
    let s = Session::sample(42);
    let mut g = c.benchmark_group("codec_session");
    bench_codec(&mut g, Postcard, &s);
    bench_codec(&mut g, Bincode, &s);
    bench_codec(&mut g, Json, &s);

    let sealed = envelope::seal(&Postcard, &s).expect("seal");
    g.bench_function("postcard/envelope_seal", |b| {
        b.iter(|| envelope::seal(&Postcard, black_box(&s)).expect("seal"))
    });
    g.bench_function("postcard/envelope_open", |b| {
        b.iter(|| envelope::open::<_, Session>(&Postcard, black_box(&sealed)).expect("open"))
    });
    g.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out because the macro's
// `pub fn benches` trips the workspace's `missing_docs` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    codecs(&mut c);
    c.final_summary();
}
