//! Thin, documented wrappers over the raw syscalls the Linux backend needs. All of
//! the backend's `unsafe` lives here; callers get safe functions returning
//! `io::Result` and owned file descriptors.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Result of a fork-like call.
#[derive(Debug)]
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(libc::pid_t),
    /// In the child.
    Child,
}

/// `clone(2)` with fork semantics (no shared memory, the child continues on a copy
/// of the stack) and new namespaces. Used instead of `unshare` so that the child is
/// pid 1 of its pid namespace without an intermediate process.
///
/// The caller must be single-threaded (workfence's front end is), so that no lock is
/// held by another thread at the time of the copy.
pub fn clone_namespaces(flags: libc::c_int) -> io::Result<Forked> {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: raw clone without CLONE_VM and with a null stack behaves like fork(2):
    // the child gets a private copy of the address space and resumes here. The other
    // arguments (parent/child tid pointers, tls) are unused without the matching flags.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match cvt_long(r)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as libc::pid_t)),
    }
}

/// `fork(2)`. The caller must be single-threaded.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions; the process is single-threaded
    // (documented requirement), so the child's copy holds no foreign locks.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `_exit(2)`: leave without running destructors or atexit handlers (in a forked child
/// they belong to the parent).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: on success fds[0] is a fresh descriptor owned by nobody else.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: likewise for fds[1].
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((r, w))
}

/// `write(2)` of the whole buffer (best effort on EINTR).
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice of buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `read(2)` into `buf`; returns the count (0 at EOF).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid writable slice of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n as usize);
    }
}

/// `mount(2)`.
pub fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are null or valid NUL-terminated strings that outlive the call.
    cvt(unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) })?;
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY`
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `mount_setattr(2)` with `AT_RECURSIVE`: sets flags on a whole mount subtree at once
/// (a plain remount only changes the top mount, leaving submounts writable).
pub fn mount_setattr_recursive(target: &CStr, set: u64, clr: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: target is a valid C string; attr is a valid mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    cvt_long(r)?;
    Ok(())
}

/// `pivot_root(2)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both arguments are valid C strings.
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })?;
    Ok(())
}

/// `umount2(2)`.
pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: target is a valid C string.
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

/// `chdir(2)`.
pub fn chdir(p: &CStr) -> io::Result<()> {
    // SAFETY: p is a valid C string.
    cvt(unsafe { libc::chdir(p.as_ptr()) })?;
    Ok(())
}

/// `mkdir(2)`; an existing entry is not an error.
pub fn mkdir(p: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: p is a valid C string.
    match cvt(unsafe { libc::mkdir(p.as_ptr(), mode) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(drop),
    }
}

/// Creates an empty file (for a bind mount point); an existing one is kept.
pub fn touch(p: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: p is a valid C string; the returned fd is closed right away.
    let fd = cvt(unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fd was just opened by us.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// `symlink(2)`.
pub fn symlink(target: &CStr, link: &CStr) -> io::Result<()> {
    // SAFETY: both are valid C strings.
    cvt(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })?;
    Ok(())
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

/// `openat2(O_PATH, RESOLVE_NO_SYMLINKS)`: opens `p` only if no component is a
/// symlink, so a path swapped for a symlink between planning and mounting
/// (a setup race) is refused rather than followed.
pub fn open_path_nofollow(p: &CStr) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: p is a valid C string and how a valid open_how of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            p.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = cvt_long(r)? as RawFd;
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `prctl(2)` with integer arguments.
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used by this crate take integer arguments only.
    cvt(unsafe {
        libc::prctl(
            option,
            arg2,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// Drops every capability: bounding set, ambient set, and the permitted, effective
/// and inheritable sets (so that even a uid-0 exec regains nothing).
pub fn drop_all_capabilities() -> io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        match prctl(libc::PR_CAPBSET_DROP, cap) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            // EPERM: no CAP_SETPCAP, as in a container running a normal user (degraded
            // mode). The bounding set only caps what an execve may grant; every caller
            // sets no_new_privs right after this (and fails closed if it cannot), under
            // which an execve gains nothing beyond the permitted set, emptied below. So
            // the container's bounding set may stay.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => break,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: integer-only prctl.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: hdr and data are valid v3 capability structures (two data elements).
    cvt_long(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) })?;
    Ok(())
}

/// Marks every fd from `first` up as close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == -1 {
        // Older kernels: mark one by one.
        for fd in first..1024 {
            // SAFETY: fcntl on a possibly-closed fd is harmless (EBADF).
            unsafe { libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// The fd flags of `fd` (`fcntl(F_GETFD)`); EBADF when it is not open.
pub fn fd_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: fcntl(F_GETFD) takes integers only and touches no memory; a closed fd
    // yields EBADF.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })
}

/// Whether the process is allowed to dump (and so be inspected through
/// `/proc/<pid>/fd` by processes of the same uid).
pub fn set_dumpable(on: bool) -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on))
}

/// Clears close-on-exec on `fd` (for `--keep-fd`).
pub fn inherit_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer args; an invalid fd yields EBADF.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    Ok(())
}

