//! The proxy server: one front door that speaks HTTP forward proxying, HTTP `CONNECT`
//! and SOCKS5 (told apart by the first byte), one authorization path shared by all
//! three, and connection handling chosen per connection by [`Handling`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::addr::classify_for_host;
use crate::audit::{now_rfc3339, AuditRecord, AuditSink, Decision, Denial, Protocol};
use crate::host::{normalize_name, Host, HostError, Target};
use crate::io::{Counted, Counters, Prefixed};
use crate::rules::{RuleSet, Verdict};
use crate::socks;

mod dns;
mod transparent;

use dns::Synth;
pub use dns::SyntheticPool;

/// Proxy credentials for one run. Clients send them as `Proxy-Authorization: Basic`
/// (HTTP) or RFC 1929 username/password (SOCKS5), so no other local program can use the
/// proxy as a relay.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    /// User name.
    pub user: String,
    /// The per-run secret.
    pub password: String,
}

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything the proxy needs for one run.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The compiled rules (for the command being run).
    pub rules: RuleSet,
    /// The per-command scope that chose them, recorded in each audit entry.
    pub scope: Option<Vec<String>>,
    /// This host's own interface addresses: refused like loopback (a rebinding of an
    /// allowed name to the host's public address must not reach its services).
    pub host_addrs: Vec<IpAddr>,
    /// Name pins, like curl's `--resolve`: these names resolve to these addresses and are
    /// never looked up. The address policy still applies to pinned addresses.
    pub resolve: BTreeMap<String, Vec<IpAddr>>,
    /// Required credentials, if any.
    pub auth: Option<ProxyAuth>,
    /// How long a client may take to send its request (HTTP headers, SOCKS handshake).
    pub handshake_timeout: Duration,
    /// How long a connection to a destination may take.
    pub connect_timeout: Duration,
    /// At most this many client connections are served at once by `serve_tcp` and
    /// `serve_unix`; past it they wait in the listen backlog. Keeps a sandboxed command
    /// from spending the host's file descriptors through the proxy.
    pub max_connections: usize,
    /// Where the transparent mode's DNS answers take their addresses from: 198.18.0.0/15
    /// unless a test needs addresses its host already treats as local.
    pub synthetic: SyntheticPool,
    /// The transparent-mode ports taken as plain HTTP (served request by request, the
    /// Host header checked): port 80. Other ports carry bytes, TLS names checked.
    pub transparent_http_ports: Vec<u16>,
}

impl ProxyConfig {
    /// A config with these rules and the default timeouts (10 s each), no pins, no auth.
    pub fn new(rules: RuleSet) -> ProxyConfig {
        ProxyConfig {
            rules,
            scope: None,
            host_addrs: Vec::new(),
            resolve: BTreeMap::new(),
            auth: None,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connections: 1024,
            synthetic: SyntheticPool::default(),
            transparent_http_ports: vec![80],
        }
    }
}

/// Why the proxy could not be set up or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A `resolve` pin whose name is not a valid host name.
    #[error("[network] resolve: '{name}' is not a valid host name: {source}")]
    PinName {
        /// The name as written.
        name: String,
        /// Why.
        source: HostError,
    },
    /// A `resolve` pin with no address.
    #[error("[network] resolve: '{0}' has no address; give at least one")]
    PinEmpty(String),
    /// The transparent mode's DNS socket failed.
    #[error("proxy: the DNS socket of the transparent mode failed: {0}; DNS in the sandbox stopped being answered")]
    Dns(#[source] std::io::Error),
    /// accept(2) failed on the listener.
    #[error("proxy: accept on the listening socket failed: {0}; the proxy stopped serving")]
    Accept(#[source] std::io::Error),
}

/// How an allowed connection is carried. Chosen per connection, so that a host can later
/// be switched to terminate-and-inspect (TLS with a per-run CA, for credential
/// injection) without touching the other paths. Only pass-through exists today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handling {
    /// Bytes are relayed unchanged (CONNECT, SOCKS) or the request is forwarded as
    /// received, less hop-by-hop headers (HTTP).
    PassThrough,
}

/// The authorization outcome for one destination.
#[derive(Debug)]
enum Authz {
    /// Allowed: the checked addresses, in order, and the rule.
    Allowed {
        addrs: Vec<SocketAddr>,
        rule: String,
    },
    /// Refused by policy.
    Denied(Denial),
    /// Allowed by the rules but not resolvable.
    Failed { rule: String, reason: String },
}

