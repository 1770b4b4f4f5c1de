//! Executes a [`LinuxPlan`]: three roles in a chain.
//!
//! * the **front end** (the `workfence` process) clones the supervisor into new
//!   namespaces, forwards signals, enforces the timeout and reports errors;
//! * the **supervisor** is pid 1 of the sandbox: it builds the filesystem view, forks
//!   the command, forwards signals to it, reaps zombies, and exits with the command's
//!   status, which makes the kernel kill everything left in the pid namespace;
//! * the **command** drops into Landlock, drops capabilities, sets `no_new_privs`,
//!   installs seccomp and execs.
//!
//! Errors in the supervisor or the command travel to the front end over a pipe as
//! one fixed-size [`ErrorRecord`] (exit code, step, syscall, errno).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use workfence_policy::run::{
    timeout_message, RunOutcome, RunRequest, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_SETUP,
    EXIT_TIMEOUT,
};

use crate::error::LinuxError;
use crate::plan::{Isolation, LinuxPlan, MountStep};
use crate::sys::{self, cstr, Forked};
use crate::{landlock_apply, seccomp_compile};

/// Everything the children need, prepared before forking (no allocation decisions
/// are left to the children beyond small strings).
struct Prepared {
    argv: Vec<CString>,
    env: Vec<CString>,
    path_dirs: Vec<Vec<u8>>,
    cwd: CString,
    bpf: Vec<seccompiler::BpfProgram>,
    /// The helper's result pipe (write end): it reports an error once the caller,
    /// which holds the read end, is gone; then the sandbox is killed.
    lifeline: Option<RawFd>,
}

