//! Transparent mode end to end: a proxy-unaware client (raw sockets, no proxy
//! variables read) inside `workfence run` with a network allowlist resolves an allowed
//! name through workfence's DNS, connects to the synthetic address it got, and reaches
//! a server on the host's loopback through a `resolve` pin; a name not allowed does not
//! resolve, and a direct connection to the server's address is refused.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use common::*;

const SCRIPT: &str = r#"
import socket, sys
port = int(sys.argv[1])
print("ADDR", socket.getaddrinfo("web.test", port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
s = socket.create_connection(("web.test", port), timeout=5)
s.sendall(b"GET / HTTP/1.0\r\nHost: web.test\r\n\r\n")
data = b""
while True:
    b = s.recv(1000)
    if not b:
        break
    data += b
print("BODY", data.split(b"\r\n\r\n", 1)[-1].decode())
try:
    socket.getaddrinfo("other.test", 80)
    print("OTHER resolved")
except socket.gaierror:
    print("OTHER refused")
try:
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    print("DIRECT", c.recv(100) or "refused")
except OSError:
    print("DIRECT refused")
"#;

#[test]
fn a_proxy_unaware_client_reaches_an_allowed_name_and_nothing_else() {
    let test = "transparent-mode";
    let dir = base_dir().join(format!("transparent-{}", std::process::id()));
    let (home, ws) = (dir.join("h"), dir.join("ws"));
    fs::create_dir_all(home.join(".config/workfence")).unwrap();
    fs::create_dir_all(&ws).unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in server.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    fs::write(
        home.join(".config/workfence/config.toml"),
        format!(
            "[network]\nmode = \"allow\"\nallow_local = [\"web.test:{port}\"]\nresolve = {{ \"web.test\" = [\"127.0.0.1\"] }}\n"
        ),
    )
    .unwrap();
    let audit = dir.join("audit.jsonl");
    let out = Command::new(bin())
        .arg("run")
        .arg("-C")
        .arg(&ws)
        .arg("--audit-log")
        .arg(&audit)
        .arg("--")
        .arg(python())
        .args(["-c", SCRIPT, &port.to_string()])
        .current_dir(&ws)
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.contains("ADDR") && stderr.contains("namespace") {
        skip_or_fail(
            test,
            &format!("no sandbox with a private network namespace here: {stderr}"),
        );
        return;
    }
    let show = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("ADDR 198.18."), "{show}");
    assert!(stdout.contains("BODY hello"), "{show}");
    assert!(stdout.contains("OTHER refused"), "{show}");
    assert!(stdout.contains("DIRECT refused"), "{show}");
    assert!(stderr.contains("denied other.test"), "{show}");
    assert!(
        stderr.contains(&format!("denied 127.0.0.1:{port}")),
        "{show}"
    );
    let log = fs::read_to_string(&audit).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"protocol\":\"transparent\"")
                && l.contains("\"host\":\"web.test\"")
                && l.contains("\"decision\":\"allow\"")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("\"protocol\":\"dns\"") && l.contains("other.test")),
        "{log}"
    );
    work_passed(test);
    let _ = fs::remove_dir_all(&dir);
}
