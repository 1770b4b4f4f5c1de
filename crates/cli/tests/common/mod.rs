//! Harness for workfence's own attack suite (Linux).
//!
//! Every test builds a fresh [`Scenario`]: a fake home `$H` seeded with fake secrets and
//! canaries, a workspace `$WS` (a real git repository unless asked otherwise), a host dir
//! `$OUT` outside both, a host process `$HOSTPID`, and host listeners on loopback (TCP v4,
//! TCP v6, UDP, an abstract unix socket and a pathname unix socket under `$H/.run`).
//!
//! Attacks are written with [`Attack`] and run with [`Attack::run`], which always runs the
//! script twice: first in **control** mode (plain `sh -c` in `$WS`, no sandbox), where every
//! probe must observe the attack succeeding, then **sandboxed** (`workfence run -C $WS --
//! sh -c ...`), where every probe must observe it blocked and the host invariants must hold
//! (home and protected paths unchanged, no `PWNED*`, `$HOSTPID` alive and running, no
//! listener contacted, no leftover probe process). There is no way to run only one half.
//!
//! Everything is judged from outside, after the run. Counts (`CONTROL <id> succeeded`,
//! `ATTACK <id> blocked`, `WORK <name> passed`, `SKIP <test>: <reason>`) go to stderr and,
//! when `WORKFENCE_COUNTS_FILE` is set, are appended to that file (one line each).
//!
//! Environment:
//! - `WORKFENCE_BIN`: the binary under test (default: the one cargo built).
//! - `WORKFENCE_TEST_DIR`: base dir for scenarios (default `/var/tmp/workfence-tests-<uid>`;
//!   not `/tmp`, which is private inside the sandbox).
//! - `WORKFENCE_MUST_WORK=1`: every skip is a failure.
//! - `WORKFENCE_COUNTS_FILE`: where count lines are appended.
//! - `WORKFENCE_KEEP=1`: keep scenario dirs even when the test passed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Printed first by every scenario script; proves the script really ran.
pub const SENTINEL: &str = "__wf_started__";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// Environment, binary, skips and counts
// ---------------------------------------------------------------------------------------

/// The workfence binary under test.
pub fn bin() -> PathBuf {
    match std::env::var_os("WORKFENCE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_workfence")),
    }
}

/// Effective uid of this process.
pub fn uid() -> u32 {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Whether the suite runs as root.
pub fn is_root() -> bool {
    uid() == 0
}

/// Base dir for scenarios.
pub fn base_dir() -> PathBuf {
    let base = match std::env::var_os("WORKFENCE_TEST_DIR") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(format!("/var/tmp/workfence-tests-{}", uid())),
    };
    fs::create_dir_all(&base).expect("create the test base dir");
    base
}

/// Whether skips are failures.
pub fn must_work() -> bool {
    std::env::var("WORKFENCE_MUST_WORK").is_ok_and(|v| v == "1")
}

/// Appends one line to the counts file (if any) and prints it on stderr.
pub fn count(line: &str) {
    eprintln!("{line}");
    if let Some(p) = std::env::var_os("WORKFENCE_COUNTS_FILE") {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// A test cannot run here: print `SKIP <test>: <reason>` and return, or panic under
/// `WORKFENCE_MUST_WORK=1`. Callers `return` right after.
pub fn skip_or_fail(test: &str, reason: &str) {
    if must_work() {
        panic!("SKIP not allowed (WORKFENCE_MUST_WORK=1): {test}: {reason}");
    }
    count(&format!("SKIP {test}: {reason}"));
}

/// Finds a program in PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Skips (or fails) unless every tool is present. Returns true when all are present.
pub fn need(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        if which(t).is_none() {
            skip_or_fail(test, &format!("{t} is not installed"));
            return false;
        }
    }
    true
}

/// The python interpreter scripts use (`$PY`): the system one when present, since a
/// per-user shim (pyenv) may depend on a home the sandboxed command does not have.
pub fn python() -> PathBuf {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    which("python3").unwrap_or_else(|| PathBuf::from("python3"))
}

/// A path from raw bytes.
pub fn bytes_path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(b.to_vec()))
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// argv of a live process (empty for zombies and kernel threads).
fn cmdline(pid: u32) -> Vec<Vec<u8>> {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(b) => b
            .split(|c| *c == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn all_pids() -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                v.push(p);
            }
        }
    }
    v
}

/// Pids of live processes with an argv element for which `pred` holds.
pub fn pids_where(pred: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| *p != std::process::id())
        .filter(|p| cmdline(*p).iter().any(|a| pred(a)))
        .collect()
}

/// Process state letter from /proc/<pid>/stat (`None` if gone).
pub fn proc_state(pid: u32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Sends a signal with kill(1).
pub fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes a tree even when an attack chmod'ed parts of it to 000.
pub fn force_remove(p: &Path) {
    fn fix(p: &Path) {
        if let Ok(m) = fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
                if let Ok(rd) = fs::read_dir(p) {
                    for e in rd.flatten() {
                        fix(&e.path());
                    }
                }
            }
        }
    }
    if fs::remove_dir_all(p).is_ok() {
        return;
    }
    fix(p);
    let _ = fs::remove_dir_all(p);
}

// ---------------------------------------------------------------------------------------
// Snapshots (judging files from outside)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Absent,
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        ino: u64,
        nlink: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
        content: Vec<u8>,
    },
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
        ino: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    Link {
        target: PathBuf,
        ctime: (i64, i64),
    },
    Other {
        mode: u32,
        ino: u64,
        ctime: (i64, i64),
    },
}

/// State of a set of paths (recursive), compared after a run.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: BTreeMap<PathBuf, Node>,
}

fn node(p: &Path) -> Node {
    let Ok(m) = fs::symlink_metadata(p) else {
        return Node::Absent;
    };
    let ctime = (m.ctime(), m.ctime_nsec());
    let mtime = (m.mtime(), m.mtime_nsec());
    let ft = m.file_type();
    if ft.is_symlink() {
        Node::Link {
            target: fs::read_link(p).unwrap_or_default(),
            ctime,
        }
    } else if ft.is_dir() {
        Node::Dir {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            ino: m.ino(),
            mtime,
            ctime,
        }
    } else if ft.is_file() {
        let content = if m.len() <= 1 << 20 {
            fs::read(p).unwrap_or_else(|_| b"<unreadable>".to_vec())
        } else {
            b"<large>".to_vec()
        };
        Node::File {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            ino: m.ino(),
            nlink: m.nlink(),
            mtime,
            ctime,
            content,
        }
    } else {
        Node::Other {
            mode: m.mode(),
            ino: m.ino(),
            ctime,
        }
    }
}

