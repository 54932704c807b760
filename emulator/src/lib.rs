//! A local stand-in for the Microsoft Teams cloud, for Herald's tests and local stack.
//!
//! Nobody can reach Teams from a laptop or CI, so this crate plays Microsoft: the Entra
//! token endpoint, Bot Framework's OpenID metadata and signing keys, the Bot Connector the
//! bot writes to, and Teams itself posting signed activities (installs, messages) to the
//! bot. It speaks the real protocol, so Herald runs its real code paths, configured to other
//! URLs. It depends on none of Herald's crates.
//!
//! # Layout
//! - [`config`]: [`EmulatorConfig`], and the binary's environment ([`config::BinaryConfig`]).
//! - `keys`: the process-wide RSA keys, the JWKS, and the tokens signed with them —
//!   including deliberately spoiled ones ([`TokenVariant`]).
//! - `entra`: `POST /{tenant}/oauth2/v2.0/token`, `GET /v1/.well-known/openidconfiguration`
//!   and `GET /v1/.well-known/keys`.
//! - `directory`: users, teams, conversations and the activities stored in them.
//! - `connector`: the Bot Connector (`/v3/conversations/…` under each serviceUrl).
//! - `limits`: Teams' rate limits; `faults`: injected answers ([`Fault`]).
//! - `recorder`: the request log ([`RecordedRequest`]) and counters ([`Stats`]).
//! - `teams`: acting as Teams toward the bot (activity builders, posting, installs, a user
//!   pressing card buttons and reading messages).
//! - `inspect`: the JSON API and event stream under `/_emulator`; `page`: the web page at `/`.
//! - `emulator`: [`Emulator`], the running server and its handle; [`app`]: the binary.
//!
//! # Use in tests
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use herald_emulator::{Emulator, EmulatorConfig, TeamsUser};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let emulator = Emulator::start(EmulatorConfig::default(), listener).await?;
//! emulator.set_bot_endpoint("http://127.0.0.1:3978/api/messages");
//! let user = TeamsUser::random();
//! let outcome = emulator.install(&user).await?;
//! // … let the bot send, then:
//! let sent = emulator.activities(&outcome.conversation_id);
//! # Ok(()) }
//! ```

pub mod app;
pub mod config;
mod connector;
mod directory;
mod emulator;
mod entra;
mod error;
mod faults;
mod inspect;
mod keys;
mod limits;
mod page;
mod recorder;
mod state;
mod teams;

pub use config::EmulatorConfig;
pub use directory::{CardAnswer, ReceivedActivity, TeamsTeam, TeamsUser};
pub use emulator::Emulator;
pub use faults::{Fault, MESSAGE_WRITES_BLOCKED_BODY};
pub use keys::TokenVariant;
pub use recorder::{Operation, RecordedRequest, Stats};
pub use teams::{InstallOutcome, InvokeAnswer};
