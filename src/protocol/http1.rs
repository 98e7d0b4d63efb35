//! The init's HTTP/1.1 client: one blocking `GET` over a unix socket, the whole exchange (connect
//! included) bounded by a deadline and the body by a size cap, the answer parsed strictly (status
//! line, headers, `content-length`, chunked, or read to the close). No runtime, no thread; each
//! read waits at most until the deadline (`SO_RCVTIMEO`), so a long-poll fits too. It never
//! logs, and no error quotes a byte of the answer.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use zeroize::Zeroizing;

use super::{Answer, ClientError, HttpError};

/// Longest answer head (status line and headers) read; a longer one is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines an answer may carry.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// Bytes asked of the socket by the first read: a head and the answer of a hundred secrets fit.
/// Each read that fills its space doubles the next one, up to [`READ_SIZE`]. Every byte asked
/// for is zero-filled first and wiped at the end, so asking for 64 KiB at once cost a start
/// with a 6 KiB answer more than the answer's decoding.
const FIRST_READ: usize = 16 * 1024;
/// Most bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;
/// What a read buffer is filled with before a read, a page at a time.
const ZERO_PAGE: [u8; 4096] = [0; 4096];

/// `GET path` on the unix socket at `socket`, with `headers` added to `host` and `connection:
/// close`, and reads the whole answer by [`Answer`]'s rules: at most `limit` body bytes, all
/// before `deadline` (else [`ClientError::Deadline`]). Informational (1xx) answers are skipped.
pub fn get(
    socket: &Path,
    path: &str,
    headers: &[(&str, &str)],
    deadline: Instant,
    limit: usize,
) -> Result<Answer, ClientError> {
    let control = |s: &str| s.bytes().any(|b| b < b' ' || b == 0x7f);
    if control(path) || headers.iter().any(|(n, v)| control(n) || control(v)) {
        return Err(ClientError::Http {
            socket: socket.to_owned(),
            source: HttpError::Malformed("a control character in the request's path or headers"),
        });
    }
    let mut stream = connect(socket)?;
    exchange(&mut stream, path, headers, deadline, limit).map_err(|e| match e {
        Fail::Deadline => ClientError::Deadline {
            socket: socket.to_owned(),
        },
        Fail::TooLarge => ClientError::TooLarge {
            socket: socket.to_owned(),
            limit,
        },
        Fail::Http(source) => ClientError::Http {
            socket: socket.to_owned(),
            source,
        },
    })
}

/// A non-blocking `connect`: a listener whose backlog is full fails at once (`EAGAIN`) instead of
/// blocking past the deadline; the connected stream is then made blocking, reads bounded by
/// `SO_RCVTIMEO`.
fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    use nix::sys::socket::{self as s, AddressFamily, SockFlag, SockType, UnixAddr};
    let failed = |e: nix::errno::Errno| ClientError::Connect {
        socket: socket.to_owned(),
        source: io::Error::from(e),
    };
    let fd = s::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(failed)?;
    let addr = UnixAddr::new(socket).map_err(failed)?;
    s::connect(fd.as_raw_fd(), &addr).map_err(failed)?;
    let stream = UnixStream::from(fd);
    stream
        .set_nonblocking(false)
        .map_err(|source| ClientError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    Ok(stream)
}

/// Why an exchange failed, before the socket's name is added.
enum Fail {
    Deadline,
    TooLarge,
    Http(HttpError),
}

impl From<&'static str> for Fail {
    fn from(what: &'static str) -> Self {
        Fail::Http(HttpError::Malformed(what))
    }
}

fn exchange(
    stream: &mut UnixStream,
    path: &str,
    headers: &[(&str, &str)],
    deadline: Instant,
    limit: usize,
) -> Result<Answer, Fail> {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    send_all(stream, request.as_bytes(), deadline)?;
    let mut conn = Conn {
        stream,
        deadline,
        buf: Zeroizing::new(Vec::new()),
        pos: 0,
        read_size: FIRST_READ,
    };
    loop {
        let head = conn.head()?;
        let (status, headers) = parse_head(&head)?;
        let code = status.as_u16();
        if code == 101 {
            return Err("a 101 answer to a GET".into());
        }
        if code < 200 {
            continue;
        }
        let body = if code == 204 || code == 304 {
            Zeroizing::new(Vec::new())
        } else {
            conn.body(&headers, limit)?
        };
        return Ok(Answer {
            status,
            headers,
            body,
        });
    }
}

