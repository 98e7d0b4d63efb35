//! Every `unsafe` block of the crate, each with its `// SAFETY:` justification: thin wrappers over
//! libc (and nix's unsafe `fork`) where nix has no safe, allocation-free or realtime-signal-aware
//! API, shared by `init` and `inject` from the floor below both. No decisions are made here;
//! nothing here allocates after `fork`. The one `unsafe` call outside this file is
//! `init::spawn`'s call of [`fork`], an `unsafe fn` whose caller states the condition it keeps.

use std::ffi::{c_char, CString};
use std::mem::MaybeUninit;
use std::ptr;

use nix::errno::Errno;
use zeroize::Zeroizing;

/// A `sigset_t` that can hold realtime signals (nix's `SigSet` cannot).
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn empty() -> SigSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the whole set it is given and cannot fail for a valid
        // pointer; the value is only read after that.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            SigSet(set.assume_init())
        }
    }

    /// Adds `sig`; false when libc refuses it (out of range or reserved by libc itself).
    pub fn add(&mut self, sig: i32) -> bool {
        // SAFETY: `self.0` is an initialised sigset_t; sigaddset only validates `sig`.
        unsafe { libc::sigaddset(&mut self.0, sig) == 0 }
    }

    pub fn contains(&self, sig: i32) -> bool {
        // SAFETY: `self.0` is an initialised sigset_t; sigismember only reads it.
        unsafe { libc::sigismember(&self.0, sig) == 1 }
    }
}

impl std::fmt::Debug for SigSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sigs: Vec<i32> = (1..=libc::SIGRTMAX())
            .filter(|&s| self.contains(s))
            .collect();
        f.debug_tuple("SigSet").field(&sigs).finish()
    }
}

/// The signal mask the init started with, and the set it blocks to wait on.
#[derive(Clone, Copy, Debug)]
pub struct Masks {
    pub original: SigSet,
    pub blocked: SigSet,
}

/// Blocks `blocked` (the init's forwardable set, built by `init::signals`), and sets SIGCHLD to
/// its default action so an inherited `SIG_IGN` cannot make the kernel auto-reap the child
/// before the init reads its status.
pub fn block(blocked: SigSet) -> Result<Masks, Errno> {
    let mut original = SigSet::empty();
    // SAFETY: both pointers are valid initialised sigsets living across the call.
    let rc = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &blocked.0, &mut original.0) };
    Errno::result(rc)?;
    default_disposition(libc::SIGCHLD)?;
    Ok(Masks { original, blocked })
}

/// Sets the calling thread's mask (used to restore the original mask, in the child or before
/// `sandbox-init env`). Async-signal-safe.
pub fn set_mask(mask: &SigSet) -> Result<(), Errno> {
    // SAFETY: `mask.0` is an initialised sigset; a null old-set pointer is allowed.
    let rc = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &mask.0, ptr::null_mut()) };
    Errno::result(rc).map(drop)
}

/// Resets `sig` to `SIG_DFL` with no flags and an empty mask. Async-signal-safe; used on every
/// signal in the child. Calls `rt_sigaction` directly: libc wrappers refuse the numbers they
/// reserve (32 and 33 in glibc, 32 to 34 in musl), yet those can be inherited as ignored too.
pub fn default_disposition(sig: i32) -> Result<(), Errno> {
    // The kernel's `struct sigaction` on x86_64/aarch64: handler, flags, restorer, mask.
    // All zero means SIG_DFL, no flags, no restorer (only needed for handlers), empty mask.
    let action = [0u64; 4];
    let mask_size: libc::size_t = 8;
    // SAFETY: `action` is a valid, fully initialised kernel sigaction for the call's duration;
    // a null old-action pointer is allowed; `mask_size` is the kernel's sigset size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::c_long::from(sig),
            action.as_ptr(),
            ptr::null_mut::<u64>(),
            mask_size,
        )
    };
    Errno::result(rc).map(drop)
}

