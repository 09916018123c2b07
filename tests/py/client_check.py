#!/usr/bin/env python3
"""End-to-end check of a running reflexd from a Python eclipse-zenoh client.

    ~/.cache/reflexd/v1/venv/bin/python tests/py/client_check.py --connect tcp/127.0.0.1:PORT

Needs the provisioned venv (eclipse-zenoh, onnxruntime, numpy, and the
reflexd-client package that scripts/provision.sh installs from clients/python:
its `reflexd_client.wire` encodes and decodes safetensors by hand) and a daemon
listening on PORT with exactly these two pipelines. Model paths are relative
to the repository root (what `Config::from_toml(text, repo)` resolves them
against); the `[zenoh]` table is the test's own (loopback listen endpoint,
scouting off):

    [[pipeline]]
    name = "affine"
    model = "models/test/affine.onnx"
    input = "py/affine/*"
    output = "py/affine_out"

    [[pipeline]]
    name = "vad"
    model = "models/fetched/silero_vad.onnx"
    input = "py/mic/*"
    output = "py/vad"
    overflow = "latest"
    format = "raw"
    raw = { tensor = "input", dtype = "f32", shape = [1, 512] }
    constants.sr = { dtype = "i64", shape = [], data = [16000] }
    state = [{ input = "state", output = "stateN" }]
    context = [{ input = "input", keep = 64 }]

What it checks, in order (one line per check; the last line is
`python client: N passed, M failed`; exit status 0 only when M == 0):

  a. affine: requests of batch 1, 3, 7 and 2 on py/affine/py, each with id,
     seq and ts_us; every prediction on py/affine_out/py equals running
     affine.onnx in Python onnxruntime (np.allclose), carries only `y`, echoes
     id/seq/ts_us, names stream/pipeline/model/provider, and has integer
     worker/recv_order/run_order/queue_us/inference_us/e2e_us with
     queue_us + inference_us <= e2e_us and recv_order < run_order, both
     increasing from one request to the next. Metadata keys not described in
     docs/protocol.md are printed as a note (not a failure).
  b. vad: tests/data/speech_16k.wav streamed as raw 512-sample f32 frames on
     py/mic/py (attachment id=py-N;seq=N;ts_us=..), waiting for each
     prediction before sending the next so none is superseded; every
     probability matches a Python onnxruntime loop carrying `state` and the
     last 64 samples of context (|diff| < 1e-4), frames come back in order,
     and the maximum is > 0.5.
  c. errors on py/affine_out/error (and py/vad/error): garbage bytes →
     bad_payload with id null; an f64 `x` → wrong_dtype with the request id;
     plus wrong_shape, missing_tensor, unexpected_tensor, empty_payload,
     bad_stream (the reserved stream `error`) and a raw frame of the wrong
     size → wrong_shape with the attachment id.
  d. the daemon still serves a valid affine request afterwards.

Exit status: 0 all passed, 1 some check failed, 2 could not run (missing
file, no connection to the daemon).

Stream `py` of the vad pipeline must start from zero state: against a daemon
that is reused, leave idle_reset_ms (default 2 s) between runs.
"""

import argparse
import json
import os
import queue
import sys
import time
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)
# The installed package (pip install ./clients/python), not the source tree.
from reflexd_client import wire as rw  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))

AFFINE_IN = "py/affine"          # input pattern py/affine/*
AFFINE_OUT = "py/affine_out"
VAD_IN = "py/mic"                # input pattern py/mic/*
VAD_OUT = "py/vad"
STREAM = "py"
SR = 16000
CHUNK = 512
CONTEXT = 64
VAD_TOL = 1e-4


class Setup(Exception):
    """The check cannot run at all (exit status 2)."""


