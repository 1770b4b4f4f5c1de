//! # workfence
//!
//! Run a command, and everything it spawns, inside an OS-enforced sandbox: writes
//! only to the workspace and a private temp dir (with git hooks, git config and agent
//! config kept read-only), secrets hidden, network off unless enabled, and the whole
//! process tree killed with the command.
//!
//! This crate is the library facade: it reads the configuration, inspects the host
//! and dispatches to the backend of the running OS (`workfence-linux`,
//! `workfence-macos`, `workfence-windows`). The `workfence` CLI is a thin layer on top.
//!
//! ```no_run
//! use workfence::{load_policy, run};
//! use workfence_policy::resolve::CliOverrides;
//! let resolved = load_policy(CliOverrides::default())?;
//! let outcome = run(&resolved.policy, vec!["cargo".into(), "test".into()], &mut |w| {
//!     eprintln!("warning: {w}")
//! })?;
//! if let Some(why) = &outcome.message {
//!     eprintln!("{why}");
//! }
//! std::process::exit(outcome.code);
//! # Ok::<(), workfence::Error>(())
//! ```

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use workfence_policy::config::{ConfigError, ConfigFile};
use workfence_policy::env::RemovedVar;
use workfence_policy::layout::{self, FsLayout, LayoutError};
use workfence_policy::resolve::{resolve, CliOverrides, Layers, Resolved};
pub use workfence_policy::run::RunOutcome;
use workfence_policy::run::RunRequest;
use workfence_policy::Enforcement;
use workfence_policy::{ExecDecision, LayerStatus, Mode, Policy};

pub use workfence_policy as policy;

pub mod network;
pub mod selftest;

/// Errors of the facade. The CLI prints them as one line and exits 125.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A config file could not be read.
    #[error("cannot read config file {path}: {source}; fix its permissions or remove it")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The filesystem layout cannot be built.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The Linux backend failed.
    #[error(transparent)]
    Linux(#[from] workfence_linux::LinuxError),
    /// The macOS backend failed.
    #[error(transparent)]
    Macos(#[from] workfence_macos::MacError),
    /// The Windows backend failed.
    #[error(transparent)]
    Windows(#[from] workfence_windows::WindowsError),
    /// A layer cannot be enforced and degraded mode was not allowed.
    #[error("refusing to run: {0}. Fix the host (see `workfence doctor`), or pass --allow-degraded to run with what is enforceable")]
    NotEnforceable(String),
    /// The exec rules forbid the command.
    #[error("the exec rules {0} this command; it was not run")]
    ExecRule(&'static str),
    /// No command.
    #[error("no command given: use `workfence run [OPTIONS] -- COMMAND [ARGS...]`")]
    NoCommand,
    /// Running without a sandbox failed.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// This OS has no backend here.
    #[error("{0}")]
    Unsupported(String),
    /// No home directory: secrets could not be located.
    #[error("cannot find the home directory: $HOME is unset (or not absolute) and uid {0} has no home in the passwd database; set HOME to an absolute path so that the secrets under it can be hidden")]
    NoHome(u32),
    /// A flag that full-access mode cannot honour.
    #[error("{0}")]
    FullAccess(String),
    /// `selftest --case` named no case.
    #[error("{0}")]
    NoSuchCase(String),
    /// The network allowlist could not be set up.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// The self-test could not build its temporary world.
    #[error("selftest: cannot {step}: {source}; check that the directory is writable, or pass --dir DIR")]
    SelfTest {
        /// What it was doing.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the caller should tell the user before the command runs. The library prints
/// nothing; [`run`] hands these to its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// full-access mode: nothing is enforced.
    FullAccess,
    /// User namespaces are unavailable; running degraded (the reason).
    NoUserNamespaces(String),
    /// Degraded mode: what is not (fully) enforced.
    Degraded(Vec<LayerStatus>),
    /// A backend's note for the user (Windows: a grant that could not be applied, a
    /// degraded plan, a tidy-up that failed).
    Backend(String),
}

impl std::fmt::Display for Warning {
    /// One or more lines, without a prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::FullAccess => write!(f, "full-access mode: running WITHOUT a sandbox"),
            Warning::NoUserNamespaces(why) => write!(f, "user namespaces are unavailable ({why})"),
            Warning::Backend(note) => write!(f, "{note}"),
            Warning::Degraded(gaps) => {
                write!(f, "DEGRADED sandbox (--allow-degraded). NOT enforced:")?;
                for g in gaps {
                    let state = match g.state {
                        Enforcement::None => "not enforced",
                        Enforcement::Partial => "partly enforced",
                        Enforcement::Full => "enforced",
                    };
                    write!(f, "\n  - {} [{state}]: {}", g.layer, g.detail)?;
                }
                Ok(())
            }
        }
    }
}

pub use workfence_policy::layout::StdProbe;

/// The user's home directory, and a warning when `$HOME` and the passwd database
/// disagree.
///
/// `$HOME` wins when it is set and absolute (the caller chose it); otherwise the
/// passwd entry of the real uid (services and cron jobs often run without `HOME`).
/// With neither, there is no home to find secrets under: an error (fail closed).
#[cfg(unix)]
pub fn home() -> Result<(PathBuf, Option<String>), Error> {
    let uid = nix::unistd::getuid();
    let env = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute());
    let passwd = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|d| d.is_absolute());
    match (env, passwd) {
        (Some(h), Some(p)) => {
            let same =
                h == p || matches!((h.canonicalize(), p.canonicalize()), (Ok(a), Ok(b)) if a == b);
            let warning = (!same).then(|| {
                format!(
                    "$HOME ({}) is not the home of uid {uid} in the passwd database ({}); hiding the secrets under $HOME only: pass --deny-read for secrets under {}",
                    h.display(),
                    p.display(),
                    p.display()
                )
            });
            Ok((h, warning))
        }
        (Some(h), None) => Ok((h, None)),
        (None, Some(p)) => Ok((p, None)),
        (None, None) => Err(Error::NoHome(uid.as_raw())),
    }
}

