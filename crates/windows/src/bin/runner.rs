//! `workfence-windows-runner`: started by workfence as the sandbox user through
//! `CreateProcessWithLogonW`; builds the restricted token and starts the command.

fn main() {
    std::process::exit(workfence_windows::runner_main());
}
