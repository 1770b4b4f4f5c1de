//! Layering: built-in defaults < user config < profile < command line, then the
//! workspace config, which can only narrow the result.
//!
//! ```
//! use workfence_policy::resolve::{resolve, CliOverrides, Layers};
//! use workfence_policy::{Mode, Network, Source};
//! let cli = CliOverrides { mode: Some(Mode::ReadOnly), ..Default::default() };
//! let r = resolve(&Layers {
//!     home: "/home/u".into(),
//!     cwd: "/home/u/src/p".into(),
//!     user: None,
//!     workspace_config: None,
//!     cli,
//! })
//! .unwrap();
//! assert_eq!(r.policy.mode, Mode::ReadOnly);
//! assert_eq!(r.policy.source_of("mode"), Source::Cli);
//! assert_eq!(r.policy.network, Network::Off);
//! ```

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigError, ConfigFile, NetworkSettings, Settings};
use crate::model::{
    ExecDecision, ExecRule, Mode, Network, Policy, Preset, ProxyPolicy, Source, SourcedPath,
};

/// The scalar settings whose origin `explain` reports.
pub const SCALAR_KEYS: &[&str] = &[
    "mode",
    "workspace",
    "cwd",
    "network",
    "max_processes",
    "memory",
    "cpu_percent",
    "tmp_size",
    "timeout",
    "allow_degraded",
    "git_write",
    "pty",
    "default_deny_read",
];

/// What the command line says. Paths may be relative to `Layers::cwd`.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    /// `--profile`
    pub profile: Option<String>,
    /// `-C, --workspace`
    pub workspace: Option<PathBuf>,
    /// `--cwd`
    pub cwd: Option<PathBuf>,
    /// `--mode`
    pub mode: Option<Mode>,
    /// `--network`
    pub network: Option<Network>,
    /// `--allow-write`
    pub allow_write: Vec<PathBuf>,
    /// `--deny-read`
    pub deny_read: Vec<PathBuf>,
    /// `--timeout`
    pub timeout: Option<Duration>,
    /// `--env-keep`
    pub env_keep: Vec<String>,
    /// `--env-set NAME=VALUE`
    pub env_set: Vec<(String, String)>,
    /// `--allow-degraded`
    pub allow_degraded: bool,
    /// `--keep-fd`
    pub keep_fds: Vec<i32>,
    /// `--pty`
    pub pty: bool,
    /// `--audit-log FILE`
    pub audit_log: Option<PathBuf>,
    /// `--max-processes`
    pub max_processes: Option<u32>,
    /// `--memory`
    pub memory_bytes: Option<u64>,
}

/// All inputs of resolution. No I/O happens here; the caller reads files.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// The user's home directory, for `~/` and the built-in secret list.
    pub home: PathBuf,
    /// The directory workfence was started in (relative CLI paths resolve against it).
    pub cwd: PathBuf,
    /// The parsed user config, if the file exists.
    pub user: Option<ConfigFile>,
    /// The parsed `.workfence/config.toml` of the workspace, if it exists.
    pub workspace_config: Option<ConfigFile>,
    /// The command line.
    pub cli: CliOverrides,
}

/// The effective policy, with what the workspace config tried and was refused.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The policy.
    pub policy: Policy,
    /// Human-readable notes (ignored widenings from the workspace config).
    pub warnings: Vec<String>,
}

