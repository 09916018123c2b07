//! Per-publisher state egress keeps for one rmw_zenoh topic: a stable GID
//! and the sequence counter that go into every sample's attachment. Shared
//! by reference between the workers that publish on the topic, so the
//! counter is atomic; `next_attachment` never blocks or allocates beyond the
//! 33-byte attachment itself.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use zenoh::bytes::ZBytes;

use super::attachment::{Attachment, GID_LEN, Gid};

/// Nanoseconds since the UNIX epoch (the attachment's `source_timestamp`);
/// 0 if the clock is before 1970, saturating in 2262.
pub fn unix_nanos_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A GID derived from the publisher's liveliness token, which names the
/// session, node, entity id and topic: unique per publisher and the same every
/// time it is derived, as rmw_zenoh derives its own (it uses XXH3-128 of the
/// same string; receivers only compare GIDs, so any stable hash serves).
pub fn gid_for_token(liveliness_token: &str) -> [u8; GID_LEN] {
    let digest = Sha256::digest(liveliness_token.as_bytes());
    let mut gid = [0u8; GID_LEN];
    gid.copy_from_slice(&digest[..GID_LEN]);
    gid
}

/// Attachment state of one publisher.
#[derive(Debug)]
pub struct PublisherState {
    gid: Gid,
    last_seq: AtomicI64,
}

impl PublisherState {
    pub fn new(gid: [u8; GID_LEN]) -> Self {
        PublisherState {
            gid: Gid::new(&gid).expect("16 <= MAX_GID_LEN"),
            last_seq: AtomicI64::new(0),
        }
    }

    pub fn gid(&self) -> &[u8] {
        self.gid.as_bytes()
    }

    /// The attachment for the next sample: sequence numbers start at 1 and
    /// grow by one per call, timestamped now.
    pub fn next_attachment(&self) -> ZBytes {
        self.attachment_at(unix_nanos_now())
    }

    /// As [`Self::next_attachment`] with an explicit source timestamp.
    pub fn attachment_at(&self, source_timestamp: i64) -> ZBytes {
        let seq = self.last_seq.fetch_add(1, Ordering::Relaxed) + 1;
        Attachment {
            sequence_number: seq,
            source_timestamp,
            gid: self.gid,
        }
        .encode()
    }
}
