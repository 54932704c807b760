//! Webhooks: where events are POSTed for the services that ask ([`store`]), signed as the
//! Standard Webhooks specification says ([`signature`]), only to targets the guard admits
//! ([`guard`]); only the events some webhook wants reach the webhook sender ([`routes`]).

pub mod guard;
pub mod routes;
pub mod signature;
pub mod store;

pub use self::store::{Attempt, Webhook, WebhookStore};
