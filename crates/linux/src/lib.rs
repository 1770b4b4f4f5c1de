//! # workfence-linux
//!
//! The Linux backend of workfence. A [`Policy`](workfence_policy::Policy) and its
//! [`FsLayout`](workfence_policy::layout::FsLayout) compile into a [`LinuxPlan`]: a pure
//! list of mount steps, Landlock rules and seccomp rules. On Linux the plan is then
//! applied by a small supervisor that is pid 1 of fresh user, mount, pid, network,
//! IPC, UTS and cgroup namespaces. Without user namespaces, and only when the policy
//! allows degraded mode, it runs with Landlock and seccomp alone and lists what is
//! not enforced.
//!
//! The plan layer compiles and is tested on every OS:
//!
//! ```
//! use workfence_linux::{plan, HostFacts, Isolation};
//! use workfence_policy::{layout::FsLayout, Policy};
//! let policy = Policy::new("/home/me/proj");
//! let layout = FsLayout { writable: vec![], protected: vec![], hidden: vec![], cwd: "/home/me/proj".into(), notes: vec![] };
//! let facts = HostFacts { uid: 1000, gid: 1000, landlock_abi: 6, ..Default::default() };
//! let p = plan(&policy, &layout, &facts, Isolation::Namespaces).unwrap();
//! assert!(p.to_string().contains("seccomp"));
//! ```

mod error;
pub mod guard;
pub mod plan;

#[cfg(target_os = "linux")]
mod apply;
#[cfg(target_os = "linux")]
mod broker;
#[cfg(target_os = "linux")]
mod doctor;
#[cfg(target_os = "linux")]
mod helper;
#[cfg(target_os = "linux")]
mod landlock_apply;
#[cfg(target_os = "linux")]
mod probe;
#[cfg(target_os = "linux")]
mod seccomp_compile;
#[cfg(target_os = "linux")]
mod sys;

pub use error::{clone_error, LinuxError};
pub use plan::{plan, HostFacts, Isolation, LinuxPlan};

use workfence_policy::layout::FsLayout;
use workfence_policy::run::{RunOutcome, RunRequest};
use workfence_policy::{LayerStatus, Policy};

/// Reads the host facts for `policy`'s plan (`degraded` adds what the Landlock-only
/// plan needs; `cgroup` looks for a writable cgroup).
#[cfg(target_os = "linux")]
pub fn host_facts(policy: &Policy, layout: &FsLayout, degraded: bool, cgroup: bool) -> HostFacts {
    let secrets: Vec<std::path::PathBuf> =
        policy.deny_read.iter().map(|d| d.path.clone()).collect();
    probe::facts_for(&secrets, layout, degraded, cgroup)
}

/// Reads the host facts for a plan (not on Linux: defaults, for `explain`).
#[cfg(not(target_os = "linux"))]
pub fn host_facts(
    _policy: &Policy,
    _layout: &FsLayout,
    _degraded: bool,
    _cgroup: bool,
) -> HostFacts {
    HostFacts::default()
}

/// Runs a command under a plan; returns the exit status per the CLI contract, with
/// the reason when workfence chose it (timeout, not found, not executable). Prints
/// nothing.
///
/// Returns [`LinuxError::UserNamespace`] only when user namespaces are unavailable on
/// this host (see [`clone_error`]); the caller decides whether degraded mode is
/// allowed. A failure inside the sandbox before the command started is
/// [`LinuxError::Child`].
#[cfg(target_os = "linux")]
pub fn run(plan: &LinuxPlan, req: &RunRequest) -> Result<RunOutcome, LinuxError> {
    apply::run(plan, req, &mut || {})
}

/// Runs a command under a plan (not on Linux: unsupported).
#[cfg(not(target_os = "linux"))]
pub fn run(_plan: &LinuxPlan, _req: &RunRequest) -> Result<RunOutcome, LinuxError> {
    Err(LinuxError::Unsupported)
}

/// [`run`], calling `started` once the sandbox exists: before it, the caller must not
/// start threads it wants to keep off the helper's slower path (the facade starts
/// the network proxy there).
#[cfg(target_os = "linux")]
pub fn run_with(
    plan: &LinuxPlan,
    req: &RunRequest,
    started: &mut dyn FnMut(),
) -> Result<RunOutcome, LinuxError> {
    apply::run(plan, req, started)
}

