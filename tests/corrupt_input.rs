//! Bad input never panics, never allocates without bound, and never yields wrong events:
//! decoding stops with an error naming the object and the reason, and every event emitted
//! before the error is one the file really holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use apache_avro::{Codec, DeflateSettings, ZstandardSettings};
use currents_heap::currents::decode::EventReader;
use currents_heap::currents::synth::{SynthOptions, synthesize};
use proptest::prelude::*;
use serde_json::Value as Json;

/// Counts live heap bytes so tests can bound what corrupt input makes the decoder allocate.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Peak live heap over the whole test binary (tests run in parallel, so this bounds them all).
const PEAK_LIMIT: usize = 128 * 1024 * 1024;

const OBJECT: &str = "bucket/currents/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/1/z/f+0+0000000000.avro";

fn schema() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/users.behaviors.CustomEvent.avsc"
    ))
    .unwrap()
}

struct Sample {
    avro: Vec<u8>,
    expected: Vec<Json>,
    /// Offsets just after each sync marker: the header's end and every block's end.
    boundaries: Vec<usize>,
}

fn sample(codec: Codec, seed: u64) -> Sample {
    let file = synthesize(
        &schema(),
        "users.behaviors.CustomEvent",
        &SynthOptions {
            events: 30,
            codec,
            block_size: 700,
            seed,
            ..SynthOptions::default()
        },
    )
    .unwrap();
    let marker = file.avro[file.avro.len() - 16..].to_vec();
    let boundaries = file
        .avro
        .windows(16)
        .enumerate()
        .filter(|(_, w)| *w == marker.as_slice())
        .map(|(i, _)| i + 16)
        .collect();
    Sample {
        avro: file.avro,
        expected: file.expected,
        boundaries,
    }
}

fn codecs() -> [Codec; 4] {
    [
        Codec::Null,
        Codec::Deflate(DeflateSettings::default()),
        Codec::Snappy,
        Codec::Zstandard(ZstandardSettings::default()),
    ]
}

/// Decodes everything; returns the events emitted and the error that stopped decoding.
fn decode(bytes: &[u8]) -> (Vec<Json>, Option<String>) {
    let mut events = Vec::new();
    let mut reader = match EventReader::open(bytes, OBJECT) {
        Ok(reader) => reader,
        Err(e) => return (events, Some(e.to_string())),
    };
    loop {
        match reader.next_event() {
            Ok(Some((event, _))) => events.push(serde_json::to_value(&event).unwrap()),
            Ok(None) => return (events, None),
            Err(e) => return (events, Some(e.to_string())),
        }
    }
}

fn assert_named(error: &str) {
    assert!(
        error.starts_with(OBJECT),
        "error does not name the object: {error}"
    );
    assert!(
        error.len() > OBJECT.len() + 5,
        "error gives no reason: {error}"
    );
}

#[test]
fn samples_have_several_blocks_and_decode_completely() {
    for codec in codecs() {
        let s = sample(codec, 1);
        assert!(
            s.boundaries.len() >= 4,
            "{codec:?}: only {} boundaries",
            s.boundaries.len()
        );
        assert_eq!(decode(&s.avro), (s.expected.clone(), None), "{codec:?}");
    }
}

#[test]
fn truncation_at_every_block_boundary_yields_exactly_the_whole_blocks() {
    for codec in codecs() {
        let s = sample(codec, 2);
        let mut previous = 0;
        for (i, &cut) in s.boundaries.iter().enumerate() {
            // At a boundary the file is a valid, shorter container: Avro has no footer, so
            // this is not detectable, and the events are exactly those of the whole blocks.
            let (events, error) = decode(&s.avro[..cut]);
            assert_eq!(error, None, "{codec:?} cut at boundary {cut}");
            assert_eq!(events, s.expected[..events.len()], "{codec:?} cut at {cut}");
            assert!(
                i == 0 || events.len() > previous,
                "{codec:?}: block {i} added no events"
            );
            previous = events.len();
            // One byte either side of a boundary is inside a block: an error, never a guess.
            for near in [cut - 1, cut + 1] {
                if near < s.avro.len() {
                    let (events, error) = decode(&s.avro[..near]);
                    let error =
                        error.unwrap_or_else(|| panic!("{codec:?}: cut at {near} went unnoticed"));
                    assert_named(&error);
                    assert!(error.contains("truncated"), "{error}");
                    assert_eq!(events, s.expected[..events.len()]);
                }
            }
        }
        assert_eq!(previous, s.expected.len());
    }
}

