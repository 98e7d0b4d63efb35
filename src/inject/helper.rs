//! `docker-credential-sandbox`: docker's credential-helper protocol, answered from the sandbox
//! socket on every call (`--registry-credentials helper` points `credHelpers` here), so no
//! registry password sits in any file and a rotation is live by construction. `get` reads a
//! server URL on stdin and prints `{"ServerURL","Username","Secret"}`; `list` prints `{}` (the
//! user names are secrets too); `erase` succeeds doing nothing; `store` is refused (the
//! credentials are managed by the sandbox's broker). A missing entry answers the protocol's
//! "credentials not found in native keychain" (docker then goes on anonymously). Errors name
//! the step, never a value; the only place a value goes is the `get` answer on stdout.

use std::io::{Read, Write};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::dockercfg::{group_triplets, normalize_registry};
use super::{chain, fetch, quote, Options};

/// The message docker's client recognises as "no credentials for this server".
pub const NOT_FOUND: &str = "credentials not found in native keychain";

/// The usage line (stdout, exit 1, as docker's helpers do).
pub const USAGE: &str = "Usage: docker-credential-sandbox <store|get|erase|list|version>\n";

/// Runs one action; returns the exit code. `input` is stdin, `out` stdout.
pub fn run(opts: &Options, action: &str, input: &mut dyn Read, out: &mut dyn Write) -> u8 {
    let (text, code) = answer(opts, action, input);
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok();
    if written {
        code
    } else {
        1
    }
}

/// The text to print and the exit code, for `action`.
fn answer(opts: &Options, action: &str, input: &mut dyn Read) -> (Zeroizing<String>, u8) {
    let plain = |s: &str, code| (Zeroizing::new(s.to_owned()), code);
    match action {
        "get" => {
            let mut raw = Zeroizing::new(Vec::with_capacity(256));
            if input.take(64 * 1024).read_to_end(&mut raw).is_err() {
                return plain("cannot read the server URL from stdin\n", 1);
            }
            let server = String::from_utf8_lossy(&raw).trim().to_owned();
            if server.is_empty() {
                // The protocol's own words for it.
                return plain("no credentials server URL\n", 1);
            }
            get(opts, &server)
        }
        "list" => plain("{}\n", 0),
        "erase" => plain("", 0),
        "store" => plain(
            "the registry credentials of this sandbox are managed by its broker (sandbox-secrets \
             set); docker login cannot change them\n",
            1,
        ),
        "version" => (
            Zeroizing::new(format!(
                "docker-credential-sandbox (sandbox-init {})\n",
                env!("CARGO_PKG_VERSION")
            )),
            0,
        ),
        _ => plain(USAGE, 1),
    }
}

/// `get` for `server`: the triplet whose server is the same registry, fetched now.
fn get(opts: &Options, server: &str) -> (Zeroizing<String>, u8) {
    let not_found = || (Zeroizing::new(format!("{NOT_FOUND}\n")), 1);
    if !fetch::socket_present(&opts.socket) {
        return not_found();
    }
    let secrets = match fetch::fetch(&opts.socket, opts.timeout) {
        Ok(s) => s,
        Err(e) => {
            let err = super::Error::Fetch {
                socket: opts.socket.clone(),
                source: e,
            };
            return (Zeroizing::new(format!("{}\n", chain(&err))), 1);
        }
    };
    let pairs: Vec<(&str, &SecretString)> = secrets
        .iter()
        .map(|s| (s.name.as_str(), &s.value))
        .collect();
    let Some((user, password)) = credentials_for(&pairs, server) else {
        return not_found();
    };
    let mut out = Zeroizing::new(String::with_capacity(
        64 + server.len() + 2 * (user.len() + password.len()),
    ));
    out.push_str("{\"ServerURL\":");
    quote::push_json_string(&mut out, server);
    out.push_str(",\"Username\":");
    quote::push_json_string(&mut out, user);
    out.push_str(",\"Secret\":");
    quote::push_json_string(&mut out, password);
    out.push_str("}\n");
    (out, 0)
}

