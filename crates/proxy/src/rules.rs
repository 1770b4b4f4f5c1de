//! Allow and deny rules, named lists, per-command scopes, and the denial text that tells
//! the user which flag would allow a refused destination.
//!
//! Rule syntax (one string per rule):
//! - `example.com`: exactly this name; `*.example.com`: any subdomain, not the apex;
//!   `**.example.com`: the apex and any subdomain;
//! - an optional `:PORT` limits the rule to one port (`example.com:443`);
//! - a bare IP address (`192.0.2.7`, `192.0.2.7:8080`, `[2001:db8::7]:443`) matches only
//!   that address given literally; name patterns never match addresses;
//! - `@name` expands to the named list the caller passes.
//!
//! Names in rules go through the same normalization as names in requests
//! ([`crate::host::normalize_name`]), so case, a trailing dot and IDNA forms all agree.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::host::{self, Host, HostError, Target};

/// A domain pattern: `host` (exact), `*.host` (subdomains only), `**.host` (subdomains and the apex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this name.
    Exact(String),
    /// Any subdomain, not the apex.
    Subdomains(String),
    /// The apex and any subdomain.
    ApexAndSubdomains(String),
}

/// Why a pattern or a name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not a valid DNS name pattern.
    #[error("invalid domain pattern '{0}': use host, *.host or **.host with letters, digits, '-' and '.'")]
    Invalid(String),
}

/// Normalizes a host name (see [`crate::host::normalize_name`]); `None` for anything that
/// is not a plain DNS name, so that `evil\0.allowed.com` cannot slip through a suffix match.
pub fn normalize(host: &str) -> Option<String> {
    host::normalize_name(host).ok()
}

impl Pattern {
    /// Parses a pattern (no port, no address).
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        let bad = || PatternError::Invalid(s.to_string());
        if let Some(rest) = s.strip_prefix("**.") {
            normalize(rest)
                .map(Pattern::ApexAndSubdomains)
                .ok_or_else(bad)
        } else if let Some(rest) = s.strip_prefix("*.") {
            normalize(rest).map(Pattern::Subdomains).ok_or_else(bad)
        } else {
            normalize(s).map(Pattern::Exact).ok_or_else(bad)
        }
    }

    /// Whether the (normalized) host matches.
    pub fn matches(&self, host: &str) -> bool {
        let sub = |base: &str| {
            host.len() > base.len() + 1
                && host.ends_with(base)
                && host.as_bytes()[host.len() - base.len() - 1] == b'.'
        };
        match self {
            Pattern::Exact(h) => host == h,
            Pattern::Subdomains(b) => sub(b),
            Pattern::ApexAndSubdomains(b) => host == b || sub(b),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(h) => f.write_str(h),
            Pattern::Subdomains(h) => write!(f, "*.{h}"),
            Pattern::ApexAndSubdomains(h) => write!(f, "**.{h}"),
        }
    }
}

/// Why a rule list could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A rule that is not `host`, `*.host`, `**.host` or an address, with an optional port.
    #[error("invalid network rule '{rule}': {reason}; use host, *.host, **.host or an IP address, optionally with :PORT")]
    Invalid {
        /// The rule as written.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `@name` names no list.
    #[error("network rule '@{0}' names no list; define it under [network.lists]")]
    UnknownList(String),
    /// A named list refers to another list; lists are one level deep so that what
    /// `@name` allows is visible where it is defined.
    #[error("named list '{0}' contains '@{1}'; named lists cannot refer to other lists")]
    NestedList(String, String),
}

