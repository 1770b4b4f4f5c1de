//! The broker: a process inside the sandbox that answers the command's seccomp user
//! notifications.
//!
//! It is forked from the command process after Landlock, the capability drop and
//! `no_new_privs`, and before any seccomp filter: it has the command's uid, its
//! Landlock domain and no capabilities, so every operation it performs for a caller
//! is checked by the kernel exactly as the caller's own would be. It only adds
//! refusals (the [`WriteGuard`] and the unix-socket gate); it can never grant more.
//! A double fork re-parents it to the sandbox's pid 1 (or the degraded front end,
//! a subreaper), so no program in the sandbox sees an unexpected child. It is not
//! dumpable, so the command cannot ptrace it, read its memory or steal its
//! listener. If it dies, every brokered syscall fails with ENOSYS: closed, not open.
//!
//! Each write-intent operation is **performed by the broker** (the fd is injected
//! with `SECCOMP_IOCTL_NOTIF_ADDFD`), never continued in the kernel: a continued
//! syscall re-reads its path from the caller's memory, which another thread may have
//! changed since the check. The broker reads the path once, resolves the parent
//! directory to an fd, checks the real path of that fd plus the final name, and acts
//! on the fd. [`crate::guard`] explains why that cannot race with the sandbox.
//!
//! Notifications are served by a pool of threads (a blocking `connect` or FIFO open
//! holds one thread, never the others); the pool grows when every thread is busy.
//! Signals and reaping are not here at all: they stay with the supervisor.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, CWD};

use crate::guard::{Kind, WriteGuard};
use crate::sys;

/// What the broker enforces besides the kernel's own checks.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Names that may not be created or written.
    pub guard: WriteGuard,
    /// Unix sockets may be connected only below these (None: connect, sendto and
    /// sendmsg are not brokered).
    pub unix_allow: Option<Vec<PathBuf>>,
    /// The network namespace is private (abstract unix names are the sandbox's own).
    pub private_net: bool,
}

/// An answer to one notification.
enum Answer {
    /// Return this value.
    Val(i64),
    /// Fail with this errno.
    Errno(i32),
    /// Let the kernel run the syscall as asked (only where nothing is decided on
    /// memory the caller could change).
    Continue,
    /// Install this fd in the caller and return its number.
    Fd(OwnedFd, bool),
}

type R<T> = Result<T, i32>;

