//! The sandbox surface: `GET /v1/secrets` on a sandbox's socket. The daemon knows the sandbox by
//! the socket the request arrived on; this file checks the request line and turns the daemon's
//! answer (encoded by `protocol`) or its error into a response. Never sees a value in clear: the
//! answer is an opaque, zeroizing buffer.

use std::sync::Arc;

use hyper::{Method, Response, StatusCode};

use super::{shared_response, shown, ApiError, SecretBody};
use crate::broker::audit;
use crate::broker::daemon::Daemon;
use crate::protocol::SECRETS_PATH;

/// Answers one request on sandbox `id`'s socket. A cached answer is served at once; building one
/// (opening and encoding up to megabytes of values) runs on a blocking thread, so it never holds
/// an async worker another sandbox's fetch needs.
pub async fn answer(
    daemon: &Arc<Daemon>,
    id: &str,
    method: &Method,
    path: &str,
    has_body: bool,
) -> Response<SecretBody> {
    if let Err(e) = sandbox_target(method, path, has_body) {
        return e.response();
    }
    let built = match daemon.cached_answer(id) {
        Some(body) => Ok(body),
        None => {
            if let Err(e) = daemon.still_over_budget(id) {
                return ApiError::from(e).response();
            }
            // Large (or not yet seen) answers are built a few at once; one that waited finds
            // the answer another request built. A sandbox whose answer was small never waits.
            let _permit = if daemon.answers().small(id) {
                None
            } else {
                let Ok(permit) = daemon.builds().acquire().await else {
                    return ApiError::Incomplete.response();
                };
                if let Some(body) = daemon.cached_answer(id) {
                    return shared_response(StatusCode::OK, body);
                }
                Some(permit)
            };
            let (daemon, id) = (Arc::clone(daemon), id.to_owned());
            match tokio::task::spawn_blocking(move || daemon.answer(&id)).await {
                Ok(built) => built,
                Err(e) => {
                    tracing::error!(error = %e, "building an answer did not complete");
                    return ApiError::Incomplete.response();
                }
            }
        }
    };
    match built {
        Ok(body) => shared_response(StatusCode::OK, body),
        Err(e) => {
            let e = ApiError::from(e);
            audit::read_refused(id, &super::chain(&e));
            e.response()
        }
    }
}

/// Checks the method and path of a request on a sandbox socket, and that it carries no body (the
/// API takes none; a body is refused, never read). Pure.
pub fn sandbox_target(method: &Method, path: &str, has_body: bool) -> Result<(), ApiError> {
    let path = path.split('?').next().unwrap_or(path);
    if path != SECRETS_PATH {
        return Err(ApiError::NoRoute(shown(path)));
    }
    if method != Method::GET {
        return Err(ApiError::Method {
            method: method.clone(),
            path: path.to_owned(),
        });
    }
    if has_body {
        return Err(ApiError::BodyNotAllowed);
    }
    Ok(())
}
