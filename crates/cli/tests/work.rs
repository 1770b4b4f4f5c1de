//! Work that must keep working inside the sandbox, and the CLI contract (exit codes, flags,
//! bad input). No control half: these only have to pass sandboxed.
#![cfg(target_os = "linux")]

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `script` sandboxed, with the sandbox proof first, and asserts from outside that
/// the run really was sandboxed (see `assert_sandboxed`).
fn sandboxed(sc: &mut Scenario, script: &str, wf_args: &[&str]) -> Outcome {
    let l = Launch {
        wf_args: wf_args.iter().map(OsString::from).collect(),
        ..Launch::default()
    };
    proved(sc, script, &l)
}

/// `run_script` (sandboxed) with the sandbox proof, asserted.
fn proved(sc: &mut Scenario, script: &str, l: &Launch) -> Outcome {
    let o = sc.run_script(Mode::Sandboxed, &with_proof(script), l);
    assert_sandboxed(sc, &o, "work case");
    o
}

fn wf(sc: &mut Scenario, args: &[&str]) -> Outcome {
    sc.workfence(args, &Launch::default())
}

fn ws_arg(sc: &Scenario) -> String {
    sc.ws.to_str().expect("utf-8 workspace").to_string()
}

// ------------------------------------------------------------------ ordinary work

