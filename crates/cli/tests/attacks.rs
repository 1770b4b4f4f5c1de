//! The attack suite: every test runs its attack without the sandbox (the control must
//! succeed) and inside `workfence run` (it must be blocked). IDs are from
//! `threat-catalogue.md`.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

// ------------------------------------------------------------------ filesystem writes

#[test]
fn fw1_direct_traversal_proc_cwd() {
    let mut a = Attack::new(
        "FW1",
        r#"
echo x >> "$H/.bashrc"
echo x > "$OUT/fw1-direct"
echo x > "$WS/../fw1-traversal"
cd "$WS" && echo x > /proc/self/cwd/../fw1-proccwd
echo x > "$WS/../out/fw1-dotdot-out"
[ -n "$ETCPROBE" ] && echo x > "$ETCPROBE"
true
"#,
    )
    .probe_changed("append $H/.bashrc", |sc| sc.h.join(".bashrc"))
    .probe_exists("write $OUT", |sc| sc.out.join("fw1-direct"))
    .probe_exists("write $WS/..", |sc| sc.root.join("fw1-traversal"))
    .probe_exists("write /proc/self/cwd/..", |sc| sc.root.join("fw1-proccwd"))
    .probe_exists("write $WS/../out", |sc| sc.out.join("fw1-dotdot-out"));
    if is_root() {
        // Only root's control can write /etc; unprivileged runs cover $OUT instead.
        a = a
            .setup(|sc, _| {
                let p = format!("/etc/workfence-fw1-{}", sc.token);
                sc.cleanup.push(p.clone().into());
                vec![("ETCPROBE".into(), p.into())]
            })
            .probe("write /etc", |sc, _| {
                Ok(Path::new(&format!("/etc/workfence-fw1-{}", sc.token)).exists())
            });
    }
    a.run();
}

#[test]
fn fw2_symlink_write_through() {
    Attack::new(
        "FW2",
        r#"
ln -s "$H/.bashrc" "$WS/l"; echo x >> "$WS/l"
ln -s "$H/new" "$WS/d"; echo x > "$WS/d"
ln -s "$OUT" "$WS/outdir"; echo x > "$WS/outdir/viadir"
mkdir -p "$WS/sub"; ln -s ../../home/.profile "$WS/sub/rel"; echo x >> "$WS/sub/rel"
"#,
    )
    .probe_changed("symlink to $H/.bashrc", |sc| sc.h.join(".bashrc"))
    .probe_exists("dangling symlink creates $H/new", |sc| sc.h.join("new"))
    .probe_exists("dir symlink to $OUT", |sc| sc.out.join("viadir"))
    .probe_changed("relative symlink to $H/.profile", |sc| {
        sc.h.join(".profile")
    })
    .run();
}

#[test]
fn fw3_hardlink_in() {
    Attack::new(
        "FW3",
        r#"
ln "$H/.bashrc" "$WS/h" && echo x >> "$WS/h"
ln "$OUT/victim" "$WS/h2" && echo x >> "$WS/h2"
"#,
    )
    .setup(|sc, _| {
        fs::write(sc.out.join("victim"), "victim\n").unwrap();
        vec![]
    })
    .probe_exists("ln $H/.bashrc into $WS", |sc| sc.ws.join("h"))
    .probe_changed("write via hardlink", |sc| sc.h.join(".bashrc"))
    .probe_exists("ln $OUT/victim into $WS", |sc| sc.ws.join("h2"))
    .run();
}

#[test]
fn fw4_git_hooks_and_config() {
    Attack::new(
        "FW4",
        r#"
printf '#!/bin/sh\ntouch "$H/PWNED-hook"\n' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit
git config core.fsmonitor "touch $H/PWNED-fsmonitor"
printf '[core]\n\tpager = touch %s/PWNED-pager\n' "$H" >> .git/config
echo x >> .git/hooks/pre-push.sample
"#,
    )
    .probe_exists("create .git/hooks/pre-commit", |sc| {
        sc.ws.join(".git/hooks/pre-commit")
    })
    .probe("git config core.fsmonitor", |sc, _| {
        Ok(read_lossy(&sc.ws.join(".git/config")).contains("fsmonitor"))
    })
    .probe("append .git/config", |sc, _| {
        Ok(read_lossy(&sc.ws.join(".git/config")).contains("PWNED-pager"))
    })
    .probe_changed("modify an existing hook file", |sc| {
        sc.ws.join(".git/hooks/pre-push.sample")
    })
    .run();
}

#[test]
fn fw4_git_config_worktree_and_info() {
    Attack::new(
        "FW4/config.worktree",
        r#"
printf '[core]\n\tfsmonitor = touch %s/PWNED\n' "$H" > .git/config.worktree
mkdir -p .git/modules/m && printf '[core]\n\tfsmonitor = x\n' > .git/modules/m/config
"#,
    )
    .setup(|sc, _| {
        sc.watched.push(sc.ws.join(".git/config.worktree"));
        sc.watched.push(sc.ws.join(".git/modules"));
        vec![]
    })
    .probe_exists("create .git/config.worktree", |sc| {
        sc.ws.join(".git/config.worktree")
    })
    .probe_exists("create .git/modules/m/config", |sc| {
        sc.ws.join(".git/modules/m/config")
    })
    .run();
}

#[test]
fn fw5_rename_git_away_and_rebuild() {
    Attack::new(
        "FW5",
        r#"
mv .git .g
mkdir -p .git/hooks; cp -r .g/. .git
printf '#!/bin/sh\ntouch "$H/PWNED"\n' > .git/hooks/post-checkout
"#,
    )
    .probe_exists("mv .git .g", |sc| sc.ws.join(".g"))
    .probe_exists("rebuilt .git/hooks/post-checkout", |sc| {
        sc.ws.join(".git/hooks/post-checkout")
    })
    .run();
}

#[test]
fn fw5_rename_protected_children_away() {
    Attack::new(
        "FW5/children",
        r#"
mv .git/hooks .git/hooks.old; mkdir .git/hooks; printf '#!/bin/sh\ntouch "$H/PWNED"\n' > .git/hooks/pre-commit
mv .git/config .git/config.old; printf '[core]\n\tfsmonitor = touch %s/PWNED\n' "$H" > .git/config
"#,
    )
    .probe_exists("mv .git/hooks away", |sc| sc.ws.join(".git/hooks.old"))
    .probe_exists("mv .git/config away", |sc| sc.ws.join(".git/config.old"))
    .probe_exists("new .git/hooks/pre-commit", |sc| {
        sc.ws.join(".git/hooks/pre-commit")
    })
    .probe("new .git/config", |sc, _| {
        Ok(read_lossy(&sc.ws.join(".git/config")).contains("PWNED"))
    })
    .run();
}

#[test]
fn fw5_delete_git() {
    Attack::new("FW5/delete", "rm -rf .git")
        .probe_gone(".git removed", |sc| sc.ws.join(".git"))
        .probe_gone(".git/config removed", |sc| sc.ws.join(".git/config"))
        .probe_gone(".git/hooks removed", |sc| sc.ws.join(".git/hooks"))
        .run();
}

const FW6_SCRIPT: &str = r#"
mkdir .codex && echo 'sandbox_mode="danger-full-access"' > .codex/config.toml
mkdir -p .claude && echo '{"hooks":{}}' > .claude/settings.json
mkdir .agents
mkdir -p .vscode && echo '{"tasks":[]}' > .vscode/tasks.json
mkdir .idea
echo '{"mcpServers":{}}' > .mcp.json
mkdir -p .workfence && printf 'network = "on"\n' > .workfence/config.toml
"#;

