//! Degraded mode (Landlock and seccomp only) where it is most often needed: inside a
//! container that runs a normal user without CAP_SETPCAP and without user namespaces.
//! Simulated with bubblewrap: `bwrap --dev-bind / / --unshare-user --disable-userns
//! --unshare-pid`, a user namespace that holds no capabilities for its process and
//! may not create another one. Every run (control and sandboxed) goes through it.
#![cfg(target_os = "linux")]

mod common;

use std::ffi::OsString;
use std::fs;
use std::process::{Command, Stdio};

use common::*;

/// The bwrap prefix, or `None` (after skip_or_fail) when bwrap is missing or cannot
/// create its user namespace here.
fn container(test: &str) -> Option<Vec<String>> {
    let Some(bwrap) = which("bwrap") else {
        skip_or_fail(test, "bwrap is not installed (.ci/run installs bubblewrap)");
        return None;
    };
    let prefix: Vec<String> = [
        bwrap.to_string_lossy().as_ref(),
        "--dev-bind",
        "/",
        "/",
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let works = Command::new(&prefix[0])
        .args(&prefix[1..])
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        skip_or_fail(
            test,
            "bwrap cannot create a user namespace on this host (unprivileged user namespaces blocked?)",
        );
        return None;
    }
    Some(prefix)
}

fn launch(prefix: &[String]) -> Launch {
    Launch {
        prefix: prefix.iter().map(OsString::from).collect(),
        wf_args: vec!["--allow-degraded".into()],
        ..Launch::default()
    }
}

fn attack(id: &str, script: &str, prefix: &[String]) -> Attack {
    let refs: Vec<&str> = prefix.iter().map(String::as_str).collect();
    Attack::new(id, script)
        .prefix(&refs)
        .wf_arg("--allow-degraded")
        .sandbox_check("ran degraded, and said so", |_, o| {
            if o.started() && o.stderr.contains("DEGRADED") {
                Ok(())
            } else {
                Err("the command did not run in degraded mode".into())
            }
        })
}

/// A work case that must pass degraded, inside the container.
fn work(name: &str, script: &str, setup: impl Fn(&Scenario)) -> Option<(Scenario, Outcome)> {
    let prefix = container(name)?;
    let mut sc = Scenario::new(name);
    setup(&sc);
    let o = sc.run_script(Mode::Sandboxed, script, &launch(&prefix));
    assert_ok(&o, name);
    assert!(o.started(), "{name}: the script did not run\n{}", o.show());
    assert!(
        o.stderr.contains("DEGRADED"),
        "{name}: not reported as degraded\n{}",
        o.show()
    );
    Some((sc, o))
}

#[test]
fn degraded_work_echo() {
    let Some((_, o)) = work("degraded-echo", "echo hello-degraded", |_| {}) else {
        return;
    };
    assert!(o.stdout.contains("hello-degraded"), "{}", o.show());
    work_passed("degraded-echo");
}

#[test]
fn degraded_work_write_workspace() {
    // Degraded mode documents that new entries at the top of a workspace holding
    // protected paths cannot be created; an existing subdirectory stays writable.
    let Some((sc, o)) = work(
        "degraded-write",
        "set -e; echo ok > src/inside; echo more >> src/inside; mkdir src/sub; mv src/inside src/sub/moved",
        |sc| fs::create_dir_all(sc.ws.join("src")).unwrap(),
    ) else {
        return;
    };
    assert_eq!(
        read_lossy(&sc.ws.join("src/sub/moved")),
        "ok\nmore\n",
        "{}",
        o.show()
    );
    work_passed("degraded-write-workspace");
}

#[test]
fn degraded_work_git_status() {
    if !need("degraded-git", &["git"]) {
        return;
    }
    let Some((_, o)) = work(
        "degraded-git",
        "set -e; echo new > untracked.txt 2>/dev/null || true; git status --short; git log --oneline | head -1",
        |sc| fs::create_dir_all(sc.ws.join("src")).unwrap(),
    ) else {
        return;
    };
    assert!(!o.stdout.trim().is_empty(), "{}", o.show());
    work_passed("degraded-git-status");
}

