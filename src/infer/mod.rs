//! In-process stages around a model run: [`pre`] turns a camera frame into
//! the model's input tensor on the worker thread. It is a pure library; the
//! worker owns its state and calls it before `session.run`.

pub mod pre;