/// `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// `ioctl(fd, TIOCSCTTY, 0)`: make a pty slave the controlling terminal.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) })?;
    Ok(())
}

/// `setrlimit(2)` with soft = hard = `value`.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: lim is a valid rlimit.
    cvt(unsafe { libc::setrlimit(resource, &lim) })?;
    Ok(())
}

/// The set of signals workfence forwards to the command.
pub const FORWARDED: &[libc::c_int] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in signals {
        // SAFETY: set is valid and s a valid signal number.
        unsafe { libc::sigaddset(&mut set, *s) };
    }
    set
}

/// Blocks `signals` and returns a signalfd that reports them.
pub fn block_signals_fd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: set is valid; the old mask is not needed.
    cvt(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: set is valid; -1 asks for a new fd.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unblocks `signals` (the front end, after the sandbox is gone).
pub fn unblock_signals(signals: &[libc::c_int]) {
    let set = sigset(signals);
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// Reads one pending signal from a signalfd (None when none is pending).
pub fn read_signal(fd: &OwnedFd) -> io::Result<Option<libc::c_int>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: info is a valid writable buffer of `size` bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(info.ssi_signo as libc::c_int))
}

/// Unblocks every signal and restores default dispositions (Rust ignores SIGPIPE;
/// the command must not inherit that).
pub fn reset_signals() {
    let all = sigset(&[]);
    // SAFETY: sigfillset/sigprocmask on a valid set.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    for s in 1..32 {
        if s == libc::SIGKILL || s == libc::SIGSTOP {
            continue;
        }
        // SAFETY: resetting a disposition to default is always valid.
        unsafe { libc::signal(s, libc::SIG_DFL) };
    }
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Wait status of a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

impl Status {
    /// The shell convention: the code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            Status::Exited(c) => c,
            Status::Signaled(s) => 128 + s,
        }
    }
}

/// `waitpid(2)`; `None` with `WNOHANG` when nothing is ready.
pub fn waitpid(pid: libc::pid_t, nohang: bool) -> io::Result<Option<(libc::pid_t, Status)>> {
    let mut st = 0;
    loop {
        // SAFETY: st is a valid int for the kernel to fill.
        let r = unsafe { libc::waitpid(pid, &mut st, if nohang { libc::WNOHANG } else { 0 }) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        let status = if libc::WIFEXITED(st) {
            Status::Exited(libc::WEXITSTATUS(st))
        } else if libc::WIFSIGNALED(st) {
            Status::Signaled(libc::WTERMSIG(st))
        } else {
            continue;
        };
        return Ok(Some((r, status)));
    }
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })? as RawFd;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `poll(2)` over `fds` (fd, events); returns revents per fd. `timeout_ms < 0` waits forever.
pub fn poll(fds: &[(RawFd, libc::c_short)], timeout_ms: i32) -> io::Result<Vec<libc::c_short>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, ev)| libc::pollfd {
            fd: *fd,
            events: *ev,
            revents: 0,
        })
        .collect();
    // SAFETY: p is a valid array of p.len() pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![0; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents).collect())
}

/// `execve(2)`; returns only on failure.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to C strings that
    // the caller keeps alive; path is a valid C string.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: name points to name.len() valid bytes.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket with integer args; the fd is owned right after.
    let s = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fresh fd.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *b as libc::c_char;
    }
    // SAFETY: req is a valid ifreq; SIOCGIFFLAGS fills ifru_flags.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the union member was just set by the kernel.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above, SIOCSIFFLAGS reads the ifreq.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// `dup2(2)`.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt(unsafe { libc::dup2(from, to) })?;
    Ok(())
}

/// `getuid`/`getgid`.
pub fn ids() -> (u32, u32) {
    // SAFETY: no arguments, cannot fail.
    let uid = unsafe { libc::getuid() };
    // SAFETY: as above.
    let gid = unsafe { libc::getgid() };
    (uid, gid)
}

