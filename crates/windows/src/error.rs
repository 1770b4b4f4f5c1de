//! Errors of the Windows backend. Each names the step and the API that failed, and
//! says what to do.

use std::path::PathBuf;

use crate::cmdline::CmdLineError;
use crate::path::PathError;
use crate::sddl::SddlError;

/// What went wrong in the Windows backend.
#[derive(Debug, thiserror::Error)]
pub enum WindowsError {
    /// Called on an OS other than Windows.
    #[error("the Windows backend only runs on Windows; use `workfence explain --target windows` to read the plan on this host")]
    Unsupported,

    /// The policy names a path that cannot be used.
    #[error("{what}: {source}")]
    BadPath {
        /// Which policy entry.
        what: String,
        /// Why.
        #[source]
        source: PathError,
    },

    /// The policy would grant access on a path that must never be granted.
    #[error("refusing to grant {what} on {path}: it is {why}. workfence never adds grants there; name a narrower directory")]
    DangerousGrant {
        /// The path.
        path: String,
        /// The grant (for example "write").
        what: String,
        /// Why it is refused.
        why: String,
    },

    /// `workfence setup` has not been run, and the policy needs it.
    #[error("the sandbox users and network filters are not installed, so {missing} cannot be enforced; run `workfence setup` once from an elevated prompt, or pass --allow-degraded to run without it")]
    SetupMissing {
        /// What cannot be enforced.
        missing: String,
    },

    /// A layer is only partly enforced on this machine (after setup).
    #[error("not fully enforced on this machine: {gaps}. Fix what each says, or pass --allow-degraded to run with these gaps reported")]
    NotEnforced {
        /// Each layer and why.
        gaps: String,
    },

    /// A network allowlist: the Windows path to the proxy is not tested end to end yet.
    #[error("network allowlists (--network allow=...) are enforced only on Linux in this version: the Windows path (a WFP permit for the proxy port during the run, a per-run proxy secret) is not tested end to end; use --network off or on")]
    ProxyUnsupported,

    /// A command line cannot be represented.
    #[error("cannot build the command line: {0}")]
    CommandLine(#[from] CmdLineError),

    /// A DACL could not be edited.
    #[error("cannot edit the DACL of {path}: {source}")]
    Dacl {
        /// The object.
        path: String,
        /// Why.
        #[source]
        source: SddlError,
    },

    /// A Win32 call failed.
    #[error("{step}: {api} failed with Windows error {code} ({message}). {hint}")]
    Api {
        /// What workfence was doing.
        step: String,
        /// The API.
        api: &'static str,
        /// `GetLastError` / returned code.
        code: u32,
        /// The system message for the code.
        message: String,
        /// What to do about it.
        hint: String,
    },

    /// A path to be protected or granted is not what the plan expected (a junction,
    /// symlink or other reparse point, or it was swapped since planning).
    #[error("{path} is a reparse point or resolves to {actual}; refusing to change its ACL (it may have been swapped for a junction). Remove the link and run again")]
    Reparse {
        /// Planned path.
        path: String,
        /// Where it resolves.
        actual: String,
    },

    /// The state directory (journal, capability SIDs, credentials) cannot be used.
    #[error("{step} ({path}): {source}. Check that the directory is yours and writable")]
    State {
        /// What workfence was doing.
        step: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The journal is corrupt.
    #[error("the ACL journal {path} is unreadable at line {line}: {why}. Keep a copy of it, then run `workfence cleanup`")]
    Journal {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// Why.
        why: String,
    },

    /// A deny (protected or hidden path) reached the object but not all of its existing
    /// children: the run stops (fail closed).
    #[error("the deny ACEs on {path} did not reach every existing file below it ({cause}), so some of them would stay writable or readable from the sandbox; the run is stopped. Find the files below it whose permissions you cannot change (owned by another account; `icacls \"{path}\" /t` lists them), take them over (takeown) or remove them, then run again; `workfence cleanup` undoes the partial change")]
    PartialDeny {
        /// The object.
        path: String,
        /// The error propagation stopped with.
        cause: String,
    },

    /// Setup or uninstall needs administrator rights.
    #[error("`workfence setup` needs administrator rights: run it from an elevated prompt (Run as administrator)")]
    NotElevated,

    /// The runner reported an error in the sandbox user's session.
    #[error("the sandbox runner failed: {0}")]
    Runner(String),

    /// The null device's grant for the sandbox users is gone (Windows resets the
    /// device's permissions at every boot) and the run was not allowed degraded.
    #[error("the null device (NUL) no longer grants the sandbox users: Windows resets its permissions at every boot, {why}. Redirects to NUL would fail in the sandbox. Run `workfence setup` once from an elevated prompt to re-apply the grant (it also registers the boot task again), or pass --allow-degraded")]
    NullDeviceLost {
        /// What went wrong with the boot-time repair.
        why: String,
    },

    /// The boot task that re-applies the null device grant cannot be built.
    #[error("cannot register the boot task {task}: {why}")]
    BootTask {
        /// The task's name.
        task: String,
        /// Why.
        why: String,
    },
}

impl WindowsError {
    /// The exit status for this error under the contract (setup failures are 125).
    pub fn exit_code(&self) -> i32 {
        workfence_policy::run::EXIT_SETUP
    }
}