struct Inner {
    config: ProxyConfig,
    pins: BTreeMap<String, Vec<IpAddr>>,
    expected_auth: Option<Vec<u8>>,
    sink: Arc<dyn AuditSink>,
    denials: Mutex<Vec<Denial>>,
    /// The transparent mode's name <-> synthetic address map.
    synth: Mutex<Synth>,
    /// Connection slots shared by `serve_tcp` and `serve_unix`; a slot is held until
    /// everything its connection started has ended (and its audit record is written).
    slots: Arc<Semaphore>,
}

/// The proxy. Cheap to clone (shared state); every clone records into the same sink and
/// the same denial list.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// The relay buffer of a tunnel (CONNECT, SOCKS), per direction. tokio's default, 8 KiB,
/// costs a read and a write system call per 8 KiB and held bulk downloads to about a third
/// of direct loopback (`scripts/bench-proxy.sh`); 64 KiB per direction keeps 1024 open
/// tunnels within 128 MiB.
const TUNNEL_BUF: usize = 64 * 1024;

/// A `max_connections` permit, shared by everything one client connection started.
type Slot = Option<Arc<OwnedSemaphorePermit>>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|e| match e {}).boxed()
}

fn text_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Every text response is a refusal or an error; the connection ends with it, so a
    // refused client does not hold a slot open.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// One connection's audit record in the making. Once armed (a relay has started), a
/// record that is dropped unfinished, because the runtime stopped while the connection
/// was still open, is still written, marked as cut short: no allowed connection goes
/// unlogged.
struct Audit {
    start: Instant,
    record: AuditRecord,
    armed: Option<(Arc<dyn AuditSink>, Counters)>,
    done: bool,
}

impl Drop for Audit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some((sink, counters)) = self.armed.take() {
            let (up, down) = counters.get();
            self.record.bytes_up = up;
            self.record.bytes_down = down;
            self.record.duration_ms = self.start.elapsed().as_millis() as u64;
            let cut = "cut short: the proxy stopped (the run ended) while the connection was open";
            self.record.reason = Some(match self.record.reason.take() {
                Some(r) => format!("{r}; {cut}"),
                None => cut.to_string(),
            });
            sink.record(&self.record);
        }
    }
}

impl Audit {
    fn new(protocol: Protocol, scope: Option<Vec<String>>) -> Audit {
        Audit {
            start: Instant::now(),
            record: AuditRecord {
                time: now_rfc3339(),
                protocol,
                host: None,
                port: None,
                resolved: None,
                decision: Decision::Reject,
                rule: None,
                reason: None,
                scope,
                bytes_up: 0,
                bytes_down: 0,
                duration_ms: 0,
            },
            armed: None,
            done: false,
        }
    }
    /// From now on the record is written even if the connection is dropped unfinished.
    fn arm(&mut self, sink: &Arc<dyn AuditSink>, counters: &Counters) {
        self.armed = Some((sink.clone(), counters.clone()));
    }
    fn target(&mut self, t: &Target) {
        self.record.host = Some(t.host.to_string());
        self.record.port = Some(t.port);
    }
    fn outcome(&mut self, d: Decision, rule: Option<String>, reason: Option<String>) {
        self.record.decision = d;
        self.record.rule = rule;
        self.record.reason = reason;
    }
    fn finish(mut self, sink: &dyn AuditSink, (up, down): (u64, u64)) {
        self.record.bytes_up = up;
        self.record.bytes_down = down;
        self.record.duration_ms = self.start.elapsed().as_millis() as u64;
        sink.record(&self.record);
        self.done = true;
    }
}

