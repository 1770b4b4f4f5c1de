//! The policy model: what a sandboxed command may do, independent of any OS.
//!
//! Every backend compiles a [`Policy`] into its own plan. Keep this module free of
//! I/O: it is the contract between the CLI, the library users and the backends.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How much of the filesystem the command may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nothing is writable but the private temp dir.
    ReadOnly,
    /// The workspace, the extra writable roots and the private temp dir are writable.
    WorkspaceWrite,
    /// No sandbox at all. Only on explicit request; the CLI says so on stderr.
    FullAccess,
}

impl Mode {
    /// The CLI and config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReadOnly => "read-only",
            Mode::WorkspaceWrite => "workspace-write",
            Mode::FullAccess => "full-access",
        }
    }

    /// Parses the CLI and config spelling.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "read-only" => Some(Mode::ReadOnly),
            "workspace-write" => Some(Mode::WorkspaceWrite),
            "full-access" => Some(Mode::FullAccess),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Network access.
///
/// `Proxy` is the domain allowlist (`--network allow=...`, `[network] mode = "allow"`),
/// enforced through workfence's own proxy: the sandbox keeps its private network
/// namespace and reaches only the proxy. Backends whose path is not tested end to end
/// refuse it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Network {
    /// No network except a private loopback.
    Off,
    /// The host's network, unfiltered.
    On,
    /// Only the allowed destinations, through workfence's proxy.
    Proxy(ProxyPolicy),
}

impl Network {
    /// A short name for messages (the value of `--network` / `[network] mode`).
    pub fn name(&self) -> &'static str {
        match self {
            Network::Off => "off",
            Network::On => "on",
            Network::Proxy(_) => "allow",
        }
    }

    /// Ordering by how much network it grants: off < allow < on.
    pub fn breadth(&self) -> u8 {
        match self {
            Network::Off => 0,
            Network::Proxy(_) => 1,
            Network::On => 2,
        }
    }
}

/// Rules for one command prefix (`[[network.scoped]]`), added to the base rules for
/// the commands whose argv starts with `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScopedNetwork {
    /// The argv prefix; the first element is compared with argv\[0\]'s file name.
    pub prefix: Vec<String>,
    /// Extra allow rules.
    pub allow: Vec<String>,
    /// Extra deny rules.
    pub deny: Vec<String>,
    /// Extra allow-local rules.
    pub allow_local: Vec<String>,
}

/// The network allowlist the proxy enforces. Rule syntax: `host`, `*.host` (subdomains
/// only), `**.host` (apex and subdomains), an optional `:port`, a bare IP address (only
/// that address given literally), `@name` (a named list). Deny wins over allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyPolicy {
    /// Allowed destinations.
    pub allow: Vec<String>,
    /// Refused even when `allow` matches.
    pub deny: Vec<String>,
    /// Allowed, and may resolve to loopback, private, link-local or CGNAT addresses
    /// (a mirror on the LAN, a test server). Everything else that resolves there is
    /// refused after resolution (DNS rebinding, SSRF to cloud metadata).
    pub allow_local: Vec<String>,
    /// Named lists for `@name`.
    pub lists: BTreeMap<String, Vec<String>>,
    /// Name pins, like curl's `--resolve`: these names resolve to these addresses.
    pub resolve: BTreeMap<String, Vec<IpAddr>>,
    /// Per-command additions.
    pub scoped: Vec<ScopedNetwork>,
    /// Linux: also carry proxy-unaware clients (DNS answered by workfence, TCP to ports
    /// 80, 443 and ports named in rules go to the proxy).
    pub transparent: bool,
}

impl Default for ProxyPolicy {
    fn default() -> Self {
        ProxyPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
            allow_local: Vec::new(),
            lists: BTreeMap::new(),
            resolve: BTreeMap::new(),
            scoped: Vec::new(),
            transparent: true,
        }
    }
}

/// What happens to a command line that matches an exec rule (the strictest match wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecDecision {
    /// Runs inside the sandbox without asking.
    Allow,
    /// The caller (an agent) should ask the user first; the CLI refuses unless told.
    Prompt,
    /// Never runs.
    Forbidden,
}

/// A prefix rule over argv: `["git", "push"]` matches `git push origin main`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRule {
    /// argv prefix; each element is matched literally against the basename of
    /// argv[0] and the following arguments literally.
    pub prefix: Vec<String>,
    /// What to do on a match.
    pub decision: ExecDecision,
}

/// A toolchain preset (for example `cargo`): caches it may use without being able to
/// poison them for the host. Modelled now, enforced in a later release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preset {
    /// Preset name, for example `cargo`, `npm`, `pip`.
    pub name: String,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Maximum number of processes (threads count) inside the sandbox.
    pub max_processes: u32,
    /// Memory limit in bytes (cgroup v2 where available).
    pub memory_bytes: Option<u64>,
    /// CPU limit in percent of one core (cgroup v2 where available).
    pub cpu_percent: Option<u32>,
    /// Size of the private /tmp in bytes.
    pub tmp_bytes: u64,
    /// Wall-clock limit; at the deadline the whole tree is killed.
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_processes: crate::defaults::MAX_PROCESSES,
            memory_bytes: None,
            cpu_percent: None,
            tmp_bytes: crate::defaults::TMP_BYTES,
            timeout: None,
        }
    }
}

