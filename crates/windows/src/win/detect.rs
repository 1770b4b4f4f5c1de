//! Reading the host into a [`WindowsContext`], and `doctor`.

use std::path::{Path, PathBuf};

use workfence_policy::{Enforcement, LayerStatus, Policy};

use crate::error::WindowsError;
use crate::path::WinPath;
use crate::plan::{default_shared_roots, to_win, workspace_id, WindowsContext, DEFAULT_PROXY_PORT};
use crate::win::{state, sys};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Profile directories the sandbox users may read: toolchains that live in the profile.
const TOOLCHAIN_DIRS: &[&str] = &[
    ".cargo",
    ".rustup",
    "go",
    "scoop",
    ".bun",
    ".deno",
    ".dotnet\\tools",
    "AppData\\Local\\Programs",
    "AppData\\Roaming\\npm",
    "AppData\\Local\\Microsoft\\WindowsApps",
];

fn display(p: &Path) -> String {
    WinPath::parse(&p.to_string_lossy())
        .map(|w| w.display_string())
        .unwrap_or_else(|_| p.to_string_lossy().into_owned())
}

/// The toolchain directories of the profile that exist (and are not links: a linked
/// toolchain dir would be refused at apply time as a reparse point).
pub fn toolchain_roots(profile: &Path) -> Vec<String> {
    TOOLCHAIN_DIRS
        .iter()
        .map(|d| profile.join(d))
        .filter(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && !m.file_type().is_symlink())
        })
        .map(|p| display(&p))
        .collect()
}

/// The runner executable, which the sandbox users must be able to read and run: the
/// grant is on the file itself (traversal to it needs no grant), unless it lies in the
/// Windows directory.
pub fn runner_read_root(windows_dir: &str) -> Option<String> {
    let exe = crate::win::run::runner_exe().ok()?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let shown = display(&exe);
    let in_windows = WinPath::parse(&shown)
        .ok()
        .zip(WinPath::parse(windows_dir).ok())
        .is_some_and(|(e, w)| e.starts_with(&w));
    (!in_windows).then_some(shown)
}

pub fn detect(policy: &Policy) -> Result<WindowsContext, WindowsError> {
    let token = sys::process_token()?;
    let user_sid = sys::token_user_sid(&token)?;
    let user_name = match (env("USERDOMAIN"), env("USERNAME")) {
        (Some(d), Some(u)) => format!("{d}\\{u}"),
        (_, Some(u)) => u,
        _ => user_sid.clone(),
    };
    let profile = env("USERPROFILE").map(PathBuf::from).ok_or_else(|| {
        WindowsError::Runner(
            "USERPROFILE is not set; run workfence from a normal user session".into(),
        )
    })?;
    // Long, canonical names: GetFinalPathNameByHandleW is compared with these later,
    // and TEMP-style 8.3 names (`RUNNER~1`) would not match.
    let profile = std::fs::canonicalize(&profile).unwrap_or(profile);
    for d in [state::state_dir(), state::temp_root()] {
        std::fs::create_dir_all(&d)
            .map_err(state::io("creating workfence's state directory", &d))?;
    }
    let state_dir =
        std::fs::canonicalize(state::state_dir()).unwrap_or_else(|_| state::state_dir());
    let temp_root =
        std::fs::canonicalize(state::temp_root()).unwrap_or_else(|_| state::temp_root());
    let windows_dir = sys::windows_dir();
    let drive = windows_dir
        .chars()
        .next()
        .unwrap_or('C')
        .to_ascii_uppercase();
    let mut shared = default_shared_roots(drive);
    for v in ["ProgramFiles", "ProgramFiles(x86)", "ProgramData", "PUBLIC"] {
        if let Some(p) = env(v) {
            shared.push(display(Path::new(&p)));
        }
    }
    let ws = to_win(&policy.workspace).map_err(|source| WindowsError::BadPath {
        what: "workspace".into(),
        source,
    })?;
    let id = workspace_id(&ws);
    let capability_sid = state::capability_sid(&ws.key())?;
    let mut read_roots = toolchain_roots(&profile);
    read_roots.extend(runner_read_root(&windows_dir));
    let cmd_exe = format!("{windows_dir}\\System32\\cmd.exe");
    let users = state::setup_info();
    Ok(WindowsContext {
        user_name,
        user_sid,
        profile_dir: display(&profile),
        windows_dir,
        shared_roots: shared,
        state_dir: display(&state_dir),
        temp_root: display(&temp_root),
        workspace_id: id,
        capability_sid,
        proxy_port: users.as_ref().map_or(DEFAULT_PROXY_PORT, |u| u.proxy_port),
        users,
        read_roots,
        cmd_exe,
        mapped_from_unix: false,
        restricting: state::facts().restricting.unwrap_or_default(),
        webdav_client: sys::service_can_start("WebClient"),
    })
}