/// Writes all of `bytes` before `deadline`. `MSG_NOSIGNAL`: a peer that hung up is an error here,
/// not a SIGPIPE the init would later forward to its child.
fn send_all(stream: &UnixStream, mut bytes: &[u8], deadline: Instant) -> Result<(), Fail> {
    use nix::sys::socket::{send, MsgFlags};
    while !bytes.is_empty() {
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(io_fail)?;
        match send(stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io_fail(e.into())),
        }
    }
    Ok(())
}

/// Time left before `deadline`, never zero (a zero timeout means "none" to the socket).
fn remaining(deadline: Instant) -> Result<std::time::Duration, Fail> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(Fail::Deadline),
    }
}

fn io_fail(e: io::Error) -> Fail {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Fail::Deadline,
        _ => Fail::Http(HttpError::Io(e)),
    }
}

/// The connection being read: bytes received and not yet consumed are `buf[pos..]` (zeroized on
/// drop, since the body holds values).
struct Conn<'a> {
    stream: &'a mut UnixStream,
    deadline: Instant,
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    /// Bytes the next read asks for.
    read_size: usize,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // Emptied first, the whole buffer is wiped in bulk (as `Answer`'s body).
        self.buf.clear();
    }
}

impl Conn<'_> {
    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes onto `buf`; `false` at the peer's close.
    fn fill(&mut self) -> Result<bool, Fail> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let old = self.buf.len();
        let size = self.read_size;
        if self.buf.capacity() - old < size {
            // Grow by hand so no unzeroized copy of earlier bytes is left behind.
            let mut grown = Zeroizing::new(Vec::with_capacity(old - self.pos + size));
            grown.extend_from_slice(&self.buf[self.pos..]);
            // The old buffer, emptied, is wiped in bulk as it drops (see `Drop for Conn`).
            std::mem::replace(&mut self.buf, grown).clear();
            self.pos = 0;
        }
        let old = self.buf.len();
        // A page of zeros at a time: `Vec::resize` fills byte by byte at opt-level "z" (15 % of a
        // start's instructions for one 64 KiB read); `extend_from_slice` copies with memcpy.
        while self.buf.len() < old + size {
            let n = (old + size - self.buf.len()).min(ZERO_PAGE.len());
            self.buf.extend_from_slice(&ZERO_PAGE[..n]);
        }
        let got = loop {
            let timeout = remaining(self.deadline);
            let read = match timeout {
                Ok(t) => self
                    .stream
                    .set_read_timeout(Some(t))
                    .and_then(|()| self.stream.read(&mut self.buf[old..])),
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            };
            match read {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(io_fail(e));
                }
            }
        };
        self.buf.truncate(old + got);
        if got == size {
            self.read_size = (size * 2).min(READ_SIZE);
        }
        Ok(got > 0)
    }

    /// The next answer head, up to and without its empty line.
    fn head(&mut self) -> Result<Vec<u8>, Fail> {
        let mut searched = 0;
        loop {
            let pending = self.pending();
            let end = head_end(pending, searched);
            if end.map_or(pending.len(), |e| e.1) > MAX_HEAD_BYTES {
                return Err("answer head larger than 65536 bytes".into());
            }
            if let Some(end) = end {
                let head = pending[..end.0].to_vec();
                self.pos += end.1;
                return Ok(head);
            }
            searched = pending.len();
            if !self.fill()? {
                return Err(if self.pending().is_empty() {
                    "connection closed before an answer"
                } else {
                    "connection closed inside the answer head"
                }
                .into());
            }
        }
    }

    /// One line (CRLF or LF ended) of at most `max` bytes, without its end.
    fn line(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, Fail> {
        loop {
            let pending = self.pending();
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line = pending[..i].strip_suffix(b"\r").unwrap_or(&pending[..i]);
                let line = line.to_vec();
                self.pos += i + 1;
                return Ok(line);
            }
            if pending.len() > max {
                return Err(what.into());
            }
            if !self.fill()? {
                return Err("connection closed inside a chunked body".into());
            }
        }
    }

    /// Moves up to `want` pending bytes (reading when none are) onto `body`, within `limit`.
    /// Returns how many; 0 at the peer's close.
    fn take(
        &mut self,
        body: &mut Zeroizing<Vec<u8>>,
        want: usize,
        limit: usize,
    ) -> Result<usize, Fail> {
        if self.pending().is_empty() && !self.fill()? {
            return Ok(0);
        }
        let n = want.min(self.pending().len());
        if body.len() + n > limit {
            return Err(Fail::TooLarge);
        }
        if body.capacity() < body.len() + n {
            // Grow by hand so no unzeroized copy of earlier bytes is left behind.
            let mut grown = Zeroizing::new(Vec::with_capacity(
                (body.len() + n).max(body.capacity() * 2).min(limit),
            ));
            grown.extend_from_slice(body);
            // The old buffer, emptied, is wiped in bulk as it drops (see `Drop for Conn`).
            std::mem::replace(body, grown).clear();
        }
        body.extend_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    /// The body as `headers` frame it: chunked, `content-length`, or up to the close.
    fn body(
        &mut self,
        headers: &[(String, String)],
        limit: usize,
    ) -> Result<Zeroizing<Vec<u8>>, Fail> {
        let mut body = Zeroizing::new(Vec::new());
        match framing(headers)? {
            Framing::Length(len) => {
                if len > limit as u64 {
                    return Err(Fail::TooLarge);
                }
                let len = len as usize;
                body.reserve_exact(len);
                while body.len() < len {
                    let want = len - body.len();
                    if self.take(&mut body, want, limit)? == 0 {
                        return Err("connection closed before the body's content-length".into());
                    }
                }
            }
            Framing::Close => while self.take(&mut body, usize::MAX, limit)? > 0 {},
            Framing::Chunked => loop {
                let line = self.line(MAX_CHUNK_LINE, "chunk size line too long")?;
                let size = chunk_size(&line)?;
                if size == 0 {
                    // Trailers, up to the empty line; their total is bounded like a head.
                    let mut trailers = 0;
                    loop {
                        let line = self.line(MAX_HEAD_BYTES, "trailer line too long")?;
                        trailers += line.len() + 2;
                        if line.is_empty() {
                            return Ok(body);
                        }
                        if trailers > MAX_HEAD_BYTES {
                            return Err("trailers larger than 65536 bytes".into());
                        }
                    }
                }
                if body.len() as u64 + size > limit as u64 {
                    return Err(Fail::TooLarge);
                }
                let mut left = size as usize;
                while left > 0 {
                    match self.take(&mut body, left, limit)? {
                        0 => return Err("connection closed inside a chunk".into()),
                        n => left -= n,
                    }
                }
                if !self.line(2, "chunk data longer than its size")?.is_empty() {
                    return Err("chunk data longer than its size".into());
                }
            },
        }
        Ok(body)
    }
}

