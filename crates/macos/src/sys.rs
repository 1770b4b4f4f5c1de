//! Every `unsafe` of the crate: thin, checked wrappers over libSystem calls
//! (libproc, sandbox_check, pipes, ptys, termios, signals, the child's pre-exec).
//! Callers get safe functions and owned fds.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// `PROC_PIDT_BSDINFOWITHUNIQID` from <sys/proc_info.h>: BSD info plus unique ids.
const PROC_PIDT_BSDINFOWITHUNIQID: c_int = 18;
/// `_IO('t', 97)`, `_IOR('t', 104, struct winsize)`, `_IOW('t', 103, struct winsize)`:
/// not exported by the libc crate for Apple targets.
const TIOCSCTTY: libc::c_ulong = 0x2000_7461;
const TIOCGWINSZ: libc::c_ulong = 0x4008_7468;
const TIOCSWINSZ: libc::c_ulong = 0x8008_7467;
/// `SANDBOX_FILTER_PATH` of sandbox_check(): the variadic argument is a path.
const SANDBOX_FILTER_PATH: c_int = 1;

/// `struct proc_uniqidentifierinfo` (56 bytes in every macOS release).
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqIdentifierInfo {
    p_uuid: [u8; 16],
    p_uniqueid: u64,
    p_puniqueid: u64,
    p_reserve: [u64; 3],
}

/// `struct proc_bsdinfowithuniqid`.
#[repr(C)]
#[derive(Clone, Copy)]
struct BsdInfoWithUniqId {
    pbsd: libc::proc_bsdinfo,
    uniq: UniqIdentifierInfo,
}

pub(crate) use crate::track::ProcInfo;

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn pid_list(f: impl Fn(*mut c_void, c_int) -> c_int) -> io::Result<Vec<libc::pid_t>> {
    let mut cap = 256usize;
    loop {
        let mut buf: Vec<libc::pid_t> = vec![0; cap];
        let bytes = c_int::try_from(cap * size_of::<libc::pid_t>()).unwrap_or(c_int::MAX);
        let n = cvt(f(buf.as_mut_ptr().cast(), bytes))?;
        // libproc returns a count of pids for these calls, not bytes.
        let n = usize::try_from(n).unwrap_or(0);
        if n < cap {
            buf.truncate(n);
            buf.retain(|&p| p > 0);
            return Ok(buf);
        }
        cap *= 2;
    }
}

/// Every pid on the system.
pub fn list_all_pids() -> io::Result<Vec<libc::pid_t>> {
    pid_list(|buf, size| {
        // SAFETY: `buf` points to `size` writable bytes owned by `pid_list`.
        unsafe { libc::proc_listallpids(buf, size) }
    })
}

/// The children of `pid`.
pub fn list_child_pids(pid: libc::pid_t) -> io::Result<Vec<libc::pid_t>> {
    pid_list(|buf, size| {
        // SAFETY: `buf` points to `size` writable bytes owned by `pid_list`.
        unsafe { libc::proc_listchildpids(pid, buf, size) }
    })
}

/// Facts about `pid`, or None when it is gone or not ours to inspect.
pub fn proc_info(pid: libc::pid_t) -> Option<ProcInfo> {
    proc_info_uniq(pid).or_else(|| proc_info_bsd(pid))
}

fn proc_info_uniq(pid: libc::pid_t) -> Option<ProcInfo> {
    let mut info = MaybeUninit::<BsdInfoWithUniqId>::zeroed();
    let size = c_int::try_from(size_of::<BsdInfoWithUniqId>()).ok()?;
    // SAFETY: the buffer is `size` bytes of plain-old-data that the kernel fills.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            PROC_PIDT_BSDINFOWITHUNIQID,
            0,
            info.as_mut_ptr().cast(),
            size,
        )
    };
    if n != size {
        return None;
    }
    // SAFETY: proc_pidinfo filled all `size` bytes; every bit pattern is valid POD.
    let info = unsafe { info.assume_init() };
    if info.uniq.p_uniqueid == 0 {
        return None;
    }
    Some(ProcInfo {
        pid,
        ppid: libc::pid_t::try_from(info.pbsd.pbi_ppid).unwrap_or(0),
        uid: info.pbsd.pbi_uid,
        zombie: info.pbsd.pbi_status == libc::SZOMB,
        uniqueid: info.uniq.p_uniqueid,
        puniqueid: info.uniq.p_puniqueid,
    })
}

