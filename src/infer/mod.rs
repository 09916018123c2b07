//! Inference: everything between a job and the runtime. [`runtime`] loads the
//! ONNX Runtime library once; [`engine`] builds sessions with the configured
//! execution-provider chain and moves bytes in and out of runtime values;
//! [`ep`] is what each execution provider is asked for, and [`profile`] the
//! TensorRT shape range derived from the warm-up shapes;
//! [`spec`] binds a pipeline's config to its model's ports; [`run`] is the
//! one run path for one request or a batch (constants, carried state and
//! context); [`batch`] finds a model's batch axes; [`state`] is what a stream
//! carries between frames. Around a run, [`pre`] turns a camera frame into the
//! model's input tensor on the worker thread and [`post`] turns a model's
//! outputs into answers (detections, classes, speech events). Nothing here
//! touches zenoh or the scheduler.

pub mod batch;
pub mod engine;
pub mod ep;
pub mod post;
pub mod pre;
pub mod profile;
pub mod run;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod warm;

pub use engine::{EngineError, Model, Port};
pub use run::{Item, Ran, Runner};
pub use spec::Spec;
pub use state::StreamState;
