//! The transparent mode against real sockets on loopback: the DNS responder over a real
//! UDP socket, and transparent listeners reached at synthetic addresses. No network
//! namespace here, so the synthetic pool is 127.77.0.0/16, addresses this host already
//! treats as its own, and each transparent listener is bound to the address the test
//! dials (in the sandbox, one wildcard listener per port takes every address). The
//! destinations are local servers on 127.0.0.1 reached through `resolve` pins.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use workfence_proxy::{
    AuditRecord, Decision, MemorySink, NamedLists, Protocol, Proxy, ProxyConfig, RuleSet,
    SyntheticPool,
};

const POOL: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 0);

fn v(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

struct T {
    proxy: Proxy,
    sink: Arc<MemorySink>,
    dns: SocketAddr,
}

async fn start(allow: &[&str], deny: &[&str], local: &[&str], http_ports: Vec<u16>) -> T {
    let rules = RuleSet::new(&v(allow), &v(deny), &v(local), &NamedLists::new()).unwrap();
    let mut cfg = ProxyConfig::new(rules);
    let mut pins: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for n in ["echo.test", "web.test", "other.test"] {
        pins.insert(n.into(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
    cfg.resolve = pins;
    cfg.synthetic = SyntheticPool {
        base: POOL,
        prefix: 16,
    };
    cfg.transparent_http_ports = http_ports;
    cfg.handshake_timeout = Duration::from_secs(3);
    cfg.connect_timeout = Duration::from_secs(3);
    let sink = Arc::new(MemorySink::default());
    let proxy = Proxy::new(cfg, sink.clone()).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = sock.local_addr().unwrap();
    let p = proxy.clone();
    tokio::spawn(async move { p.serve_dns(sock).await });
    T { proxy, sink, dns }
}

impl T {
    async fn records(&self, n: usize) -> Vec<AuditRecord> {
        for _ in 0..300 {
            let r = self.sink.records();
            if r.len() >= n {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} audit records, got {:?}", self.sink.records());
    }

    /// A transparent listener at `addr` (port 0: any), served by the proxy.
    async fn listen(&self, addr: SocketAddr) -> SocketAddr {
        let l = TcpListener::bind(addr).await.unwrap();
        let a = l.local_addr().unwrap();
        let p = self.proxy.clone();
        tokio::spawn(async move { p.serve_transparent(l).await });
        a
    }
}

async fn ask_at(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(server).await.unwrap();
    let mut q = Message::new();
    q.set_id(0x5150).set_recursion_desired(true);
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    s.send(&q.to_vec().unwrap()).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf))
        .await
        .expect("no DNS answer")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.id(), 0x5150);
    m
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

async fn synthetic(t: &T, name: &str) -> Ipv4Addr {
    let m = ask_at(t.dns, name, RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    match a_records(&m).as_slice() {
        [IpAddr::V4(a)] => *a,
        other => panic!("{other:?}"),
    }
}

async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A ClientHello (one record) with this server name.
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(n) = sni {
        let n = n.as_bytes();
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `payload`, reads what comes back until `payload.len()` bytes or EOF.
async fn exchange(to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(payload).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < payload.len() {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer from {to}"),
        }
    }
    got
}

#[tokio::test]
async fn dns_answers_allowed_names_with_synthetic_addresses() {
    let t = start(
        &["**.ok.test", "ssh.test:22"],
        &["bad.ok.test"],
        &[],
        vec![80],
    )
    .await;
    let a = synthetic(&t, "www.ok.test.").await;
    assert_eq!(a, Ipv4Addr::new(127, 77, 0, 1));
    // Stable, case-insensitive.
    assert_eq!(synthetic(&t, "WWW.Ok.Test.").await, a);
    // A rule with a port allows the name in DNS; its port is checked at connect time.
    assert_eq!(
        synthetic(&t, "ssh.test.").await,
        Ipv4Addr::new(127, 77, 0, 2)
    );
    // AAAA (and other types) for an allowed name: no data, so clients use IPv4.
    let m = ask_at(t.dns, "www.ok.test.", RecordType::AAAA).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    let m = ask_at(t.dns, "www.ok.test.", RecordType::TXT).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    // localhost is the loopback, whatever the rules.
    let m = ask_at(t.dns, "localhost.", RecordType::A).await;
    assert_eq!(a_records(&m), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let m = ask_at(t.dns, "x.localhost.", RecordType::AAAA).await;
    assert_eq!(a_records(&m), vec!["::1".parse::<IpAddr>().unwrap()]);
    // Nothing allowed so far was recorded as a denial.
    assert!(t.proxy.denials().is_empty());
    assert!(t.sink.records().is_empty());
}

#[tokio::test]
async fn dns_refuses_other_names_with_a_denial() {
    let t = start(&["**.ok.test"], &["bad.ok.test"], &[], vec![80]).await;
    let m = ask_at(t.dns, "elsewhere.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.answers().is_empty());
    let m = ask_at(t.dns, "elsewhere.test.", RecordType::AAAA).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    let m = ask_at(t.dns, "bad.ok.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    let d = t.proxy.denials();
    // One denial per name, not per query.
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0].host, "elsewhere.test");
    assert!(
        d[0].fix.contains("--network allow=elsewhere.test"),
        "{}",
        d[0].fix
    );
    assert_eq!(d[1].rule.as_deref(), Some("deny=bad.ok.test"));
    // One audit line per denied name too (a loop over retries or random names must not
    // grow the log without bound).
    let r = t.records(2).await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r
        .iter()
        .all(|r| r.protocol == Protocol::Dns && r.decision == Decision::Deny));
    assert_eq!(r[0].host.as_deref(), Some("elsewhere.test"));
}

#[tokio::test]
async fn dns_malformed_queries() {
    let t = start(&["**.ok.test"], &[], &[], vec![80]).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(t.dns).await.unwrap();
    // A header claiming one question that is not there: FORMERR, same id.
    let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[0xff; 7]);
    s.send(&bad).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.id(), 0x1234);
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    // Too short to be a query: ignored, and the responder keeps answering.
    s.send(&[1, 2, 3]).await.unwrap();
    assert_eq!(
        synthetic(&t, "a.ok.test.").await,
        Ipv4Addr::new(127, 77, 0, 1)
    );
}

/// The answer leaves from the address the query went to, even on a wildcard socket:
/// what a resolver with a connected socket needs when every address is local.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn dns_answers_from_the_queried_address() {
    let t = start(&["**.ok.test"], &[], &[], vec![80]).await;
    let sock = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let p = t.proxy.clone();
    tokio::spawn(async move { p.serve_dns(sock).await });
    let m = ask_at(
        SocketAddr::from(([127, 0, 0, 53], port)),
        "a.ok.test.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        a_records(&m),
        vec![IpAddr::V4(Ipv4Addr::new(127, 77, 0, 1))]
    );
}

#[tokio::test]
async fn transparent_connect_to_a_synthetic_address_reaches_the_pinned_server() {
    let t = start(&[], &[], &["echo.test"], vec![]).await;
    let port = echo_server().await;
    let a = synthetic(&t, "echo.test.").await;
    let l = t.listen(SocketAddr::from((a, port))).await;
    // Plain bytes (not TLS) on a non-HTTP port: carried unchanged.
    assert_eq!(
        exchange(l, b"hello through the name").await,
        b"hello through the name"
    );
    // A ClientHello naming the same host: carried unchanged too (nothing is decrypted).
    let hello = client_hello(Some("Echo.Test"));
    assert_eq!(exchange(l, &hello).await, hello);
    let r = t.records(2).await;
    for r in &r {
        assert_eq!(r.protocol, Protocol::Transparent);
        assert_eq!(r.decision, Decision::Allow, "{r:?}");
        assert_eq!(r.host.as_deref(), Some("echo.test"));
        assert_eq!(r.port, Some(port));
        assert_eq!(r.resolved, Some(SocketAddr::from(([127, 0, 0, 1], port))));
        assert_eq!(r.rule.as_deref(), Some("allow-local=echo.test"));
    }
    assert_eq!(r[1].bytes_up, hello.len() as u64);
    assert_eq!(r[1].bytes_down, hello.len() as u64);
}

#[tokio::test]
async fn a_tls_server_name_that_contradicts_the_address_is_refused() {
    let t = start(&[], &[], &["echo.test", "other.test"], vec![]).await;
    let port = echo_server().await;
    let a = synthetic(&t, "echo.test.").await;
    let l = t.listen(SocketAddr::from((a, port))).await;
    // Domain fronting: the address is echo.test's, the hello names other.test.
    let got = exchange(l, &client_hello(Some("other.test"))).await;
    assert!(got.is_empty(), "{got:?}");
    // A hello split over two records is read whole, and still refused.
    let one = client_hello(Some("other.test"));
    let hs = &one[5..];
    let mut split = Vec::new();
    for part in [&hs[..10], &hs[10..]] {
        split.extend_from_slice(&[0x16, 3, 1]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    assert!(exchange(l, &split).await.is_empty());
    // A handshake record that is not a ClientHello is refused, not waved through.
    assert!(exchange(l, &[0x16, 3, 1, 0, 4, 2, 0, 0, 0])
        .await
        .is_empty());
    let r = t.records(3).await;
    assert!(r.iter().all(|r| r.decision == Decision::Reject), "{r:?}");
    assert!(
        r[0].reason
            .as_deref()
            .unwrap()
            .contains("contradicts echo.test"),
        "{r:?}"
    );
    assert!(
        r[1].reason
            .as_deref()
            .unwrap()
            .contains("contradicts echo.test"),
        "{r:?}"
    );
    assert!(t.proxy.denials().is_empty());
}

#[tokio::test]
async fn a_raw_ip_or_an_unlisted_port_is_refused_with_a_denial() {
    let t = start(&["echo.test:22"], &[], &[], vec![]).await;
    let port = echo_server().await;
    // An address the DNS never handed out is a literal IP, and no rule lists it.
    let l = t.listen(SocketAddr::from(([127, 0, 0, 9], port))).await;
    assert!(exchange(l, b"hi").await.is_empty());
    // echo.test is allowed on port 22 only.
    let a = synthetic(&t, "echo.test.").await;
    let l2 = t.listen(SocketAddr::from((a, port))).await;
    assert!(exchange(l2, b"hi").await.is_empty());
    let d = t.proxy.denials();
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0].host, "127.0.0.9");
    assert!(d[0].fix.contains("Bare IP addresses"), "{}", d[0].fix);
    assert_eq!(d[1].host, "echo.test");
    assert_eq!(d[1].port, port);
    let r = t.records(2).await;
    assert!(r
        .iter()
        .all(|r| r.protocol == Protocol::Transparent && r.decision == Decision::Deny));
}

/// A local HTTP server answering `origin saw PATH host=HOST`.
async fn http_server() -> u16 {
    use http_body_util::Full;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        let body = format!("origin saw {} host={host}", req.uri());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

async fn http_get(to: SocketAddr, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(to).await.unwrap();
    let req = format!("GET /path?q=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[tokio::test]
async fn plain_http_is_checked_on_the_host_header() {
    let port = http_server().await;
    let t = start(&[], &[], &["web.test"], vec![port]).await;
    let a = synthetic(&t, "web.test.").await;
    let l = t.listen(SocketAddr::from((a, port))).await;
    let (code, body) = http_get(l, &format!("web.test:{port}")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, format!("origin saw /path?q=1 host=web.test:{port}"));
    // A Host naming another site on the same address is refused.
    let (code, body) = http_get(l, &format!("other.test:{port}")).await;
    assert_eq!(code, 400);
    assert!(body.contains("contradicts web.test"), "{body}");
    let r = t.records(2).await;
    assert_eq!(r[0].protocol, Protocol::TransparentHttp);
    assert_eq!(r[0].decision, Decision::Allow);
    assert_eq!(
        r[0].resolved,
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    );
    assert_eq!(r[1].decision, Decision::Reject);
}

#[tokio::test]
async fn plain_http_to_a_name_not_allowed_on_this_port_gets_403() {
    let port = http_server().await;
    let t = start(&[], &[], &["web.test:1"], vec![port]).await;
    let a = synthetic(&t, "web.test.").await;
    let l = t.listen(SocketAddr::from((a, port))).await;
    let (code, body) = http_get(l, &format!("web.test:{port}")).await;
    assert_eq!(code, 403);
    assert!(body.contains("no allow rule matches"), "{body}");
    assert_eq!(t.proxy.denials().len(), 1);
}

#[tokio::test]
async fn the_explicit_proxy_reads_a_synthetic_address_as_its_name() {
    let t = start(&[], &[], &["echo.test"], vec![]).await;
    let port = echo_server().await;
    let a = synthetic(&t, "echo.test.").await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let paddr = l.local_addr().unwrap();
    let p = t.proxy.clone();
    tokio::spawn(async move { p.serve_tcp(l).await });
    let mut s = TcpStream::connect(paddr).await.unwrap();
    let req = format!("CONNECT {a}:{port} HTTP/1.1\r\nHost: {a}:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(s);
    let r = t.records(1).await;
    assert_eq!(r[0].protocol, Protocol::Connect);
    assert_eq!(r[0].host.as_deref(), Some("echo.test"));
    assert_eq!(r[0].decision, Decision::Allow);
}
