//! Network allowlists (`--network allow=...`, `[network]` config) through workfence's own
//! proxy, with real clients (curl over HTTP, HTTPS and SOCKS5, git, pip) against real
//! servers on the host's loopback, reached through `resolve` pins and `allow_local` rules.
//!
//! Every server is started by the test (`tests/net/netkit.py serve`) and logs every
//! accepted connection, before reading a byte, and every request (path and Host header)
//! to a file under `<scenario>/net/`. Every verdict is judged from those logs, from
//! outside, after the run: an allowed request reached its server; a denied one, or a
//! bypass attempt, left no trace on the server it aimed at.
//!
//! Attacks use the harness's [`Attack`]: the control runs the same script without the
//! sandbox, with the proxy variables pointing at a deliberately naive proxy (no policy,
//! C-string host names, destination taken from the Host header or the request line as
//! the attack needs), and must reach the forbidden server; the sandboxed run must not.
//! Each sandboxed attack also makes one allowed request through workfence's proxy (the
//! witness), so a block caused by a missing or broken proxy is not mistaken for policy.
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const NETKIT: &str = include_str!("net/netkit.py");

/// The proxy's address inside the sandbox (the interface under test).
const SANDBOX_PROXY: &str = "127.0.0.1:3128";

// ---------------------------------------------------------------------------------------
// Servers, the naive control proxy, config
// ---------------------------------------------------------------------------------------

fn net_dir(sc: &Scenario) -> PathBuf {
    sc.root.join("net")
}

/// The client kit inside the workspace (readable inside the sandbox).
fn kit(sc: &Scenario) -> PathBuf {
    sc.ws.join("netkit.py")
}

fn install_kit(sc: &Scenario) {
    fs::create_dir_all(net_dir(sc)).expect("mkdir net");
    if !kit(sc).exists() {
        fs::write(kit(sc), NETKIT).expect("write netkit.py");
    }
}

