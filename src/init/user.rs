//! Resolves `--user NAME|UID[:GID]` against the container's own `/etc/passwd` and `/etc/group`,
//! parsed here directly (no NSS, no libc lookups). Pure text in, ids out: nothing here changes
//! credentials (that is [`super::privdrop`], in the forked child).

use std::path::{Path, PathBuf};

/// Where the account databases live. Fixed: an image's own files are the only truth.
pub const PASSWD_PATH: &str = "/etc/passwd";
pub const GROUP_PATH: &str = "/etc/group";

/// The shell used when the account has none (or there is no account).
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// Why a user specification could not be parsed or resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("invalid user {spec:?}: {reason}")]
    BadSpec { spec: String, reason: &'static str },
    #[error("user {name:?} not found in {PASSWD_PATH}")]
    UnknownUser { name: String },
    #[error("group {name:?} not found in {GROUP_PATH}")]
    UnknownGroup { name: String },
}

/// A user as written on the command line: a name or a numeric id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserRef {
    Name(String),
    Id(u32),
}

/// A group as written after the colon: a name or a numeric id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupRef {
    Name(String),
    Id(u32),
}

/// `NAME|UID[:GID|:GROUP]`, parsed but not yet looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    pub user: UserRef,
    pub group: Option<GroupRef>,
}

/// One `/etc/passwd` line: `name:password:uid:gid:gecos:home:shell`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One `/etc/group` line: `name:password:gid:member,member`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The account the child runs as, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// `None` for a numeric uid that has no passwd line.
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the primary gid first, then every group listing the user by name.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl Account {
    /// The value for `USER` and `LOGNAME`: the name, or the numeric uid when there is no name.
    pub fn login_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uid.to_string())
    }
}

/// A numeric id is all ASCII digits (no sign, no spaces) and fits in `u32` below `u32::MAX`
/// (`-1` is the kernel's "unchanged" marker for `setuid`-family calls).
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&id| id != u32::MAX)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b',')
}

/// Parses `NAME|UID[:GID|:GROUP]`. A part made of digits only is an id, anything else a name.
pub fn parse_user_spec(spec: &str) -> Result<UserSpec, UserError> {
    let bad = |reason| UserError::BadSpec {
        spec: spec.to_string(),
        reason,
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(bad("the user part is empty"));
    }
    let user = if user.bytes().all(|b| b.is_ascii_digit()) {
        UserRef::Id(parse_id(user).ok_or_else(|| bad("the uid is out of range"))?)
    } else if valid_name(user) {
        UserRef::Name(user.to_string())
    } else {
        return Err(bad(
            "the user name has a character a passwd name cannot have",
        ));
    };
    let group = match group {
        None => None,
        Some("") => return Err(bad("the group part after ':' is empty")),
        Some(g) if g.contains(':') => return Err(bad("more than one ':'")),
        Some(g) if g.bytes().all(|b| b.is_ascii_digit()) => Some(GroupRef::Id(
            parse_id(g).ok_or_else(|| bad("the gid is out of range"))?,
        )),
        Some(g) if valid_name(g) => Some(GroupRef::Name(g.to_string())),
        Some(_) => {
            return Err(bad(
                "the group name has a character a group name cannot have",
            ))
        }
    };
    Ok(UserSpec { user, group })
}

/// The `:`-separated fields of one `/etc/passwd` or `/etc/group` line, when it has exactly `count`
/// of them and a name; `None` for blank lines, comments, NIS `+`/`-` lines and malformed ones.
fn db_fields(line: &str, count: usize) -> Option<Vec<&str>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    (fields.len() == count && !fields[0].is_empty()).then_some(fields)
}

/// Parses one passwd line; `None` for blank lines, comments, NIS `+`/`-` lines and malformed
/// lines (wrong field count, non-numeric ids), which are skipped like libc's files backend does.
pub fn parse_passwd_line(line: &str) -> Option<PasswdEntry> {
    let fields = db_fields(line, 7)?;
    Some(PasswdEntry {
        name: fields[0].to_string(),
        uid: parse_id(fields[2])?,
        gid: parse_id(fields[3])?,
        home: fields[5].to_string(),
        shell: fields[6].to_string(),
    })
}

