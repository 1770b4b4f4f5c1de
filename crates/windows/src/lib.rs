//! # workfence-windows
//!
//! The Windows backend of workfence: the same policy as on Linux, built from a
//! write-restricted token with a per-workspace capability SID, journaled ACEs, a
//! hidden offline user whose traffic WFP filters block, and a job object.
//!
//! The crate has two halves:
//! - the **plan** ([`plan()`], [`WindowsPlan`]), pure data that compiles and is tested on
//!   every OS, and that `workfence explain --target windows` prints;
//! - the **apply layer** (`#[cfg(windows)]`): setup, the ACL journal, the runner and the
//!   job, through `windows-sys`, with every `unsafe` block in one `sys` module.
//!
//! Supporting pure modules: [`path`] (one comparison key for the many names of a
//! Windows path), [`cmdline`] (exact `CommandLineToArgvW` and `cmd.exe` quoting),
//! [`sddl`] (ACEs and DACL edits) and [`journal`].
//!
//! ```
//! use workfence_policy::layout::{FsLayout, RootKind, WritableRoot};
//! use workfence_policy::{Policy, Source};
//! use workfence_windows::{plan, RunAs, WindowsContext};
//!
//! let policy = Policy::new(r"C:\Users\dev\src\proj");
//! let layout = FsLayout {
//!     writable: vec![WritableRoot {
//!         path: r"C:\Users\dev\src\proj".into(),
//!         kind: RootKind::Workspace,
//!         source: Source::Default,
//!     }],
//!     protected: vec![],
//!     hidden: vec![],
//!     cwd: r"C:\Users\dev\src\proj".into(),
//!     notes: vec![],
//! };
//! let ctx = WindowsContext::example(&policy);
//! let p = plan(&policy, &layout, &ctx).unwrap();
//! assert!(matches!(p.run_as, RunAs::OfflineUser { .. }));
//! assert!(p.to_string().contains("WRITE_RESTRICTED"));
//!
//! // A policy that would grant on the profile root is refused.
//! let mut bad = layout.clone();
//! bad.writable[0].path = r"C:\Users\dev".into();
//! assert!(plan(&policy, &bad, &ctx).is_err());
//! ```

pub mod cmdline;
pub mod decisions;
mod display;
mod error;
pub mod journal;
pub mod lookup;
pub mod path;
mod plan;
pub mod probes;
pub mod sddl;

#[cfg(windows)]
mod win;

pub use error::WindowsError;
pub use plan::{
    all_filter_keys, boot_exe_path, boot_task, boot_task_query_xml, boot_task_xml_check,
    capability_sid_from_bytes, control_pipe_sddl, default_dacl_entries, default_dacl_sddl,
    default_shared_roots, desktop_sddl, git_safe_directory_env, local_account_name,
    lowered_integrity, null_device_ace, null_device_check, on_partial_propagation, plan,
    restricting_sids, runner_default_dacl_sddl, runner_object_sddl, sids, to_win, wfp_filters,
    wfp_filters_status, workspace_id, AcePlan, AcePurpose, BootTask, EnvPlan, JobSpec, NamedSid,
    NetworkPlan, NullDeviceCheck, PartialPropagation, Placeholder, RestrictingSet, RunAs,
    SandboxUsers, TokenSpec, WfpAction, WfpCondition, WfpFilter, WfpLayer, WindowsContext,
    WindowsPlan, BOOT_TASK_NAME, DEFAULT_PROXY_PORT, DENY_LOGON_RIGHTS, DISABLED_SIDS,
    FWP_CONDITION_FLAG_IS_RAW_ENDPOINT, GROUP_NAME, JOB_NESTING, JOURNAL_FILE, LOGON_SID,
    MEDIUM_INTEGRITY_SID, OFFLINE_USER, ONLINE_USER, PLATFORM_LIMIT_NETWORK,
    REPAIR_NULL_DEVICE_FLAG, REQUIRED_ENV, WFP_PROVIDER_KEY, WFP_SUBLAYER_KEY,
};

use workfence_policy::run::{RunOutcome, RunRequest};
#[cfg(not(windows))]
use workfence_policy::Enforcement;
use workfence_policy::LayerStatus;
#[cfg(windows)]
use workfence_policy::Policy;

/// The first argument that turns a workfence binary into the sandbox runner.
pub const RUNNER_FLAG: &str = "--workfence-windows-runner";

/// The runner executable's file name, looked up next to the running binary.
pub const RUNNER_EXE: &str = "workfence-windows-runner.exe";

#[cfg(windows)]
impl WindowsContext {
    /// Reads the host: the user, profile, state dir, this workspace's capability SID
    /// (created on first use) and what `workfence setup` installed.
    pub fn detect(policy: &Policy) -> Result<Self, WindowsError> {
        win::detect::detect(policy)
    }
}

/// Runs one command under `plan`. Returns the exit status under the contract of
/// [`workfence_policy::run`]: the command's own code, 124 on timeout, 125 when the
/// sandbox cannot be set up, 126/127 when the command cannot be executed or found,
/// with workfence's reason when it chose the status. Warnings and notes (a degraded
/// plan, grants that could not be applied) go to `note`; nothing is printed.
pub fn run(
    plan: &WindowsPlan,
    req: &RunRequest,
    note: &mut dyn FnMut(String),
) -> Result<RunOutcome, WindowsError> {
    #[cfg(windows)]
    {
        win::run::run(plan, req, note)
    }
    #[cfg(not(windows))]
    {
        let _ = (plan, req, note);
        Err(WindowsError::Unsupported)
    }
}