fn prepare(plan: &LinuxPlan, req: &RunRequest) -> Result<Prepared, LinuxError> {
    let argv = req
        .argv
        .iter()
        .map(|a| {
            cstr(a).map_err(|_| LinuxError::BadArgument("an argument contains a NUL byte".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if argv.is_empty() {
        return Err(LinuxError::BadArgument("no command given".into()));
    }
    let mut env: Vec<(String, String)> = req
        .env
        .iter()
        .filter(|(k, _)| k != "TMPDIR")
        .cloned()
        .collect();
    env.push(("TMPDIR".into(), plan.tmpdir.to_string_lossy().into_owned()));
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let env = env
        .into_iter()
        .map(|(k, v)| {
            CString::new(format!("{k}={v}")).map_err(|_| {
                LinuxError::BadArgument(format!("environment variable {k} contains a NUL byte"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        lifeline: None,
        argv,
        env,
        path_dirs: path
            .split(':')
            .map(|d| {
                if d.is_empty() {
                    b".".to_vec()
                } else {
                    d.as_bytes().to_vec()
                }
            })
            .collect(),
        cwd: cstr(&req.cwd)
            .map_err(|_| LinuxError::BadArgument("cwd contains a NUL byte".into()))?,
        bpf: seccomp_compile::compile(&plan.seccomp)?,
    })
}

/// The error record the children send to the front end: fixed size, so that the
/// front end accepts exactly one whole record (a pipe write of at most PIPE_BUF bytes
/// is atomic) and anything else on the pipe is itself an error. Only workfence's own
/// processes hold the write end, and never past execve (it is close-on-exec and no
/// kept fd may name it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorRecord {
    code: i32,
    errno: i32,
    step: String,
    call: String,
}

const REC_MAGIC: [u8; 4] = *b"WFER";
const REC_VERSION: u16 = 1;
const REC_STEP: usize = 192;
const REC_CALL: usize = 48;
/// magic, version, reserved, code, errno, step, call.
const RECORD_LEN: usize = 4 + 2 + 2 + 4 + 4 + REC_STEP + REC_CALL;
const _: () = assert!(RECORD_LEN <= libc::PIPE_BUF);

/// Copies `text` into `out` (NUL-padded), cut at a char boundary.
fn put_text(out: &mut [u8], text: &str) {
    let mut end = text.len().min(out.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
}

fn get_text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl ErrorRecord {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..4].copy_from_slice(&REC_MAGIC);
        b[4..6].copy_from_slice(&REC_VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.code.to_le_bytes());
        b[12..16].copy_from_slice(&self.errno.to_le_bytes());
        put_text(&mut b[16..16 + REC_STEP], &self.step);
        put_text(&mut b[16 + REC_STEP..], &self.call);
        b
    }

    /// Exactly one whole record, or nothing.
    fn decode(b: &[u8]) -> Option<ErrorRecord> {
        if b.len() != RECORD_LEN || b[0..4] != REC_MAGIC || b[4..6] != REC_VERSION.to_le_bytes() {
            return None;
        }
        let int = |at: usize| i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let code = int(8);
        // A record always reports a failure: a child never claims success.
        if !(1..=255).contains(&code) {
            return None;
        }
        Some(ErrorRecord {
            code,
            errno: int(12),
            step: get_text(&b[16..16 + REC_STEP]),
            call: get_text(&b[16 + REC_STEP..]),
        })
    }
}

/// Reports an error to the front end and exits.
fn die(err_fd: RawFd, code: i32, msg: &str) -> ! {
    let rec = ErrorRecord {
        code,
        errno: 0,
        step: msg
            .strip_prefix("sandbox setup failed: ")
            .unwrap_or(msg)
            .to_string(),
        call: String::new(),
    };
    let _ = sys::write_all(err_fd, &rec.encode());
    sys::exit_now(code)
}

/// The step and the syscall of a `step()` description: "dropping capabilities
/// (capset)" names its call in parentheses, a bare "setsid" is its own call.
fn split_step(what: &str) -> (&str, &str) {
    if let Some(inner) = what.strip_suffix(')') {
        if let Some((step, call)) = inner.rsplit_once(" (") {
            return (step, call);
        }
    }
    if !what.contains(' ') {
        return (what, what);
    }
    match what.split_once(' ') {
        Some(("writing", _)) => (what, "write"),
        Some(("opening", _)) => (what, "open"),
        _ => (what, ""),
    }
}

fn step<T>(err_fd: RawFd, what: &str, r: io::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            let (step, call) = split_step(what);
            let rec = match e.raw_os_error() {
                Some(errno) => ErrorRecord {
                    code: EXIT_SETUP,
                    errno,
                    step: step.to_string(),
                    call: call.to_string(),
                },
                // A wrapped error carries its detail in its text.
                None => ErrorRecord {
                    code: EXIT_SETUP,
                    errno: 0,
                    step: format!("{step}: {e}"),
                    call: call.to_string(),
                },
            };
            let _ = sys::write_all(err_fd, &rec.encode());
            sys::exit_now(EXIT_SETUP)
        }
    }
}

/// Refuses `--keep-fd` values that are not open in workfence before it creates any
/// fd of its own: then no internal fd can have a kept number (a new fd never takes
/// an open one), so the command cannot be handed the error pipe or a socket.
pub(crate) fn check_keep_fds(fds: &[i32]) -> Result<(), LinuxError> {
    for &fd in fds {
        if fd < 3 {
            return Err(LinuxError::BadArgument(format!(
                "--keep-fd {fd}: fds 0-2 are always passed; name fds 3 and above"
            )));
        }
        if let Err(e) = sys::fd_flags(fd) {
            return Err(LinuxError::BadArgument(format!(
                "--keep-fd {fd}: not an open file descriptor of workfence (fcntl(F_GETFD): {e}); open it when starting workfence, e.g. `{fd}>file`"
            )));
        }
    }
    Ok(())
}

/// Runs the command under the plan. Returns the exit status per the CLI contract.
/// `started` is called once the sandbox exists (after the clone, or after the helper
/// started): from then on the caller may start threads.
pub fn run(
    plan: &LinuxPlan,
    req: &RunRequest,
    started: &mut dyn FnMut(),
) -> Result<RunOutcome, LinuxError> {
    // First, before workfence opens any fd of its own.
    check_keep_fds(&req.keep_fds)?;
    if plan.proxy.is_some() && req.proxy_socket.is_none() {
        return Err(LinuxError::BadArgument(
            "the plan has a network allowlist but the request no proxy socket: use workfence::run, which starts the proxy".into(),
        ));
    }
    // The clone below is sound only with one thread (see crate::helper).
    if !crate::helper::single_threaded() {
        return crate::helper::run_in_helper(plan, req, started);
    }
    run_single_threaded(plan, req, None, started)
}

/// [`run`] in the helper: one thread (checked), and the caller's lifeline.
pub(crate) fn run_for_caller(
    plan: &LinuxPlan,
    req: &RunRequest,
    lifeline: BorrowedFd<'_>,
) -> Result<RunOutcome, LinuxError> {
    check_keep_fds(&req.keep_fds)?;
    if !crate::helper::single_threaded() {
        return Err(LinuxError::BadArgument(
            "the helper has more than one thread (or cannot read /proc/self/status): its main must call workfence::helper_main_if_requested() first, before any thread starts (no #[tokio::main] around it)".into(),
        ));
    }
    run_single_threaded(plan, req, Some(lifeline.as_raw_fd()), &mut || {})
}

fn run_single_threaded(
    plan: &LinuxPlan,
    req: &RunRequest,
    lifeline: Option<RawFd>,
    started: &mut dyn FnMut(),
) -> Result<RunOutcome, LinuxError> {
    let mut prep = prepare(plan, req)?;
    prep.lifeline = lifeline;
    match plan.isolation {
        Isolation::Namespaces => run_namespaces(plan, req, &prep, started),
        Isolation::Degraded => {
            started();
            run_degraded(plan, req, &prep)
        }
    }
}

struct Cgroup(Option<PathBuf>);

impl Cgroup {
    /// Creates the planned cgroup. Failing to create it or to set pids.max is an
    /// error: the plan counts on it for the process cap (fail closed). Memory and CPU
    /// stay best-effort here; the plan already reports them when no v2 subtree exists.
    fn create(plan: &LinuxPlan) -> Result<Cgroup, LinuxError> {
        let Some(c) = &plan.cgroup else {
            return Ok(Cgroup(None));
        };
        // The pid alone is not unique: inside a container's pid namespace, concurrent
        // workfences share pids while the cgroup tree is the host's.
        let mut n = 0u32;
        let dir = loop {
            let dir = c
                .parent
                .join(format!("workfence-{}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => {
                    return Err(LinuxError::Io {
                        step: "creating the sandbox's cgroup",
                        source: e,
                    })
                }
            }
        };
        let cg = Cgroup(Some(dir.clone()));
        if let Some(n) = c.pids_max {
            std::fs::write(dir.join("pids.max"), n.to_string()).map_err(|e| LinuxError::Io {
                step: "writing pids.max of the sandbox's cgroup",
                source: e,
            })?;
        }
        if let Some(m) = c.memory_max {
            let _ = std::fs::write(dir.join("memory.max"), m.to_string());
        }
        if let Some(p) = c.cpu_percent {
            let _ = std::fs::write(
                dir.join("cpu.max"),
                format!("{} 100000", u64::from(p) * 1000),
            );
        }
        Ok(cg)
    }

    fn attach(&self, pid: libc::pid_t) -> Result<(), LinuxError> {
        match &self.0 {
            Some(d) => std::fs::write(d.join("cgroup.procs"), pid.to_string()).map_err(|e| {
                LinuxError::Io {
                    step: "moving the sandbox into its cgroup",
                    source: e,
                }
            }),
            None => Ok(()),
        }
    }

    /// Attaches `pid`, or kills it (it has not started the command yet) and fails.
    fn attach_or_kill(&self, pid: libc::pid_t) -> Result<(), LinuxError> {
        self.attach(pid).inspect_err(|_| {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, false);
        })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            // Processes may take a moment to leave after the pid namespace dies.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn run_namespaces(
    plan: &LinuxPlan,
    req: &RunRequest,
    prep: &Prepared,
    started: &mut dyn FnMut(),
) -> Result<RunOutcome, LinuxError> {
    let (err_r, err_w) = sys::pipe().map_err(|e| LinuxError::Syscall {
        step: "creating the error pipe",
        call: "pipe2",
        source: e,
    })?;
    let (go_r, go_w) = sys::pipe().map_err(|e| LinuxError::Syscall {
        step: "creating the sync pipe",
        call: "pipe2",
        source: e,
    })?;
    // With --pty the supervisor opens the pty in the sandbox's own devpts (so that
    // ttyname works inside) and hands the master back over this socket.
    let pty_sock = if req.pty {
        Some(sys::socketpair().map_err(|e| LinuxError::Syscall {
            step: "creating the pty socket",
            call: "socketpair",
            source: e,
        })?)
    } else {
        None
    };
    // Before blocking signals, so that an early error leaves the mask alone.
    let cgroup = Cgroup::create(plan)?;
    let sigfd = sys::block_signals_fd(sys::FORWARDED).map_err(|e| LinuxError::Syscall {
        step: "blocking forwarded signals",
        call: "signalfd",
        source: e,
    })?;

    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    if plan.private_network {
        flags |= libc::CLONE_NEWNET;
    }
    let pid = match sys::clone_namespaces(flags) {
        Ok(Forked::Child) => {
            drop(err_r);
            drop(go_w);
            drop(sigfd);
            let sock = pty_sock.map(|(_, theirs)| theirs);
            supervisor(plan, req, prep, err_w.as_raw_fd(), go_r, sock);
        }
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => {
            restore_mask();
            return Err(crate::error::clone_error(e.raw_os_error().unwrap_or(0)));
        }
    };
    drop(err_w);
    drop(go_r);
    started();
    if let Err(e) = cgroup.attach_or_kill(pid) {
        restore_mask();
        return Err(e);
    }
    let _ = sys::write_all(go_w.as_raw_fd(), b"g");
    drop(go_w);
    let master = match pty_sock {
        Some((ours, theirs)) => {
            drop(theirs);
            sys::recv_fd(ours.as_raw_fd()).ok().flatten()
        }
        None => None,
    };
    let outcome = front_loop(pid, &sigfd, req.timeout, master.as_ref(), prep.lifeline);
    drop(master);
    restore_mask();
    finish(outcome, &err_r, req.timeout)
}

/// In the supervisor, in the sandbox's network namespace: creates the proxy's
/// listening socket(s) there and passes them to workfence outside, which serves them;
/// then closes both, so that nothing in the sandbox holds them. Listening before the
/// command starts means its first connection queues instead of being refused.
fn hand_over_proxy_sockets(err: RawFd, bridge: &crate::plan::ProxyBridge, sock: Option<RawFd>) {
    let Some(sock) = sock.and_then(sys::take_fd) else {
        die(
            err,
            EXIT_SETUP,
            "sandbox setup failed: no proxy socket was passed for the network allowlist",
        );
    };
    let std::net::SocketAddr::V4(addr) = bridge.listen else {
        die(
            err,
            EXIT_SETUP,
            "sandbox setup failed: the proxy address must be IPv4",
        );
    };
    let listener = step(
        err,
        "creating the proxy's listening socket in the sandbox (socket/bind/listen)",
        sys::listen_tcp(addr, 4096),
    );
    // Transparent mode: every address becomes this namespace's own (so a wildcard
    // listener's accepted socket names the destination the client dialled), and the
    // listeners go with the proxy's, in the plan's order. Ports below 1024 need
    // CAP_NET_BIND_SERVICE over the namespace, which the supervisor still has here.
    let mut held = vec![listener];
    if let Some(t) = &bridge.transparent {
        step(
            err,
            "routing every address to the sandbox's loopback (local 0.0.0.0/0 and ::/0 dev lo) for transparent mode, which [network] transparent = false turns off (rtnetlink RTM_NEWROUTE)",
            sys::add_local_routes(),
        );
        for port in &t.tcp_ports {
            held.push(step(
                err,
                "creating a transparent-mode TCP listener on 0.0.0.0 in the sandbox ([network] transparent = false turns the mode off) (socket/bind/listen)",
                sys::listen_tcp(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, *port), 4096),
            ));
        }
        if t.dns {
            let dns = step(
                err,
                "creating the transparent-mode DNS socket on UDP 0.0.0.0:53 in the sandbox ([network] transparent = false turns the mode off) (socket/bind)",
                std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 53)),
            );
            held.push(std::os::fd::OwnedFd::from(dns));
        }
    }
    let raw: Vec<RawFd> = held.iter().map(|f| f.as_raw_fd()).collect();
    step(
        err,
        "passing the proxy socket(s) to workfence (sendmsg)",
        sys::send_fds(sock.as_raw_fd(), &raw),
    );
}

/// Unblocks the forwarded signals in the front end once the sandbox is gone.
fn restore_mask() {
    sys::unblock_signals(sys::FORWARDED);
}

/// What the front end observed.
enum Outcome {
    Exited(sys::Status),
    TimedOut,
}

fn finish(
    outcome: io::Result<Outcome>,
    err_r: &OwnedFd,
    timeout: Option<Duration>,
) -> Result<RunOutcome, LinuxError> {
    let outcome = outcome.map_err(|e| LinuxError::Syscall {
        step: "waiting for the sandbox",
        call: "poll",
        source: e,
    })?;
    // All writers are gone once the sandbox has exited, so read ends at EOF. Read a
    // little more than one record, to tell one record from a record and more.
    let mut buf = [0u8; RECORD_LEN + 1];
    let mut got = 0;
    while got < buf.len() {
        match sys::read(err_r.as_raw_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                return Err(LinuxError::Syscall {
                    step: "reading the sandbox's error pipe",
                    call: "read",
                    source: e,
                })
            }
        }
    }
    let status = match outcome {
        Outcome::TimedOut => {
            return Ok(RunOutcome::because(
                EXIT_TIMEOUT,
                timeout_message(timeout.unwrap_or_default()),
            ))
        }
        Outcome::Exited(status) => status,
    };
    if got == 0 {
        return Ok(RunOutcome::status(status.code()));
    }
    let Some(rec) = ErrorRecord::decode(&buf[..got]) else {
        return Err(LinuxError::ErrorChannel(got));
    };
    match rec.code {
        // The contract's statuses for a command that cannot start: the message goes
        // with the status, workfence itself did not fail.
        EXIT_NOT_FOUND | EXIT_NOT_EXECUTABLE => Ok(RunOutcome::because(rec.code, rec.step)),
        code => Err(LinuxError::Child {
            step: rec.step,
            call: rec.call,
            errno: rec.errno,
            code,
        }),
    }
}

