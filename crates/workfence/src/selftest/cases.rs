//! The catalogue of the self-test: every case, with how it prepares the host side,
//! the argv it runs (the same for the control and the sandboxed half), how it is judged
//! from outside, and its cleanup.

use super::*;

// ---------------------------------------------------------------------------------------
// The catalogue
// ---------------------------------------------------------------------------------------

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// `probe exec-to <log> <program> args...`: the program's output goes to the case's log
/// file in the workspace, not to the self-test's stdout.
fn exec_to(env: &Env, id: &str, prog: &Path, args: &[OsString]) -> Vec<OsString> {
    let mut a = vec![
        os(format!(".selftest-{}.log", slug(id))),
        prog.as_os_str().to_os_string(),
    ];
    a.extend(args.iter().cloned());
    env.probe_argv(id, "exec-to", &a)
}

fn read_ws(env: &Env, rel: &str) -> String {
    fs::read_to_string(env.ws.join(rel)).unwrap_or_default()
}

fn remove_ws(env: &Env, rel: &str) {
    let p = env.ws.join(rel);
    let _ = fs::remove_file(&p);
    let _ = fs::remove_dir_all(&p);
}

/// Every case id of this OS's catalogue, in order (`sandbox/starts` first).
pub fn case_ids() -> Vec<&'static str> {
    let mut v = vec!["sandbox/starts"];
    v.extend(catalogue().iter().map(|c| c.id));
    v
}

pub(super) fn catalogue() -> Vec<Case> {
    let mut v = compat_cases();
    v.extend(attack_cases());
    v.extend(windows_cases());
    v
}

fn compat_cases() -> Vec<Case> {
    vec![
        Case {
            id: "compat/shell",
            kind: Kind::Compat,
            what: "the platform shell runs a command with a redirect into the workspace",
            tools: if cfg!(windows) { &["cmd"] } else { &["sh"] },
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: no_prepare,
            argv: |_, _, _| {
                if cfg!(windows) {
                    vec![os("cmd"), os("/d"), os("/c"), os("echo ok> shell.out")]
                } else {
                    vec![os("sh"), os("-c"), os("echo ok > shell.out")]
                }
            },
            judge: |env, _| Ok(read_ws(env, "shell.out").trim() == "ok"),
            cleanup: |env| remove_ws(env, "shell.out"),
        },
        Case {
            id: "compat/null-device",
            kind: Kind::Compat,
            what: "a redirect to the null device works",
            tools: if cfg!(windows) { &["cmd"] } else { &["sh"] },
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: no_prepare,
            argv: |_, _, _| {
                if cfg!(windows) {
                    vec![
                        os("cmd"),
                        os("/d"),
                        os("/c"),
                        os("echo x> NUL && echo ok> null.out"),
                    ]
                } else {
                    vec![
                        os("sh"),
                        os("-c"),
                        os("echo x > /dev/null && echo ok > null.out"),
                    ]
                }
            },
            judge: |env, _| Ok(read_ws(env, "null.out").trim() == "ok"),
            cleanup: |env| remove_ws(env, "null.out"),
        },
        Case {
            id: "compat/git-status",
            kind: Kind::Compat,
            what: "`git status` in the workspace",
            tools: &["git"],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: no_prepare,
            argv: |env, id, _| {
                let git = env.git.clone().unwrap_or_default();
                exec_to(env, id, &git, &[os("status"), os("--porcelain")])
            },
            judge: |_, _| Ok(true),
            cleanup: no_cleanup,
        },
        Case {
            id: "compat/git-commit",
            kind: Kind::Compat,
            what: "`git commit` in the workspace (judged by the host's `git rev-list`)",
            tools: &["git"],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let n = env
                    .host_git(&["rev-list", "--count", "HEAD"])
                    .ok_or("host git rev-list failed")?;
                Ok(Fixture {
                    note: n.trim().to_string(),
                    ..Fixture::default()
                })
            },
            argv: |env, id, _| {
                let git = env.git.clone().unwrap_or_default();
                let mut a: Vec<OsString> = GIT_IDENTITY.iter().map(os).collect();
                a.extend(
                    [
                        "commit",
                        "-q",
                        "--no-verify",
                        "--allow-empty",
                        "-m",
                        "selftest",
                    ]
                    .iter()
                    .map(os),
                );
                exec_to(env, id, &git, &a)
            },
            judge: |env, fx| {
                let n = env
                    .host_git(&["rev-list", "--count", "HEAD"])
                    .ok_or("host git rev-list failed")?;
                Ok(n.trim() != fx.note)
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "compat/python-multiprocessing",
            kind: Kind::Compat,
            what: "Python `multiprocessing` (a pool and a queue)",
            tools: &["python"],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                fs::write(env.ws.join("mp_selftest.py"), PY_MP).map_err(|e| e.to_string())?;
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                let py = python().unwrap_or_default();
                exec_to(env, id, &py, &[os("mp_selftest.py")])
            },
            judge: |env, _| Ok(read_ws(env, "mp.out").trim() == "285"),
            cleanup: |env| remove_ws(env, "mp.out"),
        },
        Case {
            id: "compat/node-child-process",
            kind: Kind::Compat,
            what: "Node `child_process.spawn` with piped stdio",
            tools: &["node"],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                fs::write(env.ws.join("child_selftest.js"), NODE_CHILD)
                    .map_err(|e| e.to_string())?;
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                let node = find_program("node").unwrap_or_default();
                exec_to(env, id, &node, &[os("child_selftest.js")])
            },
            judge: |env, _| Ok(read_ws(env, "node.out").trim() == "42"),
            cleanup: |env| remove_ws(env, "node.out"),
        },
        Case {
            id: "compat/cargo-build",
            kind: Kind::Compat,
            what: "`cargo build --offline` of a tiny crate",
            tools: &["cargo"],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let d = env.ws.join("tiny");
                fs::create_dir_all(d.join("src")).map_err(|e| e.to_string())?;
                fs::write(
                    d.join("Cargo.toml"),
                    "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
                )
                .map_err(|e| e.to_string())?;
                fs::write(d.join("src/main.rs"), "fn main() {}\n").map_err(|e| e.to_string())?;
                let target = d.join("target").to_string_lossy().into_owned();
                Ok(Fixture {
                    env_set: vec![("CARGO_TARGET_DIR".into(), target)],
                    ..Fixture::default()
                })
            },
            argv: |env, id, _| {
                let cargo = find_program("cargo").unwrap_or_default();
                exec_to(
                    env,
                    id,
                    &cargo,
                    &[
                        os("build"),
                        os("--offline"),
                        os("-q"),
                        os("--manifest-path"),
                        env.ws.join("tiny/Cargo.toml").into_os_string(),
                    ],
                )
            },
            judge: |env, _| {
                let exe = if cfg!(windows) { "tiny.exe" } else { "tiny" };
                Ok(env.ws.join("tiny/target/debug").join(exe).is_file())
            },
            cleanup: |env| remove_ws(env, "tiny/target"),
        },
        Case {
            id: "compat/cc-make",
            kind: Kind::Compat,
            what: "`make` compiles and runs a C program with `cc`",
            tools: &["make", "cc"],
            unavailable: if cfg!(windows) {
                Some("not on Windows (cc and make are not the platform's toolchain)")
            } else {
                None
            },
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                fs::write(env.ws.join("hello_selftest.c"), C_HELLO).map_err(|e| e.to_string())?;
                fs::write(env.ws.join("Makefile"), MAKEFILE).map_err(|e| e.to_string())?;
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                let make = find_program("make").unwrap_or_default();
                exec_to(env, id, &make, &[os("-s"), os("selftest-run")])
            },
            judge: |env, _| Ok(read_ws(env, "cc.out").trim() == "ok"),
            cleanup: |env| {
                remove_ws(env, "cc.out");
                remove_ws(env, "hello_selftest");
            },
        },
        Case {
            id: "compat/powershell",
            kind: Kind::Compat,
            what: "Windows PowerShell starts and writes a file",
            tools: &["powershell"],
            unavailable: if cfg!(windows) {
                None
            } else {
                Some("Windows only")
            },
            control_needs: None,
            platform_limit: None,
            prepare: no_prepare,
            argv: |env, id, _| {
                let ps = find_program("powershell").unwrap_or_default();
                exec_to(
                    env,
                    id,
                    &ps,
                    &[
                        os("-NoProfile"),
                        os("-NonInteractive"),
                        os("-Command"),
                        os("Set-Content -Path ps.out -Value ok"),
                    ],
                )
            },
            judge: |env, _| Ok(read_ws(env, "ps.out").trim() == "ok"),
            cleanup: |env| remove_ws(env, "ps.out"),
        },
    ]
}

