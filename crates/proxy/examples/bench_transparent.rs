//! Cost of the transparent path against the explicit-proxy path and a direct
//! connection, on loopback, in one process: connection set-up (connect, one byte out,
//! its echo back, close; median and p99 over many connections) and bulk throughput (one
//! download through each path). A benchmark, not a test:
//!
//! ```text
//! cargo run --release -p workfence-proxy --example bench_transparent [CONNS] [MIB]
//! ```
//!
//! Linux only: the transparent listener is bound to 127.77.0.1, the synthetic address
//! the DNS answer hands out (without a network namespace, 127.0.0.0/8 is what this host
//! already treats as its own). The upstream is a server on 127.0.0.1 reached through a
//! `resolve` pin, as in the tests.

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("bench_transparent runs on Linux only");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream, UdpSocket};
    use workfence_proxy::{
        AuditRecord, AuditSink, NamedLists, Proxy, ProxyConfig, RuleSet, SyntheticPool,
    };

    struct Null;
    impl AuditSink for Null {
        fn record(&self, _: &AuditRecord) {}
    }

    /// Byte `b'D'` asks for `bulk` bytes; any other byte is echoed.
    async fn server(bulk: usize) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    while let Ok(1) = s.read(&mut b).await {
                        if b[0] == b'D' {
                            let chunk = vec![0x5au8; 256 * 1024];
                            let mut left = bulk;
                            while left > 0 {
                                let n = left.min(chunk.len());
                                if s.write_all(&chunk[..n]).await.is_err() {
                                    return;
                                }
                                left -= n;
                            }
                            return;
                        }
                        if s.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    #[derive(Clone, Copy)]
    enum Path {
        Direct(SocketAddr),
        Connect(SocketAddr, u16),
        Transparent(SocketAddr),
    }

    async fn open(p: Path) -> TcpStream {
        match p {
            Path::Direct(a) | Path::Transparent(a) => {
                let s = TcpStream::connect(a).await.unwrap();
                s.set_nodelay(true).unwrap();
                s
            }
            Path::Connect(proxy, port) => {
                let mut s = TcpStream::connect(proxy).await.unwrap();
                s.set_nodelay(true).unwrap();
                let req = format!(
                    "CONNECT bench.test:{port} HTTP/1.1\r\nHost: bench.test:{port}\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    s.read_exact(&mut b).await.unwrap();
                    head.push(b[0]);
                }
                assert!(
                    head.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&head)
                );
                s
            }
        }
    }

    async fn setup_times(p: Path, n: usize) -> Vec<Duration> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let mut s = open(p).await;
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            v.push(t.elapsed());
        }
        v.sort();
        v
    }

    async fn throughput(p: Path, bytes: usize) -> f64 {
        let mut s = open(p).await;
        let t = Instant::now();
        s.write_all(b"D").await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < bytes {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "short download");
            got += n;
        }
        bytes as f64 / t.elapsed().as_secs_f64() / (1u64 << 30) as f64
    }

    fn us(d: Duration) -> f64 {
        d.as_secs_f64() * 1e6
    }

    /// A runtime on its own thread, as in a real run (the proxy has its own thread and
    /// two workers; client and server are other processes).
    fn runtime_thread<T: Send + 'static>(
        workers: usize,
        f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
            + Send
            + 'static,
    ) -> std::sync::mpsc::Receiver<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let v = f().await;
                let _ = tx.send(v);
                std::future::pending::<()>().await
            });
        });
        rx
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
        let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
        let bulk = mib << 20;
        let port = runtime_thread(1, move || Box::pin(server(bulk)))
            .recv()
            .unwrap();
        let (paddr, daddr, taddr) = runtime_thread(2, move || {
            Box::pin(async move {
                let rules =
                    RuleSet::new(&[], &[], &["bench.test".into()], &NamedLists::new()).unwrap();
                let mut cfg = ProxyConfig::new(rules);
                cfg.resolve
                    .insert("bench.test".into(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
                cfg.synthetic = SyntheticPool {
                    base: Ipv4Addr::new(127, 77, 0, 0),
                    prefix: 16,
                };
                cfg.transparent_http_ports = vec![];
                let proxy = Proxy::new(cfg, Arc::new(Null)).unwrap();
                let pl = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let paddr = pl.local_addr().unwrap();
                let p = proxy.clone();
                tokio::spawn(async move { p.serve_tcp(pl).await });
                let dns = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let daddr = dns.local_addr().unwrap();
                let p = proxy.clone();
                tokio::spawn(async move { p.serve_dns(dns).await });
                // The first synthetic address; the client's DNS query below gets it.
                let tl = TcpListener::bind((Ipv4Addr::new(127, 77, 0, 1), port))
                    .await
                    .unwrap();
                let taddr = tl.local_addr().unwrap();
                tokio::spawn(async move { proxy.serve_transparent(tl).await });
                (paddr, daddr, taddr)
            })
        })
        .recv()
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // Transparent: DNS first, as a client would.
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.connect(daddr).await.unwrap();
            let mut q = Message::new();
            q.set_id(1).set_recursion_desired(true);
            q.add_query(Query::query(
                Name::from_ascii("bench.test.").unwrap(),
                RecordType::A,
            ));
            let mut dns_times = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                c.send(&q.to_vec().unwrap()).await.unwrap();
                let mut buf = [0u8; 512];
                let n = c.recv(&mut buf).await.unwrap();
                dns_times.push(t.elapsed());
                let m = Message::from_vec(&buf[..n]).unwrap();
                let RData::A(a) = m.answers()[0].data() else {
                    panic!("no A answer")
                };
                assert_eq!(SocketAddr::from((a.0, port)), taddr);
            }
            dns_times.sort();
            let paths = [
                (
                    "direct",
                    Path::Direct(SocketAddr::from(([127, 0, 0, 1], port))),
                ),
                ("explicit proxy (CONNECT)", Path::Connect(paddr, port)),
                ("transparent", Path::Transparent(taddr)),
            ];
            println!(
                "DNS answer (loopback UDP, 200 queries): median {:.0} us",
                us(dns_times[100])
            );
            println!(
                "connection set-up, connect + 1-byte round trip, {conns} sequential connections:"
            );
            let mut base = 0.0;
            for (name, p) in paths {
                setup_times(p, conns / 10).await; // warm-up
                let v = setup_times(p, conns).await;
                let med = us(v[v.len() / 2]);
                if matches!(p, Path::Direct(_)) {
                    base = med;
                }
                println!(
                    "  {name:<26} median {med:>7.1} us  p99 {:>7.1} us  (+{:.1} us over direct)",
                    us(v[v.len() * 99 / 100]),
                    med - base
                );
            }
            println!("bulk download of {mib} MiB, best of 3:");
            let mut direct = 0.0;
            for (name, p) in paths {
                let mut best: f64 = 0.0;
                for _ in 0..3 {
                    best = best.max(throughput(p, bulk).await);
                }
                if matches!(p, Path::Direct(_)) {
                    direct = best;
                }
                println!(
                    "  {name:<26} {best:>6.2} GiB/s  ({:.0}% of direct)",
                    best / direct * 100.0
                );
            }
        });
    }
}
