//! Starting the command itself: restricted token, stdio (pipes or ConPTY) and the
//! handle list. Used by workfence directly (without setup) and by the runner.

use std::io::{Read, Write};
use std::os::windows::io::{AsRawHandle, OwnedHandle};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use windows_sys::Win32::Foundation as F;
use workfence_policy::run::{EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};

use crate::error::WindowsError;
use crate::win::sys;

/// What the runner is asked to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Program (absolute).
    pub app: String,
    /// Full command line.
    pub cmdline: String,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: String,
    /// Capability SID (in the default DACL).
    pub capability_sid: String,
    /// The restricting SIDs (`plan::LOGON_SID` stands for the token's logon SID).
    pub restricting: Vec<String>,
    /// SIDs made deny-only.
    pub disabled: Vec<String>,
    /// The invoking user, who must be able to manage what the command creates.
    pub owner_sid: String,
    /// Use a ConPTY of this size.
    pub pty: Option<(i16, i16)>,
    /// No restricted token (full-access mode).
    pub unrestricted: bool,
    /// `winsta\desktop` to start the command on (`None`: the creator's).
    pub desktop: Option<String>,
    /// The runner creates the kill-on-close job itself, with these limits (when
    /// workfence could not put the runner in its own job).
    pub own_job: Option<JobLimits>,
}

/// The job limits the runner needs when it creates the job itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobLimits {
    /// `ActiveProcessLimit`.
    pub active_process_limit: u32,
    /// `JobMemoryLimit`, bytes.
    pub job_memory_limit: Option<u64>,
    /// CPU cap, percent of one core.
    pub cpu_percent: Option<u32>,
}

impl JobLimits {
    /// From the plan's job.
    pub fn of(spec: &crate::plan::JobSpec) -> JobLimits {
        JobLimits {
            active_process_limit: spec.active_process_limit,
            job_memory_limit: spec.job_memory_limit,
            cpu_percent: spec.cpu_percent,
        }
    }

    /// Back to a spec `sys::Job::new` takes.
    pub fn spec(&self) -> crate::plan::JobSpec {
        crate::plan::JobSpec {
            limit_flags: vec![],
            nesting: vec![],
            active_process_limit: self.active_process_limit,
            job_memory_limit: self.job_memory_limit,
            cpu_percent: self.cpu_percent,
            timeout_ms: None,
        }
    }
}

/// What the runner reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reply {
    /// The command exists, suspended; `handle` and `thread` are its process and main
    /// thread handles in the runner, `job` the runner's job when it made one. workfence
    /// resumes the command once it holds them.
    Started {
        /// Process id.
        pid: u32,
        /// Process handle value in the runner's handle table.
        handle: usize,
        /// Main thread handle value in the runner's handle table.
        thread: usize,
        /// Job handle value in the runner's handle table ([`Request::own_job`]).
        job: Option<usize>,
    },
    /// It could not start; `status` is 125, 126 or 127.
    Failed {
        /// Exit status under the contract.
        status: i32,
        /// Why.
        message: String,
    },
}

/// A started command and what keeps its terminal alive.
pub struct Launched {
    /// The command.
    pub child: sys::Child,
    /// ConPTY state, when --pty.
    pub pty: Option<PtyRelay>,
    /// Pipe relays, without --pty.
    pub stdio: Option<ChildStdio>,
}

/// Keeps the pseudo console and its output relay alive until the command ends.
pub struct PtyRelay {
    console: Option<sys::PseudoConsole>,
    output: Option<JoinHandle<()>>,
}

impl PtyRelay {
    /// Closes the console (after the command exited) and waits for the output to drain.
    pub fn finish(mut self) {
        drop(self.console.take());
        if let Some(t) = self.output.take() {
            let _ = t.join();
        }
    }
}

/// A UTF-16 environment block, sorted case-insensitively as Windows expects.
pub fn env_block(env: &[(String, String)]) -> Vec<u16> {
    let mut vars: Vec<&(String, String)> = env.iter().collect();
    vars.sort_by_key(|(k, _)| k.to_uppercase());
    let mut out = Vec::new();
    for (k, v) in vars {
        out.extend(format!("{k}={v}").encode_utf16());
        out.push(0);
    }
    if out.is_empty() {
        out.push(0);
    }
    out.push(0);
    out
}

fn nul() -> Result<OwnedHandle, WindowsError> {
    let nul = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("NUL")
        .map_err(crate::win::state::io(
            "opening NUL for stdio",
            "NUL".as_ref(),
        ))?;
    sys::inheritable(nul.as_raw_handle())
}

/// The command's three stdio handles (inheritable), and the threads that relay a
/// console through pipes.
pub struct ChildStdio {
    /// stdin, stdout, stderr.
    pub handles: [OwnedHandle; 3],
    relays: Vec<JoinHandle<()>>,
}

