//! Unit tests of the ROS 2 layer. `golden` pins encoders and decoders to
//! bytes written by rosbags and eclipse-zenoh (tests/py/ros2_golden.py);
//! `robust` feeds them broken input; `graph` checks keys, type hashes,
//! liveliness tokens and the config table.

/// A committed golden file, embedded at compile time.
macro_rules! ros2_golden {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/ros2/",
            $name
        ))
        .as_slice()
    };
}

mod golden;
mod graph;
mod robust;
