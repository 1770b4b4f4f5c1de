//! The attack suite on macOS (IDs from threat-catalogue.md). Every attack runs twice:
//! unsandboxed (the control: it must succeed, so the test proves something) and
//! under the generated Seatbelt profile through `workfence_macos::run` (it must fail).
#![cfg(target_os = "macos")]

use std::fs;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use workfence_macos::{profile, run, MacContext};
use workfence_policy::layout::compute;
use workfence_policy::run::RunRequest;
use workfence_policy::{Mode, Network, Policy, ProxyPolicy, Source, SourcedPath};

use workfence_policy::layout::StdProbe as RealFs;

const SECRET: &str = "SECRET-KEY-MATERIAL-4242";

/// A fake home `$H` with secrets and rc files, a workspace `$WS` inside it and an
/// unrelated directory `$OUT`, all canonical.
struct Scene {
    _dir: tempfile::TempDir,
    h: PathBuf,
    ws: PathBuf,
    out: PathBuf,
    token: String,
}

fn scene(git: bool) -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    let h = root.join("home");
    let ws = h.join("src/proj");
    let out = root.join("out");
    for d in [&ws, &out, &h.join(".ssh")] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(h.join(".bashrc"), "# rc\n").unwrap();
    fs::write(h.join(".ssh/id_rsa"), SECRET).unwrap();
    fs::write(out.join("victim"), "victim\n").unwrap();
    fs::write(ws.join("a.txt"), "a\n").unwrap();
    if git {
        let ok = Command::new("git")
            .args(["init", "-q"])
            .current_dir(&ws)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git init");
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let token = format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    Scene {
        _dir: dir,
        h,
        ws,
        out,
        token,
    }
}

impl Scene {
    fn policy(&self) -> Policy {
        let mut p = Policy::new(&self.ws);
        p.deny_read = workfence_policy::defaults::DENY_READ
            .iter()
            .map(|d| SourcedPath {
                path: workfence_policy::resolve::expand_home(&self.h, Path::new(d)),
                source: Source::Default,
            })
            .collect();
        p
    }

    fn env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into()),
            ("HOME".into(), s(&self.h)),
            ("H".into(), s(&self.h)),
            ("WS".into(), s(&self.ws)),
            ("OUT".into(), s(&self.out)),
            ("TOKEN".into(), self.token.clone()),
            ("LANG".into(), "C".into()),
        ]
    }

    /// The attack without a sandbox.
    fn control(&self, script: &str) -> i32 {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env_clear()
            .envs(self.env())
            .current_dir(&self.ws)
            .status()
            .unwrap()
            .code()
            .unwrap_or(-1)
    }

    /// The attack under the policy.
    fn sandboxed(&self, policy: &Policy, script: &str, timeout: Option<Duration>) -> i32 {
        self.sandboxed_with(policy, script, timeout, |c| c)
    }

    fn sandboxed_with(
        &self,
        policy: &Policy,
        script: &str,
        timeout: Option<Duration>,
        ctx: impl FnOnce(MacContext) -> MacContext,
    ) -> i32 {
        let layout = compute(policy, &self.h, &RealFs).expect("layout");
        let mut c = MacContext::detect(policy).expect("detect");
        c.home = self.h.clone();
        let c = ctx(c);
        let prof = profile(policy, &layout, &c).expect("profile");
        // The private temp dir this run gets, so that a script can check its
        // TMPDIR against the profile instead of against a naming convention.
        let mut env = self.env();
        env.push((
            "WF_PROFILE_TMP".into(),
            prof.tmp_dir().to_string_lossy().into_owned(),
        ));
        let req = RunRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env,
            cwd: self.ws.clone(),
            timeout,
            pty: false,
            keep_fds: vec![],
            proxy_socket: None,
        };
        run(&prof, &req).expect("run")
    }
}