/// Starts a netkit process that publishes its port in `<net>/<name>.port`; returns the
/// port. The process exits by itself once the scenario dir is removed.
fn spawn_kit(sc: &Scenario, name: &str, args: &[OsString]) -> u16 {
    install_kit(sc);
    let net = net_dir(sc);
    let portfile = net.join(format!("{name}.port"));
    let err = net.join(format!("{name}.err"));
    let child = Command::new(python())
        .arg(kit(sc))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).expect("create server stderr"))
        .spawn()
        .expect("spawn a netkit server");
    // Exits by itself (watchdog on its port file and its parent); reaped at exit.
    std::mem::forget(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = fs::read_to_string(&portfile) {
            if let Ok(p) = s.trim().parse() {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "netkit {name} did not start: {}",
            read_lossy(&err)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts an HTTP server `name` (log `<net>/<name>.log`), with extra `serve` options.
fn server(sc: &Scenario, name: &str, extra: &[OsString]) -> u16 {
    let net = net_dir(sc);
    let mut a: Vec<OsString> = vec![
        "serve".into(),
        name.into(),
        net.join(format!("{name}.log")).into(),
        net.join(format!("{name}.port")).into(),
    ];
    a.extend(extra.iter().cloned());
    spawn_kit(sc, name, &a)
}

/// Starts the naive control proxy; `mode` is "host" or "line".
fn naive_proxy(sc: &Scenario, pins: &[(&str, &str)], mode: &str) -> u16 {
    let net = net_dir(sc);
    let m: BTreeMap<&str, &str> = pins.iter().copied().collect();
    let pf = net.join("pins.json");
    fs::write(&pf, serde_json::to_string(&m).unwrap()).expect("write pins");
    spawn_kit(
        sc,
        "naive",
        &[
            "naive-proxy".into(),
            net.join("naive.log").into(),
            net.join("naive.port").into(),
            pf.into(),
            mode.into(),
        ],
    )
}

/// Every JSON line a server logged.
fn log_of(sc: &Scenario, name: &str) -> Vec<Value> {
    read_lossy(&net_dir(sc).join(format!("{name}.log")))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Connections the server accepted.
fn conns(sc: &Scenario, name: &str) -> usize {
    log_of(sc, name)
        .iter()
        .filter(|v| v["ev"] == "conn")
        .count()
}

/// The Host header of the request for `/c/<case>` the server got, if it got one.
fn hit_host(sc: &Scenario, name: &str, case: &str) -> Option<String> {
    let path = format!("/c/{case}");
    log_of(sc, name)
        .into_iter()
        .find(|v| v["ev"] == "req" && v["path"] == path.as_str())
        .map(|v| v["host"].as_str().unwrap_or("").to_string())
}

fn hit(sc: &Scenario, name: &str, case: &str) -> bool {
    hit_host(sc, name, case).is_some()
}

/// Probe: the forbidden server got the request for `/c/<case>`.
fn probe_hit(a: Attack, server: &'static str, case: &'static str, what: &str) -> Attack {
    a.probe(
        &format!("{what} (server {server} got /c/{case})"),
        move |sc, _| Ok(hit(sc, server, case)),
    )
}

/// The `[network]` config: pins every name in `pins` (name, address) and appends `body`
/// (keys of `[network]`, then any further tables).
fn write_config(sc: &mut Scenario, pins: &[(&str, &str)], body: &str) {
    let resolve: Vec<String> = pins.iter().map(|(n, a)| format!("{n:?} = {a:?}")).collect();
    let text = format!(
        "[network]\nresolve = {{ {} }}\n{body}\n",
        resolve.join(", ")
    );
    sc.user_config(&text);
}

/// Names every test pins to the host's loopback.
const NAMES: &[&str] = &[
    "a.test",
    "ok.a.test",
    "bad.a.test",
    "sub.a.test",
    "evil.test",
    "local.test",
    "tls.test",
    "git.test",
    "pypi.test",
    "p.test",
    "w.test",
    "x.w.test",
    "deep.x.w.test",
    "evilw.test",
    "w.test.evil.test",
    "v.test",
    "y.v.test",
];

fn loopback_pins() -> Vec<(&'static str, &'static str)> {
    NAMES.iter().map(|n| (*n, "127.0.0.1")).collect()
}

/// Env for the control half: every proxy variable points at the naive proxy.
fn naive_env(port: u16) -> Vec<(OsString, OsString)> {
    let http = format!("http://127.0.0.1:{port}");
    let socks = format!("socks5h://127.0.0.1:{port}");
    let mut e = Vec::new();
    for (k, v) in [
        ("HTTP_PROXY", &http),
        ("HTTPS_PROXY", &http),
        ("ALL_PROXY", &socks),
    ] {
        e.push((k.into(), v.into()));
        e.push((k.to_lowercase().into(), v.into()));
    }
    e.push(("NO_PROXY".into(), "".into()));
    e.push(("no_proxy".into(), "".into()));
    e
}

/// What a test's setup needs.
struct NetSpec {
    /// Servers to start: (name, extra `serve` args).
    servers: Vec<(&'static str, Vec<OsString>)>,
    /// Pins (config and naive proxy).
    pins: Vec<(&'static str, &'static str)>,
    /// Naive proxy mode for the control ("line" or "host").
    naive: &'static str,
    /// `[network]` body; `{P<NAME>}` is replaced by server NAME's port.
    config: String,
}

impl NetSpec {
    fn new(servers: &[&'static str], config: &str) -> NetSpec {
        NetSpec {
            servers: servers.iter().map(|s| (*s, Vec::new())).collect(),
            pins: loopback_pins(),
            naive: "line",
            config: config.into(),
        }
    }
}

/// Starts the servers (and, for the control, the naive proxy), writes the config, and
/// returns the env: `P<NAME>` per server, `KIT`, `NET`, `XDG_STATE_HOME`, and for the
/// control the proxy variables.
fn net_setup(sc: &mut Scenario, mode: Mode, spec: &NetSpec) -> Vec<(OsString, OsString)> {
    install_kit(sc);
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut config = spec.config.clone();
    for (name, extra) in &spec.servers {
        let port = server(sc, name, extra);
        env.push((format!("P{name}").into(), port.to_string().into()));
        config = config.replace(&format!("{{P{name}}}"), &port.to_string());
    }
    write_config(sc, &spec.pins, &config);
    env.push(("KIT".into(), kit(sc).into()));
    env.push(("NET".into(), net_dir(sc).into()));
    env.push(("XDG_STATE_HOME".into(), sc.h.join(".local/state").into()));
    if mode == Mode::Control {
        let p = naive_proxy(sc, &spec.pins, spec.naive);
        env.extend(naive_env(p));
    }
    env
}

/// Shell helpers for every script. `req CASE URL [curl args]` prints
/// `R CASE code=<http> connect=<CONNECT code> rc=<curl exit>` and `BODY CASE <text>`;
/// curl always uses the proxy variables (`--noproxy` overrides whatever `NO_PROXY` says).
const PRELUDE: &str = r#"
SOCKS=${ALL_PROXY#*://}
C() { curl -sS -m 20 --noproxy wf.invalid "$@"; }
req() {
    __c=$1; __u=$2; shift 2
    __w=$(C -o "$WS/resp.$__c" -w '%{http_code} %{http_connect}' "$@" "$__u" 2>"$WS/resp.$__c.err"); __rc=$?
    echo "R $__c code=${__w% *} connect=${__w#* } rc=$__rc"
    echo "BODY $__c $(cat "$WS/resp.$__c" "$WS/resp.$__c.err" 2>/dev/null | tr '\n\r' '  ' | head -c 600)"
}
hex() { printf "$1" | od -An -v -tx1 | tr -d ' \n'; }
"#;

fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}\n")
}

/// The `R <case>` line's fields: (http code, CONNECT code, curl exit).
fn r_line(o: &Outcome, case: &str) -> Result<(String, String, i32), String> {
    let v = o
        .field(&format!("R {case}"))
        .ok_or_else(|| format!("no 'R {case}' line on stdout"))?;
    let get = |k: &str| {
        v.split_whitespace()
            .find_map(|p| p.strip_prefix(k))
            .unwrap_or("")
            .to_string()
    };
    let rc = get("rc=").parse().unwrap_or(-1);
    Ok((get("code="), get("connect="), rc))
}

fn body_of(o: &Outcome, case: &str) -> String {
    o.field(&format!("BODY {case}")).unwrap_or_default()
}

/// Sandboxed check: the witness request `case` went through the proxy to `server`.
fn witness(a: Attack, server: &'static str, case: &'static str) -> Attack {
    a.sandbox_check(
        &format!("the allowed witness request {case} reached server {server} through the proxy"),
        move |sc, o| {
            let (code, _, rc) = r_line(o, case)?;
            if code != "200" || rc != 0 || !hit(sc, server, case) {
                return Err(format!(
                    "code {code}, curl exit {rc}, server {server} got it: {}; body: {}",
                    hit(sc, server, case),
                    body_of(o, case)
                ));
            }
            Ok(())
        },
    )
}

/// Sandboxed check: the server never accepted a connection.
fn untouched(a: Attack, server: &'static str) -> Attack {
    a.sandbox_check(
        &format!("server {server} accepted no connection"),
        move |sc, _| match conns(sc, server) {
            0 => Ok(()),
            n => Err(format!("{n} connection(s): {:?}", log_of(sc, server))),
        },
    )
}

/// Sandboxed check: a denied request got a 403 from the proxy whose body names the host,
/// or its CONNECT got a 403.
fn denied_403(a: Attack, case: &'static str, host: &'static str) -> Attack {
    a.sandbox_check(
        &format!("request {case} got a 403 naming {host}"),
        move |_, o| {
            let (code, connect, _) = r_line(o, case)?;
            let body = body_of(o, case);
            // curl shows no body for a refused CONNECT; the status is the proxy's answer.
            if connect == "403" || (code == "403" && body.contains(host)) {
                Ok(())
            } else {
                Err(format!("code {code}, CONNECT {connect}, body: {body}"))
            }
        },
    )
}

/// Sandboxed check: the run's stderr reports the denial of `host` (loosely).
fn reported(a: Attack, host: &'static str) -> Attack {
    a.sandbox_check(
        &format!("the run's stderr reports the denial of {host}"),
        move |_, o| {
            if o.stderr
                .lines()
                .any(|l| l.contains("network") && l.contains(host))
            {
                Ok(())
            } else {
                Err("no stderr line mentions it".into())
            }
        },
    )
}

/// An attack whose halves both run [`net_setup`] with `spec`.
fn net_attack(id: &str, body: &str, spec: NetSpec) -> Attack {
    Attack::new(id, &script(body)).setup(move |sc, mode| net_setup(sc, mode, &spec))
}

/// Tools every network test needs; prints a visible skip otherwise.
fn net_tools(test: &str, more: &[&str]) -> bool {
    let mut tools = vec!["curl"];
    tools.extend_from_slice(more);
    if !need(test, &tools) {
        return false;
    }
    if !python().is_file() {
        skip_or_fail(test, "python3 is not installed");
        return false;
    }
    true
}

// ---------------------------------------------------------------------------------------
// Work cases: run once sandboxed, judged from outside
// ---------------------------------------------------------------------------------------

/// One sandboxed run of `body` (after [`SANDBOX_PROOF`]) with `spec`, extra workfence
/// args and an audit log at `<net>/audit.jsonl`.
fn work_run(sc: &mut Scenario, spec: &NetSpec, wf_args: &[String], body: &str) -> Outcome {
    let env = net_setup(sc, Mode::Sandboxed, spec);
    let mut l = Launch {
        env,
        ..Launch::default()
    };
    l.wf_args.push("--audit-log".into());
    l.wf_args.push(net_dir(sc).join("audit.jsonl").into());
    l.wf_args.extend(wf_args.iter().map(OsString::from));
    sc.run_script(Mode::Sandboxed, &with_proof(&script(body)), &l)
}

fn audit(sc: &Scenario) -> Vec<Value> {
    read_lossy(&net_dir(sc).join("audit.jsonl"))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn is_allowed(v: &Value) -> bool {
    matches!(v["decision"].as_str(), Some("allow" | "allowed"))
}

fn is_denied(v: &Value) -> bool {
    matches!(v["decision"].as_str(), Some("deny" | "denied"))
}

/// The audit records for `host`.
fn audit_for(sc: &Scenario, host: &str) -> Vec<Value> {
    audit(sc)
        .into_iter()
        .filter(|v| v["host"] == host)
        .collect()
}

/// Asserts the request `case` went to `server` with the given body.
fn assert_fetched(sc: &Scenario, o: &Outcome, server: &str, case: &str, host: &str) {
    let (code, _, rc) = r_line(o, case).unwrap_or_else(|e| panic!("{e}\n{}", o.show()));
    assert!(
        code == "200" && rc == 0,
        "{case}: code {code}, curl exit {rc}: {}\n{}",
        body_of(o, case),
        o.show()
    );
    let got = fs::read_to_string(sc.ws.join(format!("resp.{case}"))).unwrap_or_default();
    assert_eq!(
        got,
        format!("hello from {server} path=/c/{case}\n"),
        "{case}: wrong body\n{}",
        o.show()
    );
    let h = hit_host(sc, server, case)
        .unwrap_or_else(|| panic!("server {server} has no request for {case}\n{}", o.show()));
    assert!(
        h.starts_with(host),
        "{case}: server {server} saw Host '{h}', expected {host}"
    );
}

/// Shell: a direct connection to the server's host port, bypassing the proxy; prints
/// `DIRECT rc=<curl exit>`.
const DIRECT: &str = r#"curl -sS -m 5 --noproxy '*' -o /dev/null "http://127.0.0.1:$PA/c/direct" 2>/dev/null; echo "DIRECT rc=$?""#;

fn assert_direct_failed(sc: &Scenario, o: &Outcome) {
    let v = o.field("DIRECT").unwrap_or_default();
    assert!(
        v.starts_with("rc=") && v != "rc=0",
        "the direct connection did not fail ({v})\n{}",
        o.show()
    );
    assert!(
        !hit(sc, "A", "direct"),
        "the direct connection reached the server\n{}",
        o.show()
    );
}

#[test]
fn net_work_curl_http() {
    if !net_tools("net-curl-http", &[]) {
        return;
    }
    let mut sc = Scenario::new("net-curl-http");
    let spec = NetSpec::new(&["A"], "mode = \"allow\"\nallow_local = [\"a.test\"]");
    let o = work_run(
        &mut sc,
        &spec,
        &[],
        &format!("req w1 \"http://a.test:$PA/c/w1\"\n{DIRECT}"),
    );
    assert_sandboxed(&sc, &o, "curl over HTTP");
    assert_fetched(&sc, &o, "A", "w1", "a.test");
    assert_direct_failed(&sc, &o);
    let a = audit_for(&sc, "a.test");
    assert!(
        a.iter().any(|v| is_allowed(v) && v["protocol"] == "http"),
        "no allowed http audit record for a.test: {:?}",
        audit(&sc)
    );
    work_passed("net-curl-http");
}

#[test]
fn net_work_curl_https() {
    if !net_tools("net-curl-https", &["openssl"]) {
        return;
    }
    let mut sc = Scenario::new("net-curl-https");
    install_kit(&sc);
    let tls = net_dir(&sc).join("tls");
    fs::create_dir_all(&tls).unwrap();
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=tls.test",
            "-addext",
            "subjectAltName=DNS:tls.test",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client's trust anchor, inside the workspace.
    fs::copy(&cert, sc.ws.join("ca.pem")).unwrap();
    let mut spec = NetSpec::new(&["A"], "mode = \"allow\"\nallow_local = [\"tls.test\"]");
    spec.servers
        .push(("T", vec!["--tls".into(), cert.into(), key.into()]));
    let o = work_run(
        &mut sc,
        &spec,
        &[],
        &format!("req w2 \"https://tls.test:$PT/c/w2\" --cacert \"$WS/ca.pem\"\n{DIRECT}"),
    );
    assert_sandboxed(&sc, &o, "curl over HTTPS");
    let (code, connect, rc) = r_line(&o, "w2").unwrap();
    assert!(
        code == "200" && rc == 0 && connect == "200",
        "https: code {code}, CONNECT {connect}, curl exit {rc}: {}\n{}",
        body_of(&o, "w2"),
        o.show()
    );
    assert_eq!(
        fs::read_to_string(sc.ws.join("resp.w2")).unwrap_or_default(),
        "hello from T path=/c/w2\n"
    );
    assert!(hit_host(&sc, "T", "w2").is_some_and(|h| h.starts_with("tls.test")));
    assert_direct_failed(&sc, &o);
    let a = audit_for(&sc, "tls.test");
    assert!(
        a.iter()
            .any(|v| is_allowed(v) && v["protocol"] == "connect"),
        "no allowed CONNECT audit record for tls.test: {:?}",
        audit(&sc)
    );
    work_passed("net-curl-https");
}

#[test]
fn net_work_socks5_curl() {
    if !net_tools("net-socks5-curl", &[]) {
        return;
    }
    let mut sc = Scenario::new("net-socks5-curl");
    let spec = NetSpec::new(&["A"], "mode = \"allow\"\nallow_local = [\"a.test\"]");
    let o = work_run(
        &mut sc,
        &spec,
        &[],
        &format!(
            "echo \"SOCKSVAR $ALL_PROXY\"\nreq w3 \"http://a.test:$PA/c/w3\" --socks5-hostname \"$SOCKS\"\n{DIRECT}"
        ),
    );
    assert_sandboxed(&sc, &o, "curl over SOCKS5");
    let var = o.field("SOCKSVAR").unwrap_or_default();
    assert!(
        var.starts_with("socks5h://") && var.ends_with(SANDBOX_PROXY),
        "ALL_PROXY inside the sandbox is '{var}', expected socks5h://...{SANDBOX_PROXY}"
    );
    assert_fetched(&sc, &o, "A", "w3", "a.test");
    assert_direct_failed(&sc, &o);
    assert!(
        audit_for(&sc, "a.test")
            .iter()
            .any(|v| is_allowed(v) && v["protocol"] == "socks5"),
        "no allowed socks5 audit record: {:?}",
        audit(&sc)
    );
    work_passed("net-socks5-curl");
}

/// A literal-IP rule on the command line reaches a loopback server without any config.
#[test]
fn net_work_cli_ip_rule() {
    if !net_tools("net-cli-ip-rule", &[]) {
        return;
    }
    let mut sc = Scenario::new("net-cli-ip-rule");
    install_kit(&sc);
    let pa = server(&sc, "A", &[]);
    let spec = NetSpec {
        servers: Vec::new(),
        pins: Vec::new(),
        naive: "line",
        config: String::new(),
    };
    let o = work_run(
        &mut sc,
        &spec,
        &["--network".into(), format!("allow=127.0.0.1:{pa}")],
        &format!("PA={pa}\nreq w4 \"http://127.0.0.1:$PA/c/w4\"\n{DIRECT}"),
    );
    assert_sandboxed(&sc, &o, "curl to a literal-IP rule");
    assert_fetched(&sc, &o, "A", "w4", "127.0.0.1");
    // Transparent mode (on by default) carries proxy-unaware clients too, and this rule
    // lists the address: the `--noproxy '*'` connection reaches the server, through the
    // proxy (the sandbox's namespace has no other way to the host's loopback).
    assert_eq!(o.field("DIRECT").as_deref(), Some("rc=0"), "{}", o.show());
    assert!(
        hit(&sc, "A", "direct"),
        "the transparent connection did not reach the server\n{}",
        o.show()
    );
    work_passed("net-cli-ip-rule");
}

fn bare_repo(sc: &Scenario) -> PathBuf {
    let src = net_dir(sc).join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("hello.txt"), format!("cloned {}\n", sc.token)).unwrap();
    host_git(&src, &sc.h, &["init", "-q", "-b", "main"]);
    host_git(&src, &sc.h, &["add", "hello.txt"]);
    host_git(&src, &sc.h, &["commit", "-q", "-m", "one"]);
    let served = net_dir(sc).join("git");
    fs::create_dir_all(&served).unwrap();
    let bare = served.join("repo.git");
    host_git(
        &net_dir(sc),
        &sc.h,
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    host_git(&bare, &sc.h, &["update-server-info"]);
    served
}

/// git over dumb HTTP through the proxy: `ls-remote`, `clone` into the private /tmp, and `fetch` into the workspace's own
/// repository. (`git clone` itself is refused inside the sandbox whatever the network
/// mode: a new repository's `.git/hooks` and `.git/config` are protected everywhere under
/// the writable roots; see the README's limitations.)
#[test]
fn net_work_git_fetch_http() {
    if !net_tools("net-git-fetch", &["git"]) {
        return;
    }
    let mut sc = Scenario::new("net-git-fetch");
    install_kit(&sc);
    let served = bare_repo(&sc);
    let mut spec = NetSpec::new(&["A"], "mode = \"allow\"\nallow_local = [\"git.test\"]");
    spec.servers
        .push(("G", vec!["--dir".into(), served.into()]));
    let o = work_run(
        &mut sc,
        &spec,
        &[],
        &format!(
            r#"git ls-remote "http://git.test:$PG/repo.git" > "$WS/remote.txt"; echo "LSREMOTE rc=$?"
git fetch -q "http://git.test:$PG/repo.git" main; echo "FETCH rc=$?"
git show FETCH_HEAD:hello.txt > "$WS/fetched.txt"; echo "SHOW rc=$?"
git clone -q "http://git.test:$PG/repo.git" /tmp/clone; echo "CLONE rc=$?"
cp /tmp/clone/hello.txt "$WS/cloned.txt"; echo "CLONED rc=$?"
{DIRECT}"#
        ),
    );
    assert_sandboxed(&sc, &o, "git fetch over HTTP");
    // A clone goes to the sandbox's private /tmp: a new repository in the workspace
    // would carry config and hooks host git runs later (refused; README Limitations).
    for k in ["LSREMOTE", "FETCH", "SHOW", "CLONE", "CLONED"] {
        assert_eq!(o.field(k).as_deref(), Some("rc=0"), "{k}\n{}", o.show());
    }
    assert_eq!(
        read_lossy(&sc.ws.join("cloned.txt")),
        format!("cloned {}\n", sc.token),
        "{}",
        o.show()
    );
    assert!(
        read_lossy(&sc.ws.join("remote.txt")).contains("refs/heads/main"),
        "ls-remote listed no main branch\n{}",
        o.show()
    );
    assert_eq!(
        read_lossy(&sc.ws.join("fetched.txt")),
        format!("cloned {}\n", sc.token),
        "{}",
        o.show()
    );
    let g = log_of(&sc, "G");
    assert!(
        g.iter().any(|v| v["ev"] == "req"
            && v["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/repo.git/info/refs"))
            && v["host"]
                .as_str()
                .is_some_and(|h| h.starts_with("git.test"))),
        "server G saw no info/refs request for git.test: {g:?}"
    );
    assert!(
        g.iter().any(|v| v["ev"] == "req"
            && v["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/repo.git/objects/"))),
        "server G served no objects: {g:?}"
    );
    assert_direct_failed(&sc, &o);
    work_passed("net-git-fetch");
}

/// Whether `$PY -m pip` works here (the unprivileged user's system python may lack it).
fn have_pip(test: &str) -> bool {
    let ok = Command::new(python())
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip_or_fail(
            test,
            &format!(
                "{} -m pip does not work (install python3-pip)",
                python().display()
            ),
        );
    }
    ok
}

/// A PEP 503 index with one wheel under `<net>/pypi`; returns (dir, wheel bytes).
fn pypi_index(sc: &Scenario) -> (PathBuf, Vec<u8>) {
    let dir = net_dir(sc).join("pypi");
    let out = Command::new(python())
        .arg(kit(sc))
        .arg("make-index")
        .arg(&dir)
        .output()
        .expect("make-index");
    assert!(out.status.success(), "make-index: {out:?}");
    let whl = fs::read(dir.join("packages/wfdemo-0.1-py3-none-any.whl")).unwrap();
    (dir, whl)
}

const PIP_ARGS: &str = "download --no-cache-dir --disable-pip-version-check --no-deps --no-input --index-url \"http://pypi.test:$PP/simple/\" --trusted-host pypi.test -d \"$WS/dl\" wfdemo";

/// [`PIP_ARGS`] as an argv, for a run without a shell.
fn pip_args(port: &str, dl: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = [
        "download",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-input",
        "--index-url",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    v.push(format!("http://pypi.test:{port}/simple/").into());
    v.push("--trusted-host".into());
    v.push("pypi.test".into());
    v.push("-d".into());
    v.push(dl.into());
    v.push("wfdemo".into());
    v
}

#[test]
fn net_work_pip_download() {
    if !net_tools("net-pip-download", &[]) || !have_pip("net-pip-download") {
        return;
    }
    let mut sc = Scenario::new("net-pip-download");
    install_kit(&sc);
    let (dir, whl) = pypi_index(&sc);
    let mut spec = NetSpec::new(&["A"], "mode = \"allow\"\nallow_local = [\"pypi.test\"]");
    spec.servers.push(("P", vec!["--dir".into(), dir.into()]));
    let o = work_run(
        &mut sc,
        &spec,
        &[],
        &format!("\"$PY\" -m pip {PIP_ARGS} 2>&1 | tail -n 5; echo \"PIP rc=$?\"\n{DIRECT}"),
    );
    assert_sandboxed(&sc, &o, "pip download");
    let got = fs::read(sc.ws.join("dl/wfdemo-0.1-py3-none-any.whl")).unwrap_or_default();
    assert!(
        got == whl,
        "the wheel was not downloaded intact\n{}",
        o.show()
    );
    let p = log_of(&sc, "P");
    assert!(
        p.iter().any(|v| v["ev"] == "req"
            && v["path"] == "/simple/wfdemo/"
            && v["host"]
                .as_str()
                .is_some_and(|h| h.starts_with("pypi.test"))),
        "server P saw no /simple/wfdemo/ request for pypi.test: {p:?}"
    );
    assert_direct_failed(&sc, &o);
    work_passed("net-pip-download");
}

// ---------------------------------------------------------------------------------------
// The audit log
// ---------------------------------------------------------------------------------------

#[test]
fn net_audit_log() {
    if !net_tools("net-audit-log", &[]) {
        return;
    }
    let mut sc = Scenario::new("net-audit-log");
    let spec = NetSpec::new(
        &["A", "B"],
        "mode = \"allow\"\nallow_local = [\"a.test\", \"**.a.test\"]\ndeny = [\"bad.a.test\"]",
    );
    let o = work_run(
        &mut sc,
        &spec,
        &[],
        r#"req w1 "http://a.test:$PA/c/w1"
req w3 "http://a.test:$PA/c/w3" --socks5-hostname "$SOCKS"
req w5 "http://a.test:$PA/c/w5" -p
req d1 "http://evil.test:$PB/c/d1"
req d2 "http://bad.a.test:$PB/c/d2"
"#,
    );
    assert_sandboxed(&sc, &o, "audit run");
    for c in ["w1", "w3", "w5"] {
        assert_fetched(&sc, &o, "A", c, "a.test");
    }
    assert_eq!(conns(&sc, "B"), 0, "server B was reached\n{}", o.show());
    let all = audit(&sc);
    let raw = read_lossy(&net_dir(&sc).join("audit.jsonl"));
    assert!(
        all.len() == raw.lines().count() && all.len() >= 5,
        "the audit log is not one JSON object a line with >= 5 records:\n{raw}"
    );
    for v in &all {
        for k in [
            "time",
            "protocol",
            "host",
            "port",
            "resolved",
            "decision",
            "rule",
            "reason",
            "scope",
            "bytes_up",
            "bytes_down",
            "duration_ms",
        ] {
            assert!(v.get(k).is_some(), "audit record without '{k}': {v}");
        }
    }
    let find = |proto: &str, host: &str, allowed: bool| -> Value {
        all.iter()
            .find(|v| {
                v["protocol"] == proto
                    && v["host"] == host
                    && if allowed { is_allowed(v) } else { is_denied(v) }
            })
            .cloned()
            .unwrap_or_else(|| {
                panic!("no {proto} record for {host} (allowed {allowed}) in:\n{raw}")
            })
    };
    // Allowed: the rule that allowed it, the checked address, bytes both ways.
    let resp_len = "hello from A path=/c/w1\n".len() as u64;
    for proto in ["http", "socks5", "connect"] {
        let v = find(proto, "a.test", true);
        assert!(
            v["rule"].as_str().is_some_and(|r| r.contains("a.test")),
            "{proto}: rule {}",
            v["rule"]
        );
        assert!(
            v["resolved"]
                .as_str()
                .is_some_and(|r| r.starts_with("127.0.0.1:")),
            "{proto}: resolved {}",
            v["resolved"]
        );
        assert!(
            v["bytes_up"].as_u64().is_some_and(|b| b > 20),
            "{proto}: bytes_up {}",
            v["bytes_up"]
        );
        assert!(
            v["bytes_down"].as_u64().is_some_and(|b| b >= resp_len),
            "{proto}: bytes_down {} < {resp_len}",
            v["bytes_down"]
        );
        assert!(
            v["duration_ms"].is_u64(),
            "{proto}: duration {}",
            v["duration_ms"]
        );
        assert!(v["scope"].is_null(), "{proto}: scope {}", v["scope"]);
    }
    // Denied: no rule matched / the deny rule; nothing carried.
    let d1 = find("http", "evil.test", false);
    assert!(d1["reason"].as_str().is_some_and(|r| !r.is_empty()), "{d1}");
    assert!(d1["resolved"].is_null() && d1["bytes_down"] == 0, "{d1}");
    let d2 = find("http", "bad.a.test", false);
    assert!(
        d2["rule"]
            .as_str()
            .is_some_and(|r| r.contains("bad.a.test")),
        "the deny record does not name the deny rule: {d2}"
    );
    assert!(
        o.stderr
            .lines()
            .any(|l| l.contains("network") && l.contains("evil.test")),
        "the run's stderr does not report the denial of evil.test\n{}",
        o.show()
    );
    // A copy in the user's state dir.
    let state = sc.h.join(".local/state/workfence");
    let mut found = false;
    let mut stack = vec![state.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if read_lossy(&p).contains("\"evil.test\"") {
                found = true;
            }
        }
    }
    assert!(found, "no audit record under {}", state.display());
    work_passed("net-audit-log");
}

// ---------------------------------------------------------------------------------------
// Policy: allowed and denied hosts, deny over allow, wildcards, ports, lists, scopes
// ---------------------------------------------------------------------------------------

#[test]
fn net_policy_deny_over_allow() {
    if !net_tools("net/deny-over-allow", &[]) {
        return;
    }
    let spec = NetSpec::new(
        &["A", "B"],
        "mode = \"allow\"\nallow_local = [\"**.a.test\"]\ndeny = [\"bad.a.test\"]",
    );
    let a = net_attack(
        "net/deny-over-allow",
        r#"req w1 "http://ok.a.test:$PA/c/w1"
req d1 "http://bad.a.test:$PB/c/d1"
req d2 "http://bad.a.test:$PB/c/d2" -p
req d3 "http://bad.a.test:$PB/c/d3" --socks5-hostname "$SOCKS"
req d4 "http://BAD.A.test.:$PB/c/d4"
"#,
        spec,
    );
    let a = probe_hit(
        a,
        "B",
        "d1",
        "HTTP to a denied subdomain of an allowed wildcard",
    );
    let a = probe_hit(a, "B", "d2", "CONNECT to it");
    let a = probe_hit(a, "B", "d3", "SOCKS5 to it");
    let a = probe_hit(
        a,
        "B",
        "d4",
        "the same name in capitals with a trailing dot",
    );
    let a = witness(a, "A", "w1");
    let a = untouched(a, "B");
    let a = denied_403(a, "d1", "bad.a.test");
    let a = denied_403(a, "d2", "bad.a.test");
    let a = reported(a, "bad.a.test");
    a.sandbox_check("the 403 body names the deny rule", |_, o| {
        let b = body_of(o, "d1");
        if b.contains("deny") {
            Ok(())
        } else {
            Err(b)
        }
    })
    .run();
}

#[test]
fn net_policy_not_allowed_host() {
    if !net_tools("net/not-allowed", &[]) {
        return;
    }
    let spec = NetSpec::new(&["A", "B"], "mode = \"allow\"\nallow_local = [\"a.test\"]");
    let a = net_attack(
        "net/not-allowed",
        r#"req w1 "http://a.test:$PA/c/w1"
req w2 "http://A.Test.:$PA/c/w2"
req d1 "http://evil.test:$PB/c/d1"
req d2 "http://evil.test:$PB/c/d2" --socks5-hostname "$SOCKS"
"$PY" "$KIT" socks-raw "$(hex 'evil.test')" "$PB" /c/d3
"#,
        spec,
    );
    let a = probe_hit(a, "B", "d1", "HTTP to a host no rule allows");
    let a = probe_hit(a, "B", "d2", "curl --socks5-hostname to it");
    let a = probe_hit(a, "B", "d3", "a raw SOCKS5 CONNECT to it");
    let a = witness(a, "A", "w1");
    let a = witness(a, "A", "w2");
    let a = untouched(a, "B");
    let a = denied_403(a, "d1", "evil.test");
    let a = reported(a, "evil.test");
    a.sandbox_check("SOCKS5 got a refusal reply", |_, o| {
        let (_, _, rc) = r_line(o, "d2")?;
        match o.field("SOCKS").as_deref() {
            Some(r) if r.starts_with("rep=") && r != "rep=0" && rc != 0 => Ok(()),
            r => Err(format!("raw reply {r:?}, curl exit {rc}")),
        }
    })
    .sandbox_check("the 403 body says how to allow it", |_, o| {
        let b = body_of(o, "d1");
        if b.contains("allow") {
            Ok(())
        } else {
            Err(b)
        }
    })
    .run();
}

#[test]
fn net_policy_wildcards() {
    if !net_tools("net/wildcards", &[]) {
        return;
    }
    let spec = NetSpec::new(
        &["A", "B"],
        "mode = \"allow\"\nallow_local = [\"*.w.test\", \"**.v.test\"]",
    );
    let a = net_attack(
        "net/wildcards",
        r#"req w1 "http://x.w.test:$PA/c/w1"
req w2 "http://deep.x.w.test:$PA/c/w2"
req w3 "http://v.test:$PA/c/w3"
req w4 "http://y.v.test:$PA/c/w4" --socks5-hostname "$SOCKS"
req d1 "http://w.test:$PB/c/d1"
req d2 "http://evilw.test:$PB/c/d2"
req d3 "http://w.test.evil.test:$PB/c/d3"
req d4 "http://w.test:$PB/c/d4" --socks5-hostname "$SOCKS"
"#,
        spec,
    );
    let a = probe_hit(a, "B", "d1", "*.w.test does not allow the apex w.test");
    let a = probe_hit(
        a,
        "B",
        "d2",
        "*.w.test does not allow evilw.test (no dot boundary)",
    );
    let a = probe_hit(a, "B", "d3", "*.w.test does not allow w.test.evil.test");
    let a = probe_hit(a, "B", "d4", "the apex over SOCKS5");
    let a = witness(a, "A", "w1");
    let a = witness(a, "A", "w2");
    let a = witness(a, "A", "w3");
    let a = witness(a, "A", "w4");
    untouched(a, "B").run();
}

#[test]
fn net_policy_ports() {
    if !net_tools("net/ports", &[]) {
        return;
    }
    let spec = NetSpec::new(
        &["A", "B"],
        "mode = \"allow\"\nallow_local = [\"p.test:{PA}\"]",
    );
    let a = net_attack(
        "net/ports",
        r#"req w1 "http://p.test:$PA/c/w1"
req w2 "http://p.test:$PA/c/w2" -p
req d1 "http://p.test:$PB/c/d1"
req d2 "http://p.test:$PB/c/d2" -p
req d3 "http://p.test:$PB/c/d3" --socks5-hostname "$SOCKS"
"#,
        spec,
    );
    let a = probe_hit(a, "B", "d1", "HTTP to another port of a host:PORT rule");
    let a = probe_hit(a, "B", "d2", "CONNECT to it");
    let a = probe_hit(a, "B", "d3", "SOCKS5 to it");
    let a = witness(a, "A", "w1");
    let a = witness(a, "A", "w2");
    let a = denied_403(a, "d1", "p.test");
    untouched(a, "B").run();
}

#[test]
fn net_policy_named_list() {
    if !net_tools("net/named-list", &[]) {
        return;
    }
    // Literal-IP rules, so that the list alone (from the command line) reaches loopback.
    let mut spec = NetSpec::new(
        &["A", "B"],
        "[network.lists]\nmine = [\"127.0.0.1:{PA}\"]\nother = [\"127.0.0.1:{PB}\"]",
    );
    spec.pins = Vec::new();
    let a = net_attack(
        "net/named-list",
        r#"req w1 "http://127.0.0.1:$PA/c/w1"
req d1 "http://127.0.0.1:$PB/c/d1"
req d2 "http://127.0.0.1:$PB/c/d2" --socks5-hostname "$SOCKS"
"#,
        spec,
    )
    .wf_arg("--network")
    .wf_arg("allow=@mine");
    let a = probe_hit(a, "B", "d1", "an address only in a list that was not named");
    let a = probe_hit(a, "B", "d2", "the same over SOCKS5");
    let a = witness(a, "A", "w1");
    untouched(a, "B").run();
}

/// A scoped rule: `pip download` reaches the index; `curl`, in the same config, does not.
#[test]
fn net_policy_scoped() {
    if !net_tools("net/scoped", &[]) || !have_pip("net/scoped") {
        return;
    }
    // pip's own launcher next to the interpreter, so argv[0]'s file name is "pip".
    let pip = python().with_file_name("pip");
    if !pip.is_file() {
        skip_or_fail("net/scoped", &format!("{} is missing", pip.display()));
        return;
    }
    let config = "mode = \"allow\"\nallow = [\"unused.test\"]\n[[network.scoped]]\nprefix = [\"pip\", \"download\"]\nallow_local = [\"pypi.test\"]";
    // 1. pip download, run directly (argv = pip download ...), is allowed.
    {
        let mut sc = Scenario::new("net-scoped-pip");
        install_kit(&sc);
        let (dir, whl) = pypi_index(&sc);
        let mut spec = NetSpec::new(&[], config);
        spec.servers.push(("P", vec!["--dir".into(), dir.into()]));
        let env = net_setup(&mut sc, Mode::Sandboxed, &spec);
        let pp = env
            .iter()
            .find(|(k, _)| k == "PP")
            .map(|(_, v)| v.to_string_lossy().into_owned())
            .unwrap();
        let mut argv: Vec<OsString> = vec![
            "run".into(),
            "-C".into(),
            sc.ws.clone().into(),
            "--audit-log".into(),
            net_dir(&sc).join("audit.jsonl").into(),
            "--".into(),
            pip.clone().into(),
        ];
        for a in pip_args(&pp, &sc.ws.join("dl")) {
            argv.push(a);
        }
        let l = Launch {
            env,
            ..Launch::default()
        };
        let o = sc.workfence(&argv, &l);
        let got = fs::read(sc.ws.join("dl/wfdemo-0.1-py3-none-any.whl")).unwrap_or_default();
        assert!(
            o.code == Some(0) && got == whl,
            "scoped pip download failed\n{}",
            o.show()
        );
        let recs = audit_for(&sc, "pypi.test");
        assert!(
            recs.iter().any(|v| is_allowed(v)
                && v["scope"] == serde_json::json!(["pip", "download"])
                && v["rule"].as_str().is_some_and(|r| r.contains("pypi.test"))),
            "no allowed pypi.test record with scope [pip, download]: {:?}",
            audit(&sc)
        );
        work_passed("net-scoped-pip-download");
    }
    // 2. Any other command, same config: denied.
    let mut spec = NetSpec::new(&["A"], config);
    spec.servers.push(("P", Vec::new()));
    let a = net_attack(
        "net/scoped-other-command",
        r#"req d1 "http://pypi.test:$PP/c/d1"
req d2 "http://pypi.test:$PP/c/d2" --socks5-hostname "$SOCKS"
"#,
        spec,
    );
    let a = probe_hit(a, "P", "d1", "curl reaches a host scoped to pip download");
    let a = probe_hit(a, "P", "d2", "over SOCKS5");
    let a = denied_403(a, "d1", "pypi.test");
    untouched(a, "P").run();
}

// ---------------------------------------------------------------------------------------
// Bypass attempts
// ---------------------------------------------------------------------------------------

/// The host's own non-loopback IPv4 addresses.
fn host_ipv4() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "inet")?;
            Some(it.next()?.split('/').next()?.to_string())
        })
        .collect()
}

