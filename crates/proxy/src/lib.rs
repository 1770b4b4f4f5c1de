//! # workfence-proxy
//!
//! The network proxy through which a sandbox with `network = "proxy"` will reach the
//! domains its policy allows. The sandbox keeps its private network namespace and can
//! reach only this proxy; the proxy resolves names itself and refuses private and
//! loopback destinations after resolution.
//!
//! This release ships the allowlist matcher, which is pure and shared with `explain`;
//! the HTTP CONNECT / SOCKS5 server arrives with the allowlist feature.
//!
//! ```
//! use workfence_proxy::Allowlist;
//! let a = Allowlist::new(&["**.example.org".into(), "api.test".into()], &["evil.example.org".into()]).unwrap();
//! assert!(a.allows("example.org"));
//! assert!(a.allows("x.example.org"));
//! assert!(!a.allows("evil.example.org"));
//! assert!(!a.allows("api.test.attacker.net"));
//! ```

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

/// Normalizes a host name: lower case, no trailing dot. Refuses anything that is not
/// a plain DNS name (NUL bytes, spaces, `@`, ports), so that a name like
/// `evil\0.allowed.com` cannot slip through a suffix match.
pub fn normalize(host: &str) -> Option<String> {
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then_some(h)
}

impl Pattern {
    /// Parses a pattern.
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

/// Allow and deny patterns; deny wins.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl Allowlist {
    /// Builds an allowlist from policy strings.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Allowlist, PatternError> {
        Ok(Allowlist {
            allow: allow
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
            deny: deny
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether a connection to `host` may go through.
    pub fn allows(&self, host: &str) -> bool {
        let Some(h) = normalize(host) else {
            return false;
        };
        !self.deny.iter().any(|p| p.matches(&h)) && self.allow.iter().any(|p| p.matches(&h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(Pattern::parse("*.").is_err());
        assert!(Pattern::parse("bad host").is_err());
    }
}
