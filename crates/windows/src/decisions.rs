//! The decisions of the apply layer, as pure functions and data, so that they are
//! tested on every OS: `win/` only executes them (with the Win32 calls in `win/sys`).
//!
//! The Win32 constants are repeated here with their documented values because
//! `windows-sys` is a Windows-only dependency; `win/sys` asserts at compile time that
//! every one equals the `windows-sys` constant of the same name.

use std::fmt;
use std::sync::{Mutex, PoisonError};

/// Win32 values used by the decisions below (checked against `windows-sys` in `win/sys`).
pub mod win32 {
    /// `CREATE_SUSPENDED`.
    pub const CREATE_SUSPENDED: u32 = 0x0000_0004;
    /// `CREATE_NEW_CONSOLE`.
    pub const CREATE_NEW_CONSOLE: u32 = 0x0000_0010;
    /// `CREATE_UNICODE_ENVIRONMENT`.
    pub const CREATE_UNICODE_ENVIRONMENT: u32 = 0x0000_0400;
    /// `EXTENDED_STARTUPINFO_PRESENT`.
    pub const EXTENDED_STARTUPINFO_PRESENT: u32 = 0x0008_0000;
    /// `CREATE_NO_WINDOW`.
    pub const CREATE_NO_WINDOW: u32 = 0x0800_0000;
    /// `STARTF_USESHOWWINDOW`.
    pub const STARTF_USESHOWWINDOW: u32 = 0x0000_0001;
    /// `STARTF_USESTDHANDLES`.
    pub const STARTF_USESTDHANDLES: u32 = 0x0000_0100;
    /// `SW_HIDE`.
    pub const SW_HIDE: u16 = 0;
    /// `LOGON_WITH_PROFILE`.
    pub const LOGON_WITH_PROFILE: u32 = 0x0000_0001;
    /// `UF_SCRIPT`.
    pub const UF_SCRIPT: u32 = 0x0001;
    /// `UF_ACCOUNTDISABLE`.
    pub const UF_ACCOUNTDISABLE: u32 = 0x0002;
    /// `UF_LOCKOUT`.
    pub const UF_LOCKOUT: u32 = 0x0010;
    /// `UF_PASSWD_NOTREQD`.
    pub const UF_PASSWD_NOTREQD: u32 = 0x0020;
    /// `UF_PASSWD_CANT_CHANGE`.
    pub const UF_PASSWD_CANT_CHANGE: u32 = 0x0040;
    /// `UF_TEMP_DUPLICATE_ACCOUNT`.
    pub const UF_TEMP_DUPLICATE_ACCOUNT: u32 = 0x0100;
    /// `UF_NORMAL_ACCOUNT`.
    pub const UF_NORMAL_ACCOUNT: u32 = 0x0200;
    /// `UF_INTERDOMAIN_TRUST_ACCOUNT`.
    pub const UF_INTERDOMAIN_TRUST_ACCOUNT: u32 = 0x0800;
    /// `UF_WORKSTATION_TRUST_ACCOUNT`.
    pub const UF_WORKSTATION_TRUST_ACCOUNT: u32 = 0x1000;
    /// `UF_SERVER_TRUST_ACCOUNT`.
    pub const UF_SERVER_TRUST_ACCOUNT: u32 = 0x2000;
    /// `UF_DONT_EXPIRE_PASSWD`.
    pub const UF_DONT_EXPIRE_PASSWD: u32 = 0x1_0000;
}

use win32::*;

// ---------------------------------------------------------------- 1. control pipe client

/// Whether the process that connected to the runner's control pipe may be served:
/// only the runner itself (its pid as `CreateProcessWithLogonW` returned it). The
/// pipe's DACL also lets the sandbox user's other processes (another run's command)
/// in; they must be refused. A pid of 0 (no client, or an API that failed to say) is
/// never the runner.
pub fn pipe_client_allowed(runner_pid: u32, client_pid: u32) -> bool {
    client_pid != 0 && client_pid == runner_pid
}

// ---------------------------------------------------------------- 2. handover order