#[test]
fn net_bypass_noproxy() {
    if !net_tools("net/direct-noproxy", &[]) {
        return;
    }
    let spec = NetSpec::new(&["A", "B"], "mode = \"allow\"\nallow_local = [\"a.test\"]");
    let a = net_attack(
        "net/direct-noproxy",
        r#"req w1 "http://a.test:$PA/c/w1"
curl -sS -m 5 --noproxy '*' "http://127.0.0.1:$PB/c/d1"; echo "NOPROXY rc=$?"
env -u http_proxy -u HTTP_PROXY -u ALL_PROXY -u all_proxy curl -sS -m 5 "http://127.0.0.1:$PB/c/d2"; echo "NOENV rc=$?"
"#,
        spec,
    );
    let a = probe_hit(a, "B", "d1", "curl --noproxy '*' to the server's host port");
    let a = probe_hit(a, "B", "d2", "curl without the proxy variables");
    let a = witness(a, "A", "w1");
    untouched(a, "B").run();
}

#[test]
fn net_bypass_socket() {
    if !net_tools("net/direct-socket", &[]) {
        return;
    }
    let ips = host_ipv4();
    let mut spec = NetSpec::new(&["A", "B"], "mode = \"allow\"\nallow_local = [\"a.test\"]");
    spec.servers
        .push(("X", vec!["--bind".into(), "0.0.0.0".into()]));
    let mut body =
        String::from("req w1 \"http://a.test:$PA/c/w1\"\n\"$PY\" \"$KIT\" tcp 127.0.0.1 \"$PB\"\n");
    for ip in &ips {
        body.push_str(&format!("\"$PY\" \"$KIT\" tcp {ip} \"$PX\"\n"));
    }
    let a = net_attack("net/direct-socket", &body, spec).probe(
        "a python socket connect to the server's loopback port",
        |sc, _| Ok(conns(sc, "B") > 0),
    );
    let a = if ips.is_empty() {
        a
    } else {
        a.probe(
            "a python socket connect to the host's own non-loopback address",
            |sc, _| Ok(conns(sc, "X") > 0),
        )
    };
    let a = witness(a, "A", "w1");
    untouched(untouched(a, "B"), "X").run();
}