fn mtime_year(p: &Path) -> u64 {
    let m = fs::metadata(p).and_then(|m| m.modified()).unwrap();
    let secs = m
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + secs / 31_556_952
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// Runs `script` as control and sandboxed, each in a fresh scene; `effect` says
/// whether the attack worked.
fn attack(git: bool, script: &str, effect: impl Fn(&Scene) -> Vec<(&'static str, bool)>) {
    let sc = scene(git);
    sc.control(script);
    for (what, worked) in effect(&sc) {
        assert!(worked, "control: `{what}` should work without the sandbox");
    }
    let sc = scene(git);
    let p = sc.policy();
    sc.sandboxed(&p, script, Some(Duration::from_secs(60)));
    for (what, worked) in effect(&sc) {
        assert!(!worked, "sandboxed: `{what}` must be blocked");
    }
}

// ------------------------------------------------------------------ filesystem writes

#[test]
fn fw1_writes_outside() {
    attack(
        false,
        r#"echo x >> "$H/.bashrc"; echo x > "$OUT/fw1"; echo x > "$WS/../fw1-up"; mkdir -p "$H/Library/LaunchAgents" && echo x > "$H/Library/LaunchAgents/x.plist"; touch -t 200001010000 "$H/.bashrc""#,
        |sc| {
            vec![
                (
                    "append $H/.bashrc",
                    read(&sc.h.join(".bashrc")).contains('x'),
                ),
                ("write $OUT", sc.out.join("fw1").exists()),
                (
                    "write $WS/..",
                    sc.ws.parent().unwrap().join("fw1-up").exists(),
                ),
                (
                    "LaunchAgents",
                    sc.h.join("Library/LaunchAgents/x.plist").exists(),
                ),
                (
                    "touch -t $H/.bashrc",
                    mtime_year(&sc.h.join(".bashrc")) < 2001,
                ),
            ]
        },
    );
}

#[test]
fn fw2_symlink_write_through() {
    attack(
        false,
        r#"ln -s "$H/.bashrc" "$WS/l"; echo x >> "$WS/l"; ln -s "$H/new" "$WS/d"; echo x > "$WS/d"; ln -s "$OUT" "$WS/o"; echo x > "$WS/o/via""#,
        |sc| {
            vec![
                (
                    "symlink to .bashrc",
                    read(&sc.h.join(".bashrc")).contains('x'),
                ),
                ("dangling symlink", sc.h.join("new").exists()),
                ("dir symlink", sc.out.join("via").exists()),
            ]
        },
    );
}

#[test]
fn fw3_hardlink_in() {
    attack(
        false,
        r#"ln "$OUT/victim" "$WS/h" && echo x >> "$WS/h"; ln "$H/.bashrc" "$WS/h2" && echo x >> "$WS/h2""#,
        |sc| {
            vec![
                (
                    "hardlink $OUT/victim",
                    read(&sc.out.join("victim")).contains('x'),
                ),
                (
                    "hardlink .bashrc",
                    read(&sc.h.join(".bashrc")).contains('x'),
                ),
            ]
        },
    );
}

#[test]
fn fw4_git_hooks_and_config() {
    attack(
        true,
        r#"mkdir -p .git/hooks; echo 'touch "$H/PWNED"' > .git/hooks/pre-commit; git config core.fsmonitor "touch $H/PWNED"; printf '[core]\n\thooksPath = /tmp\n' >> .git/config"#,
        |sc| {
            vec![
                ("hook", sc.ws.join(".git/hooks/pre-commit").exists()),
                (
                    "config",
                    read(&sc.ws.join(".git/config")).contains("fsmonitor")
                        || read(&sc.ws.join(".git/config")).contains("hooksPath"),
                ),
            ]
        },
    );
}

#[test]
fn fw5_rename_git_away() {
    attack(
        true,
        r#"mv .git .g; mkdir -p .git/hooks; echo evil > .git/hooks/post-checkout; cd .. && mv proj proj2"#,
        |sc| {
            let moved = sc.ws.parent().unwrap().join("proj2");
            vec![
                (
                    "mv .git",
                    sc.ws.join(".g").exists() || moved.join(".g").exists(),
                ),
                ("mv the workspace", moved.exists()),
            ]
        },
    );
}

#[test]
fn fw6_create_missing_protected() {
    attack(
        false,
        r#"mkdir .codex && echo 'sandbox_mode="danger-full-access"' > .codex/config.toml; mkdir -p .claude && echo '{}' > .claude/settings.json; mkdir .agents; echo '{}' > .mcp.json; ln -s /tmp .vscode; mkdir .GIT"#,
        |sc| {
            let names = fs::read_dir(&sc.ws)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_lowercase())
                .collect::<Vec<_>>();
            let has = |n: &str| names.iter().any(|x| x == n);
            vec![
                (".codex", has(".codex")),
                (".claude", has(".claude")),
                (".agents", has(".agents")),
                (".mcp.json", has(".mcp.json")),
                (".vscode symlink", has(".vscode")),
                (".GIT", has(".git")),
            ]
        },
    );
}

/// `$WS` is a linked worktree of `$H/src/main`: its `.git` is a file pointing into
/// the main repository, whose hooks and config are outside the workspace.
fn worktree_scene() -> (Scene, PathBuf) {
    let sc = scene(false);
    fs::remove_dir_all(&sc.ws).unwrap();
    let main = sc.h.join("src/main");
    fs::create_dir_all(&main).unwrap();
    git(&main, &["init", "-q"]);
    git(&main, &["commit", "-q", "--allow-empty", "-m", "init"]);
    git(&main, &["worktree", "add", "-q", sc.ws.to_str().unwrap()]);
    (sc, main)
}

#[test]
fn fw7_gitdir_indirection() {
    let script = r#"common=$(git rev-parse --path-format=absolute --git-common-dir)
echo evil > "$common/hooks/post-checkout"
printf '[core]\n\tfsmonitor = touch x\n' >> "$common/config"
printf 'gitdir: /tmp/evil\n' > .git"#;
    let effect = |sc: &Scene, main: &Path| {
        vec![
            (
                "common hooks",
                main.join(".git/hooks/post-checkout").exists(),
            ),
            (
                "common config",
                read(&main.join(".git/config")).contains("fsmonitor"),
            ),
            (".git file", read(&sc.ws.join(".git")).contains("/tmp/evil")),
        ]
    };
    let (sc, main) = worktree_scene();
    sc.control(script);
    for (what, worked) in effect(&sc, &main) {
        assert!(worked, "control: {what}");
    }
    let (sc, main) = worktree_scene();
    let p = sc.policy();
    sc.sandboxed(&p, script, None);
    for (what, worked) in effect(&sc, &main) {
        assert!(!worked, "sandboxed: {what}");
    }
    // git itself still works in the worktree: the gitdir is writable (git_write).
    let code = sc.sandboxed(
        &p,
        "echo b > b.txt && git add b.txt && git -c user.name=t -c user.email=t@example.invalid commit -qm b",
        None,
    );
    assert_eq!(code, 0, "commit in a linked worktree");
}

#[test]
fn fw14_case_aliases() {
    attack(
        true,
        r#"mkdir -p .GIT/HOOKS; echo evil > .GIT/HOOKS/post-checkout; echo evil >> .Git/Config"#,
        |sc| {
            vec![
                (
                    "hook via .GIT/HOOKS",
                    sc.ws.join(".git/hooks/post-checkout").exists(),
                ),
                (
                    "config via .Git/Config",
                    read(&sc.ws.join(".git/config")).contains("evil"),
                ),
            ]
        },
    );
    attack(true, "mv .GIT .g2", |sc| {
        vec![("rename via .GIT", sc.ws.join(".g2").exists())]
    });
}

/// Case folding maps `ſ` (U+017F) onto `s` and the Kelvin sign (U+212A) onto `k`.
/// Where the volume folds them (the control says so), the sandbox must refuse
/// those spellings of `.git/hooks` and read none of `~/.ssh` through them.
#[test]
fn fw14_case_folding_onto_ascii() {
    let script = "mkdir -p .git/hooks; echo evil > \".git/hoo\u{212a}s/post-checkout\"; echo evil > \".git/hook\u{17f}/pre-commit\"; cat \"$H/.\u{17f}\u{17f}h/id_rsa\" > leak; true";
    let effect = |sc: &Scene| {
        vec![
            (
                "hook via the Kelvin sign",
                sc.ws.join(".git/hooks/post-checkout").exists(),
            ),
            (
                "hook via long s",
                sc.ws.join(".git/hooks/pre-commit").exists(),
            ),
            (
                "~/.ssh via long s",
                read(&sc.ws.join("leak")).contains(SECRET),
            ),
        ]
    };
    let sc = scene(true);
    sc.control(script);
    let folds: Vec<&str> = effect(&sc)
        .into_iter()
        .filter(|(_, worked)| *worked)
        .map(|(what, _)| what)
        .collect();
    if folds.is_empty() {
        eprintln!("NOTE: this volume does not fold U+017F or U+212A: nothing to block");
        return;
    }
    let sc = scene(true);
    let p = sc.policy();
    sc.sandboxed(&p, script, Some(Duration::from_secs(60)));
    for (what, worked) in effect(&sc) {
        assert!(
            !(worked && folds.contains(&what)),
            "sandboxed: `{what}` must be blocked"
        );
    }
}

#[test]
fn fw15_shared_tmp() {
    let sc = scene(false);
    let probe = PathBuf::from(format!("/private/tmp/workfence-fw15-{}", sc.token));
    let script = format!("echo x > /tmp/workfence-fw15-{}", sc.token);
    sc.control(&script);
    assert!(probe.exists(), "control");
    fs::remove_file(&probe).unwrap();
    let p = sc.policy();
    sc.sandboxed(&p, &script, None);
    assert!(!probe.exists(), "sandboxed write to the shared /tmp");
    // The private TMPDIR works and is not the host's.
    let code = sc.sandboxed(
        &p,
        r#"test -n "$WF_PROFILE_TMP" || exit 4; test "$TMPDIR" = "$WF_PROFILE_TMP/" || exit 3; echo ok > "$TMPDIR/x" && test "$(cat "$TMPDIR/x")" = ok"#,
        None,
    );
    assert_eq!(code, 0);
}

// ------------------------------------------------------------------ secrets

#[test]
fn rs1_rs2_secrets() {
    attack(
        false,
        r#"cat "$H/.ssh/id_rsa" > "$OUT/leak1"; cat "$H/.SSH/ID_RSA" > "$OUT/leak2"; ln -s "$H/.ssh" "$WS/s"; cat "$WS/s/id_rsa" > "$OUT/leak3"; true"#,
        |sc| {
            // Sandboxed, $OUT is not writable either: look in both places.
            vec![
                ("cat id_rsa", read(&sc.out.join("leak1")).contains(SECRET)),
                ("cat via .SSH", read(&sc.out.join("leak2")).contains(SECRET)),
                (
                    "cat via symlink",
                    read(&sc.out.join("leak3")).contains(SECRET),
                ),
            ]
        },
    );
    // Sandboxed with the leak written into the (writable) workspace.
    let sc = scene(false);
    let p = sc.policy();
    sc.sandboxed(
        &p,
        r#"cat "$H/.ssh/id_rsa" > leak1; cat "$H/.SSH/ID_RSA" > leak2; ln -s "$H/.ssh" s; cat s/id_rsa > leak3; true"#,
        None,
    );
    for f in ["leak1", "leak2", "leak3"] {
        assert!(!read(&sc.ws.join(f)).contains(SECRET), "{f}");
    }
}

/// A clone or a hard link of a hidden secret under a name in the workspace would
/// be readable by that name. Settles on a Mac whether Seatbelt checks `file-clone`
/// and `file-link` against the source (the hidden path: refused) or only the
/// destination (the workspace: then the read rules must still stop the leak).
#[test]
fn rs_clone_or_link_a_hidden_secret_into_the_workspace() {
    let script = r#"cp -c "$H/.ssh/id_rsa" "$WS/k1"; cat "$WS/k1" > "$WS/leak1"
ln "$H/.ssh/id_rsa" "$WS/k2"; cat "$WS/k2" > "$WS/leak2"
cp -c "$H/.SSH/ID_RSA" "$WS/k3"; cat "$WS/k3" > "$WS/leak3"
true"#;
    attack(false, script, |sc| {
        vec![
            (
                "clone, then read",
                read(&sc.ws.join("leak1")).contains(SECRET),
            ),
            (
                "hard link, then read",
                read(&sc.ws.join("leak2")).contains(SECRET),
            ),
            (
                "clone via .SSH, then read",
                read(&sc.ws.join("leak3")).contains(SECRET),
            ),
        ]
    });
    // Which step stopped it, for the record (the docs' open question).
    let sc = scene(false);
    let p = sc.policy();
    sc.sandboxed(&p, script, Some(Duration::from_secs(60)));
    for f in ["k1", "k2", "k3"] {
        let made = fs::symlink_metadata(sc.ws.join(f)).is_ok();
        eprintln!(
            "NOTE: sandboxed {f} was {}created",
            if made { "" } else { "not " }
        );
        // Whatever was created must not hold the secret under a readable name.
        assert!(
            !made || !read(&sc.ws.join(f)).contains(SECRET),
            "{f} holds the secret"
        );
    }
}

#[test]
fn rs6_keychain() {
    let sc = scene(false);
    let script = r#"security list-keychains >/dev/null 2>&1 && security find-certificate -a >/dev/null 2>&1 && echo ok > "$WS/keychain""#;
    sc.control(script);
    assert!(
        sc.ws.join("keychain").exists(),
        "control: security works unsandboxed"
    );
    let sc = scene(false);
    let p = sc.policy();
    sc.sandboxed(&p, script, None);
    assert!(
        !sc.ws.join("keychain").exists(),
        "keychain reachable in the sandbox"
    );
}

// ------------------------------------------------------------------ network

/// A loopback listener counting connections.
fn listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut b = [0u8; 64];
            let _ = s.read(&mut b);
        }
    });
    (port, hits)
}

