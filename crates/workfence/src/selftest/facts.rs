//! What the self-test measures about the host, per OS.

use super::*;

// ---------------------------------------------------------------------------------------
// Host facts
// ---------------------------------------------------------------------------------------

pub(super) fn fact(name: &str, value: impl Into<String>) -> Fact {
    Fact {
        name: name.into(),
        value: value.into(),
    }
}

/// Facts of every OS: what `doctor` measures, and who runs the test.
pub(super) fn host_facts(env: &Env) -> Vec<Fact> {
    let mut v = vec![
        fact("workspace", env.ws.display().to_string()),
        fact(
            "git",
            env.git
                .as_ref()
                .map_or("not installed".into(), |g| g.display().to_string()),
        ),
        fact("root", if crate::is_root() { "yes" } else { "no" }),
    ];
    for c in crate::doctor() {
        let state = match c.state {
            Enforcement::Full => "ok",
            Enforcement::Partial => "partial",
            Enforcement::None => "missing",
        };
        v.push(fact(
            &format!("doctor: {}", c.layer),
            format!("{state}: {}", c.detail),
        ));
    }
    v
}

#[cfg(target_os = "linux")]
pub(super) fn os_facts(env: &Env) -> Vec<Fact> {
    let mut v = vec![fact(
        "kernel",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})")),
    )];
    if let Ok(p) = env.policy(true) {
        if let Ok(layout) = crate::compute_layout(&p) {
            let facts = workfence_linux::host_facts(&p, &layout, false, false);
            v.push(fact("landlock ABI", facts.landlock_abi.to_string()));
        }
    }
    let knob = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .map(|s| format!("{}={}", p.rsplit('/').next().unwrap_or(p), s.trim()))
    };
    let userns: Vec<String> = [
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ]
    .iter()
    .filter_map(|p| knob(p))
    .collect();
    v.push(fact(
        "user namespaces",
        if userns.is_empty() {
            "no sysctl knobs found".into()
        } else {
            userns.join(", ")
        },
    ));
    v.push(fact(
        "seccomp",
        match fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail") {
            Ok(a) => format!("actions available: {}", a.trim()),
            Err(e) => format!("no /proc/sys/kernel/seccomp/actions_avail ({e})"),
        },
    ));
    v
}

#[cfg(target_os = "macos")]
pub(super) fn os_facts(env: &Env) -> Vec<Fact> {
    let ver = Command::new("sw_vers")
        .arg("-productVersion")
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let mut v = vec![
        fact("macOS", ver),
        fact(
            "sandbox-exec",
            if Path::new(workfence_macos::SANDBOX_EXEC).exists() {
                "present"
            } else {
                "MISSING"
            },
        ),
    ];
    if let Ok(p) = env.policy(false) {
        let gaps: Vec<String> = workfence_macos::unenforced(&p)
            .iter()
            .map(|g| format!("{}: {}", g.layer, g.detail))
            .collect();
        v.push(fact(
            "not enforced by Seatbelt (refused without --allow-degraded)",
            if gaps.is_empty() {
                "nothing".into()
            } else {
                gaps.join("; ")
            },
        ));
        let defaults: Vec<String> = workfence_macos::not_enforced_defaults(&p)
            .iter()
            .map(|g| format!("{}: {}", g.layer, g.detail))
            .collect();
        v.push(fact(
            "not enforced by Seatbelt (built-in defaults)",
            if defaults.is_empty() {
                "nothing".into()
            } else {
                defaults.join("; ")
            },
        ));
    }
    v
}

/// Windows: the setup state and the token the plan asks for.
///
/// The measured "restricting set that worked" is reported by the run itself
/// (`measure_restricting_set`), which tries the sets before the cases.
#[cfg(windows)]
pub(super) fn os_facts(env: &Env) -> Vec<Fact> {
    let mut v = Vec::new();
    let Ok(policy) = env.policy(true) else {
        return v;
    };
    match workfence_windows::WindowsContext::detect(&policy) {
        Err(e) => v.push(fact("windows context", format!("cannot detect: {e}"))),
        Ok(ctx) => {
            v.push(fact(
                "workfence setup",
                match &ctx.users {
                    Some(u) => format!(
                        "done (offline user {}, online user {}, group {})",
                        u.offline_user, u.online_user, u.group_name
                    ),
                    None => "not run (no sandbox users: restricted token only)".into(),
                },
            ));
            v.push(fact("proxy port", ctx.proxy_port.to_string()));
            if let Ok(layout) = crate::compute_layout(&policy) {
                if let Ok(plan) = workfence_windows::plan(&policy, &layout, &ctx) {
                    if let Some(t) = &plan.token {
                        let names: Vec<String> =
                            t.restricting_sids.iter().map(|s| s.name.clone()).collect();
                        v.push(fact("restricting SIDs (planned)", names.join(", ")));
                    }
                }
            }
        }
    }
    v.push(fact(
        "restricting set in use",
        workfence_windows::restricting_set().name(),
    ));
    v
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
pub(super) fn os_facts(_env: &Env) -> Vec<Fact> {
    Vec::new()
}