/// Under `--network allow`, the harness's own host listeners (TCP on 127.0.0.1 and ::1,
/// UDP, an abstract and a pathname unix socket) stay out of reach.
#[test]
fn net_bypass_host_listeners() {
    if !net_tools("net/direct-host-listeners", &[]) {
        return;
    }
    let spec = NetSpec::new(&["A"], "mode = \"allow\"\nallow_local = [\"a.test\"]");
    let body = format!(
        "req w1 \"http://a.test:$PA/c/w1\"\n{}",
        py(r#"
import socket
def tcp(fam, addr):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3); s.connect(addr); s.sendall(b"x")
    except OSError:
        pass
tcp(socket.AF_INET, ("127.0.0.1", int(os.environ["TCP4"])))
if os.environ.get("TCP6"):
    tcp(socket.AF_INET6, ("::1", int(os.environ["TCP6"])))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", ("127.0.0.1", int(os.environ["UDP"])))
except OSError:
    pass
for a in ["\0" + os.environ["ABSTRACT"], os.environ["USOCK"]]:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(a); s.sendall(b"x")
    except OSError:
        pass
print("LISTENERS tried", flush=True)
"#)
    );
    let a = net_attack("net/direct-host-listeners", &body, spec)
        .probe("TCP to a host listener on 127.0.0.1", |sc, _| {
            Ok(sc.listeners.contacts().tcp4)
        })
        .probe("UDP to a host socket on 127.0.0.1", |sc, _| {
            Ok(sc.listeners.contacts().udp)
        })
        .probe("an abstract unix socket of the host", |sc, _| {
            Ok(sc.listeners.contacts().abstract_unix)
        })
        .require_lines(&["LISTENERS"]);
    // The scenario binds ::1 when the host has IPv6 loopback.
    let a = if std::net::TcpListener::bind("[::1]:0").is_ok() {
        a.probe("TCP to a host listener on ::1", |sc, _| {
            Ok(sc.listeners.contacts().tcp6)
        })
    } else {
        a
    };
    witness(a, "A", "w1").run();
}