impl ChildStdio {
    /// Our stdio for the command. A console is never handed over (its input handle
    /// could inject keystrokes into the host shell): it is relayed through a pipe.
    pub fn new() -> Result<ChildStdio, WindowsError> {
        let mut relays = Vec::new();
        let stdin = std::io::stdin().as_raw_handle();
        let input = if sys::is_console(stdin) {
            let (r, w) = sys::pipe()?;
            let mut w = std::fs::File::from(w);
            // Never joined: it ends with our stdin or when the command closes the pipe.
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stdin = std::io::stdin();
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            sys::inheritable(r.as_raw_handle())?
        } else {
            sys::inheritable(stdin).or_else(|_| nul())?
        };
        let mut out =
            |h: std::os::windows::io::RawHandle, err: bool| -> Result<OwnedHandle, WindowsError> {
                if !sys::is_console(h) {
                    return sys::inheritable(h).or_else(|_| nul());
                }
                let (r, w) = sys::pipe()?;
                let mut r = std::fs::File::from(r);
                relays.push(std::thread::spawn(move || {
                    let _ = if err {
                        std::io::copy(&mut r, &mut std::io::stderr())
                    } else {
                        std::io::copy(&mut r, &mut std::io::stdout())
                    };
                }));
                sys::inheritable(w.as_raw_handle())
            };
        let output = out(std::io::stdout().as_raw_handle(), false)?;
        let error = out(std::io::stderr().as_raw_handle(), true)?;
        Ok(ChildStdio {
            handles: [input, output, error],
            relays,
        })
    }

    /// Closes our copies and waits for the output relays (call after the job is
    /// terminated, so that no process holds the pipes open).
    pub fn finish(self) {
        drop(self.handles);
        for r in self.relays {
            let _ = r.join();
        }
        let _ = std::io::stdout().flush();
    }
}

/// Maps a `CreateProcess*` failure to the exit-status contract.
pub fn spawn_failure(app: &str, code: u32) -> (i32, String) {
    let status = if code == F::ERROR_FILE_NOT_FOUND || code == F::ERROR_PATH_NOT_FOUND {
        EXIT_NOT_FOUND
    } else {
        EXIT_NOT_EXECUTABLE
    };
    (
        status,
        format!(
            "workfence: cannot run {app}: {} (Windows error {code})",
            sys::message(code)
        ),
    )
}

/// Creates the command suspended (in `job` when given); the caller resumes it once it
/// holds its handles. `Err` for setup failures, `Ok(Err)` for a command that cannot run
/// (126/127 with a message).
pub fn launch(
    req: &Request,
    job: Option<&sys::Job>,
) -> Result<Result<Launched, (i32, String)>, WindowsError> {
    let token = if req.unrestricted {
        None
    } else {
        let base = sys::process_token()?;
        let logon = sys::token_logon_sid(&base)?;
        let user = sys::token_user_sid(&base)?;
        let dacl =
            crate::plan::default_dacl_sddl(&user, &req.capability_sid, &req.owner_sid, &logon);
        let restricting: Vec<&str> = req
            .restricting
            .iter()
            .map(|s| {
                if s == crate::plan::LOGON_SID {
                    logon.as_str()
                } else {
                    s.as_str()
                }
            })
            .collect();
        let disabled: Vec<&str> = req.disabled.iter().map(String::as_str).collect();
        Some(sys::restricted_token(
            &base,
            &restricting,
            &disabled,
            &dacl,
        )?)
    };
    let place = || sys::Placement {
        job,
        desktop: req.desktop.as_deref(),
    };
    let env = env_block(&req.env);
    let (child, relay, stdio) = match req.pty {
        None => {
            let stdio = ChildStdio::new()?;
            let [a, b, c] = &stdio.handles;
            match sys::spawn(
                token.as_ref(),
                &req.app,
                &req.cmdline,
                &env,
                &req.cwd,
                sys::Stdio::Handles([a, b, c]),
                place(),
            ) {
                Ok(child) => (child, None, Some(stdio)),
                Err(sys::SpawnError(code)) => return Ok(Err(spawn_failure(&req.app, code))),
            }
        }
        Some((cols, rows)) => {
            let (in_read, in_write) = sys::pipe()?;
            let (out_read, out_write) = sys::pipe()?;
            let console = sys::PseudoConsole::new(cols, rows, &in_read, &out_write)?;
            // The console holds its own copies.
            drop((in_read, out_write));
            let child = match sys::spawn(
                token.as_ref(),
                &req.app,
                &req.cmdline,
                &env,
                &req.cwd,
                sys::Stdio::Pty(&console),
                place(),
            ) {
                Ok(c) => c,
                Err(sys::SpawnError(code)) => return Ok(Err(spawn_failure(&req.app, code))),
            };
            let mut input = std::fs::File::from(in_write);
            // Input: never joined; it ends with our stdin or the broken pipe.
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stdin = std::io::stdin();
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || input.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let mut output = std::fs::File::from(out_read);
            let out = std::thread::spawn(move || {
                let mut stdout = std::io::stdout();
                let _ = std::io::copy(&mut output, &mut stdout);
                let _ = stdout.flush();
            });
            (
                child,
                Some(PtyRelay {
                    console: Some(console),
                    output: Some(out),
                }),
                None,
            )
        }
    };
    Ok(Ok(Launched {
        child,
        pty: relay,
        stdio,
    }))
}
