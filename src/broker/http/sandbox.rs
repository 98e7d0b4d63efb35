//! The sandbox surface: `GET /v1/secrets` on a sandbox's socket. The daemon knows the sandbox by
//! the socket the request arrived on; this file checks the request line and turns the daemon's
//! answer (encoded by `protocol`) or its error into a response. Never sees a value in clear: the
//! answer is an opaque, zeroizing buffer.

use hyper::{Method, Response, StatusCode};

use super::{shared_response, shown, ApiError, SecretBody};
use crate::broker::audit;
use crate::broker::daemon::Daemon;
use crate::protocol::SECRETS_PATH;

/// Answers one request on sandbox `id`'s socket.
pub fn answer(
    daemon: &Daemon,
    id: &str,
    method: &Method,
    path: &str,
    has_body: bool,
) -> Response<SecretBody> {
    if let Err(e) = sandbox_target(method, path, has_body) {
        return e.response();
    }
    match daemon.answer(id) {
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
