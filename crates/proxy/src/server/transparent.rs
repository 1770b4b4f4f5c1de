//! The transparent mode: connections from proxy-unaware clients, taken on listeners
//! inside the sandbox's network namespace where every address routes to the
//! namespace itself. The accepted socket's local address is the destination the
//! client asked for: a synthetic address handed out by [`Proxy::serve_dns`] stands for
//! the name it was handed out for; any other address is a literal IP, reached only
//! when a rule lists it. From there on the connection takes the explicit proxy's
//! authorization path (rules, resolution on the host, address policy, connect to the
//! checked address) and leaves the same audit records and denials.
//!
//! Nothing is decrypted. TLS clients have their ClientHello read (not answered) so
//! that a server name contradicting the name behind the address is refused; plain
//! HTTP on port 80 is served request by request, with the Host header checked.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tls_parser::{
    parse_tls_extensions, parse_tls_message_handshake, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[cfg(not(target_os = "linux"))]
use super::TUNNEL_BUF;
use super::{forward, text_response, Audit, Authz, Body, Handling, Proxy, ProxyError, Slot};
use crate::audit::{Decision, Protocol};
use crate::host::{normalize_name, Host, Target};
use crate::io::{Counted, Counters};

/// How long a client on a port other than 80 and 443 has to speak first before the
/// connection is carried without a look at its first bytes (a protocol where the server
/// speaks first: SMTP, FTP, some SSH servers' clients wait for the banner).
const SNIFF_WINDOW: Duration = Duration::from_millis(250);

/// TLS record header, and the largest plaintext record (RFC 8446, 5.1) plus slack.
const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = 16384 + 256;
/// The largest ClientHello read (post-quantum key shares make them ~2 KiB today).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What the first client bytes said.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    /// Nothing within the window (the server speaks first).
    Silent,
    /// Not a TLS handshake.
    NotTls,
    /// A TLS ClientHello, with its server name if it had one.
    Tls(Option<String>),
}

impl Proxy {
    /// Serves a transparent-mode TCP listener (one per port; see
    /// [`crate::RuleSet::transparent_ports`]) until accept fails. Port 80 is taken as
    /// plain HTTP; every other port as a byte stream whose TLS server name, if any, is
    /// checked.
    pub async fn serve_transparent(&self, listener: TcpListener) -> Result<(), ProxyError> {
        // The same slots as the explicit listeners: one budget per run.
        self.accept_loop(&listener, |p, s, slot| async move {
            p.transparent_conn(s, slot).await
        })
        .await
    }

    /// The destination a transparent connection was made to: the name behind a
    /// synthetic address, or the literal address.
    pub(crate) fn original_target(&self, local: SocketAddr) -> Target {
        let ip = local.ip().to_canonical();
        if let IpAddr::V4(v4) = ip {
            let s = self.inner.synth.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = s.name_for(v4) {
                return Target {
                    host: Host::Name(n.to_string()),
                    port: local.port(),
                };
            }
        }
        Target {
            host: Host::Ip(ip),
            port: local.port(),
        }
    }

    /// An explicit-proxy target that is a synthetic address stands for its name: a
    /// client that resolved the name through the transparent DNS and then gives the
    /// proxy the address (a SOCKS client resolving locally, an absolute-form URL with
    /// the address) asks for the name, and is judged on it.
    pub(crate) fn named(&self, t: Target) -> Target {
        // Only a synthetic address changes: any other literal stays as written (a
        // mapped `::ffff:a.b.c.d` is not the rule's `a.b.c.d` on this path).
        let Host::Ip(IpAddr::V4(v4)) = t.host else {
            return t;
        };
        let s = self.inner.synth.lock().unwrap_or_else(|e| e.into_inner());
        match s.name_for(v4) {
            Some(n) => Target {
                host: Host::Name(n.to_string()),
                port: t.port,
            },
            None => t,
        }
    }

