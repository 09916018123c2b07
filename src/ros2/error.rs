//! Typed errors of the ROS 2 layer. Decoding runs on outside input inside
//! the ingress callback, so every malformed byte ends here, never in a panic;
//! [`DecodeError`] converts into the daemon's `bad_payload` rejection so the
//! client sees the same error key as for any other bad message.

use crate::error::{ErrorCode, Rejection};

/// Why a CDR payload could not be turned into a message.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{ty}: payload of {len} bytes is shorter than the 4-byte CDR encapsulation header")]
    NoEncapsulation { ty: &'static str, len: usize },
    #[error(
        "{ty}: unsupported CDR encapsulation 0x{id:04x} (plain CDR only: 0x0000 big-endian, 0x0001 little-endian)"
    )]
    UnsupportedEncapsulation { ty: &'static str, id: u16 },
    #[error("{ty}: malformed CDR: {reason}")]
    Cdr { ty: &'static str, reason: String },
    #[error("{ty}.{field}: declares {declared} bytes but only {available} remain in the payload")]
    Truncated {
        ty: &'static str,
        field: &'static str,
        declared: u64,
        available: usize,
    },
    #[error("{ty}: {reason}")]
    Invalid { ty: &'static str, reason: String },
}

impl From<&DecodeError> for Rejection {
    fn from(e: &DecodeError) -> Self {
        Rejection::new(ErrorCode::BadPayload, e.to_string())
    }
}

impl From<DecodeError> for Rejection {
    fn from(e: DecodeError) -> Self {
        Rejection::from(&e)
    }
}

/// Why a message could not be serialised (only for values CDR cannot carry,
/// e.g. a sequence longer than `u32::MAX`).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{ty}: cannot encode as CDR: {reason}")]
pub struct EncodeError {
    pub ty: &'static str,
    pub reason: String,
}

/// Why an rmw_zenoh attachment was rejected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AttachmentError {
    #[error("rmw_zenoh attachment of {len} bytes is truncated or malformed ({what})")]
    Malformed { len: usize, what: &'static str },
    #[error("rmw_zenoh attachment declares a {len}-byte GID (at most {max} supported)")]
    GidTooLong { len: usize, max: usize },
    #[error("rmw_zenoh attachment has {extra} unexpected trailing bytes")]
    Trailing { extra: usize },
}

/// Why a liveliness key expression is not a valid rmw_zenoh graph token.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("liveliness token {token:?}: {reason}")]
pub struct TokenError {
    pub token: String,
    pub reason: String,
}