/// What a rule matches on the host side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatcher {
    /// A name pattern.
    Name(Pattern),
    /// One literal address.
    Ip(IpAddr),
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The host side.
    pub host: HostMatcher,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl Rule {
    /// Parses one rule (not `@name`; see [`RuleSet::new`]).
    pub fn parse(s: &str) -> Result<Rule, RuleError> {
        let invalid = |reason: &dyn fmt::Display| RuleError::Invalid {
            rule: s.escape_debug().to_string(),
            reason: reason.to_string(),
        };
        if s.chars().any(char::is_control) {
            return Err(invalid(&HostError::ControlChar));
        }
        // A bare IPv6 address has colons of its own: try it whole first.
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Rule {
                host: HostMatcher::Ip(ip),
                port: None,
            });
        }
        let (h, p) = host::split_host_port(s).map_err(|e| invalid(&e))?;
        let port = match p {
            None => None,
            Some(p) => Some(host::parse_port(p).ok_or_else(|| invalid(&"bad port"))?),
        };
        let host = if h.starts_with('*') {
            HostMatcher::Name(Pattern::parse(h).map_err(|e| invalid(&e))?)
        } else {
            match Host::parse(h).map_err(|e| invalid(&e))? {
                Host::Ip(ip) => HostMatcher::Ip(ip),
                Host::Name(n) => HostMatcher::Name(Pattern::Exact(n)),
            }
        };
        Ok(Rule { host, port })
    }

    /// Whether the rule matches a destination.
    pub fn matches(&self, t: &Target) -> bool {
        self.matches_host(&t.host) && self.port.is_none_or(|p| p == t.port)
    }

    /// Whether the host side matches, whatever the port.
    pub fn matches_host(&self, h: &Host) -> bool {
        match (&self.host, h) {
            (HostMatcher::Name(p), Host::Name(n)) => p.matches(n),
            (HostMatcher::Ip(a), Host::Ip(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (HostMatcher::Name(p), None) => write!(f, "{p}"),
            (HostMatcher::Name(p), Some(port)) => write!(f, "{p}:{port}"),
            (HostMatcher::Ip(ip), None) => write!(f, "{ip}"),
            (HostMatcher::Ip(IpAddr::V6(ip)), Some(port)) => write!(f, "[{ip}]:{port}"),
            (HostMatcher::Ip(ip), Some(port)) => write!(f, "{ip}:{port}"),
        }
    }
}

/// Named lists (`[network.lists]`), by name without the `@`.
pub type NamedLists = BTreeMap<String, Vec<String>>;

/// The rule check's answer, before any name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An allow rule matched and no deny rule did.
    Allowed {
        /// The matching rule, as text.
        rule: String,
        /// Whether that destination may resolve to a local address: an `allow_local`
        /// rule matched, or the destination is an address listed literally.
        local_ok: bool,
    },
    /// A deny rule matched (deny wins over allow).
    DeniedByRule {
        /// The deny rule, as text.
        rule: String,
    },
    /// No allow rule matched.
    NoMatch,
}

/// Compiled allow, deny and allow-local rules; deny wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    allow_local: Vec<Rule>,
}

fn compile(list: &[String], lists: &NamedLists) -> Result<Vec<Rule>, RuleError> {
    let mut out = Vec::new();
    for s in list {
        if let Some(name) = s.strip_prefix('@') {
            let items = lists
                .get(name)
                .ok_or_else(|| RuleError::UnknownList(name.to_string()))?;
            for item in items {
                if let Some(inner) = item.strip_prefix('@') {
                    return Err(RuleError::NestedList(name.to_string(), inner.to_string()));
                }
                out.push(Rule::parse(item)?);
            }
        } else {
            out.push(Rule::parse(s)?);
        }
    }
    Ok(out)
}

impl RuleSet {
    /// Compiles rule strings. `allow_local` rules allow their destinations like `allow`
    /// rules and also lift the local-address refusal for them (a mirror on the LAN, a
    /// test server on loopback).
    pub fn new(
        allow: &[String],
        deny: &[String],
        allow_local: &[String],
        lists: &NamedLists,
    ) -> Result<RuleSet, RuleError> {
        Ok(RuleSet {
            allow: compile(allow, lists)?,
            deny: compile(deny, lists)?,
            allow_local: compile(allow_local, lists)?,
        })
    }

    /// Checks a destination against the rules (deny first).
    pub fn check(&self, t: &Target) -> Verdict {
        if let Some(r) = self.deny.iter().find(|r| r.matches(t)) {
            return Verdict::DeniedByRule {
                rule: r.to_string(),
            };
        }
        if let Some(r) = self.allow_local.iter().find(|r| r.matches(t)) {
            return Verdict::Allowed {
                rule: format!("allow-local={r}"),
                local_ok: true,
            };
        }
        if let Some(r) = self.allow.iter().find(|r| r.matches(t)) {
            return Verdict::Allowed {
                rule: format!("allow={r}"),
                local_ok: matches!(r.host, HostMatcher::Ip(_)),
            };
        }
        Verdict::NoMatch
    }

