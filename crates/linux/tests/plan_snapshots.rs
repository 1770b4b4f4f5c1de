//! Snapshot tests of the Linux plan. They run on every OS: the plan is pure.

use std::path::{Path, PathBuf};

use workfence_linux::{plan, HostFacts, Isolation, LinuxPlan};
use workfence_policy::layout::{compute, memfs::MemFs};
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

fn make(p: &Policy, facts: &HostFacts, iso: Isolation) -> LinuxPlan {
    let layout = compute(p, Path::new(HOME), &host()).unwrap();
    plan(p, &layout, facts, iso).unwrap()
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
    use workfence_policy::layout::FsProbe;
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
fn proxy_network_is_refused_for_now() {
    let mut p = policy(CliOverrides::default());
    p.network = Network::Proxy(Default::default());
    let layout = compute(&p, Path::new(HOME), &host()).unwrap();
    assert!(plan(&p, &layout, &facts(), Isolation::Namespaces).is_err());
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
