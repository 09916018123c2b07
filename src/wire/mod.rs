//! Wire formats at the daemon's edges (see `docs/protocol.md`), one file per
//! format and direction: [`request`] decodes what clients send (safetensors
//! and raw tensor messages, attachments), [`image`] describes and checks
//! camera frames (docs/images.md), [`command`] parses generation
//! commands, [`reply`] encodes what the daemon sends back (predictions,
//! errors, token and final messages). Ingress decodes inside the zenoh
//! callback, so decoders only parse and bound-check: a hostile payload costs
//! at most one copy of its bytes. Codecs know tensors and error codes, never
//! the scheduler, the runtime or zenoh.

use safetensors::tensor::Dtype as StDtype;

use crate::error::{ErrorCode, Rejection};
use crate::tensor::Dtype;

pub mod answer;
pub mod command;
pub mod describe;
pub mod image;
pub mod reply;
pub mod request;

pub use reply::{ErrorMessage, decode_output};
pub use request::{
    decode_attachment, decode_raw, decode_safetensors, encode_message, encode_request,
};

/// Request metadata carried next to the tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestMeta {
    pub id: Option<String>,
    pub seq: Option<u64>,
    /// Source timestamp, microseconds since the Unix epoch.
    pub ts_us: Option<u64>,
}

/// Metadata keys understood in requests.
pub const META_ID: &str = "id";
pub const META_SEQ: &str = "seq";
pub const META_TS: &str = "ts_us";
/// Names no stream and no generation id may take: `<output>/error` is a
/// pipeline's default error key, so a stream or generation called `error`
/// would publish its answers there (docs/protocol.md § Key expressions).
pub const RESERVED_NAMES: [&str; 1] = ["error"];

/// Whether `name` is reserved (see [`RESERVED_NAMES`]).
pub fn is_reserved(name: &str) -> bool {
    RESERVED_NAMES.contains(&name)
}

/// Longest request id echoed back, so a client cannot make replies grow.
pub const MAX_ID_LEN: usize = 128;

pub(crate) fn bad(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::BadPayload, msg)
}

/// A rejection plus whatever request metadata was read before it, so the
/// error reply can still name the request.
pub type Failed = (Rejection, RequestMeta);

/// The safetensors name of a dtype.
pub fn st_dtype(d: Dtype) -> StDtype {
    match d {
        Dtype::F32 => StDtype::F32,
        Dtype::F64 => StDtype::F64,
        Dtype::F16 => StDtype::F16,
        Dtype::Bf16 => StDtype::BF16,
        Dtype::I8 => StDtype::I8,
        Dtype::I16 => StDtype::I16,
        Dtype::I32 => StDtype::I32,
        Dtype::I64 => StDtype::I64,
        Dtype::U8 => StDtype::U8,
        Dtype::U16 => StDtype::U16,
        Dtype::U32 => StDtype::U32,
        Dtype::U64 => StDtype::U64,
        Dtype::Bool => StDtype::BOOL,
    }
}

/// The dtype of a safetensors name, if reflexd handles it.
pub fn from_st_dtype(d: StDtype) -> Option<Dtype> {
    Dtype::ALL.into_iter().find(|x| st_dtype(*x) == d)
}