fn fw6_probes(a: Attack) -> Attack {
    a.probe_exists("create .codex", |sc| sc.ws.join(".codex"))
        .probe_exists("create .claude/settings.json", |sc| {
            sc.ws.join(".claude/settings.json")
        })
        .probe_exists("create .agents", |sc| sc.ws.join(".agents"))
        .probe_exists("create .vscode", |sc| sc.ws.join(".vscode"))
        .probe_exists("create .idea", |sc| sc.ws.join(".idea"))
        .probe_exists("create .mcp.json", |sc| sc.ws.join(".mcp.json"))
        .probe_exists("create .workfence", |sc| sc.ws.join(".workfence"))
}

#[test]
fn fw6_create_missing_protected_in_repo() {
    fw6_probes(Attack::new("FW6", FW6_SCRIPT)).run();
}

#[test]
fn fw6_create_missing_protected_non_repo() {
    fw6_probes(Attack::new(
        "FW6/non-repo",
        &format!("mkdir .git && mkdir .git/hooks\n{FW6_SCRIPT}"),
    ))
    .ws(WsKind::NoGit)
    .probe_exists("mkdir .git", |sc| sc.ws.join(".git"))
    .run();
}

#[test]
fn fw6_create_protected_by_rename_and_symlink() {
    Attack::new(
        "FW6/rename-symlink",
        r#"
mkdir x && echo '{}' > x/settings.json && mv x .claude
ln -s "$OUT" .codex
echo '{}' > m.json && mv m.json .mcp.json
ln -s "$OUT" .vscode
"#,
    )
    .probe_exists("mv dir to .claude", |sc| sc.ws.join(".claude"))
    .probe_exists("symlink .codex", |sc| sc.ws.join(".codex"))
    .probe_exists("mv file to .mcp.json", |sc| sc.ws.join(".mcp.json"))
    .probe_exists("symlink .vscode", |sc| sc.ws.join(".vscode"))
    .run();
}

#[test]
fn fw7_worktree_gitdir_indirection() {
    Attack::new(
        "FW7",
        r#"
printf '#!/bin/sh\ntouch "$H/PWNED"\n' > "$COMMON/hooks/pre-commit"
git config core.fsmonitor "touch $H/PWNED"
printf '[alias]\n\tx = !touch %s/PWNED\n' "$H" >> "$COMMON/config"
printf '[core]\n\tfsmonitor = x\n' > "$GITDIR/config.worktree"
echo 'gitdir: /tmp/evil' > .git
"#,
    )
    .ws(WsKind::Worktree)
    .probe_exists("write <commondir>/hooks", |sc| {
        sc.common.as_ref().unwrap().join("hooks/pre-commit")
    })
    .probe(
        "git config in worktree writes <commondir>/config",
        |sc, _| Ok(read_lossy(&sc.common.as_ref().unwrap().join("config")).contains("fsmonitor")),
    )
    .probe("append <commondir>/config", |sc, _| {
        Ok(read_lossy(&sc.common.as_ref().unwrap().join("config")).contains("alias"))
    })
    .probe_exists("create <gitdir>/config.worktree", |sc| {
        sc.gitdir.as_ref().unwrap().join("config.worktree")
    })
    .probe_changed("rewrite the .git file", |sc| sc.ws.join(".git"))
    .run();
}

#[test]
fn fw7_worktree_replace_git_file() {
    Attack::new(
        "FW7/replace",
        r#"
rm -f .git; mkdir -p .git/hooks
mv "$COMMON/hooks" "$COMMON/hooks.old"
"#,
    )
    .ws(WsKind::Worktree)
    .probe("the .git file replaced", |sc, _| {
        Ok(
            fs::symlink_metadata(sc.ws.join(".git")).is_ok_and(|m| m.is_dir())
                || !sc.ws.join(".git").exists(),
        )
    })
    .probe_exists("mv <commondir>/hooks", |sc| {
        sc.common.as_ref().unwrap().join("hooks.old")
    })
    .run();
}

#[test]
fn a3_hooks_path_inside_workspace() {
    Attack::new(
        "A3",
        r#"
printf '#!/bin/sh\ntouch "$H/PWNED"\n' > .husky/_/pre-commit; chmod +x .husky/_/pre-commit
echo x >> .husky/_/h
"#,
    )
    .setup(|sc, _| {
        fs::create_dir_all(sc.ws.join(".husky/_")).unwrap();
        fs::write(sc.ws.join(".husky/_/h"), "#!/bin/sh\n").unwrap();
        host_git(&sc.ws, &sc.h, &["config", "core.hooksPath", ".husky/_"]);
        sc.watched.push(sc.ws.join(".husky/_"));
        vec![]
    })
    .probe_exists("write a hook in core.hooksPath", |sc| {
        sc.ws.join(".husky/_/pre-commit")
    })
    .probe_changed("modify the existing hook", |sc| sc.ws.join(".husky/_/h"))
    .run();
}

#[test]
fn a3_hooks_path_rename_away() {
    Attack::new(
        "A3/rename",
        r#"
mv .husky .husky.old; mkdir -p .husky/_
printf '#!/bin/sh\ntouch "$H/PWNED"\n' > .husky/_/pre-commit
"#,
    )
    .setup(|sc, _| {
        fs::create_dir_all(sc.ws.join(".husky/_")).unwrap();
        fs::write(sc.ws.join(".husky/_/h"), "#!/bin/sh\n").unwrap();
        host_git(&sc.ws, &sc.h, &["config", "core.hooksPath", ".husky/_"]);
        vec![]
    })
    .probe_exists("hook planted after renaming the hooks dir", |sc| {
        sc.ws.join(".husky/_/pre-commit")
    })
    .run();
}

#[test]
fn fw9_metadata() {
    Attack::new(
        "FW9",
        r#"
chmod 000 "$H/.ssh"
touch -d 2000-01-01 "$H/.bashrc"
"$PY" -c 'import os; os.setxattr(os.environ["H"] + "/.profile", "user.x", b"1")'
chmod 777 "$OUT/victim"
"#,
    )
    .setup(|sc, _| {
        fs::write(sc.out.join("victim"), "v\n").unwrap();
        vec![]
    })
    .probe_changed("chmod $H/.ssh", |sc| sc.h.join(".ssh"))
    .probe_changed("touch -d $H/.bashrc", |sc| sc.h.join(".bashrc"))
    .probe_changed("setxattr $H/.profile", |sc| sc.h.join(".profile"))
    .probe_changed("chmod $OUT/victim", |sc| sc.out.join("victim"))
    .run();
}