fn connect_script(port: u16) -> String {
    format!("curl -s -m 3 http://127.0.0.1:{port}/ >/dev/null 2>&1; nc -z -G 2 127.0.0.1 {port} >/dev/null 2>&1; true")
}

#[test]
fn n1_network_off_proxy_on() {
    let sc = scene(false);
    let (port, hits) = listener();
    sc.control(&connect_script(port));
    assert!(hits.load(Ordering::SeqCst) > 0, "control connects");

    // Off: nothing, not even the host's loopback.
    let (port, hits) = listener();
    let p = sc.policy();
    sc.sandboxed(&p, &connect_script(port), None);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "network off");

    // Proxy: only the proxy port.
    let (proxy, proxy_hits) = listener();
    let (other, other_hits) = listener();
    let mut p = sc.policy();
    p.network = Network::Proxy(ProxyPolicy::default());
    let script = format!("{}; {}", connect_script(proxy), connect_script(other));
    sc.sandboxed_with(&p, &script, None, |c| c.with_proxy_port(proxy));
    assert!(
        proxy_hits.load(Ordering::SeqCst) > 0,
        "proxy port reachable"
    );
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "other loopback port");

    // On: outbound works.
    let (port, hits) = listener();
    let mut p = sc.policy();
    p.network = Network::On;
    sc.sandboxed(&p, &connect_script(port), None);
    assert!(hits.load(Ordering::SeqCst) > 0, "network on");
}