    async fn transparent_conn(&self, stream: TcpStream, slot: Slot) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let target = self.original_target(local);
        if self
            .inner
            .config
            .transparent_http_ports
            .contains(&target.port)
        {
            self.transparent_http(stream, target, slot).await;
        } else {
            self.transparent_tcp(stream, target).await;
            drop(slot);
        }
    }

    async fn transparent_tcp(&self, mut stream: TcpStream, target: Target) {
        let sink = self.inner.sink.clone();
        let mut audit = Audit::new(Protocol::Transparent, self.inner.config.scope.clone());
        audit.target(&target);
        let timeout = self.inner.config.handshake_timeout;
        // TLS clients speak first; on 443 wait for them as long as any handshake.
        let window = if target.port == 443 {
            timeout
        } else {
            SNIFF_WINDOW.min(timeout)
        };
        let mut buf = Vec::new();
        let sniffed = match sniff(&mut stream, &mut buf, window, timeout).await {
            // On 443 only TLS is carried, and TLS clients speak first: a client that
            // waits could otherwise name another server behind this address after the
            // check (domain fronting). Other ports admit server-first protocols, so
            // there the server-name check holds only for clients that speak at once.
            Ok(Sniffed::Silent) if target.port == 443 => Err(format!(
                "no TLS ClientHello within {} s on port 443",
                timeout.as_secs()
            )),
            other => other,
        };
        let sniffed = match sniffed {
            Ok(s) => s,
            Err(reason) => {
                audit.outcome(Decision::Reject, None, Some(reason));
                audit.finish(&*sink, (0, 0));
                return;
            }
        };
        if let (Sniffed::Tls(Some(sni)), Host::Name(name)) = (&sniffed, &target.host) {
            if normalize_name(sni).ok().as_deref() != Some(name.as_str()) {
                audit.outcome(
                    Decision::Reject,
                    None,
                    Some(format!(
                        "TLS server name '{}' contradicts {name}, the name this address was given for",
                        sni.escape_debug()
                    )),
                );
                audit.finish(&*sink, (0, 0));
                return;
            }
        }
        let (addrs, rule) = match self.authorize(&target).await {
            Authz::Allowed { addrs, rule } => (addrs, rule),
            Authz::Denied(d) => {
                audit.outcome(Decision::Deny, d.rule.clone(), Some(d.reason.clone()));
                audit.finish(&*sink, (0, 0));
                self.deny(&d);
                return;
            }
            Authz::Failed { rule, reason } => {
                audit.outcome(Decision::Error, Some(rule), Some(reason));
                audit.finish(&*sink, (0, 0));
                return;
            }
        };
        let upstream = match self.connect(&target, &addrs).await {
            Ok(s) => s,
            Err(reason) => {
                audit.outcome(Decision::Error, Some(rule), Some(reason));
                audit.finish(&*sink, (0, 0));
                return;
            }
        };
        audit.record.resolved = upstream.peer_addr().ok();
        audit.outcome(Decision::Allow, Some(rule), None);
        match self.handling(&target) {
            Handling::PassThrough => {
                let counters = Counters::default();
                audit.arm(&sink, &counters);
                let mut up = Counted::new(upstream, counters.clone());
                // The bytes read to look at the handshake go first, unchanged.
                if !buf.is_empty() && up.write_all(&buf).await.is_err() {
                    audit.finish(&*sink, counters.get());
                    return;
                }
                // Zero-copy, as the explicit tunnels (crate::splice).
                #[cfg(target_os = "linux")]
                if let Err(e) = crate::splice::relay(&stream, up.get_ref(), &counters).await {
                    audit.record.reason = Some(format!("the relay ended with an error: {e}"));
                }
                #[cfg(not(target_os = "linux"))]
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut stream,
                    &mut up,
                    TUNNEL_BUF,
                    TUNNEL_BUF,
                )
                .await;
                audit.finish(&*sink, counters.get());
            }
        }
    }

    async fn transparent_http(&self, stream: TcpStream, target: Target, slot: Slot) {
        let p = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let p = p.clone();
            let slot = slot.clone();
            let target = target.clone();
            async move {
                Ok::<_, std::convert::Infallible>(p.transparent_request(req, target, slot).await)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.config.handshake_timeout)
            // A client that half-closes after its request still gets its answer.
            .half_close(true)
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    }

    async fn transparent_request(
        &self,
        req: Request<Incoming>,
        target: Target,
        slot: Slot,
    ) -> Response<Body> {
        let sink = self.inner.sink.clone();
        let mut audit = Audit::new(Protocol::TransparentHttp, self.inner.config.scope.clone());
        audit.target(&target);
        if let Err(reason) = check_request(&req, &target) {
            audit.outcome(Decision::Reject, None, Some(reason.clone()));
            audit.finish(&*sink, (0, 0));
            return text_response(StatusCode::BAD_REQUEST, format!("workfence: {reason}\n"));
        }
        let (upstream, audit) = match self.http_upstream(&target, audit, &sink).await {
            Ok(x) => x,
            Err(refusal) => return refusal,
        };
        match self.handling(&target) {
            Handling::PassThrough => forward(req, &target, upstream, audit, sink, slot).await,
        }
    }
}

/// A transparent HTTP request must be an ordinary request to an origin server whose
/// Host header (and absolute-form target, if any) names the destination: the address
/// decided where the request goes, and a Host naming another site would have the
/// allowed server relay it there (domain fronting). For a literal-IP destination the
/// Host is not compared: the connection goes to that listed address whatever it says.
fn check_request(req: &Request<Incoming>, target: &Target) -> Result<(), String> {
    if req.method() == Method::CONNECT {
        return Err("CONNECT sent to a web server port; configure the proxy from the proxy variables instead".into());
    }
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err("more than one Host header".into());
    }
    let Host::Name(_) = target.host else {
        return Ok(());
    };
    let mut claims = Vec::new();
    if let Some(h) = hosts.first() {
        claims.push(
            h.to_str()
                .map_err(|_| "Host header is not ASCII text".to_string())?
                .to_string(),
        );
    }
    if let Some(a) = req.uri().authority() {
        claims.push(a.as_str().to_string());
    }
    for c in claims {
        let t = Target::parse_authority(&c, Some(target.port))
            .map_err(|e| format!("Host '{}': {e}", c.escape_debug()))?;
        if t != *target {
            return Err(format!(
                "Host '{}' contradicts {target}, the destination this address was given for",
                c.escape_debug()
            ));
        }
    }
    Ok(())
}

