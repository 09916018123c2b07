#!/usr/bin/env python3
"""Reference output and timing of rapidocr-onnxruntime 1.4.4's own Python
pipeline, for the Rust OCR chain (src/infer/ocr) to be checked and measured
against.

  ocr_reference.py reference --out DIR [--data models/data]
      Renders the test images (text with known words, drawn with Pillow's
      bundled font) into DIR as PNG, runs RapidOCR on them and on the real
      scikit-image page.png / astronaut.png, and prints one JSON document:
      {"images": [{"name", "path", "known_words", "lines": [{"text",
      "confidence", "box"}]}]}.

  ocr_reference.py serve --threads N IMAGE...
      Benchmark peer: loads RapidOCR with N intra-op threads (OpenCV limited
      to N threads too) and answers commands on stdin, one JSON line each:
      first line {"ready": true, "texts": [[...] per image]}, then
      "run K" -> {"latencies_us": [...K...], "stages_us": [det, cls, rec]}
      (frames cycle through the images; stage sums are rapidocr's own
      timers, only for frames with text);
      "bare K" -> {SET: [det, cls, rec] µs}: the tensors rapidocr fed its
      sessions for K frames, run again through session sets: "rapidocr" (its
      own: memory arena off, spinning on), "arena" (ORT defaults: arena and
      spinning on), "arena_nospin" (arena on, spinning off, as the Rust chain
      runs) and "folded_nospin" (the same on the models folded by
      models/ocr/fold_ppocr.py, read from --folded-dir);
      "quit" ends.

  ocr_reference.py render --out FILE [--name signs]
      Writes one rendered test image as PNG (scripts/provision.sh renders
      "signs", the camera frame of `make demo`, into the cache's data/).

Images are read with cv2.imread (BGR; grey replicated), exactly what the Rust
side decodes from the same PNG files.
"""

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rapidocr_onnxruntime import RapidOCR


def draw_text(size, bg, items):
    """items: (xy, text, font_px, rgb, rotation_degrees_ccw)."""
    im = Image.new("RGB", size, bg)
    for xy, text, px, fg, angle in items:
        font = ImageFont.load_default(size=px)
        left, top, right, bottom = font.getbbox(text)
        tile = Image.new("RGBA", (right + 8, bottom + 8), (0, 0, 0, 0))
        ImageDraw.Draw(tile).text((4, 4), text, font=font, fill=fg)
        if angle:
            tile = tile.rotate(angle, expand=True, resample=Image.BICUBIC)
        im.paste(tile, xy, tile)
    return im


# name -> (size, background, items, known words). Words are checked as
# substrings of the recognised lines (the model often drops spaces).
RENDERED = {
    "signs": (
        (640, 480),
        (235, 235, 225),
        [
            ((30, 40), "ROBOT CAMERA 42", 44, (20, 20, 20), 0),
            ((40, 150), "Hello reflexd", 40, (200, 30, 30), 0),
            ((60, 260), "warehouse aisle seven", 34, (30, 30, 160), 7),
            ((80, 380), "upside down label", 36, (10, 10, 10), 180),
        ],
        ["ROBOT", "CAMERA", "42", "Hello", "reflexd", "warehouse", "aisle", "seven",
         "upside", "down", "label"],
    ),
    "dark": (
        (480, 200),
        (20, 30, 60),
        [
            ((20, 30), "EMERGENCY STOP", 40, (250, 250, 120), 0),
            ((20, 110), "zone B 17", 36, (220, 220, 220), 0),
        ],
        ["EMERGENCY", "STOP", "zone", "17"],
    ),
    "vertical": (
        (200, 480),
        (255, 255, 255),
        [((60, 20), "conveyor belt", 40, (0, 0, 0), 90)],
        ["conveyor", "belt"],
    ),
    "strip": (
        (420, 28),
        (255, 255, 255),
        [((4, 0), "battery level 87", 22, (0, 0, 0), 0)],
        ["battery", "level", "87"],
    ),
}

REAL = {
    "page": ("page.png", ["Region", "segmentation", "markers", "background"]),
    "astronaut": ("astronaut.png", []),
}