/// A C string from a path-like value (NUL bytes are refused).
pub fn cstr(s: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Opens a pseudo-terminal pair: (master, slave).
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut m: RawFd = -1;
    let mut s: RawFd = -1;
    // SAFETY: m and s are valid out-pointers; name, termios and winsize may be null.
    cvt(unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    // SAFETY: m is a fresh fd owned by nobody else.
    let m = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: likewise for s.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    for fd in [&m, &s] {
        // SAFETY: integer fcntl.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((m, s))
}

/// Copies the window size of `from` to `to` (both terminals).
pub fn copy_winsize(from: RawFd, to: RawFd) {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the valid winsize.
    if unsafe { libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) } == 0 {
        // SAFETY: TIOCSWINSZ reads the valid winsize. Failure is harmless.
        unsafe { libc::ioctl(to, libc::TIOCSWINSZ, &ws) };
    }
}

/// Puts a terminal in raw mode; returns the previous settings to restore.
pub fn make_raw(fd: RawFd) -> Option<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return None;
    }
    let old = t;
    // SAFETY: cfmakeraw modifies a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: tcsetattr reads a valid termios.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    Some(old)
}

/// Restores terminal settings saved by [`make_raw`].
pub fn restore_tty(fd: RawFd, t: &libc::termios) {
    // SAFETY: t is a valid termios.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) };
}

/// `isatty(3)`.
pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: integer argument.
    unsafe { libc::isatty(fd) == 1 }
}

/// The best Landlock ABI of the running kernel (0 when Landlock is unavailable).
pub fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attr, zero size and the VERSION flag the call only returns a number.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        0
    } else {
        r as u32
    }
}

/// Whether seccomp filters are available (`prctl(PR_GET_SECCOMP)` answers).
pub fn seccomp_available() -> bool {
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: fresh fd owned by nobody else.
    let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: likewise.
    let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((a, b))
}

/// The most fds one [`send_fds`] message carries.
pub const MAX_FDS: usize = 16;

/// Sends one fd over a unix socket (SCM_RIGHTS).
pub fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    send_fds(sock, &[fd])
}

/// Sends up to [`MAX_FDS`] fds in one message (SCM_RIGHTS) with a one-byte payload.
pub fn send_fds(sock: RawFd, fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one cmsghdr carrying MAX_FDS ints, aligned for cmsghdr (u64).
    let mut cbuf = [0u64; 2 + MAX_FDS / 2 + 1];
    let data_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation; it is at most size_of_val(&cbuf)
    // for MAX_FDS ints (16 bytes of header plus 64 of data on 64-bit).
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    if msg.msg_controllen > std::mem::size_of_val(&cbuf) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: msg_control points to a buffer large enough for one header.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: CMSG_LEN is a pure size computation.
    let len = unsafe { libc::CMSG_LEN(data_len) } as usize;
    let header = libc::cmsghdr {
        cmsg_len: len,
        cmsg_level: libc::SOL_SOCKET,
        cmsg_type: libc::SCM_RIGHTS,
    };
    // SAFETY: cmsg points into cbuf, which is large enough and aligned for a header.
    unsafe { std::ptr::write_unaligned(cmsg, header) };
    // SAFETY: CMSG_DATA of a valid header points inside cbuf.
    let data = unsafe { libc::CMSG_DATA(cmsg) };
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: the data area has room for fds.len() RawFds (CMSG_SPACE above), so
        // element i is inside it.
        let slot = unsafe { data.cast::<RawFd>().add(i) };
        // SAFETY: `slot` points inside cbuf; unaligned writes are allowed.
        unsafe { std::ptr::write_unaligned(slot, *fd) };
    }
    // SAFETY: msg is fully initialized and its buffers outlive the call.
    if unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one fd sent with [`send_fd`]; `None` when the peer closed without sending.
pub fn recv_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    Ok(recv_fds(sock)?.into_iter().next())
}

