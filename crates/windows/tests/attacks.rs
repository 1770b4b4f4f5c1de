//! Real attacks on Windows, mirroring the Linux suite (threat catalogue ids in the
//! names). Each attack also runs unsandboxed as a control, which must succeed, so a
//! passing test means the sandbox blocked something that works otherwise.
//!
//! Without `workfence setup` the runs use --allow-degraded (current user, restricted
//! token); the network and secret-reading tests then check that the degradation is
//! reported instead. CI runs `cargo run -p workfence-windows --example setup` first.
#![cfg(windows)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use workfence_policy::layout;
use workfence_policy::run::RunRequest;
use workfence_policy::{Mode, Network, Policy, Source, SourcedPath};
use workfence_windows::{plan, run, WindowsContext, WindowsPlan};

use workfence_policy::layout::StdProbe as RealFs;

fn home() -> PathBuf {
    PathBuf::from(std::env::var("USERPROFILE").expect("USERPROFILE"))
}

fn unique(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("wf-{tag}-{}-{n}", std::process::id())
}

struct Sandbox {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    plan: WindowsPlan,
    setup: bool,
}

fn sandbox(mode: Mode, network: Network, repo: bool, deny_read: Vec<PathBuf>) -> Sandbox {
    let dir = tempfile::Builder::new()
        .prefix("wf test ")
        .tempdir()
        .unwrap();
    // Canonical, without the `\\?\` prefix that cmd.exe cannot use as a directory.
    let canonical = std::fs::canonicalize(dir.path()).unwrap();
    let ws = PathBuf::from(
        workfence_windows::path::WinPath::parse(&canonical.to_string_lossy())
            .unwrap()
            .display_string(),
    );
    if repo {
        std::fs::create_dir_all(ws.join(".git").join("hooks")).unwrap();
        std::fs::create_dir_all(ws.join(".git").join("objects")).unwrap();
        std::fs::write(ws.join(".git").join("config"), "[core]\n").unwrap();
        std::fs::write(ws.join(".git").join("HEAD"), "ref: refs/heads/main\n").unwrap();
    }
    let mut p = Policy::new(&ws);
    p.mode = mode;
    p.network = network;
    p.allow_degraded = true;
    p.deny_read = deny_read
        .into_iter()
        .map(|path| SourcedPath {
            path,
            source: Source::Cli,
        })
        .collect();
    let l = layout::compute(&p, &home(), &RealFs).unwrap();
    let ctx = WindowsContext::detect(&p).unwrap();
    let setup = ctx.users.is_some();
    let plan = plan(&p, &l, &ctx).unwrap();
    Sandbox {
        _dir: dir,
        ws,
        plan,
        setup,
    }
}

fn default_sandbox() -> Sandbox {
    sandbox(Mode::WorkspaceWrite, Network::Off, true, vec![])
}

impl Sandbox {
    fn run(&self, argv: &[&str]) -> i32 {
        self.run_timeout(argv, None)
    }

    fn run_timeout(&self, argv: &[&str], timeout: Option<Duration>) -> i32 {
        let (env, _) = workfence_policy::env::scrub(&Default::default(), std::env::vars());
        let req = RunRequest {
            argv: argv.iter().map(OsString::from).collect(),
            env,
            cwd: self.ws.clone(),
            timeout,
            pty: false,
            keep_fds: vec![],
            proxy_socket: None,
        };
        run(&self.plan, &req, &mut |n| eprintln!("workfence: {n}"))
            .unwrap()
            .code
    }
}

