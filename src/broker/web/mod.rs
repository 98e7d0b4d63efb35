//! The settings page (`/settings/...` beside the platform API): server-rendered HTML (maud), no
//! JavaScript, readable without CSS, a label on every field. Sign-in with a pasted token becomes
//! a session (a new random id every sign-in, cookie `HttpOnly; SameSite=Strict`, `Secure` under
//! TLS); every form carries the session's CSRF token; every page has a strict CSP and
//! `Cache-Control: no-store`. Changes go through the platform API's operations (one
//! implementation). A value is never rendered back, not even its length; names and repositories
//! are validated before they are shown, and maud escapes everything.

mod pages;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, Zeroizing};

use crate::broker::http::platform::{self, Caller, PlatformError, Shared};
use crate::broker::store::tokens::{token_hash, TokenScope};
use crate::broker::store::ScopeKind;
use crate::protocol;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sandbox_session";
/// The sign-in form's CSRF cookie (double submit, before there is a session).
pub const SIGNIN_COOKIE: &str = "sandbox_signin";
/// A session ends this long after sign-in, or when its token is revoked or expires.
pub const SESSION_LIFE: Duration = Duration::from_secs(8 * 3600);
/// The Content-Security-Policy of every page: nothing but this origin's stylesheet and forms.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// One signed-in browser.
struct Session {
    /// SHA-256 of the token it signed in with: checked again on every request.
    token_hash: String,
    csrf: String,
    started: Instant,
    /// The notice of the last change, shown once.
    flash: Option<String>,
}

/// The live sessions, by session id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn random_hex(n: usize) -> String {
    let mut b = Zeroizing::new(vec![0u8; n]);
    getrandom::getrandom(&mut b).expect("the system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares two strings in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The signed-in caller of a request, its session id and CSRF token.
pub struct Signed {
    pub caller: Caller,
    pub id: String,
    pub csrf: String,
}

impl Sessions {
    /// The session of a request, if its cookie names a live one whose token still works.
    fn find(&self, p: &platform::Platform, headers: &HeaderMap) -> Option<Signed> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get(&id)?;
        let auth = p.daemon.store().authenticate_hash(&s.token_hash);
        if s.started.elapsed() > SESSION_LIFE || auth.is_err() {
            map.remove(&id);
            return None;
        }
        let (token_id, scope) = auth.ok()?;
        Some(Signed {
            caller: Caller { token_id, scope },
            csrf: s.csrf.clone(),
            id,
        })
    }

    /// A new session for a token: always a new id, whatever the browser sent (no fixation).
    fn start(&self, token: &str, previous: Option<String>) -> (String, String) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = previous {
            map.remove(&old);
        }
        map.retain(|_, s| s.started.elapsed() <= SESSION_LIFE);
        let id = random_hex(32);
        let csrf = random_hex(32);
        map.insert(
            id.clone(),
            Session {
                token_hash: token_hash(token),
                csrf: csrf.clone(),
                started: Instant::now(),
                flash: None,
            },
        );
        (id, csrf)
    }

    fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn set_flash(&self, id: &str, text: String) {
        if let Some(s) = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            s.flash = Some(text);
        }
    }

    fn take_flash(&self, id: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
            .and_then(|s| s.flash.take())
    }

    /// How many sessions are live (for tests of sign-out).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A form body: fields in order; the value, password, server, username and token fields are
/// secrets, zeroized on drop. The value textarea's CRLF line breaks become LF.
struct Form {
    fields: Vec<(String, String)>,
    secrets: HashMap<String, SecretString>,
}