/// Fallback when the unique-id flavour is refused: the start time in microseconds
/// identifies a process as well (a pid is not reused within a microsecond), but
/// the parent's identity is then unknown (0).
fn proc_info_bsd(pid: libc::pid_t) -> Option<ProcInfo> {
    let mut info = MaybeUninit::<libc::proc_bsdinfo>::zeroed();
    let size = c_int::try_from(size_of::<libc::proc_bsdinfo>()).ok()?;
    // SAFETY: the buffer is `size` bytes of plain-old-data that the kernel fills.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            info.as_mut_ptr().cast(),
            size,
        )
    };
    if n != size {
        return None;
    }
    // SAFETY: proc_pidinfo filled all `size` bytes; every bit pattern is valid POD.
    let info = unsafe { info.assume_init() };
    Some(ProcInfo {
        pid,
        ppid: libc::pid_t::try_from(info.pbi_ppid).unwrap_or(0),
        uid: info.pbi_uid,
        zombie: info.pbi_status == libc::SZOMB,
        uniqueid: info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
        puniqueid: 0,
    })
}

/// Sends `sig` to `pid`.
pub fn kill(pid: libc::pid_t, sig: c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    cvt(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// The real uid of workfence.
pub fn getuid() -> libc::uid_t {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

type SandboxCheckFn = unsafe extern "C" fn(libc::pid_t, *const c_char, c_int, ...) -> c_int;

/// `sandbox_check()` from libsystem_sandbox (SPI, stable since 10.5), looked up at
/// run time so that a missing symbol degrades tracking instead of failing to link.
#[derive(Clone, Copy)]
pub struct SandboxCheck {
    f: SandboxCheckFn,
    no_report: c_int,
}

impl std::fmt::Debug for SandboxCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxCheck")
    }
}

fn dlsym(name: &CStr) -> *mut c_void {
    // SAFETY: RTLD_DEFAULT searches the loaded images; `name` is NUL-terminated.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

impl SandboxCheck {
    /// Looks the function up; None when this macOS does not export it.
    pub fn load() -> Option<SandboxCheck> {
        let f = dlsym(c"sandbox_check");
        if f.is_null() {
            return None;
        }
        // SAFETY: `sandbox_check` has exactly this variadic C signature.
        let f = unsafe { std::mem::transmute::<*mut c_void, SandboxCheckFn>(f) };
        // `SANDBOX_CHECK_NO_REPORT` is an exported constant, not a macro: without it
        // every "denied" answer would be logged as a violation.
        let nr = dlsym(c"SANDBOX_CHECK_NO_REPORT");
        let no_report = if nr.is_null() {
            0
        } else {
            // SAFETY: the symbol is a `const int` in libsystem_sandbox's data.
            unsafe { *nr.cast::<c_int>() }
        };
        Some(SandboxCheck { f, no_report })
    }

    /// What `pid`'s sandbox says about creating `path`: Some(true) allowed,
    /// Some(false) denied, None when the question failed (no such process).
    /// An unsandboxed process is allowed everything.
    pub fn may_create(&self, pid: libc::pid_t, path: &CStr) -> Option<bool> {
        let op = c"file-write-create";
        // SAFETY: both strings are NUL-terminated and outlive the call; the path
        // filter takes exactly one `const char *` variadic argument.
        let r = unsafe {
            (self.f)(
                pid,
                op.as_ptr(),
                SANDBOX_FILTER_PATH | self.no_report,
                path.as_ptr(),
            )
        };
        match r {
            0 => Some(true),
            1 => Some(false),
            _ => None,
        }
    }
}

/// A pipe whose both ends are close-on-exec and numbered 10 or above, so that they
/// never collide with the stdio or the fds a child is given.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    // SAFETY: pipe(2) succeeded, so both are open fds that nothing else owns.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above, for the write end.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((high_cloexec(&r)?, high_cloexec(&w)?))
}

fn high_cloexec(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a valid fd; no memory is involved.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) })?;
    // SAFETY: fcntl returned a new fd that only this OwnedFd owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Waits until `fd` is readable (or hung up) for at most `timeout_ms`.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let n = libc::nfds_t::try_from(pfds.len()).unwrap_or(0);
    // SAFETY: `pfds` is a valid array of `n` pollfd structs.
    match cvt(unsafe { libc::poll(pfds.as_mut_ptr(), n, timeout_ms) }) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(vec![false; fds.len()]),
        Err(e) => return Err(e),
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect())
}

