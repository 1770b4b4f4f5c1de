//! # workfence-macos
//!
//! The macOS backend of workfence: a [`Policy`] and its [`FsLayout`] are compiled by
//! a pure function, [`profile`], into a Seatbelt (SBPL) profile, and [`run`] starts
//! the command under `/usr/bin/sandbox-exec` with that profile, in its own session,
//! and kills every descendant when the command ends, times out or workfence is
//! stopped.
//!
//! The profile is printable on any host (`workfence explain --target macos`):
//!
//! ```
//! use std::path::PathBuf;
//! use workfence_policy::layout::{FileKind, FsLayout, HiddenPath, RootKind, WritableRoot};
//! use workfence_policy::{Policy, Source};
//! use workfence_macos::{profile, MacContext};
//!
//! let policy = Policy::new("/Users/dev/src/proj");
//! let layout = FsLayout {
//!     writable: vec![WritableRoot {
//!         path: PathBuf::from("/Users/dev/src/proj"),
//!         kind: RootKind::Workspace,
//!         source: Source::Default,
//!     }],
//!     protected: vec![],
//!     hidden: vec![HiddenPath {
//!         path: PathBuf::from("/Users/dev/.ssh"),
//!         kind: FileKind::Dir,
//!         source: Source::Default,
//!     }],
//!     cwd: PathBuf::from("/Users/dev/src/proj"),
//!     notes: vec![],
//! };
//! let ctx = MacContext::example(&policy);
//! let sb = profile(&policy, &layout, &ctx).unwrap();
//! assert!(sb.text().contains("(deny default)"));
//! assert_eq!(sb.param("WRITABLE_ROOT_0"), Some("/Users/dev/src/proj"));
//! // Display prints the parameters too: exactly what sandbox-exec receives.
//! assert!(sb.to_string().contains("-D HIDDEN_0=/Users/dev/.ssh"));
//! ```
//!
//! See `docs/macos.md` for the design and its limits.

use std::path::PathBuf;

use thiserror::Error;
use workfence_policy::{Network, Policy};

mod launch;
mod profile;
#[cfg(target_os = "macos")]
mod run;
#[cfg(target_os = "macos")]
mod sys;
mod track;

pub use profile::{profile, SeatbeltProfile, BASE_PROFILE, MACOS_SECRETS, SANDBOX_EXEC};
pub use workfence_policy::layout::FsLayout;
pub use workfence_policy::run::RunRequest;

/// What the profile needs to know about the host beyond the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacContext {
    /// The user's home directory (canonical); its `Library/Keychains` is hidden.
    pub home: PathBuf,
    /// The private temp dir of this run (canonical), writable and set as `TMPDIR`.
    pub tmp_dir: PathBuf,
    /// The port of workfence's proxy on the loopback, for `Network::Proxy`.
    pub proxy_port: Option<u16>,
    /// Delete `tmp_dir` after the command (true when workfence created it).
    pub remove_tmp_after_run: bool,
    /// The terminals workfence hands to the command (its own stdin, stdout and
    /// stderr when they are terminals): the only existing terminals the command
    /// may open by name. `run` replaces them with its pty slave for `--pty`.
    pub ttys: Vec<PathBuf>,
    /// Random per run (16 to 64 hex digits): names the owner probe that only this
    /// run's profile denies (see [`SeatbeltProfile::owner_probes`]).
    pub probe_token: String,
}