fn control(argv: &[&str], cwd: &Path) -> i32 {
    Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

fn cmd(script: &str) -> Vec<&str> {
    vec!["cmd.exe", "/d", "/c", script]
}

fn ps(script: &str) -> Vec<String> {
    vec![
        "powershell.exe".into(),
        "-NoProfile".into(),
        "-NonInteractive".into(),
        "-Command".into(),
        script.into(),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn fw1_writes_outside_the_workspace_fail() {
    let sb = default_sandbox();
    let target = home().join(format!("{}.txt", unique("fw1")));
    let script = format!("echo x> \"{}\"", target.display());
    assert_ne!(sb.run(&cmd(&script)), 0);
    assert!(
        !target.exists(),
        "sandboxed write reached {}",
        target.display()
    );
    assert_eq!(control(&cmd(&script), &sb.ws), 0);
    assert!(target.exists());
    std::fs::remove_file(target).unwrap();
}

#[test]
fn writes_inside_the_workspace_and_temp_work() {
    let sb = default_sandbox();
    assert_eq!(
        sb.run(&cmd("echo ok> inside.txt && echo ok> \"%TEMP%\\t.txt\"")),
        0
    );
    assert!(sb.ws.join("inside.txt").exists());
}

#[test]
fn fw4_git_hooks_and_config_are_read_only() {
    let sb = default_sandbox();
    let hook = sb.ws.join(".git").join("hooks").join("pre-commit");
    assert_ne!(sb.run(&cmd("echo evil> .git\\hooks\\pre-commit")), 0);
    assert!(!hook.exists());
    assert_ne!(sb.run(&cmd("echo [core]fsmonitor=evil>> .git\\config")), 0);
    assert_eq!(
        std::fs::read_to_string(sb.ws.join(".git").join("config")).unwrap(),
        "[core]\n"
    );
    // git still works inside .git.
    assert_eq!(
        sb.run(&cmd("echo x> .git\\index.lock && del .git\\index.lock")),
        0
    );
    assert_eq!(
        control(&cmd("echo evil> .git\\hooks\\pre-commit"), &sb.ws),
        0
    );
    assert!(hook.exists());
}

#[test]
fn fw5_git_dir_cannot_be_renamed_or_deleted() {
    let sb = default_sandbox();
    assert_ne!(sb.run(&cmd("move .git .g")), 0);
    assert!(sb.ws.join(".git").join("config").exists());
    assert_ne!(sb.run(&cmd("rmdir /s /q .git")), 0);
    assert!(sb.ws.join(".git").join("config").exists());
    assert_ne!(sb.run(&cmd("move .git\\hooks .git\\h")), 0);
    assert!(sb.ws.join(".git").join("hooks").exists());
    assert_eq!(control(&cmd("move .git .g && move .g .git"), &sb.ws), 0);
}

#[test]
fn fw6_missing_protected_paths_cannot_be_created() {
    let sb = sandbox(Mode::WorkspaceWrite, Network::Off, false, vec![]);
    assert_ne!(sb.run(&cmd("mkdir .codex\\x")), 0);
    assert_ne!(sb.run(&cmd("echo {} > .mcp.json")), 0);
    assert_ne!(sb.run(&cmd("mkdir .git\\hooks")), 0);
    // Placeholders are gone after the run.
    assert!(!sb.ws.join(".codex").exists());
    assert!(!sb.ws.join(".mcp.json").exists());
    assert_eq!(control(&cmd("mkdir .codex\\x"), &sb.ws), 0);
}

#[test]
fn fw13_junction_to_the_profile_does_not_grant_writes() {
    let sb = default_sandbox();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("x.txt");
    let script = format!(
        "mklink /J j \"{}\" && echo x> j\\x.txt",
        outside.path().display()
    );
    assert_ne!(sb.run(&cmd(&script)), 0);
    assert!(!target.exists());
    let _ = std::fs::remove_dir(sb.ws.join("j"));
    assert_eq!(control(&cmd(&script), &sb.ws), 0);
    assert!(target.exists());
}

#[test]
fn fw14_alternate_names_of_git_are_protected() {
    let sb = default_sandbox();
    for script in [
        "echo evil> .git::$INDEX_ALLOCATION\\hooks\\post-checkout",
        "echo evil> .GIT\\HOOKS\\post-checkout",
        "echo evil> .git.\\hooks\\post-checkout",
        "echo evil> .git\\config:evil",
        "echo evil> \\\\?\\%CD%\\.git\\hooks\\post-checkout",
    ] {
        assert_ne!(sb.run(&cmd(script)), 0, "{script}");
    }
    assert!(!sb
        .ws
        .join(".git")
        .join("hooks")
        .join("post-checkout")
        .exists());
    assert_eq!(
        control(
            &cmd("echo evil> .git::$INDEX_ALLOCATION\\hooks\\post-checkout"),
            &sb.ws
        ),
        0
    );
}

#[test]
fn p7_world_writable_directories_stay_closed() {
    let sb = default_sandbox();
    let name = unique("p7");
    let probe = PathBuf::from(std::env::var("ProgramData").unwrap()).join(&name);
    let script = format!("mkdir \"{}\"", probe.display());
    assert_ne!(sb.run(&cmd(&script)), 0);
    assert!(!probe.exists());
    let public = PathBuf::from(std::env::var("PUBLIC").unwrap()).join(format!("{name}.txt"));
    assert_ne!(
        sb.run(&cmd(&format!("echo x> \"{}\"", public.display()))),
        0
    );
    assert!(!public.exists());
    assert_eq!(control(&cmd(&script), &sb.ws), 0);
    std::fs::remove_dir(probe).unwrap();
}

#[test]
fn a1_registry_run_key_is_not_writable() {
    let sb = default_sandbox();
    let name = unique("a1");
    let script = format!(
        "reg add HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run /v {name} /d calc.exe /f"
    );
    assert_ne!(sb.run(&cmd(&script)), 0);
    assert_eq!(control(&cmd(&script), &sb.ws), 0);
    let del =
        format!("reg delete HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run /v {name} /f");
    assert_eq!(control(&cmd(&del), &sb.ws), 0);
}

#[test]
fn rs1_secrets_are_hidden_with_setup() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("id_rsa"), "SECRET").unwrap();
    let secret_dir = std::fs::canonicalize(secrets.path()).unwrap();
    let sb = sandbox(
        Mode::WorkspaceWrite,
        Network::Off,
        true,
        vec![secret_dir.clone()],
    );
    let script = format!("type \"{}\"", secret_dir.join("id_rsa").display());
    if sb.setup {
        assert_ne!(sb.run(&cmd(&script)), 0);
    } else {
        assert!(sb
            .plan
            .degraded()
            .iter()
            .any(|l| l.layer.contains("secrets")));
    }
    assert_eq!(control(&cmd(&script), &sb.ws), 0);
}

#[test]
fn n1_network_outside_is_blocked_with_setup() {
    let sb = default_sandbox();
    let script = ps("$c = New-Object Net.Sockets.TcpClient; $c.Connect('1.1.1.1', 443); exit 0");
    if sb.setup {
        assert_ne!(sb.run(&refs(&script)), 0);
        let dns =
            ps("Resolve-DnsName -DnsOnly -Server 8.8.8.8 example.com -ErrorAction Stop; exit 0");
        assert_ne!(sb.run(&refs(&dns)), 0);
    } else {
        assert!(sb.plan.degraded().iter().any(|l| l.layer == "network"));
    }
    assert_eq!(control(&refs(&script), &sb.ws), 0);
}

#[test]
fn n7_host_loopback_services_are_blocked_with_setup() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sb = default_sandbox();
    let script = ps(&format!(
        "$c = New-Object Net.Sockets.TcpClient; $c.Connect('127.0.0.1', {port}); exit 0"
    ));
    if sb.setup {
        assert_ne!(sb.run(&refs(&script)), 0);
    }
    assert_eq!(control(&refs(&script), &sb.ws), 0);
}