impl Snapshot {
    /// Records `roots` recursively (a missing root is recorded as absent), except `skip`.
    /// A directory named `.run` is the harness's socket dir: its own times and the sockets
    /// in it (which the harness creates and removes) are not recorded; other entries are.
    pub fn take(roots: &[PathBuf], skip: &[PathBuf]) -> Snapshot {
        let mut s = Snapshot::default();
        fn walk(s: &mut Snapshot, p: &Path, skip: &[PathBuf]) {
            if skip.iter().any(|k| k == p) {
                return;
            }
            let in_run = p
                .parent()
                .is_some_and(|d| d.file_name() == Some(OsStr::new(".run")));
            let mut n = node(p);
            if in_run && matches!(n, Node::Other { .. }) {
                return;
            }
            if p.file_name() == Some(OsStr::new(".run")) {
                if let Node::Dir {
                    ref mut mtime,
                    ref mut ctime,
                    ..
                } = n
                {
                    *mtime = (0, 0);
                    *ctime = (0, 0);
                }
            }
            let is_dir = matches!(n, Node::Dir { .. });
            s.nodes.insert(p.to_path_buf(), n);
            if is_dir {
                if let Ok(rd) = fs::read_dir(p) {
                    let mut names: Vec<_> = rd.flatten().map(|e| e.path()).collect();
                    names.sort();
                    for c in names {
                        walk(s, &c, skip);
                    }
                }
            }
        }
        for r in roots {
            walk(&mut s, r, skip);
        }
        s
    }

    /// Differences between `self` (before) and `after`, as readable lines.
    pub fn diff(&self, after: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (p, n) in &self.nodes {
            match after.nodes.get(p) {
                Some(m) if m == n => {}
                Some(m) => out.push(format!("changed: {} ({})", p.display(), describe(n, m))),
                None => out.push(format!("removed: {}", p.display())),
            }
        }
        for (p, n) in &after.nodes {
            if !self.nodes.contains_key(p) && *n != Node::Absent {
                out.push(format!("created: {}", p.display()));
            }
        }
        out
    }

    /// Whether `p` (or anything below it) differs between `self` and `after`.
    pub fn path_changed(&self, after: &Snapshot, p: &Path) -> bool {
        let before: Vec<_> = self
            .nodes
            .iter()
            .filter(|(k, _)| k.starts_with(p))
            .collect();
        let now: Vec<_> = after
            .nodes
            .iter()
            .filter(|(k, _)| k.starts_with(p))
            .collect();
        before != now
    }
}

fn describe(a: &Node, b: &Node) -> String {
    match (a, b) {
        (Node::File { content: c1, .. }, Node::File { content: c2, .. }) if c1 != c2 => {
            "content".into()
        }
        (Node::File { mode: m1, .. }, Node::File { mode: m2, .. }) if m1 != m2 => {
            format!("mode {m1:o} -> {m2:o}")
        }
        (Node::Dir { mode: m1, .. }, Node::Dir { mode: m2, .. }) if m1 != m2 => {
            format!("mode {m1:o} -> {m2:o}")
        }
        (Node::File { mtime: t1, .. }, Node::File { mtime: t2, .. }) if t1 != t2 => "mtime".into(),
        (Node::File { nlink: l1, .. }, Node::File { nlink: l2, .. }) if l1 != l2 => {
            format!("nlink {l1} -> {l2}")
        }
        (Node::Absent, _) => "created".into(),
        (_, Node::Absent) => "removed".into(),
        _ => "metadata (ctime/owner/inode/type)".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Host listeners (judged without threads: the kernel queues connections and data)
// ---------------------------------------------------------------------------------------

/// Host sockets an attack may try to reach.
#[derive(Debug)]
pub struct Listeners {
    pub tcp4: TcpListener,
    pub tcp6: Option<TcpListener>,
    pub udp: UdpSocket,
    pub abstract_name: String,
    pub abstract_sock: UnixListener,
    pub path: PathBuf,
    pub path_sock: UnixListener,
    seen: std::cell::Cell<Contacts>,
}

fn drain_tcp(l: &TcpListener) -> bool {
    let _ = l.set_nonblocking(true);
    let mut hit = false;
    while let Ok((mut s, _)) = l.accept() {
        hit = true;
        let _ = s.set_nonblocking(true);
        let mut b = [0u8; 64];
        let _ = s.read(&mut b);
    }
    hit
}

fn drain_unix(l: &UnixListener) -> bool {
    let _ = l.set_nonblocking(true);
    let mut hit = false;
    while let Ok((mut s, _)) = l.accept() {
        hit = true;
        let _ = s.set_nonblocking(true);
        let mut b = [0u8; 64];
        let _ = s.read(&mut b);
    }
    hit
}

fn drain_udp(u: &UdpSocket) -> bool {
    let _ = u.set_nonblocking(true);
    let mut hit = false;
    let mut b = [0u8; 64];
    while u.recv_from(&mut b).is_ok() {
        hit = true;
    }
    hit
}

/// Which listeners were contacted since the last call (connections accepted / datagrams).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Contacts {
    pub tcp4: bool,
    pub tcp6: bool,
    pub udp: bool,
    pub abstract_unix: bool,
    pub path_unix: bool,
}

impl Contacts {
    pub fn any(&self) -> bool {
        self.tcp4 || self.tcp6 || self.udp || self.abstract_unix || self.path_unix
    }
}

impl Listeners {
    fn start(run_dir: &Path, tag: &str) -> Listeners {
        let tcp4 = TcpListener::bind("127.0.0.1:0").expect("bind tcp4 on loopback");
        let tcp6 = TcpListener::bind("[::1]:0").ok();
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp on loopback");
        let abstract_name = format!("workfence-test-{tag}");
        let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("abstract");
        let abstract_sock = UnixListener::bind_addr(&addr).expect("bind abstract unix socket");
        let path = run_dir.join("agent.sock");
        let path_sock = UnixListener::bind(&path).expect("bind pathname unix socket");
        Listeners {
            tcp4,
            tcp6,
            udp,
            abstract_name,
            abstract_sock,
            path,
            path_sock,
            seen: std::cell::Cell::new(Contacts::default()),
        }
    }

    /// Every contact so far (non-blocking; accumulates over calls).
    pub fn contacts(&self) -> Contacts {
        let old = self.seen.get();
        let c = Contacts {
            tcp4: drain_tcp(&self.tcp4) || old.tcp4,
            tcp6: self.tcp6.as_ref().is_some_and(drain_tcp) || old.tcp6,
            udp: drain_udp(&self.udp) || old.udp,
            abstract_unix: drain_unix(&self.abstract_sock) || old.abstract_unix,
            path_unix: drain_unix(&self.path_sock) || old.path_unix,
        };
        self.seen.set(c);
        c
    }
}

// ---------------------------------------------------------------------------------------
// Scenario
// ---------------------------------------------------------------------------------------

/// What kind of workspace to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsKind {
    /// A git repository with one commit.
    Repo,
    /// A plain directory (no `.git`).
    NoGit,
    /// A linked worktree of a repository at `<root>/main`.
    Worktree,
}

