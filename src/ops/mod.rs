//! Operator tools in the `reflexd` binary that watch a running daemon from
//! outside its data flow, over zenoh only (so they work from another
//! machine): [`top`] reads the `<node>/metrics` snapshot, [`tap`] prints
//! decoded messages from any key expression, [`describe`] prints what the
//! daemon reads and writes (`<node>/describe`). None publishes anything the
//! daemon consumes.

pub mod describe;
pub mod tap;
pub mod top;

use std::time::Duration;

use crate::client::peer_config;

/// Opens the client session; the error names the endpoint.
pub async fn open(connect: &str, timeout: Duration) -> Result<zenoh::Session, String> {
    let cfg = peer_config(connect, timeout)?;
    zenoh::open(cfg).await.map_err(|e| {
        format!("cannot connect to {connect} within {timeout:?}: is `reflexd run` listening there? (zenoh: {e})")
    })
}
