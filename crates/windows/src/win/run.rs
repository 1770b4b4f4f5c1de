//! `run`: apply the plan, start the command (directly, or as the sandbox user through
//! the runner), enforce the timeout, and tidy up.

use std::io::{BufRead, BufReader, Write};
use std::os::windows::io::OwnedHandle;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use workfence_policy::run::{RunOutcome, RunRequest, EXIT_NOT_FOUND, EXIT_SETUP, EXIT_TIMEOUT};

use crate::cmdline;
use crate::decisions::{pipe_client_allowed, Handover, HandoverStep as Step, TerminateOnDrop};
use crate::error::WindowsError;
use crate::path::WinPath;
use crate::plan::{workspace_id, RunAs, WindowsPlan, REQUIRED_ENV};
use crate::win::launch::{self, Reply, Request};
use crate::win::{acl, state, sys};

/// Tidies up the run whatever happens: placeholders, temp dir, run marker.
struct RunGuard<'a> {
    plan: &'a WindowsPlan,
    marker: Option<state::RunMarker>,
    temp: Option<PathBuf>,
}

impl RunGuard<'_> {
    /// Tidies up; what failed is returned for the caller to report (the library
    /// prints nothing).
    fn finish(&mut self) -> Option<String> {
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_dir_all(t);
        }
        let m = self.marker.take()?;
        let others = m.others_alive();
        drop(m);
        acl::finish_run(self.plan, others)
            .err()
            .map(|e| e.to_string())
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        // An early return (an error) still tidies up; its own failure is then lost
        // behind the error being returned.
        let _ = self.finish();
    }
}

fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The command's environment: the caller's (already scrubbed), the variables Windows
/// programs need when missing, then the plan's.
fn build_env(plan: &WindowsPlan, req: &RunRequest, temp: Option<&Path>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = req
        .env
        .iter()
        // A name ending in `^` defeated the escaping of %VAR% of earlier versions; a
        // variable named CD would stand in for the dynamic one that cmd.exe's escaping
        // of `%` relies on (cmdline::cmd_escape): neither reaches the command.
        .filter(|(k, _)| !k.ends_with('^') && !k.is_empty() && !k.eq_ignore_ascii_case("CD"))
        .cloned()
        .collect();
    for name in REQUIRED_ENV {
        if get(&env, name).is_none() {
            if let Ok(v) = std::env::var(name) {
                env.push(((*name).to_string(), v));
            }
        }
    }
    for (k, v) in &plan.env.set {
        let v = match (k.as_str(), temp) {
            ("TEMP" | "TMP", Some(t)) => t.to_string_lossy().into_owned(),
            _ => v.clone(),
        };
        env.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        env.push((k.clone(), v));
    }
    if let Some(ws) = &plan.env.git_safe_directory {
        for (k, v) in crate::plan::git_safe_directory_env(&env, ws) {
            env.retain(|(n, _)| !n.eq_ignore_ascii_case(&k));
            env.push((k, v));
        }
    }
    env
}

/// Finds the program (rules in [`crate::lookup`]): the first candidate that is a
/// regular file and not a Store app alias.
fn resolve(argv0: &str, env: &[(String, String)], cwd: &str) -> Option<PathBuf> {
    crate::lookup::candidates(argv0, get(env, "PATH"), get(env, "PATHEXT"), cwd)
        .into_iter()
        .find(|c| {
            std::fs::metadata(c).is_ok_and(|m| m.is_file())
                && !crate::lookup::is_app_alias(sys::reparse_tag(c))
        })
        .map(PathBuf::from)
}

fn strings(req: &RunRequest) -> Result<Vec<String>, WindowsError> {
    req.argv
        .iter()
        .map(|a| {
            a.to_str().map(str::to_string).ok_or_else(|| {
                WindowsError::Runner(format!(
                    "argument {a:?} is not valid Unicode; Windows command lines cannot carry it"
                ))
            })
        })
        .collect()
}

fn remaining(deadline: Option<Instant>) -> Option<u32> {
    deadline.map(|d| {
        u32::try_from(d.saturating_duration_since(Instant::now()).as_millis())
            .unwrap_or(u32::MAX - 1)
    })
}

/// Waits for the command; `None` when the deadline passed.
fn wait_deadline(
    process: &OwnedHandle,
    deadline: Option<Instant>,
) -> Result<Option<u32>, WindowsError> {
    if sys::wait(process, remaining(deadline))? {
        Ok(Some(sys::exit_code(process)?))
    } else {
        Ok(None)
    }
}