/// A signal taken off the pending queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub sig: i32,
    /// The sender's pid as the kernel reports it (0 when sent by the kernel or from outside the
    /// namespace).
    pub pid: i32,
}

/// Waits for one of `set` (which must be blocked). EINTR is returned to the caller.
pub fn sigwaitinfo(set: &SigSet) -> Result<Received, Errno> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `set` is initialised, `info` is writable storage for one siginfo_t.
    let sig = unsafe { libc::sigwaitinfo(&set.0, info.as_mut_ptr()) };
    let sig = Errno::result(sig)?;
    // SAFETY: sigwaitinfo filled `info` on success (and it was zeroed before). si_pid reads the
    // union member every signal sent by kill/sigqueue/SIGCHLD carries; for the rest it is 0.
    let pid = unsafe { info.assume_init().si_pid() };
    Ok(Received { sig, pid })
}

/// Waits for one of `set` (which must be blocked) for at most `timeout`: `Ok(None)` when it
/// passed with nothing pending. EINTR is returned to the caller.
pub fn sigtimedwait(set: &SigSet, timeout: std::time::Duration) -> Result<Option<Received>, Errno> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as _,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `set` is initialised, `info` is writable storage for one siginfo_t, `ts` is a
    // valid timespec living across the call.
    let sig = unsafe { libc::sigtimedwait(&set.0, info.as_mut_ptr(), &ts) };
    match Errno::result(sig) {
        Ok(sig) => {
            // SAFETY: as in `sigwaitinfo`: filled on success, zeroed before.
            let pid = unsafe { info.assume_init().si_pid() };
            Ok(Some(Received { sig, pid }))
        }
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `kill(pid, sig)`; a negative pid names a process group. Takes raw numbers so realtime
/// signals can be forwarded.
pub fn kill(pid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: kill has no memory arguments.
    Errno::result(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// `waitpid(-1, WNOHANG)`: `Ok(None)` when children exist but none has ended.
/// Raw status, so a death by a realtime signal is not lost in decoding.
pub fn wait_any_nohang() -> Result<Option<(i32, i32)>, Errno> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the call's duration.
    let pid = Errno::result(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) })?;
    Ok((pid > 0).then_some((pid, status)))
}

/// Which side of a fork we are on.
pub enum Forked {
    Child,
    Parent { child: i32 },
}

/// Forks.
///
/// # Safety
/// The caller's child branch must only call async-signal-safe, allocation-free code until it
/// execs or `_exit`s (`init::spawn` keeps that promise). That is also what makes a fork safe
/// while another thread runs (the watcher of `--on-change`, which may hold a lock of the
/// allocator or of stderr at that instant: the child never takes either).
pub unsafe fn fork() -> Result<Forked, Errno> {
    // SAFETY: the caller keeps the condition above (an async-signal-safe, allocation-free child).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent {
            child: child.as_raw(),
        }),
    }
}

/// `_exit(code)`: ends the forked child without running the parent's atexit handlers or
/// flushing its stdio buffers. Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Whether fd 0 is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty takes a plain descriptor number and has no memory arguments.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Makes `pgid` the foreground process group of the terminal on fd 0. Async-signal-safe.
pub fn tcsetpgrp_stdin(pgid: i32) -> Result<(), Errno> {
    // SAFETY: tcsetpgrp takes a descriptor number and a pid, no memory.
    Errno::result(unsafe { libc::tcsetpgrp(libc::STDIN_FILENO, pgid) }).map(drop)
}

/// `ioctl(0, TIOCNOTTY)`: the caller gives up its controlling terminal (fd 0).
pub fn release_stdin_tty() -> Result<(), Errno> {
    // SAFETY: TIOCNOTTY takes no argument and touches no memory of ours.
    Errno::result(unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCNOTTY) }).map(drop)
}