#[test]
fn fw10_truncate() {
    Attack::new(
        "FW10",
        &format!(
            "truncate -s0 \"$H/.zshrc\"\n{}\n",
            py(r#"
try:
    fd = os.open(os.environ["OUT"] + "/victim", os.O_RDONLY | os.O_TRUNC); print("OTRUNC rc=%d" % fd)
except OSError as e:
    print("OTRUNC rc=-1 errno=%d" % e.errno)
"#)
        ),
    )
    .setup(|sc, _| {
        fs::write(sc.out.join("victim"), "victim\n").unwrap();
        vec![]
    })
    .probe_changed("truncate -s0 $H/.zshrc", |sc| sc.h.join(".zshrc"))
    .require_lines(&["OTRUNC"])
    .probe_changed("O_RDONLY|O_TRUNC $OUT/victim", |sc| sc.out.join("victim"))
    .run();
}

#[test]
fn fw11_inherited_fds() {
    Attack::new(
        "FW11/fds",
        &format!(
            "echo x >&8\n{}\n",
            py(r#"
def isopen(fd):
    try:
        os.fstat(fd); return True
    except OSError:
        return False
print("FDS", *[fd for fd in range(1024) if isopen(fd)], flush=True)
try:
    fd = os.open("fw11-via-dirfd", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=7); print("DIRFD rc=%d" % fd)
except OSError as e:
    print("DIRFD rc=-1 errno=%d" % e.errno)
"#)
        ),
    )
    .setup(|sc, _| {
        fs::write(sc.out.join("fd8.txt"), "").unwrap();
        vec![]
    })
    .prefix(&[
        "sh",
        "-c",
        "exec 7<\"$OUT\" 8>>\"$OUT/fd8.txt\"; exec \"$@\"",
        "wfwrap",
    ])
    .probe("fd 7/8 visible in /proc/self/fd", |_, o| {
        let l = o.field("FDS").ok_or("no FDS line")?;
        Ok(l.split_whitespace().any(|f| f == "7" || f == "8"))
    })
    .require_lines(&["DIRFD"])
    .probe_changed("write through inherited fd 8", |sc| sc.out.join("fd8.txt"))
    .probe_exists("openat(inherited dirfd 7)", |sc| sc.out.join("fw11-via-dirfd"))
    .sandbox_check("only fds 0-2 inherited", |_, o| {
        let l = o.field("FDS").ok_or("no FDS line")?;
        let extra: Vec<_> = l
            .split_whitespace()
            .filter(|f| !["0", "1", "2"].contains(f))
            .collect();
        if !extra.is_empty() {
            return Err(format!("unexpected inherited fds: {extra:?}"));
        }
        Ok(())
    })
    .run();
}

#[test]
fn fw11_proc_pid_root_and_cwd() {
    Attack::new(
        "FW11/proc",
        r#"
echo x >> "/proc/$HOSTPID/root$H/.bashrc"
echo x > "/proc/$HOSTPID/cwd/fw11-cwd"
"#,
    )
    .probe_changed("write /proc/HOSTPID/root$H/.bashrc", |sc| {
        sc.h.join(".bashrc")
    })
    .probe_exists("write /proc/HOSTPID/cwd/x", |sc| sc.out.join("fw11-cwd"))
    .run();
}

#[test]
fn fw12_nested_userns_remount() {
    if !need("FW12", &["unshare"]) {
        return;
    }
    Attack::new(
        "FW12",
        r#"
unshare -Urm sh -c '
  mount -o remount,rw,bind "$WS/.git/hooks" 2>/dev/null
  mount -o remount,rw,bind / 2>/dev/null
  touch "$WS/.git/hooks/x"
  echo x >> "$H/.bashrc"
  echo x > "$OUT/fw12"
'
"#,
    )
    .probe_exists("touch .git/hooks/x after remount", |sc| {
        sc.ws.join(".git/hooks/x")
    })
    .probe_changed("write $H/.bashrc after remount", |sc| sc.h.join(".bashrc"))
    .probe_exists("write $OUT after remount", |sc| sc.out.join("fw12"))
    .run();
}

#[test]
fn fw15_shared_tmp_and_shm() {
    Attack::new(
        "FW15",
        r#"
echo x > "/tmp/wf-probe-$MARK"
echo x > "/dev/shm/wf-probe-$MARK"
"#,
    )
    .setup(|sc, _| {
        sc.cleanup.push(format!("/tmp/wf-probe-{}", sc.mark).into());
        sc.cleanup
            .push(format!("/dev/shm/wf-probe-{}", sc.mark).into());
        vec![]
    })
    .probe("host /tmp sees the file", |sc, _| {
        Ok(Path::new(&format!("/tmp/wf-probe-{}", sc.mark)).exists())
    })
    .probe("host /dev/shm sees the file", |sc, _| {
        Ok(Path::new(&format!("/dev/shm/wf-probe-{}", sc.mark)).exists())
    })
    .run();
}

// ------------------------------------------------------------------ secrets

#[test]
fn rs1_credential_files() {
    let mut script = String::new();
    for f in SECRET_FILES {
        script.push_str(&format!("cat \"$H/{f}\"\n"));
    }
    script.push_str("ln -s \"$H/.ssh/id_rsa\" \"$WS/k\" && cat \"$WS/k\"\n");
    let mut a = Attack::new("RS1", &script);
    for f in SECRET_FILES {
        let f2 = *f;
        a = a.probe_stdout_has(&format!("read ~/{f}"), move |sc| sc.secret_of(f2));
    }
    a.run();
}

#[test]
fn rs1_credential_files_via_symlink_and_find() {
    Attack::new(
        "RS1/indirect",
        r#"
ln -s "$H/.aws" "$WS/awsdir" && cat "$WS/awsdir/credentials"
cd "$H" && cat ./.netrc
find "$H" -name 'auth.json' -exec cat {} \;
cat "/proc/self/root$H/.git-credentials"
"#,
    )
    .probe_stdout_has("read via a directory symlink", |sc| {
        sc.secret_of(".aws/credentials")
    })
    .probe_stdout_has("read relative to $H", |sc| sc.secret_of(".netrc"))
    .probe_stdout_has("read via find", |sc| sc.secret_of(".codex/auth.json"))
    .probe_stdout_has("read via /proc/self/root", |sc| {
        sc.secret_of(".git-credentials")
    })
    .run();
}

#[test]
fn rs3_env_tokens() {
    Attack::new("RS3", "env")
        .env("AWS_SECRET_ACCESS_KEY", "wf-aws-secret-value")
        .env("GITHUB_TOKEN", "wf-github-token-value")
        .env("OPENAI_API_KEY", "wf-openai-key-value")
        .env("ANTHROPIC_API_KEY", "wf-anthropic-key-value")
        .setup(|sc, _| {
            vec![(
                "SSH_AUTH_SOCK".into(),
                sc.listeners.path.clone().into_os_string(),
            )]
        })
        .probe_stdout_has("AWS_SECRET_ACCESS_KEY", |_| "wf-aws-secret-value".into())
        .probe_stdout_has("GITHUB_TOKEN", |_| "wf-github-token-value".into())
        .probe_stdout_has("OPENAI_API_KEY", |_| "wf-openai-key-value".into())
        .probe_stdout_has("ANTHROPIC_API_KEY", |_| "wf-anthropic-key-value".into())
        .probe_stdout_has("SSH_AUTH_SOCK", |_| "SSH_AUTH_SOCK=".into())
        .run();
}

#[test]
fn rs4_host_process_environ() {
    Attack::new(
        "RS4",
        r#"
cat "/proc/$HOSTPID/environ" | tr '\0' '\n'
"#,
    )
    .probe_stdout_has("read /proc/HOSTPID/environ", |sc| sc.host_secret.clone())
    .run();
}

#[test]
fn rs5_keyctl() {
    Attack::new(
        "RS5",
        &py(r#"
# keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0)
r, e = sc(250, 0, -4, 0); show("GETID", r, e)
# add_key("user", name, "v", 1, KEY_SPEC_USER_KEYRING)
name = ("wf" + os.environ["MARK"]).encode()
r, e = sc(248, b"user", name, b"v", 1, -4); show("ADDKEY", r, e)
if r > 0:
    sc(250, 9, r, -4)  # KEYCTL_UNLINK
r, e = sc(249, b"user", name, None, 0); show("REQKEY", r, e)
"#),
    )
    .probe_rc("keyctl(GET_KEYRING_ID @u)", "GETID")
    .probe_rc("add_key(user, @u)", "ADDKEY")
    .sandbox_check("request_key denied", |_, o| {
        let (r, e) = rc_of(o, "REQKEY")?;
        if r >= 0 || e == libc_enokey() {
            return Err(format!(
                "request_key reached the kernel keyring (rc={r} errno={e})"
            ));
        }
        Ok(())
    })
    .run();
}

/// ENOKEY: request_key ran and looked the key up (it was not denied).
fn libc_enokey() -> i64 {
    126
}

// ------------------------------------------------------------------ network

const NET_PY: &str = r#"
import socket
def tcp(fam, addr):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3); s.connect(addr); s.sendall(b"x"); s.close(); return "rc=0"
    except OSError as ex:
        return "rc=-1 errno=%s" % ex.errno
def unix(addr):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(3); s.connect(addr); s.sendall(b"x"); s.close(); return "rc=0"
    except OSError as ex:
        return "rc=-1 errno=%s" % ex.errno
def udp(addr):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", addr); s.close(); return "rc=0"
    except OSError as ex:
        return "rc=-1 errno=%s" % ex.errno
"#;

#[test]
fn n1_n2_n7_host_loopback_and_unix_sockets() {
    Attack::new(
        "N1-N2-N7",
        &py(&format!(
            r#"{NET_PY}
print("TCP4", tcp(socket.AF_INET, ("127.0.0.1", int(os.environ["TCP4"]))), flush=True)
print("LOCALHOST", tcp(socket.AF_INET, ("localhost", int(os.environ["TCP4"]))), flush=True)
print("UDP", udp(("127.0.0.1", int(os.environ["UDP"]))), flush=True)
print("ABSTRACT", unix("\0" + os.environ["ABSTRACT"]), flush=True)
print("PATHSOCK", unix(os.environ["USOCK"]), flush=True)
"#
        )),
    )
    .require_lines(&["TCP4", "LOCALHOST", "UDP", "ABSTRACT", "PATHSOCK"])
    .probe("TCP v4 to host 127.0.0.1 listener", |sc, _| {
        Ok(sc.listeners.contacts().tcp4)
    })
    .probe("UDP sendto host listener (no connect)", |sc, _| {
        Ok(sc.listeners.contacts().udp)
    })
    .probe("abstract unix socket in the host netns", |sc, _| {
        Ok(sc.listeners.contacts().abstract_unix)
    })
    .probe("pathname unix socket $H/.run/agent.sock", |sc, _| {
        Ok(sc.listeners.contacts().path_unix)
    })
    .run();
}

#[test]
fn n1_host_loopback_tcp6() {
    if Scenario::new("tcp6-check").listeners.tcp6.is_none() {
        skip_or_fail(
            "N1/tcp6",
            "cannot bind [::1] on this host (no IPv6 loopback)",
        );
        return;
    }
    Attack::new(
        "N1/tcp6",
        &py(&format!(
            r#"{NET_PY}
print("TCP6", tcp(socket.AF_INET6, ("::1", int(os.environ["TCP6"]))), flush=True)
"#
        )),
    )
    .require_lines(&["TCP6"])
    .probe("TCP v6 to host [::1] listener", |sc, _| {
        Ok(sc.listeners.contacts().tcp6)
    })
    .run();
}

#[test]
fn n5_io_uring() {
    Attack::new(
        "N5",
        &py(r#"
buf = ctypes.create_string_buffer(120)
r, e = sc(425, 8, buf); show("URING", r, e)
"#),
    )
    .control_needs("io_uring enabled in the host kernel")
    .probe_rc("io_uring_setup", "URING")
    .sandbox_check("io_uring_setup fails with ENOSYS or EPERM", |_, o| {
        let (r, e) = rc_of(o, "URING")?;
        if r == -1 && (e == 38 || e == 1) {
            Ok(())
        } else {
            Err(format!("rc={r} errno={e}"))
        }
    })
    .run();
}

#[test]
fn n6_non_native_syscall_abi() {
    if !need("N6", &["cc"]) {
        return;
    }
    Attack::new(
        "N6",
        &format!(
            r#"
cat > "$WS/wf-i80.c" <<'EOF'
#include <stdio.h>
#include <unistd.h>
int main(void) {{
    long r;
    /* i386 getpid (20) through int 0x80 */
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    printf("INT80 rc=%ld pid=%d\n", r, (int)getpid());
    fflush(stdout);
    return 0;
}}
EOF
cc -o "$WS/wf-i80" "$WS/wf-i80.c" && "$WS/wf-i80"; echo "INT80EXIT $?"
{}
"#,
            py(r#"
r, e = sc(39 | 0x40000000); show("X32", r, e)
"#)
        ),
    )
    .probe("i386 int 0x80 getpid returns the pid", |_, o| {
        let Some(v) = o.field("INT80") else {
            return Ok(false);
        };
        let mut rc = None;
        let mut pid = None;
        for p in v.split_whitespace() {
            if let Some(x) = p.strip_prefix("rc=") {
                rc = x.parse::<i64>().ok();
            }
            if let Some(x) = p.strip_prefix("pid=") {
                pid = x.parse::<i64>().ok();
            }
        }
        Ok(rc.is_some() && rc == pid)
    })
    .sandbox_check("the i386 probe was compiled and run inside", |sc, o| {
        if sc.ws.join("wf-i80").exists() && o.field("INT80EXIT").is_some() {
            Ok(())
        } else {
            Err("cc or the probe did not run".into())
        }
    })
    // x32 (nr|0x40000000): most kernels lack CONFIG_X86_X32_ABI, so no control can show
    // it working; the sandboxed run must refuse it in any case.
    .sandbox_check("x32 getpid fails", |_, o| {
        let (r, e) = rc_of(o, "X32")?;
        if r < 0 {
            Ok(())
        } else {
            Err(format!("x32 syscall succeeded (rc={r} errno={e})"))
        }
    })
    .run();
}

// ------------------------------------------------------------------ processes

/// Whether `pred` holds for the process state within 1 s.
fn poll_state(pid: u32, pred: impl Fn(Option<char>) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        if pred(proc_state(pid)) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn p1_kill_stop_host_process() {
    Attack::new("P1/STOP", "kill -STOP $HOSTPID")
        .probe("host process stopped (within 1 s)", |sc, _| {
            // Signal delivery is asynchronous: poll the state for up to a second.
            let r = poll_state(sc.hostpid, |st| matches!(st, Some('T') | Some('t')));
            send_signal(sc.hostpid, "CONT");
            Ok(r)
        })
        .run();
}

#[test]
fn p1_kill_9_host_process() {
    Attack::new("P1/KILL", "kill -9 $HOSTPID")
        .probe("host process killed (within 1 s)", |sc, _| {
            Ok(poll_state(sc.hostpid, |st| {
                matches!(st, None | Some('Z') | Some('X'))
            }))
        })
        .run();
}

#[test]
fn p1_ptrace_host_process() {
    Attack::new(
        "P1/ptrace",
        &py(r#"
pid = int(os.environ["HOSTPID"])
r, e = sc(101, 0x4206, pid, 0, 0)  # PTRACE_SEIZE
show("SEIZE", r, e)
r, e = sc(101, 16, pid, 0, 0)  # PTRACE_ATTACH (fails with EPERM if seized already)
show("ATTACH", r, e)
fd = -1
try:
    f = open("/proc/%d/mem" % pid, "rb"); print("MEM rc=0"); f.close()
except OSError as ex:
    print("MEM rc=-1 errno=%d" % ex.errno)
"#),
    )
    .probe_rc("PTRACE_SEIZE of the host process", "SEIZE")
    .probe_rc("open /proc/HOSTPID/mem", "MEM")
    .run();
}

#[test]
fn p8_sysv_ipc() {
    if !need("P8", &["ipcmk", "ipcrm"]) {
        return;
    }
    Attack::new(
        "P8",
        &format!(
            "cat /proc/sysvipc/shm\n{}",
            py(r#"
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
ctypes.set_errno(0)
p = libc.shmat(int(os.environ["SHMID"]), None, 0)
if p is None or p == ctypes.c_void_p(-1).value:
    print("SHMAT rc=-1 errno=%d" % ctypes.get_errno())
else:
    print("SHMAT rc=0")
"#)
        ),
    )
    .setup(|sc, _| {
        let o = Command::new("ipcmk")
            .args(["-M", "4096", "-p", "0600"])
            .output()
            .expect("ipcmk");
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let id = s
            .trim()
            .rsplit(' ')
            .next()
            .filter(|x| x.parse::<u64>().is_ok())
            .unwrap_or_else(|| panic!("ipcmk output: {s}"))
            .to_string();
        sc.shm_ids.push(id.clone());
        vec![("SHMID".into(), id.into())]
    })
    .probe("host segment listed in /proc/sysvipc/shm", |sc, o| {
        let id = sc.shm_ids.first().cloned().unwrap_or_default();
        Ok(o.stdout.lines().any(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == id
        }))
    })
    .probe_rc("shmat the host segment", "SHMAT")
    .run();
}

#[test]
fn p9_no_new_privs_and_capabilities() {
    let mut a = Attack::new(
        "P9",
        "grep -E '^(NoNewPrivs|CapEff|CapPrm|CapAmb):' /proc/self/status",
    )
    .probe("NoNewPrivs is 0", |_, o| {
        let v = o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("NoNewPrivs:"))
            .ok_or("no NoNewPrivs line")?;
        Ok(v.trim() == "0")
    });
    let caps = |o: &Outcome, key: &str| -> Result<u64, String> {
        let v = o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or(format!("no {key} line"))?;
        u64::from_str_radix(v.trim(), 16).map_err(|e| e.to_string())
    };
    if is_root() {
        a = a.probe("CapEff non-zero", move |_, o| Ok(caps(o, "CapEff:")? != 0));
    }
    a.sandbox_check("CapEff, CapPrm and CapAmb are 0", move |_, o| {
        for k in ["CapEff:", "CapPrm:", "CapAmb:"] {
            let v = caps(o, k)?;
            if v != 0 {
                return Err(format!("{k} {v:x}"));
            }
        }
        Ok(())
    })
    .run();
}

#[test]
fn p12_new_user_namespace() {
    if !need("P12", &["unshare"]) {
        return;
    }
    Attack::new(
        "P12",
        &format!(
            "unshare -U true; echo \"UNSHARE rc=$(( - $? ))\"\n{}",
            py(r#"
r, e = sc(272, 0x10000000); show("PYUNSHARE", r, e)  # unshare(CLONE_NEWUSER)
"#)
        ),
    )
    .probe_rc("unshare -U", "UNSHARE")
    .probe_rc("unshare(CLONE_NEWUSER)", "PYUNSHARE")
    .run();
}

#[test]
fn t1_tiocsti() {
    // The harness owns a pty, makes it the controlling terminal of what it runs, and after
    // the run reads what is queued on the pty's input (what the user's shell would read).
    const WRAP: &str = r#"
import os, sys, pty, subprocess, termios, fcntl
res = sys.argv[1]
m, s = pty.openpty()
def ctty():
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
p = subprocess.Popen(sys.argv[2:], stdin=s, start_new_session=True, preexec_fn=ctty)
rc = p.wait()
a = termios.tcgetattr(s)
a[3] &= ~(termios.ICANON | termios.ECHO)
a[6][termios.VMIN] = 0
a[6][termios.VTIME] = 0
termios.tcsetattr(s, termios.TCSANOW, a)
data = b""
try:
    while True:
        d = os.read(s, 4096)
        if not d:
            break
        data += d
except OSError:
    pass
open(res, "wb").write(data)
sys.exit(rc if rc >= 0 else 128 - rc)
"#;
    let script = py(r#"
def sti(fd, cmd):
    for ch in b"wfinjected\n":
        b = ctypes.c_char(ch)
        ctypes.set_errno(0)
        r = libc.ioctl(fd, ctypes.c_ulong(cmd), ctypes.byref(b))
        if r != 0:
            return "rc=%d errno=%d" % (r, ctypes.get_errno())
    return "rc=0"
print("STI", sti(0, 0x5412), flush=True)
print("STIHI", sti(0, 0x5412 | (1 << 32)), flush=True)
try:
    fd = os.open("/dev/tty", os.O_RDWR)
    print("DEVTTY", sti(fd, 0x5412), flush=True)
except OSError as ex:
    print("DEVTTY rc=-1 errno=%d" % ex.errno, flush=True)
"#);
    Attack::new("T1", &script)
        .launch(Launch {
            prefix: vec![
                python().into_os_string(),
                "-c".into(),
                WRAP.into(),
                "{ROOT}/tty-input".into(),
            ],
            ..Launch::default()
        })
        .control_needs("TIOCSTI allowed on this kernel (dev.tty.legacy_tiocsti=1)")
        .probe_rc("TIOCSTI on fd 0", "STI")
        .probe_rc("TIOCSTI|1<<32 on fd 0", "STIHI")
        .probe_rc("TIOCSTI on /dev/tty", "DEVTTY")
        .probe("injected input queued on the harness pty", |sc, _| {
            Ok(read_lossy(&sc.root.join("tty-input")).contains("wfinjected"))
        })
        .run();
}

// ------------------------------------------------------------------ lifetime

#[test]
fn l1_daemons_die_with_the_command() {
    if !need("L1", &["setsid", "nohup"]) {
        return;
    }
    Attack::new(
        "L1",
        &r#"
setsid -f sleep ${MARK}1 >/dev/null 2>&1
nohup sleep ${MARK}2 >/dev/null 2>&1 &
( sh -c 'sleep "$1" >/dev/null 2>&1 &' sh ${MARK}3 & )
sleep 0.2
SHOW_STARTED
exit 0
"#
        .replace("SHOW_STARTED", SHOW_STARTED),
    )
    .require_started(&["1", "2", "3"])
    .probe("setsid -f daemon alive 1 s after exit", |sc, o| {
        Ok(sc.alive_at(&format!("{}1", sc.mark), o.exited + Duration::from_secs(1)))
    })
    .probe("nohup job alive 1 s after exit", |sc, o| {
        Ok(sc.alive_at(&format!("{}2", sc.mark), o.exited + Duration::from_secs(1)))
    })
    .probe("double-forked child alive 1 s after exit", |sc, o| {
        Ok(sc.alive_at(&format!("{}3", sc.mark), o.exited + Duration::from_secs(1)))
    })
    .sandbox_check("exit status 0", |_, o| {
        if o.code == Some(0) {
            Ok(())
        } else {
            Err(format!("exit {:?}", o.code))
        }
    })
    .run();
}

#[test]
fn l2_sigkill_of_workfence_kills_the_tree() {
    if !need("L2", &["setsid"]) {
        return;
    }
    // SIGKILL the launched process (workfence; sh in the control) once the last probe
    // process exists, and judge 1 s after the kill.
    Attack::new(
        "L2",
        &r#"
setsid -f sleep ${MARK}1 >/dev/null 2>&1
sleep ${MARK}2 &
sleep 0.3
SHOW_STARTED
sleep ${MARK}3
"#
        .replace("SHOW_STARTED", SHOW_STARTED),
    )
    .require_started(&["1", "2"])
    .launch(Launch {
        kill_when_marker: Some("{MARK}3".into()),
        ..Launch::default()
    })
    .probe("setsid daemon alive 1 s after SIGKILL", |sc, o| {
        let t = o.killed_at.ok_or("the harness never sent SIGKILL")?;
        Ok(sc.alive_at(&format!("{}1", sc.mark), t + Duration::from_secs(1)))
    })
    .probe("background child alive 1 s after SIGKILL", |sc, o| {
        let t = o.killed_at.ok_or("the harness never sent SIGKILL")?;
        Ok(sc.alive_at(&format!("{}2", sc.mark), t + Duration::from_secs(1)))
    })
    .probe("foreground child alive 1 s after SIGKILL", |sc, o| {
        let t = o.killed_at.ok_or("the harness never sent SIGKILL")?;
        Ok(sc.alive_at(&format!("{}3", sc.mark), t + Duration::from_secs(1)))
    })
    .run();
}

#[test]
fn l5_timeout_kills_the_whole_tree() {
    if !need("L5", &["setsid"]) {
        return;
    }
    // Control: a naive timeout (the harness kills the shell at 2 s) leaves the tree alive.
    Attack::new(
        "L5",
        &r#"
sh -c 'sleep "$1" & sleep "$2"' sh ${MARK}1 ${MARK}2 &
setsid -f sleep ${MARK}3 >/dev/null 2>&1
sleep 0.3
SHOW_STARTED
sleep ${MARK}4
"#
        .replace("SHOW_STARTED", SHOW_STARTED),
    )
    .require_started(&["1", "2", "3"])
    .launch(Launch {
        wf_args: vec!["--timeout".into(), "2s".into()],
        kill_when_marker: Some("{MARK}4".into()),
        kill_after: Some(Duration::from_secs(2)),
        kill_control_only: true,
        ..Launch::default()
    })
    .probe("grandchild alive 1 s after the deadline", |sc, o| {
        let t = o.killed_at.unwrap_or(o.exited);
        Ok(sc.alive_at(&format!("{}1", sc.mark), t + Duration::from_secs(1)))
    })
    .probe("setsid daemon alive 1 s after the deadline", |sc, o| {
        let t = o.killed_at.unwrap_or(o.exited);
        Ok(sc.alive_at(&format!("{}3", sc.mark), t + Duration::from_secs(1)))
    })
    .sandbox_check("exit 124", |_, o| {
        if o.code == Some(124) {
            Ok(())
        } else {
            Err(format!("exit code {:?}, signal {:?}", o.code, o.signal))
        }
    })
    .sandbox_check("ends at the 2 s deadline (within 1 s after it)", |_, o| {
        let d = o.exited - o.started;
        if d >= Duration::from_millis(1900) && d <= Duration::from_secs(3) {
            Ok(())
        } else {
            Err(format!("ended after {d:?}"))
        }
    })
    .run();
}

#[test]
fn r1_bounded_fork_bomb() {
    fork_bomb("R1", 64, 300);
}

/// A cap of at least 300 is held by the pid namespace's own `kernel.pid_max` where the
/// kernel has one (Linux 6.14), for root too (RLIMIT_NPROC does not bind root), with
/// PID_MAX_HEADROOM (370) of slack: 320 allows at most 689 tasks, so 1000 forks must
/// fail. The cap of 64 above takes a cgroup for root (pid_max would be far looser).
#[test]
fn r1_bounded_fork_bomb_pid_max() {
    fork_bomb("R1/pid-max", 320, 1000);
}

fn fork_bomb(id: &str, cap: u32, forks: u32) {
    let help = Command::new(bin())
        .args(["run", "--help"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let flag = help.contains("--max-processes");
    let mut a = Attack::new(
        id,
        &py(&r#"
import time, signal
mark = os.environ["MARK"] + "5"
kids = []
fail = None
for i in range(FORKS):
    try:
        pid = os.fork()
    except OSError as ex:
        fail = ex.errno
        break
    if pid == 0:
        os.execvp("sleep", ["sleep", mark])
    kids.append(pid)
print("COUNT %d" % len(kids), flush=True)
if fail is not None:
    print("FORKFAIL errno=%d" % fail, flush=True)
for k in kids:
    try:
        os.kill(k, signal.SIGKILL)
    except OSError:
        pass
for k in kids:
    try:
        os.waitpid(k, 0)
    except OSError:
        pass
"#
        .replace("FORKS", &forks.to_string())),
    )
    .wf_arg("--timeout")
    .wf_arg("30s")
    .probe("every process spawned without a cap", move |_, o| {
        let n: u32 = o
            .field("COUNT")
            .ok_or("no COUNT line")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(n >= forks)
    })
    .sandbox_check("fork failed at the cap", |_, o| {
        o.field("FORKFAIL")
            .map(|_| ())
            .ok_or_else(|| "no FORKFAIL line".to_string())
    })
    .sandbox_check("the host can still spawn processes", |_, _| {
        let ok = Command::new("true").status().is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err("spawning `true` on the host failed".into())
        }
    });
    if flag {
        a = a.wf_arg("--max-processes").wf_arg(&cap.to_string());
    } else {
        a = a.setup(move |sc, _| {
            sc.user_config(&format!("max_processes = {cap}\n"));
            vec![]
        });
    }
    a.run();
}

// ------------------------------------------------------------------ self-widening, fail-open

#[test]
fn a6_workspace_config_cannot_widen() {
    // A cloned repository carries a .workfence/config.toml that grants itself network and a
    // writable path outside: it can only narrow.
    Attack::new(
        "A6/workspace-config",
        &format!(
            "echo x > \"$OUT/a6-ws-config\"\n{}",
            py(&format!(
                "{NET_PY}\nprint(\"TCP4\", tcp(socket.AF_INET, (\"127.0.0.1\", int(os.environ[\"TCP4\"]))), flush=True)\n"
            ))
        ),
    )
    .setup(|sc, _| {
        let cfg = format!(
            "network = \"on\"\nallow_write = [\"{}\"]\n",
            sc.out.display()
        );
        fs::create_dir_all(sc.ws.join(".workfence")).unwrap();
        fs::write(sc.ws.join(".workfence/config.toml"), cfg).unwrap();
        vec![]
    })
    .probe_exists("write $OUT granted by the workspace config", |sc| {
        sc.out.join("a6-ws-config")
    })
    .require_lines(&["TCP4"])
    .probe("network granted by the workspace config", |sc, _| {
        Ok(sc.listeners.contacts().tcp4)
    })
    .run();
}

#[test]
fn a6_nested_workfence_cannot_widen() {
    // Inside the sandbox, run workfence again asking for more: --allow-write $OUT and
    // --network on. The control (no outer sandbox) gets both.
    Attack::new(
        "A6/nested",
        &format!(
            "\"$WFBIN\" run -C \"$WS\" --allow-write \"$OUT\" --network on -- sh -c '\necho x > \"$OUT/a6-nested\"\n{}\n'",
            py(&format!(
                "{NET_PY}\nprint(\"TCP4\", tcp(socket.AF_INET, (\"127.0.0.1\", int(os.environ[\"TCP4\"]))), flush=True)\n"
            ))
            .replace('\'', "'\\''")
        ),
    )
    .setup(|_, _| vec![("WFBIN".into(), bin().into_os_string())])
    .probe_exists("nested --allow-write $OUT", |sc| sc.out.join("a6-nested"))
    .probe("nested --network on reaches the host", |sc, _| {
        Ok(sc.listeners.contacts().tcp4)
    })
    .run();
}

/// Simulates a host without user namespaces: a parent user namespace whose
/// `user.max_user_namespaces` is 0.
const NO_USERNS: &[&str] = &[
    "unshare",
    "-Ur",
    "sh",
    "-c",
    "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"",
    "wf-no-userns",
];

#[test]
fn a7_no_user_namespaces_refuses() {
    if !need("A7", &["unshare"]) {
        return;
    }
    Attack::new("A7/refuse", "touch \"$WS/ran-unsandboxed\"")
        .prefix(NO_USERNS)
        .expect_refusal()
        .probe("the command ran", |_, o| Ok(o.started()))
        .probe_exists("the command wrote", |sc| sc.ws.join("ran-unsandboxed"))
        .sandbox_check(
            "the reason names user namespaces and --allow-degraded",
            |_, o| {
                let e = o.stderr.to_lowercase();
                if e.contains("user namespace") && e.contains("--allow-degraded") {
                    Ok(())
                } else {
                    Err("stderr does not name user namespaces and --allow-degraded".into())
                }
            },
        )
        .run();
}

#[test]
fn a7_degraded_still_blocks_writes_outside() {
    if !need("A7", &["unshare"]) {
        return;
    }
    Attack::new(
        "A7/degraded",
        r#"
echo x >> "$H/.bashrc"
echo x > "$OUT/degraded-write"
echo ok > "$WS/src/inside"
"#,
    )
    .setup(|sc, _| {
        // Degraded mode documents that new entries at the top of a workspace that holds
        // protected paths cannot be created; an existing subdirectory must stay writable.
        fs::create_dir_all(sc.ws.join("src")).unwrap();
        vec![]
    })
    .prefix(NO_USERNS)
    .wf_arg("--allow-degraded")
    .probe_changed("append $H/.bashrc", |sc| sc.h.join(".bashrc"))
    .probe_exists("write $OUT", |sc| sc.out.join("degraded-write"))
    .sandbox_check("stderr lists what is NOT enforced", |_, o| {
        let e = o.stderr.to_lowercase();
        if e.contains("not enforced") && e.contains("namespace") {
            Ok(())
        } else {
            Err("stderr does not list the layers that are not enforced".into())
        }
    })
    .sandbox_check("the workspace stays writable", |sc, _| {
        if sc.ws.join("src/inside").exists() {
            Ok(())
        } else {
            Err("writing inside the workspace failed".into())
        }
    })
    .run();
}

#[test]
fn a1_home_persistence() {
    Attack::new(
        "A1",
        r#"
echo 'touch ~/PWNED' >> "$H/.profile"
printf '[core]\n\tpager = touch ~/PWNED\n' >> "$H/.gitconfig"
mkdir -p "$H/.config/systemd/user" && echo '[Service]' > "$H/.config/systemd/user/evil.service"
echo x > "$H/.config/autostart/evil.desktop"
mkdir -p "$H/.local/bin" && printf '#!/bin/sh\n' > "$H/.local/bin/git"
echo 'ssh-ed25519 AAAA evil' >> "$H/.ssh/authorized_keys"
mkdir -p "$H/.claude" && echo '{}' > "$H/.claude/settings.json"
echo 'sandbox_mode = "danger-full-access"' >> "$H/.codex/config.toml"
"#,
    )
    .probe_changed("~/.profile", |sc| sc.h.join(".profile"))
    .probe_changed("~/.gitconfig", |sc| sc.h.join(".gitconfig"))
    .probe_exists("~/.config/systemd/user unit", |sc| {
        sc.h.join(".config/systemd/user/evil.service")
    })
    .probe_exists("~/.config/autostart entry", |sc| {
        sc.h.join(".config/autostart/evil.desktop")
    })
    .probe_exists("~/.local/bin shim", |sc| sc.h.join(".local/bin/git"))
    .probe_exists("~/.ssh/authorized_keys", |sc| {
        sc.h.join(".ssh/authorized_keys")
    })
    .probe_exists("~/.claude/settings.json", |sc| {
        sc.h.join(".claude/settings.json")
    })
    .probe_exists("~/.codex/config.toml", |sc| sc.h.join(".codex/config.toml"))
    .run();
}

#[test]
fn p2_host_socket_created_after_start() {
    // A host daemon creates its socket after the sandbox started (an ssh-agent, a docker
    // daemon restarting): a list of sockets taken at setup does not cover it.
    const HELPER: &str = r#"
import os, socket, sys, time
ws, sock, out = sys.argv[1], sys.argv[2], sys.argv[3]
end = time.time() + 20
while not os.path.exists(os.path.join(ws, "ready")):
    if time.time() > end:
        sys.exit(0)
    time.sleep(0.01)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
# Listen before the name appears (bind elsewhere, then rename), so that a client that
# sees the socket never races the listen() call.
s.bind(sock + ".tmp"); s.listen(8); os.rename(sock + ".tmp", sock); s.settimeout(0.02)
while not os.path.exists(os.path.join(ws, "done")) and time.time() < end:
    try:
        c, _ = s.accept()
        open(out, "w").write("contacted\n")
        # Read the client's byte before closing, so its send never meets a closed peer.
        c.settimeout(2)
        try:
            c.recv(16)
        except OSError:
            pass
        c.close()
    except socket.timeout:
        pass
"#;
    Attack::new(
        "P2/late-socket",
        &format!(
            r#"
touch "$WS/ready"
i=0; while [ ! -S "$H/.run/late.sock" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
{}
touch "$WS/done"
sleep 0.1
"#,
            py(&format!(
                "{NET_PY}\nprint(\"LATE\", unix(os.environ[\"H\"] + \"/.run/late.sock\"), flush=True)\n"
            ))
        ),
    )
    .setup(|sc, _| {
        let child = Command::new(python())
            .arg("-c")
            .arg(HELPER)
            .arg(&sc.ws)
            .arg(sc.h.join(".run/late.sock"))
            .arg(sc.root.join("late-contacted"))
            .arg(format!("{}9", sc.mark))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the late socket helper");
        // Reaped by the scenario's leftover cleanup (argv carries ${MARK}9).
        std::mem::forget(child);
        vec![]
    })
    .require_lines(&["LATE"])
    .probe_rc("connect to a host socket created after the start", "LATE")
    .probe_exists("the host daemon got the connection", |sc| {
        sc.root.join("late-contacted")
    })
    .run();
}

// ------------------------------------------------------------------ secrets created late

/// Host side of RS1/late: waits for `$WS/ready`, creates `$H/.aws/credentials` (no `.aws`
/// at the start) and `$H/.config/gh/hosts.yml` (`.config` exists, `gh` does not), then the
/// go file.
const LATE_SECRETS_HELPER: &str = r#"
import os, sys, time
ws, home, go, tok = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
end = time.time() + 10
while not os.path.exists(os.path.join(ws, "ready")):
    if time.time() > end:
        sys.exit(0)
    time.sleep(0.01)
os.makedirs(os.path.join(home, ".aws"))
open(os.path.join(home, ".aws/credentials"), "w").write("LATE-aws-%s\n" % tok)
os.makedirs(os.path.join(home, ".config/gh"))
open(os.path.join(home, ".config/gh/hosts.yml"), "w").write("LATE-gh-%s\n" % tok)
open(go, "w").close()
"#;

#[test]
fn rs1_secrets_created_during_the_run() {
    Attack::new(
        "RS1/late",
        r#"
touch "$WS/ready"
i=0; while [ ! -e "$GO" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
[ -e "$GO" ] && echo GO seen
cat "$H/.aws/credentials" "$H/.config/gh/hosts.yml"
true
"#,
    )
    .setup(|sc, _| {
        force_remove(&sc.h.join(".aws"));
        force_remove(&sc.h.join(".config/gh"));
        // The helper creates entries in $H and $H/.config (changing their times): watch
        // their other entries one by one instead of the two directories themselves.
        let mut watched: Vec<_> = sc.watched.iter().filter(|p| **p != sc.h).cloned().collect();
        for e in dir_listing(&sc.h) {
            if e != ".config" {
                watched.push(sc.h.join(e));
            }
        }
        for e in dir_listing(&sc.h.join(".config")) {
            watched.push(sc.h.join(".config").join(e));
        }
        sc.watched = watched;
        let go = sc.root.join("go");
        let tok = std::ffi::OsString::from(&sc.token);
        host_helper(
            sc,
            LATE_SECRETS_HELPER,
            &[sc.ws.as_os_str(), sc.h.as_os_str(), go.as_os_str(), &tok],
        );
        vec![("GO".into(), go.into_os_string())]
    })
    .require_lines(&["GO"])
    .probe_stdout_has("read ~/.aws/credentials created after the start", |sc| {
        format!("LATE-aws-{}", sc.token)
    })
    .probe_stdout_has(
        "read ~/.config/gh/hosts.yml created after the start",
        |sc| format!("LATE-gh-{}", sc.token),
    )
    .run();
}

// ------------------------------------------------------------------ token-shaped values

/// Secrets under harmless names: the value, not the name, gives them away.
pub fn token_shaped_env(token: &str) -> Vec<(&'static str, String)> {
    // Deterministic filler (alphanumerics), long enough for each format.
    let fill = |n: usize| -> String {
        let alpha = b"AbCdEfGhJkMnPqRsTuVwXyZ23456789";
        let seed: Vec<u8> = token.bytes().collect();
        (0..n)
            .map(|i| alpha[(seed[i % seed.len()] as usize + i * 7) % alpha.len()] as char)
            .collect()
    };
    vec![
        ("DEPLOY", format!("ghp_{}", fill(36))),
        (
            "BUILD_META",
            format!(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ3ZiJ9.{}",
                fill(43)
            ),
        ),
        (
            "CALLBACK",
            format!(
                "https://hooks.slack.com/services/T{}/B{}/{}",
                fill(8).to_uppercase(),
                fill(9).to_uppercase(),
                fill(24)
            ),
        ),
        (
            "BLOB",
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA{}\n-----END RSA PRIVATE KEY-----",
                fill(48)
            ),
        ),
        ("MODEL_CFG", format!("sk-proj-{}", fill(48))),
        ("CLAUDE_CFG", format!("sk-ant-api03-{}", fill(40))),
        ("REGION_ID", format!("AKIA{}", fill(16).to_uppercase())),
    ]
}

#[test]
fn rs3_token_shaped_values_under_harmless_names() {
    let mut a = Attack::new("RS3/token-values", "env");
    // The tokens depend on the scenario's token, which exists only once the scenario is
    // built: pass them from the setup, and probe for what the setup derived.
    a = a.setup(|sc, _| {
        token_shaped_env(&sc.token)
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    });
    for (i, (name, _)) in token_shaped_env("x").into_iter().enumerate() {
        a = a.probe(
            &format!("{name} (token-shaped value) visible"),
            move |sc, o| {
                let (_, v) = token_shaped_env(&sc.token).swap_remove(i);
                // The PEM spans lines: look for its key body line.
                let needle = v.lines().nth(1).unwrap_or(&v).to_string();
                Ok(o.stdout.contains(&needle))
            },
        );
    }
    a.run();
}

// ------------------------------------------------------------------ TIOCSTI with --pty

#[test]
fn t1_tiocsti_with_pty() {
    // With --pty the command's controlling terminal is the sandbox's own pty, so setsid()
    // no longer stops TIOCSTI: only the seccomp rule does. The injected line is read and
    // run by the shell that follows; judged from outside by the file it creates.
    const WRAP: &str = r#"
import os, sys, pty, subprocess, termios, fcntl
m, s = pty.openpty()
def ctty():
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
p = subprocess.Popen(sys.argv[1:], stdin=s, start_new_session=True, preexec_fn=ctty)
rc = p.wait()
sys.exit(rc if rc >= 0 else 128 - rc)
"#;
    if !need("T1/pty", &["timeout"]) {
        return;
    }
    let script = format!(
        "{}\ntimeout --foreground 3 sh >/dev/null 2>&1\ntrue\n",
        py(r#"
line = ("touch %s/tiocsti-injected; exit\n" % os.environ["WS"]).encode()
def sti(fd):
    for ch in line:
        b = ctypes.c_char(ch)
        ctypes.set_errno(0)
        r = libc.ioctl(fd, ctypes.c_ulong(0x5412), ctypes.byref(b))
        if r != 0:
            return "rc=%d errno=%d" % (r, ctypes.get_errno())
    return "rc=0"
print("STI", sti(0), flush=True)
"#)
    );
    Attack::new("T1/pty", &script)
        .launch(Launch {
            prefix: vec![python().into_os_string(), "-c".into(), WRAP.into()],
            wf_args: vec!["--pty".into()],
            ..Launch::default()
        })
        .control_needs("TIOCSTI allowed on this kernel (dev.tty.legacy_tiocsti=1)")
        .require_lines(&["STI"])
        .probe_rc("TIOCSTI on the pty", "STI")
        .probe_exists("the injected command ran", |sc| {
            sc.ws.join("tiocsti-injected")
        })
        .run();
}

// ------------------------------------------------------------------ broker concurrency

/// Runs `"$@"`, waits (at most 10 s) for a flag file, then sends SIGTERM to it; exits with
/// its status (128+N for a signal).
const TERM_WRAP: &str = r#"
import os, signal, subprocess, sys, time
flag = sys.argv[1]
p = subprocess.Popen(sys.argv[2:])
end = time.time() + 10
while time.time() < end and p.poll() is None and not os.path.exists(flag):
    time.sleep(0.02)
if p.poll() is None:
    p.send_signal(signal.SIGTERM)
rc = p.wait()
sys.exit(rc if rc >= 0 else 128 - rc)
"#;

const BROKER_SCRIPT: &str = r#"
D=/tmp/wf-broker-$MARK; rm -rf "$D"; mkdir -p "$D"
"$PY" -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
time.sleep(60)
' "$D/a.sock" ${MARK}1 &
"$PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
while True:
    c, _ = s.accept(); c.sendall(c.recv(16).upper()); c.close()
' "$D/b.sock" ${MARK}3 &
i=0; while { [ ! -S "$D/a.sock" ] || [ ! -S "$D/b.sock" ]; } && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
# Fill a's backlog (it never accepts): the third connect blocks in the kernel (or in the
# supervisor that brokers it).
"$PY" -c '
import socket, sys
keep = []
for i in range(8):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); keep.append(s)
    print("FILLED", i, flush=True)
' "$D/a.sock" ${MARK}2 &
i=0; while ! grep -q "FILLED 1" "$D/filled" 2>/dev/null && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
sleep 0.5
echo "FILLERS $(grep -c FILLED "$D/filled")"
"$PY" -c '
import socket, sys
try:
    s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
    s.sendall(b"ping"); print("OTHER rc=0", s.recv(16).decode(), flush=True)
except OSError as e:
    print("OTHER rc=-1 errno=%s" % e.errno, flush=True)
' "$D/b.sock"
touch "$WS/other-done"
sleep ${MARK}4
"#;

#[test]
fn b1_broker_concurrency_and_term_forwarding() {
    // Not an escape but a denial of service of the unix-connect broker: a connect that
    // blocks (full backlog) must not stall other connects, signal forwarding or the exit.
    let id = "B1/broker-concurrency";
    count(&format!("BEGIN {id}"));
    let script = BROKER_SCRIPT.replace(
        "\"$D/a.sock\" ${MARK}2 &",
        "\"$D/a.sock\" ${MARK}2 > \"$D/filled\" &",
    );
    for mode in [Mode::Control, Mode::Sandboxed] {
        let mut sc = Scenario::new("b1-broker");
        let l = Launch {
            prefix: vec![
                python().into_os_string(),
                "-c".into(),
                TERM_WRAP.into(),
                "{ROOT}/ws/other-done".into(),
            ],
            wf_args: vec!["--timeout".into(), "20s".into()],
            cap: Some(Duration::from_secs(40)),
            ..Launch::default()
        };
        let o = sc.run_script(mode, &script, &l);
        let mut failed = Vec::new();
        if !o.started() {
            failed.push("the script did not start".to_string());
        }
        if o.field("FILLERS").as_deref() != Some("2") {
            failed.push(
                "the backlog was not filled exactly (two connects queued, one blocked)".into(),
            );
        }
        if !o.stdout.lines().any(|l| l == "OTHER rc=0 PING") {
            failed.push("the connect to the second listener did not succeed".into());
        }
        if o.code != Some(143) {
            failed.push(format!(
                "expected exit 143 (SIGTERM forwarded), got {:?}",
                o.code
            ));
        }
        if o.hung {
            failed.push("the run hung".into());
        }
        if mode == Mode::Sandboxed {
            failed.extend(sc.invariants(&o).into_iter().map(|v| format!("host: {v}")));
        }
        sc.kill_leftovers();
        assert!(
            failed.is_empty(),
            "{} {id} failed:\n  {}\n{}",
            mode.name(),
            failed.join("\n  "),
            o.show()
        );
        match mode {
            Mode::Control => count(&format!("CONTROL {id} succeeded")),
            Mode::Sandboxed => count(&format!("ATTACK {id} blocked")),
        }
    }
}