impl MacContext {
    /// A fixed context for `explain` and snapshot tests: the same on every host.
    pub fn example(policy: &Policy) -> Self {
        MacContext {
            home: PathBuf::from("/Users/dev"),
            tmp_dir: PathBuf::from(
                "/private/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T/wf-00example",
            ),
            proxy_port: match policy.network {
                Network::Proxy(_) => Some(3128),
                _ => None,
            },
            remove_tmp_after_run: false,
            ttys: vec![],
            probe_token: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    /// The same context with the proxy's loopback port (needed for `Network::Proxy`).
    pub fn with_proxy_port(mut self, port: u16) -> Self {
        self.proxy_port = Some(port);
        self
    }

    /// Removes the private temp dir that `detect` created, for a context that is
    /// not going to `run` (for example `explain` on a Mac). `run` removes it itself.
    pub fn discard(self) {
        if self.remove_tmp_after_run {
            let _ = std::fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

/// A hint for a command that cannot work inside Seatbelt as it is written: SwiftPM
/// (`swift build`, `swift test`, `swift run`, `swift package`) applies its own
/// `sandbox-exec` profile to manifests and plugins, and the kernel refuses a sandbox
/// inside a sandbox ("sandbox_apply: Operation not permitted"). Pure: the facade shows
/// it before the run, on macOS.
pub fn command_hint(argv: &[std::ffi::OsString]) -> Option<String> {
    let name = std::path::Path::new(argv.first()?).file_name()?.to_str()?;
    let sub = argv.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let swiftpm = (name == "swift" && matches!(sub, "build" | "test" | "run" | "package"))
        || matches!(
            name,
            "swift-build" | "swift-test" | "swift-run" | "swift-package"
        );
    let disabled = argv.iter().any(|a| a == "--disable-sandbox");
    (swiftpm && !disabled).then(|| {
        "SwiftPM runs its own sandbox-exec, which macOS refuses inside workfence's sandbox (\"sandbox_apply: Operation not permitted\"): add --disable-sandbox (workfence's sandbox still applies)".to_string()
    })
}

/// The limits the user asked for that this backend cannot enforce on any Mac, for
/// the caller to refuse (unless `allow_degraded`) or report: macOS has no cgroups.
///
/// Only limits the user set (config file, profile or flag) are listed. The
/// built-in process cap is a default, not a request, and would otherwise make
/// every run refuse: [`not_enforced_defaults`] reports it for `explain`/`doctor`.
pub fn unenforced(policy: &Policy) -> Vec<workfence_policy::LayerStatus> {
    let mut out = Vec::new();
    let mut limit = |layer: &str, detail: String| {
        out.push(workfence_policy::LayerStatus {
            layer: layer.into(),
            state: workfence_policy::Enforcement::None,
            detail,
        })
    };
    if let Some(b) = policy.limits.memory_bytes {
        limit(
            "memory limit",
            format!("{b} bytes requested; macOS has no per-tree memory limit (no cgroups)"),
        );
    }
    if let Some(c) = policy.limits.cpu_percent {
        limit(
            "CPU limit",
            format!("{c}% requested; macOS has no per-tree CPU limit (no cgroups)"),
        );
    }
    if policy.source_of("max_processes") != workfence_policy::Source::Default {
        limit("process limit", process_limit_detail(policy, "requested"));
    }
    out
}

/// Built-in defaults this backend does not enforce: informational, never a reason
/// to refuse (the user did not ask for them). Empty once the user set them, since
/// [`unenforced`] then lists them as refusals.
pub fn not_enforced_defaults(policy: &Policy) -> Vec<workfence_policy::LayerStatus> {
    if policy.source_of("max_processes") != workfence_policy::Source::Default {
        return Vec::new();
    }
    vec![workfence_policy::LayerStatus {
        layer: "process limit".into(),
        state: workfence_policy::Enforcement::None,
        detail: process_limit_detail(policy, "by default"),
    }]
}

fn process_limit_detail(policy: &Policy, how: &str) -> String {
    format!(
        "{} processes {how}; RLIMIT_NPROC is per user on macOS and would hit the host, so it is not set (only the timeout bounds a fork bomb)",
        policy.limits.max_processes
    )
}

#[cfg(target_os = "macos")]
impl MacContext {
    /// Reads the host: the home directory, and a fresh private temp dir (mode 0700)
    /// under the per-user temp dir, which `run` deletes afterwards (or
    /// [`MacContext::discard`] when nothing runs). The proxy port is left unset: add
    /// it with [`MacContext::with_proxy_port`] once the proxy listens.
    pub fn detect(policy: &Policy) -> Result<Self, MacError> {
        run::detect(policy)
    }
}

/// Why the macOS backend could not do its part. Each message names the failing
/// step and what to do; the CLI prints it and exits with 125.
#[derive(Debug, Error)]
pub enum MacError {
    /// Not on macOS.
    #[error("the macOS backend runs only on macOS; on this host use its own backend, or `workfence explain --target macos` to see the profile")]
    Unsupported,
    /// Full access has no sandbox to build.
    #[error("mode full-access runs without a sandbox, so there is no Seatbelt profile; run the command directly or pick read-only/workspace-write")]
    FullAccess,
    /// A path cannot be put into a profile.
    #[error("cannot put {path:?} into a Seatbelt profile: {reason}; rename it or leave it out of the policy")]
    BadPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The policy routes the network through the proxy, but no port is known.
    #[error("network mode proxy needs the proxy's loopback port; start the proxy first and pass its port with MacContext::with_proxy_port")]
    NoProxyPort,
    /// The home directory is unknown.
    #[error("cannot determine the home directory: {0}; set HOME to an existing absolute path")]
    Home(String),
    /// The private temp dir could not be made.
    #[error("cannot create the private temp dir {path:?}: {source}; check that TMPDIR points to a writable directory you own")]
    TempDir {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `sandbox-exec` is missing.
    #[error("{path} is missing or not executable ({source}); Seatbelt's launcher ships with macOS: check the OS install (workfence never looks it up in PATH)")]
    SandboxExecMissing {
        /// Where it was expected.
        path: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request cannot be run as given.
    #[error("invalid run request: {0}")]
    Request(String),
    /// A system call failed.
    #[error("{call} failed: {source}; {hint}")]
    Syscall {
        /// The call or step.
        call: &'static str,
        /// The OS error.
        source: std::io::Error,
        /// What to do.
        hint: &'static str,
    },
    /// `sandbox-exec` ran but did not start the command (profile rejected).
    #[error("sandbox-exec did not start the command ({status}): the profile was rejected or Seatbelt is unavailable; its message is on stderr above. `workfence doctor` checks Seatbelt, `workfence explain --target macos` shows the profile")]
    SandboxRefused {
        /// sandbox-exec's exit status.
        status: String,
    },
}

impl MacError {
    /// The exit status the CLI uses for this error (125: sandbox setup failed).
    pub fn exit_code(&self) -> i32 {
        workfence_policy::run::EXIT_SETUP
    }
}

/// Runs `req` under `profile` and returns the exit status per the contract in
/// `workfence_policy::run`: the command's own status, 128+N when killed by signal N,
/// 124 at the timeout, 126/127 when it cannot be executed or found. Setup failures
/// are errors (the CLI exits 125).
pub fn run(profile: &SeatbeltProfile, req: &RunRequest) -> Result<i32, MacError> {
    #[cfg(target_os = "macos")]
    {
        run::run(profile, req)
    }
    #[cfg(not(target_os = "macos"))]
    {
        let _ = (profile, req);
        Err(MacError::Unsupported)
    }
}

/// [`doctor`] for `policy` on this host: Seatbelt must compile the profile that
/// `run` would apply (this home, temp dir, terminals and the policy's paths), so
/// that a path or rule this macOS rejects shows here, not as a failed run.
pub fn doctor_for(policy: &Policy, layout: &FsLayout) -> Vec<workfence_policy::LayerStatus> {
    #[cfg(target_os = "macos")]
    {
        run::doctor(Some((policy, layout)))
    }
    #[cfg(not(target_os = "macos"))]
    {
        let _ = (policy, layout);
        doctor()
    }
}

/// What this host enforces, layer by layer, for `workfence doctor`, checking
/// that Seatbelt compiles an example profile with every kind of rule. Prefer
/// [`doctor_for`], which compiles the profile that would really run.
pub fn doctor() -> Vec<workfence_policy::LayerStatus> {
    #[cfg(target_os = "macos")]
    {
        run::doctor(None)
    }
    #[cfg(not(target_os = "macos"))]
    {
        vec![workfence_policy::LayerStatus {
            layer: "macOS Seatbelt".into(),
            state: workfence_policy::Enforcement::None,
            detail: "unsupported: this host is not macOS; the Seatbelt backend runs only there (`workfence explain --target macos` still prints the profile)".into(),
        }]
    }
}

#[cfg(test)]
mod hint_tests {
    use super::command_hint;
    use std::ffi::OsString;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn swiftpm_gets_the_disable_sandbox_hint() {
        assert!(command_hint(&argv(&["swift", "build"]))
            .unwrap()
            .contains("--disable-sandbox"));
        assert!(command_hint(&argv(&["/usr/bin/swift", "test", "-v"])).is_some());
        assert!(command_hint(&argv(&["swift-build", "-c", "release"])).is_some());
        assert!(command_hint(&argv(&["swift", "build", "--disable-sandbox"])).is_none());
        assert!(command_hint(&argv(&["swift", "--version"])).is_none());
        assert!(command_hint(&argv(&["swiftc", "x.swift"])).is_none());
        assert!(command_hint(&argv(&[])).is_none());
    }
}
