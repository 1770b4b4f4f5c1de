//! Attacks that plant code for the HOST's git to run later: the command prepares files
//! inside its workspace, then (after the run) the host runs an ordinary `git status` /
//! `git commit` / `git checkout` there with the user's own config, hooks and fsmonitor
//! honoured (`host_git_real`). The attack worked when a `PWNED*` file appears in `$OUT`,
//! which only host code can write. Every test also runs as a control without the sandbox.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;

/// Runs host git in `dir` (relative to `$WS`), then says whether `$OUT/<pwned>` exists.
fn host_git_runs(sc: &Scenario, dir: &str, args: &[&str], pwned: &str) -> Result<bool, String> {
    let d: PathBuf = if dir.is_empty() {
        sc.ws.clone()
    } else {
        sc.ws.join(dir)
    };
    if !d.is_dir() {
        // Nothing to run git in: the planted repository does not exist.
        return Ok(false);
    }
    let _ = host_git_real(sc, &d, args);
    Ok(fs::symlink_metadata(sc.out.join(pwned)).is_ok())
}

/// Shell: a minimal git dir at `$1` whose config runs an fsmonitor writing `$OUT/$2` and
/// whose pre-commit and post-checkout hooks write `$OUT/$2-hook`.
const MK_EVIL: &str = r#"
mk_evil() {
    mkdir -p "$1/objects" "$1/refs/heads" "$1/hooks"
    echo 'ref: refs/heads/main' > "$1/HEAD"
    printf '[core]\n\trepositoryformatversion = 0\n\tfsmonitor = "touch %s/%s; false"\n' "$OUT" "$2" > "$1/config"
    for h in pre-commit post-checkout; do
        printf '#!/bin/sh\ntouch "%s/%s-hook"\n' "$OUT" "$2" > "$1/hooks/$h"
        chmod +x "$1/hooks/$h"
    done
}
"#;

// ------------------------------------------------------------------ commondir redirect

#[test]
fn g1_commondir_redirect() {
    if !need("G1/commondir", &["git"]) {
        return;
    }
    Attack::new(
        "G1/commondir",
        &format!("{MK_EVIL}\nmk_evil evil PWNED-commondir\necho ../evil > .git/commondir\n"),
    )
    .probe(
        "host git status runs a config reached through .git/commondir",
        |sc, _| host_git_runs(sc, "", &["status"], "PWNED-commondir"),
    )
    .run();
}

#[test]
fn g1_worktree_commondir_redirect() {
    if !need("G1/worktree-commondir", &["git"]) {
        return;
    }
    Attack::new(
        "G1/worktree-commondir",
        &format!(
            "{MK_EVIL}\nmk_evil \"$WS/evil\" PWNED-wt-commondir\necho \"$WS/evil\" > \"$GITDIR/commondir\"\n"
        ),
    )
    .ws(WsKind::Worktree)
    .probe(
        "host git status runs a config reached through <gitdir>/commondir",
        |sc, _| host_git_runs(sc, "", &["status"], "PWNED-wt-commondir"),
    )
    .run();
}

#[test]
fn g1_include_created_late() {
    if !need("G1/include", &["git"]) {
        return;
    }
    Attack::new(
        "G1/include",
        r#"printf '[core]\n\tfsmonitor = "touch %s/PWNED-include; false"\n' "$OUT" > "$WS/.gitinc""#,
    )
    .setup(|sc, _| {
        // The user's own ~/.gitconfig includes a file in the workspace that does not exist
        // yet (a common dotfiles pattern: per-project overrides).
        let gc = sc.h.join(".gitconfig");
        let mut t = read_lossy(&gc);
        t.push_str(&format!("[include]\n\tpath = {}/.gitinc\n", sc.ws.display()));
        fs::write(&gc, t).unwrap();
        vec![]
    })
    .probe(
        "host git status runs an fsmonitor from an included file",
        |sc, _| host_git_runs(sc, "", &["status"], "PWNED-include"),
    )
    .run();
}

#[test]
fn g1_hooks_path_missing_dir() {
    if !need("G1/hooks-path-missing", &["git"]) {
        return;
    }
    Attack::new(
        "G1/hooks-path-missing",
        r#"
mkdir -p .myhooks
printf '#!/bin/sh\ntouch "%s/PWNED-hookspath"\n' "$OUT" > .myhooks/post-checkout
chmod +x .myhooks/post-checkout
"#,
    )
    .setup(|sc, _| {
        // core.hooksPath names a directory that does not exist when the run starts.
        host_git(&sc.ws, &sc.h, &["config", "core.hooksPath", ".myhooks"]);
        vec![]
    })
    .probe(
        "host git checkout runs a hook in core.hooksPath",
        |sc, _| {
            host_git_runs(
                sc,
                "",
                &["checkout", "-q", "-b", "wf-after"],
                "PWNED-hookspath",
            )
        },
    )
    .run();
}

