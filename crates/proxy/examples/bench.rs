//! The proxy against direct loopback, in one run (not a timed test; `scripts/bench-proxy.sh`
//! runs it in release mode). Everything is on 127.0.0.1: a local server, the proxy with a
//! `bench.test -> 127.0.0.1` pin and an `allow_local` rule for it, and the clients.
//!
//! - throughput: a bulk download (1 GiB by default) direct, through CONNECT and through
//!   HTTP forward proxying;
//! - set-up latency: connect + first byte from the server, direct and through CONNECT and
//!   SOCKS5 (each handshake included), median and p99 over many sequential connections;
//! - concurrency: many connections at once, each one small HTTP request through the proxy.
//!
//! Prints a markdown table. Options: `--bytes N` (MiB, default 1024), `--conns N`
//! (default 2000), `--concurrent N` (default 500), `--repeat N` (throughput rounds, each
//! path once per round, best kept, default 3).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use workfence_proxy::{JsonLinesSink, NamedLists, Proxy, ProxyConfig, RuleSet};

const LOCAL: &str = "127.0.0.1";
const NAME: &str = "bench.test";

struct Opts {
    mib: u64,
    conns: usize,
    concurrent: usize,
    repeat: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        mib: 1024,
        conns: 2000,
        concurrent: 500,
        repeat: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = || -> u64 {
            pair.get(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", pair[0]))
        };
        match pair[0].as_str() {
            "--bytes" => o.mib = value(),
            "--conns" => o.conns = value() as usize,
            "--concurrent" => o.concurrent = value() as usize,
            "--repeat" => o.repeat = value().max(1) as usize,
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// Reads a request head (up to the blank line); returns the request line.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    text.lines().next().map(str::to_string)
}

/// The origin: `GET /bulk/N` answers N bytes, anything else a 2-byte body.
async fn origin() -> SocketAddr {
    let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let chunk: Arc<[u8]> = vec![0x5a; 1 << 20].into();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let Some(line) = read_head(&mut s).await else {
                    return;
                };
                let n: u64 = line
                    .split(' ')
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/bulk/"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if n == 0 {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let head =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..k]).await.is_err() {
                        return;
                    }
                    left -= k as u64;
                }
            });
        }
    });
    addr
}

/// A server that sends one byte as soon as it accepts: the "first byte" of the latency test.
async fn greeter() -> SocketAddr {
    let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let _ = s.write_all(b"x").await;
                let mut b = [0u8; 64];
                let _ = s.read(&mut b).await;
            });
        }
    });
    addr
}

async fn start_proxy(audit: &std::path::Path) -> SocketAddr {
    let rules = RuleSet::new(&[], &[], &[NAME.to_string()], &NamedLists::new()).unwrap();
    let mut cfg = ProxyConfig::new(rules);
    cfg.resolve = BTreeMap::from([(NAME.to_string(), vec![LOCAL.parse().unwrap()])]);
    cfg.max_connections = 4096;
    let sink = Arc::new(JsonLinesSink::append_to(audit).unwrap());
    let proxy = Proxy::new(cfg, sink).unwrap();
    let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { proxy.serve_tcp(l).await });
    addr
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Connect,
    Socks,
    Forward,
}

/// Opens a connection to `target` (the origin's or greeter's port) along `path`, ready for
/// the request (for Forward: just connected to the proxy).
async fn open(path: Path, proxy: SocketAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let err = |m: String| std::io::Error::other(m);
    let mut s = TcpStream::connect(if path == Path::Direct { target } else { proxy }).await?;
    s.set_nodelay(true)?;
    match path {
        Path::Direct | Path::Forward => {}
        Path::Connect => {
            let req = format!(
                "CONNECT {NAME}:{p} HTTP/1.1\r\nHost: {NAME}:{p}\r\n\r\n",
                p = target.port()
            );
            s.write_all(req.as_bytes()).await?;
            // Read the response head byte by byte so nothing after it is consumed.
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await? == 0 {
                    return Err(err("proxy closed during CONNECT".into()));
                }
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err(err(String::from_utf8_lossy(&head).into()));
            }
        }
        Path::Socks => {
            s.write_all(&[5, 1, 0]).await?;
            let mut m = [0u8; 2];
            s.read_exact(&mut m).await?;
            let mut req = vec![5, 1, 0, 3, NAME.len() as u8];
            req.extend_from_slice(NAME.as_bytes());
            req.extend_from_slice(&target.port().to_be_bytes());
            s.write_all(&req).await?;
            let mut rep = [0u8; 10];
            s.read_exact(&mut rep).await?;
            if rep[1] != 0 {
                return Err(err(format!("SOCKS reply {}", rep[1])));
            }
        }
    }
    Ok(s)
}