#[test]
fn net_bypass_socks_nul() {
    if !net_tools("net/socks-nul-host", &[]) {
        return;
    }
    let spec = NetSpec::new(
        &["A", "B"],
        "mode = \"allow\"\nallow_local = [\"**.a.test\"]",
    );
    let a = net_attack(
        "net/socks-nul-host",
        r#"req w1 "http://ok.a.test:$PA/c/w1" --socks5-hostname "$SOCKS"
"$PY" "$KIT" socks-raw "$(hex 'evil.test\000.a.test')" "$PB" /c/d1
"#,
        spec,
    );
    let a = probe_hit(
        a,
        "B",
        "d1",
        "SOCKS5 host 'evil.test\\0.a.test' reaches evil.test",
    );
    let a = witness(a, "A", "w1");
    untouched(a, "B")
        .sandbox_check("the SOCKS5 request was refused", |_, o| {
            match o.field("SOCKS").as_deref() {
                Some(r) if r != "rep=0" => Ok(()),
                r => Err(format!("reply {r:?}")),
            }
        })
        .run();
}

#[test]
fn net_bypass_resolves_local() {
    if !net_tools("net/resolves-local", &[]) {
        return;
    }
    let mut spec = NetSpec::new(
        &["A", "B"],
        "mode = \"allow\"\nallow = [\"local.test\", \"localhost\", \"sub.a.test\", \"zero.test\", \"mapped.test\"]\nallow_local = [\"a.test\"]",
    );
    spec.pins.push(("zero.test", "0.0.0.0"));
    spec.pins.push(("mapped.test", "::ffff:127.0.0.1"));
    let a = net_attack(
        "net/resolves-local",
        r#"req w1 "http://a.test:$PA/c/w1"
req d1 "http://local.test:$PB/c/d1"
req d2 "http://localhost:$PB/c/d2"
req d3 "http://sub.a.test:$PB/c/d3"
req d4 "http://zero.test:$PB/c/d4"
req d5 "http://mapped.test:$PB/c/d5"
req d6 "http://local.test:$PB/c/d6" -p
req d7 "http://local.test:$PB/c/d7" --socks5-hostname "$SOCKS"
"#,
        spec,
    );
    let a = probe_hit(a, "B", "d1", "an allowed name pinned to 127.0.0.1");
    let a = probe_hit(a, "B", "d2", "allowed 'localhost' (system resolver)");
    let a = probe_hit(
        a,
        "B",
        "d3",
        "allowed sub.a.test (allow_local is a.test only)",
    );
    let a = probe_hit(a, "B", "d4", "an allowed name pinned to 0.0.0.0");
    let a = probe_hit(a, "B", "d5", "an allowed name pinned to ::ffff:127.0.0.1");
    let a = probe_hit(a, "B", "d6", "CONNECT to the loopback-pinned name");
    let a = probe_hit(a, "B", "d7", "SOCKS5 to it");
    let a = witness(a, "A", "w1");
    let a = denied_403(a, "d1", "local.test");
    untouched(a, "B").run();
}

