//! The library called from a multi-threaded program (as agent builders do from
//! tokio): `workfence::run` must not clone from this process (another thread may
//! hold a lock), so it re-executes a helper. This test binary is multi-threaded by
//! construction (the test harness plus the threads spawned here). Linux only.
#![cfg(target_os = "linux")]

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

fn count(line: &str) {
    eprintln!("{line}");
    if let Some(p) = std::env::var_os("WORKFENCE_COUNTS_FILE") {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

fn scratch() -> PathBuf {
    let uid = fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let base = std::env::var_os("WORKFENCE_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/workfence-tests-{}", uid.unwrap_or(0))));
    // One directory per call: the tests of this binary run in parallel.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = base.join(format!("library-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("ws")).unwrap();
    fs::create_dir_all(d.join("out")).unwrap();
    d
}

fn threads() -> usize {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn library_from_a_multithreaded_process_uses_the_helper() {
    let d = scratch();
    let ws = fs::canonicalize(d.join("ws")).unwrap();
    let out = fs::canonicalize(d.join("out")).unwrap();
    // Busy threads next to the call, so that the process really has several.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        while stop_rx.recv_timeout(Duration::from_millis(1)).is_err() {
            drop(vec![0u8; 4096]);
        }
    });
    assert!(threads() > 1, "the test must run multi-threaded");

    let script = format!(
        "echo inside > inside.txt; echo escaped > {0}/escape 2>/dev/null; echo done",
        out.display()
    );
    // Control: the same script without a sandbox writes outside the workspace.
    let st = Command::new("sh")
        .args(["-c", &script])
        .current_dir(&ws)
        .status()
        .unwrap();
    assert!(
        st.success() && out.join("escape").exists(),
        "control must escape"
    );
    fs::remove_file(out.join("escape")).unwrap();
    fs::remove_file(ws.join("inside.txt")).unwrap();

    // Without a helper the library refuses instead of cloning unsoundly.
    std::env::remove_var("WORKFENCE_HELPER");
    let policy = workfence::policy::Policy::new(&ws);
    let argv = vec!["sh".into(), "-c".into(), script.clone().into()];
    match workfence::run(&policy, argv.clone(), &mut |_| {}) {
        Err(e) => assert!(e.to_string().contains("multi-threaded"), "{e}"),
        Ok(o) => panic!("ran without a helper (exit {})", o.code),
    }
    assert!(!ws.join("inside.txt").exists());

    // The binary under test (scripts/test.sh stages a copy for the unprivileged run).
    let bin = std::env::var_os("WORKFENCE_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_workfence").into());
    std::env::set_var("WORKFENCE_HELPER", bin);
    let code = workfence::run(&policy, argv, &mut |_| {})
        .expect("run through the helper")
        .code;
    std::env::remove_var("WORKFENCE_HELPER");
    stop_tx.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        fs::read_to_string(ws.join("inside.txt")).unwrap(),
        "inside\n"
    );
    assert!(
        !out.join("escape").exists(),
        "the helper ran the command without the sandbox"
    );
    count("WORK library-multithreaded-helper passed");
    let _ = fs::remove_dir_all(&d);
}

/// Pids of processes whose argv contains `arg`.
fn pids_with_arg(arg: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            if c.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
                v.push(pid);
            }
        }
    }
    v
}

