//! Operator tools in the `reflexd` binary that watch a running daemon from
//! outside its data flow, over zenoh only (so they work from another
//! machine): [`top`] reads the `<node>/metrics` snapshot, [`tap`] prints
//! decoded messages from any key expression, [`fleet`] is `top --fleet`
//! (every daemon on the fabric), [`describe`] prints what a daemon reads and
//! writes (`<node>/describe`). None publishes anything a daemon consumes.

pub mod describe;
pub mod fleet;
pub mod tap;
pub mod top;
