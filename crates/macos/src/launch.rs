//! The pure parts of launching: the shim, the reaper script, the environment and
//! the marker fd. Separate from `run` so that they are tested on every host.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use std::os::raw::c_int;
use std::path::Path;

use workfence_policy::run::RunRequest;

use crate::MacError;

/// Kills the last known descendants when workfence dies without cleaning up
/// (SIGKILL): macOS has no parent-death signal. It runs outside the sandbox, in its
/// own process group (so the terminal's Ctrl-C does not kill it first), reads pid
/// lists on stdin and acts on EOF unless it was told "done".
pub(crate) const REAPER: &str = r#"trap '' INT HUP TERM QUIT
pids=
while IFS= read -r line; do
  case $line in
    done) exit 0 ;;
    *) pids=$line ;;
  esac
done
if [ -n "$pids" ]; then
  kill -s STOP -- $pids 2>/dev/null
  kill -s KILL -- $pids 2>/dev/null
  sleep 0.1
  kill -s KILL -- $pids 2>/dev/null
fi
exit 0
"#;

/// The shim `sandbox-exec` runs: it reports on fd `marker` that the sandbox is
/// applied (sandbox-exec only execs after sandbox_init succeeded), closes the
/// marker and becomes the command. sh maps "not found" to 127 and "cannot
/// execute" to 126, as the exit-status contract wants.
pub(crate) fn shim(marker: c_int) -> String {
    format!("printf x >&{marker}; exec {marker}>&-; exec \"$0\" \"$@\"")
}

/// The lowest fd in 3..=9 the command does not inherit: the shim's redirections
/// need a single digit.
pub(crate) fn marker_fd(keep: &[c_int]) -> Result<c_int, MacError> {
    (3..=9).find(|fd| !keep.contains(fd)).ok_or_else(|| {
        MacError::Request(
            "keep_fds uses every fd from 3 to 9; leave one free for workfence's start marker"
                .into(),
        )
    })
}

/// The request's environment plus what the sandbox needs: TMPDIR is the private
/// temp dir; xcrun (behind /usr/bin/cc, git, python3) skips its lookup cache, which
/// lives in the host's shared per-user temp dir and which the command must not
/// write (it maps tool names to paths the host runs later); clang's module cache
/// moves into the private temp dir. The last two only when the caller set none.
pub(crate) fn command_env(req: &RunRequest, tmp: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = req
        .env
        .iter()
        .filter(|(k, _)| k != "TMPDIR")
        .cloned()
        .collect();
    env.push(("TMPDIR".into(), format!("{}/", tmp.display())));
    let mut default = |k: &str, v: String| {
        if !env.iter().any(|(n, _)| n == k) {
            env.push((k.into(), v));
        }
    };
    default("xcrun_nocache", "1".into());
    default(
        "CLANG_MODULE_CACHE_PATH",
        tmp.join("clang-module-cache").display().to_string(),
    );
    env
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn req(env: &[(&str, &str)]) -> RunRequest {
        RunRequest {
            argv: vec!["true".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: "/".into(),
            timeout: None,
            pty: false,
            keep_fds: vec![],
        }
    }

    #[test]
    fn environment() {
        let env = command_env(
            &req(&[("TMPDIR", "/tmp"), ("PATH", "/bin")]),
            Path::new("/p/t"),
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TMPDIR"), Some("/p/t/"));
        assert_eq!(env.iter().filter(|(n, _)| n == "TMPDIR").count(), 1);
        assert_eq!(get("xcrun_nocache"), Some("1"));
        assert_eq!(
            get("CLANG_MODULE_CACHE_PATH"),
            Some("/p/t/clang-module-cache")
        );
        assert_eq!(get("PATH"), Some("/bin"));
        // The caller's choice wins.
        let env = command_env(&req(&[("xcrun_nocache", "0")]), Path::new("/p/t"));
        assert!(env.contains(&("xcrun_nocache".into(), "0".into())));
    }

    #[test]
    fn marker_numbers() {
        assert_eq!(marker_fd(&[]).unwrap(), 3);
        assert_eq!(marker_fd(&[3, 4]).unwrap(), 5);
        assert!(marker_fd(&[3, 4, 5, 6, 7, 8, 9]).is_err());
    }

    /// Runs the shim the way sandbox-exec would, with fd 7 open on a file.
    fn shim_run(dir: &Path, argv: &[&str]) -> (i32, String) {
        let mark = dir.join("mark");
        let _ = std::fs::remove_file(&mark);
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg("exec 7>\"$MARK\"; exec /bin/sh -c \"$SHIM\" \"$@\"")
            .arg("outer")
            .args(argv)
            .env("MARK", &mark)
            .env("SHIM", shim(7))
            .env("PATH", "/usr/bin:/bin")
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        (
            status.code().unwrap_or(-1),
            std::fs::read_to_string(&mark).unwrap_or_default(),
        )
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("workfence-launch-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn shim_marks_then_becomes_the_command() {
        let d = scratch("shim");
        // The marker is written, the command sees exactly its argv, and fd 7 is closed.
        let (code, mark) = shim_run(
            &d,
            &[
                "/bin/sh",
                "-c",
                "test \"$1\" = 'a b' && ! true >&7",
                "zero",
                "a b",
            ],
        );
        assert_eq!((code, mark.as_str()), (0, "x"));
        assert_eq!(shim_run(&d, &["sh", "-c", "exit 7"]).0, 7);
        assert_eq!(shim_run(&d, &["no-such-command-workfence"]).0, 127);
        std::fs::write(d.join("noexec"), "#!/bin/sh\n").unwrap();
        assert_eq!(shim_run(&d, &["./noexec"]).0, 126);
        let _ = std::fs::remove_dir_all(&d);
    }

    fn reaper() -> std::process::Child {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(REAPER)
            .stdin(Stdio::piped())
            .env_clear()
            .env("PATH", "/bin:/usr/bin")
            .spawn()
            .unwrap()
    }

    fn gone(c: &mut std::process::Child) -> bool {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if c.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn reaper_kills_on_eof_and_spares_on_done() {
        // EOF without "done" (workfence was SIGKILLed): the last list is killed.
        let mut victim = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let mut r = reaper();
        let mut input = r.stdin.take().unwrap();
        writeln!(input, "{}", std::process::id() + 1_000_000).unwrap();
        writeln!(input, "{}", victim.id()).unwrap();
        drop(input);
        assert!(gone(&mut victim), "victim survived the reaper");
        r.wait().unwrap();

        // "done": nothing is killed.
        let mut spared = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let mut r = reaper();
        let mut input = r.stdin.take().unwrap();
        writeln!(input, "{}", spared.id()).unwrap();
        writeln!(input, "done").unwrap();
        drop(input);
        r.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            spared.try_wait().unwrap().is_none(),
            "reaper killed after done"
        );
        spared.kill().unwrap();
        spared.wait().unwrap();
    }
}