/// One HTTP GET of `path_q` along `path`; returns the body length.
async fn get(
    path: Path,
    proxy: SocketAddr,
    origin: SocketAddr,
    path_q: &str,
) -> std::io::Result<u64> {
    let mut s = open(path, proxy, origin).await?;
    let req = if path == Path::Forward {
        format!(
            "GET http://{NAME}:{p}{path_q} HTTP/1.1\r\nHost: {NAME}:{p}\r\nConnection: close\r\n\r\n",
            p = origin.port()
        )
    } else {
        format!("GET {path_q} HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n")
    };
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut body = None;
    let mut head = Vec::new();
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        match body {
            Some(ref mut b) => *b += n as u64,
            None => {
                head.extend_from_slice(&buf[..n]);
                if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !head.starts_with(b"HTTP/1.1 200") {
                        return Err(std::io::Error::other(
                            String::from_utf8_lossy(&head).to_string(),
                        ));
                    }
                    body = Some((head.len() - i - 4) as u64);
                }
            }
        }
    }
    Ok(body.unwrap_or(0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn latency(path: Path, proxy: SocketAddr, greeter: SocketAddr, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = open(path, proxy, greeter)
            .await
            .expect("latency connection");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("first byte");
        out.push(t.elapsed());
    }
    out.sort();
    out
}

#[tokio::main]
async fn main() {
    let o = opts();
    let dir = std::env::temp_dir().join(format!("workfence-bench-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let origin = origin().await;
    let greeter = greeter().await;
    let proxy = start_proxy(&audit).await;
    let bytes = o.mib << 20;
    let bulk = format!("/bulk/{bytes}");

    let mut rows: Vec<String> = Vec::new();
    let paths = [
        ("direct loopback", Path::Direct),
        ("CONNECT tunnel", Path::Connect),
        ("HTTP forward", Path::Forward),
    ];
    // Rounds interleave the paths, so a change in the machine's load hits all of them.
    let mut best = [0.0f64; 3];
    for _ in 0..o.repeat {
        for (i, (label, path)) in paths.iter().enumerate() {
            let t = Instant::now();
            let got = get(*path, proxy, origin, &bulk)
                .await
                .expect("bulk download");
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(got, bytes, "{label}: short body");
            best[i] = best[i].max(bytes as f64 / secs / (1u64 << 20) as f64);
        }
    }
    for (i, (label, path)) in paths.iter().enumerate() {
        let verdict = if *path == Path::Direct {
            "baseline".to_string()
        } else {
            format!(
                "{:.0}% of direct (target >= 90%)",
                best[i] / best[0] * 100.0
            )
        };
        rows.push(format!(
            "| throughput, {} MiB download | {label} | {:.0} MiB/s (best of {}) | {verdict} |",
            o.mib, best[i], o.repeat
        ));
    }

    let direct = latency(Path::Direct, proxy, greeter, o.conns).await;
    let (dm, dp) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    rows.push(format!(
        "| set-up latency, connect + first byte, {} conns | direct loopback | median {:.0} us, p99 {:.0} us | baseline |",
        o.conns,
        us(dm),
        us(dp)
    ));
    for (label, path) in [("CONNECT tunnel", Path::Connect), ("SOCKS5", Path::Socks)] {
        let l = latency(path, proxy, greeter, o.conns).await;
        let (m, p) = (percentile(&l, 0.5), percentile(&l, 0.99));
        rows.push(format!(
            "| set-up latency, connect + first byte, {} conns | {label} | median {:.0} us, p99 {:.0} us | adds median {:.0} us, p99 {:.0} us (target: median < 1000 us) |",
            o.conns,
            us(m),
            us(p),
            us(m) - us(dm),
            us(p) - us(dp)
        ));
    }

    for (label, path) in [
        ("HTTP forward", Path::Forward),
        ("CONNECT tunnel", Path::Connect),
    ] {
        let t = Instant::now();
        let tasks: Vec<_> = (0..o.concurrent)
            .map(|_| tokio::spawn(async move { get(path, proxy, origin, "/small").await }))
            .collect();
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok(2)) => {}
                Ok(Ok(n)) => errors.push(format!("body of {n} bytes")),
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let secs = t.elapsed().as_secs_f64();
        rows.push(format!(
            "| {} concurrent small requests | {label} | {} errors, all done in {:.0} ms | {} |",
            o.concurrent,
            errors.len(),
            secs * 1e3,
            if errors.is_empty() { "ok" } else { "FAILED" }
        ));
        if let Some(e) = errors.first() {
            eprintln!("{label}: first error: {e}");
        }
    }

    println!("| measurement | path | result | against the target |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
