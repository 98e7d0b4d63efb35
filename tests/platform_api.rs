//! The platform API (`serve --http`) against the real daemon on 127.0.0.1:<free port>: every
//! route, each token scope (another user's token gets the very 404 a missing secret gets), the
//! rules as `{"error","rule"}` with the names the CLI prints, authentication (missing, unknown,
//! revoked, expired, rate-limited), the OpenAPI document against the routes that answer, and no
//! value in any answer or in the daemon's trace-level log.

#![cfg(feature = "broker")]

mod support;

use support::daemon::{served, tcp_http, Daemon, HttpAnswer};

/// A daemon logging at trace with the platform API on a free port of 127.0.0.1.
fn daemon() -> (Daemon, String) {
    let mut d = Daemon::unstarted(None);
    d.log_level = "trace";
    d.serve_args = vec!["--http".into(), "127.0.0.1:0".into()];
    d.start().unwrap_or_else(|e| panic!("{e}"));
    let base = d.http_base();
    (d, base)
}

/// `token create ARGS`: the token (last line of stdout).
fn token(d: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let out = d.cli(&all, None).ok();
    let stdout = out.stdout();
    let last = stdout.lines().last().unwrap().to_owned();
    assert!(
        last.starts_with("sst_") && last.len() > 40,
        "{}",
        out.explain()
    );
    last
}

/// Every answer a test got, to grep for values at the end.
#[derive(Default)]
struct Client {
    base: String,
    seen: std::cell::RefCell<String>,
}

impl Client {
    fn call(&self, token: &str, method: &str, path: &str, body: &str) -> HttpAnswer {
        let auth = format!("Bearer {token}");
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth.as_str())]
        };
        let a = tcp_http(&self.base, method, path, &headers, body.as_bytes());
        self.seen.borrow_mut().push_str(&format!(
            "{method} {path} -> {} {:?} {}\n",
            a.status, a.headers, a.body
        ));
        a
    }
    #[track_caller]
    fn expect(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
        status: u16,
    ) -> serde_json::Value {
        let a = self.call(token, method, path, body);
        assert_eq!(a.status, status, "{method} {path}: {}", a.body);
        assert_eq!(
            a.header("content-type"),
            Some("application/json"),
            "{method} {path}"
        );
        assert_eq!(
            a.header("cache-control"),
            Some("no-store"),
            "{method} {path}"
        );
        a.json()
    }
    /// A refusal: its status and rule, and a message that is not empty.
    #[track_caller]
    fn refused(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
        status: u16,
        rule: &str,
    ) -> String {
        let v = self.expect(token, method, path, body, status);
        assert_eq!(v["rule"], rule, "{method} {path}: {v}");
        let msg = v["error"].as_str().unwrap().to_owned();
        assert!(!msg.is_empty());
        msg
    }
}

const V1: &str = "v1-value-<script>alert('x')</script>\"q\"-Zq81";
const V2: &str = "v2-value-multi\nline-Zq82";
const V3: &str = "v3-repo-value-Zq83";
const HUBOT_V: &str = "hubot-own-value-Zq84";

