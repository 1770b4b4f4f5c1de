//! The self-test's probe: the workfence executable itself, started with [`PROBE_ARG`],
//! performs one action (write a file, connect to a port, kill a pid, ...) and exits.
//!
//! Why a probe instead of shell one-liners: the same action runs on every OS with the
//! same system calls std uses, without quoting paths into `sh` or `cmd.exe`, and the
//! control (unsandboxed) and the attack (sandboxed) run exactly the same argv.
//!
//! argv: `PROBE_ARG <marker file> <action> [args...]`. The probe first writes `started`
//! to the marker file (so the self-test can tell "the sandbox blocked the action" from
//! "the probe never ran"), then appends `error: ...` there when the action fails. It
//! prints nothing: its stdout is the self-test's stdout.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first argument that turns a workfence binary into the self-test probe.
pub const PROBE_ARG: &str = "--workfence-selftest-probe";

/// How long a heartbeat daemon lives at most (it stops earlier when its stop file exists).
const HEARTBEAT_LIFETIME: Duration = Duration::from_secs(20);

/// When this process was started as the probe, runs the action and returns the exit
/// status (0: the action succeeded, 1: it failed, 2: bad arguments).
pub fn probe_main_if_requested() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(PROBE_ARG)) {
        return None;
    }
    let rest: Vec<OsString> = args.collect();
    let Some((marker, action)) = rest.split_first() else {
        return Some(2);
    };
    let marker = PathBuf::from(marker);
    let _ = fs::write(&marker, b"started\n");
    let code = match act(action) {
        Ok(code) => code,
        Err(e) => {
            if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&marker) {
                let _ = writeln!(f, "error: {e}");
            }
            1
        }
    };
    Some(code)
}

fn arg(a: &[OsString], i: usize) -> Result<&OsString, String> {
    a.get(i).ok_or_else(|| format!("missing argument {i}"))
}

fn num<T: std::str::FromStr>(a: &[OsString], i: usize) -> Result<T, String> {
    arg(a, i)?
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("argument {i} is not a number"))
}

fn path(a: &[OsString], i: usize) -> Result<PathBuf, String> {
    Ok(PathBuf::from(arg(a, i)?))
}

