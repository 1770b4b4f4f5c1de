//! The pure parts of launching: the shim, the reaper script, the environment and
//! the marker fd. Separate from `run` so that they are tested on every host.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use std::os::raw::c_int;
use std::path::Path;
use std::time::Duration;

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

/// One line for the reaper: the command's process group (`-ROOT`) first, then
/// every pid in `known`. Once workfence has reaped the command's own process, its
/// pid, and the group named after it once that group empties, may belong to
/// someone else: the line then drops the group, and the tracker drops the pid from
/// `known` (a process adopted later under the same pid is a member again).
pub(crate) fn reaper_line(root: i32, root_reaped: bool, known: &[i32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !root_reaped {
        parts.push(format!("-{root}"));
    }
    parts.extend(known.iter().map(|p| p.to_string()));
    parts.join(" ")
}

/// How long a stopped run (Ctrl-C, SIGTERM, the timeout) may take to exit after
/// the polite signal before everything is killed: enough for git to remove its
/// `index.lock` and for test runners to print their summary.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(2);

/// How the grace period of a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GraceEnd {
    /// No process of the run is alive any more: nothing needs killing.
    AllExited,
    /// A second stop signal arrived: kill now.
    CutShort,
    /// [`STOP_GRACE`] ran out with processes still alive.
    TimedOut,
}

/// The grace period of a stop, after the polite signal went to the whole tree.
/// It ends when no process of the run is alive, not when the command's own
/// process exits: agents run `sh -c '... git ...'`, the shell dies at once on
/// SIGTERM, and git, its child, is still removing `index.lock`.
///
/// `any_alive` polls the tracking (it reaps the root and adopts new processes);
/// `cut_short` says whether a second signal arrived; `sleep` waits one tick.
pub(crate) fn grace_wait(
    grace: Duration,
    mut now: impl FnMut() -> std::time::Instant,
    mut any_alive: impl FnMut() -> bool,
    mut cut_short: impl FnMut() -> bool,
    mut sleep: impl FnMut(),
) -> GraceEnd {
    let until = now() + grace;
    loop {
        if !any_alive() {
            return GraceEnd::AllExited;
        }
        if cut_short() {
            return GraceEnd::CutShort;
        }
        if now() >= until {
            return GraceEnd::TimedOut;
        }
        sleep();
    }
}

/// What the shim writes on the marker fd, and nothing else: any other content
/// (or none, when sandbox-exec failed before exec'ing the shim) means that the
/// sandbox did not start the command.
pub(crate) const MARKER: &[u8] = b"x";

/// Whether the bytes read from the marker until EOF say "started".
pub(crate) fn marker_says_started(read: &[u8]) -> bool {
    read == MARKER
}

/// The polite signal for a stop: SIGINT for Ctrl-C (so that shells and REPLs
/// behave as at a terminal), SIGTERM for everything else, the timeout included.
pub(crate) fn polite_signal(received: Option<c_int>, sigint: c_int, sigterm: c_int) -> c_int {
    match received {
        Some(s) if s == sigint => sigint,
        _ => sigterm,
    }
}

/// The name of a run's private temp dir, from 8 random hex digits. Short on
/// purpose: the per-user temp dir is already about 50 bytes, and python's
/// multiprocessing puts `pymp-XXXXXXXX/listener-XXXXXXXX` (32 bytes) below TMPDIR
/// for a unix socket, whose path may not exceed 103 bytes (`sun_path`).
pub(crate) fn tmp_dir_name(hex: &str) -> String {
    format!("wf-{hex}")
}

/// What the pty relay writes when workfence's stdin ends: the pty's end-of-file
/// character, twice when the last line was not ended (the first one only hands
/// the partial line over, as at a terminal).
pub(crate) fn eof_bytes(eof: u8, at_line_start: bool) -> Vec<u8> {
    if at_line_start {
        vec![eof]
    } else {
        vec![eof, eof]
    }
}

/// The shim `sandbox-exec` runs: it reports on fd `marker` that the sandbox is
/// applied (sandbox-exec only execs after sandbox_init succeeded), closes the
/// marker and becomes the command. sh maps "not found" to 127 and "cannot
/// execute" to 126, as the exit-status contract wants.
pub(crate) fn shim(marker: c_int) -> String {
    format!("printf x >&{marker}; exec {marker}>&-; exec \"$0\" \"$@\"")
}

