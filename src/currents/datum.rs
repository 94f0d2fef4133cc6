//! Avro binary datum decoding, driven by a compiled writer schema.
//!
//! Decoding works on one decompressed block held in memory, so every length prefix is checked
//! against the bytes actually left before anything is allocated: a corrupt length fails with an
//! error instead of an allocation. Running out of bytes is always an error. (apache-avro 0.22
//! can read a truncated string as null; this decoder never guesses.)

use std::sync::Arc;

use super::schema::{RecordShape, Shape};

/// One decoded Avro value. Unions are already unwrapped to the branch that was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    /// Kept as 32 bits so output can print it the way Braze does (`3.14`, not `3.140000104904175`).
    Float(f32),
    Double(f64),
    Bytes(Vec<u8>),
    String(String),
    Enum(Arc<str>),
    Array(Vec<Datum>),
    Map(Vec<(String, Datum)>),
    Record(Arc<RecordShape>, Vec<Datum>),
}

/// Why a datum could not be decoded, with the byte offset inside the block.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{reason} at byte {offset} of the block")]
pub struct DatumError {
    pub offset: usize,
    pub reason: String,
}

/// Arrays and maps of zero-width items (`null`, empty records) cannot be bounded by the bytes
/// left, so their item count is capped instead.
const MAX_ZERO_WIDTH_ITEMS: usize = 1 << 16;

