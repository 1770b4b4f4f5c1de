//! `workfence selftest`: proof, on the user's own machine, that the sandbox holds and
//! that ordinary tools still work inside it.
//!
//! The self-test builds a temporary directory with a workspace (a git repository when
//! git is installed) and an `outside` directory next to it, then runs two sets of cases
//! through the same public [`crate::run`] every caller uses, with the built-in default
//! policy (the user's and the workspace's config files are NOT read: the result must not
//! depend on them):
//!
//! - **compatibility**: the platform shell, git, Python `multiprocessing`, Node with a
//!   piped `child_process`, `cargo build`, `cc`/`make`, the null device, PowerShell.
//!   A missing tool is a visible skip; a tool that fails even without the sandbox is a
//!   visible skip too.
//! - **attacks**, each judged from OUTSIDE after the run (did the file change, did the
//!   host listener get a byte, is the host process alive, is the daemon still beating),
//!   and each with a **control**: the same argv run without the sandbox first, which must
//!   show the attack working. A control that does not succeed makes the case a failure
//!   (the check would prove nothing), never a pass.
//!
//! Actions are performed by the workfence executable itself in its probe mode (see
//! [`probe`]): [`crate::helper_main_if_requested`] dispatches to it, which is why every
//! program using this library calls that first in `main`.
//!
//! The library prints nothing: [`run`] returns a [`Report`]; the CLI prints it.

mod cases;
mod facts;
pub mod probe;

use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use workfence_policy::resolve::{resolve, CliOverrides, Layers};
use workfence_policy::run::RunOutcome;
use workfence_policy::{Enforcement, Policy};

use crate::{Error, Warning};
pub use cases::case_ids;
use cases::{catalogue, pending};
use facts::{fact, host_facts, os_facts};
pub use probe::PROBE_ARG;

/// The result of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Compatibility: the tool worked in the sandbox. Attack: blocked, and the control
    /// showed that the attack works without the sandbox.
    Pass,
    /// Compatibility: the tool broke in the sandbox. Attack: not blocked, the control
    /// did not succeed, or the probe never ran.
    Fail,
    /// Not run here, with the reason (a missing tool, another OS, a missing service).
    Skipped,
}

impl Status {
    /// `pass`, `fail` or `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

/// Which set a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Developer tools must keep working.
    Compat,
    /// The sandbox must block it.
    Attack,
}

/// One case of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Stable id, `compat/...` or `attack/...`.
    pub id: String,
    /// The set.
    pub kind: Kind,
    /// What the case does, in one line.
    pub what: String,
    /// The outcome.
    pub status: Status,
    /// Why (for a pass: how it was judged; for a skip: what is missing).
    pub reason: String,
    /// The programs the case needs (empty: only the workfence executable).
    pub tools: Vec<String>,
    /// What the control (the same argv without the sandbox) showed, for attacks.
    pub control: Option<String>,
}

/// A case that exists in the catalogue but is not implemented on this build.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    /// Id the case will get.
    pub id: String,
    /// Why it is not implemented yet.
    pub why: String,
}

/// One measured fact about this host.
#[derive(Debug, Clone, Serialize)]
pub struct Fact {
    /// Its name, for example `kernel` or `landlock ABI`.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// Counts of the report.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases skipped.
    pub skipped: usize,
}

/// The whole self-test.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `linux`, `macos`, `windows`.
    pub os: String,
    /// workfence's version.
    pub version: String,
    /// What ran the sandboxed half (`sandbox`; `unsandboxed` only in workfence's own
    /// tests, where it shows that the checks can fail).
    pub runner: String,
    /// No case failed.
    pub ok: bool,
    /// Counts.
    pub summary: Summary,
    /// The sandbox ran degraded (a layer could not be enforced): why.
    pub degraded: Option<String>,
    /// What was measured about the host.
    pub facts: Vec<Fact>,
    /// Warnings workfence gave for the sandboxed runs (deduplicated).
    pub warnings: Vec<String>,
    /// Every case, in order.
    pub cases: Vec<CaseResult>,
    /// Catalogue cases not implemented on this OS yet.
    pub pending: Vec<Pending>,
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where to create the temporary directory (default: `/var/tmp` on Linux, where
    /// `/tmp` is private inside the sandbox; the system temp dir elsewhere).
    pub dir: Option<PathBuf>,
    /// The probe executable (default: the running executable). It must call
    /// [`crate::helper_main_if_requested`] first in `main`.
    pub probe: Option<PathBuf>,
    /// Run only the cases whose id starts with one of these (empty: all).
    pub only: Vec<String>,
    /// Keep the temporary directory (for debugging).
    pub keep: bool,
    /// Windows: measure which restricting set the compatibility cases need and record
    /// it machine-wide for later runs (`selftest --measure-restricting-set`). Without
    /// it the set in use is reported and never changed: widening it is a deliberate
    /// step, never a side effect of a failing case.
    pub measure_restricting_set: bool,
}