#[test]
fn work_edit_files() {
    let mut sc = Scenario::new("work-edit");
    let o = sandboxed(
        &mut sc,
        r#"set -e
echo hello > a.txt
sed -i 's/hello/world/' a.txt
mkdir -p sub/dir && mv a.txt sub/dir/b.txt
cp sub/dir/b.txt c.txt && rm sub/dir/b.txt
ln -s c.txt link && echo more >> link
chmod 600 c.txt && touch -d 2001-01-01 c.txt
echo README edited >> README.md
"#,
        &[],
    );
    assert_ok(&o, "edit files");
    assert_eq!(read_lossy(&sc.ws.join("c.txt")), "world\nmore\n");
    assert!(!sc.ws.join("sub/dir/b.txt").exists());
    assert!(read_lossy(&sc.ws.join("README.md")).contains("README edited"));
    let mode = fs::metadata(sc.ws.join("c.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "chmod inside the workspace");
    work_passed("edit-files");
}

/// The broker creates files for the command and caches each thread's umask: every
/// change of the umask must still show in the modes of the files created after it,
/// including a change made by another thread of the same process.
#[test]
fn work_umask_respected() {
    let mut sc = Scenario::new("work-umask");
    let o = sandboxed(
        &mut sc,
        r#"set -e
umask 022; : > a022; mkdir d022
umask 077; : > a077; mkdir d077
umask 002; : > a002
python3 - <<'PY'
import os, threading
os.umask(0o027)
open("t027", "w").close()
def other():
    os.umask(0o007)
t = threading.Thread(target=other); t.start(); t.join()
open("t007", "w").close()
PY
"#,
        &[],
    );
    assert_ok(&o, "umask");
    let mode = |n: &str| {
        fs::metadata(sc.ws.join(n))
            .unwrap_or_else(|e| panic!("{n}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("a022"), 0o644);
    assert_eq!(mode("d022"), 0o755);
    assert_eq!(mode("a077"), 0o600);
    assert_eq!(mode("d077"), 0o700);
    assert_eq!(mode("a002"), 0o664);
    assert_eq!(mode("t027"), 0o640);
    assert_eq!(mode("t007"), 0o660, "a umask set by another thread");
    // The umask workfence was started with holds inside when nothing changes it (the
    // broker then applies it without reading any process's status).
    let st = Command::new("sh")
        .arg("-c")
        .arg("umask 027 && exec \"$0\" run -C \"$1\" -- sh -c ': > inherited; mkdir inherited.d'")
        .arg(bin())
        .arg(&sc.ws)
        .env("HOME", &sc.h)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "workfence under umask 027: {st}");
    assert_eq!(
        mode("inherited"),
        0o640,
        "the umask workfence was started with"
    );
    assert_eq!(mode("inherited.d"), 0o750);
    work_passed("umask");
}

/// `/proc/self` reached without being named (`self/fd/N` from a cwd of `/proc`,
/// `../proc/self`) still means the caller, not the broker that opens it on the
/// caller's behalf.
#[test]
fn work_proc_self_reached_relatively() {
    let mut sc = Scenario::new("work-proc-self");
    let o = sandboxed(
        &mut sc,
        r#"set -e
exec 5>>fd5.txt
ws=$(pwd)
cd /proc && echo relative >> self/fd/5
cd / && echo dotdot >> ../proc/self/fd/5
cd /proc && echo thread >> thread-self/fd/5
cd "$ws" && echo absolute >> /proc/self/fd/5
"#,
        &[],
    );
    assert_ok(&o, "proc self");
    assert_eq!(
        read_lossy(&sc.ws.join("fd5.txt")),
        "relative\ndotdot\nthread\nabsolute\n"
    );
    work_passed("proc-self-relative");
}

fn git_commit_script() -> &'static str {
    r#"set -e
echo change > new.txt
git add new.txt
git commit -q -m "sandboxed commit"
git checkout -q -b feature
echo f >> new.txt
git commit -q -am "feature commit"
git checkout -q -
git status --short
git log --oneline | head -3
"#
}

#[test]
fn work_git_add_commit() {
    if !need("work-git", &["git"]) {
        return;
    }
    let mut sc = Scenario::new("work-git");
    let o = sandboxed(&mut sc, git_commit_script(), &[]);
    assert_ok(&o, "git add/commit/checkout");
    let log = host_git(&sc.ws, &sc.h, &["log", "--all", "--format=%s"]);
    assert!(log.contains("sandboxed commit"), "host log: {log}");
    assert!(log.contains("feature commit"), "host log: {log}");
    host_git(&sc.ws, &sc.h, &["fsck", "--no-progress"]);
    work_passed("git-add-commit");
}

#[test]
fn work_git_commit_in_linked_worktree() {
    if !need("work-git-worktree", &["git"]) {
        return;
    }
    let mut sc = Scenario::with(
        "work-git-wt",
        ScenarioOpts {
            ws_kind: WsKind::Worktree,
            ..ScenarioOpts::default()
        },
    );
    let o = sandboxed(&mut sc, git_commit_script(), &[]);
    assert_ok(&o, "git commit in a linked worktree");
    let log = host_git(&sc.ws, &sc.h, &["log", "--all", "--format=%s"]);
    assert!(log.contains("sandboxed commit"), "host log: {log}");
    assert!(log.contains("feature commit"), "host log: {log}");
    work_passed("git-commit-linked-worktree");
}

#[test]
fn work_cc_compile_and_run() {
    if !need("work-cc", &["cc"]) {
        return;
    }
    let mut sc = Scenario::new("work-cc");
    let o = sandboxed(
        &mut sc,
        r#"set -e
printf '#include <stdio.h>\nint main(void){puts("hello from c");return 0;}\n' > hello.c
cc -O1 -o hello hello.c
./hello
"#,
        &[],
    );
    assert_ok(&o, "cc");
    assert!(o.stdout.contains("hello from c"), "{}", o.show());
    work_passed("cc-compile-run");
}

#[test]
fn work_python3_script() {
    let mut sc = Scenario::new("work-py");
    let o = sandboxed(
        &mut sc,
        r#"set -e
cat > s.py <<'EOF'
import json, os, tempfile, hashlib
with tempfile.NamedTemporaryFile(delete=False) as f:
    f.write(b"data")
print("PYOK", json.dumps({"sum": sum(range(10))}), hashlib.sha256(b"x").hexdigest()[:8])
os.unlink(f.name)
EOF
"$PY" s.py
"#,
        &[],
    );
    assert_ok(&o, "python3");
    assert!(
        o.stdout.contains("PYOK {\"sum\": 45} 2d711642"),
        "{}",
        o.show()
    );
    work_passed("python3-script");
}

#[test]
fn work_make_j4() {
    if !need("work-make", &["make", "cc"]) {
        return;
    }
    let mut sc = Scenario::new("work-make");
    let mut mk = String::from("OBJS = a1.o a2.o a3.o a4.o a5.o a6.o a7.o a8.o\nall: prog\n");
    mk.push_str("prog: $(OBJS) main.o\n\tcc -o $@ $^\n");
    mk.push_str("%.o: %.c\n\tcc -c -o $@ $<\n");
    fs::write(sc.ws.join("Makefile"), mk).unwrap();
    let mut main = String::from("#include <stdio.h>\n");
    for i in 1..=8 {
        fs::write(
            sc.ws.join(format!("a{i}.c")),
            format!("int f{i}(void) {{ return {i}; }}\n"),
        )
        .unwrap();
        main.push_str(&format!("int f{i}(void);\n"));
    }
    main.push_str("int main(void){ printf(\"sum=%d\\n\", f1()+f2()+f3()+f4()+f5()+f6()+f7()+f8()); return 0; }\n");
    fs::write(sc.ws.join("main.c"), main).unwrap();
    let o = sandboxed(&mut sc, "set -e\nmake -j4 -s\n./prog\n", &[]);
    assert_ok(&o, "make -j4");
    assert!(o.stdout.contains("sum=36"), "{}", o.show());
    work_passed("make-j4");
}

#[test]
fn work_loopback_server_inside() {
    let mut sc = Scenario::new("work-loopback");
    let o = sandboxed(
        &mut sc,
        &py(r#"
import socket, threading
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def serve():
    c, _ = srv.accept(); c.sendall(c.recv(16).upper()); c.close()
t = threading.Thread(target=serve); t.start()
cl = socket.create_connection(("127.0.0.1", port), timeout=5)
cl.sendall(b"ping"); print("ECHO", cl.recv(16).decode(), flush=True)
t.join()
"#),
        &[],
    );
    assert_ok(&o, "loopback server");
    assert_eq!(o.field("ECHO").as_deref(), Some("PING"), "{}", o.show());
    work_passed("loopback-server-inside");
}

#[test]
fn work_network_on_reaches_host_loopback() {
    let mut sc = Scenario::new("work-net-on");
    let o = sandboxed(
        &mut sc,
        &py(r#"
import socket
s = socket.create_connection(("127.0.0.1", int(os.environ["TCP4"])), timeout=5)
s.sendall(b"x"); s.close(); print("CONNECTED")
"#),
        &["--network", "on"],
    );
    assert_ok(&o, "--network on");
    assert!(
        sc.listeners.contacts().tcp4,
        "host listener not reached\n{}",
        o.show()
    );
    work_passed("network-on");
}

// ------------------------------------------------------------------ exit codes and stdio

#[test]
fn work_exit_code_passthrough() {
    let mut sc = Scenario::new("work-exit3");
    let o = sandboxed(&mut sc, "exit 3", &[]);
    assert_eq!(o.code, Some(3), "{}", o.show());
    work_passed("exit-code-3");
}

#[test]
fn work_exit_signal_128_plus_n() {
    let mut sc = Scenario::new("work-sigterm");
    let o = sandboxed(&mut sc, "kill -TERM $$", &[]);
    assert_eq!(o.code, Some(143), "{}", o.show());
    let o = sandboxed(&mut sc, "kill -KILL $$", &[]);
    assert_eq!(o.code, Some(137), "{}", o.show());
    work_passed("exit-signal-143");
}

#[test]
fn work_missing_command_127() {
    let mut sc = Scenario::new("work-127");
    let ws = ws_arg(&sc);
    let o = wf(
        &mut sc,
        &["run", "-C", &ws, "--", "wf-no-such-command-here"],
    );
    assert_eq!(o.code, Some(127), "{}", o.show());
    // Nothing runs, so no proof snippet can: the reason must come from the sandbox itself.
    assert!(
        o.stderr.contains("command not found in the sandbox's PATH"),
        "{}",
        o.show()
    );
    work_passed("missing-command-127");
}

#[test]
fn work_not_executable_126() {
    let mut sc = Scenario::new("work-126");
    fs::write(sc.ws.join("notexec"), "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(sc.ws.join("notexec"), fs::Permissions::from_mode(0o644)).unwrap();
    let ws = ws_arg(&sc);
    let o = wf(&mut sc, &["run", "-C", &ws, "--", "./notexec"]);
    assert_eq!(o.code, Some(126), "{}", o.show());
    assert!(!o.stdout.contains("ran"), "{}", o.show());
    // Nothing runs, so no proof snippet can: the reason must come from workfence.
    assert!(
        o.stderr.contains("workfence") && o.stderr.contains("cannot execute"),
        "{}",
        o.show()
    );
    work_passed("not-executable-126");
}

#[test]
fn work_stdin_passthrough() {
    let mut sc = Scenario::new("work-stdin");
    let ws = ws_arg(&sc);
    let l = Launch {
        stdin: Some(b"hi\nthere\n".to_vec()),
        ..Launch::default()
    };
    let cmd = format!("{SANDBOX_PROOF}cat");
    let o = sc.workfence(&["run", "-C", &ws, "--", "sh", "-c", &cmd], &l);
    assert_ok(&o, "stdin passthrough");
    assert_sandboxed(&sc, &o, "stdin passthrough");
    assert!(o.stdout.ends_with("]\nhi\nthere\n"), "{}", o.show());
    work_passed("stdin-passthrough");
}

#[test]
fn work_stdout_stderr_passthrough() {
    let mut sc = Scenario::new("work-stdio");
    let o = sandboxed(&mut sc, "echo to-stdout; echo to-stderr >&2", &[]);
    assert_ok(&o, "stdio");
    assert!(o.stdout.contains("to-stdout"), "{}", o.show());
    assert!(!o.stdout.contains("to-stderr"), "{}", o.show());
    assert!(o.stderr.contains("to-stderr"), "{}", o.show());
    work_passed("stdout-stderr-passthrough");
}

// ------------------------------------------------------------------ flags

#[test]
fn work_cwd_flag() {
    let mut sc = Scenario::new("work-cwd");
    fs::create_dir_all(sc.ws.join("sub/dir")).unwrap();
    let cwd = sc.ws.join("sub/dir");
    let o = sandboxed(
        &mut sc,
        "pwd -P; echo x > here.txt",
        &["--cwd", cwd.to_str().unwrap()],
    );
    assert_ok(&o, "--cwd");
    let real = fs::canonicalize(&cwd).unwrap();
    assert!(
        o.stdout.lines().any(|l| l == real.to_str().unwrap()),
        "{}",
        o.show()
    );
    assert!(cwd.join("here.txt").exists());
    work_passed("cwd-flag");
}

#[test]
fn work_read_only_mode() {
    let mut sc = Scenario::new("work-ro");
    let o = sandboxed(
        &mut sc,
        r#"
echo x > "$WS/ro-write" 2>/dev/null; echo "WSWRITE $?"
echo y > /tmp/ro-tmp && cat /tmp/ro-tmp
echo z > "${TMPDIR:-/tmp}/ro-tmpdir" && cat "${TMPDIR:-/tmp}/ro-tmpdir"
cat README.md
"#,
        &["--mode", "read-only"],
    );
    assert!(o.started(), "{}", o.show());
    assert!(
        !sc.ws.join("ro-write").exists(),
        "wrote to $WS in read-only mode\n{}",
        o.show()
    );
    assert_ne!(o.field("WSWRITE").as_deref(), Some("0"), "{}", o.show());
    assert!(
        o.stdout.lines().any(|l| l == "y"),
        "/tmp not writable\n{}",
        o.show()
    );
    assert!(
        o.stdout.lines().any(|l| l == "z"),
        "$TMPDIR not writable\n{}",
        o.show()
    );
    assert!(
        o.stdout.contains("hello"),
        "workspace not readable\n{}",
        o.show()
    );
    work_passed("read-only-mode");
}

#[test]
fn work_allow_write() {
    let mut sc = Scenario::new("work-allow-write");
    let extra = sc.root.join("extra");
    fs::create_dir_all(&extra).unwrap();
    let o = proved(
        &mut sc,
        "echo x > \"$EXTRA/f\"",
        &Launch {
            wf_args: vec!["--allow-write".into(), extra.clone().into_os_string()],
            env: vec![("EXTRA".into(), extra.clone().into_os_string())],
            ..Launch::default()
        },
    );
    assert_ok(&o, "--allow-write");
    assert_eq!(read_lossy(&extra.join("f")), "x\n");
    work_passed("allow-write");
}

#[test]
fn work_deny_read() {
    let mut sc = Scenario::new("work-deny-read");
    let notes = sc.h.join("notes.txt");
    fs::write(&notes, format!("private-{}\n", sc.token)).unwrap();
    let o = sandboxed(
        &mut sc,
        "cat \"$H/notes.txt\"; cat README.md",
        &["--deny-read", notes.to_str().unwrap()],
    );
    assert!(o.started(), "{}", o.show());
    assert!(
        !o.stdout.contains(&format!("private-{}", sc.token)),
        "{}",
        o.show()
    );
    assert!(o.stdout.contains("hello"), "{}", o.show());
    work_passed("deny-read");
}

#[test]
fn work_env_set() {
    let mut sc = Scenario::new("work-env-set");
    let o = sandboxed(&mut sc, "echo \"A=$A\"", &["--env-set", "A=b"]);
    assert_ok(&o, "--env-set");
    assert!(o.stdout.lines().any(|l| l == "A=b"), "{}", o.show());
    work_passed("env-set");
}

#[test]
fn work_env_keep() {
    let mut sc = Scenario::new("work-env-keep");
    let o = proved(
        &mut sc,
        "env",
        &Launch {
            wf_args: vec!["--env-keep".into(), "GITHUB_TOKEN".into()],
            env: vec![
                ("GITHUB_TOKEN".into(), "wf-kept-token".into()),
                ("OPENAI_API_KEY".into(), "wf-dropped-key".into()),
            ],
            ..Launch::default()
        },
    );
    assert_ok(&o, "--env-keep");
    assert!(
        o.stdout.contains("GITHUB_TOKEN=wf-kept-token"),
        "{}",
        o.show()
    );
    assert!(!o.stdout.contains("wf-dropped-key"), "{}", o.show());
    work_passed("env-keep");
}

#[test]
fn work_keep_fd() {
    let mut sc = Scenario::new("work-keep-fd");
    fs::write(sc.out.join("fd8.txt"), "").unwrap();
    let o = proved(
        &mut sc,
        "ls /proc/$$/fd | tr '\\n' ' '; echo; echo kept >&8",
        &Launch {
            wf_args: vec!["--keep-fd".into(), "8".into()],
            prefix: [
                "sh",
                "-c",
                "exec 8>>\"$OUT/fd8.txt\"; exec \"$@\"",
                "wfwrap",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
            ..Launch::default()
        },
    );
    assert_ok(&o, "--keep-fd 8");
    assert_eq!(
        read_lossy(&sc.out.join("fd8.txt")),
        "kept\n",
        "{}",
        o.show()
    );
    work_passed("keep-fd");
}

#[test]
fn work_full_access_says_so() {
    let mut sc = Scenario::new("work-full-access");
    // The one case that runs unsandboxed by design: no sandbox proof; workfence must say so.
    let o = sc.run_script(
        Mode::Sandboxed,
        "echo x > \"$OUT/fa\"",
        &Launch {
            wf_args: vec!["--mode".into(), "full-access".into()],
            ..Launch::default()
        },
    );
    assert_ok(&o, "--mode full-access");
    assert!(sc.out.join("fa").exists());
    assert!(
        o.stderr.to_lowercase().contains("full-access"),
        "full-access must say so on stderr\n{}",
        o.show()
    );
    work_passed("full-access");
}

// ------------------------------------------------------------------ doctor, explain

#[test]
fn work_doctor_exit_0() {
    let mut sc = Scenario::new("work-doctor");
    let o = wf(&mut sc, &["doctor"]);
    assert_eq!(
        o.code,
        Some(0),
        "doctor must pass on this host\n{}",
        o.show()
    );
    let t = o.stdout.to_lowercase();
    assert!(
        t.contains("landlock") && t.contains("namespace"),
        "{}",
        o.show()
    );
    work_passed("doctor");
}

#[test]
fn work_explain_sections() {
    let mut sc = Scenario::new("work-explain");
    let ws = ws_arg(&sc);
    let o = wf(&mut sc, &["explain", "-C", &ws]);
    assert_eq!(o.code, Some(0), "{}", o.show());
    let t = o.stdout.to_lowercase();
    for s in ["mount", "landlock", "seccomp"] {
        assert!(t.contains(s), "explain lacks a '{s}' section\n{}", o.show());
    }
    assert!(
        o.stdout.contains(&ws),
        "explain does not show the workspace\n{}",
        o.show()
    );
    work_passed("explain");
}

// ------------------------------------------------------------------ bad input

/// A run that must be refused before the command starts (so no sandbox proof can run).
fn refused_run(sc: &mut Scenario, script: &str) -> Outcome {
    sc.run_script(Mode::Sandboxed, script, &Launch::default())
}

fn assert_refused_config(o: &Outcome, sc: &Scenario, file_line: &str, key: &str) {
    assert_eq!(o.code, Some(125), "{}", o.show());
    assert!(!o.started(), "the command ran\n{}", o.show());
    assert!(!sc.ws.join("ran").exists(), "the command ran");
    assert!(
        o.stderr.contains(file_line),
        "stderr lacks '{file_line}'\n{}",
        o.show()
    );
    assert!(
        o.stderr.contains(key),
        "stderr lacks the key '{key}'\n{}",
        o.show()
    );
}

#[test]
fn bad_config_unknown_key() {
    let mut sc = Scenario::new("bad-config-key");
    sc.user_config("network = \"off\"\nbogus_key = 1\n");
    let o = refused_run(&mut sc, "touch \"$WS/ran\"");
    assert_refused_config(&o, &sc, "config.toml:2", "bogus_key");
    work_passed("bad-config-unknown-key");
}

#[test]
fn bad_config_wrong_type() {
    let mut sc = Scenario::new("bad-config-type");
    sc.user_config("mode = \"workspace-write\"\n\nmax_processes = \"many\"\n");
    let o = refused_run(&mut sc, "touch \"$WS/ran\"");
    assert_refused_config(&o, &sc, "config.toml:3", "max_processes");
    work_passed("bad-config-wrong-type");
}

#[test]
fn bad_config_relative_path() {
    let mut sc = Scenario::new("bad-config-rel");
    sc.user_config("allow_write = [\"relative/dir\"]\n");
    let o = refused_run(&mut sc, "touch \"$WS/ran\"");
    assert_refused_config(&o, &sc, "config.toml:1", "allow_write");
    work_passed("bad-config-relative-path");
}

#[test]
fn bad_config_in_workspace() {
    let mut sc = Scenario::new("bad-config-ws");
    fs::create_dir_all(sc.ws.join(".workfence")).unwrap();
    fs::write(
        sc.ws.join(".workfence/config.toml"),
        "network = \"off\"\nnope = true\n",
    )
    .unwrap();
    let o = refused_run(&mut sc, "touch \"$WS/ran\"");
    assert_refused_config(&o, &sc, "config.toml:2", "nope");
    work_passed("bad-config-workspace");
}

#[test]
fn bad_missing_workspace() {
    let mut sc = Scenario::new("bad-missing-ws");
    let missing = sc.root.join("does-not-exist");
    let o = wf(
        &mut sc,
        &[
            "run",
            "-C",
            missing.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo __wf_started__",
        ],
    );
    assert_eq!(o.code, Some(125), "{}", o.show());
    assert!(!o.started(), "{}", o.show());
    assert!(!o.stderr.trim().is_empty(), "no reason on stderr");
    work_passed("missing-workspace-125");
}

#[test]
fn bad_unknown_flag() {
    let mut sc = Scenario::new("bad-flag");
    let o = wf(
        &mut sc,
        &[
            "run",
            "--no-such-flag",
            "--",
            "sh",
            "-c",
            "echo __wf_started__",
        ],
    );
    assert_ne!(o.code, Some(0), "{}", o.show());
    assert!(!o.started(), "{}", o.show());
    assert!(
        o.stderr.to_lowercase().contains("usage"),
        "no usage\n{}",
        o.show()
    );
    work_passed("unknown-flag");
}

fn odd_workspace(name: &str, ws_name: OsString) {
    if !need(name, &["git"]) {
        return;
    }
    let mut sc = Scenario::with(
        name,
        ScenarioOpts {
            ws_kind: WsKind::Repo,
            ws_name,
        },
    );
    let o = sandboxed(
        &mut sc,
        "set -e\necho x > f.txt\ngit add f.txt\ngit commit -q -m odd\necho done",
        &[],
    );
    assert_ok(&o, name);
    assert_eq!(read_lossy(&sc.ws.join("f.txt")), "x\n");
    let log = host_git(&sc.ws, &sc.h, &["log", "--format=%s"]);
    assert!(log.contains("odd"), "{log}");
    work_passed(name);
}

#[test]
fn workspace_with_spaces_and_newline() {
    odd_workspace(
        "ws-spaces-newline",
        OsString::from("my ws\nwith 'quotes' and $dollar"),
    );
}

#[test]
fn workspace_non_utf8_name() {
    odd_workspace(
        "ws-non-utf8",
        std::os::unix::ffi::OsStringExt::from_vec(b"ws-\xff\xfe-\xc3\x28".to_vec()),
    );
}

// ------------------------------------------------------------------ concurrency, kill, pty

/// Starts `workfence run -C $WS -- sh -c <proof + script>` without waiting (stdout and
/// stderr to files under the scenario root).
fn spawn_sandboxed(
    sc: &Scenario,
    script: &str,
    tag: &str,
) -> (std::process::Child, PathBuf, PathBuf) {
    let so = sc.root.join(format!("{tag}.stdout"));
    let se = sc.root.join(format!("{tag}.stderr"));
    let child = Command::new(bin())
        .arg("run")
        .arg("-C")
        .arg(&sc.ws)
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(format!("echo {SENTINEL}\n{}", with_proof(script)))
        .current_dir(&sc.ws)
        .env_clear()
        .envs(sc.base_env())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&so).unwrap())
        .stderr(fs::File::create(&se).unwrap())
        .spawn()
        .expect("spawn workfence");
    (child, so, se)
}

/// Waits for a child (killing it at `cap`) and builds its Outcome.
fn finish(
    mut child: std::process::Child,
    so: &Path,
    se: &Path,
    started: Instant,
    cap: Duration,
) -> Outcome {
    let mut hung = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if started.elapsed() > cap {
            hung = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        mode: Mode::Sandboxed,
        code: status.code(),
        signal: status.signal(),
        stdout: read_lossy(so),
        stderr: read_lossy(se),
        started,
        exited: Instant::now(),
        hung,
        killed_at: None,
    }
}

#[test]
fn work_concurrent_runs_on_one_workspace() {
    if !need("work-concurrent", &["git"]) {
        return;
    }
    let sc = Scenario::new("work-concurrent");
    let before = dir_listing(&sc.ws);
    let started = Instant::now();
    // Four runs at once, each editing its own file and committing it; git's own locks
    // make concurrent commits fail now and then, so each retries (bounded).
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let script = format!(
                r#"set -e
echo "edit {i}" > f{i}.txt
echo "more {i}" >> README.md.{i}
n=0
until git add f{i}.txt 2>/dev/null && git commit -q -m "par {i}" -- f{i}.txt 2>/dev/null; do
    n=$((n+1)); [ $n -lt 300 ] || exit 9; sleep 0.05
done
echo "COMMITTED {i}"
"#
            );
            spawn_sandboxed(&sc, &script, &format!("par{i}"))
        })
        .collect();
    let outs: Vec<Outcome> = runs
        .into_iter()
        .map(|(c, so, se)| finish(c, &so, &se, started, Duration::from_secs(60)))
        .collect();
    for (i, o) in outs.iter().enumerate() {
        assert_ok(o, &format!("concurrent run {i}"));
        assert_sandboxed(&sc, o, &format!("concurrent run {i}"));
        assert_eq!(
            o.field("COMMITTED").as_deref(),
            Some(i.to_string().as_str()),
            "{}",
            o.show()
        );
    }
    let log = host_git(&sc.ws, &sc.h, &["log", "--format=%s"]);
    for i in 0..4 {
        assert!(
            log.lines().any(|l| l == format!("par {i}")),
            "host log: {log}"
        );
        assert_eq!(
            read_lossy(&sc.ws.join(format!("f{i}.txt"))),
            format!("edit {i}\n")
        );
    }
    host_git(&sc.ws, &sc.h, &["fsck", "--no-progress"]);
    let status = host_git(&sc.ws, &sc.h, &["status", "--porcelain"]);
    assert!(
        !status
            .lines()
            .any(|l| l.contains("f0.txt") || l.contains("f3.txt")),
        "uncommitted: {status}"
    );
    // Nothing but what the runs wrote is left at the top (no placeholders).
    let mut want = before.clone();
    for i in 0..4 {
        want.push(format!("f{i}.txt").into());
        want.push(format!("README.md.{i}").into());
    }
    want.sort();
    assert_eq!(
        dir_listing(&sc.ws),
        want,
        "top-level listing after 4 concurrent runs"
    );
    work_passed("concurrent-runs-one-workspace");
}

#[test]
fn work_sigkill_of_workfence_leaves_nothing() {
    let mut sc = Scenario::new("work-sigkill");
    let before = dir_listing(&sc.ws);
    let l = Launch {
        kill_when_marker: Some("{MARK}1".into()),
        ..Launch::default()
    };
    let o = proved(&mut sc, "sleep ${MARK}1 &\nsleep ${MARK}2\n", &l);
    assert!(
        o.killed_at.is_some(),
        "the harness did not SIGKILL workfence\n{}",
        o.show()
    );
    assert_eq!(o.signal, Some(9), "{}", o.show());
    // Bounded waits (not speed assertions): the sandbox dies with workfence, and the
    // guard removes the placeholders once it is gone.
    let ws = sc.ws.as_os_str().as_encoded_bytes().to_vec();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = sc.leftovers();
        let runs = pids_where(|a| a == ws.as_slice());
        let listing = dir_listing(&sc.ws);
        if left.is_empty() && runs.is_empty() && listing == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after SIGKILL: sandbox processes {left:?}, workfence processes {runs:?}, \
             top-level listing {listing:?} (before: {before:?})\n{}",
            o.show()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    work_passed("sigkill-leaves-nothing");
}

#[test]
fn work_pty_is_a_terminal() {
    let mut sc = Scenario::new("work-pty");
    let o = sandboxed(
        &mut sc,
        "tty; test -t 0 && echo STDIN_TTY; test -t 1 && echo STDOUT_TTY; test -t 2 && echo STDERR_TTY; true",
        &["--pty"],
    );
    assert_ok(&o, "--pty");
    for k in ["STDIN_TTY", "STDOUT_TTY", "STDERR_TTY"] {
        assert!(
            o.stdout.lines().any(|l| l.trim() == k),
            "no {k}\n{}",
            o.show()
        );
    }
    assert!(
        o.stdout.lines().any(|l| l.trim().starts_with("/dev/pts/")),
        "tty(1) did not name a pty\n{}",
        o.show()
    );
    work_passed("pty-is-a-terminal");
}

// ------------------------------------------------------------------ exec rules

fn assert_exec_refused(o: &Outcome, verb: &str) {
    assert_eq!(o.code, Some(125), "exec rule: expected 125\n{}", o.show());
    assert!(
        o.stderr
            .contains(&format!("the exec rules {verb} this command")),
        "stderr lacks the exec-rule reason\n{}",
        o.show()
    );
}

#[test]
fn work_exec_rules_user_config() {
    if !need("work-exec-rules", &["git"]) {
        return;
    }
    let mut sc = Scenario::new("work-exec-rules");
    sc.user_config(
        "exec_rules = [\n  { prefix = [\"git\", \"push\"], decision = \"forbidden\" },\n  { prefix = [\"touch\"], decision = \"prompt\" },\n]\n",
    );
    let ws = ws_arg(&sc);
    let o = wf(
        &mut sc,
        &["run", "-C", &ws, "--", "git", "push", "origin", "main"],
    );
    assert_exec_refused(&o, "forbid");
    let ran = sc.ws.join("ran");
    let o = wf(
        &mut sc,
        &["run", "-C", &ws, "--", "touch", ran.to_str().unwrap()],
    );
    assert_exec_refused(&o, "require approval for");
    assert!(!ran.exists(), "a refused command ran");
    // What no rule matches still runs (sandboxed).
    let o = sandboxed(&mut sc, "git status --short; echo ALLOWED", &[]);
    assert_ok(&o, "a command no exec rule matches");
    assert!(o.stdout.lines().any(|l| l == "ALLOWED"), "{}", o.show());
    work_passed("exec-rules-user-config");
}

#[test]
fn work_exec_rules_workspace_config_narrows() {
    let mut sc = Scenario::new("work-exec-rules-ws");
    fs::create_dir_all(sc.ws.join(".workfence")).unwrap();
    fs::write(
        sc.ws.join(".workfence/config.toml"),
        "exec_rules = [{ prefix = [\"touch\"], decision = \"forbidden\" }]\n",
    )
    .unwrap();
    sc.resnapshot();
    let ws = ws_arg(&sc);
    let ran = sc.ws.join("ran");
    let o = wf(
        &mut sc,
        &[
            "run",
            "-C",
            &ws,
            "--",
            "/usr/bin/touch",
            ran.to_str().unwrap(),
        ],
    );
    assert_exec_refused(&o, "forbid");
    assert!(!ran.exists(), "a refused command ran");
    let o = sandboxed(&mut sc, "echo ALLOWED", &[]);
    assert_ok(&o, "a command no exec rule matches");
    work_passed("exec-rules-workspace-config");
}

// ------------------------------------------------------------------ env-keep of a value

#[test]
fn work_env_keep_token_shaped_value() {
    let mut sc = Scenario::new("work-env-keep-value");
    let deploy = format!("ghp_{}", "AbCdEfGhJkMnPqRsTuVwXyZ23456789abcde");
    let other = format!("sk-ant-api03-{}", sc.token.replace('x', "Q"));
    let o = proved(
        &mut sc,
        "env",
        &Launch {
            wf_args: vec!["--env-keep".into(), "DEPLOY".into()],
            env: vec![
                ("DEPLOY".into(), deploy.clone().into()),
                ("CLAUDE_CFG".into(), other.clone().into()),
            ],
            ..Launch::default()
        },
    );
    assert_ok(&o, "--env-keep DEPLOY");
    assert!(
        o.stdout.lines().any(|l| l == format!("DEPLOY={deploy}")),
        "--env-keep DEPLOY did not bring it back\n{}",
        o.show()
    );
    // Only the kept one: another token-shaped value stays scrubbed.
    assert!(
        !o.stdout.contains(&other),
        "CLAUDE_CFG's token leaked\n{}",
        o.show()
    );
    work_passed("env-keep-token-shaped-value");
}

/// A unix datagram socket connected to a peer inside the sandbox sends with
/// sendmsg (the broker sends it from a copy, to the connected peer only), and one
/// carrying fds in control data is refused.
#[test]
fn work_connected_unix_datagram_sendmsg() {
    let mut sc = Scenario::new("work-dgram");
    let o = sandboxed(
        &mut sc,
        r#"set -e
cat > d.py <<'EOF'
import os, socket, array
a, b = "/tmp/wf-dgram-a", "/tmp/wf-dgram-b"
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); r.bind(a)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(b); s.connect(a)
n = s.sendmsg([b"hello ", b"dgram"])
print("SENT", n, r.recv(64).decode())
try:
    s.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0]))])
    print("FDS sent")
except OSError as e:
    print("FDS refused", e.errno)
EOF
"$PY" d.py
"#,
        &[],
    );
    assert_ok(&o, "connected datagram sendmsg");
    assert!(o.stdout.contains("SENT 11 hello dgram"), "{}", o.show());
    assert!(o.stdout.contains("FDS refused"), "{}", o.show());
    work_passed("connected-unix-datagram-sendmsg");
}
