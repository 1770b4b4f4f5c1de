//! The CLI contract where it is an attack surface: the error channel between the
//! sandbox and workfence (a command must not forge workfence's verdict), `--keep-fd`
//! (only the caller's fds go in, never workfence's own), the home directory when
//! `HOME` is unset (secrets still hidden), and full-access mode honouring or refusing
//! the run flags. Each attack has a control that shows its probe can see it work.
#![cfg(target_os = "linux")]

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// The old text protocol's success line, which a command could once send through a
/// kept fd that was really workfence's error pipe.
const FORGED: &str = "0\tall sandbox layers verified";

/// A prefix that opens `$OUT/fd<N>` as fd N (and nothing else) and execs the rest.
fn with_fd(n: u32) -> Vec<OsString> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("exec \"$@\" {n}>\"$OUT/fd{n}\"").into(),
        "wf-with-fd".into(),
    ]
}

fn launch(prefix: Vec<OsString>, wf_args: &[&str]) -> Launch {
    Launch {
        prefix,
        wf_args: wf_args.iter().map(OsString::from).collect(),
        ..Launch::default()
    }
}

#[test]
fn c1_forged_success_through_an_unopened_keep_fd() {
    let script = format!("printf '{}\\n' >&4; exit 3", FORGED.replace('\t', "\\t"));
    // Control: with fd 4 really open, the command writes the forged line to it (so the
    // probe sees a write through a kept fd), and workfence reports the command's own 3.
    let mut sc = Scenario::new("c1-control");
    let o = sc.run_script(
        Mode::Sandboxed,
        &script,
        &launch(with_fd(4), &["--keep-fd", "4"]),
    );
    assert_eq!(o.code, Some(3), "control: {}", o.show());
    assert!(
        read_lossy(&sc.out.join("fd4")).contains("all sandbox layers verified"),
        "control: the command could not write to its kept fd 4\n{}",
        o.show()
    );
    count("BEGIN C1/forged-record");
    count("CONTROL C1/forged-record succeeded");
    drop(sc);

    // Attack: fd 4 is not open in the caller. It used to be workfence's own error pipe
    // inside the sandbox; now it is refused before anything runs.
    let mut sc = Scenario::new("c1-attack");
    let o = sc.run_script(
        Mode::Sandboxed,
        &script,
        &launch(vec![], &["--keep-fd", "4"]),
    );
    assert_eq!(o.code, Some(125), "{}", o.show());
    assert!(!o.started(), "the command ran with fd 4\n{}", o.show());
    assert!(
        !o.stderr.contains("all sandbox layers verified"),
        "forged message shown\n{}",
        o.show()
    );
    assert!(
        o.stderr.starts_with("workfence: ") && o.stderr.contains("--keep-fd 4"),
        "{}",
        o.show()
    );
    count("ATTACK C1/forged-record blocked");
}

#[test]
fn c2_internal_fds_cannot_be_kept() {
    internal_fds_refused("c2", &[]);
    count("WORK c2-internal-fds-refused passed");
}

/// Every low fd number the caller did not open is refused as `--keep-fd`, whatever
/// workfence would use it for inside (error pipe, sync pipe, signalfd, sockets, and with
/// `extra` such as an allowlist its audit files and socketpair), and the command never
/// starts (so it cannot write there either).
fn internal_fds_refused(name: &str, extra: &[&str]) {
    let mut sc = Scenario::new(name);
    let mut tried = 0;
    for n in 3..=12 {
        if inherited_by_children(n) {
            // Really the caller's (the test runner's): keeping it is legitimate.
            continue;
        }
        tried += 1;
        let arg = n.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["--keep-fd", &arg]);
        let o = sc.run_script(
            Mode::Sandboxed,
            &format!("ls -l /proc/self/fd/{n}; echo forged >&{n}"),
            &launch(vec![], &args),
        );
        assert_eq!(o.code, Some(125), "--keep-fd {n}: {}", o.show());
        assert!(!o.started(), "--keep-fd {n}: the command ran\n{}", o.show());
    }
    assert!(tried >= 5, "too few free fd numbers to test");
    // No control: outside workfence these numbers are simply not workfence's fds.
}

/// Whether this process has `fd` open without close-on-exec (so workfence, started by
/// it, has it open too).
fn inherited_by_children(fd: u32) -> bool {
    const O_CLOEXEC: u32 = 0o2_000_000;
    let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .is_some_and(|f| f & O_CLOEXEC == 0)
}

/// Prints `FDS a b c` for the fds open in the command (python's own listing fd excluded).
const LIST_FDS: &str = r#""$PY" -c '
import os
fds = []
for fd in range(0, 1024):
    try:
        os.fstat(fd)
        fds.append(fd)
    except OSError:
        pass
