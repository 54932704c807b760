//! The web page a person opens to act as a Teams user and watch the bot's messages arrive.
//!
//! One self-contained HTML file (no external assets: the local stack may run offline),
//! talking to the `/_emulator` API and its event stream.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::state::Shared;

const PAGE: &str = include_str!("page.html");

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/", get(index))
}

async fn index() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}
