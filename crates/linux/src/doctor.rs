//! `workfence doctor` for Linux: what this host can enforce, and how to fix what is missing.

use workfence_policy::{Enforcement, LayerStatus};

use crate::sys::{self, Forked};

fn status(layer: &str, state: Enforcement, detail: impl Into<String>) -> LayerStatus {
    LayerStatus {
        layer: layer.into(),
        state,
        detail: detail.into(),
    }
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Tries to create the namespaces the sandbox uses, in a throw-away child.
fn try_namespaces() -> Result<(), std::io::Error> {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    match sys::clone_namespaces(flags)? {
        Forked::Child => sys::exit_now(0),
        Forked::Parent(pid) => {
            let _ = sys::waitpid(pid, false);
            Ok(())
        }
    }
}

/// Checks each mechanism. The default policy is fully enforceable when no entry is
/// `Enforcement::None` or `Partial`.
pub fn checks() -> Vec<LayerStatus> {
    let mut out = Vec::new();
    match try_namespaces() {
        Ok(()) => out.push(status(
            "unprivileged user namespaces",
            Enforcement::Full,
            "allowed (user, mount, pid, net, ipc, uts and cgroup namespaces)",
        )),
        Err(e) => {
            let mut why = vec![format!("clone failed: {e}")];
            if sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
                why.push("kernel.unprivileged_userns_clone=0 (fix: sysctl -w kernel.unprivileged_userns_clone=1)".into());
            }
            if sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
                why.push(
                    "user.max_user_namespaces=0 (fix: sysctl -w user.max_user_namespaces=15000)"
                        .into(),
                );
            }
            if sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
                == Some("1")
            {
                why.push("AppArmor restricts unprivileged user namespaces (fix: an AppArmor profile granting 'userns' to workfence, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0)".into());
            }
            why.push("inside a container, run it with a seccomp profile that allows clone(CLONE_NEWUSER); or use --allow-degraded".into());
            out.push(status(
                "unprivileged user namespaces",
                Enforcement::None,
                why.join("; "),
            ));
        }
    }
    let abi = sys::landlock_abi();
    if abi == 0 {
        out.push(status(
            "Landlock",
            Enforcement::None,
            "not available (fix: a kernel >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and 'landlock' in the lsm= boot parameter)",
        ));
    } else {
        let mut missing = Vec::new();
        if abi < 3 {
            missing.push("truncate control (ABI 3, Linux 6.2)");
        }
        if abi < 4 {
            missing.push("TCP control (ABI 4, Linux 6.7)");
        }
        if abi < 5 {
            missing.push("device ioctl control (ABI 5, Linux 6.10)");
        }
        if abi < 6 {
            missing.push("signal and abstract-socket scoping (ABI 6, Linux 6.12)");
        }
        if abi < 9 {
            missing.push("pathname unix socket control (ABI 9; the mount namespace masks host sockets instead)");
        }
        let detail = if missing.is_empty() {
            format!("Landlock ABI {abi}")
        } else {
            format!(
                "Landlock ABI {abi}; not in this ABI: {}",
                missing.join(", ")
            )
        };
        out.push(status("Landlock", Enforcement::Full, detail));
    }
    if sys::seccomp_available() {
        out.push(status(
            "seccomp",
            Enforcement::Full,
            "seccomp filters available",
        ));
    } else {
        out.push(status(
            "seccomp",
            Enforcement::None,
            "not available (fix: a kernel with CONFIG_SECCOMP_FILTER=y)",
        ));
    }
    let uid = if crate::is_global_root() { 0 } else { 1 };
    let facts_cg = crate::probe::facts(
        &workfence_policy::layout::FsLayout {
            writable: vec![],
            protected: vec![],
            hidden: vec![],
            cwd: "/".into(),
            notes: vec![],
        },
        false,
        true,
    );
    out.push(status(
        "process limit",
        Enforcement::Full,
        if facts_cg.pid_max_per_pidns {
            "kernel.pid_max of the sandbox's own pid namespace (Linux 6.14+), and RLIMIT_NPROC counted in its user namespace; a cap below 300 needs a pids cgroup as root".into()
        } else if uid == 0 {
            match &facts_cg.pids_cgroup {
                Some(p) => format!("cgroup pids.max under {} (RLIMIT_NPROC does not bind uid 0)", p.display()),
                None => "no writable pids cgroup, no per-namespace pid_max (Linux 6.14) and RLIMIT_NPROC does not bind uid 0: the process cap is NOT enforced for root".into(),
            }
        } else {
            "RLIMIT_NPROC, counted inside the sandbox's own user namespace".into()
        },
    ));
    if uid == 0 && facts_cg.pids_cgroup.is_none() && !facts_cg.pid_max_per_pidns {
        if let Some(last) = out.last_mut() {
            last.state = Enforcement::Partial;
        }
    }
    out.push(match &facts_cg.v2_cgroup {
        Some(p) => status("memory/cpu limits", Enforcement::Full, format!("cgroup v2 under {}", p.display())),
        None => status(
            "memory/cpu limits",
            Enforcement::Partial,
            "no delegated cgroup v2 subtree with the memory controller: --memory and cpu_percent cannot be enforced (optional; fix: run under `systemd-run --user --scope -p Delegate=yes`); the default policy does not need them",
        ),
    });
    out
}
