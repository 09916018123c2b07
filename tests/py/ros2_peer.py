#!/usr/bin/env python3
"""A stand-in ROS 2 node on rmw_zenoh, for tests that must not trust our own
encoder: messages are serialised and parsed by `rosbags` (pure-Python CDR,
ROS 2 Jazzy definitions; vision_msgs 4.1.1 registered from its fields), keys
carry the type hash `rosbags` computes, and every sample has the 33-byte
rmw_zenoh attachment written by eclipse-zenoh's serializer. Output is one JSON
object per line on stdout.

    ros2_peer.py --connect tcp/127.0.0.1:7447 publish [--count 3] [--period 0.05] [--wait 5]
        Publishes Image (bgr8), CompressedImage and String samples on
        /camera/image_raw, /camera/image_raw/compressed and /reflexd/prompt
        once each topic has a subscriber (or after --wait seconds); prints
        {"event": "matched", ...}, then {"event": "published", ...} per sample.

    ros2_peer.py --connect ... subscribe --topic /reflexd/text=vision_msgs/msg/Detection2DArray \\
                 [--topic /reflexd/answer=std_msgs/msg/String] [--count N | --each N] [--timeout S]
        Prints {"event": "ready"} once subscribed, then {"event": "sample", ...}
        with the decoded message and attachment for each sample received, and
        {"event": "done", ...} after N samples in all (--count) or N on every
        topic (--each), or at the timeout.

    ros2_peer.py --connect ... graph [--wait 1.0]
        Prints {"event": "token", "key": ...} for every rmw_zenoh liveliness
        token of the domain (what `ros2 node list` / `ros2 topic list` read).

    ros2_peer.py --connect ... session
        Driven by JSON lines on stdin, for tests against a running daemon:
        {"op": "subscribe", "topic": T, "type": TY[, "key": K]} → {"event": "subscribed"}
            then {"event": "sample", ...} per sample (K: a bridge key instead
            of the rmw_zenoh one; such samples carry no attachment);
        {"op": "publish", "topic": T, "type": TY, "msg": {...}[, "key": K][, "raw_hex": H]}
            → waits (up to 10 s) for a subscriber, puts one sample (with an
            attachment unless K is given) and prints {"event": "published", ...};
            "raw_hex" sends those bytes instead of the serialised message;
        {"op": "graph"} → {"event": "token", ...} per token, then {"event": "graph_done"};
        {"op": "quit"}. Messages in "msg": String {"data"}; Float32MultiArray
        {"shape", "data"}; Image {"sec", "nanosec", "frame_id", "height",
        "width", "encoding", "step", "data"}; CompressedImage {"sec",
        "nanosec", "frame_id", "format", "data" | "file"}.

Loopback only: the session is a zenoh client with multicast scouting and
gossip off that connects to the given endpoint and listens nowhere.
"""

import argparse
import json
import sys
import threading
import time

import numpy as np
import zenoh
import zenoh.ext as ze
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

sys.path.insert(0, __import__("os").path.dirname(__file__))
from ros2_golden import VISION_MSGS  # noqa: E402  (one copy of the field definitions)


def typestore():
    ts = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    ts.register(types)
    return ts


def dds_name(ty):
    pkg, _, name = ty.split("/")
    return f"{pkg}::msg::dds_::{name}_"


def key(ts, domain, topic, ty, any_hash=False):
    h = "*" if any_hash else ts.hash_rihs01(ty)
    return f"{domain}/{topic.strip('/')}/{dds_name(ty)}/{h}"


def session(endpoint):
    # A client of whatever it connects to (a zenohd router or a daemon's
    # listener): zenoh 1.10 peers with gossip off do not route through a router.
    conf = zenoh.Config.from_json5(json.dumps({
        "mode": "client",
        "connect": {"endpoints": [endpoint]},
        "listen": {"endpoints": []},
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
    }))
    return zenoh.open(conf)


_EMIT = threading.Lock()


def emit(obj):
    # Zenoh callbacks and the main thread both report: one line per object,
    # written whole (print() writes the text and the newline separately, so
    # two threads could interleave into one unreadable line).
    line = json.dumps(obj) + "\n"
    with _EMIT:
        sys.stdout.write(line)
        sys.stdout.flush()


def attachment(seq, gid):
    return ze.z_serialize((ze.Int64(seq), ze.Int64(time.time_ns()), gid))


def read_attachment(att):
    if att is None:
        return None
    raw = att.to_bytes()
    seq, ts_ns, gid = ze.z_deserialize(tuple[ze.Int64, ze.Int64, bytes], att)
    return {"len": len(raw), "seq": int(seq), "ts_ns": int(ts_ns), "gid": gid.hex()}


