//! Privilege drop in the forked child: supplementary groups, gid, (capability sets), uid, in
//! that order, then a check that it took; `--no-new-privs` last. Everything is computed before
//! `fork` in [`Plan::new`]; [`apply`] allocates nothing on its success path. Knows nothing
//! about signals or the environment.

use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::unistd::{self, Gid, Uid};

use super::stage::{Failure, Stage};
use super::user::Account;
use crate::sys;

/// Upper bound of supplementary groups the verification reads back (on the stack).
const MAX_GROUPS_CHECKED: usize = 256;

/// The ids to switch to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub uid: Uid,
    pub gid: Gid,
    /// Deduplicated, primary gid first.
    pub groups: Vec<Gid>,
}

/// What the child does to itself before exec.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub creds: Option<Creds>,
    pub no_new_privs: bool,
    /// Capabilities to remove from the bounding set (the running kernel's, known to `caps`;
    /// none when the init lacks CAP_SETPCAP, with a warning); `Some` means `--drop-caps`:
    /// ambient and inheritable are cleared too.
    pub drop_caps: Option<Vec<Capability>>,
}

impl Plan {
    /// Builds the plan. `account` is `--user` resolved; `None` keeps the init's own ids.
    pub fn new(account: Option<&Account>, no_new_privs: bool, drop_caps: bool) -> Plan {
        let creds = account.map(|a| {
            let mut groups: Vec<Gid> = Vec::with_capacity(a.groups.len());
            for g in &a.groups {
                if !groups.contains(&Gid::from_raw(*g)) {
                    groups.push(Gid::from_raw(*g));
                }
            }
            Creds {
                uid: Uid::from_raw(a.uid),
                gid: Gid::from_raw(a.gid),
                groups,
            }
        });
        let drop_caps = drop_caps.then(|| {
            // PR_CAPBSET_DROP needs CAP_SETPCAP: without it (an init started as non-root) the
            // bounding set cannot shrink, but ambient and inheritable can still be cleared.
            if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
                tracing::warn!(
                    "--drop-caps: the init lacks CAP_SETPCAP in its effective set, so the \
                     capability bounding set is left as is; ambient and inheritable \
                     capabilities are still cleared"
                );
                return Vec::new();
            }
            let mut all: Vec<Capability> =
                caps::runtime::thread_all_supported().into_iter().collect();
            all.sort_by_key(|c| c.index());
            all
        });
        Plan {
            creds,
            no_new_privs,
            drop_caps,
        }
    }
}

/// Applies the plan in the forked child. Returns the step that failed and its errno.
pub fn apply(plan: &Plan) -> Result<(), Failure> {
    if let Some(c) = &plan.creds {
        unistd::setgroups(&c.groups).map_err(|e| Failure::new(Stage::SetGroups, e))?;
        unistd::setgid(c.gid).map_err(|e| Failure::new(Stage::SetGid, e))?;
    }
    if let Some(bounding) = &plan.drop_caps {
        // While still privileged: dropping from the bounding set needs CAP_SETPCAP.
        for cap in bounding {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(|_| Failure::new(Stage::DropBounding, Errno::last()))?;
        }
        caps::clear(None, CapSet::Ambient)
            .map_err(|_| Failure::new(Stage::ClearAmbient, Errno::last()))?;
        caps::clear(None, CapSet::Inheritable)
            .map_err(|_| Failure::new(Stage::ClearInheritable, Errno::last()))?;
    }
    if let Some(c) = &plan.creds {
        unistd::setuid(c.uid).map_err(|e| Failure::new(Stage::SetUid, e))?;
        verify(c)?;
    }
    if plan.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| Failure::new(Stage::NoNewPrivs, e))?;
    }
    Ok(())
}

/// Reads the ids back: real, effective and saved uid/gid as asked, the supplementary groups
/// exactly the planned ones, and, for a non-root target, no way back to uid 0.
fn verify(c: &Creds) -> Result<(), Failure> {
    let mismatch = || Failure::new(Stage::Verify, Errno::UnknownErrno);
    let r = unistd::getresuid().map_err(|e| Failure::new(Stage::Verify, e))?;
    if r.real != c.uid || r.effective != c.uid || r.saved != c.uid {
        return Err(mismatch());
    }
    let r = unistd::getresgid().map_err(|e| Failure::new(Stage::Verify, e))?;
    if r.real != c.gid || r.effective != c.gid || r.saved != c.gid {
        return Err(mismatch());
    }
    if c.groups.len() <= MAX_GROUPS_CHECKED {
        let mut buf = [0 as libc::gid_t; MAX_GROUPS_CHECKED];
        let n = sys::getgroups(&mut buf).map_err(|e| Failure::new(Stage::Verify, e))?;
        let got = &buf[..n];
        if n != c.groups.len() || !c.groups.iter().all(|g| got.contains(&g.as_raw())) {
            return Err(mismatch());
        }
    }
    if !c.uid.is_root() && unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(Failure::new(Stage::RegainedRoot, Errno::UnknownErrno));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn plan_dedups_groups_keeping_primary_first() {
        let a = Account {
            name: Some("a".into()),
            uid: 10,
            gid: 20,
            groups: vec![20, 30, 20, 40, 30],
            home: PathBuf::from("/"),
            shell: PathBuf::from("/bin/sh"),
        };
        let p = Plan::new(Some(&a), true, false);
        let c = p.creds.unwrap();
        assert_eq!(c.uid.as_raw(), 10);
        assert_eq!(c.gid.as_raw(), 20);
        assert_eq!(
            c.groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>(),
            vec![20, 30, 40]
        );
        assert!(p.no_new_privs);
        assert!(p.drop_caps.is_none());
    }

    #[test]
    fn plan_without_user_keeps_ids_and_lists_caps_when_asked() {
        let p = Plan::new(None, false, true);
        assert!(p.creds.is_none());
        let caps = p.drop_caps.unwrap();
        if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap() {
            assert!(caps.is_empty(), "{caps:?}");
            return;
        }
        assert!(caps.contains(&Capability::CAP_SYS_ADMIN));
        assert!(caps.windows(2).all(|w| w[0].index() < w[1].index()));
    }
}