const PY_MP: &str = r#"import multiprocessing as mp

def sq(x):
    return x * x

if __name__ == "__main__":
    with mp.Pool(2) as pool:
        total = sum(pool.map(sq, range(10)))
    q = mp.Queue()
    p = mp.Process(target=q.put, args=(total,))
    p.start()
    got = q.get(timeout=60)
    p.join()
    with open("mp.out", "w") as f:
        f.write(str(got))
"#;

const NODE_CHILD: &str = r#"const { spawn } = require("child_process");
const fs = require("fs");
const c = spawn(process.execPath, ["-e", "process.stdin.pipe(process.stdout)"], { stdio: ["pipe", "pipe", "inherit"] });
let out = "";
c.stdout.on("data", (d) => { out += d; });
c.on("close", (code) => {
  fs.writeFileSync("node.out", out.trim());
  process.exit(code);
});
c.stdin.end("42\n");
"#;

const C_HELLO: &str = r#"#include <stdio.h>
int main(void) {
    FILE *f = fopen("cc.out", "w");
    if (!f) return 1;
    fputs("ok\n", f);
    return fclose(f) == 0 ? 0 : 1;
}
"#;

const MAKEFILE: &str = "selftest-run: hello_selftest\n\t./hello_selftest\n\nhello_selftest: hello_selftest.c\n\tcc -o hello_selftest hello_selftest.c\n";

/// The original content of the outside files.
fn original(env: &Env) -> String {
    format!("original {}\n", env.token)
}

fn outside_file(env: &Env, name: &str) -> Result<PathBuf, String> {
    let p = env.outside.join(name);
    fs::write(&p, original(env)).map_err(|e| format!("create {}: {e}", p.display()))?;
    Ok(p)
}

fn unchanged(env: &Env, p: &Path) -> bool {
    fs::read_to_string(p).is_ok_and(|s| s == original(env))
}

/// Puts `.git` back after a control renamed it.
fn restore_git(env: &Env) {
    let moved = env.ws.join(".git-moved");
    if moved.exists() && !env.ws.join(".git").exists() {
        let _ = fs::rename(&moved, env.ws.join(".git"));
    }
}

fn git_config(env: &Env) -> PathBuf {
    env.ws.join(".git/config")
}