/// Waits for `pid`, forwarding signals, relaying a pty and enforcing the timeout.
fn front_loop(
    pid: libc::pid_t,
    sigfd: &OwnedFd,
    timeout: Option<Duration>,
    pty_master: Option<&OwnedFd>,
    mut lifeline: Option<RawFd>,
) -> io::Result<Outcome> {
    let pidfd = sys::pidfd_open(pid)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut relay = pty_master.map(|m| PtyRelay::new(m.as_raw_fd()));
    loop {
        if let Some(l) = lifeline {
            // A pipe's write end polls POLLERR once no reader is left: the caller
            // died (SIGKILL too), so its sandbox dies, as without the helper.
            let rev = sys::poll(&[(l, 0)], 0)?;
            if rev[0] & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                let _ = sys::kill(pid, libc::SIGKILL);
                lifeline = None;
            }
        }
        let wait_ms = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    let _ = sys::kill(pid, libc::SIGKILL);
                    let _ = sys::waitpid(pid, false);
                    return Ok(Outcome::TimedOut);
                }
                (d - now).as_millis().min(i32::MAX as u128) as i32 + 1
            }
            None => -1,
        };
        let mut fds = vec![
            (pidfd.as_raw_fd(), libc::POLLIN),
            (sigfd.as_raw_fd(), libc::POLLIN),
        ];
        // Polled with no events: only its error state wakes us (checked above).
        fds.push((lifeline.unwrap_or(-1), 0));
        if let Some(r) = &relay {
            fds.extend(r.poll_fds());
        }
        let rev = sys::poll(&fds, wait_ms)?;
        if rev[1] != 0 {
            while let Some(sig) = sys::read_signal(sigfd)? {
                if sig == libc::SIGWINCH {
                    if let Some(r) = &relay {
                        sys::copy_winsize(0, r.master);
                    }
                }
                let _ = sys::kill(pid, sig);
            }
        }
        if let Some(r) = &mut relay {
            r.pump(&rev[3..]);
        }
        if rev[0] != 0 {
            if let Some(r) = &mut relay {
                r.drain();
            }
            if let Some((_, st)) = sys::waitpid(pid, false)? {
                return Ok(Outcome::Exited(st));
            }
        }
    }
}

