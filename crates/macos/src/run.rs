//! The apply layer: launch under `/usr/bin/sandbox-exec`, track every descendant,
//! kill them all at the end, map the exit status.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use workfence_policy::layout::FsLayout;
use workfence_policy::run::{EXIT_SIGNAL_BASE, EXIT_TIMEOUT};
use workfence_policy::{Enforcement, LayerStatus, Policy};

use crate::launch::{self, command_env, REAPER};
use crate::profile::SANDBOX_EXEC;
use crate::sys::{self, ChildSetup, ProcInfo, SandboxCheck};
use crate::track::Lineage;
use crate::{MacContext, MacError, SeatbeltProfile};

/// How often the process table is read while the command runs.
const TICK: Duration = Duration::from_millis(20);
/// How often the whole table is swept for escaped (reparented) descendants.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

pub(crate) fn detect(_policy: &Policy) -> Result<MacContext, MacError> {
    let home = match std::env::var_os("HOME").map(PathBuf::from) {
        Some(h) if h.is_absolute() && h.is_dir() => h,
        _ => sys::home_from_passwd().ok_or_else(|| {
            MacError::Home("HOME is unset and the user database has no entry".into())
        })?,
    };
    let home =
        fs::canonicalize(&home).map_err(|e| MacError::Home(format!("{}: {e}", home.display())))?;
    let base = std::env::temp_dir();
    let base = fs::canonicalize(&base).map_err(|source| MacError::TempDir {
        path: base.clone(),
        source,
    })?;
    let probe_token = random_hex(16)?;
    let mut ttys: Vec<PathBuf> = Vec::new();
    for fd in 0..=2 {
        if sys::isatty(fd) {
            if let Some(t) = sys::ttyname(fd) {
                if !ttys.contains(&t) {
                    ttys.push(t);
                }
            }
        }
    }
    // A short name (launch::tmp_dir_name says why), fresh and 0700 every run.
    let mut last = None;
    for _ in 0..16 {
        let dir = base.join(launch::tmp_dir_name(&random_hex(4)?));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                return Ok(MacContext {
                    home,
                    tmp_dir: dir,
                    proxy_port: None,
                    remove_tmp_after_run: true,
                    ttys,
                    probe_token,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((dir, e)),
            Err(source) => return Err(MacError::TempDir { path: dir, source }),
        }
    }
    let (path, source) = last.unwrap_or_else(|| (base, std::io::ErrorKind::AlreadyExists.into()));
    Err(MacError::TempDir { path, source })
}

/// `n` random bytes from the kernel, as lowercase hex.
fn random_hex(n: usize) -> Result<String, MacError> {
    use std::io::Read as _;
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(syscall(
            "reading /dev/urandom",
            "the per-run names need randomness; check that /dev/urandom exists",
        ))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The private temp dir exists, is a real directory (not a symlink planted by an
/// earlier run), is ours and is closed to others.
fn ensure_tmp(dir: &Path) -> Result<(), MacError> {
    let err = |source| MacError::TempDir {
        path: dir.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Ok(m) => {
            if !m.file_type().is_dir() || m.uid() != sys::getuid() {
                return Err(err(std::io::Error::other(
                    "it exists but is not a directory owned by you; remove it",
                )));
            }
            if m.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
            }
            Ok(())
        }
        Err(_) => fs::DirBuilder::new().mode(0o700).create(dir).map_err(err),
    }
}

fn syscall(call: &'static str, hint: &'static str) -> impl FnOnce(std::io::Error) -> MacError {
    move |source| MacError::Syscall { call, source, hint }
}

/// The descendants of the command: alive ones by pid (for killing), and the
/// lineage of every unique id that ever belonged to the run (pids are reused,
/// unique ids not), so that a process whose parent died is still recognised.
struct Tracker {
    root: libc::pid_t,
    /// workfence has reaped the root: its pid (and maybe its group) may be reused.
    root_reaped: bool,
    known: BTreeMap<libc::pid_t, u64>,
    lineage: Lineage,
    check: Option<SandboxCheck>,
    /// (may create, may not create) for this run's processes only.
    probes: Option<(CString, CString)>,
    last_sweep: Instant,
}

impl Tracker {
    fn new(root: libc::pid_t, profile: &SeatbeltProfile) -> Tracker {
        // Unknown only if the root already died; then "younger than the root" falls
        // back to "any", and only lineage and the sandbox check select processes.
        let root_uid = sys::proc_info(root).map(|i| i.uniqueid).unwrap_or(0);
        let mut known = BTreeMap::new();
        known.insert(root, root_uid);
        let (allowed, denied) = profile.owner_probes();
        let probes = match (
            allowed.to_str().and_then(sys::cstring),
            denied.to_str().and_then(sys::cstring),
        ) {
            (Some(a), Some(d)) => Some((a, d)),
            _ => None,
        };
        Tracker {
            root,
            root_reaped: false,
            known,
            lineage: Lineage::new(root_uid, sys::getuid()),
            check: SandboxCheck::load(),
            probes,
            last_sweep: Instant::now(),
        }
    }

    fn alive(&self, pid: libc::pid_t, uniq: u64) -> Option<ProcInfo> {
        sys::proc_info(pid).filter(|i| i.uniqueid == uniq && !i.zombie)
    }

    /// Children of every known process (cheap: one call per known process).
    fn scan(&mut self) {
        let mut queue: Vec<(libc::pid_t, u64)> = self.known.iter().map(|(p, u)| (*p, *u)).collect();
        while let Some((pid, uniq)) = queue.pop() {
            if self.alive(pid, uniq).is_none() {
                continue;
            }
            for c in sys::list_child_pids(pid).unwrap_or_default() {
                if let Some(i) = sys::proc_info(c) {
                    if self.lineage.candidate(&i)
                        && i.puniqueid == uniq
                        && self.known.get(&c) != Some(&i.uniqueid)
                    {
                        self.lineage.add(i.uniqueid);
                        self.known.insert(c, i.uniqueid);
                        queue.push((c, i.uniqueid));
                    }
                }
            }
        }
    }

    /// The whole process table: processes descending from any member of the run
    /// (alive or dead), and processes that carry this run's sandbox (they escaped
    /// by double fork and setsid before a scan saw their parent).
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        let table: Vec<ProcInfo> = sys::list_all_pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(sys::proc_info)
            .collect();
        let (check, probes) = (self.check, self.probes.clone());
        let adopted = self.lineage.adopt(&table, |p| match (&check, &probes) {
            (Some(c), Some((allowed, denied))) => carries_our_sandbox(c, p.pid, allowed, denied),
            _ => false,
        });
        for p in adopted {
            self.known.insert(p.pid, p.uniqueid);
        }
    }

    fn poll(&mut self) {
        self.scan();
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.sweep();
        }
        // Dead processes leave `known` (their pids may be reused) but stay in the
        // lineage, so that their orphans are still found.
        let known = std::mem::take(&mut self.known);
        self.known = known
            .into_iter()
            .filter(|(p, u)| (*p == self.root && !self.root_reaped) || self.alive(*p, *u).is_some())
            .collect();
    }

    /// The root was reaped (`wait` returned its status): from now on neither its
    /// pid nor its process group is named to the reaper or signalled as a group.
    fn mark_root_reaped(&mut self) {
        self.root_reaped = true;
        self.known.remove(&self.root);
    }

    /// Whether any process of the run is alive (the root counts until it exits;
    /// as a zombie it is gone). Only `known` is asked: `poll` adopts escaped
    /// processes into it.
    fn any_alive(&self) -> bool {
        self.known.iter().any(|(p, u)| self.alive(*p, *u).is_some())
    }

    /// pids for the reaper: the process group first (until the root is reaped),
    /// then every known process.
    fn reaper_line(&self) -> String {
        let known: Vec<libc::pid_t> = self.known.keys().copied().collect();
        launch::reaper_line(self.root, self.root_reaped, &known)
    }

    /// Sends `sig` to the command's process group and every known descendant:
    /// the polite first step of a stop.
    fn signal_all(&mut self, sig: libc::c_int) {
        self.scan();
        self.sweep();
        if !self.root_reaped {
            let _ = sys::kill(-self.root, sig);
        }
        let victims: Vec<(libc::pid_t, u64)> = self.known.iter().map(|(p, u)| (*p, *u)).collect();
        for (p, u) in victims {
            if self.alive(p, u).is_some() {
                let _ = sys::kill(p, sig);
            }
        }
    }

    /// Stops and kills every descendant (and the root unless it was reaped),
    /// repeating until a full sweep finds none alive.
    fn kill_all(&mut self, include_root: bool) {
        for _ in 0..200 {
            self.scan();
            self.sweep();
            let victims: Vec<(libc::pid_t, u64)> = self
                .known
                .iter()
                .filter(|(p, _)| include_root || **p != self.root)
                .filter(|(p, u)| self.alive(**p, **u).is_some())
                .map(|(p, u)| (*p, *u))
                .collect();
            if victims.is_empty() {
                return;
            }
            // Stop first, so that nothing forks while the others are killed.
            for (p, u) in &victims {
                if self.alive(*p, *u).is_some() {
                    let _ = sys::kill(*p, libc::SIGSTOP);
                }
            }
            for (p, u) in &victims {
                if self.alive(*p, *u).is_some() {
                    let _ = sys::kill(*p, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Its sandbox lets it create the first probe but not the second. Only this run's
/// profile denies the second (a random name in this run's private temp dir): an
/// unsandboxed process may create both (sandbox_check asks the sandbox, not file
/// permissions), and another sandbox (Homebrew's, bazel's, another agent's) either
/// allows both (it allows the per-user temp dir) or neither.
fn carries_our_sandbox(
    check: &SandboxCheck,
    pid: libc::pid_t,
    allowed: &CString,
    denied: &CString,
) -> bool {
    check.may_create(pid, denied) == Some(false) && check.may_create(pid, allowed) == Some(true)
}

struct Reaper {
    child: Option<Child>,
    input: Option<File>,
    last: String,
}

impl Reaper {
    fn start() -> Reaper {
        let spawned = sys::pipe().ok().and_then(|(r, w)| {
            let child = Command::new("/bin/sh")
                .arg("-c")
                .arg(REAPER)
                .stdin(Stdio::from(r))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .env_clear()
                .env("PATH", "/bin:/usr/bin")
                .process_group(0)
                .spawn()
                .ok()?;
            Some((child, File::from(w)))
        });
        match spawned {
            Some((c, w)) => Reaper {
                child: Some(c),
                input: Some(w),
                last: String::new(),
            },
            None => Reaper {
                child: None,
                input: None,
                last: String::new(),
            },
        }
    }

    fn update(&mut self, line: String) {
        if line != self.last {
            if let Some(w) = &mut self.input {
                let _ = writeln!(w, "{line}");
            }
            self.last = line;
        }
    }

    fn done(&mut self) {
        if let Some(mut w) = self.input.take() {
            let _ = writeln!(w, "done");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.done();
    }
}

/// The pty relay between workfence's terminal and the command's, on two threads
/// so that nothing it does (a terminal that stops reading, a command that stops
/// reading its input) can block the run loop, and with it the timeout and the
/// signals. Input EOF is forwarded as the pty's end-of-file character.
struct Relay {
    master: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    output_done: Arc<AtomicBool>,
    _raw: Option<sys::RawMode>,
}

/// How long each relay thread waits for data before it looks at the stop flag.
const RELAY_POLL_MS: i32 = 50;

impl Relay {
    fn start(master: OwnedFd) -> Relay {
        if sys::isatty(1) {
            sys::copy_winsize(1, master.as_raw_fd());
        }
        let raw = if sys::isatty(0) {
            sys::RawMode::enter(0)
        } else {
            None
        };
        let master = Arc::new(master);
        let stop = Arc::new(AtomicBool::new(false));
        let output_done = Arc::new(AtomicBool::new(false));
        {
            // pty -> stdout, until every slave is closed (EOF or EIO), or until
            // the run is over and nothing more arrives.
            let (master, stop, done) = (master.clone(), stop.clone(), output_done.clone());
            let _ = std::thread::Builder::new()
                .name("workfence-pty-out".into())
                .spawn(move || {
                    let m = master.as_raw_fd();
                    let mut buf = [0u8; 8192];
                    loop {
                        match sys::poll_readable(&[m], RELAY_POLL_MS) {
                            Ok(r) if r.first() == Some(&true) => match sys::read(m, &mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    // A closed stdout must not stop the draining, or
                                    // the command blocks on a full pty.
                                    let _ = sys::write_all(1, &buf[..n]);
                                }
                            },
                            Ok(_) if stop.load(Ordering::SeqCst) => break,
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    done.store(true, Ordering::SeqCst);
                });
        }
        {
            // stdin -> pty; at EOF the pty's VEOF (Ctrl-D), so that `cat` or a REPL
            // sees the end of its input as it would at a terminal.
            let (master, stop) = (master.clone(), stop.clone());
            let _ = std::thread::Builder::new()
                .name("workfence-pty-in".into())
                .spawn(move || {
                    let m = master.as_raw_fd();
                    let mut buf = [0u8; 8192];
                    let mut at_line_start = true;
                    while !stop.load(Ordering::SeqCst) {
                        match sys::poll_readable(&[0], RELAY_POLL_MS) {
                            Ok(r) if r.first() == Some(&true) => match sys::read(0, &mut buf) {
                                Ok(0) => {
                                    let eof = launch::eof_bytes(sys::eof_char(m), at_line_start);
                                    let _ = sys::write_all(m, &eof);
                                    break;
                                }
                                Err(_) => break,
                                Ok(n) => {
                                    at_line_start = buf[n - 1] == b'\n';
                                    if sys::write_all(m, &buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            },
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
        }
        Relay {
            master,
            stop,
            output_done,
            _raw: raw,
        }
    }

    /// Follows a resize of workfence's terminal (the kernel then sends SIGWINCH
    /// to the command).
    fn follow_window_size(&self) {
        if sys::take_window_change() && sys::isatty(1) {
            sys::copy_winsize(1, self.master.as_raw_fd());
        }
    }

    /// Lets the output still buffered in the pty through (bounded), then stops
    /// both threads; one that is blocked writing is left behind, never waited for.
    fn finish(self) {
        let until = Instant::now() + Duration::from_millis(300);
        while !self.output_done.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn status_code(st: ExitStatus) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => EXIT_SIGNAL_BASE + s,
        (None, None) => EXIT_SIGNAL_BASE,
    }
}

pub(crate) fn run(
    profile: &SeatbeltProfile,
    req: &workfence_policy::run::RunRequest,
) -> Result<i32, MacError> {
    if req.argv.is_empty() {
        return Err(MacError::Request("empty command line".into()));
    }
    let sandbox_exec = Path::new(SANDBOX_EXEC);
    match fs::metadata(sandbox_exec) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        Ok(_) => {
            return Err(MacError::SandboxExecMissing {
                path: SANDBOX_EXEC,
                source: std::io::Error::other("not an executable file"),
            })
        }
        Err(source) => {
            return Err(MacError::SandboxExecMissing {
                path: SANDBOX_EXEC,
                source,
            })
        }
    }
    ensure_tmp(profile.tmp_dir())?;
    let result = run_inner(profile, req);
    if profile.removes_tmp_after_run() {
        let _ = fs::remove_dir_all(profile.tmp_dir());
    }
    result
}

fn run_inner(
    profile: &SeatbeltProfile,
    req: &workfence_policy::run::RunRequest,
) -> Result<i32, MacError> {
    let (marker_r, marker_w_high) = sys::pipe().map_err(syscall(
        "pipe",
        "the process may be out of file descriptors; raise `ulimit -n`",
    ))?;
    // The marker's write end at a free number from 3 to 9, held open in workfence
    // during the spawn, so that std's own error pipe cannot get that number.
    let marker_w = sys::low_marker_fd(&marker_w_high, &req.keep_fds).map_err(syscall(
        "fcntl(F_DUPFD_CLOEXEC)",
        "the process may be out of file descriptors; raise `ulimit -n`",
    ))?;
    // Every other write end must be gone, or the marker's EOF never comes.
    drop(marker_w_high);
    let marker_target = launch::marker_fd(marker_w.as_ref().map(|f| f.as_raw_fd()), &req.keep_fds)?;
    let Some(marker_w) = marker_w else {
        return Err(MacError::Request("no marker fd".into()));
    };
    // The shim reports that the sandbox is applied (sandbox-exec only execs after
    // sandbox_init succeeded), closes the marker and becomes the command. sh maps
    // "not found" to 127 and "cannot execute" to 126, as the contract wants.
    let shim = launch::shim(marker_target);

    let mut pty = None;
    let mut slave_fds = None;
    let mut handed = None;
    if req.pty {
        let (master, slave) = sys::openpty(1).map_err(syscall(
            "openpty",
            "no free pseudo-terminal; close some terminals or run without --pty",
        ))?;
        // The command's terminal is this pty, not workfence's: only it is handed over.
        let name = sys::ttyname(slave.as_raw_fd()).ok_or_else(|| MacError::Syscall {
            call: "ttyname",
            source: std::io::Error::last_os_error(),
            hint: "the new pseudo-terminal has no name; run without --pty",
        })?;
        handed = Some(profile.clone().with_handed_tty(&name)?);
        slave_fds = Some(slave);
        pty = Some(master);
    }
    let profile = handed.as_ref().unwrap_or(profile);

    let mut cmd = Command::new(SANDBOX_EXEC);
    cmd.args(profile.sandbox_exec_args())
        .arg("/bin/sh")
        .arg("-c")
        .arg(shim)
        .args(&req.argv)
        .env_clear()
        .envs(command_env(req, profile.tmp_dir(), profile.home()))
        .current_dir(&req.cwd);
    if let Some(slave) = slave_fds {
        let clone = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(syscall("dup", "out of file descriptors; raise `ulimit -n`"))
        };
        cmd.stdin(Stdio::from(clone(&slave)?))
            .stdout(Stdio::from(clone(&slave)?))
            .stderr(Stdio::from(slave));
    }
    sys::configure_child(
        &mut cmd,
        ChildSetup {
            keep_fds: req.keep_fds.clone(),
            marker: marker_target,
            controlling_tty: req.pty,
        },
    );

    let signals = sys::SignalGuard::install().map_err(syscall(
        "sigaction",
        "cannot watch for SIGINT/SIGTERM; this should not happen",
    ))?;
    let mut reaper = Reaper::start();
    let start = Instant::now();
    let deadline = req.timeout.map(|t| start + t);
    let mut child = cmd.spawn().map_err(syscall(
        "spawning /usr/bin/sandbox-exec",
        "check the working directory exists and that sandbox-exec runs (`workfence doctor`)",
    ))?;
    // Only the child (and the shim) may hold the marker's write end now, or EOF
    // never comes; and only the child the pty slave, or the relay never sees the
    // command's end. `cmd` keeps its Stdio until dropped.
    drop(marker_w);
    drop(cmd);
    let root = libc::pid_t::try_from(child.id()).unwrap_or(0);
    let mut tracker = Tracker::new(root, profile);
    reaper.update(tracker.reaper_line());
    let relay = pty.map(Relay::start);
    let finish = |relay: Option<Relay>| {
        if let Some(r) = relay {
            r.finish();
        }
    };

    // Phase 1: wait for the start marker (or sandbox-exec's failure): exactly the
    // marker, then EOF (the shim closed it before becoming the command).
    let mut got: Vec<u8> = Vec::new();
    let started = loop {
        let ready = sys::poll_readable(&[marker_r.as_raw_fd()], 20).unwrap_or_default();
        if ready.first() == Some(&true) {
            let mut b = [0u8; 16];
            match sys::read(marker_r.as_raw_fd(), &mut b) {
                Ok(0) | Err(_) => break launch::marker_says_started(&got),
                Ok(n) => {
                    got.extend_from_slice(&b[..n]);
                    if got.len() > launch::MARKER.len() {
                        break false;
                    }
                }
            }
        }
        if let Some((code, sig)) = stop_reason(&signals, deadline) {
            stop(&mut tracker, &mut child, &signals, &mut reaper, sig);
            finish(relay);
            reaper.done();
            return Ok(code);
        }
        if let Some(r) = &relay {
            r.follow_window_size();
        }
    };
    drop(marker_r);
    if !started {
        // Whatever runs (nothing, normally: sandbox-exec failed) goes.
        tracker.kill_all(true);
        let status = child
            .wait()
            .map_err(syscall("waitpid", "this should not happen"))?;
        finish(relay);
        reaper.done();
        return Err(MacError::SandboxRefused {
            status: status.to_string(),
        });
    }

    // Phase 2: the command runs under the sandbox.
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                // Before anything else: the reaper must not name the reaped pid.
                tracker.mark_root_reaped();
                reaper.update(tracker.reaper_line());
                break status_code(st);
            }
            Ok(None) => {}
            Err(e) => {
                tracker.kill_all(true);
                finish(relay);
                reaper.done();
                return Err(syscall("waitpid", "this should not happen")(e));
            }
        }
        if let Some((code, sig)) = stop_reason(&signals, deadline) {
            stop(&mut tracker, &mut child, &signals, &mut reaper, sig);
            finish(relay);
            reaper.done();
            return Ok(code);
        }
        tracker.poll();
        reaper.update(tracker.reaper_line());
        if let Some(r) = &relay {
            r.follow_window_size();
        }
        std::thread::sleep(TICK);
    };
    // The command is done: nothing it started may outlive it.
    tracker.kill_all(false);
    finish(relay);
    reaper.done();
    drop(signals);
    Ok(code)
}

/// A stop (signal or timeout): the polite signal to the whole tree, up to
/// [`launch::STOP_GRACE`] for every process of the run to exit, the command's
/// children too (git removes its index.lock after the shell above it died), then
/// every remaining process is killed. A second signal cuts the grace short.
fn stop(
    tracker: &mut Tracker,
    child: &mut Child,
    signals: &sys::SignalGuard,
    reaper: &mut Reaper,
    received: Option<libc::c_int>,
) {
    let sig = launch::polite_signal(received, libc::SIGINT, libc::SIGTERM);
    let seen = signals.count();
    tracker.signal_all(sig);
    launch::grace_wait(
        launch::STOP_GRACE,
        Instant::now,
        || {
            // Reap the root when it exits (a zombie counts as gone), but keep
            // waiting for the rest of the tree: the root is usually a shell that
            // dies at once, while its git child still removes index.lock.
            if matches!(child.try_wait(), Ok(Some(_))) {
                tracker.mark_root_reaped();
            }
            tracker.poll();
            reaper.update(tracker.reaper_line());
            tracker.any_alive()
        },
        || signals.count() != seen,
        || std::thread::sleep(TICK),
    );
    tracker.kill_all(true);
    let _ = child.wait();
}

/// (exit code, signal): 124 at the deadline, 128+N after stop signal N.
fn stop_reason(
    signals: &sys::SignalGuard,
    deadline: Option<Instant>,
) -> Option<(i32, Option<libc::c_int>)> {
    if let Some(sig) = signals.pending() {
        return Some((EXIT_SIGNAL_BASE + sig, Some(sig)));
    }
    match deadline {
        Some(d) if Instant::now() >= d => Some((EXIT_TIMEOUT, None)),
        _ => None,
    }
}

/// `target`: the policy and layout of this host to compile the real profile for
/// (`workfence doctor` passes the policy it would run with); None compiles an
/// example with every kind of rule.
pub(crate) fn doctor(target: Option<(&Policy, &FsLayout)>) -> Vec<LayerStatus> {
    let mut out = Vec::new();
    let layer = |layer: &str, state, detail: String| LayerStatus {
        layer: layer.into(),
        state,
        detail,
    };
    let probe = Command::new(SANDBOX_EXEC)
        .args(["-p", "(version 1)(allow default)", "/usr/bin/true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let works = matches!(&probe, Ok(s) if s.success());
    if !works {
        let why = match probe {
            Ok(s) => format!("{SANDBOX_EXEC} exited with {s}"),
            Err(e) => format!("{SANDBOX_EXEC} cannot run: {e}"),
        };
        out.push(layer(
            "Seatbelt (sandbox-exec)",
            Enforcement::None,
            format!("{why}; nothing can be sandboxed: workfence refuses to run commands. Check the macOS install"),
        ));
        return out;
    }
    // The generated profile itself must compile here: an operation or filter name
    // this macOS does not know would make every run fail.
    let compiled = match target {
        Some((policy, layout)) => {
            compiles_for(policy, layout).map(|()| "this host's profile for the current policy")
        }
        None => compiles_example().map(|()| "an example profile (no policy given)"),
    };
    let what = match compiled {
        Ok(what) => what,
        Err(why) => {
            out.push(layer(
                "Seatbelt (sandbox-exec)",
                Enforcement::None,
                format!("this macOS rejects workfence's generated profile: {why}; workfence refuses to run commands. `workfence explain` shows the profile; report it with `sw_vers` output"),
            ));
            return out;
        }
    };
    out.push(layer(
        "Seatbelt (sandbox-exec)",
        Enforcement::Full,
        format!("{SANDBOX_EXEC} compiles and applies {what} (sandbox-exec is deprecated by Apple but present and used by the OS itself). Nested sandboxes are refused by the kernel: `swift build` needs --disable-sandbox inside workfence"),
    ));
    out.push(layer(
        "filesystem writes",
        Enforcement::Full,
        "Seatbelt: writes only in the writable roots and the private TMPDIR; protected names stay read-only even when missing, case-insensitively".into(),
    ));
    out.push(layer(
        "secret reads",
        Enforcement::Partial,
        "Seatbelt denies reads by path: a hard link to a secret made before the run, under another name, stays readable".into(),
    ));
    out.push(layer(
        "network",
        Enforcement::Full,
        "Seatbelt: off = no sockets; proxy = TCP to the loopback proxy port only; on = outbound without host daemons' unix sockets. Off has no private loopback (tests binding 127.0.0.1 need network on); on reaches host loopback services too".into(),
    ));
    out.push(layer(
        "launching outside the sandbox",
        Enforcement::Full,
        "Apple Events, LaunchServices (open), launchd job creation and keychain services are denied".into(),
    ));
    // sandbox_check must answer for a process: workfence itself is unsandboxed, so
    // its answer for any path is "allowed".
    let check_works = SandboxCheck::load().is_some_and(|c| {
        let me = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        c.may_create(me, c"/.workfence-owner-probe") == Some(true)
    });
    let lifetime = if check_works {
        (Enforcement::Full, "own session; descendants tracked by unique id and lineage (orphans of dead parents too) and by a per-run sandbox probe (sandbox_check), so setsid/double-fork daemons are killed and no other sandbox's processes are; stops send SIGTERM (SIGINT for Ctrl-C), then SIGKILL after 2 s; a reaper kills the known ones if workfence is SIGKILLed".to_string())
    } else {
        (Enforcement::Partial, "sandbox_check is missing or does not answer on this macOS: descendants are tracked by lineage only, so a double fork between two polls (20 ms) can escape".to_string())
    };
    out.push(layer("process lifetime", lifetime.0, lifetime.1));
    out.push(layer(
        "resource limits",
        Enforcement::None,
        "macOS has no cgroups: process, memory and CPU limits are not enforced (only the timeout is)".into(),
    ));
    out.push(layer(
        "private /tmp",
        Enforcement::Partial,
        "TMPDIR is a private 0700 directory; /tmp itself is shared on macOS and therefore not writable".into(),
    ));
    out
}

/// Runs `/usr/bin/true` under the profile `run` would use for `policy` on this
/// host (its own home, temp dir, terminals and owner probe).
fn compiles_for(policy: &Policy, layout: &FsLayout) -> Result<(), String> {
    let mut ctx = detect(policy).map_err(|e| e.to_string())?;
    if ctx.proxy_port.is_none() && matches!(policy.network, workfence_policy::Network::Proxy(_)) {
        // The port is only known once the proxy listens; any number compiles the same.
        ctx = ctx.with_proxy_port(9);
    }
    let r = crate::profile(policy, layout, &ctx)
        .map_err(|e| e.to_string())
        .and_then(|sb| true_under(&sb));
    ctx.discard();
    r
}

/// `/usr/bin/true` under `sb`.
fn true_under(sb: &SeatbeltProfile) -> Result<(), String> {
    let out = Command::new(SANDBOX_EXEC)
        .args(sb.sandbox_exec_args())
        .arg("/usr/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

/// Runs `/usr/bin/true` under the profiles of an example policy with every kind of
/// rule (protected, pinned and hidden paths; network proxy and on).
fn compiles_example() -> Result<(), String> {
    use workfence_policy::layout::{
        FileKind, FsLayout, HiddenPath, ProtectedPath, Protection, RootKind, WritableRoot,
    };
    use workfence_policy::{Network, ProxyPolicy, Source};
    let ws = "/Users/dev/src/proj";
    let layout = FsLayout {
        writable: vec![WritableRoot {
            path: ws.into(),
            kind: RootKind::Workspace,
            source: Source::Default,
        }],
        protected: vec![
            ProtectedPath {
                path: format!("{ws}/.git").into(),
                exists: Some(FileKind::Dir),
                missing_as_dir: true,
                protection: Protection::Pinned,
                reason: "doctor".into(),
            },
            ProtectedPath {
                path: format!("{ws}/.git/hooks").into(),
                exists: None,
                missing_as_dir: true,
                protection: Protection::ReadOnly,
                reason: "doctor".into(),
            },
        ],
        hidden: vec![HiddenPath {
            path: "/Users/dev/.ssh".into(),
            kind: FileKind::Dir,
            source: Source::Default,
        }],
        cwd: ws.into(),
        notes: vec![],
    };
    for network in [Network::On, Network::Proxy(ProxyPolicy::default())] {
        let mut policy = Policy::new(ws);
        policy.network = network;
        let ctx = MacContext::example(&policy);
        let sb = crate::profile(&policy, &layout, &ctx).map_err(|e| e.to_string())?;
        true_under(&sb)?;
    }
    Ok(())
}
