//! The runner: started by workfence as the sandbox user (inside the job, before it
//! runs a single instruction), it reads one request from the control pipe, builds the
//! restricted token from its own token, creates the command suspended, hands its
//! process and thread handles to workfence (which resumes it) and exits, so that no
//! unrestricted process of the sandbox user lives during the command (with --pty it
//! stays, to keep the pseudo console open).

use std::io::{BufRead, BufReader, Write};

use workfence_policy::run::EXIT_SETUP;

use crate::win::launch::{self, Reply, Request};
use crate::win::sys;

fn pipe_name() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--pipe")?;
    let name = args.get(i + 1)?;
    // Only our own local pipes.
    name.starts_with("\\\\.\\pipe\\workfence-")
        .then(|| name.clone())
}

fn own_default_dacl(req: &Request) -> Result<(), crate::error::WindowsError> {
    let token = sys::process_token()?;
    let user = sys::token_user_sid(&token)?;
    let logon = sys::token_logon_sid(&token)?;
    drop(token);
    sys::set_own_default_dacl(&crate::plan::runner_default_dacl_sddl(
        &user,
        &req.capability_sid,
        &req.owner_sid,
        &logon,
    ))
}

pub fn main() -> i32 {
    let Some(name) = pipe_name() else {
        eprintln!("workfence-windows-runner: started without its control pipe; it is run by workfence, not by hand");
        return EXIT_SETUP;
    };
    let pipe = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("workfence-windows-runner: cannot open {name}: {e}");
            return EXIT_SETUP;
        }
    };
    let mut reader = BufReader::new(match pipe.try_clone() {
        Ok(p) => p,
        Err(_) => return EXIT_SETUP,
    });
    let mut writer = pipe;
    let mut send = |r: &Reply| -> bool {
        let line = serde_json::to_string(r).unwrap_or_default();
        writer
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| writer.flush())
            .is_ok()
    };
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return EXIT_SETUP;
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            send(&Reply::Failed {
                status: EXIT_SETUP,
                message: format!("bad request: {e}"),
            });
            return EXIT_SETUP;
        }
    };
    // First action: objects this process creates from now on (the job, a ConPTY's
    // console host, threads, the command when unrestricted) get the per-run default
    // DACL instead of the logon's, which grants the sandbox user and so every other
    // run's command.
    if let Err(e) = own_default_dacl(&req) {
        send(&Reply::Failed {
            status: EXIT_SETUP,
            message: e.to_string(),
        });
        return EXIT_SETUP;
    }
    // When workfence could not put us in its job, the kill-on-close job is made here,
    // the command is created in it, and workfence takes over a handle to it.
    let own_job = match req.own_job.as_ref().map(|l| sys::Job::new(&l.spec())) {
        None => None,
        Some(Ok(j)) => Some(j),
        Some(Err(e)) => {
            send(&Reply::Failed {
                status: EXIT_SETUP,
                message: e.to_string(),
            });
            return EXIT_SETUP;
        }
    };
    let launched = match launch::launch(&req, own_job.as_ref()) {
        Ok(Ok(l)) => l,
        Ok(Err((status, message))) => {
            send(&Reply::Failed { status, message });
            return status;
        }
        Err(e) => {
            send(&Reply::Failed {
                status: EXIT_SETUP,
                message: e.to_string(),
            });
            return EXIT_SETUP;
        }
    };
    // The command stays suspended: workfence resumes it once it holds its handles, so
    // it never runs while only this unrestricted process could kill it.
    let started = Reply::Started {
        pid: launched.child.pid,
        handle: sys::handle_value(&launched.child.process),
        thread: sys::handle_value(&launched.child.thread),
        job: own_job.as_ref().map(sys::Job::handle_value),
    };
    if !send(&started) {
        sys::terminate_process(&launched.child.process, EXIT_SETUP as u32);
        return EXIT_SETUP;
    }
    // Wait for workfence to take over the handles (it answers one line).
    let mut ack = String::new();
    let _ = reader.read_line(&mut ack);
    if let Some(pty) = launched.pty {
        let _ = sys::wait(&launched.child.process, None);
        pty.finish();
    }
    0
}