/// Reads the client's first bytes into `buf`. Waits `window` for the first of them;
/// if they start a TLS handshake record, reads the whole ClientHello (across records,
/// within `timeout`) and returns its server name. Fails closed on a handshake it
/// cannot read, so that a server name cannot hide in a malformed or fragmented hello.
async fn sniff(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    window: Duration,
    timeout: Duration,
) -> Result<Sniffed, String> {
    match tokio::time::timeout(window, s.read_buf(buf)).await {
        Err(_) => return Ok(Sniffed::Silent),
        Ok(Ok(0)) => return Err("the client closed the connection before sending anything".into()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("reading from the client: {e}")),
    }
    if buf[0] != 0x16 {
        return Ok(Sniffed::NotTls);
    }
    match tokio::time::timeout(timeout, read_client_hello(s, buf)).await {
        Ok(r) => r.map(Sniffed::Tls),
        Err(_) => Err("timed out reading the TLS ClientHello".into()),
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> Result<(), String> {
    while buf.len() < want {
        match s.read_buf(buf).await {
            Ok(0) => {
                return Err("the client closed the connection inside the TLS ClientHello".into())
            }
            Ok(_) => {}
            Err(e) => return Err(format!("reading the TLS ClientHello: {e}")),
        }
    }
    Ok(())
}

/// Gathers the handshake message from as many records as it spans, then parses it
/// with `tls-parser`.
async fn read_client_hello(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<String>, String> {
    let mut hs = Vec::new();
    let mut off = 0;
    let need = loop {
        fill(s, buf, off + RECORD_HEADER).await?;
        let len = usize::from(u16::from_be_bytes([buf[off + 3], buf[off + 4]]));
        if buf[off] != 0x16 {
            return Err("a TLS record inside the ClientHello is not a handshake record".into());
        }
        if len == 0 || len > MAX_RECORD {
            return Err(format!("a TLS record of {len} bytes"));
        }
        fill(s, buf, off + RECORD_HEADER + len).await?;
        hs.extend_from_slice(&buf[off + RECORD_HEADER..off + RECORD_HEADER + len]);
        off += RECORD_HEADER + len;
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Err("the first TLS handshake message is not a ClientHello".into());
            }
            let need =
                4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if need > MAX_CLIENT_HELLO {
                return Err(format!("a TLS ClientHello of {need} bytes"));
            }
            if hs.len() >= need {
                break need;
            }
        }
    };
    server_name(&hs[..need])
}

/// The host name in a ClientHello's server_name extension, if it has one.
fn server_name(hello: &[u8]) -> Result<Option<String>, String> {
    let bad = |what: &str| format!("unreadable TLS ClientHello ({what})");
    let ch = match parse_tls_message_handshake(hello) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) => ch,
        _ => return Err(bad("handshake")),
    };
    let Some(ext) = ch.ext else {
        return Ok(None);
    };
    let exts = match parse_tls_extensions(ext) {
        Ok(([], e)) => e,
        _ => return Err(bad("extensions")),
    };
    let mut names = exts.iter().filter_map(|e| match e {
        TlsExtension::SNI(v) => Some(v),
        _ => None,
    });
    let Some(list) = names.next() else {
        return Ok(None);
    };
    if names.next().is_some() {
        return Err(bad("two server_name extensions"));
    }
    // RFC 6066: at most one name of type host_name (0).
    let hosts: Vec<&[u8]> = list
        .iter()
        .filter(|(t, _)| t.0 == 0)
        .map(|(_, n)| *n)
        .collect();
    match hosts.as_slice() {
        [] => Ok(None),
        [h] => std::str::from_utf8(h)
            .map(|h| Some(h.to_string()))
            .map_err(|_| bad("server name is not text")),
        _ => Err(bad("more than one host_name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2-style ClientHello handshake message with these extensions.
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(n) = sni {
            let n = n.as_bytes();
            let list_len = 3 + n.len();
            ext.extend_from_slice(&[0, 0]);
            ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list_len as u16).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
            ext.extend_from_slice(n);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    #[test]
    fn server_names() {
        assert_eq!(
            server_name(&client_hello(Some("a.test"))),
            Ok(Some("a.test".into()))
        );
        assert_eq!(server_name(&client_hello(None)), Ok(None));
        assert!(server_name(&[1, 0, 0, 1, 0]).is_err());
    }
}