/// The user's home directory (`$HOME`, else `/`).
#[cfg(not(unix))]
pub fn home() -> Result<(PathBuf, Option<String>), Error> {
    Ok((
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
            .unwrap_or_else(|| PathBuf::from("/")),
        None,
    ))
}

/// The user's home directory (see [`home`]).
pub fn home_dir() -> Result<PathBuf, Error> {
    Ok(home()?.0)
}

/// The user config file: `$XDG_CONFIG_HOME/workfence/config.toml`
/// (default `~/.config/workfence/config.toml`).
pub fn user_config_path() -> Result<PathBuf, Error> {
    let base = match std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(p) => p,
        None => home_dir()?.join(".config"),
    };
    Ok(base.join("workfence/config.toml"))
}

fn read_config(path: &Path) -> Result<Option<ConfigFile>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(ConfigFile::parse(path, &text)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::ReadConfig {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Reads the user and workspace config files and resolves the effective policy.
pub fn load_policy(cli: CliOverrides) -> Result<Resolved, Error> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let (home, home_warning) = home()?;
    let user = read_config(&user_config_path()?)?;
    let ws = workfence_policy::resolve::absolutize(&cwd, cli.workspace.as_deref().unwrap_or(&cwd));
    let workspace_config = read_config(&ws.join(".workfence/config.toml"))?;
    let mut resolved = resolve(&Layers {
        home,
        cwd,
        user,
        workspace_config,
        cli,
    })?;
    resolved.warnings.extend(home_warning);
    Ok(resolved)
}

/// The filesystem layout of a policy on this host.
pub fn compute_layout(policy: &Policy) -> Result<FsLayout, Error> {
    Ok(layout::compute(policy, &home_dir()?, &StdProbe)?)
}

fn check_exec_rules(policy: &Policy, argv: &[OsString]) -> Result<(), Error> {
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match policy.exec_decision(&argv) {
        Some(ExecDecision::Forbidden) => Err(Error::ExecRule("forbid")),
        Some(ExecDecision::Prompt) => Err(Error::ExecRule("require approval for")),
        _ => Ok(()),
    }
}

/// The command's environment and what was taken out of the inherited one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEnv {
    /// The variables the command gets.
    pub vars: Vec<(String, String)>,
    /// The inherited variables removed, with the reason (names only, never values),
    /// for `explain` and the run's report.
    pub removed: Vec<RemovedVar>,
}