def samples(ts, k):
    """The k-th sample of each published topic: (topic, type, message, summary)."""
    t = ts.types
    Time, Header = t["builtin_interfaces/msg/Time"], t["std_msgs/msg/Header"]
    hdr = Header(stamp=Time(sec=1700000000 + k, nanosec=1000 * k), frame_id="camera")
    w, h = 4, 3
    px = ((np.arange(w * h * 3) * 7 + k) % 256).astype(np.uint8)
    img = t["sensor_msgs/msg/Image"](header=hdr, height=h, width=w, encoding="bgr8",
                                     is_bigendian=0, step=w * 3, data=px)
    png = np.frombuffer(b"\x89PNG\r\n\x1a\n" + bytes([k]), dtype=np.uint8)
    comp = t["sensor_msgs/msg/CompressedImage"](header=hdr, format="png", data=png)
    text = f"prompt {k}: what is in front of the robot?"
    prompt = t["std_msgs/msg/String"](data=text)
    stamp = {"sec": 1700000000 + k, "nanosec": 1000 * k, "frame_id": "camera"}
    return [
        ("/camera/image_raw", "sensor_msgs/msg/Image", img,
         {**stamp, "height": h, "width": w, "encoding": "bgr8", "step": w * 3, "data": px.tolist()}),
        ("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", comp,
         {**stamp, "format": "png", "data": png.tolist()}),
        ("/reflexd/prompt", "std_msgs/msg/String", prompt, {"data": text}),
    ]


