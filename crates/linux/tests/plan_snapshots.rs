//! Snapshot tests of the Linux plan. They run on every OS: the plan is pure.

use std::path::{Path, PathBuf};

use workfence_linux::{plan, HostFacts, Isolation, LinuxPlan};
use workfence_policy::layout::{compute, memfs::MemFs, FsLayout, FsProbe};
use workfence_policy::resolve::{resolve, CliOverrides, Layers};
use workfence_policy::{Mode, Network, Policy};

const HOME: &str = "/home/dev";

fn host() -> MemFs {
    MemFs::default()
        .dir("/home/dev/src/proj/.git/hooks")
        .file(
            "/home/dev/src/proj/.git/config",
            "[core]\n\thooksPath = .husky\n",
        )
        .dir("/home/dev/src/proj/src")
        .dir("/home/dev/src/proj/.vscode")
        .dir("/home/dev/.ssh")
        .dir("/home/dev/.aws")
        .file("/home/dev/.netrc", "machine x")
        .file("/home/dev/.cargo/credentials.toml", "t")
        .dir("/home/dev/.cache/sccache")
        .dir("/srv/data")
        .dir("/usr/bin")
        .dir("/etc")
        .file("/home/dev/.bashrc", "")
        .dir("/home/dev/.config/nvim")
        .dir("/home/dev/.local/share/fonts")
        .file(
            "/home/dev/wt/.git",
            "gitdir: /home/dev/src/proj/.git/worktrees/wt\n",
        )
        .file("/home/dev/src/proj/.git/worktrees/wt/commondir", "../..\n")
}

fn facts() -> HostFacts {
    HostFacts {
        uid: 1000,
        gid: 1000,
        landlock_abi: 6,
        unix_sockets: vec![
            "/run/docker.sock".into(),
            "/var/lib/agent/agent.sock".into(),
            "/home/dev/src/proj/dev.sock".into(),
        ],
        run_dirs: vec!["/run".into()],
        resolv_conf: Some("/run/systemd/resolve/stub-resolv.conf".into()),
        degraded_tmp: "/tmp/workfence-1000-42".into(),
        ..Default::default()
    }
}

fn policy(cli: CliOverrides) -> Policy {
    resolve(&Layers {
        home: HOME.into(),
        cwd: "/home/dev/src/proj".into(),
        user: None,
        workspace_config: None,
        cli,
    })
    .unwrap()
    .policy
}

/// Adds the listings the probe gathers: the ancestors of every secret pattern and
/// hidden path, and in degraded mode of every protected path.
fn listed(p: &Policy, layout: &FsLayout, facts: &HostFacts, iso: Isolation) -> HostFacts {
    let fs = host();
    let mut f = facts.clone();
    let mut targets: Vec<PathBuf> = p.deny_read.iter().map(|d| d.path.clone()).collect();
    targets.extend(layout.hidden.iter().map(|h| h.path.clone()));
    targets.extend(f.resolved_secrets.iter().cloned());
    if iso == Isolation::Degraded {
        targets.extend(layout.protected.iter().map(|p| p.path.clone()));
    }
    for t in &targets {
        for a in t.ancestors().skip(1) {
            f.listings
                .entry(a.to_path_buf())
                .or_insert_with(|| fs.read_dir(a));
        }
    }
    f
}

fn make(p: &Policy, facts: &HostFacts, iso: Isolation) -> LinuxPlan {
    let layout = compute(p, Path::new(HOME), &host()).unwrap();
    plan(p, &layout, &listed(p, &layout, facts, iso), iso).unwrap()
}

/// Whether some rule granting reads covers `path` (is it or an ancestor).
fn readable(plan: &LinuxPlan, path: &str) -> bool {
    plan.landlock.as_ref().unwrap().rules.iter().any(|r| {
        r.access
            .contains(&workfence_linux::plan::LlAccess::ReadFile)
            && Path::new(path).starts_with(&r.path)
    })
}

