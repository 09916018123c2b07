#!/usr/bin/env python3
"""reflexd from Python in four steps: a prediction, a bad request answered
with its error code, a streamed generation, and the daemon's metrics.

    pip install ./clients/python      # the reflexd-client package (provision.sh: in its venv)
    ~/.cache/reflexd/v1/venv/bin/python clients/python/example.py \
        --connect tcp/127.0.0.1:7447 --input robot/affine/a --output reflexd/affine \
        [--llm-cmd reflexd/llm/cmd --llm-out reflexd/llm/out] [--node reflexd]

The tensor pipeline is assumed to take ``x`` f32 [N, 4] (models/test/affine.onnx:
y = 2x + 1). tests/python_client.rs runs this file against an in-process daemon.
"""

import argparse
import sys

import numpy as np

from reflexd_client import Client, ReflexdError, percentile_ms

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--connect", help="the daemon's zenoh endpoint [default: $REFLEXD_CONNECT, else tcp/127.0.0.1:7447]")
ap.add_argument("--zenoh-config", help="a zenoh JSON5 file for this client's session (e.g. TLS certificates)")
ap.add_argument("--input", required=True, help="a key the tensor pipeline's input pattern matches")
ap.add_argument("--output", required=True, help="the tensor pipeline's output key")
ap.add_argument("--llm-cmd", help="a generation pipeline's command key")
ap.add_argument("--llm-out", help="that pipeline's output key")
ap.add_argument("--node", default="reflexd", help="the daemon's metrics.node")
args = ap.parse_args()

with Client(args.connect, config=args.zenoh_config) as c:
    # 1. Publish a tensor, receive the prediction with the same id.
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out, meta = c.predict(args.input, args.output, {"x": x})
    y = out["y"]
    print(f"prediction: y={y.ravel().tolist()} e2e_us={meta['e2e_us']} provider={meta['provider']}")
    assert np.allclose(y, 2 * x + 1), y

    # 2. A request the model cannot take: the daemon answers with a code.
    try:
        c.predict(args.input, args.output, {"x": np.zeros((1, 5), np.float32)})
        sys.exit("expected an error")
    except ReflexdError as e:
        print(f"error: code={e.code} message={e.message}")

    # 3. Stream a generation token by token.
    if args.llm_cmd:
        g = c.generate(args.llm_cmd, args.llm_out, "What is the capital of France?", max_tokens=12)
        pieces = []
        for piece in g:
            pieces.append(piece)
            print(f"token: {piece!r}", flush=True)
        t = g.final["timing"]
        print(f"generation: finish={g.final['finish_reason']} tokens={g.final['usage']['completion_tokens']} "
              f"ttft_ms={t['ttft_ms']:.1f} text={''.join(pieces)!r}")

    # 4. Metrics: counts by outcome and latency percentiles per pipeline.
    m = c.metrics(args.node)
    print(f"alive: {c.alive(args.node)}")
    for p in m["pipelines"]:
        print(f"metrics: {p['name']} kind={p['kind']} ok={p['ok']} errors={p['errors']} "
              f"p50_ms={percentile_ms(p['e2e'], 0.5)} p99_ms={percentile_ms(p['e2e'], 0.99)}")
        if p.get("generation"):
            gm = p["generation"]
            print(f"metrics: {p['name']} ttft_p50_ms={percentile_ms(gm['ttft'], 0.5)} "
                  f"completion_tokens={gm['completion_tokens']}")
