//! Load generator for a sandbox socket: N concurrent clients send `GET /v1/secrets` for D seconds,
//! each request on a new connection (`--new-conn`, what an init does) or over one keep-alive
//! connection per client, and one line of JSON is printed: requests/s, p50/p99 latency.
//! It checks each answer is 200 and counts anything else as an error; it never prints a body.
//! With `--create USER:REPO` it sends `POST /v1/admin/sandboxes/create` to the admin socket
//! instead (sandbox creation throughput; every request creates a sandbox).
//! `--count N` stops after N answered requests (e.g. create exactly N sandboxes; `--seconds`
//! then only caps the run, one hour unless given). `--spread DIR` sends each fetch to the next
//! sandbox socket under DIR (`<run dir>/sandboxes`) in turn instead of to `--socket`, as a host
//! full of starting sandboxes does.
//!
//! `cargo run --release --example loadgen -- --socket S [--clients N] [--seconds D]
//!  [--threads T] [--new-conn | --keep-alive] [--create USER:REPO] [--count N] [--spread DIR]`

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

struct Options {
    socket: PathBuf,
    clients: usize,
    seconds: f64,
    threads: usize,
    new_conn: bool,
    /// JSON body of a create request, when measuring creates.
    create: Option<Arc<str>>,
    /// Answered requests after which the run stops.
    count: Option<usize>,
    /// Directory of sandbox directories whose sockets take turns.
    spread: Option<PathBuf>,
}

fn parse() -> Result<Options, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Options {
        socket: PathBuf::new(),
        clients: 16,
        seconds: 5.0,
        threads: 2,
        new_conn: true,
        create: None,
        count: None,
        spread: None,
    };
    let mut seconds_given = false;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("socket") => o.socket = parser.value()?.into(),
            Long("clients") | Short('c') => o.clients = parser.value()?.parse()?,
            Long("seconds") | Short('d') => {
                o.seconds = parser.value()?.parse()?;
                seconds_given = true;
            }
            Long("count") | Short('n') => o.count = Some(parser.value()?.parse()?),
            Long("spread") => o.spread = Some(parser.value()?.into()),
            Long("threads") | Short('t') => o.threads = parser.value()?.parse()?,
            Long("new-conn") => o.new_conn = true,
            Long("keep-alive") => o.new_conn = false,
            Long("create") => {
                let v: String = parser.value()?.parse()?;
                let Some((user, repo)) = v.split_once(':') else {
                    return Err("--create takes USER:REPO".into());
                };
                let body = serde_json::json!({ "user": user, "repo": repo }).to_string();
                o.create = Some(Arc::from(body));
            }
            Long("help") | Short('h') => {
                println!("loadgen --socket S [--clients N] [--seconds D] [--threads T] [--new-conn | --keep-alive] [--create USER:REPO] [--count N] [--spread DIR]");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    if o.socket.as_os_str().is_empty() && o.spread.is_none() {
        return Err("--socket or --spread is required".into());
    }
    if o.count.is_some() && !seconds_given {
        o.seconds = 3600.0;
    }
    Ok(o)
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(socket: &PathBuf) -> Result<Sender, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one(sender: &mut Sender, create: Option<&str>) -> Result<(), String> {
    let request = match create {
        None => hyper::Request::get("/v1/secrets")
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(Bytes::new())),
        Some(body) => hyper::Request::post("/v1/admin/sandboxes/create")
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes()))),
    }
    .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let ok = response.status() == hyper::StatusCode::OK;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    drop(body);
    if ok {
        Ok(())
    } else {
        Err("status".into())
    }
}

/// What every client shares: the sockets taking turns, and the requests left to answer.
struct Plan {
    targets: Vec<PathBuf>,
    next: AtomicUsize,
    /// Requests still to answer (`--count`); `usize::MAX` without a count.
    left: AtomicUsize,
}

impl Plan {
    fn target(&self) -> &PathBuf {
        &self.targets[self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len()]
    }
    /// Takes one request from the budget; false once it is spent.
    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
    /// Gives back the request a failure did not use.
    fn give_back(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }
}

/// The sandbox sockets under `dir` (each `<dir>/<id>/secrets.sock`), in a fixed order.
fn sandbox_sockets(dir: &PathBuf) -> Result<Vec<PathBuf>, String> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join("secrets.sock"))
        .collect();
    all.sort();
    if all.is_empty() {
        return Err(format!("no sandbox directory under {}", dir.display()));
    }
    Ok(all)
}

async fn client(
    plan: Arc<Plan>,
    until: Instant,
    new_conn: bool,
    create: Option<Arc<str>>,
) -> Tally {
    let mut tally = Tally::default();
    let mut kept: Option<Sender> = None;
    while Instant::now() < until && plan.take() {
        let start = Instant::now();
        let result = async {
            if new_conn || kept.is_none() {
                kept = Some(connect(plan.target()).await?);
            }
            let sender = kept.as_mut().expect("connected above");
            sender.ready().await.map_err(|e| e.to_string())?;
            one(sender, create.as_deref()).await
        }
        .await;
        match result {
            Ok(()) => tally
                .latencies_us
                .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Err(_) => {
                tally.errors += 1;
                kept = None;
                plan.give_back();
            }
        }
        if new_conn {
            kept = None;
        }
    }
    tally
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let targets = match &o.spread {
        Some(dir) => match sandbox_sockets(dir) {
            Ok(all) => all,
            Err(e) => {
                eprintln!("loadgen: {e}");
                std::process::exit(2);
            }
        },
        None => vec![o.socket.clone()],
    };
    // Turns between sockets only make sense with a connection per request.
    let new_conn = o.new_conn || o.spread.is_some();
    let plan = Arc::new(Plan {
        targets,
        next: AtomicUsize::new(0),
        left: AtomicUsize::new(o.count.unwrap_or(usize::MAX)),
    });
    let threads = o.threads.max(1);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(o.seconds);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let plan = Arc::clone(&plan);
            let clients = o.clients / threads + usize::from(t < o.clients % threads);
            let create = o.create.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..clients)
                        .map(|_| {
                            tokio::spawn(client(Arc::clone(&plan), until, new_conn, create.clone()))
                        })
                        .collect();
                    let mut all = Tally::default();
                    for t in tasks {
                        if let Ok(t) = t.await {
                            all.latencies_us.extend(t.latencies_us);
                            all.errors += t.errors;
                        }
                    }
                    all
                })
            })
        })
        .collect();
    let mut all = Tally::default();
    for h in handles {
        if let Ok(t) = h.join() {
            all.latencies_us.extend(t.latencies_us);
            all.errors += t.errors;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.latencies_us.is_empty() {
            return 0;
        }
        let i = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        all.latencies_us[i]
    };
    let ok = all.latencies_us.len();
    println!(
        "{}",
        serde_json::json!({
            "mode": match (&o.create, new_conn) {
                (Some(_), _) => "create",
                (None, true) => "new-conn",
                (None, false) => "keep-alive",
            },
            "sockets": plan.targets.len(),
            "clients": o.clients,
            "threads": threads,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "requests": ok,
            "errors": all.errors,
            "requests_per_s": (ok as f64 / elapsed).round(),
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
        })
    );
    if ok == 0 {
        std::process::exit(1);
    }
}