/// Receives the fds of one [`send_fds`] message; empty when the peer closed (or shut
/// the socket down) without sending.
pub fn recv_fds(sock: RawFd) -> io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 2 + MAX_FDS / 2 + 1];
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: msg points to valid buffers for the kernel to fill.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    let mut out = Vec::new();
    // SAFETY: msg was filled by the kernel; CMSG_FIRSTHDR reads within msg_control.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and points into cbuf (the kernel wrote it).
        let header = unsafe { std::ptr::read_unaligned(cmsg) };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let base = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = header.cmsg_len.saturating_sub(base) / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA of a valid header points inside cbuf.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..count {
                // SAFETY: the kernel wrote `count` fds into the data area, so element
                // i is inside it.
                let slot = unsafe { data.cast::<RawFd>().add(i) };
                // SAFETY: `slot` points at an fd the kernel wrote; unaligned reads are fine.
                let fd = unsafe { std::ptr::read_unaligned(slot) };
                // SAFETY: the kernel installed a fresh fd for us; nothing else owns it.
                out.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: msg and cmsg are valid; CMSG_NXTHDR stays within msg_control or
        // returns null.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if truncated {
        // Some fds did not fit (the kernel closed them): the message is not what the
        // sender sent. The ones that arrived are closed with `out`.
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok(out)
}

/// A TCP listening socket on `addr` with a deep backlog (bursts of hundreds of
/// connections must queue, not be dropped and retried a second later), close-on-exec.
pub fn listen_tcp(addr: std::net::SocketAddrV4, backlog: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket with integer args; the fd is owned right after.
    let s = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fresh fd owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: sockaddr_in is plain data.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = addr.port().to_be();
    sin.sin_addr = libc::in_addr {
        s_addr: u32::from(*addr.ip()).to_be(),
    };
    // SAFETY: sin is a valid sockaddr_in and the length matches it.
    cvt(unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    // SAFETY: integer arguments on an fd we own.
    cvt(unsafe { libc::listen(s.as_raw_fd(), backlog) })?;
    Ok(s)
}

/// Opens a pty pair in the devpts of the current mount namespace: (master, slave).
pub fn open_pty_here() -> io::Result<(OwnedFd, OwnedFd)> {
    let m = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")?;
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int.
    cvt(unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) })?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int.
    cvt(unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    let s = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/dev/pts/{n}"))?;
    Ok((m.into(), s.into()))
}

/// Turns the current (forked) process into a quiet background helper: its own
/// session (signals to the command's process group miss it), terminal signals and
/// SIGPIPE ignored, stdio on /dev/null, `keep` moved to fd 3 and every other fd
/// closed (so that no pipe of the user's or of workfence's stays open through it).
/// Returns `keep` as fd 3.
pub fn detach_helper(keep: OwnedFd, name: &CStr) -> OwnedFd {
    let _ = setsid();
    for s in [
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGTERM,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGPIPE,
    ] {
        // SAFETY: setting a disposition to SIG_IGN is always valid.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
    unblock_signals(FORWARDED);
    let keep = keep.into_raw_fd();
    if keep != 3 {
        let _ = dup2(keep, 3);
    }
    // SAFETY: close_range takes integers only.
    unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = dup2(null.as_raw_fd(), fd);
        }
    }
    let _ = prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong);
    // SAFETY: fd 3 now holds the dup of `keep` (or `keep` itself) and nothing else
    // in this process owns it: the original number was closed by close_range or is 3.
    unsafe { OwnedFd::from_raw_fd(3) }
}