/// Copies bytes between the user's terminal and the pty master.
struct PtyRelay {
    master: RawFd,
    saved: Option<libc::termios>,
    stdin_open: bool,
}

impl PtyRelay {
    fn new(master: RawFd) -> PtyRelay {
        sys::copy_winsize(0, master);
        let saved = if sys::isatty(0) {
            sys::make_raw(0)
        } else {
            None
        };
        PtyRelay {
            master,
            saved,
            stdin_open: true,
        }
    }

    fn poll_fds(&self) -> Vec<(RawFd, libc::c_short)> {
        vec![
            (if self.stdin_open { 0 } else { -1 }, libc::POLLIN),
            (self.master, libc::POLLIN),
        ]
    }

    fn pump(&mut self, rev: &[libc::c_short]) {
        let mut buf = [0u8; 8192];
        if self.stdin_open && rev.first().is_some_and(|r| *r != 0) {
            match sys::read(0, &mut buf) {
                Ok(0) | Err(_) => {
                    self.stdin_open = false;
                    // End of input: send EOF (^D) to the line discipline.
                    let _ = sys::write_all(self.master, &[4]);
                }
                Ok(n) => {
                    let _ = sys::write_all(self.master, &buf[..n]);
                }
            }
        }
        if rev.get(1).is_some_and(|r| *r & libc::POLLIN != 0) {
            if let Ok(n) = sys::read(self.master, &mut buf) {
                let _ = sys::write_all(1, &buf[..n]);
            }
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 8192];
        while let Ok(rev) = sys::poll(&[(self.master, libc::POLLIN)], 0) {
            if rev[0] & libc::POLLIN == 0 {
                break;
            }
            match sys::read(self.master, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = sys::write_all(1, &buf[..n]);
                }
            }
        }
    }
}

impl Drop for PtyRelay {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            sys::restore_tty(0, t);
        }
    }
}

/// pid 1 of the sandbox. Never returns.
fn supervisor(
    plan: &LinuxPlan,
    req: &RunRequest,
    prep: &Prepared,
    err: RawFd,
    go: OwnedFd,
    pty_sock: Option<OwnedFd>,
) -> ! {
    // If the front end dies (even by SIGKILL), pid 1 dies, and with it the namespace.
    step(
        err,
        "prctl(PR_SET_PDEATHSIG)",
        sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
    );
    step(
        err,
        "writing /proc/self/setgroups",
        std::fs::write("/proc/self/setgroups", "deny"),
    );
    step(
        err,
        "writing /proc/self/uid_map",
        std::fs::write("/proc/self/uid_map", format!("{0} {0} 1", plan.uid)),
    );
    step(
        err,
        "writing /proc/self/gid_map",
        std::fs::write("/proc/self/gid_map", format!("{0} {0} 1", plan.gid)),
    );
    // Wait until the front end has put us in our cgroup; EOF means it died.
    let mut b = [0u8; 1];
    if !matches!(sys::read(go.as_raw_fd(), &mut b), Ok(1)) {
        sys::exit_now(EXIT_SETUP);
    }
    drop(go);
    let _ = sys::sethostname("workfence");
    if plan.private_network {
        step(
            err,
            "bringing up loopback (SIOCSIFFLAGS)",
            sys::loopback_up(),
        );
    }
    if let Some(bridge) = &plan.proxy {
        hand_over_proxy_sockets(err, bridge, req.proxy_socket);
    }
    if let Err(e) = build_root(plan, &prep.cwd) {
        die(err, EXIT_SETUP, &format!("sandbox setup failed: {e}"));
    }

    // The supervisor keeps capabilities in the user namespace: nothing in the sandbox
    // may ptrace it or read its memory (Landlock also forbids that; this holds without
    // it). Only now: a non-dumpable process cannot write its own uid_map.
    step(
        err,
        "prctl(PR_SET_DUMPABLE)",
        sys::prctl(libc::PR_SET_DUMPABLE, 0),
    );
    let pty = pty_sock.map(|sock| {
        let (master, slave) = step(
            err,
            "opening /dev/ptmx in the sandbox",
            sys::open_pty_here(),
        );
        step(
            err,
            "passing the pty to workfence (sendmsg)",
            sys::send_fd(sock.as_raw_fd(), master.as_raw_fd()),
        );
        slave
    });
    let sigfd = step(
        err,
        "signalfd",
        sys::block_signals_fd(&[sys::FORWARDED, &[libc::SIGCHLD]].concat()),
    );
    let child = match step(err, "fork", sys::fork()) {
        Forked::Child => {
            drop(sigfd);
            command(plan, req, prep, err, pty.as_ref().map(|s| s.as_raw_fd()))
        }
        Forked::Parent(pid) => pid,
    };
    drop(pty);
    // The supervisor keeps no terminal or pipe of the user's open, so that the user's
    // pipes close exactly when the command's tree is gone.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
    supervise(child, &sigfd)
}