print("FDS", " ".join(map(str, fds)), flush=True)
'"#;

#[test]
fn c3_only_std_and_kept_fds_reach_the_command() {
    // fd 5 is kept; fd 7 leaks from the caller without being kept.
    let prefix: Vec<OsString> = vec![
        "sh".into(),
        "-c".into(),
        "exec \"$@\" 5>\"$OUT/fd5\" 7>\"$OUT/fd7\"".into(),
        "wf-with-fds".into(),
    ];
    // Control: run directly, the probe sees both.
    let mut sc = Scenario::new("c3-control");
    let o = sc.run_script(Mode::Control, LIST_FDS, &launch(prefix.clone(), &[]));
    let fds = o.field("FDS").unwrap_or_default();
    assert!(
        fds.split(' ').any(|f| f == "5") && fds.split(' ').any(|f| f == "7"),
        "control: the probe does not see inherited fds: {fds:?}\n{}",
        o.show()
    );
    count("BEGIN C3/fd-leak");
    count("CONTROL C3/fd-leak succeeded");
    drop(sc);
    let mut sc = Scenario::new("c3-attack");
    let o = sc.run_script(
        Mode::Sandboxed,
        LIST_FDS,
        &launch(prefix, &["--keep-fd", "5"]),
    );
    assert_ok(&o, "list fds");
    assert_eq!(
        o.field("FDS").as_deref(),
        Some("0 1 2 5"),
        "the command got more than 0-2 and its kept fd\n{}",
        o.show()
    );
    count("ATTACK C3/fd-leak blocked");
}

/// The passwd home of this uid (what `getent passwd` says).
fn passwd_home() -> Option<PathBuf> {
    let out = Command::new("getent")
        .args(["passwd", &uid().to_string()])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let home = line.trim().split(':').nth(5)?.to_string();
    Some(PathBuf::from(home)).filter(|h| h.is_absolute() && h.is_dir())
}

/// Removes a file this test created, even when it fails.
struct Canary(PathBuf);

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `workfence <args>` with `HOME` unset (and no XDG_CONFIG_HOME), in `ws`.
fn without_home(ws: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .current_dir(ws)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("run workfence")
}

#[test]
fn c4_home_unset_still_hides_the_passwd_homes_secrets() {
    let Some(home) = passwd_home() else {
        skip_or_fail("C4", "this uid has no passwd home directory");
        return;
    };
    let sc = Scenario::new("c4");
    let rel = ".git-credentials";
    let secret_path = home.join(rel);
    let token = format!("SECRET-c4-{}", sc.token);
    // Only create the canary when the file is absent (then it is removed again).
    let _canary = if fs::symlink_metadata(&secret_path).is_err() {
        if fs::write(&secret_path, &token).is_err() {
            skip_or_fail("C4", "cannot create a canary in the passwd home");
            return;
        }
        Some(Canary(secret_path.clone()))
    } else {
        None
    };
    let ws = sc.ws.to_str().unwrap().to_string();
    let explain = without_home(&sc.ws, &["explain", "-C", &ws]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success(), "explain failed: {explain:?}");
    let hidden = text
        .split("Hidden (secrets")
        .nth(1)
        .unwrap_or_default()
        .split("\n\n")
        .next()
        .unwrap_or_default();
    assert!(
        hidden.contains(&secret_path.display().to_string()),
        "explain without HOME does not hide {}:\n{text}",
        secret_path.display()
    );
    if _canary.is_none() {
        // Not ours: do not read the user's real credentials, explain must do.
        count("WORK c4-home-unset-explain passed");
        return;
    }
    // Control: the canary is readable without the sandbox.
    let shown = secret_path.display().to_string();
    let o = Command::new("cat").arg(&shown).output().expect("cat");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&token),
        "control: cannot read the canary"
    );
    count("BEGIN C4/home-unset");
    count("CONTROL C4/home-unset succeeded");
    let run = without_home(&sc.ws, &["run", "-C", &ws, "--", "cat", &shown]);
    assert!(
        !String::from_utf8_lossy(&run.stdout).contains(&token),
        "the passwd home's secret was readable with HOME unset: {run:?}"
    );
    count("ATTACK C4/home-unset blocked");
}