/// read(2) into `buf`, retried when a signal interrupts it (the stop and
/// window-size handlers run on any thread, without SA_RESTART), so that EINTR is
/// never mistaken for EOF.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// write(2) of all of `buf`.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` readable bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// The path of the terminal on `fd`, or None when it is not one.
pub fn ttyname(fd: RawFd) -> Option<PathBuf> {
    let mut buf = vec![0 as c_char; 1024];
    // SAFETY: `buf` is `buf.len()` writable bytes; ttyname_r NUL-terminates on success.
    let r = unsafe { libc::ttyname_r(fd, buf.as_mut_ptr(), buf.len()) };
    if r != 0 {
        return None;
    }
    // SAFETY: ttyname_r succeeded, so `buf` holds a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(PathBuf::from(s.to_str().ok()?))
}

/// A close-on-exec duplicate of `fd` at the lowest free number from 3, when that
/// number is at most 9 and not one of `keep` (the shim's redirections need one
/// digit). Holding it during the spawn keeps std's own close-on-exec error pipe
/// off that number, so that the child's marker never replaces it.
pub fn low_marker_fd(fd: &OwnedFd, keep: &[RawFd]) -> io::Result<Option<OwnedFd>> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a valid fd; no memory is involved.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: fcntl returned a new fd that only this OwnedFd owns.
    let dup = unsafe { OwnedFd::from_raw_fd(n) };
    if n <= 9 && !keep.contains(&n) {
        Ok(Some(dup))
    } else {
        Ok(None)
    }
}

/// The character that ends input on the terminal behind `fd` (VEOF, normally
/// Ctrl-D), or Ctrl-D when its settings cannot be read.
pub fn eof_char(fd: RawFd) -> u8 {
    let mut t = MaybeUninit::<libc::termios>::zeroed();
    // SAFETY: tcgetattr writes one termios into `t`.
    if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
        return 4;
    }
    // SAFETY: tcgetattr succeeded and initialised `t`.
    let t = unsafe { t.assume_init() };
    match t.c_cc[libc::VEOF] {
        0 => 4,
        c => c,
    }
}

/// Whether `fd` is a terminal.
pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty(3) only inspects the fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// A new pseudo-terminal (master, slave), both close-on-exec, sized like `size_of`.
pub fn openpty(size_of_fd: RawFd) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut ws = MaybeUninit::<libc::winsize>::zeroed();
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
    let have_size = unsafe { libc::ioctl(size_of_fd, TIOCGWINSZ, ws.as_mut_ptr()) } == 0;
    // SAFETY: zeroed is a valid winsize, and ioctl filled it when it succeeded.
    let mut ws = unsafe { ws.assume_init() };
    if !have_size || ws.ws_row == 0 {
        ws.ws_row = 24;
        ws.ws_col = 80;
    }
    let (mut m, mut s) = (0 as c_int, 0 as c_int);
    // SAFETY: out-pointers are valid; name and termios are optional (null).
    cvt(unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut ws,
        )
    })?;
    // SAFETY: openpty returned two open fds that nothing else owns.
    let m = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: as above.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    Ok((high_cloexec(&m)?, high_cloexec(&s)?))
}

/// Copies the window size of `from` to the pty master `to`.
pub fn copy_winsize(from: RawFd, to: RawFd) {
    let mut ws = MaybeUninit::<libc::winsize>::zeroed();
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
    if unsafe { libc::ioctl(from, TIOCGWINSZ, ws.as_mut_ptr()) } == 0 {
        // SAFETY: TIOCSWINSZ reads one winsize, initialised by the call above.
        unsafe { libc::ioctl(to, TIOCSWINSZ, ws.as_ptr()) };
    }
}