/// Checks the number `sys::low_marker_fd` found (None: fds 3 to 9 are all open
/// in this process or kept for the command): the shim's redirections need a
/// single digit, and the command must not inherit it.
pub(crate) fn marker_fd(found: Option<c_int>, keep: &[c_int]) -> Result<c_int, MacError> {
    match found {
        Some(fd) if (3..=9).contains(&fd) && !keep.contains(&fd) => Ok(fd),
        _ => Err(MacError::Request(
            "fds 3 to 9 are all open in this process or kept for the command; workfence's start marker needs one of them free: close one or keep fewer".into(),
        )),
    }
}

/// The request's environment plus what the sandbox needs: TMPDIR is the private
/// temp dir; xcrun (behind /usr/bin/cc, git, python3) skips its lookup cache, which
/// lives in the host's shared per-user temp dir and which the command must not
/// write (it maps tool names to paths the host runs later); clang's module cache
/// moves into the private temp dir.
///
/// Toolchain caches the host trusts later (Go's build cache, npm's cache,
/// Gradle's home, Maven's local repository) live outside the writable roots, so
/// builds failed writing them. They move into the private temp dir, per run,
/// where nothing the host runs ever reads them. Where the tool can still read
/// the host's cache without trusting writes (Gradle's read-only dependency
/// cache, Maven's chained local repository), it is offered read-only, so
/// offline builds keep working. Each only when the caller set none.
pub(crate) fn command_env(req: &RunRequest, tmp: &Path, home: &Path) -> Vec<(String, String)> {
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
    let t = |name: &str| tmp.join(name).display().to_string();
    default("GOCACHE", t("go-build"));
    default("npm_config_cache", t("npm-cache"));
    default("GRADLE_USER_HOME", t("gradle"));
    default(
        "GRADLE_RO_DEP_CACHE",
        home.join(".gradle/caches").display().to_string(),
    );
    default(
        "MAVEN_OPTS",
        format!(
            "-Dmaven.repo.local={} -Dmaven.repo.local.tail={}",
            t("m2-repository"),
            home.join(".m2/repository").display()
        ),
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
            proxy_socket: None,
        }
    }

    #[test]
    fn environment() {
        let env = command_env(
            &req(&[("TMPDIR", "/tmp"), ("PATH", "/bin")]),
            Path::new("/p/t"),
            Path::new("/Users/dev"),
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
        // Toolchain caches: per run, in the private temp dir.
        assert_eq!(get("GOCACHE"), Some("/p/t/go-build"));
        assert_eq!(get("npm_config_cache"), Some("/p/t/npm-cache"));
        assert_eq!(get("GRADLE_USER_HOME"), Some("/p/t/gradle"));
        assert_eq!(
            get("GRADLE_RO_DEP_CACHE"),
            Some("/Users/dev/.gradle/caches")
        );
        assert_eq!(
            get("MAVEN_OPTS"),
            Some("-Dmaven.repo.local=/p/t/m2-repository -Dmaven.repo.local.tail=/Users/dev/.m2/repository")
        );
        // The caller's choice wins.
        let env = command_env(
            &req(&[("xcrun_nocache", "0"), ("GOCACHE", "/w/.cache/go")]),
            Path::new("/p/t"),
            Path::new("/Users/dev"),
        );
        assert!(env.contains(&("xcrun_nocache".into(), "0".into())));
        assert!(env.contains(&("GOCACHE".into(), "/w/.cache/go".into())));
        assert_eq!(env.iter().filter(|(n, _)| n == "GOCACHE").count(), 1);
    }

    #[test]
    fn marker_numbers() {
        assert_eq!(marker_fd(Some(3), &[]).unwrap(), 3);
        assert_eq!(marker_fd(Some(5), &[3, 4]).unwrap(), 5);
        assert!(marker_fd(None, &[3, 4, 5, 6, 7, 8, 9]).is_err());
        assert!(marker_fd(Some(10), &[]).is_err());
        assert!(marker_fd(Some(4), &[4]).is_err());
    }

    #[test]
    fn marker_is_exact() {
        assert!(marker_says_started(b"x"));
        for bad in [&b""[..], b"y", b"xx", b"x\n", b"\0"] {
            assert!(!marker_says_started(bad), "{bad:?}");
        }
    }

    #[test]
    fn private_tmp_leaves_room_for_python_sockets() {
        // The longest per-user temp dir seen (/var/folders/xx/<28>/T, canonical).
        let base = "/private/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T";
        let dir = format!("{base}/{}", tmp_dir_name("0123abcd"));
        let socket = format!("{dir}/pymp-abcdefgh/listener-abcdefgh");
        assert!(socket.len() < 104, "{} bytes: {socket}", socket.len());
    }

    #[test]
    fn stdin_eof_is_forwarded() {
        assert_eq!(eof_bytes(4, true), vec![4]);
        assert_eq!(eof_bytes(4, false), vec![4, 4]);
    }

    #[test]
    fn stop_signals() {
        let (int, term) = (2, 15);
        assert_eq!(polite_signal(Some(int), int, term), int);
        assert_eq!(polite_signal(Some(1), int, term), term);
        assert_eq!(polite_signal(None, int, term), term);
        assert!(STOP_GRACE >= Duration::from_secs(1));
    }

    #[test]
    fn the_reaper_forgets_the_root_once_it_is_reaped() {
        assert_eq!(
            reaper_line(100, false, &[100, 101, 205]),
            "-100 100 101 205"
        );
        assert_eq!(reaper_line(100, true, &[101, 205]), "101 205");
        // Nothing left: an empty line, on which the reaper kills nothing.
        assert_eq!(reaper_line(100, true, &[]), "");
        let script = REAPER;
        assert!(script.contains(r#"if [ -n "$pids" ]"#));
    }

    /// A fake clock for [`grace_wait`]: each sleep advances it by 100 ms.
    struct Clock(std::cell::Cell<std::time::Instant>);

    impl Clock {
        fn new() -> Clock {
            Clock(std::cell::Cell::new(std::time::Instant::now()))
        }
        fn now(&self) -> std::time::Instant {
            self.0.get()
        }
        fn tick(&self) {
            self.0.set(self.0.get() + Duration::from_millis(100));
        }
    }

    #[test]
    fn grace_waits_for_the_children_not_only_the_root() {
        // The root (sh) exits at once on SIGTERM; its child (git) needs 5 ticks to
        // remove index.lock. The grace period lasts until the child is gone too.
        let clock = Clock::new();
        let mut polls = 0;
        let (mut root_alive, mut child_alive) = (true, true);
        let end = grace_wait(
            STOP_GRACE,
            || clock.now(),
            || {
                polls += 1;
                root_alive = false;
                if polls > 5 {
                    child_alive = false;
                }
                root_alive || child_alive
            },
            || false,
            || clock.tick(),
        );
        assert_eq!(end, GraceEnd::AllExited);
        assert_eq!(polls, 6, "stopped waiting while the child still ran");
        assert!(!child_alive);
    }

    #[test]
    fn grace_ends_at_the_deadline_or_on_a_second_signal() {
        let clock = Clock::new();
        let start = clock.now();
        let end = grace_wait(
            STOP_GRACE,
            || clock.now(),
            || true,
            || false,
            || clock.tick(),
        );
        assert_eq!(end, GraceEnd::TimedOut);
        assert!(clock.now() - start >= STOP_GRACE);
        assert!(clock.now() - start < STOP_GRACE + Duration::from_millis(200));

        let clock = Clock::new();
        let mut n = 0;
        let end = grace_wait(
            STOP_GRACE,
            || clock.now(),
            || true,
            || {
                n += 1;
                n == 3
            },
            || clock.tick(),
        );
        assert_eq!(end, GraceEnd::CutShort);

        // Nothing alive when the grace starts: no wait at all.
        let clock = Clock::new();
        let start = clock.now();
        let end = grace_wait(
            STOP_GRACE,
            || clock.now(),
            || false,
            || true,
            || clock.tick(),
        );
        assert_eq!(end, GraceEnd::AllExited);
        assert_eq!(clock.now(), start);
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

        // The root was reaped: the fresh line without it (here: empty) replaces
        // the old one, and EOF kills nothing of the old list.
        let mut spared = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let mut r = reaper();
        let mut input = r.stdin.take().unwrap();
        writeln!(input, "{}", spared.id()).unwrap();
        writeln!(input, "{}", reaper_line(spared.id() as i32, true, &[])).unwrap();
        drop(input);
        r.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            spared.try_wait().unwrap().is_none(),
            "reaper killed a pid it was told to forget"
        );
        spared.kill().unwrap();
        spared.wait().unwrap();
    }
}