/// Constant-time comparison, so a wrong guess does not tell how much of it was right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Proxy {
    /// Builds a proxy. Pins are validated and their names normalized here.
    pub fn new(config: ProxyConfig, sink: Arc<dyn AuditSink>) -> Result<Proxy, ProxyError> {
        let mut pins = BTreeMap::new();
        for (name, addrs) in &config.resolve {
            let n = normalize_name(name).map_err(|source| ProxyError::PinName {
                name: name.clone(),
                source,
            })?;
            if addrs.is_empty() {
                return Err(ProxyError::PinEmpty(name.clone()));
            }
            pins.insert(n, addrs.clone());
        }
        let config_slots = config.max_connections.max(1);
        let expected_auth = config
            .auth
            .as_ref()
            .map(|a| format!("{}:{}", a.user, a.password).into_bytes());
        let synth = Mutex::new(Synth::new(config.synthetic));
        Ok(Proxy {
            inner: Arc::new(Inner {
                config,
                pins,
                expected_auth,
                sink,
                denials: Mutex::new(Vec::new()),
                synth,
                slots: Arc::new(Semaphore::new(config_slots)),
            }),
        })
    }

    /// How many connections accepted by `serve_tcp`/`serve_unix` are still being served
    /// (while a serve loop runs, the slot it holds for its next accept counts too).
    pub fn in_flight(&self) -> usize {
        self.inner.config.max_connections.max(1) - self.inner.slots.available_permits()
    }

    /// Waits until no accepted connection is being served, or `timeout` passes. Called
    /// when the clients are gone (the sandbox ended) and before the runtime is dropped,
    /// so that the connections' audit records are written.
    pub async fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The denials recorded so far, in order.
    pub fn denials(&self) -> Vec<Denial> {
        self.inner
            .denials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn deny(&self, d: &Denial) {
        let mut v = self.inner.denials.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded (a command looping over names must not grow the host's memory);
        // every connection still has its audit record.
        if v.len() < MAX_DENIALS {
            v.push(d.clone());
        }
    }

    /// How an allowed connection to `target` is carried. Pass-through for every host
    /// today; the hook where terminate-and-inspect will be chosen per host.
    pub fn handling(&self, _target: &Target) -> Handling {
        Handling::PassThrough
    }

    /// Serves connections accepted on a TCP listener (loopback, for tests and for the
    /// platforms that reach the proxy over a loopback port). Runs until accept fails.
    pub async fn serve_tcp(&self, listener: TcpListener) -> Result<(), ProxyError> {
        self.accept_loop(
            &listener,
            |p, s, slot| async move { p.serve(s, slot).await },
        )
        .await
    }

    /// Serves connections accepted on a unix listener (the supervisor's bridge hands each
    /// sandbox connection over one). Runs until accept fails.
    #[cfg(unix)]
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) -> Result<(), ProxyError> {
        self.accept_loop(
            &listener,
            |p, s, slot| async move { p.serve(s, slot).await },
        )
        .await
    }

    /// The serve loops' common part: one connection slot per accepted connection (the
    /// run's shared budget; past it connections wait in the listen backlog), each served
    /// on its own task by `handle`, until accept fails for good.
    pub(crate) async fn accept_loop<L, F, Fut>(
        &self,
        listener: &L,
        handle: F,
    ) -> Result<(), ProxyError>
    where
        L: Accept,
        F: Fn(Proxy, L::Stream, Slot) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let slots = self.inner.slots.clone();
        loop {
            // acquire fails only on a closed semaphore, and this one is never closed.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return Ok(());
            };
            match listener.accept_one().await {
                Ok(s) => {
                    tokio::spawn(handle(self.clone(), s, Some(Arc::new(slot))));
                }
                Err(e) => accept_failed(e).await?,
            }
        }
    }

    /// Serves one already-connected stream (one end of a socketpair, an accepted socket)
    /// to its end: sniffs SOCKS5 (first byte 0x05) or HTTP, then handles it. Every
    /// outcome, including a malformed request, leaves one audit record per proxied
    /// connection or request.
    pub async fn serve_connection<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve(stream, None).await
    }

    /// `slot` is held until everything this connection started (a tunnel, an upstream
    /// HTTP connection) has ended, so `max_connections` counts tunnels too.
    async fn serve<S>(&self, mut stream: S, slot: Slot)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut first = [0u8; 1];
        let timeout = self.inner.config.handshake_timeout;
        match tokio::time::timeout(timeout, stream.read(&mut first)).await {
            Ok(Ok(1)) => {}
            // Closed, failed or silent before the first byte: nothing was asked for.
            _ => return,
        }
        if first[0] == socks::VERSION {
            self.serve_socks(stream, first[0]).await;
        } else {
            self.serve_http(Prefixed::new(first.to_vec(), stream), slot)
                .await;
        }
    }

    async fn serve_http<S>(&self, stream: S, slot: Slot)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let p = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let p = p.clone();
            let slot = slot.clone();
            async move { Ok::<_, std::convert::Infallible>(p.handle_http(req, slot).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.config.handshake_timeout)
            // A client may shut down its write half once its request is sent; without
            // this, hyper drops that request unanswered, unaudited and unrecorded.
            .half_close(true)
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades()
            .await;
    }

    /// For an HTTP request (explicit or transparent): authorizes `target`, connects to
    /// a checked address, and records the decision in `audit`; a refusal comes back as
    /// the response to send (403 with the fix, or 502), its record written.
    async fn http_upstream(
        &self,
        target: &Target,
        mut audit: Audit,
        sink: &Arc<dyn AuditSink>,
    ) -> Result<(TcpStream, Audit), Response<Body>> {
        let (addrs, rule) = match self.authorize(target).await {
            Authz::Allowed { addrs, rule } => (addrs, rule),
            Authz::Denied(d) => {
                audit.outcome(Decision::Deny, d.rule.clone(), Some(d.reason.clone()));
                audit.finish(&**sink, (0, 0));
                let body = format!("{d}\n");
                self.deny(&d);
                return Err(text_response(StatusCode::FORBIDDEN, body));
            }
            Authz::Failed { rule, reason } => {
                audit.outcome(Decision::Error, Some(rule), Some(reason.clone()));
                audit.finish(&**sink, (0, 0));
                return Err(text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("workfence: {reason}\n"),
                ));
            }
        };
        let upstream = match self.connect(target, &addrs).await {
            Ok(s) => s,
            Err(reason) => {
                audit.outcome(Decision::Error, Some(rule), Some(reason.clone()));
                audit.finish(&**sink, (0, 0));
                return Err(text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("workfence: {reason}\n"),
                ));
            }
        };
        audit.record.resolved = upstream.peer_addr().ok();
        audit.outcome(Decision::Allow, Some(rule), None);
        Ok((upstream, audit))
    }

    fn check_auth(&self, headers: &HeaderMap) -> bool {
        use base64::Engine as _;
        let Some(expected) = &self.inner.expected_auth else {
            return true;
        };
        let Some(v) = headers.get(header::PROXY_AUTHORIZATION) else {
            return false;
        };
        let v = v.as_bytes();
        if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"basic ") {
            return false;
        }
        base64::engine::general_purpose::STANDARD
            .decode(v[6..].trim_ascii())
            .is_ok_and(|got| ct_eq(&got, expected))
    }

    async fn handle_http(&self, req: Request<Incoming>, slot: Slot) -> Response<Body> {
        let protocol = if req.method() == Method::CONNECT {
            Protocol::Connect
        } else {
            Protocol::Http
        };
        let mut audit = Audit::new(protocol, self.inner.config.scope.clone());
        let sink = self.inner.sink.clone();
        if !self.check_auth(req.headers()) {
            audit.outcome(
                Decision::Unauthorized,
                None,
                Some("missing or wrong Proxy-Authorization".into()),
            );
            audit.finish(&*sink, (0, 0));
            let mut r = text_response(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "workfence: this proxy needs the per-run credentials from the proxy variables (Proxy-Authorization: Basic)\n".into(),
            );
            r.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"workfence\""),
            );
            return r;
        }
        let target = match request_target(&req) {
            Ok(t) => self.named(t),
            Err(reason) => {
                audit.outcome(Decision::Reject, None, Some(reason.clone()));
                audit.finish(&*sink, (0, 0));
                return text_response(StatusCode::BAD_REQUEST, format!("workfence: {reason}\n"));
            }
        };
        audit.target(&target);
        let (upstream, audit) = match self.http_upstream(&target, audit, &sink).await {
            Ok(x) => x,
            Err(refusal) => return refusal,
        };
        match self.handling(&target) {
            Handling::PassThrough if protocol == Protocol::Connect => {
                tunnel_after_upgrade(req, upstream, audit, sink, slot)
            }
            Handling::PassThrough => forward(req, &target, upstream, audit, sink, slot).await,
        }
    }

    /// The one authorization path: rules, then resolution (pins first), then the
    /// address policy on every resolved address.
    async fn authorize(&self, target: &Target) -> Authz {
        let t = target;
        let (rule, local_ok) = match self.inner.config.rules.check(t) {
            Verdict::Allowed { rule, local_ok } => (rule, local_ok),
            Verdict::DeniedByRule { rule } => {
                return Authz::Denied(Denial {
                    host: t.host.to_string(),
                    port: t.port,
                    reason: format!(
                        "connection to {t} denied by the deny rule '{rule}' (deny wins over allow)"
                    ),
                    fix: format!(
                        "To allow it, remove '{rule}' from the deny rules ([network] deny / --network deny=)."
                    ),
                    rule: Some(format!("deny={rule}")),
                })
            }
            Verdict::NoMatch => {
                let fix = match &t.host {
                    Host::Name(n) => format!(
                        "To allow it: --network allow={n} (any port) or --network allow={t} (this port only), or add it to [network] allow."
                    ),
                    Host::Ip(_) => format!(
                        "Bare IP addresses are reached only when listed: --network allow={t}."
                    ),
                };
                return Authz::Denied(Denial {
                    host: t.host.to_string(),
                    port: t.port,
                    reason: format!("connection to {t} denied: no allow rule matches it"),
                    fix,
                    rule: None,
                });
            }
        };
        let ips: Vec<IpAddr> = match &t.host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(n) => match self.inner.pins.get(n) {
                Some(pinned) => pinned.clone(),
                None => match tokio::net::lookup_host((n.as_str(), t.port)).await {
                    Ok(it) => it.map(|a| a.ip()).collect(),
                    Err(e) => {
                        return Authz::Failed {
                            rule,
                            reason: format!("could not resolve {n}: {e}"),
                        }
                    }
                },
            },
        };
        let mut refused = None;
        let mut addrs = Vec::new();
        for ip in ips {
            let class = classify_for_host(ip, &self.inner.config.host_addrs);
            if class.is_public() || local_ok {
                addrs.push(SocketAddr::new(ip, t.port));
            } else if refused.is_none() {
                refused = Some((ip, class));
            }
        }
        if addrs.is_empty() {
            let Some((ip, class)) = refused else {
                return Authz::Failed {
                    rule,
                    reason: format!("{} resolved to no address", t.host),
                };
            };
            return Authz::Denied(Denial {
                host: t.host.to_string(),
                port: t.port,
                reason: format!(
                    "connection to {t} denied: it resolves to {ip}, {class}, and local destinations are refused"
                ),
                fix: format!(
                    "To allow it: --network allow-local={}, or add it to [network] allow_local.",
                    t.host
                ),
                rule: Some(rule),
            });
        }
        Authz::Allowed { addrs, rule }
    }

    /// Connects to the checked addresses, in order, and to nothing else.
    async fn connect(&self, t: &Target, addrs: &[SocketAddr]) -> Result<TcpStream, String> {
        let mut last = String::new();
        for a in addrs {
            match tokio::time::timeout(self.inner.config.connect_timeout, TcpStream::connect(a))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = format!("connecting to {t} at {a} failed: {e}"),
                Err(_) => last = format!("connecting to {t} at {a} timed out"),
            }
        }
        Err(last)
    }

    async fn serve_socks<S>(&self, mut stream: S, first: u8)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let sink = self.inner.sink.clone();
        let mut audit = Audit::new(Protocol::Socks5, self.inner.config.scope.clone());
        let timeout = self.inner.config.handshake_timeout;
        let mut buf = vec![first];
        let hs = tokio::time::timeout(timeout, self.socks_handshake(&mut stream, &mut buf)).await;
        let target = match hs {
            Ok(Ok(t)) => self.named(t),
            Ok(Err(SocksFail { decision, reason })) => {
                audit.outcome(decision, None, Some(reason));
                audit.finish(&*sink, (0, 0));
                return;
            }
            Err(_) => {
                audit.outcome(
                    Decision::Reject,
                    None,
                    Some("SOCKS5 handshake timed out".into()),
                );
                audit.finish(&*sink, (0, 0));
                return;
            }
        };
        audit.target(&target);
        let (addrs, rule) = match self.authorize(&target).await {
            Authz::Allowed { addrs, rule } => (addrs, rule),
            Authz::Denied(d) => {
                let _ = stream
                    .write_all(&socks::reply(socks::Reply::NotAllowed))
                    .await;
                audit.outcome(Decision::Deny, d.rule.clone(), Some(d.reason.clone()));
                audit.finish(&*sink, (0, 0));
                self.deny(&d);
                return;
            }
            Authz::Failed { rule, reason } => {
                let _ = stream
                    .write_all(&socks::reply(socks::Reply::HostUnreachable))
                    .await;
                audit.outcome(Decision::Error, Some(rule), Some(reason));
                audit.finish(&*sink, (0, 0));
                return;
            }
        };
        let upstream = match self.connect(&target, &addrs).await {
            Ok(s) => s,
            Err(reason) => {
                let _ = stream
                    .write_all(&socks::reply(socks::Reply::ConnectionRefused))
                    .await;
                audit.outcome(Decision::Error, Some(rule), Some(reason));
                audit.finish(&*sink, (0, 0));
                return;
            }
        };
        audit.record.resolved = upstream.peer_addr().ok();
        audit.outcome(Decision::Allow, Some(rule), None);
        if stream
            .write_all(&socks::reply(socks::Reply::Succeeded))
            .await
            .is_err()
        {
            audit.finish(&*sink, (0, 0));
            return;
        }
        match self.handling(&target) {
            Handling::PassThrough => {
                let counters = Counters::default();
                audit.arm(&sink, &counters);
                let mut up = Counted::new(upstream, counters.clone());
                // Bytes the client sent after its request, before our reply.
                if !buf.is_empty() && up.write_all(&buf).await.is_err() {
                    audit.finish(&*sink, counters.get());
                    return;
                }
                // A plain TCP client (the sandbox's socket) is relayed with splice.
                #[cfg(target_os = "linux")]
                if let Some(tcp) =
                    (&mut stream as &mut dyn std::any::Any).downcast_mut::<TcpStream>()
                {
                    if let Err(e) = crate::splice::relay(tcp, up.get_ref(), &counters).await {
                        audit.record.reason = Some(format!("the relay ended with an error: {e}"));
                    }
                    audit.finish(&*sink, counters.get());
                    return;
                }
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

    /// Greeting, optional RFC 1929 auth, request. Replies to the client on every
    /// failure it can reply to.
    async fn socks_handshake<S>(
        &self,
        stream: &mut S,
        buf: &mut Vec<u8>,
    ) -> Result<Target, SocksFail>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let methods = read_msg(stream, buf, socks::parse_greeting).await?;
        let want = if self.inner.expected_auth.is_some() {
            socks::METHOD_USERPASS
        } else {
            socks::METHOD_NONE
        };
        if !methods.contains(&want) {
            let _ = stream
                .write_all(&[socks::VERSION, socks::METHOD_NO_ACCEPTABLE])
                .await;
            return Err(SocksFail {
                decision: Decision::Unauthorized,
                reason: "SOCKS5 client offered no acceptable authentication method".into(),
            });
        }
        stream
            .write_all(&[socks::VERSION, want])
            .await
            .map_err(SocksFail::io)?;
        if let Some(expected) = &self.inner.expected_auth {
            let (u, p) = read_msg(stream, buf, socks::parse_userpass).await?;
            let mut got = u;
            got.push(b':');
            got.extend_from_slice(&p);
            let ok = ct_eq(&got, expected);
            let _ = stream.write_all(&[1, if ok { 0 } else { 1 }]).await;
            if !ok {
                return Err(SocksFail {
                    decision: Decision::Unauthorized,
                    reason: "SOCKS5 username/password wrong".into(),
                });
            }
        }
        match read_msg(stream, buf, socks::parse_request).await {
            Ok(t) => Ok(t),
            Err(e) => {
                if let Some(code) = e.reply {
                    let _ = stream.write_all(&socks::reply(code)).await;
                }
                Err(e.fail)
            }
        }
    }
}