#[test]
fn secrets_created_during_the_run_have_no_read_rule() {
    for iso in [Isolation::Namespaces, Isolation::Degraded] {
        let p = policy(CliOverrides::default());
        let plan = make(&p, &facts(), iso);
        // Missing at the start, under an existing directory (~/.config), under a
        // missing one (~/.config/gcloud), directly in ~ (~/.gemini), a new name for a
        // wildcard entry (~/.cargo/credentials*), and inside an existing secret.
        for late in [
            "/home/dev/.config/gh/hosts.yml",
            "/home/dev/.config/gcloud/credentials.db",
            "/home/dev/.gemini/oauth_creds.json",
            "/home/dev/.cargo/credentials",
            "/home/dev/.aws/credentials",
            "/home/dev/.local/share/keyrings/login.keyring",
        ] {
            assert!(!readable(&plan, late), "{iso:?}: {late} is readable");
        }
        // Everything else stays readable, and the workspace keeps working.
        for ok in [
            "/usr/bin/env",
            "/etc/passwd",
            "/home/dev/.bashrc",
            "/home/dev/.config/nvim/init.lua",
            "/home/dev/.local/share/fonts/x.ttf",
            "/home/dev/src/proj/src/new_file.rs",
        ] {
            assert!(readable(&plan, ok), "{iso:?}: {ok} is not readable");
        }
        // The expanded ancestors themselves get no read rule (one on ~ would cover
        // everything created in it later), only listing beneath `/`.
        for anc in [
            "/",
            "/home",
            "/home/dev",
            "/home/dev/.config",
            "/home/dev/.cargo",
        ] {
            assert!(
                !plan
                    .landlock
                    .as_ref()
                    .unwrap()
                    .rules
                    .iter()
                    .any(|r| r.path == Path::new(anc)
                        && r.access != [workfence_linux::plan::LlAccess::ReadDir]),
                "{iso:?}: read rule on {anc}"
            );
        }
    }
}

#[test]
fn a_secret_behind_a_symlinked_ancestor_is_left_out_under_both_names() {
    // ~/.config -> /data/config on the host: the probe reports the resolved form.
    let p = policy(CliOverrides::default());
    let layout = compute(&p, Path::new(HOME), &host()).unwrap();
    let mut f = facts();
    f.resolved_secrets = vec!["/data/config/gh".into()];
    f.listings
        .insert("/".into(), vec!["data".into(), "home".into(), "usr".into()]);
    f.listings
        .insert("/data".into(), vec!["config".into(), "other".into()]);
    f.listings
        .insert("/data/config".into(), vec!["gh".into(), "nvim".into()]);
    let f = listed(&p, &layout, &f, Isolation::Namespaces);
    let plan = plan(&p, &layout, &f, Isolation::Namespaces).unwrap();
    assert!(!readable(&plan, "/data/config/gh/hosts.yml"));
    assert!(readable(&plan, "/data/config/nvim/init.lua"));
    assert!(readable(&plan, "/data/other/x"));
}

#[test]
fn workspace_write_default() {
    let p = policy(CliOverrides::default());
    insta::assert_snapshot!(make(&p, &facts(), Isolation::Namespaces).to_string());
}

#[test]
fn read_only() {
    let p = policy(CliOverrides {
        mode: Some(Mode::ReadOnly),
        ..Default::default()
    });
    insta::assert_snapshot!(make(&p, &facts(), Isolation::Namespaces).to_string());
}

#[test]
fn extra_roots_deny_read_network_on() {
    let p = policy(CliOverrides {
        allow_write: vec![PathBuf::from("/home/dev/.cache/sccache")],
        deny_read: vec![PathBuf::from("/srv/data")],
        network: Some(Network::On),
        ..Default::default()
    });
    insta::assert_snapshot!(make(&p, &facts(), Isolation::Namespaces).to_string());
}

#[test]
fn linked_worktree() {
    let p = policy(CliOverrides {
        workspace: Some("/home/dev/wt".into()),
        ..Default::default()
    });
    insta::assert_snapshot!(make(&p, &facts(), Isolation::Namespaces).to_string());
}

