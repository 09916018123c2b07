//! The rmw_zenoh attachment every ROS 2 sample carries: sequence number,
//! source timestamp (ns since the UNIX epoch) and the publisher's GID, written
//! with zenoh-ext's serializer. Two layouts exist and do not interoperate:
//!
//! - current (Jazzy ≥ 0.2.4, Kilted, Rolling, Humble ≥ 0.1.2), 33 bytes:
//!   `i64 LE seq | i64 LE timestamp | LEB128 len | gid[len]`;
//! - labelled (Jazzy 0.2.0–0.2.3), 77 bytes: the same values each behind its
//!   name as a length-prefixed string (`"sequence_number"`, …).
//!
//! We always write the current form and read both. Reading works on the
//! bytes directly (zenoh-ext keeps its LEB128 reader behind an internal
//! feature; the `leb128` crate it uses reads the same encoding). The GID
//! length is read, not assumed (Humble's `RMW_GID_STORAGE_SIZE` is 24), and
//! bounded before anything is read, so a hostile length cannot allocate.

use zenoh::bytes::ZBytes;
use zenoh_ext::z_serialize;

use super::error::AttachmentError;

/// GID length rmw_zenoh writes since Iron.
pub const GID_LEN: usize = 16;
/// Longest GID accepted when reading (Humble's storage size is 24).
pub const MAX_GID_LEN: usize = 32;

const LABELS: [&str; 3] = ["sequence_number", "source_timestamp", "source_gid"];

/// Which layout an attachment used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachmentFormat {
    Current,
    Labelled,
}

/// A publisher GID as received (length as sent, up to [`MAX_GID_LEN`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Gid {
    len: u8,
    bytes: [u8; MAX_GID_LEN],
}

impl Gid {
    pub fn new(gid: &[u8]) -> Option<Gid> {
        if gid.len() > MAX_GID_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_GID_LEN];
        bytes[..gid.len()].copy_from_slice(gid);
        Some(Gid {
            len: gid.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Gid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The decoded attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub sequence_number: i64,
    pub source_timestamp: i64,
    pub gid: Gid,
}

impl Attachment {
    /// The current 33-byte form (for a 16-byte GID).
    pub fn encode(&self) -> ZBytes {
        z_serialize(&(
            self.sequence_number,
            self.source_timestamp,
            self.gid.as_bytes(),
        ))
    }

    /// The labelled form of Jazzy 0.2.0–0.2.3 (for tests and old peers).
    pub fn encode_labelled(&self) -> ZBytes {
        z_serialize(&(
            LABELS[0],
            self.sequence_number,
            LABELS[1],
            self.source_timestamp,
            LABELS[2],
            self.gid.as_bytes(),
        ))
    }

    /// Reads either form; the labelled one is recognised by its first label.
    pub fn decode(att: &ZBytes) -> Result<(Attachment, AttachmentFormat), AttachmentError> {
        Attachment::decode_slice(&att.to_bytes())
    }

    /// [`Attachment::decode`] on contiguous bytes.
    pub fn decode_slice(att: &[u8]) -> Result<(Attachment, AttachmentFormat), AttachmentError> {
        let mut c = Cursor {
            rest: att,
            total: att.len(),
        };
        let labelled = att.len() > LABELS[0].len()
            && att[0] as usize == LABELS[0].len()
            && &att[1..1 + LABELS[0].len()] == LABELS[0].as_bytes();
        let (seq, ts, gid, format) = if labelled {
            c.label(LABELS[0])?;
            let seq = c.i64("sequence_number")?;
            c.label(LABELS[1])?;
            let ts = c.i64("source_timestamp")?;
            c.label(LABELS[2])?;
            (seq, ts, c.gid()?, AttachmentFormat::Labelled)
        } else {
            let seq = c.i64("sequence_number")?;
            let ts = c.i64("source_timestamp")?;
            (seq, ts, c.gid()?, AttachmentFormat::Current)
        };
        if !c.rest.is_empty() {
            return Err(AttachmentError::Trailing {
                extra: c.rest.len(),
            });
        }
        let a = Attachment {
            sequence_number: seq,
            source_timestamp: ts,
            gid,
        };
        Ok((a, format))
    }
}

/// Reads zenoh-ext's encoding back: little-endian integers, LEB128 lengths.
struct Cursor<'a> {
    rest: &'a [u8],
    total: usize,
}

impl<'a> Cursor<'a> {
    fn malformed(&self, what: &'static str) -> AttachmentError {
        AttachmentError::Malformed {
            len: self.total,
            what,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AttachmentError> {
        if n > self.rest.len() {
            return Err(self.malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, AttachmentError> {
        let b = self.take(8, what)?;
        Ok(i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A LEB128 length, bounded by `max` before any byte it counts is read.
    fn len(&mut self, max: usize, what: &'static str) -> Result<usize, AttachmentError> {
        let n = leb128::read::unsigned(&mut self.rest).map_err(|_| self.malformed(what))?;
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ if what == "source_gid" => Err(AttachmentError::GidTooLong {
                len: usize::try_from(n).unwrap_or(usize::MAX),
                max,
            }),
            _ => Err(self.malformed(what)),
        }
    }

    fn gid(&mut self) -> Result<Gid, AttachmentError> {
        let n = self.len(MAX_GID_LEN, "source_gid")?;
        let bytes = self.take(n, "source_gid")?;
        Ok(Gid::new(bytes).expect("n <= MAX_GID_LEN"))
    }

    fn label(&mut self, label: &'static str) -> Result<(), AttachmentError> {
        let n = self.len(label.len(), label)?;
        if self.take(n, label)? != label.as_bytes() {
            return Err(self.malformed(label));
        }
        Ok(())
    }
}