impl Form {
    fn parse(raw: Bytes) -> Form {
        let mut fields = Vec::new();
        let mut secrets = HashMap::new();
        for (k, v) in form_urlencoded::parse(&raw) {
            if matches!(&*k, "value" | "password" | "token" | "server" | "username") {
                let mut v = v.into_owned();
                if k == "value" && v.contains("\r\n") {
                    // A browser sends a textarea's line breaks as CRLF (HTML's form encoding);
                    // the value typed had LF, as the CLI and the API store it.
                    let lf = v.replace("\r\n", "\n");
                    v.zeroize();
                    v = lf;
                }
                secrets.insert(k.into_owned(), SecretString::from(v.clone()));
                v.zeroize();
            } else {
                fields.push((k.into_owned(), v.into_owned()));
            }
        }
        if let Ok(mut owned) = raw.try_into_mut() {
            owned.as_mut().zeroize();
        }
        Form { fields, secrets }
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn secret(&self, name: &str) -> Option<&SecretString> {
        self.secrets
            .get(name)
            .filter(|v| !v.expose_secret().is_empty())
    }
}

/// Where a page works: the session user's secrets or one repository's.
#[derive(Clone, Debug)]
pub enum Place {
    User(String),
    Repo(String),
}

impl Place {
    fn kind(&self) -> ScopeKind {
        match self {
            Place::User(_) => ScopeKind::User,
            Place::Repo(_) => ScopeKind::Repo,
        }
    }
    fn scope(&self) -> &str {
        match self {
            Place::User(u) | Place::Repo(u) => u,
        }
    }
    /// The page's base path.
    fn base(&self) -> String {
        match self {
            Place::User(_) => "/settings/secrets".to_owned(),
            Place::Repo(r) => format!("/settings/repositories/{r}/secrets"),
        }
    }
}

/// An HTML page with the headers every page carries.
fn html(status: StatusCode, body: maud::Markup) -> Response {
    let mut r = (status, body.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn see_other(to: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn set_cookie(r: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn cookie_line(name: &str, value: &str, tls: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/settings; HttpOnly; SameSite=Strict");
    if tls {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

/// The page's answer to a refused change or a page that does not exist for this session.
fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::message("Not found", "There is no such page for this sign-in."),
    )
}

fn to_signin() -> Response {
    see_other("/settings/signin")
}

/// The session of a request, or the way to the sign-in page.
/// (The refusal is boxed: a `Response` is large.)
fn signed(p: &Shared, headers: &HeaderMap) -> Result<Signed, Box<Response>> {
    p.web.find(p, headers).ok_or_else(|| Box::new(to_signin()))
}

/// The place a path names, when this session may work there; `None` is a 404.
fn place(s: &Signed, params: &HashMap<String, String>) -> Option<Place> {
    match (params.get("owner"), params.get("repo")) {
        (Some(o), Some(r)) => {
            let repo = protocol::normalize_repo(&format!("{o}/{r}")).ok()?;
            s.caller.sees_repo(&repo).then_some(Place::Repo(repo))
        }
        _ => match &s.caller.scope {
            TokenScope::User(u) => Some(Place::User(u.clone())),
            _ => None,
        },
    }
}

/// A page of a place: the session and the place it may work on, with the path's parameters. No
/// session goes to the sign-in page; a place out of the session's reach is a 404.
struct Page {
    s: Signed,
    place: Place,
    params: HashMap<String, String>,
}

impl FromRequestParts<Shared> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, p: &Shared) -> Result<Self, Response> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, p)
            .await
            .map_err(|_| not_found())?;
        p.daemon.reread().await;
        let s = signed(p, &parts.headers).map_err(|r| *r)?;
        let place = place(&s, &params).ok_or_else(not_found)?;
        Ok(Page { s, place, params })
    }
}

/// A form posted to a page of a place: [`Page`]'s session and place, and the form, whose CSRF
/// token must be the session's.
struct Posted {
    s: Signed,
    place: Place,
    form: Form,
    params: HashMap<String, String>,
}

impl FromRequest<Shared> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, p: &Shared) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(&mut parts, p)
            .await
            .map_err(|_| not_found())?;
        p.daemon.reread().await;
        let s = signed(p, &parts.headers).map_err(|r| *r)?;
        let raw = Bytes::from_request(Request::from_parts(parts, body), p)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = Form::parse(raw);
        if !form.get("csrf").is_some_and(|t| same(t, &s.csrf)) {
            return Err(html(
                StatusCode::FORBIDDEN,
                pages::message(
                    "Form expired",
                    "This form was not sent from this sign-in (missing or wrong CSRF token). Go back, reload the page and try again.",
                ),
            ));
        }
        let place = place(&s, &params).ok_or_else(not_found)?;
        Ok(Posted {
            s,
            place,
            form,
            params,
        })
    }
}

