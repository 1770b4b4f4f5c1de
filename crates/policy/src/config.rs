//! The TOML configuration file: user config (`$XDG_CONFIG_HOME/workfence/config.toml`)
//! with named profiles, and the workspace's `.workfence/config.toml`, which can only narrow.
//!
//! Parsing is pure: callers read the file and pass its text and path, so that every
//! error can name the file, the line and the key.
//!
//! ```
//! use workfence_policy::config::ConfigFile;
//! let cfg = ConfigFile::parse(
//!     "/home/u/.config/workfence/config.toml".as_ref(),
//!     r#"
//! network = "off"
//! allow_write = ["~/.cache/sccache"]
//! [profile.online]
//! network = "on"
//! "#,
//! ).unwrap();
//! assert!(cfg.profiles.contains_key("online"));
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::{ExecDecision, Mode};
use crate::units::{parse_duration, parse_size};

/// A configuration error that names the file, the line and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid for workfence.
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key (dotted), or `(file)` for syntax errors.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// `--profile` names a profile that no config file defines.
    #[error("unknown profile '{name}': {hint}")]
    UnknownProfile {
        /// The requested profile.
        name: String,
        /// Where profiles are looked up, and which exist.
        hint: String,
    },
    /// A command-line value is invalid.
    #[error("{flag}: {message}")]
    Cli {
        /// The flag.
        flag: String,
        /// What is wrong.
        message: String,
    },
}

/// A size written as bytes or with a unit suffix (`512M`, `4G`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecRule {
    prefix: Vec<String>,
    decision: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// One address or several, for `resolve` pins.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScoped {
    prefix: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    allow_local: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetworkTable {
    mode: Option<String>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    allow_local: Option<Vec<String>>,
    #[serde(default)]
    lists: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    resolve: BTreeMap<String, OneOrMany>,
    scoped: Option<Vec<RawScoped>>,
    transparent: Option<bool>,
}

/// `network = "off"` or a `[network]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawNetwork {
    Mode(String),
    Table(RawNetworkTable),
}

/// The `[network]` settings of one layer; `None` means "not set here". Rule strings
/// are checked by the proxy when the run starts (`workfence explain` shows errors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSettings {
    /// `allow`
    pub allow: Option<Vec<String>>,
    /// `deny`
    pub deny: Option<Vec<String>>,
    /// `allow_local`
    pub allow_local: Option<Vec<String>>,
    /// `[network.lists]`, added to the lists of earlier layers.
    pub lists: BTreeMap<String, Vec<String>>,
    /// `resolve`, added to the pins of earlier layers.
    pub resolve: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// `[[network.scoped]]`
    pub scoped: Option<Vec<crate::model::ScopedNetwork>>,
    /// `transparent`
    pub transparent: Option<bool>,
}

impl NetworkSettings {
    /// Whether the layer sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == NetworkSettings::default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    mode: Option<Spanned<String>>,
    network: Option<Spanned<RawNetwork>>,
    proxy: Option<Spanned<RawProxy>>,
    allow_write: Option<Vec<Spanned<String>>>,
    deny_read: Option<Vec<Spanned<String>>>,
    allow_read: Option<Vec<Spanned<String>>>,
    default_deny_read: Option<bool>,
    protect: Option<Vec<Spanned<String>>>,
    env_keep: Option<Vec<String>>,
    env_deny: Option<Vec<String>>,
    env_set: Option<BTreeMap<String, String>>,
    max_processes: Option<Spanned<u32>>,
    memory: Option<Spanned<SizeValue>>,
    cpu_percent: Option<Spanned<u32>>,
    tmp_size: Option<Spanned<SizeValue>>,
    timeout: Option<Spanned<String>>,
    allow_degraded: Option<bool>,
    git_write: Option<bool>,
    exec_rules: Option<Vec<RawExecRule>>,
    presets: Option<Vec<String>>,
    profile: Option<BTreeMap<String, Spanned<RawSettings>>>,
}

