//! Streaming reader for Avro object container files, the format of every Currents object.
//!
//! Layout: magic `Obj\x01`, a metadata map (`avro.schema`, `avro.codec`), a 16-byte sync
//! marker, then blocks of `record count, byte size, bytes, sync marker` until end of file.
//! One block is held in memory at a time, so memory follows the block size, not the file size.
//!
//! Every size read from the file is untrusted: a block may declare at most
//! [`MAX_BLOCK_BYTES`] before or after decompression, and at most as many records as its
//! bytes could hold. Anything else is a [`ContainerError`] naming the block and the reason.
//!
//! Resuming inside a file: the reader knows where each block starts ([`BlockStart`]: its byte
//! offset and the index of its first record), because a block is the smallest unit a reader can
//! start at. [`ContainerReader::open_at`] reads the header (schema, codec, sync marker) from one
//! stream and the blocks from another that begins at a block's offset, e.g. a ranged GET; it
//! checks at once that a block followed by the header's sync marker is there and that its
//! records decode, so a wrong offset is an error rather than garbage. [`ContainerReader::skip_to`] passes over whole blocks by
//! their record counts without decompressing or decoding them (their bytes are still read and
//! their sync markers checked, since the input is a stream), and decodes and drops only the
//! records before the target in the block that holds it. Errors name the object's real byte
//! offsets; block numbers only when the reader saw every block from the first.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use super::datum::{Cursor, Datum, DatumError};
use super::schema::{RecordShape, SchemaError, compile_event_schema};

/// The largest block accepted, compressed or not. Braze's writers flush every 64 KB or so
/// (the Java `DataFileWriter` default); 16 MiB leaves ample room and still bounds memory.
pub const MAX_BLOCK_BYTES: usize = 16 * 1024 * 1024;

const MAGIC: [u8; 4] = *b"Obj\x01";
const MAX_METADATA_ENTRIES: usize = 1024;

/// Why a container file could not be read (further).
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("the file is empty (0 bytes), so it is not an Avro container file")]
    Empty,
    #[error("not an Avro object container file (the first bytes are not `Obj\\x01`)")]
    NotAvro,
    #[error("the file is truncated: it ends inside {0}")]
    Truncated(String),
    #[error("the file header is corrupt: {0}")]
    Header(String),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("codec `{0}` is not supported (supported: null, deflate, snappy, zstandard)")]
    UnsupportedCodec(String),
    /// `block` is the block's number in the object (from 1), `None` on a reader opened at a
    /// block ([`ContainerReader::open_at`]), which does not know how many blocks came before;
    /// `offset` is always the object's byte offset of the block's start.
    #[error("{} is corrupt: {reason}", block_name(.block, .offset))]
    Block {
        block: Option<u64>,
        offset: u64,
        reason: String,
    },
    #[error("{} could not be decompressed ({codec}): {reason}", block_name(.block, .offset))]
    Decompress {
        block: Option<u64>,
        offset: u64,
        codec: &'static str,
        reason: String,
    },
    /// `record` is the record's index in the object (from 0).
    #[error("record {record} (in {}) is corrupt: {source}", block_name(.block, .offset))]
    Record {
        block: Option<u64>,
        offset: u64,
        record: u64,
        source: DatumError,
    },
}

/// How messages name a block: by number when known, always by its byte offset in the object.
struct BlockName {
    number: Option<u64>,
    offset: u64,
}

fn block_name(number: &Option<u64>, offset: &u64) -> BlockName {
    BlockName {
        number: *number,
        offset: *offset,
    }
}

impl fmt::Display for BlockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.number {
            Some(number) => write!(f, "block {number} at byte {}", self.offset),
            None => write!(f, "the block at byte {}", self.offset),
        }
    }
}

/// Where a block starts: what a resume needs to find it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockStart {
    /// Byte offset in the object of the block's record count (its first byte).
    pub offset: u64,
    /// Index in the object (from 0) of the block's first record.
    pub first_record: u64,
}

/// What the header says about every block.
struct Header {
    schema: Arc<RecordShape>,
    codec: Codec,
    sync: [u8; 16],
}

