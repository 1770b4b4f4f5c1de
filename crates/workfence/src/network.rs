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
    Ok(cfg)
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
        thread: Option<JoinHandle<()>>,
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
        /// The proxy and the socket pair; `theirs` is for the sandbox. `expected` is
        /// the proxy listener's address and `transparent` the plan's transparent mode:
        /// only the sockets they describe are served.
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

        /// Stops the proxy (the sandbox is gone) and returns what it denied.
        pub fn finish(mut self) -> Vec<workfence_proxy::Denial> {
            if let Some(w) = &self.waker {
                // Wakes a thread still waiting for the sandbox's sockets.
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            self.proxy.denials()
        }
    }

    /// The sandbox's sockets, checked against the plan: the proxy listener at
    /// `expected`, then one transparent listener per planned port on 0.0.0.0, then the
    /// DNS socket on UDP 0.0.0.0:53. Anything else (a missing, extra or different
    /// socket) serves nothing: the sandbox then reaches nothing.
    struct Sockets {
        proxy: std::net::TcpListener,
        transparent: Vec<std::net::TcpListener>,
        dns: Option<std::net::UdpSocket>,
    }

    fn check_sockets(
        fds: Vec<OwnedFd>,
        expected: std::net::SocketAddr,
        plan: Option<&TransparentPlan>,
    ) -> Option<Sockets> {
        use std::net::{Ipv4Addr, SocketAddr};
        let ports: &[u16] = plan.map(|t| t.tcp_ports.as_slice()).unwrap_or(&[]);
        let dns = plan.is_some_and(|t| t.dns);
        if fds.len() != 1 + ports.len() + usize::from(dns) {
            return None;
        }
        let mut fds = fds.into_iter();
        let tcp = |fd: OwnedFd, want: SocketAddr| {
            let l = std::net::TcpListener::from(fd);
            (l.local_addr().ok() == Some(want) && l.set_nonblocking(true).is_ok()).then_some(l)
        };
        let proxy = tcp(fds.next()?, expected)?;
        let mut transparent = Vec::new();
        for p in ports {
            transparent.push(tcp(
                fds.next()?,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, *p)),
            )?);
        }
        let dns = match fds.next() {
            Some(fd) => {
                let u = std::net::UdpSocket::from(fd);
                if u.local_addr().ok() != Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53)))
                    || u.set_nonblocking(true).is_err()
                {
                    return None;
                }
                Some(u)
            }
            None => None,
        };
        Some(Sockets {
            proxy,
            transparent,
            dns,
        })
    }

    fn serve(
        proxy: Proxy,
        ours: UnixStream,
        stop: oneshot::Receiver<()>,
        expected: std::net::SocketAddr,
        transparent: Option<TransparentPlan>,
    ) {
        let fds: Vec<OwnedFd> = match workfence_linux::receive_proxy_sockets(ours.as_fd()) {
            Ok(f) => f,
            Err(_) => return,
        };
        drop(ours);
        let Some(sockets) = check_sockets(fds, expected, transparent.as_ref()) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("workfence-proxy")
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(l) = tokio::net::TcpListener::from_std(sockets.proxy) else {
                return;
            };
            // Every transparent listener and the DNS socket run beside the proxy's
            // listener; all stop together.
            let mut side = tokio::task::JoinSet::new();
            for t in sockets.transparent {
                let Ok(t) = tokio::net::TcpListener::from_std(t) else {
                    return;
                };
                let p = proxy.clone();
                side.spawn(async move {
                    let _ = p.serve_transparent(t).await;
                });
            }
            if let Some(d) = sockets.dns {
                let Ok(d) = tokio::net::UdpSocket::from_std(d) else {
                    return;
                };
                let p = proxy.clone();
                side.spawn(async move {
                    let _ = p.serve_dns(d).await;
                });
            }
            tokio::select! {
                _ = proxy.serve_tcp(l) => {}
                _ = stop => {}
            }
            side.abort_all();
            // The sandbox is gone, so every client socket is closed: what is still
            // open ends at once; wait for it so that its audit record is written.
            proxy.drain(std::time::Duration::from_secs(1)).await;
        });
        rt.shutdown_timeout(std::time::Duration::from_millis(200));
    }
}