/// Runs the sandboxed half of every case. [`Sandbox`] is the real one; workfence's own
/// tests inject [`Unsandboxed`] to show that every attack check can fail.
pub trait Runner {
    /// `sandbox` or `unsandboxed`.
    fn name(&self) -> &'static str;
    /// Runs `argv` under `policy`.
    fn run(
        &mut self,
        policy: &Policy,
        argv: Vec<OsString>,
        warn: &mut dyn FnMut(Warning),
    ) -> Result<RunOutcome, Error>;
}

/// The real sandbox: [`crate::run`].
#[derive(Debug, Default)]
pub struct Sandbox;

impl Runner for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }
    fn run(
        &mut self,
        policy: &Policy,
        argv: Vec<OsString>,
        warn: &mut dyn FnMut(Warning),
    ) -> Result<RunOutcome, Error> {
        crate::run(policy, argv, warn)
    }
}

/// No sandbox at all (for workfence's own tests: every attack case must then fail).
/// Not reachable from the CLI.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Unsandboxed;

impl Runner for Unsandboxed {
    fn name(&self) -> &'static str {
        "unsandboxed"
    }
    fn run(
        &mut self,
        policy: &Policy,
        argv: Vec<OsString>,
        _warn: &mut dyn FnMut(Warning),
    ) -> Result<RunOutcome, Error> {
        direct(policy, &argv)
    }
}