/// Reads the records of one container file, one block at a time.
pub struct ContainerReader<R> {
    input: BufReader<R>,
    /// The object's byte offset of the next byte `input` gives (not relative to a resume).
    offset: u64,
    header_len: u64,
    schema: Arc<RecordShape>,
    codec: Codec,
    sync: [u8; 16],
    /// The current block's bytes: still compressed while `framed_only`, then decompressed.
    block: Vec<u8>,
    /// The current block's bytes were read and framed but not decompressed: a skip may drop
    /// them unseen.
    framed_only: bool,
    block_pos: usize,
    records_left_in_block: u64,
    /// The block last read or skipped, and how many records it declares.
    current: BlockStart,
    current_count: u64,
    /// Its number in the object from 1 (0 before the first); `None` after `open_at`.
    block_no: Option<u64>,
    /// What `block_start` says: the last block a record was returned or passed over from
    /// (never an empty one, which `open_at` refuses).
    reported: BlockStart,
    next_index: u64,
    finished: bool,
}

impl<R: Read> ContainerReader<R> {
    /// Reads and checks the header: magic, metadata, writer schema, codec and sync marker.
    pub fn open(input: R) -> Result<Self, ContainerError> {
        let mut reader = HeaderReader {
            input: BufReader::with_capacity(64 * 1024, input),
            offset: 0,
        };
        let header = read_header(&mut reader)?;
        Ok(Self::with_header(header, reader.input, reader.offset))
    }

    /// Resumes at a block: reads the header from `header` (the object's bytes from offset 0;
    /// bytes after the header are ignored), then blocks from `body`, whose first byte is the
    /// object's byte `at.offset`. The first block is read and checked at once: a body that
    /// does not start with a block followed by the
    /// header's sync marker, and whose records all decode, is a [`ContainerError::Block`]
    /// naming `at.offset`.
    pub fn open_at<H: Read>(header: H, body: R, at: BlockStart) -> Result<Self, ContainerError> {
        let mut head = HeaderReader {
            input: BufReader::new(header),
            offset: 0,
        };
        let parsed = read_header(&mut head)?;
        let header_len = head.offset;
        let mut reader = Self::with_header(
            parsed,
            BufReader::with_capacity(64 * 1024, body),
            header_len,
        );
        reader.offset = at.offset;
        reader.current = at;
        reader.reported = at;
        reader.next_index = at.first_record;
        reader.block_no = None;
        let not_a_block = |reason: String| ContainerError::Block {
            block: None,
            offset: at.offset,
            reason: format!(
                "the resume offset is not the start of a block followed by the header's sync marker ({reason})"
            ),
        };
        if at.offset < header_len {
            return Err(not_a_block(format!(
                "it is inside the {header_len}-byte header"
            )));
        }
        // A stray offset can frame something plausible: a field that reads as a small count
        // and size just before a real sync marker is common. So the first block must also
        // decompress and decode; it is the block a resume reads from anyway.
        let checked = match reader.read_frame() {
            Ok(true) if reader.current_count == 0 => {
                return Err(not_a_block(
                    "it holds no records, and a resume only starts at a block that does".into(),
                ));
            }
            Ok(true) => reader.check_current_block(),
            Ok(false) => return Err(not_a_block("the object ends there".into())),
            Err(e) => Err(e),
        };
        match checked {
            Ok(()) => Ok(reader),
            Err(ContainerError::Io(e)) => Err(ContainerError::Io(e)),
            Err(e) => Err(not_a_block(e.to_string())),
        }
    }

    /// Loads the current (framed) block and decodes every record in it, then rewinds it.
    fn check_current_block(&mut self) -> Result<(), ContainerError> {
        self.load()?;
        let mut cursor = Cursor::new(&self.block);
        for index in 0..self.current_count {
            cursor
                .record(&self.schema)
                .map_err(|source| ContainerError::Record {
                    block: self.block_no,
                    offset: self.current.offset,
                    record: self.current.first_record.saturating_add(index),
                    source,
                })?;
        }
        if cursor.remaining() != 0 {
            return Err(self.block_error(format!(
                "{} bytes are left over after its {} records",
                cursor.remaining(),
                self.current_count
            )));
        }
        Ok(())
    }

