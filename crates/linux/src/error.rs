//! Errors of the Linux backend. Each names the step and the syscall, and says what to do.

use std::io;

/// A failure of the Linux backend.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// User namespaces are unavailable on this host (the only clone failure that
    /// degraded mode may work around).
    #[error("cannot create the sandbox's user namespace (clone: {}): {cause}. {fix}; or pass --allow-degraded to run with Landlock and seccomp only; `workfence doctor` shows the details", errno_text(*.errno))]
    UserNamespace {
        /// The clone errno.
        errno: i32,
        /// Why the kernel refused.
        cause: &'static str,
        /// What to do about it.
        fix: &'static str,
    },
    /// clone failed for a reason degraded mode cannot work around.
    #[error("starting the sandbox failed (clone: {}): {cause}. {fix}", errno_text(*.errno))]
    Clone {
        /// The clone errno.
        errno: i32,
        /// Why the kernel refused.
        cause: &'static str,
        /// What to do about it.
        fix: &'static str,
    },
    /// A step inside the sandbox's processes (supervisor or command) failed before
    /// the command started; reported over the error pipe as a typed record.
    #[error("sandbox setup failed: {}", child_text(step, call, *.errno))]
    Child {
        /// What the child was doing.
        step: String,
        /// The syscall ("" when the step has none).
        call: String,
        /// The errno (0 when the step has none).
        errno: i32,
        /// The exit code the child chose (125).
        code: i32,
    },
    /// The error pipe carried something other than one whole error record.
    #[error("the sandbox's error channel carried {0} byte(s) that are not one valid error record; refusing to trust the result")]
    ErrorChannel(usize),
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

/// The OS's text for an errno, with its symbolic name where known.
pub(crate) fn errno_text(errno: i32) -> String {
    let name = errno_name(errno);
    let text = io::Error::from_raw_os_error(errno).to_string();
    if name.is_empty() {
        text
    } else {
        format!("{name}, {text}")
    }
}

fn errno_name(errno: i32) -> &'static str {
    // The errnos the clone mapping and the children report most; others show the text.
    match errno {
        1 => "EPERM",
        2 => "ENOENT",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        22 => "EINVAL",
        28 => "ENOSPC",
        38 => "ENOSYS",
        87 => "EUSERS",
        _ => "",
    }
}

fn child_text(step: &str, call: &str, errno: i32) -> String {
    // A bare syscall step ("setsid") is its own call.
    let call = if call == step { "" } else { call };
    match (call.is_empty(), errno) {
        (true, 0) => step.to_string(),
        (true, e) => format!("{step}: {}", errno_text(e)),
        (false, 0) => format!("{step} ({call})"),
        (false, e) => format!("{step} ({call}): {}", errno_text(e)),
    }
}

/// Maps a failed `clone(CLONE_NEWUSER | ...)` the way bubblewrap does: only the
/// errnos that mean "user namespaces are unavailable here" become
/// [`LinuxError::UserNamespace`] (which degraded mode may work around); resource
/// shortages and anything unexpected are hard errors.
pub fn clone_error(errno: i32) -> LinuxError {
    // Linux errno values (asm-generic), spelled out so that this compiles and is
    // unit-tested on every OS.
    const EPERM: i32 = 1;
    const EAGAIN: i32 = 11;
    const ENOMEM: i32 = 12;
    const EACCES: i32 = 13;
    const EINVAL: i32 = 22;
    const ENOSPC: i32 = 28;
    const ENOSYS: i32 = 38;
    const EUSERS: i32 = 87;
    let userns = |cause, fix| LinuxError::UserNamespace { errno, cause, fix };
    let hard = |cause, fix| LinuxError::Clone { errno, cause, fix };
    match errno {
        EPERM | EACCES => userns(
            "the kernel does not allow unprivileged user namespaces here (kernel.unprivileged_userns_clone=0, AppArmor's kernel.apparmor_restrict_unprivileged_userns=1, or a container's seccomp profile)",
            "Allow them (for example `sysctl -w kernel.unprivileged_userns_clone=1` or `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, an AppArmor profile for workfence, or a container seccomp profile that permits clone with CLONE_NEWUSER)",
        ),
        ENOSPC => userns(
            "the user namespace limit is reached: user.max_user_namespaces is 0 (or used up), or the nesting depth of 32 is exceeded",
            "Raise the limit (for example `sysctl -w user.max_user_namespaces=15000`), or run workfence outside the nested sandbox",
        ),
        EUSERS => userns(
            "the nesting depth of user namespaces is exceeded",
            "Run workfence from a less deeply nested namespace",
        ),
        EINVAL | ENOSYS => userns(
            "this kernel does not support user namespaces (built without CONFIG_USER_NS)",
            "Use a kernel with CONFIG_USER_NS=y",
        ),
        EAGAIN => hard(
            "the process limit is reached (RLIMIT_NPROC, the pids cgroup, or kernel.threads-max)",
            "Wait for processes to exit or raise the limit, then retry",
        ),
        ENOMEM => hard(
            "the kernel is out of memory, or the pid namespace's init has exited",
            "Free memory, then retry",
        ),
        _ => hard(
            "unexpected clone failure",
            "Report this with the output of `workfence doctor`",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn degradable(errno: i32) -> bool {
        matches!(clone_error(errno), LinuxError::UserNamespace { .. })
    }

    #[test]
    fn only_userns_unavailable_errnos_may_degrade() {
        for e in [1, 13, 28, 22, 38, 87] {
            assert!(degradable(e), "errno {e} should allow degraded mode");
        }
        for e in [11, 12, 14, 4, 0, 9999] {
            assert!(!degradable(e), "errno {e} must be a hard error");
        }
    }

    #[test]
    fn messages_name_cause_and_fix() {
        let m = clone_error(28).to_string();
        assert!(
            m.contains("ENOSPC") && m.contains("max_user_namespaces"),
            "{m}"
        );
        assert!(m.contains("--allow-degraded"), "{m}");
        let m = clone_error(1).to_string();
        assert!(
            m.contains("EPERM") && m.contains("unprivileged_userns_clone"),
            "{m}"
        );
        let m = clone_error(22).to_string();
        assert!(m.contains("CONFIG_USER_NS"), "{m}");
        let m = clone_error(11).to_string();
        assert!(m.contains("EAGAIN") && m.contains("RLIMIT_NPROC"), "{m}");
        assert!(!m.contains("--allow-degraded"), "{m}");
        let m = clone_error(12).to_string();
        assert!(m.contains("ENOMEM") && m.contains("out of memory"), "{m}");
        assert!(!m.contains("user namespaces are blocked"), "{m}");
    }

    #[test]
    fn child_errors_read_as_one_line() {
        let e = LinuxError::Child {
            step: "writing /proc/self/uid_map".into(),
            call: "write".into(),
            errno: 1,
            code: 125,
        };
        assert_eq!(
            e.to_string(),
            format!(
                "sandbox setup failed: writing /proc/self/uid_map (write): EPERM, {}",
                io::Error::from_raw_os_error(1)
            )
        );
    }
}