/// One step of starting a command as the sandbox user, on workfence's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverStep {
    /// `CreateProcessWithLogonW` of the runner, suspended ([`launch_flags`]).
    StartRunnerSuspended,
    /// Replace the DACL of the runner's process and thread (the logon's default one
    /// grants the sandbox user, so every other run's command).
    CloseRunnerObjects,
    /// Put the runner in workfence's job, or ask it to create its own.
    PlaceRunnerInJob,
    /// Let the runner run.
    ResumeRunner,
    /// Check that the pipe's client is the runner ([`pipe_client_allowed`]).
    CheckPipeClient,
    /// Send the request; the runner creates the command suspended.
    SendRequest,
    /// Duplicate the command's process and thread (and the runner's job) into workfence.
    TakeOverHandles,
    /// Tell the runner it may exit (the "ok" line).
    ReleaseRunner,
    /// Resume the command's main thread: only now does it run.
    ResumeCommand,
}

/// The order workfence executes [`HandoverStep`]s in: nothing of the sandbox user
/// runs before its objects are closed to other runs, and the command runs only once
/// workfence holds every handle that can kill it.
pub const HANDOVER: [HandoverStep; 9] = [
    HandoverStep::StartRunnerSuspended,
    HandoverStep::CloseRunnerObjects,
    HandoverStep::PlaceRunnerInJob,
    HandoverStep::ResumeRunner,
    HandoverStep::CheckPipeClient,
    HandoverStep::SendRequest,
    HandoverStep::TakeOverHandles,
    HandoverStep::ReleaseRunner,
    HandoverStep::ResumeCommand,
];

/// A step taken out of [`HANDOVER`]'s order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoverOutOfOrder {
    /// The step that was due (`None`: all were done).
    pub expected: Option<HandoverStep>,
    /// The step attempted.
    pub got: HandoverStep,
}

impl fmt::Display for HandoverOutOfOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "internal error: handover step {:?} attempted while {:?} was due; report this bug",
            self.got, self.expected
        )
    }
}

impl std::error::Error for HandoverOutOfOrder {}

/// Where the apply layer is in [`HANDOVER`]: it calls [`Handover::step`] before each
/// step, which refuses any step out of order (fail closed, the caller stops).
#[derive(Debug, Default)]
pub struct Handover {
    done: usize,
}

impl Handover {
    /// Nothing done yet.
    pub fn new() -> Handover {
        Handover::default()
    }

    /// Records `s` as the next step, or refuses it when another one is due.
    pub fn step(&mut self, s: HandoverStep) -> Result<(), HandoverOutOfOrder> {
        let expected = HANDOVER.get(self.done).copied();
        if expected != Some(s) {
            return Err(HandoverOutOfOrder { expected, got: s });
        }
        self.done += 1;
        Ok(())
    }

    /// The steps done, in order.
    pub fn done(&self) -> &'static [HandoverStep] {
        &HANDOVER[..self.done]
    }
}

// ---------------------------------------------------------------- 3 and 5. launch flags

/// How a process is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `CreateProcess(AsUser)W` with inheritable pipe (or file) handles as stdio.
    Pipes,
    /// `CreateProcess(AsUser)W` attached to a pseudo console.
    Pty,
    /// `CreateProcessWithLogonW` of the runner (always with pipe stdio: seclogon takes
    /// no attribute list, so no pseudo console; the runner makes that itself).
    Seclogon,
}

/// Which std handles `STARTUPINFO` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdHandles {
    /// The three handles given.
    Given,
    /// Null: with `STARTF_USESTDHANDLES` the child cannot pick up workfence's own
    /// std handles and attaches to the pseudo console.
    Null,
}

/// The flags one creation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchFlags {
    /// `dwCreationFlags`.
    pub creation: u32,
    /// `STARTUPINFO.dwFlags`.
    pub startf: u32,
    /// `STARTUPINFO.wShowWindow` (used with `STARTF_USESHOWWINDOW`).
    pub show_window: u16,
    /// The std handles in `STARTUPINFO`.
    pub std_handles: StdHandles,
    /// `bInheritHandles` (`CreateProcess*W` only; seclogon has no such argument).
    pub inherit_handles: bool,
    /// `dwLogonFlags` (`CreateProcessWithLogonW` only, else 0).
    pub logon: u32,
}