#[test]
fn n2_udp_and_dns_off() {
    let sc = scene(false);
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let port = u.local_addr().unwrap().port();
    let script = format!("echo hi | nc -u -w 1 127.0.0.1 {port}; true");
    sc.control(&script);
    let mut b = [0u8; 16];
    assert!(u.recv(&mut b).is_ok(), "control sends UDP");
    let p = sc.policy();
    sc.sandboxed(&p, &script, None);
    u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(u.recv(&mut b).is_err(), "UDP with network off");
}

// ------------------------------------------------------------------ process / IPC

#[test]
fn p1_signals_to_host() {
    let sc = scene(false);
    let mut canary = Command::new("/bin/sleep").arg("300").spawn().unwrap();
    let script = format!("kill -9 {} 2>/dev/null; true", canary.id());
    let p = sc.policy();
    sc.sandboxed(&p, &script, None);
    assert!(
        canary.try_wait().unwrap().is_none(),
        "host canary killed from the sandbox"
    );
    sc.control(&script);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        canary.try_wait().unwrap().is_some(),
        "control kills the canary"
    );
}

#[test]
fn p4_launchctl_and_nested_sandbox() {
    let sc = scene(false);
    let label = format!("dev.workfence.test.{}", sc.token);
    let script = format!(
        r#"launchctl submit -l {label} -- /usr/bin/touch "$H/PWNED-launchctl"; sandbox-exec -p '(version 1)(allow default)' /usr/bin/touch "$H/PWNED-nested"; true"#
    );
    sc.control(&script);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sc.h.join("PWNED-launchctl").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("launchctl").args(["remove", &label]).status();
    assert!(
        sc.h.join("PWNED-launchctl").exists(),
        "control: launchctl submit runs a job"
    );
    assert!(
        sc.h.join("PWNED-nested").exists(),
        "control: sandbox-exec allow default"
    );

    let sc = scene(false);
    let p = sc.policy();
    sc.sandboxed(&p, &script, None);
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("launchctl").args(["remove", &label]).status();
    assert!(
        !sc.h.join("PWNED-launchctl").exists(),
        "launchd job from the sandbox"
    );
    assert!(
        !sc.h.join("PWNED-nested").exists(),
        "nested sandbox-exec widened the sandbox"
    );
}

