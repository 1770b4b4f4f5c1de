//! The host's real git, on a real temporary repository: workfence's layout must
//! protect what git itself reports, and asking git must run nothing from the repo.

use std::path::{Path, PathBuf};
use std::process::Command;

use workfence_policy::layout::{compute, StdProbe};
use workfence_policy::Policy;

fn git_installed() -> bool {
    Command::new("git").arg("--version").output().is_ok()
}

/// No silent skips: with WORKFENCE_MUST_WORK=1 a missing git fails the test.
fn skip_or_fail(reason: &str) {
    if std::env::var_os("WORKFENCE_MUST_WORK").is_some_and(|v| v == "1") {
        panic!("SKIP not allowed (WORKFENCE_MUST_WORK=1): {reason}");
    }
    eprintln!("SKIP git_real: {reason}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wf-git-real-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::canonicalize(&d).unwrap()
}

fn git(dir: &Path, home: &Path, args: &[&str]) {
    let st = Command::new("git")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}

#[test]
fn real_git_includes_into_the_workspace() {
    if !git_installed() {
        return skip_or_fail("git is not installed");
    }
    let base = tmp("inc");
    let home = base.join("home");
    let ws = base.join("ws");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&ws).unwrap();
    git(&ws, &home, &["init", "-q"]);
    // The global config includes a file in the workspace (existing) and one that is
    // missing; the repository config includes another, relative to .git/.
    std::fs::write(
        home.join(".gitconfig"),
        format!(
            "[include]\n\tpath = {}/team.cfg\n\tpath = ~/../ws/missing.cfg\n",
            ws.display()
        ),
    )
    .unwrap();
    std::fs::write(ws.join("team.cfg"), "[include]\n\tpath = nested.cfg\n").unwrap();
    std::fs::write(ws.join("nested.cfg"), "[user]\n\tname = n\n").unwrap();
    // If asking git ran fsmonitor (or anything else from the repository), this
    // marker would appear.
    let marker = base.join("PWNED");
    git(&ws, &home, &["config", "include.path", "../repo.cfg"]);
    std::fs::write(
        ws.join("repo.cfg"),
        format!(
            "[core]\n\tfsmonitor = \"touch {}; false\"\n\thooksPath = myhooks\n",
            marker.display()
        ),
    )
    .unwrap();

    let l = compute(&Policy::new(&ws), &home, &StdProbe).unwrap();
    let protected = |p: PathBuf| {
        l.protected
            .iter()
            .any(|x| x.path == p && x.protection == workfence_policy::layout::Protection::ReadOnly)
    };
    for p in [
        ws.join("team.cfg"),
        ws.join("nested.cfg"),
        ws.join("missing.cfg"),
        ws.join("repo.cfg"),
        ws.join("myhooks"),
        ws.join(".git/commondir"),
        ws.join(".git/config"),
        ws.join(".git/config.worktree"),
        ws.join(".git/hooks"),
    ] {
        assert!(
            protected(p.clone()),
            "{} not protected: {:#?}",
            p.display(),
            l.protected
        );
    }
    assert!(
        !l.notes.iter().any(|n| n.contains("git is not installed")),
        "{:?}",
        l.notes
    );
    assert!(!marker.exists(), "asking git ran core.fsmonitor");

    // `~user/` expands through the password database: an include written that way
    // must be found too (git then reports the file as an origin, and a protected
    // one at that, or the layout is refused).
    let out = Command::new("id").arg("-un").output().unwrap();
    let user = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let uhome = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[0] == user).then(|| PathBuf::from(f[5]))
    });
    match uhome.filter(|h| h.is_dir()) {
        None => skip_or_fail("the current user's home is not in /etc/passwd"),
        Some(uhome) => {
            let ups = "../".repeat(uhome.components().count() - 1);
            std::fs::write(
                ws.join("team.cfg"),
                format!(
                    "[include]\n\tpath = ~{user}/{ups}{}/odd.cfg\n",
                    ws.display()
                ),
            )
            .unwrap();
            std::fs::write(ws.join("odd.cfg"), "[user]\n\temail = o\n").unwrap();
            let l = compute(&Policy::new(&ws), &home, &StdProbe).unwrap();
            assert!(
                l.protected.iter().any(|x| x.path == ws.join("odd.cfg")),
                "{:#?}",
                l.protected
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