/// Options for a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioOpts {
    pub ws_kind: WsKind,
    /// The workspace dir name (raw bytes allowed).
    pub ws_name: OsString,
}

impl Default for ScenarioOpts {
    fn default() -> Self {
        ScenarioOpts {
            ws_kind: WsKind::Repo,
            ws_name: "ws".into(),
        }
    }
}

/// Fake secret files seeded in `$H` (relative path), each holding a unique token.
pub const SECRET_FILES: &[&str] = &[
    ".ssh/id_rsa",
    ".aws/credentials",
    ".config/gh/hosts.yml",
    ".netrc",
    ".git-credentials",
    ".docker/config.json",
    ".kube/config",
    ".npmrc",
    ".cargo/credentials.toml",
    ".codex/auth.json",
];

/// Canary files in `$H`.
pub const CANARIES: &[&str] = &[
    ".bashrc",
    ".profile",
    ".zshrc",
    ".config/autostart/keep.desktop",
];

/// How a script was run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Directly, without the sandbox.
    Control,
    /// Inside `workfence run`.
    Sandboxed,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Control => "control",
            Mode::Sandboxed => "sandboxed",
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub mode: Mode,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub started: Instant,
    pub exited: Instant,
    /// The harness killed it at its own cap (a hang).
    pub hung: bool,
    /// When the harness sent SIGKILL on request (`kill_when_marker`).
    pub killed_at: Option<Instant>,
}

impl Outcome {
    /// A short description for assertion messages.
    pub fn show(&self) -> String {
        format!(
            "[{} run: exit code {:?}, signal {:?}, hung {}]\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.mode.name(),
            self.code,
            self.signal,
            self.hung,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    /// Whether the script's sentinel was printed (the script really ran).
    pub fn started(&self) -> bool {
        self.stdout.lines().any(|l| l == SENTINEL)
    }

    /// The value after `KEY ` on the first stdout line starting with it.
    pub fn field(&self, key: &str) -> Option<String> {
        let pfx = format!("{key} ");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&pfx).map(|s| s.trim().to_string()))
    }
}

fn tail(s: &str) -> String {
    const MAX: usize = 6000;
    if s.len() <= MAX {
        s.to_string()
    } else {
        let mut i = s.len() - MAX;
        while !s.is_char_boundary(i) {
            i += 1;
        }
        format!("...{}", &s[i..])
    }
}

/// How to launch one run.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Extra args for `workfence run` (before `--`).
    pub wf_args: Vec<OsString>,
    /// Extra environment (given to workfence, or to the control shell).
    pub env: Vec<(OsString, OsString)>,
    /// argv prefix run before the runner (a wrapper that must `exec "$@"`).
    pub prefix: Vec<OsString>,
    /// Bytes on stdin (else /dev/null).
    pub stdin: Option<Vec<u8>>,
    /// SIGKILL the launched process once a process with this exact argv element exists.
    /// `{MARK}` and `{ROOT}` are replaced (here and in `prefix`) with the scenario's values.
    pub kill_when_marker: Option<String>,
    /// ... and only once this long after the start.
    pub kill_after: Option<Duration>,
    /// Only kill in control mode (the sandboxed run is expected to end by itself).
    pub kill_control_only: bool,
    /// The harness's own cap on the run (default 60 s); exceeding it is a failure.
    pub cap: Option<Duration>,
}

/// One test's world. Dropped: processes killed, sockets closed, dir removed (kept on
/// failure or with `WORKFENCE_KEEP=1`).
#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub root: PathBuf,
    pub h: PathBuf,
    pub ws: PathBuf,
    pub out: PathBuf,
    /// For worktrees: the main repository's `.git` (commondir) and this worktree's gitdir.
    pub common: Option<PathBuf>,
    pub gitdir: Option<PathBuf>,
    pub host: Child,
    pub hostpid: u32,
    /// Value of `HOSTSECRET` in the host process's environment.
    pub host_secret: String,
    pub listeners: Listeners,
    /// Base marker; probe processes use `${MARK}<digit>` as an argv element.
    pub mark: String,
    /// Unique token mixed into secret contents.
    pub token: String,
    /// Paths watched for the "nothing changed" invariant.
    pub watched: Vec<PathBuf>,
    pub skip_watch: Vec<PathBuf>,
    pub before: Snapshot,
    /// Extra host paths to delete on drop (outside root).
    pub cleanup: Vec<PathBuf>,
    /// SysV shm ids to remove on drop.
    pub shm_ids: Vec<String>,
    runs: usize,
}

fn git(dir: &Path, home: &Path, args: &[&OsStr]) -> std::process::Output {
    let out = Command::new("git")
        .arg("-c")
        .arg("core.fsmonitor=false")
        .arg("-c")
        .arg("core.hooksPath=/dev/null")
        .arg("-c")
        .arg("safe.directory=*")
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "wf")
        .env("GIT_AUTHOR_EMAIL", "wf@example.invalid")
        .env("GIT_COMMITTER_NAME", "wf")
        .env("GIT_COMMITTER_EMAIL", "wf@example.invalid")
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    out
}

