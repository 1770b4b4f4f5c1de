//! Host names and authorities: the one place that turns untrusted text (a request
//! line, a Host header, a SOCKS hostname, a rule) into a canonical host.
//!
//! Every path into the proxy goes through [`Host::parse`], so a name that one path
//! would read differently from another (a NUL, a control character, a Unicode
//! look-alike, an IPv4 address in hex) cannot be matched against a rule under one
//! reading and connected to under another.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest input accepted before normalization; bounds the IDNA work on hostile input.
const MAX_RAW_LEN: usize = 1024;
/// The longest DNS name (RFC 1035), without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// The longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Why a host or an authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Empty.
    #[error("empty host name")]
    Empty,
    /// A NUL or another control character: never part of a real name, and a classic
    /// way to make a suffix check and a resolver disagree.
    #[error("host name contains a NUL or control character")]
    ControlChar,
    /// Longer than DNS allows.
    #[error("host name is longer than 253 characters (or a label longer than 63)")]
    TooLong,
    /// Not a DNS name after IDNA (UTS #46) processing.
    #[error(
        "host name '{0}' is not a valid DNS name (letters, digits, '-' and '.'; IDNA allowed)"
    )]
    Invalid(String),
    /// A numeric last label that is not a plain dotted-quad address (`127.1`, `0x7f.1`,
    /// `2130706433`): resolvers read these as IPv4 addresses, rules would read them as names.
    #[error("host '{0}' looks like an IPv4 address in a non-standard form; write it as a.b.c.d")]
    AmbiguousNumeric(String),
    /// An authority whose port is missing, zero or not a number.
    #[error("invalid port in '{0}'")]
    Port(String),
}

/// A canonical host: a normalized DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// Lower-case ASCII (Punycode), no trailing dot, valid lengths.
    Name(String),
    /// A literal address.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
        }
    }
}

impl Host {
    /// Parses a host as it appears in an authority: a name, a dotted-quad IPv4 address,
    /// or a bracketed IPv6 address (`[::1]`; unbracketed IPv6 is accepted too, for SOCKS
    /// and rules).
    pub fn parse(raw: &str) -> Result<Host, HostError> {
        check_raw(raw)?;
        if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return inner
                .parse::<Ipv6Addr>()
                .map(|a| Host::Ip(IpAddr::V6(a)))
                .map_err(|_| HostError::Invalid(raw.to_string()));
        }
        if let Ok(a) = raw.parse::<Ipv6Addr>() {
            return Ok(Host::Ip(IpAddr::V6(a)));
        }
        if let Ok(a) = raw.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(a)));
        }
        normalize_name(raw).map(Host::Name)
    }

    /// The name, if this is one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }
}

/// What every host text must pass before it is parsed: not empty, no control
/// characters, not over-long.
fn check_raw(raw: &str) -> Result<(), HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw.chars().any(char::is_control) {
        return Err(HostError::ControlChar);
    }
    if raw.len() > MAX_RAW_LEN {
        return Err(HostError::TooLong);
    }
    Ok(())
}

/// Normalizes a DNS name: IDNA (UTS #46, STD3 rules) to lower-case ASCII, one trailing
/// dot removed, DNS lengths checked. Refuses control characters and numeric look-alikes.
pub fn normalize_name(raw: &str) -> Result<String, HostError> {
    check_raw(raw)?;
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(HostError::Empty);
    }
    let ascii = idna::domain_to_ascii_cow(trimmed.as_bytes(), idna::AsciiDenyList::STD3)
        .map_err(|_| HostError::Invalid(raw.to_string()))?;
    // UTS #46 maps some characters (an ideographic full stop, for one) to '.', so the
    // trailing-dot and label checks run again on its output.
    let name = ascii.strip_suffix('.').unwrap_or(&ascii).to_string();
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::Invalid(raw.to_string()));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::TooLong);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(HostError::Invalid(raw.to_string()));
        }
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(HostError::AmbiguousNumeric(raw.to_string()));
    }
    Ok(name)
}

