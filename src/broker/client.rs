//! The admin client: sends one JSON request to the daemon's admin socket and decodes the answer.
//! Used by the `sandbox-secrets` subcommands; it prints nothing and logs no request body, and it
//! sends nothing to a socket served by any uid but root, the caller's own, or (for root only)
//! the packaged service's account `sandbox-secrets`.

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
    #[error("refusing to talk to {socket}: it is served by uid {server}, not root, this user (uid {own}) or the {SERVICE_USER} service account; nothing was sent")]
    Impostor {
        socket: PathBuf,
        server: u32,
        own: u32,
    },
}

/// The account the Debian package runs the daemon as (packaging/sysusers.d).
pub const SERVICE_USER: &str = "sandbox-secrets";

/// Whether a daemon running as `server` may be sent requests (which may carry values) by a client
/// running as `own`: root, the client's own uid, and for root also `service` (the uid of
/// [`SERVICE_USER`], so `sudo sandbox-secrets list` reaches the packaged daemon). Only root and
/// that account can create sockets in its runtime directory; any other uid is an impostor.
pub fn trusted_server(server: u32, own: u32, service: Option<u32>) -> bool {
    server == 0 || server == own || (own == 0 && service == Some(server))
}

/// The uid of [`SERVICE_USER`] in `passwd` (the text of /etc/passwd), if the account exists.
pub fn service_uid(passwd: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(SERVICE_USER))
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
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
    let service = if own == 0 && server != 0 {
        std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| service_uid(&p))
    } else {
        None
    };
    if !trusted_server(server, own, service) {
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
                    trusted_server(server, own, None),
                    server == 0 || server == own,
                    "server {server}, client {own}"
                );
            }
        }
        assert!(!trusted_server(65534, 0, None));
        assert!(!trusted_server(1001, 1000, None));
    }

    #[test]
    fn root_also_trusts_the_service_account_and_nobody_else_does() {
        assert!(trusted_server(999, 0, Some(999)));
        assert!(!trusted_server(998, 0, Some(999)));
        // A user who is not root gains nothing from the service account.
        assert!(!trusted_server(999, 1000, Some(999)));
        assert!(trusted_server(1000, 1000, Some(999)));
    }

    #[test]
    fn the_service_uid_is_read_from_its_passwd_line_only() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nsandbox-secrets-evil:x:5:5::/:/bin/sh\nsandbox-secrets:x:998:998:sandbox-secrets broker:/var/lib/sandbox-secrets:/usr/sbin/nologin\n";
        assert_eq!(service_uid(passwd), Some(998));
        assert_eq!(service_uid("root:x:0:0::/:/bin/sh\n"), None);
        assert_eq!(
            service_uid("sandbox-secrets:x:notanumber:1::/:/bin/sh\n"),
            None
        );
    }
}