fn codec_strategy() -> impl Strategy<Value = usize> {
    0..4usize
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn truncation_at_any_offset_is_an_error_unless_at_a_boundary(codec in codec_strategy(), seed in 0..4u64, at in 0.0..1.0f64) {
        let s = sample(codecs()[codec], seed);
        let cut = (at * s.avro.len() as f64) as usize;
        let (events, error) = decode(&s.avro[..cut]);
        prop_assert_eq!(&events[..], &s.expected[..events.len()]);
        if s.boundaries.contains(&cut) {
            prop_assert_eq!(error, None);
        } else {
            let error = error.unwrap();
            assert_named(&error);
        }
        prop_assert!(PEAK.load(Ordering::Relaxed) < PEAK_LIMIT);
    }

    #[test]
    fn random_byte_flips_never_panic_and_errors_name_the_object(
        codec in codec_strategy(),
        flips in proptest::collection::vec((0.0..1.0f64, 1..=255u8), 1..6),
    ) {
        let s = sample(codecs()[codec], 3);
        let mut bytes = s.avro.clone();
        for (at, mask) in flips {
            let i = (at * bytes.len() as f64) as usize;
            bytes[i] ^= mask;
        }
        let (_, error) = decode(&bytes);
        if let Some(error) = error {
            assert_named(&error);
        }
        prop_assert!(PEAK.load(Ordering::Relaxed) < PEAK_LIMIT);
    }

    #[test]
    fn huge_length_prefixes_are_rejected_without_allocating(
        codec in codec_strategy(),
        at in 0.0..1.0f64,
        value in prop_oneof![(1i64 << 24)..i64::MAX, i64::MIN..-1],
    ) {
        let s = sample(codecs()[codec], 4);
        let header_end = s.boundaries[0];
        let i = header_end + (at * (s.avro.len() - header_end) as f64) as usize;
        let mut bytes = s.avro[..i].to_vec();
        bytes.extend(varint(value));
        bytes.extend(&s.avro[i..]);
        let (events, error) = decode(&bytes);
        if let Some(error) = error {
            assert_named(&error);
        }
        prop_assert!(events.len() <= s.expected.len() + 1);
        prop_assert!(PEAK.load(Ordering::Relaxed) < PEAK_LIMIT);
    }
}

// ---- Hand-built containers for each failure the reader must name. ----

fn varint(v: i64) -> Vec<u8> {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

fn avro_string(s: &[u8]) -> Vec<u8> {
    let mut out = varint(s.len() as i64);
    out.extend_from_slice(s);
    out
}

const MARKER: [u8; 16] = *b"0123456789abcdef";
const TINY_SCHEMA: &str = r#"{"type":"record","name":"E","namespace":"dataexport.S3.inner.users.x","fields":[{"name":"id","type":"string"},{"name":"time","type":"int"}]}"#;

fn header(metadata: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"Obj\x01".to_vec();
    out.extend(varint(metadata.len() as i64));
    for (k, v) in metadata {
        out.extend(avro_string(k.as_bytes()));
        out.extend(avro_string(v));
    }
    out.push(0);
    out.extend(MARKER);
    out
}

fn block(count: i64, data: &[u8]) -> Vec<u8> {
    let mut out = varint(count);
    out.extend(varint(data.len() as i64));
    out.extend_from_slice(data);
    out.extend(MARKER);
    out
}

fn record(id: &str, time: i64) -> Vec<u8> {
    let mut out = avro_string(id.as_bytes());
    out.extend(varint(time));
    out
}

fn error_of(bytes: &[u8]) -> String {
    let (_, error) = decode(bytes);
    let error = error.expect("decoding should fail");
    assert_named(&error);
    error
}

#[test]
fn a_well_formed_hand_built_file_decodes() {
    let mut file = header(&[("avro.schema", TINY_SCHEMA.as_bytes())]);
    file.extend(block(2, &[record("a", 1), record("b", 2)].concat()));
    let (events, error) = decode(&file);
    assert_eq!(error, None);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["id"], "b");
    // The key names the type; without it the schema does.
    let reader = EventReader::open(&file[..], "local.avro").unwrap();
    assert_eq!(&**reader.event_type(), "users.x.E");
}

