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
    /// `FILE_ATTRIBUTE_DIRECTORY`.
    pub const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x10;
    /// `ERROR_NO_DATA`.
    pub const ERROR_NO_DATA: u32 = 232;
    /// `ERROR_PIPE_CONNECTED`.
    pub const ERROR_PIPE_CONNECTED: u32 = 535;
    /// `ERROR_PIPE_LISTENING`.
    pub const ERROR_PIPE_LISTENING: u32 = 536;
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

/// What a `ConnectNamedPipe` on a non-blocking (`PIPE_NOWAIT`) server says: `Ok(true)`
/// when a client is connected or has connected and gone (`ERROR_PIPE_CONNECTED`,
/// `ERROR_NO_DATA`), `Ok(false)` while none has. A nonzero return is *not* a
/// connection: in non-blocking mode it only says the instance is now ready for a
/// client (the documented first call on a disconnected pipe). Any other error is
/// returned.
pub fn nowait_pipe_connected(returned_nonzero: bool, last_error: u32) -> Result<bool, u32> {
    if returned_nonzero {
        return Ok(false);
    }
    match last_error {
        ERROR_PIPE_CONNECTED | ERROR_NO_DATA => Ok(true),
        ERROR_PIPE_LISTENING => Ok(false),
        code => Err(code),
    }
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
/// propagation (`SetKernelObjectSecurity`) and walks the tree itself, by handle only:
/// each directory is listed from its own open handle (`GetFileInformationByHandleEx`,
/// [`parse_dir_entries`]), never by path, and each child is opened by its name
/// relative to that handle (`NtCreateFile` with `RootDirectory`) with
/// `FILE_OPEN_REPARSE_POINT`, so no reparse point is followed at any step. Its reparse
/// tag and link count are read from the handle just opened, and its final path must
/// lie inside the root's ([`inside_root`]), as a second guard.
///
/// Holding a directory open does *not* stop a sandboxed command from turning it into
/// a mount point meanwhile (an empty directory needs only write access for
/// `FSCTL_SET_REPARSE_POINT`); that is harmless here because the walk never uses the
/// directory's path again: a listing and relative opens through the handle stay in
/// the directory that was opened.
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
    /// A file with more than one name (hard links): its one DACL is shared with every
    /// name, some of which may be outside the root (a file hard-linked into the
    /// workspace from the user's profile). Left unchanged and reported as a gap
    /// ([`WalkReport`]), which refuses the run for a deny.
    HardLinked,
    /// A protected DACL (`P`) blocks inheritance: Windows would not change it either.
    /// A deny does not reach it, so it counts as a gap for a deny ([`WalkReport`]).
    Skip,
}

/// Decides what to do with one object below a root: `dir` from its attributes,
/// `reparse_tag` when it is a reparse point (read from the open handle,
/// `FileAttributeTagInfo`; `Some(0)` when the tag could not be read, which counts as
/// a link), `protected` when its DACL has the `P` flag, `links` its number of names
/// (`BY_HANDLE_FILE_INFORMATION.nNumberOfLinks`; 0 when unknown, which counts as
/// shared: fail closed).
///
/// A reparse point that is not a name surrogate (cloud-files placeholders,
/// deduplication, WOF-compressed files, app execution aliases) is the object itself
/// stored differently: it is treated like any file or directory.
pub fn propagation_visit(
    dir: bool,
    reparse_tag: Option<u32>,
    protected: bool,
    links: u32,
) -> Visit {
    match reparse_tag {
        _ if protected => Visit::Skip,
        // Directories cannot be hard-linked (NTFS reports 1 for them).
        _ if !dir && links != 1 => Visit::HardLinked,
        Some(tag) if tag == 0 || tag & REPARSE_TAG_NAME_SURROGATE != 0 => Visit::LinkOnly,
        _ => Visit::Apply { descend: dir },
    }
}

/// Whether `child`, the final path (`GetFinalPathNameByHandleW`) of an object the walk
/// opened below `root` (the root's final path), lies inside the root: it starts with
/// the root's path and a `\`, compared case-insensitively. A second guard behind the
/// handle-relative opens: an object that resolves elsewhere is refused.
pub fn inside_root(root: &str, child: &str) -> bool {
    let root = crate::path::fold_case(root.trim_end_matches('\\'));
    let child = crate::path::fold_case(child);
    !root.is_empty()
        && child.len() > root.len() + 1
        && child.starts_with(&root)
        && child[root.len()..].starts_with('\\')
}

