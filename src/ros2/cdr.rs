//! CDR framing for ROS 2 payloads, as rmw_zenoh (Fast-CDR `DDS_CDR`) and
//! zenoh-bridge-ros2dds put them on the wire: a 4-byte encapsulation header
//! (`00 01` little-endian or `00 00` big-endian, then two option bytes that
//! are ignored), then plain XCDR1 data whose alignment restarts after the
//! header. The `cdr-encoding` crate does the serde part (structs, strings,
//! sequences, and `uint8[]` as borrowed slices through `serde_bytes`); this
//! module adds the header, which that crate leaves to its caller, and reads
//! and writes a trailing `float32[]` in bulk, which serde would do one
//! element at a time. Lengths are checked against the bytes present before
//! anything is allocated (the crate does the same for strings and byte
//! sequences, and grows other sequences only as their elements decode), so a
//! hostile count costs nothing.

use byteorder::{BigEndian, ByteOrder, LittleEndian};
use serde::{Deserialize, Serialize};

use super::error::{DecodeError, EncodeError};

/// Length of the encapsulation header in front of every CDR payload.
pub const ENCAPSULATION_LEN: usize = 4;
/// The header reflexd writes: plain CDR, little-endian, no options.
pub const HEADER_LE: [u8; ENCAPSULATION_LEN] = [0x00, 0x01, 0x00, 0x00];

/// Byte order of a CDR body, from its encapsulation header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

/// The CDR body of a payload (header stripped) and its byte order. Offsets
/// passed to its methods count from the start of the body, which is where CDR
/// alignment restarts.
#[derive(Clone, Copy, Debug)]
pub struct Body<'a> {
    pub endian: Endian,
    pub bytes: &'a [u8],
    ty: &'static str,
}

impl<'a> Body<'a> {
    /// Strips and checks the encapsulation header. `ty` names the message type
    /// in errors.
    pub fn parse(ty: &'static str, payload: &'a [u8]) -> Result<Self, DecodeError> {
        if payload.len() < ENCAPSULATION_LEN {
            return Err(DecodeError::NoEncapsulation {
                ty,
                len: payload.len(),
            });
        }
        let id = u16::from_be_bytes([payload[0], payload[1]]);
        let endian = match id {
            0x0000 => Endian::Big,
            0x0001 => Endian::Little,
            _ => return Err(DecodeError::UnsupportedEncapsulation { ty, id }),
        };
        Ok(Body {
            endian,
            bytes: &payload[ENCAPSULATION_LEN..],
            ty,
        })
    }

    /// Decodes a serde struct from the start of the body (borrowing from the
    /// payload where it asks to); returns it and the number of body bytes
    /// it used.
    pub fn decode_prefix<T: Deserialize<'a>>(&self) -> Result<(T, usize), DecodeError> {
        let r = match self.endian {
            Endian::Little => cdr_encoding::from_bytes::<T, LittleEndian>(self.bytes),
            Endian::Big => cdr_encoding::from_bytes::<T, BigEndian>(self.bytes),
        };
        r.map_err(|e| DecodeError::Cdr {
            ty: self.ty,
            reason: match e {
                cdr_encoding::Error::Eof => format!(
                    "the {}-byte body ends before the message does",
                    self.bytes.len()
                ),
                e => e.to_string(),
            },
        })
    }

    /// Reads a `u32` sequence length at `pos` (after 4-byte alignment) and
    /// checks that `count * elem_size` bytes follow. Returns the count and the
    /// offset of the first element.
    fn seq_header(
        &self,
        field: &'static str,
        pos: usize,
        elem_size: usize,
    ) -> Result<(usize, usize), DecodeError> {
        let start = pos.next_multiple_of(4);
        let len_end = start.checked_add(4).filter(|e| *e <= self.bytes.len());
        let Some(len_end) = len_end else {
            return Err(DecodeError::Truncated {
                ty: self.ty,
                field,
                declared: 4,
                available: self.bytes.len().saturating_sub(start),
            });
        };
        let raw = &self.bytes[start..len_end];
        let count = match self.endian {
            Endian::Little => LittleEndian::read_u32(raw),
            Endian::Big => BigEndian::read_u32(raw),
        } as usize;
        let available = self.bytes.len() - len_end;
        let declared = count as u64 * elem_size as u64;
        if declared > available as u64 {
            return Err(DecodeError::Truncated {
                ty: self.ty,
                field,
                declared,
                available,
            });
        }
        Ok((count, len_end))
    }

    /// A `float32[]` sequence starting at `pos`, converted to native order.
    pub fn f32_seq(
        &self,
        field: &'static str,
        pos: usize,
    ) -> Result<(Vec<f32>, usize), DecodeError> {
        let (n, at) = self.seq_header(field, pos, 4)?;
        let raw = &self.bytes[at..at + 4 * n];
        let mut out = vec![0f32; n];
        match self.endian {
            Endian::Little => LittleEndian::read_f32_into(raw, &mut out),
            Endian::Big => BigEndian::read_f32_into(raw, &mut out),
        }
        Ok((out, at + 4 * n))
    }
}

/// Decodes a whole message that is a plain serde struct.
pub fn decode<'a, T: Deserialize<'a>>(
    ty: &'static str,
    payload: &'a [u8],
) -> Result<T, DecodeError> {
    Body::parse(ty, payload)?.decode_prefix().map(|(v, _)| v)
}

/// Builds a little-endian CDR payload: header, a serde prefix, then an
/// optional trailing `float32[]`.
pub struct Writer {
    buf: Vec<u8>,
    ty: &'static str,
}

impl Writer {
    pub fn new(ty: &'static str, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + ENCAPSULATION_LEN);
        buf.extend_from_slice(&HEADER_LE);
        Writer { buf, ty }
    }

    /// Serialises `value` at the start of the body (call once, first: the
    /// crate's alignment counter starts at zero, which is the body start only
    /// then).
    pub fn prefix<T: Serialize>(mut self, value: &T) -> Result<Self, EncodeError> {
        debug_assert_eq!(self.buf.len(), ENCAPSULATION_LEN);
        cdr_encoding::to_writer::<T, LittleEndian, _>(&mut self.buf, value).map_err(|e| {
            EncodeError {
                ty: self.ty,
                reason: e.to_string(),
            }
        })?;
        Ok(self)
    }

    fn seq_len(&mut self, n: usize) -> Result<(), EncodeError> {
        let n = u32::try_from(n).map_err(|_| EncodeError {
            ty: self.ty,
            reason: format!(
                "sequence of {n} elements exceeds the CDR limit of {}",
                u32::MAX
            ),
        })?;
        let body_len = self.buf.len() - ENCAPSULATION_LEN;
        self.buf.resize(
            self.buf.len() + (body_len.next_multiple_of(4) - body_len),
            0,
        );
        self.buf.extend_from_slice(&n.to_le_bytes());
        Ok(())
    }

    /// Appends a `float32[]` sequence.
    pub fn f32_seq(mut self, data: &[f32]) -> Result<Self, EncodeError> {
        self.seq_len(data.len())?;
        self.buf.reserve(data.len() * 4);
        for v in data {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        Ok(self)
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Encodes a whole message that is a plain serde struct.
pub fn encode<T: Serialize>(ty: &'static str, value: &T) -> Result<Vec<u8>, EncodeError> {
    encode_with_capacity(ty, value, 64)
}

/// [`encode`] into a buffer sized for `capacity` body bytes.
pub fn encode_with_capacity<T: Serialize>(
    ty: &'static str,
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, EncodeError> {
    Ok(Writer::new(ty, capacity).prefix(value)?.finish())
}