#[test]
fn a_header_without_blocks_is_an_empty_object() {
    let file = header(&[("avro.schema", TINY_SCHEMA.as_bytes())]);
    assert_eq!(decode(&file), (vec![], None));
}

#[test]
fn each_kind_of_damage_is_named() {
    let schema = TINY_SCHEMA.as_bytes();
    let good_header = header(&[("avro.schema", schema)]);
    let with_block = |count: i64, data: &[u8]| [good_header.clone(), block(count, data)].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        (
            "not avro",
            b"PAR1....".to_vec(),
            "not an Avro object container file",
        ),
        ("no schema", header(&[]), "no `avro.schema`"),
        (
            "schema not json",
            header(&[("avro.schema", b"{")]),
            "not valid JSON",
        ),
        (
            "not an event",
            header(&[("avro.schema", br#""string""#)]),
            "not a Currents event",
        ),
        (
            "bzip2",
            header(&[("avro.schema", schema), ("avro.codec", b"bzip2")]),
            "codec `bzip2` is not supported",
        ),
        (
            "huge metadata",
            [b"Obj\x01".to_vec(), varint(1), varint(1 << 40)].concat(),
            "impossible length",
        ),
        (
            "huge block size",
            [good_header.clone(), varint(1), varint(1 << 30)].concat(),
            "over the 16777216-byte limit",
        ),
        (
            "negative count",
            with_block(-3, &record("a", 1)),
            "declares -3 records",
        ),
        (
            "absurd count",
            with_block(1 << 40, &record("a", 1)),
            "declares 1099511627776 records but holds only",
        ),
        (
            "leftover bytes",
            with_block(1, &[record("a", 1), vec![7, 7]].concat()),
            "left over",
        ),
        (
            "truncated string",
            with_block(1, &[varint(10), b"abc".to_vec()].concat()),
            "string length 10 exceeds the 3 bytes left",
        ),
        (
            "bad sync",
            {
                let mut f = with_block(1, &record("a", 1));
                let n = f.len();
                f[n - 1] ^= 1;
                f
            },
            "sync marker does not match",
        ),
        (
            "bad deflate",
            [
                header(&[("avro.schema", schema), ("avro.codec", b"deflate")]),
                block(1, b"\xff\xfe\xfd"),
            ]
            .concat(),
            "could not be decompressed (deflate)",
        ),
        (
            "bad snappy crc",
            {
                let mut data = snap::raw::Encoder::new()
                    .compress_vec(&record("a", 1))
                    .unwrap();
                data.extend([0, 0, 0, 0]);
                [
                    header(&[("avro.schema", schema), ("avro.codec", b"snappy")]),
                    block(1, &data),
                ]
                .concat()
            },
            "could not be decompressed (snappy)",
        ),
    ];
    for (name, bytes, reason) in cases {
        let error = error_of(&bytes);
        assert!(
            error.contains(reason),
            "{name}: `{error}` does not say `{reason}`"
        );
    }
}

#[test]
fn peak_memory_stayed_bounded() {
    // Runs alongside the property tests; a decoder that trusted a length would blow this.
    let s = sample(Codec::Null, 9);
    let mut bytes = s.avro[..s.boundaries[0]].to_vec();
    bytes.extend(varint(1));
    bytes.extend(varint(16 * 1024 * 1024));
    bytes.extend(&s.avro[s.boundaries[0] + 2..]);
    let _ = decode(&bytes);
    assert!(
        PEAK.load(Ordering::Relaxed) < PEAK_LIMIT,
        "peak {}",
        PEAK.load(Ordering::Relaxed)
    );
}
