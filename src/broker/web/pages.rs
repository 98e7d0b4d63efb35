//! The settings page's HTML (maud: every interpolation escaped). Pure: renders markup from names,
//! repositories and dates; no value ever reaches a function here.

use maud::{html, Markup, DOCTYPE};

use super::{Place, Signed};
use crate::broker::cli::table::utc;
use crate::broker::store::tokens::TokenScope;
use crate::broker::store::SecretInfo;

/// The only stylesheet (the page reads the same without it).
pub const STYLE: &str = "body{font-family:sans-serif;max-width:52rem;margin:1rem auto;padding:0 1rem;color:#1f2328}\
header{display:flex;justify-content:space-between;align-items:center;border-bottom:1px solid #d0d7de;margin-bottom:1rem}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #d0d7de;padding:.4rem;text-align:left}\
label{display:block;font-weight:600;margin-top:.8rem}textarea,input[type=text],input[type=password]{width:100%;box-sizing:border-box;font-family:monospace}\
fieldset{margin-top:.8rem}fieldset label{display:inline;font-weight:400}\
.notice{background:#dafbe1;border:1px solid #4ac26b;padding:.6rem}.error{background:#ffebe9;border:1px solid #ff8182;padding:.6rem}\
.warning{background:#fff8c5;border:1px solid #d4a72c;padding:.6rem}button{margin-top:1rem}form.inline{display:inline}";

fn layout(title: &str, signed: Option<&Signed>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sandbox secrets" }
                link rel="stylesheet" href="/settings/style.css";
            }
            body {
                header {
                    p { strong { "sandbox secrets" } }
                    @if let Some(s) = signed {
                        form.inline method="post" action="/settings/signout" {
                            span { "Signed in as " (scope_text(&s.caller.scope)) " " }
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" id="signout" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn scope_text(scope: &TokenScope) -> String {
    match scope {
        TokenScope::User(u) => u.clone(),
        TokenScope::RepoAdmin(r) => format!("admin of {r}"),
        TokenScope::Platform => "platform".to_owned(),
    }
}

fn title_of(place: &Place) -> String {
    match place {
        Place::User(_) => "Codespaces secrets".to_owned(),
        Place::Repo(r) => format!("Secrets of {r}"),
    }
}

/// A page with one message (errors, expired forms).
pub fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            h1 { (title) }
            p.error role="alert" { (text) }
            p { a href="/settings/signin" { "Sign in" } }
        },
    )
}

/// The sign-in form.
pub fn signin(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" id="error" { (e) } }
            p { "Paste a token made by " code { "sandbox-secrets token create --user YOU" } " (or " code { "--repo-admin OWNER/NAME" } "). It is kept by the server as a hash; this browser gets a session cookie." }
            form method="post" action="/settings/signin" autocomplete="off" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "Token" }
                input type="password" id="token" name="token" autocomplete="off" required;
                button type="submit" id="signin" { "Sign in" }
            }
        },
    )
}