#[test]
fn every_route_with_its_scopes_and_no_value_out() {
    let (d, base) = daemon();
    let c = Client {
        base,
        ..Default::default()
    };
    let platform = token(&d, &["--platform"]);
    let mona = token(&d, &["--user", "mona", "--expires", "1h"]);
    let hubot = token(&d, &["--user", "hubot"]);
    let admin = token(&d, &["--repo-admin", "octo/hello"]);

    // --- user secrets, as mona ---
    let body = format!(
        r#"{{"value":{},"repositories":["octo/hello","Octo/Other"]}}"#,
        serde_json::to_string(V1).unwrap()
    );
    let v = c.expect(&mona, "PUT", "/v1/users/mona/secrets/api_token", &body, 201);
    assert_eq!(v["name"], "API_TOKEN");
    assert_eq!(v["result"], "created");
    let v = c.expect(&mona, "GET", "/v1/users/mona/secrets", "", 200);
    assert_eq!(v["total_count"], 1);
    assert_eq!(v["secrets"][0]["name"], "API_TOKEN");
    assert_eq!(
        v["secrets"][0]["repositories"],
        serde_json::json!(["octo/hello", "octo/other"])
    );
    let v = c.expect(&mona, "GET", "/v1/users/mona/secrets/API_TOKEN", "", 200);
    assert!(v["updated_at"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(v.get("value").is_none(), "{v}");
    let v = c.expect(
        &mona,
        "GET",
        "/v1/users/mona/secrets/API_TOKEN/repositories",
        "",
        200,
    );
    assert_eq!(v["total_count"], 2);
    assert_eq!(v["repositories"][1]["full_name"], "octo/other");
    // Replace the list, add one, remove one.
    c.expect(
        &mona,
        "PUT",
        "/v1/users/mona/secrets/API_TOKEN/repositories",
        r#"{"repositories":["octo/other"]}"#,
        200,
    );
    let v = c.expect(
        &mona,
        "PUT",
        "/v1/users/mona/secrets/API_TOKEN/repositories/octo/hello",
        "",
        200,
    );
    assert_eq!(v["result"], "access");
    c.expect(
        &mona,
        "DELETE",
        "/v1/users/mona/secrets/API_TOKEN/repositories/octo/other",
        "",
        200,
    );
    let v = c.expect(
        &mona,
        "GET",
        "/v1/users/mona/secrets/API_TOKEN/repositories",
        "",
        200,
    );
    assert_eq!(
        v["repositories"],
        serde_json::json!([{"full_name": "octo/hello"}])
    );
    // A sandbox of mona on octo/hello sees the value; an update of the value alone keeps the list.
    let v = c.expect(
        &platform,
        "POST",
        "/v1/sandboxes",
        r#"{"user":"mona","repo":"octo/hello"}"#,
        201,
    );
    let id = v["id"].as_str().unwrap().to_owned();
    let dir = std::path::PathBuf::from(v["dir"].as_str().unwrap());
    assert_eq!(served(&dir), vec![("API_TOKEN".to_owned(), V1.to_owned())]);
    let body = format!(r#"{{"value":{}}}"#, serde_json::to_string(V2).unwrap());
    let v = c.expect(&mona, "PUT", "/v1/users/mona/secrets/API_TOKEN", &body, 200);
    assert_eq!(v["result"], "updated");
    assert_eq!(
        v["sandboxes"], 1,
        "the change notice counts the live sandbox: {v}"
    );
    assert_eq!(served(&dir), vec![("API_TOKEN".to_owned(), V2.to_owned())]);
    // `value` omitted: repositories only.
    let v = c.expect(
        &mona,
        "PUT",
        "/v1/users/mona/secrets/API_TOKEN",
        r#"{"repositories":["octo/hello","a/b"]}"#,
        200,
    );
    assert_eq!(v["result"], "access");
    assert_eq!(served(&dir), vec![("API_TOKEN".to_owned(), V2.to_owned())]);

    // --- another user's token: the 404 of a missing secret, byte for byte ---
    let body = format!(r#"{{"value":"{HUBOT_V}","repositories":["octo/hello"]}}"#);
    c.expect(
        &hubot,
        "PUT",
        "/v1/users/hubot/secrets/HUBOT_ONLY",
        &body,
        201,
    );
    for (method, path, body) in [
        ("GET", "/v1/users/mona/secrets/API_TOKEN", ""),
        ("DELETE", "/v1/users/mona/secrets/API_TOKEN", ""),
        ("GET", "/v1/users/mona/secrets/API_TOKEN/repositories", ""),
        (
            "PUT",
            "/v1/users/mona/secrets/API_TOKEN/repositories",
            r#"{"repositories":[]}"#,
        ),
        (
            "PUT",
            "/v1/users/mona/secrets/API_TOKEN/repositories/octo/x",
            "",
        ),
        (
            "DELETE",
            "/v1/users/mona/secrets/API_TOKEN/repositories/octo/hello",
            "",
        ),
    ] {
        let real = c.call(&hubot, method, path, body);
        let missing_path = path.replace("API_TOKEN", "NO_SUCH_ONE");
        let missing = c.call(&mona, method, &missing_path, body);
        assert_eq!(real.status, 404, "{method} {path}: {}", real.body);
        assert_eq!(
            missing.status, 404,
            "{method} {missing_path}: {}",
            missing.body
        );
        assert_eq!(
            real.body.replace("API_TOKEN", "X"),
            missing.body.replace("NO_SUCH_ONE", "X"),
            "{method} {path}: another user's secret answers like a missing one"
        );
    }
    let msg = c.refused(
        &hubot,
        "PUT",
        "/v1/users/mona/secrets/API_TOKEN",
        r#"{"value":"stolen-Zq85"}"#,
        404,
        "not-found",
    );
    assert_eq!(msg, "no user secret API_TOKEN for mona");
    c.refused(
        &hubot,
        "GET",
        "/v1/users/mona/secrets",
        "",
        404,
        "not-found",
    );
    c.refused(
        &mona,
        "GET",
        "/v1/users/hubot/secrets",
        "",
        404,
        "not-found",
    );
    c.refused(
        &mona,
        "GET",
        "/v1/plan?user=hubot&repo=octo/hello",
        "",
        404,
        "not-found",
    );
    c.refused(
        &admin,
        "GET",
        "/v1/users/mona/secrets",
        "",
        404,
        "not-found",
    );
    c.refused(
        &mona,
        "GET",
        "/v1/repos/octo/hello/secrets",
        "",
        404,
        "not-found",
    );
    // Nothing of mona's changed.
    assert_eq!(served(&dir), vec![("API_TOKEN".to_owned(), V2.to_owned())]);

    // --- repository secrets, as the repository's admin ---
    let body = format!(r#"{{"value":"{V3}"}}"#);
    let v = c.expect(
        &admin,
        "PUT",
        "/v1/repos/octo/hello/secrets/DB_URL",
        &body,
        201,
    );
    assert_eq!(v["sandboxes"], 1);
    c.expect(
        &admin,
        "PUT",
        "/v1/repos/octo/hello/secrets/DB_URL",
        &body,
        200,
    );
    let v = c.expect(&admin, "GET", "/v1/repos/octo/hello/secrets", "", 200);
    assert_eq!(v["secrets"][0]["name"], "DB_URL");
    assert!(v["secrets"][0].get("repositories").is_none(), "{v}");
    c.expect(
        &admin,
        "GET",
        "/v1/repos/Octo/Hello/secrets/db_url",
        "",
        200,
    );
    let other = c.call(&admin, "GET", "/v1/repos/octo/other/secrets/DB_URL", "");
    let missing = c.call(&platform, "GET", "/v1/repos/octo/other/secrets/DB_URL", "");
    assert_eq!((other.status, &other.body), (missing.status, &missing.body));
    c.refused(
        &admin,
        "PUT",
        "/v1/repos/octo/other/secrets/X",
        &body,
        404,
        "not-found",
    );
    let mut got = served(&dir);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("API_TOKEN".to_owned(), V2.to_owned()),
            ("DB_URL".to_owned(), V3.to_owned())
        ]
    );

    // --- plan and sandboxes ---
    let v = c.expect(&mona, "GET", "/v1/plan?user=mona&repo=octo/hello", "", 200);
    let names: Vec<_> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, vec!["API_TOKEN", "DB_URL"]);
    assert_eq!(v["secrets"][1]["from"], "repository");
    let v = c.expect(&platform, "GET", "/v1/sandboxes", "", 200);
    assert_eq!(v["total_count"], 1);
    assert_eq!(v["sandboxes"][0]["id"], id.as_str());
    for t in [&mona, &admin] {
        c.refused(t, "GET", "/v1/sandboxes", "", 403, "token-scope");
        c.refused(
            t,
            "POST",
            "/v1/sandboxes",
            r#"{"user":"mona","repo":"octo/hello"}"#,
            403,
            "token-scope",
        );
        c.refused(
            t,
            "DELETE",
            &format!("/v1/sandboxes/{id}"),
            "",
            403,
            "token-scope",
        );
    }
    c.refused(
        &platform,
        "DELETE",
        "/v1/sandboxes/nothex",
        "",
        400,
        "sandbox-id",
    );
    c.expect(&platform, "DELETE", &format!("/v1/sandboxes/{id}"), "", 200);
    c.refused(
        &platform,
        "DELETE",
        &format!("/v1/sandboxes/{id}"),
        "",
        404,
        "not-found",
    );

    // --- deletes ---
    c.expect(
        &admin,
        "DELETE",
        "/v1/repos/octo/hello/secrets/DB_URL",
        "",
        200,
    );
    c.refused(
        &admin,
        "GET",
        "/v1/repos/octo/hello/secrets/DB_URL",
        "",
        404,
        "not-found",
    );
    let v = c.expect(&mona, "DELETE", "/v1/users/mona/secrets/API_TOKEN", "", 200);
    assert_eq!(v["result"], "deleted");
    c.refused(
        &mona,
        "GET",
        "/v1/users/mona/secrets/API_TOKEN",
        "",
        404,
        "not-found",
    );

    // No value in any answer, header or the daemon's trace-level log; no token in the log.
    let seen = c.seen.borrow().clone();
    for v in [V1, V2, V3, HUBOT_V, "stolen-Zq85", "Zq8"] {
        assert!(!seen.contains(v), "an answer holds {v:?}:\n{seen}");
    }
    let log = d.log_text();
    for v in [
        V1,
        V2,
        V3,
        HUBOT_V,
        "stolen-Zq85",
        "Zq8",
        "<script>",
        &platform,
        &mona,
        &hubot,
        &admin,
    ] {
        assert!(!log.contains(v), "the trace log holds {v:?}");
    }
    assert!(
        log.contains("audit=\"api\""),
        "api changes are audited:\n{log}"
    );
}

#[test]
fn rules_answer_with_the_names_the_cli_prints() {
    let (d, base) = daemon();
    let c = Client {
        base,
        ..Default::default()
    };
    let t = token(&d, &["--platform"]);
    let user = |name: &str, body: &str, status, rule| {
        c.refused(
            &t,
            "PUT",
            &format!("/v1/users/mona/secrets/{name}"),
            body,
            status,
            rule,
        )
    };
    user(
        "GITHUB_TOKEN",
        r#"{"value":"x","repositories":["o/r"]}"#,
        400,
        "name-reserved-github",
    );
    user(
        "SANDBOX_X",
        r#"{"value":"x","repositories":["o/r"]}"#,
        400,
        "name-reserved-sandbox",
    );
    user(
        "1ABC",
        r#"{"value":"x","repositories":["o/r"]}"#,
        400,
        "name-leading-digit",
    );
    user(
        "BAD-NAME",
        r#"{"value":"x","repositories":["o/r"]}"#,
        400,
        "name-characters",
    );
    user(
        "LD_PRELOAD",
        r#"{"value":"x","repositories":["o/r"]}"#,
        400,
        "name-dangerous",
    );
    user("NEW_ONE", r#"{"value":"x"}"#, 400, "repositories-required");
    user(
        "OK_NAME",
        r#"{"value":"x","repositories":["no-slash"]}"#,
        400,
        "repository-name",
    );
    user("OK_NAME", r#"{"value":""}"#, 400, "value-empty");
    user(
        "OK_NAME",
        r#"{"value":"a\u0000b","repositories":["o/r"]}"#,
        400,
        "value-nul",
    );
    user("OK_NAME", r#"{}"#, 400, "request-body");
    user(
        "OK_NAME",
        r#"{"value":"unterminated-Zq86"#,
        400,
        "request-body",
    );
    let big = format!(
        r#"{{"value":"{}","repositories":["o/r"]}}"#,
        "x".repeat(48 * 1024 + 1)
    );
    user("BIG", &big, 400, "value-size");
    c.refused(
        &t,
        "PUT",
        "/v1/users/-bad-/secrets/X",
        r#"{"value":"x"}"#,
        400,
        "user-name",
    );
    c.refused(&t, "GET", "/v1/nope", "", 404, "not-found");
    c.refused(&t, "GET", "/v1/users/%FF%FE/secrets", "", 400, "request");
    let huge = format!(r#"{{"value":"{}"}}"#, "z".repeat(400 * 1024));
    c.refused(
        &t,
        "PUT",
        "/v1/repos/o/r/secrets/HUGE",
        &huge,
        413,
        "request-size",
    );
    c.refused(&t, "PATCH", "/v1/users/mona/secrets", "", 405, "method");
    let a = c.call(&t, "POST", "/v1/users/mona/secrets/X", "");
    assert_eq!(a.header("allow"), Some("DELETE, GET, PUT"), "{a:?}");
    let at_limit = format!(
        r#"{{"value":"{}","repositories":["o/r"]}}"#,
        "y".repeat(48 * 1024)
    );
    c.expect(&t, "PUT", "/v1/users/mona/secrets/AT_LIMIT", &at_limit, 201);
    // 100 per scope.
    for i in 1..100 {
        c.expect(
            &t,
            "PUT",
            &format!("/v1/repos/o/r/secrets/S{i}"),
            r#"{"value":"v"}"#,
            201,
        );
    }
    c.expect(
        &t,
        "PUT",
        "/v1/repos/o/r/secrets/S100",
        r#"{"value":"v"}"#,
        201,
    );
    c.refused(
        &t,
        "PUT",
        "/v1/repos/o/r/secrets/S101",
        r#"{"value":"v"}"#,
        409,
        "secrets-per-scope",
    );
    c.expect(
        &t,
        "PUT",
        "/v1/repos/o/r/secrets/S100",
        r#"{"value":"w"}"#,
        200,
    );
    c.refused(
        &t,
        "PUT",
        "/v1/repos/o/r/secrets/S1",
        r#"{"value":"w","repositories":["a/b"]}"#,
        400,
        "repositories-on-repository-secret",
    );
    // The CLI names the same rules.
    d.cli(&["set", "GITHUB_TOKEN", "--repo", "o/r"], Some(b"x"))
        .fails_with("(rule: name-reserved-github)");
    d.cli(&["set", "S101", "--repo", "o/r"], Some(b"x"))
        .fails_with("(rule: secrets-per-scope)");
    d.cli(&["set", "NEW_ONE", "--user", "mona"], Some(b"x"))
        .fails_with("(rule: repositories-required)");
    assert!(!c.seen.borrow().contains("Zq86"));
    assert!(!d.log_text().contains("Zq86"));
}

#[test]
fn tokens_authenticate_until_revoked_or_expired_and_failures_are_rate_limited() {
    let (d, base) = daemon();
    let c = Client {
        base,
        ..Default::default()
    };
    let path = "/v1/users/mona/secrets";
    let a = c.call("", "GET", path, "");
    assert_eq!(a.status, 401);
    assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(a.json()["rule"], "token");
    let t = token(&d, &["--user", "mona"]);
    c.expect(&t, "GET", path, "", 200);
    // Revoked: the next request fails.
    let list = d.cli(&["token", "list", "--json"], None).ok().stdout();
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(!list.contains(&t) && !list.contains("hash"), "{list}");
    let id = v["tokens"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["tokens"][0]["scope"], "user:mona");
    let out = d.cli(&["token", "revoke", &id], None).ok();
    assert!(out.stdout().contains(&id));
    c.refused(&t, "GET", path, "", 401, "token");
    d.cli(&["token", "revoke", &id], None)
        .fails_with("(rule: not-found)");
    d.cli(&["token", "revoke", "../x"], None)
        .fails_with("(rule: token-id)");
    // Scope and expiry are checked where the token is made.
    d.cli(&["token", "create", "--user", "mona", "--platform"], None)
        .fails_with("cannot be used with");
    d.cli(
        &["token", "create", "--platform", "--expires", "400d"],
        None,
    )
    .fails_with("(rule: token-expiry)");
    d.cli(&["token", "create", "--repo-admin", "bad"], None)
        .fails_with("(rule: repository-name)");
    // Expired.
    let short = token(&d, &["--user", "mona", "--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let msg = c.refused(&short, "GET", path, "", 401, "token");
    assert!(msg.contains("expired"), "{msg}");
    // Tokens survive a restart (stored as hashes, sealed); a restart loses no revocation.
    let kept = token(&d, &["--platform"]);
    let mut d = d;
    d.stop();
    d.start().unwrap();
    let c = Client {
        base: d.http_base(),
        ..Default::default()
    };
    c.expect(&kept, "GET", path, "", 200);
    c.refused(&t, "GET", path, "", 401, "token");
    let db = std::fs::read(d.state.join("secrets.db")).unwrap();
    assert!(
        !db.windows(kept.len()).any(|w| w == kept.as_bytes()),
        "the token is stored"
    );
    // Failed authentications: after 10 from one address (the revoked token above was one), even
    // a good token waits.
    for i in 0..9 {
        let a = c.call(&format!("sst_wrong{i}"), "GET", path, "");
        assert_eq!(a.status, 401, "{}", a.body);
    }
    let a = c.call(&kept, "GET", path, "");
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.json()["rule"], "auth-rate");
    assert!(a.header("retry-after").is_some());
    assert!(
        !d.log_text().contains("sst_wrong"),
        "a presented token is logged"
    );
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_that_answer() {
    let (d, base) = daemon();
    let c = Client {
        base,
        ..Default::default()
    };
    let t = token(&d, &["--platform"]);
    c.refused("", "GET", "/v1/openapi.json", "", 401, "token");
    let doc = c.expect(&t, "GET", "/v1/openapi.json", "", 200);
    assert_eq!(doc["openapi"].as_str().unwrap().chars().next(), Some('3'));
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = Vec::new();
    for (path, item) in paths {
        let concrete = path
            .replace("{user}", "mona")
            .replace("{owner}", "octo")
            .replace("{repo}", "hello")
            .replace("{name}", "SOME_NAME")
            .replace("{id}", &"0".repeat(32));
        for method in ["get", "put", "post", "delete", "patch"] {
            let a = c.call(&t, &method.to_uppercase(), &concrete, "{}");
            let in_doc = item.get(method).is_some();
            // A listed method is routed (whatever it answers, it is not "no route" or 405); an
            // unlisted one on a listed path is 405.
            if in_doc {
                listed.push(format!("{method} {path}"));
                assert_ne!(
                    a.status, 405,
                    "{method} {path} is documented but not routed"
                );
                assert!(
                    !a.body.contains("no route"),
                    "{method} {path} is documented but not routed: {}",
                    a.body
                );
            } else {
                assert_eq!(
                    a.status, 405,
                    "{method} {path} is routed but not documented: {}",
                    a.body
                );
            }
        }
    }
    assert_eq!(listed.len(), 18, "{listed:#?}");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// `GET /v1/health` answers a load balancer's probe without a token, with the status and the
/// version only (no sandbox count, no generation: those stay on the admin socket); every other
/// documented route still refuses a request without a token.
#[test]
fn health_needs_no_token_and_every_other_route_still_does() {
    let (d, base) = daemon();
    let c = Client {
        base,
        ..Default::default()
    };
    d.sandbox("mona", "octo/hello");
    let h = c.call("", "GET", "/v1/health", "");
    assert_eq!(h.status, 200, "{}", h.body);
    let v: serde_json::Value = serde_json::from_str(&h.body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "only status and version: {v}"
    );
    let a = c.call("", "POST", "/v1/health", "");
    assert_eq!(a.status, 405, "{}", a.body);

    let t = token(&d, &["--platform"]);
    let doc = c.expect(&t, "GET", "/v1/openapi.json", "", 200);
    let health = &doc["paths"]["/v1/health"]["get"];
    assert!(health.is_object(), "health is documented");
    assert!(health.get("security").is_none(), "{health}");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{user}", "mona")
            .replace("{owner}", "octo")
            .replace("{repo}", "hello")
            .replace("{name}", "SOME_NAME")
            .replace("{id}", &"0".repeat(32));
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_none() || path == "/v1/health" {
                continue;
            }
            assert!(
                item[method]["security"].is_array(),
                "{method} {path} documents its token"
            );
            // The first refusals say "give a token"; past the failure limit (10 a minute per
            // address) the address is refused outright. Either way nothing is served.
            if checked < 10 {
                c.refused("", &method.to_uppercase(), &concrete, "{}", 401, "token");
            } else {
                c.refused(
                    "",
                    &method.to_uppercase(),
                    &concrete,
                    "{}",
                    429,
                    "auth-rate",
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 17);
    // The probe is no authentication: it still answers for an address locked out.
    let h = c.call("", "GET", "/v1/health", "");
    assert_eq!(h.status, 200, "{}", h.body);
}

#[test]
fn a_v3_store_gains_the_tokens_table_and_keeps_its_secrets() {
    let (mut d, _) = daemon();
    d.set_user("KEEP", "mona", "octo/hello", "kept-value-Zq87");
    d.stop();
    // Back to what a v3 daemon (hosts, no tokens) wrote: no tokens table, schema version 3.
    let db = rusqlite::Connection::open(d.state.join("secrets.db")).unwrap();
    db.execute_batch("DROP TABLE tokens; DELETE FROM schema_migrations WHERE version > 3;")
        .unwrap();
    drop(db);
    d.start().unwrap();
    let log = d.log_text();
    assert!(
        log.contains("migrating the store from schema 3 to 4"),
        "{log}"
    );
    let c = Client {
        base: d.http_base(),
        ..Default::default()
    };
    let t = token(&d, &["--user", "mona"]);
    let v = c.expect(&t, "GET", "/v1/users/mona/secrets", "", 200);
    assert_eq!(v["secrets"][0]["name"], "KEEP");
    d.stop();
    d.start().unwrap();
    assert!(!d.log_text().contains("migrating"), "{}", d.log_text());
}

#[test]
fn an_edited_token_row_is_refused() {
    let (mut d, base) = daemon();
    let c = Client {
        base,
        ..Default::default()
    };
    let t = token(&d, &["--user", "mona"]);
    c.expect(&t, "GET", "/v1/users/mona/secrets", "", 200);
    d.stop();
    // Someone with write access to the database widens the token's scope.
    let db = rusqlite::Connection::open(d.state.join("secrets.db")).unwrap();
    db.execute("UPDATE tokens SET scope = 'platform'", [])
        .unwrap();
    drop(db);
    d.start().unwrap();
    assert!(
        d.log_text().contains("token row refused"),
        "{}",
        d.log_text()
    );
    let c = Client {
        base: d.http_base(),
        ..Default::default()
    };
    c.refused(&t, "GET", "/v1/sandboxes", "", 401, "token");
    c.refused(&t, "GET", "/v1/users/mona/secrets", "", 401, "token");
}

/// `curl` over TLS trusting `ca`: (status, headers and body).
fn curl_tls(ca: &std::path::Path, token: &str, url: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_serves_the_api_and_marks_cookies_secure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut d = Daemon::unstarted(None);
    d.log_level = "trace";
    d.serve_args = vec![
        "--http".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ];
    d.start().unwrap_or_else(|e| panic!("{e}"));
    let base = d.http_base();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let t = token(&d, &["--user", "mona"]);
    let (out, err) = curl_tls(&cert, &t, &format!("{base}/v1/users/mona/secrets"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}{err}");
    assert!(out.contains(r#"{"total_count":0,"secrets":[]}"#), "{out}");
    let (out, _) = curl_tls(&cert, "", &format!("{base}/settings/signin"));
    let cookie = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain = base.replace("https://", "http://");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("{plain}/v1/users/mona/secrets"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
    assert!(!d.log_text().contains(&t));
    d.stop();
    // A key that is not a key stops the daemon with a message naming the file.
    std::fs::write(&key, "not a key").unwrap();
    let e = d.start().unwrap_err();
    assert!(
        e.contains("cannot read the TLS private key") && e.contains("key.pem"),
        "{e}"
    );
}

#[test]
fn a_client_that_drips_its_headers_is_cut_off() {
    use std::io::{Read, Write};
    let (d, base) = daemon();
    let host = base.trim_start_matches("http://").to_owned();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    s.write_all(b"GET /v1/users/mona/secrets HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    // The daemon's header timeout is 5 s: the connection ends (a 408 or a close) well before 20.
    let _ = s.read_to_end(&mut buf);
    let waited = t0.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(15),
        "the connection stayed open {waited:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // The daemon still answers others.
    let t = token(&d, &["--user", "mona"]);
    let a = tcp_http(
        &base,
        "GET",
        "/v1/users/mona/secrets",
        &[("authorization", &format!("Bearer {t}"))],
        b"",
    );
    assert_eq!(a.status, 200);
}

#[test]
fn tokens_follow_a_key_rotation_and_outlive_the_retired_key() {
    let (mut d, base) = daemon();
    let t = token(&d, &["--user", "mona"]);
    let c = Client {
        base,
        ..Default::default()
    };
    c.expect(&t, "GET", "/v1/users/mona/secrets", "", 200);
    d.cli(&["key", "rotate"], None).ok();
    c.expect(&t, "GET", "/v1/users/mona/secrets", "", 200);
    d.stop();
    // The retired key file removed, as an operator does once nothing is sealed under it.
    for e in std::fs::read_dir(&d.state).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("key.retired-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    d.start().unwrap();
    assert!(
        !d.log_text().contains("token row refused"),
        "{}",
        d.log_text()
    );
    let c = Client {
        base: d.http_base(),
        ..Default::default()
    };
    c.expect(&t, "GET", "/v1/users/mona/secrets", "", 200);
}

#[test]
fn concurrent_single_repository_additions_are_all_kept() {
    let (d, base) = daemon();
    let t = token(&d, &["--user", "mona"]);
    let c = Client {
        base: base.clone(),
        ..Default::default()
    };
    c.expect(
        &t,
        "PUT",
        "/v1/users/mona/secrets/SHARED",
        r#"{"value":"v","repositories":["octo/r0"]}"#,
        201,
    );
    let threads: Vec<_> = (1..=16)
        .map(|i| {
            let (base, t) = (base.clone(), t.clone());
            std::thread::spawn(move || {
                let a = tcp_http(
                    &base,
                    "PUT",
                    &format!("/v1/users/mona/secrets/SHARED/repositories/octo/r{i}"),
                    &[("authorization", &format!("Bearer {t}"))],
                    b"",
                );
                assert_eq!(a.status, 200, "{}", a.body);
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let v = c.expect(
        &t,
        "GET",
        "/v1/users/mona/secrets/SHARED/repositories",
        "",
        200,
    );
    assert_eq!(v["total_count"], 17, "{v}");
}

/// Signs in to the settings page over raw HTTP; the session cookie (`name=value`).
fn page_session(base: &str, token: &str) -> String {
    let a = tcp_http(base, "GET", "/settings/signin", &[], b"");
    let set = a.header("set-cookie").unwrap().to_owned();
    let pre = set.split(';').next().unwrap().to_owned();
    let csrf = pre.split_once('=').unwrap().1.to_owned();
    let form = format!("csrf={csrf}&token={token}");
    let a = tcp_http(
        base,
        "POST",
        "/settings/signin",
        &[
            ("cookie", &pre),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    );
    assert_eq!(a.status, 303, "{a:?}");
    let session = a
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("sandbox_session="))
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .unwrap();
    session
}

/// The CSRF token of a page of the session.
fn page_csrf(base: &str, session: &str, path: &str) -> String {
    let a = tcp_http(base, "GET", path, &[("cookie", session)], b"");
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    let at = a.body.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
    a.body[at..at + 64].to_owned()
}

#[test]
fn registry_credentials_are_written_all_three_or_none() {
    let (d, base) = daemon();
    let t = token(&d, &["--user", "mona"]);
    let c = Client {
        base: base.clone(),
        ..Default::default()
    };
    for i in 0..98 {
        c.expect(
            &t,
            "PUT",
            &format!("/v1/users/mona/secrets/S{i}"),
            r#"{"value":"v","repositories":["octo/hello"]}"#,
            201,
        );
    }
    let session = page_session(&base, &t);
    let csrf = page_csrf(&base, &session, "/settings/secrets/registry");
    let post = |id: &str| {
        let form = format!(
            "csrf={csrf}&id={id}&server=ghcr.io&username=mona&password=pw-Zq88&repos=octo%2Fhello"
        );
        tcp_http(
            &base,
            "POST",
            "/settings/secrets/registry",
            &[
                ("cookie", &session),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        )
    };
    // Three more would make 101: refused before any is written.
    let a = post("ghcr");
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("already has 100 secrets"), "{}", a.body);
    assert!(!a.body.contains("Zq88"));
    let v = c.expect(&t, "GET", "/v1/users/mona/secrets", "", 200);
    assert_eq!(v["total_count"], 98);
    // A bad ID: refused by the name rule, nothing written.
    c.expect(&t, "DELETE", "/v1/users/mona/secrets/S0", "", 200);
    c.expect(&t, "DELETE", "/v1/users/mona/secrets/S1", "", 200);
    let a = post("bad-id");
    assert_eq!(a.status, 400, "{}", a.body);
    let v = c.expect(&t, "GET", "/v1/users/mona/secrets", "", 200);
    assert_eq!(v["total_count"], 96);
    // With room: all three.
    let a = post("ghcr");
    assert_eq!(a.status, 303, "{}", a.body);
    let v = c.expect(&t, "GET", "/v1/users/mona/secrets", "", 200);
    assert_eq!(v["total_count"], 99);
    assert!(!d.log_text().contains("Zq88"));
}

#[test]
fn page_sign_ins_need_their_csrf_cookie_and_failures_are_rate_limited() {
    let (d, base) = daemon();
    let t = token(&d, &["--user", "mona"]);
    let form_headers = |cookie: &str| {
        vec![
            ("cookie".to_owned(), cookie.to_owned()),
            (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
        ]
    };
    let post = |cookie: &str, body: String| {
        let h = form_headers(cookie);
        let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        tcp_http(&base, "POST", "/settings/signin", &h, body.as_bytes())
    };
    // A sign-in form posted without the cookie its page set (a cross-site login) is refused.
    let a = post("", format!("csrf={}&token={t}", "a".repeat(64)));
    assert_eq!(a.status, 403, "{}", a.body);
    // A platform token does not sign in to the page.
    let p = token(&d, &["--platform"]);
    let pre = format!("sandbox_signin={}", "b".repeat(64));
    let a = post(&pre, format!("csrf={}&token={p}", "b".repeat(64)));
    assert_eq!(a.status, 401, "{}", a.body);
    // Wrong tokens: after ten failures from this address (the platform token above was not
    // one), even the right token waits.
    for i in 0..10 {
        let a = post(&pre, format!("csrf={}&token=sst_wrong{i}", "b".repeat(64)));
        assert_eq!(a.status, 401, "{}", a.body);
        assert!(!a.body.contains("sst_wrong"), "the token is shown back");
    }
    let a = post(&pre, format!("csrf={}&token={t}", "b".repeat(64)));
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(!d.log_text().contains("sst_wrong"));
}