// ------------------------------------------------------------------ nested repositories

fn nested(id: &str, script: &str, sub: &'static str) {
    if !need(id, &["git"]) {
        return;
    }
    let pwned: &'static str = Box::leak(format!("PWNED-{}", id.replace('/', "-")).into_boxed_str());
    Attack::new(id, &format!("{MK_EVIL}\n{script}\n"))
        .env("P", pwned)
        .probe(
            "host `git status` in the nested repo runs its fsmonitor",
            move |sc, _| host_git_runs(sc, sub, &["status"], pwned),
        )
        .probe(
            "host `git commit` / `git checkout` in the nested repo runs its hooks",
            move |sc, _| {
                let hook = format!("{pwned}-hook");
                let _ = host_git_runs(
                    sc,
                    sub,
                    &["commit", "-q", "--allow-empty", "-m", "x"],
                    &hook,
                );
                host_git_runs(sc, sub, &["checkout", "-q", "-b", "wf-after"], &hook)
            },
        )
        .run();
}

#[test]
fn g3_nested_repo_by_hand() {
    nested("G3/nested-mkdir", "mk_evil sub/.git \"$P\"", "sub");
}

#[test]
fn g3_nested_repo_git_init() {
    nested(
        "G3/nested-init",
        r#"git init -q sub1
printf '[core]\n\tfsmonitor = "touch %s/%s; false"\n' "$OUT" "$P" >> sub1/.git/config
for h in pre-commit post-checkout; do
    printf '#!/bin/sh\ntouch "%s/%s-hook"\n' "$OUT" "$P" > sub1/.git/hooks/$h; chmod +x sub1/.git/hooks/$h
done"#,
        "sub1",
    );
}

#[test]
fn g3_nested_repo_by_rename() {
    nested(
        "G3/nested-rename",
        "mk_evil x \"$P\"; mkdir -p sub2; mv x sub2/.git",
        "sub2",
    );
}

#[test]
fn g3_nested_repo_symlink() {
    nested(
        "G3/nested-symlink",
        "mk_evil evil \"$P\"; mkdir -p sub3; ln -s ../evil sub3/.git",
        "sub3",
    );
}

#[test]
fn g3_nested_repo_gitfile() {
    nested(
        "G3/nested-gitfile",
        "mk_evil evil \"$P\"; mkdir -p sub4; echo 'gitdir: ../evil' > sub4/.git",
        "sub4",
    );
}

// ------------------------------------------------------------------ guards removed mid-run

/// Host side of G2: waits for `$WS/ready`, runs `git clean -fdx` in the workspace, removes
/// any empty placeholder that is left, then creates the go file.
const G2_HELPER: &str = r#"
import os, subprocess, sys, time
ws, home, go = sys.argv[1], sys.argv[2], sys.argv[3]
end = time.time() + 10
while not os.path.exists(os.path.join(ws, "ready")):
    if time.time() > end:
        sys.exit(0)
    time.sleep(0.01)
env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "GIT_CONFIG_NOSYSTEM": "1"}
subprocess.run(["git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
                "clean", "-fdx", "-q"], cwd=ws, env=env, stdin=subprocess.DEVNULL)
for n in (".codex", ".vscode", ".claude", ".mcp.json"):
    p = os.path.join(ws, n)
    try:
        if os.path.isdir(p) and not os.path.islink(p) and not os.listdir(p):
            os.rmdir(p)
    except OSError:
        pass
open(go, "w").close()
"#;

#[test]
fn g2_guards_removed_by_host_mid_run() {
    if !need("G2/guards-removed", &["git"]) {
        return;
    }
    Attack::new(
        "G2/guards-removed",
        r#"
touch "$WS/ready"
i=0; while [ ! -e "$GO" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
[ -e "$GO" ] && echo GO seen
mkdir -p .codex && echo x > .codex/config.toml
mkdir -p .vscode && echo '{}' > .vscode/tasks.json
echo x > .mcp.json
true
"#,
    )
    .setup(|sc, _| {
        let go = sc.root.join("go");
        host_helper(
            sc,
            G2_HELPER,
            &[sc.ws.as_os_str(), sc.h.as_os_str(), go.as_os_str()],
        );
        vec![("GO".into(), go.into_os_string())]
    })
    .require_lines(&["GO"])
    .probe("wrote .codex/config.toml", |sc, _| {
        Ok(read_lossy(&sc.ws.join(".codex/config.toml")) == "x\n")
    })
    .probe("wrote .vscode/tasks.json", |sc, _| {
        Ok(read_lossy(&sc.ws.join(".vscode/tasks.json")) == "{}\n")
    })
    .probe("wrote .mcp.json", |sc, _| {
        Ok(
            fs::symlink_metadata(sc.ws.join(".mcp.json")).is_ok_and(|m| m.is_file())
                && read_lossy(&sc.ws.join(".mcp.json")) == "x\n",
        )
    })
    .run();
}