    /// Checks a name regardless of port, for the transparent mode's DNS answers, which
    /// are given before any port is known: denied when a deny rule without a port
    /// matches it, allowed when any allow rule matches it on some port (the connection
    /// that follows is checked again with its port by [`RuleSet::check`]).
    pub fn check_name(&self, name: &str) -> Verdict {
        let host = Host::Name(name.to_string());
        let hits = |r: &&Rule| r.matches_host(&host);
        if let Some(r) = self.deny.iter().filter(|r| r.port.is_none()).find(hits) {
            return Verdict::DeniedByRule {
                rule: r.to_string(),
            };
        }
        if let Some(r) = self.allow_local.iter().find(hits) {
            return Verdict::Allowed {
                rule: format!("allow-local={r}"),
                local_ok: true,
            };
        }
        if let Some(r) = self.allow.iter().find(hits) {
            return Verdict::Allowed {
                rule: format!("allow={r}"),
                local_ok: false,
            };
        }
        Verdict::NoMatch
    }

    /// The TCP ports the transparent mode listens on: 80 and 443, and every port an
    /// allow rule names (`host:22`), sorted.
    pub fn transparent_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = [80, 443]
            .into_iter()
            .chain(
                self.allow
                    .iter()
                    .chain(&self.allow_local)
                    .filter_map(|r| r.port),
            )
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Whether nothing at all is allowed.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.allow_local.is_empty()
    }
}

/// Allow and deny patterns for host names only; deny wins. The older, port-less API,
/// kept for callers that only ask about names; the proxy uses [`RuleSet`].
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    rules: RuleSet,
}

impl Allowlist {
    /// Builds an allowlist from policy strings.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Allowlist, PatternError> {
        let pats = |l: &[String]| -> Result<Vec<Rule>, PatternError> {
            l.iter()
                .map(|p| {
                    Pattern::parse(p).map(|p| Rule {
                        host: HostMatcher::Name(p),
                        port: None,
                    })
                })
                .collect()
        };
        Ok(Allowlist {
            rules: RuleSet {
                allow: pats(allow)?,
                deny: pats(deny)?,
                allow_local: Vec::new(),
            },
        })
    }

    /// Whether a connection to the name `host` (any port) may go through.
    pub fn allows(&self, host: &str) -> bool {
        let Some(h) = normalize(host) else {
            return false;
        };
        let t = Target {
            host: Host::Name(h),
            port: 0,
        };
        matches!(self.rules.check(&t), Verdict::Allowed { .. })
    }
}

/// Rules that apply only to commands whose argv starts with `prefix`, added to the base
/// rules for those commands. The first element is compared with argv\[0\]'s file name,
/// so `/usr/bin/npm` matches `npm`. This narrows what each command can reach; it is no
/// boundary against a sandboxed agent that names its own program `npm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedRules {
    /// The argv prefix.
    pub prefix: Vec<String>,
    /// Extra allow rules.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Extra deny rules.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Extra allow-local rules.
    #[serde(default)]
    pub allow_local: Vec<String>,
}

impl ScopedRules {
    fn matches(&self, argv: &[String]) -> bool {
        if self.prefix.is_empty() || self.prefix.len() > argv.len() {
            return false;
        }
        let prog = std::path::Path::new(&argv[0])
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or(&argv[0]);
        prog == self.prefix[0] && self.prefix[1..] == argv[1..self.prefix.len()]
    }
}

/// The network rules as data (what `[network]` config will deserialize into).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Allow rules.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Deny rules (win over allow).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Allow rules that may also reach local addresses.
    #[serde(default)]
    pub allow_local: Vec<String>,
    /// Named lists for `@name`.
    #[serde(default)]
    pub lists: NamedLists,
    /// Per-command additions.
    #[serde(default)]
    pub scoped: Vec<ScopedRules>,
}

/// The rules chosen for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRules {
    /// The compiled rules.
    pub rules: RuleSet,
    /// The prefix of the scope that applied (longest match), if any; goes in the audit log.
    pub scope: Option<Vec<String>>,
}

