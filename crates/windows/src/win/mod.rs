//! The apply layer: Windows only. All FFI lives in [`sys`].

pub mod acl;
pub mod detect;
pub mod launch;
pub mod run;
pub mod runner;
pub mod setup;
pub mod state;
pub mod sys;
