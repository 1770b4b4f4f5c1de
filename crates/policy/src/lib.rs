//! # workfence-policy
//!
//! The policy model of workfence, a sandbox for the commands that coding agents run.
//! It is pure data and pure functions, with no OS code: the CLI and library users
//! build a [`Policy`] (directly or from config files through [`resolve`]), the host
//! is described by [`layout::compute`], and each platform backend compiles the result
//! into its own plan.
//!
//! ```
//! use workfence_policy::{Mode, Network, Policy};
//! let mut p = Policy::new("/home/me/src/project");
//! assert_eq!(p.mode, Mode::WorkspaceWrite);
//! assert_eq!(p.network, Network::Off);
//! p.mode = Mode::ReadOnly;
//! assert!(p.protected_names.iter().any(|n| n == ".git"));
//! ```

pub mod config;
pub mod defaults;
pub mod env;
pub mod layout;
mod model;
pub mod resolve;
pub mod run;
pub mod secrets;
pub mod units;

pub use model::{
    EnvPolicy, ExecDecision, ExecRule, Limits, Mode, Network, Policy, Preset, ProxyPolicy,
    ScopedNetwork, Source, SourcedPath,
};

/// What a backend reports for each layer of the policy: enforced, partly, or not.
///
/// Like the `landlock` crate's `RestrictionStatus`, but per layer and for every OS,
/// so that `doctor`, `explain` and degraded runs can say exactly what is not enforced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerStatus {
    /// The layer, for example "filesystem writes" or "network".
    pub layer: String,
    /// How well it is enforced.
    pub state: Enforcement,
    /// The mechanism or the reason it is missing, and the fix.
    pub detail: String,
}

/// How well a layer is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// Fully.
    Full,
    /// Partly (the detail says what is missing).
    Partial,
    /// Not at all.
    None,
}
