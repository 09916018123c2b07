#!/usr/bin/env python3
"""Writes the byte-level ROS 2 golden vectors in tests/data/ros2/.

The bytes come from implementations nobody on this project wrote: the
`rosbags` CDR serialiser (pure Python, ROS 2 Jazzy message definitions built
in; vision_msgs 4.1.1 registered below from its field definitions) and
eclipse-zenoh's `zenoh.ext.z_serialize` for the rmw_zenoh attachment. The Rust
unit tests in src/ros2/tests.rs build the same values and must decode these
files and re-encode them byte for byte, so the values here and there are one
contract: change both or neither.

    $REFLEXD_PYTHON tests/py/ros2_golden.py [OUT_DIR]   # default tests/data/ros2

Needs `rosbags==0.11.9` and `eclipse-zenoh` (both pinned in scripts/provision.sh).
Re-running it must leave the committed files unchanged (`git diff --exit-code`).
"""

import json
import sys
from pathlib import Path

import numpy as np
import zenoh.ext as ze
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

# vision_msgs 4.1.1 (ros-perception/vision_msgs tag 4.1.1), fields only.
VISION_MSGS = {
    "Point2D": "float64 x\nfloat64 y\n",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "ObjectHypothesis": "string class_id\nfloat64 score\n",
    "ObjectHypothesisWithPose": "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "Detection2D": "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\nstring id\n",
    "Detection2DArray": "std_msgs/Header header\nDetection2D[] detections\n",
}

HASHED_TYPES = [
    "builtin_interfaces/msg/Time",
    "std_msgs/msg/Header",
    "std_msgs/msg/String",
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "std_msgs/msg/MultiArrayDimension",
    "std_msgs/msg/MultiArrayLayout",
    "std_msgs/msg/Float32MultiArray",
    "geometry_msgs/msg/Point",
    "geometry_msgs/msg/Quaternion",
    "geometry_msgs/msg/Pose",
    "geometry_msgs/msg/PoseWithCovariance",
] + [f"vision_msgs/msg/{n}" for n in VISION_MSGS]


def typestore():
    ts = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    ts.register(types)
    return ts


def messages(ts):
    """(file stem, type name, message, little_endian) for every vector."""
    t = ts.types
    Time, Header = t["builtin_interfaces/msg/Time"], t["std_msgs/msg/Header"]

    def header(sec, nsec, frame):
        return Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame)

    rgb = t["sensor_msgs/msg/Image"](
        header=header(1, 2, "camera"), height=2, width=2, encoding="rgb8",
        is_bigendian=0, step=6, data=np.arange(12, dtype=np.uint8))
    # 3x2 bgr8 with 3 bytes of row padding (step 12 > 3*3): decoders must use step.
    padded = t["sensor_msgs/msg/Image"](
        header=header(1700000000, 999999999, "cam_left"), height=2, width=3,
        encoding="bgr8", is_bigendian=0, step=12,
        data=np.arange(100, 124, dtype=np.uint8))
    jpeg = t["sensor_msgs/msg/CompressedImage"](
        header=header(-5, 7, "c"), format="jpeg",
        data=np.array([0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 0x4A], dtype=np.uint8))
    Dim = t["std_msgs/msg/MultiArrayDimension"]
    tensor = t["std_msgs/msg/Float32MultiArray"](
        layout=t["std_msgs/msg/MultiArrayLayout"](
            dim=[Dim(label="rows", size=2, stride=6), Dim(label="cols", size=3, stride=3)],
            data_offset=0),
        data=np.array([0.5, -1.25, 3.0, 1e-3, 42.0, -0.0], dtype=np.float32))
    return [
        ("time", "builtin_interfaces/msg/Time", Time(sec=-1, nanosec=999999999), True),
        ("header", "std_msgs/msg/Header", header(1700000000, 123456789, "base_link"), True),
        ("string", "std_msgs/msg/String", t["std_msgs/msg/String"](data="hello ROS 2 \u2014 \u00fcn\u00efcode"), True),
        ("string_empty", "std_msgs/msg/String", t["std_msgs/msg/String"](data=""), True),
        ("string_be", "std_msgs/msg/String", t["std_msgs/msg/String"](data="big"), False),
        ("image_rgb8", "sensor_msgs/msg/Image", rgb, True),
        ("image_rgb8_be", "sensor_msgs/msg/Image", rgb, False),
        ("image_bgr8_padded", "sensor_msgs/msg/Image", padded, True),
        ("compressed_image", "sensor_msgs/msg/CompressedImage", jpeg, True),
        ("float32_multiarray", "std_msgs/msg/Float32MultiArray", tensor, True),
        ("float32_multiarray_be", "std_msgs/msg/Float32MultiArray", tensor, False),
        ("detection2d_array", "vision_msgs/msg/Detection2DArray", detections(ts), True),
        ("detection2d_array_be", "vision_msgs/msg/Detection2DArray", detections(ts), False),
    ]