/// The notice after a change: "N running sandboxes see it (M restart their commands)".
fn notice(what: &str, a: &crate::broker::admin::ChangeAnswer) -> String {
    let n = a.sandboxes.len();
    let who = match n {
        0 => "no running sandbox sees it yet".to_owned(),
        1 => "1 running sandbox sees it".to_owned(),
        n => format!("{n} running sandboxes see it"),
    };
    let restarts = match a.restarting.len() {
        0 => String::new(),
        1 => " (1 restarts its command)".to_owned(),
        m => format!(" ({m} restart their commands)"),
    };
    format!("{what}: secrets changed, {who}{restarts}.")
}

fn error_text(e: &PlatformError) -> String {
    e.message()
}

// ---------- handlers ----------

async fn style() -> Response {
    let mut r = (StatusCode::OK, pages::STYLE).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

async fn signin_page(State(p): State<Shared>) -> Response {
    let csrf = random_hex(32);
    let mut r = html(StatusCode::OK, pages::signin(&csrf, None));
    set_cookie(&mut r, cookie_line(SIGNIN_COOKIE, &csrf, p.tls, Some(600)));
    r
}

async fn signin_post(
    State(p): State<Shared>,
    ConnectInfo(platform::PeerAddr(peer)): ConnectInfo<platform::PeerAddr>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let form = Form::parse(raw);
    // Failed sign-ins count against the address like failed API authentications.
    let now = Instant::now();
    if let Err(wait) = p.failures.check(peer.ip(), now) {
        return html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::message(
                "Too many attempts",
                &format!(
                    "Too many failed sign-ins from this address; try again in {} s.",
                    wait.as_secs().max(1)
                ),
            ),
        );
    }
    let expected = cookie(&headers, SIGNIN_COOKIE);
    let ok = matches!((form.get("csrf"), &expected), (Some(a), Some(b)) if same(a, b));
    if !ok {
        return html(
            StatusCode::FORBIDDEN,
            pages::message(
                "Form expired",
                "The sign-in form was not sent from this browser (missing or wrong CSRF token). Open the sign-in page again.",
            ),
        );
    }
    let fresh = random_hex(32);
    let retry = |msg: &str| {
        let mut r = html(StatusCode::UNAUTHORIZED, pages::signin(&fresh, Some(msg)));
        set_cookie(&mut r, cookie_line(SIGNIN_COOKIE, &fresh, p.tls, Some(600)));
        r
    };
    let Some(token) = form.secret("token") else {
        return retry("Paste a token (sandbox-secrets token create --user YOU).");
    };
    p.daemon.reread().await;
    let scope = match p.daemon.store().authenticate(token.expose_secret().trim()) {
        Ok((_, scope)) => scope,
        Err(e) => {
            p.failures.failed(peer.ip(), now);
            crate::broker::audit::api_refused(
                &peer.ip().to_string(),
                &format!("settings sign-in: {e}"),
            );
            return retry("That token does not sign in: it is unknown, revoked or expired.");
        }
    };
    let next = match &scope {
        TokenScope::User(_) => "/settings/secrets".to_owned(),
        TokenScope::RepoAdmin(r) => format!("/settings/repositories/{r}/secrets"),
        TokenScope::Platform => {
            return retry("A platform token manages everything through the API; sign in here with a user or repository token.")
        }
    };
    let (id, _) = p.web.start(
        token.expose_secret().trim(),
        cookie(&headers, SESSION_COOKIE),
    );
    let mut r = see_other(&next);
    set_cookie(&mut r, cookie_line(SESSION_COOKIE, &id, p.tls, None));
    set_cookie(&mut r, cookie_line(SIGNIN_COOKIE, "", p.tls, Some(0)));
    r
}