/// How a SOCKS handshake failed.
struct SocksFail {
    decision: Decision,
    reason: String,
}

impl SocksFail {
    fn io(e: std::io::Error) -> SocksFail {
        SocksFail {
            decision: Decision::Reject,
            reason: format!("SOCKS5 handshake: {e}"),
        }
    }
}

struct MsgFail {
    fail: SocksFail,
    reply: Option<socks::Reply>,
}

impl From<MsgFail> for SocksFail {
    fn from(m: MsgFail) -> SocksFail {
        m.fail
    }
}

/// Reads until `parse` has a whole message; leaves what follows it in `buf`.
async fn read_msg<S, T>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    parse: fn(&[u8]) -> socks::Parsed<T>,
) -> Result<T, MsgFail>
where
    S: AsyncRead + Unpin,
{
    // Longest message: a request with a 255-byte name is 262 bytes; a greeting 257; auth 513.
    const MAX: usize = 600;
    loop {
        match parse(buf) {
            Ok(Some((v, n))) => {
                buf.drain(..n);
                return Ok(v);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(MsgFail {
                    reply: Some(e.reply()),
                    fail: SocksFail {
                        decision: Decision::Reject,
                        reason: e.to_string(),
                    },
                })
            }
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.map_err(|e| MsgFail {
            fail: SocksFail::io(e),
            reply: None,
        })?;
        if n == 0 || buf.len() + n > MAX {
            return Err(MsgFail {
                fail: SocksFail {
                    decision: Decision::Reject,
                    reason: "SOCKS5 handshake: connection closed or message too long".into(),
                },
                reply: None,
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    ) || out_of_resources(e)
}

/// A listener the serve loops accept from.
pub(crate) trait Accept {
    /// The accepted connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept_one(&self)
        -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> std::io::Result<TcpStream> {
        let (s, _) = self.accept().await?;
        // Proxied request/response exchanges must not wait for Nagle.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

#[cfg(unix)]
impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<tokio::net::UnixStream> {
        Ok(self.accept().await?.0)
    }
}

/// What a serve loop does when accept(2) fails: carry on after a transient error
/// (waiting a little when fds or memory ran out), stop on any other.
async fn accept_failed(e: std::io::Error) -> Result<(), ProxyError> {
    if !transient(&e) {
        return Err(ProxyError::Accept(e));
    }
    if out_of_resources(&e) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// accept(2) failing for lack of fds or memory: the proxy waits a little and accepts
/// again instead of stopping (the connections already open will free some).
pub(crate) fn out_of_resources(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    if matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) {
        return true;
    }
    e.kind() == std::io::ErrorKind::OutOfMemory
}

/// At most this many denials are kept for the run's result.
const MAX_DENIALS: usize = 1000;

/// The destination of a proxy request, with every consistency check: CONNECT takes an
/// authority-form target; other methods take an absolute `http://` URI; a Host header,
/// when present, must name the same host and port; a URI with user info is refused.
fn request_target(req: &Request<Incoming>) -> Result<Target, String> {
    let uri = req.uri();
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err("more than one Host header".into());
    }
    let host_header = match hosts.first() {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "Host header is not ASCII text".to_string())?,
        ),
    };
    let (target, default_port) = if req.method() == Method::CONNECT {
        let auth = match (uri.scheme(), uri.authority(), uri.path_and_query()) {
            (None, Some(a), None) => a.as_str(),
            _ => return Err("CONNECT needs a host:port target".into()),
        };
        let t = Target::parse_authority(auth, None)
            .map_err(|e| format!("CONNECT target '{}': {e}", auth.escape_debug()))?;
        let port = t.port;
        (t, port)
    } else {
        let Some(scheme) = uri.scheme_str() else {
            return Err("this proxy forwards only absolute-form requests (GET http://host/path) and CONNECT host:port".into());
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!(
                "absolute-form requests must use http:// (use CONNECT for {scheme}://)"
            ));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| "absolute-form URI has no host".to_string())?
            .as_str();
        if auth.contains('@') {
            return Err("absolute-form URI with user info is refused".into());
        }
        let t = Target::parse_authority(auth, Some(80))
            .map_err(|e| format!("request target host '{}': {e}", auth.escape_debug()))?;
        (t, 80)
    };
    if let Some(h) = host_header {
        let ht = Target::parse_authority(h, Some(default_port))
            .map_err(|e| format!("Host header '{}': {e}", h.escape_debug()))?;
        if ht != target {
            return Err(format!(
                "Host header '{}' contradicts the request target {target}",
                h.escape_debug()
            ));
        }
    }
    Ok(target)
}

/// CONNECT: answer 200 now, relay bytes once hyper hands over the connection.
fn tunnel_after_upgrade(
    mut req: Request<Incoming>,
    upstream: TcpStream,
    mut audit: Audit,
    sink: Arc<dyn AuditSink>,
    slot: Slot,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let counters = Counters::default();
    audit.arm(&sink, &counters);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            // A connection from serve_tcp: take the TCP socket back from hyper and relay
            // with splice, after the bytes hyper had already read past the request.
            #[cfg(target_os = "linux")]
            let upgraded = match upgraded.downcast::<TokioIo<Prefixed<TcpStream>>>() {
                Ok(parts) => {
                    let (rest, tcp) = parts.io.into_inner().into_parts();
                    let mut up = Counted::new(upstream, counters.clone());
                    let mut early = rest;
                    early.extend_from_slice(&parts.read_buf);
                    if early.is_empty() || up.write_all(&early).await.is_ok() {
                        if let Err(e) = crate::splice::relay(&tcp, up.get_ref(), &counters).await {
                            audit.record.reason =
                                Some(format!("the relay ended with an error: {e}"));
                        }
                    }
                    audit.finish(&*sink, counters.get());
                    drop(slot);
                    return;
                }
                Err(u) => u,
            };
            let mut client = TokioIo::new(upgraded);
            let mut up = Counted::new(upstream, counters.clone());
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut up,
                TUNNEL_BUF,
                TUNNEL_BUF,
            )
            .await;
        }
        audit.finish(&*sink, counters.get());
        drop(slot);
    });
    Response::new(full(Bytes::new()))
}