/// An HTTP request whose request line and Host header disagree, sent raw.
fn host_mismatch(id: &'static str, naive: &'static str, raw: &'static str) {
    if !net_tools(id, &[]) {
        return;
    }
    let mut spec = NetSpec::new(&["A", "B"], "mode = \"allow\"\nallow_local = [\"a.test\"]");
    spec.naive = naive;
    let body = format!(
        "req w1 \"http://a.test:$PA/c/w1\"\n\"$PY\" \"$KIT\" http-raw \"$(hex \"{raw}\")\"\n"
    );
    let a = net_attack(id, &body, spec);
    let a = probe_hit(
        a,
        "B",
        "d1",
        "the request reached the host it did not ask the proxy for",
    );
    let a = witness(a, "A", "w1");
    untouched(a, "B")
        .sandbox_check("the proxy refused the request (4xx)", |_, o| {
            match o.field("HTTPRAW") {
                Some(s) if s.starts_with("HTTP/1.1 4") => Ok(()),
                s => Err(format!("status {s:?}")),
            }
        })
        .run();
}

#[test]
fn net_bypass_host_header_contradicts_line() {
    host_mismatch(
        "net/host-header-vs-line",
        "host",
        r"GET http://a.test:$PA/c/d1 HTTP/1.1\r\nHost: evil.test:$PB\r\nConnection: close\r\n\r\n",
    );
}