/// Installs a seccomp filter that returns a user-notification listener fd
/// (`seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER)`).
pub fn install_seccomp_listener(prog: &[seccompiler::sock_filter]) -> io::Result<OwnedFd> {
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points to a valid program (seccompiler's sock_filter has the
    // kernel's layout) that outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    let fd = cvt_long(r)? as RawFd;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_getfd(2)`: a duplicate of another process's fd (same open file description).
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let fd = cvt_long(r)? as RawFd;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `getsockopt(SOL_SOCKET, opt)` for an int option.
pub fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid out-pointers of the right size.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

/// Reads `len` bytes at `addr` in process `pid` (`process_vm_readv`).
pub fn read_process_memory(pid: libc::pid_t, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: local describes our own buffer of len bytes; remote is only read by the
    // kernel in the other process's address space.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const SECCOMP_IOCTL_NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;

/// A seccomp user notification.
#[derive(Debug, Clone, Copy)]
pub struct Notif {
    /// Cookie for the response.
    pub id: u64,
    /// The calling thread (in the supervisor's pid namespace).
    pub pid: u32,
    /// Syscall number.
    pub nr: i32,
    /// Arguments.
    pub args: [u64; 6],
}

/// `SECCOMP_IOCTL_NOTIF_RECV`.
pub fn notif_recv(listener: RawFd) -> io::Result<Notif> {
    let mut raw = [0u64; 10]; // struct seccomp_notif: 80 bytes
                              // SAFETY: raw is an 80-byte, 8-aligned buffer, the size encoded in the ioctl number.
    cvt(unsafe { libc::ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, raw.as_mut_ptr()) })?;
    Ok(Notif {
        id: raw[0],
        pid: raw[1] as u32,
        nr: raw[2] as u32 as i32,
        args: [raw[4], raw[5], raw[6], raw[7], raw[8], raw[9]],
    })
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: the target is still blocked in that syscall.
pub fn notif_id_valid(listener: RawFd, id: u64) -> bool {
    let mut id = id;
    // SAFETY: id is a valid u64 the ioctl reads.
    unsafe { libc::ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) == 0 }
}

/// `SECCOMP_IOCTL_NOTIF_SEND`: `continue_` lets the syscall proceed in the kernel;
/// otherwise it returns `val`, or fails with `errno` when non-zero.
pub fn notif_send(listener: RawFd, id: u64, val: i64, errno: i32, continue_: bool) {
    #[repr(C)]
    struct Resp {
        id: u64,
        val: i64,
        error: i32,
        flags: u32,
    }
    let mut r = Resp {
        id,
        val,
        error: if errno != 0 { -errno } else { 0 },
        flags: if continue_ { 1 } else { 0 },
    };
    // SAFETY: r is a valid seccomp_notif_resp (24 bytes).
    unsafe { libc::ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &mut r) };
}

fn sockaddr_un_for(path: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= a.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in a.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    Ok((a, (2 + path.len()) as libc::socklen_t))
}

/// `connect(2)` of a unix socket to a raw address (path or abstract name, as bytes
/// after the family). Returns the errno on failure.
pub fn connect_unix(fd: RawFd, path: &[u8]) -> Result<(), i32> {
    let (a, len) = sockaddr_un_for(path).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
    // SAFETY: a is a valid sockaddr_un of `len` meaningful bytes.
    let r = unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    }
}

/// `sendto(2)` on a unix socket to a raw address. Returns bytes sent or the errno.
pub fn sendto_unix(fd: RawFd, buf: &[u8], flags: libc::c_int, path: &[u8]) -> Result<usize, i32> {
    let (a, len) = sockaddr_un_for(path).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
    // SAFETY: buf is valid for buf.len() bytes; a is a valid sockaddr_un.
    let r = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            (&a as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r >= 0 {
        Ok(r as usize)
    } else {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    }
}

/// `SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SEND`: installs a copy of
/// `fd` in the notifying process (lowest free number, like open) and, atomically,
/// answers the notification with that number as the syscall's return value.
pub fn notif_addfd_send(listener: RawFd, id: u64, fd: RawFd, cloexec: bool) -> io::Result<i32> {
    let mut a = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
        srcfd: fd as u32,
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: a is a valid, initialized seccomp_notif_addfd that the ioctl reads.
    let r = unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut a) };
    cvt(r)
}

/// The parts of another process's `struct msghdr` the broker decides on.
#[derive(Debug)]
pub struct RemoteMsghdr {
    /// `msg_namelen`.
    pub name_len: u32,
    /// `msg_controllen`.
    pub control_len: usize,
    /// `msg_iov`: (base address, length) in the other process.
    pub iov: Vec<(u64, usize)>,
}

