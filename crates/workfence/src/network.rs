//! The network allowlist at run time: the proxy for one command, its audit trail, and
//! the denials that go into the run's result.
//!
//! The plan decides the path (on Linux, [`workfence_linux::plan::ProxyBridge`]: a
//! listening socket inside the sandbox's network namespace, handed to workfence); this
//! module compiles the rules for the command, opens the audit files, serves the sockets
//! the sandbox hands over on a thread of its own, and stops it when the run ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use workfence_policy::run::Denial;
use workfence_policy::ProxyPolicy;
use workfence_proxy::{
    AuditRecord, AuditSink, JsonLinesSink, ProxyConfig, RulesConfig, ScopedRules,
};

/// Why the network allowlist could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A rule does not parse or names an unknown list.
    #[error("network rules: {0}; see the README's network section for the rule syntax")]
    Rules(#[from] workfence_proxy::RuleError),
    /// The proxy refused its configuration (a bad `resolve` pin).
    #[error(transparent)]
    Proxy(#[from] workfence_proxy::ProxyError),
    /// The allowlist allows nothing.
    #[error("--network allow: no destination is allowed; name at least one, e.g. --network allow=example.org,*.example.org")]
    Empty,
    /// `--audit-log FILE` cannot be opened.
    #[error("--audit-log {path}: cannot open for appending: {source}; name a writable file")]
    AuditLog {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The allowlist needs user namespaces (a private network namespace), which this
    /// host does not allow.
    #[error("network allowlists (--network allow=...) need a private network namespace, and user namespaces are unavailable here ({0}); --allow-degraded cannot help: without the namespace nothing confines the network to the proxy. Enable unprivileged user namespaces (see `workfence doctor`), or use --network off or on")]
    NeedsNamespace(String),
    /// `--audit-log` without a network allowlist.
    #[error("--audit-log records the network proxy's connections, and this run has no network allowlist; add --network allow=..., or drop --audit-log")]
    AuditWithoutAllowlist,
    /// The allowlist in full-access mode.
    #[error("--network allow=... is not enforced in full-access mode (there is no sandbox, so the command has the host's whole network); drop one of them")]
    FullAccess,
    /// The proxy's runtime or thread could not start.
    #[error("starting the network proxy ({step}): {source}")]
    Start {
        /// What was being done.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The proxy's rules for `argv` (the base rules plus the longest matching scope).
pub fn rules_for(
    net: &ProxyPolicy,
    argv: &[String],
) -> Result<workfence_proxy::CommandRules, NetworkError> {
    let cfg = RulesConfig {
        allow: net.allow.clone(),
        deny: net.deny.clone(),
        allow_local: net.allow_local.clone(),
        lists: net.lists.clone(),
        scoped: net
            .scoped
            .iter()
            .map(|s| ScopedRules {
                prefix: s.prefix.clone(),
                allow: s.allow.clone(),
                deny: s.deny.clone(),
                allow_local: s.allow_local.clone(),
            })
            .collect(),
    };
    let rules = cfg.for_command(argv)?;
    if rules.rules.is_empty() {
        return Err(NetworkError::Empty);
    }
    Ok(rules)
}

/// The allowlist as `explain` shows it (indented lines). Rules are checked here too,
/// so that `explain` reports the error `run` would.
pub fn describe(net: &ProxyPolicy) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(s, "    allow:       {}", list(&net.allow));
    let _ = writeln!(s, "    deny:        {}  (deny wins)", list(&net.deny));
    let _ = writeln!(
        s,
        "    allow local: {}  (may resolve to loopback/private addresses)",
        list(&net.allow_local)
    );
    for (name, items) in &net.lists {
        let _ = writeln!(s, "    list @{name}: {}", items.join(", "));
    }
    for (name, addrs) in &net.resolve {
        let a: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "    resolve:     {name} -> {}", a.join(", "));
    }
    for sc in &net.scoped {
        let _ = writeln!(
            s,
            "    for `{}`: allow {}; deny {}; allow local {}",
            sc.prefix.join(" "),
            list(&sc.allow),
            list(&sc.deny),
            list(&sc.allow_local)
        );
    }
    let _ = writeln!(
        s,
        "    transparent: {}",
        if net.transparent {
            "on where the platform supports it (Linux)"
        } else {
            "off"
        }
    );
    if let Err(e) = rules_for(net, &[]) {
        let _ = writeln!(s, "    ERROR: {e}");
    }
    s
}

/// The proxy's configuration for one command.
pub fn proxy_config(net: &ProxyPolicy, argv: &[String]) -> Result<ProxyConfig, NetworkError> {
    let rules = rules_for(net, argv)?;
    let mut cfg = ProxyConfig::new(rules.rules);
    cfg.scope = rules.scope;
    cfg.resolve = net.resolve.clone();
    cfg.host_addrs = host_addrs();
    Ok(cfg)
}

/// This host's interface addresses (refused like loopback unless allowed as local).
#[cfg(unix)]
fn host_addrs() -> Vec<std::net::IpAddr> {
    let Ok(ifs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    ifs.filter_map(|i| i.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// This host's interface addresses (not collected off Unix yet: no backend runs the
/// proxy there).
#[cfg(not(unix))]
fn host_addrs() -> Vec<std::net::IpAddr> {
    Vec::new()
}

/// The default audit file: `$XDG_STATE_HOME/workfence/network-audit.jsonl`, else
/// `~/.local/state/workfence/network-audit.jsonl`.
pub fn default_audit_path(home: &Path) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".local/state"));
    base.join("workfence").join("network-audit.jsonl")
}

/// Every record goes to each sink.
struct Tee(Vec<Arc<dyn AuditSink>>);

impl AuditSink for Tee {
    fn record(&self, record: &AuditRecord) {
        for s in &self.0 {
            s.record(record);
        }
    }
}

/// Opens the audit sinks: the state-dir file (a failure there is a note, since the
/// audit is a record, not a boundary) and `--audit-log` (a failure there is an error:
/// the user asked for that file).
pub fn audit_sinks(
    home: &Path,
    audit_log: Option<&Path>,
    notes: &mut Vec<String>,
) -> Result<Arc<dyn AuditSink>, NetworkError> {
    let mut sinks: Vec<Arc<dyn AuditSink>> = Vec::new();
    let state = default_audit_path(home);
    let opened = state
        .parent()
        .map_or(Ok(()), create_private_dir)
        .and_then(|()| JsonLinesSink::append_to(&state));
    match opened {
        Ok(s) => sinks.push(Arc::new(s)),
        Err(e) => notes.push(format!(
            "network audit: cannot append to {}: {e}; connections are not logged there",
            state.display()
        )),
    }
    if let Some(p) = audit_log {
        let s = JsonLinesSink::append_to(p).map_err(|source| NetworkError::AuditLog {
            path: p.to_path_buf(),
            source,
        })?;
        sinks.push(Arc::new(s));
    }
    Ok(Arc::new(Tee(sinks)))
}

/// Creates `dir` (and parents) readable by the user only: the audit names every host
/// the user's commands reached.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// A proxy denial as the run's result reports it.
pub fn to_denial(d: &workfence_proxy::Denial) -> Denial {
    // Port 0: a DNS lookup (transparent mode), which names no port.
    let target = if d.port == 0 {
        d.host.clone()
    } else if d.host.contains(':') {
        format!("[{}]:{}", d.host, d.port)
    } else {
        format!("{}:{}", d.host, d.port)
    };
    Denial {
        layer: "network".into(),
        target,
        reason: d.reason.clone(),
        allow_with: (!d.fix.is_empty()).then(|| d.fix.clone()),
    }
}

#[cfg(target_os = "linux")]
pub use linux::ProxyRun;

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use tokio::sync::oneshot;
    use workfence_linux::plan::TransparentPlan;
    use workfence_proxy::{AuditSink, Proxy, ProxyConfig};

    use super::NetworkError;

    /// The proxy of one sandboxed run. Created before the sandbox; [`ProxyRun::start`]
    /// (called once the sandbox exists) starts the thread that receives the sandbox's
    /// sockets and serves them; [`ProxyRun::finish`] stops it and returns the denials.
    pub struct ProxyRun {
        proxy: Proxy,
        ours: Option<UnixStream>,
        theirs: Option<UnixStream>,
        stop: Option<oneshot::Sender<()>>,
        thread: Option<JoinHandle<Result<(), String>>>,
        waker: Option<UnixStream>,
        expected: std::net::SocketAddr,
        transparent: Option<TransparentPlan>,
    }

    impl std::fmt::Debug for ProxyRun {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ProxyRun")
                .field("expected", &self.expected)
                .field("started", &self.thread.is_some())
                .finish_non_exhaustive()
        }
    }

    impl ProxyRun {
        /// The proxy and the socket pair; `theirs` is for the sandbox.
        pub fn new(
            config: ProxyConfig,
            sink: Arc<dyn AuditSink>,
            expected: std::net::SocketAddr,
            transparent: Option<TransparentPlan>,
        ) -> Result<ProxyRun, NetworkError> {
            let proxy = Proxy::new(config, sink)?;
            let (ours, theirs) = UnixStream::pair().map_err(|source| NetworkError::Start {
                step: "socketpair",
                source,
            })?;
            Ok(ProxyRun {
                proxy,
                ours: Some(ours),
                theirs: Some(theirs),
                stop: None,
                thread: None,
                waker: None,
                expected,
                transparent,
            })
        }

        /// The fd number the sandbox's supervisor sends on (close-on-exec: the command
        /// never inherits it).
        pub fn sandbox_end(&self) -> Option<i32> {
            use std::os::fd::AsRawFd;
            self.theirs.as_ref().map(|t| t.as_raw_fd())
        }

        /// Called once the sandbox exists: closes our copy of the sandbox's end (so a
        /// sandbox that dies before sending shows as EOF) and starts the proxy thread.
        /// A failure to start leaves the sandbox without a proxy: its connections are
        /// refused, and [`ProxyRun::finish`] reports it.
        pub fn start(&mut self) -> Result<(), NetworkError> {
            self.theirs = None;
            raise_fd_limit();
            let Some(ours) = self.ours.take() else {
                return Ok(());
            };
            self.waker = ours.try_clone().ok();
            let (tx, rx) = oneshot::channel();
            self.stop = Some(tx);
            let proxy = self.proxy.clone();
            let expected = self.expected;
            let transparent = self.transparent.clone();
            let t = std::thread::Builder::new()
                .name("workfence-proxy".into())
                .spawn(move || serve(proxy, ours, rx, expected, transparent))
                .map_err(|source| NetworkError::Start {
                    step: "spawning the proxy thread",
                    source,
                })?;
            self.thread = Some(t);
            Ok(())
        }

        /// Stops the proxy (the sandbox is gone) and returns what it denied, and why it
        /// could not serve, if it could not.
        pub fn finish(mut self) -> (Vec<workfence_proxy::Denial>, Option<String>) {
            if let Some(w) = &self.waker {
                // Wakes a thread still waiting for the sandbox's sockets.
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            let failure = match self.thread.take().map(JoinHandle::join) {
                Some(Ok(Err(why))) => Some(why),
                Some(Err(_)) => Some("the proxy thread panicked".to_string()),
                _ => None,
            };
            (self.proxy.denials(), failure)
        }
    }

    /// The sandbox's sockets, checked against the plan: the proxy listener at
    /// `expected`, then one transparent listener per planned port on 0.0.0.0, then the
    /// DNS socket on UDP 0.0.0.0:53. A missing, extra or different socket is an error
    /// and nothing is served: the sandbox then reaches nothing.
    struct Sockets {
        proxy: std::net::TcpListener,
        transparent: Vec<std::net::TcpListener>,
        dns: Option<std::net::UdpSocket>,
    }

    fn check_sockets(
        fds: Vec<OwnedFd>,
        expected: std::net::SocketAddr,
        plan: Option<&TransparentPlan>,
    ) -> Result<Sockets, String> {
        use std::net::{Ipv4Addr, SocketAddr};
        let ports: &[u16] = plan.map(|t| t.tcp_ports.as_slice()).unwrap_or(&[]);
        let dns = plan.is_some_and(|t| t.dns);
        let want = 1 + ports.len() + usize::from(dns);
        if fds.len() != want {
            return Err(format!(
                "the sandbox handed over {} sockets, not the planned {want}; not serving them",
                fds.len()
            ));
        }
        let mut fds = fds.into_iter();
        let tcp = |fd: Option<OwnedFd>,
                   want: SocketAddr|
         -> Result<std::net::TcpListener, String> {
            let l = std::net::TcpListener::from(fd.ok_or("a planned socket is missing")?);
            let got = l.local_addr().ok();
            if got != Some(want) {
                return Err(format!(
                    "the sandbox handed over a socket at {got:?}, not the planned {want}; not serving it"
                ));
            }
            l.set_nonblocking(true)
                .map_err(|e| format!("making the proxy socket non-blocking (fcntl): {e}"))?;
            Ok(l)
        };
        let proxy = tcp(fds.next(), expected)?;
        let mut transparent = Vec::new();
        for p in ports {
            transparent.push(tcp(
                fds.next(),
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, *p)),
            )?);
        }
        let dns = match fds.next() {
            Some(fd) => {
                let u = std::net::UdpSocket::from(fd);
                let want = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53));
                let got = u.local_addr().ok();
                if got != Some(want) {
                    return Err(format!(
                        "the sandbox handed over a DNS socket at {got:?}, not the planned {want}; not serving it"
                    ));
                }
                u.set_nonblocking(true)
                    .map_err(|e| format!("making the DNS socket non-blocking (fcntl): {e}"))?;
                Some(u)
            }
            None => None,
        };
        Ok(Sockets {
            proxy,
            transparent,
            dns,
        })
    }

    /// Each tunnel holds up to six fds (two sockets, two pipes): lift the soft limit
    /// to the hard one, so that a few hundred connections do not run workfence out of
    /// fds. The sandbox was created before this and keeps its own limit.
    fn raise_fd_limit() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            if soft < hard {
                let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            }
        }
    }

    fn serve(
        proxy: Proxy,
        ours: UnixStream,
        stop: oneshot::Receiver<()>,
        expected: std::net::SocketAddr,
        transparent: Option<TransparentPlan>,
    ) -> Result<(), String> {
        let fds: Vec<OwnedFd> =
            workfence_linux::receive_proxy_sockets(ours.as_fd()).map_err(|e| e.to_string())?;
        drop(ours);
        // No socket: the sandbox ended before its setup got that far (its own error
        // says why) or the run was stopped.
        if fds.is_empty() {
            return Ok(());
        }
        // Only the sockets the plan describes are served.
        let sockets = check_sockets(fds, expected, transparent.as_ref())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("workfence-proxy")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the proxy's runtime: {e}"))?;
        let result = rt.block_on(async move {
            let reg = |e: std::io::Error| format!("registering a proxy socket (epoll): {e}");
            let l = tokio::net::TcpListener::from_std(sockets.proxy).map_err(reg)?;
            // The transparent listeners and the DNS socket run beside the proxy's
            // listener; all stop together, and a failing one stops the proxy (the
            // sandbox then reaches nothing rather than part of what it should).
            let mut side = tokio::task::JoinSet::new();
            for t in sockets.transparent {
                let t = tokio::net::TcpListener::from_std(t).map_err(reg)?;
                let p = proxy.clone();
                side.spawn(async move { p.serve_transparent(t).await });
            }
            if let Some(d) = sockets.dns {
                let d = tokio::net::UdpSocket::from_std(d).map_err(reg)?;
                let p = proxy.clone();
                side.spawn(async move { p.serve_dns(d).await });
            }
            let side_failed = async {
                loop {
                    match side.join_next().await {
                        Some(Ok(Err(e))) => return e.to_string(),
                        Some(Err(e)) => return format!("a transparent-mode task failed: {e}"),
                        Some(Ok(Ok(()))) => continue,
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            let served = tokio::select! {
                r = proxy.serve_tcp(l) => r.map_err(|e| e.to_string()),
                e = side_failed => Err(e),
                _ = stop => Ok(()),
            };
            // The sandbox is gone, so every client socket is closed: what is still
            // open ends at once; wait for it so that its audit record is written
            // (a connection still open after that is recorded as cut short).
            proxy.drain(std::time::Duration::from_secs(1)).await;
            served
        });
        rt.shutdown_timeout(std::time::Duration::from_millis(200));
        result
    }
}
