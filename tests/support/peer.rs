//! The one fake broker of the integration tests: a unix socket in a temp dir that answers each
//! connection as told (bytes, silence, a flood, a drip), or a scripted list of replies in order.
//! Used where the real daemon cannot misbehave on purpose (`inject`, `init_hostile`, `secrecy`).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the peer does with a connection, once it has read the request head.
#[derive(Clone)]
pub enum Reply {
    /// These bytes, then close.
    Bytes(Vec<u8>),
    /// Reads on and never answers, until the client gives up.
    Silent,
    /// `head`, then `unit` repeated until the client leaves.
    Flood { head: Vec<u8>, unit: Vec<u8> },
    /// A valid head promising 1 MB, then one body byte every 100 ms, forever.
    Drip,
}

impl Reply {
    /// A complete answer with this status line tail (`"200 OK"`) and body.
    pub fn answer(status: &str, body: &[u8]) -> Reply {
        Reply::Bytes(http(status, body))
    }
    /// A `200` announcing 64 MiB and streaming it: more than any client reads.
    pub fn flood() -> Reply {
        Reply::Flood {
            head: format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{{\"sandbox\":\"",
                64 * 1024 * 1024
            )
            .into_bytes(),
            unit: vec![b'x'; 64 * 1024],
        }
    }
}

/// An HTTP/1.1 answer with a JSON body and `connection: close`.
pub fn http(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The body of a `200 GET /v1/secrets` answer holding `secrets`.
pub fn secrets_body(secrets: &[(&str, &str)]) -> Vec<u8> {
    let list: Vec<_> = secrets
        .iter()
        .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"sandbox": "sb1", "repository": "o/r", "secrets": list}))
        .unwrap()
}

/// Reads a request head (and a `content-length` body); returns (head and body, body offset).
/// `EINTR` is retried: with `SO_RCVTIMEO` set a signal interrupts even an `SA_RESTART` read, and
/// glibc's `setgroups` (the init's `AsTarget`, run by tests in this process) signals every thread.
fn read_request(stream: &mut UnixStream) -> Option<(Vec<u8>, usize)> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    let body_start = loop {
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&req[..body_start]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while req.len() < body_start + len {
        match stream.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    Some((req, body_start))
}

fn reply(stream: &mut UnixStream, reply: Reply) {
    match reply {
        Reply::Bytes(b) => {
            let _ = stream.write_all(&b);
        }
        Reply::Silent => {
            let mut buf = [0u8; 64];
            loop {
                match stream.read(&mut buf) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        Reply::Flood { head, unit } => {
            if stream.write_all(&head).is_ok() {
                while stream.write_all(&unit).is_ok() {}
            }
        }
        Reply::Drip => {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n{";
            if stream.write_all(head.as_bytes()).is_ok() {
                while stream.write_all(b" ").is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// A fake broker answering every connection with one [`Reply`] (each on its own thread).
pub struct Peer {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Peer {
    /// Binds `<tmp>/secrets.sock` and serves it until the test ends.
    pub fn start(what: Reply) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("secrets.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (counter, seen) = (Arc::clone(&hits), Arc::clone(&requests));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let (what, seen) = (what.clone(), Arc::clone(&seen));
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
                    let Some((req, _)) = read_request(&mut stream) else {
                        return;
                    };
                    seen.lock().unwrap().push(req);
                    reply(&mut stream, what);
                });
            }
        });
        Peer {
            _dir: dir,
            socket,
            hits,
            requests,
        }
    }

    /// A peer answering `200` with these secrets.
    pub fn serving(secrets: &[(&str, &str)]) -> Peer {
        Peer::start(Reply::answer("200 OK", &secrets_body(secrets)))
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The request heads (and bodies) received so far.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

/// A fake peer at `socket` answering `replies` connections, in order, with the bytes given
/// (`{body}` in a reply is replaced by the request's body, for echoing peers), then stopping.
pub fn scripted(socket: &Path, replies: Vec<Vec<u8>>) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for answer in replies {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let Some((req, body_start)) = read_request(&mut stream) else {
                return;
            };
            let body = &req[body_start..];
            let mut out = Vec::new();
            let mut rest = &answer[..];
            while let Some(i) = rest.windows(6).position(|w| w == b"{body}") {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(body);
                rest = &rest[i + 6..];
            }
            out.extend_from_slice(rest);
            let _ = stream.write_all(&out);
        }
    })
}
