//! Resuming inside an Avro container file (issue 19): the reader says where each block starts,
//! skips whole blocks by their record counts without decompressing them, and resumes from a
//! block's byte offset given the header separately (what a ranged GET from that offset gives).
//!
//! The block layout the tests compare against is parsed here, independently of the reader,
//! from the bytes apache-avro's writer produced.

use currents_heap::currents::container::{BlockStart, ContainerError, ContainerReader};
use currents_heap::currents::datum::Datum;
use currents_heap::currents::decode::EventReader;
use currents_heap_testkit::apache_avro::{Codec, DeflateSettings, ZstandardSettings};
use currents_heap_testkit::synth::{CUSTOM_EVENT_SCHEMA, SynthOptions, synthesize};
use serde_json::Value as Json;

const OBJECT: &str = "bucket/currents/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/1/z/f+0+0000000000.avro";
const EVENTS: usize = 40;

fn codecs() -> [Codec; 4] {
    [
        Codec::Null,
        Codec::Deflate(DeflateSettings::default()),
        Codec::Snappy,
        Codec::Zstandard(ZstandardSettings::default()),
    ]
}

/// One block as the bytes lay it out.
#[derive(Debug, Clone, Copy)]
struct Block {
    offset: usize,
    first_record: u64,
    count: u64,
    /// Where its (compressed) data starts, and how long it is.
    data: usize,
    size: usize,
}

struct Sample {
    avro: Vec<u8>,
    header_len: usize,
    blocks: Vec<Block>,
}

fn varint(bytes: &[u8], at: &mut usize) -> i64 {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return ((value >> 1) as i64) ^ -((value & 1) as i64);
        }
    }
}

fn sample(codec: Codec, seed: u64) -> Sample {
    let avro = synthesize(
        CUSTOM_EVENT_SCHEMA,
        "users.behaviors.CustomEvent",
        &SynthOptions {
            events: EVENTS,
            codec,
            block_size: 700,
            seed,
            ..SynthOptions::default()
        },
    )
    .unwrap()
    .avro;
    let marker = &avro[avro.len() - 16..];
    let header_len = avro.windows(16).position(|w| w == marker).unwrap() + 16;
    let mut blocks = Vec::new();
    let (mut at, mut first_record) = (header_len, 0);
    while at < avro.len() {
        let offset = at;
        let count = varint(&avro, &mut at) as u64;
        let size = varint(&avro, &mut at) as usize;
        blocks.push(Block {
            offset,
            first_record,
            count,
            data: at,
            size,
        });
        at += size;
        assert_eq!(&avro[at..at + 16], marker, "block at {offset}");
        at += 16;
        first_record += count;
    }
    assert!(blocks.len() >= 4, "{codec:?}: only {} blocks", blocks.len());
    assert_eq!(first_record, EVENTS as u64);
    Sample {
        avro,
        header_len,
        blocks,
    }
}

impl Sample {
    fn start(&self, block: usize) -> BlockStart {
        BlockStart {
            offset: self.blocks[block].offset as u64,
            first_record: self.blocks[block].first_record,
        }
    }

    fn block_of(&self, record: u64) -> usize {
        self.blocks
            .iter()
            .rposition(|b| b.first_record <= record)
            .unwrap()
    }

    /// The file with block `index`'s data overwritten: its count, size and sync marker intact.
    fn with_corrupt_data(&self, index: usize) -> Vec<u8> {
        let mut avro = self.avro.clone();
        let b = self.blocks[index];
        avro[b.data..b.data + b.size].fill(0xff);
        avro
    }
}

/// Every record left, or the error that stopped the reader.
fn rest<R: std::io::Read>(reader: &mut ContainerReader<R>) -> Result<Vec<Vec<Datum>>, String> {
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().map_err(|e| e.to_string())? {
        records.push(record);
    }
    Ok(records)
}

#[test]
fn every_record_resumes_alike_from_the_start_and_from_its_block() {
    for codec in codecs() {
        let s = sample(codec, 1);
        let all = rest(&mut ContainerReader::open(&s.avro[..]).unwrap()).unwrap();
        assert_eq!(all.len(), EVENTS);
        for k in 0..=EVENTS as u64 + 2 {
            let expected = &all[(k as usize).min(EVENTS)..];
            let mut reader = ContainerReader::open(&s.avro[..]).unwrap();
            assert_eq!(
                reader.skip_to(k).unwrap(),
                k.min(EVENTS as u64),
                "{codec:?} k={k}"
            );
            assert_eq!(reader.next_index(), k.min(EVENTS as u64));
            assert_eq!(
                rest(&mut reader).unwrap(),
                expected,
                "{codec:?} open, k={k}"
            );

            let block = s.block_of(k.min(EVENTS as u64 - 1));
            let at = s.start(block);
            // The header alone, and the whole file as header (bytes after it are ignored).
            for header in [&s.avro[..s.header_len], &s.avro[..]] {
                let mut resumed =
                    ContainerReader::open_at(header, &s.avro[at.offset as usize..], at).unwrap();
                assert_eq!(resumed.header_len(), s.header_len as u64);
                assert_eq!(resumed.next_index(), at.first_record);
                assert_eq!(resumed.block_start(), at);
                let passed = resumed.skip_to(k).unwrap();
                assert_eq!(passed, k.min(EVENTS as u64) - at.first_record, "k={k}");
                assert_eq!(rest(&mut resumed).unwrap(), expected, "{codec:?} at, k={k}");
            }
            // From any earlier block too: whole blocks in between are skipped.
            let mut from_first =
                ContainerReader::open_at(&s.avro[..], &s.avro[s.header_len..], s.start(0)).unwrap();
            from_first.skip_to(k).unwrap();
            assert_eq!(rest(&mut from_first).unwrap(), expected, "{codec:?} k={k}");
        }
    }
}