/// `ioctl(0, TIOCSCTTY, 0)`: a session leader takes the terminal on fd 0 as its controlling
/// terminal (without stealing it from another session). Async-signal-safe.
pub fn take_stdin_tty() -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal), no memory.
    Errno::result(unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) }).map(drop)
}

/// `PR_SET_PDEATHSIG` with a raw number (nix's wrapper cannot take realtime signals).
pub fn set_pdeathsig(sig: i32) -> Result<(), Errno> {
    // SAFETY: PR_SET_PDEATHSIG takes the signal as an integer argument; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// `PR_GET_PDEATHSIG`: the parent-death signal of the calling thread (0 for none). A change of
/// the filesystem ids (`setfsuid`) clears it, so whoever changes them puts it back.
pub fn pdeathsig() -> Result<i32, Errno> {
    let mut sig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer, which is valid and writable.
    let rc = unsafe {
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut sig as *mut libc::c_int as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(rc).map(|_| sig)
}

/// Reads the calling process's supplementary groups into `buf`. Async-signal-safe, no
/// allocation (nix's `getgroups` allocates).
pub fn getgroups(buf: &mut [libc::gid_t]) -> Result<usize, Errno> {
    let len = libc::c_int::try_from(buf.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `buf` is writable for `len` elements.
    let n = unsafe { libc::getgroups(len, buf.as_mut_ptr()) };
    Errno::result(n).map(|n| n as usize)
}

/// Everything `execvpe` needs, built before `fork` so the child allocates nothing. Environment
/// strings may hold secret values: they live in zeroizing buffers, and the parent calls
/// [`ExecSpec::wipe_env`] right after the fork.
pub struct ExecSpec {
    file: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    env: Vec<Zeroizing<Vec<u8>>>,
    env_ptrs: Vec<*const c_char>,
}

impl ExecSpec {
    /// `env` entries are `NAME=value` each ending in exactly one NUL byte.
    ///
    /// # Panics
    /// When an env entry does not end in NUL or has a NUL inside (a bug in the caller).
    pub fn new(file: CString, argv: Vec<CString>, env: Vec<Zeroizing<Vec<u8>>>) -> ExecSpec {
        for e in &env {
            assert!(
                e.last() == Some(&0) && !e[..e.len() - 1].contains(&0),
                "env entry must be NUL-terminated without inner NUL"
            );
        }
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(ptr::null()))
            .collect();
        let env_ptrs = env
            .iter()
            .map(|e| e.as_ptr().cast::<c_char>())
            .chain(std::iter::once(ptr::null()))
            .collect();
        ExecSpec {
            file,
            argv,
            argv_ptrs,
            env,
            env_ptrs,
        }
    }

    pub fn file(&self) -> &CString {
        &self.file
    }

    pub fn argv(&self) -> &[CString] {
        &self.argv
    }

    /// Drops (zeroizing) every environment string; the spec cannot exec afterwards.
    pub fn wipe_env(&mut self) {
        self.env_ptrs.clear();
        self.env.clear();
        self.env.shrink_to_fit();
    }

    /// `execvpe(file, argv, envp)`: PATH search like a shell. Only returns on failure.
    pub fn exec(&self) -> Errno {
        if self.env_ptrs.is_empty() {
            return Errno::EFAULT;
        }
        // SAFETY: `file` is a valid C string; `argv_ptrs` and `env_ptrs` are NULL-terminated
        // arrays of pointers into C strings owned by `self`, which outlives the call (on
        // success the process image is replaced).
        unsafe {
            libc::execvpe(
                self.file.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            );
        }
        Errno::last()
    }
}

/// The init's global allocator: the system allocator, except that every block is zeroed before
/// it goes back (on `dealloc`, and for the old block of a `realloc` that moves). Buffers the init
/// does not own, such as serde_json's scratch string, would otherwise leave copies of values in
/// freed heap memory for as long as the init supervises its child. Installed by `src/bin/sandbox-init.rs` only (not the daemon,
/// not the tests).
pub struct ZeroizingAlloc;

/// Takes ownership of a descriptor nix just returned from a successful `open`/`openat`.
pub fn own_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass only a descriptor freshly returned by a successful open call, which
    // nothing else owns or closes; the OwnedFd becomes its only owner.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Overwrites `len` bytes at `ptr` with zeros in a way the optimiser keeps (volatile writes), even
/// though the block is freed right after.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe(ptr: *mut u8, len: usize) {
    use zeroize::Zeroize;
    if len == 0 {
        return;
    }
    // SAFETY: the caller guarantees `ptr..ptr+len` is one live allocation we may write.
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }.zeroize();
}