/// The creation flags of each launch. Every launch is suspended: the caller resumes
/// only after the process is in its job and its handles are held ([`HANDOVER`]).
pub fn launch_flags(launch: Launch) -> LaunchFlags {
    match launch {
        // A hidden console of its own, never ours.
        Launch::Pipes => LaunchFlags {
            creation: EXTENDED_STARTUPINFO_PRESENT
                | CREATE_UNICODE_ENVIRONMENT
                | CREATE_SUSPENDED
                | CREATE_NO_WINDOW,
            startf: STARTF_USESTDHANDLES,
            show_window: 0,
            std_handles: StdHandles::Given,
            inherit_handles: true,
            logon: 0,
        },
        // The pseudo console is its console: no CREATE_NO_WINDOW (which would give it
        // none), nothing inherited, and null std handles so that it takes the pseudo
        // console's rather than workfence's.
        Launch::Pty => LaunchFlags {
            creation: EXTENDED_STARTUPINFO_PRESENT | CREATE_UNICODE_ENVIRONMENT | CREATE_SUSPENDED,
            startf: STARTF_USESTDHANDLES,
            show_window: 0,
            std_handles: StdHandles::Null,
            inherit_handles: false,
            logon: 0,
        },
        // CREATE_NO_WINDOW is not among the flags seclogon accepts: a new console,
        // hidden. The profile is loaded (created at setup) so that the user's
        // registry hive and known folders exist.
        Launch::Seclogon => LaunchFlags {
            creation: CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT | CREATE_NEW_CONSOLE,
            startf: STARTF_USESTDHANDLES | STARTF_USESHOWWINDOW,
            show_window: SW_HIDE,
            std_handles: StdHandles::Given,
            inherit_handles: true,
            logon: LOGON_WITH_PROFILE,
        },
    }
}

// ---------------------------------------------------------------- 4. GetLastError first

/// Turns a failed call into an error, reading the thread's last error before anything
/// else runs: `read_error` (`GetLastError`) is called first, and the error is built
/// (formatting, allocating) only from its result, inside `error`. Because the message
/// is a closure, no caller can format it between the failing call and the read.
pub fn check_last_error<E>(
    failed: bool,
    read_error: impl FnOnce() -> u32,
    error: impl FnOnce(u32) -> E,
) -> Result<(), E> {
    if failed {
        let code = read_error();
        Err(error(code))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------- 6. account flags

/// A property of a sandbox account that setup ensures (and repairs on a re-run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountFlag {
    /// `UF_ACCOUNTDISABLE` cleared.
    Enabled,
    /// `UF_LOCKOUT` cleared.
    NotLockedOut,
    /// `UF_PASSWD_NOTREQD` cleared.
    PasswordRequired,
    /// `UF_DONT_EXPIRE_PASSWD` set: the stored password keeps working.
    PasswordNeverExpires,
    /// `UF_PASSWD_CANT_CHANGE` set: the command cannot change it and lock workfence out.
    CannotChangePassword,
    /// `UF_SCRIPT` set (required by `NetUserSetInfo`).
    Script,
}

impl AccountFlag {
    /// Every flag setup ensures.
    pub const ALL: [AccountFlag; 6] = [
        AccountFlag::Enabled,
        AccountFlag::NotLockedOut,
        AccountFlag::PasswordRequired,
        AccountFlag::PasswordNeverExpires,
        AccountFlag::CannotChangePassword,
        AccountFlag::Script,
    ];

    /// The `UF_` bit and whether it must be set (else cleared).
    pub fn bit(self) -> (u32, bool) {
        match self {
            AccountFlag::Enabled => (UF_ACCOUNTDISABLE, false),
            AccountFlag::NotLockedOut => (UF_LOCKOUT, false),
            AccountFlag::PasswordRequired => (UF_PASSWD_NOTREQD, false),
            AccountFlag::PasswordNeverExpires => (UF_DONT_EXPIRE_PASSWD, true),
            AccountFlag::CannotChangePassword => (UF_PASSWD_CANT_CHANGE, true),
            AccountFlag::Script => (UF_SCRIPT, true),
        }
    }

    /// Whether `flags` satisfies it.
    pub fn holds(self, flags: u32) -> bool {
        let (bit, set) = self.bit();
        (flags & bit != 0) == set
    }
}

impl fmt::Display for AccountFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccountFlag::Enabled => "enabled",
            AccountFlag::NotLockedOut => "not locked out",
            AccountFlag::PasswordRequired => "password required",
            AccountFlag::PasswordNeverExpires => "password never expires",
            AccountFlag::CannotChangePassword => "cannot change password",
            AccountFlag::Script => "logon script flag",
        })
    }
}

