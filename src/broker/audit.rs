//! The audit trail: one tracing line per sandbox read and per admin change, naming sandbox,
//! repository, caller and secret names. Takes names only; it has no way to receive a value.

use std::fmt;

/// A sandbox read its secrets; `names` is the comma-separated list of the `count` names served.
pub fn secrets_read(sandbox: &str, repository: &str, count: usize, names: &str) {
    tracing::info!(
        audit = "read",
        sandbox,
        repository,
        count,
        names,
        "sandbox read its secrets"
    );
}

/// A sandbox read was refused; `reason` names a secret at most, never a value.
pub fn read_refused(sandbox: &str, reason: &dyn fmt::Display) {
    tracing::error!(audit = "read-refused", sandbox, %reason, "sandbox read refused");
}

/// An admin change was made by `uid`; `what` describes it by names only.
pub fn admin_change(uid: u32, action: &str, what: &str) {
    tracing::info!(audit = "admin", uid, action, what, "admin change");
}

/// An admin connection was refused for its uid.
pub fn admin_refused(uid: u32) {
    tracing::warn!(audit = "admin-refused", uid, "admin connection refused");
}