/// Environment handling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvPolicy {
    /// Names kept even if they look like secrets.
    pub keep: Vec<String>,
    /// Variables set (after scrubbing).
    pub set: BTreeMap<String, String>,
    /// Extra names removed, in addition to the built-in patterns.
    pub deny: Vec<String>,
}

/// Where a setting came from, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum Source {
    /// Built into workfence.
    Default,
    /// The user's config file.
    UserConfig(PathBuf),
    /// A named profile in the user's config file.
    Profile(String),
    /// The workspace's `.workfence/config.toml` (can only narrow).
    WorkspaceConfig(PathBuf),
    /// A command-line flag.
    Cli,
    /// Derived by workfence from the host (for example a linked git worktree's gitdir).
    Auto(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::UserConfig(p) => write!(f, "user config {}", p.display()),
            Source::Profile(n) => write!(f, "profile '{n}'"),
            Source::WorkspaceConfig(p) => write!(f, "workspace config {}", p.display()),
            Source::Cli => f.write_str("command line"),
            Source::Auto(why) => write!(f, "auto: {why}"),
        }
    }
}

/// A path together with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcedPath {
    /// Absolute path (not yet canonicalized).
    pub path: PathBuf,
    /// Origin.
    pub source: Source,
}

/// The effective policy for one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Filesystem mode.
    pub mode: Mode,
    /// Workspace root (absolute).
    pub workspace: PathBuf,
    /// Working directory of the command (absolute).
    pub cwd: PathBuf,
    /// Extra writable roots (beyond the workspace) in workspace-write mode.
    pub allow_write: Vec<SourcedPath>,
    /// Hidden paths. The last component may contain `*` wildcards.
    pub deny_read: Vec<SourcedPath>,
    /// Names protected (read-only, cannot be created) inside every writable root.
    pub protected_names: Vec<String>,
    /// Network access.
    pub network: Network,
    /// Environment handling.
    pub env: EnvPolicy,
    /// Resource limits.
    pub limits: Limits,
    /// Extra fds (besides 0-2) the command inherits.
    pub keep_fds: Vec<i32>,
    /// Run even where a layer cannot be enforced, reporting what is not.
    pub allow_degraded: bool,
    /// Allocate a pseudo-terminal.
    pub pty: bool,
    /// `--audit-log FILE`: the network audit (JSON lines) also goes here.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Give git write access to the gitdir of the repository the workspace belongs to
    /// when that gitdir lies outside the workspace (linked worktrees, submodules,
    /// a workspace that is a subdirectory of a repository). Hooks and config stay read-only.
    pub git_write: bool,
    /// Exec rules (the strictest matching rule wins).
    pub exec_rules: Vec<ExecRule>,
    /// Toolchain presets (modelled now; enforced in a later release).
    pub presets: Vec<Preset>,
    /// Where each scalar setting came from, keyed by setting name.
    pub provenance: BTreeMap<String, Source>,
}

impl Policy {
    /// The built-in default policy for a workspace: workspace-write, network off,
    /// built-in secret list and protected names.
    pub fn new(workspace: impl Into<PathBuf>) -> Policy {
        let workspace = workspace.into();
        let mut provenance = BTreeMap::new();
        for key in crate::resolve::SCALAR_KEYS {
            provenance.insert((*key).to_string(), Source::Default);
        }
        Policy {
            mode: Mode::WorkspaceWrite,
            cwd: workspace.clone(),
            workspace,
            allow_write: Vec::new(),
            deny_read: Vec::new(),
            protected_names: crate::defaults::PROTECTED_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            network: Network::Off,
            env: EnvPolicy::default(),
            limits: Limits::default(),
            keep_fds: Vec::new(),
            allow_degraded: false,
            pty: false,
            audit_log: None,
            git_write: true,
            exec_rules: Vec::new(),
            presets: Vec::new(),
            provenance,
        }
    }

    /// The decision of the exec rules for `argv` (None when no rule matches).
    pub fn exec_decision(&self, argv: &[String]) -> Option<ExecDecision> {
        self.exec_rules
            .iter()
            .filter(|r| rule_matches(&r.prefix, argv))
            .map(|r| r.decision)
            .max()
    }

    /// Where a scalar setting came from.
    pub fn source_of(&self, key: &str) -> Source {
        self.provenance.get(key).cloned().unwrap_or(Source::Default)
    }
}

fn rule_matches(prefix: &[String], argv: &[String]) -> bool {
    if prefix.is_empty() || prefix.len() > argv.len() {
        return false;
    }
    prefix.iter().zip(argv).enumerate().all(|(i, (p, a))| {
        if i == 0 {
            let base = a.rsplit(['/', '\\']).next().unwrap_or(a);
            p == a || p == base
        } else {
            p == a
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictest_exec_rule_wins() {
        let mut p = Policy::new("/w");
        p.exec_rules = vec![
            ExecRule {
                prefix: vec!["git".into()],
                decision: ExecDecision::Allow,
            },
            ExecRule {
                prefix: vec!["git".into(), "push".into()],
                decision: ExecDecision::Forbidden,
            },
        ];
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            p.exec_decision(&argv("git status")),
            Some(ExecDecision::Allow)
        );
        assert_eq!(
            p.exec_decision(&argv("/usr/bin/git push origin")),
            Some(ExecDecision::Forbidden)
        );
        assert_eq!(p.exec_decision(&argv("make")), None);
    }
}