async fn signout(State(p): State<Shared>, headers: HeaderMap, raw: Bytes) -> Response {
    let form = Form::parse(raw);
    let Some(s) = p.web.find(&p, &headers) else {
        return to_signin();
    };
    if !form.get("csrf").is_some_and(|t| same(t, &s.csrf)) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message("Form expired", "Sign-out was not sent from this sign-in."),
        );
    }
    p.web.end(&s.id);
    let mut r = see_other("/settings/signin");
    set_cookie(&mut r, cookie_line(SESSION_COOKIE, "", p.tls, Some(0)));
    r
}

async fn root(State(p): State<Shared>, headers: HeaderMap) -> Response {
    match p.web.find(&p, &headers) {
        Some(s) => match &s.caller.scope {
            TokenScope::RepoAdmin(r) => see_other(&format!("/settings/repositories/{r}/secrets")),
            _ => see_other("/settings/secrets"),
        },
        None => to_signin(),
    }
}

/// Every repository this place's secrets name, for the checkboxes.
async fn known_repos(p: &Shared, s: &Signed, place: &Place) -> Vec<String> {
    let mut all: Vec<String> = match place {
        Place::User(u) => platform::list(p, &s.caller, ScopeKind::User, u)
            .await
            .unwrap_or_default()
            .into_iter()
            .flat_map(|x| x.repos)
            .collect(),
        Place::Repo(_) => Vec::new(),
    };
    all.sort();
    all.dedup();
    all
}

async fn list_page(State(p): State<Shared>, Page { s, place, .. }: Page) -> Response {
    let secrets = match platform::list(&p, &s.caller, place.kind(), place.scope()).await {
        Ok(l) => l,
        Err(e) => return html(e.status(), pages::message("Error", &error_text(&e))),
    };
    let flash = p.web.take_flash(&s.id);
    html(
        StatusCode::OK,
        pages::list(&s, &place, &secrets, flash.as_deref()),
    )
}

#[derive(serde::Deserialize, Default)]
struct EditQuery {
    #[serde(default)]
    new_value: Option<String>,
}

async fn new_page(State(p): State<Shared>, Page { s, place, .. }: Page) -> Response {
    let repos = known_repos(&p, &s, &place).await;
    html(
        StatusCode::OK,
        pages::new_secret(&s, &place, &repos, "", &[], None),
    )
}

/// The repositories a form selected: ticked boxes plus the "other repositories" field.
fn selected_repos(form: &Form) -> Vec<String> {
    let mut repos = form.all("repos");
    if let Some(more) = form.get("more_repos") {
        repos.extend(
            more.split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
        );
    }
    repos
}

async fn new_post(State(p): State<Shared>, Posted { s, place, form, .. }: Posted) -> Response {
    let name = form.get("name").unwrap_or_default().trim().to_owned();
    let repos = selected_repos(&form);
    let repos_arg = matches!(place, Place::User(_)).then_some(repos.as_slice());
    let result = match form.secret("value") {
        None => Err(PlatformError::Api(crate::broker::http::ApiError::Value(
            protocol::ValueError::Empty,
        ))),
        Some(v) => {
            platform::put_secret(
                &p,
                &s.caller,
                place.kind(),
                place.scope(),
                &name,
                Some(v),
                repos_arg,
            )
            .await
        }
    };
    match result {
        Ok(a) => {
            let what = format!("Secret {} {}", a.name, a.result);
            p.web.set_flash(&s.id, notice(&what, &a));
            see_other(&place.base())
        }
        Err(e) => {
            let known = known_repos(&p, &s, &place).await;
            // The name is shown back only once it is a valid name (it is escaped either way).
            let shown = protocol::normalize_name(&name, true).unwrap_or_default();
            html(
                e.status(),
                pages::new_secret(&s, &place, &known, &shown, &repos, Some(&error_text(&e))),
            )
        }
    }
}

async fn edit_page(
    State(p): State<Shared>,
    Page { s, place, params }: Page,
    Query(q): Query<EditQuery>,
) -> Response {
    let name = params.get("name").cloned().unwrap_or_default();
    let secret = match platform::one(
        &p,
        &s.caller,
        place.kind(),
        place.scope(),
        &name.to_ascii_uppercase(),
    )
    .await
    {
        Ok(x) => x,
        Err(_) => return not_found(),
    };
    let mut repos = known_repos(&p, &s, &place).await;
    repos.extend(secret.repos.iter().cloned());
    repos.sort();
    repos.dedup();
    html(
        StatusCode::OK,
        pages::edit(&s, &place, &secret, &repos, q.new_value.is_some(), None),
    )
}