/// The terminal on `fd` in raw mode until dropped (for the pty relay).
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on `fd`, or None when it is not a terminal.
    pub fn enter(fd: RawFd) -> Option<RawMode> {
        let mut t = MaybeUninit::<libc::termios>::zeroed();
        // SAFETY: tcgetattr writes one termios into `t`.
        if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: tcgetattr succeeded and initialised `t`.
        let saved = unsafe { t.assume_init() };
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the termios saved by `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);
static SIGNAL_COUNT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: c_int) {
    // Async-signal-safe: atomic operations only; the run loop does the rest.
    PENDING_SIGNAL.store(sig, Ordering::SeqCst);
    SIGNAL_COUNT.fetch_add(1, Ordering::SeqCst);
}

static WINDOW_CHANGED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_winch(_sig: c_int) {
    WINDOW_CHANGED.store(1, Ordering::SeqCst);
}

/// Whether the terminal was resized since the last call (for the pty relay).
pub fn take_window_change() -> bool {
    WINDOW_CHANGED.swap(0, Ordering::SeqCst) != 0
}

/// The signals that stop workfence politely; each kills the whole tree.
pub const STOP_SIGNALS: [c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Handlers for [`STOP_SIGNALS`] and SIGWINCH while alive; the previous ones come
/// back on drop.
pub struct SignalGuard {
    saved: Vec<(c_int, libc::sigaction)>,
}

impl std::fmt::Debug for SignalGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalGuard")
    }
}

impl SignalGuard {
    /// Installs the handlers.
    pub fn install() -> io::Result<SignalGuard> {
        PENDING_SIGNAL.store(0, Ordering::SeqCst);
        SIGNAL_COUNT.store(0, Ordering::SeqCst);
        let mut saved = Vec::new();
        let handlers = STOP_SIGNALS
            .iter()
            .map(|&s| (s, on_signal as extern "C" fn(c_int)))
            .chain([(libc::SIGWINCH, on_winch as extern "C" fn(c_int))]);
        for (sig, handler) in handlers {
            let mut new = MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: `new` is a zeroed sigaction we own; we set its fields below.
            let new_ref = unsafe { new.assume_init_mut() };
            new_ref.sa_sigaction = handler as usize;
            new_ref.sa_flags = 0;
            let mut old = MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: both pointers are valid sigaction structs; the handler only
            // stores to an atomic, which is async-signal-safe.
            cvt(unsafe { libc::sigaction(sig, new.as_ptr(), old.as_mut_ptr()) })?;
            // SAFETY: sigaction succeeded and filled `old`.
            saved.push((sig, unsafe { old.assume_init() }));
        }
        Ok(SignalGuard { saved })
    }

    /// How many stop signals arrived so far (a second one during the grace
    /// period means "now").
    pub fn count(&self) -> i32 {
        SIGNAL_COUNT.load(Ordering::SeqCst)
    }

    /// The last stop signal received, if any.
    pub fn pending(&self) -> Option<c_int> {
        match PENDING_SIGNAL.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.saved {
            // SAFETY: restores a sigaction that the kernel gave us.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

/// What the child does between fork and exec.
#[derive(Debug, Clone)]
pub struct ChildSetup {
    /// Fds the command inherits (their close-on-exec flag is cleared).
    pub keep_fds: Vec<RawFd>,
    /// The start-marker pipe's write end, already at its number (3 to 9, from
    /// [`low_marker_fd`]); only its close-on-exec flag is cleared in the child.
    pub marker: RawFd,
    /// Make fd 0 (a pty slave) the controlling terminal.
    pub controlling_tty: bool,
}

/// Registers `setup` to run in the child after fork: a new session (so that the
/// command has its own process group, no controlling terminal to inject input
/// into, and cannot signal workfence's group), then the fds.
pub fn configure_child(cmd: &mut Command, setup: ChildSetup) {
    let hook = move || -> io::Result<()> {
        // SAFETY: setsid(2) is async-signal-safe and touches no memory.
        cvt(unsafe { libc::setsid() })?;
        if setup.controlling_tty {
            // SAFETY: fd 0 is the pty slave (set up by Command); async-signal-safe.
            cvt(unsafe { libc::ioctl(0, TIOCSCTTY, 0) })?;
        }
        for &fd in &setup.keep_fds {
            // SAFETY: fcntl on an inherited fd; async-signal-safe.
            let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
            // SAFETY: as above.
            cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
        }
        // No dup2 onto a fixed number (it could replace std's close-on-exec error
        // pipe): the marker already has its number, held open by workfence during
        // the spawn. Only sandbox-exec and the shim see it; the shim closes it
        // before exec'ing the command.
        // SAFETY: fcntl on an inherited fd; async-signal-safe.
        let flags = cvt(unsafe { libc::fcntl(setup.marker, libc::F_GETFD) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(setup.marker, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
        Ok(())
    };
    // SAFETY: the hook calls only async-signal-safe functions (setsid, ioctl,
    // fcntl) and allocates nothing, as required between fork and exec.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// The home directory from the user database, for when HOME is unset.
pub fn home_from_passwd() -> Option<PathBuf> {
    let mut pw = MaybeUninit::<libc::passwd>::zeroed();
    let mut buf = vec![0 as c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid; `buf` is `buf.len()` bytes for the strings.
    let r = unsafe {
        libc::getpwuid_r(
            getuid(),
            pw.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so `pw` is initialised and pw_dir points into `buf`.
    let dir = unsafe { pw.assume_init_ref() }.pw_dir;
    if dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir is a NUL-terminated string inside `buf`, alive here.
    let s = unsafe { CStr::from_ptr(dir) };
    Some(PathBuf::from(s.to_string_lossy().into_owned()))
}

/// A C string of `s` (paths never hold NUL: they come from the kernel).
pub fn cstring(s: &str) -> Option<CString> {
    CString::new(s).ok()
}