/// `realloc` over `inner` that never hands a block back to `inner` unwiped: growing or
/// shrinking alike, a new block is allocated, the kept bytes copied, and the whole old block
/// wiped before it is freed. (Forwarding a shrink to `inner.realloc` is not enough: musl may
/// move the block and free the old one with its first `new_size` bytes intact.)
///
/// # Safety
/// `GlobalAlloc::realloc`'s contract: `ptr` is a live block of `inner` with `layout`, and
/// `new_size` rounded to `layout.align()` does not overflow `isize`.
unsafe fn zeroizing_realloc<A: std::alloc::GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: std::alloc::Layout,
    new_size: usize,
) -> *mut u8 {
    // SAFETY: `new_size` with the old alignment is a valid layout per realloc's contract; both
    // blocks are valid for `min(old, new)` bytes and do not overlap; the old block is wiped over
    // its whole size before it is freed with its own layout.
    unsafe {
        let new_layout = std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
        let new = inner.alloc(new_layout);
        if !new.is_null() {
            ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            wipe(ptr, layout.size());
            inner.dealloc(ptr, layout);
        }
        new
    }
}

// SAFETY: every method forwards to `System` with the same layout contract; the only additions
// are writes inside blocks the caller still owns (before they are freed) and, for realloc, an
// alloc + copy of the kept bytes + wipe + dealloc (`zeroizing_realloc`), which is what
// `GlobalAlloc::realloc`'s default does plus the wipe.
unsafe impl std::alloc::GlobalAlloc for ZeroizingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout contract.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout contract.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes until the dealloc below.
        unsafe {
            wipe(ptr, layout.size());
            std::alloc::System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's realloc contract.
        unsafe { zeroizing_realloc(&std::alloc::System, ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroizing_alloc_keeps_contents_through_realloc() {
        use std::alloc::{GlobalAlloc, Layout};
        let a = ZeroizingAlloc;
        let layout = Layout::from_size_align(16, 8).unwrap();
        // SAFETY: each pointer is used within the size it was (re)allocated with, and freed once
        // with its current layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            for i in 0..16 {
                *p.add(i) = i as u8 + 1;
            }
            let p = a.realloc(p, layout, 4096);
            assert!(!p.is_null());
            assert_eq!(
                std::slice::from_raw_parts(p, 16),
                &(1..=16).collect::<Vec<u8>>()[..]
            );
            let big = Layout::from_size_align(4096, 8).unwrap();
            let p = a.realloc(p, big, 8);
            assert_eq!(std::slice::from_raw_parts(p, 8), &[1, 2, 3, 4, 5, 6, 7, 8]);
            a.dealloc(p, Layout::from_size_align(8, 8).unwrap());
            let z = a.alloc_zeroed(big);
            assert!(std::slice::from_raw_parts(z, 4096).iter().all(|&b| b == 0));
            a.dealloc(z, big);
        }
    }

    /// Records whether every block it frees was all zeros, and refuses `realloc`: the zeroizing
    /// realloc must never hand an unwiped block back to the allocator under it.
    struct Spy {
        freed_dirty: std::sync::atomic::AtomicBool,
    }

    // SAFETY: forwards to `System`; reads only inside the block being freed.
    unsafe impl std::alloc::GlobalAlloc for Spy {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's contract.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: `ptr` is live for `layout.size()` bytes until the dealloc below.
            unsafe {
                if std::slice::from_raw_parts(ptr, layout.size())
                    .iter()
                    .any(|&b| b != 0)
                {
                    self.freed_dirty
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                std::alloc::System.dealloc(ptr, layout);
            }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, n: usize) -> *mut u8 {
            // Marks the defect: the old block's head would be freed by the inner realloc unwiped.
            self.freed_dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
            // SAFETY: forwarded with the caller's contract.
            unsafe { std::alloc::System.realloc(ptr, layout, n) }
        }
    }

    #[test]
    fn a_shrinking_realloc_wipes_the_whole_old_block() {
        use std::alloc::{GlobalAlloc, Layout};
        let spy = Spy {
            freed_dirty: std::sync::atomic::AtomicBool::new(false),
        };
        let big = Layout::from_size_align(4096, 8).unwrap();
        let small = Layout::from_size_align(16, 8).unwrap();
        // SAFETY: each pointer is used within its current size and freed once with its layout.
        unsafe {
            let p = spy.alloc(big);
            assert!(!p.is_null());
            for i in 0..4096 {
                *p.add(i) = (i % 251) as u8 + 1;
            }
            let q = zeroizing_realloc(&spy, p, big, 16);
            assert!(!q.is_null());
            let want: Vec<u8> = (0..16).map(|i| i as u8 + 1).collect();
            assert_eq!(std::slice::from_raw_parts(q, 16), &want[..]);
            assert!(
                !spy.freed_dirty.load(std::sync::atomic::Ordering::SeqCst),
                "the old block went back to the allocator with data in it"
            );
            // And through the real allocator.
            let r = ZeroizingAlloc.alloc(big);
            ptr::write_bytes(r, 7, 4096);
            let r = ZeroizingAlloc.realloc(r, big, 16);
            assert_eq!(std::slice::from_raw_parts(r, 16), &[7u8; 16]);
            ZeroizingAlloc.dealloc(r, small);
            std::alloc::System.dealloc(q, small);
        }
    }

    use super::*;

    #[test]
    fn sigset_holds_realtime_signals() {
        let mut s = SigSet::empty();
        assert!(!s.contains(libc::SIGTERM));
        assert!(s.add(libc::SIGTERM));
        assert!(s.add(libc::SIGRTMAX()));
        assert!(s.contains(libc::SIGTERM) && s.contains(libc::SIGRTMAX()));
        assert!(!s.add(0));
        assert!(!s.add(65));
    }

    #[test]
    fn default_disposition_accepts_libc_reserved_numbers() {
        assert_eq!(default_disposition(0), Err(Errno::EINVAL));
        assert_eq!(default_disposition(libc::SIGKILL), Err(Errno::EINVAL));
        assert_eq!(default_disposition(65), Err(Errno::EINVAL));
        // Changing 32..34 in the test process would disturb libc: only check the numbers are
        // in the kernel's range, which the call above proves for 0, 9 and 65.
        assert_eq!(default_disposition(libc::SIGURG), Ok(()));
    }

    #[test]
    fn exec_spec_arrays_are_null_terminated_and_wipe_disables_exec() {
        let mut spec = ExecSpec::new(
            CString::new("true").unwrap(),
            vec![CString::new("true").unwrap()],
            vec![Zeroizing::new(b"A=1\0".to_vec())],
        );
        assert_eq!(spec.argv_ptrs.len(), 2);
        assert!(spec.argv_ptrs[1].is_null());
        assert_eq!(spec.env_ptrs.len(), 2);
        spec.wipe_env();
        assert!(spec.env.is_empty());
        assert_eq!(spec.exec(), Errno::EFAULT);
    }

    #[test]
    #[should_panic(expected = "NUL-terminated")]
    fn exec_spec_rejects_unterminated_env() {
        ExecSpec::new(
            CString::new("x").unwrap(),
            vec![],
            vec![Zeroizing::new(b"A=1".to_vec())],
        );
    }
}
