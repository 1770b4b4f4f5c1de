//! The transparent mode's DNS responder. Inside the sandbox's network namespace every
//! address is local, so a query to any resolver reaches this one. A name the rules
//! allow gets a synthetic IPv4 address from a per-run pool; the transparent TCP
//! listeners later map that address back to the name, so the proxy decides on names
//! and never hands the sandbox a real address. Everything else gets NXDOMAIN and a
//! recorded denial.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Distinct denied names recorded (audit line and denial) per run; later ones are
/// answered NXDOMAIN without a record.
const MAX_DENIED_NAMES: usize = 1000;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{rdata, RData, Record, RecordType};
use tokio::net::UdpSocket;

use super::{Audit, Proxy, ProxyError};
use crate::audit::{Decision, Denial, Protocol};
use crate::host::normalize_name;
use crate::rules::Verdict;

/// Time to live of a synthetic answer. The mapping never changes during a run; a short
/// TTL only bounds what a long-lived cache inside the sandbox keeps after it.
const TTL: u32 = 60;

/// The IPv4 block synthetic addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticPool {
    /// The block's first address.
    pub base: Ipv4Addr,
    /// Its prefix length (at most 30).
    pub prefix: u8,
}

impl Default for SyntheticPool {
    /// 198.18.0.0/15, reserved for benchmarking (RFC 2544): never a real destination,
    /// so a synthetic address cannot be mistaken for one.
    fn default() -> Self {
        SyntheticPool {
            base: Ipv4Addr::new(198, 18, 0, 0),
            prefix: 15,
        }
    }
}

impl SyntheticPool {
    fn size(self) -> u32 {
        1u32 << (32 - u32::from(self.prefix.clamp(8, 30)))
    }
}

/// Names and the addresses handed out for them, both ways.
#[derive(Debug)]
pub(crate) struct Synth {
    pool: SyntheticPool,
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// Names already recorded as denied, so that A and AAAA (and retries) make one
    /// denial, not one per query.
    denied: BTreeSet<String>,
}

impl Synth {
    pub(crate) fn new(pool: SyntheticPool) -> Synth {
        Synth {
            pool,
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            denied: BTreeSet::new(),
        }
    }

    /// The address for `name`, handed out on first use; `None` when the pool is spent.
    fn address_for(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(a) = self.by_name.get(name) {
            return Some(*a);
        }
        // Offsets 1 ..= size-2: skip the block's first and last addresses.
        let n = self.by_name.len() as u32 + 1;
        if n + 1 >= self.pool.size() {
            return None;
        }
        // The base aligned to its prefix, so that base + n stays inside the block (and
        // cannot overflow) whatever a library caller passed.
        let base = u32::from(self.pool.base) & !(self.pool.size() - 1);
        let a = Ipv4Addr::from(base + n);
        self.by_name.insert(name.to_string(), a);
        self.by_addr.insert(a, name.to_string());
        Some(a)
    }

    pub(crate) fn name_for(&self, a: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&a).map(String::as_str)
    }
}

/// What to answer.
enum Answer {
    /// These addresses (possibly none: NOERROR without an answer).
    Addrs(Vec<IpAddr>),
    /// NXDOMAIN (a name not allowed, or not a valid name).
    NxDomain,
    /// SERVFAIL (the synthetic pool is spent).
    ServFail,
}