#[test]
fn header_len_and_block_starts_agree_with_the_bytes() {
    for codec in codecs() {
        let s = sample(codec, 2);
        let mut reader = ContainerReader::open(&s.avro[..]).unwrap();
        assert_eq!(reader.header_len(), s.header_len as u64);
        assert_eq!(reader.next_index(), 0);
        assert_eq!(
            reader.block_start(),
            BlockStart {
                offset: s.header_len as u64,
                first_record: 0
            }
        );
        for k in 0..EVENTS as u64 {
            assert!(reader.next_record().unwrap().is_some());
            assert_eq!(reader.next_index(), k + 1);
            assert_eq!(
                reader.block_start(),
                s.start(s.block_of(k)),
                "{codec:?} {k}"
            );
        }
        assert!(reader.next_record().unwrap().is_none());
        // After a skip to a block's first record, the reader stands after the block before it.
        for (i, b) in s.blocks.iter().enumerate().skip(1) {
            let mut reader = ContainerReader::open(&s.avro[..]).unwrap();
            reader.skip_to(b.first_record + 1).unwrap();
            assert_eq!(reader.block_start(), s.start(i), "{codec:?}");
            let mut reader = ContainerReader::open(&s.avro[..]).unwrap();
            reader.skip_to(b.first_record).unwrap();
            assert_eq!(reader.block_start(), s.start(i - 1), "{codec:?}");
        }
    }
}

#[test]
fn skipped_blocks_are_never_decompressed_or_decoded() {
    for codec in codecs() {
        let s = sample(codec, 3);
        let all = rest(&mut ContainerReader::open(&s.avro[..]).unwrap()).unwrap();
        let bad = 2;
        let avro = s.with_corrupt_data(bad);
        let b = s.blocks[bad];
        // Read, the block fails: its data really is unreadable.
        let error = rest(&mut ContainerReader::open(&avro[..]).unwrap()).unwrap_err();
        assert!(
            error.contains(&format!("byte {}", b.offset)),
            "{codec:?}: {error}"
        );
        // Skipped, it is not even looked into: everything after it reads fine.
        let after = b.first_record + b.count;
        for k in [after, after + 1, EVENTS as u64 - 1] {
            let mut reader = ContainerReader::open(&avro[..]).unwrap();
            assert_eq!(reader.skip_to(k).unwrap(), k);
            assert_eq!(rest(&mut reader).unwrap(), all[k as usize..], "{codec:?}");
            let at = s.start(bad - 1);
            let mut resumed =
                ContainerReader::open_at(&avro[..], &avro[at.offset as usize..], at).unwrap();
            resumed.skip_to(k).unwrap();
            assert_eq!(rest(&mut resumed).unwrap(), all[k as usize..], "{codec:?}");
        }
        // A record inside it cannot be reached.
        let mut reader = ContainerReader::open(&avro[..]).unwrap();
        let error = reader.skip_to(b.first_record + 1).unwrap_err().to_string();
        assert!(
            error.contains(&format!("byte {}", b.offset)),
            "{codec:?}: {error}"
        );
    }
}

#[test]
fn an_offset_that_is_not_a_block_start_is_refused_naming_it() {
    for codec in codecs() {
        let s = sample(codec, 4);
        let starts: Vec<usize> = s.blocks.iter().map(|b| b.offset).collect();
        // Every byte of the header and the first blocks (a stray field before a sync marker
        // can look like a block there as anywhere), then every 5th, then past the end.
        let dense = s.blocks[3].offset;
        let offsets = (0..dense)
            .chain((dense..s.avro.len()).step_by(5))
            .chain(s.avro.len()..s.avro.len() + 3);
        for offset in offsets {
            if starts.contains(&offset) {
                continue;
            }
            let body = &s.avro[offset.min(s.avro.len())..];
            let at = BlockStart {
                offset: offset as u64,
                first_record: 5,
            };
            match ContainerReader::open_at(&s.avro[..s.header_len], body, at) {
                Err(ContainerError::Block {
                    offset: named,
                    reason,
                    ..
                }) => {
                    assert_eq!(named, offset as u64, "{codec:?}: {reason}");
                }
                Err(e) => panic!("{codec:?} at {offset}: not a block error: {e}"),
                Ok(_) => panic!("{codec:?}: byte {offset} was taken for a block start"),
            }
            if offset % 8 != 0 {
                continue;
            }
            let error = EventReader::open_at(&s.avro[..s.header_len], body, at, OBJECT)
                .err()
                .unwrap()
                .to_string();
            assert!(
                error.starts_with(OBJECT) && error.contains(&format!("byte {offset}")),
                "{error}"
            );
        }
    }
}

