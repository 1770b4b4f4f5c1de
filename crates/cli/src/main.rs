//! `workfence`: run a command inside an OS-enforced sandbox.
//!
//! A thin layer over the `workfence` library: argument parsing, exit codes and
//! messages. Every error of workfence itself exits 125 with a one-line reason.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use workfence::policy::resolve::CliOverrides;
use workfence::policy::run::EXIT_SETUP;
use workfence::policy::units::{parse_duration, parse_size};
use workfence::policy::{Enforcement, Mode, Network};
use workfence::Target;

#[derive(Parser, Debug)]
#[command(
    name = "workfence",
    version,
    about = "Run commands inside an OS-enforced sandbox: writes only to the workspace, secrets hidden, network off, every descendant contained."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run COMMAND inside the sandbox.
    Run {
        #[command(flatten)]
        opts: RunOpts,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// Show what this host can enforce, and how to fix what is missing.
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Windows: one-time elevated set-up of the sandbox users, group and firewall filters.
    Setup {
        /// Remove everything set-up created, and every journaled ACL change.
        #[arg(long)]
        uninstall: bool,
    },
    /// Windows: restore every ACL change workfence journaled (after a crash).
    Cleanup,
    /// Prove on this machine that the sandbox holds and that common tools work in it.
    ///
    /// Creates a temporary workspace, runs a compatibility set (shell, git, Python,
    /// Node, cargo, cc/make, the null device, PowerShell) and an attack set (each with an
    /// unsandboxed control) through the real sandbox with the built-in default policy,
    /// prints a table and exits 1 when any case fails.
    Selftest {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Run only the cases whose id starts with PREFIX (repeatable).
        #[arg(long = "case", value_name = "PREFIX")]
        cases: Vec<String>,
        /// Create the temporary directory under DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Keep the temporary directory for inspection.
        #[arg(long)]
        keep: bool,
        /// Windows: measure which restricting set the compatibility cases need
        /// (narrow, then restricted; never everyone) and record it for every later
        /// run on this machine. Without it the set in use is only reported.
        #[arg(long)]
        measure_restricting_set: bool,
    },
    /// Print the effective policy (and where each value came from) and the platform plan.
    Explain {
        #[command(flatten)]
        opts: RunOpts,
        /// Print the plan for another OS.
        #[arg(long, value_enum)]
        target: Option<TargetArg>,
        /// Print JSON (policy, layout and plan) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum TargetArg {
    Linux,
    Macos,
    Windows,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum ModeArg {
    ReadOnly,
    WorkspaceWrite,
    FullAccess,
}

/// `--network off | on | allow | allow=RULE[,RULE...] | allow-local=RULE[,RULE...]`.
#[derive(Debug, Clone)]
enum NetArg {
    Off,
    On,
    Allow(Vec<String>),
    AllowLocal(Vec<String>),
}

fn parse_network(s: &str) -> Result<NetArg, String> {
    match s {
        "off" => Ok(NetArg::Off),
        "on" => Ok(NetArg::On),
        "allow" => Ok(NetArg::Allow(Vec::new())),
        _ => {
            let (local, list) = if let Some(l) = s.strip_prefix("allow=") {
                (false, l)
            } else if let Some(l) = s.strip_prefix("allow-local=") {
                (true, l)
            } else {
                return Err(format!(
                    "'{s}' is not off, on, allow, allow=HOST[,HOST...] or allow-local=HOST[,HOST...] (e.g. allow=example.org,*.example.org,@mylist)"
                ));
            };
            let rules: Vec<String> = list.split(',').map(|r| r.trim().to_string()).collect();
            if rules.iter().any(String::is_empty) {
                return Err(format!(
                    "'{s}': an empty rule; separate rules with single commas, e.g. allow=example.org,*.example.org"
                ));
            }
            Ok(if local {
                NetArg::AllowLocal(rules)
            } else {
                NetArg::Allow(rules)
            })
        }
    }
}

/// Folds repeated `--network` values: `off`/`on` replace everything before them;
/// `allow=` and `allow-local=` lists add up into one allowlist.
fn fold_network(args: Vec<NetArg>) -> Option<Network> {
    let mut out: Option<Network> = None;
    for a in args {
        let local = matches!(a, NetArg::AllowLocal(_));
        out = Some(match a {
            NetArg::Off => Network::Off,
            NetArg::On => Network::On,
            NetArg::Allow(v) | NetArg::AllowLocal(v) => {
                let mut p = match out {
                    Some(Network::Proxy(p)) => p,
                    _ => workfence::policy::ProxyPolicy::default(),
                };
                if local {
                    p.allow_local.extend(v);
                } else {
                    p.allow.extend(v);
                }
                Network::Proxy(p)
            }
        });
    }
    out
}

#[derive(Args, Debug)]
struct RunOpts {
    /// Workspace root (default: the current directory). Writable in workspace-write mode.
    #[arg(short = 'C', long = "workspace", value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Working directory of the command (default: the workspace).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Filesystem mode.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// An extra writable root (repeatable).
    #[arg(long = "allow-write", value_name = "PATH")]
    allow_write: Vec<PathBuf>,
    /// An extra hidden path (repeatable).
    #[arg(long = "deny-read", value_name = "PATH")]
    deny_read: Vec<PathBuf>,
    /// Network access: off, on, or allow=HOST[,HOST...] (through workfence's proxy;
    /// `*.host` subdomains, `**.host` apex and subdomains, `host:PORT`, `@list` from the
    /// config). `allow=` replaces the config's allow list but keeps its deny,
    /// allow_local and per-command rules; `allow` alone uses the config's rules;
    /// `allow-local=HOST` also lets HOST resolve to a private address.
    /// Repeatable: `--network allow=a.test --network allow-local=mirror.lan`.
    #[arg(long, value_name = "off|on|allow=HOSTS", value_parser = parse_network)]
    network: Vec<NetArg>,
    /// Also append the network audit (JSON lines, one per connection) to FILE.
    #[arg(long = "audit-log", value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Kill the whole process tree after this long (30s, 5m, 1h30m).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Keep an environment variable that looks like a secret (repeatable).
    #[arg(long = "env-keep", value_name = "NAME")]
    env_keep: Vec<String>,
    /// Set an environment variable (repeatable).
    #[arg(long = "env-set", value_name = "NAME=VALUE")]
    env_set: Vec<String>,
    /// A named profile from the user config.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Run even where a layer cannot be enforced, and report what is not.
    #[arg(long = "allow-degraded")]
    allow_degraded: bool,
    /// Also pass this file descriptor to the command (repeatable).
    #[arg(long = "keep-fd", value_name = "N")]
    keep_fd: Vec<i32>,
    /// Allocate a pseudo-terminal for interactive programs.
    #[arg(long)]
    pty: bool,
    /// Cap on the number of processes inside the sandbox.
    #[arg(long = "max-processes", value_name = "N")]
    max_processes: Option<u32>,
    /// Memory limit (512M, 4G); needs cgroup v2 delegation.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
}

impl RunOpts {
    fn overrides(self) -> anyhow::Result<CliOverrides> {
        let timeout = match &self.timeout {
            Some(t) => Some(
                parse_duration(t)
                    .map_err(anyhow::Error::msg)
                    .context("--timeout")?,
            ),
            None => None,
        };
        let memory_bytes = match &self.memory {
            Some(m) => Some(
                parse_size(m)
                    .map_err(anyhow::Error::msg)
                    .context("--memory")?,
            ),
            None => None,
        };
        let mut env_set = Vec::new();
        for kv in &self.env_set {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--env-set: '{kv}' is not NAME=VALUE");
            };
            env_set.push((k.to_string(), v.to_string()));
        }
        for fd in &self.keep_fd {
            if *fd < 3 {
                bail!("--keep-fd {fd}: fds 0-2 are always passed; name fds 3 and above");
            }
        }
        if let Some(m) = self.max_processes {
            if m < 8 {
                bail!("--max-processes {m}: must be at least 8");
            }
        }
        for (flag, paths) in [
            ("--allow-write", &self.allow_write),
            ("--deny-read", &self.deny_read),
        ] {
            if paths.iter().any(|p| p.as_os_str().is_empty()) {
                bail!("{flag}: empty path");
            }
        }
        Ok(CliOverrides {
            profile: self.profile,
            workspace: self.workspace,
            cwd: self.cwd,
            mode: self.mode.map(|m| match m {
                ModeArg::ReadOnly => Mode::ReadOnly,
                ModeArg::WorkspaceWrite => Mode::WorkspaceWrite,
                ModeArg::FullAccess => Mode::FullAccess,
            }),
            network: fold_network(self.network),
            audit_log: self.audit_log,
            allow_write: self.allow_write,
            deny_read: self.deny_read,
            timeout,
            env_keep: self.env_keep,
            env_set,
            allow_degraded: self.allow_degraded,
            keep_fds: self.keep_fd,
            pty: self.pty,
            max_processes: self.max_processes,
            memory_bytes,
        })
    }
}

fn run_cmd(opts: RunOpts, command: Vec<OsString>) -> anyhow::Result<i32> {
    let resolved = workfence::load_policy(opts.overrides()?)?;
    for w in &resolved.warnings {
        eprintln!("workfence: warning: {w}");
    }
    let outcome = workfence::run(&resolved.policy, command, &mut |w| {
        for line in w.to_string().lines() {
            eprintln!("workfence: {line}");
        }
    })?;
    // What the proxy refused, with what would allow it.
    for d in &outcome.denials {
        match &d.allow_with {
            Some(fix) => eprintln!(
                "workfence: {}: denied {}: {}. {fix}",
                d.layer, d.target, d.reason
            ),
            None => eprintln!("workfence: {}: denied {}: {}", d.layer, d.target, d.reason),
        }
    }
    // A status workfence chose (timeout, not found, not executable) comes with its reason.
    if let Some(why) = &outcome.message {
        eprintln!("workfence: {}", why.replace('\n', " "));
    }
    Ok(outcome.code)
}

fn doctor(json: bool) -> i32 {
    let checks = workfence::doctor();
    // The verdict is run's own: would the effective policy be refused here?
    let refusal = match workfence::load_policy(CliOverrides::default())
        .and_then(|r| workfence::refusal(&r.policy))
    {
        Ok(r) => r,
        Err(e) => Some(format!("the effective policy cannot be planned: {e}")),
    };
    // On Linux a layer doctor finds missing (user namespaces, Landlock) is one that
    // every sandboxed run needs: run would fail at start, not at planning.
    let refusal = refusal.or_else(|| {
        let missing: Vec<&str> = checks
            .iter()
            .filter(|c| {
                cfg!(target_os = "linux")
                    && c.state != Enforcement::Full
                    && c.layer != "memory/cpu limits"
            })
            .map(|c| c.layer.as_str())
            .collect();
        (!missing.is_empty()).then(|| format!("not enforceable here: {}", missing.join(", ")))
    });
    let ok = refusal.is_none();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).unwrap_or_default()
        );
    } else {
        for c in &checks {
            let mark = match c.state {
                Enforcement::Full => "ok     ",
                Enforcement::Partial => "partial",
                Enforcement::None => "MISSING",
            };
            println!("[{mark}] {}: {}", c.layer, c.detail);
        }
        println!();
        match &refusal {
            None => println!("`workfence run` enforces the effective policy on this host (layers marked partial above are limits of this OS, listed in the README)."),
            Some(why) => println!("`workfence run` refuses the effective policy on this host unless --allow-degraded is given: {why}"),
        }
    }
    if ok {
        0
    } else {
        1
    }
}