    fn with_header(header: Header, input: BufReader<R>, header_len: u64) -> Self {
        ContainerReader {
            input,
            offset: header_len,
            header_len,
            schema: header.schema,
            codec: header.codec,
            sync: header.sync,
            block: Vec::new(),
            framed_only: false,
            block_pos: 0,
            records_left_in_block: 0,
            current: BlockStart {
                offset: header_len,
                first_record: 0,
            },
            current_count: 0,
            block_no: Some(0),
            reported: BlockStart {
                offset: header_len,
                first_record: 0,
            },
            next_index: 0,
            finished: false,
        }
    }

    /// Bytes of the header, magic to sync marker included: a resume reads `0..header_len`.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// The start of the block the last record returned (or passed over by [`Self::skip_to`])
    /// came from. Before the first record: the first block's (`open`: offset `header_len`,
    /// record 0; `open_at`: its `at`).
    pub fn block_start(&self) -> BlockStart {
        self.reported
    }

    /// The index in the object of the record [`Self::next_record`] returns next.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Moves on to record `record` (an index in the object). Whole blocks before it are skipped
    /// by their record count and byte size without being decompressed or decoded (their bytes
    /// are read past and their sync markers checked); in the block that holds it, the records
    /// before it are decoded and dropped. Returns how many records were passed over: 0 for a
    /// `record` at or before [`Self::next_index`]. Past the end, the reader is left at its end.
    /// After an error the reader is finished, as after [`Self::next_record`]'s.
    pub fn skip_to(&mut self, record: u64) -> Result<u64, ContainerError> {
        let from = self.next_index;
        if self.finished {
            return Ok(0);
        }
        let result = self.skip(record);
        if result.is_err() {
            self.finished = true;
        }
        result.map(|()| self.next_index - from)
    }

