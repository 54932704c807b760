//! RabbitMQ: the topology (one module owns every name and argument), the reconnecting broker
//! link, publisher confirms, and the headers that carry Herald's bookkeeping.

mod broker;
pub mod headers;
mod publisher;
pub mod topology;

pub use self::{
    broker::{Broker, InvalidAmqpUrl, Link},
    publisher::{PublishError, Publisher},
    topology::Topology,
};