#[test]
fn degraded_refused_without_allow_degraded() {
    // The clone errno here is ENOSPC (max_user_namespaces): the message names it and
    // the way out, and nothing runs.
    let Some(prefix) = container("degraded-refuse") else {
        return;
    };
    let refs: Vec<&str> = prefix.iter().map(String::as_str).collect();
    Attack::new("DG/refuse", "touch \"$WS/ran-unsandboxed\"")
        .prefix(&refs)
        .expect_refusal()
        .probe_exists("the command wrote", |sc| sc.ws.join("ran-unsandboxed"))
        .sandbox_check("the reason names the cause and --allow-degraded", |_, o| {
            let e = &o.stderr;
            if e.contains("user namespace")
                && e.contains("max_user_namespaces")
                && e.contains("--allow-degraded")
            {
                Ok(())
            } else {
                Err("stderr does not name the cause (ENOSPC, max_user_namespaces)".into())
            }
        })
        .run();
}

#[test]
fn degraded_write_home_blocked() {
    let Some(prefix) = container("degraded-home") else {
        return;
    };
    attack(
        "DG/write-home",
        r#"echo x >> "$H/.bashrc"; echo x > "$H/.config/autostart/evil.desktop""#,
        &prefix,
    )
    .probe_changed("append $H/.bashrc", |sc| sc.h.join(".bashrc"))
    .probe_exists("create in $H/.config/autostart", |sc| {
        sc.h.join(".config/autostart/evil.desktop")
    })
    .run();
}

#[test]
fn degraded_secret_unreadable() {
    let Some(prefix) = container("degraded-secret") else {
        return;
    };
    attack(
        "DG/read-secret",
        r#"cat "$H/.ssh/id_rsa" "$H/.aws/credentials""#,
        &prefix,
    )
    .probe_stdout_has("read $H/.ssh/id_rsa", |sc| sc.secret_of(".ssh/id_rsa"))
    .probe_stdout_has("read $H/.aws/credentials", |sc| {
        sc.secret_of(".aws/credentials")
    })
    .run();
}

#[test]
fn degraded_protected_path_blocked() {
    let Some(prefix) = container("degraded-protected") else {
        return;
    };
    attack(
        "DG/protected",
        r#"echo '[core] hooksPath = /tmp' >> .git/config; printf '#!/bin/sh\ntouch "$H/PWNED"\n' > .git/hooks/pre-commit"#,
        &prefix,
    )
    .probe_changed("append .git/config", |sc| sc.ws.join(".git/config"))
    .probe_exists("create .git/hooks/pre-commit", |sc| {
        sc.ws.join(".git/hooks/pre-commit")
    })
    .run();
}

/// With a procfs of its own pid namespace (as container runtimes mount) the write
/// broker runs in degraded mode too: missing protected names and nested-repository
/// config cannot be created, although no mount guards them.
#[test]
fn degraded_broker_refuses_missing_protected_names() {
    let Some(mut prefix) = container("degraded-broker") else {
        return;
    };
    // bwrap [--dev-bind / /] --proc /proc ...: insert after the bind.
    prefix.splice(4..4, ["--proc".to_string(), "/proc".to_string()]);
    attack(
        "DG/broker-protected-names",
        r#"mkdir -p .codex && echo x > .codex/config.toml; mkdir -p sub/.git/hooks; echo x > sub/.git/config; echo ../evil > .git/commondir"#,
        &prefix,
    )
    .probe_exists("create .codex/config.toml", |sc| {
        sc.ws.join(".codex/config.toml")
    })
    .probe_exists("create sub/.git/config", |sc| sc.ws.join("sub/.git/config"))
    .probe_exists("create .git/commondir", |sc| sc.ws.join(".git/commondir"))
    .run();
}
