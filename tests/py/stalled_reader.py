"""A zenoh subscriber that the test stops with SIGSTOP: the slow consumer of
tests/slow_consumer.rs (and the `slow_consumer` trigger of tests/errors.rs).

It connects to the daemon on loopback, subscribes to KEY, prints `ready`
once declared and `got` at its first sample, then idles until the test
stops it (SIGSTOP: its socket is no longer read, so the daemon's TCP buffers
and zenoh transmission queues towards it fill up) and kills it (by pid).

Its announced lease is long (60 s) so the daemon does not close the link for
a missed keep-alive while it is stopped: only zenoh's own congestion
handling (block.wait_before_close) may end the stall, as with a reader that
is alive but not reading.
"""

import argparse
import json
import sys
import time

import zenoh


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True, help="e.g. tcp/127.0.0.1:7447")
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    conf = {
        "mode": "peer",
        "listen": {"endpoints": []},
        "connect": {"endpoints": [args.connect]},
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
        "transport": {"link": {"tx": {"lease": 60000}}},
    }
    session = zenoh.open(zenoh.Config.from_json5(json.dumps(conf)))
    seen = {"n": 0}

    def on_sample(_sample):
        seen["n"] += 1
        if seen["n"] == 1:
            print("got", flush=True)

    _sub = session.declare_subscriber(args.key, on_sample)
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