/// Runs host git (with hooks and fsmonitor disabled) and asserts success.
pub fn host_git(dir: &Path, home: &Path, args: &[&str]) -> String {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let o = git(dir, home, &a);
    assert!(
        o.status.success(),
        "host git {:?} in {} failed: {}",
        args,
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(p: &Path, content: &[u8]) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).expect("mkdir");
    }
    fs::write(p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

impl Scenario {
    /// A default scenario (workspace = git repo named `ws`).
    pub fn new(name: &str) -> Scenario {
        Scenario::with(name, ScenarioOpts::default())
    }

    /// A scenario with options.
    pub fn with(name: &str, opts: ScenarioOpts) -> Scenario {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("{pid}-{n}-{nanos}");
        let root = base_dir().join(format!("{name}-{tag}"));
        force_remove(&root);
        fs::create_dir_all(&root).expect("create scenario root");
        let h = root.join("home");
        let out = root.join("out");
        let ws = root.join(&opts.ws_name);
        fs::create_dir_all(&h).expect("mkdir home");
        fs::create_dir_all(&out).expect("mkdir out");
        let token = format!("wf{pid}x{n}x{nanos}");
        // Fixed width, so that no scenario's marker is a prefix of another's.
        let mark = format!("999.{:07}{:05}", pid % 10_000_000, n % 100_000);

        for f in SECRET_FILES {
            write(&h.join(f), format!("SECRET-{f}-{token}\n").as_bytes());
        }
        for f in CANARIES {
            write(&h.join(f), format!("# canary {f} {token}\n").as_bytes());
        }
        write(
            &h.join(".gitconfig"),
            b"[user]\n\tname = wf\n\temail = wf@example.invalid\n[init]\n\tdefaultBranch = main\n",
        );
        fs::set_permissions(h.join(".ssh"), fs::Permissions::from_mode(0o700)).ok();
        fs::create_dir_all(h.join(".config/workfence")).expect("mkdir config");
        let run_dir = h.join(".run");
        fs::create_dir_all(&run_dir).expect("mkdir run");

        let (mut common, mut gitdir) = (None, None);
        match opts.ws_kind {
            WsKind::Repo => {
                fs::create_dir_all(&ws).expect("mkdir ws");
                write(&ws.join("README.md"), b"hello\n");
                host_git(&ws, &h, &["init", "-q", "-b", "main"]);
                host_git(&ws, &h, &["add", "README.md"]);
                host_git(&ws, &h, &["commit", "-q", "-m", "init"]);
            }
            WsKind::NoGit => {
                fs::create_dir_all(&ws).expect("mkdir ws");
                write(&ws.join("README.md"), b"hello\n");
            }
            WsKind::Worktree => {
                let main = root.join("main");
                fs::create_dir_all(&main).expect("mkdir main");
                write(&main.join("README.md"), b"hello\n");
                host_git(&main, &h, &["init", "-q", "-b", "main"]);
                host_git(&main, &h, &["add", "README.md"]);
                host_git(&main, &h, &["commit", "-q", "-m", "init"]);
                let o = git(
                    &main,
                    &h,
                    &[
                        OsStr::new("worktree"),
                        OsStr::new("add"),
                        OsStr::new("-q"),
                        OsStr::new("-b"),
                        OsStr::new("wt"),
                        ws.as_os_str(),
                    ],
                );
                assert!(o.status.success(), "git worktree add: {o:?}");
                let dotgit = fs::read(ws.join(".git")).expect("read .git file");
                let line = dotgit.strip_prefix(b"gitdir: ").expect("gitdir line");
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                gitdir = Some(bytes_path(line));
                common = Some(main.join(".git"));
            }
        }

        // Host process to target, with a secret in its environment, cwd in $OUT.
        let host_secret = format!("HOSTSECRET-{token}");
        let host = Command::new("sleep")
            .arg("1000")
            .current_dir(&out)
            .env("HOSTSECRET", &host_secret)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn host canary process");
        let hostpid = host.id();
        let listeners = Listeners::start(&run_dir, &tag);

        let mut watched = vec![h.clone(), out.clone()];
        match opts.ws_kind {
            WsKind::Repo => {
                watched.push(ws.join(".git/config"));
                watched.push(ws.join(".git/hooks"));
            }
            WsKind::NoGit => watched.push(ws.join(".git")),
            WsKind::Worktree => {
                watched.push(ws.join(".git"));
                let c = common.clone().expect("common");
                let g = gitdir.clone().expect("gitdir");
                watched.push(c.join("config"));
                watched.push(c.join("hooks"));
                watched.push(g.join("config.worktree"));
                watched.push(g.join("gitdir"));
                watched.push(g.join("commondir"));
            }
        }
        for p in [
            ".workfence",
            ".codex",
            ".claude",
            ".agents",
            ".vscode",
            ".idea",
            ".mcp.json",
        ] {
            watched.push(ws.join(p));
        }
        // workfence's own host-side state (guard locks) lives under XDG_STATE_HOME; it is
        // written by workfence itself, outside the sandbox, and is not the command's doing.
        let state = h.join(".local/state/workfence");
        fs::create_dir_all(&state).expect("mkdir state");
        let skip_watch = vec![state];

        let mut sc = Scenario {
            name: name.to_string(),
            root,
            h,
            ws,
            out,
            common,
            gitdir,
            host,
            hostpid,
            host_secret,
            listeners,
            mark,
            token,
            watched,
            skip_watch,
            before: Snapshot::default(),
            cleanup: Vec::new(),
            shm_ids: Vec::new(),
            runs: 0,
        };
        sc.resnapshot();
        sc
    }

    /// Takes the "before" snapshot again (call after changing the setup).
    pub fn resnapshot(&mut self) {
        self.before = Snapshot::take(&self.watched, &self.skip_watch);
    }

    /// Snapshot of the watched paths now.
    pub fn now(&self) -> Snapshot {
        Snapshot::take(&self.watched, &self.skip_watch)
    }

    /// Whether `p` (must be under a watched path) changed since the snapshot.
    pub fn changed(&self, p: &Path) -> bool {
        self.before.path_changed(&self.now(), p)
    }

    /// The secret token of a seeded secret file.
    pub fn secret_of(&self, rel: &str) -> String {
        format!("SECRET-{rel}-{}", self.token)
    }

    /// Environment given to every run.
    pub fn base_env(&self) -> Vec<(OsString, OsString)> {
        let mut e: Vec<(OsString, OsString)> = Vec::new();
        let mut set = |k: &str, v: &OsStr| e.push((k.into(), v.to_os_string()));
        let path = std::env::var_os("PATH")
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
        set("PATH", &path);
        set("HOME", self.h.as_os_str());
        set("XDG_CONFIG_HOME", self.h.join(".config").as_os_str());
        set("LC_ALL", OsStr::new("C"));
        set("TERM", OsStr::new("dumb"));
        if let Some(u) = std::env::var_os("USER") {
            set("USER", &u);
        }
        set("GIT_CONFIG_NOSYSTEM", OsStr::new("1"));
        set("H", self.h.as_os_str());
        set("WS", self.ws.as_os_str());
        set("OUT", self.out.as_os_str());
        set("HOSTPID", OsStr::new(&self.hostpid.to_string()));
        set("MARK", OsStr::new(&self.mark));
        set("PY", python().as_os_str());
        set(
            "TCP4",
            OsStr::new(&self.listeners.tcp4.local_addr().unwrap().port().to_string()),
        );
        if let Some(l) = &self.listeners.tcp6 {
            set(
                "TCP6",
                OsStr::new(&l.local_addr().unwrap().port().to_string()),
            );
        }
        set(
            "UDP",
            OsStr::new(&self.listeners.udp.local_addr().unwrap().port().to_string()),
        );
        set("ABSTRACT", OsStr::new(&self.listeners.abstract_name));
        set("USOCK", self.listeners.path.as_os_str());
        if let Some(c) = &self.common {
            set("COMMON", c.as_os_str());
        }
        if let Some(g) = &self.gitdir {
            set("GITDIR", g.as_os_str());
        }
        e
    }

    /// Replaces `{MARK}` and `{ROOT}` in a launch argument.
    pub fn subst(&self, a: &OsStr) -> OsString {
        let mut b = a.as_bytes().to_vec();
        for (k, v) in [
            ("{MARK}", self.mark.as_bytes().to_vec()),
            ("{ROOT}", self.root.as_os_str().as_bytes().to_vec()),
        ] {
            let k = k.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                if b[i..].starts_with(k) {
                    out.extend_from_slice(&v);
                    i += k.len();
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            b = out;
        }
        OsString::from_vec(b)
    }

    fn out_files(&mut self) -> (PathBuf, PathBuf) {
        self.runs += 1;
        (
            self.root.join(format!("run{}.stdout", self.runs)),
            self.root.join(format!("run{}.stderr", self.runs)),
        )
    }

    /// Runs a script in a mode: control = `sh -c` in `$WS`; sandboxed =
    /// `workfence run -C $WS [wf_args] -- sh -c`. The script is prefixed with the sentinel.
    pub fn run_script(&mut self, mode: Mode, script: &str, l: &Launch) -> Outcome {
        let full = format!("echo {SENTINEL}\n{script}");
        let mut argv: Vec<OsString> = l.prefix.iter().map(|a| self.subst(a)).collect();
        if mode == Mode::Sandboxed {
            argv.push(bin().into_os_string());
            argv.push("run".into());
            argv.push("-C".into());
            argv.push(self.ws.clone().into_os_string());
            argv.extend(l.wf_args.iter().cloned());
            argv.push("--".into());
        }
        argv.push("sh".into());
        argv.push("-c".into());
        argv.push(full.into());
        let kill = l
            .kill_when_marker
            .as_ref()
            .map(|m| self.subst(OsStr::new(m)).to_string_lossy().into_owned())
            .filter(|_| match mode {
                Mode::Control => true,
                Mode::Sandboxed => !l.kill_control_only,
            });
        let cwd = self.ws.clone();
        self.spawn_wait(mode, &argv, &cwd, l, kill)
    }

    /// Runs `workfence <args>` (no sentinel, no control) in `$WS`.
    pub fn workfence<S: AsRef<OsStr>>(&mut self, args: &[S], l: &Launch) -> Outcome {
        let mut argv: Vec<OsString> = l.prefix.iter().map(|a| self.subst(a)).collect();
        argv.push(bin().into_os_string());
        argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        let cwd = self.ws.clone();
        self.spawn_wait(Mode::Sandboxed, &argv, &cwd, l, l.kill_when_marker.clone())
    }

    fn spawn_wait(
        &mut self,
        mode: Mode,
        argv: &[OsString],
        cwd: &Path,
        l: &Launch,
        kill_marker: Option<String>,
    ) -> Outcome {
        let (so, se) = self.out_files();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(cwd)
            .env_clear()
            .envs(self.base_env())
            .envs(l.env.iter().cloned())
            .stdout(fs::File::create(&so).expect("stdout file"))
            .stderr(fs::File::create(&se).expect("stderr file"));
        cmd.stdin(if l.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", argv[0]));
        if let Some(input) = &l.stdin {
            let mut w = child.stdin.take().expect("stdin");
            let _ = w.write_all(input);
            drop(w);
        }
        let cap = l.cap.unwrap_or(Duration::from_secs(60));
        let mut killed_at = None;
        let mut hung = false;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if killed_at.is_none() && l.kill_after.is_none_or(|d| started.elapsed() >= d) {
                if let Some(m) = &kill_marker {
                    if !self.procs_with(m).is_empty() {
                        let _ = child.kill();
                        killed_at = Some(Instant::now());
                    }
                }
            }
            if started.elapsed() > cap {
                hung = true;
                let _ = child.kill();
                break child.wait().expect("wait after kill");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let exited = Instant::now();
        let read =
            |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        Outcome {
            mode,
            code: status.code(),
            signal: status.signal(),
            stdout: read(&so),
            stderr: read(&se),
            started,
            exited,
            hung,
            killed_at,
        }
    }

    /// Pids of processes with argv element exactly `m`.
    pub fn procs_with(&self, m: &str) -> Vec<u32> {
        let mb = m.as_bytes().to_vec();
        pids_where(|a| a == mb.as_slice())
    }

    /// Pids of this scenario's probe processes (argv element `${MARK}<one char>`).
    pub fn leftovers(&self) -> Vec<u32> {
        let base = self.mark.as_bytes().to_vec();
        pids_where(|a| a.len() == base.len() + 1 && a.starts_with(&base))
    }

    /// Whether a process with argv element `m` is still alive at `deadline` (polls; returns
    /// false as soon as none is left).
    pub fn alive_at(&self, m: &str, deadline: Instant) -> bool {
        loop {
            if self.procs_with(m).is_empty() {
                return false;
            }
            if Instant::now() >= deadline {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills this scenario's probe processes (by pid).
    pub fn kill_leftovers(&self) {
        for p in self.leftovers() {
            send_signal(p, "KILL");
        }
    }

    /// Whether the host canary process is alive and not stopped.
    pub fn host_ok(&self) -> Result<(), String> {
        match proc_state(self.hostpid) {
            None => Err(format!("host process {} is gone", self.hostpid)),
            Some('Z') | Some('X') => Err(format!("host process {} was killed", self.hostpid)),
            Some('T') | Some('t') => {
                Err(format!("host process {} is stopped/traced", self.hostpid))
            }
            Some(_) => Ok(()),
        }
    }

    /// Checks the host invariants after a sandboxed run; returns the violations.
    pub fn invariants(&self, o: &Outcome) -> Vec<String> {
        let mut v = Vec::new();
        if !o.started() {
            v.push(
                "the script did not run (no sentinel on stdout): a setup failure is not a block"
                    .into(),
            );
        }
        if o.hung {
            v.push("the run hung (harness cap)".into());
        }
        v.extend(self.before.diff(&self.now()));
        if let Err(e) = self.host_ok() {
            v.push(e);
        }
        let c = self.listeners.contacts();
        if c.any() {
            v.push(format!("a host listener was contacted: {c:?}"));
        }
        let deadline = o.exited + Duration::from_secs(1);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                v.push(format!("probe processes left behind: {left:?}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        v
    }

    /// Writes the user config (`$XDG_CONFIG_HOME/workfence/config.toml`).
    pub fn user_config(&mut self, text: &str) -> PathBuf {
        let p = self.h.join(".config/workfence/config.toml");
        write(&p, text.as_bytes());
        self.resnapshot();
        p
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = self.host.kill();
        let _ = self.host.wait();
        self.kill_leftovers();
        for id in &self.shm_ids {
            let _ = Command::new("ipcrm")
                .args(["-m", id])
                .stderr(Stdio::null())
                .status();
        }
        for p in &self.cleanup {
            let _ = fs::remove_file(p);
        }
        let keep =
            std::thread::panicking() || std::env::var("WORKFENCE_KEEP").is_ok_and(|v| v == "1");
        if keep {
            eprintln!("scenario kept for inspection: {}", self.root.display());
        } else {
            force_remove(&self.root);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attacks: control + sandboxed, always both
// ---------------------------------------------------------------------------------------

/// A probe: `Ok(true)` the attack worked, `Ok(false)` it was blocked, `Err` inconclusive.
pub type Probe = Box<dyn Fn(&Scenario, &Outcome) -> Result<bool, String>>;

/// An extra check on the sandboxed run only (for things a control cannot show, such as an
/// exit status); `Err` fails the test.
pub type Check = Box<dyn Fn(&Scenario, &Outcome) -> Result<(), String>>;

/// Per-half setup: runs after the scenario is built; returns extra env for the run.
pub type Setup = Box<dyn Fn(&mut Scenario, Mode) -> Vec<(OsString, OsString)>>;

/// One attack from the catalogue.
pub struct Attack {
    /// Catalogue id (plus a short suffix), printed in the counts.
    pub id: String,
    pub opts: ScenarioOpts,
    /// Runs after the scenario is built, before the snapshot; may return extra env.
    pub setup: Option<Setup>,
    pub script: String,
    pub launch: Launch,
    pub probes: Vec<(String, Probe)>,
    pub sandbox_checks: Vec<(String, Check)>,
    /// If the control fails, the host lacks the feature: skip (or fail under MUST_WORK).
    pub control_needs: Option<String>,
    /// The sandboxed run must refuse (exit 125) without running the script at all.
    pub refused: bool,
}

impl std::fmt::Debug for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attack").field("id", &self.id).finish()
    }
}

impl Attack {
    /// A new attack with its script.
    pub fn new(id: &str, script: &str) -> Attack {
        Attack {
            id: id.into(),
            opts: ScenarioOpts::default(),
            setup: None,
            script: script.into(),
            launch: Launch::default(),
            probes: Vec::new(),
            sandbox_checks: Vec::new(),
            control_needs: None,
            refused: false,
        }
    }

    /// The sandboxed run must be refused (exit 125, script never started).
    pub fn expect_refusal(mut self) -> Self {
        self.refused = true;
        self
    }

    pub fn ws(mut self, kind: WsKind) -> Self {
        self.opts.ws_kind = kind;
        self
    }

    pub fn setup(
        mut self,
        f: impl Fn(&mut Scenario, Mode) -> Vec<(OsString, OsString)> + 'static,
    ) -> Self {
        self.setup = Some(Box::new(f));
        self
    }

    pub fn launch(mut self, l: Launch) -> Self {
        self.launch = l;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.launch.env.push((k.into(), v.into()));
        self
    }

    pub fn wf_arg(mut self, a: &str) -> Self {
        self.launch.wf_args.push(a.into());
        self
    }

    pub fn prefix(mut self, p: &[&str]) -> Self {
        self.launch.prefix = p.iter().map(OsString::from).collect();
        self
    }

    pub fn control_needs(mut self, why: &str) -> Self {
        self.control_needs = Some(why.into());
        self
    }

    /// Adds a probe.
    pub fn probe(
        mut self,
        name: &str,
        f: impl Fn(&Scenario, &Outcome) -> Result<bool, String> + 'static,
    ) -> Self {
        self.probes.push((name.into(), Box::new(f)));
        self
    }

    /// Probe: the file/dir at `$H`/`$WS`/... (relative to the scenario root via `f`) changed
    /// or appeared.
    pub fn probe_changed(self, name: &str, f: impl Fn(&Scenario) -> PathBuf + 'static) -> Self {
        self.probe(name, move |sc, _| Ok(sc.changed(&f(sc))))
    }

    /// Probe: the path exists (without following a final symlink).
    pub fn probe_exists(self, name: &str, f: impl Fn(&Scenario) -> PathBuf + 'static) -> Self {
        self.probe(name, move |sc, _| Ok(fs::symlink_metadata(f(sc)).is_ok()))
    }

    /// Probe: the path no longer exists.
    pub fn probe_gone(self, name: &str, f: impl Fn(&Scenario) -> PathBuf + 'static) -> Self {
        self.probe(name, move |sc, _| Ok(fs::symlink_metadata(f(sc)).is_err()))
    }

    /// Probe: stdout contains a string computed from the scenario (e.g. a secret).
    pub fn probe_stdout_has(self, name: &str, f: impl Fn(&Scenario) -> String + 'static) -> Self {
        self.probe(name, move |sc, o| Ok(o.stdout.contains(&f(sc))))
    }

    /// Probe on a `KEY rc=N ...` line printed by the script: attack worked when rc >= 0.
    pub fn probe_rc(self, name: &str, key: &'static str) -> Self {
        self.probe(name, move |_, o| {
            let v = o
                .field(key)
                .ok_or_else(|| format!("no '{key} ...' line on stdout"))?;
            let rc = v
                .strip_prefix("rc=")
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("unparsable '{key} {v}'"))?;
            Ok(rc >= 0)
        })
    }

    /// An extra assertion on the sandboxed run.
    pub fn sandbox_check(
        mut self,
        name: &str,
        f: impl Fn(&Scenario, &Outcome) -> Result<(), String> + 'static,
    ) -> Self {
        self.sandbox_checks.push((name.into(), Box::new(f)));
        self
    }

    fn scenario(&self, mode: Mode) -> (Scenario, Launch) {
        let mut sc = Scenario::with(&self.id.replace('/', "-"), self.opts.clone());
        let mut launch = self.launch.clone();
        if let Some(s) = &self.setup {
            launch.env.extend(s(&mut sc, mode));
        }
        sc.resnapshot();
        (sc, launch)
    }

    /// Runs the control, then the sandboxed half. Panics with every failed probe.
    pub fn run(self) {
        assert!(
            !self.probes.is_empty(),
            "attack {} has no controlled probe",
            self.id
        );
        // Counted by scripts/test.sh: every BEGIN needs a CONTROL and an ATTACK line, or
        // a visible SKIP.
        count(&format!("BEGIN {}", self.id));
        // Control: every probe must see the attack work.
        {
            let (mut sc, launch) = self.scenario(Mode::Control);
            let o = sc.run_script(Mode::Control, &self.script, &launch);
            let mut failed = Vec::new();
            if !o.started() {
                failed.push("the control script did not start".to_string());
            }
            for (name, p) in &self.probes {
                match p(&sc, &o) {
                    Ok(true) => {}
                    Ok(false) => failed.push(format!("probe '{name}': the attack did not work")),
                    Err(e) => failed.push(format!("probe '{name}': inconclusive: {e}")),
                }
            }
            sc.kill_leftovers();
            if !failed.is_empty() {
                if let Some(why) = &self.control_needs {
                    drop(sc);
                    skip_or_fail(
                        &self.id,
                        &format!(
                            "control attack does not work on this host ({why}): {}",
                            failed.join("; ")
                        ),
                    );
                    return;
                }
                panic!(
                    "CONTROL {} failed (the test could not detect this attack):\n  {}\n{}",
                    self.id,
                    failed.join("\n  "),
                    o.show()
                );
            }
            count(&format!("CONTROL {} succeeded", self.id));
        }
        // Sandboxed: every probe must see it blocked, and the host must be untouched.
        {
            let (mut sc, launch) = self.scenario(Mode::Sandboxed);
            let o = sc.run_script(Mode::Sandboxed, &self.script, &launch);
            let mut failed = Vec::new();
            for (name, p) in &self.probes {
                match p(&sc, &o) {
                    Ok(false) => {}
                    Ok(true) => failed.push(format!("probe '{name}': the attack WORKED")),
                    Err(e) => failed.push(format!("probe '{name}': inconclusive: {e}")),
                }
            }
            for (name, c) in &self.sandbox_checks {
                if let Err(e) = c(&sc, &o) {
                    failed.push(format!("check '{name}': {e}"));
                }
            }
            let mut inv = sc.invariants(&o);
            if self.refused {
                let ran = "the script did not run (no sentinel on stdout): a setup failure is not a block";
                inv.retain(|v| v != ran);
                if o.started() {
                    failed.push("the command ran although the sandbox had to refuse".into());
                }
                if o.code != Some(125) {
                    failed.push(format!("expected exit 125 (refusal), got {:?}", o.code));
                }
            }
            failed.extend(inv.into_iter().map(|v| format!("host: {v}")));
            if !failed.is_empty() {
                panic!(
                    "ATTACK {} NOT blocked:\n  {}\n{}",
                    self.id,
                    failed.join("\n  "),
                    o.show()
                );
            }
            count(&format!("ATTACK {} blocked", self.id));
        }
    }
}

/// Shell snippet: prints `STARTED <d>` for every live `sleep ${MARK}<d>` it can see, so
/// that a lifetime attack cannot pass because its probe processes never started.
pub const SHOW_STARTED: &str = r#""$PY" -c '
import os
m = os.environ["MARK"].encode()
seen = set()
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        a = open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
    except OSError:
        continue
    if a and a[0].endswith(b"sleep"):
        for x in a[1:]:
            if x.startswith(m) and len(x) == len(m) + 1:
                seen.add(x[-1:].decode())
for s in sorted(seen):
    print("STARTED", s, flush=True)
'"#;

impl Attack {
    /// Sandboxed check: the script printed `STARTED <d>` (see [`SHOW_STARTED`]) for each
    /// digit, i.e. its probe processes really ran inside.
    pub fn require_started(self, digits: &'static [&'static str]) -> Self {
        self.sandbox_check(
            "the probe processes started inside the sandbox",
            move |_, o| {
                let missing: Vec<_> = digits
                    .iter()
                    .filter(|d| !o.stdout.lines().any(|l| l == format!("STARTED {d}")))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("never started: {missing:?}"))
                }
            },
        )
    }

    /// Sandboxed check: the script printed a `KEY ...` line (it really ran the probe).
    pub fn require_lines(self, keys: &'static [&'static str]) -> Self {
        self.sandbox_check("the probes ran inside the sandbox", move |_, o| {
            let missing: Vec<_> = keys.iter().filter(|k| o.field(k).is_none()).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("no output line for {missing:?}"))
            }
        })
    }
}

/// Records a passed work case.
pub fn work_passed(name: &str) {
    count(&format!("WORK {name} passed"));
}

/// Asserts a sandboxed run really ran and exited 0.
pub fn assert_ok(o: &Outcome, what: &str) {
    assert!(
        o.code == Some(0) && !o.hung,
        "{what}: expected exit 0\n{}",
        o.show()
    );
}

/// `KEY rc=<n> errno=<e>` printer for python probes.
pub const PY_RC: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def sc(*a):
    ctypes.set_errno(0)
    r = libc.syscall(*a)
    return r, ctypes.get_errno()
def show(key, r, e):
    print("%s rc=%d errno=%d" % (key, r, e), flush=True)
"#;

/// A python snippet (after [`PY_RC`]) as a shell command line.
pub fn py(body: &str) -> String {
    let code = format!("{PY_RC}\n{body}");
    format!("\"$PY\" -c '{}'", code.replace('\'', r"'\''"))
}

/// Probe helper: attack worked when the `KEY` line says `errno=0` and rc >= 0.
pub fn rc_of(o: &Outcome, key: &str) -> Result<(i64, i64), String> {
    let v = o
        .field(key)
        .ok_or_else(|| format!("no '{key} ...' line on stdout"))?;
    let mut rc = None;
    let mut errno = None;
    for part in v.split_whitespace() {
        if let Some(x) = part.strip_prefix("rc=") {
            rc = x.parse().ok();
        }
        if let Some(x) = part.strip_prefix("errno=") {
            errno = x.parse().ok();
        }
    }
    match (rc, errno) {
        (Some(r), Some(e)) => Ok((r, e)),
        (Some(r), None) => Ok((r, 0)),
        _ => Err(format!("unparsable '{key} {v}'")),
    }
}

/// Reads the whole file lossily (empty if missing).
pub fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned()
}

/// The raw bytes of an OsStr.
pub fn raw(s: &OsStr) -> &[u8] {
    s.as_bytes()
}

/// Whether an io error is "not found".
pub fn is_not_found(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::NotFound
}

// ---------------------------------------------------------------------------------------
// Proof that a run was sandboxed (work cases), host-side git and helpers
// ---------------------------------------------------------------------------------------

/// Host file the proof snippet tries to create (it must never exist after a sandboxed run).
pub const PROOF_FILE: &str = ".wf-sandbox-proof";

/// Shell snippet that every work case runs inside its sandboxed command: it tries to
/// write `$H/.wf-sandbox-proof` and to read the seeded `$H/.ssh/id_rsa`, and prints
/// `WFPROOF home_write_blocked=<0|1> secret=[<what it read>]`. It does not change `$?`
/// for what follows and works under `set -e`. Judged from outside by [`assert_sandboxed`],
/// so a suite in which `workfence run` were replaced by `exec "$@"` would fail.
pub const SANDBOX_PROOF: &str = r#"__wfs=$(cat "$H/.ssh/id_rsa" 2>/dev/null || true)
if ( echo proof > "$H/.wf-sandbox-proof" ) 2>/dev/null; then __wfw=0; else __wfw=1; fi
echo "WFPROOF home_write_blocked=$__wfw secret=[$__wfs]"
"#;

/// `script` with [`SANDBOX_PROOF`] run first.
pub fn with_proof(script: &str) -> String {
    format!("{SANDBOX_PROOF}{script}")
}

/// Asserts, from outside, that the run which executed [`SANDBOX_PROOF`] was sandboxed:
/// the proof line is there, the write to `$H` did not land on the host, and the secret
/// read as empty.
pub fn assert_sandboxed(sc: &Scenario, o: &Outcome, what: &str) {
    let line = o.field("WFPROOF").unwrap_or_default();
    let mut bad = Vec::new();
    if line.is_empty() {
        bad.push("no WFPROOF line: the proof snippet did not run".to_string());
    }
    if !line.contains("home_write_blocked=1") {
        bad.push(format!("the write to $H was not refused ({line})"));
    }
    if fs::symlink_metadata(sc.h.join(PROOF_FILE)).is_ok() {
        bad.push(format!("$H/{PROOF_FILE} exists on the host"));
    }
    if !line.contains("secret=[]") || o.stdout.contains(&sc.secret_of(".ssh/id_rsa")) {
        bad.push(format!("$H/.ssh/id_rsa was readable ({line})"));
    }
    assert!(
        bad.is_empty(),
        "{what}: the run was NOT sandboxed: {}\n{}",
        bad.join("; "),
        o.show()
    );
}

/// Runs git on the host the way a user's own tools would (hooks, fsmonitor, includes and
/// all config honoured; `HOME=$H`, no system config), in `dir`. Never asserts.
pub fn host_git_real(sc: &Scenario, dir: &Path, args: &[&str]) -> std::process::Output {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &sc.h)
        .env("XDG_CONFIG_HOME", sc.h.join(".config"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C")
        .env("GIT_AUTHOR_NAME", "wf")
        .env("GIT_AUTHOR_EMAIL", "wf@example.invalid")
        .env("GIT_COMMITTER_NAME", "wf")
        .env("GIT_COMMITTER_EMAIL", "wf@example.invalid")
        .stdin(Stdio::null())
        .output()
        .expect("run host git")
}

/// Starts a python helper on the host (`$PY -c code args... ${MARK}9`). Its last argv
/// element is the scenario's marker, so the scenario's leftover cleanup reaps it; it must
/// exit by itself shortly after the run (the leftover invariant allows one second).
pub fn host_helper(sc: &Scenario, code: &str, args: &[&OsStr]) {
    let child = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .arg(format!("{}9", sc.mark))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn a host helper");
    // Reaped by the scenario's leftover cleanup (argv carries ${MARK}9).
    std::mem::forget(child);
}

/// Sorted names of a directory's entries (empty if unreadable).
pub fn dir_listing(p: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    v.sort();
    v
}