    fn skip(&mut self, record: u64) -> Result<(), ContainerError> {
        while self.next_index < record {
            let block_end = self.current.first_record.saturating_add(self.current_count);
            if block_end <= record && (self.framed_only || self.records_left_in_block > 0) {
                // The rest of this block comes before `record`: drop it as it is.
                if block_end > self.next_index {
                    self.reported = self.current;
                }
                self.framed_only = false;
                self.records_left_in_block = 0;
                self.next_index = block_end;
            } else if self.framed_only {
                self.load()?;
            } else if self.records_left_in_block > 0 {
                self.decode_record()?;
            } else if !self.read_frame()? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The writer schema's top-level record.
    pub fn schema(&self) -> &Arc<RecordShape> {
        &self.schema
    }

    pub fn codec_name(&self) -> &'static str {
        self.codec.name()
    }

    /// The next record's field values in writer order, or `None` at the end of the file.
    /// After an error the reader is finished: a corrupt block cannot be trusted to resync.
    pub fn next_record(&mut self) -> Result<Option<Vec<Datum>>, ContainerError> {
        if self.finished {
            return Ok(None);
        }
        let result = self.advance();
        if !matches!(result, Ok(Some(_))) {
            self.finished = true;
        }
        result
    }

    fn advance(&mut self) -> Result<Option<Vec<Datum>>, ContainerError> {
        loop {
            if self.framed_only {
                self.load()?;
            }
            if self.records_left_in_block > 0 {
                return self.decode_record().map(Some);
            }
            if !self.read_frame()? {
                return Ok(None);
            }
        }
    }

    /// Decodes the current block's next record.
    fn decode_record(&mut self) -> Result<Vec<Datum>, ContainerError> {
        let mut cursor = Cursor::resume(&self.block, self.block_pos);
        let record = cursor
            .record(&self.schema)
            .map_err(|source| ContainerError::Record {
                block: self.block_no,
                offset: self.current.offset,
                record: self.next_index,
                source,
            })?;
        self.block_pos = cursor.position();
        self.records_left_in_block -= 1;
        self.next_index += 1;
        self.reported = self.current;
        if self.records_left_in_block == 0 && cursor.remaining() != 0 {
            return Err(self.block_error(format!(
                "{} bytes are left over after its {} records",
                cursor.remaining(),
                self.current_count
            )));
        }
        Ok(record)
    }

    /// Reads the next block's frame: record count, byte size, its (still compressed) bytes and
    /// its sync marker, and makes it the current block. Returns false at a clean end of file.
    /// Every bound that holds before decompression is checked here, so a skipped block is
    /// held to them too.
    fn read_frame(&mut self) -> Result<bool, ContainerError> {
        let start = BlockStart {
            offset: self.offset,
            first_record: self.current.first_record.saturating_add(self.current_count),
        };
        let number = self.block_no.map(|n| n + 1);
        let name = BlockName {
            number,
            offset: start.offset,
        };
        let mut header = HeaderReader {
            input: &mut self.input,
            offset: self.offset,
        };
        let Some(count) = header.read_long_or_eof(&format!("the record count of {name}"))? else {
            return Ok(false);
        };
        let size = header.read_long(&format!("the byte size of {name}"))?;
        self.offset = header.offset;
        self.current = start;
        self.current_count = 0;
        self.block_no = number;
        self.framed_only = false;
        self.records_left_in_block = 0;
        if count < 0 || size < 0 {
            return Err(self.block_error(format!("it declares {count} records in {size} bytes")));
        }
        if size as u64 > MAX_BLOCK_BYTES as u64 {
            return Err(self.block_error(format!(
                "it declares {size} bytes, over the {MAX_BLOCK_BYTES}-byte limit"
            )));
        }
        // Every Currents record holds at least its `id` string, so at least one byte; no
        // codec yields more than MAX_BLOCK_BYTES, and `null` no more than the block's size.
        let min_record_len = self.schema_min_record_len() as u64;
        if self.codec == Codec::Null {
            if count as u64 > size as u64 / min_record_len {
                return Err(self.block_error(format!(
                    "it declares {count} records but holds only {size} bytes"
                )));
            }
            if count == 0 && size != 0 {
                return Err(
                    self.block_error(format!("it declares no records but holds {size} bytes"))
                );
            }
        } else if count as u64 > MAX_BLOCK_BYTES as u64 / min_record_len {
            return Err(self.block_error(format!(
                "it declares {count} records, more than {MAX_BLOCK_BYTES} bytes can hold"
            )));
        }

        // Grow with the data actually read, so a lying size on a short file allocates little.
        self.block.clear();
        let got = (&mut self.input)
            .take(size as u64)
            .read_to_end(&mut self.block)?;
        self.offset += got as u64;
        if got as u64 != size as u64 {
            return Err(ContainerError::Truncated(format!(
                "{name} (it declares {size} bytes, {got} are present)"
            )));
        }
        let mut sync = [0u8; 16];
        HeaderReader {
            input: &mut self.input,
            offset: self.offset,
        }
        .read_exact(&mut sync, &format!("the sync marker of {name}"))?;
        self.offset += 16;
        if sync != self.sync {
            return Err(self.block_error("its sync marker does not match the header's".into()));
        }
        self.current_count = count as u64;
        self.framed_only = true;
        Ok(true)
    }

    /// Decompresses the current block, checks its records fit, and makes them readable.
    fn load(&mut self) -> Result<(), ContainerError> {
        self.framed_only = false;
        self.codec
            .decompress(&mut self.block)
            .map_err(|reason| ContainerError::Decompress {
                block: self.block_no,
                offset: self.current.offset,
                codec: self.codec.name(),
                reason,
            })?;
        let count = self.current_count;
        if count > (self.block.len() / self.schema_min_record_len()) as u64 {
            return Err(self.block_error(format!(
                "it declares {count} records but holds only {} bytes",
                self.block.len()
            )));
        }
        if count == 0 && !self.block.is_empty() {
            return Err(self.block_error(format!(
                "it declares no records but holds {} bytes",
                self.block.len()
            )));
        }
        self.block_pos = 0;
        self.records_left_in_block = count;
        Ok(())
    }

    fn schema_min_record_len(&self) -> usize {
        self.schema
            .fields
            .iter()
            .map(|f| f.shape.min_encoded_len())
            .sum::<usize>()
            .max(1)
    }

    /// An error about the current block, named by its number and start.
    fn block_error(&self, reason: String) -> ContainerError {
        ContainerError::Block {
            block: self.block_no,
            offset: self.current.offset,
            reason,
        }
    }
}

/// Reads and checks the header: magic, metadata, writer schema, codec and sync marker.
fn read_header<B: BufRead>(reader: &mut HeaderReader<B>) -> Result<Header, ContainerError> {
    let mut magic = [0u8; 4];
    let got = reader.read_up_to(&mut magic)?;
    if got == 0 {
        return Err(ContainerError::Empty);
    }
    if got < 4 || magic != MAGIC {
        return Err(ContainerError::NotAvro);
    }

    let mut schema_text = None;
    let mut codec_name = None;
    reader.read_metadata(|key, value| match key {
        "avro.schema" => schema_text = Some(value),
        "avro.codec" => codec_name = Some(value),
        _ => {}
    })?;
    let schema_text = schema_text
        .ok_or_else(|| ContainerError::Header("it has no `avro.schema` entry".into()))?;
    let schema_text = String::from_utf8(schema_text)
        .map_err(|_| ContainerError::Header("`avro.schema` is not UTF-8".into()))?;
    let schema = compile_event_schema(&schema_text)?;
    let codec = match codec_name.as_deref() {
        None | Some(b"null") => Codec::Null,
        Some(b"deflate") => Codec::Deflate,
        Some(b"snappy") => Codec::Snappy,
        Some(b"zstandard") => Codec::Zstandard,
        Some(name) => {
            return Err(ContainerError::UnsupportedCodec(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
    };
    let mut sync = [0u8; 16];
    reader.read_exact(&mut sync, "the header's sync marker")?;
    Ok(Header {
        schema,
        codec,
        sync,
    })
}

impl<R: Read> Iterator for ContainerReader<R> {
    type Item = Result<Vec<Datum>, ContainerError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// The block codecs of Avro container files that Braze writes or may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Null,
    Deflate,
    Snappy,
    Zstandard,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Null => "null",
            Codec::Deflate => "deflate",
            Codec::Snappy => "snappy",
            Codec::Zstandard => "zstandard",
        }
    }

    /// Replaces a block's bytes by their decompressed form, refusing to produce (or to
    /// allocate for) more than [`MAX_BLOCK_BYTES`].
    fn decompress(self, block: &mut Vec<u8>) -> Result<(), String> {
        let over = || format!("it decompresses to more than {MAX_BLOCK_BYTES} bytes");
        *block = match self {
            Codec::Null => return Ok(()),
            // Raw deflate (RFC 1951), no zlib wrapper.
            Codec::Deflate => {
                use miniz_oxide::inflate::{TINFLStatus, decompress_to_vec_with_limit};
                decompress_to_vec_with_limit(block, MAX_BLOCK_BYTES).map_err(|e| {
                    match e.status {
                        TINFLStatus::HasMoreOutput => over(),
                        status => format!("invalid deflate data ({status:?})"),
                    }
                })?
            }
            // Raw snappy, then a big-endian CRC32 of the decompressed bytes.
            Codec::Snappy => {
                let data_end = block
                    .len()
                    .checked_sub(4)
                    .ok_or("the block is shorter than its checksum")?;
                let len =
                    snap::raw::decompress_len(&block[..data_end]).map_err(|e| e.to_string())?;
                if len > MAX_BLOCK_BYTES {
                    return Err(format!(
                        "it declares {len} decompressed bytes, over the {MAX_BLOCK_BYTES}-byte limit"
                    ));
                }
                let mut out = vec![0; len];
                snap::raw::Decoder::new()
                    .decompress(&block[..data_end], &mut out)
                    .map_err(|e| e.to_string())?;
                let mut checksum = [0u8; 4];
                checksum.copy_from_slice(&block[data_end..]);
                let (expected, actual) = (u32::from_be_bytes(checksum), crc32fast::hash(&out));
                if expected != actual {
                    return Err(format!(
                        "CRC32 {actual:08x} of the data does not match the block's {expected:08x}"
                    ));
                }
                out
            }
            // One byte past the limit tells an output that exactly fills it from a bomb.
            Codec::Zstandard => {
                let mut out = Vec::new();
                zstd::stream::read::Decoder::with_buffer(&block[..])
                    .map_err(|e| e.to_string())?
                    .take(MAX_BLOCK_BYTES as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| e.to_string())?;
                if out.len() > MAX_BLOCK_BYTES {
                    return Err(over());
                }
                out
            }
        };
        Ok(())
    }
}

/// Reads the varint-framed parts of the file straight from the stream.
struct HeaderReader<B> {
    input: B,
    offset: u64,
}

impl<B: BufRead> HeaderReader<B> {
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, ContainerError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        self.offset += filled as u64;
        Ok(filled)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), ContainerError> {
        if self.read_up_to(buf)? < buf.len() {
            return Err(ContainerError::Truncated(what.to_string()));
        }
        Ok(())
    }

    fn read_byte(&mut self) -> Result<Option<u8>, ContainerError> {
        let mut byte = [0u8; 1];
        Ok((self.read_up_to(&mut byte)? == 1).then_some(byte[0]))
    }

    /// A zig-zag varint, or `None` if the stream ends before its first byte.
    fn read_long_or_eof(&mut self, what: &str) -> Result<Option<i64>, ContainerError> {
        let mut encoded = [0u8; 10];
        let Some(first) = self.read_byte()? else {
            return Ok(None);
        };
        encoded[0] = first;
        let mut len = 1;
        while encoded[len - 1] & 0x80 != 0 {
            if len == encoded.len() {
                return Err(ContainerError::Header(format!(
                    "{what} is not a valid varint"
                )));
            }
            encoded[len] = self
                .read_byte()?
                .ok_or_else(|| ContainerError::Truncated(what.to_string()))?;
            len += 1;
        }
        Cursor::new(&encoded[..len])
            .long()
            .map(Some)
            .map_err(|e| ContainerError::Header(format!("{what}: {}", e.reason)))
    }

    fn read_long(&mut self, what: &str) -> Result<i64, ContainerError> {
        self.read_long_or_eof(what)?
            .ok_or_else(|| ContainerError::Truncated(what.to_string()))
    }

    fn read_sized(&mut self, what: &str) -> Result<Vec<u8>, ContainerError> {
        let len = self.read_long(what)?;
        if len < 0 || len as u64 > MAX_BLOCK_BYTES as u64 {
            return Err(ContainerError::Header(format!(
                "{what} has an impossible length {len}"
            )));
        }
        let mut value = Vec::new();
        let got = (&mut self.input).take(len as u64).read_to_end(&mut value)?;
        self.offset += got as u64;
        if got as u64 != len as u64 {
            return Err(ContainerError::Truncated(what.to_string()));
        }
        Ok(value)
    }

    /// The header's metadata: a map of string keys to byte values, in counted blocks.
    fn read_metadata(
        &mut self,
        mut entry: impl FnMut(&str, Vec<u8>),
    ) -> Result<(), ContainerError> {
        let mut entries = 0usize;
        loop {
            let count = self.read_long("the header's metadata")?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.read_long("the header's metadata block size")?;
            }
            let count = count.unsigned_abs() as usize;
            entries = entries.saturating_add(count);
            if entries > MAX_METADATA_ENTRIES {
                return Err(ContainerError::Header(format!(
                    "it declares more than {MAX_METADATA_ENTRIES} metadata entries"
                )));
            }
            for _ in 0..count {
                let key = self.read_sized("a metadata key")?;
                let key = String::from_utf8(key)
                    .map_err(|_| ContainerError::Header("a metadata key is not UTF-8".into()))?;
                let value = self.read_sized(&format!("metadata `{key}`"))?;
                entry(&key, value);
            }
        }
    }
}
