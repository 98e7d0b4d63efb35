//! The settings page in a real headless Chromium (Debian's `chromium` + `chromedriver`, installed
//! by `scripts/browser.sh`), driven over WebDriver (fantoccini) against the real daemon's
//! `--http`: mona signs in with a pasted token, walks New secret / Add secret, Update / "enter a
//! new value" / repository checkboxes / Save changes, Delete with its warning, the registry
//! credentials form, signs out; a repository admin adds a repository secret and sees "1 running
//! sandbox sees it"; then the real `sandbox-init` (as a subreaper) runs a child in mona's
//! sandbox, which sees exactly the secrets the page set. Security: another user's session, CSRF
//! missing, session fixation, `<script>` in values, no value in any page source or the
//! trace-level log. A screenshot of each step is written under `target/browser-shots/` when the
//! test fails.

#![cfg(feature = "broker")]

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use support::daemon::{run, tcp_http, Daemon};

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");

/// Values typed into the page: quotes, a script tag, a newline, non-ASCII.
const V1: &str = "first <script>alert('pwned')</script> \"q\" ü-Br1";
const V2: &str = "second value\nline two 'single' <b>bold</b>-Br2";
const ELSEWHERE: &str = "elsewhere-only-Br3";
const DROPPED: &str = "dropped-value-Br4";
const REG_PASSWORD: &str = "registry-pw-Br5";
const DB_URL: &str = "postgres://u:p@db/x?a=1&b=2-Br6";
const HUBOT: &str = "hubot-value-Br7";
const ALL: [&str; 7] = [V1, V2, ELSEWHERE, DROPPED, REG_PASSWORD, DB_URL, HUBOT];

