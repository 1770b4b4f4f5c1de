//! Errors of the Linux backend. Each names the step and the syscall, and says what to do.

use std::io;

/// A failure of the Linux backend.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// User namespaces could not be created.
    #[error("cannot create the sandbox's user namespace (clone: {0}). Unprivileged user namespaces are blocked on this host (kernel.unprivileged_userns_clone=0, user.max_user_namespaces=0, AppArmor's kernel.apparmor_restrict_unprivileged_userns=1, or a container's seccomp profile). Allow them (for example `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or an AppArmor profile for workfence), or pass --allow-degraded to run with Landlock and seccomp only; `workfence doctor` shows the details")]
    UserNamespace(#[source] io::Error),
    /// A syscall failed.
    #[error("{step} failed ({call}): {source}")]
    Syscall {
        /// What workfence was doing.
        step: &'static str,
        /// The syscall.
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file operation failed.
    #[error("{step} failed: {source}")]
    Io {
        /// What workfence was doing.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Landlock could not be applied as planned.
    #[error("Landlock: {0}; run `workfence doctor`, or pass --allow-degraded to run without it")]
    Landlock(String),
    /// The seccomp filter could not be built.
    #[error("building the seccomp filter failed: {0}")]
    Seccomp(String),
    /// Invalid input.
    #[error("{0}")]
    BadArgument(String),
    /// The plan is not valid on Linux.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// Not on Linux.
    #[error("the Linux backend only runs on Linux")]
    Unsupported,
    /// Called from a multi-threaded process with no helper program to re-execute.
    #[error("workfence is called from a multi-threaded process, where the sandbox must be built by a freshly executed helper: call workfence::helper_main_if_requested() first in main (then the program is its own helper), or set WORKFENCE_HELPER to the workfence binary")]
    NoHelper,
    /// An error reported by the helper process, as text.
    #[error("{0}")]
    Relayed(String),
}
