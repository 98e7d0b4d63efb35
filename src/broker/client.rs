//! The admin client: sends one JSON request to the daemon's admin socket and decodes the answer.
//! Used by the `sandbox-secrets` subcommands; it prints nothing and logs no request body, and it
//! sends nothing to a socket served by any uid but root or the caller's own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use super::admin::{AdminCall, Route};
use crate::protocol;

/// Longest admin answer read.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Time allowed for one admin call.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot start the client runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot reach the daemon (is `sandbox-secrets serve` running with this --run-dir, and are you root or its user?)")]
    Connect { source: protocol::ClientError },
    #[error(transparent)]
    Exchange(protocol::ClientError),
    #[error("the daemon did not answer {route} within {TIMEOUT:?}")]
    Timeout { route: Route },
    #[error("{message}")]
    Refused {
        status: hyper::StatusCode,
        message: String,
    },
    #[error("the daemon's answer to {route} is not understood: {detail}")]
    BadAnswer { route: Route, detail: String },
    #[error("cannot encode the request for {route}")]
    Encode { route: Route },
    #[error("cannot read the credentials of the daemon at {socket}")]
    PeerCred {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to talk to {socket}: it is served by uid {server}, not root or this user (uid {own}); nothing was sent")]
    Impostor {
        socket: PathBuf,
        server: u32,
        own: u32,
    },
}

/// Whether a daemon running as `server` may be sent requests (which may carry values) by a client
/// running as `own`: only root or the client's own uid.
pub fn trusted_server(server: u32, own: u32) -> bool {
    server == 0 || server == own
}

/// Connects to the admin socket, checks who serves it (SO_PEERCRED) before a byte is sent, then
/// sends one request and reads the answer (at most [`MAX_ANSWER`] bytes, zeroized on drop).
async fn admin_request(
    socket: &Path,
    path: &str,
    body: Vec<u8>,
) -> Result<protocol::Answer, AdminError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| AdminError::Connect {
            source: protocol::ClientError::Connect {
                socket: socket.to_owned(),
                source,
            },
        })?;
    let server = stream
        .peer_cred()
        .map_err(|source| AdminError::PeerCred {
            socket: socket.to_owned(),
            source,
        })?
        .uid();
    let own = nix::unistd::geteuid().as_raw();
    if !trusted_server(server, own) {
        return Err(AdminError::Impostor {
            socket: socket.to_owned(),
            server,
            own,
        });
    }
    protocol::request_on(
        stream,
        socket,
        hyper::Method::POST,
        path,
        Some(body),
        MAX_ANSWER,
    )
    .await
    .map_err(AdminError::Exchange)
}

/// A client of one daemon's admin socket.
pub struct AdminClient {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl AdminClient {
    /// A client for the daemon whose run directory is `run_dir`.
    pub fn new(run_dir: &Path) -> Result<Self, AdminError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Runtime)?;
        Ok(Self {
            socket: super::sandboxes::Layout::new(run_dir).admin_socket(),
            runtime,
        })
    }

    /// Sends `request` to its route and decodes the answer; a non-2xx answer is an error
    /// carrying the daemon's message.
    pub fn call<Q: AdminCall>(&self, request: &Q) -> Result<Q::Answer, AdminError> {
        let route: Route = Q::ROUTE;
        let body =
            Zeroizing::new(serde_json::to_vec(request).map_err(|_| AdminError::Encode { route })?);
        let path = route.path();
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, admin_request(&self.socket, &path, body.to_vec())).await
        });
        let answer = match answer {
            Err(_) => return Err(AdminError::Timeout { route }),
            Ok(result) => result?,
        };
        if !answer.status.is_success() {
            let message = protocol::decode_error(&answer.body)
                .unwrap_or_else(|| format!("the daemon answered {}", answer.status));
            // The rule's name, as the platform API's `{"rule"}` gives it.
            let rule = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("rule")?.as_str().map(str::to_owned));
            let message = match rule {
                Some(rule) if rule != "internal" => format!("{message} (rule: {rule})"),
                _ => message,
            };
            return Err(AdminError::Refused {
                status: answer.status,
                message,
            });
        }
        serde_json::from_slice(&answer.body).map_err(|e| AdminError::BadAnswer {
            route,
            detail: format!("line {} column {}", e.line(), e.column()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_or_the_callers_own_uid_is_trusted_to_serve_admin() {
        for own in [0u32, 1, 1000, 65534] {
            for server in [0u32, 1, 999, 1000, 1001, 65534, u32::MAX] {
                assert_eq!(
                    trusted_server(server, own),
                    server == 0 || server == own,
                    "server {server}, client {own}"
                );
            }
        }
        assert!(!trusted_server(65534, 0));
        assert!(!trusted_server(1001, 1000));
    }
}
