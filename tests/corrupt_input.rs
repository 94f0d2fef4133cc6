//! Bad input never panics, never allocates without bound, and never yields wrong events:
//! decoding stops with an error naming the object and the reason, and every event emitted
//! before the error is one the file really holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use currents_heap::currents::container::MAX_BLOCK_BYTES;
use currents_heap::currents::decode::EventReader;
use currents_heap_testkit::apache_avro::{Codec, DeflateSettings, ZstandardSettings};
use currents_heap_testkit::synth::{SynthOptions, synthesize};
use proptest::prelude::*;
use serde_json::Value as Json;

/// Counts live heap bytes so tests can bound what corrupt input makes the decoder allocate:
/// over the whole process, and per thread (a decode runs on the test's thread, and tests run
/// in parallel, so only the per-thread count can be pinned to one decode).
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised and without destructors: safe to touch from inside the allocator.
    static THREAD_LIVE: Cell<isize> = const { Cell::new(0) };
    static THREAD_PEAK: Cell<isize> = const { Cell::new(0) };
}

fn thread_count(delta: isize) {
    let _ = THREAD_LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = THREAD_PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        thread_count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        thread_count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns its result and the most heap it held live at once on this thread,
/// above what was live when it began.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = THREAD_LIVE.with(Cell::get);
    THREAD_PEAK.with(|peak| peak.set(base));
    let result = f();
    let peak = THREAD_PEAK.with(Cell::get) - base;
    (result, peak.max(0) as usize)
}

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

// ---- Claims beyond the limit: refused without allocating what they claim. ----

/// 1 GiB: 64 times [`MAX_BLOCK_BYTES`], so a decoder that trusted a claim (allocated for it
/// up front, or read or inflated until the claim was met) would hold far more than any bound
/// below, and than the whole binary's `PEAK_LIMIT`.
const CLAIM: i64 = 1 << 30;

/// What a refused claim may cost: the 64 KiB read buffer, the header, one small block.
const SMALL: usize = 1024 * 1024;

/// A decompressor that stops at the limit may have grown its output to the limit and, while
/// growing, held the old buffer beside one twice its size (3 × the limit), besides the
/// compressed block and its own buffers. The bombs below inflate to 4 times this.
const AT_THE_LIMIT: usize = 4 * MAX_BLOCK_BYTES;

fn unsigned_varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// A raw deflate stream (no zlib wrapper, as Avro writes it) that inflates to `len` zero
/// bytes: one fixed-Huffman block of a literal and then matches of 258 at distance 1, about
/// 13 bits per 258 bytes, written without ever holding the inflated bytes.
fn deflate_bomb(len: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        /// Header fields: least significant bit first.
        fn put(&mut self, value: u64, bits: u32) {
            self.acc |= value << self.n;
            self.n += bits;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Huffman codes: most significant bit first.
        fn code(&mut self, code: u64, bits: u32) {
            let reversed = (0..bits).fold(0, |r, i| (r << 1) | ((code >> i) & 1));
            self.put(reversed, bits);
        }
    }
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE 01: fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    for _ in 0..(len - 1) / 258 {
        bits.code(0xC5, 8); // length symbol 285: 258 bytes
        bits.code(0, 5); // distance code 0: distance 1
    }
    bits.code(0, 7); // end of block
    bits.put(0, 7); // flush
    bits.out
}

/// A zstd frame of RLE blocks that decompresses to `blocks` × 128 KiB zero bytes and declares
/// no content size, so only a decoder that bounds its output while streaming can refuse it.
fn zstd_bomb(blocks: usize) -> Vec<u8> {
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD]; // magic
    frame.push(0x00); // no content size, no checksum, no dictionary, not single-segment
    frame.push(7 << 3); // window 2^(10+7) = 128 KiB
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = last | (1 << 1) | ((128 * 1024) << 3); // RLE, 128 KiB
        frame.extend(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame
}

/// A snappy block (Avro's framing: raw snappy, then a big-endian CRC32 of the output) whose
/// preamble claims `claim` bytes but which holds one literal byte.
fn snappy_claim(claim: u64) -> Vec<u8> {
    let mut data = unsigned_varint(claim);
    data.extend([0x00, b'a']); // a literal of length 1
    data.extend([0, 0, 0, 0]);
    data
}

fn with_codec(codec: &[u8], count: i64, data: &[u8]) -> Vec<u8> {
    [
        header(&[
            ("avro.schema", TINY_SCHEMA.as_bytes()),
            ("avro.codec", codec),
        ]),
        block(count, data),
    ]
    .concat()
}

#[test]
fn claims_far_beyond_the_limit_are_refused_without_allocating_them() {
    let good_header = header(&[("avro.schema", TINY_SCHEMA.as_bytes())]);
    let s = sample(Codec::Null, 9);
    // The sample's blocks, after a block header that claims 1 GiB: a decoder that took the
    // claim would read every byte that follows as one block, or allocate for all of it.
    let block_claim = {
        let mut bytes = s.avro[..s.boundaries[0]].to_vec();
        bytes.extend(varint(1));
        bytes.extend(varint(CLAIM));
        bytes.extend(&s.avro[s.boundaries[0]..]);
        bytes
    };
    let limit = format!("over the {MAX_BLOCK_BYTES}-byte limit");
    let cases: Vec<(&str, Vec<u8>, String, usize)> = vec![
        (
            "block size",
            block_claim,
            format!("it declares {CLAIM} bytes, {limit}"),
            SMALL,
        ),
        (
            "metadata length",
            [
                b"Obj\x01".to_vec(),
                varint(1),
                avro_string(b"avro.schema"),
                varint(CLAIM),
                vec![b'{'; 4096],
            ]
            .concat(),
            format!("has an impossible length {CLAIM}"),
            SMALL,
        ),
        (
            "record count",
            [good_header, block(CLAIM, &record("a", 1))].concat(),
            format!("declares {CLAIM} records but holds only"),
            SMALL,
        ),
        (
            "snappy length",
            with_codec(b"snappy", 1, &snappy_claim(CLAIM as u64)),
            "could not be decompressed (snappy)".into(),
            SMALL,
        ),
        (
            "deflate output",
            with_codec(b"deflate", 1, &deflate_bomb(CLAIM as usize / 4)),
            "could not be decompressed (deflate)".into(),
            AT_THE_LIMIT,
        ),
        (
            "zstandard output",
            with_codec(
                b"zstandard",
                1,
                &zstd_bomb(CLAIM as usize / 4 / (128 * 1024)),
            ),
            "could not be decompressed (zstandard)".into(),
            AT_THE_LIMIT,
        ),
    ];
    for (name, bytes, reason, bound) in cases {
        assert!(
            bytes.len() < 4 * SMALL,
            "{name}: the input is small next to the claim"
        );
        let ((events, error), peak) = peak_of(|| decode(&bytes));
        assert!(
            peak <= bound,
            "{name}: decoding held {peak} bytes at once, over the bound of {bound}"
        );
        let error = error.unwrap_or_else(|| panic!("{name}: accepted ({} events)", events.len()));
        assert_named(&error);
        assert!(
            error.contains(&reason),
            "{name}: `{error}` does not say `{reason}`"
        );
    }
    assert!(
        PEAK.load(Ordering::Relaxed) < PEAK_LIMIT,
        "peak {}",
        PEAK.load(Ordering::Relaxed)
    );
}
