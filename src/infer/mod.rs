//! In-process stages around a model run: [`pre`] turns a camera frame into
//! the model's input tensor on the worker thread, [`post`] turns a model's
//! output tensors into answers (detections, classes, speech events). Both are
//! pure libraries; the worker owns their state and calls them around
//! `session.run`.

pub mod post;
pub mod pre;