async fn edit_post(
    State(p): State<Shared>,
    Posted {
        s,
        place,
        form,
        params,
    }: Posted,
) -> Response {
    let name = params
        .get("name")
        .cloned()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let repos = selected_repos(&form);
    let repos_arg = matches!(place, Place::User(_)).then_some(repos.as_slice());
    let value = form.secret("value");
    if value.is_none() && repos_arg.is_none() {
        return see_other(&place.base());
    }
    match platform::put_secret(
        &p,
        &s.caller,
        place.kind(),
        place.scope(),
        &name,
        value,
        repos_arg,
    )
    .await
    {
        Ok(a) => {
            let what = format!("Secret {} updated", a.name);
            p.web.set_flash(&s.id, notice(&what, &a));
            see_other(&place.base())
        }
        Err(e) => match platform::one(&p, &s.caller, place.kind(), place.scope(), &name).await {
            Ok(secret) => {
                let mut known = known_repos(&p, &s, &place).await;
                known.extend(secret.repos.iter().cloned());
                known.sort();
                known.dedup();
                html(
                    e.status(),
                    pages::edit(
                        &s,
                        &place,
                        &secret,
                        &known,
                        value.is_some(),
                        Some(&error_text(&e)),
                    ),
                )
            }
            Err(_) => not_found(),
        },
    }
}

async fn delete_page(State(p): State<Shared>, Page { s, place, params }: Page) -> Response {
    let name = params.get("name").cloned().unwrap_or_default();
    match platform::one(
        &p,
        &s.caller,
        place.kind(),
        place.scope(),
        &name.to_ascii_uppercase(),
    )
    .await
    {
        Ok(secret) => html(StatusCode::OK, pages::delete(&s, &place, &secret)),
        Err(_) => not_found(),
    }
}

async fn delete_post(
    State(p): State<Shared>,
    Posted {
        s, place, params, ..
    }: Posted,
) -> Response {
    let name = params.get("name").cloned().unwrap_or_default();
    match platform::delete_secret(&p, &s.caller, place.kind(), place.scope(), &name).await {
        Ok(a) => {
            let what = format!("Secret {} deleted", a.name);
            p.web.set_flash(&s.id, notice(&what, &a));
            see_other(&place.base())
        }
        Err(_) => not_found(),
    }
}

async fn registry_page(State(p): State<Shared>, Page { s, place, .. }: Page) -> Response {
    let repos = known_repos(&p, &s, &place).await;
    html(StatusCode::OK, pages::registry(&s, &place, &repos, None))
}