/// Whether a name read from a directory listing is one child to open relative to the
/// directory: not `.` or `..`, not empty, and without a separator, a stream colon or
/// a NUL (a listing never holds those; refusing them keeps the relative open to
/// exactly one component whatever the listing says).
pub fn child_name_ok(name: &[u16]) -> bool {
    const DOT: u16 = b'.' as u16;
    !name.is_empty()
        && name != [DOT]
        && name != [DOT, DOT]
        && !name.iter().any(|&c| {
            c == 0 || c == u16::from(b'\\') || c == u16::from(b'/') || c == u16::from(b':')
        })
}

/// One entry of a directory listing (`FILE_ID_BOTH_DIR_INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (UTF-16, one component).
    pub name: Vec<u16>,
    /// `FILE_ATTRIBUTE_*`.
    pub attributes: u32,
    /// The 64-bit file ID.
    pub file_id: i64,
}

/// The layout of `FILE_ID_BOTH_DIR_INFO` (winbase.h), checked against `windows-sys`
/// with `offset_of!` in `win/sys`.
pub mod dir_info {
    /// `NextEntryOffset`.
    pub const NEXT: usize = 0;
    /// `FileAttributes`.
    pub const ATTRIBUTES: usize = 56;
    /// `FileNameLength` (bytes).
    pub const NAME_LENGTH: usize = 60;
    /// `FileId`.
    pub const FILE_ID: usize = 96;
    /// `FileName`.
    pub const NAME: usize = 104;
}

/// The entries of one buffer `GetFileInformationByHandleEx(FileIdBothDirectoryInfo)`
/// filled (`len` bytes used of it): records chained by `NextEntryOffset` (0 ends the
/// chain). A record that would run past the buffer ends the parse with `Err` (the
/// walk counts the directory as not fully listed).
pub fn parse_dir_entries(buf: &[u8]) -> Result<Vec<DirEntry>, &'static str> {
    let u32_at = |o: usize| -> Option<u32> {
        buf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let next = u32_at(at + dir_info::NEXT).ok_or("truncated record")? as usize;
        let attributes = u32_at(at + dir_info::ATTRIBUTES).ok_or("truncated record")?;
        let name_len = u32_at(at + dir_info::NAME_LENGTH).ok_or("truncated record")? as usize;
        let id = buf
            .get(at + dir_info::FILE_ID..at + dir_info::FILE_ID + 8)
            .ok_or("truncated record")?;
        let mut idb = [0u8; 8];
        idb.copy_from_slice(id);
        let start = at + dir_info::NAME;
        let name_bytes = buf
            .get(start..start.checked_add(name_len).ok_or("bad name length")?)
            .ok_or("name runs past the buffer")?;
        if name_len % 2 != 0 {
            return Err("odd name length");
        }
        out.push(DirEntry {
            name: name_bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
            attributes,
            file_id: i64::from_le_bytes(idb),
        });
        if next == 0 {
            return Ok(out);
        }
        if next < dir_info::NAME {
            return Err("record chain does not advance");
        }
        at = at.checked_add(next).ok_or("bad record offset")?;
    }
}

/// What a propagation walk did not reach, and how many links it did not follow.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalkReport {
    /// Objects that could not be read or changed, with why (the first few).
    pub failed: Vec<String>,
    /// How many could not.
    pub failures: usize,
    /// Directories deeper than [`MAX_PROPAGATION_DEPTH`] (not walked).
    pub too_deep: usize,
    /// Junctions and symbolic links given the copies on the link itself.
    pub links: usize,
    /// Files with more than one name, left unchanged ([`Visit::HardLinked`]).
    pub hard_linked: usize,
    /// Objects with a protected DACL, left unchanged ([`Visit::Skip`]).
    pub protected: usize,
}