/// [`run`] with a start callback (not on Linux: unsupported).
#[cfg(not(target_os = "linux"))]
pub fn run_with(
    _plan: &LinuxPlan,
    _req: &RunRequest,
    _started: &mut dyn FnMut(),
) -> Result<RunOutcome, LinuxError> {
    Err(LinuxError::Unsupported)
}

/// Receives the proxy's socket(s) that the sandbox's supervisor sends over `sock`
/// (the other end of [`RunRequest::proxy_socket`]), in the plan's order: the proxy
/// listener first (see [`plan::ProxyBridge`]). Empty when the sandbox ended (or `sock`
/// was shut down) without sending.
#[cfg(target_os = "linux")]
pub fn receive_proxy_sockets(
    sock: std::os::fd::BorrowedFd<'_>,
) -> Result<Vec<std::os::fd::OwnedFd>, LinuxError> {
    use std::os::fd::AsRawFd;
    sys::recv_fds(sock.as_raw_fd()).map_err(|e| LinuxError::Syscall {
        step: "receiving the proxy socket from the sandbox",
        call: "recvmsg",
        source: e,
    })
}

/// When this process was started as workfence's Linux helper (the library re-executes
/// one when it is called from a multi-threaded process), runs it and returns the
/// exit status; otherwise `None`. Call it first in `main`.
#[cfg(target_os = "linux")]
pub fn helper_main_if_requested() -> Option<i32> {
    helper::helper_main_if_requested()
}

/// Not on Linux: never a helper.
#[cfg(not(target_os = "linux"))]
pub fn helper_main_if_requested() -> Option<i32> {
    None
}

/// Checks `--keep-fd` values: 3 and above, and open in this process now (call it
/// before opening any fd that must not be passed on).
#[cfg(target_os = "linux")]
pub fn check_keep_fds(fds: &[i32]) -> Result<(), LinuxError> {
    apply::check_keep_fds(fds)
}

/// Checks `--keep-fd` values (not on Linux: through `/dev/fd`).
#[cfg(not(target_os = "linux"))]
pub fn check_keep_fds(fds: &[i32]) -> Result<(), LinuxError> {
    for &fd in fds {
        if fd < 3 || std::fs::metadata(format!("/dev/fd/{fd}")).is_err() {
            return Err(LinuxError::BadArgument(format!(
                "--keep-fd {fd}: not an open file descriptor of workfence above 2; open it when starting workfence, e.g. `{fd}>file`"
            )));
        }
    }
    Ok(())
}

/// Clears close-on-exec on the kept fds of this process, so that a child started
/// without a sandbox (full-access mode) inherits them.
#[cfg(target_os = "linux")]
pub fn inherit_fds(fds: &[i32]) -> Result<(), LinuxError> {
    for &fd in fds {
        sys::inherit_fd(fd).map_err(|e| LinuxError::Syscall {
            step: "passing a --keep-fd descriptor on",
            call: "fcntl(F_SETFD)",
            source: e,
        })?;
    }
    Ok(())
}

/// Not on Linux: fds a shell passed are inherited already.
#[cfg(not(target_os = "linux"))]
pub fn inherit_fds(_fds: &[i32]) -> Result<(), LinuxError> {
    Ok(())
}

/// Whether workfence runs as the real root (uid 0 of the initial user namespace), for
/// which RLIMIT_NPROC does not apply. Root of a nested user namespace is not.
#[cfg(target_os = "linux")]
pub fn is_global_root() -> bool {
    sys::ids().0 == 0
        && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 3 && f[0] == "0" && f[1] == "0"
            })
        })
}

/// Whether workfence runs as the real root (not on Linux: never).
#[cfg(not(target_os = "linux"))]
pub fn is_global_root() -> bool {
    false
}

/// What this host can enforce.
#[cfg(target_os = "linux")]
pub fn doctor() -> Vec<LayerStatus> {
    doctor::checks()
}

/// What this host can enforce (not on Linux: nothing).
#[cfg(not(target_os = "linux"))]
pub fn doctor() -> Vec<LayerStatus> {
    vec![LayerStatus {
        layer: "Linux backend".into(),
        state: workfence_policy::Enforcement::None,
        detail: "not running on Linux".into(),
    }]
}