fn io<T>(what: &str, p: &Path, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// The exit status `open-process` gives the other run's command it terminates.
pub const OTHER_RUN_KILLED: u32 = 0x5EC;

/// The content the probe writes: recognisable from outside.
pub const PAYLOAD: &[u8] = b"workfence-selftest-was-here\n";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn act(a: &[OsString]) -> Result<i32, String> {
    let name = a[0].to_string_lossy().into_owned();
    let a = &a[1..];
    match name.as_str() {
        "noop" => Ok(0),
        "write" => {
            // An existing file, truncated: a write, not a create.
            let p = path(a, 0)?;
            let mut f = io(
                "open",
                &p,
                fs::OpenOptions::new().write(true).truncate(true).open(&p),
            )?;
            io("write", &p, f.write_all(PAYLOAD))?;
            Ok(0)
        }
        "create" => {
            let p = path(a, 0)?;
            if let Some(d) = p.parent() {
                io("mkdir", d, fs::create_dir_all(d))?;
            }
            io("create", &p, fs::write(&p, PAYLOAD))?;
            Ok(0)
        }
        "append" => {
            let p = path(a, 0)?;
            let mut f = io("open", &p, fs::OpenOptions::new().append(true).open(&p))?;
            io("append", &p, f.write_all(PAYLOAD))?;
            Ok(0)
        }
        "delete" => {
            let p = path(a, 0)?;
            io("delete", &p, fs::remove_file(&p))?;
            Ok(0)
        }
        "rename" => {
            let (from, to) = (path(a, 0)?, path(a, 1)?);
            io("rename", &from, fs::rename(&from, &to))?;
            Ok(0)
        }
        "copy" => {
            let (from, to) = (path(a, 0)?, path(a, 1)?);
            let data = io("read", &from, fs::read(&from))?;
            io("write", &to, fs::write(&to, data))?;
            Ok(0)
        }
        "open-pipe" => {
            // A named pipe (Windows; a FIFO elsewhere): read access is enough to talk
            // to the server. Retries while it does not exist yet.
            let p = path(a, 0)?;
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::OpenOptions::new().read(true).open(&p) {
                    Ok(_) => return Ok(0),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(format!("open {}: {e}", p.display())),
                }
            }
        }
        "read" => {
            let p = path(a, 0)?;
            io("read", &p, fs::read(&p))?;
            Ok(0)
        }
        "connect" => {
            let port: u16 = num(a, 0)?;
            let mut s = TcpStream::connect_timeout(&loopback(port), Duration::from_secs(3))
                .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
            s.write_all(b"W")
                .map_err(|e| format!("send to 127.0.0.1:{port}: {e}"))?;
            Ok(0)
        }
        "listen" => listen(num(a, 0)?, &path(a, 1)?),
        "await-copy" => {
            // Says `ready`, waits for `flag`, then copies `from` to `to`.
            let (ready, flag, from, to) = (path(a, 0)?, path(a, 1)?, path(a, 2)?, path(a, 3)?);
            io("write", &ready, fs::write(&ready, b"ready\n"))?;
            wait_for(&flag, Duration::from_secs(10))?;
            let data = io("read", &from, fs::read(&from))?;
            io("write", &to, fs::write(&to, data))?;
            Ok(0)
        }
        "plant-when" => {
            // Host side: waits for `ready`, writes `content` to `file`, then `flag`.
            let (ready, file, flag) = (path(a, 0)?, path(a, 1)?, path(a, 2)?);
            let content = arg(a, 3)?.to_string_lossy().into_owned();
            wait_for(&ready, Duration::from_secs(15))?;
            io("write", &file, fs::write(&file, content))?;
            io("write", &flag, fs::write(&flag, b"planted\n"))?;
            Ok(0)
        }
        "await-connect" => await_connect(&path(a, 0)?, num(a, 1)?, &path(a, 2)?),
        "kill" => kill(num(a, 0)?),
        "sleep" => {
            std::thread::sleep(Duration::from_secs(num(a, 0)?));
            Ok(0)
        }
        "daemon" => daemon(&path(a, 0)?, &path(a, 1)?),
        "heartbeat" => heartbeat(&path(a, 0)?, &path(a, 1)?),
        "exec-to" => {
            // Runs a program with stdout and stderr in a file; returns its status.
            let out = path(a, 0)?;
            let prog = arg(a, 1)?;
            let f = io("create", &out, fs::File::create(&out))?;
            let f2 = io("dup", &out, f.try_clone())?;
            let st = Command::new(prog)
                .args(&a[2..])
                .stdin(Stdio::null())
                .stdout(f)
                .stderr(f2)
                .status()
                .map_err(|e| format!("start {}: {e}", prog.to_string_lossy()))?;
            Ok(st.code().unwrap_or(1))
        }
        "desktop-input" => {
            // Windows: reach the user's desktop and inject input (judged from outside
            // by the session's last input time).
            workfence_windows::probes::inject_input_on_user_desktop()?;
            Ok(0)
        }
        "open-process" => {
            // Windows: open another run's process for injection and terminate it.
            workfence_windows::probes::open_and_terminate(num(a, 0)?, OTHER_RUN_KILLED)?;
            Ok(0)
        }
        "pid-heartbeat" => {
            // Writes this process's id, then beats (the victim of another run).
            let pid_file = path(a, 0)?;
            io(
                "write",
                &pid_file,
                fs::write(&pid_file, std::process::id().to_string()),
            )?;
            heartbeat(&path(a, 1)?, &path(a, 2)?)
        }
        "pipe-server" => {
            // Windows: a pipe with the default security descriptor; `ready` once it
            // exists, `result` when a client connects (within 30 s).
            let name = arg(a, 0)?.to_string_lossy().into_owned();
            let (ready, result) = (path(a, 1)?, path(a, 2)?);
            let connected = workfence_windows::probes::serve_default_pipe(
                &format!(r"\\.\pipe\{name}"),
                Duration::from_secs(30),
                || {
                    let _ = fs::write(&ready, b"ready\n");
                },
            )?;
            if connected {
                io("write", &result, fs::write(&result, b"connected\n"))?;
            }
            Ok(0)
        }
        "resolve" => {
            // A name lookup through the system resolver (on Windows, the DNS Client
            // service); whether it resolves does not matter.
            let name = arg(a, 0)?.to_string_lossy().into_owned();
            let _ = std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 80));
            Ok(0)
        }
        other => Err(format!("unknown probe action {other:?}")),
    }
}