/// Reads Avro-encoded values from a block.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// Continues reading a block at a position an earlier cursor stopped at.
    pub fn resume(bytes: &'a [u8], pos: usize) -> Self {
        Cursor {
            bytes,
            pos: pos.min(bytes.len()),
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Decodes one record of the given shape into its field values, in writer order.
    pub fn record(&mut self, shape: &RecordShape) -> Result<Vec<Datum>, DatumError> {
        shape.fields.iter().map(|f| self.datum(&f.shape)).collect()
    }

    fn datum(&mut self, shape: &Shape) -> Result<Datum, DatumError> {
        Ok(match shape {
            Shape::Null => Datum::Null,
            Shape::Boolean => match self.take(1)?[0] {
                0 => Datum::Boolean(false),
                1 => Datum::Boolean(true),
                b => return Err(self.error(format!("boolean byte is {b}, not 0 or 1"))),
            },
            Shape::Int => {
                let v = self.long()?;
                Datum::Int(
                    i32::try_from(v)
                        .map_err(|_| self.error(format!("int {v} overflows 32 bits")))?,
                )
            }
            Shape::Long => Datum::Long(self.long()?),
            Shape::Float => Datum::Float(f32::from_le_bytes(self.array::<4>()?)),
            Shape::Double => Datum::Double(f64::from_le_bytes(self.array::<8>()?)),
            Shape::Bytes => {
                let len = self.len_prefix("bytes")?;
                Datum::Bytes(self.take(len)?.to_vec())
            }
            Shape::String => Datum::String(self.string()?),
            Shape::Enum(symbols) => {
                let index = self.index(symbols.len(), "enum symbol")?;
                Datum::Enum(symbols[index].clone())
            }
            Shape::Fixed(size) => Datum::Bytes(self.take(*size)?.to_vec()),
            Shape::Array(items) => {
                let mut values = Vec::new();
                self.blocks(items, |cursor| {
                    values.push(cursor.datum(items)?);
                    Ok(())
                })?;
                Datum::Array(values)
            }
            Shape::Map(values_shape) => {
                let mut entries = Vec::new();
                self.blocks(values_shape, |cursor| {
                    let key = cursor.string()?;
                    entries.push((key, cursor.datum(values_shape)?));
                    Ok(())
                })?;
                Datum::Map(entries)
            }
            Shape::Union(branches) => {
                let index = self.index(branches.len(), "union branch")?;
                self.datum(&branches[index])?
            }
            Shape::Record(record) => Datum::Record(record.clone(), self.record(record)?),
        })
    }

    /// Array and map items come in blocks: a count, then the items; a negative count is
    /// followed by the block's byte size; a zero count ends the list.
    fn blocks(
        &mut self,
        item: &Shape,
        mut read_item: impl FnMut(&mut Self) -> Result<(), DatumError>,
    ) -> Result<(), DatumError> {
        let min_item_len = item.min_encoded_len();
        let mut total = 0usize;
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.len_prefix("array block size")?;
            }
            let count = usize::try_from(count.unsigned_abs())
                .map_err(|_| self.error(format!("item count {count} is too large")))?;
            total = total.saturating_add(count);
            let fits = match min_item_len {
                0 => total <= MAX_ZERO_WIDTH_ITEMS,
                n => count <= self.remaining() / n,
            };
            if !fits {
                return Err(self.error(format!(
                    "collection declares {count} items but only {} bytes are left",
                    self.remaining()
                )));
            }
            for _ in 0..count {
                read_item(self)?;
            }
        }
    }

    fn string(&mut self) -> Result<String, DatumError> {
        let len = self.len_prefix("string")?;
        let start = self.pos;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DatumError {
            offset: start,
            reason: "string is not valid UTF-8".into(),
        })
    }

    /// A length prefix, checked against the bytes left so nothing oversized is ever allocated.
    fn len_prefix(&mut self, what: &str) -> Result<usize, DatumError> {
        let len = self.long()?;
        match usize::try_from(len) {
            Ok(len) if len <= self.remaining() => Ok(len),
            _ => Err(self.error(format!(
                "{what} length {len} exceeds the {} bytes left",
                self.remaining()
            ))),
        }
    }

    fn index(&mut self, count: usize, what: &str) -> Result<usize, DatumError> {
        let index = self.long()?;
        usize::try_from(index)
            .ok()
            .filter(|i| *i < count)
            .ok_or_else(|| self.error(format!("{what} index {index} is out of range 0..{count}")))
    }

    /// A zig-zag varint of at most 10 bytes.
    pub fn long(&mut self) -> Result<i64, DatumError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.take(1)?[0];
            if shift == 63 && byte > 1 {
                return Err(self.error("varint overflows 64 bits".into()));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(self.error("varint is longer than 10 bytes".into()))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DatumError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DatumError> {
        if len > self.remaining() {
            return Err(self.error(format!(
                "needs {len} bytes but only {} are left",
                self.remaining()
            )));
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn error(&self, reason: String) -> DatumError {
        DatumError {
            offset: self.pos,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(v: i64) -> Vec<u8> {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
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
    fn varints_round_trip_at_the_edges() {
        for v in [0, 1, -1, 63, -64, 64, i32::MAX as i64, i64::MAX, i64::MIN] {
            assert_eq!(Cursor::new(&zigzag(v)).long(), Ok(v), "{v}");
        }
    }

    #[test]
    fn overlong_and_truncated_varints_are_errors() {
        assert!(Cursor::new(&[0xff; 11]).long().is_err());
        assert!(
            Cursor::new(&[0x80, 0x80])
                .long()
                .unwrap_err()
                .reason
                .contains("only 0")
        );
    }

    #[test]
    fn a_huge_string_length_is_rejected_before_allocating() {
        let mut bytes = zigzag(i64::MAX);
        bytes.extend_from_slice(b"abc");
        let err = Cursor::new(&bytes).datum(&Shape::String).unwrap_err();
        assert!(err.reason.contains("exceeds the 3 bytes left"), "{err}");
    }

    #[test]
    fn a_truncated_string_is_an_error_not_null() {
        let mut bytes = zigzag(5);
        bytes.extend_from_slice(b"ab");
        let shape = Shape::Union(vec![Shape::Null, Shape::String]);
        let mut with_branch = zigzag(1);
        with_branch.extend(bytes);
        assert!(Cursor::new(&with_branch).datum(&shape).is_err());
    }

    #[test]
    fn huge_array_counts_are_rejected() {
        let bytes = zigzag(1 << 40);
        let err = Cursor::new(&bytes)
            .datum(&Shape::Array(Box::new(Shape::Long)))
            .unwrap_err();
        assert!(err.reason.contains("declares"), "{err}");
        let nulls = Shape::Array(Box::new(Shape::Null));
        assert!(Cursor::new(&zigzag(1 << 40)).datum(&nulls).is_err());
        let mut ok = zigzag(3);
        ok.push(0);
        assert_eq!(
            Cursor::new(&ok).datum(&nulls),
            Ok(Datum::Array(vec![Datum::Null; 3]))
        );
    }

    #[test]
    fn bad_union_and_enum_indexes_are_errors() {
        let union = Shape::Union(vec![Shape::Null, Shape::String]);
        assert!(Cursor::new(&zigzag(2)).datum(&union).is_err());
        assert!(Cursor::new(&zigzag(-1)).datum(&union).is_err());
        let symbols: Arc<[Arc<str>]> = vec![Arc::from("A")].into();
        assert!(
            Cursor::new(&zigzag(1))
                .datum(&Shape::Enum(symbols))
                .is_err()
        );
    }

    #[test]
    fn out_of_range_ints_and_booleans_are_errors() {
        assert!(
            Cursor::new(&zigzag(i64::from(i32::MAX) + 1))
                .datum(&Shape::Int)
                .is_err()
        );
        assert!(Cursor::new(&[2]).datum(&Shape::Boolean).is_err());
    }
}