/// Makes `p` absolute against `base` and removes `.` and `..` lexically.
pub fn absolutize(base: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Expands a leading `~` or `~/`.
pub fn expand_home(home: &Path, p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    if s == "~" {
        home.to_path_buf()
    } else if let Some(rest) = s.strip_prefix("~/") {
        home.join(rest)
    } else {
        p.to_path_buf()
    }
}

fn set<T>(
    slot: &mut T,
    value: Option<T>,
    key: &str,
    source: &Source,
    prov: &mut BTreeMap<String, Source>,
) {
    if let Some(v) = value {
        *slot = v;
        prov.insert(key.to_string(), source.clone());
    }
}

/// The network mode a layer sets. `allow` carries empty rules here: the rules are
/// merged across layers separately ([`merge_net`]) and filled in at the end.
fn network_from(settings: &Settings) -> Option<Network> {
    settings.network.as_deref().map(|n| match n {
        "on" => Network::On,
        "allow" | "proxy" => Network::Proxy(ProxyPolicy::default()),
        _ => Network::Off,
    })
}

/// Merges one layer's `[network]` keys into the rules of the layers before it: a key
/// set here replaces the earlier value; named lists and `resolve` pins add up.
fn merge_net(rules: &mut ProxyPolicy, n: &NetworkSettings) {
    if let Some(a) = &n.allow {
        rules.allow = a.clone();
    }
    if let Some(d) = &n.deny {
        rules.deny = d.clone();
    }
    if let Some(a) = &n.allow_local {
        rules.allow_local = a.clone();
    }
    if let Some(sc) = &n.scoped {
        rules.scoped = sc.clone();
    }
    if let Some(t) = n.transparent {
        rules.transparent = t;
    }
    rules
        .lists
        .extend(n.lists.iter().map(|(k, v)| (k.clone(), v.clone())));
    rules
        .resolve
        .extend(n.resolve.iter().map(|(k, v)| (k.clone(), v.clone())));
}

fn apply_settings(
    p: &mut Policy,
    s: &Settings,
    source: &Source,
    home: &Path,
    allow_read: &mut Vec<PathBuf>,
    rules: &mut ProxyPolicy,
) {
    merge_net(rules, &s.net);
    let prov = &mut p.provenance;
    set(&mut p.mode, s.mode, "mode", source, prov);
    set(&mut p.network, network_from(s), "network", source, prov);
    set(
        &mut p.limits.max_processes,
        s.max_processes,
        "max_processes",
        source,
        prov,
    );
    set(
        &mut p.limits.memory_bytes,
        s.memory_bytes.map(Some),
        "memory",
        source,
        prov,
    );
    set(
        &mut p.limits.cpu_percent,
        s.cpu_percent.map(Some),
        "cpu_percent",
        source,
        prov,
    );
    set(
        &mut p.limits.tmp_bytes,
        s.tmp_bytes,
        "tmp_size",
        source,
        prov,
    );
    set(
        &mut p.limits.timeout,
        s.timeout.map(Some),
        "timeout",
        source,
        prov,
    );
    set(
        &mut p.allow_degraded,
        s.allow_degraded,
        "allow_degraded",
        source,
        prov,
    );
    set(&mut p.git_write, s.git_write, "git_write", source, prov);
    if s.default_deny_read == Some(false) {
        p.deny_read.retain(|d| d.source != Source::Default);
        prov.insert("default_deny_read".into(), source.clone());
    }
    for w in &s.allow_write {
        p.allow_write.push(SourcedPath {
            path: expand_home(home, w),
            source: source.clone(),
        });
    }
    for d in &s.deny_read {
        p.deny_read.push(SourcedPath {
            path: expand_home(home, d),
            source: source.clone(),
        });
    }
    allow_read.extend(s.allow_read.iter().map(|a| expand_home(home, a)));
    p.protected_names.extend(s.protect.iter().cloned());
    p.env.keep.extend(s.env_keep.iter().cloned());
    p.env.deny.extend(s.env_deny.iter().cloned());
    p.env.set.extend(s.env_set.clone());
    p.exec_rules
        .extend(s.exec_rules.iter().map(|(prefix, decision)| ExecRule {
            prefix: prefix.clone(),
            decision: *decision,
        }));
    p.presets
        .extend(s.presets.iter().map(|n| Preset { name: n.clone() }));
}

/// Applies the workspace config, which may only narrow `p`. Returns warnings for
/// every attempt to widen, which is ignored.
fn narrow(
    p: &mut Policy,
    s: &Settings,
    source: &Source,
    home: &Path,
    rules: &mut ProxyPolicy,
) -> Vec<String> {
    let mut w = Vec::new();
    let file = match source {
        Source::WorkspaceConfig(f) => f.display().to_string(),
        other => other.to_string(),
    };
    let mut refuse = |key: &str| {
        w.push(format!(
            "{file}: '{key}' ignored: a workspace config can only narrow the policy, not widen it"
        ))
    };
    if let Some(m) = s.mode {
        if m < p.mode {
            p.mode = m;
            p.provenance.insert("mode".into(), source.clone());
        } else if m > p.mode {
            refuse("mode");
        }
    }
    let was_on = p.network == Network::On;
    if let Some(n) = network_from(s) {
        if n.breadth() < p.network.breadth() {
            p.network = n;
            p.provenance.insert("network".into(), source.clone());
        } else if n != p.network {
            refuse("network");
        }
    }
    // Deny rules only take away. The other keys widen an allowlist, so they count only
    // when this file is what turned unfiltered network into an allowlist.
    if let Some(d) = &s.net.deny {
        rules.deny.extend(d.iter().cloned());
    }
    let widening = NetworkSettings {
        deny: None,
        ..s.net.clone()
    };
    if !widening.is_empty() {
        if was_on && matches!(p.network, Network::Proxy(_)) {
            merge_net(rules, &widening);
        } else {
            refuse("network (allow, allow_local, lists, resolve, scoped, transparent)");
        }
    }
    let lower = |cur: &mut Option<u64>,
                 new: Option<u64>,
                 key: &str,
                 prov: &mut BTreeMap<String, Source>| {
        if let Some(n) = new {
            if cur.is_none_or(|c| n < c) {
                *cur = Some(n);
                prov.insert(key.into(), source.clone());
            }
        }
    };
    let mut mp = Some(u64::from(p.limits.max_processes));
    lower(
        &mut mp,
        s.max_processes.map(u64::from),
        "max_processes",
        &mut p.provenance,
    );
    p.limits.max_processes = mp.map_or(p.limits.max_processes, |v| v as u32);
    lower(
        &mut p.limits.memory_bytes,
        s.memory_bytes,
        "memory",
        &mut p.provenance,
    );
    let mut cpu = p.limits.cpu_percent.map(u64::from);
    lower(
        &mut cpu,
        s.cpu_percent.map(u64::from),
        "cpu_percent",
        &mut p.provenance,
    );
    p.limits.cpu_percent = cpu.map(|c| c as u32);
    let mut tmp = Some(p.limits.tmp_bytes);
    lower(&mut tmp, s.tmp_bytes, "tmp_size", &mut p.provenance);
    p.limits.tmp_bytes = tmp.unwrap_or(p.limits.tmp_bytes);
    if let Some(t) = s.timeout {
        if p.limits.timeout.is_none_or(|c| t < c) {
            p.limits.timeout = Some(t);
            p.provenance.insert("timeout".into(), source.clone());
        }
    }
    match s.allow_degraded {
        Some(false) => {
            p.allow_degraded = false;
            p.provenance.insert("allow_degraded".into(), source.clone());
        }
        Some(true) if !p.allow_degraded => refuse("allow_degraded"),
        _ => {}
    }
    match s.git_write {
        Some(false) => {
            p.git_write = false;
            p.provenance.insert("git_write".into(), source.clone());
        }
        Some(true) if !p.git_write => refuse("git_write"),
        _ => {}
    }
    if !s.allow_write.is_empty() {
        refuse("allow_write");
    }
    if !s.allow_read.is_empty() {
        refuse("allow_read");
    }
    if s.default_deny_read == Some(false) {
        refuse("default_deny_read");
    }
    if !s.env_keep.is_empty() {
        refuse("env_keep");
    }
    if !s.env_set.is_empty() {
        refuse("env_set");
    }
    if !s.presets.is_empty() {
        refuse("presets");
    }
    for d in &s.deny_read {
        p.deny_read.push(SourcedPath {
            path: expand_home(home, d),
            source: source.clone(),
        });
    }
    p.protected_names.extend(s.protect.iter().cloned());
    p.env.deny.extend(s.env_deny.iter().cloned());
    for (prefix, decision) in &s.exec_rules {
        if *decision == ExecDecision::Allow {
            refuse("exec_rules (allow)");
        } else {
            p.exec_rules.push(ExecRule {
                prefix: prefix.clone(),
                decision: *decision,
            });
        }
    }
    w
}

/// Resolves the effective policy.
pub fn resolve(layers: &Layers) -> Result<Resolved, ConfigError> {
    let home = &layers.home;
    let cli = &layers.cli;
    let workspace = absolutize(&layers.cwd, cli.workspace.as_deref().unwrap_or(&layers.cwd));
    let mut p = Policy::new(workspace.clone());
    p.deny_read = crate::secrets::default_patterns()
        .into_iter()
        .map(|d| SourcedPath {
            path: expand_home(home, Path::new(d)),
            source: Source::Default,
        })
        .collect();
    let mut allow_read = Vec::new();
    let mut rules = ProxyPolicy::default();

    if let Some(user) = &layers.user {
        let src = Source::UserConfig(user.path.clone());
        apply_settings(
            &mut p,
            &user.settings,
            &src,
            home,
            &mut allow_read,
            &mut rules,
        );
    }
    if let Some(name) = &cli.profile {
        let prof = layers
            .user
            .as_ref()
            .and_then(|u| u.profiles.get(name))
            .ok_or_else(|| ConfigError::UnknownProfile {
                name: name.clone(),
                hint: match &layers.user {
                    Some(u) if !u.profiles.is_empty() => format!(
                        "{} defines {}",
                        u.path.display(),
                        u.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    Some(u) => format!("{} defines no [profile.*] tables", u.path.display()),
                    None => {
                        "there is no user config file; create one with [profile.NAME] tables".into()
                    }
                },
            })?;
        let src = Source::Profile(name.clone());
        apply_settings(&mut p, prof, &src, home, &mut allow_read, &mut rules);
    }

    // The command line.
    let cs = Source::Cli;
    let prov = &mut p.provenance;
    if cli.workspace.is_some() {
        prov.insert("workspace".into(), cs.clone());
    }
    set(&mut p.mode, cli.mode, "mode", &cs, prov);
    set(&mut p.network, cli.network.clone(), "network", &cs, prov);
    if let Some(Network::Proxy(c)) = &cli.network {
        // `--network allow=a,b` replaces the config's allow list (and `allow-local=`
        // its allow_local list); its deny rules, named lists, pins and scopes stay.
        if !c.allow.is_empty() {
            rules.allow = c.allow.clone();
        }
        if !c.allow_local.is_empty() {
            rules.allow_local = c.allow_local.clone();
        }
    }
    set(
        &mut p.limits.timeout,
        cli.timeout.map(Some),
        "timeout",
        &cs,
        prov,
    );
    set(
        &mut p.limits.max_processes,
        cli.max_processes,
        "max_processes",
        &cs,
        prov,
    );
    set(
        &mut p.limits.memory_bytes,
        cli.memory_bytes.map(Some),
        "memory",
        &cs,
        prov,
    );
    if cli.allow_degraded {
        set(
            &mut p.allow_degraded,
            Some(true),
            "allow_degraded",
            &cs,
            prov,
        );
    }
    if cli.pty {
        set(&mut p.pty, Some(true), "pty", &cs, prov);
    }
    p.cwd = match &cli.cwd {
        Some(c) => {
            prov.insert("cwd".into(), cs.clone());
            absolutize(&layers.cwd, c)
        }
        None => workspace.clone(),
    };
    for w in &cli.allow_write {
        p.allow_write.push(SourcedPath {
            path: absolutize(&layers.cwd, &expand_home(home, w)),
            source: cs.clone(),
        });
    }
    for d in &cli.deny_read {
        p.deny_read.push(SourcedPath {
            path: absolutize(&layers.cwd, &expand_home(home, d)),
            source: cs.clone(),
        });
    }
    p.env.keep.extend(cli.env_keep.iter().cloned());
    for (k, v) in &cli.env_set {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ConfigError::Cli {
                flag: "--env-set".into(),
                message: format!("'{k}={v}' is not NAME=VALUE"),
            });
        }
        p.env.set.insert(k.clone(), v.clone());
    }
    p.keep_fds.extend(cli.keep_fds.iter().copied());
    p.audit_log = cli.audit_log.as_ref().map(|a| absolutize(&layers.cwd, a));

    let mut warnings = Vec::new();
    if let Some(wc) = &layers.workspace_config {
        let src = Source::WorkspaceConfig(wc.path.clone());
        warnings.extend(narrow(&mut p, &wc.settings, &src, home, &mut rules));
        if !wc.profiles.is_empty() {
            warnings.push(format!(
                "{}: [profile.*] tables are ignored in a workspace config",
                wc.path.display()
            ));
        }
    }

    if let Network::Proxy(_) = p.network {
        p.network = Network::Proxy(rules);
    }

    // allow_read removes deny entries at or below the named path.
    if !allow_read.is_empty() {
        p.deny_read
            .retain(|d| !allow_read.iter().any(|a| d.path.starts_with(a)));
    }
    p.allow_write.dedup_by(|a, b| a.path == b.path);
    p.deny_read.dedup_by(|a, b| a.path == b.path);
    p.protected_names.sort();
    p.protected_names.dedup();
    if p.mode == Mode::ReadOnly && !p.allow_write.is_empty() {
        warnings.push("read-only mode: --allow-write roots are ignored".into());
    }
    Ok(Resolved {
        policy: p,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &str, text: &str) -> ConfigFile {
        ConfigFile::parse(Path::new(path), text).unwrap()
    }

    fn layers() -> Layers {
        Layers {
            home: "/home/u".into(),
            cwd: "/home/u/p".into(),
            ..Default::default()
        }
    }

    fn rules(p: &Policy) -> &ProxyPolicy {
        match &p.network {
            Network::Proxy(r) => r,
            other => panic!("expected an allowlist, got {other:?}"),
        }
    }

    const NET: &str = r#"
[network]
mode = "allow"
allow = ["a.test", "@mine"]
deny = ["bad.a.test"]
allow_local = ["git.test"]
resolve = { "git.test" = "127.0.0.1", "two.test" = ["192.0.2.1", "2001:db8::1"] }
[network.lists]
mine = ["x.test"]
[[network.scoped]]
prefix = ["pip", "download"]
allow_local = ["pypi.test"]
"#;

    #[test]
    fn network_table_from_user_config() {
        let mut l = layers();
        l.user = Some(cfg("/home/u/.config/workfence/config.toml", NET));
        let p = resolve(&l).unwrap().policy;
        let r = rules(&p);
        assert_eq!(r.allow, ["a.test", "@mine"]);
        assert_eq!(r.deny, ["bad.a.test"]);
        assert_eq!(r.lists["mine"], ["x.test"]);
        assert_eq!(r.resolve["two.test"].len(), 2);
        assert_eq!(r.scoped[0].prefix, ["pip", "download"]);
        assert!(r.transparent, "transparent mode is on by default");
    }

    #[test]
    fn cli_allow_replaces_the_allow_list_and_keeps_the_rest() {
        let mut l = layers();
        l.user = Some(cfg(
            "/u.toml",
            &NET.replace("mode = \"allow\"", "mode = \"off\""),
        ));
        assert_eq!(resolve(&l).unwrap().policy.network, Network::Off);
        l.cli.network = Some(Network::Proxy(ProxyPolicy {
            allow: vec!["only.test".into()],
            ..Default::default()
        }));
        let p = resolve(&l).unwrap().policy;
        let r = rules(&p);
        assert_eq!(r.allow, ["only.test"]);
        assert_eq!(r.deny, ["bad.a.test"]);
        assert!(r.resolve.contains_key("git.test"));
        assert_eq!(p.source_of("network"), Source::Cli);
        // `--network allow` alone: the config's allow list.
        l.cli.network = Some(Network::Proxy(ProxyPolicy::default()));
        assert_eq!(
            rules(&resolve(&l).unwrap().policy).allow,
            ["a.test", "@mine"]
        );
    }

    #[test]
    fn workspace_config_may_only_narrow_the_allowlist() {
        let mut l = layers();
        l.user = Some(cfg("/u.toml", NET));
        l.workspace_config = Some(cfg(
            "/home/u/p/.workfence/config.toml",
            "[network]\ndeny = [\"x.test\"]\nallow = [\"evil.test\"]\nresolve = { \"a.test\" = \"127.0.0.1\" }\n",
        ));
        let r = resolve(&l).unwrap();
        let n = rules(&r.policy);
        assert!(n.deny.contains(&"x.test".to_string()), "deny rules add up");
        assert!(
            !n.allow.contains(&"evil.test".to_string()),
            "allow is a widening"
        );
        assert!(!n.resolve["git.test"].is_empty() && !n.resolve.contains_key("a.test"));
        assert!(
            r.warnings.iter().any(|w| w.contains("network")),
            "{:?}",
            r.warnings
        );
        // From unfiltered network, any allowlist narrows: the workspace's rules apply.
        let mut l = layers();
        l.user = Some(cfg("/u.toml", "network = \"on\"\n"));
        l.workspace_config = Some(cfg(
            "/home/u/p/.workfence/config.toml",
            "[network]\nmode = \"allow\"\nallow = [\"ws.test\"]\n",
        ));
        let r = resolve(&l).unwrap();
        assert_eq!(rules(&r.policy).allow, ["ws.test"]);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn precedence_cli_over_profile_over_user_over_default() {
        let mut l = layers();
        l.user = Some(cfg(
            "/home/u/.config/workfence/config.toml",
            "timeout = \"1m\"\nmax_processes = 100\n[profile.p]\ntimeout = \"2m\"\n",
        ));
        l.cli.profile = Some("p".into());
        l.cli.max_processes = Some(50);
        let p = resolve(&l).unwrap().policy;
        assert_eq!(p.limits.timeout, Some(Duration::from_secs(120)));
        assert_eq!(p.source_of("timeout"), Source::Profile("p".into()));
        assert_eq!(p.limits.max_processes, 50);
        assert_eq!(p.source_of("max_processes"), Source::Cli);
        assert_eq!(p.source_of("mode"), Source::Default);
        assert_eq!(p.workspace, PathBuf::from("/home/u/p"));
        assert!(p
            .deny_read
            .iter()
            .any(|d| d.path == Path::new("/home/u/.ssh")));
    }

    #[test]
    fn workspace_config_only_narrows() {
        let mut l = layers();
        l.cli.network = Some(Network::On);
        l.workspace_config = Some(cfg(
            "/home/u/p/.workfence/config.toml",
            "network = \"on\"\nmode = \"full-access\"\nallow_write = [\"/etc\"]\nenv_keep = [\"GH_TOKEN\"]\ndeny_read = [\"/srv/s\"]\nmax_processes = 64\nexec_rules = [{prefix=[\"rm\"], decision=\"allow\"}]\n",
        ));
        let r = resolve(&l).unwrap();
        let p = r.policy;
        assert_eq!(p.mode, Mode::WorkspaceWrite);
        assert_eq!(p.network, Network::On);
        assert!(p.allow_write.is_empty());
        assert!(p.env.keep.is_empty());
        assert!(p.exec_rules.is_empty());
        assert_eq!(p.limits.max_processes, 64);
        assert!(p.deny_read.iter().any(|d| d.path == Path::new("/srv/s")));
        assert_eq!(r.warnings.len(), 4, "{:?}", r.warnings);

        let mut l = layers();
        l.cli.network = Some(Network::On);
        l.workspace_config = Some(cfg(
            "/w/.workfence/config.toml",
            "network = \"off\"\nmode = \"read-only\"\n",
        ));
        let p = resolve(&l).unwrap().policy;
        assert_eq!(p.network, Network::Off);
        assert_eq!(p.mode, Mode::ReadOnly);
        assert!(matches!(p.source_of("network"), Source::WorkspaceConfig(_)));
    }

    #[test]
    fn unknown_profile_is_an_error() {
        let mut l = layers();
        l.cli.profile = Some("nope".into());
        let e = resolve(&l).unwrap_err();
        assert!(e.to_string().contains("unknown profile 'nope'"));
    }

    #[test]
    fn allow_read_and_default_deny_read() {
        let mut l = layers();
        l.user = Some(cfg("/c", "allow_read = [\"~/.npmrc\"]\n"));
        let p = resolve(&l).unwrap().policy;
        assert!(!p
            .deny_read
            .iter()
            .any(|d| d.path == Path::new("/home/u/.npmrc")));
        assert!(p
            .deny_read
            .iter()
            .any(|d| d.path == Path::new("/home/u/.ssh")));
        l.user = Some(cfg("/c", "default_deny_read = false\ndeny_read=[\"/x\"]\n"));
        let p = resolve(&l).unwrap().policy;
        assert_eq!(p.deny_read.len(), 1);
    }

    #[test]
    fn relative_cli_paths_resolve_against_cwd() {
        let mut l = layers();
        l.cli.workspace = Some("../q".into());
        l.cli.allow_write = vec!["./cache".into(), "~/x".into()];
        let p = resolve(&l).unwrap().policy;
        assert_eq!(p.workspace, PathBuf::from("/home/u/q"));
        assert_eq!(p.cwd, PathBuf::from("/home/u/q"));
        assert_eq!(p.allow_write[0].path, PathBuf::from("/home/u/p/cache"));
        assert_eq!(p.allow_write[1].path, PathBuf::from("/home/u/x"));
    }
}
