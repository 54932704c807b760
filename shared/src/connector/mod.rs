//! The Bot Connector side: the bot's token (client credentials) and the REST calls to Teams,
//! with Teams' answers classified where they are decided: retried, final, or the conversation is
//! gone.

mod client;
mod error;
mod token;

pub use self::{
    client::{BotConnector, CreatedConversation, SentActivity},
    error::{ConnectorError, ErrorClass},
    token::{TokenError, TokenSource},
};
