//! The apply layer: launch under `/usr/bin/sandbox-exec`, track every descendant,
//! kill them all at the end, map the exit status.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use workfence_policy::run::{EXIT_SIGNAL_BASE, EXIT_TIMEOUT};
use workfence_policy::{Enforcement, LayerStatus, Policy};

use crate::launch::{self, command_env, marker_fd, REAPER};
use crate::profile::SANDBOX_EXEC;
use crate::sys::{self, ChildSetup, ProcInfo, SandboxCheck};
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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last = None;
    for attempt in 0..16u32 {
        let dir = base.join(format!(
            "workfence-{}-{:08x}",
            std::process::id(),
            nanos.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
        ));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                return Ok(MacContext {
                    home,
                    tmp_dir: dir,
                    proxy_port: None,
                    remove_tmp_after_run: true,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((dir, e)),
            Err(source) => return Err(MacError::TempDir { path: dir, source }),
        }
    }
    let (path, source) = last.unwrap_or_else(|| (base, std::io::ErrorKind::AlreadyExists.into()));
    Err(MacError::TempDir { path, source })
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

/// The descendants of the command, by unique id (pids are reused, unique ids not).
struct Tracker {
    root: libc::pid_t,
    root_uid: u64,
    uid: libc::uid_t,
    known: BTreeMap<libc::pid_t, u64>,
    check: Option<SandboxCheck>,
    probe: Option<CString>,
    outside: CString,
    last_sweep: Instant,
}

impl Tracker {
    fn new(root: libc::pid_t, tmp_dir: &Path) -> Tracker {
        // Unknown only if the root already died; then "younger than the root" falls
        // back to "any", and only lineage and the sandbox check select processes.
        let root_uid = sys::proc_info(root).map(|i| i.uniqueid).unwrap_or(0);
        let mut known = BTreeMap::new();
        known.insert(root, root_uid);
        Tracker {
            root,
            root_uid,
            uid: sys::getuid(),
            known,
            check: SandboxCheck::load(),
            probe: tmp_dir
                .join(".workfence-owner-probe")
                .to_str()
                .and_then(sys::cstring),
            outside: c"/.workfence-owner-probe".to_owned(),
            last_sweep: Instant::now(),
        }
    }

    fn alive(&self, pid: libc::pid_t, uniq: u64) -> Option<ProcInfo> {
        sys::proc_info(pid).filter(|i| i.uniqueid == uniq && !i.zombie)
    }

    /// Candidates must be ours (same uid) and younger than the command.
    fn candidate(&self, i: &ProcInfo) -> bool {
        i.uid == self.uid && i.uniqueid > self.root_uid && !i.zombie
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
                    if self.candidate(&i)
                        && i.puniqueid == uniq
                        && self.known.get(&c) != Some(&i.uniqueid)
                    {
                        self.known.insert(c, i.uniqueid);
                        queue.push((c, i.uniqueid));
                    }
                }
            }
        }
    }

    /// The whole process table: processes whose parent (at fork) is known, and
    /// processes that carry this run's sandbox (they escaped by double fork and
    /// setsid, and were reparented to launchd before a scan saw them).
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        let infos: Vec<ProcInfo> = sys::list_all_pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(sys::proc_info)
            .filter(|i| self.candidate(i))
            .collect();
        loop {
            let known_uniq: BTreeSet<u64> = self.known.values().copied().collect();
            let mut added = false;
            for i in &infos {
                if known_uniq.contains(&i.uniqueid) {
                    continue;
                }
                let child_of_known = i.puniqueid != 0 && known_uniq.contains(&i.puniqueid);
                if child_of_known || self.carries_our_sandbox(i.pid) {
                    self.known.insert(i.pid, i.uniqueid);
                    added = true;
                }
            }
            if !added {
                break;
            }
        }
    }

    /// Its sandbox lets it create files in this run's private temp dir but not at
    /// the filesystem root. An unsandboxed process may do both (sandbox_check asks
    /// the sandbox, not file permissions), and no other sandbox (app sandbox,
    /// another run) can write this run's temp dir.
    fn carries_our_sandbox(&self, pid: libc::pid_t) -> bool {
        match (&self.check, &self.probe) {
            (Some(c), Some(p)) => {
                c.may_create(pid, p) == Some(true)
                    && c.may_create(pid, &self.outside) == Some(false)
            }
            _ => false,
        }
    }

    fn poll(&mut self) {
        self.scan();
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.sweep();
        }
        let known = std::mem::take(&mut self.known);
        self.known = known
            .into_iter()
            .filter(|(p, u)| *p == self.root || self.alive(*p, *u).is_some())
            .collect();
    }

    /// pids for the reaper: the process group first, then every known process.
    fn reaper_line(&self) -> String {
        let mut s = format!("-{}", self.root);
        for p in self.known.keys() {
            s.push(' ');
            s.push_str(&p.to_string());
        }
        s
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

/// The pty relay between workfence's terminal and the command's.
struct Relay {
    master: OwnedFd,
    stdin_open: bool,
    master_open: bool,
    _raw: Option<sys::RawMode>,
}

impl Relay {
    fn pump(&mut self, timeout: Duration) {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let m = self.master.as_raw_fd();
        // The kernel sends SIGWINCH to the command when its pty is resized.
        if sys::take_window_change() && sys::isatty(1) {
            sys::copy_winsize(1, m);
        }
        let mut fds = Vec::new();
        if self.master_open {
            fds.push(m);
        }
        if self.stdin_open {
            fds.push(0);
        }
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        let ready = sys::poll_readable(&fds, ms).unwrap_or_default();
        let mut buf = [0u8; 8192];
        for (fd, r) in fds.iter().zip(ready) {
            if !r {
                continue;
            }
            if *fd == m {
                match sys::read(m, &mut buf) {
                    Ok(0) | Err(_) => self.master_open = false,
                    Ok(n) => {
                        let _ = sys::write_all(1, &buf[..n]);
                    }
                }
            } else {
                match sys::read(0, &mut buf) {
                    Ok(0) | Err(_) => self.stdin_open = false,
                    Ok(n) => {
                        let _ = sys::write_all(m, &buf[..n]);
                    }
                }
            }
        }
    }

    /// Output still buffered in the pty after the command ended.
    fn drain(&mut self) {
        self.stdin_open = false;
        let until = Instant::now() + Duration::from_millis(200);
        while self.master_open && Instant::now() < until {
            self.pump(Duration::from_millis(20));
        }
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
    let marker_target = marker_fd(&req.keep_fds)?;
    let (marker_r, marker_w) = sys::pipe().map_err(syscall(
        "pipe",
        "the process may be out of file descriptors; raise `ulimit -n`",
    ))?;
    // The shim reports that the sandbox is applied (sandbox-exec only execs after
    // sandbox_init succeeded), closes the marker and becomes the command. sh maps
    // "not found" to 127 and "cannot execute" to 126, as the contract wants.
    let shim = launch::shim(marker_target);

    let mut cmd = Command::new(SANDBOX_EXEC);
    cmd.args(profile.sandbox_exec_args())
        .arg("/bin/sh")
        .arg("-c")
        .arg(shim)
        .args(&req.argv)
        .env_clear()
        .envs(command_env(req, profile.tmp_dir()))
        .current_dir(&req.cwd);

    let mut pty = None;
    if req.pty {
        let (master, slave) = sys::openpty(1).map_err(syscall(
            "openpty",
            "no free pseudo-terminal; close some terminals or run without --pty",
        ))?;
        let clone = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(syscall("dup", "out of file descriptors; raise `ulimit -n`"))
        };
        cmd.stdin(Stdio::from(clone(&slave)?))
            .stdout(Stdio::from(clone(&slave)?))
            .stderr(Stdio::from(slave));
        pty = Some(master);
    }
    sys::configure_child(
        &mut cmd,
        ChildSetup {
            keep_fds: req.keep_fds.clone(),
            marker: (marker_w.as_raw_fd(), marker_target),
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
    // Only the child (and the shim) may hold the write end now, or EOF never comes.
    drop(marker_w);
    let root = libc::pid_t::try_from(child.id()).unwrap_or(0);
    let mut tracker = Tracker::new(root, profile.tmp_dir());
    reaper.update(tracker.reaper_line());
    let mut relay = pty.map(|master| {
        if sys::isatty(1) {
            sys::copy_winsize(1, master.as_raw_fd());
        }
        Relay {
            master,
            stdin_open: true,
            master_open: true,
            _raw: if sys::isatty(0) {
                sys::RawMode::enter(0)
            } else {
                None
            },
        }
    });

    // Phase 1: wait for the start marker (or sandbox-exec's failure).
    let started = loop {
        let ready = sys::poll_readable(&[marker_r.as_raw_fd()], 20).unwrap_or_default();
        if ready.first() == Some(&true) {
            let mut b = [0u8; 1];
            break matches!(sys::read(marker_r.as_raw_fd(), &mut b), Ok(1));
        }
        if let Some(code) = stop_reason(&signals, deadline) {
            tracker.kill_all(true);
            let _ = child.wait();
            reaper.done();
            return Ok(code);
        }
        if let Some(r) = &mut relay {
            r.pump(Duration::ZERO);
        }
    };
    drop(marker_r);
    if !started {
        let status = child
            .wait()
            .map_err(syscall("waitpid", "this should not happen"))?;
        tracker.kill_all(false);
        reaper.done();
        return Err(MacError::SandboxRefused {
            status: status.to_string(),
        });
    }

    // Phase 2: the command runs under the sandbox.
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break status_code(st),
            Ok(None) => {}
            Err(e) => {
                tracker.kill_all(true);
                reaper.done();
                return Err(syscall("waitpid", "this should not happen")(e));
            }
        }
        if let Some(code) = stop_reason(&signals, deadline) {
            tracker.kill_all(true);
            let _ = child.wait();
            if let Some(r) = &mut relay {
                r.drain();
            }
            reaper.done();
            return Ok(code);
        }
        tracker.poll();
        reaper.update(tracker.reaper_line());
        match &mut relay {
            Some(r) => r.pump(TICK),
            None => std::thread::sleep(TICK),
        }
    };
    // The command is done: nothing it started may outlive it.
    tracker.kill_all(false);
    if let Some(r) = &mut relay {
        r.drain();
    }
    reaper.done();
    drop(signals);
    Ok(code)
}

/// 124 at the deadline, 128+N after stop signal N.
fn stop_reason(signals: &sys::SignalGuard, deadline: Option<Instant>) -> Option<i32> {
    if let Some(sig) = signals.pending() {
        return Some(EXIT_SIGNAL_BASE + sig);
    }
    match deadline {
        Some(d) if Instant::now() >= d => Some(EXIT_TIMEOUT),
        _ => None,
    }
}

pub(crate) fn doctor() -> Vec<LayerStatus> {
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
    if let Err(why) = compiles_here() {
        out.push(layer(
            "Seatbelt (sandbox-exec)",
            Enforcement::None,
            format!("this macOS rejects workfence's generated profile: {why}; workfence refuses to run commands. Report it with `sw_vers` output"),
        ));
        return out;
    }
    out.push(layer(
        "Seatbelt (sandbox-exec)",
        Enforcement::Full,
        format!("{SANDBOX_EXEC} applies workfence's profiles (sandbox-exec is deprecated by Apple but present and used by the OS itself)"),
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
        "Seatbelt: off = no sockets; proxy = TCP to the loopback proxy port only; on = outbound without host daemons' unix sockets. Off has no private loopback".into(),
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
        (Enforcement::Full, "own session; descendants tracked by unique id and by their sandbox (sandbox_check), so setsid/double-fork daemons are killed too; a reaper kills the known ones if workfence is SIGKILLed".to_string())
    } else {
        (Enforcement::Partial, "sandbox_check is missing or does not answer on this macOS: descendants are tracked by parentage only, so a double fork between two polls (20 ms) can escape".to_string())
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

/// Runs `/usr/bin/true` under the profiles of an example policy with every kind of
/// rule (protected, pinned and hidden paths; network proxy and on).
fn compiles_here() -> Result<(), String> {
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
        let out = Command::new(SANDBOX_EXEC)
            .args(sb.sandbox_exec_args())
            .arg("/usr/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ));
        }
    }
    Ok(())
}
