//! The admin client: sends one JSON request to the daemon's admin socket and decodes the answer.
//! Used by the `sandbox-secrets` subcommands; it prints nothing and logs no request body.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use super::api::ADMIN_PREFIX;
use crate::protocol::{self, ErrorBody};

/// Longest admin answer read.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Time allowed for one admin call.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach the daemon (is `sandbox-secrets serve` running with this --run-dir, and are you root or its user?)")]
    Connect { source: protocol::ClientError },
    #[error("{0}")]
    Exchange(protocol::ClientError),
    #[error("the daemon did not answer {route} within {TIMEOUT:?}")]
    Timeout { route: String },
    #[error("{message}")]
    Refused {
        status: hyper::StatusCode,
        message: String,
    },
    #[error("the daemon's answer to {route} is not understood: {detail}")]
    BadAnswer { route: String, detail: String },
    #[error("cannot encode the request for {route}")]
    Encode { route: String },
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

    /// Sends `request` to `/v1/admin/<route>` and decodes the answer; a non-2xx answer is an
    /// error carrying the daemon's message.
    pub fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        route: &str,
        request: &Q,
    ) -> Result<A, AdminError> {
        let body = Zeroizing::new(serde_json::to_vec(request).map_err(|_| AdminError::Encode {
            route: route.to_owned(),
        })?);
        let path = format!("{ADMIN_PREFIX}{route}");
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(
                TIMEOUT,
                protocol::unix_request(
                    &self.socket,
                    hyper::Method::POST,
                    &path,
                    Some(body.to_vec()),
                    MAX_ANSWER,
                ),
            )
            .await
        });
        let answer = match answer {
            Err(_) => {
                return Err(AdminError::Timeout {
                    route: route.to_owned(),
                })
            }
            Ok(Err(e @ protocol::ClientError::Connect { .. })) => {
                return Err(AdminError::Connect { source: e })
            }
            Ok(Err(e)) => return Err(AdminError::Exchange(e)),
            Ok(Ok(a)) => a,
        };
        if !answer.status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&answer.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("the daemon answered {}", answer.status));
            return Err(AdminError::Refused {
                status: answer.status,
                message,
            });
        }
        serde_json::from_slice(&answer.body).map_err(|e| AdminError::BadAnswer {
            route: route.to_owned(),
            detail: format!("line {} column {}", e.line(), e.column()),
        })
    }
}