/// The environment the command gets: the inherited one with secrets removed (by
/// name, by token-shaped value, host pointers and the policy's deny list).
pub fn command_env(policy: &Policy) -> CommandEnv {
    let inherited = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let (vars, removed) = workfence_policy::env::scrub(&policy.env, inherited);
    CommandEnv { vars, removed }
}

/// Whether a secret pattern (absolute; `*` allowed in the last component) names
/// anything on this host now.
fn pattern_exists(p: &Path) -> bool {
    if !workfence_policy::secrets::is_wildcard(p) {
        return std::fs::symlink_metadata(p).is_ok();
    }
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return false;
    };
    let name = name.to_string_lossy();
    std::fs::read_dir(parent).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| workfence_policy::secrets::glob_match(&name, &e.file_name().to_string_lossy()))
    })
}

/// The secret patterns that match nothing now: they stay guarded (on Linux and
/// macOS a file created there during the run is unreadable too).
fn missing_secrets(p: &Policy) -> Vec<&workfence_policy::SourcedPath> {
    p.deny_read
        .iter()
        .filter(|d| !pattern_exists(&d.path))
        .collect()
}

/// The table entry (tool) of a default secret pattern, for explain.
fn secret_tool(d: &workfence_policy::SourcedPath) -> Option<&'static str> {
    if d.source != workfence_policy::Source::Default {
        return None;
    }
    let home = home_dir().ok()?;
    workfence_policy::secrets::for_os(std::env::consts::OS)
        .find(|s| workfence_policy::resolve::expand_home(&home, Path::new(&s.path)) == d.path)
        .map(|s| s.tool.as_str())
}

/// Runs `argv` under `policy`. Returns the exit status per the CLI contract (the
/// command's own; 128+N when killed by signal N; 124 on timeout; 126/127), with the
/// reason when workfence chose the status. Warnings for the user go to `warn` before
/// the command starts; the library prints nothing.
pub fn run(
    policy: &Policy,
    argv: Vec<OsString>,
    warn: &mut dyn FnMut(Warning),
) -> Result<RunOutcome, Error> {
    if argv.is_empty() {
        return Err(Error::NoCommand);
    }
    // First, before workfence opens any fd of its own (audit files, the proxy's
    // socketpair), so that a kept fd number can only be the caller's.
    workfence_linux::check_keep_fds(&policy.keep_fds)?;
    check_exec_rules(policy, &argv)?;
    let proxied = matches!(policy.network, workfence_policy::Network::Proxy(_));
    if policy.audit_log.is_some() && !proxied {
        return Err(network::NetworkError::AuditWithoutAllowlist.into());
    }
    if policy.mode == Mode::FullAccess {
        if proxied {
            return Err(network::NetworkError::FullAccess.into());
        }
        return run_unsandboxed(policy, argv, warn);
    }
    let layout = compute_layout(policy)?;
    let req = RunRequest {
        argv,
        env: command_env(policy).vars,
        cwd: layout.cwd.clone(),
        timeout: policy.limits.timeout,
        pty: policy.pty,
        keep_fds: policy.keep_fds.clone(),
        proxy_socket: None,
    };
    run_backend(policy, &layout, &req, warn)
}

/// full-access: no sandbox, but the run flags still hold: `--env-set` sets,
/// `--keep-fd` passes the fd, `--timeout` kills the command's whole process group
/// (exit 124). `--pty` is refused.
fn run_unsandboxed(
    policy: &Policy,
    argv: Vec<OsString>,
    warn: &mut dyn FnMut(Warning),
) -> Result<RunOutcome, Error> {
    if policy.pty {
        return Err(Error::FullAccess(
            "--pty is not supported with --mode full-access (no sandbox allocates a terminal there); run without --pty, or in a sandboxed mode".into(),
        ));
    }
    workfence_linux::check_keep_fds(&policy.keep_fds)?;
    warn(Warning::FullAccess);
    workfence_linux::inherit_fds(&policy.keep_fds)?;
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&policy.cwd)
        .envs(&policy.env.set);
    #[cfg(unix)]
    if policy.limits.timeout.is_some() {
        // Its own process group, so that the timeout kills every descendant.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Spawn(argv[0].to_string_lossy().into_owned(), e))?;
    let spawn_err = |e| Error::Spawn(argv[0].to_string_lossy().into_owned(), e);
    let status = match policy.limits.timeout {
        None => child.wait().map_err(spawn_err)?,
        Some(t) => {
            let deadline = std::time::Instant::now() + t;
            loop {
                if let Some(st) = child.try_wait().map_err(spawn_err)? {
                    break st;
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    kill_tree(&mut child);
                    return Ok(RunOutcome::because(
                        workfence_policy::run::EXIT_TIMEOUT,
                        workfence_policy::run::timeout_message(t),
                    ));
                }
                std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(20)));
            }
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return Ok(RunOutcome::status(128 + sig));
        }
    }
    Ok(RunOutcome::status(status.code().unwrap_or(1)))
}