#[test]
fn net_bypass_line_contradicts_host_header() {
    host_mismatch(
        "net/line-vs-host-header",
        "line",
        r"GET http://evil.test:$PB/c/d1 HTTP/1.1\r\nHost: a.test:$PA\r\nConnection: close\r\n\r\n",
    );
}

#[test]
fn net_bypass_connect_host_header() {
    host_mismatch(
        "net/connect-vs-host-header",
        "host",
        r"CONNECT a.test:$PA HTTP/1.1\r\nHost: evil.test:$PB\r\n\r\nGET /c/d1 HTTP/1.0\r\nHost: x\r\n\r\n",
    );
}

#[test]
fn net_bypass_connect_denied() {
    if !net_tools("net/connect-denied", &[]) {
        return;
    }
    let spec = NetSpec::new(
        &["A", "B"],
        "mode = \"allow\"\nallow_local = [\"a.test:{PA}\"]",
    );
    let a = net_attack(
        "net/connect-denied",
        r#"req w1 "http://a.test:$PA/c/w1" -p
req d1 "http://evil.test:$PB/c/d1" -p
req d2 "http://a.test:$PB/c/d2" -p
req d3 "http://127.0.0.1:$PB/c/d3" -p
"$PY" "$KIT" http-raw "$(hex "CONNECT evil.test:$PB HTTP/1.1\r\nHost: evil.test:$PB\r\n\r\nGET /c/d4 HTTP/1.0\r\nHost: x\r\n\r\n")"
"#,
        spec,
    );
    let a = probe_hit(a, "B", "d1", "CONNECT to a denied host");
    let a = probe_hit(a, "B", "d2", "CONNECT to an allowed host on another port");
    let a = probe_hit(a, "B", "d3", "CONNECT to an unlisted literal address");
    let a = probe_hit(a, "B", "d4", "a raw CONNECT with the request pipelined");
    let a = witness(a, "A", "w1");
    let a = denied_403(a, "d1", "evil.test");
    untouched(a, "B").run();
}