/// One layer of settings (top level or a profile), validated. `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `mode`
    pub mode: Option<Mode>,
    /// `network` or `[network] mode`: `off`, `on` or `allow` (`proxy` is an old name
    /// for `allow`).
    pub network: Option<String>,
    /// The rest of the `[network]` table.
    pub net: NetworkSettings,
    /// `allow_write` (absolute, `~` expanded later).
    pub allow_write: Vec<PathBuf>,
    /// `deny_read`
    pub deny_read: Vec<PathBuf>,
    /// `allow_read`: removes entries from the deny list.
    pub allow_read: Vec<PathBuf>,
    /// `default_deny_read = false` drops the built-in secret list.
    pub default_deny_read: Option<bool>,
    /// `protect`: extra protected names.
    pub protect: Vec<String>,
    /// `env_keep`
    pub env_keep: Vec<String>,
    /// `env_deny`
    pub env_deny: Vec<String>,
    /// `env_set`
    pub env_set: BTreeMap<String, String>,
    /// `max_processes`
    pub max_processes: Option<u32>,
    /// `memory`
    pub memory_bytes: Option<u64>,
    /// `cpu_percent`
    pub cpu_percent: Option<u32>,
    /// `tmp_size`
    pub tmp_bytes: Option<u64>,
    /// `timeout`
    pub timeout: Option<Duration>,
    /// `allow_degraded`
    pub allow_degraded: Option<bool>,
    /// `git_write`
    pub git_write: Option<bool>,
    /// `exec_rules`
    pub exec_rules: Vec<(Vec<String>, ExecDecision)>,
    /// `presets`
    pub presets: Vec<String>,
}

/// A parsed config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Top-level settings.
    pub settings: Settings,
    /// `[profile.NAME]` tables.
    pub profiles: BTreeMap<String, Settings>,
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl ConfigFile {
    /// Parses and validates a config file's text.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let ctx = Ctx { file: path, text };
        let raw: RawSettings = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let mut msg = e.message().trim().to_string();
            if msg.contains("untagged enum RawNetwork") {
                msg = "network must be \"off\", \"on\", \"allow\", or a [network] table with the keys mode, allow, deny, allow_local, lists, resolve, scoped and transparent (each list a list of strings)".into();
            }
            let key = key_at(text, span.start);
            ctx.err(
                span,
                &key,
                format!("{msg} (see `workfence explain` and the README's configuration section)"),
            )
        })?;
        let mut profiles = BTreeMap::new();
        if let Some(p) = &raw.profile {
            for (name, s) in p {
                let prefix = format!("profile.{name}.");
                if s.get_ref().profile.is_some() {
                    return Err(ctx.err(
                        s.span(),
                        &format!("profile.{name}.profile"),
                        "profiles cannot be nested",
                    ));
                }
                profiles.insert(name.clone(), validate(&ctx, s.get_ref(), &prefix)?);
            }
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            settings: validate(&ctx, &raw, "")?,
            profiles,
        })
    }
}

/// The dotted key of the line that holds `offset` (best effort, for syntax errors).
fn key_at(text: &str, offset: usize) -> String {
    let (line, _) = line_col(text, offset);
    let mut table = String::new();
    let mut key = String::from("(file)");
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        if i + 1 == line {
            if let Some((k, _)) = t.split_once('=') {
                let k = k.trim();
                key = if table.is_empty() {
                    k.to_string()
                } else {
                    format!("{table}.{k}")
                };
            } else if !table.is_empty() {
                key = table.clone();
            }
            break;
        }
    }
    key
}

fn config_path(ctx: &Ctx<'_>, v: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
    let s = v.get_ref();
    if s.is_empty() {
        return Err(ctx.err(v.span(), key, "empty path"));
    }
    if s.contains('\0') {
        return Err(ctx.err(v.span(), key, "path contains a NUL byte"));
    }
    let p = PathBuf::from(s);
    if !(p.is_absolute() || s == "~" || s.starts_with("~/")) {
        return Err(ctx.err(
            v.span(),
            key,
            format!("'{s}' is relative; config paths must be absolute or start with '~/'"),
        ));
    }
    Ok(p)
}

fn paths(
    ctx: &Ctx<'_>,
    v: &Option<Vec<Spanned<String>>>,
    key: &str,
) -> Result<Vec<PathBuf>, ConfigError> {
    v.iter()
        .flatten()
        .map(|p| config_path(ctx, p, key))
        .collect()
}

fn size(
    ctx: &Ctx<'_>,
    v: &Option<Spanned<SizeValue>>,
    key: &str,
) -> Result<Option<u64>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    match v.get_ref() {
        SizeValue::Bytes(b) => Ok(Some(*b)),
        SizeValue::Text(t) => parse_size(t)
            .map(Some)
            .map_err(|m| ctx.err(v.span(), key, m)),
    }
}