def detections(ts):
    t = ts.types
    Time, Header = t["builtin_interfaces/msg/Time"], t["std_msgs/msg/Header"]
    P2, Pose2D = t["vision_msgs/msg/Point2D"], t["vision_msgs/msg/Pose2D"]
    Box, Hyp = t["vision_msgs/msg/BoundingBox2D"], t["vision_msgs/msg/ObjectHypothesis"]
    HypPose, Det = t["vision_msgs/msg/ObjectHypothesisWithPose"], t["vision_msgs/msg/Detection2D"]
    Pose, PWC = t["geometry_msgs/msg/Pose"], t["geometry_msgs/msg/PoseWithCovariance"]
    Point, Quat = t["geometry_msgs/msg/Point"], t["geometry_msgs/msg/Quaternion"]

    def pose(cov0):
        cov = np.zeros(36, dtype=np.float64)
        cov[0] = cov0
        return PWC(pose=Pose(position=Point(x=0.0, y=0.0, z=0.0),
                             orientation=Quat(x=0.0, y=0.0, z=0.0, w=1.0)), covariance=cov)

    def hyp(cls, score, cov0=0.0):
        return HypPose(hypothesis=Hyp(class_id=cls, score=score), pose=pose(cov0))

    hdr = Header(stamp=Time(sec=1700000000, nanosec=123456789), frame_id="camera")
    return t["vision_msgs/msg/Detection2DArray"](header=hdr, detections=[
        Det(header=hdr, results=[hyp("STOP", 0.875, 0.25)],
            bbox=Box(center=Pose2D(position=P2(x=320.5, y=240.25), theta=0.0), size_x=64.0, size_y=32.0),
            id="0"),
        Det(header=hdr, results=[hyp("hello", 0.5), hyp("hallo", 0.25)],
            bbox=Box(center=Pose2D(position=P2(x=10.0, y=20.0), theta=0.5), size_x=3.0, size_y=4.5),
            id=""),
    ])


def attachments():
    gid = bytes(range(16))
    return {
        # seq 1, 2023-11-14T22:13:20.123456789Z, as in docs/ros2.md.
        "attachment_current": ze.z_serialize((ze.Int64(1), ze.Int64(1700000000123456789), gid)),
        "attachment_labelled": ze.z_serialize((
            "sequence_number", ze.Int64(7), "source_timestamp", ze.Int64(-3), "source_gid", gid)),
        # Humble's RMW_GID_STORAGE_SIZE is 24: the length byte says so.
        "attachment_gid24": ze.z_serialize((ze.Int64(2), ze.Int64(5), bytes(range(24)))),
    }


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "data" / "ros2")
    out.mkdir(parents=True, exist_ok=True)
    ts = typestore()
    for stem, ty, msg, le in messages(ts):
        data = bytes(ts.serialize_cdr(msg, ty, little_endian=le))
        back = ts.deserialize_cdr(data, ty)
        assert type(back).__name__ == type(msg).__name__
        (out / f"{stem}.cdr").write_bytes(data)
    for stem, z in attachments().items():
        (out / f"{stem}.bin").write_bytes(z.to_bytes())
    hashes = {ty: ts.hash_rihs01(ty) for ty in HASHED_TYPES}
    (out / "type_hashes.json").write_text(json.dumps(hashes, indent=2) + "\n")
    print(f"wrote {len(list(out.iterdir()))} files to {out}")


if __name__ == "__main__":
    main()