class Checks:
    def __init__(self, verbose):
        self.passed = 0
        self.failed = []
        self.verbose = verbose

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"  ok    {name}" + (f" ({detail})" if detail else ""), flush=True)
        else:
            self.failed.append(name)
            print(f"  FAIL  {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok


class Msg:
    """One received sample, copied out of the zenoh callback."""

    def __init__(self, sample):
        self.key = str(sample.key_expr)
        self.payload = sample.payload.to_bytes()
        self.attachment = sample.attachment.to_bytes() if sample.attachment is not None else None
        self.is_error = False
        self.error = None
        self.tensors = None
        self.meta = {}
        self.bad = None

    def decode(self, error_key):
        if self.key == error_key:
            self.is_error = True
            try:
                self.error = rw.decode_error(self.payload)
            except rw.WireError as e:
                self.bad = str(e)
        else:
            try:
                self.tensors, self.meta = rw.decode(self.payload)
            except rw.WireError as e:
                self.bad = str(e)
        return self

    @property
    def id(self):
        if self.is_error:
            return (self.error or {}).get("id")
        return self.meta.get("id")

    def __repr__(self):
        if self.bad:
            return f"<{self.key}: undecodable: {self.bad}>"
        if self.is_error:
            return f"<{self.key}: {json.dumps(self.error)}>"
        shapes = {k: list(v.shape) for k, v in self.tensors.items()}
        return f"<{self.key}: tensors {shapes} meta {self.meta}>"


class Inbox:
    """Everything published under `<output>/**` (predictions and errors)."""

    def __init__(self, session, output):
        self.output = output
        self.error_key = f"{output}/error"
        self.q = queue.Queue()
        self.strays = []
        self.sub = session.declare_subscriber(f"{output}/**", lambda s: self.q.put(Msg(s)))

    def get(self, timeout):
        try:
            return self.q.get(timeout=timeout).decode(self.error_key)
        except queue.Empty:
            return None

    def drain(self):
        while True:
            try:
                self.q.get_nowait()
            except queue.Empty:
                return

    def expect(self, match, timeout):
        """Next message satisfying `match`; answers to probes (id probe-*) are
        skipped, anything else is kept as a stray and reported at the end."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            m = self.get(left)
            if m is None:
                return None
            if match(m):
                return m
            if isinstance(m.id, str) and m.id.startswith("probe"):
                continue
            self.strays.append(m)


def zenoh_session(endpoint, wait_s):
    import zenoh

    conf = {
        "mode": "peer",
        "connect": {"endpoints": [endpoint]},
        "listen": {"endpoints": []},
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
    }
    session = zenoh.open(zenoh.Config.from_json5(json.dumps(conf)))
    end = time.monotonic() + wait_s
    while not session.info.peers_zid():
        if time.monotonic() > end:
            session.close()
            raise Setup(f"no zenoh peer reachable at {endpoint} within {wait_s:.0f} s; is reflexd running there?")
        time.sleep(0.02)
    return session


def until_served(session, key, make, inbox, tries=100):
    """Sends probes (`make(i)` -> (payload, attachment), ids "probe-<i>")
    until the daemon answers one, so later requests are not lost while
    subscriptions propagate. Returns the number of probes sent."""
    for i in range(1, tries + 1):
        payload, att = make(i)
        session.put(key, payload, attachment=att)
        if inbox.get(0.2) is not None:
            time.sleep(0.2)
            inbox.drain()
            return i
    raise Setup(f"reflexd never answered a probe on {key} (no message on {inbox.output}/**)")


def ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def read_wav(path):
    with wave.open(path, "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SR):
            raise Setup(f"{path}: expected 16 kHz mono 16-bit PCM")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def vad_reference(sess, frames, carry=True):
    """Silero VAD run directly, `state` and 64 samples of context carried
    (or, with carry=False, every frame from zero state and zero context)."""
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(CONTEXT, np.float32)
    sr = np.array(SR, dtype=np.int64)
    probs = []
    for f in frames:
        if not carry:
            state = np.zeros((2, 1, 128), np.float32)
            context = np.zeros(CONTEXT, np.float32)
        x = np.concatenate([context, f])[None, :]
        out, state = sess.run(["output", "stateN"], {"input": x, "state": state, "sr": sr})
        probs.append(float(out[0, 0]))
        context = x[0, -CONTEXT:]
    return np.array(probs)


def as_uint(meta, key):
    v = meta.get(key)
    return int(v) if isinstance(v, str) and v.isdigit() else None


# ------------------------------------------------------------------ checks

def check_affine(c, session, inbox, affine, args, state):
    print("a. affine predictions vs Python onnxruntime", flush=True)
    rng = np.random.default_rng(7)
    last_run = -1
    for i, batch in enumerate([1, 3, 7, 2]):
        x = (rng.standard_normal((batch, 4)) * (i + 1)).astype(np.float32)
        rid, ts = f"py-affine-{i}", rw.now_us()
        session.put(f"{AFFINE_IN}/{STREAM}", rw.encode({"x": x}, {"id": rid, "seq": i, "ts_us": ts}))
        m = inbox.expect(lambda m, rid=rid: m.id == rid, args.timeout)
        name = f"affine[{i}] batch {batch}"
        if not c.check(f"{name}: prediction received", m is not None and not m.is_error and not m.bad,
                       f"no prediction within {args.timeout} s" if m is None else repr(m)):
            continue
        want = affine.run(["y"], {"x": x})[0]
        y = m.tensors.get("y")
        c.check(f"{name}: published tensors are exactly ['y']", sorted(m.tensors) == ["y"], f"got {sorted(m.tensors)}")
        c.check(f"{name}: y matches onnxruntime", y is not None and y.dtype == np.float32 and y.shape == want.shape
                and np.allclose(y, want, rtol=1e-6, atol=1e-6),
                f"daemon {None if y is None else (y.dtype, y.shape, y.ravel()[:4])} vs direct {want.ravel()[:4]}")
        c.check(f"{name}: key is {AFFINE_OUT}/{STREAM}", m.key == f"{AFFINE_OUT}/{STREAM}", m.key)
        md = m.meta
        expect = {"id": rid, "seq": str(i), "ts_us": str(ts), "stream": STREAM, "pipeline": "affine",
                  "model": "affine.onnx", "provider": args.provider}
        wrong = {k: (md.get(k), v) for k, v in expect.items() if md.get(k) != v}
        c.check(f"{name}: metadata id/seq/ts_us/stream/pipeline/model/provider", not wrong, f"(got, want): {wrong}")
        ints = ("worker", "recv_order", "run_order", *rw.TIMING_KEYS)
        nums = {k: as_uint(md, k) for k in ints}
        missing = [k for k, v in nums.items() if v is None]
        if c.check(f"{name}: {'/'.join(ints)} are unsigned integers", not missing,
                   f"missing or not integers: {missing} in {md}"):
            c.check(f"{name}: queue_us + inference_us <= e2e_us",
                    nums["queue_us"] + nums["inference_us"] <= nums["e2e_us"],
                    f"{nums['queue_us']} + {nums['inference_us']} > {nums['e2e_us']}")
            c.check(f"{name}: recv_order < run_order, run_order increasing",
                    last_run < nums["recv_order"] < nums["run_order"],
                    f"previous run_order {last_run}, recv_order {nums['recv_order']}, run_order {nums['run_order']}")
            last_run = nums["run_order"]
            state.setdefault("timings", []).append(tuple(nums[k] for k in rw.TIMING_KEYS))
        extra = sorted(set(md) - set(rw.PREDICTION_KEYS))
        if extra:
            state.setdefault("extra_keys", set()).update(extra)


def check_vad(c, session, inbox, args):
    print("b. Silero VAD stream vs Python onnxruntime with state and context carried", flush=True)
    audio = read_wav(args.wav)
    n = len(audio) // CHUNK
    frames = [audio[k * CHUNK:(k + 1) * CHUNK] for k in range(n)]
    sess = ort_session(args.vad_model)
    want = vad_reference(sess, frames)
    stateless = vad_reference(sess, frames, carry=False)
    got = []
    key = f"{VAD_IN}/{STREAM}"
    order_ok = meta_ok = True
    t0 = time.monotonic()
    for k, f in enumerate(frames):
        rid = f"{STREAM}-{k}"
        session.put(key, rw.raw_payload(f), attachment=rw.attachment(rid, k, rw.now_us()))
        m = inbox.expect(lambda m, rid=rid: m.id == rid, args.timeout)
        if m is None or m.is_error or m.bad:
            c.check(f"vad frame {k}: prediction received", False,
                    f"no reply within {args.timeout} s" if m is None else repr(m))
            break
        if order_ok and m.meta.get("seq") != str(k):
            order_ok = c.check("vad: frames answered in order", False, f"frame {k} answered with seq {m.meta.get('seq')}")
        if meta_ok and (m.key != f"{VAD_OUT}/{STREAM}" or m.meta.get("stream") != STREAM
                        or m.meta.get("pipeline") != "vad" or sorted(m.tensors) != ["output"]):
            meta_ok = c.check("vad: key/stream/pipeline and only `output` published", False, repr(m))
        out = m.tensors.get("output")
        got.append(float(out.ravel()[0]) if out is not None and out.size == 1 else float("nan"))
    elapsed = time.monotonic() - t0
    got = np.array(got)
    c.check(f"vad: all {n} frames answered", len(got) == n, f"{len(got)} of {n}")
    if order_ok:
        c.check("vad: frames answered in order (seq echoed from the attachment)", True)
    if meta_ok:
        c.check("vad: key/stream/pipeline and only `output` published (stateN is carried, not published)", True)
    if len(got) == n and n:
        diff = np.abs(got - want)
        worst = int(np.nanargmax(diff)) if np.isfinite(diff).any() else 0
        c.check(f"vad: every probability within {VAD_TOL} of the stateful reference",
                bool(np.all(diff < VAD_TOL)),
                f"frame {worst}: daemon {got[worst]:.6f} vs direct {want[worst]:.6f}")
        c.check("vad: speech detected (max probability > 0.5)", float(np.nanmax(got)) > 0.5, f"max {np.nanmax(got):.4f}")
        c.check("vad: carried state matters (stateless run differs by > 1e-3 somewhere)",
                float(np.max(np.abs(stateless - want))) > 1e-3, "reference with and without state agree")
        print(f"  vad: {n} frames, max {np.nanmax(got):.4f}, max |diff| {np.nanmax(diff):.2e}, "
              f"{1e3 * elapsed / n:.2f} ms per round trip", flush=True)


def expect_error(c, inbox, name, code, rid, seq, stream, pipeline, timeout):
    m = inbox.expect(lambda m: m.is_error, timeout)
    if not c.check(f"{name}: error message on {inbox.error_key}", m is not None and not m.bad,
                   f"nothing within {timeout} s" if m is None else repr(m)):
        return
    e = m.error
    c.check(f"{name}: code {code}", e["code"] == code, f"got {e['code']!r}: {e['message']}")
    got = {"id": e["id"], "seq": e["seq"], "stream": e["stream"], "pipeline": e["pipeline"]}
    want = {"id": rid, "seq": seq, "stream": stream, "pipeline": pipeline}
    c.check(f"{name}: id/seq/stream/pipeline", got == want, f"got {got}, want {want}")
    c.check(f"{name}: message is a non-empty string", isinstance(e["message"], str) and e["message"] != "", repr(e))


def check_errors(c, session, affine_inbox, vad_inbox, args):
    print("c. invalid requests answered on the error key", flush=True)
    key = f"{AFFINE_IN}/{STREAM}"
    t = args.timeout
    session.put(key, b"definitely not a safetensors message")
    expect_error(c, affine_inbox, "garbage bytes", "bad_payload", None, None, STREAM, "affine", t)

    x64 = np.ones((1, 4), np.float64)
    session.put(key, rw.encode({"x": x64}, {"id": "py-bad-dtype", "seq": 101}))
    expect_error(c, affine_inbox, "f64 tensor", "wrong_dtype", "py-bad-dtype", 101, STREAM, "affine", t)

    x5 = np.ones((1, 5), np.float32)
    session.put(key, rw.encode({"x": x5}, {"id": "py-bad-shape", "seq": 102}))
    expect_error(c, affine_inbox, "shape [1,5]", "wrong_shape", "py-bad-shape", 102, STREAM, "affine", t)

    session.put(key, rw.encode({"z": np.ones((1, 4), np.float32)}, {"id": "py-missing", "seq": 103}))
    expect_error(c, affine_inbox, "no tensor x", "missing_tensor", "py-missing", 103, STREAM, "affine", t)

    session.put(key, rw.encode({"x": np.ones((1, 4), np.float32), "extra": np.ones(2, np.float32)},
                               {"id": "py-extra", "seq": 104}))
    expect_error(c, affine_inbox, "extra tensor", "unexpected_tensor", "py-extra", 104, STREAM, "affine", t)

    session.put(key, b"")
    expect_error(c, affine_inbox, "empty payload", "empty_payload", None, None, STREAM, "affine", t)

    session.put(f"{AFFINE_IN}/error", rw.encode({"x": np.ones((1, 4), np.float32)}, {"id": "py-reserved"}))
    expect_error(c, affine_inbox, "stream named `error`", "bad_stream", None, None, "error", "affine", t)

    session.put(f"{VAD_IN}/{STREAM}", b"\0" * (4 * CHUNK - 4), attachment=rw.attachment("py-short", 105))
    expect_error(c, vad_inbox, "raw frame 4 bytes short", "wrong_shape", "py-short", 105, STREAM, "vad", t)


def check_still_serving(c, session, inbox, affine, args):
    print("d. still serving after the errors", flush=True)
    x = np.array([[1.5, -2.0, 0.25, 8.0]], np.float32)
    session.put(f"{AFFINE_IN}/{STREAM}", rw.encode({"x": x}, {"id": "py-after", "seq": 200}))
    m = inbox.expect(lambda m: m.id == "py-after", args.timeout)
    if c.check("valid request after errors: prediction received", m is not None and not m.is_error and not m.bad,
               f"nothing within {args.timeout} s" if m is None else repr(m)):
        want = affine.run(["y"], {"x": x})[0]
        c.check("valid request after errors: y = 2x + 1", np.allclose(m.tensors.get("y"), want)
                and np.allclose(want, 2 * x + 1), f"{m.tensors.get('y')} vs {want}")
        c.check("valid request after errors: seq 200 echoed", m.meta.get("seq") == "200", str(m.meta))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", required=True, help="the daemon's zenoh endpoint, e.g. tcp/127.0.0.1:7447")
    ap.add_argument("--affine-model", default=os.path.join(REPO, "models", "test", "affine.onnx"))
    ap.add_argument("--vad-model", default=os.path.join(REPO, "models", "fetched", "silero_vad.onnx"))
    ap.add_argument("--wav", default=os.path.join(REPO, "tests", "data", "speech_16k.wav"))
    ap.add_argument("--provider", default="cpu", help="execution provider the daemon must report (default cpu)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print passing checks too")
    args = ap.parse_args()

    c = Checks(args.verbose)
    session = None
    try:
        for p in (args.affine_model, args.vad_model, args.wav):
            if not os.path.isfile(p):
                raise Setup(f"{p} not found (models/fetched comes from scripts/provision.sh)")
        affine = ort_session(args.affine_model)
        session = zenoh_session(args.connect, max(args.timeout, 5.0))
        affine_inbox = Inbox(session, AFFINE_OUT)
        vad_inbox = Inbox(session, VAD_OUT)
        zeros4 = np.zeros((1, 4), np.float32)
        until_served(session, f"{AFFINE_IN}/probe", inbox=affine_inbox,
                     make=lambda i: (rw.encode({"x": zeros4}, {"id": f"probe-{i}"}), None))
        until_served(session, f"{VAD_IN}/probe", inbox=vad_inbox,
                     make=lambda i: (rw.raw_payload(np.zeros(CHUNK, np.float32)), rw.attachment(f"probe-{i}", i)))
        state = {}
        check_affine(c, session, affine_inbox, affine, args, state)
        check_vad(c, session, vad_inbox, args)
        check_errors(c, session, affine_inbox, vad_inbox, args)
        check_still_serving(c, session, affine_inbox, affine, args)
        time.sleep(0.2)
        for inbox in (affine_inbox, vad_inbox):
            while (m := inbox.get(0)) is not None:
                if not (isinstance(m.id, str) and m.id.startswith("probe")):
                    inbox.strays.append(m)
            c.check(f"no unexpected messages under {inbox.output}/**", not inbox.strays,
                    "; ".join(repr(m) for m in inbox.strays[:5]))
        if state.get("timings"):
            q, i, e = (int(np.median([t[k] for t in state["timings"]])) for k in range(3))
            print(f"  affine timing medians: queue_us {q}, inference_us {i}, e2e_us {e}", flush=True)
        if state.get("extra_keys"):
            print(f"  note: prediction metadata keys not described in docs/protocol.md: "
                  f"{sorted(state['extra_keys'])}", flush=True)
    except Setup as e:
        print(f"python client: cannot run: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if session is not None:
            session.close()
    status = "0 failed" if not c.failed else f"{len(c.failed)} failed ({', '.join(c.failed[:5])}{', ...' if len(c.failed) > 5 else ''})"
    print(f"python client: {c.passed} passed, {status}", flush=True)
    return 0 if not c.failed else 1


if __name__ == "__main__":
    sys.exit(main())