/// What this host can enforce, per layer.
pub fn doctor() -> Vec<LayerStatus> {
    #[cfg(windows)]
    {
        win::detect::doctor()
    }
    #[cfg(not(windows))]
    {
        vec![LayerStatus {
            layer: "windows backend".into(),
            state: Enforcement::None,
            detail: "unsupported on this OS: the Windows backend runs only on Windows".into(),
        }]
    }
}

/// `workfence setup` (elevated): creates the group, the offline and online users (with
/// DPAPI-protected credentials) and the offline user's WFP filters. With `uninstall`,
/// removes all of that and every journaled ACE.
pub fn setup(uninstall: bool) -> Result<String, WindowsError> {
    #[cfg(windows)]
    {
        if uninstall {
            win::setup::uninstall()
        } else {
            win::setup::install()
        }
    }
    #[cfg(not(windows))]
    {
        let _ = uninstall;
        Err(WindowsError::Unsupported)
    }
}

/// `workfence cleanup`: restores every DACL workfence changed (from the journal) and
/// removes leftover placeholders and temp dirs.
pub fn cleanup() -> Result<String, WindowsError> {
    #[cfg(windows)]
    {
        win::acl::cleanup()
    }
    #[cfg(not(windows))]
    {
        Err(WindowsError::Unsupported)
    }
}

/// Whether `workfence setup` has installed the sandbox users (for `selftest`, which
/// runs its cases before and after setup). Always false off Windows.
pub fn setup_done() -> bool {
    #[cfg(windows)]
    {
        win::state::setup_info().is_some()
    }
    #[cfg(not(windows))]
    {
        false
    }
}

/// The restricting set runs use: the one `selftest` recorded with
/// [`record_restricting_set`], else [`RestrictingSet::Narrow`]. A `selftest` that
/// measures a set plans with `WindowsContext { restricting: set, .. }` directly.
pub fn restricting_set() -> RestrictingSet {
    #[cfg(windows)]
    {
        win::state::facts().restricting.unwrap_or_default()
    }
    #[cfg(not(windows))]
    {
        RestrictingSet::Narrow
    }
}

/// Records the narrowest restricting set with which the compatibility cases passed on
/// this machine, so that later runs use it (`%LOCALAPPDATA%\workfence\state\os-facts.json`).
pub fn record_restricting_set(set: RestrictingSet) -> Result<(), WindowsError> {
    #[cfg(windows)]
    {
        let mut f = win::state::facts();
        f.restricting = Some(set);
        win::state::write_facts(&f)
    }
    #[cfg(not(windows))]
    {
        let _ = set;
        Err(WindowsError::Unsupported)
    }
}

/// Whether the null device currently grants the sandbox users (setup's grant is gone
/// after a reboot until setup runs again); `None` without setup or off Windows.
pub fn null_device_granted() -> Option<bool> {
    #[cfg(windows)]
    {
        let users = win::state::setup_info()?;
        win::detect::null_device_granted(&users)
    }
    #[cfg(not(windows))]
    {
        None
    }
}

/// The runner's entry point (the `workfence-windows-runner` binary calls it). It runs
/// as the sandbox user, reads its request from the pipe named on its command line,
/// builds the restricted token and starts the command.
pub fn runner_main() -> i32 {
    #[cfg(windows)]
    {
        win::runner::main()
    }
    #[cfg(not(windows))]
    {
        eprintln!("workfence: the Windows runner only runs on Windows");
        workfence_policy::run::EXIT_SETUP
    }
}

/// For a host binary that wants to double as the runner (so that no second executable
/// must be shipped): call this first in `main`; it returns the exit status when the
/// process was started as the runner.
///
/// It also answers [`REPAIR_NULL_DEVICE_FLAG`], with which the boot task `workfence
/// setup` registers re-applies the null device grant (its copy of the binary is the
/// same executable).
pub fn runner_main_if_requested() -> Option<i32> {
    let first = std::env::args_os().nth(1)?;
    if first == REPAIR_NULL_DEVICE_FLAG {
        return Some(repair_null_device_main());
    }
    (first == RUNNER_FLAG).then(runner_main)
}

/// The boot task's entry point: re-applies the null device grant for the sandbox users
/// (as SYSTEM) and returns 0, or 1 when it could not. Prints nothing: Task Scheduler
/// records the status as the task's last result, and `doctor` reports the grant.
pub fn repair_null_device_main() -> i32 {
    #[cfg(windows)]
    {
        win::setup::repair_null_device()
    }
    #[cfg(not(windows))]
    {
        workfence_policy::run::EXIT_SETUP
    }
}

/// Whether the boot task that re-applies the null device grant is registered
/// (`None` off Windows or when Task Scheduler cannot be asked).
pub fn boot_task_registered() -> Option<bool> {
    #[cfg(windows)]
    {
        win::setup::boot_task_registered()
    }
    #[cfg(not(windows))]
    {
        None
    }
}
