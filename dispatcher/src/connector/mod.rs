//! The Bot Connector side: the bot's token (client credentials) and the REST calls to Teams,
//! with Teams' error answers read into [`ConnectorError`].

mod client;
mod error;
mod token;

/// Graph answers errors in the first of the shapes Teams does, and `Retry-After` alike.
pub(crate) use self::error::{parse_error_body, parse_retry_after};
pub use self::{
    client::{BotConnector, CreatedConversation, SentActivity},
    error::ConnectorError,
    token::{TokenError, TokenSource},
};
