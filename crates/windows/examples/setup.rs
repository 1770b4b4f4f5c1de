//! Runs `workfence setup` (or `--uninstall`) without the CLI, for CI and for testing
//! the backend alone: `cargo run -p workfence-windows --example setup [-- --uninstall]`.

fn main() {
    let uninstall = std::env::args().any(|a| a == "--uninstall");
    match workfence_windows::setup(uninstall) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("workfence setup: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