impl Proxy {
    /// Answers DNS queries on a UDP socket until receiving fails (transparent mode).
    /// On Linux, each answer leaves from the address its query was sent to (IP_PKTINFO
    /// on an IPv4 socket), which resolvers with a connected socket require when the
    /// sandbox's network namespace routes every address to itself.
    pub async fn serve_dns(&self, socket: UdpSocket) -> Result<(), ProxyError> {
        pkt::enable(&socket).map_err(ProxyError::Dns)?;
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer, dst) = match pkt::recv(&socket, &mut buf).await {
                Ok(x) => x,
                Err(e) if super::transient(&e) => continue,
                // A datagram from a peer whose earlier answer bounced (ICMP unreachable).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(ProxyError::Dns(e)),
            };
            if let Some(reply) = self.dns_reply(&buf[..n]) {
                // A lost answer is retried by the client; nothing to do about it here.
                let _ = pkt::send(&socket, &reply, peer, dst).await;
            }
        }
    }

    /// The answer to one query message, or `None` to stay silent (not a query at all).
    pub(crate) fn dns_reply(&self, query: &[u8]) -> Option<Vec<u8>> {
        let req = match Message::from_vec(query) {
            Ok(m) => m,
            // Unparseable: FORMERR if the header at least is there and is a query.
            Err(_) if query.len() >= 12 && query[2] & 0x80 == 0 => {
                let id = u16::from_be_bytes([query[0], query[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            Err(_) => return None,
        };
        if req.message_type() != MessageType::Query {
            return None;
        }
        let mut resp = Message::new();
        resp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(req.op_code())
            .set_recursion_desired(req.recursion_desired())
            .set_recursion_available(true);
        let q = match req.queries() {
            [q] if req.op_code() == OpCode::Query => q.clone(),
            _ => {
                resp.set_response_code(if req.op_code() == OpCode::Query {
                    ResponseCode::FormErr
                } else {
                    ResponseCode::NotImp
                });
                return resp.to_vec().ok();
            }
        };
        resp.add_query(q.clone());
        match self.dns_answer(&q) {
            Answer::Addrs(addrs) => {
                for a in addrs {
                    let rd = match a {
                        IpAddr::V4(a) => RData::A(rdata::A(a)),
                        IpAddr::V6(a) => RData::AAAA(rdata::AAAA(a)),
                    };
                    resp.add_answer(Record::from_rdata(q.name().clone(), TTL, rd));
                }
            }
            Answer::NxDomain => {
                resp.set_response_code(ResponseCode::NXDomain);
            }
            Answer::ServFail => {
                resp.set_response_code(ResponseCode::ServFail);
            }
        }
        resp.to_vec().ok()
    }

    fn dns_answer(&self, q: &Query) -> Answer {
        let raw = q.name().to_ascii();
        let qtype = q.query_type();
        let want = |v4: IpAddr, v6: IpAddr| match qtype {
            RecordType::A => vec![v4],
            RecordType::AAAA => vec![v6],
            _ => vec![],
        };
        let name = match normalize_name(&raw) {
            Ok(n) => n,
            Err(e) => {
                self.dns_audit(
                    None,
                    Decision::Reject,
                    None,
                    format!("DNS query for '{}': {e}", raw.escape_debug()),
                );
                return Answer::NxDomain;
            }
        };
        // RFC 6761: localhost and its subdomains are the loopback, answered here so
        // that nothing asks further.
        if name == "localhost" || name.ends_with(".localhost") {
            return Answer::Addrs(want(Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()));
        }
        let (reason, fix, rule) = match self.inner.config.rules.check_name(&name) {
            Verdict::Allowed { .. } => {
                if qtype != RecordType::A {
                    // AAAA and every other type: no data, so clients use the A answer.
                    return Answer::Addrs(vec![]);
                }
                let mut s = self.inner.synth.lock().unwrap_or_else(|e| e.into_inner());
                return match s.address_for(&name) {
                    Some(a) => Answer::Addrs(vec![a.into()]),
                    None => {
                        drop(s);
                        self.dns_audit(
                            Some(&name),
                            Decision::Error,
                            None,
                            "the transparent mode's synthetic address pool is spent".into(),
                        );
                        Answer::ServFail
                    }
                };
            }
            Verdict::DeniedByRule { rule } => (
                format!("DNS lookup of {name} denied by the deny rule '{rule}' (deny wins over allow)"),
                format!("To allow it, remove '{rule}' from the deny rules ([network] deny / --network deny=)."),
                Some(format!("deny={rule}")),
            ),
            Verdict::NoMatch => (
                format!("DNS lookup of {name} denied: no allow rule matches it"),
                format!("To allow it: --network allow={name}, or add it to [network] allow."),
                None,
            ),
        };
        let first = {
            let mut s = self.inner.synth.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a loop over random names must not grow the host's memory.
            s.denied.len() < MAX_DENIED_NAMES && s.denied.insert(name.clone())
        };
        if first {
            // One audit line per denied name, not per query (retries, random names).
            self.dns_audit(Some(&name), Decision::Deny, rule.clone(), reason.clone());
            // Port 0: a lookup names no port.
            self.deny(&Denial {
                host: name,
                port: 0,
                reason,
                rule,
                fix,
            });
        }
        Answer::NxDomain
    }

    fn dns_audit(&self, host: Option<&str>, d: Decision, rule: Option<String>, reason: String) {
        let mut a = Audit::new(Protocol::Dns, self.inner.config.scope.clone());
        a.record.host = host.map(str::to_string);
        a.outcome(d, rule, Some(reason));
        a.finish(&*self.inner.sink, (0, 0));
    }
}

/// Receiving with the destination address and answering from it.
#[cfg(target_os = "linux")]
mod pkt {
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
        SockaddrStorage,
    };
    use tokio::io::Interest;
    use tokio::net::UdpSocket;

    pub(super) fn enable(s: &UdpSocket) -> io::Result<()> {
        if s.local_addr()?.is_ipv4() {
            setsockopt(s, sockopt::Ipv4PacketInfo, &true)?;
        }
        Ok(())
    }

    pub(super) async fn recv(
        s: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
        s.async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!(libc::in_pktinfo);
            let m = recvmsg::<SockaddrStorage>(
                s.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )?;
            let peer = m
                .address
                .and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v| SocketAddr::from(*v))
                        .or_else(|| a.as_sockaddr_in6().map(|v| SocketAddr::from(*v)))
                })
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "datagram without a sender address",
                    )
                })?;
            let mut dst = None;
            for c in m.cmsgs()? {
                if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                    dst = Some(IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(
                        info.ipi_addr.s_addr,
                    ))));
                }
            }
            Ok((m.bytes, peer, dst))
        })
        .await
    }

    pub(super) async fn send(
        s: &UdpSocket,
        buf: &[u8],
        to: SocketAddr,
        from: Option<IpAddr>,
    ) -> io::Result<usize> {
        let Some(IpAddr::V4(from)) = from else {
            return s.send_to(buf, to).await;
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(from).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let to = SockaddrStorage::from(to);
        s.async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(buf)];
            let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
            Ok(sendmsg(
                s.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&to),
            )?)
        })
        .await
    }
}

/// Elsewhere the transparent mode does not exist; plain datagrams serve the tests.
#[cfg(not(target_os = "linux"))]
mod pkt {
    use std::io;
    use std::net::{IpAddr, SocketAddr};

    use tokio::net::UdpSocket;

    pub(super) fn enable(_: &UdpSocket) -> io::Result<()> {
        Ok(())
    }

    pub(super) async fn recv(
        s: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
        let (n, peer) = s.recv_from(buf).await?;
        Ok((n, peer, None))
    }

    pub(super) async fn send(
        s: &UdpSocket,
        buf: &[u8],
        to: SocketAddr,
        _from: Option<IpAddr>,
    ) -> io::Result<usize> {
        s.send_to(buf, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_stable_addresses() {
        let mut s = Synth::new(SyntheticPool::default());
        let a = s.address_for("a.test").unwrap();
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(s.address_for("b.test"), Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(s.address_for("a.test"), Some(a));
        assert_eq!(s.name_for(a), Some("a.test"));
        let mut tiny = Synth::new(SyntheticPool {
            base: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 30,
        });
        assert!(tiny.address_for("1.test").is_some());
        assert!(tiny.address_for("2.test").is_some());
        assert_eq!(tiny.address_for("3.test"), None);
    }
}