fn errno(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

fn ioerr(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

const MAX_THREADS: usize = 64;
const START_THREADS: usize = 1;

/// Serves notifications until no process uses the filter any more. Never returns.
pub fn serve(listener: OwnedFd, rules: Rules) -> ! {
    // Latency, not CPU, is the cost of a brokered call: switch CPUs synchronously.
    let _ = sys::notif_sync_wakeup(listener.as_raw_fd());
    // The command's umask, inherited: every process of the sandbox has it until one
    // calls umask(2) (brokered). The broker's own is 0: it applies the caller's itself.
    let initial_umask = rustix::process::umask(Mode::empty()).bits();
    let root = match rustix::fs::openat(
        CWD,
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(r) => r,
        Err(_) => sys::exit_now(1),
    };
    let shared = Arc::new(Shared {
        listener,
        root,
        rules,
        idle: AtomicUsize::new(0),
        threads: AtomicUsize::new(0),
        status: StatusCache::default(),
        initial_umask,
        umask_seen: AtomicBool::new(false),
    });
    for _ in 0..START_THREADS {
        Shared::spawn(&shared);
    }
    // The listener reports POLLHUP once every process using the filter is gone.
    loop {
        match sys::poll(&[(shared.listener.as_raw_fd(), 0)], -1) {
            Ok(rev) if rev[0] & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 => {
                sys::exit_now(0)
            }
            _ => {}
        }
    }
}

struct Shared {
    listener: OwnedFd,
    root: OwnedFd,
    rules: Rules,
    idle: AtomicUsize,
    threads: AtomicUsize,
    status: StatusCache,
    /// The sandbox's umask while nobody changed it (see `umask_seen`).
    initial_umask: u32,
    /// A umask(2) was brokered: from then on umasks are read per thread. Before, all
    /// sandbox processes descend from the command with the initial umask, and only
    /// umask(2) changes one, so no read is needed (most sessions never call it).
    umask_seen: AtomicBool,
}

/// What `/proc/TID/status` tells (thread group, umask), kept per thread: reading it
/// costs about as much as the rest of a brokered `open`.
///
/// * Each entry holds a pidfd of its thread (`PIDFD_THREAD`, Linux 6.9; without it
///   nothing is cached) and is dropped once that thread has exited, so a reused
///   thread id never gets its predecessor's values.
/// * A thread's umask changes only through `umask(2)` (by it, or by a process
///   sharing its `fs_struct`), which is brokered for exactly this: it empties the
///   cache, starts a new epoch (a read that began before it is not stored), and keeps
///   the cache from filling until the changing thread has been seen again (then its
///   call has completed) or has exited.
/// * Values the broker could not read (it fell back to defaults) are not stored.
#[derive(Default)]
struct StatusCache {
    inner: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    known: HashMap<libc::pid_t, Cached>,
    /// Threads whose `umask(2)` may not have completed, with a pidfd each to see
    /// them exit (None: no pidfd could be opened; kept until the thread is seen).
    changing: Vec<(libc::pid_t, Option<OwnedFd>)>,
    epoch: u64,
}

struct Cached {
    tgid: libc::pid_t,
    umask: u32,
    thread: OwnedFd,
}

/// Bounds the broker's fds spent on the cache; past it, dead entries go first.
const STATUS_CACHE_MAX: usize = 256;

impl StatusCache {
    /// The cached values for `tid`, and the epoch to store a fresh read under.
    fn get(&self, tid: libc::pid_t) -> (Option<(libc::pid_t, u32)>, u64) {
        let Ok(mut st) = self.inner.lock() else {
            return (None, u64::MAX);
        };
        if !st.changing.is_empty() {
            // Seen again: its umask call is over. Gone: it will not change anything.
            st.changing
                .retain(|(t, fd)| *t != tid && fd.as_ref().is_none_or(|fd| !sys::pidfd_exited(fd)));
            if !st.changing.is_empty() {
                return (None, st.epoch);
            }
        }
        let epoch = st.epoch;
        match st.known.get(&tid) {
            Some(c) if !sys::pidfd_exited(&c.thread) => (Some((c.tgid, c.umask)), epoch),
            Some(_) => {
                st.known.remove(&tid);
                (None, epoch)
            }
            None => (None, epoch),
        }
    }

    /// Stores what was read for `tid` during `epoch`, if nothing changed since.
    /// `still_caller` tells whether the notification is still pending: then its
    /// thread has been waiting all along, the status read was its own, and the
    /// pidfd opened first refers to it (a waiting thread's id cannot be reused).
    fn put(
        &self,
        tid: libc::pid_t,
        v: (libc::pid_t, u32),
        epoch: u64,
        still_caller: impl Fn() -> bool,
    ) {
        let Ok(thread) = sys::pidfd_open_thread(tid) else {
            return;
        };
        if !still_caller() {
            return;
        }
        let Ok(mut st) = self.inner.lock() else {
            return;
        };
        if st.epoch != epoch || !st.changing.is_empty() {
            return;
        }
        if st.known.len() >= STATUS_CACHE_MAX {
            st.known.retain(|_, c| !sys::pidfd_exited(&c.thread));
            if st.known.len() >= STATUS_CACHE_MAX {
                st.known.clear();
            }
        }
        st.known.insert(
            tid,
            Cached {
                tgid: v.0,
                umask: v.1,
                thread,
            },
        );
    }

    fn umask_changing(&self, tid: libc::pid_t) {
        let fd = sys::pidfd_open_thread(tid).ok();
        if let Ok(mut st) = self.inner.lock() {
            st.epoch = st.epoch.wrapping_add(1);
            st.known.clear();
            st.changing.push((tid, fd));
        }
    }
}

impl Shared {
    fn spawn(this: &Arc<Shared>) {
        if this.threads.fetch_add(1, Ordering::SeqCst) >= MAX_THREADS {
            this.threads.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        this.idle.fetch_add(1, Ordering::SeqCst);
        let me = Arc::clone(this);
        if std::thread::Builder::new()
            .name("wf-broker".into())
            .stack_size(256 << 10)
            .spawn(move || me.work())
            .is_err()
        {
            this.threads.fetch_sub(1, Ordering::SeqCst);
            this.idle.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn work(self: Arc<Self>) {
        let l = self.listener.as_raw_fd();
        loop {
            let n = match sys::notif_recv(l) {
                Ok(n) => n,
                // The caller died before we took it, or a signal: take the next one.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINTR)) => continue,
                Err(_) => return,
            };
            // Keep one thread free for the next notification.
            if self.idle.fetch_sub(1, Ordering::SeqCst) == 1 {
                Shared::spawn(&self);
            }
            let answer = self.handle(&n);
            self.idle.fetch_add(1, Ordering::SeqCst);
            match answer {
                Answer::Val(v) => sys::notif_send(l, n.id, v, 0, false),
                Answer::Errno(e) => sys::notif_send(l, n.id, 0, e, false),
                Answer::Continue => sys::notif_send(l, n.id, 0, 0, true),
                Answer::Fd(fd, cloexec) => {
                    if let Err(e) = sys::notif_addfd_send(l, n.id, fd.as_raw_fd(), cloexec) {
                        sys::notif_send(l, n.id, 0, ioerr(e), false);
                    }
                }
            }
        }
    }

    fn handle(&self, n: &sys::Notif) -> Answer {
        let c = Caller {
            tid: n.pid as libc::pid_t,
            id: n.id,
            status: std::cell::OnceCell::new(),
        };
        let nr = i64::from(n.nr);
        let a = n.args;
        if nr == libc::SYS_umask {
            // Decides nothing: the kernel sets the umask; we only forget old ones.
            self.umask_seen.store(true, Ordering::SeqCst);
            self.status.umask_changing(c.tid);
            return Answer::Continue;
        }
        let (known, epoch) = self.status.get(c.tid);
        if let Some((tgid, umask)) = known {
            let _ = c.status.set((tgid, umask, true));
        }
        let fs = Fs { s: self, c: &c };
        let r = match nr {
            libc::SYS_openat => fs.open(a[0] as i32, a[1], a[2] as i32, a[3] as u32),
            libc::SYS_mkdirat => fs.mkdir(a[0] as i32, a[1], a[2] as u32),
            libc::SYS_mknodat => fs.mknod(a[0] as i32, a[1], a[2] as u32, a[3]),
            libc::SYS_symlinkat => fs.symlink(a[0], a[1] as i32, a[2]),
            libc::SYS_linkat => fs.link(a[0] as i32, a[1], a[2] as i32, a[3], a[4] as i32),
            libc::SYS_renameat => fs.rename(a[0] as i32, a[1], a[2] as i32, a[3], 0),
            libc::SYS_renameat2 => fs.rename(a[0] as i32, a[1], a[2] as i32, a[3], a[4] as u32),
            libc::SYS_truncate => fs.truncate(a[0], a[1] as i64),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_open => fs.open(libc::AT_FDCWD, a[0], a[1] as i32, a[2] as u32),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_creat => fs.open(
                libc::AT_FDCWD,
                a[0],
                libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
                a[1] as u32,
            ),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_mkdir => fs.mkdir(libc::AT_FDCWD, a[0], a[1] as u32),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_mknod => fs.mknod(libc::AT_FDCWD, a[0], a[1] as u32, a[2]),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_symlink => fs.symlink(a[0], libc::AT_FDCWD, a[1]),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_link => fs.link(libc::AT_FDCWD, a[0], libc::AT_FDCWD, a[1], 0),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_rename => fs.rename(libc::AT_FDCWD, a[0], libc::AT_FDCWD, a[1], 0),
            libc::SYS_connect | libc::SYS_sendto | libc::SYS_sendmsg | libc::SYS_sendmmsg => {
                return match &self.rules.unix_allow {
                    Some(allow) => UnixGate {
                        allow,
                        private_net: self.rules.private_net,
                    }
                    .decide(self.listener.as_raw_fd(), n, &fs),
                    None => Answer::Continue,
                }
            }
            // Not ours (cannot happen with our filter): refuse rather than guess.
            _ => Err(libc::ENOSYS),
        };
        if let (None, Some((tgid, umask, true))) = (known, c.status.get()) {
            let listener = self.listener.as_raw_fd();
            self.status.put(c.tid, (*tgid, *umask), epoch, || {
                sys::notif_id_valid(listener, c.id)
            });
        }
        match r {
            Ok(a) => a,
            Err(e) => Answer::Errno(e),
        }
    }
}

/// The notifying thread. What only `/proc/TID/status` tells is read once, and only
/// when an operation needs it (every brokered call is on someone's hot path).
struct Caller {
    tid: libc::pid_t,
    /// The notification's id: still valid means the thread is still the caller.
    id: u64,
    /// (tgid, umask, read from procfs: false when defaults stood in).
    status: std::cell::OnceCell<(libc::pid_t, u32, bool)>,
}

impl Caller {
    /// (thread group id, umask) from one read of `/proc/TID/status`.
    fn status(&self) -> (libc::pid_t, u32) {
        let (tgid, umask, _) = *self.status.get_or_init(|| {
            let mut buf = [0u8; 4096];
            let n = std::fs::File::open(format!("/proc/{}/status", self.tid))
                .and_then(|mut f| std::io::Read::read(&mut f, &mut buf))
                .unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]);
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let tgid = field("Tgid:").and_then(|v| v.parse().ok());
            let umask = field("Umask:").and_then(|v| u32::from_str_radix(&v, 8).ok());
            match (tgid, umask) {
                (Some(t), Some(u)) => (t, u, true),
                (t, u) => (t.unwrap_or(self.tid), u.unwrap_or(0o022), false),
            }
        });
        (tgid, umask)
    }

    fn tgid(&self) -> libc::pid_t {
        self.status().0
    }

    fn umask(&self) -> u32 {
        self.status().1
    }

    /// A pidfd for the calling thread (its fd table is the one its fd numbers mean).
    fn pidfd(&self) -> io::Result<OwnedFd> {
        sys::pidfd_open_thread(self.tid).or_else(|_| sys::pidfd_open(self.tgid()))
    }
}

/// Reads a NUL-terminated path from the caller's memory (once: every decision is
/// made on this copy).
fn read_path(tid: libc::pid_t, addr: u64) -> R<Vec<u8>> {
    if addr == 0 {
        return Err(libc::EFAULT);
    }
    let raw = sys::read_process_memory(tid, addr, libc::PATH_MAX as usize).map_err(ioerr)?;
    match raw.iter().position(|b| *b == 0) {
        Some(i) => Ok(raw[..i].to_vec()),
        None if raw.len() >= libc::PATH_MAX as usize => Err(libc::ENAMETOOLONG),
        None => Err(libc::EFAULT),
    }
}

/// The path an fd refers to, as the kernel names it.
fn fd_path(fd: BorrowedFd<'_>) -> R<Vec<u8>> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.into_os_string().into_encoded_bytes())
        .map_err(ioerr)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = parent.to_vec();
    if !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// A path split into its parent part and its last component. `sys_name` keeps a
/// trailing slash (it means "a directory" to the kernel), `name` does not.
struct Split {
    parent: Vec<u8>,
    name: Vec<u8>,
    sys_name: Vec<u8>,
}

fn split(path: &[u8]) -> Split {
    let mut end = path.len();
    while end > 0 && path[end - 1] == b'/' {
        end -= 1;
    }
    let trimmed = &path[..end];
    let (parent, name) = match trimmed.iter().rposition(|b| *b == b'/') {
        Some(0) => (b"/".to_vec(), trimmed[1..].to_vec()),
        Some(i) => (trimmed[..i].to_vec(), trimmed[i + 1..].to_vec()),
        None if path.starts_with(b"/") => (b"/".to_vec(), Vec::new()),
        None => (b".".to_vec(), trimmed.to_vec()),
    };
    let mut sys_name = name.clone();
    if end < path.len() && !name.is_empty() {
        sys_name.push(b'/');
    }
    Split {
        parent,
        name,
        sys_name,
    }
}

/// No new name is made at the end of this path (`/`, `.`, `..`, `a/..`).
fn no_new_name(s: &Split) -> bool {
    s.name.is_empty() || s.name == b"." || s.name == b".."
}

fn is_symlink(mode: u32) -> bool {
    FileType::from_raw_mode(mode) == FileType::Symlink
}

/// Where a path the caller passed starts.
enum Base {
    /// `/` (absolute paths).
    Root,
    /// The caller's working directory (`AT_FDCWD`).
    Cwd,
    /// A directory fd of the caller, duplicated.
    Fd(OwnedFd),
}

/// A resolved parent directory: an fd and the real path it had when opened.
struct Parent {
    fd: OwnedFd,
    real: Vec<u8>,
}

struct Fs<'a> {
    s: &'a Shared,
    c: &'a Caller,
}

impl Fs<'_> {
    /// Paths that name the *caller* through `/proc/self`, `/dev/fd`, `/dev/stdout` or
    /// `/dev/tty` would name the broker here: rewrite them to the caller's.
    fn translate(&self, p: Vec<u8>) -> R<Vec<u8>> {
        if !(p.starts_with(b"/proc/") || p.starts_with(b"/dev/")) {
            return Ok(p);
        }
        let (tgid, tid) = (self.c.tgid(), self.c.tid);
        let sub = |prefix: &[u8], with: String, p: &[u8]| -> Option<Vec<u8>> {
            let rest = p.strip_prefix(prefix)?;
            if !rest.is_empty() && rest[0] != b'/' {
                return None;
            }
            let mut v = with.into_bytes();
            v.extend_from_slice(rest);
            Some(v)
        };
        if let Some(v) = sub(b"/proc/self", format!("/proc/{tgid}"), &p)
            .or_else(|| sub(b"/proc/thread-self", format!("/proc/{tgid}/task/{tid}"), &p))
            .or_else(|| sub(b"/dev/fd", format!("/proc/{tgid}/fd"), &p))
        {
            return Ok(v);
        }
        for (name, n) in [
            (&b"/dev/stdin"[..], 0),
            (&b"/dev/stdout"[..], 1),
            (&b"/dev/stderr"[..], 2),
        ] {
            if p == name {
                return Ok(format!("/proc/{tgid}/fd/{n}").into_bytes());
            }
        }
        if p == b"/dev/tty" {
            return self.controlling_tty();
        }
        Ok(p)
    }

    /// `/dev/tty` of the caller: its controlling terminal (a pty of the sandbox's
    /// devpts, the only terminals inside), or ENXIO like the kernel without one.
    fn controlling_tty(&self) -> R<Vec<u8>> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.c.tid))
            .map_err(|_| libc::ENXIO)?;
        // Field 7 (tty_nr), counted after the parenthesised command name.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let tty_nr: u64 = after
            .split_whitespace()
            .nth(4)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let major = (tty_nr >> 8) & 0xfff;
        let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
        if (136..=143).contains(&major) {
            Ok(format!("/dev/pts/{}", (major - 136) * 256 + minor).into_bytes())
        } else {
            Err(libc::ENXIO)
        }
    }

    /// Where a relative path starts: the caller's cwd or its dirfd; `/` for absolute ones.
    fn base(&self, dirfd: i32, path: &[u8]) -> R<Base> {
        if path.starts_with(b"/") {
            return Ok(Base::Root);
        }
        if dirfd == libc::AT_FDCWD {
            return Ok(Base::Cwd);
        }
        let pidfd = self.c.pidfd().map_err(ioerr)?;
        sys::pidfd_getfd(&pidfd, dirfd)
            .map(Base::Fd)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBADF) => libc::EBADF,
                _ => ioerr(e),
            })
    }

    /// `openat` of `path` from `base`. The caller's cwd is reached through its procfs
    /// magic link in the same walk (one open instead of two).
    fn open_from(&self, base: &Base, path: &[u8], flags: OFlags, mode: u32) -> R<OwnedFd> {
        let mode = Mode::from_raw_mode(mode);
        match base {
            Base::Root => rustix::fs::openat(&self.s.root, path, flags, mode),
            Base::Fd(fd) => rustix::fs::openat(fd, path, flags, mode),
            Base::Cwd => {
                let mut via = format!("/proc/{}/cwd/", self.c.tid).into_bytes();
                if via.len() + path.len() < libc::PATH_MAX as usize {
                    via.extend_from_slice(path);
                    rustix::fs::openat(CWD, via.as_slice(), flags, mode)
                } else {
                    // Too long for one walk: the cwd first, then the path.
                    via.pop();
                    rustix::fs::openat(
                        CWD,
                        via.as_slice(),
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .and_then(|cwd| rustix::fs::openat(&cwd, path, flags, mode))
                }
            }
        }
        .map_err(errno)
    }

    fn parent(&self, base: &Base, s: &Split) -> R<Parent> {
        let fd = self.open_from(
            base,
            &s.parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            0,
        )?;
        let real = fd_path(fd.as_fd())?;
        if let Some(caller) = self.callers_proc_dir(&real) {
            // The broker's own /proc entry, reached without naming `/proc/self`
            // (`self/fd` from a cwd of /proc, `../proc/self`): it meant the caller's.
            let fd = rustix::fs::openat(
                &self.s.root,
                caller.as_slice(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            let real = fd_path(fd.as_fd())?;
            return Ok(Parent { fd, real });
        }
        Ok(Parent { fd, real })
    }

    /// When `real` lies in the broker's own `/proc/PID` (thread dirs included), the
    /// same place in the caller's.
    fn callers_proc_dir(&self, real: &[u8]) -> Option<Vec<u8>> {
        let mine = format!("/proc/{}", std::process::id()).into_bytes();
        let rest = real.strip_prefix(mine.as_slice())?;
        if !(rest.is_empty() || rest.starts_with(b"/")) {
            return None;
        }
        let my_task =
            format!("/task/{}", rustix::thread::gettid().as_raw_nonzero().get()).into_bytes();
        let mut out = format!("/proc/{}", self.c.tgid()).into_bytes();
        match rest.strip_prefix(my_task.as_slice()) {
            Some(r) if r.is_empty() || r.starts_with(b"/") => {
                out.extend_from_slice(format!("/task/{}", self.c.tid).as_bytes());
                out.extend_from_slice(r);
            }
            _ => out.extend_from_slice(rest),
        }
        Some(out)
    }

    /// A path from the caller's memory, as it is there.
    fn read_raw(&self, addr: u64) -> R<Vec<u8>> {
        let p = read_path(self.c.tid, addr)?;
        // Still the caller's memory we read (the thread could have died and its id
        // been reused since the notification): only then is the path acted on.
        if !sys::notif_id_valid(self.s.listener.as_raw_fd(), self.c.id) {
            return Err(libc::EINTR);
        }
        Ok(p)
    }

    /// A path from the caller's memory, with the caller's `/proc/self` and friends.
    fn read(&self, addr: u64) -> R<Vec<u8>> {
        let p = self.read_raw(addr)?;
        if p.is_empty() {
            return Err(libc::ENOENT);
        }
        self.translate(p)
    }

    fn refuse(&self, path: &[u8], kind: Kind) -> R<()> {
        match self.s.rules.guard.refuse(path, kind) {
            Some(_) => Err(libc::EACCES),
            None => Ok(()),
        }
    }

    fn umask(&self, mode: u32) -> u32 {
        let umask = if self.s.umask_seen.load(Ordering::SeqCst) {
            self.c.umask()
        } else {
            self.s.initial_umask
        };
        mode & 0o7777 & !umask
    }

    /// Opens `path` for the caller with `flags` (write intent), following a final
    /// symlink the way the kernel would, and refusing protected targets.
    fn open_as_caller(&self, dirfd: i32, path: Vec<u8>, flags: i32, mode: u32) -> R<OwnedFd> {
        let oflags = |f: i32| OFlags::from_bits_retain(f as u32);
        let tmpfile = flags & libc::O_TMPFILE == libc::O_TMPFILE;
        let creat = flags & libc::O_CREAT != 0 && !tmpfile;
        let follow = flags & libc::O_NOFOLLOW == 0 && !(creat && flags & libc::O_EXCL != 0);
        let mode = if creat || tmpfile {
            self.umask(mode)
        } else {
            0
        };
        let mut base = self.base(dirfd, &path)?;
        let mut path = path;
        for _ in 0..40 {
            let s = split(&path);
            if no_new_name(&s) || tmpfile {
                // No name is created here (an unnamed O_TMPFILE gets one only through
                // linkat, which is brokered too).
                return self.open_from(&base, &path, oflags(flags | libc::O_CLOEXEC), mode);
            }
            let p = self.parent(&base, &s)?;
            let full = join(&p.real, &s.name);
            if creat && flags & libc::O_EXCL != 0 {
                // Makes a new name or fails: whatever is there now is never opened,
                // so there is nothing to look at first.
                self.refuse(&full, Kind::NonDir)?;
                return rustix::fs::openat(
                    &p.fd,
                    s.sys_name.as_slice(),
                    oflags(flags | libc::O_CLOEXEC | libc::O_NOFOLLOW),
                    Mode::from_raw_mode(mode),
                )
                .map_err(errno);
            }
            match rustix::fs::statat(&p.fd, s.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if follow && is_symlink(st.st_mode) => {
                    let procfs = rustix::fs::fstatfs(&p.fd)
                        .map(|f| f.f_type as u64 == 0x9fa0)
                        .unwrap_or(false);
                    if procfs {
                        return self.open_magic(&p, &s, flags);
                    }
                    let target = rustix::fs::readlinkat(&p.fd, s.name.as_slice(), Vec::new())
                        .map_err(errno)?
                        .into_bytes();
                    let target = self.translate(target)?;
                    base = if target.starts_with(b"/") {
                        Base::Root
                    } else {
                        Base::Fd(p.fd)
                    };
                    path = target;
                    continue;
                }
                Ok(st) => {
                    let kind = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                        Kind::Dir
                    } else {
                        Kind::NonDir
                    };
                    self.refuse(&full, kind)?
                }
                Err(rustix::io::Errno::NOENT) if creat => self.refuse(&full, Kind::NonDir)?,
                Err(e) => return Err(errno(e)),
            }
            let mut f = flags | libc::O_CLOEXEC;
            if follow {
                // The final name was not a symlink when checked; if it is one now,
                // resolve again rather than follow it unchecked.
                f |= libc::O_NOFOLLOW;
            }
            match rustix::fs::openat(
                &p.fd,
                s.sys_name.as_slice(),
                oflags(f),
                Mode::from_raw_mode(mode),
            ) {
                Err(rustix::io::Errno::LOOP) if follow => {
                    base = Base::Fd(p.fd);
                    path = s.sys_name;
                    continue;
                }
                Err(e) => return Err(errno(e)),
                Ok(fd) => return Ok(fd),
            }
        }
        Err(libc::ELOOP)
    }

    /// A procfs magic link (`/proc/PID/fd/N`, `cwd`, `exe`, ...): the kernel follows
    /// it by object, not by name, so open it through the kernel (the broker may: it
    /// is in the caller's Landlock domain and uid) and check what it reached.
    fn open_magic(&self, p: &Parent, s: &Split, flags: i32) -> R<OwnedFd> {
        let f = (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC)) | libc::O_CLOEXEC;
        let fd = rustix::fs::openat(
            &p.fd,
            s.sys_name.as_slice(),
            OFlags::from_bits_retain(f as u32),
            Mode::empty(),
        )
        .map_err(errno)?;
        let real = fd_path(fd.as_fd())?;
        if real.starts_with(b"/") {
            self.refuse(&real, Kind::NonDir)?;
        }
        if flags & libc::O_TRUNC != 0 {
            let regular = rustix::fs::fstat(&fd)
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
                .unwrap_or(false);
            if regular {
                rustix::fs::ftruncate(&fd, 0).map_err(errno)?;
            }
        }
        Ok(fd)
    }

    fn open(&self, dirfd: i32, addr: u64, flags: i32, mode: u32) -> R<Answer> {
        let path = self.read(addr)?;
        let fd = self.open_as_caller(dirfd, path, flags, mode)?;
        Ok(Answer::Fd(fd, flags & libc::O_CLOEXEC != 0))
    }

    fn truncate(&self, addr: u64, len: i64) -> R<Answer> {
        let path = self.read(addr)?;
        let len = u64::try_from(len).map_err(|_| libc::EINVAL)?;
        let fd = self.open_as_caller(libc::AT_FDCWD, path, libc::O_WRONLY, 0)?;
        rustix::fs::ftruncate(&fd, len).map_err(errno)?;
        Ok(Answer::Val(0))
    }

    /// Resolves the parent of a path that names a new entry (no final symlink is
    /// followed) and checks the entry against the guard.
    fn new_entry(&self, dirfd: i32, path: &[u8], kind: Kind) -> R<(Parent, Split)> {
        let s = split(path);
        let base = self.base(dirfd, path)?;
        if no_new_name(&s) {
            // `mkdir .`, `ln x ..` and the like name an existing directory.
            return Err(libc::EEXIST);
        }
        let p = self.parent(&base, &s)?;
        self.refuse(&join(&p.real, &s.name), kind)?;
        Ok((p, s))
    }

    fn mkdir(&self, dirfd: i32, addr: u64, mode: u32) -> R<Answer> {
        let path = self.read(addr)?;
        let (p, s) = self.new_entry(dirfd, &path, Kind::Dir)?;
        rustix::fs::mkdirat(
            &p.fd,
            s.sys_name.as_slice(),
            Mode::from_raw_mode(self.umask(mode)),
        )
        .map_err(errno)?;
        Ok(Answer::Val(0))
    }

    fn mknod(&self, dirfd: i32, addr: u64, mode: u32, dev: u64) -> R<Answer> {
        let path = self.read(addr)?;
        let (p, s) = self.new_entry(dirfd, &path, Kind::NonDir)?;
        let ft = if mode & libc::S_IFMT == 0 {
            FileType::RegularFile
        } else {
            FileType::from_raw_mode(mode)
        };
        rustix::fs::mknodat(
            &p.fd,
            s.sys_name.as_slice(),
            ft,
            Mode::from_raw_mode(self.umask(mode)),
            dev,
        )
        .map_err(errno)?;
        Ok(Answer::Val(0))
    }

    fn symlink(&self, target_addr: u64, dirfd: i32, addr: u64) -> R<Answer> {
        // The target is stored as text, never resolved here: no translation.
        let target = self.read_raw(target_addr)?;
        let path = self.read(addr)?;
        let (p, s) = self.new_entry(dirfd, &path, Kind::NonDir)?;
        rustix::fs::symlinkat(target.as_slice(), &p.fd, s.sys_name.as_slice()).map_err(errno)?;
        Ok(Answer::Val(0))
    }

    fn link(
        &self,
        olddirfd: i32,
        oldaddr: u64,
        newdirfd: i32,
        newaddr: u64,
        flags: i32,
    ) -> R<Answer> {
        let new = self.read(newaddr)?;
        let (np, ns) = self.new_entry(newdirfd, &new, Kind::NonDir)?;
        let old = self.read_raw(oldaddr)?;
        // The source as an O_PATH fd: a protected file must not get a second,
        // writable name.
        let src = if old.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
            let pidfd = self.c.pidfd().map_err(ioerr)?;
            sys::pidfd_getfd(&pidfd, olddirfd).map_err(ioerr)?
        } else {
            let old = self.translate(old)?;
            if old.is_empty() {
                return Err(libc::ENOENT);
            }
            let base = self.base(olddirfd, &old)?;
            let mut of = OFlags::PATH | OFlags::CLOEXEC;
            if flags & libc::AT_SYMLINK_FOLLOW == 0 {
                of |= OFlags::NOFOLLOW;
            }
            self.open_from(&base, &old, of, 0)?
        };
        let real = fd_path(src.as_fd())?;
        if real.starts_with(b"/") {
            self.refuse(&real, Kind::NonDir)?;
        }
        rustix::fs::linkat(
            CWD,
            format!("/proc/self/fd/{}", src.as_raw_fd()).as_str(),
            &np.fd,
            ns.sys_name.as_slice(),
            AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(errno)?;
        Ok(Answer::Val(0))
    }

    fn rename(
        &self,
        olddirfd: i32,
        oldaddr: u64,
        newdirfd: i32,
        newaddr: u64,
        flags: u32,
    ) -> R<Answer> {
        let old = self.read(oldaddr)?;
        let new = self.read(newaddr)?;
        let os = split(&old);
        let ns = split(&new);
        if no_new_name(&os) || no_new_name(&ns) {
            return Err(libc::EBUSY);
        }
        let op = self.parent(&self.base(olddirfd, &old)?, &os)?;
        let np = self.parent(&self.base(newdirfd, &new)?, &ns)?;
        let kind_of = |p: &Parent, name: &[u8]| -> R<Kind> {
            let st = rustix::fs::statat(&p.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
            Ok(
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    Kind::Dir
                } else {
                    Kind::NonDir
                },
            )
        };
        let check_dst = |kind: Kind, dst: &[u8]| -> R<()> {
            self.refuse(dst, kind)?;
            if kind == Kind::Dir && self.s.rules.guard.refuse_dir_destination(dst).is_some() {
                return Err(libc::EACCES);
            }
            Ok(())
        };
        let src_kind = kind_of(&op, &os.name)?;
        check_dst(src_kind, &join(&np.real, &ns.name))?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            let dst_kind = kind_of(&np, &ns.name)?;
            check_dst(dst_kind, &join(&op.real, &os.name))?;
        }
        rustix::fs::renameat_with(
            &op.fd,
            os.sys_name.as_slice(),
            &np.fd,
            ns.sys_name.as_slice(),
            RenameFlags::from_bits_retain(flags),
        )
        .map_err(errno)?;
        Ok(Answer::Val(0))
    }
}