#[test]
fn network_on_reaches_the_outside() {
    let sb = sandbox(Mode::WorkspaceWrite, Network::On, true, vec![]);
    let script = ps("$c = New-Object Net.Sockets.TcpClient; $c.Connect('1.1.1.1', 443); exit 0");
    assert_eq!(sb.run(&refs(&script)), 0);
}

const BREAKAWAY: &str = r#"
Add-Type -TypeDefinition @'
using System; using System.Runtime.InteropServices;
public static class B {
  [StructLayout(LayoutKind.Sequential, CharSet=CharSet.Unicode)] public struct SI { public int cb; public string r, d, t; public int x,y,xs,ys,xc,yc,fa,f; public short sw, r2; public IntPtr r3, i, o, e; }
  [StructLayout(LayoutKind.Sequential)] public struct PI { public IntPtr p, t; public int pid, tid; }
  [DllImport("kernel32.dll", SetLastError=true, CharSet=CharSet.Unicode)] public static extern bool CreateProcessW(string a, string c, IntPtr pa, IntPtr ta, bool ih, int f, IntPtr e, string d, ref SI si, out PI pi);
  public static int Go(string cmd) { SI si = new SI(); si.cb = Marshal.SizeOf(si); PI pi; return CreateProcessW(null, cmd, IntPtr.Zero, IntPtr.Zero, false, 0x01000000, IntPtr.Zero, null, ref si, out pi) ? 0 : Marshal.GetLastWin32Error(); }
}
'@
exit [B]::Go('ping -n 30 127.0.0.1')
"#;

#[test]
fn l4_job_breakaway_fails() {
    let sb = default_sandbox();
    // CREATE_BREAKAWAY_FROM_JOB must be refused (ERROR_ACCESS_DENIED = 5).
    assert_eq!(sb.run(&refs(&ps(BREAKAWAY))), 5);
}