fn validate(ctx: &Ctx<'_>, raw: &RawSettings, prefix: &str) -> Result<Settings, ConfigError> {
    let k = |name: &str| format!("{prefix}{name}");
    let mode = match &raw.mode {
        None => None,
        Some(m) => Some(Mode::parse(m.get_ref()).ok_or_else(|| {
            ctx.err(
                m.span(),
                &k("mode"),
                format!(
                    "unknown mode '{}'; use read-only, workspace-write or full-access",
                    m.get_ref()
                ),
            )
        })?),
    };
    let span = raw.network.as_ref().map_or(0..0, |n| n.span());
    let (mode_value, table) = match raw.network.as_ref().map(|n| n.get_ref()) {
        None => (None, None),
        Some(RawNetwork::Mode(m)) => (Some(m), None),
        Some(RawNetwork::Table(t)) => (t.mode.as_ref(), Some(t)),
    };
    let network = match mode_value {
        None => None,
        Some(n) => match n.as_str() {
            "off" | "on" | "allow" => Some(n.clone()),
            "proxy" => Some("allow".to_string()),
            other => {
                return Err(ctx.err(
                    span.clone(),
                    &k("network"),
                    format!("unknown network setting '{other}'; use off, on or allow"),
                ))
            }
        },
    };
    let mut net = NetworkSettings::default();
    if let Some(t) = table {
        net.allow = t.allow.clone();
        net.deny = t.deny.clone();
        net.allow_local = t.allow_local.clone();
        net.lists = t.lists.clone();
        net.transparent = t.transparent;
        for (name, addrs) in &t.resolve {
            let list = match addrs {
                OneOrMany::One(a) => vec![a.clone()],
                OneOrMany::Many(v) => v.clone(),
            };
            if list.is_empty() {
                return Err(ctx.err(
                    span.clone(),
                    &k("network.resolve"),
                    format!("'{name}' has no address; give one (\"192.0.2.7\") or a list"),
                ));
            }
            let mut ips = Vec::new();
            for a in &list {
                ips.push(a.parse::<std::net::IpAddr>().map_err(|_| {
                    ctx.err(
                        span.clone(),
                        &k("network.resolve"),
                        format!("'{a}' (for '{name}') is not an IP address"),
                    )
                })?);
            }
            net.resolve.insert(name.clone(), ips);
        }
        if let Some(sc) = &t.scoped {
            let mut out = Vec::new();
            for r in sc {
                if r.prefix.is_empty() || r.prefix.iter().any(|a| a.is_empty()) {
                    return Err(ctx.err(
                        span.clone(),
                        &k("network.scoped.prefix"),
                        "prefix must be a non-empty list of non-empty arguments",
                    ));
                }
                out.push(crate::model::ScopedNetwork {
                    prefix: r.prefix.clone(),
                    allow: r.allow.clone(),
                    deny: r.deny.clone(),
                    allow_local: r.allow_local.clone(),
                });
            }
            net.scoped = Some(out);
        }
    }
    if let Some(p) = &raw.proxy {
        // The old `[proxy]` table: the same as `[network] allow/deny`.
        if table.is_some_and(|t| t.allow.is_some() || t.deny.is_some()) {
            return Err(ctx.err(
                p.span(),
                &k("proxy"),
                "both [proxy] and [network] allow/deny are set; keep only [network]",
            ));
        }
        net.allow = Some(p.get_ref().allow.clone());
        net.deny = Some(p.get_ref().deny.clone());
    }
    let mut protect = Vec::new();
    for p in raw.protect.iter().flatten() {
        let s = p.get_ref();
        if s.is_empty() || s.contains('/') || s == "." || s == ".." || s.contains('\0') {
            return Err(ctx.err(
                p.span(),
                &k("protect"),
                format!("'{s}' must be a single file or directory name"),
            ));
        }
        protect.push(s.clone());
    }
    let timeout = match &raw.timeout {
        None => None,
        Some(t) => {
            Some(parse_duration(t.get_ref()).map_err(|m| ctx.err(t.span(), &k("timeout"), m))?)
        }
    };
    if let Some(m) = &raw.max_processes {
        if *m.get_ref() < 8 {
            return Err(ctx.err(m.span(), &k("max_processes"), "must be at least 8"));
        }
    }
    let mut exec_rules = Vec::new();
    for r in raw.exec_rules.iter().flatten() {
        let d = match r.decision.get_ref().as_str() {
            "allow" => ExecDecision::Allow,
            "prompt" => ExecDecision::Prompt,
            "forbidden" => ExecDecision::Forbidden,
            other => {
                return Err(ctx.err(
                    r.decision.span(),
                    &k("exec_rules.decision"),
                    format!("unknown decision '{other}'; use allow, prompt or forbidden"),
                ))
            }
        };
        if r.prefix.is_empty() {
            return Err(ctx.err(
                r.decision.span(),
                &k("exec_rules.prefix"),
                "prefix must not be empty",
            ));
        }
        exec_rules.push((r.prefix.clone(), d));
    }
    Ok(Settings {
        mode,
        network,
        net,
        allow_write: paths(ctx, &raw.allow_write, &k("allow_write"))?,
        deny_read: paths(ctx, &raw.deny_read, &k("deny_read"))?,
        allow_read: paths(ctx, &raw.allow_read, &k("allow_read"))?,
        default_deny_read: raw.default_deny_read,
        protect,
        env_keep: raw.env_keep.clone().unwrap_or_default(),
        env_deny: raw.env_deny.clone().unwrap_or_default(),
        env_set: raw.env_set.clone().unwrap_or_default(),
        max_processes: raw.max_processes.as_ref().map(|m| *m.get_ref()),
        memory_bytes: size(ctx, &raw.memory, &k("memory"))?,
        cpu_percent: raw.cpu_percent.as_ref().map(|c| *c.get_ref()),
        tmp_bytes: size(ctx, &raw.tmp_size, &k("tmp_size"))?,
        timeout,
        allow_degraded: raw.allow_degraded,
        git_write: raw.git_write,
        exec_rules,
        presets: raw.presets.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(Path::new("/c/config.toml"), t)
    }

    #[test]
    fn network_string_and_table_forms() {
        assert_eq!(
            parse("network = \"allow\"")
                .unwrap()
                .settings
                .network
                .as_deref(),
            Some("allow")
        );
        assert_eq!(
            parse("network = \"proxy\"")
                .unwrap()
                .settings
                .network
                .as_deref(),
            Some("allow")
        );
        let c = parse("[network]\nmode = \"allow\"\nallow = [\"a.test\"]\ntransparent = false\n")
            .unwrap();
        assert_eq!(c.settings.network.as_deref(), Some("allow"));
        assert_eq!(
            c.settings.net.allow.as_deref(),
            Some(&["a.test".to_string()][..])
        );
        assert_eq!(c.settings.net.transparent, Some(false));
        // The old [proxy] table still works.
        let c = parse("network = \"proxy\"\n[proxy]\nallow = [\"b.test\"]\n").unwrap();
        assert_eq!(
            c.settings.net.allow.as_deref(),
            Some(&["b.test".to_string()][..])
        );
    }

    #[test]
    fn network_errors_name_the_key_and_the_fix() {
        let e = parse("[network]\nresolve = { \"a.test\" = \"not-an-ip\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("network.resolve") && e.contains("not-an-ip"),
            "{e}"
        );
        let e = parse("[network]\nmode = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("off, on or allow"), "{e}");
        let e = parse("[network]\nalow = [\"a.test\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/c/config.toml:") && e.contains("allow, deny"),
            "{e}"
        );
        let e = parse("[network]\nresolve = { \"a.test\" = [] }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no address"), "{e}");
        let e = parse("[[network.scoped]]\nprefix = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("mode = \"read-only\"\nnetwrk = \"on\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/c/config.toml:2:"), "{s}");
        assert!(s.contains("netwrk"), "{s}");
    }

    #[test]
    fn wrong_type_names_line() {
        let e = parse("\n\nmax_processes = \"many\"\n").unwrap_err();
        assert!(e.to_string().starts_with("/c/config.toml:3:"), "{e}");
        assert!(e.to_string().contains("max_processes"), "{e}");
    }

    #[test]
    fn relative_path_is_refused_with_its_line() {
        let e = parse("[profile.x]\nallow_write = [\"cache/x\"]\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(":2:") && s.contains("profile.x.allow_write"),
            "{s}"
        );
        assert!(s.contains("relative"), "{s}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse("mode = \"yolo\"")
            .unwrap_err()
            .to_string()
            .contains("unknown mode"));
        assert!(parse("network = \"maybe\"").is_err());
        assert!(parse("timeout = \"soon\"").is_err());
        assert!(parse("memory = \"lots\"").is_err());
        assert!(parse("protect = [\"a/b\"]").is_err());
        assert!(parse("max_processes = 2").is_err());
        assert!(parse("this is not toml").is_err());
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
mode = "workspace-write"
network = "off"
allow_write = ["~/.cache/x", "/opt/y"]
deny_read = ["~/.secret"]
allow_read = ["~/.npmrc"]
protect = [".envrc"]
env_keep = ["GH_TOKEN"]
env_deny = ["FOO"]
env_set = { A = "1" }
max_processes = 512
memory = "2G"
cpu_percent = 150
tmp_size = 104857600
timeout = "5m"
allow_degraded = false
git_write = true
exec_rules = [{ prefix = ["git", "push"], decision = "prompt" }]
presets = ["cargo"]
[proxy]
allow = ["**.example.org"]
[profile.ci]
network = "on"
timeout = "30s"
"#,
        )
        .unwrap();
        assert_eq!(c.settings.memory_bytes, Some(2 << 30));
        assert_eq!(c.settings.tmp_bytes, Some(104857600));
        assert_eq!(c.profiles["ci"].timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.settings.exec_rules.len(), 1);
    }
}
