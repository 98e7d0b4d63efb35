//! The settings page (stub).
use crate::broker::http::platform::Shared;
use axum::Router;

#[derive(Default)]
pub struct Sessions {}

pub fn routes() -> Router<Shared> {
    Router::new()
}