fn attack_cases() -> Vec<Case> {
    vec![
        Case {
            id: "attack/write-outside",
            kind: Kind::Attack,
            what: "overwrite a file outside the workspace",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                outside_file(env, "victim-write.txt")?;
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                env.probe_argv(id, "write", &[os(env.outside.join("victim-write.txt"))])
            },
            judge: |env, _| Ok(!unchanged(env, &env.outside.join("victim-write.txt"))),
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/create-outside",
            kind: Kind::Attack,
            what: "create a file outside the workspace",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let _ = fs::remove_file(env.outside.join("created.txt"));
                Ok(Fixture::default())
            },
            argv: |env, id, _| env.probe_argv(id, "create", &[os(env.outside.join("created.txt"))]),
            judge: |env, _| Ok(env.outside.join("created.txt").exists()),
            cleanup: |env| {
                let _ = fs::remove_file(env.outside.join("created.txt"));
            },
        },
        Case {
            id: "attack/delete-outside",
            kind: Kind::Attack,
            what: "delete a file outside the workspace",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                outside_file(env, "victim-delete.txt")?;
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                env.probe_argv(id, "delete", &[os(env.outside.join("victim-delete.txt"))])
            },
            judge: |env, _| Ok(!unchanged(env, &env.outside.join("victim-delete.txt"))),
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/rename-outside",
            kind: Kind::Attack,
            what: "rename a file outside the workspace",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let _ = fs::remove_file(env.outside.join("renamed.txt"));
                outside_file(env, "victim-rename.txt")?;
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                env.probe_argv(
                    id,
                    "rename",
                    &[
                        os(env.outside.join("victim-rename.txt")),
                        os(env.outside.join("renamed.txt")),
                    ],
                )
            },
            judge: |env, _| {
                Ok(!unchanged(env, &env.outside.join("victim-rename.txt"))
                    || env.outside.join("renamed.txt").exists())
            },
            cleanup: |env| {
                let _ = fs::remove_file(env.outside.join("renamed.txt"));
            },
        },
        Case {
            id: "attack/git-rename",
            kind: Kind::Attack,
            what: "rename the workspace's `.git` (to plant a new one with a hostile config)",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                restore_git(env);
                if !env.ws.join(".git/config").is_file() {
                    return Err("the workspace has no .git/config".into());
                }
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                env.probe_argv(
                    id,
                    "rename",
                    &[os(env.ws.join(".git")), os(env.ws.join(".git-moved"))],
                )
            },
            judge: |env, _| {
                Ok(!env.ws.join(".git/config").is_file() || env.ws.join(".git-moved").exists())
            },
            cleanup: restore_git,
        },
        Case {
            id: "attack/git-hook",
            kind: Kind::Attack,
            what: "create `.git/hooks/pre-commit` (code the host's git would run)",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let _ = fs::remove_file(env.ws.join(".git/hooks/pre-commit"));
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                env.probe_argv(id, "create", &[os(env.ws.join(".git/hooks/pre-commit"))])
            },
            judge: |env, _| Ok(env.ws.join(".git/hooks/pre-commit").exists()),
            cleanup: |env| {
                let _ = fs::remove_file(env.ws.join(".git/hooks/pre-commit"));
            },
        },
        Case {
            id: "attack/git-config",
            kind: Kind::Attack,
            what: "append to `.git/config` (core.fsmonitor and friends run host code)",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let text = fs::read_to_string(git_config(env)).map_err(|e| e.to_string())?;
                Ok(Fixture {
                    note: text,
                    ..Fixture::default()
                })
            },
            argv: |env, id, _| env.probe_argv(id, "append", &[os(git_config(env))]),
            judge: |env, fx| {
                let now = fs::read_to_string(git_config(env)).unwrap_or_default();
                if now != fx.note {
                    // Put it back (the control changed it on purpose).
                    let _ = fs::write(git_config(env), &fx.note);
                    return Ok(true);
                }
                Ok(false)
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/nested-git-config",
            kind: Kind::Attack,
            what: "create a nested repository's `sub/.git/config`",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                remove_ws(env, "sub");
                Ok(Fixture::default())
            },
            argv: |env, id, _| env.probe_argv(id, "create", &[os(env.ws.join("sub/.git/config"))]),
            judge: |env, _| Ok(read_ws(env, "sub/.git/config").as_bytes() == probe::PAYLOAD),
            cleanup: |env| remove_ws(env, "sub"),
        },
        Case {
            id: "attack/nested-git-hook",
            kind: Kind::Attack,
            what: "create a nested repository's `sub/.git/hooks/pre-commit`",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                remove_ws(env, "sub");
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                env.probe_argv(
                    id,
                    "create",
                    &[os(env.ws.join("sub/.git/hooks/pre-commit"))],
                )
            },
            judge: |env, _| {
                Ok(read_ws(env, "sub/.git/hooks/pre-commit").as_bytes() == probe::PAYLOAD)
            },
            cleanup: |env| remove_ws(env, "sub"),
        },
        Case {
            id: "attack/read-secret",
            kind: Kind::Attack,
            what: "copy a planted secret (hidden by the policy) into the workspace",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                remove_ws(env, "loot.txt");
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                env.probe_argv(id, "copy", &[os(&env.secret), os(env.ws.join("loot.txt"))])
            },
            judge: |env, _| {
                let loot = read_ws(env, "loot.txt");
                Ok(loot.contains(&format!("SECRET-{}", env.token)))
            },
            cleanup: |env| remove_ws(env, "loot.txt"),
        },
        Case {
            id: "attack/read-late-secret",
            kind: Kind::Attack,
            what: "read a hidden secret that the host creates during the run",
            tools: &[],
            unavailable: if cfg!(windows) {
                Some("not claimed on Windows, which hides only the paths that exist when the run starts")
            } else {
                None
            },
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let late = env.late_secret();
                let flag = env.outside.join("late-secret.planted");
                let ready = env.ws.join("late.ready");
                for p in [&late, &flag, &ready] {
                    let _ = fs::remove_file(p);
                }
                remove_ws(env, "late-loot.txt");
                // The host side: a separate process that plants the secret once the
                // command is waiting for it.
                let child = Command::new(&env.probe)
                    .arg(PROBE_ARG)
                    .arg(env.outside.join("late-planter.marker"))
                    .arg("plant-when")
                    .arg(&ready)
                    .arg(&late)
                    .arg(&flag)
                    .arg(format!("LATE-SECRET-{}", env.token))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start the host planter: {e}"))?;
                Ok(Fixture {
                    child: Some(HostChild(child)),
                    args: vec![
                        os(ready),
                        os(flag),
                        os(late),
                        os(env.ws.join("late-loot.txt")),
                    ],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "await-copy", &fx.args),
            judge: |env, _| {
                Ok(read_ws(env, "late-loot.txt").contains(&format!("LATE-SECRET-{}", env.token)))
            },
            cleanup: |env| {
                remove_ws(env, "late-loot.txt");
                remove_ws(env, "late.ready");
                let _ = fs::remove_file(env.late_secret());
            },
        },
        Case {
            id: "attack/network-loopback",
            kind: Kind::Attack,
            what: "send a byte to a host listener on 127.0.0.1",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |_| {
                let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
                let port = l.local_addr().map_err(|e| e.to_string())?.port();
                Ok(Fixture {
                    listener: Some(l),
                    args: vec![os(port.to_string())],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "connect", &fx.args),
            judge: |_, fx| Ok(fx.listener.as_ref().is_some_and(got_byte)),
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/listen-loopback",
            kind: Kind::Attack,
            what: if cfg!(windows) {
                "listen on the proxy's loopback port (47380) and answer a host client"
            } else {
                "listen on a loopback port and answer a host client"
            },
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let port = if cfg!(windows) {
                    workfence_windows::DEFAULT_PROXY_PORT
                } else {
                    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
                    l.local_addr().map_err(|e| e.to_string())?.port()
                };
                let ready = env.ws.join("listen.ready");
                let result = env.outside.join("listen.result");
                let _ = fs::remove_file(&ready);
                let _ = fs::remove_file(&result);
                // The host client: a separate process, so that no thread runs here.
                let child = Command::new(&env.probe)
                    .arg(PROBE_ARG)
                    .arg(env.outside.join("listen-client.marker"))
                    .arg("await-connect")
                    .arg(&ready)
                    .arg(port.to_string())
                    .arg(&result)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start the host client: {e}"))?;
                Ok(Fixture {
                    child: Some(HostChild(child)),
                    args: vec![os(port.to_string()), os(ready)],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "listen", &fx.args),
            judge: |env, fx| {
                if let Some(c) = &mut fx.child {
                    wait_child(&mut c.0, Duration::from_secs(20));
                }
                Ok(env.outside.join("listen.result").exists())
            },
            cleanup: |env| remove_ws(env, "listen.ready"),
        },
        Case {
            id: "attack/kill-host-process",
            kind: Kind::Attack,
            what: "kill a host process (started by the self-test) by pid",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let child = Command::new(&env.probe)
                    .arg(PROBE_ARG)
                    .arg(env.outside.join("victim.marker"))
                    .arg("sleep")
                    .arg("120")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start the victim: {e}"))?;
                let pid = child.id();
                Ok(Fixture {
                    child: Some(HostChild(child)),
                    args: vec![os(pid.to_string())],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "kill", &fx.args),
            judge: |_, fx| {
                let Some(HostChild(c)) = &mut fx.child else {
                    return Err("no victim".into());
                };
                // A kill is delivered before kill(2) returns; allow the reaping a moment.
                let end = Instant::now() + Duration::from_millis(300);
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) => return Ok(true),
                        Ok(None) if Instant::now() < end => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Ok(None) => return Ok(false),
                        Err(e) => return Err(format!("wait for the victim: {e}")),
                    }
                }
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/outlive-run",
            kind: Kind::Attack,
            what: "a daemonized child keeps running after the run returns",
            tools: &[],
            unavailable: None,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                stop_daemon(env);
                remove_ws(env, "daemon.beat");
                remove_ws(env, "daemon.stop");
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                env.probe_argv(
                    id,
                    "daemon",
                    &[
                        os(env.ws.join("daemon.beat")),
                        os(env.ws.join("daemon.stop")),
                    ],
                )
            },
            judge: |env, _| {
                // Alive = still beating, judged from outside a while after the run: two
                // different beats within a second (the daemon beats every 50 ms).
                std::thread::sleep(Duration::from_millis(300));
                let mut seen: Vec<String> = Vec::new();
                for _ in 0..10 {
                    let b = read_ws(env, "daemon.beat");
                    if !b.is_empty() && !seen.contains(&b) {
                        seen.push(b);
                    }
                    if seen.len() >= 2 {
                        return Ok(true);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(false)
            },
            cleanup: stop_daemon,
        },
    ]
}

/// Tells a heartbeat daemon to stop and waits until it does (at most 2 s).
fn stop_daemon(env: &Env) {
    let beat = env.ws.join("daemon.beat");
    if !beat.exists() {
        return;
    }
    let _ = fs::write(env.ws.join("daemon.stop"), b"stop");
    let end = Instant::now() + Duration::from_secs(2);
    let mut last = read_ws(env, "daemon.beat");
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(150));
        let now = read_ws(env, "daemon.beat");
        if now == last {
            break;
        }
        last = now;
    }
    remove_ws(env, "daemon.beat");
}

