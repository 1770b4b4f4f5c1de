//! Reads generated profiles back with TinyScheme, the Scheme that Seatbelt's SBPL
//! is built on: the text must parse into forms, every `(param ...)` must be passed
//! with -D, and escaped strings (quotes, backslashes, UTF-8) must read back as the
//! intended regex. Skipped, with a note, where `tinyscheme` is not installed
//! (Debian/Ubuntu: `apt-get install tinyscheme`).

use std::path::{Path, PathBuf};
use std::process::Command;

use workfence_macos::{profile, MacContext, SeatbeltProfile};
use workfence_policy::layout::{
    FileKind, FsLayout, HiddenPath, ProtectedPath, Protection, RootKind, WritableRoot,
};
use workfence_policy::{Network, Policy, ProxyPolicy, Source};

fn tinyscheme() -> Option<PathBuf> {
    [
        "/usr/bin/tinyscheme",
        "/usr/local/bin/tinyscheme",
        "/opt/homebrew/bin/tinyscheme",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn layout(ws: &str) -> FsLayout {
    let prot = |name: &str, exists: Option<FileKind>, protection| ProtectedPath {
        path: format!("{ws}/{name}").into(),
        exists,
        missing_as_dir: true,
        protection,
        reason: "test".into(),
    };
    FsLayout {
        writable: vec![WritableRoot {
            path: ws.into(),
            kind: RootKind::Workspace,
            source: Source::Default,
        }],
        protected: vec![
            prot(".codex", None, Protection::ReadOnly),
            prot(".git", Some(FileKind::Dir), Protection::Pinned),
            prot(".git/hooks", Some(FileKind::Dir), Protection::ReadOnly),
        ],
        hidden: vec![
            HiddenPath {
                path: "/Users/dev/.ssh".into(),
                kind: FileKind::Dir,
                source: Source::Default,
            },
            HiddenPath {
                path: format!("{ws}/.env").into(),
                kind: FileKind::File,
                source: Source::Cli,
            },
        ],
        cwd: ws.into(),
        notes: vec![],
    }
}

/// Runs the checker on `sb`; returns its output lines.
fn read_back(ts: &Path, sb: &SeatbeltProfile, name: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("workfence-ts-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prof = dir.join("profile.sbpl");
    std::fs::write(&prof, sb.text()).unwrap();
    let params: Vec<String> = sb
        .params()
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect();
    let checker = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tinyscheme/check.scm");
    let main = dir.join("main.scm");
    std::fs::write(
        &main,
        format!(
            "(define workfence-params (list {}))\n(define workfence-profile-file \"{}\")\n(load \"{}\")\n",
            params.join(" "),
            prof.display(),
            checker.display()
        ),
    )
    .unwrap();
    let out = Command::new(ts).arg(&main).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8(out.stdout).expect("UTF-8 survives the reader");
    let lines: Vec<String> = text.lines().map(String::from).collect();
    assert!(
        lines.iter().any(|l| l == "FAILURES 0"),
        "TinyScheme rejected the {name} profile:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forms: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("FORMS "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(forms > 20, "{name}: only {forms} forms");
    lines
}

/// No silent skips: say why, and fail when WORKFENCE_MUST_WORK=1 (CI).
fn skip(reason: &str) {
    if std::env::var("WORKFENCE_MUST_WORK").is_ok_and(|v| v == "1") {
        panic!("WORKFENCE_MUST_WORK=1 but {reason}");
    }
    eprintln!("SKIP: {reason}");
}

#[test]
fn generated_profiles_read_back() {
    let Some(ts) = tinyscheme() else {
        skip("tinyscheme not installed (apt-get install tinyscheme): SBPL reader check skipped");
        return;
    };
    for (name, network) in [
        ("off", Network::Off),
        ("proxy", Network::Proxy(ProxyPolicy::default())),
        ("on", Network::On),
    ] {
        let ws = "/Users/dev/src/proj";
        let mut p = Policy::new(ws);
        p.network = network;
        let sb = profile(&p, &layout(ws), &MacContext::example(&p)).unwrap();
        let lines = read_back(&ts, &sb, name);
        assert!(lines.contains(&"LITERAL /dev/null".to_string()));
        assert!(lines.contains(&"REGEX ^/dev/ttys[0-9]+$".to_string()));
    }
}

#[test]
fn awkward_paths_read_back_as_intended() {
    let Some(ts) = tinyscheme() else {
        skip("tinyscheme not installed (apt-get install tinyscheme): SBPL reader check skipped");
        return;
    };
    let ws = r#"/Users/dév/My "Quoted" Proj\ (v2)/日本"#;
    let p = Policy::new(ws);
    let sb = profile(&p, &layout(ws), &MacContext::example(&p)).unwrap();
    let lines = read_back(&ts, &sb, "awkward");
    // The regex as Seatbelt's regex compiler receives it: one backslash before each
    // metacharacter, quotes plain, UTF-8 intact.
    let want = "REGEX ^/[Uu][Ss][Ee][Rr][Ss]/[Dd](E\u{301}|e\u{301}|É|é)[Vv]/[Mm][Yy] \"[Qq][Uu][Oo][Tt][Ee][Dd]\" [Pp][Rr][Oo][Jj]\\\\ \\([Vv]2\\)/日本/\\.[Cc][Oo][Dd][Ee][Xx](/.*)?$";
    assert!(
        lines.iter().any(|l| l == want),
        "missing {want}\n{}",
        lines.join("\n")
    );
}
