//! The work item of a tensor pipeline: what ingress builds from one message
//! and a worker consumes. It sits between the wire codecs (which produce its
//! tensors and request metadata) and the scheduler (which queues it by its
//! pipeline, stream and deadline, see [`crate::sched::Task`]).

use std::sync::Arc;
use std::time::Instant;

use crate::ros2::Header;
use crate::sched::Task;
use crate::tensor::Tensor;
use crate::wire::RequestMeta;
use crate::wire::image::Frame;

/// One request on its way to a worker.
#[derive(Debug)]
pub struct Job {
    pub pipeline: usize,
    pub stream: Arc<str>,
    pub meta: RequestMeta,
    pub tensors: Vec<Tensor>,
    /// A camera frame (image pipelines; `tensors` is then empty).
    pub image: Option<Frame>,
    /// The ROS 2 header (stamp, frame_id) of the message this job came
    /// from, copied into every ROS 2 message that answers it.
    pub header: Option<Header>,
    /// When the subscriber callback got the message.
    pub received: Instant,
    /// Position of the receipt in the daemon's event order.
    pub recv_order: u64,
    /// `received` plus the pipeline's latency budget.
    pub deadline: Instant,
    /// Set when another daemon offloaded this request (`io::fleet`): its
    /// answer goes back through the query it came in.
    pub remote: Option<Box<Remote>>,
}

/// Where an offloaded request's answer goes and the level it runs at.
#[derive(Debug)]
pub struct Remote {
    /// Answered once (prediction or error); dropping it ends the query.
    pub query: zenoh::query::Query,
    /// The scheduler level the requesting daemon asked for, resolved to one
    /// this daemon's workers can run the pipeline at.
    pub level: usize,
}

impl Task for Job {
    fn pipeline(&self) -> usize {
        self.pipeline
    }
    fn stream(&self) -> &Arc<str> {
        &self.stream
    }
    fn received(&self) -> Instant {
        self.received
    }
    fn deadline(&self) -> Instant {
        self.deadline
    }
    fn level(&self) -> Option<usize> {
        self.remote.as_ref().map(|r| r.level)
    }
}
