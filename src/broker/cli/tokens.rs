//! `sandbox-secrets token create|list|revoke`: the platform API's tokens through the admin
//! socket. `create` prints the token alone on the last line of stdout (for scripts), once; it
//! exists nowhere else afterwards. Nothing here logs a token.

use anyhow::{bail, Result};

use super::table;
use crate::broker::admin::{TokenCreateRequest, TokenListRequest, TokenRevokeRequest};
use crate::broker::client::AdminClient;

/// What a token may do, as the command line gave it (clap makes it exactly one).
pub struct TokenFor {
    pub user: Option<String>,
    pub repo_admin: Option<String>,
    pub platform: bool,
}

/// `30d`, `12h`, `90m`, `45s` or a bare number of seconds, in seconds.
pub fn parse_duration(raw: &str) -> Result<i64> {
    let raw = raw.trim();
    let (digits, unit) = match raw.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: i64 = match digits.parse() {
        Ok(n) => n,
        Err(_) => bail!("--expires {raw:?}: give a number and a unit: 30d, 12h, 90m or 3600s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--expires {raw:?}: the unit is one of d, h, m, s"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("--expires {raw:?} is too large"))
}

/// `sandbox-secrets token create`.
pub fn create(admin: &AdminClient, who: TokenFor, expires: &str) -> Result<()> {
    let expires_in = parse_duration(expires)?;
    let a = admin.call(&TokenCreateRequest {
        user: who.user,
        repo_admin: who.repo_admin,
        platform: who.platform,
        expires_in,
    })?;
    eprintln!(
        "created token {} ({}), expires {}; it is shown once, below",
        a.info.id,
        a.info.scope,
        table::utc(a.info.expires)
    );
    println!("{}", a.token);
    Ok(())
}

/// `sandbox-secrets token list`.
pub fn list(admin: &AdminClient, json: bool) -> Result<()> {
    let a = admin.call(&TokenListRequest {})?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let rows: Vec<[String; 4]> = a
        .tokens
        .into_iter()
        .map(|t| {
            let expires = if t.expires <= now {
                format!("{} (expired)", table::utc(t.expires))
            } else {
                table::utc(t.expires)
            };
            [t.id, t.scope, table::utc(t.created), expires]
        })
        .collect();
    if rows.is_empty() {
        eprintln!("no tokens");
    } else {
        print!(
            "{}",
            table::render(["ID", "SCOPE", "CREATED", "EXPIRES"], &rows)
        );
    }
    Ok(())
}

/// `sandbox-secrets token revoke ID`.
pub fn revoke(admin: &AdminClient, id: String) -> Result<()> {
    let a = admin.call(&TokenRevokeRequest { id })?;
    println!("revoked token {} ({})", a.id, a.scope);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_duration("90m").unwrap(), 5400);
        assert_eq!(parse_duration("45s").unwrap(), 45);
        assert_eq!(parse_duration("120").unwrap(), 120);
        for bad in ["", "d", "3w", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