/// pid 1's loop: forwards signals and reaps. Seccomp notifications are the broker's
/// (a separate process), so nothing here can block on a caller.
fn supervise(child: libc::pid_t, sigfd: &OwnedFd) -> ! {
    loop {
        let _ = sys::poll(&[(sigfd.as_raw_fd(), libc::POLLIN)], -1);
        while let Ok(Some(sig)) = sys::read_signal(sigfd) {
            if sig == libc::SIGCHLD {
                continue;
            }
            // Like a terminal: the signal goes to the command's process group.
            if sys::kill(-child, sig).is_err() {
                let _ = sys::kill(child, sig);
            }
        }
        while let Ok(Some((pid, st))) = sys::waitpid(-1, true) {
            if pid == child {
                // Exiting as pid 1 makes the kernel kill every other process in the
                // namespace: daemons, double forks and nohup jobs die with the command.
                sys::exit_now(st.code());
            }
        }
    }
}

/// The command: final restrictions, then exec. Never returns.
fn command(
    plan: &LinuxPlan,
    _req: &RunRequest,
    prep: &Prepared,
    err: RawFd,
    pty_slave: Option<RawFd>,
) -> ! {
    sys::reset_signals();
    step(err, "setsid", sys::setsid());
    if let Some(s) = pty_slave {
        for fd in 0..3 {
            step(err, "dup2 of the pty", sys::dup2(s, fd));
        }
        step(err, "ioctl(TIOCSCTTY)", sys::set_controlling_tty(0));
    }
    // Only 0-2 and the kept fds survive the exec. The front end refused kept fds that
    // were not open before it made its own, so none can name one of ours; check anyway
    // (fail closed) before clearing close-on-exec.
    step(err, "close_range", sys::cloexec_from(3));
    for fd in &_req.keep_fds {
        if *fd < 3 || *fd == err || Some(*fd) == pty_slave {
            die(
                err,
                EXIT_SETUP,
                &format!(
                    "--keep-fd {fd}: names one of workfence's own descriptors; refusing to pass it"
                ),
            );
        }
        if let Err(e) = sys::inherit_fd(*fd) {
            die(
                err,
                EXIT_SETUP,
                &format!("--keep-fd {fd}: fcntl(F_SETFD): {e}"),
            );
        }
    }
    if let Some(ll) = &plan.landlock {
        if let Err(e) = landlock_apply::restrict(ll) {
            die(err, EXIT_SETUP, &format!("sandbox setup failed: {e}"));
        }
    }
    step(
        err,
        "dropping capabilities (capset)",
        sys::drop_all_capabilities(),
    );
    step(
        err,
        "prctl(PR_SET_NO_NEW_PRIVS)",
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1),
    );
    if plan.seccomp.brokered {
        install_brokered_filters(plan, prep, err);
    } else {
        step(
            err,
            "setrlimit(RLIMIT_NPROC)",
            sys::set_rlimit(libc::RLIMIT_NPROC, plan.nproc),
        );
        install_errno_filters(prep, err);
    }
    exec(prep, err)
}

/// The seccomp deny list (every program of `prep.bpf`).
fn install_errno_filters(prep: &Prepared, err: RawFd) {
    for prog in &prep.bpf {
        if let Err(e) = seccomp_compile::install(prog) {
            die(
                err,
                EXIT_SETUP,
                &format!("sandbox setup failed: installing seccomp (prctl(PR_SET_SECCOMP)): {e}"),
            );
        }
    }
}

/// Forks the broker, lowers RLIMIT_NPROC, installs the deny list and, last, the
/// notification filter whose listener the broker takes.
fn install_brokered_filters(plan: &LinuxPlan, prep: &Prepared, err: RawFd) {
    // The broker finds callers' cwd, umask and thread group under /proc/PID: that
    // procfs must be this pid namespace's (a container may show the host's).
    if !crate::probe::procfs_is_ours() {
        die(
            err,
            EXIT_SETUP,
            "sandbox setup failed: /proc is not the procfs of this pid namespace (readlink /proc/self); mount one for it (a container runtime does; with bubblewrap add --proc /proc)",
        );
    }
    // The broker: forked now, so that it shares the command's uid, Landlock domain,
    // missing capabilities and no_new_privs, but none of its seccomp filters.
    let broker = spawn_broker(plan, err);
    // After the broker: RLIMIT_NPROC is for the command's tree, not for the broker's
    // threads (pid_max counts them, within PID_MAX_HEADROOM).
    step(
        err,
        "setrlimit(RLIMIT_NPROC)",
        sys::set_rlimit(libc::RLIMIT_NPROC, plan.nproc),
    );
    install_errno_filters(prep, err);
    // The broker copies the listener with pidfd_getfd, a ptrace-class access: undo
    // the non-dumpable flag inherited from the supervisor (execve resets it anyway).
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 1);
    // Last: from here on write-intent opens, name creations and unix connects wait
    // for the broker.
    let listener = match sys::install_seccomp_listener(&seccomp_compile::notify_program(
        plan.seccomp.notify_unix,
    )) {
        Ok(l) => l,
        Err(e) => die(err, EXIT_SETUP, &format!("sandbox setup failed: installing the seccomp notification filter (seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)): {e}")),
    };
    // The fd number travels by write(2), which no filter intercepts (sendmsg with
    // SCM_RIGHTS would wait for the broker that is about to receive it).
    let mut ack = [0u8; 1];
    if sys::write_all(broker.as_raw_fd(), &listener.as_raw_fd().to_ne_bytes()).is_err()
        || !matches!(sys::read(broker.as_raw_fd(), &mut ack), Ok(1))
    {
        die(
            err,
            EXIT_SETUP,
            "sandbox setup failed: the write broker did not take the seccomp listener (pidfd_getfd)",
        );
    }
    drop(listener);
    drop(broker);
}

/// Forks the broker (double fork: it is re-parented to pid 1, or to the degraded
/// front end, and no program of the command's sees it as a child). Returns the
/// command's end of the socket over which the listener's fd number goes.
fn spawn_broker(plan: &LinuxPlan, err: RawFd) -> OwnedFd {
    let (ours, theirs) = step(err, "socketpair for the broker", sys::socketpair());
    let command_pid = std::process::id() as libc::pid_t;
    match step(err, "fork (broker)", sys::fork()) {
        Forked::Child => {
            drop(ours);
            match sys::fork() {
                Ok(Forked::Child) => broker_main(theirs, command_pid, plan),
                Ok(Forked::Parent(_)) => sys::exit_now(0),
                Err(_) => sys::exit_now(1),
            }
        }
        Forked::Parent(pid) => {
            drop(theirs);
            let _ = sys::waitpid(pid, false);
            ours
        }
    }
}

