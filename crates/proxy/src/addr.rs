//! The address policy applied after a name is resolved: a public allowlisted name that
//! resolves to a loopback, private or metadata address (DNS rebinding, SSRF) is refused
//! unless a rule allows local destinations for it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of destination an address is. Everything but [`AddrClass::Public`] is
/// "local" and needs an explicit allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddrClass {
    /// A globally routed address.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16) and IPv6 unique-local fc00::/7.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// Carrier-grade NAT, 100.64.0.0/10 (RFC 6598).
    Cgnat,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8, 255.255.255.255.
    Multicast,
    /// 240.0.0.0/4 (reserved), which no host should be reaching.
    Reserved,
    /// A cloud instance-metadata endpoint: 169.254.169.254, fd00:ec2::254.
    Metadata,
    /// An address of one of this host's own interfaces (its services listening on
    /// 0.0.0.0 or [::] answer there), whatever its range.
    ThisHost,
}

impl AddrClass {
    /// Whether this class may be reached without an explicit local allow.
    pub fn is_public(self) -> bool {
        self == AddrClass::Public
    }

    /// Words for a denial message.
    pub fn describe(self) -> &'static str {
        match self {
            AddrClass::Public => "a public address",
            AddrClass::Loopback => "a loopback address",
            AddrClass::Private => "a private-network address",
            AddrClass::LinkLocal => "a link-local address",
            AddrClass::Cgnat => "a carrier-grade-NAT address",
            AddrClass::Unspecified => "the unspecified address",
            AddrClass::Multicast => "a multicast or broadcast address",
            AddrClass::Reserved => "a reserved address",
            AddrClass::Metadata => "a cloud metadata address",
            AddrClass::ThisHost => "an address of this host",
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Classifies an address, counting `host_addrs` (this host's interface addresses) as
/// [`AddrClass::ThisHost`]. IPv4 embedded in IPv6 is compared as the IPv4 address.
pub fn classify_for_host(ip: IpAddr, host_addrs: &[IpAddr]) -> AddrClass {
    let canon = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .or_else(|| v6.to_ipv4())
            .filter(|_| !v6.is_loopback() && !v6.is_unspecified())
            .map_or(a, IpAddr::V4),
        v4 => v4,
    };
    let c = classify(ip);
    if c.is_public() && host_addrs.iter().any(|h| canon(*h) == canon(ip)) {
        AddrClass::ThisHost
    } else {
        c
    }
}

/// Classifies an address. IPv4 addresses embedded in IPv6 (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`) are classified as the IPv4 address
/// they reach, so `[::ffff:127.0.0.1]` is loopback.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

fn classify_v4(a: Ipv4Addr) -> AddrClass {
    let o = a.octets();
    if a == Ipv4Addr::new(169, 254, 169, 254) {
        AddrClass::Metadata
    } else if o[0] == 0 {
        AddrClass::Unspecified
    } else if a.is_loopback() {
        AddrClass::Loopback
    } else if a.is_private() {
        AddrClass::Private
    } else if a.is_link_local() {
        AddrClass::LinkLocal
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        AddrClass::Cgnat
    } else if a.is_multicast() || a.is_broadcast() {
        AddrClass::Multicast
    } else if o[0] >= 240 {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> AddrClass {
    let s = a.segments();
    if a == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
        return AddrClass::Metadata;
    }
    if a.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if a.is_loopback() {
        return AddrClass::Loopback;
    }
    if let Some(v4) = a.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // IPv4-compatible (deprecated, ::a.b.c.d) and NAT64 (64:ff9b::/96): the last 32 bits
    // are the IPv4 destination.
    let embedded = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded);
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => AddrClass::Private,
        x if x & 0xffc0 == 0xfe80 => AddrClass::LinkLocal,
        x if x & 0xff00 == 0xff00 => AddrClass::Multicast,
        _ => AddrClass::Public,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> AddrClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classes() {
        assert_eq!(c("127.0.0.1"), AddrClass::Loopback);
        assert_eq!(c("127.255.0.9"), AddrClass::Loopback);
        assert_eq!(c("10.1.2.3"), AddrClass::Private);
        assert_eq!(c("172.16.0.1"), AddrClass::Private);
        assert_eq!(c("172.31.255.255"), AddrClass::Private);
        assert_eq!(c("172.32.0.1"), AddrClass::Public);
        assert_eq!(c("192.168.1.1"), AddrClass::Private);
        assert_eq!(c("169.254.1.1"), AddrClass::LinkLocal);
        assert_eq!(c("169.254.169.254"), AddrClass::Metadata);
        assert_eq!(c("100.64.0.1"), AddrClass::Cgnat);
        assert_eq!(c("100.127.255.255"), AddrClass::Cgnat);
        assert_eq!(c("100.128.0.1"), AddrClass::Public);
        assert_eq!(c("0.0.0.0"), AddrClass::Unspecified);
        assert_eq!(c("0.1.2.3"), AddrClass::Unspecified);
        assert_eq!(c("224.0.0.1"), AddrClass::Multicast);
        assert_eq!(c("255.255.255.255"), AddrClass::Multicast);
        assert_eq!(c("240.0.0.1"), AddrClass::Reserved);
        assert_eq!(c("8.8.4.4"), AddrClass::Public);
        assert_eq!(c("::1"), AddrClass::Loopback);
        assert_eq!(c("::"), AddrClass::Unspecified);
        assert_eq!(c("fd00:ec2::254"), AddrClass::Metadata);
        assert_eq!(c("fd12::1"), AddrClass::Private);
        assert_eq!(c("fc00::1"), AddrClass::Private);
        assert_eq!(c("fe80::1"), AddrClass::LinkLocal);
        assert_eq!(c("ff02::1"), AddrClass::Multicast);
        assert_eq!(c("::ffff:127.0.0.1"), AddrClass::Loopback);
        assert_eq!(c("::ffff:169.254.169.254"), AddrClass::Metadata);
        assert_eq!(c("::10.0.0.1"), AddrClass::Private);
        assert_eq!(c("64:ff9b::a00:1"), AddrClass::Private);
        assert_eq!(c("2001:db8::1"), AddrClass::Public);
    }

    #[test]
    fn this_hosts_own_addresses_are_not_public() {
        let host: Vec<IpAddr> = vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
        let c = |s: &str| classify_for_host(s.parse().unwrap(), &host);
        assert_eq!(c("192.0.2.2"), AddrClass::ThisHost);
        assert_eq!(c("::ffff:192.0.2.2"), AddrClass::ThisHost);
        assert_eq!(c("2001:db8::2"), AddrClass::ThisHost);
        assert!(!c("192.0.2.2").is_public());
        // Other public addresses stay public; local ones keep their own class.
        assert_eq!(c("192.0.2.3"), AddrClass::Public);
        assert_eq!(c("127.0.0.1"), AddrClass::Loopback);
    }
}
