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
use workfence_policy::{Network, Policy, ProxyPolicy, Source, SourcedPath};

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
    let want = "REGEX ^(/(S|s|ſ)[Yy](S|s|ſ)[Tt][Ee][Mm]/[Vv][Oo][Ll][Uu][Mm][Ee](S|s|ſ)/[Dd][Aa][Tt][Aa])?/[Uu](S|s|ſ)[Ee][Rr](S|s|ſ)/[Dd](E\u{301}|e\u{301}|É|é)[Vv]/[Mm][Yy] \"[Qq][Uu][Oo][Tt][Ee][Dd]\" [Pp][Rr][Oo][Jj]\\\\ \\([Vv]2\\)/日本/\\.[Cc][Oo][Dd][Ee][Xx](/.*)?$";
    assert!(
        lines.iter().any(|l| l == want),
        "missing {want}\n{}",
        lines.join("\n")
    );
}

/// Hostile text in every field that reaches the profile: newlines, quotes,
/// parentheses and `;` in the paths (where a path may hold them) and in every
/// free-text field (reasons, where a setting came from, the roots' sources). The
/// profile must read back as exactly the same sequence of rules as a benign one,
/// and the strings must read back verbatim.
#[test]
fn hostile_names_in_every_field_read_back_as_the_same_rules() {
    let Some(ts) = tinyscheme() else {
        skip("tinyscheme not installed (apt-get install tinyscheme): SBPL reader check skipped");
        return;
    };
    // What a workspace name with a newline produced before: a balanced rule.
    let inject = "x\n(allow file-write* (subpath \"/\"))\n(allow default)\r;\u{2028}(deny default";
    // Paths may not hold control characters (profile refuses them), but may hold
    // everything else.
    let hostile_path = r#"/Users/dev/a"b(c)d;e\f)"#;
    let build = |text: &str, path: &str| {
        let ws = format!("{path}/ws");
        let mut p = Policy::new(&ws);
        p.deny_read.push(SourcedPath {
            path: format!("{path}/secret*").into(),
            source: Source::WorkspaceConfig(format!("{path}/{text}/.workfence/config.toml").into()),
        });
        p.deny_read.push(SourcedPath {
            path: format!("{path}/tok").into(),
            source: Source::Profile(text.into()),
        });
        let mut l = layout(&ws);
        for pp in &mut l.protected {
            pp.reason = text.into();
        }
        l.writable[0].source = Source::Auto(text.into());
        l.writable.push(WritableRoot {
            path: format!("{path}/extra").into(),
            kind: RootKind::Extra,
            source: Source::UserConfig(format!("/{text}").into()),
        });
        l.hidden.push(HiddenPath {
            path: format!("{path}/hidden").into(),
            kind: FileKind::Dir,
            source: Source::Auto(text.into()),
        });
        let mut ctx = MacContext::example(&p);
        ctx.home = path.into();
        ctx.tmp_dir = format!("{path}/tmp").into();
        ctx.ttys = vec![format!("{path}/tty").into()];
        profile(&p, &l, &ctx).unwrap()
    };
    let benign = build("plain", "/Users/dev/plain");
    let hostile = build(inject, hostile_path);
    let heads = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("HEAD "))
            .cloned()
            .collect()
    };
    let want = heads(&read_back(&ts, &benign, "benign"));
    let got_lines = read_back(&ts, &hostile, "hostile");
    assert_eq!(
        heads(&got_lines),
        want,
        "the hostile profile has other rules"
    );
    // Every line of the text is a comment, blank, or SBPL that the benign profile
    // also has modulo the path: nothing of the injected text is outside a comment.
    for line in hostile.text().lines() {
        let code = line.trim_start();
        if code.starts_with(';') {
            continue;
        }
        assert!(
            !code.contains("(allow default)") && !code.contains("(subpath \"/\")"),
            "injected rule outside a comment: {line}"
        );
    }
    // The hostile path reads back as itself (quotes, parens, ';', backslash).
    let lit_tty = "LITERAL /dev/tty".to_string();
    assert!(got_lines.contains(&lit_tty));
    assert!(hostile
        .params()
        .iter()
        .any(|(_, v)| v == &format!("{hostile_path}/hidden")));
    assert!(
        got_lines.iter().any(|l| l.starts_with("REGEX ")
            && l.contains(r#"[Aa]"[Bb]\([Cc]\)[Dd];[Ee]\\[Ff]\)/[Hh][Ii][Dd][Dd][Ee][Nn](/.*)?$"#)),
        "the hidden path's regex did not read back:\n{}",
        got_lines.join("\n")
    );
    // And the printed form (explain): each comment stays one line.
    for line in hostile.to_string().lines() {
        assert!(
            line.trim_start().starts_with(';') || !line.contains("allow default"),
            "{line}"
        );
    }
}

/// A newline in the workspace is refused in every mode (read-only has no
/// writable root that would check it).
#[test]
fn control_characters_in_the_workspace_are_refused_in_every_mode() {
    for mode in [
        workfence_policy::Mode::ReadOnly,
        workfence_policy::Mode::WorkspaceWrite,
    ] {
        let mut p = Policy::new("/Users/dev/a\nb");
        p.mode = mode;
        let l = FsLayout {
            writable: vec![],
            protected: vec![],
            hidden: vec![],
            cwd: "/".into(),
            notes: vec![],
        };
        assert!(matches!(
            profile(&p, &l, &MacContext::example(&p)),
            Err(workfence_macos::MacError::BadPath { .. })
        ));
    }
}

/// The profile's deny regexes as TinyScheme reads them back (so the SBPL escaping
/// is part of what is tested), matched with the `regex` crate standing in for
/// Seatbelt's matcher against paths an attack would write and paths ordinary work
/// writes.
#[test]
fn deny_regexes_read_back_match_the_attack_paths() {
    let Some(ts) = tinyscheme() else {
        skip("tinyscheme not installed (apt-get install tinyscheme): SBPL reader check skipped");
        return;
    };
    let ws = "/Users/dev/src/proj";
    let p = Policy::new(ws);
    let sb = profile(&p, &layout(ws), &MacContext::example(&p)).unwrap();
    let lines = read_back(&ts, &sb, "deny-regexes");
    let regexes: Vec<regex::Regex> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("REGEX "))
        .map(|r| regex::Regex::new(r).unwrap_or_else(|e| panic!("{r}: {e}")))
        .collect();
    // The nested-repository rules are the unanchored ones.
    let nested: Vec<&regex::Regex> = regexes
        .iter()
        .filter(|r| r.as_str().starts_with("/\\.[Gg][Ii][Tt]"))
        .collect();
    assert_eq!(nested.len(), 3, "{nested:?}");
    let denied = |rel: &str| {
        let path = format!("{ws}/{rel}");
        nested.iter().any(|r| r.is_match(&path))
    };
    for rel in [
        "vendor/lib/.git/commondir",
        "vendor/lib/.git/config.worktree",
        "vendor/lib/.GIT/CONFIG",
        "vendor/lib/.git/hooks/pre-commit",
        ".git/modules/m/commondir",
        ".git/worktrees/wt/config.worktree",
        ".git/modules/a/modules/b/hooks/x",
        // Kelvin sign and long s: case folding maps them onto k and s.
        "vendor/lib/.git/hoo\u{212a}\u{17f}/x",
    ] {
        assert!(denied(rel), "{rel} is writable");
    }
    for rel in [".git/index", ".git/refs/heads/config", "src/config"] {
        assert!(!denied(rel), "{rel} is refused");
    }
    // The hidden ~/.ssh in the spelling case folding makes of it.
    let ssh = "/Users/dev/.\u{17f}\u{17f}h/id_rsa";
    assert!(
        regexes
            .iter()
            .any(|r| r.as_str().starts_with('^') && r.is_match(ssh)),
        "{ssh} is readable"
    );
}
