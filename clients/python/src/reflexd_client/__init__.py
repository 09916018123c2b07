"""A small Python client for reflexd over zenoh (eclipse-zenoh + numpy only).

Install it with ``pip install ./clients/python`` (distribution
``reflexd-client``; ``scripts/provision.sh`` does this in the dev venv).

It talks to the daemon exactly as any other zenoh node does (docs/protocol.md):

* ``predict``: publish tensors (a safetensors message) on a pipeline's input
  key and wait for the prediction (or the coded error) with the same id;
* ``publish`` / ``on_predictions``: fire-and-forget requests and a callback
  for every prediction on an output key (sensor streams);
* ``generate``: send a generation command and iterate over the streamed
  token texts; the final message (usage, timing) is kept in ``.final``;
* ``metrics``: the daemon's metrics snapshot from ``<node>/metrics``;
  ``alive``: which daemons hold a liveliness token under ``<node>/alive``.

    from reflexd_client import Client
    with Client("tcp/127.0.0.1:7447") as c:
        y, meta = c.predict("robot/affine/a", "reflexd/affine", {"x": np.ones((1, 4), np.float32)})

Like the ``reflexd`` tools, the session is a zenoh *client* of the endpoint
(a peer-mode daemon routes for its clients, but a peer would only see what
the daemon itself publishes); the endpoint defaults to ``$REFLEXD_CONNECT``,
then ``tcp/127.0.0.1:7447``, and ``Client(config="tool.json5")`` takes a
zenoh JSON5 file instead (TLS certificates: config/zenoh-client-secure.json5).

Errors the daemon answers with come back as ``ReflexdError`` (``.code`` is the
stable error code); no answer within the timeout is ``TimeoutError``.
``reflexd_client.wire`` encodes and decodes the messages (safetensors, raw
attachments, error JSON) with nothing beyond numpy.
"""

import importlib.metadata as _metadata
import itertools
import json
import os
import queue
import time

import numpy as np  # noqa: F401  (tensors are numpy arrays)
import zenoh

from . import wire as rw

try:  # pyproject.toml's version, which follows the reflexd release (Cargo.toml)
    __version__ = _metadata.version("reflexd-client")
except _metadata.PackageNotFoundError:  # imported from a source tree
    __version__ = "unknown"
__all__ = ["Client", "Generation", "ReflexdError", "percentile_ms", "wire"]
wire = rw

DEFAULT_CONNECT = "tcp/127.0.0.1:7447"


class ReflexdError(Exception):
    """An error message from the daemon: ``code`` (stable), ``message``, ``id``."""

    def __init__(self, body):
        self.code = body.get("code")
        self.message = body.get("message")
        self.id = body.get("id")
        self.body = body
        super().__init__(f"{self.code}: {self.message}")


def _config(endpoint, config, connect_timeout):
    """A client of one endpoint that never listens or scouts; with a file,
    the file as is, its endpoints replaced by an explicit ``endpoint``."""
    if config is None:
        conf = zenoh.Config.from_json5(json.dumps({
            "mode": "client",
            "connect": {"endpoints": [endpoint or os.environ.get("REFLEXD_CONNECT") or DEFAULT_CONNECT]},
            "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
        }))
    else:
        conf = zenoh.Config.from_file(config)
        if endpoint:
            conf.insert_json5("connect/endpoints", json.dumps([endpoint]))
    for key, value in (("connect/timeout_ms", int(connect_timeout * 1000)),
                       ("connect/exit_on_failure", True)):
        if conf.get_json(key) == "null":
            conf.insert_json5(key, json.dumps(value))
    return conf


class Generation:
    """Iterates over the text pieces of one generation; ``final`` holds the
    final message (finish_reason, usage, timing) once iteration ends."""

    def __init__(self, sub, q, timeout):
        self._sub, self._q, self._timeout = sub, q, timeout
        self.final = None
        self.tokens = []

    def __iter__(self):
        try:
            while True:
                try:
                    v = self._q.get(timeout=self._timeout)
                except queue.Empty:
                    raise TimeoutError("no generation message within the timeout") from None
                if "code" in v and "message" in v:
                    raise ReflexdError(v)
                if v.get("done"):
                    self.final = v
                    if v.get("error"):
                        raise ReflexdError(dict(v["error"], id=v.get("id")))
                    return
                self.tokens.append(v)
                yield v["text"]
        finally:
            self._sub.undeclare()
            if getattr(self, "_esub", None) is not None:
                self._esub.undeclare()

    def text(self):
        return "".join(self)