/// Kills the command's process group (unix) or the command (elsewhere) and reaps it.
fn kill_tree(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{killpg, Signal};
        let _ = killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn gaps_text(gaps: &[LayerStatus]) -> String {
    gaps.iter()
        .map(|g| format!("{} ({})", g.layer, g.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(target_os = "linux")]
fn run_backend(
    policy: &Policy,
    layout: &FsLayout,
    req: &RunRequest,
    warn: &mut dyn FnMut(Warning),
) -> Result<RunOutcome, Error> {
    use workfence_linux::{Isolation, LinuxError};
    let plan = linux_plan(policy, layout)?;
    if !plan.gaps.is_empty() {
        if !policy.allow_degraded {
            return Err(Error::NotEnforceable(gaps_text(&plan.gaps)));
        }
        warn(Warning::Degraded(plan.gaps.clone()));
    }
    if plan.proxy.is_some() {
        return run_linux_proxied(policy, &plan, req, warn);
    }
    match workfence_linux::run(&plan, req) {
        // Only "user namespaces are unavailable" may degrade; EAGAIN, ENOMEM and other
        // clone failures are LinuxError::Clone, a hard error.
        Err(e @ LinuxError::UserNamespace { .. }) if policy.allow_degraded => {
            let facts = linux_facts(policy, layout, true);
            let plan = workfence_linux::plan(policy, layout, &facts, Isolation::Degraded)
                .map_err(LinuxError::from)?;
            let why = match &e {
                LinuxError::UserNamespace { errno, cause, .. } => format!(
                    "clone: {}: {cause}",
                    std::io::Error::from_raw_os_error(*errno)
                ),
                _ => e.to_string(),
            };
            warn(Warning::NoUserNamespaces(why));
            warn(Warning::Degraded(plan.gaps.clone()));
            Ok(workfence_linux::run(&plan, req)?)
        }
        other => Ok(other?),
    }
}

#[cfg(target_os = "linux")]
/// Sets `vars` in `env`, replacing variables of the same name; `JAVA_TOOL_OPTIONS`
/// keeps the command's own options after workfence's.
fn set_env(env: &mut Vec<(String, String)>, vars: &[(String, String)]) {
    for (k, v) in vars {
        let value = match env.iter().find(|(n, _)| n == k) {
            Some((_, old)) if k == "JAVA_TOOL_OPTIONS" && !old.is_empty() => format!("{v} {old}"),
            _ => v.clone(),
        };
        env.retain(|(n, _)| n != k);
        env.push((k.clone(), value));
    }
}

/// A Linux run with a network allowlist: the proxy serves the socket the sandbox
/// hands over. No degraded fallback: the allowlist needs the network namespace.
#[cfg(target_os = "linux")]
fn run_linux_proxied(
    policy: &Policy,
    plan: &workfence_linux::LinuxPlan,
    req: &RunRequest,
    warn: &mut dyn FnMut(Warning),
) -> Result<RunOutcome, Error> {
    let (Some(bridge), workfence_policy::Network::Proxy(net)) = (&plan.proxy, &policy.network)
    else {
        return Err(Error::Unsupported(
            "internal: a proxy plan without a network allowlist".into(),
        ));
    };
    let argv: Vec<String> = req
        .argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let config = network::proxy_config(net, &argv)?;
    let mut notes = Vec::new();
    let home = home_dir()?;
    let sink = network::audit_sinks(&home, policy.audit_log.as_deref(), &mut notes)?;
    for n in notes {
        warn(Warning::Backend(n));
    }
    let mut proxy =
        network::ProxyRun::new(config, sink, bridge.listen, bridge.transparent.clone())?;
    let mut req = req.clone();
    set_env(&mut req.env, &bridge.env);
    req.proxy_socket = proxy.sandbox_end();
    let mut start_error = None;
    let result = workfence_linux::run_with(plan, &req, &mut || {
        if let Err(e) = proxy.start() {
            start_error = Some(e);
        }
    });
    let (denials, failure) = proxy.finish();
    if let Some(e) = start_error {
        warn(Warning::Backend(format!(
            "{e}; the command ran without its proxy, so none of its connections got through"
        )));
    }
    if let Some(why) = failure {
        warn(Warning::Backend(format!(
            "network proxy: {why}; the command's connections through it failed"
        )));
    }
    let mut outcome = match result {
        Err(workfence_linux::LinuxError::UserNamespace { errno, cause, .. }) => {
            return Err(network::NetworkError::NeedsNamespace(format!(
                "clone: {}: {cause}",
                std::io::Error::from_raw_os_error(errno)
            ))
            .into())
        }
        other => other?,
    };
    outcome.denials = denials.iter().map(network::to_denial).collect();
    Ok(outcome)
}

/// Why this OS cannot run a network allowlist, when it cannot. Degraded mode does not
/// change this: a run without the proxy would have no network or all of it.
fn network_unsupported(policy: &Policy) -> Option<String> {
    if !matches!(policy.network, workfence_policy::Network::Proxy(_)) || cfg!(target_os = "linux") {
        return None;
    }
    Some(format!(
        "network allowlists (--network allow=...) are enforced only on Linux in this version: the {} path is built and plan-tested but has not been tested end to end; use --network off or on",
        if cfg!(windows) { "Windows" } else { std::env::consts::OS }
    ))
}

#[cfg(target_os = "macos")]
fn run_backend(
    policy: &Policy,
    layout: &FsLayout,
    req: &RunRequest,
    warn: &mut dyn FnMut(Warning),
) -> Result<RunOutcome, Error> {
    if let Some(why) = network_unsupported(policy) {
        return Err(Error::Unsupported(why));
    }
    // Only limits the user asked for refuse the run; the built-in process cap is
    // not one of them (workfence_macos::not_enforced_defaults, shown by explain).
    let gaps = workfence_macos::unenforced(policy);
    if !gaps.is_empty() {
        if !policy.allow_degraded {
            return Err(Error::NotEnforceable(gaps_text(&gaps)));
        }
        warn(Warning::Degraded(gaps));
    }
    if let Some(hint) = workfence_macos::command_hint(&req.argv) {
        warn(Warning::Backend(hint));
    }
    let ctx = workfence_macos::MacContext::detect(policy)?;
    let profile = workfence_macos::profile(policy, layout, &ctx)?;
    let r = workfence_macos::run(&profile, req);
    ctx.discard();
    Ok(RunOutcome::status(r?))
}

#[cfg(windows)]
fn run_backend(
    policy: &Policy,
    layout: &FsLayout,
    req: &RunRequest,
    warn: &mut dyn FnMut(Warning),
) -> Result<RunOutcome, Error> {
    if let Some(why) = network_unsupported(policy) {
        return Err(Error::Unsupported(why));
    }
    let ctx = workfence_windows::WindowsContext::detect(policy)?;
    let plan = workfence_windows::plan(policy, layout, &ctx)?;
    Ok(workfence_windows::run(&plan, req, &mut |n| {
        warn(Warning::Backend(n))
    })?)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
fn run_backend(
    _policy: &Policy,
    _layout: &FsLayout,
    _req: &RunRequest,
    _warn: &mut dyn FnMut(Warning),
) -> Result<RunOutcome, Error> {
    Err(Error::Unsupported(format!(
        "no workfence backend for {}",
        std::env::consts::OS
    )))
}

#[cfg(unix)]
fn is_root() -> bool {
    workfence_linux::is_global_root()
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

/// The OS whose plan `explain` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Linux: mounts, Landlock, seccomp.
    Linux,
    /// macOS: the Seatbelt profile.
    Macos,
    /// Windows: token, ACEs, firewall filters, job.
    Windows,
}

impl Target {
    /// The OS this build runs on.
    pub fn current() -> Target {
        if cfg!(target_os = "macos") {
            Target::Macos
        } else if cfg!(windows) {
            Target::Windows
        } else {
            Target::Linux
        }
    }
}

/// The host facts of a Linux plan, the same for `run` and `explain`. A cgroup is
/// looked for only when the plan may need one: for memory or CPU limits, or as
/// root's task cap on kernels without a per-namespace pid_max.
fn linux_facts(p: &Policy, layout: &FsLayout, degraded: bool) -> workfence_linux::HostFacts {
    let want_cgroup =
        is_root() || p.limits.memory_bytes.is_some() || p.limits.cpu_percent.is_some();
    workfence_linux::host_facts(
        p,
        layout,
        degraded,
        want_cgroup && cfg!(target_os = "linux"),
    )
}

/// The namespace plan for this host's facts: the one `run` starts from, `explain`
/// shows and `refusal` judges.
fn linux_plan(p: &Policy, layout: &FsLayout) -> Result<workfence_linux::LinuxPlan, Error> {
    let facts = linux_facts(p, layout, false);
    Ok(
        workfence_linux::plan(p, layout, &facts, workfence_linux::Isolation::Namespaces)
            .map_err(workfence_linux::LinuxError::from)?,
    )
}

/// The effective policy (with where each value came from) and the platform plan, as text.
pub fn explain(resolved: &Resolved, target: Target) -> Result<String, Error> {
    let p = &resolved.policy;
    let mut s = String::new();
    let src = |k: &str| p.source_of(k).to_string();
    let _ = writeln!(s, "Effective policy");
    let _ = writeln!(
        s,
        "  mode:        {:<24} ({})",
        p.mode.as_str(),
        src("mode")
    );
    let _ = writeln!(
        s,
        "  workspace:   {:<24} ({})",
        p.workspace.display(),
        src("workspace")
    );
    let _ = writeln!(s, "  cwd:         {:<24} ({})", p.cwd.display(), src("cwd"));
    let _ = writeln!(
        s,
        "  network:     {:<24} ({})",
        p.network.name(),
        src("network")
    );
    if let workfence_policy::Network::Proxy(n) = &p.network {
        let _ = write!(s, "{}", network::describe(n));
    }
    let _ = writeln!(
        s,
        "  max procs:   {:<24} ({})",
        p.limits.max_processes,
        src("max_processes")
    );
    let _ = writeln!(
        s,
        "  memory:      {:<24} ({})",
        p.limits
            .memory_bytes
            .map_or("unlimited".into(), workfence_policy::units::format_size),
        src("memory")
    );
    let _ = writeln!(
        s,
        "  tmp size:    {:<24} ({})",
        workfence_policy::units::format_size(p.limits.tmp_bytes),
        src("tmp_size")
    );
    let _ = writeln!(
        s,
        "  timeout:     {:<24} ({})",
        p.limits
            .timeout
            .map_or("none".into(), |t| format!("{}s", t.as_secs_f64())),
        src("timeout")
    );
    let _ = writeln!(
        s,
        "  degraded ok: {:<24} ({})",
        p.allow_degraded,
        src("allow_degraded")
    );
    let _ = writeln!(
        s,
        "  git write:   {:<24} ({})",
        p.git_write,
        src("git_write")
    );
    for w in &resolved.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    if p.mode == Mode::FullAccess {
        let _ = writeln!(s, "\nfull-access: no sandbox, nothing is enforced.");
        return Ok(s);
    }
    let layout = compute_layout(p)?;
    let _ = writeln!(s, "\nWritable roots:");
    if layout.writable.is_empty() {
        let _ = writeln!(s, "  (none besides the private temp dir)");
    }
    for w in &layout.writable {
        let _ = writeln!(s, "  {}  ({:?}; {})", w.path.display(), w.kind, w.source);
    }
    let _ = writeln!(s, "\nProtected inside writable roots:");
    for pr in &layout.protected {
        let _ = writeln!(
            s,
            "  {} {:?}{}  # {}",
            pr.path.display(),
            pr.protection,
            if pr.exists.is_none() {
                " (missing: cannot be created)"
            } else {
                ""
            },
            pr.reason
        );
    }
    let _ = writeln!(s, "\nHidden (secrets present now):");
    for h in &layout.hidden {
        let _ = writeln!(s, "  {}  ({})", h.path.display(), h.source);
    }
    let missing = missing_secrets(p);
    let _ = writeln!(
        s,
        "\nGuarded secret patterns, missing now ({}; {}):",
        missing.len(),
        match target {
            Target::Windows => "Windows denies only paths that exist at the start",
            _ => "unreadable if created during the run",
        }
    );
    for d in &missing {
        match secret_tool(d) {
            Some(tool) => {
                let _ = writeln!(s, "  {}  ({}; {tool})", d.path.display(), d.source);
            }
            None => {
                let _ = writeln!(s, "  {}  ({})", d.path.display(), d.source);
            }
        }
    }
    for n in &layout.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    let removed = command_env(p).removed;
    let _ = writeln!(
        s,
        "\nEnvironment: {} inherited variable(s) removed (values never shown):",
        removed.len()
    );
    for r in &removed {
        let _ = writeln!(s, "  {}  ({})", r.name, r.reason);
    }
    if !p.env.set.is_empty() {
        let _ = writeln!(
            s,
            "  set: {}",
            p.env.set.keys().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    let _ = writeln!(s);
    match target {
        Target::Linux => {
            let plan = linux_plan(p, &layout)?;
            let _ = write!(s, "{plan}");
        }
        Target::Macos => {
            let ctx = workfence_macos::MacContext::example(p);
            let profile = workfence_macos::profile(p, &layout, &ctx)?;
            for g in workfence_macos::unenforced(p) {
                let _ = writeln!(
                    s,
                    "NOT enforced on macOS (refused without --allow-degraded): {}: {}",
                    g.layer, g.detail
                );
            }
            for g in workfence_macos::not_enforced_defaults(p) {
                let _ = writeln!(
                    s,
                    "Not enforced on macOS (a default, not a request): {}: {}",
                    g.layer, g.detail
                );
            }
            let _ = write!(s, "{profile}");
        }
        Target::Windows => {
            let ctx = workfence_windows::WindowsContext::example(p);
            let plan = workfence_windows::plan(p, &layout, &ctx)?;
            let _ = write!(s, "{plan}");
        }
    }
    Ok(s)
}

/// The effective policy, its filesystem layout and the platform plan as JSON, for
/// agents and tools (the text of [`explain`] is for people).
pub fn explain_json(resolved: &Resolved, target: Target) -> Result<serde_json::Value, Error> {
    let p = &resolved.policy;
    let mut out = serde_json::json!({
        "policy": p,
        "warnings": resolved.warnings,
    });
    if p.mode == Mode::FullAccess {
        return Ok(out);
    }
    let layout = compute_layout(p)?;
    let plan = match target {
        Target::Linux => {
            let plan = linux_plan(p, &layout)?;
            serde_json::json!({ "target": "linux", "plan": plan })
        }
        Target::Macos => {
            let ctx = workfence_macos::MacContext::example(p);
            let profile = workfence_macos::profile(p, &layout, &ctx)?;
            serde_json::json!({
                "target": "macos",
                "profile": profile.to_string(),
                "not_enforced": workfence_macos::unenforced(p),
                "defaults_not_enforced": workfence_macos::not_enforced_defaults(p),
            })
        }
        Target::Windows => {
            let ctx = workfence_windows::WindowsContext::example(p);
            let plan = workfence_windows::plan(p, &layout, &ctx)?;
            serde_json::json!({ "target": "windows", "plan": plan })
        }
    };
    out["layout"] = serde_json::to_value(&layout).unwrap_or_default();
    out["secrets_missing"] = serde_json::to_value(missing_secrets(p)).unwrap_or_default();
    out["env_removed"] = serde_json::to_value(command_env(p).removed).unwrap_or_default();
    out["platform"] = plan;
    Ok(out)
}

/// What this host can enforce. The default policy is fully enforceable when every
/// required entry is [`Enforcement::Full`](workfence_policy::Enforcement::Full).
pub fn doctor() -> Vec<LayerStatus> {
    if cfg!(target_os = "macos") {
        // Seatbelt must compile the profile a run here would use (this policy's
        // paths and this host's home and terminals), not only an example.
        let current = load_policy(CliOverrides::default()).and_then(|r| {
            let layout = compute_layout(&r.policy)?;
            Ok((r.policy, layout))
        });
        match current {
            Ok((p, layout)) if p.mode != Mode::FullAccess => {
                workfence_macos::doctor_for(&p, &layout)
            }
            _ => workfence_macos::doctor(),
        }
    } else if cfg!(windows) {
        workfence_windows::doctor()
    } else {
        workfence_linux::doctor()
    }
}

/// Why `run` would refuse `policy` on this host without `--allow-degraded`, from the
/// same plan `run` makes (None: it would run). `doctor` reports it: a layer that is
/// only partly enforced everywhere on an OS (documented in its limitations) does not
/// refuse a run; a layer the policy needs and this host lacks does.
pub fn refusal(policy: &Policy) -> Result<Option<String>, Error> {
    if policy.mode == Mode::FullAccess {
        return Ok(None);
    }
    if let Some(why) = network_unsupported(policy) {
        return Ok(Some(why));
    }
    if policy.allow_degraded {
        return Ok(None);
    }
    let layout = compute_layout(policy)?;
    #[cfg(target_os = "linux")]
    {
        let plan = linux_plan(policy, &layout)?;
        Ok((!plan.gaps.is_empty()).then(|| gaps_text(&plan.gaps)))
    }
    #[cfg(target_os = "macos")]
    {
        let _ = &layout;
        let gaps = workfence_macos::unenforced(policy);
        Ok((!gaps.is_empty()).then(|| gaps_text(&gaps)))
    }
    #[cfg(windows)]
    {
        let ctx = workfence_windows::WindowsContext::detect(policy)?;
        let plan = workfence_windows::plan(policy, &layout, &ctx)?;
        Ok(plan.refusal().map(|e| e.to_string()))
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
    {
        let _ = layout;
        Ok(Some(format!(
            "no workfence backend for {}",
            std::env::consts::OS
        )))
    }
}

/// Windows: the one-time elevated set-up (users, group, firewall filters), or its
/// removal. Other OSes: unsupported.
pub fn setup(uninstall: bool) -> Result<String, Error> {
    Ok(workfence_windows::setup(uninstall)?)
}

/// Windows: restores every journaled ACL change. Other OSes: unsupported.
pub fn cleanup() -> Result<String, Error> {
    Ok(workfence_windows::cleanup()?)
}

/// When this process was started as one of workfence's helpers (on Linux, the
/// library re-executes the current program to build the sandbox from a single
/// thread when it is called from a multi-threaded one; on Windows, the sandbox
/// runner; on every OS, the probe of [`selftest`]), runs it and returns the exit status
/// to exit with; otherwise `None`.
/// Call it first in `main` of every program that uses this library.
pub fn helper_main_if_requested() -> Option<i32> {
    workfence_linux::helper_main_if_requested()
        .or_else(windows_runner_if_requested)
        .or_else(selftest::probe::probe_main_if_requested)
}

/// Windows: when this process was started as the sandbox runner, runs it and returns
/// its exit status. Call first in `main`. Elsewhere always `None`.
pub fn windows_runner_if_requested() -> Option<i32> {
    if cfg!(windows) {
        workfence_windows::runner_main_if_requested()
    } else {
        None
    }
}

#[cfg(test)]
mod macos_refusal_tests {
    use super::*;

    /// Issue 9: on macOS the default policy must run. Only limits the user asked
    /// for are refusals; the built-in process cap is reported as a default.
    #[test]
    fn macos_refuses_only_requested_limits() {
        let ws = std::env::temp_dir().join(format!("wf-facade-mac-{}", std::process::id()));
        std::fs::create_dir_all(&ws).unwrap();
        let ws = std::fs::canonicalize(&ws).unwrap();
        let explain_with = |max_processes: Option<u32>| {
            let r = resolve(&Layers {
                home: ws.clone(),
                cwd: ws.clone(),
                user: None,
                workspace_config: None,
                cli: CliOverrides {
                    workspace: Some(ws.clone()),
                    max_processes,
                    ..Default::default()
                },
            })
            .unwrap();
            assert_eq!(
                workfence_macos::unenforced(&r.policy).is_empty(),
                max_processes.is_none()
            );
            explain(&r, Target::Macos).unwrap()
        };
        let text = explain_with(None);
        assert!(text.contains("a default, not a request"), "{text}");
        assert!(!text.contains("refused without --allow-degraded"), "{text}");
        let text = explain_with(Some(64));
        assert!(text.contains("refused without --allow-degraded"), "{text}");
        let _ = std::fs::remove_dir_all(&ws);
    }
}
