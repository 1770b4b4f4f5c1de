//! The proxy's front door: arbitrary bytes as one client connection, fed to
//! `Proxy::serve_connection` over an in-memory duplex stream. No real network: the only
//! allowed destination is `allowed.test`, pinned to a counting listener on 127.0.0.1.
//!
//! The first input byte picks the configuration: deny-all, allow-one, or allow-one with
//! per-run credentials. In the rest of the input `@P` becomes the counting listener's
//! port in decimal and `@B` the same port as two big-endian bytes (for SOCKS), so the
//! fuzzer can reach the allowed destination at all.
//!
//! Invariants: no panic, no hang; every connection the proxy opens reaches the counting
//! listener and is recorded against `allowed.test` on its port (so nothing outside the
//! rules is ever connected to); deny-all opens nothing; no name is ever looked up in DNS;
//! with credentials, nothing is opened unless the input carried them.
#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use workfence_proxy::{Decision, MemorySink, NamedLists, Proxy, ProxyAuth, ProxyConfig, RuleSet};

const USER: &str = "wf";
const PASS: &str = "s3cret-run-token";

struct World {
    rt: Runtime,
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let l = rt.block_on(TcpListener::bind(("127.0.0.1", 0))).unwrap();
        let addr = l.local_addr().unwrap();
        let a = accepts.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        World { rt, addr, accepts }
    })
}

fn proxy(mode: u8, port: u16) -> (Proxy, Arc<MemorySink>) {
    let allow: Vec<String> = match mode {
        0 => vec![],
        _ => vec![format!("allowed.test:{port}")],
    };
    // allow_local, because the pin is a loopback address; a deny rule that must win.
    let rules = RuleSet::new(
        &[],
        &["deny.allowed.test".to_string()],
        &allow,
        &NamedLists::new(),
    )
    .unwrap();
    let mut cfg = ProxyConfig::new(rules);
    let mut resolve = BTreeMap::new();
    resolve.insert(
        "allowed.test".to_string(),
        vec!["127.0.0.1".parse().unwrap()],
    );
    resolve.insert(
        "deny.allowed.test".to_string(),
        vec!["127.0.0.1".parse().unwrap()],
    );
    cfg.resolve = resolve;
    if mode == 2 {
        cfg.auth = Some(ProxyAuth {
            user: USER.into(),
            password: PASS.into(),
        });
    }
    cfg.handshake_timeout = Duration::from_millis(200);
    cfg.connect_timeout = Duration::from_millis(200);
    let sink = Arc::new(MemorySink::default());
    (Proxy::new(cfg, sink.clone()).unwrap(), sink)
}

fn substitute(data: &[u8], port: u16) -> Vec<u8> {
    let dec = port.to_string();
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut i = 0;
    while i < data.len() {
        match (data[i], data.get(i + 1)) {
            (b'@', Some(b'P')) => {
                out.extend_from_slice(dec.as_bytes());
                i += 2;
            }
            (b'@', Some(b'B')) => {
                out.extend_from_slice(&port.to_be_bytes());
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = mode % 3;
    let w = world();
    let port = w.addr.port();
    let input = substitute(rest, port);
    let (proxy, sink) = proxy(mode, port);
    let before = w.accepts.load(Ordering::SeqCst);
    let baseline = w.rt.metrics().num_alive_tasks();
    w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let p = proxy.clone();
        let serve = tokio::spawn(async move { p.serve_connection(server).await });
        let io = async {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut got = Vec::new();
            let r = client.read_to_end(&mut got).await;
            if std::env::var_os("WF_FUZZ_DEBUG").is_some() {
                eprintln!("client got {r:?}: {:?}", String::from_utf8_lossy(&got));
            }
        };
        tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .expect("client I/O hung");
        tokio::time::timeout(Duration::from_secs(5), serve)
            .await
            .expect("serve_connection hung")
            .expect("serve_connection panicked");
        // Tunnels and forwarded requests finish (and write their audit records) in tasks
        // of their own; wait for every task this input started.
        let mut waited = 0;
        while tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            > baseline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
            assert!(waited < 5000, "tasks left running");
        }
    });
    let opened = w.accepts.load(Ordering::SeqCst) - before;
    let records = sink.records();
    let connected: Vec<_> = records.iter().filter(|r| r.resolved.is_some()).collect();
    if std::env::var_os("WF_FUZZ_DEBUG").is_some() {
        eprintln!("mode {mode}: opened {opened}; records {records:#?}");
    }
    for r in &records {
        // The proxy's own wording for a failed lookup (a prefix: request text that the
        // fuzzer puts into a refusal's reason does not count).
        let reason = r.reason.as_deref().unwrap_or("");
        assert!(
            !(r.decision == Decision::Error && reason.starts_with("could not resolve")),
            "a DNS lookup: {r:?}"
        );
    }
    for r in &connected {
        assert_eq!(r.resolved, Some(w.addr), "{r:?}");
        assert_eq!(r.host.as_deref(), Some("allowed.test"), "{r:?}");
        assert_eq!(r.port, Some(port), "{r:?}");
    }
    // Every connection the proxy opened is one it recorded as checked and allowed.
    assert_eq!(opened, connected.len(), "{records:?}");
    if mode == 0 {
        assert_eq!(opened, 0);
    }
    if mode == 2 && opened > 0 {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
        assert!(
            contains(&input, b64.as_bytes()) || contains(&input, PASS.as_bytes()),
            "connected without the credentials"
        );
    }
});