/// Where the head in `bytes` ends: (head length, head length with its empty line). Searches
/// from `from` (minus the terminator's length), since earlier bytes were searched already.
fn head_end(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let start = from.saturating_sub(3);
    let i = start + bytes[start..].iter().position(|&b| b == b'\n')?;
    // Line by line from the first unsearched newline: an empty line ends the head.
    let mut i = i;
    loop {
        let rest = &bytes[i + 1..];
        if rest.first() == Some(&b'\n') {
            return Some((i + 1, i + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((i + 1, i + 3));
        }
        i += 1 + rest.iter().position(|&b| b == b'\n')?;
    }
}

/// How the body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

fn framing(headers: &[(String, String)]) -> Result<Framing, Fail> {
    let mut length = None;
    let mut chunked = false;
    for (name, value) in headers {
        match name.as_str() {
            "content-length" => {
                if value.is_empty()
                    || value.len() > 19
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err("bad content-length".into());
                }
                let len: u64 = value.parse().map_err(|_| "bad content-length")?;
                if length.is_some_and(|l| l != len) {
                    return Err("conflicting content-length headers".into());
                }
                length = Some(len);
            }
            "transfer-encoding" => {
                if chunked || !value.eq_ignore_ascii_case("chunked") {
                    return Err("unsupported transfer-encoding".into());
                }
                chunked = true;
            }
            _ => {}
        }
    }
    match (chunked, length) {
        (true, Some(_)) => Err("both content-length and transfer-encoding".into()),
        (true, None) => Ok(Framing::Chunked),
        (false, Some(len)) => Ok(Framing::Length(len)),
        (false, None) => Ok(Framing::Close),
    }
}

/// The size of a chunk-size line (hex digits, then an optional `;extension`).
fn chunk_size(line: &[u8]) -> Result<u64, Fail> {
    let digits = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let digits = trim(digits);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("bad chunk size".into());
    }
    // At most 15 hex digits: cannot overflow.
    Ok(digits.iter().fold(0, |n, &d| {
        n * 16 + (d as char).to_digit(16).unwrap_or(0) as u64
    }))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ' && b != b'\t');
    let end = bytes.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &bytes[s..=e],
        _ => &[],
    }
}