/// Why this machine cannot run the test, if it cannot.
fn unavailable() -> Option<String> {
    for bin in ["chromium", "chromedriver"] {
        if Command::new(bin).arg("--version").output().is_err() {
            return Some(format!(
                "{bin} is not installed (scripts/browser.sh installs it)"
            ));
        }
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = free_port();
        // Its own process group: the browsers it starts are killed with it, even when the test
        // panics before closing its session.
        let child = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Screenshots of every step, written out when the test fails (or always for `keep`).
struct Shots {
    taken: Vec<(String, Vec<u8>)>,
    dir: PathBuf,
}

impl Shots {
    fn new() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-shots");
        Shots {
            taken: Vec::new(),
            dir,
        }
    }
    async fn take(&mut self, c: &Client, step: &str) {
        if let Ok(png) = c.screenshot().await {
            self.taken.push((step.to_owned(), png));
        }
    }
    fn write(&self) {
        let _ = std::fs::create_dir_all(&self.dir);
        for (i, (step, png)) in self.taken.iter().enumerate() {
            let _ = std::fs::write(self.dir.join(format!("{i:02}-{step}.png")), png);
        }
    }
}

impl Drop for Shots {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.write();
            eprintln!("screenshots of each step: {}", self.dir.display());
        }
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1100,900",
                     "--password-store=basic", "--no-first-run",
                     "--disable-breakpad", "--disable-crash-reporter"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

/// Page source after a step: it must hold none of the values.
async fn source_clean(c: &Client, step: &str) -> String {
    let src = c.source().await.unwrap();
    for v in ALL {
        assert!(
            !src.contains(v),
            "{step}: the page source holds the value {v:?}"
        );
    }
    for part in ["pwned", "Br1", "Br2", "Br5"] {
        assert!(
            !src.contains(part),
            "{step}: the page source holds {part:?}"
        );
    }
    // No script ran (values are never rendered; a stray alert would be open now).
    assert!(
        c.get_alert_text().await.is_err(),
        "{step}: an alert is open"
    );
    src
}

async fn css(c: &Client, sel: &str) -> fantoccini::elements::Element {
    c.find(Locator::Css(sel))
        .await
        .unwrap_or_else(|e| panic!("no element {sel}: {e}"))
}

async fn type_into(c: &Client, sel: &str, text: &str) {
    css(c, sel).await.send_keys(text).await.unwrap();
}

/// Clicks a checkbox or anything that stays on the page.
async fn tick(c: &Client, sel: &str) {
    css(c, sel).await.click().await.unwrap();
}

/// Clicks a link or a submit button and waits until the next page replaced this one (WebDriver's
/// click does not wait for a navigation).
async fn click(c: &Client, sel: &str) {
    let old = css(c, "html").await;
    css(c, sel).await.click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.tag_name().await.is_ok() {
        assert!(Instant::now() < deadline, "clicking {sel} loaded no page");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new document is there; let it finish loading.
    while c.find(Locator::Css("main")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the page after {sel} has no main"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn notice(c: &Client) -> String {
    css(c, "#notice").await.text().await.unwrap()
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/settings/signin")).await.unwrap();
    type_into(c, "#token", token).await;
    click(c, "#signin").await;
    if path_of(c).await == "/settings/signin" {
        let why = c
            .find(Locator::Css("#error, .error"))
            .await
            .map(|_| ())
            .ok();
        panic!(
            "sign-in failed ({why:?}): {}",
            c.source().await.unwrap_or_default()
        );
    }
}

async fn path_of(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

/// The environment the init's child sees, as name -> value.
fn child_env(socket: &Path, out: &Path) -> BTreeMap<String, String> {
    let envfile = out.join("child.env");
    let docker = out.join("docker");
    let mut cmd = Command::new(INIT);
    cmd.args(["--", "sh", "-c"])
        .arg(format!("env -0 > {}", envfile.display()))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SANDBOX_SECRETS_SOCKET", socket)
        .env("DOCKER_CONFIG", &docker)
        .env("SANDBOX_INIT_LOG", "trace");
    let r = run(cmd, None).ok();
    for v in ALL {
        assert!(!r.stderr().contains(v), "the init's log holds {v:?}");
    }
    let raw = std::fs::read(&envfile).unwrap();
    let config = std::fs::read_to_string(docker.join("config.json")).unwrap();
    assert!(config.contains("ghcr.io"), "{config}");
    raw.split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let e = String::from_utf8(e.to_vec()).unwrap();
            let (k, v) = e.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn mona_walks_every_flow_in_chromium_and_her_sandbox_sees_exactly_that() {
    if let Some(why) = unavailable() {
        support::skip(&why);
        return;
    }
    let mut d = Daemon::unstarted(None);
    d.log_level = "trace";
    d.serve_args = vec!["--http".into(), "127.0.0.1:0".into()];
    d.start().unwrap_or_else(|e| panic!("{e}"));
    let base = d.http_base();
    let token = |args: &[&str]| {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        d.cli(&all, None)
            .ok()
            .stdout()
            .lines()
            .last()
            .unwrap()
            .to_owned()
    };
    let mona = token(&["--user", "mona"]);
    let hubot = token(&["--user", "hubot"]);
    let admin = token(&["--repo-admin", "octo/hello"]);
    let driver = Driver::start(&d.dir.path().join("chromedriver.log"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = tempfile::tempdir().unwrap();

    rt.block_on(async {
        let mut shots = Shots::new();
        let c = browser(&driver).await;

        // --- session fixation: a session id planted before sign-in is never adopted ---
        c.goto(&format!("{base}/settings/signin")).await.unwrap();
        let mut planted = fantoccini::cookies::Cookie::parse(format!(
            "sandbox_session={}; Path=/settings; HttpOnly; SameSite=Strict",
            "f".repeat(64)
        ))
        .unwrap();
        planted.set_domain("127.0.0.1");
        c.add_cookie(planted).await.unwrap();
        shots.take(&c, "signin").await;
        sign_in(&c, &base, &mona).await;
        assert_eq!(path_of(&c).await, "/settings/secrets");
        let session = c.get_named_cookie("sandbox_session").await.unwrap();
        assert_ne!(
            session.value(),
            "f".repeat(64),
            "the planted session id was kept"
        );
        assert_eq!(session.http_only(), Some(true));
        assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
        let planted_cookie = format!("sandbox_session={}", "f".repeat(64));
        let a = tcp_http(
            &base,
            "GET",
            "/settings/secrets",
            &[("cookie", &planted_cookie)],
            b"",
        );
        assert_eq!(
            (a.status, a.header("location")),
            (303, Some("/settings/signin"))
        );
        css(&c, "#empty").await;
        shots.take(&c, "empty-list").await;

        // --- New secret -> Add secret (two repositories typed in) ---
        click(&c, "#new-secret").await;
        assert_eq!(path_of(&c).await, "/settings/secrets/new");
        for label in ["name", "value", "more_repos"] {
            css(&c, &format!("label[for={label}]")).await;
        }
        type_into(&c, "#name", "api_token").await;
        type_into(&c, "#value", V1).await;
        type_into(&c, "#more_repos", "octo/hello, Octo/Other").await;
        shots.take(&c, "new-secret-filled").await;
        click(&c, "#add-secret").await;
        assert_eq!(path_of(&c).await, "/settings/secrets");
        let n = notice(&c).await;
        assert!(n.contains("Secret API_TOKEN created"), "{n}");
        source_clean(&c, "after Add secret").await;
        shots.take(&c, "added").await;

        // Two more, choosing a repository by its (now known) checkbox.
        for (name, value, repo) in [
            ("ELSEWHERE", ELSEWHERE, "octo--other"),
            ("DROPPED", DROPPED, "octo--hello"),
        ] {
            click(&c, "#new-secret").await;
            type_into(&c, "#name", name).await;
            type_into(&c, "#value", value).await;
            let boxes = c.find_all(Locator::Css("input[name=repos]")).await.unwrap();
            assert_eq!(boxes.len(), 2, "both known repositories are offered");
            for b in boxes {
                assert!(
                    !b.is_selected().await.unwrap(),
                    "a new secret starts with none ticked"
                );
            }
            tick(&c, &format!("#repo-{repo}")).await;
            click(&c, "#add-secret").await;
            assert!(notice(&c).await.contains(&format!("Secret {name} created")));
            source_clean(&c, name).await;
        }

        // A refused name: the rule's message, no value echoed, nothing stored.
        click(&c, "#new-secret").await;
        type_into(&c, "#name", "GITHUB_<script>x").await;
        type_into(&c, "#value", V1).await;
        type_into(&c, "#more_repos", "octo/hello").await;
        click(&c, "#add-secret").await;
        let err = css(&c, "#error").await.text().await.unwrap();
        assert!(err.contains("letters, digits and underscores"), "{err}");
        let src = source_clean(&c, "refused name").await;
        assert!(
            !src.contains("<script>x"),
            "the refused name is rendered raw"
        );
        assert_eq!(
            css(&c, "#value")
                .await
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("")
        );
        shots.take(&c, "refused-name").await;

        // --- Update: ticked repositories, "enter a new value", untick one, Save changes ---
        c.goto(&format!("{base}/settings/secrets")).await.unwrap();
        click(&c, "#update-API_TOKEN").await;
        assert!(
            c.find(Locator::Css("#value")).await.is_err(),
            "the value field is closed"
        );
        assert!(css(&c, "#repo-octo--hello")
            .await
            .is_selected()
            .await
            .unwrap());
        assert!(css(&c, "#repo-octo--other")
            .await
            .is_selected()
            .await
            .unwrap());
        shots.take(&c, "update").await;
        click(&c, "#enter-new-value").await;
        assert_eq!(
            css(&c, "#value")
                .await
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("")
        );
        assert!(css(&c, "#repo-octo--other")
            .await
            .is_selected()
            .await
            .unwrap());
        type_into(&c, "#value", V2).await;
        tick(&c, "#repo-octo--other").await;
        shots.take(&c, "update-filled").await;
        click(&c, "#save-changes").await;
        let n = notice(&c).await;
        assert!(n.contains("Secret API_TOKEN updated"), "{n}");
        source_clean(&c, "after Save changes").await;
        let row = css(&c, "#row-API_TOKEN").await.text().await.unwrap();
        assert!(
            row.contains("octo/hello") && !row.contains("octo/other"),
            "{row}"
        );

        // --- Registry credentials: three secrets from one form ---
        click(&c, "#new-registry").await;
        type_into(&c, "#id", "ghcr").await;
        type_into(&c, "#server", "https://GHCR.io/").await;
        type_into(&c, "#username", "mona").await;
        type_into(&c, "#password", REG_PASSWORD).await;
        tick(&c, "#repo-octo--hello").await;
        shots.take(&c, "registry").await;
        click(&c, "#add-registry").await;
        let n = notice(&c).await;
        assert!(
            n.contains("Registry credentials GHCR saved (3 secrets)"),
            "{n}"
        );
        for part in ["SERVER", "USER", "PASSWORD"] {
            css(&c, &format!("#row-GHCR_CONTAINER_REGISTRY_{part}")).await;
        }
        source_clean(&c, "after registry").await;

        // --- Delete: the warning, then confirm ---
        click(&c, "#delete-DROPPED").await;
        let warning = css(&c, "#warning").await.text().await.unwrap();
        assert!(
            warning.contains("Are you sure you want to delete DROPPED"),
            "{warning}"
        );
        shots.take(&c, "delete-warning").await;
        click(&c, "#confirm-delete").await;
        assert!(notice(&c).await.contains("Secret DROPPED deleted"));
        assert!(c.find(Locator::Css("#row-DROPPED")).await.is_err());
        shots.take(&c, "after-delete").await;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-shots");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join("settings-secrets.png"),
            c.screenshot().await.unwrap(),
        );

        // --- CSRF: the same session without the form's token is refused, nothing changes ---
        let session = c.get_named_cookie("sandbox_session").await.unwrap();
        let cookie = format!("sandbox_session={}", session.value());
        for (path, form) in [
            (
                "/settings/secrets/new",
                "name=CSRF_X&value=v&more_repos=octo%2Fhello".to_owned(),
            ),
            ("/settings/secrets/API_TOKEN/delete", String::new()),
            (
                "/settings/secrets/API_TOKEN/edit",
                format!("csrf={}&value=v", "0".repeat(64)),
            ),
        ] {
            let a = tcp_http(
                &base,
                "POST",
                path,
                &[
                    ("cookie", &cookie),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                form.as_bytes(),
            );
            assert_eq!(a.status, 403, "{path}: {}", a.body);
            assert!(a.body.contains("CSRF"), "{}", a.body);
        }
        // Every page carries the strict policy and no-store.
        let a = tcp_http(
            &base,
            "GET",
            "/settings/secrets/new",
            &[("cookie", &cookie)],
            b"",
        );
        assert_eq!(a.status, 200);
        let csp = a.header("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("script"),
            "{csp}"
        );
        assert_eq!(a.header("cache-control"), Some("no-store"));
        assert!(!a.body.contains("<script"), "the page has a script");

        // --- sign out: the session dies ---
        click(&c, "#signout").await;
        assert_eq!(path_of(&c).await, "/settings/signin");
        let a = tcp_http(
            &base,
            "GET",
            "/settings/secrets",
            &[("cookie", &cookie)],
            b"",
        );
        assert_eq!(a.status, 303, "a signed-out session still works");

        // --- another user's session sees nothing of mona's ---
        sign_in(&c, &base, &hubot).await;
        css(&c, "#empty").await;
        for path in [
            "/settings/secrets/API_TOKEN/edit",
            "/settings/secrets/API_TOKEN/delete",
            "/settings/repositories/octo/hello/secrets",
        ] {
            c.goto(&format!("{base}{path}")).await.unwrap();
            let h1 = css(&c, "h1").await.text().await.unwrap();
            assert_eq!(h1, "Not found", "hubot reached {path}");
        }
        // hubot's own secret, with the same name as mona's.
        c.goto(&format!("{base}/settings/secrets/new"))
            .await
            .unwrap();
        type_into(&c, "#name", "API_TOKEN").await;
        type_into(&c, "#value", HUBOT).await;
        type_into(&c, "#more_repos", "octo/hello").await;
        click(&c, "#add-secret").await;
        assert!(notice(&c).await.contains("created"));
        // hubot's session cannot delete mona's secret even with its own valid CSRF token.
        let hs = c.get_named_cookie("sandbox_session").await.unwrap();
        c.goto(&format!("{base}/settings/secrets/new"))
            .await
            .unwrap();
        let csrf = css(&c, "input[name=csrf]")
            .await
            .attr("value")
            .await
            .unwrap()
            .unwrap();
        let a = tcp_http(
            &base,
            "POST",
            "/settings/repositories/octo/hello/secrets/DB_URL/delete",
            &[
                ("cookie", &format!("sandbox_session={}", hs.value())),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            format!("csrf={csrf}").as_bytes(),
        );
        assert_eq!(a.status, 404, "{}", a.body);
        click(&c, "#signout").await;

        // --- mona's sandbox exists now; the repository admin's change reaches it ---
        let (_, sandbox_dir) = d.sandbox("mona", "octo/hello");
        sign_in(&c, &base, &admin).await;
        assert_eq!(
            path_of(&c).await,
            "/settings/repositories/octo/hello/secrets"
        );
        click(&c, "#new-secret").await;
        assert!(c.find(Locator::Css("#repository-access")).await.is_err());
        type_into(&c, "#name", "DB_URL").await;
        type_into(&c, "#value", DB_URL).await;
        click(&c, "#add-secret").await;
        let n = notice(&c).await;
        assert!(
            n.contains("Secret DB_URL created") && n.contains("1 running sandbox sees it"),
            "{n}"
        );
        source_clean(&c, "repository page").await;
        shots.take(&c, "repository-secret").await;
        c.goto(&format!("{base}/settings/secrets")).await.unwrap();
        assert_eq!(css(&c, "h1").await.text().await.unwrap(), "Not found");
        c.goto(&format!("{base}/settings/repositories/octo/hello/secrets"))
            .await
            .unwrap();
        click(&c, "#signout").await;
        c.close().await.unwrap();
        let _ = &shots;

        // --- the real init's child sees exactly what the page set ---
        let env = child_env(&sandbox_dir.join("secrets.sock"), out.path());
        let mut secrets: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in &env {
            if ![
                "PATH",
                "PWD",
                "SHLVL",
                "_",
                "DOCKER_CONFIG",
                "SANDBOX_SECRETS_SOCKET",
                "SANDBOX_INIT_LOG",
            ]
            .contains(&k.as_str())
            {
                secrets.insert(k, v);
            }
        }
        let want: BTreeMap<&str, &str> = [
            ("API_TOKEN", V2),
            ("DB_URL", DB_URL),
            ("GHCR_CONTAINER_REGISTRY_PASSWORD", REG_PASSWORD),
            ("GHCR_CONTAINER_REGISTRY_SERVER", "https://GHCR.io/"),
            ("GHCR_CONTAINER_REGISTRY_USER", "mona"),
        ]
        .into_iter()
        .collect();
        assert_eq!(secrets, want, "the child's environment");
    });

    // Nothing typed into the page reached the daemon's trace-level log; no token either.
    let log = d.log_text();
    for v in ALL
        .iter()
        .copied()
        .chain([mona.as_str(), hubot.as_str(), admin.as_str()])
    {
        assert!(!log.contains(v), "the daemon's log holds {v:?}");
    }
    for part in ["pwned", "Br1", "Br2", "Br5"] {
        assert!(!log.contains(part), "the daemon's log holds {part:?}");
    }
}