/// A host and a port, as the proxy was asked to reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Canonical host.
    pub host: Host,
    /// Destination port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Target {
    /// Parses `host:port` (`[v6]:port` for IPv6). With `default_port`, the port may be
    /// left out (`host`), as in an absolute-form URI or a Host header.
    pub fn parse_authority(raw: &str, default_port: Option<u16>) -> Result<Target, HostError> {
        if raw.chars().any(char::is_control) {
            return Err(HostError::ControlChar);
        }
        let (host, port) = split_host_port(raw)?;
        let port = match port {
            Some(p) => parse_port(p).ok_or_else(|| HostError::Port(raw.to_string()))?,
            None => default_port.ok_or_else(|| HostError::Port(raw.to_string()))?,
        };
        Ok(Target {
            host: Host::parse(host)?,
            port,
        })
    }
}

/// Splits `host[:port]`, `[v6][:port]`. A bare IPv6 address without brackets is
/// refused here because its last group would read as a port.
pub(crate) fn split_host_port(raw: &str) -> Result<(&str, Option<&str>), HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw.starts_with('[') {
        let end = raw
            .find(']')
            .ok_or_else(|| HostError::Invalid(raw.to_string()))?;
        let host = &raw[..=end];
        return match &raw[end + 1..] {
            "" => Ok((host, None)),
            rest => rest
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or_else(|| HostError::Invalid(raw.to_string())),
        };
    }
    match raw.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Err(HostError::Invalid(raw.to_string())),
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((raw, None)),
    }
}

/// A port: 1-65535, decimal digits only (no sign, no spaces).
pub(crate) fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize() {
        assert_eq!(normalize_name("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            normalize_name("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_name("BÜCHER.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_name("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        // An ideographic full stop is a dot after UTS #46.
        assert_eq!(normalize_name("a\u{3002}example").unwrap(), "a.example");
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            ".",
            "evil.com\0.allowed.com",
            "evil.com\n.allowed.com",
            "evil\u{7f}.com",
            "a..b",
            "-a.b",
            "a b.com",
            "x@allowed.com",
            "evil.com/.allowed.com",
            "evil.com#.allowed.com",
            "a_b.com",
            "127.1",
            "2130706433",
            "0x7f.1",
            "xn--.example",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert_eq!(Host::parse(&long), Err(HostError::TooLong));
        let long = vec!["a"; 130].join(".");
        assert_eq!(Host::parse(&long), Err(HostError::TooLong));
        assert_eq!(Host::parse(&"a".repeat(5000)), Err(HostError::TooLong));
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Host::parse("127.0.0.1").unwrap(),
            Host::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            Host::parse("[::1]").unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!(Host::parse("[::1]").unwrap().to_string(), "[::1]");
        assert!(Host::parse("[evil.com]").is_err());
    }

    #[test]
    fn authorities_parse() {
        let t = Target::parse_authority("Example.com:8443", None).unwrap();
        assert_eq!(t.to_string(), "example.com:8443");
        let t = Target::parse_authority("[::1]:80", None).unwrap();
        assert_eq!(t.to_string(), "[::1]:80");
        assert_eq!(
            Target::parse_authority("example.com", Some(80))
                .unwrap()
                .port,
            80
        );
        for bad in [
            "example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+80",
            "example.com: 80",
            "::1:80",
            "[::1]x:80",
            "evil.com\0:80",
        ] {
            assert!(Target::parse_authority(bad, None).is_err(), "{bad:?}");
        }
    }

    /// Random strings from a hostile alphabet never panic, and whatever parses is
    /// canonical: it parses again to itself.
    #[test]
    fn random_hosts_are_canonical_or_refused() {
        let alphabet: Vec<char> = "aZ09-._:[]%@\0\n\u{7f}xn--ü。ß*/ ".chars().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((x >> (i % 8 * 8)) as usize + i) % alphabet.len()])
                .collect();
            if let Ok(h) = Host::parse(&s) {
                assert_eq!(Host::parse(&h.to_string()), Ok(h.clone()), "{s:?}");
            }
            let _ = Target::parse_authority(&s, Some(80));
        }
    }
}