/// Parses a head: `HTTP/1.x NNN reason` then `name: value` lines (names lower-cased, values
/// trimmed), both with CRLF or LF ends.
fn parse_head(head: &[u8]) -> Result<(http::StatusCode, Vec<(String, String)>), Fail> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let rest = status_line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix(b"HTTP/1.0 "))
        .ok_or("not an HTTP/1.1 status line")?;
    let (code, reason) = rest.split_at(rest.len().min(3));
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err("bad status code".into());
    }
    if !(reason.is_empty() || reason[0] == b' ') || !reason.iter().all(|&b| field_byte(b)) {
        return Err("bad status line".into());
    }
    let code = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    let status = http::StatusCode::from_u16(code).map_err(|_| "bad status code")?;
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if headers.len() == MAX_HEADERS {
            return Err("more than 100 headers".into());
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("header line without a colon")?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| token_byte(b)) {
            return Err("bad header name".into());
        }
        if !value.iter().all(|&b| field_byte(b)) {
            return Err("bad header value".into());
        }
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok((status, headers))
}

/// A byte of a header name (RFC 9110 `tchar`).
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte of a header value or reason phrase: tab, visible ASCII, space, or obs-text.
fn field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    /// Serves `reply` (in pieces, `pause` apart) to one connection on a real socket; returns
    /// the socket's directory and path.
    fn peer(pieces: Vec<Vec<u8>>, pause: Duration) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            for p in pieces {
                if s.write_all(&p).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        });
        (dir, path)
    }

    fn ask(pieces: &[&[u8]]) -> Result<Answer, ClientError> {
        let (_dir, path) = peer(
            pieces.iter().map(|p| p.to_vec()).collect(),
            Duration::from_millis(5),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        get(
            &path,
            "/v1/secrets",
            &[("if-none-match", "\"e1\"")],
            deadline,
            1000,
        )
    }

    fn failure(pieces: &[&[u8]]) -> String {
        match ask(pieces) {
            Ok(a) => panic!(
                "{:?} accepted: {}",
                String::from_utf8_lossy(&pieces.concat()[..100.min(pieces.concat().len())]),
                a.status
            ),
            Err(e) => {
                let mut msg = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    msg = format!("{msg}: {c}");
                    cause = c.source();
                }
                msg
            }
        }
    }

    #[test]
    fn bodies_are_read_by_length_chunks_or_close_in_any_split() {
        let a = ask(&[
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nETag: \"e2\"\r\n\r\nhel",
            b"lo",
        ])
        .unwrap();
        assert_eq!((a.status.as_u16(), &a.body[..]), (200, &b"hello"[..]));
        assert_eq!(a.header("etag"), Some("\"e2\""));
        let a = ask(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nhel\r\n",
            b"2\r\nlo\r\n0\r\nx-trailer: t\r\n\r\n",
        ])
        .unwrap();
        assert_eq!(&a.body[..], b"hello");
        let a = ask(&[b"HTTP/1.0 500 Oops\nx: y\n\n", b"closed", b" here"]).unwrap();
        assert_eq!((a.status.as_u16(), &a.body[..]), (500, &b"closed here"[..]));
        // Informational answers are skipped; 304 has no body whatever its headers say.
        let a = ask(&[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
        ])
        .unwrap();
        assert_eq!((a.status.as_u16(), a.body.len()), (304, 0));
    }

    #[test]
    fn malformed_answers_name_what_was_wrong() {
        for (bytes, why) in [
            (&b""[..], "connection closed before an answer"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-le",
                "closed inside the answer head",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 status line"),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "bad status code"),
            (b"HTTP/1.1 099 OK\r\n\r\n", "bad status code"),
            (b"HTTP/1.1 200 O\x00K\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "without a colon"),
            (b"HTTP/1.1 200 OK\r\nba d: x\r\n\r\n", "bad header name"),
            (b"HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n", "bad header value"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "bad content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort",
                "before the body's content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                "unsupported transfer-encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n",
                "both",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n",
                "longer than its size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
                "closed inside a chunk",
            ),
            (b"HTTP/1.1 101 Switching\r\n\r\n", "101"),
        ] {
            let msg = failure(&[bytes]);
            assert!(
                msg.starts_with("HTTP exchange with ") && msg.contains(why),
                "{why}: {msg}"
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let msg = failure(&[format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()]);
        assert!(msg.contains("more than 100 headers"), "{msg}");
        let big = format!(
            "HTTP/1.1 200 OK\r\nx: {}\r\n\r\n",
            "h".repeat(MAX_HEAD_BYTES)
        );
        let msg = failure(&[big.as_bytes()]);
        assert!(msg.contains("answer head larger than 65536 bytes"), "{msg}");
    }

    #[test]
    fn the_size_cap_and_the_deadline_hold() {
        let msg = failure(&[b"HTTP/1.1 200 OK\r\ncontent-length: 1001\r\n\r\n"]);
        assert!(msg.contains("larger than 1000 bytes"), "{msg}");
        let chunk = format!("200\r\n{}\r\n", "y".repeat(0x200));
        let msg = failure(&[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            chunk.as_bytes(),
            chunk.as_bytes(),
        ]);
        assert!(msg.contains("larger than 1000 bytes"), "{msg}");
        let msg = failure(&[b"HTTP/1.1 200 OK\r\n\r\n", &[b'z'; 1001]]);
        assert!(msg.contains("larger than 1000 bytes"), "{msg}");
        // A drip: every read is quick, the whole is late.
        let drip = std::iter::once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec())
            .chain(std::iter::repeat(b"x".to_vec()).take(100))
            .collect();
        let (_dir, path) = peer(drip, Duration::from_millis(50));
        let start = Instant::now();
        let got = get(&path, "/", &[], start + Duration::from_millis(300), 1000);
        assert!(
            matches!(got, Err(ClientError::Deadline { .. })),
            "{:?}",
            got.err()
        );
        let took = start.elapsed();
        // The peer would need 5 s to finish; the deadline ends it at 300 ms (slack for a loaded host).
        assert!(took < Duration::from_millis(2500), "{took:?}");
    }

    #[test]
    fn the_request_is_one_get_with_the_callers_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
                head.push(b[0]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            String::from_utf8(head).unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let a = get(
            &path,
            "/v1/secrets",
            &[("if-none-match", "\"e1\"")],
            deadline,
            10,
        )
        .unwrap();
        assert_eq!(a.status.as_u16(), 204);
        assert_eq!(
            seen.join().unwrap(),
            "GET /v1/secrets HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
             if-none-match: \"e1\"\r\n\r\n"
        );
        let e = get(&path, "/x\r\nevil: 1", &[], deadline, 10)
            .err()
            .unwrap();
        assert!(e.to_string().contains("HTTP exchange"), "{e}");
        let e = get(&dir.path().join("none.sock"), "/", &[], deadline, 10)
            .err()
            .unwrap();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    }
}