#[test]
fn degraded_landlock_only() {
    let p = policy(CliOverrides::default());
    let mut f = facts();
    let fs = host();
    for d in [
        "/",
        "/home",
        "/home/dev",
        "/home/dev/.cargo",
        "/home/dev/src",
        "/home/dev/src/proj",
        "/home/dev/src/proj/.git",
    ] {
        f.listings.insert(d.into(), fs.read_dir(Path::new(d)));
    }
    let plan = make(&p, &f, Isolation::Degraded);
    assert!(plan.mounts.is_empty());
    assert!(!plan.gaps.is_empty());
    // The secret directories get no read rule; their siblings do.
    let ll = plan.landlock.as_ref().unwrap();
    assert!(!ll
        .rules
        .iter()
        .any(|r| r.path == Path::new("/home/dev/.ssh") || r.path == Path::new("/home/dev")));
    assert!(ll
        .rules
        .iter()
        .any(|r| r.path == Path::new("/home/dev/src")));
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn old_kernel_without_landlock_reports_a_gap() {
    let p = policy(CliOverrides::default());
    let mut f = facts();
    f.landlock_abi = 0;
    let plan = make(&p, &f, Isolation::Namespaces);
    assert!(plan.landlock.is_none());
    assert!(plan.gaps.iter().any(|g| g.layer == "landlock"));
}

#[test]
fn landlock_rights_follow_the_abi() {
    let p = policy(CliOverrides::default());
    for abi in 1..=9 {
        let mut f = facts();
        f.landlock_abi = abi;
        let plan = make(&p, &f, Isolation::Namespaces);
        let ll = plan.landlock.unwrap();
        assert!(ll.handled.iter().all(|a| a.abi() <= abi), "abi {abi}");
        assert_eq!(ll.scope_signal, abi >= 6);
    }
}

#[test]
fn network_allowlist_bridge() {
    let mut p = policy(CliOverrides::default());
    p.network = Network::Proxy(workfence_policy::ProxyPolicy {
        allow: vec!["**.example.org".into()],
        ..Default::default()
    });
    let layout = compute(&p, Path::new(HOME), &host()).unwrap();
    let pl = plan(&p, &layout, &facts(), Isolation::Namespaces).unwrap();
    // Private namespace (loopback only); the proxy's socket is the only way out.
    assert!(pl.private_network);
    let bridge = pl.proxy.clone().unwrap();
    assert_eq!(bridge.listen.to_string(), "127.0.0.1:3128");
    insta::assert_yaml_snapshot!("network_allowlist_bridge", bridge);
    insta::assert_snapshot!(
        "network_allowlist_explain",
        pl.to_string()
            .lines()
            .filter(|l| l.contains("network") || l.contains("proxy"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Without user namespaces there is no private network namespace: refused, not
    // silently turned into "network on" or "off".
    let err = plan(&p, &layout, &facts(), Isolation::Degraded).unwrap_err();
    assert!(
        err.to_string().contains("private network namespace"),
        "{err}"
    );
}

#[test]
fn network_allowlist_transparent_mode() {
    let mut p = policy(CliOverrides::default());
    let mut lists = std::collections::BTreeMap::new();
    lists.insert(
        "mirrors".to_string(),
        vec!["mirror.example.org:8443".to_string()],
    );
    p.network = Network::Proxy(workfence_policy::ProxyPolicy {
        allow: vec![
            "**.example.org".into(),
            "git.example.org:22".into(),
            "[2001:db8::7]:2222".into(),
            "2001:db8::8".into(),
            "192.0.2.7:8080".into(),
            "proxy-port.example.org:3128".into(),
            "@mirrors".into(),
        ],
        deny: vec!["bad.example.org:25".into()],
        allow_local: vec!["cache.example.org:3142".into()],
        lists,
        scoped: vec![workfence_policy::ScopedNetwork {
            prefix: vec!["npm".into()],
            allow: vec!["registry.example.org:4873".into()],
            deny: vec![],
            allow_local: vec![],
        }],
        ..Default::default()
    });
    let layout = compute(&p, Path::new(HOME), &host()).unwrap();
    let pl = plan(&p, &layout, &facts(), Isolation::Namespaces).unwrap();
    let t = pl.proxy.clone().unwrap().transparent.unwrap();
    // 80 and 443, every allowed port in any scope or list; not deny ports, not the
    // proxy's own port, not a bare IPv6 address's last group.
    assert_eq!(t.tcp_ports, vec![22, 80, 443, 2222, 3142, 4873, 8080, 8443]);
    assert!(t.dns);
    insta::assert_yaml_snapshot!("network_allowlist_transparent", t);
    insta::assert_snapshot!(
        "network_allowlist_transparent_explain",
        pl.to_string()
            .lines()
            .filter(|l| l.contains("transparent"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Off when the policy says so.
    if let Network::Proxy(n) = &mut p.network {
        n.transparent = false;
    }
    let pl = plan(&p, &layout, &facts(), Isolation::Namespaces).unwrap();
    assert_eq!(pl.proxy.unwrap().transparent, None);
    // More ports than one message of sockets carries: refused with the way out.
    if let Network::Proxy(n) = &mut p.network {
        n.transparent = true;
        n.allow = (1..=20)
            .map(|i| format!("h{i}.example.org:{}", 1000 + i))
            .collect();
    }
    let err = plan(&p, &layout, &facts(), Isolation::Namespaces).unwrap_err();
    assert!(err.to_string().contains("transparent = false"), "{err}");
}

#[test]
fn seccomp_covers_the_issue_list() {
    let p = policy(CliOverrides::default());
    let plan = make(&p, &facts(), Isolation::Namespaces);
    let names: Vec<&str> = plan
        .seccomp
        .rules
        .iter()
        .map(|r| r.syscall.as_str())
        .collect();
    for s in [
        "io_uring_setup",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "mount",
        "fsopen",
        "open_tree",
        "move_mount",
        "unshare",
        "clone",
        "ioctl",
    ] {
        assert!(names.contains(&s), "{s} missing");
    }
}

/// The task cap: the pid namespace's own pid_max where the kernel has one, a cgroup
/// where it does not (or where the cap is below pid_max's minimum), and a gap for
/// root, whom RLIMIT_NPROC does not bind, when neither exists.
#[test]
fn task_cap_mechanism() {
    let with_cap = |cap: Option<u32>| {
        let mut p = policy(CliOverrides::default());
        if let Some(c) = cap {
            p.limits.max_processes = c;
        }
        p
    };
    let root = |pid_max: bool, cgroup: bool| HostFacts {
        uid: 0,
        gid: 0,
        nproc_exempt: true,
        pid_max_per_pidns: pid_max,
        pids_cgroup: cgroup.then(|| PathBuf::from("/sys/fs/cgroup/pids")),
        ..facts()
    };
    let limits = |p: &Policy, f: &HostFacts, iso: Isolation| {
        let plan = make(p, f, iso);
        let text = plan.to_string();
        let lim = text
            .split("\nLimits:\n")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .take_while(|l| l.starts_with("  "))
            .collect::<Vec<_>>()
            .join("\n");
        let gap = if plan.gaps.iter().any(|g| g.layer == "process limit") {
            "\n  (gap: process limit)"
        } else {
            ""
        };
        format!("{lim}{gap}")
    };
    let p = with_cap(None);
    let mut out = String::new();
    for (what, f, iso) in [
        (
            "root, pid_max per namespace",
            root(true, true),
            Isolation::Namespaces,
        ),
        (
            "root, old kernel, cgroup",
            root(false, true),
            Isolation::Namespaces,
        ),
        (
            "root, old kernel, no cgroup",
            root(false, false),
            Isolation::Namespaces,
        ),
        (
            "root, degraded (no pid namespace)",
            root(true, false),
            Isolation::Degraded,
        ),
        (
            "user, pid_max per namespace",
            HostFacts {
                pid_max_per_pidns: true,
                ..facts()
            },
            Isolation::Namespaces,
        ),
    ] {
        out.push_str(&format!("{what}:\n{}\n", limits(&p, &f, iso)));
    }
    let low = with_cap(Some(64));
    out.push_str(&format!(
        "root, cap 64 (below pid_max's minimum), cgroup:\n{}\n",
        limits(&low, &root(true, true), Isolation::Namespaces)
    ));
    let many_cpus = HostFacts {
        pid_max_min: 8 * 256,
        ..root(true, false)
    };
    out.push_str(&format!(
        "root, cap 400, 256 CPUs (pid_max at least 2048), no cgroup:\n{}\n",
        limits(&with_cap(Some(400)), &many_cpus, Isolation::Namespaces)
    ));
    insta::assert_snapshot!(out);
}