/// Where unix-socket connections from the sandbox may go.
struct UnixGate<'a> {
    allow: &'a [PathBuf],
    private_net: bool,
}

impl UnixGate<'_> {
    fn decide(&self, listener: RawFd, n: &sys::Notif, fs: &Fs<'_>) -> Answer {
        let c = fs.c;
        let Ok(pidfd) = c.pidfd() else {
            return Answer::Errno(libc::ESRCH);
        };
        let Ok(dup) = sys::pidfd_getfd(&pidfd, n.args[0] as i32) else {
            return Answer::Errno(libc::EBADF);
        };
        // The socket's family is fixed at creation: deciding on it is race-free,
        // unlike the address in the caller's memory, which another thread may change.
        match sys::sockopt_int(dup.as_raw_fd(), libc::SO_DOMAIN) {
            Ok(libc::AF_UNIX) => {}
            Ok(_) => return Answer::Continue,
            Err(e) => return Answer::Errno(e.raw_os_error().unwrap_or(libc::ENOTSOCK)),
        }
        let nr = i64::from(n.nr);
        if nr == libc::SYS_sendmsg || nr == libc::SYS_sendmmsg {
            return match sys::sockopt_int(dup.as_raw_fd(), libc::SO_TYPE) {
                // A stream or seqpacket socket has its peer already.
                Ok(t) if t != libc::SOCK_DGRAM => Answer::Continue,
                // A datagram may name its peer in memory we cannot pin: send it
                // ourselves, from a copy, to the connected peer only.
                _ if nr == libc::SYS_sendmsg => self.send_connected_dgram(listener, n, c, &dup),
                _ => Answer::Errno(libc::EPERM),
            };
        }
        let (addr, addrlen) = if nr == libc::SYS_connect {
            (n.args[1], n.args[2])
        } else {
            (n.args[4], n.args[5])
        };
        let len = (addrlen as usize).min(std::mem::size_of::<libc::sockaddr_un>());
        if len < 2 {
            return Answer::Errno(libc::EINVAL);
        }
        let Ok(raw) = sys::read_process_memory(c.tid, addr, len) else {
            return Answer::Errno(libc::EFAULT);
        };
        if !sys::notif_id_valid(listener, n.id) {
            return Answer::Errno(libc::EINTR);
        }
        if u16::from_ne_bytes([raw[0], raw[1]]) != libc::AF_UNIX as u16 {
            return Answer::Errno(libc::EINVAL);
        }
        let name = &raw[2..];
        // Keep the O_PATH fd of the validated socket alive until the connect.
        let mut _pinned = None;
        let target: Vec<u8> = if name.first() == Some(&0) {
            // Abstract names live in the network namespace: the private one holds only
            // the sandbox's own; the host's are out of reach.
            if !self.private_net {
                return Answer::Errno(libc::EPERM);
            }
            name.to_vec()
        } else {
            let path: Vec<u8> = name.iter().take_while(|b| **b != 0).copied().collect();
            match self.resolve(fs, &path) {
                Ok(fd) => {
                    let via = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
                    _pinned = Some(fd);
                    via
                }
                Err(e) => return Answer::Errno(e),
            }
        };
        if nr == libc::SYS_connect {
            match sys::connect_unix(dup.as_raw_fd(), &target) {
                Ok(()) => Answer::Val(0),
                Err(e) => Answer::Errno(e),
            }
        } else {
            let blen = (n.args[2] as usize).min(4 << 20);
            let Ok(buf) = sys::read_process_memory(c.tid, n.args[1], blen) else {
                return Answer::Errno(libc::EFAULT);
            };
            // Still the caller's memory (and socket) that was read.
            if !sys::notif_id_valid(listener, n.id) {
                return Answer::Errno(libc::EINTR);
            }
            match sys::sendto_unix(dup.as_raw_fd(), &buf, n.args[3] as libc::c_int, &target) {
                Ok(sent) => Answer::Val(sent as i64),
                Err(e) => Answer::Errno(e),
            }
        }
    }

    /// `sendmsg` on a unix datagram socket: allowed to its connected peer only (the
    /// peer was checked at connect time), with no address and no control data (fds
    /// in SCM_RIGHTS are the caller's numbers, meaningless here). The message is
    /// copied once and sent by the broker, so nothing the caller changes afterwards
    /// matters.
    fn send_connected_dgram(
        &self,
        listener: RawFd,
        n: &sys::Notif,
        c: &Caller,
        sock: &OwnedFd,
    ) -> Answer {
        let Ok(hdr) = sys::read_process_msghdr(c.tid, n.args[1]) else {
            return Answer::Errno(libc::EFAULT);
        };
        if hdr.name_len != 0 || hdr.control_len != 0 {
            return Answer::Errno(libc::EPERM);
        }
        if !sys::is_connected(sock.as_raw_fd()) {
            return Answer::Errno(libc::ENOTCONN);
        }
        let mut data = Vec::new();
        for (base, len) in hdr.iov {
            let len = len.min((4 << 20) - data.len());
            match sys::read_process_memory(c.tid, base, len) {
                Ok(b) => data.extend_from_slice(&b),
                Err(_) => return Answer::Errno(libc::EFAULT),
            }
        }
        // Still the caller's memory (and socket) that was read.
        if !sys::notif_id_valid(listener, n.id) {
            return Answer::Errno(libc::EINTR);
        }
        match sys::send(sock.as_raw_fd(), &data, n.args[2] as libc::c_int) {
            Ok(sent) => Answer::Val(sent as i64),
            Err(e) => Answer::Errno(ioerr(e)),
        }
    }

    /// Opens the socket a path names, as the caller would (relative to its cwd,
    /// following symlinks), and checks where it really lives.
    fn resolve(&self, fs: &Fs<'_>, path: &[u8]) -> Result<OwnedFd, i32> {
        let base = fs.base(libc::AT_FDCWD, path)?;
        let fd = fs.open_from(&base, path, OFlags::PATH | OFlags::CLOEXEC, 0)?;
        let is_socket = rustix::fs::fstat(&fd)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Socket);
        if !is_socket {
            return Err(libc::ECONNREFUSED);
        }
        let real = PathBuf::from(std::ffi::OsString::from_vec(fd_path(fd.as_fd())?));
        if self.allow.iter().any(|a| real.starts_with(a)) {
            Ok(fd)
        } else {
            // A socket outside the sandbox's own places: a host daemon's.
            Err(libc::EACCES)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_paths() {
        let s = split(b"a/b/c");
        assert_eq!(
            (s.parent.as_slice(), s.name.as_slice()),
            (&b"a/b"[..], &b"c"[..])
        );
        let s = split(b"/x");
        assert_eq!(
            (s.parent.as_slice(), s.name.as_slice()),
            (&b"/"[..], &b"x"[..])
        );
        let s = split(b"x");
        assert_eq!(
            (s.parent.as_slice(), s.name.as_slice()),
            (&b"."[..], &b"x"[..])
        );
        let s = split(b"d/e//");
        assert_eq!(
            (
                s.parent.as_slice(),
                s.name.as_slice(),
                s.sys_name.as_slice()
            ),
            (&b"d"[..], &b"e"[..], &b"e/"[..])
        );
        assert!(no_new_name(&split(b"/")));
        assert!(no_new_name(&split(b"a/..")));
        assert!(no_new_name(&split(b".")));
    }
}
