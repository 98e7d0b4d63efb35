//! The steps of the forked child's setup, and how a failed one travels back to the parent (5
//! bytes through the exec-status pipe) and becomes the child's exit status. Shared by `spawn`
//! (which runs the steps and reads the report) and `privdrop` (whose steps can fail); imports
//! neither.

use nix::errno::Errno;

use super::voice::Voice;

/// The step of the child's setup that failed (sent through the status pipe as one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    SetPgid = 1,
    SetGroups,
    SetGid,
    DropBounding,
    ClearAmbient,
    ClearInheritable,
    SetUid,
    Verify,
    RegainedRoot,
    NoNewPrivs,
    RestoreMask,
    Exec,
    SetSid,
}

impl Stage {
    const ALL: [Stage; 13] = [
        Stage::SetPgid,
        Stage::SetGroups,
        Stage::SetGid,
        Stage::DropBounding,
        Stage::ClearAmbient,
        Stage::ClearInheritable,
        Stage::SetUid,
        Stage::Verify,
        Stage::RegainedRoot,
        Stage::NoNewPrivs,
        Stage::RestoreMask,
        Stage::Exec,
        Stage::SetSid,
    ];

    fn from_u8(b: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u8 == b)
    }

    /// What the step does, for the log line.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::SetPgid => "setpgid(0, 0)",
            Stage::SetGroups => "setgroups",
            Stage::SetGid => "setgid",
            Stage::DropBounding => "drop the capability bounding set",
            Stage::ClearAmbient => "clear the ambient capabilities",
            Stage::ClearInheritable => "clear the inheritable capabilities",
            Stage::SetUid => "setuid",
            Stage::Verify => "verify the new ids (they differ from the requested ones)",
            Stage::RegainedRoot => "verify the new ids (setuid(0) still succeeds)",
            Stage::NoNewPrivs => "set no_new_privs",
            Stage::RestoreMask => "restore the signal mask",
            Stage::Exec => "exec",
            Stage::SetSid => "setsid",
        }
    }
}

/// A failed step in the child and its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub errno: Errno,
}

impl Failure {
    pub fn new(stage: Stage, errno: Errno) -> Failure {
        Failure { stage, errno }
    }

    /// The child's exit status for this failure: 127 when exec found no such file, 126 when it
    /// could not execute what it found, 1 for a setup step before exec.
    pub fn exit_code(self) -> i32 {
        match (self.stage, self.errno) {
            (Stage::Exec, Errno::ENOENT) => 127,
            (Stage::Exec, _) => 126,
            _ => 1,
        }
    }

    /// The child's exit status as the peer `voice` stands for would give it: tini 127 for
    /// ENOENT, 126 for EACCES, else 1; dumb-init 2 for any exec failure; ours
    /// [`Failure::exit_code`]. A setup step before exec is 1 in every voice.
    pub fn exit_code_for(self, voice: Voice) -> i32 {
        match (voice, self.stage, self.errno) {
            (Voice::Ours, _, _) => self.exit_code(),
            (Voice::Tini { .. }, Stage::Exec, Errno::ENOENT) => 127,
            (Voice::Tini { .. }, Stage::Exec, Errno::EACCES) => 126,
            (Voice::DumbInit { .. }, Stage::Exec, _) => 2,
            _ => 1,
        }
    }

    pub(super) fn encode(self) -> [u8; 5] {
        let e = (self.errno as i32).to_le_bytes();
        [self.stage as u8, e[0], e[1], e[2], e[3]]
    }

    pub(super) fn decode(b: [u8; 5]) -> Option<Failure> {
        Some(Failure {
            stage: Stage::from_u8(b[0])?,
            errno: Errno::from_raw(i32::from_le_bytes([b[1], b[2], b[3], b[4]])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_and_wire_round_trip() {
        assert_eq!(Failure::new(Stage::Exec, Errno::ENOENT).exit_code(), 127);
        for e in [Errno::EACCES, Errno::ENOEXEC, Errno::ENOTDIR, Errno::E2BIG] {
            assert_eq!(Failure::new(Stage::Exec, e).exit_code(), 126);
        }
        for s in Stage::ALL {
            if s != Stage::Exec {
                assert_eq!(Failure::new(s, Errno::EPERM).exit_code(), 1);
            }
            let f = Failure::new(s, Errno::EACCES);
            assert_eq!(Failure::decode(f.encode()), Some(f));
            assert!(!s.describe().is_empty());
        }
        assert_eq!(Failure::decode([0, 0, 0, 0, 0]), None);
        let tini = Voice::Tini { verbosity: 1 };
        let dumb = Voice::DumbInit { debug: false };
        for (errno, ours, tini_code, dumb_code) in [
            (Errno::ENOENT, 127, 127, 2),
            (Errno::EACCES, 126, 126, 2),
            (Errno::ENOEXEC, 126, 1, 2),
        ] {
            let f = Failure::new(Stage::Exec, errno);
            assert_eq!(f.exit_code_for(Voice::Ours), ours, "{errno}");
            assert_eq!(f.exit_code_for(tini), tini_code, "{errno}");
            assert_eq!(f.exit_code_for(dumb), dumb_code, "{errno}");
        }
        for v in [Voice::Ours, tini, dumb] {
            assert_eq!(
                Failure::new(Stage::SetSid, Errno::EPERM).exit_code_for(v),
                1
            );
        }
        assert_eq!(Failure::decode([200, 0, 0, 0, 0]), None);
    }
}