async fn registry_post(State(p): State<Shared>, Posted { s, place, form, .. }: Posted) -> Response {
    let id = form
        .get("id")
        .unwrap_or_default()
        .trim()
        .to_ascii_uppercase();
    let empty = SecretString::from(String::new());
    let server = form.secret("server").unwrap_or(&empty);
    let user = form.secret("username").unwrap_or(&empty);
    let repos = selected_repos(&form);
    let repos_arg = matches!(place, Place::User(_)).then_some(repos.as_slice());
    let password = form.secret("password").unwrap_or(&empty);
    let parts = [
        (format!("{id}_CONTAINER_REGISTRY_SERVER"), server),
        (format!("{id}_CONTAINER_REGISTRY_USER"), user),
        (format!("{id}_CONTAINER_REGISTRY_PASSWORD"), password),
    ];
    // All three are checked before any is written: nothing half-applied by a bad field.
    let checked: Result<(), crate::broker::http::ApiError> = parts.iter().try_for_each(|(n, v)| {
        crate::broker::http::admin::set_command(place.kind(), place.scope(), n, v, repos_arg, false)
            .map(drop)
    });
    let mut result = checked.map_err(PlatformError::Api).map(|()| Vec::new());
    // Room for the new names under the per-scope limit, also checked before any write.
    if result.is_ok() {
        let have = platform::list(&p, &s.caller, place.kind(), place.scope())
            .await
            .unwrap_or_default();
        let new = parts
            .iter()
            .filter(|(n, _)| !have.iter().any(|x| x.name == *n))
            .count();
        if have.len() + new > protocol::MAX_SECRETS_PER_SCOPE {
            result = Err(PlatformError::Api(crate::broker::http::ApiError::Store(
                crate::broker::store::StoreError::Limit {
                    kind: place.kind(),
                    scope: place.scope().to_owned(),
                },
            )));
        }
    }
    if let Ok(done) = result.as_mut() {
        for (n, v) in &parts {
            match platform::put_secret(
                &p,
                &s.caller,
                place.kind(),
                place.scope(),
                n,
                Some(v),
                repos_arg,
            )
            .await
            {
                Ok(a) => done.push(a),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    match result {
        Ok(done) => {
            let last = done.last().expect("three secrets written");
            let what = format!("Registry credentials {id} saved ({} secrets)", done.len());
            p.web.set_flash(&s.id, notice(&what, last));
            see_other(&place.base())
        }
        Err(e) => {
            let known = known_repos(&p, &s, &place).await;
            html(
                e.status(),
                pages::registry(&s, &place, &known, Some(&error_text(&e))),
            )
        }
    }
}

/// The settings page's routes.
pub fn routes() -> Router<Shared> {
    let both = |r: Router<Shared>, tail: &str, m: axum::routing::MethodRouter<Shared>| {
        r.route(&format!("/settings/secrets{tail}"), m.clone())
            .route(
                &format!("/settings/repositories/{{owner}}/{{repo}}/secrets{tail}"),
                m,
            )
    };
    let r = Router::new()
        .route("/settings", get(root))
        .route("/settings/", get(root))
        .route("/settings/style.css", get(style))
        .route("/settings/signin", get(signin_page).post(signin_post))
        .route("/settings/signout", axum::routing::post(signout));
    let r = both(r, "", get(list_page));
    let r = both(r, "/new", get(new_page).post(new_post));
    let r = both(r, "/registry", get(registry_page).post(registry_post));
    let r = both(r, "/{name}/edit", get(edit_page).post(edit_post));
    both(r, "/{name}/delete", get(delete_page).post(delete_post))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_says_restarts_only_when_there_are_some() {
        let answer = |sandboxes: &[&str], restarting: &[&str]| crate::broker::admin::ChangeAnswer {
            name: "DB_URL".into(),
            scope: crate::broker::store::ScopeKind::User,
            owner: "mona".into(),
            result: "updated".into(),
            sandboxes: sandboxes.iter().map(|s| s.to_string()).collect(),
            watching: restarting.iter().map(|s| s.to_string()).collect(),
            restarting: restarting.iter().map(|s| s.to_string()).collect(),
        };
        let what = "Secret DB_URL updated";
        assert_eq!(
            notice(what, &answer(&["a"], &[])),
            "Secret DB_URL updated: secrets changed, 1 running sandbox sees it."
        );
        assert_eq!(
            notice(what, &answer(&["a", "b"], &["a"])),
            "Secret DB_URL updated: secrets changed, 2 running sandboxes see it \
             (1 restarts its command)."
        );
        assert_eq!(
            notice(what, &answer(&["a", "b"], &["a", "b"])),
            "Secret DB_URL updated: secrets changed, 2 running sandboxes see it \
             (2 restart their commands)."
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x_sandbox_session=evil; sandbox_session=good; other=1"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("good"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn csrf_comparison() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn the_cookie_is_strict_and_http_only_and_secure_under_tls() {
        let c = cookie_line(SESSION_COOKIE, "id", false, None);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        assert!(cookie_line(SESSION_COOKIE, "id", true, None).contains("; Secure"));
    }

    #[test]
    fn the_policy_allows_no_script() {
        assert!(CSP.contains("default-src 'none'"));
        assert!(!CSP.contains("script-src"));
        assert!(!CSP.contains("unsafe"));
    }
}