/// The control: `argv` without any sandbox, with the environment the sandboxed command
/// would get, in the policy's cwd, stdio detached.
fn direct(policy: &Policy, argv: &[OsString]) -> Result<RunOutcome, Error> {
    let name = argv
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new(argv.first().ok_or(Error::NoCommand)?);
    cmd.args(&argv[1..])
        .current_dir(&policy.cwd)
        .env_clear()
        .envs(crate::command_env(policy).vars)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| Error::Spawn(name.clone(), e))?;
    let limit = policy.limits.timeout.unwrap_or(CASE_TIMEOUT);
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child
            .try_wait()
            .map_err(|e| Error::Spawn(name.clone(), e))?
        {
            return Ok(RunOutcome::status(st.code().unwrap_or(1)));
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(RunOutcome::because(
                workfence_policy::run::EXIT_TIMEOUT,
                workfence_policy::run::timeout_message(limit),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Compatibility commands get this timeout (a cold `cargo build` included).
const CASE_TIMEOUT: Duration = Duration::from_secs(180);

/// Attack probes get this one: each does one action, or waits at most a few seconds,
/// so that a hang (a backend that never returns) costs little per case.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the self-test with the real sandbox.
pub fn run(opts: &Options) -> Result<Report, Error> {
    run_with(opts, &mut Sandbox)
}

/// What the self-test does about the restricting set (pure, so it is tested on every
/// OS): the sets to try, narrowest first, or why it does not measure.
#[cfg_attr(not(windows), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MeasurePlan {
    /// Do not measure or record anything; the fact says why.
    Skip(String),
    /// Try these sets in order and record the first with which every compatibility
    /// case passes.
    Try(Vec<workfence_windows::RestrictingSet>),
}

/// Decides whether to measure the restricting set. `null_granted` is
/// `workfence_windows::null_device_granted()`: setup's grant on the null device does
/// not survive a reboot, and without it `compat/null-device` fails under `narrow` but
/// passes under `restricted` (the device's default DACL grants RESTRICTED), which
/// would widen the machine-wide set for good. Only with the explicit flag, and never
/// to `everyone` (that makes every world-writable directory writable from the
/// sandbox: a user may choose it by hand, a failing case must not).
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn measure_plan(
    flag: bool,
    null_granted: Option<bool>,
    in_use: workfence_windows::RestrictingSet,
) -> MeasurePlan {
    use workfence_windows::RestrictingSet;
    if null_granted == Some(false) {
        return MeasurePlan::Skip(format!(
            "not measured ({} in use): the null device no longer grants the sandbox users (the grant is lost at every reboot); run `workfence setup` to restore the null device grant",
            in_use.name()
        ));
    }
    if !flag {
        return MeasurePlan::Skip(format!(
            "not measured ({} in use); `workfence selftest --measure-restricting-set` measures and records it",
            in_use.name()
        ));
    }
    MeasurePlan::Try(
        RestrictingSet::ALL
            .into_iter()
            .filter(|s| *s != RestrictingSet::Everyone)
            .collect(),
    )
}

/// Windows, with `--measure-restricting-set` (see [`measure_plan`]): finds the
/// narrowest restricting set (issue 8: which SIDs real tools need can only be measured
/// on the machine) with which every compatibility case that can run here passes,
/// records it for later runs, and says so. The cases then run (and are reported)
/// under that set. When none works, the narrowest is kept: a wider set must be earned
/// by working tools, never assumed.
#[cfg(windows)]
fn measure_restricting_set(st: &mut State<'_>, opts: &Options) -> Fact {
    use workfence_windows::RestrictingSet;
    const NAME: &str = "restricting set that worked";
    let sets = match measure_plan(
        opts.measure_restricting_set,
        workfence_windows::null_device_granted(),
        workfence_windows::restricting_set(),
    ) {
        MeasurePlan::Skip(why) => return fact(NAME, why),
        MeasurePlan::Try(sets) => sets,
    };
    let compat: Vec<Case> = catalogue()
        .into_iter()
        .filter(|c| c.kind == Kind::Compat)
        .filter(|c| opts.only.is_empty() || opts.only.iter().any(|p| c.id.starts_with(p.as_str())))
        .collect();
    let mut tried = Vec::new();
    for set in sets {
        if let Err(e) = workfence_windows::record_restricting_set(set) {
            return fact(NAME, format!("not measured: cannot record a set: {e}"));
        }
        let failed: Vec<String> = compat
            .iter()
            .map(|c| run_case(st, c))
            .filter(|r| r.status == Status::Fail)
            .map(|r| r.id)
            .collect();
        if failed.is_empty() {
            let before = if tried.is_empty() {
                String::new()
            } else {
                format!("; narrower sets failed: {}", tried.join("; "))
            };
            return fact(
                NAME,
                format!("{} (recorded: later runs use it){before}", set.name()),
            );
        }
        tried.push(format!("{}: {}", set.name(), failed.join(", ")));
    }
    let _ = workfence_windows::record_restricting_set(RestrictingSet::Narrow);
    fact(
        NAME,
        format!(
            "none (narrow kept; everyone is never chosen automatically): {}",
            tried.join("; ")
        ),
    )
}

/// Runs the self-test with another runner for the sandboxed half (workfence's tests).
#[doc(hidden)]
pub fn run_with(opts: &Options, runner: &mut dyn Runner) -> Result<Report, Error> {
    let probe = match &opts.probe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| Error::SelfTest {
            step: "find the running executable (the probe)",
            source: e,
        })?,
    };
    let ids = case_ids();
    if let Some(p) = opts
        .only
        .iter()
        .find(|p| !ids.iter().any(|id| id.starts_with(p.as_str())))
    {
        return Err(Error::NoSuchCase(format!(
            "no selftest case id starts with {p:?}; the cases are: {}",
            ids.join(", ")
        )));
    }
    let env = Env::create(opts, probe)?;
    let mut report = Report {
        os: std::env::consts::OS.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        runner: runner.name().into(),
        ok: true,
        summary: Summary::default(),
        degraded: None,
        facts: Vec::new(),
        warnings: Vec::new(),
        cases: Vec::new(),
        pending: pending(),
    };
    let mut st = State {
        env,
        runner,
        warnings: Vec::new(),
        allow_degraded: false,
    };
    report.facts.extend(host_facts(&st.env));
    preflight(&mut st, &mut report);
    #[cfg(windows)]
    report.facts.push(measure_restricting_set(&mut st, opts));
    for case in catalogue() {
        if !opts.only.is_empty() && !opts.only.iter().any(|p| case.id.starts_with(p.as_str())) {
            continue;
        }
        let r = run_case(&mut st, &case);
        report.cases.push(r);
    }
    report.facts.extend(os_facts(&st.env));
    report.facts.push(fact(
        "degraded",
        match &report.degraded {
            Some(why) => format!("yes: {why}"),
            None => "no (the strict default policy was enforced)".into(),
        },
    ));
    for c in &report.cases {
        match c.status {
            Status::Pass => report.summary.passed += 1,
            Status::Fail => report.summary.failed += 1,
            Status::Skipped => report.summary.skipped += 1,
        }
    }
    report.ok = report.summary.failed == 0;
    report.warnings = st.warnings;
    if opts.keep {
        report.facts.push(Fact {
            name: "kept temporary directory".into(),
            value: st.env.root.display().to_string(),
        });
        st.env.keep = true;
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// The temporary world
// ---------------------------------------------------------------------------------------

/// The temporary directory: `root/ws` (the workspace) and `root/outside` (a host dir
/// the sandbox may read but not change). Removed on drop.
struct Env {
    root: PathBuf,
    ws: PathBuf,
    outside: PathBuf,
    probe: PathBuf,
    /// A unique token, part of every planted content.
    token: String,
    git: Option<PathBuf>,
    /// The planted secret (hidden by the policy).
    secret: PathBuf,
    keep: bool,
}

fn default_base() -> PathBuf {
    if cfg!(target_os = "linux") {
        let vt = Path::new("/var/tmp");
        if vt.is_dir() {
            return vt.to_path_buf();
        }
    }
    std::env::temp_dir()
}

/// The real path of `p`: symlinks resolved (macOS: `/var` is `/private/var`) and, on
/// Windows, 8.3 short names expanded (`RUNNER~1` in `%TEMP%`), without the verbatim
/// `\\?\` prefix `canonicalize` adds there, which `cmd.exe` and many tools refuse.
fn real_path(p: &Path) -> std::io::Result<PathBuf> {
    let c = p.canonicalize()?;
    if cfg!(windows) {
        let s = c.to_string_lossy();
        if let Some(rest) = s.strip_prefix(r"\\?\") {
            let b = rest.as_bytes();
            if b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\' {
                return Ok(PathBuf::from(rest));
            }
        }
    }
    Ok(c)
}

fn selftest_err(step: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::SelfTest { step, source }
}

impl Env {
    fn create(opts: &Options, probe: PathBuf) -> Result<Env, Error> {
        let base = opts.dir.clone().unwrap_or_else(default_base);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let token = format!("{}x{nanos}", std::process::id());
        let root = base.join(format!("workfence-selftest-{token}"));
        fs::create_dir_all(&root).map_err(selftest_err("create the temporary directory"))?;
        // Canonical, so that the policy, the layout and the judges agree on one spelling
        // (macOS: /var is /private/var).
        let root = real_path(&root).map_err(selftest_err("resolve the temporary directory"))?;
        let ws = root.join("ws");
        let outside = root.join("outside");
        fs::create_dir_all(&ws).map_err(selftest_err("create the workspace"))?;
        fs::create_dir_all(&outside).map_err(selftest_err("create the outside directory"))?;
        let secret = outside.join("planted-secret.txt");
        fs::write(&secret, format!("SECRET-{token}\n"))
            .map_err(selftest_err("plant the fake secret"))?;
        let git = find_program("git");
        let env = Env {
            root,
            ws,
            outside,
            probe,
            token,
            git,
            secret,
            keep: false,
        };
        env.make_repo()
            .map_err(selftest_err("create the workspace's git repository"))?;
        Ok(env)
    }

    /// A git repository with one commit (with git), else a hand-made `.git` with the
    /// same protected parts (config, hooks), so that the `.git` cases still run.
    fn make_repo(&self) -> std::io::Result<()> {
        fs::write(self.ws.join("README.md"), "workfence selftest\n")?;
        if self.git.is_some() {
            let ok = self.host_git(&["init", "-q"]).is_some()
                && self.host_git(&["add", "README.md"]).is_some()
                && self
                    .host_git(&["commit", "-q", "--no-verify", "-m", "init"])
                    .is_some();
            if ok {
                return Ok(());
            }
            let _ = fs::remove_dir_all(self.ws.join(".git"));
        }
        let g = self.ws.join(".git");
        for d in ["hooks", "objects", "refs/heads"] {
            fs::create_dir_all(g.join(d))?;
        }
        fs::write(g.join("HEAD"), "ref: refs/heads/main\n")?;
        fs::write(
            g.join("config"),
            "[core]\n\trepositoryformatversion = 0\n\tbare = false\n",
        )?;
        Ok(())
    }

    /// Host git in the workspace, hooks and fsmonitor off, with an identity; stdout on
    /// success.
    fn host_git(&self, args: &[&str]) -> Option<String> {
        let git = self.git.as_ref()?;
        let out = Command::new(git)
            .args(GIT_IDENTITY)
            .args(["-c", "core.fsmonitor=false", "-c", "safe.directory=*"])
            .args(args)
            .current_dir(&self.ws)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A hidden path that does not exist when the run starts: the host creates it while
    /// the command waits for it.
    fn late_secret(&self) -> PathBuf {
        self.outside.join("late-secret.txt")
    }

    /// The probe's marker file of a case.
    fn marker(&self, id: &str) -> PathBuf {
        self.ws.join(format!(".selftest-{}.marker", slug(id)))
    }

    /// `probe <marker> <action> args...`.
    fn probe_argv(&self, id: &str, action: &str, args: &[OsString]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            self.probe.clone().into_os_string(),
            PROBE_ARG.into(),
            self.marker(id).into_os_string(),
            action.into(),
        ];
        v.extend(args.iter().cloned());
        v
    }

    /// The policy of every case: the built-in defaults for the workspace, the planted
    /// secret hidden, a timeout.
    fn policy(&self, allow_degraded: bool) -> Result<Policy, Error> {
        let cli = CliOverrides {
            workspace: Some(self.ws.clone()),
            deny_read: vec![self.secret.clone(), self.late_secret()],
            allow_degraded,
            timeout: Some(CASE_TIMEOUT),
            ..CliOverrides::default()
        };
        let resolved = resolve(&Layers {
            home: crate::home_dir()?,
            cwd: self.ws.clone(),
            user: None,
            workspace_config: None,
            cli,
        })?;
        Ok(resolved.policy)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // A failed attack may have left read-only bits; make everything removable.
        let _ = fs::remove_dir_all(&self.root);
        if self.root.exists() {
            make_writable(&self.root);
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Makes every directory below `p` writable by its owner (only), so that it can be removed.
fn make_writable(p: &Path) {
    if let Ok(m) = fs::symlink_metadata(p) {
        if m.is_dir() {
            #[cfg(unix)]
            let perm = {
                use std::os::unix::fs::PermissionsExt;
                fs::Permissions::from_mode(0o700)
            };
            #[cfg(not(unix))]
            let perm = {
                let mut perm = m.permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perm.set_readonly(false);
                perm
            };
            let _ = fs::set_permissions(p, perm);
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

const GIT_IDENTITY: &[&str] = &[
    "-c",
    "user.name=workfence selftest",
    "-c",
    "user.email=selftest@example.invalid",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "init.defaultBranch=main",
];

fn slug(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Finds a program in `PATH` (with `PATHEXT` on Windows), skipping Windows' Store app
/// aliases (zero-byte stubs that open the Store instead of running anything).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let exts: Vec<String> = if cfg!(windows) {
        std::env::var("PATHEXT")
            .unwrap_or_else(|_| ".COM;.EXE;.BAT;.CMD".into())
            .split(';')
            .filter(|e| !e.is_empty())
            .map(str::to_ascii_lowercase)
            .collect()
    } else {
        vec![String::new()]
    };
    for dir in std::env::split_paths(&path) {
        if cfg!(windows) && dir.to_string_lossy().contains("WindowsApps") {
            continue;
        }
        for ext in &exts {
            let p = dir.join(format!("{name}{ext}"));
            if is_executable(&p) {
                return Some(p);
            }
        }
    }
    None
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// The Python interpreter: the system one first on unix (a per-user shim such as pyenv's
/// may need a home the sandbox keeps read-only).
fn python() -> Option<PathBuf> {
    if cfg!(unix) {
        for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
            if is_executable(Path::new(p)) {
                return Some(PathBuf::from(p));
            }
        }
        find_program("python3")
    } else {
        find_program("python").or_else(|| find_program("python3"))
    }
}

// ---------------------------------------------------------------------------------------
// Running cases
// ---------------------------------------------------------------------------------------

struct State<'a> {
    env: Env,
    runner: &'a mut dyn Runner,
    warnings: Vec<String>,
    allow_degraded: bool,
}

impl State<'_> {
    /// The sandboxed half.
    fn sandboxed(&mut self, policy: &Policy, argv: Vec<OsString>) -> Result<RunOutcome, Error> {
        let mut seen = Vec::new();
        let r = self
            .runner
            .run(policy, argv, &mut |w| seen.push(w.to_string()));
        for w in seen {
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
        }
        r
    }
}

/// Runs a no-op in the sandbox with the strict default policy. When a layer cannot be
/// enforced, records that as a failure and continues in degraded mode, so that the
/// report still shows what holds on this host.
fn preflight(st: &mut State<'_>, report: &mut Report) {
    let id = "sandbox/starts";
    let what = "the default policy is fully enforceable and a command starts in the sandbox";
    let mut case = CaseResult {
        id: id.into(),
        kind: Kind::Compat,
        what: what.into(),
        status: Status::Pass,
        reason: String::new(),
        tools: Vec::new(),
        control: None,
    };
    let argv = st.env.probe_argv(id, "noop", &[]);
    let marker = st.env.marker(id);
    let policy = match st.env.policy(false) {
        Ok(p) => p,
        Err(e) => {
            case.status = Status::Fail;
            case.reason = format!("cannot build the default policy: {e}");
            report.cases.push(case);
            return;
        }
    };
    match st.sandboxed(&policy, argv.clone()) {
        Err(Error::NotEnforceable(why)) => {
            report.degraded = Some(why.clone());
            st.allow_degraded = true;
            case.status = Status::Fail;
            case.reason = format!(
                "not fully enforceable here ({why}); the other cases ran with --allow-degraded"
            );
            if let Ok(p) = st.env.policy(true) {
                if let Err(e) = st.sandboxed(&p, argv) {
                    case.reason += &format!("; even degraded, no command starts: {e}");
                }
            }
        }
        Err(e) => {
            case.status = Status::Fail;
            case.reason = format!("no command starts in the sandbox: {e}");
        }
        Ok(o) if o.code == 0 && marker.exists() => {
            case.reason = "a no-op ran with the strict default policy".into();
        }
        Ok(o) => {
            case.status = Status::Fail;
            case.reason = format!("the no-op probe {}", describe_exit(&o));
        }
    }
    report.cases.push(case);
}

fn describe_exit(o: &RunOutcome) -> String {
    match &o.message {
        Some(m) => format!("exited {} ({m})", o.code),
        None => format!("exited {}", o.code),
    }
}

/// What a case's `prepare` hands to its judge.
#[derive(Default)]
struct Fixture {
    /// A host listener (network cases).
    listener: Option<TcpListener>,
    /// A host process (the kill case's victim, the listener case's client).
    child: Option<HostChild>,
    /// Free-form state (an ACL listing, a commit count).
    note: String,
    /// Extra argv for the case.
    args: Vec<OsString>,
    /// Extra policy tweaks: variables to set.
    env_set: Vec<(String, String)>,
    /// Extra policy tweaks: writable roots beyond the workspace.
    allow_write: Vec<PathBuf>,
}

/// A host process the self-test started; killed and reaped when dropped.
struct HostChild(Child);

impl Drop for HostChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Prepare = fn(&Env) -> Result<Fixture, String>;
type Argv = fn(&Env, &str, &Fixture) -> Vec<OsString>;
/// Attack: did it take effect (`Ok(true)`)? Compat: did it work?
type Judge = fn(&Env, &mut Fixture) -> Result<bool, String>;
type Cleanup = fn(&Env);

/// One entry of the catalogue.
struct Case {
    id: &'static str,
    kind: Kind,
    what: &'static str,
    /// Programs needed (found in PATH; `python` is special-cased).
    tools: &'static [&'static str],
    /// Not on this OS: the reason.
    unavailable: Option<&'static str>,
    /// For attacks whose control depends on an optional host service: a failing
    /// control is a skip with this reason, not a failure.
    control_needs: Option<&'static str>,
    /// For attacks the OS itself lets through (documented as a platform limit and
    /// reported by `explain` and `doctor`): a sandboxed half that took effect is a
    /// skip naming the limit, not a failure; a block still passes.
    platform_limit: Option<&'static str>,
    prepare: Prepare,
    argv: Argv,
    judge: Judge,
    cleanup: Cleanup,
}

fn no_prepare(_: &Env) -> Result<Fixture, String> {
    Ok(Fixture::default())
}

fn no_cleanup(_: &Env) {}

fn tool_path(env: &Env, t: &str) -> Option<PathBuf> {
    match t {
        "python" => python(),
        "git" => env.git.clone(),
        other => find_program(other),
    }
}

fn run_case(st: &mut State<'_>, case: &Case) -> CaseResult {
    let mut r = CaseResult {
        id: case.id.into(),
        kind: case.kind,
        what: case.what.into(),
        status: Status::Skipped,
        reason: String::new(),
        tools: case.tools.iter().map(|t| (*t).to_string()).collect(),
        control: None,
    };
    if let Some(why) = case.unavailable {
        r.reason = why.into();
        return r;
    }
    for t in case.tools {
        if tool_path(&st.env, t).is_none() {
            r.reason = format!("{t} is not installed (not found in PATH)");
            return r;
        }
    }
    let mut policy = match st.env.policy(st.allow_degraded) {
        Ok(p) => p,
        Err(e) => {
            r.status = Status::Fail;
            r.reason = format!("cannot build the policy: {e}");
            return r;
        }
    };
    if case.kind == Kind::Attack {
        policy.limits.timeout = Some(ATTACK_TIMEOUT);
    }
    match case.kind {
        Kind::Compat => compat(st, case, policy, &mut r),
        Kind::Attack => attack(st, case, policy, &mut r),
    }
    (case.cleanup)(&st.env);
    r
}

fn with_env(mut policy: Policy, fx: &Fixture) -> Policy {
    for (k, v) in &fx.env_set {
        policy.env.set.insert(k.clone(), v.clone());
    }
    for p in &fx.allow_write {
        policy.allow_write.push(workfence_policy::SourcedPath {
            path: p.clone(),
            source: workfence_policy::Source::Cli,
        });
    }
    policy
}

/// Runs one half; `Err` when the command could not be run at all.
fn half(
    st: &mut State<'_>,
    case: &Case,
    policy: &Policy,
    sandboxed: bool,
) -> Result<(RunOutcome, Fixture, bool), String> {
    let marker = st.env.marker(case.id);
    let _ = fs::remove_file(&marker);
    let fx = (case.prepare)(&st.env).map_err(|e| format!("preparing the case failed: {e}"))?;
    let policy = with_env(policy.clone(), &fx);
    let argv = (case.argv)(&st.env, case.id, &fx);
    let out = if sandboxed {
        st.sandboxed(&policy, argv.clone())
    } else {
        direct(&policy, &argv)
    };
    let out = out.map_err(|e| format!("could not run: {e}"))?;
    // Cases that do not go through the probe (the shell cases) count as started.
    let uses_probe = argv.get(1).is_some_and(|a| a == PROBE_ARG);
    let started = !uses_probe || marker.exists();
    Ok((out, fx, started))
}

/// What the probe wrote after `started` (its error), one line, with the temporary
/// directory shortened to `<tmp>`.
fn probe_note(env: &Env, id: &str) -> String {
    let text = fs::read_to_string(env.marker(id)).unwrap_or_default();
    text.lines()
        .filter(|l| *l != "started")
        .collect::<Vec<_>>()
        .join("; ")
        .replace(&*env.root.to_string_lossy(), "<tmp>")
}

fn compat(st: &mut State<'_>, case: &Case, policy: Policy, r: &mut CaseResult) {
    // Control: a tool that fails without the sandbox says nothing about the sandbox.
    match half(st, case, &policy, false) {
        Ok((o, mut fx, _)) => {
            let worked = o.code == 0 && matches!((case.judge)(&st.env, &mut fx), Ok(true));
            if !worked {
                r.reason = format!(
                    "fails without the sandbox too ({}): {}",
                    describe_exit(&o),
                    log_tail(&st.env, case.id)
                );
                return;
            }
        }
        Err(e) => {
            r.reason = format!("fails without the sandbox too: {e}");
            return;
        }
    }
    r.control = Some("succeeded (works without the sandbox)".into());
    (case.cleanup)(&st.env);
    match half(st, case, &policy, true) {
        Err(e) => {
            r.status = Status::Fail;
            r.reason = e;
        }
        Ok((o, mut fx, started)) => match (case.judge)(&st.env, &mut fx) {
            Ok(true) if o.code == 0 => {
                r.status = Status::Pass;
                r.reason = "works in the sandbox".into();
            }
            Ok(_) => {
                r.status = Status::Fail;
                r.reason = format!(
                    "broken in the sandbox ({}){}: {}",
                    describe_exit(&o),
                    if started {
                        ""
                    } else {
                        "; the probe that starts the tool never ran"
                    },
                    log_tail(&st.env, case.id)
                );
            }
            Err(e) => {
                r.status = Status::Fail;
                r.reason = format!("broken in the sandbox ({}): {e}", describe_exit(&o));
            }
        },
    }
}

fn attack(st: &mut State<'_>, case: &Case, policy: Policy, r: &mut CaseResult) {
    // Control first: the same argv without the sandbox must show the attack working.
    let control = half(st, case, &policy, false).and_then(|(o, mut fx, started)| {
        if !started {
            return Err(format!(
                "the probe {} did not start ({}); it must be a workfence executable whose main calls workfence::helper_main_if_requested() first",
                st.env.probe.display(),
                describe_exit(&o)
            ));
        }
        match (case.judge)(&st.env, &mut fx) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "the attack had no effect ({}{})",
                describe_exit(&o),
                match probe_note(&st.env, case.id) {
                    n if n.is_empty() => String::new(),
                    n => format!("; probe: {n}"),
                }
            )),
            Err(e) => Err(e),
        }
    });
    (case.cleanup)(&st.env);
    if let Err(e) = control {
        r.control = Some(format!("did not succeed: {e}"));
        match case.control_needs {
            Some(need) => {
                r.status = Status::Skipped;
                r.reason = format!("needs {need}: the control did not succeed ({e})");
            }
            None => {
                r.status = Status::Fail;
                r.reason = format!(
                    "the control (the same action without the sandbox) did not succeed, so a block would prove nothing: {e}"
                );
            }
        }
        return;
    }
    r.control = Some("succeeded (the attack works without the sandbox)".into());
    match half(st, case, &policy, true) {
        Err(e) => {
            r.status = Status::Fail;
            r.reason = e;
        }
        Ok((o, mut fx, started)) => {
            if !started {
                r.status = Status::Fail;
                r.reason = format!(
                    "the probe did not start in the sandbox ({}): a setup failure is not a block",
                    describe_exit(&o)
                );
                return;
            }
            match (case.judge)(&st.env, &mut fx) {
                Ok(false) => {
                    r.status = Status::Pass;
                    let note = probe_note(&st.env, case.id);
                    r.reason = if note.is_empty() {
                        "blocked".into()
                    } else {
                        format!("blocked ({note})")
                    };
                }
                Ok(true) if case.platform_limit.is_some() => {
                    r.status = Status::Skipped;
                    r.reason = format!(
                        "NOT blocked, a platform limit (reported, not refused): {}",
                        case.platform_limit.unwrap_or_default()
                    );
                }
                Ok(true) => {
                    r.status = Status::Fail;
                    r.reason = "NOT blocked: the attack took effect on the host".into();
                }
                Err(e) => {
                    r.status = Status::Fail;
                    r.reason = format!("cannot judge: {e}");
                }
            }
        }
    }
}