/// The account-type bits, kept as they are.
pub const ACCOUNT_TYPE_MASK: u32 = UF_TEMP_DUPLICATE_ACCOUNT
    | UF_NORMAL_ACCOUNT
    | UF_INTERDOMAIN_TRUST_ACCOUNT
    | UF_WORKSTATION_TRUST_ACCOUNT
    | UF_SERVER_TRUST_ACCOUNT;

/// The flags a sandbox account is given: exactly the ones setup ensures (any other
/// flag someone added is dropped), with the account type kept.
pub fn account_flags(current: u32) -> u32 {
    AccountFlag::ALL
        .iter()
        .filter(|f| f.bit().1)
        .fold(current & ACCOUNT_TYPE_MASK, |acc, f| acc | f.bit().0)
}

/// What a re-run of setup repairs on an account whose flags are `current`.
pub fn account_flag_repairs(current: u32) -> Vec<AccountFlag> {
    AccountFlag::ALL
        .into_iter()
        .filter(|f| !f.holds(current))
        .collect()
}

// ---------------------------------------------------------------- 7. window station switch

/// Runs `body` while the process is switched to another window station, holding `lock`
/// from before the switch until after the switch back: the window station belongs to
/// the whole process, so two runs starting at once on different threads must not
/// interleave (one would create its desktop on the other's window station, or switch
/// back to the wrong one). `switch_to` returns what `switch_back` restores; when it
/// fails, neither `body` nor `switch_back` runs. `body` must read whatever error
/// state it needs itself: `switch_back` runs after it.
pub fn with_window_station<S, R, E>(
    lock: &Mutex<()>,
    switch_to: impl FnOnce() -> Result<S, E>,
    body: impl FnOnce() -> R,
    switch_back: impl FnOnce(S),
) -> Result<R, E> {
    // Poisoning only means another thread panicked while holding it; the switch back
    // has no early return, so the state is still consistent.
    let _held = lock.lock().unwrap_or_else(PoisonError::into_inner);
    let old = switch_to()?;
    let r = body();
    switch_back(old);
    Ok(r)
}

// ---------------------------------------------------------------- 8. runner guard

/// Calls `kill` when dropped, whatever way the scope ends (an error, a timeout, the
/// end of the run): the runner never outlives the function that started it. There is
/// deliberately no way to disarm it; terminating a process that has exited is a no-op.
pub struct TerminateOnDrop<F: FnMut()> {
    kill: F,
}

impl<F: FnMut()> TerminateOnDrop<F> {
    /// Arms the guard.
    pub fn new(kill: F) -> Self {
        TerminateOnDrop { kill }
    }
}

impl<F: FnMut()> fmt::Debug for TerminateOnDrop<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TerminateOnDrop")
    }
}

impl<F: FnMut()> Drop for TerminateOnDrop<F> {
    fn drop(&mut self) {
        (self.kill)();
    }
}

// ---------------------------------------------------------------- 9. propagation walk

/// The reparse-tag bit that marks a name surrogate: the object stands for another one
/// elsewhere in the namespace (junctions, volume mount points, symbolic links, and any
/// third-party tag with the bit). Documented on `IsReparseTagNameSurrogate`.
pub const REPARSE_TAG_NAME_SURROGATE: u32 = 0x2000_0000;

/// What workfence's own propagation of a tree grant does with one object below the
/// root. `SetNamedSecurityInfoW` and `SetSecurityInfo` propagate inheritable ACEs
/// themselves, and their documentation says nothing about reparse points: a junction
/// an earlier sandboxed run planted in a writable root (`ws\x` pointing at
/// `C:\Users\me\.ssh`) could lead the walk out of the root, writing an ACE of the
/// sandbox into the user's secrets. So workfence sets the root's DACL without
/// propagation (`SetKernelObjectSecurity`) and walks the tree itself, opening every
/// object with `FILE_FLAG_OPEN_REPARSE_POINT` and keeping the directories above it
/// open without `FILE_SHARE_DELETE` (so none can be swapped for a junction meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Give the object the inherited copies; `descend` into it when it is a directory.
    /// (Never for a name surrogate, see [`Visit::LinkOnly`].)
    Apply {
        /// Walk its children.
        descend: bool,
    },
    /// A name surrogate (junction, mount point, symbolic link): its own DACL (the link
    /// object's, opened without following it) gets the copies so that the sandbox can
    /// replace or remove the link like any file of the root, but the walk never goes
    /// through it: what it points at keeps its DACL, wherever it is.
    LinkOnly,
    /// A protected DACL (`P`) blocks inheritance: Windows would not change it either.
    Skip,
}

