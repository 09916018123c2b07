#!/usr/bin/env python3
"""preprocess_cv.py - the OpenCV peer of `cargo bench --bench preprocess`.

Does the same job as reflexd's image pre-processor on the same frames: a
bgr8 frame -> 640x640 RGB, f32, NCHW, (pixel/255 - mean)/std, either
letterboxed (aspect kept, pad 114, content centred, integer offsets
floor((640 - n) / 2)) or stretched. Two OpenCV ways are timed:

  chain  the usual Python pre-processing: cv2.resize (INTER_LINEAR) on the
         bgr8 frame (resize first: converting colour at full resolution would
         only be slower), cv2.cvtColor BGR2RGB, cv2.copyMakeBorder for the
         letterbox, then numpy astype/scale/subtract/divide and a contiguous
         CHW transpose
  blob   cv2.dnn.blobFromImageWithParams: the same in one C++ call
         (swapRB, per-channel mean and scale, NCHW; letterbox via
         DNN_PMODE_LETTERBOX). Its letterbox geometry is OpenCV's own, so only
         its time is compared, not its values.

Protocol (line-based): argv gives the frame files; after loading it prints
{"ready": true, "opencv": version}. Then each stdin line is
"run <frame> <mode> <iters>" -> one JSON line {"us": [per-iteration µs]}, or
"dump <frame> <mode> <path>" -> writes the chain's output as raw little-endian
f32 and prints {"ok": true}; "quit" or end of input exits. OpenCV runs on one
thread (cv2.setNumThreads(1)), like one reflexd worker.
"""
import json
import sys
import time

import cv2
import numpy as np

SIZE = 640
PAD = 114
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def chain(bgr, mode):
    h, w = bgr.shape[:2]
    if mode == "letterbox":
        s = min(SIZE / w, SIZE / h)
        nw, nh = min(SIZE, max(1, round(w * s))), min(SIZE, max(1, round(h * s)))
    else:
        nw, nh = SIZE, SIZE
    small = bgr if (nw, nh) == (w, h) else cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    if mode == "letterbox":
        top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
        rgb = cv2.copyMakeBorder(rgb, top, SIZE - nh - top, left, SIZE - nw - left,
                                 cv2.BORDER_CONSTANT, value=(PAD, PAD, PAD))
    x = (rgb.astype(np.float32) * np.float32(1 / 255) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def blob_params(mode):
    p = cv2.dnn.Image2BlobParams()
    p.scalefactor = tuple(float(1 / (255 * s)) for s in STD) + (0.0,)
    p.size = (SIZE, SIZE)
    p.mean = tuple(float(m * 255) for m in MEAN) + (0.0,)
    p.swapRB = True
    p.ddepth = cv2.CV_32F
    p.datalayout = cv2.DNN_LAYOUT_NCHW
    p.paddingmode = cv2.dnn.DNN_PMODE_LETTERBOX if mode == "letterbox" else cv2.dnn.DNN_PMODE_NULL
    p.borderValue = (PAD, PAD, PAD, 0)
    return p


def main():
    cv2.setNumThreads(1)
    frames = {}
    for spec in sys.argv[1:]:
        name, path, w, h = spec.split(":")
        frames[name] = np.fromfile(path, np.uint8).reshape(int(h), int(w), 3)
    params = {m: blob_params(m) for m in ("letterbox", "stretch")}
    print(json.dumps({"ready": True, "opencv": cv2.__version__}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "dump":
            chain(frames[cmd[1]], cmd[2]).astype("<f4").tofile(cmd[3])
            print(json.dumps({"ok": True}), flush=True)
            continue
        frame, mode, iters = cmd[1], cmd[2], int(cmd[3])
        kind = cmd[4] if len(cmd) > 4 else "chain"
        img = frames[frame]
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            if kind == "blob":
                cv2.dnn.blobFromImageWithParams(img, params[mode])
            else:
                chain(img, mode)
            times.append((time.perf_counter() - t0) * 1e6)
        print(json.dumps({"us": times}), flush=True)


if __name__ == "__main__":
    main()