/// A multi-threaded caller that is SIGKILLed takes its sandbox with it, as a
/// single-threaded one does: the helper watches the caller through its result pipe.
/// The caller is this test binary, re-run in a child role.
#[test]
fn library_caller_killed_takes_the_sandbox_with_it() {
    const ROLE: &str = "WORKFENCE_TEST_LIBRARY_CALLER";
    if let Some(mark) = std::env::var_os(ROLE) {
        // Child role: a multi-threaded caller that runs a long command.
        let d = scratch();
        let ws = fs::canonicalize(d.join("ws")).unwrap();
        let _busy = std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(5));
        });
        let policy = workfence::policy::Policy::new(&ws);
        let argv = vec!["sleep".into(), mark];
        let _ = workfence::run(&policy, argv, &mut |_| {});
        return;
    }
    let mark = format!(
        "{}.{}",
        3000 + std::process::id() % 1000,
        std::process::id()
    );
    let bin = std::env::var_os("WORKFENCE_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_workfence").into());
    let mut caller = Command::new(std::env::current_exe().unwrap())
        .args([
            "library_caller_killed_takes_the_sandbox_with_it",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, &mark)
        .env("WORKFENCE_HELPER", bin)
        .spawn()
        .unwrap();
    // Bounded waits, not speed assertions.
    let started = (0..1000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !pids_with_arg(&mark).is_empty()
    });
    if !started {
        let _ = caller.kill();
        let _ = caller.wait();
        panic!("the sandboxed sleep never started");
    }
    caller.kill().unwrap();
    caller.wait().unwrap();
    let gone = (0..1000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        pids_with_arg(&mark).is_empty()
    });
    let left = pids_with_arg(&mark);
    for p in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    assert!(
        gone,
        "10 s after the caller's SIGKILL the sandboxed command still runs: {left:?}"
    );
    count("WORK library-caller-killed passed");
}

/// A network allowlist from a multi-threaded caller: the proxy runs in the caller and
/// the sandbox's listening socket travels through the helper to it. Judged from the
/// outside: the host server saw exactly the allowed request, the direct connection to
/// it from inside was refused, and the denied name is in the run's result.
#[test]
fn library_network_allowlist_through_the_helper() {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    let d = scratch();
    let ws = fs::canonicalize(d.join("ws")).unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for s in server.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = seen_tx.send(line.trim_end().to_string());
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nproxied-ok");
        }
    });
    assert!(threads() > 1, "the test must run multi-threaded");
    let py = format!(
        r#"
import socket, urllib.request
print(urllib.request.urlopen("http://lib.test:{port}/allowed").read().decode())
try:
    urllib.request.urlopen("http://denied.test:{port}/denied")
    print("denied-reached")
except Exception as e:
    print("denied-refused")
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("direct-reached")
except OSError:
    print("direct-refused")
"#
    );
    let mut policy = workfence::policy::Policy::new(&ws);
    policy.network = workfence::policy::Network::Proxy(workfence::policy::ProxyPolicy {
        allow_local: vec!["lib.test".into()],
        resolve: [("lib.test".to_string(), vec!["127.0.0.1".parse().unwrap()])].into(),
        ..Default::default()
    });
    policy.audit_log = Some(d.join("audit.jsonl"));
    let argv = vec![
        "sh".into(),
        "-c".into(),
        format!("python3 -c '{py}' > out.txt 2>&1").into(),
    ];
    let bin = std::env::var_os("WORKFENCE_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_workfence").into());
    std::env::set_var("WORKFENCE_HELPER", bin);
    let outcome = workfence::run(&policy, argv, &mut |_| {}).expect("run through the helper");
    std::env::remove_var("WORKFENCE_HELPER");
    let out = fs::read_to_string(ws.join("out.txt")).unwrap_or_default();
    assert_eq!(outcome.code, 0, "{out}");
    assert!(out.contains("proxied-ok"), "{out}");
    assert!(
        out.contains("denied-refused") && out.contains("direct-refused"),
        "{out}"
    );
    // The server saw the allowed request only (the proxy forwards in origin form).
    let seen: Vec<String> = seen_rx.try_iter().collect();
    assert_eq!(seen, ["GET /allowed HTTP/1.1"], "{seen:?}");
    assert!(
        outcome
            .denials
            .iter()
            .any(|x| x.target == format!("denied.test:{port}")),
        "{:?}",
        outcome.denials
    );
    let audit = fs::read_to_string(d.join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"decision\":\"allow\"") && audit.contains("denied.test"),
        "{audit}"
    );
    count("WORK library-network-allowlist-helper passed");
    let _ = fs::remove_dir_all(&d);
}