#[test]
fn p4_open_and_osascript() {
    // Launching apps needs a GUI session and, for Apple Events, TCC consent, which CI
    // runners may lack: the control is reported, the sandboxed side always asserted.
    let sc = scene(false);
    let script = r#"open -g -j -a TextEdit && touch "$H/opened"; osascript -e 'tell application "TextEdit" to quit' && touch "$H/osa""#;
    sc.control(script);
    let control_open = sc.h.join("opened").exists();
    let control_osa = sc.h.join("osa").exists();
    eprintln!("control: open -a worked: {control_open}; osascript worked: {control_osa}");
    let _ = Command::new("/usr/bin/killall").arg("TextEdit").status();
    let sc = scene(false);
    let p = sc.policy();
    sc.sandboxed(&p, script, None);
    assert!(!sc.h.join("opened").exists(), "open -a from the sandbox");
    assert!(!sc.h.join("osa").exists(), "osascript from the sandbox");
    let code = sc.sandboxed(&p, r#"open -g -j -a TextEdit"#, None);
    assert_ne!(code, 0, "open must fail");
}

// ------------------------------------------------------------------ lifetime

fn pgrep(pattern: &str) -> bool {
    Command::new("/usr/bin/pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

fn daemons_script(n: u32) -> String {
    // setsid'd double fork (perl, as macOS has no setsid(1)), nohup & disown, and a
    // plain background job; each sleeps a unique number of seconds.
    format!(
        r#"perl -MPOSIX -e 'exit if fork; POSIX::setsid(); exit if fork; exec "/bin/sleep", "{a}"'
nohup /bin/sleep {b} >/dev/null 2>&1 &
/bin/sleep {c} &
sleep 0.3"#,
        a = n,
        b = n + 1,
        c = n + 2
    )
}

#[test]
fn l1_leftover_daemons_are_killed() {
    let sc = scene(false);
    let n = 40_000 + (std::process::id() % 9_000);
    let script = daemons_script(n);
    sc.control(&script);
    std::thread::sleep(Duration::from_millis(300));
    let survived = pgrep(&format!("sleep {n}$")) && pgrep(&format!("sleep {}$", n + 1));
    let _ = Command::new("/usr/bin/pkill")
        .args(["-f", &format!("sleep {n}$")])
        .status();
    let _ = Command::new("/usr/bin/pkill")
        .args(["-f", &format!("sleep {}$", n + 1)])
        .status();
    let _ = Command::new("/usr/bin/pkill")
        .args(["-f", &format!("sleep {}$", n + 2)])
        .status();
    assert!(survived, "control: daemons outlive their parent");

    let n = n + 10;
    let p = sc.policy();
    let code = sc.sandboxed(&p, &daemons_script(n), None);
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_millis(1000));
    for k in 0..3 {
        let pat = format!("sleep {}$", n + k);
        let alive = pgrep(&pat);
        let _ = Command::new("/usr/bin/pkill").args(["-f", &pat]).status();
        assert!(!alive, "leftover `{pat}`");
    }
}

#[test]
fn l5_timeout_kills_the_tree() {
    let sc = scene(false);
    let n = 50_000 + (std::process::id() % 9_000);
    let p = sc.policy();
    let start = Instant::now();
    let code = sc.sandboxed(
        &p,
        &format!("/bin/sleep {n} & perl -MPOSIX -e 'exit if fork; POSIX::setsid(); exec \"/bin/sleep\", \"{}\"'; /bin/sleep {}", n + 1, n + 2),
        Some(Duration::from_secs(2)),
    );
    assert_eq!(code, 124);
    assert!(start.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    for k in 0..3 {
        let pat = format!("sleep {}$", n + k);
        let alive = pgrep(&pat);
        let _ = Command::new("/usr/bin/pkill").args(["-f", &pat]).status();
        assert!(!alive, "survived the timeout: `{pat}`");
    }
}

// ------------------------------------------------------------------ contract and ordinary work

#[test]
fn exit_codes() {
    let sc = scene(false);
    let p = sc.policy();
    assert_eq!(sc.sandboxed(&p, "exit 7", None), 7);
    assert_eq!(sc.sandboxed(&p, "kill -TERM $$", None), 128 + 15);
    let layout = compute(&p, &sc.h, &RealFs).unwrap();
    let mut ctx = MacContext::detect(&p).unwrap();
    ctx.home = sc.h.clone();
    let prof = profile(&p, &layout, &ctx).unwrap();
    let req = |argv: &[&str]| RunRequest {
        argv: argv.iter().map(Into::into).collect(),
        env: sc.env(),
        cwd: sc.ws.clone(),
        timeout: None,
        pty: false,
        proxy_socket: None,
        keep_fds: vec![],
    };
    assert_eq!(
        run(&prof, &req(&["no-such-command-workfence"])).unwrap(),
        127
    );
    fs::write(sc.ws.join("noexec"), "#!/bin/sh\n").unwrap();
    assert_eq!(run(&prof, &req(&["./noexec"])).unwrap(), 126);
    assert_eq!(run(&prof, &req(&["true"])).unwrap(), 0);
}

#[test]
fn ordinary_developer_work_succeeds() {
    let sc = scene(true);
    let p = sc.policy();
    let script = r#"set -e
git add a.txt
git -c user.name=t -c user.email=t@example.invalid commit -qm first
git status --short >/dev/null
printf 'int main(void){return 0;}\n' > hello.c
cc -o hello hello.c && ./hello
python3 -c 'import tempfile, multiprocessing; tempfile.NamedTemporaryFile(); print(multiprocessing.cpu_count())' >/dev/null
python3 - <<'PY'
# A process pool (unix socket below TMPDIR: the path must fit sun_path), shared
# memory (psm_ segments), a pty of its own (com.apple.sandbox.pty).
import multiprocessing, os
from multiprocessing import shared_memory
if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
    m = shared_memory.SharedMemory(create=True, size=16)
    m.buf[0] = 7
    # Attaching by name sizes the segment with fstat (ipc-posix-shm-read-metadata).
    other = shared_memory.SharedMemory(name=m.name)
    assert other.size >= 16 and other.buf[0] == 7
    other.close()
    m.close(); m.unlink()
    master, slave = os.openpty()
    os.write(slave, b"x")
    assert os.read(master, 1) == b"x"
PY
if command -v node >/dev/null; then
  node -e 'const os = require("os"); os.networkInterfaces(); os.cpus(); require("fs").writeFileSync("node.txt", "ok")'
  test -f node.txt
fi
case "$GOCACHE" in "$TMPDIR"*) ;; *) echo "GOCACHE=$GOCACHE outside TMPDIR" >&2; exit 9 ;; esac
case "$npm_config_cache" in "$TMPDIR"*) ;; *) echo "npm cache outside TMPDIR" >&2; exit 9 ;; esac
cp "$H/.bashrc" copied
cp -c "$H/.bashrc" cloned
mkdir -p sub && ln a.txt sub/hard && mv sub sub2
echo done > done.txt"#;
    let code = sc.sandboxed(&p, script, Some(Duration::from_secs(120)));
    assert_eq!(code, 0, "ordinary work failed inside the sandbox");
    assert!(sc.ws.join("done.txt").exists());
    assert!(sc.ws.join("hello").exists());
}