#[test]
fn c5_full_access_applies_env_set_and_keep_fd() {
    let mut sc = Scenario::new("c5-env");
    let o = sc.run_script(
        Mode::Sandboxed,
        "echo \"WFT=$WF_TEST_VAR\"; echo via-fd >&5",
        &launch(
            with_fd(5),
            &[
                "--mode",
                "full-access",
                "--env-set",
                "WF_TEST_VAR=applied",
                "--keep-fd",
                "5",
            ],
        ),
    );
    assert_ok(&o, "full-access env-set/keep-fd");
    assert!(o.stdout.contains("WFT=applied"), "{}", o.show());
    assert_eq!(read_lossy(&sc.out.join("fd5")), "via-fd\n", "{}", o.show());
    // An fd that is not open is refused, as in the sandbox.
    let o = sc.run_script(
        Mode::Sandboxed,
        "true",
        &launch(vec![], &["--mode", "full-access", "--keep-fd", "5"]),
    );
    assert_eq!(o.code, Some(125), "{}", o.show());
    assert!(!o.started(), "{}", o.show());
    work_passed("full-access-env-set-keep-fd");
}

#[test]
fn c5_full_access_timeout_kills_the_group() {
    let mut sc = Scenario::new("c5-timeout");
    let o = sc.run_script(
        Mode::Sandboxed,
        "sleep 300 & echo \"BG $!\"; sleep 300",
        &launch(vec![], &["--mode", "full-access", "--timeout", "1s"]),
    );
    assert_eq!(o.code, Some(124), "{}", o.show());
    assert!(o.stderr.contains("timed out"), "{}", o.show());
    let bg: u32 = o
        .field("BG")
        .and_then(|p| p.parse().ok())
        .expect("background pid");
    // Judged after the run: the background sleep is gone (or a zombie awaiting init).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !matches!(proc_state(bg), None | Some('Z')) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        matches!(proc_state(bg), None | Some('Z')),
        "the background process {bg} survived the timeout"
    );
    work_passed("full-access-timeout");
}

#[test]
fn c5_full_access_refuses_pty() {
    let mut sc = Scenario::new("c5-pty");
    let o = sc.run_script(
        Mode::Sandboxed,
        "true",
        &launch(vec![], &["--mode", "full-access", "--pty"]),
    );
    assert_eq!(o.code, Some(125), "{}", o.show());
    assert!(!o.started(), "{}", o.show());
    assert!(o.stderr.contains("workfence: --pty"), "{}", o.show());
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.starts_with("workfence: warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "one line\n{}", o.show());
    work_passed("full-access-pty-refused");
}

#[test]
fn c6_not_found_and_not_executable_keep_their_codes() {
    let mut sc = Scenario::new("c6");
    let o = sc.workfence(&["run", "--", "wf-no-such-command-xyz"], &Launch::default());
    assert_eq!(o.code, Some(127), "{}", o.show());
    assert!(
        o.stderr
            .contains("workfence: wf-no-such-command-xyz: command not found"),
        "{}",
        o.show()
    );
    fs::write(sc.ws.join("noexec.sh"), "#!/bin/sh\n").unwrap();
    let o = sc.workfence(&["run", "--", "./noexec.sh"], &Launch::default());
    assert_eq!(o.code, Some(126), "{}", o.show());
    assert!(
        o.stderr.contains("workfence: ./noexec.sh: cannot execute"),
        "{}",
        o.show()
    );
    work_passed("exit-126-127-messages");
}

/// With a network allowlist workfence opens more fds of its own before the sandbox
/// starts (the audit files, the proxy's socketpair): a kept fd number must still only
/// ever be the caller's, and the command still gets only 0-2 and its kept fd.
#[test]
fn c2_c3_network_allowlist_keeps_its_fds_to_itself() {
    let net = ["--network", "allow=a.test"];
    internal_fds_refused("c2-net", &net);
    count("WORK c2-internal-fds-refused-with-allowlist passed");
    let prefix: Vec<OsString> = vec![
        "sh".into(),
        "-c".into(),
        "exec \"$@\" 5>\"$OUT/fd5\" 7>\"$OUT/fd7\"".into(),
        "wf-with-fds".into(),
    ];
    let mut sc = Scenario::new("c3-net-control");
    let o = sc.run_script(Mode::Control, LIST_FDS, &launch(prefix.clone(), &[]));
    let fds = o.field("FDS").unwrap_or_default();
    assert!(
        fds.split(' ').any(|f| f == "7"),
        "control: the probe does not see inherited fds: {fds:?}\n{}",
        o.show()
    );
    count("BEGIN C3/fd-leak-allowlist");
    count("CONTROL C3/fd-leak-allowlist succeeded");
    drop(sc);
    let mut sc = Scenario::new("c3-net-attack");
    let o = sc.run_script(
        Mode::Sandboxed,
        LIST_FDS,
        &launch(prefix, &[net[0], net[1], "--keep-fd", "5"]),
    );
    assert_ok(&o, "list fds");
    assert_eq!(
        o.field("FDS").as_deref(),
        Some("0 1 2 5"),
        "the command got more than 0-2 and its kept fd\n{}",
        o.show()
    );
    count("ATTACK C3/fd-leak-allowlist blocked");
}
