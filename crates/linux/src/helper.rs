//! Runs from multi-threaded callers.
//!
//! Building the sandbox starts with a raw `clone`, after which the child allocates,
//! formats and mounts. That is only sound in a process with one thread: another
//! thread may hold the allocator's lock (or any lock) at the moment of the copy,
//! and the child would deadlock or corrupt state. Agent builders call the library
//! from tokio programs, so [`crate::run`] checks (`/proc/self/status`, right before
//! the clone: with one thread nothing else can start one meanwhile) and, in a
//! multi-threaded process, re-executes a helper instead: the `workfence` binary
//! (or any program whose `main` calls [`helper_main_if_requested`] first), which
//! receives the plan and the request as JSON on an inherited pipe, runs them
//! single-threaded, and sends the outcome back on a second pipe. `std::process`
//! spawns it with fork+exec safely from any thread.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use workfence_policy::run::{RunOutcome, RunRequest};

use crate::error::LinuxError;
use crate::plan::LinuxPlan;
use crate::sys;

/// argv[1] of the helper.
const HELPER_ARG: &str = "__workfence-linux-helper";

/// Set once the program's `main` has called [`helper_main_if_requested`]: then the
/// current executable is known to handle the helper role.
static HOOKED: AtomicBool = AtomicBool::new(false);

#[derive(Serialize, Deserialize)]
struct Job {
    plan: LinuxPlan,
    req: RunRequest,
}

#[derive(Serialize, Deserialize)]
enum Outcome {
    Code(RunOutcome),
    Error(String),
}

/// Whether this process has exactly one thread (false also when
/// `/proc/self/status` cannot be read: then nothing proves it).
///
/// A thread that has just finished (joined, or a detached one past its last
/// statement) is still counted for a few microseconds while the kernel releases
/// it: while the count keeps falling, wait briefly (50 us at a time, a few times at
/// most) for it to settle, which keeps such programs (the CLI's own git probe reads
/// its pipes on threads) off the helper's slower path. A count that does not fall
/// is a multi-threaded process: it costs one extra read and one short sleep.
pub fn single_threaded() -> bool {
    let threads = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .and_then(|v| v.trim().parse::<u32>().ok())
            })
    };
    let mut last = u32::MAX;
    for _ in 0..8 {
        match threads() {
            Some(1) => return true,
            Some(n) if n < last => {
                last = n;
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            _ => return false,
        }
    }
    false
}

/// When this process was started as the helper, runs the job and returns the exit
/// status to exit with; otherwise `None`. Call it first in `main` of any program
/// that uses the library from more than one thread (the `workfence` CLI does).
pub fn helper_main_if_requested() -> Option<i32> {
    HOOKED.store(true, Ordering::SeqCst);
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(HELPER_ARG)) {
        return None;
    }
    let fds: Option<(i32, i32)> = args
        .next()
        .and_then(|a| a.to_str().and_then(|s| s.parse().ok()))
        .map(|base: i32| (base, base + 1));
    let Some((job_fd, result_fd)) = fds.filter(|(j, _)| *j > 2) else {
        return Some(workfence_policy::run::EXIT_SETUP);
    };
    let (Some(job), Some(result)) = (sys::take_fd(job_fd), sys::take_fd(result_fd)) else {
        return Some(workfence_policy::run::EXIT_SETUP);
    };
    let mut text = Vec::new();
    let outcome = match std::fs::File::from(job).read_to_end(&mut text) {
        Err(e) => Outcome::Error(format!("the helper could not read its job: {e}")),
        Ok(_) => match serde_json::from_slice::<Job>(&text) {
            Err(e) => Outcome::Error(format!("the helper could not parse its job: {e}")),
            Ok(job) => match crate::apply::run_for_caller(&job.plan, &job.req, result.as_fd()) {
                Ok(code) => Outcome::Code(code),
                Err(e) => Outcome::Error(e.to_string()),
            },
        },
    };
    let code = match &outcome {
        Outcome::Code(c) => c.code,
        Outcome::Error(_) => workfence_policy::run::EXIT_SETUP,
    };
    let _ =
        std::fs::File::from(result).write_all(&serde_json::to_vec(&outcome).unwrap_or_default());
    Some(code)
}

/// The program to re-execute: `WORKFENCE_HELPER`, else the current executable when
/// its `main` called [`helper_main_if_requested`].
fn helper_path() -> Result<PathBuf, LinuxError> {
    if let Some(p) = std::env::var_os("WORKFENCE_HELPER").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if HOOKED.load(Ordering::SeqCst) {
        return std::env::current_exe().map_err(|e| LinuxError::Io {
            step: "finding the current executable for the helper",
            source: e,
        });
    }
    Err(LinuxError::NoHelper)
}

/// Runs the job in a freshly executed helper and relays its outcome.
pub fn run_in_helper(
    plan: &LinuxPlan,
    req: &RunRequest,
    started: &mut dyn FnMut(),
) -> Result<RunOutcome, LinuxError> {
    let exe = helper_path()?;
    let pipe = |what| {
        sys::pipe().map_err(|e| LinuxError::Syscall {
            step: what,
            call: "pipe2",
            source: e,
        })
    };
    let (job_r, job_w) = pipe("creating the helper's job pipe")?;
    let (res_r, res_w) = pipe("creating the helper's result pipe")?;
    // The helper's fds (its two pipes, then the proxy socket, if any) go above every
    // kept fd, so that kept fds keep their numbers, and above every fd being moved,
    // so that no dup2 in the child overwrites a source not yet moved.
    let sources = [job_r.as_raw_fd(), res_w.as_raw_fd()]
        .into_iter()
        .chain(req.proxy_socket)
        .chain(req.keep_fds.iter().copied());
    let base = sources.max().unwrap_or(2).max(9) + 1;
    let mut helper_req = req.clone();
    let mut moves = vec![(job_r.as_raw_fd(), base), (res_w.as_raw_fd(), base + 1)];
    if let Some(fd) = req.proxy_socket {
        moves.push((fd, base + 2));
        helper_req.proxy_socket = Some(base + 2);
    }
    let job = serde_json::to_vec(&Job {
        plan: plan.clone(),
        req: helper_req,
    })
    .map_err(|e| LinuxError::BadArgument(format!("serializing the job for the helper: {e}")))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg(HELPER_ARG).arg(base.to_string());
    sys::pass_fds(&mut cmd, moves, req.keep_fds.clone());
    let mut child = cmd.spawn().map_err(|e| LinuxError::Io {
        step: "starting the helper (set WORKFENCE_HELPER to the workfence binary)",
        source: e,
    })?;
    drop(job_r);
    drop(res_w);
    started();
    // The helper reads the whole job before it does anything, so this cannot block
    // on a full pipe for long; an early exit of the helper shows up as EPIPE.
    let _ = std::fs::File::from(job_w).write_all(&job);
    let mut text = Vec::new();
    let _ = std::fs::File::from(res_r).read_to_end(&mut text);
    let status = child.wait().map_err(|e| LinuxError::Io {
        step: "waiting for the helper",
        source: e,
    })?;
    match serde_json::from_slice::<Outcome>(&text) {
        Ok(Outcome::Code(c)) => Ok(c),
        Ok(Outcome::Error(e)) => Err(LinuxError::Relayed(e)),
        Err(_) => Err(LinuxError::Relayed(format!(
            "the helper {} ended ({status}) without an outcome; is it a workfence binary whose main calls helper_main_if_requested?",
            exe.display()
        ))),
    }
}