impl RulesConfig {
    /// Compiles the base rules plus the longest-prefix scope matching `argv`.
    pub fn for_command(&self, argv: &[String]) -> Result<CommandRules, RuleError> {
        let scope = self
            .scoped
            .iter()
            .filter(|s| s.matches(argv))
            .max_by_key(|s| s.prefix.len());
        let join = |base: &[String], extra: Option<&Vec<String>>| -> Vec<String> {
            base.iter()
                .chain(extra.into_iter().flatten())
                .cloned()
                .collect()
        };
        let rules = RuleSet::new(
            &join(&self.allow, scope.map(|s| &s.allow)),
            &join(&self.deny, scope.map(|s| &s.deny)),
            &join(&self.allow_local, scope.map(|s| &s.allow_local)),
            &self.lists,
        )?;
        Ok(CommandRules {
            rules,
            scope: scope.map(|s| s.prefix.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        Target::parse_authority(s, None).unwrap()
    }
    fn rs(allow: &[&str], deny: &[&str]) -> RuleSet {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RuleSet::new(&v(allow), &v(deny), &[], &NamedLists::new()).unwrap()
    }
    fn allowed(r: &RuleSet, s: &str) -> bool {
        matches!(r.check(&t(s)), Verdict::Allowed { .. })
    }

    #[test]
    fn hostile_names_never_match() {
        let a = Allowlist::new(&["**.allowed.com".into()], &[]).unwrap();
        for h in [
            "evil\0.allowed.com",
            "evil.com#.allowed.com",
            "evil.com/.allowed.com",
            "x@allowed.com",
            "allowed.com:443",
            "notallowed.com",
            "",
            ".",
        ] {
            assert!(!a.allows(h), "{h:?}");
        }
        assert!(a.allows("ALLOWED.com."));
        assert!(a.allows("a.b.allowed.com"));
    }

    #[test]
    fn star_excludes_apex() {
        let a = Allowlist::new(&["*.x.org".into()], &[]).unwrap();
        assert!(a.allows("a.x.org"));
        assert!(!a.allows("x.org"));
        assert!(!a.allows("ax.org"));
        assert!(Pattern::parse("*.").is_err());
        assert!(Pattern::parse("bad host").is_err());
    }

    #[test]
    fn wildcards_ports_and_deny() {
        let r = rs(
            &["exact.test", "*.sub.test", "**.both.test", "port.test:8443"],
            &["bad.both.test", "exact.test:25"],
        );
        assert!(allowed(&r, "exact.test:443"));
        assert!(allowed(&r, "EXACT.test.:80"));
        assert!(!allowed(&r, "a.exact.test:443"));
        assert!(allowed(&r, "a.sub.test:443"));
        assert!(allowed(&r, "a.b.sub.test:443"));
        assert!(!allowed(&r, "sub.test:443"));
        assert!(allowed(&r, "both.test:443"));
        assert!(allowed(&r, "x.both.test:443"));
        assert!(allowed(&r, "port.test:8443"));
        assert!(!allowed(&r, "port.test:443"));
        assert_eq!(
            r.check(&t("bad.both.test:443")),
            Verdict::DeniedByRule {
                rule: "bad.both.test".into()
            }
        );
        assert_eq!(
            r.check(&t("exact.test:25")),
            Verdict::DeniedByRule {
                rule: "exact.test:25".into()
            }
        );
        assert_eq!(r.check(&t("other.test:443")), Verdict::NoMatch);
    }

    #[test]
    fn idna_rules_and_requests_agree() {
        let r = rs(&["**.bücher.example"], &[]);
        assert!(allowed(&r, "xn--bcher-kva.example:443"));
        assert!(allowed(&r, "WWW.BÜCHER.example:443"));
        assert_eq!(
            r.check(&t("bücher.example:443")),
            Verdict::Allowed {
                rule: "allow=**.xn--bcher-kva.example".into(),
                local_ok: false
            }
        );
    }

    #[test]
    fn ips_only_when_listed() {
        let r = rs(&["**.test", "192.0.2.7:8080", "2001:db8::7"], &[]);
        assert!(allowed(&r, "192.0.2.7:8080"));
        assert!(!allowed(&r, "192.0.2.7:80"));
        assert!(!allowed(&r, "192.0.2.8:8080"));
        assert!(allowed(&r, "[2001:db8::7]:443"));
        assert_eq!(
            r.check(&t("192.0.2.7:8080")),
            Verdict::Allowed {
                rule: "allow=192.0.2.7:8080".into(),
                local_ok: true
            }
        );
        // A name pattern never matches an address.
        let r = rs(&["**.0.0.127.in-addr.arpa", "*.test"], &[]);
        assert!(!allowed(&r, "127.0.0.1:80"));
    }

    #[test]
    fn bad_rules() {
        for bad in [
            "a b",
            "evil\0.com",
            "*.",
            "x.com:0",
            "x.com:99999",
            "x.com:",
            "***.x.com",
            "*x.com",
            "127.1",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_without_ports_and_transparent_ports() {
        let r = rs(
            &["a.test:22", "**.b.test", "192.0.2.7:8080"],
            &["x.b.test:443", "y.b.test"],
        );
        assert!(matches!(r.check_name("a.test"), Verdict::Allowed { .. }));
        assert!(matches!(r.check_name("z.b.test"), Verdict::Allowed { .. }));
        // A deny rule with a port leaves the name's other ports allowed.
        assert!(matches!(r.check_name("x.b.test"), Verdict::Allowed { .. }));
        assert_eq!(
            r.check_name("y.b.test"),
            Verdict::DeniedByRule {
                rule: "y.b.test".into()
            }
        );
        assert_eq!(r.check_name("other.test"), Verdict::NoMatch);
        assert_eq!(r.transparent_ports(), vec![22, 80, 443, 8080]);
    }

    #[test]
    fn named_lists() {
        let mut lists = NamedLists::new();
        lists.insert(
            "rust".into(),
            vec!["crates.test".into(), "**.rs.test".into()],
        );
        lists.insert("loop".into(), vec!["@rust".into()]);
        let r = RuleSet::new(&["@rust".into()], &[], &[], &lists).unwrap();
        assert!(allowed(&r, "crates.test:443"));
        assert!(allowed(&r, "static.rs.test:443"));
        assert_eq!(
            RuleSet::new(&["@nope".into()], &[], &[], &lists),
            Err(RuleError::UnknownList("nope".into()))
        );
        assert!(matches!(
            RuleSet::new(&["@loop".into()], &[], &[], &lists),
            Err(RuleError::NestedList(..))
        ));
    }

    #[test]
    fn allow_local_rules() {
        let r = RuleSet::new(
            &[],
            &["deny.test".into()],
            &["mirror.test".into(), "deny.test".into()],
            &NamedLists::new(),
        )
        .unwrap();
        assert_eq!(
            r.check(&t("mirror.test:80")),
            Verdict::Allowed {
                rule: "allow-local=mirror.test".into(),
                local_ok: true
            }
        );
        assert!(matches!(
            r.check(&t("deny.test:80")),
            Verdict::DeniedByRule { .. }
        ));
    }

    #[test]
    fn command_scopes() {
        let cfg: RulesConfig = serde_json::from_value(serde_json::json!({
            "allow": ["base.test"],
            "lists": { "node": ["registry.node.test"] },
            "scoped": [
                { "prefix": ["npm"], "allow": ["npm-any.test"] },
                { "prefix": ["npm", "install"], "allow": ["@node"] }
            ]
        }))
        .unwrap();
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = cfg
            .for_command(&argv(&["/usr/bin/npm", "install", "left-pad"]))
            .unwrap();
        assert_eq!(c.scope, Some(argv(&["npm", "install"])));
        assert!(allowed(&c.rules, "registry.node.test:443"));
        assert!(allowed(&c.rules, "base.test:443"));
        assert!(!allowed(&c.rules, "npm-any.test:443"));
        let c = cfg.for_command(&argv(&["npm", "test"])).unwrap();
        assert_eq!(c.scope, Some(argv(&["npm"])));
        assert!(!allowed(&c.rules, "registry.node.test:443"));
        let c = cfg
            .for_command(&argv(&["sh", "-c", "npm install"]))
            .unwrap();
        assert_eq!(c.scope, None);
        assert!(!allowed(&c.rules, "registry.node.test:443"));
        assert!(allowed(&c.rules, "base.test:443"));
    }
}