/// The user and password of the triplet among `secrets` for the registry `server` (compared
/// normalised, then by host; the last matching triplet wins, as in `config.json`). Pure.
pub fn credentials_for<'a>(
    secrets: &[(&str, &'a SecretString)],
    server: &str,
) -> Option<(&'a str, &'a str)> {
    let want = normalize_registry(server)?;
    let want_host = host(&want);
    let names: Vec<&str> = secrets.iter().map(|(n, _)| *n).collect();
    let (triplets, _) = group_triplets(&names);
    let mut by_host = None;
    let mut exact = None;
    for t in triplets {
        let Some(s) = normalize_registry(secrets[t.server].1.expose_secret()) else {
            continue;
        };
        let pair = (
            secrets[t.user].1.expose_secret(),
            secrets[t.password].1.expose_secret(),
        );
        if s == want {
            exact = Some(pair);
        } else if host(&s) == want_host {
            by_host = Some(pair);
        }
    }
    exact.or(by_host)
}

fn host(normalised: &str) -> &str {
    normalised.split('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[(&'static str, &str)]) -> Vec<(&'static str, SecretString)> {
        list.iter()
            .map(|(n, v)| (*n, SecretString::from(v.to_string())))
            .collect()
    }

    #[test]
    fn the_triplet_of_the_asked_registry_is_found_by_server_then_host() {
        let owned = secrets(&[
            ("A_CONTAINER_REGISTRY_SERVER", "https://Reg.Example:5000/"),
            ("A_CONTAINER_REGISTRY_USER", "alice"),
            ("A_CONTAINER_REGISTRY_PASSWORD", "pw-a"),
            ("B_CONTAINER_REGISTRY_SERVER", "docker.io"),
            ("B_CONTAINER_REGISTRY_USER", "bob"),
            ("B_CONTAINER_REGISTRY_PASSWORD", "pw-b"),
            ("C_CONTAINER_REGISTRY_SERVER", "ghcr.io/octo"),
            ("C_CONTAINER_REGISTRY_USER", "carol"),
            ("C_CONTAINER_REGISTRY_PASSWORD", "pw-c"),
        ]);
        let pairs: Vec<(&str, &SecretString)> = owned.iter().map(|(n, v)| (*n, v)).collect();
        assert_eq!(
            credentials_for(&pairs, "reg.example:5000"),
            Some(("alice", "pw-a"))
        );
        assert_eq!(
            credentials_for(&pairs, "https://index.docker.io/v1/"),
            Some(("bob", "pw-b"))
        );
        assert_eq!(credentials_for(&pairs, "ghcr.io"), Some(("carol", "pw-c")));
        assert_eq!(credentials_for(&pairs, "other.example"), None);
        assert_eq!(credentials_for(&pairs, ""), None);
    }

    #[test]
    fn the_protocol_answers_list_erase_store_and_unknown_actions() {
        let opts = Options {
            socket: "/nonexistent/secrets.sock".into(),
            policy: super::super::SecretsPolicy::Auto,
            timeout: std::time::Duration::from_secs(1),
        };
        let mut out = Vec::new();
        assert_eq!(run(&opts, "list", &mut &b""[..], &mut out), 0);
        assert_eq!(out, b"{}\n");
        out.clear();
        assert_eq!(run(&opts, "erase", &mut &b"reg.example\n"[..], &mut out), 0);
        assert!(out.is_empty());
        out.clear();
        assert_eq!(run(&opts, "store", &mut &b"{}"[..], &mut out), 1);
        assert!(String::from_utf8_lossy(&out).contains("managed by its broker"));
        out.clear();
        assert_eq!(run(&opts, "get", &mut &b"reg.example\n"[..], &mut out), 1);
        assert_eq!(out, format!("{NOT_FOUND}\n").as_bytes());
        out.clear();
        assert_eq!(run(&opts, "fly", &mut &b""[..], &mut out), 1);
        assert_eq!(out, USAGE.as_bytes());
    }
}