/// Headers that belong to one hop and are not forwarded (RFC 9110 section 7.6.1), plus
/// the proxy's own credentials.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    h.remove("proxy-connection");
    h.remove("keep-alive");
}

/// HTTP forward proxying over a fresh upstream connection (no pooling: each request's
/// connection is checked and audited on its own).
async fn forward(
    req: Request<Incoming>,
    target: &Target,
    upstream: TcpStream,
    audit: Audit,
    sink: Arc<dyn AuditSink>,
    slot: Slot,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    // The origin-form target. `http://host?q` has an empty path, which is `/` in origin
    // form (RFC 9112 section 3.2.1), so `?q` becomes `/?q`.
    let path = match parts.uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") => "/".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
    };
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => {
            // Already connected and marked allowed: the record must still be written.
            let mut audit = audit;
            let reason = format!("request path '{}' is not valid", path.escape_debug());
            audit.outcome(Decision::Reject, None, Some(reason.clone()));
            audit.finish(&*sink, (0, 0));
            return text_response(StatusCode::BAD_REQUEST, format!("workfence: {reason}\n"));
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST) {
        let h = if target.port == 80 {
            target.host.to_string()
        } else {
            target.to_string()
        };
        if let Ok(v) = HeaderValue::from_str(&h) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let counters = Counters::default();
    let io = TokioIo::new(Counted::new(upstream, counters.clone()));
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(io).await {
        Ok(x) => x,
        Err(e) => {
            let mut audit = audit;
            audit.outcome(
                Decision::Error,
                audit.record.rule.clone(),
                Some(format!("HTTP handshake with {target}: {e}")),
            );
            audit.finish(&*sink, counters.get());
            return text_response(
                StatusCode::BAD_GATEWAY,
                format!("workfence: HTTP handshake with {target} failed: {e}\n"),
            );
        }
    };
    // The record is written when the upstream connection ends, that is, after the
    // response body has been relayed, so its byte counts are final.
    // The handler tells the task how the exchange went: `None` for a response, the
    // reason for a failure; a dropped sender means the client went away first.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Option<String>>();
    let conn_counters = counters.clone();
    let mut audit = audit;
    audit.arm(&sink, &counters);
    tokio::spawn(async move {
        let conn_result = conn.await;
        let mut audit = audit;
        let failure = match done_rx.await {
            Ok(None) => conn_result
                .err()
                .map(|e| format!("relaying the response from the destination: {e}")),
            Ok(Some(reason)) => Some(reason),
            Err(_) => Some("the client closed the connection before the response".into()),
        };
        if let Some(reason) = failure {
            let rule = audit.record.rule.take();
            audit.outcome(Decision::Error, rule, Some(reason));
        }
        audit.finish(&*sink, conn_counters.get());
        drop(slot);
    });
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let _ = done_tx.send(None);
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            let reason = format!("forwarding to {target} failed: {e}");
            let _ = done_tx.send(Some(reason.clone()));
            text_response(StatusCode::BAD_GATEWAY, format!("workfence: {reason}\n"))
        }
    }
}