#[test]
fn read_only_mode_writes_nothing_but_tmp() {
    let sc = scene(false);
    let mut p = sc.policy();
    p.mode = Mode::ReadOnly;
    let code = sc.sandboxed(
        &p,
        r#"echo x > "$WS/ro"; echo ok > "$TMPDIR/t" && cat "$WS/a.txt" >/dev/null"#,
        None,
    );
    assert_eq!(code, 0);
    assert!(!sc.ws.join("ro").exists());
}

#[test]
fn doctor_reports_seatbelt_and_the_profile_compiles() {
    // The profile this host would really run for the scene's policy.
    let sc = scene(true);
    let p = sc.policy();
    let layout = compute(&p, &sc.h, &RealFs).unwrap();
    let layers = workfence_macos::doctor_for(&p, &layout);
    let seatbelt = layers
        .iter()
        .find(|l| l.layer.starts_with("Seatbelt"))
        .expect("a Seatbelt entry");
    assert_eq!(
        seatbelt.state,
        workfence_policy::Enforcement::Full,
        "{}",
        seatbelt.detail
    );
    assert!(
        seatbelt.detail.contains("current policy"),
        "{}",
        seatbelt.detail
    );
    for l in &layers {
        eprintln!("{:?} {}: {}", l.state, l.layer, l.detail);
    }
}

// ------------------------------------------------------------------ terminal

#[test]
fn t1_no_controlling_terminal_without_pty_and_a_private_one_with() {
    let sc = scene(false);
    let p = sc.policy();
    // Own session: /dev/tty cannot be opened, so there is no terminal to inject into.
    assert_ne!(
        sc.sandboxed(&p, "exec 3</dev/tty", None),
        0,
        "the command still has a controlling terminal"
    );
    // With a pty the command gets a terminal of its own.
    let layout = compute(&p, &sc.h, &RealFs).unwrap();
    let mut ctx = MacContext::detect(&p).unwrap();
    ctx.home = sc.h.clone();
    let prof = profile(&p, &layout, &ctx).unwrap();
    let req = RunRequest {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "test -t 0 && test -t 1 && stty -a >/dev/null && exec 3</dev/tty".into(),
        ],
        env: sc.env(),
        cwd: sc.ws.clone(),
        timeout: Some(Duration::from_secs(20)),
        proxy_socket: None,
        pty: true,
        keep_fds: vec![],
    };
    assert_eq!(run(&prof, &req).unwrap(), 0);
}

// ------------------------------------------------------------------ issue 9 attacks

#[test]
fn rs_data_volume_and_volfs_spellings() {
    // The same secret through the Data volume's firmlink spelling; and the same
    // write. /.vol (volfs) names a file by device and inode number.
    let script = r#"cat "/System/Volumes/Data$H/.ssh/id_rsa" > "$WS/leak-data"
echo x >> "/System/Volumes/Data$H/.bashrc"
set -- $(stat -f '%d %i' "$H/.ssh/id_rsa")
cat "/.vol/$1/$2" > "$WS/leak-vol""#;
    let sc = scene(false);
    sc.control(script);
    let via_data = read(&sc.ws.join("leak-data")).contains(SECRET);
    let via_vol = read(&sc.ws.join("leak-vol")).contains(SECRET);
    eprintln!("control: Data-volume spelling works: {via_data}; /.vol works: {via_vol}");
    assert!(
        via_data,
        "control: the Data-volume spelling reads the secret"
    );
    let sc = scene(false);
    let p = sc.policy();
    sc.sandboxed(&p, script, Some(Duration::from_secs(30)));
    assert!(
        !read(&sc.ws.join("leak-data")).contains(SECRET),
        "secret read through /System/Volumes/Data"
    );
    assert!(
        !read(&sc.ws.join("leak-vol")).contains(SECRET),
        "secret read through /.vol"
    );
    assert!(
        !read(&sc.h.join(".bashrc")).contains('x'),
        "write through /System/Volumes/Data"
    );
}

#[test]
fn fw_nested_repositories() {
    attack(
        false,
        r#"mkdir -p sub && git -C sub init -q
mkdir -p sub2/.git/hooks && printf '#!/bin/sh\ntouch "$H/PWNED"\n' > sub2/.git/hooks/post-checkout
printf '[core]\n\tfsmonitor = touch PWNED\n' > sub2/.git/config
mkdir -p prep/hooks sub3 && echo x > prep/hooks/pre-commit && mv prep sub3/.git
mkdir -p sub4 && ln -s "$OUT" sub4/.GIT"#,
        |sc| {
            vec![
                ("git init sub", sc.ws.join("sub/.git/config").exists()),
                (
                    "sub2/.git/hooks/post-checkout",
                    sc.ws.join("sub2/.git/hooks/post-checkout").exists(),
                ),
                ("sub2/.git/config", sc.ws.join("sub2/.git/config").exists()),
                (
                    "mv prepared dir to sub3/.git",
                    sc.ws.join("sub3/.git/hooks/pre-commit").exists(),
                ),
                (
                    "symlink sub4/.GIT",
                    fs::symlink_metadata(sc.ws.join("sub4/.GIT")).is_ok(),
                ),
            ]
        },
    );
}