pub fn run(
    plan: &WindowsPlan,
    req: &RunRequest,
    note: &mut dyn FnMut(String),
) -> Result<RunOutcome, WindowsError> {
    if let Some(e) = plan.refusal() {
        return Err(e);
    }
    if let Some(w) = plan.degraded_warning() {
        note(format!("WARNING: {w}"));
    }
    // The null device grant names the sandbox users and is gone after every boot until
    // the boot task (or setup) re-applies it: say so instead of failing every `> NUL`.
    if !plan.unsandboxed && !matches!(plan.run_as, crate::plan::RunAs::CurrentUser { .. }) {
        let granted = state::setup_info().and_then(|u| crate::win::detect::null_device_granted(&u));
        let task = || crate::win::setup::boot_task_registered();
        let check = if granted == Some(false) {
            crate::plan::null_device_check(granted, task(), plan.allow_degraded)
        } else {
            crate::plan::NullDeviceCheck::Run
        };
        match check {
            crate::plan::NullDeviceCheck::Run => {}
            crate::plan::NullDeviceCheck::Warn(w) => note(format!("WARNING: {w}")),
            crate::plan::NullDeviceCheck::Refuse(e) => return Err(e),
        }
    }
    let argv = strings(req)?;
    let Some(argv0) = argv.first() else {
        return Err(WindowsError::CommandLine(cmdline::CmdLineError::Empty));
    };
    let ws = WinPath::parse(&plan.workspace).map_err(|source| WindowsError::BadPath {
        what: "workspace".into(),
        source,
    })?;
    let mut guard = RunGuard {
        plan,
        marker: None,
        temp: None,
    };
    if !plan.unsandboxed {
        let marker = state::RunMarker::create(&workspace_id(&ws))?;
        for n in acl::apply(plan, marker.path())? {
            note(n);
        }
        guard.marker = Some(marker);
        if let Some(h) = &plan.home {
            for d in ["AppData\\Roaming", "AppData\\Local"] {
                let p = Path::new(h).join(d);
                std::fs::create_dir_all(&p)
                    .map_err(state::io("creating the sandbox user's home", &p))?;
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let t = PathBuf::from(&plan.temp_dir).join(format!("run-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&t).map_err(state::io("creating the run's temp dir", &t))?;
        guard.temp = Some(t);
    }
    let env = build_env(plan, req, guard.temp.as_deref());
    // cmd.exe cannot use a `\\?\` current directory: pass the plain form.
    let cwd = WinPath::parse(&req.cwd.to_string_lossy())
        .map(|p| p.display_string())
        .unwrap_or_else(|_| req.cwd.to_string_lossy().into_owned());
    let Some(program) = resolve(argv0, &env, &cwd) else {
        return Ok(RunOutcome::because(
            EXIT_NOT_FOUND,
            format!("{argv0}: command not found in the sandbox's PATH"),
        ));
    };
    let program = program.to_string_lossy().into_owned();
    let mut full: Vec<String> = vec![program.clone()];
    full.extend(argv[1..].iter().cloned());
    let (app, line) = if cmdline::is_batch(&program) {
        (
            plan.cmd_exe.clone(),
            cmdline::cmd_line(&plan.cmd_exe, &full)?,
        )
    } else {
        (program.clone(), cmdline::command_line(&full)?)
    };
    let owner_sid = sys::token_user_sid(&sys::process_token()?)?;
    // The private window station and desktop live until run returns (after the job
    // is terminated).
    let desktop = if plan.private_desktop {
        let mut nonce = [0u8; 8];
        sys::random_bytes(&mut nonce)?;
        let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let sddl = crate::plan::desktop_sddl(&owner_sid, plan.run_as.sid(), &plan.capability_sid);
        Some(sys::PrivateDesktop::create(
            &format!("workfence-{hex}"),
            &sddl,
        )?)
    } else {
        None
    };
    let token = plan.token.as_ref();
    let launch_req = Request {
        app,
        cmdline: line,
        env,
        cwd,
        capability_sid: plan.capability_sid.clone(),
        restricting: token.map(|t| t.restricting.clone()).unwrap_or_default(),
        disabled: token
            .map(|t| t.disabled_sids.iter().map(|s| s.sid.clone()).collect())
            .unwrap_or_default(),
        owner_sid,
        pty: req.pty.then(|| sys::console_size().unwrap_or((120, 30))),
        unrestricted: plan.unsandboxed,
        desktop: desktop.as_ref().map(|d| d.name.clone()),
        own_job: None,
    };
    let job = sys::Job::new(&plan.job)?;
    // Restored when run returns, whatever happens.
    let _raw = req.pty.then(sys::RawConsole::enable);
    let deadline = req
        .timeout
        .or(plan.job.timeout_ms.map(Duration::from_millis))
        .map(|t| Instant::now() + t);
    let status = match &plan.run_as {
        RunAs::CurrentUser { .. } => run_direct(&job, &launch_req, deadline)?,
        RunAs::OfflineUser { name, sid } | RunAs::OnlineUser { name, sid } => {
            run_as_user(&job, &plan.job, name, sid, launch_req, deadline)?
        }
    };
    // Like the end of a pid namespace: nothing the command left behind survives it.
    job.terminate(1);
    drop(desktop);
    if let Some(e) = guard.finish() {
        note(e);
    }
    Ok(status)
}

fn timed_out(job: &sys::Job, deadline: Option<Instant>, started: Instant) -> RunOutcome {
    job.terminate(EXIT_TIMEOUT as u32);
    let secs = deadline.map_or(0.0, |d| d.duration_since(started).as_secs_f64());
    RunOutcome::because(
        EXIT_TIMEOUT,
        format!("timed out after {secs:.1}s; killed the whole process tree"),
    )
}

fn run_direct(
    job: &sys::Job,
    req: &Request,
    deadline: Option<Instant>,
) -> Result<RunOutcome, WindowsError> {
    let started = Instant::now();
    // Created in the job (PROC_THREAD_ATTRIBUTE_JOB_LIST): nothing runs outside it,
    // and it nests under a job workfence itself may run in.
    let launched = match launch::launch(req, Some(job))? {
        Ok(l) => l,
        Err((status, message)) => return Ok(RunOutcome::because(status, message)),
    };
    launched.child.resume()?;
    let code = wait_deadline(&launched.child.process, deadline)?;
    let status = match code {
        Some(c) => {
            // Leftover background processes die with the command; then the pipes drain.
            job.terminate(1);
            RunOutcome::status(c as i32)
        }
        None => timed_out(job, deadline, started),
    };
    if let Some(p) = launched.pty {
        p.finish();
    }
    if let Some(s) = launched.stdio {
        s.finish();
    }
    Ok(status)
}

/// The runner executable: `workfence-windows-runner.exe` next to the running binary
/// (or one directory up, for `cargo test`), else the running binary itself, which
/// must then call [`crate::runner_main_if_requested`] first in `main`.
pub fn runner_exe() -> Result<PathBuf, WindowsError> {
    let exe = std::env::current_exe().map_err(state::io(
        "locating the runner",
        Path::new(crate::RUNNER_EXE),
    ))?;
    let mut dirs = Vec::new();
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if let Some(p) = d.parent() {
            dirs.push(p.to_path_buf());
        }
    }
    Ok(dirs
        .into_iter()
        .map(|d| d.join(crate::RUNNER_EXE))
        .find(|p| p.is_file())
        .unwrap_or(exe))
}

/// Takes the next handover step, refusing one out of order (decisions::HANDOVER).
fn step(h: &mut Handover, s: Step) -> Result<(), WindowsError> {
    h.step(s).map_err(|e| WindowsError::Runner(e.to_string()))
}

fn run_as_user(
    job: &sys::Job,
    spec: &crate::plan::JobSpec,
    user: &str,
    user_sid: &str,
    mut req: Request,
    deadline: Option<Instant>,
) -> Result<RunOutcome, WindowsError> {
    let started = Instant::now();
    let password = state::load_password(user)?;
    let mut nonce = [0u8; 16];
    sys::random_bytes(&mut nonce)?;
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("\\\\.\\pipe\\workfence-{}-{hex}", std::process::id());
    // Only SYSTEM, us and the sandbox user may open it, one instance is allowed, and
    // the client must be the runner itself (checked below): the sandbox user's other
    // processes, such as another run's command, pass the DACL.
    let server = sys::named_pipe_server(
        &name,
        &crate::plan::control_pipe_sddl(&req.owner_sid, user_sid),
    )?;
    let exe = runner_exe()?;
    let exe_s = exe.to_string_lossy().into_owned();
    let line =
        cmdline::command_line(&[exe_s.as_str(), crate::RUNNER_FLAG, "--pipe", name.as_str()])?;
    let stdio = launch::ChildStdio::new()?;
    let [a, b, c] = &stdio.handles;
    let mut handover = Handover::new();
    step(&mut handover, Step::StartRunnerSuspended)?;
    let runner = match sys::spawn_with_logon(
        user,
        &password,
        &exe_s,
        &line,
        &req.cwd,
        [a, b, c],
        req.desktop.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => {
            stdio.finish();
            return Err(e);
        }
    };
    drop(password);
    // Whatever way this function returns (a timeout while waiting for the runner, a
    // failed duplication, the end of the run), the runner does not outlive it: when
    // Windows refused to nest it in our job it is in no job of ours, and with its own
    // job it holds the only other handle to it (closing it kills the command).
    let _runner_guard = TerminateOnDrop::new(|| {
        sys::terminate_process(&runner.process, EXIT_SETUP as u32);
    });
    step(&mut handover, Step::CloseRunnerObjects)?;
    // The runner's process and thread got the seclogon token's default DACL, which
    // grants the sandbox user (a restricting SID of every run as that user) full
    // access: replace it before the runner runs, or stop (fail closed).
    let dacl = crate::plan::runner_object_sddl(&req.owner_sid);
    if let Err(e) = sys::set_kernel_object_dacl(
        &runner.process,
        &dacl,
        "closing the runner's process to other runs",
    )
    .and_then(|_| {
        sys::set_kernel_object_dacl(
            &runner.thread,
            &dacl,
            "closing the runner's thread to other runs",
        )
    }) {
        sys::terminate_process(&runner.process, EXIT_SETUP as u32);
        stdio.finish();
        return Err(e);
    }
    // Nested under seclogon's job. Should Windows refuse, the runner makes the job.
    step(&mut handover, Step::PlaceRunnerInJob)?;
    if job.assign(&runner.process).is_err() {
        req.own_job = Some(launch::JobLimits::of(spec));
    }
    step(&mut handover, Step::ResumeRunner)?;
    runner.resume()?;

    // Wait for the runner to connect, without hanging if it dies first.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = sys::connect_pipe(&server).map(|_| server);
        let _ = tx.send(r);
    });
    let server = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => break r?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if sys::wait(&runner.process, Some(0))? {
                    // Unblock the listener, then report.
                    let _ = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&name);
                    let code = sys::exit_code(&runner.process)?;
                    return Err(WindowsError::Runner(format!(
                        "the runner {} exited with {code} before it connected. Check that {user} can read it; if it is not {}, the program must call workfence_windows::runner_main_if_requested() first in main",
                        exe.display(),
                        crate::RUNNER_EXE
                    )));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(timed_out(job, deadline, started));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(WindowsError::Runner("the control pipe failed".into()))
            }
        }
    };
    step(&mut handover, Step::CheckPipeClient)?;
    let client = sys::pipe_client_pid(&server)?;
    if !pipe_client_allowed(runner.pid, client) {
        sys::terminate_process(&runner.process, EXIT_SETUP as u32);
        return Err(WindowsError::Runner(format!(
            "process {client} opened the runner's control pipe instead of the runner ({}); another sandboxed command may be interfering. Run again",
            runner.pid
        )));
    }
    let pipe = std::fs::File::from(server);
    let mut writer = pipe
        .try_clone()
        .map_err(state::io("using the control pipe", Path::new(&name)))?;
    step(&mut handover, Step::SendRequest)?;
    let request = serde_json::to_string(&req).unwrap_or_default();
    writer
        .write_all(format!("{request}\n").as_bytes())
        .map_err(state::io(
            "sending the request to the runner",
            Path::new(&name),
        ))?;
    // The reply is read on a thread so that the deadline holds even if the runner hangs.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut reply = String::new();
        let _ = reader.read_line(&mut reply);
        let _ = tx.send(reply);
    });
    let reply = match remaining(deadline) {
        Some(ms) => match rx.recv_timeout(Duration::from_millis(u64::from(ms))) {
            Ok(r) => r,
            Err(_) => return Ok(timed_out(job, deadline, started)),
        },
        None => rx.recv().unwrap_or_default(),
    };
    let (child, thread, runner_job) = match serde_json::from_str::<Reply>(&reply) {
        Ok(Reply::Started {
            handle,
            thread,
            job: j,
            ..
        }) => {
            step(&mut handover, Step::TakeOverHandles)?;
            let child = sys::duplicate_from(&runner.process, handle)?;
            let thread = sys::duplicate_from(&runner.process, thread)?;
            let j = match j {
                Some(v) => Some(sys::Job::from_handle(sys::duplicate_from(
                    &runner.process,
                    v,
                )?)),
                None => None,
            };
            (child, thread, j)
        }
        Ok(Reply::Failed { status, message }) => return Ok(RunOutcome::because(status, message)),
        Err(_) => {
            let _ = sys::wait(&runner.process, Some(5000));
            let code = sys::exit_code(&runner.process).unwrap_or(0);
            return Err(WindowsError::Runner(format!(
                "the runner exited with {code} without starting the command"
            )));
        }
    };
    // Everything that can kill the command is in our hands: now it may run.
    step(&mut handover, Step::ReleaseRunner)?;
    let _ = writer.write_all(b"ok\n");
    step(&mut handover, Step::ResumeCommand)?;
    sys::resume_thread(&thread)?;
    let kill = |code: u32| {
        job.terminate(code);
        if let Some(j) = &runner_job {
            j.terminate(code);
        }
    };
    let code = wait_deadline(&child, deadline)?;
    let status = match code {
        Some(c) => {
            // With --pty the runner drains the console output before it exits.
            let _ = sys::wait(&runner.process, Some(2000));
            kill(1);
            RunOutcome::status(c as i32)
        }
        None => {
            if let Some(j) = &runner_job {
                j.terminate(EXIT_TIMEOUT as u32);
            }
            timed_out(job, deadline, started)
        }
    };
    stdio.finish();
    Ok(status)
}