/// Decides what to do with one object below a root: `dir` from its attributes,
/// `reparse_tag` when it is a reparse point (read from the open handle,
/// `FileAttributeTagInfo`; `Some(0)` when the tag could not be read, which counts as
/// a link), `protected` when its DACL has the `P` flag.
///
/// A reparse point that is not a name surrogate (cloud-files placeholders,
/// deduplication, WOF-compressed files, app execution aliases) is the object itself
/// stored differently: it is treated like any file or directory.
pub fn propagation_visit(dir: bool, reparse_tag: Option<u32>, protected: bool) -> Visit {
    match reparse_tag {
        _ if protected => Visit::Skip,
        Some(tag) if tag == 0 || tag & REPARSE_TAG_NAME_SURROGATE != 0 => Visit::LinkOnly,
        _ => Visit::Apply { descend: dir },
    }
}

/// How deep workfence's propagation walks (every level keeps one directory handle
/// open). Deeper directories get the grant only for what is created in them later;
/// the run reports it like a partial grant.
pub const MAX_PROPAGATION_DEPTH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn propagation_never_goes_through_a_link() {
        const MOUNT_POINT: u32 = 0xA000_0003;
        const SYMLINK: u32 = 0xA000_000C;
        const CLOUD: u32 = 0x9000_001A;
        const DEDUP: u32 = 0x8000_0013;
        const APPEXECLINK: u32 = 0x8000_001B;
        // Junctions, mount points and symbolic links: the link itself, never its target,
        // whether it names a directory or not; a protected one is left alone.
        for tag in [MOUNT_POINT, SYMLINK, 0x2000_0000, 0] {
            for dir in [true, false] {
                assert_eq!(
                    propagation_visit(dir, Some(tag), false),
                    Visit::LinkOnly,
                    "{tag:#x}"
                );
                assert_eq!(propagation_visit(dir, Some(tag), true), Visit::Skip);
            }
        }
        // No answer ever descends through a name surrogate.
        for tag in [MOUNT_POINT, SYMLINK] {
            for dir in [true, false] {
                for protected in [true, false] {
                    assert!(!matches!(
                        propagation_visit(dir, Some(tag), protected),
                        Visit::Apply { .. }
                    ));
                }
            }
        }
        // Other reparse points are the object itself.
        for tag in [CLOUD, DEDUP, APPEXECLINK] {
            assert_eq!(
                propagation_visit(true, Some(tag), false),
                Visit::Apply { descend: true }
            );
            assert_eq!(propagation_visit(true, Some(tag), true), Visit::Skip);
        }
        assert_eq!(
            propagation_visit(false, None, false),
            Visit::Apply { descend: false }
        );
        assert_eq!(
            propagation_visit(true, None, false),
            Visit::Apply { descend: true }
        );
        assert_eq!(propagation_visit(true, None, true), Visit::Skip);
    }

    #[test]
    fn pipe_client_only_the_runner() {
        assert!(pipe_client_allowed(4242, 4242));
        assert!(!pipe_client_allowed(4242, 4243));
        assert!(!pipe_client_allowed(4242, 0));
        assert!(!pipe_client_allowed(0, 0));
    }

    #[test]
    fn handover_order() {
        let pos = |s| HANDOVER.iter().position(|x| *x == s).unwrap();
        use HandoverStep as H;
        assert_eq!(pos(H::StartRunnerSuspended), 0);
        assert!(pos(H::CloseRunnerObjects) < pos(H::ResumeRunner));
        assert!(pos(H::PlaceRunnerInJob) < pos(H::ResumeRunner));
        assert!(pos(H::CheckPipeClient) < pos(H::SendRequest));
        assert!(pos(H::TakeOverHandles) < pos(H::ResumeCommand));
        assert_eq!(pos(H::ResumeCommand), HANDOVER.len() - 1);
        let mut h = Handover::new();
        for s in HANDOVER {
            h.step(s).unwrap();
        }
        assert_eq!(h.done(), &HANDOVER[..]);
        assert_eq!(
            h.step(H::ResumeCommand),
            Err(HandoverOutOfOrder {
                expected: None,
                got: H::ResumeCommand
            })
        );
    }

    #[test]
    fn handover_refuses_skips_and_reorders() {
        use HandoverStep as H;
        // Resuming the runner before its objects are closed to other runs.
        let mut h = Handover::new();
        h.step(H::StartRunnerSuspended).unwrap();
        let e = h.step(H::ResumeRunner).unwrap_err();
        assert_eq!(e.expected, Some(H::CloseRunnerObjects));
        assert!(e.to_string().contains("ResumeRunner"));
        // Resuming the command before its handles are taken over.
        let mut h = Handover::new();
        for s in &HANDOVER[..6] {
            h.step(*s).unwrap();
        }
        assert!(h.step(H::ResumeCommand).is_err());
        // A refused step changes nothing.
        h.step(H::TakeOverHandles).unwrap();
        // Every other order of every adjacent pair is refused.
        for i in 0..HANDOVER.len() - 1 {
            let mut h = Handover::new();
            for s in &HANDOVER[..i] {
                h.step(*s).unwrap();
            }
            assert!(h.step(HANDOVER[i + 1]).is_err(), "{:?}", HANDOVER[i + 1]);
        }
    }

    #[test]
    fn every_launch_is_suspended() {
        for l in [Launch::Pipes, Launch::Pty, Launch::Seclogon] {
            let f = launch_flags(l);
            assert_ne!(f.creation & CREATE_SUSPENDED, 0, "{l:?}");
            assert_ne!(f.creation & CREATE_UNICODE_ENVIRONMENT, 0, "{l:?}");
            assert_ne!(f.startf & STARTF_USESTDHANDLES, 0, "{l:?}");
        }
    }

    #[test]
    fn pty_attaches_to_the_pseudo_console() {
        let f = launch_flags(Launch::Pty);
        assert_eq!(f.std_handles, StdHandles::Null);
        assert_ne!(f.startf & STARTF_USESTDHANDLES, 0);
        assert_eq!(f.creation & CREATE_NO_WINDOW, 0);
        assert_eq!(f.creation & CREATE_NEW_CONSOLE, 0);
        assert_ne!(f.creation & EXTENDED_STARTUPINFO_PRESENT, 0);
        assert!(!f.inherit_handles);
        let p = launch_flags(Launch::Pipes);
        assert_eq!(p.std_handles, StdHandles::Given);
        assert!(p.inherit_handles);
        assert_ne!(p.creation & CREATE_NO_WINDOW, 0);
    }

    #[test]
    fn seclogon_hidden_new_console_with_profile() {
        let f = launch_flags(Launch::Seclogon);
        assert_eq!(f.creation & CREATE_NO_WINDOW, 0);
        assert_eq!(f.creation & EXTENDED_STARTUPINFO_PRESENT, 0);
        assert_ne!(f.creation & CREATE_NEW_CONSOLE, 0);
        assert_ne!(f.startf & STARTF_USESHOWWINDOW, 0);
        assert_eq!(f.show_window, SW_HIDE);
        assert_eq!(f.logon, LOGON_WITH_PROFILE);
        assert_eq!(f.std_handles, StdHandles::Given);
        assert_eq!(
            f.creation,
            CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT | CREATE_NEW_CONSOLE
        );
    }

    #[test]
    fn last_error_read_before_message() {
        let log = RefCell::new(Vec::new());
        let r: Result<(), String> = check_last_error(
            true,
            || {
                log.borrow_mut().push("read");
                5
            },
            |code| {
                log.borrow_mut().push("format");
                format!("failed with {code}")
            },
        );
        assert_eq!(r, Err("failed with 5".into()));
        assert_eq!(*log.borrow(), ["read", "format"]);
        log.borrow_mut().clear();
        let r: Result<(), String> = check_last_error(
            false,
            || {
                log.borrow_mut().push("read");
                5
            },
            |_| unreachable!(),
        );
        assert!(r.is_ok());
        assert!(log.borrow().is_empty());
    }

    #[test]
    fn account_flags_repaired() {
        let good = UF_NORMAL_ACCOUNT | UF_SCRIPT | UF_DONT_EXPIRE_PASSWD | UF_PASSWD_CANT_CHANGE;
        assert_eq!(account_flag_repairs(good), []);
        assert_eq!(account_flags(good), good);
        let broken = UF_NORMAL_ACCOUNT | UF_ACCOUNTDISABLE | UF_LOCKOUT | UF_PASSWD_NOTREQD;
        assert_eq!(account_flag_repairs(broken), AccountFlag::ALL);
        assert_eq!(account_flags(broken), good);
        // Someone disabled it and let the password expire.
        let r = account_flag_repairs(good & !UF_DONT_EXPIRE_PASSWD | UF_ACCOUNTDISABLE);
        assert_eq!(r, [AccountFlag::Enabled, AccountFlag::PasswordNeverExpires]);
        // Unknown flags are dropped, the account type is kept.
        assert_eq!(account_flags(0x0040_0000 | UF_NORMAL_ACCOUNT), good);
        for f in AccountFlag::ALL {
            for current in [0, u32::MAX, broken, good] {
                assert!(f.holds(account_flags(current)), "{f} on {current:#x}");
            }
        }
    }

    #[test]
    fn window_station_switch_is_exclusive() {
        static LOCK: Mutex<()> = Mutex::new(());
        let station = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (1..=8)
            .map(|me| {
                let station = Arc::clone(&station);
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let seen = with_window_station(
                            &LOCK,
                            || Ok::<_, ()>(station.swap(me, Ordering::SeqCst)),
                            || {
                                std::thread::yield_now();
                                station.load(Ordering::SeqCst)
                            },
                            |old| station.store(old, Ordering::SeqCst),
                        )
                        .unwrap();
                        assert_eq!(seen, me);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(station.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn window_station_switch_failure_runs_nothing_else() {
        let lock = Mutex::new(());
        let log = RefCell::new(Vec::new());
        let r = with_window_station(
            &lock,
            || {
                log.borrow_mut().push("switch");
                Err::<(), _>(5u32)
            },
            || log.borrow_mut().push("body"),
            |_| log.borrow_mut().push("back"),
        );
        assert_eq!(r, Err(5));
        assert_eq!(*log.borrow(), ["switch"]);
        assert!(lock.try_lock().is_ok());
        let r = with_window_station(
            &lock,
            || {
                log.borrow_mut().push("switch");
                Ok::<_, u32>(())
            },
            || {
                assert!(lock.try_lock().is_err(), "lock held during the body");
                log.borrow_mut().push("body");
            },
            |_| log.borrow_mut().push("back"),
        );
        assert!(r.is_ok());
        assert_eq!(*log.borrow(), ["switch", "switch", "body", "back"]);
    }

    /// The shape of `run_as_user`: every exit after the runner started, timeouts and
    /// errors included, terminates it exactly once.
    #[test]
    fn runner_terminated_on_every_return() {
        #[derive(Clone, Copy)]
        enum Exit {
            Error,
            ConnectTimeout,
            ReplyTimeout,
            Done,
        }
        fn run(exit: Exit, kills: &AtomicUsize) -> Result<i32, &'static str> {
            let _guard = TerminateOnDrop::new(|| {
                kills.fetch_add(1, Ordering::SeqCst);
            });
            let fail = |e: bool| if e { Err("failed") } else { Ok(()) };
            fail(matches!(exit, Exit::Error))?;
            if matches!(exit, Exit::ConnectTimeout) {
                return Ok(124);
            }
            if matches!(exit, Exit::ReplyTimeout) {
                return Ok(124);
            }
            Ok(0)
        }
        for exit in [
            Exit::Error,
            Exit::ConnectTimeout,
            Exit::ReplyTimeout,
            Exit::Done,
        ] {
            let kills = AtomicUsize::new(0);
            let _ = run(exit, &kills);
            assert_eq!(kills.load(Ordering::SeqCst), 1);
        }
    }
}