/// Guards against a harness that would pass without servers: the helpers see a request.
#[test]
fn net_harness_selfcheck() {
    if !net_tools("net-harness", &[]) {
        return;
    }
    let sc = Scenario::new("net-harness");
    let p = server(&sc, "A", &[]);
    let out = Command::new("curl")
        .args(["-sS", "-m", "5", "--noproxy", "*"])
        .arg(format!("http://127.0.0.1:{p}/c/self"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    assert!(hit(&sc, "A", "self") && conns(&sc, "A") == 1);
    assert!(!hit(&sc, "A", "other"));
}

/// DNS rebinding to the host itself: an allowed name (no `allow_local`) that resolves
/// to one of the host's own non-loopback addresses must not reach the host's services
/// listening on 0.0.0.0.
#[test]
fn net_bypass_rebinds_to_the_hosts_own_address() {
    if !net_tools("net/rebind-host-address", &[]) {
        return;
    }
    let Some(ip) = host_ipv4().into_iter().next() else {
        skip_or_fail(
            "net/rebind-host-address",
            "this host has no global IPv4 address to rebind to",
        );
        return;
    };
    let ip: &'static str = Box::leak(ip.into_boxed_str());
    let mut spec = NetSpec::new(
        &["A", "B"],
        "mode = \"allow\"\nallow = [\"own.test\"]\nallow_local = [\"a.test\"]",
    );
    spec.servers
        .push(("X", vec!["--bind".into(), "0.0.0.0".into()]));
    spec.pins.push(("own.test", ip));
    let a = net_attack(
        "net/rebind-host-address",
        "req w1 \"http://a.test:$PA/c/w1\"\nreq d1 \"http://own.test:$PX/c/d1\"\nreq d2 \"http://own.test:$PX/c/d2\" -p\n",
        spec,
    );
    let a = probe_hit(
        a,
        "X",
        "d1",
        "an allowed name pinned to the host's own address",
    );
    let a = probe_hit(a, "X", "d2", "CONNECT to it");
    let a = witness(a, "A", "w1");
    untouched(a, "X").run();
}
