//! The Bot Connector side: the bot's token (client credentials) and the REST calls to Teams,
//! with Teams' error answers read into [`ConnectorError`].

mod client;
mod error;
mod token;

pub use self::{
    client::{BotConnector, CreatedConversation, SentActivity},
    error::ConnectorError,
    token::{TokenError, TokenSource},
};
