//! Streaming reader for Avro object container files, the format of every Currents object.
//!
//! Layout: magic `Obj\x01`, a metadata map (`avro.schema`, `avro.codec`), a 16-byte sync
//! marker, then blocks of `record count, byte size, bytes, sync marker` until end of file.
//! One block is held in memory at a time, so memory follows the block size, not the file size.
//!
//! Every size read from the file is untrusted: a block may declare at most
//! [`MAX_BLOCK_BYTES`] before or after decompression, and at most as many records as its
//! bytes could hold. Anything else is a [`ContainerError`] naming the block and the reason.

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
    #[error("block {block} at byte {offset} is corrupt: {reason}")]
    Block {
        block: u64,
        offset: u64,
        reason: String,
    },
    #[error("block {block} could not be decompressed ({codec}): {reason}")]
    Decompress {
        block: u64,
        codec: &'static str,
        reason: String,
    },
    #[error("record {record} of block {block} is corrupt: {source}")]
    Record {
        block: u64,
        record: u64,
        source: DatumError,
    },
}

/// Reads the records of one container file, one block at a time.
pub struct ContainerReader<R> {
    input: BufReader<R>,
    /// Bytes consumed from `input`, for error messages.
    offset: u64,
    schema: Arc<RecordShape>,
    codec: Codec,
    sync: [u8; 16],
    block: Vec<u8>,
    block_pos: usize,
    records_left_in_block: u64,
    blocks_read: u64,
    records_read_in_block: u64,
    finished: bool,
}

impl<R: Read> ContainerReader<R> {
    /// Reads and checks the header: magic, metadata, writer schema, codec and sync marker.
    pub fn open(input: R) -> Result<Self, ContainerError> {
        let mut reader = HeaderReader {
            input: BufReader::with_capacity(64 * 1024, input),
            offset: 0,
        };
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

        Ok(ContainerReader {
            input: reader.input,
            offset: reader.offset,
            schema,
            codec,
            sync,
            block: Vec::new(),
            block_pos: 0,
            records_left_in_block: 0,
            blocks_read: 0,
            records_read_in_block: 0,
            finished: false,
        })
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
        while self.records_left_in_block == 0 {
            if !self.read_block()? {
                return Ok(None);
            }
        }
        let mut cursor = Cursor::resume(&self.block, self.block_pos);
        let record = cursor
            .record(&self.schema)
            .map_err(|source| ContainerError::Record {
                block: self.blocks_read,
                record: self.records_read_in_block,
                source,
            })?;
        self.block_pos = cursor.position();
        self.records_left_in_block -= 1;
        self.records_read_in_block += 1;
        if self.records_left_in_block == 0 && cursor.remaining() != 0 {
            return Err(self.block_error(format!(
                "{} bytes are left over after its {} records",
                cursor.remaining(),
                self.records_read_in_block
            )));
        }
        Ok(Some(record))
    }

    /// Loads the next block. Returns false at a clean end of file.
    fn read_block(&mut self) -> Result<bool, ContainerError> {
        let block_start = self.offset;
        let block_no = self.blocks_read + 1;
        let mut header = HeaderReader {
            input: &mut self.input,
            offset: self.offset,
        };
        let Some(count) = header.read_long_or_eof(&format!("block {block_no}'s record count"))?
        else {
            return Ok(false);
        };
        let size = header.read_long(&format!("block {block_no}'s byte size"))?;
        self.offset = header.offset;
        self.blocks_read = block_no;
        self.records_read_in_block = 0;
        if count < 0 || size < 0 {
            return Err(self.block_error_at(
                block_start,
                format!("it declares {count} records in {size} bytes"),
            ));
        }
        if size as u64 > MAX_BLOCK_BYTES as u64 {
            return Err(self.block_error_at(
                block_start,
                format!("it declares {size} bytes, over the {MAX_BLOCK_BYTES}-byte limit"),
            ));
        }

        // Grow with the data actually read, so a lying size on a short file allocates little.
        self.block.clear();
        let got = (&mut self.input)
            .take(size as u64)
            .read_to_end(&mut self.block)?;
        self.offset += got as u64;
        if got as u64 != size as u64 {
            return Err(ContainerError::Truncated(format!(
                "block {block_no} (it declares {size} bytes, {got} are present)"
            )));
        }
        let mut sync = [0u8; 16];
        HeaderReader {
            input: &mut self.input,
            offset: self.offset,
        }
        .read_exact(&mut sync, &format!("block {block_no}'s sync marker"))?;
        self.offset += 16;
        if sync != self.sync {
            return Err(self.block_error_at(
                block_start,
                "its sync marker does not match the header's".into(),
            ));
        }

        self.codec
            .decompress(&mut self.block)
            .map_err(|reason| ContainerError::Decompress {
                block: block_no,
                codec: self.codec.name(),
                reason,
            })?;
        // Every Currents record holds at least its `id` string, so at least one byte.
        let min_record_len = self.schema_min_record_len();
        if count as u64 > (self.block.len() / min_record_len) as u64 {
            return Err(self.block_error_at(
                block_start,
                format!(
                    "it declares {count} records but holds only {} bytes",
                    self.block.len()
                ),
            ));
        }
        if count == 0 && !self.block.is_empty() {
            return Err(self.block_error_at(
                block_start,
                format!(
                    "it declares no records but holds {} bytes",
                    self.block.len()
                ),
            ));
        }
        self.block_pos = 0;
        self.records_left_in_block = count as u64;
        Ok(true)
    }

    fn schema_min_record_len(&self) -> usize {
        self.schema
            .fields
            .iter()
            .map(|f| f.shape.min_encoded_len())
            .sum::<usize>()
            .max(1)
    }

    fn block_error(&self, reason: String) -> ContainerError {
        ContainerError::Block {
            block: self.blocks_read,
            offset: self.offset,
            reason,
        }
    }

    fn block_error_at(&self, offset: u64, reason: String) -> ContainerError {
        ContainerError::Block {
            block: self.blocks_read,
            offset,
            reason,
        }
    }
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
