//! A strict SOCKS5 (RFC 1928) parser for the greeting and the request, plus RFC 1929
//! username/password sub-negotiation. Pure functions over byte slices, so they can be
//! fuzzed and tested without sockets; the server drives them.
//!
//! Only `CONNECT` is supported (no `BIND`, no `UDP ASSOCIATE`). A hostname is checked
//! here for NUL and control bytes and handed to [`crate::host::Host::parse`], which is
//! the same normalization every other path uses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::host::{Host, HostError, Target};

/// SOCKS version 5.
pub const VERSION: u8 = 5;
/// "No authentication required".
pub const METHOD_NONE: u8 = 0x00;
/// Username/password (RFC 1929).
pub const METHOD_USERPASS: u8 = 0x02;
/// "No acceptable methods".
pub const METHOD_NO_ACCEPTABLE: u8 = 0xff;

/// Reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0x00,
    /// General SOCKS server failure.
    GeneralFailure = 0x01,
    /// Connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// Network unreachable.
    NetworkUnreachable = 0x03,
    /// Host unreachable.
    HostUnreachable = 0x04,
    /// Connection refused.
    ConnectionRefused = 0x05,
    /// TTL expired (used for a connect timeout).
    TtlExpired = 0x06,
    /// Command not supported.
    CommandNotSupported = 0x07,
    /// Address type not supported.
    AddressTypeNotSupported = 0x08,
}

/// Why a SOCKS message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    /// Not version 5.
    #[error("not SOCKS5 (version byte {0:#04x})")]
    Version(u8),
    /// A greeting offering no methods.
    #[error("SOCKS5 greeting lists no authentication methods")]
    NoMethods,
    /// A command other than CONNECT.
    #[error("SOCKS5 command {0:#04x} is not supported (only CONNECT)")]
    Command(u8),
    /// The reserved byte was not zero.
    #[error("SOCKS5 reserved byte is not zero")]
    Reserved,
    /// An unknown address type.
    #[error("SOCKS5 address type {0:#04x} is not supported")]
    AddressType(u8),
    /// A zero port.
    #[error("SOCKS5 request for port 0")]
    Port,
    /// A hostname that is not a valid host (includes an embedded NUL).
    #[error("SOCKS5 hostname refused: {0}")]
    Host(HostError),
    /// A hostname that is not UTF-8.
    #[error("SOCKS5 hostname is not UTF-8")]
    NotUtf8,
    /// A malformed RFC 1929 sub-negotiation.
    #[error("SOCKS5 username/password message is malformed")]
    Auth,
}

impl SocksError {
    /// The reply code to send for this error, when a request-stage reply is due.
    pub fn reply(&self) -> Reply {
        match self {
            SocksError::Command(_) => Reply::CommandNotSupported,
            SocksError::AddressType(_) => Reply::AddressTypeNotSupported,
            SocksError::Host(_) | SocksError::NotUtf8 | SocksError::Port => Reply::NotAllowed,
            _ => Reply::GeneralFailure,
        }
    }
}

/// A parse step's result: a value and how many bytes it used, or "need more bytes".
pub type Parsed<T> = Result<Option<(T, usize)>, SocksError>;

/// Parses the client greeting: `VER NMETHODS METHODS...`; returns the methods offered.
pub fn parse_greeting(buf: &[u8]) -> Parsed<Vec<u8>> {
    let [ver, n, ..] = *buf else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(SocksError::Version(ver));
    }
    if n == 0 {
        return Err(SocksError::NoMethods);
    }
    let end = 2 + n as usize;
    Ok(buf.get(2..end).map(|m| (m.to_vec(), end)))
}

/// Parses an RFC 1929 request: `VER=1 ULEN UNAME PLEN PASSWD`.
pub fn parse_userpass(buf: &[u8]) -> Parsed<(Vec<u8>, Vec<u8>)> {
    let [ver, ulen, ..] = *buf else {
        return Ok(None);
    };
    if ver != 1 {
        return Err(SocksError::Auth);
    }
    let u_end = 2 + ulen as usize;
    let Some(&plen) = buf.get(u_end) else {
        return Ok(None);
    };
    let end = u_end + 1 + plen as usize;
    match buf.get(..end) {
        None => Ok(None),
        Some(_) => Ok(Some((
            (buf[2..u_end].to_vec(), buf[u_end + 1..end].to_vec()),
            end,
        ))),
    }
}