fn alive_with(marker: &str) -> bool {
    let out = Command::new("powershell.exe")
        .args([
            "-NoProfile",
            "-Command",
            &format!("@(Get-CimInstance Win32_Process | Where-Object {{ $_.CommandLine -like '*{marker}*' -and $_.Name -ne 'powershell.exe' }}).Count"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() != "0"
}

#[test]
fn l1_leftover_processes_die_with_the_command() {
    let sb = default_sandbox();
    // A unique ping count marks the background process.
    let n = 200 + (std::process::id() % 700);
    let marker = format!("ping -n {n} 127.0.0.1");
    assert_eq!(sb.run(&cmd(&format!("start \"\" /b {marker} > nul"))), 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !alive_with(&format!("-n {n} 127")),
        "a background process survived"
    );
}

#[test]
fn l5_timeout_kills_the_tree() {
    let sb = default_sandbox();
    let start = Instant::now();
    let code = sb.run_timeout(
        &cmd("ping -n 60 127.0.0.1 > nul"),
        Some(Duration::from_secs(2)),
    );
    assert_eq!(code, 124);
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn p5_scheduled_tasks_cannot_be_created() {
    let sb = default_sandbox();
    let name = unique("p5");
    let script = format!("schtasks /create /tn {name} /tr \"cmd /c echo x\" /sc once /st 23:59 /f");
    assert_ne!(sb.run(&cmd(&script)), 0);
    assert_ne!(
        control(&cmd(&format!("schtasks /query /tn {name}")), &sb.ws),
        0
    );
    assert_eq!(control(&cmd(&script), &sb.ws), 0);
    assert_eq!(
        control(&cmd(&format!("schtasks /delete /tn {name} /f")), &sb.ws),
        0
    );
}

#[test]
fn exit_codes_follow_the_contract() {
    let sb = default_sandbox();
    assert_eq!(sb.run(&cmd("exit 7")), 7);
    assert_eq!(sb.run(&["no-such-program-wf"]), 127);
}

#[test]
fn read_only_mode_blocks_workspace_writes() {
    let sb = sandbox(Mode::ReadOnly, Network::Off, true, vec![]);
    assert_ne!(sb.run(&cmd("echo x> ro.txt")), 0);
    assert!(!sb.ws.join("ro.txt").exists());
    assert_eq!(sb.run(&cmd("echo x> \"%TEMP%\\ok.txt\"")), 0);
}

#[test]
fn batch_arguments_are_not_injected() {
    let sb = default_sandbox();
    std::fs::write(sb.ws.join("echo.bat"), "@echo %1> out.txt\r\n").unwrap();
    let pwned = sb.ws.join("pwned.txt");
    let bat = sb.ws.join("echo.bat");
    let code = sb.run(&[bat.to_str().unwrap(), "\"&echo x> pwned.txt&\""]);
    assert_eq!(code, 0);
    assert!(!pwned.exists(), "an argument ran a second command");
}

#[test]
fn nul_redirects_work() {
    // Compatibility, not an attack: `> NUL` must work in the sandbox (setup grants the
    // sandbox users the null device; the grant resets at boot until setup runs again).
    let sb = default_sandbox();
    let script = cmd("echo workfence> NUL");
    assert_eq!(control(&script, &sb.ws), 0);
    if !sb.setup {
        // Nothing in the no-setup restricting set is granted on the device unless the
        // machine's restricting set is wider: a measured fact (docs/windows.md, Q3).
        eprintln!(
            "without setup, `> NUL` in the sandbox exited {}",
            sb.run(&script)
        );
        return;
    }
    if workfence_windows::null_device_granted() == Some(false) {
        eprintln!("the null device grant is gone (reboot since setup): skipped");
        return;
    }
    assert_eq!(sb.run(&script), 0);
}

#[test]
fn proxy_port_listener_is_blocked_with_setup() {
    // The offline user may not listen on any port, the proxy port included.
    let sb = default_sandbox();
    let script = ps(&format!(
        "$l = New-Object Net.Sockets.TcpListener([Net.IPAddress]::Loopback, {}); $l.Start(); $l.Stop(); exit 0",
        workfence_windows::DEFAULT_PROXY_PORT
    ));
    if sb.setup {
        assert_ne!(sb.run(&refs(&script)), 0);
    }
    assert_eq!(control(&refs(&script), &sb.ws), 0);
}