/// The list of a place's secrets, with New secret, Update and Delete.
pub fn list(s: &Signed, place: &Place, secrets: &[SecretInfo], flash: Option<&str>) -> Markup {
    let base = place.base();
    let user = matches!(place, Place::User(_));
    layout(
        &title_of(place),
        Some(s),
        html! {
            h1 { (title_of(place)) }
            @if let Some(f) = flash { p.notice role="status" id="notice" { (f) } }
            p {
                @if user {
                    "Secrets are environment variables of your sandboxes, for the repositories you pick. Values are encrypted and never shown again."
                } @else {
                    "Repository secrets reach every sandbox of this repository. Values are encrypted and never shown again."
                }
            }
            p {
                a href=(format!("{base}/new")) id="new-secret" { "New secret" }
                " · "
                a href=(format!("{base}/registry")) id="new-registry" { "Add registry credentials" }
            }
            @if secrets.is_empty() {
                p id="empty" { "There are no secrets yet." }
            } @else {
                table id="secrets" {
                    thead { tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Updated" }
                        @if user { th scope="col" { "Repository access" } }
                        th scope="col" { span { "Actions" } }
                    } }
                    tbody {
                        @for x in secrets {
                            tr id=(format!("row-{}", x.name)) {
                                td { code { (x.name) } }
                                td { (utc(x.updated)) }
                                @if user { td { (x.repos.join(", ")) } }
                                td {
                                    a href=(format!("{base}/{}/edit", x.name)) id=(format!("update-{}", x.name)) { "Update" }
                                    " · "
                                    a href=(format!("{base}/{}/delete", x.name)) id=(format!("delete-{}", x.name)) { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Repository checkboxes: every known repository, the selected ones ticked, and a field for more.
fn repo_choices(known: &[String], selected: &[String]) -> Markup {
    html! {
        fieldset id="repository-access" {
            legend { "Repository access" }
            @if known.is_empty() { p { "No repositories yet: name them below." } }
            @for r in known {
                div {
                    input type="checkbox" name="repos" value=(r) id=(format!("repo-{}", r.replace('/', "--")))
                        checked[selected.iter().any(|x| x.eq_ignore_ascii_case(r))];
                    " "
                    label for=(format!("repo-{}", r.replace('/', "--"))) { (r) }
                }
            }
            label for="more_repos" { "Other repositories (owner/name, separated by commas)" }
            input type="text" id="more_repos" name="more_repos" autocomplete="off";
        }
    }
}

/// New secret: Name, Value, Repository access, Add secret.
pub fn new_secret(
    s: &Signed,
    place: &Place,
    known: &[String],
    name: &str,
    selected: &[String],
    error: Option<&str>,
) -> Markup {
    let base = place.base();
    layout(
        "New secret",
        Some(s),
        html! {
            h1 { "New secret" }
            @if let Some(e) = error { p.error role="alert" id="error" { (e) } }
            form method="post" action=(format!("{base}/new")) autocomplete="off" {
                input type="hidden" name="csrf" value=(s.csrf);
                label for="name" { "Name" }
                input type="text" id="name" name="name" value=(name) required autocomplete="off" spellcheck="false";
                p { small { "Letters, digits and underscores; not starting with a digit, GITHUB_ or SANDBOX_." } }
                label for="value" { "Value" }
                textarea id="value" name="value" rows="4" required autocomplete="off" spellcheck="false" {}
                @if matches!(place, Place::User(_)) { (repo_choices(known, selected)) }
                button type="submit" id="add-secret" { "Add secret" }
            }
            p { a href=(base) { "Cancel" } }
        },
    )
}

/// Update: the value is never shown; "enter a new value" opens its field. Repositories ticked.
pub fn edit(
    s: &Signed,
    place: &Place,
    secret: &SecretInfo,
    known: &[String],
    new_value: bool,
    error: Option<&str>,
) -> Markup {
    let base = place.base();
    let here = format!("{base}/{}/edit", secret.name);
    layout(
        &format!("Update {}", secret.name),
        Some(s),
        html! {
            h1 { "Update secret " code { (secret.name) } }
            @if let Some(e) = error { p.error role="alert" id="error" { (e) } }
            form method="post" action=(here) autocomplete="off" {
                input type="hidden" name="csrf" value=(s.csrf);
                @if new_value {
                    label for="value" { "Value" }
                    textarea id="value" name="value" rows="4" required autocomplete="off" spellcheck="false" {}
                } @else {
                    p { "Value: the secret value is encrypted and cannot be displayed. "
                        a href=(format!("{here}?new_value=1")) id="enter-new-value" { "enter a new value" } }
                }
                @if matches!(place, Place::User(_)) { (repo_choices(known, &secret.repos)) }
                button type="submit" id="save-changes" { "Save changes" }
            }
            p { a href=(base) { "Cancel" } }
        },
    )
}

/// Delete: the warning and the confirmation.
pub fn delete(s: &Signed, place: &Place, secret: &SecretInfo) -> Markup {
    let base = place.base();
    layout(
        &format!("Delete {}", secret.name),
        Some(s),
        html! {
            h1 { "Delete secret " code { (secret.name) } }
            p.warning role="alert" id="warning" {
                "Are you sure you want to delete " code { (secret.name) } "? Sandboxes that read it lose it: running ones see the change, new ones never get it. This cannot be undone."
            }
            form method="post" action=(format!("{base}/{}/delete", secret.name)) {
                input type="hidden" name="csrf" value=(s.csrf);
                button type="submit" id="confirm-delete" { "Yes, delete this secret" }
            }
            p { a href=(base) id="cancel" { "Cancel" } }
        },
    )
}

/// Registry credentials: one form, three secrets `<ID>_CONTAINER_REGISTRY_*`.
pub fn registry(s: &Signed, place: &Place, known: &[String], error: Option<&str>) -> Markup {
    let base = place.base();
    layout(
        "Registry credentials",
        Some(s),
        html! {
            h1 { "Add registry credentials" }
            @if let Some(e) = error { p.error role="alert" id="error" { (e) } }
            p { "Adds " code { "ID_CONTAINER_REGISTRY_SERVER" } ", " code { "_USER" } " and " code { "_PASSWORD" } ": sandbox-init writes them to docker's config.json so docker, podman and skopeo pull without a login step." }
            form method="post" action=(format!("{base}/registry")) autocomplete="off" {
                input type="hidden" name="csrf" value=(s.csrf);
                label for="id" { "ID (e.g. GHCR)" }
                input type="text" id="id" name="id" required autocomplete="off" spellcheck="false";
                label for="server" { "Server (e.g. ghcr.io)" }
                input type="text" id="server" name="server" required autocomplete="off" spellcheck="false";
                label for="username" { "Username" }
                input type="text" id="username" name="username" required autocomplete="off" spellcheck="false";
                label for="password" { "Password or token" }
                input type="password" id="password" name="password" required autocomplete="off";
                @if matches!(place, Place::User(_)) { (repo_choices(known, &[])) }
                button type="submit" id="add-registry" { "Add registry credentials" }
            }
            p { a href=(base) { "Cancel" } }
        },
    )
}