/// The broker process: takes the listener from the command, then serves it.
fn broker_main(sock: OwnedFd, command_pid: libc::pid_t, plan: &LinuxPlan) -> ! {
    // First: nothing in the sandbox may ptrace it, read its memory or take its fds.
    if sys::prctl(libc::PR_SET_DUMPABLE, 0).is_err() {
        sys::exit_now(1);
    }
    let mut num = [0u8; 4];
    if !matches!(sys::read(sock.as_raw_fd(), &mut num), Ok(4)) {
        sys::exit_now(1);
    }
    let listener = sys::pidfd_open(command_pid)
        .and_then(|pidfd| sys::pidfd_getfd(&pidfd, i32::from_ne_bytes(num)));
    let Ok(listener) = listener else {
        sys::exit_now(1)
    };
    let _ = sys::write_all(sock.as_raw_fd(), b"k");
    drop(sock);
    let listener = sys::detach_helper(listener, c"wf-broker");
    crate::broker::serve(
        listener,
        crate::broker::Rules {
            guard: plan.seccomp.write_guard.clone(),
            unix_allow: plan
                .seccomp
                .notify_unix
                .then(|| plan.seccomp.unix_allow.clone()),
            private_net: plan.private_network,
        },
    )
}

/// PATH lookup in the sandbox's own environment, then execve.
fn exec(prep: &Prepared, err: RawFd) -> ! {
    let mut argv: Vec<*const libc::c_char> = prep.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prep.env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let name = prep.argv[0].as_bytes();
    let shown = String::from_utf8_lossy(name).into_owned();
    if name.contains(&b'/') {
        let e = sys::execve(&prep.argv[0], &argv, &envp);
        exec_failed(err, &shown, &e);
    }
    let mut saw_eacces: Option<io::Error> = None;
    for dir in &prep.path_dirs {
        let mut full = dir.clone();
        full.push(b'/');
        full.extend_from_slice(name);
        let Ok(c) = CString::new(full) else { continue };
        let e = sys::execve(&c, &argv, &envp);
        match e.raw_os_error() {
            // EACCES from a PATH directory we cannot search is "not found" (like a
            // shell); only an existing file we may not execute is "not executable".
            Some(libc::EACCES) | Some(libc::EPERM) => {
                if std::fs::metadata(std::ffi::OsStr::from_bytes(c.as_bytes())).is_ok() {
                    saw_eacces = Some(e);
                }
            }
            Some(libc::ENOENT)
            | Some(libc::ENOTDIR)
            | Some(libc::ELOOP)
            | Some(libc::ENAMETOOLONG) => {}
            _ => exec_failed(err, &shown, &e),
        }
    }
    match saw_eacces {
        Some(e) => exec_failed(err, &shown, &e),
        None => die(
            err,
            EXIT_NOT_FOUND,
            &format!("{shown}: command not found in the sandbox's PATH"),
        ),
    }
}

fn exec_failed(err: RawFd, name: &str, e: &io::Error) -> ! {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
            die(err, EXIT_NOT_FOUND, &format!("{name}: command not found"))
        }
        _ => die(
            err,
            EXIT_NOT_EXECUTABLE,
            &format!("{name}: cannot execute: {e}"),
        ),
    }
}

// ---------------------------------------------------------------------------
// The filesystem view.

const NEWROOT: &str = "/newroot";
const OLDROOT: &str = "/oldroot";

fn inside(root: &str, p: &Path) -> PathBuf {
    let rel = p.strip_prefix("/").unwrap_or(p);
    Path::new(root).join(rel)
}

fn c(p: impl AsRef<OsStr>) -> io::Result<CString> {
    cstr(p)
}

fn ctx<T>(what: impl FnOnce() -> String, r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", what())))
}

fn mkdir_p(p: &Path) -> io::Result<()> {
    let mut cur = PathBuf::from("/");
    for comp in p.components().skip(1) {
        cur.push(comp);
        sys::mkdir(&c(&cur)?, 0o755)?;
    }
    Ok(())
}

/// Makes sure a mount point exists for `target` (a new tmpfs may lack it).
fn mountpoint(target: &Path, dir: bool) -> io::Result<()> {
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        mkdir_p(parent)?;
    }
    if dir {
        sys::mkdir(&c(target)?, 0o755)
    } else {
        sys::touch(&c(target)?, 0o644)
    }
}

/// Bind `src_host` (a path in the host view under /oldroot) onto `target`, resolving
/// the source without following symlinks, so a path swapped for a symlink after
/// planning is refused instead of followed.
fn bind_nofollow(src_host: &Path, target: &Path, recursive: bool) -> io::Result<()> {
    let src = inside(OLDROOT, src_host);
    let fd = ctx(
        || format!("opening {} without following symlinks", src_host.display()),
        sys::open_path_nofollow(&c(&src)?),
    )?;
    let via = PathBuf::from(format!("{OLDROOT}/proc/self/fd/{}", fd.as_raw_fd()));
    let is_dir = std::fs::metadata(&via).map(|m| m.is_dir()).unwrap_or(true);
    mountpoint(target, is_dir)?;
    let flags = libc::MS_BIND | if recursive { libc::MS_REC } else { 0 };
    ctx(
        || format!("bind {} -> {}", src_host.display(), target.display()),
        sys::mount(Some(&c(&via)?), &c(target)?, None, flags, None),
    )
}

fn tmpfs(target: &Path, size: u64, mode: u32, flags: libc::c_ulong) -> io::Result<()> {
    mountpoint(target, true)?;
    let data = c(format!("size={size},mode={mode:o}"))?;
    ctx(
        || format!("tmpfs on {}", target.display()),
        sys::mount(
            Some(&c("tmpfs")?),
            &c(target)?,
            Some(&c("tmpfs")?),
            flags | libc::MS_NOSUID | libc::MS_NODEV,
            Some(&data),
        ),
    )
}

fn remount_ro(target: &Path) -> io::Result<()> {
    ctx(
        || format!("making {} read-only (mount_setattr)", target.display()),
        sys::mount_setattr_recursive(
            &c(target)?,
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            0,
        ),
    )
}