/// Parses a request: `VER CMD RSV ATYP DST.ADDR DST.PORT`. Only CONNECT.
pub fn parse_request(buf: &[u8]) -> Parsed<Target> {
    let [ver, cmd, rsv, atyp, ..] = *buf else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(SocksError::Version(ver));
    }
    if cmd != 0x01 {
        return Err(SocksError::Command(cmd));
    }
    if rsv != 0 {
        return Err(SocksError::Reserved);
    }
    let (host, addr_end) = match atyp {
        0x01 => {
            let Some(b) = buf.get(4..8) else {
                return Ok(None);
            };
            (
                Host::Ip(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
                8,
            )
        }
        0x04 => {
            let Some(b) = buf.get(4..20) else {
                return Ok(None);
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            (Host::Ip(IpAddr::V6(Ipv6Addr::from(o))), 20)
        }
        0x03 => {
            let Some(&len) = buf.get(4) else {
                return Ok(None);
            };
            let end = 5 + len as usize;
            let Some(name) = buf.get(5..end) else {
                return Ok(None);
            };
            // Checked on bytes before any decoding: `evil.com\0.allowed.com` stops here.
            if name.iter().any(|b| *b < 0x20 || *b == 0x7f) {
                return Err(SocksError::Host(HostError::ControlChar));
            }
            let name = std::str::from_utf8(name).map_err(|_| SocksError::NotUtf8)?;
            (Host::parse(name).map_err(SocksError::Host)?, end)
        }
        other => return Err(SocksError::AddressType(other)),
    };
    let Some(p) = buf.get(addr_end..addr_end + 2) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([p[0], p[1]]);
    if port == 0 {
        return Err(SocksError::Port);
    }
    Ok(Some((Target { host, port }, addr_end + 2)))
}

/// A reply with the bound address left as 0.0.0.0:0 (clients ignore it for CONNECT, and
/// the real local address would tell the sandbox about the host).
pub fn reply(code: Reply) -> [u8; 10] {
    [VERSION, code as u8, 0, 0x01, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(atyp: u8, addr: &[u8], port: u16) -> Vec<u8> {
        let mut v = vec![5, 1, 0, atyp];
        v.extend_from_slice(addr);
        v.extend_from_slice(&port.to_be_bytes());
        v
    }
    fn name(n: &[u8]) -> Vec<u8> {
        let mut v = vec![n.len() as u8];
        v.extend_from_slice(n);
        v
    }

    #[test]
    fn greeting() {
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0, 2, 9]), Ok(Some((vec![0, 2], 4))));
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(SocksError::Version(4)));
        assert_eq!(parse_greeting(&[5, 0]), Err(SocksError::NoMethods));
    }

    #[test]
    fn userpass() {
        assert_eq!(
            parse_userpass(&[1, 1, b'u', 2, b'p', b'w']),
            Ok(Some(((b"u".to_vec(), b"pw".to_vec()), 6)))
        );
        assert_eq!(parse_userpass(&[1, 1, b'u', 2, b'p']), Ok(None));
        assert_eq!(parse_userpass(&[1, 5, b'u']), Ok(None));
        assert_eq!(parse_userpass(&[2, 0, 0]), Err(SocksError::Auth));
    }

    #[test]
    fn requests() {
        let r = req(3, &name(b"Example.TEST."), 443);
        let (t, n) = parse_request(&r).unwrap().unwrap();
        assert_eq!(n, r.len());
        assert_eq!(t.to_string(), "example.test:443");
        // Every strict prefix is "need more", never an error or a value.
        for i in 0..r.len() {
            assert_eq!(parse_request(&r[..i]), Ok(None), "prefix {i}");
        }
        let r = req(1, &[127, 0, 0, 1], 80);
        assert_eq!(
            parse_request(&r).unwrap().unwrap().0.to_string(),
            "127.0.0.1:80"
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        let r = req(4, &v6, 22);
        assert_eq!(
            parse_request(&r).unwrap().unwrap().0.to_string(),
            "[::1]:22"
        );
    }

    #[test]
    fn hostile_requests() {
        let nul = req(3, &name(b"evil.com\0.allowed.com"), 443);
        assert_eq!(
            parse_request(&nul),
            Err(SocksError::Host(HostError::ControlChar))
        );
        assert!(parse_request(&req(3, &name(b"a\nb.com"), 443)).is_err());
        assert!(parse_request(&req(3, &name(b""), 443)).is_err());
        assert!(parse_request(&req(3, &name(b"bad host"), 443)).is_err());
        assert!(parse_request(&req(3, &name(b"\xff\xfe.com"), 443)).is_err());
        assert!(parse_request(&req(3, &name(&[b'a'; 255]), 443)).is_err());
        assert_eq!(
            parse_request(&req(3, &name(b"a.com"), 0)),
            Err(SocksError::Port)
        );
        assert_eq!(
            parse_request(&[5, 2, 0, 1, 1, 2, 3, 4, 0, 80]),
            Err(SocksError::Command(2))
        );
        assert_eq!(
            parse_request(&[5, 1, 1, 1, 1, 2, 3, 4, 0, 80]),
            Err(SocksError::Reserved)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 9, 1, 2, 3, 4, 0, 80]),
            Err(SocksError::AddressType(9))
        );
        assert_eq!(SocksError::Command(3).reply(), Reply::CommandNotSupported);
    }

    /// A cheap in-CI companion of the `socks` fuzz target (crates/proxy/fuzz): random and mutated
    /// inputs never panic, and a request that parses also parses from every longer buffer
    /// to the same value and length.
    #[test]
    fn random_inputs_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seed = req(3, &name(b"git.allowed.test"), 22);
        for i in 0..20_000 {
            let mut buf = if i % 2 == 0 {
                seed.clone()
            } else {
                (0..(next() % 300)).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 4) {
                if !buf.is_empty() {
                    let at = (next() as usize) % buf.len();
                    buf[at] = next() as u8;
                }
            }
            let _ = parse_greeting(&buf);
            let _ = parse_userpass(&buf);
            if let Ok(Some((t, n))) = parse_request(&buf) {
                assert!(n <= buf.len());
                let mut longer = buf.clone();
                longer.extend_from_slice(b"trailing");
                assert_eq!(parse_request(&longer), Ok(Some((t, n))));
            }
        }
    }
}
