//! RabbitMQ: the topology (one module owns every name and argument), the reconnecting broker
//! link, publisher confirms, the headers that carry Herald's bookkeeping, and queue depths.

mod broker;
mod depth;
pub mod headers;
mod publisher;
pub mod topology;

pub use self::{
    broker::{Broker, InvalidAmqpUrl, Link},
    depth::{QueueDepth, queue_depth},
    publisher::{DispatchMessage, PublishError, Publisher},
    topology::Topology,
};