class Client:
    def __init__(self, endpoint=None, connect_timeout=5.0, config=None):
        conf = _config(endpoint, config, connect_timeout)
        where = conf.get_json("connect/endpoints")
        try:
            # Retries until the timeout, then fails: nobody listens there.
            self.session = zenoh.open(conf)
        except zenoh.ZError as e:
            raise ConnectionError(f"cannot connect to {where} within {connect_timeout} s: "
                                  f"is `reflexd run` listening there? ({e})") from None
        self._ids = itertools.count()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.session.close()

    def _new_id(self, prefix):
        return f"{prefix}-{os.getpid()}-{next(self._ids)}"

    def wait_subscribed(self, key, timeout=5.0):
        """Blocks until a subscriber on `key` (the daemon's) is known here:
        zenoh keeps nothing, so a put before that is routed nowhere."""
        pub = self.session.declare_publisher(key)
        try:
            end = time.monotonic() + timeout
            while not pub.matching_status.matching:
                if time.monotonic() > end:
                    raise TimeoutError(f"no subscriber on {key}: is the pipeline configured?")
                time.sleep(0.01)
        finally:
            pub.undeclare()

    def publish(self, key, tensors, id=None, seq=None, ts_us=None):
        """Sends one safetensors request without waiting for the answer."""
        meta = {k: v for k, v in (("id", id), ("seq", seq), ("ts_us", ts_us)) if v is not None}
        self.session.put(key, rw.encode(tensors, meta))

    def on_predictions(self, output, callback):
        """Calls ``callback(key, tensors, meta)`` for every prediction under
        ``output`` (``<output>/**``). Returns the subscriber (undeclare it)."""
        def handle(sample):
            key = str(sample.key_expr)
            if key.endswith("/error"):
                return
            tensors, meta = rw.decode(sample.payload.to_bytes())
            callback(key, tensors, meta)
        return self.session.declare_subscriber(f"{output}/**", handle)

    def predict(self, key, output, tensors, timeout=5.0, id=None, seq=None):
        """Sends tensors on ``key`` and returns ``(tensors, meta)`` of the
        prediction with the same id published under ``output``."""
        rid = id or self._new_id("py")
        q = queue.Queue()

        def handle(sample):
            q.put((str(sample.key_expr), sample.payload.to_bytes()))
        sub = self.session.declare_subscriber(f"{output}/**", handle)
        try:
            self.wait_subscribed(key, timeout)
            self.publish(key, tensors, id=rid, seq=seq, ts_us=rw.now_us())
            end = time.monotonic() + timeout
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {rid} on {output}/**")
                try:
                    k, payload = q.get(timeout=left)
                except queue.Empty:
                    continue
                if k.endswith("/error"):
                    body = rw.decode_error(payload)
                    if body.get("id") == rid:
                        raise ReflexdError(body)
                    continue
                out, meta = rw.decode(payload)
                if meta.get("id") == rid:
                    return out, meta
        finally:
            sub.undeclare()

    def generate(self, cmd_key, output, prompt, timeout=60.0, error_key=None, **params):
        """Starts a generation (``prompt`` plus command fields such as
        ``max_tokens``, ``temperature``, ``stop``) and returns a ``Generation``
        to iterate over. Rejected commands are answered on the pipeline's
        ``error_key`` (default ``<output>/error``) and raised as ReflexdError."""
        gid = params.pop("id", None) or self._new_id("py")
        q = queue.Queue()

        def tokens(sample):
            q.put(json.loads(sample.payload.to_bytes()))

        def errors(sample):
            body = json.loads(sample.payload.to_bytes())
            if body.get("id") == gid:
                q.put(body)
        sub = self.session.declare_subscriber(f"{output}/{gid}", tokens)
        esub = self.session.declare_subscriber(error_key or f"{output}/error", errors)
        self.wait_subscribed(cmd_key, timeout)
        self.session.put(cmd_key, json.dumps(dict(params, id=gid, prompt=prompt)))
        g = Generation(sub, q, timeout)
        g._esub = esub  # kept alive for the generation's lifetime
        return g

    def metrics(self, node="reflexd", timeout=5.0):
        """The daemon's metrics snapshot (dict: pipelines, workers, histograms;
        every field in docs/metrics.md#json-snapshot-nodemetrics)."""
        for reply in self.session.get(f"{node}/metrics", timeout=timeout):
            if reply.ok is not None:
                return json.loads(reply.ok.payload.to_bytes())
        raise TimeoutError(f"no daemon answered on {node}/metrics")

    def alive(self, node="reflexd", timeout=2.0):
        """Keys of the liveliness tokens under ``<node>/alive`` (one per daemon)."""
        return [str(r.ok.key_expr) for r in self.session.liveliness().get(f"{node}/alive", timeout=timeout)
                if r.ok is not None]


def percentile_ms(hist, q):
    """A quantile (ms) of a histogram in a metrics snapshot (buckets are
    ``[upper_us, count]``, docs/metrics.md#histogram-object), or None when
    it is empty."""
    if not hist["count"]:
        return None
    rank = max(1, int(np.ceil(q * hist["count"])))
    seen = 0
    for upper, n in hist["buckets"]:
        seen += n
        if seen >= rank:
            return min(upper, hist["max_us"]) / 1000.0
    return hist["max_us"] / 1000.0