fn build_root(plan: &LinuxPlan, cwd: &CString) -> io::Result<()> {
    // Our mounts must not propagate back to the host.
    ctx(
        || "making / private".into(),
        sys::mount(None, &c("/")?, None, libc::MS_REC | libc::MS_PRIVATE, None),
    )?;
    // A scratch tmpfs becomes the temporary root: the host tree is reachable under
    // /oldroot and the sandbox's tree is assembled under /newroot.
    ctx(
        || "scratch tmpfs on /tmp".into(),
        sys::mount(
            Some(&c("tmpfs")?),
            &c("/tmp")?,
            Some(&c("tmpfs")?),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&c("size=1m,mode=700")?),
        ),
    )?;
    sys::chdir(&c("/tmp")?)?;
    sys::mkdir(&c("newroot")?, 0o755)?;
    sys::mkdir(&c("oldroot")?, 0o755)?;
    ctx(
        || "pivot_root to the scratch tmpfs".into(),
        sys::pivot_root(&c("/tmp")?, &c("/tmp/oldroot")?),
    )?;
    sys::chdir(&c("/")?)?;
    let empty_file = Path::new("/empty");
    sys::touch(&c(empty_file)?, 0o444)?;

    let nr = |p: &Path| inside(NEWROOT, p);
    for m in &plan.mounts {
        match m {
            MountStep::RootReadOnly => {
                ctx(
                    || "recursive bind of /".into(),
                    sys::mount(
                        Some(&c(OLDROOT)?),
                        &c(NEWROOT)?,
                        None,
                        libc::MS_BIND | libc::MS_REC,
                        None,
                    ),
                )?;
                remount_ro(Path::new(NEWROOT))?;
            }
            MountStep::Tmpfs {
                path,
                size,
                mode,
                read_only,
                ..
            } => {
                tmpfs(&nr(path), *size, *mode, 0)?;
                if *read_only {
                    remount_ro(&nr(path))?;
                }
            }
            MountStep::Dev { shm_size } => build_dev(&nr(Path::new("/dev")), *shm_size)?,
            MountStep::Proc => {
                let p = nr(Path::new("/proc"));
                ctx(
                    || "mounting proc".into(),
                    sys::mount(
                        Some(&c("proc")?),
                        &c(&p)?,
                        Some(&c("proc")?),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        None,
                    ),
                )?;
                // No nested user namespaces (a second layer besides seccomp).
                let _ = std::fs::write(p.join("sys/user/max_user_namespaces"), "0");
                if let Some(m) = plan.pid_max {
                    // The task cap of the plan (fail closed), written while nothing else
                    // runs in the namespace. The kernel lets the namespace's uid 0 and
                    // holders of CAP_SYS_ADMIN over it write it; what keeps the command
                    // (uid 0 in a root run) from raising it again is `/proc/sys`, made
                    // read-only next, and no capability to remount or mount a procfs.
                    ctx(
                        || format!("setting kernel.pid_max {m} of the sandbox's pid namespace"),
                        std::fs::write(p.join("sys/kernel/pid_max"), m.to_string()),
                    )?;
                }
                for sub in ["sys", "sysrq-trigger", "irq", "bus"] {
                    let t = p.join(sub);
                    if std::fs::symlink_metadata(&t).is_ok() {
                        ctx(
                            || format!("bind /proc/{sub}"),
                            sys::mount(
                                Some(&c(&t)?),
                                &c(&t)?,
                                None,
                                libc::MS_BIND | libc::MS_REC,
                                None,
                            ),
                        )?;
                        remount_ro(&t)?;
                    }
                }
            }
            // A pin is a writable bind of a directory onto itself: same steps.
            MountStep::BindWritable { path } | MountStep::Pin { path } => {
                let t = nr(path);
                bind_nofollow(path, &t, true)?;
                ctx(
                    || format!("nosuid on {}", path.display()),
                    sys::mount_setattr_recursive(
                        &c(&t)?,
                        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                        0,
                    ),
                )?;
            }
            MountStep::BindReadOnly { path, .. } => {
                let t = nr(path);
                bind_nofollow(path, &t, true)?;
                remount_ro(&t)?;
            }
            MountStep::MaskFile { path, .. } => {
                let t = nr(path);
                if std::fs::symlink_metadata(&t).is_err() {
                    continue;
                }
                match sys::mount(Some(&c(empty_file)?), &c(&t)?, None, libc::MS_BIND, None) {
                    Ok(()) => remount_ro(&t)?,
                    // Gone since planning (a socket whose daemon exited): nothing to mask.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("masking {}: {e}", path.display()),
                        ))
                    }
                }
            }
            MountStep::MaskDir { path, .. } => {
                let t = nr(path);
                if std::fs::symlink_metadata(&t).is_err() {
                    continue;
                }
                tmpfs(&t, 4096, 0o755, 0)?;
                remount_ro(&t)?;
            }
            MountStep::Expose { path, .. } => {
                let t = nr(path);
                bind_nofollow(path, &t, false)?;
                remount_ro(&t)?;
            }
        }
    }
    // Switch to the new root and drop the scratch root with the host's tree.
    sys::chdir(&c(NEWROOT)?)?;
    ctx(
        || "pivot_root into the sandbox".into(),
        sys::pivot_root(&c(".")?, &c(".")?),
    )?;
    ctx(
        || "detaching the host tree".into(),
        sys::umount2(&c(".")?, libc::MNT_DETACH),
    )?;
    ctx(
        || format!("chdir to {}", cwd.to_string_lossy()),
        sys::chdir(cwd),
    )?;
    Ok(())
}

fn build_dev(dev: &Path, shm_size: u64) -> io::Result<()> {
    tmpfs(dev, 1 << 20, 0o755, libc::MS_NOEXEC)?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        let t = dev.join(name);
        sys::touch(&c(&t)?, 0o666)?;
        let src = inside(OLDROOT, &host);
        ctx(
            || format!("bind /dev/{name}"),
            sys::mount(Some(&c(&src)?), &c(&t)?, None, libc::MS_BIND, None),
        )?;
    }
    let pts = dev.join("pts");
    sys::mkdir(&c(&pts)?, 0o755)?;
    ctx(
        || "devpts".into(),
        sys::mount(
            Some(&c("devpts")?),
            &c(&pts)?,
            Some(&c("devpts")?),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(&c("newinstance,ptmxmode=0666,mode=620")?),
        ),
    )?;
    sys::symlink(&c("pts/ptmx")?, &c(dev.join("ptmx"))?)?;
    for (l, t) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        if l == "core" {
            continue;
        }
        sys::symlink(&c(t)?, &c(dev.join(l))?)?;
    }
    tmpfs(&dev.join("shm"), shm_size, 0o1777, 0)?;
    sys::mkdir(&c(dev.join("mqueue"))?, 0o755)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Degraded mode: Landlock and seccomp only, the front end supervises.

