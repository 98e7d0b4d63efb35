//! Load generator for the two doors of the same operations: the platform API over TCP
//! (`--http HOST:PORT --token T`) or the admin socket (`--admin SOCKET`). N clients, each on one
//! keep-alive connection, send for D seconds either `get` (the metadata list of one user's
//! secrets) or `put` (an update of one secret's value, a fresh secret per client); one line of
//! JSON is printed: requests/s, p50/p99 latency, errors. It checks each answer is 2xx, counts
//! anything else as an error, and never prints a body.
//!
//! `cargo run --release --example platform_load -- (--http ADDR --token T | --admin SOCKET)
//!  --op get|put [--clients N] [--seconds D] [--user U]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

#[derive(Clone)]
struct Options {
    http: Option<String>,
    token: String,
    admin: Option<String>,
    put: bool,
    clients: usize,
    seconds: f64,
    user: String,
}

fn parse() -> Result<Options, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Options {
        http: None,
        token: String::new(),
        admin: None,
        put: false,
        clients: 16,
        seconds: 5.0,
        user: "mona".into(),
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("http") => o.http = Some(parser.value()?.parse()?),
            Long("token") => o.token = parser.value()?.parse()?,
            Long("admin") => o.admin = Some(parser.value()?.parse()?),
            Long("op") => o.put = parser.value()?.parse::<String>()? == "put",
            Long("clients") => o.clients = parser.value()?.parse()?,
            Long("seconds") => o.seconds = parser.value()?.parse()?,
            Long("user") => o.user = parser.value()?.parse()?,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(o)
}

/// (method, path, body) of request `n` of client `client`.
fn request(o: &Options, client: usize, n: usize) -> (&'static str, String, String) {
    let name = format!("LOAD_{client}");
    let value = format!("value-{n}");
    match (&o.http, o.put) {
        (Some(_), false) => (
            "GET",
            format!("/v1/users/{}/secrets", o.user),
            String::new(),
        ),
        (Some(_), true) => (
            "PUT",
            format!("/v1/users/{}/secrets/{name}", o.user),
            format!(r#"{{"value":"{value}","repositories":["octo/load"]}}"#),
        ),
        (None, false) => (
            "POST",
            "/v1/admin/secrets/list".into(),
            format!(r#"{{"user":"{}"}}"#, o.user),
        ),
        (None, true) => (
            "POST",
            "/v1/admin/secrets/set".into(),
            format!(
                r#"{{"name":"{name}","user":"{}","repos":["octo/load"],"value":"{value}"}}"#,
                o.user
            ),
        ),
    }
}

async fn client(o: Arc<Options>, id: usize, until: Instant) -> (Vec<u32>, usize) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut sender = match (&o.http, &o.admin) {
        (Some(addr), _) => {
            let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).ok();
            let (tx, conn) = http1::handshake(TokioIo::new(s)).await.expect("handshake");
            tokio::spawn(conn);
            tx
        }
        (None, Some(path)) => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .expect("connect");
            let (tx, conn) = http1::handshake(TokioIo::new(s)).await.expect("handshake");
            tokio::spawn(conn);
            tx
        }
        _ => panic!("give --http or --admin"),
    };
    let mut n = 0;
    while Instant::now() < until {
        let (method, path, body) = request(&o, id, n);
        n += 1;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json");
        if o.http.is_some() {
            req = req.header("authorization", format!("Bearer {}", o.token));
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let t = Instant::now();
        match sender.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                let _ = resp.into_body().collect().await;
                if ok {
                    lat.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            Err(_) => {
                errors += 1;
                break;
            }
        }
    }
    (lat, errors)
}

fn main() {
    let o = Arc::new(parse().unwrap_or_else(|e| {
        eprintln!("platform_load: {e}");
        std::process::exit(2)
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(o.seconds);
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..o.clients)
            .map(|i| tokio::spawn(client(Arc::clone(&o), i, until)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    let errors: usize = results.iter().map(|r| r.1).sum();
    let mut lat: Vec<u32> = results.into_iter().flat_map(|r| r.0).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        r#"{{"door":"{}","op":"{}","clients":{},"requests_per_s":{:.1},"p50_us":{},"p99_us":{},"errors":{}}}"#,
        if o.http.is_some() { "http" } else { "admin" },
        if o.put { "put" } else { "get" },
        o.clients,
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        errors
    );
}