/// The end of a compat case's output file, one line.
fn log_tail(env: &Env, id: &str) -> String {
    let p = env.ws.join(format!(".selftest-{}.log", slug(id)));
    let text = fs::read_to_string(p).unwrap_or_default();
    let one = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let n = one.chars().count();
    if n > 300 {
        format!("...{}", one.chars().skip(n - 300).collect::<String>())
    } else if one.is_empty() {
        "(no output)".into()
    } else {
        one
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricting_set_is_widened_only_on_request_and_never_to_everyone() {
        use workfence_windows::RestrictingSet::{Everyone, Narrow, Restricted};
        // After a reboot the null device grant is gone: never measure (compat/null-device
        // would fail under narrow and pass under restricted), say how to fix it.
        for flag in [false, true] {
            match measure_plan(flag, Some(false), Narrow) {
                MeasurePlan::Skip(why) => {
                    assert!(why.contains("run `workfence setup`"), "{why}");
                    assert!(why.contains("null device"), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Without the flag: report, change nothing.
        for granted in [None, Some(true)] {
            match measure_plan(false, granted, Restricted) {
                MeasurePlan::Skip(why) => {
                    assert!(why.contains("restricted in use"), "{why}");
                    assert!(why.contains("--measure-restricting-set"), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
        // With it: narrowest first, and never everyone.
        assert_eq!(
            measure_plan(true, Some(true), Narrow),
            MeasurePlan::Try(vec![Narrow, Restricted])
        );
        assert_eq!(
            measure_plan(true, None, Everyone),
            MeasurePlan::Try(vec![Narrow, Restricted])
        );
    }

    #[test]
    fn catalogue_ids_are_unique_and_name_their_set() {
        let cases = catalogue();
        let mut ids: Vec<&str> = cases.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate case ids");
        for c in &cases {
            let prefix = match c.kind {
                Kind::Compat => "compat/",
                Kind::Attack => "attack/",
            };
            assert!(c.id.starts_with(prefix), "{}", c.id);
            assert!(!c.what.is_empty(), "{}", c.id);
        }
        // Only WebDAV and loopback SMB (an optional service), the integrity case (an
        // elevated prompt), and the Windows cases that need an observer the host may
        // lack (ICMP statistics, an interactive desktop, a second `workfence run`, the
        // DNS cache) have a control that may not succeed here; every other control
        // that does not succeed is a failure.
        let optional: Vec<&str> = cases
            .iter()
            .filter(|c| c.control_needs.is_some())
            .map(|c| c.id)
            .collect();
        assert_eq!(
            optional,
            [
                "attack/windows-webdav",
                "attack/windows-smb-loopback",
                "attack/windows-integrity",
                "attack/windows-icmp",
                "attack/windows-desktop-input",
                "attack/windows-runner-open",
                "attack/windows-other-run-pipe",
                "attack/windows-dns-dnscache",
            ]
        );
        // A platform limit is reported, not failed: only what Windows does for the
        // command (ping's kernel-sent echoes, the DNS Client service's lookups), which
        // explain and doctor report as a limit of Windows.
        let limits: Vec<&str> = cases
            .iter()
            .filter(|c| c.platform_limit.is_some())
            .map(|c| c.id)
            .collect();
        assert_eq!(
            limits,
            ["attack/windows-icmp", "attack/windows-dns-dnscache"]
        );
    }

    #[test]
    fn the_compatibility_set_covers_the_issue() {
        let ids: Vec<&str> = catalogue().iter().map(|c| c.id).collect();
        for id in [
            "compat/shell",
            "compat/null-device",
            "compat/git-status",
            "compat/git-commit",
            "compat/python-multiprocessing",
            "compat/node-child-process",
            "compat/cargo-build",
            "compat/cc-make",
            "compat/powershell",
            "attack/windows-icacls",
            "attack/windows-named-pipe",
            "attack/windows-webdav",
            "attack/windows-own-file-dacl",
            "attack/windows-smb-loopback",
            "attack/windows-integrity",
            "attack/windows-junction-grant",
        ] {
            assert!(ids.contains(&id), "{id}");
        }
    }

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("attack/git-rename"), "attack-git-rename");
        assert!(slug("a/../b c")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[cfg(unix)]
    #[test]
    fn find_program_finds_sh_and_not_nonsense() {
        assert!(find_program("sh").is_some());
        assert!(find_program("workfence-no-such-program-here").is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_control_runs_directly_and_honours_the_timeout() {
        let mut p = Policy::new(std::env::temp_dir());
        p.limits.timeout = Some(Duration::from_millis(200));
        let ok = direct(&p, &["true".into()]).expect("true runs");
        assert_eq!(ok.code, 0);
        let slow = direct(&p, &["sleep".into(), "5".into()]).expect("sleep runs");
        assert_eq!(slow.code, workfence_policy::run::EXIT_TIMEOUT);
        assert!(direct(&p, &[]).is_err());
    }

    #[test]
    fn status_names_match_the_json() {
        for s in [Status::Pass, Status::Fail, Status::Skipped] {
            assert_eq!(
                serde_json::to_value(s).expect("json"),
                serde_json::Value::String(s.as_str().into())
            );
        }
    }
}