/// Repositories that exist before the run (a vendored checkout, a submodule, a
/// linked worktree): the files of their gitdirs that make host git run code or
/// read another config (`commondir` -> `../evil` with `core.fsmonitor`) stay
/// read-only.
#[test]
fn fw_nested_gitdir_redirection() {
    let script = r#"mkdir -p evil && printf '[core]\n\tfsmonitor = touch PWNED\n' > evil/config
printf '../../evil\n' > sub/.git/commondir
printf '[core]\n\tfsmonitor = touch PWNED\n' > sub/.git/config.worktree
printf '../../../../evil\n' > .git/worktrees/wt/commondir
printf '[core]\n\tfsmonitor = touch PWNED\n' > .git/modules/m/config.worktree
printf '#!/bin/sh\n' > .git/modules/m/hooks/post-checkout
true"#;
    let setup = |sc: &Scene| {
        git(&sc.ws, &["commit", "-q", "--allow-empty", "-m", "init"]);
        fs::create_dir_all(sc.ws.join("sub")).unwrap();
        git(&sc.ws.join("sub"), &["init", "-q"]);
        git(&sc.ws, &["worktree", "add", "-q", "--detach", "../wt"]);
        fs::create_dir_all(sc.ws.join(".git/modules/m/hooks")).unwrap();
    };
    let effect = |sc: &Scene| {
        vec![
            (
                "sub/.git/commondir",
                sc.ws.join("sub/.git/commondir").exists(),
            ),
            (
                "sub/.git/config.worktree",
                sc.ws.join("sub/.git/config.worktree").exists(),
            ),
            (
                ".git/worktrees/wt/commondir",
                read(&sc.ws.join(".git/worktrees/wt/commondir")).contains("evil"),
            ),
            (
                ".git/modules/m/config.worktree",
                sc.ws.join(".git/modules/m/config.worktree").exists(),
            ),
            (
                ".git/modules/m/hooks/post-checkout",
                sc.ws.join(".git/modules/m/hooks/post-checkout").exists(),
            ),
        ]
    };
    let sc = scene(true);
    setup(&sc);
    sc.control(script);
    for (what, worked) in effect(&sc) {
        assert!(worked, "control: `{what}` should work without the sandbox");
    }
    let sc = scene(true);
    setup(&sc);
    let p = sc.policy();
    sc.sandboxed(&p, script, Some(Duration::from_secs(60)));
    for (what, worked) in effect(&sc) {
        assert!(!worked, "sandboxed: `{what}` must be blocked");
    }
    // The work that must keep working next to those rules.
    let code = sc.sandboxed(
        &p,
        "echo c > c.txt && git add c.txt && git -c user.name=t -c user.email=t@example.invalid commit -qm c && git -C sub status --short >/dev/null",
        None,
    );
    assert_eq!(code, 0, "commit next to a nested repository");
}