fn explain(opts: RunOpts, target: Option<TargetArg>, json: bool) -> anyhow::Result<i32> {
    let resolved = workfence::load_policy(opts.overrides()?)?;
    let target = match target {
        None => Target::current(),
        Some(TargetArg::Linux) => Target::Linux,
        Some(TargetArg::Macos) => Target::Macos,
        Some(TargetArg::Windows) => Target::Windows,
    };
    if json {
        let v = workfence::explain_json(&resolved, target)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", workfence::explain(&resolved, target)?);
    }
    Ok(0)
}

fn selftest(
    json: bool,
    cases: Vec<String>,
    dir: Option<PathBuf>,
    keep: bool,
    measure_restricting_set: bool,
) -> anyhow::Result<i32> {
    let report = workfence::selftest::run(&workfence::selftest::Options {
        dir,
        probe: None,
        only: cases,
        keep,
        measure_restricting_set,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", selftest_table(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// The report as a table: facts, then one line per case, then the summary.
fn selftest_table(r: &workfence::selftest::Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "workfence {} selftest on {} (runner: {})",
        r.version, r.os, r.runner
    );
    let _ = writeln!(s, "\nMeasured on this host:");
    for f in &r.facts {
        let _ = writeln!(s, "  {}: {}", f.name, f.value);
    }
    if let Some(d) = &r.degraded {
        let _ = writeln!(s, "  DEGRADED: {d}");
    }
    for w in &r.warnings {
        for (i, line) in w.lines().enumerate() {
            let _ = writeln!(
                s,
                "  {} {line}",
                if i == 0 { "warning:" } else { "        " }
            );
        }
    }
    let width = r.cases.iter().map(|c| c.id.len()).max().unwrap_or(10);
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<width$}  {:<7}  detail", "case", "result");
    for c in &r.cases {
        let mark = match c.status {
            workfence::selftest::Status::Pass => "pass",
            workfence::selftest::Status::Fail => "FAIL",
            workfence::selftest::Status::Skipped => "skipped",
        };
        let _ = writeln!(s, "{:<width$}  {mark:<7}  {}: {}", c.id, c.what, c.reason);
        if c.status == workfence::selftest::Status::Fail {
            if let Some(ctl) = &c.control {
                let _ = writeln!(s, "{:<width$}  {:<7}  control: {ctl}", "", "");
            }
        }
    }
    for p in &r.pending {
        let _ = writeln!(s, "{:<width$}  {:<7}  {}", p.id, "pending", p.why);
    }
    let _ = writeln!(
        s,
        "\n{} passed, {} failed, {} skipped: {}",
        r.summary.passed,
        r.summary.failed,
        r.summary.skipped,
        if r.ok { "ok" } else { "FAILED" }
    );
    s
}

fn main() -> ExitCode {
    // The same executable doubles as the Linux helper and the Windows runner.
    if let Some(code) = workfence::helper_main_if_requested() {
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EXIT_SETUP,
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let r = match cli.command {
        Cmd::Run { opts, command } => run_cmd(opts, command),
        Cmd::Doctor { json } => Ok(doctor(json)),
        Cmd::Explain { opts, target, json } => explain(opts, target, json),
        Cmd::Selftest {
            json,
            cases,
            dir,
            keep,
            measure_restricting_set,
        } => selftest(json, cases, dir, keep, measure_restricting_set),
        Cmd::Setup { uninstall } => workfence::setup(uninstall)
            .map(|m| {
                println!("{m}");
                0
            })
            .map_err(Into::into),
        Cmd::Cleanup => workfence::cleanup()
            .map(|m| {
                println!("{m}");
                0
            })
            .map_err(Into::into),
    };
    match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            // workfence's own errors already carry their cause; anyhow contexts need the chain.
            let msg = match e.downcast_ref::<workfence::Error>() {
                Some(we) => we.to_string(),
                None => format!("{e:#}"),
            }
            .replace('\n', " ");
            eprintln!("workfence: {msg}");
            ExitCode::from(EXIT_SETUP as u8)
        }
    }
}
