"""reflexd wire formats for Python clients, with nothing beyond numpy.

See docs/protocol.md. Three things cross the wire:

* safetensors messages (requests and predictions): an 8-byte little-endian
  u64 header length N, N bytes of JSON header, then the tensor bytes
  (little-endian, C order, packed back to back). The header maps each tensor
  name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
  to the start of the data section) and may carry "__metadata__", a map of
  string to string. reflexd reads the request metadata keys "id", "seq" and
  "ts_us"; predictions carry more (see PREDICTION_KEYS).
* raw messages: the bytes of exactly one tensor whose dtype and shape the
  daemon config fixes; id/seq/ts_us travel in the zenoh attachment as
  "id=..;seq=..;ts_us=.." or as a bare id.
* error messages: UTF-8 JSON {"code", "message", "pipeline", "stream", "id", "seq"}.

    import numpy as np
    from reflexd_client import wire as rw
    payload = rw.encode({"x": np.ones((1, 4), np.float32)}, {"id": "r1", "seq": 1})
    tensors, meta = rw.decode(payload)
"""

import json
import struct
import time

import numpy as np

__all__ = [
    "DTYPES",
    "PREDICTION_KEYS",
    "TIMING_KEYS",
    "WireError",
    "attachment",
    "decode",
    "decode_error",
    "encode",
    "encode_parts",
    "now_us",
    "parse_attachment",
    "raw_payload",
]

# safetensors dtype name -> numpy dtype (little-endian). BF16 has no numpy
# type: decode() widens it to float32 (exact).
DTYPES = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
# numpy kind + itemsize -> safetensors dtype name (any byte order).
_NP_TO_ST = {
    "b1": "BOOL", "u1": "U8", "i1": "I8", "u2": "U16", "i2": "I16", "f2": "F16",
    "u4": "U32", "i4": "I32", "f4": "F32", "u8": "U64", "i8": "I64", "f8": "F64",
}

# Metadata keys of a prediction. id/seq/ts_us are present only when the
# request carried them; the rest are always present.
PREDICTION_KEYS = (
    "id", "seq", "ts_us", "stream", "pipeline", "model", "provider", "worker",
    "recv_order", "run_order", "queue_us", "inference_us", "e2e_us",
)
TIMING_KEYS = ("queue_us", "inference_us", "e2e_us")

_HEADER_MAX = 100_000_000  # the Rust safetensors crate's MAX_HEADER_SIZE


class WireError(ValueError):
    """A message that does not follow the reflexd wire format."""


def now_us():
    """Microseconds since the Unix epoch, for the optional ts_us key."""
    return time.time_ns() // 1000


def encode_parts(parts, metadata=None):
    """Builds a safetensors message from (name, dtype, shape, data_bytes)
    tuples, dtype being a safetensors name ("F32", "I64", ...). Use it to send
    dtypes numpy lacks (BF16) or deliberately malformed tensors in tests."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name, dtype, shape, data in parts:
        if name == "__metadata__" or name in header:
            raise WireError(f"tensor name {name!r} is reserved or repeated")
        data = bytes(data)
        header[name] = {
            "dtype": dtype,
            "shape": [int(d) for d in shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad with JSON whitespace to 8-byte alignment
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def encode(tensors, metadata=None):
    """Builds a safetensors message from {name: numpy array} (insertion order
    is kept) and optional metadata ({"id": ..., "seq": ..., "ts_us": ...};
    values are converted with str())."""
    parts = []
    for name, arr in tensors.items():
        a = np.asarray(arr)
        st = _NP_TO_ST.get(f"{a.dtype.kind}{a.dtype.itemsize}")
        if st is None:
            raise WireError(f"tensor {name!r}: numpy dtype {a.dtype} has no safetensors equivalent")
        le = np.ascontiguousarray(a, dtype=DTYPES[st])
        parts.append((name, st, a.shape, le.tobytes()))
    return encode_parts(parts, metadata)


def decode(payload):
    """Parses a safetensors message into ({name: numpy array}, {key: str}).
    Arrays are read-only views unless widened (BF16 -> float32)."""
    buf = bytes(payload)
    if len(buf) < 8:
        raise WireError(f"message has {len(buf)} bytes; a safetensors header needs 8")
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > _HEADER_MAX or 8 + n > len(buf):
        raise WireError(f"header length {n} does not fit a {len(buf)}-byte message")
    try:
        header = json.loads(buf[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise WireError("__metadata__ must map strings to strings")
    data = memoryview(buf)[8 + n:]
    tensors = {}
    end_max = 0
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise WireError(f"tensor {name!r}: header entry {info!r} is malformed") from None
        if dtype not in DTYPES:
            raise WireError(f"tensor {name!r}: unsupported dtype {dtype!r}")
        nd = DTYPES[dtype]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not 0 <= begin <= end <= len(data) or end - begin != count * nd.itemsize:
            raise WireError(f"tensor {name!r}: offsets {begin}..{end} do not hold {dtype} {shape}")
        arr = np.frombuffer(data[begin:end], dtype=nd).reshape(shape)
        if dtype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = arr
        end_max = max(end_max, end)
    if end_max != len(data):
        raise WireError(f"data section has {len(data)} bytes; tensors cover {end_max}")
    return tensors, dict(metadata)


def raw_payload(array, dtype=np.float32):
    """The payload of a raw-format message: the tensor's little-endian bytes
    in C order (the daemon config fixes dtype and shape; only the byte count
    is checked)."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def attachment(id=None, seq=None, ts_us=None):
    """The zenoh attachment of a raw-format message: "id=..;seq=..;ts_us=.."
    (only the given keys). None when nothing is given. An id must not contain
    ';' and is trimmed of surrounding whitespace by the daemon."""
    parts = []
    if id is not None:
        if ";" in str(id):
            raise WireError(f"attachment id {id!r} contains ';'")
        parts.append(f"id={id}")
    if seq is not None:
        parts.append(f"seq={int(seq)}")
    if ts_us is not None:
        parts.append(f"ts_us={int(ts_us)}")
    return ";".join(parts) if parts else None


def parse_attachment(att):
    """Reads an attachment the way the daemon does (see wire::decode_attachment):
    a string without '=' is a bare id; otherwise ';'-separated key=value pairs."""
    s = bytes(att).decode("utf-8") if not isinstance(att, str) else att
    if "=" not in s:
        return {"id": s}
    out = {}
    for kv in s.split(";"):
        if not kv:
            continue
        if "=" not in kv:
            raise WireError(f"attachment entry {kv!r} is not key=value")
        k, v = kv.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def decode_error(payload):
    """Parses an error message (JSON) into a dict with keys code, message,
    pipeline, stream, id (str or None) and seq (int or None)."""
    try:
        body = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"error message is not UTF-8 JSON: {e}") from None
    missing = [k for k in ("code", "message", "pipeline", "stream", "id", "seq") if k not in body]
    if missing:
        raise WireError(f"error message lacks {missing}: {body!r}")
    return body
