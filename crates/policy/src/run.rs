//! What every backend is asked to run, and the exit-status contract.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Exit status when the command hit `--timeout`.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when the sandbox could not be set up (one-line reason on stderr).
pub const EXIT_SETUP: i32 = 125;
/// Exit status when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit status base for a command killed by a signal (128 + signal number).
pub const EXIT_SIGNAL_BASE: i32 = 128;

/// One command to run inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRequest {
    /// argv; `argv[0]` is looked up in the sandbox's `PATH` when it has no slash.
    pub argv: Vec<OsString>,
    /// The complete environment of the command (already scrubbed).
    pub env: Vec<(String, String)>,
    /// Working directory (canonical).
    pub cwd: PathBuf,
    /// Kill the whole tree at this deadline.
    pub timeout: Option<Duration>,
    /// Allocate a pseudo-terminal.
    pub pty: bool,
    /// Extra fds to inherit (Unix).
    pub keep_fds: Vec<i32>,
    /// With a network allowlist (Linux): a unix socket of the caller over which the
    /// sandbox hands back the proxy's listening socket(s). Never passed to the command.
    #[serde(default)]
    pub proxy_socket: Option<i32>,
}

/// How a run ended, as a backend reports it: the exit status per the contract and,
/// when workfence itself decided the status (timeout, command not found or not
/// executable), the one-line reason for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunOutcome {
    /// The exit status per the contract.
    pub code: i32,
    /// Why workfence chose `code` (no prefix, one line); `None` for the command's own status.
    pub message: Option<String>,
    /// What the sandbox refused during the run that workfence saw (network
    /// destinations the proxy denied), in order, each with what would allow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<Denial>,
}

/// One refused action, for the caller (an agent can ask for exactly this).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Denial {
    /// The layer: `network`.
    pub layer: String,
    /// What was refused, for example `example.org:443`.
    pub target: String,
    /// Why, in one line.
    pub reason: String,
    /// The flag or rule that would allow it, when one would.
    pub allow_with: Option<String>,
}

impl RunOutcome {
    /// The command's own status.
    pub fn status(code: i32) -> RunOutcome {
        RunOutcome {
            code,
            message: None,
            denials: Vec::new(),
        }
    }

    /// A status workfence chose, with its reason.
    pub fn because(code: i32, message: impl Into<String>) -> RunOutcome {
        RunOutcome {
            code,
            message: Some(message.into()),
            denials: Vec::new(),
        }
    }
}

/// The message for a run that hit its timeout.
pub fn timeout_message(t: Duration) -> String {
    let shown = if t.subsec_millis() == 0 {
        format!("{}s", t.as_secs())
    } else {
        format!("{}ms", t.as_millis())
    };
    format!("timed out after {shown}; killed the whole process tree")
}