/// Waits until `p` exists.
fn wait_for(p: &Path, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    while !p.exists() {
        if Instant::now() > end {
            return Err(format!("{} did not appear within {limit:?}", p.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Binds a loopback port, says so in `ready`, and sends one byte to the first client
/// (within 3 s).
fn listen(port: u16, ready: &Path) -> Result<i32, String> {
    let l = TcpListener::bind(loopback(port)).map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
    io("write", ready, fs::write(ready, b"ready\n"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.set_nonblocking(false);
            s.write_all(b"L").map_err(|e| format!("send: {e}"))?;
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("nobody connected within 3 s".into())
}

/// Host side of the listener case: waits for `ready`, connects to the port and writes
/// `got` to `result` when a byte arrives.
fn await_connect(ready: &Path, port: u16, result: &Path) -> Result<i32, String> {
    let end = Instant::now() + Duration::from_secs(15);
    while !ready.exists() {
        if Instant::now() > end {
            return Err("the listener never became ready".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 1];
            if matches!(s.read(&mut b), Ok(1)) {
                io("write", result, fs::write(result, b"got\n"))?;
                return Ok(0);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("could not reach a listener on 127.0.0.1:{port}"))
}

#[cfg(unix)]
fn kill(pid: i32) -> Result<i32, String> {
    use nix::sys::signal::{kill, Signal};
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
        .map_err(|e| format!("kill {pid}: {e}"))?;
    Ok(0)
}

#[cfg(windows)]
fn kill(pid: i32) -> Result<i32, String> {
    // taskkill, so that the facade needs no Win32 bindings of its own.
    let st = Command::new("taskkill")
        .args(["/F", "/PID", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("start taskkill: {e}"))?;
    if st.success() {
        Ok(0)
    } else {
        Err(format!("taskkill /PID {pid} failed: {st}"))
    }
}

#[cfg(not(any(unix, windows)))]
fn kill(pid: i32) -> Result<i32, String> {
    Err(format!("kill {pid}: unsupported on this OS"))
}

/// Starts a detached heartbeat process (its own session / process group; on Windows
/// also an attempt to break away from the job) and returns once it beats.
fn daemon(beat: &Path, stop: &Path) -> Result<i32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let marker = beat.with_extension("daemon-marker");
    let mut cmd = Command::new(&exe);
    cmd.arg(PROBE_ARG)
        .arg(&marker)
        .arg("heartbeat")
        .arg(beat)
        .arg(stop)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    #[cfg(windows)]
    let child = {
        use std::os::windows::process::CommandExt;
        // DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP, plus CREATE_BREAKAWAY_FROM_JOB,
        // which fails when the job forbids breakaway: then try without it.
        const DETACHED: u32 = 0x0000_0008 | 0x0000_0200;
        const BREAKAWAY: u32 = 0x0100_0000;
        cmd.creation_flags(DETACHED | BREAKAWAY);
        match cmd.spawn() {
            Ok(c) => Ok(c),
            Err(_) => {
                cmd.creation_flags(DETACHED);
                cmd.spawn()
            }
        }
    };
    #[cfg(not(windows))]
    let child = cmd.spawn();
    let child = child.map_err(|e| format!("spawn the daemon: {e}"))?;
    drop(child);
    let end = Instant::now() + Duration::from_secs(5);
    while !beat.exists() {
        if Instant::now() > end {
            return Err("the daemon did not start beating within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(0)
}

/// Rewrites `beat` with a counter every 50 ms until `stop` exists (at most 20 s).
fn heartbeat(beat: &Path, stop: &Path) -> Result<i32, String> {
    #[cfg(unix)]
    let _ = nix::unistd::setsid();
    let end = Instant::now() + HEARTBEAT_LIFETIME;
    let mut n: u64 = 0;
    let tmp = beat.with_extension("beat-tmp");
    while Instant::now() < end && !stop.exists() {
        n += 1;
        // Write and rename, so that a reader never sees a truncated, empty beat.
        if fs::write(&tmp, n.to_string()).is_ok() {
            let _ = fs::rename(&tmp, beat);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "workfence-probe-test-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn run(args: &[&OsString]) -> Result<i32, String> {
        let v: Vec<OsString> = args.iter().map(|a| (*a).clone()).collect();
        act(&v)
    }

    fn o(s: impl Into<OsString>) -> OsString {
        s.into()
    }

    #[test]
    fn file_actions_do_what_they_say() {
        let d = dir("files");
        let f = d.join("a.txt");
        // write needs an existing file: it is a write, not a create.
        assert!(run(&[&o("write"), &o(&f)]).is_err());
        assert_eq!(run(&[&o("create"), &o(d.join("x/y/a.txt"))]), Ok(0));
        fs::write(&f, "old").expect("seed");
        assert_eq!(run(&[&o("write"), &o(&f)]), Ok(0));
        assert_eq!(fs::read(&f).expect("read"), PAYLOAD);
        assert_eq!(run(&[&o("append"), &o(&f)]), Ok(0));
        assert_eq!(fs::read(&f).expect("read").len(), 2 * PAYLOAD.len());
        let g = d.join("b.txt");
        assert_eq!(run(&[&o("copy"), &o(&f), &o(&g)]), Ok(0));
        assert_eq!(run(&[&o("rename"), &o(&g), &o(d.join("c.txt"))]), Ok(0));
        assert!(!g.exists() && d.join("c.txt").exists());
        assert_eq!(run(&[&o("delete"), &o(&f)]), Ok(0));
        assert!(!f.exists());
        let e = run(&[&o("delete"), &o(&f)]).expect_err("already gone");
        assert!(e.contains("delete"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        assert!(run(&[&o("write")]).is_err());
        assert!(run(&[&o("connect"), &o("not-a-port")]).is_err());
        assert!(run(&[&o("frobnicate")])
            .expect_err("unknown")
            .contains("unknown"));
    }

    #[test]
    fn windows_actions_are_errors_elsewhere_and_check_their_arguments() {
        assert!(run(&[&o("open-process"), &o("not-a-pid")]).is_err());
        assert!(run(&[&o("open-process")]).is_err());
        assert!(run(&[&o("pipe-server")]).is_err());
        if !cfg!(windows) {
            for a in ["desktop-input", "open-process"] {
                let e = run(&[&o(a), &o("1")]).expect_err(a);
                assert!(e.contains("Windows only"), "{a}: {e}");
            }
            let d = dir("pipe");
            let e = run(&[
                &o("pipe-server"),
                &o("x"),
                &o(d.join("ready")),
                &o(d.join("result")),
            ])
            .expect_err("pipe-server");
            assert!(e.contains("Windows only"), "{e}");
            assert!(!d.join("ready").exists());
            let _ = fs::remove_dir_all(&d);
        }
        // A lookup succeeds whether or not the name resolves.
        assert_eq!(
            run(&[&o("resolve"), &o("wf-selftest-probe.invalid")]),
            Ok(0)
        );
    }

    #[test]
    fn pid_heartbeat_writes_its_pid_then_beats() {
        let d = dir("pidbeat");
        let (pid, beat, stop) = (d.join("pid"), d.join("beat"), d.join("stop"));
        fs::write(&stop, "stop").expect("stop");
        assert_eq!(
            run(&[&o("pid-heartbeat"), &o(&pid), &o(&beat), &o(&stop)]),
            Ok(0)
        );
        assert_eq!(
            fs::read_to_string(&pid).expect("pid"),
            std::process::id().to_string()
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn connect_sends_a_byte() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(run(&[&o("connect"), &o(port.to_string())]), Ok(0));
        let (mut s, _) = l.accept().expect("accept");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("read");
        assert_eq!(&b, b"W");
    }

    #[cfg(unix)]
    #[test]
    fn exec_to_captures_output_and_status() {
        let d = dir("exec");
        let log = d.join("log");
        let r = run(&[
            &o("exec-to"),
            &o(&log),
            &o("sh"),
            &o("-c"),
            &o("echo hi; exit 3"),
        ]);
        assert_eq!(r, Ok(3));
        assert_eq!(fs::read_to_string(&log).expect("log").trim(), "hi");
        let _ = fs::remove_dir_all(&d);
    }
}