/// Whether the null device grants every sandbox user (setup adds the grant; it is
/// gone after each reboot until setup runs again). `None` when it cannot be read.
pub fn null_device_granted(users: &crate::plan::SandboxUsers) -> Option<bool> {
    let sddl = sys::null_device_dacl().ok()?;
    let dacl = crate::sddl::Dacl::parse(&sddl).ok()?;
    Some(
        [&users.offline_sid, &users.online_sid]
            .iter()
            .all(|sid| dacl.contains(&crate::plan::null_device_ace(sid))),
    )
}

pub fn doctor() -> Vec<LayerStatus> {
    let l = |layer: &str, state, detail: String| LayerStatus {
        layer: layer.into(),
        state,
        detail,
    };
    let mut out = Vec::new();
    let token = sys::process_token();
    let restricted = token.as_ref().ok().and_then(|t| {
        let logon = sys::token_logon_sid(t).ok()?;
        sys::restricted_token(t, &["S-1-5-21-1-2-3-4", &logon], &[], "D:(A;;GA;;;SY)").ok()
    });
    out.push(match restricted {
        Some(_) => l(
            "filesystem writes",
            Enforcement::Full,
            "write-restricted tokens work; ACEs are journaled in the state dir".into(),
        ),
        None => l(
            "filesystem writes",
            Enforcement::None,
            "CreateRestrictedToken failed: run workfence from a normal interactive session".into(),
        ),
    });
    let setup = state::setup_info();
    match &setup {
        Some(u) => {
            out.push(l(
                "secrets (deny-read)",
                Enforcement::Full,
                format!(
                    "commands run as {} / {}, which cannot read your profile",
                    u.offline_user, u.online_user
                ),
            ));
            let keys: Vec<String> =
                crate::plan::wfp_filters(&u.offline_sid, &u.online_sid, u.proxy_port)
                    .into_iter()
                    .map(|f| f.key)
                    .collect();
            let present = sys::wfp_filters_present(&keys).unwrap_or_default();
            let (state, why) = crate::plan::wfp_filters_status(&keys, &present);
            out.push(l(
                "network",
                state,
                format!(
                    "WFP filters meant to block all traffic and listens of {} ({}): {why}",
                    u.offline_user, u.offline_sid
                ),
            ));
            out.push(match null_device_granted(u) {
                Some(true) => l("null device", Enforcement::Full, "the sandbox users may write to NUL".into()),
                Some(false) => l("null device", Enforcement::Partial, "the sandbox users' grant on NUL is gone (Windows resets it at every boot and the boot task has not re-applied it): runs refuse until `workfence setup` (elevated) runs again".into()),
                None => l("null device", Enforcement::Partial, "cannot read the null device's DACL".into()),
            });
            let task = crate::plan::BOOT_TASK_NAME;
            out.push(match crate::win::setup::boot_task_registered() {
                Some(true) => l("null device boot task", Enforcement::Full, format!("{task} re-applies the null device grant as SYSTEM at every boot")),
                Some(false) => l("null device boot task", Enforcement::Partial, format!("{task} is not registered: after a reboot, runs refuse until `workfence setup` (elevated) runs again, which registers it")),
                None => l("null device boot task", Enforcement::Partial, format!("cannot ask Task Scheduler about {task}")),
            });
        }
        None => {
            out.push(l(
                "secrets (deny-read)",
                Enforcement::None,
                "not enforced: run `workfence setup` from an elevated prompt".into(),
            ));
            out.push(l(
                "network",
                Enforcement::None,
                "not enforced: run `workfence setup` from an elevated prompt".into(),
            ));
        }
    }
    let job = sys::Job::new(&crate::plan::JobSpec {
        limit_flags: vec![],
        active_process_limit: 1,
        job_memory_limit: None,
        cpu_percent: None,
        nesting: vec![],
        timeout_ms: None,
    });
    out.push(match job {
        Ok(_) => l(
            "processes",
            Enforcement::Full,
            "job objects with kill-on-close work".into(),
        ),
        Err(e) => l("processes", Enforcement::None, format!("{e}")),
    });
    out.push(match sys::service_can_start("WebClient") {
        Some(true) => l("WebDAV", Enforcement::Partial, "the WebClient service can start: WebDAV paths reach the network outside the offline user's filters; `sc config WebClient start= disabled` (elevated) closes this".into()),
        Some(false) => l("WebDAV", Enforcement::Full, "the WebClient service is disabled".into()),
        None => l("WebDAV", Enforcement::Full, "the WebClient service is not installed".into()),
    });
    out.push(l(
        "restricting set",
        Enforcement::Full,
        format!(
            "{} ({}); `workfence selftest` measures which set real tools need",
            state::facts().restricting.unwrap_or_default().name(),
            if state::facts().restricting.is_some() {
                "recorded"
            } else {
                "default"
            }
        ),
    ));
    let journal = state::state_dir().join(crate::plan::JOURNAL_FILE);
    let pending = std::fs::read_to_string(&journal)
        .ok()
        .and_then(|t| crate::journal::parse(&t).ok())
        .map(|e| crate::journal::outstanding(&e).changes.len())
        .unwrap_or(0);
    out.push(l(
        "ACL journal",
        Enforcement::Full,
        format!(
            "{pending} outstanding change(s) in {}; `workfence cleanup` undoes them",
            journal.display()
        ),
    ));
    out
}