fn run_degraded(
    plan: &LinuxPlan,
    req: &RunRequest,
    prep: &Prepared,
) -> Result<RunOutcome, LinuxError> {
    std::fs::create_dir_all(&plan.tmpdir).map_err(|e| LinuxError::Io {
        step: "creating the private temp dir",
        source: e,
    })?;
    let (err_r, err_w) = sys::pipe().map_err(|e| LinuxError::Syscall {
        step: "creating the error pipe",
        call: "pipe2",
        source: e,
    })?;
    let cgroup = Cgroup::create(plan)?;
    let sigfd = sys::block_signals_fd(sys::FORWARDED).map_err(|e| LinuxError::Syscall {
        step: "blocking forwarded signals",
        call: "signalfd",
        source: e,
    })?;
    // Any early error below leaves the signal mask as it was.
    let _unblock = RestoreMask;
    // Orphans (setsid daemons, double forks) are re-parented to us, so we can kill them.
    sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1).map_err(|e| LinuxError::Syscall {
        step: "becoming a subreaper",
        call: "prctl(PR_SET_CHILD_SUBREAPER)",
        source: e,
    })?;
    // Without a pid namespace the command can see workfence in /proc: non-dumpable, its
    // fds (the error pipe's read end among them) cannot be reopened through
    // /proc/<pid>/fd by processes of the same uid. Landlock forbids that too; this holds
    // without it. execve makes the command dumpable again.
    sys::set_dumpable(false).map_err(|e| LinuxError::Syscall {
        step: "hiding workfence's fds from the command",
        call: "prctl(PR_SET_DUMPABLE)",
        source: e,
    })?;
    let _dumpable_again = Undumpable;
    let pty = if req.pty {
        Some(sys::openpty().map_err(|e| LinuxError::Syscall {
            step: "allocating a pseudo-terminal",
            call: "openpty",
            source: e,
        })?)
    } else {
        None
    };
    let pid = match sys::fork().map_err(|e| LinuxError::Syscall {
        step: "starting the command",
        call: "fork",
        source: e,
    })? {
        Forked::Child => {
            drop(err_r);
            drop(sigfd);
            let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            step(
                err_w.as_raw_fd(),
                "changing to the working directory (chdir)",
                sys::chdir(&prep.cwd),
            );
            command(
                plan,
                req,
                prep,
                err_w.as_raw_fd(),
                pty.as_ref().map(|p| p.1.as_raw_fd()),
            )
        }
        Forked::Parent(pid) => pid,
    };
    if let Err(e) = cgroup.attach_or_kill(pid) {
        restore_mask();
        return Err(e);
    }
    drop(err_w);
    let outcome = front_loop(
        pid,
        &sigfd,
        req.timeout,
        pty.as_ref().map(|p| &p.0),
        prep.lifeline,
    );
    kill_descendants();
    drop(pty);
    restore_mask();
    let r = finish(outcome, &err_r, req.timeout);
    let _ = std::fs::remove_dir_all(&plan.tmpdir);
    r
}

/// Unblocks the forwarded signals when a degraded run ends, however it ends.
struct RestoreMask;

impl Drop for RestoreMask {
    fn drop(&mut self) {
        restore_mask();
    }
}

/// Makes the front end dumpable again once the degraded run is over (whatever way
/// it ends), so a library caller is left as it was.
struct Undumpable;

impl Drop for Undumpable {
    fn drop(&mut self) {
        let _ = sys::set_dumpable(true);
    }
}

/// Kills every remaining descendant (they are our children or theirs, since we are a
/// subreaper), until none is left.
fn kill_descendants() {
    for _ in 0..100 {
        let kids = children_of(std::process::id() as libc::pid_t);
        if kids.is_empty() {
            return;
        }
        let mut all = Vec::new();
        let mut stack = kids;
        while let Some(p) = stack.pop() {
            all.push(p);
            stack.extend(children_of(p));
        }
        for p in &all {
            let _ = sys::kill(*p, libc::SIGKILL);
        }
        while let Ok(Some(_)) = sys::waitpid(-1, true) {}
        std::thread::sleep(Duration::from_millis(5));
        while let Ok(Some(_)) = sys::waitpid(-1, true) {}
    }
}

fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                s.split_whitespace()
                    .filter_map(|x| x.parse::<libc::pid_t>().ok()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> ErrorRecord {
        ErrorRecord {
            code: EXIT_SETUP,
            errno: libc::EPERM,
            step: "writing /proc/self/uid_map".into(),
            call: "write".into(),
        }
    }

    #[test]
    fn a_record_round_trips() {
        assert_eq!(ErrorRecord::decode(&rec().encode()), Some(rec()));
    }

    #[test]
    fn anything_but_one_whole_record_is_refused() {
        // The old text protocol, as a command could forge it.
        assert_eq!(
            ErrorRecord::decode(b"0\tall sandbox layers verified\n"),
            None
        );
        let b = rec().encode();
        assert_eq!(ErrorRecord::decode(&b[..RECORD_LEN - 1]), None);
        let mut two = b.to_vec();
        two.push(0);
        assert_eq!(ErrorRecord::decode(&two), None);
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(ErrorRecord::decode(&bad), None);
        let mut v2 = b;
        v2[4] = 2;
        assert_eq!(ErrorRecord::decode(&v2), None);
        // A record never claims success.
        let ok = ErrorRecord { code: 0, ..rec() }.encode();
        assert_eq!(ErrorRecord::decode(&ok), None);
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary() {
        let long = ErrorRecord {
            step: "é".repeat(200),
            ..rec()
        };
        let back = ErrorRecord::decode(&long.encode()).unwrap();
        assert!(back.step.len() <= REC_STEP && back.step.chars().all(|c| c == 'é'));
    }

    #[test]
    fn steps_name_their_syscall() {
        assert_eq!(
            split_step("dropping capabilities (capset)"),
            ("dropping capabilities", "capset")
        );
        assert_eq!(split_step("setsid"), ("setsid", "setsid"));
        assert_eq!(
            split_step("prctl(PR_SET_PDEATHSIG)"),
            ("prctl(PR_SET_PDEATHSIG)", "prctl(PR_SET_PDEATHSIG)")
        );
        assert_eq!(
            split_step("writing /proc/self/gid_map"),
            ("writing /proc/self/gid_map", "write")
        );
    }

    #[test]
    fn keep_fds_must_be_open_and_above_2() {
        assert!(check_keep_fds(&[1]).is_err());
        // Far above anything this test process has open.
        assert!(check_keep_fds(&[999_999]).is_err());
        let (r, _w) = sys::pipe().unwrap();
        assert!(check_keep_fds(&[r.as_raw_fd()]).is_ok());
    }
}