#[test]
fn a_resumed_reader_names_the_real_offsets_in_its_errors() {
    for codec in codecs() {
        let s = sample(codec, 5);
        let bad = 3;
        let avro = s.with_corrupt_data(bad);
        let named = format!("byte {}", s.blocks[bad].offset);
        let at = s.start(1);
        let mut resumed =
            ContainerReader::open_at(&avro[..], &avro[at.offset as usize..], at).unwrap();
        let error = rest(&mut resumed).unwrap_err();
        assert!(error.contains(&named), "{codec:?}: {error}");

        // A body shorter than declared: while reading, and while skipping.
        let cut = s.blocks[bad].data + 3;
        for skip in [None, Some(EVENTS as u64)] {
            let mut resumed =
                ContainerReader::open_at(&s.avro[..], &s.avro[at.offset as usize..cut], at)
                    .unwrap();
            let error = match skip {
                None => rest(&mut resumed).unwrap_err(),
                Some(k) => resumed.skip_to(k).unwrap_err().to_string(),
            };
            assert!(error.contains("truncated"), "{codec:?}: {error}");
            assert!(error.contains(&named), "{codec:?}: {error}");
        }
        // A body that ends inside the block it starts with.
        let body = &s.avro[at.offset as usize..s.blocks[2].offset - 1];
        match ContainerReader::open_at(&s.avro[..], body, at) {
            Err(ContainerError::Block { offset, .. }) => assert_eq!(offset, at.offset),
            Err(e) => panic!("{codec:?}: {e}"),
            Ok(_) => panic!("{codec:?}: a cut first block was accepted"),
        }
    }
}

#[test]
fn event_reader_resumes_like_the_container_reader() {
    let events = |reader: &mut EventReader<&[u8]>| {
        let mut out = Vec::new();
        while let Some((event, _)) = reader.next_event().unwrap() {
            out.push(serde_json::to_value(&event).unwrap());
        }
        out
    };
    for codec in codecs() {
        let s = sample(codec, 6);
        let all: Vec<Json> = events(&mut EventReader::open(&s.avro[..], OBJECT).unwrap());
        for k in 0..EVENTS as u64 {
            let mut reader = EventReader::open(&s.avro[..], OBJECT).unwrap();
            assert_eq!(reader.skip_to(k).unwrap(), k);
            assert_eq!(reader.next_index(), k);
            assert_eq!(reader.header_len(), s.header_len as u64);
            assert_eq!(events(&mut reader), all[k as usize..]);

            let at = s.start(s.block_of(k));
            let mut resumed = EventReader::open_at(
                &s.avro[..s.header_len],
                &s.avro[at.offset as usize..],
                at,
                OBJECT,
            )
            .unwrap();
            assert_eq!(resumed.block_start(), at);
            assert_eq!(resumed.event_type().as_ref(), "users.behaviors.CustomEvent");
            resumed.skip_to(k).unwrap();
            assert_eq!(events(&mut resumed), all[k as usize..], "{codec:?} k={k}");
        }
    }
}

fn zigzag(value: i64) -> Vec<u8> {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        if n < 0x80 {
            out.push(n as u8);
            return out;
        }
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
}

#[test]
fn a_skipped_block_is_held_to_the_same_bounds() {
    for codec in codecs() {
        let s = sample(codec, 7);
        let b = s.blocks[1];
        let with_frame = |count: i64, size: i64| {
            [
                &s.avro[..b.offset],
                &zigzag(count),
                &zigzag(size),
                &s.avro[b.data..],
            ]
            .concat()
        };
        let claims = [
            (with_frame(1 << 40, b.size as i64), "records"),
            (with_frame(b.count as i64, 1 << 30), "-byte limit"),
            (with_frame(-1, b.size as i64), "declares -1 records"),
            (with_frame(b.count as i64, b.size as i64 + 1), "sync marker"),
        ];
        for (avro, says) in claims {
            let mut reader = ContainerReader::open(&avro[..]).unwrap();
            let error = reader.skip_to(EVENTS as u64).unwrap_err().to_string();
            assert!(
                error.contains(says) && error.contains(&format!("block 2 at byte {}", b.offset)),
                "{codec:?}: {error}"
            );
            assert_eq!(
                reader.next_record().unwrap(),
                None,
                "finished after an error"
            );
        }
    }
}