def render_all(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    items = []
    for name, (size, bg, texts, words) in RENDERED.items():
        path = os.path.join(out_dir, f"{name}.png")
        draw_text(size, bg, texts).save(path)
        items.append((name, path, words))
    return items


def lines_of(result):
    res, _ = result
    return [
        {"text": text, "confidence": float(score), "box": [[float(x), float(y)] for x, y in box]}
        for box, text, score in (res or [])
    ]


def cmd_reference(args):
    images = [(n, os.path.abspath(os.path.join(args.data, f)), w) for n, (f, w) in REAL.items()]
    images += [(n, os.path.abspath(p), w) for n, p, w in render_all(args.out)]
    engine = RapidOCR(intra_op_num_threads=args.threads)
    out = []
    for name, path, words in images:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            sys.exit(f"cannot read {path}")
        out.append({"name": name, "path": path, "known_words": words,
                    "lines": lines_of(engine(img))})
    json.dump({"images": out}, sys.stdout)
    sys.stdout.write("\n")


class Recorder:
    """Stands in for one of rapidocr's OrtInferSession objects and keeps the
    tensors it is given while `tape` is a list."""

    def __init__(self, inner):
        self.inner = inner
        self.tape = None

    def __call__(self, x):
        if self.tape is not None:
            self.tape.append(x)
        return self.inner(x)


def bare_runs(sessions, tapes, k):
    """Runs the recorded tensors of k frames through `sessions` (det, cls, rec),
    returns the summed microseconds per stage."""
    total = [0.0, 0.0, 0.0]
    for i in range(k):
        for s, (sess, xs) in enumerate(zip(sessions, tapes[i % len(tapes)])):
            name = sess.get_inputs()[0].name
            for x in xs:
                t = time.perf_counter()
                sess.run(None, {name: x})
                total[s] += (time.perf_counter() - t) * 1e6
    return total


def cmd_serve(args):
    import onnxruntime as ort

    cv2.setNumThreads(args.threads)
    engine = RapidOCR(intra_op_num_threads=args.threads, inter_op_num_threads=1)
    rec_det = engine.text_det.infer = Recorder(engine.text_det.infer)
    rec_cls = engine.text_cls.infer = Recorder(engine.text_cls.infer)
    rec_rec = engine.text_rec.session = Recorder(engine.text_rec.session)
    frames = []
    for p in args.images:
        img = cv2.imread(p, cv2.IMREAD_COLOR)
        if img is None:
            sys.exit(f"cannot read {p}")
        frames.append(img)
    texts, tapes = [], []
    for f in frames:  # also the warm-up
        for r in (rec_det, rec_cls, rec_rec):
            r.tape = []
        texts.append([l["text"] for l in lines_of(engine(f))])
        tapes.append([rec_det.tape, rec_cls.tape, rec_rec.tape])
    for r in (rec_det, rec_cls, rec_rec):
        r.tape = None
    own = [r.inner.session for r in (rec_det, rec_cls, rec_rec)]
    sets = {"rapidocr": own}
    for name, spinning, folded in (("arena", True, False), ("arena_nospin", False, False),
                                   ("folded_nospin", False, True)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        paths = [s._model_path for s in own]
        if folded:
            paths = [os.path.join(args.folded_dir, os.path.basename(p).replace(".onnx", ".folded.onnx"))
                     for p in paths]
        sets[name] = [ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in paths]
    print(json.dumps({"ready": True, "texts": texts}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        k = int(cmd[1])
        if cmd[0] == "bare":
            print(json.dumps({name: bare_runs(ss, tapes, k) for name, ss in sets.items()}), flush=True)
            continue
        lat, stages = [], [0.0, 0.0, 0.0]
        for i in range(k):
            t = time.perf_counter()
            _, elapse = engine(frames[i % len(frames)])
            lat.append((time.perf_counter() - t) * 1e6)
            if elapse and len(elapse) == 3:  # [det, cls, rec] seconds when text was found
                stages = [a + b * 1e6 for a, b in zip(stages, elapse)]
        print(json.dumps({"latencies_us": lat, "stages_us": stages}), flush=True)


def cmd_render(args):
    if args.name not in RENDERED:
        sys.exit(f"unknown image {args.name!r}; known: {', '.join(RENDERED)}")
    size, bg, texts, words = RENDERED[args.name]
    tmp = args.out + ".tmp.png"
    draw_text(size, bg, texts).save(tmp)
    os.replace(tmp, args.out)
    print(json.dumps({"path": args.out, "known_words": words}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--out", required=True)
    r.add_argument("--data", default="models/data")
    r.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("serve")
    s.add_argument("--threads", type=int, required=True)
    s.add_argument("--folded-dir", default="models/fetched")
    s.add_argument("images", nargs="+")
    d = sub.add_parser("render")
    d.add_argument("--out", required=True)
    d.add_argument("--name", default="signs")
    args = ap.parse_args()
    np.set_printoptions(precision=3)
    {"reference": cmd_reference, "serve": cmd_serve, "render": cmd_render}[args.cmd](args)


if __name__ == "__main__":
    main()