def wait_matching(publishers, timeout):
    """Waits until every publisher has a subscriber (else the first puts of a
    fresh session can be routed nowhere); gives up after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(p.matching_status.matching for p in publishers):
            return True
        time.sleep(0.02)
    return False


def publish(args, ts, z):
    gids = {}
    pubs = {}
    for topic, ty, _, _ in samples(ts, 0):
        pubs[topic] = z.declare_publisher(key(ts, args.domain, topic, ty))
        gids[topic] = bytes((len(gids) * 16 + i) % 256 for i in range(16))
    emit({"event": "matched", "all": wait_matching(pubs.values(), args.wait)})
    for k in range(args.count):
        for topic, ty, msg, summary in samples(ts, k):
            payload = bytes(ts.serialize_cdr(msg, ty))
            pubs[topic].put(payload, attachment=attachment(k + 1, gids[topic]))
            emit({"event": "published", "topic": topic, "type": ty,
                  "key": key(ts, args.domain, topic, ty), "seq": k + 1,
                  "gid": gids[topic].hex(), "message": summary})
        time.sleep(args.period)


def summarise(ty, msg):
    stamp = lambda hd: {"sec": hd.stamp.sec, "nanosec": hd.stamp.nanosec, "frame_id": hd.frame_id}
    if ty == "std_msgs/msg/String":
        return {"data": msg.data}
    if ty == "vision_msgs/msg/Detection2DArray":
        dets = [{
            "header": stamp(d.header), "id": d.id,
            "bbox": [d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.center.theta,
                     d.bbox.size_x, d.bbox.size_y],
            "results": [{"class_id": r.hypothesis.class_id, "score": r.hypothesis.score,
                         "orientation_w": r.pose.pose.orientation.w,
                         "covariance0": float(r.pose.covariance[0])} for r in d.results],
        } for d in msg.detections]
        return {"header": stamp(msg.header), "detections": dets}
    if ty == "sensor_msgs/msg/Image":
        return {**stamp(msg.header), "height": msg.height, "width": msg.width,
                "encoding": msg.encoding, "step": msg.step, "is_bigendian": msg.is_bigendian,
                "data": msg.data.tolist()}
    if ty == "std_msgs/msg/Float32MultiArray":
        return {"shape": [d.size for d in msg.layout.dim], "strides": [d.stride for d in msg.layout.dim],
                "data_offset": msg.layout.data_offset, "data": [float(x) for x in msg.data]}
    raise SystemExit(f"no summary for {ty}")


def build(ts, ty, m):
    """A rosbags message of type `ty` from the JSON object `m` (see session)."""
    t = ts.types
    hdr = lambda: t["std_msgs/msg/Header"](
        stamp=t["builtin_interfaces/msg/Time"](sec=m.get("sec", 0), nanosec=m.get("nanosec", 0)),
        frame_id=m.get("frame_id", ""))
    if ty == "std_msgs/msg/String":
        return t[ty](data=m["data"])
    if ty == "std_msgs/msg/Float32MultiArray":
        shape, dims, stride = m["shape"], [], int(np.prod(m["shape"]))
        for i, size in enumerate(shape):
            dims.append(t["std_msgs/msg/MultiArrayDimension"](label=f"d{i}", size=size, stride=stride))
            stride //= max(size, 1)
        layout = t["std_msgs/msg/MultiArrayLayout"](dim=dims, data_offset=0)
        return t[ty](layout=layout, data=np.array(m["data"], dtype=np.float32))
    if ty == "sensor_msgs/msg/Image":
        return t[ty](header=hdr(), height=m["height"], width=m["width"], encoding=m["encoding"],
                     is_bigendian=0, step=m["step"], data=np.array(m["data"], dtype=np.uint8))
    if ty == "sensor_msgs/msg/CompressedImage":
        data = open(m["file"], "rb").read() if "file" in m else bytes(m["data"])
        return t[ty](header=hdr(), format=m["format"], data=np.frombuffer(data, dtype=np.uint8))
    raise SystemExit(f"cannot build {ty}")


def session_mode(args, ts, z):
    """JSON-lines driven peer (see the module doc)."""
    subs, pubs, gids = [], {}, {}
    lock = threading.Lock()

    def out(obj):
        with lock:
            emit(obj)

    def on_sample(sample, topic, ty):
        try:
            msg = ts.deserialize_cdr(bytes(sample.payload.to_bytes()), ty)
            out({"event": "sample", "topic": topic, "type": ty, "key": str(sample.key_expr),
                 "attachment": read_attachment(sample.attachment), "message": summarise(ty, msg)})
        except Exception as e:  # reported, never silently dropped
            out({"event": "error", "topic": topic, "error": repr(e)})

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "graph":
            for reply in z.liveliness().get(f"@ros2_lv/{args.domain}/**", timeout=1.0):
                if reply.ok is not None:
                    out({"event": "token", "key": str(reply.ok.key_expr)})
            out({"event": "graph_done"})
            continue
        topic, ty = cmd["topic"], cmd["type"]
        if op == "subscribe":
            k = cmd.get("key") or key(ts, args.domain, topic, ty, any_hash=True)
            subs.append(z.declare_subscriber(k, lambda s, tp=topic, y=ty: on_sample(s, tp, y)))
            out({"event": "subscribed", "topic": topic, "key": k})
        elif op == "publish":
            k = cmd.get("key") or key(ts, args.domain, topic, ty)
            if k not in pubs:
                pubs[k] = z.declare_publisher(k)
                gids[k] = bytes((len(gids) * 31 + i) % 256 for i in range(16))
            matched = wait_matching([pubs[k]], 10.0)
            payload = (bytes.fromhex(cmd["raw_hex"]) if "raw_hex" in cmd
                       else bytes(ts.serialize_cdr(build(ts, ty, cmd["msg"]), ty)))
            seq = cmd.get("seq", 1)
            if "key" in cmd:
                pubs[k].put(payload)
            else:
                pubs[k].put(payload, attachment=attachment(seq, gids[k]))
            out({"event": "published", "topic": topic, "key": k, "matched": matched,
                 "seq": seq, "gid": gids[k].hex()})
    out({"event": "done"})


def subscribe(args, ts, z):
    done = threading.Event()
    lock = threading.Lock()
    seen = [0]
    per_topic = {spec.partition("=")[0]: 0 for spec in args.topic}
    subs = []
    for spec in args.topic:
        topic, _, ty = spec.partition("=")

        def on_sample(sample, topic=topic, ty=ty):
            try:
                msg = ts.deserialize_cdr(bytes(sample.payload.to_bytes()), ty)
                out = {"event": "sample", "topic": topic, "type": ty, "key": str(sample.key_expr),
                       "attachment": read_attachment(sample.attachment),
                       "message": summarise(ty, msg)}
            except Exception as e:  # a test must see the failure, not a silent drop
                out = {"event": "error", "topic": topic, "error": repr(e)}
            with lock:
                emit(out)
                seen[0] += 1
                per_topic[topic] += 1
                if seen[0] >= args.count or (args.each and min(per_topic.values()) >= args.each):
                    done.set()

        subs.append(z.declare_subscriber(key(ts, args.domain, topic, ty, any_hash=True), on_sample))
    emit({"event": "ready"})
    done.wait(args.timeout)
    emit({"event": "done", "received": seen[0]})


def graph(args, z):
    for reply in z.liveliness().get(f"@ros2_lv/{args.domain}/**", timeout=args.wait):
        if reply.ok is not None:
            emit({"event": "token", "key": str(reply.ok.key_expr)})
    emit({"event": "done"})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connect", required=True, help="zenoh endpoint, e.g. tcp/127.0.0.1:7447")
    p.add_argument("--domain", type=int, default=0)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("publish")
    pp.add_argument("--count", type=int, default=3)
    pp.add_argument("--period", type=float, default=0.05)
    pp.add_argument("--wait", type=float, default=5.0, help="seconds to wait for subscribers")
    sp = sub.add_parser("subscribe")
    sp.add_argument("--topic", action="append", required=True, help="/topic=pkg/msg/Type")
    sp.add_argument("--count", type=int, default=1, help="stop after this many samples in all")
    sp.add_argument("--each", type=int, default=0, help="or once every topic has this many")
    sp.add_argument("--timeout", type=float, default=10.0)
    gp = sub.add_parser("graph")
    gp.add_argument("--wait", type=float, default=1.0)
    sub.add_parser("session")
    args = p.parse_args()
    ts = typestore()
    with session(args.connect) as z:
        if args.cmd == "publish":
            publish(args, ts, z)
        elif args.cmd == "subscribe":
            subscribe(args, ts, z)
        elif args.cmd == "session":
            session_mode(args, ts, z)
        else:
            graph(args, z)


if __name__ == "__main__":
    main()