impl WalkReport {
    /// Records one object not changed, with why.
    pub fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.failed.len() < 3 {
            self.failed.push(what);
        }
    }

    /// Records what [`propagation_visit`] decided for one object.
    pub fn count(&mut self, v: Visit) {
        match v {
            Visit::LinkOnly => self.links += 1,
            Visit::HardLinked => self.hard_linked += 1,
            Visit::Skip => self.protected += 1,
            Visit::Apply { .. } => {}
        }
    }

    /// A summary when some object was missed. `deny`: the walk carried a deny (or
    /// hide) ACE, which fails closed; then protected objects count too, since a deny
    /// that does not reach them leaves them writable (or readable) from the sandbox.
    /// For a grant, a protected object keeping its DACL is what Windows itself would
    /// do, and is not a gap.
    pub fn gap(&self, deny: bool) -> Option<String> {
        let mut parts = Vec::new();
        if self.failures > 0 {
            parts.push(format!(
                "{} object(s) not changed, e.g. {}",
                self.failures,
                self.failed.join("; ")
            ));
        }
        if self.too_deep > 0 {
            parts.push(format!(
                "{} directorie(s) deeper than {} levels not walked",
                self.too_deep, MAX_PROPAGATION_DEPTH
            ));
        }
        if self.hard_linked > 0 {
            parts.push(format!(
                "{} file(s) with more than one name (hard links) left unchanged, since their DACL is shared with names that may be outside the tree",
                self.hard_linked
            ));
        }
        if deny && self.protected > 0 {
            parts.push(format!(
                "{} object(s) with a protected DACL (inheritance disabled) left unchanged; enable inheritance on them (icacls <path> /inheritance:e) or protect them by name",
                self.protected
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
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
                    propagation_visit(dir, Some(tag), false, 1),
                    Visit::LinkOnly,
                    "{tag:#x}"
                );
                assert_eq!(propagation_visit(dir, Some(tag), true, 1), Visit::Skip);
            }
        }
        // No answer ever descends through a name surrogate.
        for tag in [MOUNT_POINT, SYMLINK] {
            for dir in [true, false] {
                for protected in [true, false] {
                    assert!(!matches!(
                        propagation_visit(dir, Some(tag), protected, 1),
                        Visit::Apply { .. }
                    ));
                }
            }
        }
        // Other reparse points are the object itself.
        for tag in [CLOUD, DEDUP, APPEXECLINK] {
            assert_eq!(
                propagation_visit(true, Some(tag), false, 1),
                Visit::Apply { descend: true }
            );
            assert_eq!(propagation_visit(true, Some(tag), true, 1), Visit::Skip);
        }
        assert_eq!(
            propagation_visit(false, None, false, 1),
            Visit::Apply { descend: false }
        );
        assert_eq!(
            propagation_visit(true, None, false, 1),
            Visit::Apply { descend: true }
        );
        assert_eq!(propagation_visit(true, None, true, 1), Visit::Skip);
    }

    #[test]
    fn hard_linked_files_are_left_alone() {
        // A file with a second name (maybe outside the root) shares its DACL.
        assert_eq!(propagation_visit(false, None, false, 2), Visit::HardLinked);
        assert_eq!(propagation_visit(false, None, false, 0), Visit::HardLinked);
        assert_eq!(
            propagation_visit(false, Some(0xA000_000C), false, 3),
            Visit::HardLinked
        );
        assert_eq!(
            propagation_visit(false, None, false, 1),
            Visit::Apply { descend: false }
        );
        // Directories have one name.
        assert_eq!(
            propagation_visit(true, None, false, 2),
            Visit::Apply { descend: true }
        );
        let mut w = WalkReport::default();
        w.count(Visit::HardLinked);
        // A gap for a grant (a note) and for a deny (a refusal).
        assert!(w.gap(false).unwrap().contains("hard links"));
        assert!(w.gap(true).unwrap().contains("hard links"));
    }

    #[test]
    fn protected_objects_are_a_gap_only_for_denies() {
        let mut w = WalkReport::default();
        w.count(Visit::Skip);
        w.count(Visit::LinkOnly);
        w.count(Visit::Apply { descend: true });
        assert_eq!((w.protected, w.links), (1, 1));
        assert_eq!(w.gap(false), None);
        let g = w.gap(true).unwrap();
        assert!(
            g.contains("protected DACL") && g.contains("/inheritance:e"),
            "{g}"
        );
        // Combined with the deny rule of the plan: a deny refuses.
        use crate::plan::{on_partial_propagation, AcePurpose, PartialPropagation};
        assert_eq!(
            on_partial_propagation(&[AcePurpose::Protect]),
            PartialPropagation::Refuse
        );
        let mut f = WalkReport::default();
        for i in 0..5 {
            f.fail(format!("x{i}"));
        }
        assert_eq!(f.failures, 5);
        assert_eq!(f.failed.len(), 3);
        assert!(f.gap(false).unwrap().starts_with("5 object(s)"));
        assert_eq!(WalkReport::default().gap(true), None);
    }

    #[test]
    fn children_must_resolve_inside_the_root() {
        let root = r"\\?\C:\Users\me\ws";
        assert!(inside_root(root, r"\\?\C:\Users\me\ws\src\a.rs"));
        assert!(inside_root(root, r"\\?\c:\users\ME\WS\x"));
        assert!(inside_root(&format!("{root}\\"), r"\\?\C:\Users\me\ws\x"));
        // A junction's target, a sibling with the root as prefix, the root itself.
        assert!(!inside_root(root, r"\\?\C:\Users\me\.ssh\id_ed25519"));
        assert!(!inside_root(root, r"\\?\C:\Users\me\ws2\x"));
        assert!(!inside_root(root, root));
        assert!(!inside_root(root, &format!("{root}\\")));
        assert!(!inside_root("", r"\x"));
        // A volume root.
        assert!(inside_root(r"\\?\D:\", r"\\?\D:\x"));
        assert!(!inside_root(r"\\?\D:\", r"\\?\E:\x"));
    }

    #[test]
    fn child_names_are_one_component() {
        let w = |s: &str| s.encode_utf16().collect::<Vec<u16>>();
        assert!(child_name_ok(&w("a.txt")));
        assert!(child_name_ok(&w("..x")));
        assert!(child_name_ok(&w("we ird;(name)\"")));
        for bad in ["", ".", "..", "a\\b", "a/b", "a:stream", "a\0b"] {
            assert!(!child_name_ok(&w(bad)), "{bad:?}");
        }
    }

    fn record(name: &str, attributes: u32, id: i64, last: bool) -> Vec<u8> {
        let name: Vec<u16> = name.encode_utf16().collect();
        let len = (dir_info::NAME + name.len() * 2).next_multiple_of(8);
        let mut r = vec![0u8; len];
        let next = if last { 0 } else { len as u32 };
        r[dir_info::NEXT..dir_info::NEXT + 4].copy_from_slice(&next.to_le_bytes());
        r[dir_info::ATTRIBUTES..dir_info::ATTRIBUTES + 4]
            .copy_from_slice(&attributes.to_le_bytes());
        r[dir_info::NAME_LENGTH..dir_info::NAME_LENGTH + 4]
            .copy_from_slice(&((name.len() * 2) as u32).to_le_bytes());
        r[dir_info::FILE_ID..dir_info::FILE_ID + 8].copy_from_slice(&id.to_le_bytes());
        for (i, c) in name.iter().enumerate() {
            r[dir_info::NAME + 2 * i..dir_info::NAME + 2 * i + 2].copy_from_slice(&c.to_le_bytes());
        }
        r
    }

    #[test]
    fn directory_listings_parse() {
        let mut buf = record(".", 0x10, 5, false);
        buf.extend(record("src", 0x10, 7, false));
        buf.extend(record("a (b);c.txt", 0x20, -3, true));
        buf.extend([0xAA; 40]); // unused rest of the buffer
        let e = parse_dir_entries(&buf).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(String::from_utf16(&e[1].name).unwrap(), "src");
        assert_eq!((e[1].attributes, e[1].file_id), (0x10, 7));
        assert_eq!(String::from_utf16(&e[2].name).unwrap(), "a (b);c.txt");
        assert_eq!(e[2].file_id, -3);
        // Truncated: a name or a record running past the end.
        let one = record("abcdef", 0x20, 1, true);
        assert!(parse_dir_entries(&one[..one.len() - 8]).is_err());
        assert!(parse_dir_entries(&one[..50]).is_err());
        assert!(parse_dir_entries(&[]).is_err());
        // A chain pointing past the buffer, or not advancing.
        let mut bad = record("a", 0x20, 1, false);
        assert!(parse_dir_entries(&bad).is_err());
        bad[0..4].copy_from_slice(&4u32.to_le_bytes());
        assert!(parse_dir_entries(&bad).is_err());
    }

    #[test]
    fn nowait_connect_counts_only_real_clients() {
        assert_eq!(nowait_pipe_connected(true, 0), Ok(false));
        assert_eq!(
            nowait_pipe_connected(false, ERROR_PIPE_LISTENING),
            Ok(false)
        );
        assert_eq!(nowait_pipe_connected(false, ERROR_PIPE_CONNECTED), Ok(true));
        assert_eq!(nowait_pipe_connected(false, ERROR_NO_DATA), Ok(true));
        assert_eq!(nowait_pipe_connected(false, 5), Err(5));
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