/// A pty of the user's that the command was not given (another terminal tab),
/// held open by a helper outside the sandbox; returns it and its path.
fn foreign_tty() -> (std::process::Child, String) {
    let mut helper = Command::new("python3")
        .args([
            "-c",
            "import os, sys, time\nm, s = os.openpty()\nprint(os.ttyname(s), flush=True)\ntime.sleep(60)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = helper.stdout.take().unwrap();
    let mut name = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        name.push(b[0]);
    }
    (helper, String::from_utf8(name).unwrap())
}

#[test]
fn t2_other_terminals_are_closed() {
    let (mut helper, tty) = foreign_tty();
    assert!(tty.starts_with("/dev/ttys"), "{tty}");
    // Reading alone is the snooping attack (what is typed there); writing injects
    // output into it.
    let script = format!(
        r#"(exec 3<"{tty}") && echo ok > "$WS/tty-r"; (exec 4>"{tty}" && echo typed >&4) && echo ok > "$WS/tty-w""#
    );
    let sc = scene(false);
    sc.control(&script);
    assert!(
        sc.ws.join("tty-r").exists(),
        "control: another pty opens for reading"
    );
    assert!(
        sc.ws.join("tty-w").exists(),
        "control: another pty opens for writing"
    );
    let sc = scene(false);
    let p = sc.policy();
    sc.sandboxed(&p, &script, Some(Duration::from_secs(20)));
    let _ = helper.kill();
    let _ = helper.wait();
    assert!(
        !sc.ws.join("tty-r").exists(),
        "another terminal of the user opened for reading"
    );
    assert!(
        !sc.ws.join("tty-w").exists(),
        "another terminal of the user opened for writing"
    );
}

#[test]
fn ipc_denials_without_the_named_binaries() {
    // The services `security`, `open`, `osascript` and the clipboard use, looked up
    // by a probe of our own, so that only the Mach denials stand in the way.
    let sc = scene(false);
    let probe = sc.out.join("mach_lookup");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probes/mach_lookup.c");
    let ok = Command::new("cc")
        .arg("-o")
        .arg(&probe)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cc mach_lookup.c");
    let services = [
        "com.apple.SecurityServer",
        "com.apple.secd",
        "com.apple.securityd.xpc",
        "com.apple.coreservices.launchservicesd",
        "com.apple.coreservices.appleevents",
        "com.apple.pasteboard.1",
        "com.apple.tccd",
        "com.apple.xpc.smd",
    ];
    let control = Command::new(&probe).args(services).output().unwrap();
    let control_text = String::from_utf8_lossy(&control.stdout).into_owned();
    eprintln!("control:\n{control_text}");
    let reachable: Vec<&str> = control_text
        .lines()
        .filter(|l| l.ends_with(" 0"))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(
        reachable.contains(&"com.apple.SecurityServer"),
        "control: the keychain service is reachable outside the sandbox"
    );
    let p = sc.policy();
    let script = format!(
        r#"{} {} > "$TMPDIR/out"; code=$?; cat "$TMPDIR/out" > "$WS/ipc.txt"; exit $code"#,
        probe.display(),
        reachable.join(" ")
    );
    let code = sc.sandboxed(&p, &script, Some(Duration::from_secs(30)));
    let text = read(&sc.ws.join("ipc.txt"));
    eprintln!("sandboxed (exit {code}):\n{text}");
    assert_eq!(code, 0, "services reachable from the sandbox:\n{text}");
    assert_eq!(text.lines().count(), reachable.len(), "{text}");
}

#[test]
fn other_sandboxes_are_not_killed() {
    // A process of the same user in a sandbox that, like Homebrew's, allows the
    // whole per-user temp dir and denies the root. It starts during a run and
    // must survive it: only this run's processes carry the run's probe.
    let sc = scene(false);
    let p = sc.policy();
    let n = 45_000 + (std::process::id() % 4_000);
    let tmp = fs::canonicalize(std::env::temp_dir()).unwrap();
    let other = format!(
        "(version 1)(allow default)(deny file-write* (subpath \"/\"))(allow file-write* (subpath \"{}\"))",
        tmp.display()
    );
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        Command::new("/usr/bin/sandbox-exec")
            .args(["-p", &other, "/bin/sleep", &n.to_string()])
            .spawn()
            .unwrap()
    });
    let code = sc.sandboxed(&p, "sleep 1.5", Some(Duration::from_secs(30)));
    assert_eq!(code, 0);
    let mut other = starter.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let alive = other.try_wait().unwrap().is_none();
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        alive,
        "a process of another sandbox was killed by the run's sweep"
    );
}

#[test]
fn stop_is_polite_first() {
    // The timeout sends SIGTERM first: a trap can clean up (git's index.lock).
    let sc = scene(false);
    let p = sc.policy();
    let code = sc.sandboxed(
        &p,
        r#"trap 'rm -f "$WS/index.lock"; echo cleaned > "$WS/cleaned"; exit 143' TERM
touch "$WS/index.lock"
while :; do sleep 0.1; done"#,
        Some(Duration::from_secs(1)),
    );
    assert_eq!(code, 124);
    assert!(sc.ws.join("cleaned").exists(), "no SIGTERM before SIGKILL");
    assert!(!sc.ws.join("index.lock").exists());
}

#[test]
fn stop_grace_waits_for_children_after_the_root_died() {
    // `sh -c '... git ...'`: the shell (the root) dies at once on SIGTERM, its
    // child traps SIGTERM and needs a moment to clean up (git's index.lock). The
    // grace period lasts until the child is gone, not only the root.
    let sc = scene(false);
    let p = sc.policy();
    let start = Instant::now();
    let code = sc.sandboxed(
        &p,
        r#"/bin/sh -c 'trap "sleep 0.5; rm -f "$WS/index.lock"; echo cleaned > "$WS/cleaned"; exit 143" TERM
touch "$WS/index.lock"
while :; do sleep 0.1; done' &
wait"#,
        Some(Duration::from_secs(1)),
    );
    assert_eq!(code, 124);
    assert!(
        sc.ws.join("cleaned").exists(),
        "the child was killed while it cleaned up"
    );
    assert!(!sc.ws.join("index.lock").exists());
    // And not longer than needed: about 1 s timeout + 0.5 s cleanup, well below
    // the timeout plus the whole grace period plus slack.
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn pty_forwards_stdin_eof() {
    // `cat` under --pty ends when workfence's (non-terminal) stdin ends.
    let sc = scene(false);
    let p = sc.policy();
    let layout = compute(&p, &sc.h, &RealFs).unwrap();
    let mut ctx = MacContext::detect(&p).unwrap();
    ctx.home = sc.h.clone();
    let prof = profile(&p, &layout, &ctx).unwrap();
    let req = RunRequest {
        argv: vec!["/bin/cat".into()],
        env: sc.env(),
        cwd: sc.ws.clone(),
        proxy_socket: None,
        timeout: Some(Duration::from_secs(20)),
        pty: true,
        keep_fds: vec![],
    };
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        eprintln!("SKIP: stdin is a terminal; run with </dev/null to test EOF forwarding");
        return;
    }
    let start = Instant::now();
    let code = run(&prof, &req).unwrap();
    assert_ne!(code, 124, "cat never saw EOF");
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[test]
fn rs_process_table_is_closed() {
    // kern.proc.* lists every host process and its owner; ps needs it.
    attack(
        false,
        // `ps -p 1` reads kern.proc.pid.1, which the old profile allowed.
        r#"ps -axo pid=,comm= > "$WS/ps.txt" 2>/dev/null; ps -o pid=,comm= -p 1 >> "$WS/ps.txt" 2>/dev/null"#,
        |sc| {
            vec![(
                "ps lists launchd",
                read(&sc.ws.join("ps.txt")).contains("launchd"),
            )]
        },
    );
}