/// Parses one group line; `None` when it is blank, a comment, a NIS line or malformed.
pub fn parse_group_line(line: &str) -> Option<GroupEntry> {
    let fields = db_fields(line, 4)?;
    Some(GroupEntry {
        name: fields[0].to_string(),
        gid: parse_id(fields[2])?,
        members: fields[3]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Resolves a spec against the text of `/etc/passwd` and `/etc/group`.
///
/// - A name must have a passwd line; a numeric uid need not (then: no name, gid = the uid unless
///   given, `HOME=/`, shell `/bin/sh`). A numeric uid with no group never falls back to gid 0:
///   unlike docker, the root group is not handed out by accident.
/// - `:GROUP` by name must exist in `/etc/group`; `:GID` is taken as is.
/// - Supplementary groups are the primary gid plus every group whose member list names the user.
pub fn resolve(spec: &UserSpec, passwd: &str, group: &str) -> Result<Account, UserError> {
    let entry = match &spec.user {
        UserRef::Name(name) => Some(
            passwd
                .lines()
                .filter_map(parse_passwd_line)
                .find(|e| &e.name == name)
                .ok_or_else(|| UserError::UnknownUser { name: name.clone() })?,
        ),
        UserRef::Id(uid) => passwd
            .lines()
            .filter_map(parse_passwd_line)
            .find(|e| e.uid == *uid),
    };
    let uid = match (&spec.user, &entry) {
        (_, Some(e)) => e.uid,
        (UserRef::Id(uid), None) => *uid,
        (UserRef::Name(_), None) => unreachable!("a name without an entry returned above"),
    };
    let groups_db: Vec<GroupEntry> = group.lines().filter_map(parse_group_line).collect();
    let gid = match &spec.group {
        Some(GroupRef::Id(gid)) => *gid,
        Some(GroupRef::Name(name)) => {
            groups_db
                .iter()
                .find(|g| &g.name == name)
                .ok_or_else(|| UserError::UnknownGroup { name: name.clone() })?
                .gid
        }
        None => entry.as_ref().map_or(uid, |e| e.gid),
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for g in &groups_db {
            if g.members.iter().any(|m| m == &e.name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    let non_empty = |s: &str, default: &str| {
        if s.is_empty() {
            PathBuf::from(default)
        } else {
            PathBuf::from(s)
        }
    };
    Ok(Account {
        name: entry.as_ref().map(|e| e.name.clone()),
        uid,
        gid,
        groups,
        home: entry
            .as_ref()
            .map_or(PathBuf::from("/"), |e| non_empty(&e.home, "/")),
        shell: entry.as_ref().map_or(PathBuf::from(DEFAULT_SHELL), |e| {
            non_empty(&e.shell, DEFAULT_SHELL)
        }),
    })
}

/// The passwd line of `uid`, if any (used for the login shell and home when `--user` is absent).
pub fn lookup_uid(passwd: &str, uid: u32) -> Option<PasswdEntry> {
    passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|e| e.uid == uid)
}

/// Reads an account database; a missing file reads as empty (minimal images have none).
pub fn read_db(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

+nis::::::
broken:x:notanumber:1::/:/bin/sh
short:x:5:5
alice:x:1000:1000:Alice,,,:/home/alice:/bin/zsh
bob:x:1001:1001::/home/bob:
noshell:x:1002:100:::\r
alice:x:2000:2000:dup:/nowhere:/bin/false
";
    const GROUP: &str = "\
root:x:0:
users:x:100:alice, bob
dev:x:500:carol,alice
docker:x:999:alice
bad:x:nan:alice
alice:x:1000:
empty:x:600:
";

    fn spec(s: &str) -> UserSpec {
        parse_user_spec(s).unwrap()
    }

    #[test]
    fn spec_forms() {
        assert_eq!(
            spec("alice"),
            UserSpec {
                user: UserRef::Name("alice".into()),
                group: None
            }
        );
        assert_eq!(
            spec("1000"),
            UserSpec {
                user: UserRef::Id(1000),
                group: None
            }
        );
        assert_eq!(
            spec("1000:50"),
            UserSpec {
                user: UserRef::Id(1000),
                group: Some(GroupRef::Id(50))
            }
        );
        assert_eq!(
            spec("alice:dev"),
            UserSpec {
                user: UserRef::Name("alice".into()),
                group: Some(GroupRef::Name("dev".into()))
            }
        );
        assert_eq!(spec("0").user, UserRef::Id(0));
        assert_eq!(spec("www-data").user, UserRef::Name("www-data".into()));
        assert_eq!(spec("4294967294").user, UserRef::Id(4294967294));
    }

    #[test]
    fn spec_errors_say_what_is_wrong() {
        for (s, needle) in [
            ("", "user part is empty"),
            (":100", "user part is empty"),
            ("alice:", "group part after ':' is empty"),
            ("a:b:c", "more than one ':'"),
            ("4294967295", "uid is out of range"),
            ("99999999999", "uid is out of range"),
            ("1:4294967295", "gid is out of range"),
            ("-1", "character"),
            ("al ice", "character"),
            ("alice:d ev", "character"),
            ("a,b", "character"),
        ] {
            let err = parse_user_spec(s).unwrap_err();
            assert!(err.to_string().contains(needle), "{s:?}: {err}");
            assert!(err.to_string().contains(&format!("{s:?}")), "{s:?}: {err}");
        }
    }

    #[test]
    fn passwd_lines() {
        assert_eq!(
            parse_passwd_line("alice:x:1000:1000:Alice,,,:/home/alice:/bin/zsh"),
            Some(PasswdEntry {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/alice".into(),
                shell: "/bin/zsh".into()
            })
        );
        for skipped in [
            "",
            "# comment:x:0:0::/:/bin/sh",
            "+nis::::::",
            "-nis::::::",
            "short:x:5:5",
            "too:x:1:1:::/bin/sh:extra",
            ":x:1:1::/:/bin/sh",
            "n:x:-1:1::/:/bin/sh",
            "n:x:1:g::/:/bin/sh",
            "n:x::1::/:/bin/sh",
        ] {
            assert_eq!(parse_passwd_line(skipped), None, "{skipped:?}");
        }
        assert_eq!(
            parse_passwd_line("n:x:1:2:::\r").map(|e| e.shell),
            Some(String::new())
        );
    }

    #[test]
    fn group_lines() {
        assert_eq!(
            parse_group_line("users:x:100:alice, bob,,"),
            Some(GroupEntry {
                name: "users".into(),
                gid: 100,
                members: vec!["alice".into(), "bob".into()]
            })
        );
        assert_eq!(
            parse_group_line("empty:x:600:").map(|g| g.members),
            Some(vec![])
        );
        for skipped in [
            "",
            "#x:x:1:",
            "+:::",
            "bad:x:nan:a",
            "few:x:1",
            "many:x:1:a:b",
        ] {
            assert_eq!(parse_group_line(skipped), None, "{skipped:?}");
        }
    }

    #[test]
    fn resolve_by_name_takes_first_line_and_member_groups() {
        let a = resolve(&spec("alice"), PASSWD, GROUP).unwrap();
        assert_eq!(a.name.as_deref(), Some("alice"));
        assert_eq!((a.uid, a.gid), (1000, 1000));
        assert_eq!(a.groups, vec![1000, 100, 500, 999]);
        assert_eq!(a.home, PathBuf::from("/home/alice"));
        assert_eq!(a.shell, PathBuf::from("/bin/zsh"));
        assert_eq!(a.login_name(), "alice");
    }

    #[test]
    fn resolve_by_uid_with_and_without_entry() {
        let b = resolve(&spec("1001"), PASSWD, GROUP).unwrap();
        assert_eq!(b.name.as_deref(), Some("bob"));
        assert_eq!(b.groups, vec![1001, 100]);
        assert_eq!(b.shell, PathBuf::from(DEFAULT_SHELL), "empty shell field");

        let n = resolve(&spec("4242"), PASSWD, GROUP).unwrap();
        assert_eq!(n.name, None);
        assert_eq!((n.uid, n.gid), (4242, 4242), "no gid 0 fallback");
        assert_eq!(n.groups, vec![4242]);
        assert_eq!(n.home, PathBuf::from("/"));
        assert_eq!(n.shell, PathBuf::from(DEFAULT_SHELL));
        assert_eq!(n.login_name(), "4242");

        let n = resolve(&spec("4242:7"), PASSWD, GROUP).unwrap();
        assert_eq!((n.gid, n.groups.clone()), (7, vec![7]));

        let e = resolve(&spec("1002"), PASSWD, GROUP).unwrap();
        assert_eq!(e.home, PathBuf::from("/"), "empty home field");
    }

    #[test]
    fn resolve_group_override() {
        let a = resolve(&spec("alice:dev"), PASSWD, GROUP).unwrap();
        assert_eq!(a.gid, 500);
        assert_eq!(a.groups, vec![500, 100, 999], "primary first, no duplicate");
        let a = resolve(&spec("alice:0"), PASSWD, GROUP).unwrap();
        assert_eq!(a.groups, vec![0, 100, 500, 999]);
        assert_eq!(
            resolve(&spec("alice:nosuch"), PASSWD, GROUP),
            Err(UserError::UnknownGroup {
                name: "nosuch".into()
            })
        );
    }

    #[test]
    fn resolve_unknown_names() {
        let err = resolve(&spec("carol"), PASSWD, GROUP).unwrap_err();
        assert_eq!(err.to_string(), "user \"carol\" not found in /etc/passwd");
        assert!(resolve(&spec("broken"), PASSWD, GROUP).is_err());
        assert!(resolve(&spec("alice"), "", "").is_err());
        let r = resolve(&spec("0"), "", "").unwrap();
        assert_eq!((r.uid, r.gid, r.home), (0, 0, PathBuf::from("/")));
    }

    #[test]
    fn lookup_uid_finds_first() {
        assert_eq!(lookup_uid(PASSWD, 0).unwrap().shell, "/bin/bash");
        assert_eq!(lookup_uid(PASSWD, 7), None);
    }
}
