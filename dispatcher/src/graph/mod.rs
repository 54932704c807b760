//! Microsoft Graph, for reaching people who never installed the app: per-tenant tokens
//! ([`GraphTokens`]), the calls ([`GraphClient`]), a pace per tenant shared by every replica
//! ([`GraphPacer`]), and Graph's answers read into [`GraphError`].
//!
//! - `token`: client-credentials tokens issued by each user's tenant, cached per tenant.
//! - `client`: the calls; each checks the Graph allowlist, takes the tenant's turn, and
//!   carries the tenant's own token.
//! - `pace`: the tenant's rate (a GCRA in Redis) and its pause after a 429.
//! - `error`: what a failed call means (throttled, a missing permission named, …).

mod client;
mod error;
mod pace;
mod token;

pub use self::{
    client::{GraphClient, GraphPage, GraphUser, Installed, UserName},
    error::GraphError,
    pace::{GraphPacer, Turn},
    token::GraphTokens,
};