/// Reads a `struct msghdr` (and its iovec array, at most 1024 entries) from process
/// `pid` at `addr`.
pub fn read_process_msghdr(pid: libc::pid_t, addr: u64) -> io::Result<RemoteMsghdr> {
    let size = std::mem::size_of::<libc::msghdr>();
    let raw = read_process_memory(pid, addr, size)?;
    if raw.len() < size {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    // SAFETY: raw holds size_of::<msghdr>() initialized bytes; msghdr is plain data
    // (its pointers are only numbers here, never dereferenced), and read_unaligned
    // has no alignment requirement.
    let h: libc::msghdr = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let n = (h.msg_iovlen as usize).min(1024);
    let isz = std::mem::size_of::<libc::iovec>();
    let iraw = if n == 0 {
        Vec::new()
    } else {
        read_process_memory(pid, h.msg_iov as u64, n * isz)?
    };
    if iraw.len() < n * isz {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    let iov = (0..n)
        .map(|i| {
            // SAFETY: iraw holds n whole iovecs; iovec is plain data read unaligned.
            let v: libc::iovec =
                unsafe { std::ptr::read_unaligned(iraw[i * isz..].as_ptr().cast()) };
            (v.iov_base as u64, v.iov_len)
        })
        .collect();
    Ok(RemoteMsghdr {
        name_len: h.msg_namelen,
        control_len: h.msg_controllen as usize,
        iov,
    })
}

/// Whether a socket has a peer (`getpeername` succeeds).
pub fn is_connected(fd: RawFd) -> bool {
    // SAFETY: sockaddr_storage is plain data.
    let mut a: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a and len are valid out-pointers; len holds a's size.
    unsafe { libc::getpeername(fd, (&mut a as *mut libc::sockaddr_storage).cast(), &mut len) == 0 }
}

/// `send(2)` of `buf` on a connected socket.
pub fn send(fd: RawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let r = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Takes ownership of an fd this process inherited by number (the helper's pipes),
/// after checking that it is open.
pub fn take_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: the fd is open and, by the helper protocol, nothing else in this
    // process uses it: it was created by the parent only for this handover.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `cmd` start with `moves` (from, to) duplicated onto their target numbers
/// and `inherit` left open across exec (everything else keeps its close-on-exec
/// flag, as std sets it).
pub fn pass_fds(cmd: &mut std::process::Command, moves: Vec<(RawFd, RawFd)>, inherit: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    let hook = move || -> io::Result<()> {
        for (from, to) in &moves {
            if from == to {
                inherit_fd(*to)?;
            } else {
                dup2(*from, *to)?;
            }
        }
        for fd in &inherit {
            inherit_fd(*fd)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls dup2 and fcntl (through
    // dup2/inherit_fd) only, iterates vectors allocated before the fork, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// `pidfd_open(tid, PIDFD_THREAD)` (Linux 6.9): a pidfd for one thread, which need
/// not lead its group.
pub fn pidfd_open_thread(tid: libc::pid_t) -> io::Result<OwnedFd> {
    const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
    // SAFETY: integer arguments.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) })? as RawFd;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process or thread a pidfd refers to has exited (its pidfd polls
/// readable then). An error counts as exited: the answer only ends a wait.
pub fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    match poll(&[(pidfd.as_raw_fd(), libc::POLLIN)], 0) {
        Ok(rev) => rev[0] != 0,
        Err(_) => true,
    }
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS(SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)` (Linux 6.6):
/// the kernel hands the CPU straight from the blocked caller to the waiting broker
/// thread and back, instead of waking it on another CPU. Best effort.
///
/// Despite the `_IOW` encoding of the request number, the kernel takes the flags as
/// the ioctl's *value* (`seccomp_notify_set_flags(filter, arg)`); a pointer is
/// refused with EINVAL.
pub fn notif_sync_wakeup(listener: RawFd) -> io::Result<()> {
    const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;
    // SAFETY: this request reads no memory: its argument is the flag word itself.
    cvt(unsafe {
        libc::ioctl(
            listener,
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        )
    })?;
    Ok(())
}

/// `struct rtmsg` from `<linux/rtnetlink.h>`, which the libc crate does not declare
/// (it has `nlmsghdr`, `nlmsgerr` and `rtattr`, used as they are below). Only ever
/// serialized field by field, never reinterpreted from memory.
#[derive(Debug, Clone, Copy)]
struct RtMsg {
    family: u8,
    dst_len: u8,
    src_len: u8,
    tos: u8,
    table: u8,
    protocol: u8,
    scope: u8,
    kind: u8,
    flags: u32,
}

/// `RTA_ALIGN`/`NLMSG_ALIGN`: netlink pads every header and attribute to 4 bytes.
fn nl_align(n: usize) -> usize {
    (n + 3) & !3
}

fn push_rtattr(buf: &mut Vec<u8>, kind: libc::c_ushort, payload: &[u8]) {
    let hdr = libc::rtattr {
        rta_len: (std::mem::size_of::<libc::rtattr>() + payload.len()) as libc::c_ushort,
        rta_type: kind,
    };
    buf.extend_from_slice(&hdr.rta_len.to_ne_bytes());
    buf.extend_from_slice(&hdr.rta_type.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(nl_align(buf.len()), 0);
}

/// The RTM_NEWROUTE request for `local <any>/0 dev <ifindex> table local`, as
/// `ip route add local 0.0.0.0/0 dev lo` sends it.
fn local_route_request(family: libc::c_int, ifindex: u32, seq: u32) -> Vec<u8> {
    let rt = RtMsg {
        family: family as u8,
        dst_len: 0,
        src_len: 0,
        tos: 0,
        table: libc::RT_TABLE_LOCAL,
        protocol: libc::RTPROT_BOOT,
        scope: libc::RT_SCOPE_HOST,
        kind: libc::RTN_LOCAL,
        flags: 0,
    };
    let mut body = vec![
        rt.family,
        rt.dst_len,
        rt.src_len,
        rt.tos,
        rt.table,
        rt.protocol,
        rt.scope,
        rt.kind,
    ];
    body.extend_from_slice(&rt.flags.to_ne_bytes());
    push_rtattr(
        &mut body,
        libc::RTA_TABLE,
        &u32::from(libc::RT_TABLE_LOCAL).to_ne_bytes(),
    );
    push_rtattr(&mut body, libc::RTA_OIF, &ifindex.to_ne_bytes());
    let hdr = libc::nlmsghdr {
        nlmsg_len: (std::mem::size_of::<libc::nlmsghdr>() + body.len()) as u32,
        nlmsg_type: libc::RTM_NEWROUTE,
        nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL)
            as u16,
        nlmsg_seq: seq,
        nlmsg_pid: 0,
    };
    let mut msg = Vec::with_capacity(hdr.nlmsg_len as usize);
    msg.extend_from_slice(&hdr.nlmsg_len.to_ne_bytes());
    msg.extend_from_slice(&hdr.nlmsg_type.to_ne_bytes());
    msg.extend_from_slice(&hdr.nlmsg_flags.to_ne_bytes());
    msg.extend_from_slice(&hdr.nlmsg_seq.to_ne_bytes());
    msg.extend_from_slice(&hdr.nlmsg_pid.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Reads the kernel's answer to request `seq`: the `nlmsgerr` whose error is 0 for
/// success or a negative errno.
fn netlink_ack(fd: RawFd, seq: u32) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is valid for buf.len() writable bytes for the duration of the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut msgs = &buf[..n as usize];
        let hlen = std::mem::size_of::<libc::nlmsghdr>();
        while msgs.len() >= hlen {
            let u32_at =
                |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let len = u32_at(msgs, 0) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            let mseq = u32_at(msgs, 8);
            if len < hlen || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink answer",
                ));
            }
            if mseq == seq && i32::from(kind) == libc::NLMSG_ERROR {
                // nlmsgerr: int error, then the request's header.
                if len < hlen + 4 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink error message",
                    ));
                }
                let err = u32_at(msgs, hlen) as i32;
                return if err == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-err))
                };
            }
            msgs = &msgs[nl_align(len).min(msgs.len())..];
        }
    }
}

/// Adds `local 0.0.0.0/0 dev lo` (and `local ::/0 dev lo`) to the local routing table
/// of the current network namespace (the "AnyIP" configuration): every destination
/// address is then this host, so a listener on `0.0.0.0:443` accepts a connection to
/// any address, and the accepted socket's local address is the destination the client
/// asked for. Needs CAP_NET_ADMIN over the namespace, and loopback up.
///
/// A kernel without IPv6 (EAFNOSUPPORT) gets only the IPv4 route: with no IPv6 at all
/// there is nothing to reach over it either. An existing identical route (EEXIST) is
/// taken as success.
pub fn add_local_routes() -> io::Result<()> {
    // SAFETY: the argument is a NUL-terminated literal.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket with integer args; the fd is owned right after.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for (seq, family) in [(1u32, libc::AF_INET), (2, libc::AF_INET6)] {
        let req = local_route_request(family, lo, seq);
        // SAFETY: req is valid for req.len() readable bytes; the kernel address is
        // implied by the unbound netlink socket (pid 0: the kernel).
        let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        match netlink_ack(fd.as_raw_fd(), seq) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) if family == libc::AF_INET6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::unix::process::CommandExt;

    const CHILD_ENV: &str = "WORKFENCE_SYS_TEST_NETNS_CHILD";

    #[test]
    fn local_route_request_layout() {
        let m = local_route_request(libc::AF_INET, 1, 7);
        // nlmsghdr 16 + rtmsg 12 + two 8-byte attributes.
        assert_eq!(m.len(), 44);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 44);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), libc::RTM_NEWROUTE);
        assert_eq!(&m[16..24], &[libc::AF_INET as u8, 0, 0, 0, 255, 3, 254, 2]);
    }

    /// Runs `netns_child_anyip` again in a fresh user + network namespace, as root of
    /// that user namespace (as the sandbox supervisor is), and checks that it passed.
    #[test]
    fn anyip_routes_reach_wildcard_listeners() {
        let exe = std::env::current_exe().unwrap();
        let uid_map = format!("0 {} 1", ids().0);
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "--exact",
            "sys::tests::netns_child_anyip",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1");
        let child_setup = move || -> io::Result<()> {
            // SAFETY: integer flags; only this (single-threaded, forked) child changes.
            cvt(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) })?;
            // SAFETY: a NUL-terminated literal path.
            let fd = cvt(unsafe {
                libc::open(
                    c"/proc/self/uid_map".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                )
            })?;
            // SAFETY: fresh fd owned by nobody else; closed when dropped.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            write_all(fd.as_raw_fd(), uid_map.as_bytes())
        };
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe calls (unshare, open, write, close) on memory prepared
        // before the fork (uid_map, a literal path); it allocates nothing.
        unsafe { cmd.pre_exec(child_setup) };
        let out = match cmd.output() {
            Ok(o) => o,
            // No user namespaces for this user here (a container, a sysctl): the same
            // condition in which the sandbox itself refuses, so the test cannot run.
            Err(e)
                if [libc::EPERM, libc::EACCES, libc::EINVAL, libc::ENOSPC]
                    .contains(&e.raw_os_error().unwrap_or(0)) =>
            {
                assert!(
                    std::env::var("WORKFENCE_MUST_WORK").as_deref() != Ok("1"),
                    "cannot create a user + network namespace: {e}"
                );
                eprintln!("SKIP anyip_routes_reach_wildcard_listeners: cannot create a user + network namespace: {e}");
                return;
            }
            Err(e) => panic!("starting the namespace child: {e}"),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child failed: {}\n{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn round_trip(listener: &TcpListener, to: SocketAddr) -> (SocketAddr, SocketAddr) {
        let mut c = TcpStream::connect(to).unwrap();
        let (mut s, peer) = listener.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        let client = c.local_addr().unwrap();
        assert_eq!(
            (peer.ip().to_canonical(), peer.port()),
            (client.ip(), client.port())
        );
        (s.local_addr().unwrap(), c.peer_addr().unwrap())
    }

    /// The half of the test above that runs inside the namespace; a no-op elsewhere.
    #[test]
    fn netns_child_anyip() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        loopback_up().unwrap();
        // Before the routes, an outside address has no route at all.
        let dst: SocketAddr = "192.0.2.1:443".parse().unwrap();
        assert!(TcpStream::connect(dst).is_err());
        add_local_routes().unwrap();
        // Idempotent.
        add_local_routes().unwrap();
        let l4 = TcpListener::bind("0.0.0.0:443").unwrap();
        assert_eq!(round_trip(&l4, dst), (dst, dst));
        // A port nobody listens on is refused.
        let e = TcpStream::connect("198.51.100.7:80").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        // IPv6, where the kernel has it.
        if let Ok(l6) = TcpListener::bind("[::]:8443") {
            let dst6: SocketAddr = "[2001:db8::5]:8443".parse().unwrap();
            assert_eq!(round_trip(&l6, dst6), (dst6, dst6));
            // A dual-stack listener sees IPv4 destinations as mapped addresses.
            let v4: SocketAddr = "203.0.113.9:8443".parse().unwrap();
            let (local, _) = round_trip(&l6, v4);
            assert_eq!(local, "[::ffff:203.0.113.9]:8443".parse().unwrap());
        }
    }

    #[test]
    fn fds_travel_in_one_message_and_eof_is_empty() {
        let (a, b) = socketpair().unwrap();
        let (r, w) = pipe().unwrap();
        let (r2, _w2) = pipe().unwrap();
        send_fds(
            a.as_raw_fd(),
            &[r.as_raw_fd(), w.as_raw_fd(), r2.as_raw_fd()],
        )
        .unwrap();
        let got = recv_fds(b.as_raw_fd()).unwrap();
        assert_eq!(got.len(), 3);
        // The received write end works with the received read end.
        write_all(got[1].as_raw_fd(), b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(read(got[0].as_raw_fd(), &mut buf).unwrap(), 1);
        assert!(send_fds(a.as_raw_fd(), &[]).is_err());
        assert!(send_fds(a.as_raw_fd(), &[r.as_raw_fd(); MAX_FDS + 1]).is_err());
        drop(a);
        assert!(recv_fds(b.as_raw_fd()).unwrap().is_empty());
    }
}