fn wait_child(c: &mut Child, limit: Duration) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if matches!(c.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Whether a client connected (and sent a byte) since the listener was opened.
fn got_byte(l: &TcpListener) -> bool {
    use std::io::Read;
    let _ = l.set_nonblocking(true);
    let mut hit = false;
    while let Ok((mut s, _)) = l.accept() {
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut b = [0u8; 8];
        if matches!(s.read(&mut b), Ok(n) if n > 0) {
            hit = true;
        }
    }
    hit
}

/// Whether any client connected (WebDAV: the redirector connects, then speaks HTTP).
fn got_connection(l: &TcpListener) -> bool {
    let _ = l.set_nonblocking(true);
    let mut hit = false;
    while l.accept().is_ok() {
        hit = true;
    }
    hit
}

// ---------------------------------------------------------------------------------------
// Windows-only cases
// ---------------------------------------------------------------------------------------

fn icacls_of(p: &Path) -> Result<String, String> {
    let out = Command::new("icacls")
        .arg(p)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("icacls: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DACL of `p` as SDDL, read from outside by PowerShell's `Get-Acl` (locale-free,
/// unlike `icacls`, which prints account names in the system's language). The path is
/// a `-File` argument (bound to `param()` as a value), never spliced into code.
fn dacl_sddl(env: &Env, p: &Path) -> Result<String, String> {
    let script = env.outside.join("dacl-sddl.ps1");
    fs::write(&script, DACL_SDDL_PS1).map_err(|e| format!("write the script: {e}"))?;
    let ps = find_program("powershell").ok_or("powershell is not installed")?;
    let out = Command::new(ps)
        .args([
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-File",
        ])
        .arg(&script)
        .arg(p)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("start powershell (Get-Acl): {e}"))?;
    let sddl = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !sddl.contains("D:") {
        return Err(format!("Get-Acl {} gave no DACL", p.display()));
    }
    Ok(sddl)
}

const DACL_SDDL_PS1: &str = r#"param([string]$Path)
$ErrorActionPreference = 'Stop'
(Get-Acl -LiteralPath $Path).Sddl
"#;

/// Whether an SDDL string holds an explicit (not inherited) allow ACE for Everyone
/// (`WD`): what `icacls <file> /grant *S-1-1-0:(F)` adds.
fn explicit_allow_for_everyone(sddl: &str) -> bool {
    sddl.split('(').skip(1).any(|rest| {
        let ace = rest.split(')').next().unwrap_or("");
        let f: Vec<&str> = ace.split(';').collect();
        f.len() == 6 && f[0] == "A" && !f[1].contains("ID") && f[5] == "WD"
    })
}

/// `X:\rest` as the administrative share over loopback SMB, `\\127.0.0.1\X$\rest`.
fn admin_share_path(p: &Path) -> Option<String> {
    let s = p.to_string_lossy();
    let b = s.as_bytes();
    if b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\' {
        Some(format!(r"\\127.0.0.1\{}$\{}", char::from(b[0]), &s[3..]))
    } else {
        None
    }
}

fn windows_cases() -> Vec<Case> {
    let not_windows = if cfg!(windows) {
        None
    } else {
        Some("Windows only")
    };
    vec![
        Case {
            id: "attack/windows-icacls",
            kind: Kind::Attack,
            what: "`icacls /grant Everyone:F` on a user file outside the workspace",
            tools: &["icacls"],
            unavailable: not_windows,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let p = outside_file(env, "acl-victim.txt")?;
                Ok(Fixture {
                    note: icacls_of(&p)?,
                    ..Fixture::default()
                })
            },
            argv: |env, id, _| {
                let icacls = find_program("icacls").unwrap_or_else(|| PathBuf::from("icacls"));
                exec_to(
                    env,
                    id,
                    &icacls,
                    &[
                        os(env.outside.join("acl-victim.txt")),
                        os("/grant"),
                        os("*S-1-1-0:(F)"),
                    ],
                )
            },
            judge: |env, fx| Ok(icacls_of(&env.outside.join("acl-victim.txt"))? != fx.note),
            cleanup: |env| {
                let _ = fs::remove_file(env.outside.join("acl-victim.txt"));
            },
        },
        Case {
            id: "attack/windows-named-pipe",
            kind: Kind::Attack,
            what: "connect to a host named pipe (a server the self-test starts with its default security descriptor)",
            tools: &["powershell"],
            unavailable: not_windows,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let script = env.outside.join("pipe-server.ps1");
                fs::write(&script, PIPE_SERVER_PS1).map_err(|e| format!("write the script: {e}"))?;
                let ready = env.outside.join("pipe.ready");
                let result = env.outside.join("pipe.result");
                let _ = fs::remove_file(&ready);
                let _ = fs::remove_file(&result);
                let ps = find_program("powershell").ok_or("powershell is not installed")?;
                // The paths are passed as -File arguments (bound to param() as values),
                // never spliced into PowerShell code.
                let child = Command::new(ps)
                    .args(["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File"])
                    .arg(&script)
                    .arg(pipe_name(env))
                    .arg(&ready)
                    .arg(&result)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start the host pipe server: {e}"))?;
                let mut child = HostChild(child);
                let end = Instant::now() + Duration::from_secs(20);
                while !ready.exists() {
                    if Instant::now() > end || matches!(child.0.try_wait(), Ok(Some(_))) {
                        return Err("the host pipe server did not start".into());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(Fixture {
                    child: Some(child),
                    args: vec![os(format!(r"\\.\pipe\{}", pipe_name(env)))],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "open-pipe", &fx.args),
            judge: |env, _| {
                // The server records a connection as soon as it sees one.
                let result = env.outside.join("pipe.result");
                let end = Instant::now() + Duration::from_secs(2);
                while Instant::now() < end {
                    if result.exists() {
                        return Ok(true);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(false)
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/windows-webdav",
            kind: Kind::Attack,
            what: "reach a host listener through a WebDAV path (\\\\127.0.0.1@PORT\\...)",
            tools: &[],
            unavailable: not_windows,
            control_needs: Some("the WebClient service (WebDAV redirector)"),
            platform_limit: None,
            prepare: |_| {
                let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
                let port = l.local_addr().map_err(|e| e.to_string())?.port();
                Ok(Fixture {
                    listener: Some(l),
                    args: vec![os(format!(r"\\127.0.0.1@{port}\DavWWWRoot\x.txt"))],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "read", &fx.args),
            judge: |_, fx| Ok(fx.listener.as_ref().is_some_and(got_connection)),
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/windows-own-file-dacl",
            kind: Kind::Attack,
            what: "create a file in the workspace, then `icacls <it> /grant *S-1-1-0:(F)` (the owner's implicit WRITE_DAC)",
            tools: &["cmd", "icacls", "powershell"],
            unavailable: not_windows,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                remove_ws(env, OWNED_DACL_FILE);
                Ok(Fixture::default())
            },
            argv: |env, id, _| {
                // Fixed text only: the file is named relative to the workspace (the cwd),
                // so no path is quoted into cmd.exe.
                let cmd = find_program("cmd").unwrap_or_else(|| PathBuf::from("cmd"));
                exec_to(
                    env,
                    id,
                    &cmd,
                    &[
                        os("/d"),
                        os("/c"),
                        os(format!(
                            "echo x> {OWNED_DACL_FILE} && icacls {OWNED_DACL_FILE} /grant *S-1-1-0:(F)"
                        )),
                    ],
                )
            },
            judge: |env, _| {
                let p = env.ws.join(OWNED_DACL_FILE);
                if !p.is_file() {
                    // A file that was never created says nothing about its DACL.
                    return Err(format!(
                        "the command did not create {OWNED_DACL_FILE}, so its DACL proves nothing"
                    ));
                }
                Ok(explicit_allow_for_everyone(&dacl_sddl(env, &p)?))
            },
            cleanup: |env| remove_ws(env, OWNED_DACL_FILE),
        },
        Case {
            id: "attack/windows-smb-loopback",
            kind: Kind::Attack,
            what: "overwrite a file outside the workspace through loopback SMB (\\\\127.0.0.1\\C$\\...)",
            tools: &[],
            unavailable: not_windows,
            // The administrative share needs the Server service and an administrator;
            // where the control cannot reach it, neither can the command.
            control_needs: Some("the administrative share over loopback SMB (the Server service and an administrator)"),
            platform_limit: None,
            prepare: |env| {
                let p = outside_file(env, "victim-smb.txt")?;
                let unc = admin_share_path(&p)
                    .ok_or_else(|| format!("{} is not on a drive letter", p.display()))?;
                Ok(Fixture {
                    args: vec![os(unc)],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "write", &fx.args),
            judge: |env, _| Ok(!unchanged(env, &env.outside.join("victim-smb.txt"))),
            cleanup: |env| {
                let _ = fs::remove_file(env.outside.join("victim-smb.txt"));
            },
        },
        Case {
            id: "attack/windows-integrity",
            kind: Kind::Attack,
            what: "keep the High integrity of an elevated prompt (the token label `whoami /groups` reports)",
            tools: &["whoami"],
            unavailable: not_windows,
            // Only an elevated prompt has a High label to keep: elsewhere the control
            // shows Medium and the case proves nothing.
            control_needs: Some("an elevated prompt (the case checks that an elevated run is lowered)"),
            platform_limit: None,
            prepare: no_prepare,
            argv: |env, id, _| {
                let whoami = find_program("whoami").unwrap_or_else(|| PathBuf::from("whoami"));
                exec_to(env, id, &whoami, &[os("/groups"), os("/fo"), os("csv")])
            },
            judge: |env, _| {
                let log = read_ws(env, &format!(".selftest-{}.log", slug("attack/windows-integrity")));
                if !log.contains("S-1-16-") {
                    return Err("whoami /groups showed no mandatory label".into());
                }
                Ok(above_medium(&log))
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/windows-junction-grant",
            kind: Kind::Attack,
            what: "write through a junction (planted in an extra writable root before the run) to a directory outside it; also judged by the target's DACL, which the grant's propagation must not reach (workfence walks the tree itself and never through a link)",
            tools: &["powershell"],
            unavailable: not_windows,
            control_needs: None,
            platform_limit: None,
            prepare: |env| {
                let root = env.outside.join("extra-root");
                let target = env.outside.join("junction-target");
                let _ = fs::remove_file(target.join("via-junction.txt"));
                fs::create_dir_all(&target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
                if !root.join("j").exists() {
                    fs::create_dir_all(&root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
                    junction(env, &root.join("j"), &target)?;
                }
                Ok(Fixture {
                    allow_write: vec![root],
                    // The target's DACL before the run: a grant that propagated through
                    // the junction would have changed it even without a write.
                    note: dacl_sddl(env, &target)?,
                    ..Fixture::default()
                })
            },
            argv: |env, id, _| {
                env.probe_argv(
                    id,
                    "create",
                    &[os(env.outside.join("extra-root/j/via-junction.txt"))],
                )
            },
            judge: |env, fx| {
                let wrote = env.outside.join("junction-target/via-junction.txt").exists();
                let after = dacl_sddl(env, &env.outside.join("junction-target"))?;
                Ok(wrote || after != fx.note)
            },
            cleanup: |env| {
                let _ = fs::remove_file(env.outside.join("junction-target/via-junction.txt"));
            },
        },
        Case {
            id: "attack/windows-icmp",
            kind: Kind::Attack,
            what: "ping 127.0.0.1 (IcmpSendEcho, sent by the kernel on the caller's behalf); judged from outside by the host's ICMP statistics (echo requests sent, GetIcmpStatistics) growing by the 4 echoes. Other pings on the host during the case can only make it read NOT blocked, never blocked",
            tools: &["ping"],
            unavailable: not_windows,
            control_needs: Some("ICMP statistics that count echo requests to 127.0.0.1 (GetIcmpStatistics)"),
            // Third-party WFP firewalls see ping's echoes as "System": the kernel sends
            // them for the caller, so filters on the offline user's SID likely miss
            // them. If so, a limit of Windows (reported by explain and doctor).
            platform_limit: Some("IcmpSendEcho's echo requests are sent by the kernel (classified as System, not as the offline user), outside the offline user's WFP filters, with a payload the caller chooses (docs/windows.md, README limitations; `explain` and `doctor` report it)"),
            prepare: |_| {
                let before = workfence_windows::probes::icmp_echo_requests_sent()
                    .ok_or("GetIcmpStatistics failed")?;
                Ok(Fixture {
                    note: before.to_string(),
                    ..Fixture::default()
                })
            },
            argv: |env, id, _| {
                let ping = find_program("ping").unwrap_or_else(|| PathBuf::from("ping"));
                exec_to(
                    env,
                    id,
                    &ping,
                    &[os("-n"), os("4"), os("-w"), os("300"), os("127.0.0.1")],
                )
            },
            judge: |_, fx| {
                let before: u64 = fx.note.parse().map_err(|_| "no ICMP count before")?;
                let after = workfence_windows::probes::icmp_echo_requests_sent()
                    .ok_or("GetIcmpStatistics failed")?;
                Ok(after >= before + 4)
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/windows-desktop-input",
            kind: Kind::Attack,
            what: "open WinSta0\\Default with hook and journal rights (what SetWindowsHookEx and journal hooks need) and inject input (SendInput of a one-pixel mouse move and back); judged from outside by the session's last input time (GetLastInputInfo). Moving the mouse during the case can only make it read NOT blocked",
            tools: &[],
            unavailable: not_windows,
            control_needs: Some("an interactive desktop where injected input reaches the session (not a service session)"),
            platform_limit: None,
            prepare: |_| {
                let before = workfence_windows::probes::last_input_tick()
                    .ok_or("GetLastInputInfo failed")?;
                // So that input from now on has a later tick.
                std::thread::sleep(Duration::from_millis(40));
                Ok(Fixture {
                    note: before.to_string(),
                    ..Fixture::default()
                })
            },
            argv: |env, id, _| env.probe_argv(id, "desktop-input", &[]),
            judge: |_, fx| {
                let before: u32 = fx.note.parse().map_err(|_| "no input tick before")?;
                std::thread::sleep(Duration::from_millis(200));
                let after = workfence_windows::probes::last_input_tick()
                    .ok_or("GetLastInputInfo failed")?;
                Ok(after != before)
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/windows-runner-open",
            kind: Kind::Attack,
            what: "open the command process of another sandboxed run (a second `workfence run` on a workspace of its own) for code injection and termination (OpenProcess with PROCESS_VM_WRITE, PROCESS_VM_OPERATION, PROCESS_DUP_HANDLE, PROCESS_TERMINATE), then terminate it; judged from outside by that run ending. The other run's runner has exited by then (it hands over and exits), so its command, whose default DACL has the same shape as the runner's (plan: runner_object_sddl), is the target",
            tools: &[],
            unavailable: not_windows,
            control_needs: Some("a second sandboxed run started with `workfence run` (the probe must be the workfence CLI)"),
            platform_limit: None,
            prepare: |env| {
                let ws = env.outside.join("other-run");
                let (child, pid) = {
                    let child = other_run(
                        env,
                        &ws,
                        "pid-heartbeat",
                        &[os(ws.join("pid")), os(ws.join("beat")), os(ws.join("stop"))],
                    )?;
                    let pid = wait_for_text(&ws.join("pid"), Duration::from_secs(30))?;
                    (child, pid)
                };
                Ok(Fixture {
                    child: Some(child),
                    args: vec![os(pid.trim())],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "open-process", &fx.args),
            judge: |_, fx| {
                let Some(HostChild(c)) = &mut fx.child else {
                    return Err("no other run".into());
                };
                let end = Instant::now() + Duration::from_millis(1500);
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) => return Ok(true),
                        Ok(None) if Instant::now() < end => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Ok(None) => return Ok(false),
                        Err(e) => return Err(format!("wait for the other run: {e}")),
                    }
                }
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/windows-other-run-pipe",
            kind: Kind::Attack,
            what: "connect to a named pipe another sandboxed run's command created with the default security descriptor (which grants the pipe's owner, with setup the sandbox user every run shares: question 9 of docs/windows.md); judged from outside by that run recording the connection. The runner's own control pipe exists only during the handover, under a random name, and serves only the runner's pid (decisions::pipe_client_allowed)",
            tools: &[],
            unavailable: not_windows,
            control_needs: Some("a second sandboxed run started with `workfence run` (the probe must be the workfence CLI)"),
            platform_limit: None,
            prepare: |env| {
                let ws = env.outside.join("other-run-pipe");
                let name = format!("workfence-selftest-other-{}", env.token);
                let child = other_run(
                    env,
                    &ws,
                    "pipe-server",
                    &[os(&name), os(ws.join("pipe.ready")), os(ws.join("pipe.result"))],
                )?;
                wait_for_text(&ws.join("pipe.ready"), Duration::from_secs(30))?;
                Ok(Fixture {
                    child: Some(child),
                    args: vec![os(format!(r"\\.\pipe\{name}"))],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "open-pipe", &fx.args),
            judge: |env, _| {
                let result = env.outside.join("other-run-pipe").join("pipe.result");
                let end = Instant::now() + Duration::from_secs(2);
                while Instant::now() < end {
                    if result.exists() {
                        return Ok(true);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(false)
            },
            cleanup: no_cleanup,
        },
        Case {
            id: "attack/windows-dns-dnscache",
            kind: Kind::Attack,
            what: "look up a unique name (under .invalid) from the offline user; judged from outside by the DNS Client service's cache (ipconfig /displaydns) holding it, that is the service resolved it on the command's behalf. A known platform limit: reported, not a failure",
            tools: &["ipconfig"],
            unavailable: not_windows,
            control_needs: Some("a DNS Client service that keeps lookups in its cache (ipconfig /displaydns)"),
            platform_limit: Some("name lookups go through the DNS Client service (Dnscache), which resolves as NETWORK SERVICE outside the offline user's WFP filters, so a lookup can carry data out (docs/windows.md, README limitations; `explain` and `doctor` report it)"),
            prepare: |env| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                Ok(Fixture {
                    args: vec![os(format!("wf-selftest-{}-{nanos}.invalid", env.token))],
                    ..Fixture::default()
                })
            },
            argv: |env, id, fx| env.probe_argv(id, "resolve", &fx.args),
            judge: |_, fx| {
                let name = fx.args[0].to_string_lossy().to_ascii_lowercase();
                let ipconfig =
                    find_program("ipconfig").ok_or("ipconfig is not installed")?;
                let out = Command::new(ipconfig)
                    .arg("/displaydns")
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .map_err(|e| format!("start ipconfig /displaydns: {e}"))?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .to_ascii_lowercase()
                    .contains(&name))
            },
            cleanup: no_cleanup,
        },
    ]
}

/// Starts a second sandboxed run: `<probe> run -C <ws> -- <probe> <probe args>`, with
/// the probe doing `action` in a workspace of its own (so another capability SID).
/// The self-test's probe is the workfence CLI when `workfence selftest` runs it; the
/// returned front end is killed (and with it that run's job) when dropped.
fn other_run(env: &Env, ws: &Path, action: &str, args: &[OsString]) -> Result<HostChild, String> {
    let _ = fs::remove_dir_all(ws);
    fs::create_dir_all(ws).map_err(|e| format!("mkdir {}: {e}", ws.display()))?;
    let child = Command::new(&env.probe)
        .arg("run")
        .arg("-C")
        .arg(ws)
        .args(["--allow-degraded", "--timeout", "60s", "--"])
        .arg(&env.probe)
        .arg(PROBE_ARG)
        .arg(ws.join("victim.marker"))
        .arg(action)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start `{} run`: {e}", env.probe.display()))?;
    Ok(HostChild(child))
}

/// Waits until `p` exists and has content; returns it.
fn wait_for_text(p: &Path, limit: Duration) -> Result<String, String> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(t) = fs::read_to_string(p) {
            if !t.trim().is_empty() {
                return Ok(t);
            }
        }
        if Instant::now() > end {
            return Err(format!(
                "{} did not appear within {limit:?} (did the other run start?)",
                p.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `whoami /groups /fo csv` output shows a mandatory label above Medium
/// (`S-1-16-8192`): High is `S-1-16-12288`, System `S-1-16-16384`.
fn above_medium(whoami: &str) -> bool {
    whoami
        .split(|c: char| c == '"' || c == ',' || c.is_whitespace())
        .any(|f| {
            f.strip_prefix("S-1-16-")
                .and_then(|r| r.parse::<u32>().ok())
                .is_some_and(|rid| rid > 8192)
        })
}

/// Makes `link` a junction to `target` with PowerShell's `New-Item -ItemType Junction`
/// (both paths are `-File` arguments, never spliced into code).
fn junction(env: &Env, link: &Path, target: &Path) -> Result<(), String> {
    let script = env.outside.join("junction.ps1");
    fs::write(&script, JUNCTION_PS1).map_err(|e| format!("write the script: {e}"))?;
    let ps = find_program("powershell").ok_or("powershell is not installed")?;
    let st = Command::new(ps)
        .args([
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-File",
        ])
        .arg(&script)
        .arg(link)
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("start powershell (New-Item -ItemType Junction): {e}"))?;
    if st.success() && link.exists() {
        Ok(())
    } else {
        Err(format!(
            "could not make the junction {} ({st})",
            link.display()
        ))
    }
}

const JUNCTION_PS1: &str = r#"param([string]$Link, [string]$Target)
$ErrorActionPreference = 'Stop'
New-Item -ItemType Junction -Path $Link -Target $Target | Out-Null
"#;

/// The file `attack/windows-own-file-dacl` creates (a plain name: it is written into a
/// cmd.exe command line).
const OWNED_DACL_FILE: &str = "owned-dacl.txt";

fn pipe_name(env: &Env) -> String {
    format!("workfence-selftest-{}", env.token)
}

/// The host's named pipe server for `attack/windows-named-pipe`: created with the
/// default security descriptor, it writes `ready`, then `result` on a connection
/// (waiting at most 30 s; the self-test kills it earlier).
const PIPE_SERVER_PS1: &str = r#"param([string]$Name, [string]$Ready, [string]$Result)
$ErrorActionPreference = 'Stop'
$s = New-Object System.IO.Pipes.NamedPipeServerStream($Name, [System.IO.Pipes.PipeDirection]::InOut, 1, [System.IO.Pipes.PipeTransmissionMode]::Byte, [System.IO.Pipes.PipeOptions]::Asynchronous)
Set-Content -LiteralPath $Ready -Value ready
$ar = $s.BeginWaitForConnection($null, $null)
if ($ar.AsyncWaitHandle.WaitOne(30000)) {
    $s.EndWaitForConnection($ar)
    Set-Content -LiteralPath $Result -Value connected
}
$s.Dispose()
"#;

/// Catalogue cases not written yet, with why (shown in the report).
pub(super) fn pending() -> Vec<Pending> {
    pending_on(std::env::consts::OS)
}

/// The pending cases of an OS (`std::env::consts::OS`), so that every OS's list is
/// tested everywhere.
fn pending_on(os: &str) -> Vec<Pending> {
    let p = |id: &str, why: &str| Pending {
        id: id.into(),
        why: why.into(),
    };
    match os {
        "macos" => vec![p(
            "attack/macos-tty-snoop",
            "reading another terminal (/dev/ttys*) needs a second pty owned by the host; to be written with the pty fix",
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyone_grants_are_found_only_when_explicit_and_allowing() {
        // What `icacls /grant *S-1-1-0:(F)` adds, next to inherited ACEs.
        let granted =
            "O:S-1-5-21-1G:S-1-5-21-1D:AI(A;;FA;;;WD)(A;ID;FA;;;SY)(A;ID;0x1301bf;;;S-1-5-21-1)";
        assert!(explicit_allow_for_everyone(granted));
        // Inherited, denied, or another SID: not the attack's effect.
        for sddl in [
            "D:AI(A;ID;FA;;;WD)(A;ID;FA;;;SY)",
            "D:(D;;FA;;;WD)",
            "D:(A;;FA;;;BU)(A;;FA;;;S-1-5-21-1-WD)",
            "D:",
            "",
        ] {
            assert!(!explicit_allow_for_everyone(sddl), "{sddl}");
        }
    }

    #[test]
    fn admin_share_paths_keep_the_rest_of_the_path() {
        assert_eq!(
            admin_share_path(Path::new(r"C:\Users\me\AppData\Local\Temp\x\outside\v.txt"))
                .as_deref(),
            Some(r"\\127.0.0.1\C$\Users\me\AppData\Local\Temp\x\outside\v.txt")
        );
        assert_eq!(admin_share_path(Path::new(r"\\server\share\v.txt")), None);
        assert_eq!(admin_share_path(Path::new("/var/tmp/v.txt")), None);
    }

    #[test]
    fn labels_above_medium_are_found_in_whoami_csv() {
        let high = "\"Mandatory Label\\High Mandatory Level\",\"Label\",\"S-1-16-12288\",\"\"";
        let medium = "\"Mandatory Label\\Medium Mandatory Level\",\"Label\",\"S-1-16-8192\",\"\"";
        assert!(above_medium(high));
        assert!(!above_medium(medium));
        assert!(!above_medium(
            "\"BUILTIN\\Users\",\"Alias\",\"S-1-5-32-545\""
        ));
        assert!(above_medium(&format!(
            "{medium}\n\"x\",\"Label\",\"S-1-16-16384\""
        )));
    }

    #[test]
    fn pending_cases_are_not_in_the_catalogue() {
        let ids = case_ids();
        let all = ["linux", "macos", "windows"].map(pending_on);
        assert!(all[0].is_empty());
        for p in all.iter().flatten() {
            assert!(
                !ids.contains(&p.id.as_str()),
                "{} is both written and pending",
                p.id
            );
            assert!(p.why.len() > 40, "{}: say precisely why", p.id);
        }
    }
}
