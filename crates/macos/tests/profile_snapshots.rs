//! Snapshots of the generated Seatbelt profile for typical policies. They run on
//! every host: the profile is a pure function of policy, layout and context.

use std::path::PathBuf;

use workfence_macos::{profile, MacContext, MacError, SeatbeltProfile};
use workfence_policy::layout::{
    FileKind, FsLayout, HiddenPath, ProtectedPath, Protection, RootKind, WritableRoot,
};
use workfence_policy::{Mode, Network, Policy, ProxyPolicy, Source, SourcedPath};

const WS: &str = "/Users/dev/src/proj";

fn root(path: &str, kind: RootKind, source: Source) -> WritableRoot {
    WritableRoot {
        path: path.into(),
        kind,
        source,
    }
}

fn prot(
    path: &str,
    exists: Option<FileKind>,
    protection: Protection,
    reason: &str,
) -> ProtectedPath {
    ProtectedPath {
        path: path.into(),
        exists,
        missing_as_dir: !path.ends_with(".json"),
        protection,
        reason: reason.into(),
    }
}

fn hidden(path: &str, kind: FileKind) -> HiddenPath {
    HiddenPath {
        path: path.into(),
        kind,
        source: Source::Default,
    }
}

/// What `layout::compute` yields for a git workspace with the default protected names.
fn workspace_layout(ws: &str) -> FsLayout {
    let p = |n: &str| format!("{ws}/{n}");
    FsLayout {
        writable: vec![root(ws, RootKind::Workspace, Source::Default)],
        protected: vec![
            prot(
                &p(".agents"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &p(".claude"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &p(".codex"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &p(".git"),
                Some(FileKind::Dir),
                Protection::Pinned,
                "the repository itself must not be renamed, replaced or deleted",
            ),
            prot(
                &p(".git/config"),
                Some(FileKind::File),
                Protection::ReadOnly,
                "git config can run commands (core.fsmonitor, filters, hooksPath)",
            ),
            prot(
                &p(".git/hooks"),
                Some(FileKind::Dir),
                Protection::ReadOnly,
                "git hooks run on the host",
            ),
            prot(
                &p(".idea"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &p(".mcp.json"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &p(".vscode"),
                Some(FileKind::Dir),
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &p(".workfence"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
        ],
        hidden: vec![
            hidden("/Users/dev/.aws", FileKind::Dir),
            hidden("/Users/dev/.netrc", FileKind::File),
            hidden("/Users/dev/.ssh", FileKind::Dir),
        ],
        cwd: ws.into(),
        notes: vec![],
    }
}

fn build(policy: &Policy, layout: &FsLayout) -> SeatbeltProfile {
    profile(policy, layout, &MacContext::example(policy)).expect("profile")
}

/// The generated part only: the base profile is snapshotted once, separately.
/// `text` with the literals of every `string-append` joined (the generator cuts
/// long strings into pieces the reader accepts), so that a regex can be searched
/// for whole.
fn joined(text: &str) -> String {
    text.replace("\" \"", "")
}

fn generated(sb: &SeatbeltProfile) -> String {
    let s = sb.to_string();
    let cut = s.find(";;; ====").expect("generated marker");
    let header_end = s.find("(version 1)").expect("version");
    format!("{}[base.sbpl]\n\n{}", &s[..header_end], &s[cut..])
}

#[test]
fn base_profile() {
    insta::assert_snapshot!(workfence_macos::BASE_PROFILE);
}

#[test]
fn read_only() {
    let mut p = Policy::new(WS);
    p.mode = Mode::ReadOnly;
    let layout = FsLayout {
        writable: vec![],
        protected: vec![],
        hidden: workspace_layout(WS).hidden,
        cwd: WS.into(),
        notes: vec![],
    };
    let sb = build(&p, &layout);
    assert!(!sb.text().contains("WRITABLE_ROOT"));
    insta::assert_snapshot!(generated(&sb));
}

#[test]
fn workspace_write() {
    let p = Policy::new(WS);
    let sb = build(&p, &workspace_layout(WS));
    insta::assert_snapshot!(generated(&sb));
}

#[test]
fn full_text_is_base_plus_generated() {
    let p = Policy::new(WS);
    let sb = build(&p, &workspace_layout(WS));
    assert!(sb.text().starts_with(workfence_macos::BASE_PROFILE));
    assert!(sb.to_string().ends_with(sb.text()));
    let args = sb.sandbox_exec_args();
    assert_eq!(args[0], "-p");
    assert_eq!(args[1], sb.text());
    assert!(args.contains(&format!("WRITABLE_ROOT_0={WS}")));
}

#[test]
fn extra_roots_and_linked_worktree() {
    let mut p = Policy::new("/Users/dev/src/wt");
    p.allow_write.push(SourcedPath {
        path: "/Users/dev/cache".into(),
        source: Source::Cli,
    });
    let layout = FsLayout {
        writable: vec![
            root("/Users/dev/cache", RootKind::Extra, Source::Cli),
            root(
                "/Users/dev/src/main/.git",
                RootKind::GitDir,
                Source::Auto("gitdir of /Users/dev/src/wt/.git".into()),
            ),
            root("/Users/dev/src/wt", RootKind::Workspace, Source::Default),
            // A temp root given as /tmp: Seatbelt sees /private/tmp.
            root("/tmp/scratch", RootKind::Extra, Source::Cli),
        ],
        protected: vec![
            prot(
                "/Users/dev/cache/.git",
                None,
                Protection::ReadOnly,
                "a new repository here could carry hooks and config",
            ),
            prot(
                "/Users/dev/src/main/.git",
                Some(FileKind::Dir),
                Protection::Pinned,
                "the repository itself must not be renamed, replaced or deleted",
            ),
            prot(
                "/Users/dev/src/main/.git/config",
                Some(FileKind::File),
                Protection::ReadOnly,
                "git config can run commands (core.fsmonitor, filters, hooksPath)",
            ),
            prot(
                "/Users/dev/src/main/.git/hooks",
                Some(FileKind::Dir),
                Protection::ReadOnly,
                "git hooks run on the host",
            ),
            prot(
                "/Users/dev/src/main/.git/worktrees/wt/commondir",
                Some(FileKind::File),
                Protection::ReadOnly,
                "points git at another repository",
            ),
            prot(
                "/Users/dev/src/wt/.git",
                Some(FileKind::File),
                Protection::ReadOnly,
                "gitdir pointer: rewriting it would point git at an attacker's repository",
            ),
            prot(
                "/Users/dev/src/wt/tools/hooks",
                None,
                Protection::ReadOnly,
                "core.hooksPath: hooks run on the host",
            ),
        ],
        hidden: vec![],
        cwd: "/Users/dev/src/wt".into(),
        notes: vec![],
    };
    let sb = build(&p, &layout);
    assert_eq!(sb.param("WRITABLE_ROOT_3"), Some("/private/tmp/scratch"));
    insta::assert_snapshot!(generated(&sb));
}

#[test]
fn deny_read_inside_and_outside_the_workspace() {
    let mut p = Policy::new(WS);
    p.deny_read.push(SourcedPath {
        path: format!("{WS}/.env").into(),
        source: Source::Cli,
    });
    let mut layout = workspace_layout(WS);
    layout.protected.clear();
    layout.hidden = vec![
        hidden("/Users/dev/.cargo/credentials.toml", FileKind::File),
        hidden("/Users/dev/.config/gh", FileKind::Dir),
        HiddenPath {
            path: format!("{WS}/.env").into(),
            kind: FileKind::File,
            source: Source::Cli,
        },
        hidden("/Users/dev/Library/Keychains", FileKind::Dir),
    ];
    let sb = build(&p, &layout);
    // The keychain is hidden once, even when the policy names it too.
    assert_eq!(sb.text().matches("keychain files").count(), 0);
    insta::assert_snapshot!(generated(&sb));
}

fn network_profile(network: Network) -> String {
    let mut p = Policy::new(WS);
    p.network = network;
    let mut layout = workspace_layout(WS);
    layout.protected.clear();
    let sb = build(&p, &layout);
    let s = sb.text();
    s[s.find(";;; ====").unwrap()..].to_string()
}

#[test]
fn network_off() {
    let s = network_profile(Network::Off);
    assert!(!s.contains("(remote ip"));
    assert!(
        !s.contains("system-socket"),
        "only the base's AF_UNIX sockets"
    );
    insta::assert_snapshot!(&s[s.find("network\n").unwrap()..]);
}

#[test]
fn network_proxy() {
    let s = network_profile(Network::Proxy(ProxyPolicy {
        allow: vec!["crates.example".into()],
        ..Default::default()
    }));
    assert!(s.contains("(remote ip \"localhost:3128\")"));
    assert!(!s.contains("*:*"));
    assert!(!s.contains("mDNSResponder"));
    insta::assert_snapshot!(&s[s.find("network\n").unwrap()..]);
}

#[test]
fn network_on() {
    let s = network_profile(Network::On);
    assert!(s.contains("(allow network-outbound (remote ip \"*:*\"))"));
    assert!(!s.contains("(remote unix-socket)"));
    insta::assert_snapshot!(&s[s.find("network\n").unwrap()..]);
}

#[test]
fn proxy_without_port_is_an_error() {
    let mut p = Policy::new(WS);
    p.network = Network::Proxy(ProxyPolicy::default());
    let mut ctx = MacContext::example(&p);
    ctx.proxy_port = None;
    let err = profile(&p, &workspace_layout(WS), &ctx).unwrap_err();
    assert!(matches!(err, MacError::NoProxyPort), "{err}");
    let ctx = ctx.with_proxy_port(9);
    assert!(profile(&p, &workspace_layout(WS), &ctx)
        .unwrap()
        .text()
        .contains("localhost:9\""));
}

#[test]
fn full_access_has_no_profile() {
    let mut p = Policy::new(WS);
    p.mode = Mode::FullAccess;
    assert!(matches!(
        profile(
            &p,
            &FsLayout {
                writable: vec![],
                protected: vec![],
                hidden: vec![],
                cwd: WS.into(),
                notes: vec![]
            },
            &MacContext::example(&p)
        ),
        Err(MacError::FullAccess)
    ));
}

#[test]
fn awkward_paths_are_escaped() {
    // Spaces, quotes, a backslash, parentheses and non-ASCII letters.
    let ws = r#"/Users/dév/My "Quoted" Proj\ (v2)/日本"#;
    let mut p = Policy::new(ws);
    p.network = Network::Off;
    let mut layout = workspace_layout(ws);
    layout
        .protected
        .retain(|x| x.path.ends_with(".git") || x.path.ends_with(".codex"));
    layout.hidden = vec![hidden("/Users/dév/.ssh", FileKind::Dir)];
    let sb = build(&p, &layout);
    // The parameter carries the path verbatim: sandbox-exec gets it as one argv entry.
    assert_eq!(sb.param("WRITABLE_ROOT_0"), Some(ws));
    // In regexes: metacharacters escaped, then `"` and `\` escaped for the string.
    assert!(
        joined(sb.text())
            .contains(r#"[Qq][Uu][Oo][Tt][Ee][Dd]\" [Pp][Rr][Oo][Jj]\\\\ \\([Vv]2\\)/日本"#),
        "{}",
        sb.text()
    );
    assert!(sb.text().contains("(E\u{301}|e\u{301}|É|é)"));
    insta::assert_snapshot!(generated(&sb));
}

#[test]
fn control_characters_are_refused() {
    let p = Policy::new("/Users/dev/a\nb");
    let layout = workspace_layout("/Users/dev/a\nb");
    let err = profile(&p, &layout, &MacContext::example(&p)).unwrap_err();
    assert!(matches!(err, MacError::BadPath { .. }), "{err}");
}

#[test]
fn every_paren_balances() {
    // A cheap structural check of the SBPL: parentheses balance outside strings and comments.
    for sb in [
        build(&Policy::new(WS), &workspace_layout(WS)),
        build(
            &Policy::new(r#"/Users/x/"(q)""#),
            &workspace_layout(r#"/Users/x/"(q)""#),
        ),
    ] {
        let mut depth = 0i64;
        let (mut in_str, mut esc, mut in_comment) = (false, false, false);
        for c in sb.text().chars() {
            if in_comment {
                in_comment = c != '\n';
                continue;
            }
            if in_str {
                if esc {
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else if c == '"' {
                    in_str = false;
                }
                continue;
            }
            match c {
                ';' => in_comment = true,
                '"' => in_str = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    assert!(depth >= 0, "unbalanced )");
                }
                _ => {}
            }
        }
        assert_eq!(depth, 0);
        assert!(!in_str);
    }
}

#[test]
fn example_context_is_deterministic() {
    let p = Policy::new(WS);
    assert_eq!(MacContext::example(&p), MacContext::example(&p));
    assert_eq!(MacContext::example(&p).home, PathBuf::from("/Users/dev"));
}

#[test]
fn unenforced_limits_are_reported() {
    // The default policy must run: the built-in process cap is not a request, so it
    // is reported as a default and never refused (issue: every run exited 125).
    let mut p = Policy::new(WS);
    assert!(workfence_macos::unenforced(&p).is_empty());
    let d = workfence_macos::not_enforced_defaults(&p);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].layer, "process limit");
    // Asked for: each limit is a refusal.
    p.limits.memory_bytes = Some(1 << 30);
    p.limits.cpu_percent = Some(50);
    p.limits.max_processes = 64;
    p.provenance.insert("max_processes".into(), Source::Cli);
    let u = workfence_macos::unenforced(&p);
    assert_eq!(u.len(), 3);
    assert!(u
        .iter()
        .all(|l| l.state == workfence_policy::Enforcement::None));
    assert!(workfence_macos::not_enforced_defaults(&p).is_empty());
}

#[test]
fn doctor_off_macos_says_unsupported() {
    if cfg!(target_os = "macos") {
        return;
    }
    let d = workfence_macos::doctor();
    assert_eq!(d.len(), 1);
    assert!(d[0].detail.contains("unsupported"));
    let req = workfence_policy::run::RunRequest {
        argv: vec!["true".into()],
        env: vec![],
        cwd: WS.into(),
        timeout: None,
        pty: false,
        keep_fds: vec![],
        proxy_socket: None,
    };
    let sb = build(&Policy::new(WS), &workspace_layout(WS));
    assert!(matches!(
        workfence_macos::run(&sb, &req),
        Err(MacError::Unsupported)
    ));
}

#[test]
fn missing_and_wildcard_secrets_are_denied_by_name() {
    // Neither exists at the start: Seatbelt matches paths, so the rules still deny a
    // file created there during the run.
    let mut p = Policy::new(WS);
    for d in ["/Users/dev/.aws", "/Users/dev/.cargo/credentials*"] {
        p.deny_read.push(SourcedPath {
            path: d.into(),
            source: Source::Default,
        });
    }
    let mut layout = workspace_layout(WS);
    layout.protected.clear();
    layout.hidden.clear();
    let sb = build(&p, &layout);
    assert_eq!(sb.param("HIDDEN_0"), Some("/Users/dev/.aws"));
    let reads = sb
        .text()
        .split(";; follow reads.")
        .nth(1)
        .and_then(|t| t.split("writes").next())
        .unwrap()
        .to_string();
    assert!(reads.contains("(subpath (param \"HIDDEN_0\"))"), "{reads}");
    assert!(
        joined(&reads).contains("[Cc][Rr][Ee][Dd][Ee][Nn][Tt][Ii][Aa][Ll](S|s|ſ)[^/]*(/.*)?$"),
        "{reads}"
    );
}

#[test]
fn only_the_commands_own_terminals_are_open() {
    // Issue 9: `cat /dev/ttys001` read what was typed in another tab. Terminals
    // are out of the global read rule; the command's are allowed by name, ptys it
    // made itself by the kernel's extension.
    let p = Policy::new(WS);
    let mut ctx = MacContext::example(&p);
    ctx.ttys = vec!["/dev/ttys004".into(), "/dev/ttys004".into()];
    let sb = profile(&p, &workspace_layout(WS), &ctx).unwrap();
    let t = sb.text();
    let reads = &t[t
        .find(";;; ----------------------------------------------------------- reads")
        .unwrap()..];
    let reads = &reads[..reads.find("terminals\n").unwrap()];
    assert!(reads.contains("(regex \"^/dev/(tty|pty)\")"), "{reads}");
    // A pty by number only together with the sandbox's pty extension: no ioctl
    // rule by name alone.
    assert_eq!(t.matches("(regex \"^/dev/ttys[0-9]+$\")").count(), 1);
    assert!(!t.contains("(allow file-ioctl\n  (regex \"^/dev/ttys[0-9]+$\"))"));
    assert!(t.contains("(require-all\n    (regex \"^/dev/ttys[0-9]+$\")\n    (extension"));
    assert!(t.contains("(extension \"com.apple.sandbox.pty\")"));
    assert_eq!(sb.param("HANDED_TTY_0"), Some("/dev/ttys004"));
    assert_eq!(sb.param("HANDED_TTY_1"), None, "deduplicated");
    // --pty: the slave replaces every handed-over terminal.
    let sb = sb
        .with_handed_tty(std::path::Path::new("/dev/ttys009"))
        .unwrap();
    assert_eq!(sb.param("HANDED_TTY_0"), Some("/dev/ttys009"));
    assert!(sb
        .clone()
        .with_handed_tty(std::path::Path::new("/dev/a\nb"))
        .is_err());
    // Without a terminal the slot holds /dev/null (already open to everyone).
    let sb = build(&p, &workspace_layout(WS));
    assert_eq!(sb.param("HANDED_TTY_0"), Some("/dev/null"));
}

#[test]
fn nested_repositories_and_data_volume_are_denied() {
    let sb = build(&Policy::new(WS), &workspace_layout(WS));
    let t = sb.text();
    let writes = joined(
        &t[t.find("(allow file-write* file-link file-clone\n  (require-all\n    (require-any")
            .unwrap()..],
    );
    // `(S|s|ſ)` and `(K|k|K)` (Kelvin sign): case folding maps both onto ASCII.
    let gitdir = r"/\\.[Gg][Ii][Tt]/([Mm][Oo][Dd][Uu][Ll][Ee](S|s|ſ)/.+/|[Ww][Oo][Rr](K|k|K)[Tt][Rr][Ee][Ee](S|s|ſ)/[^/]+/)?";
    for re in [
        r#"(regex "/\\.[Gg][Ii][Tt]$")"#.to_string(),
        format!(
            r#"{gitdir}([Cc][Oo][Nn][Ff][Ii][Gg]|[Cc][Oo][Nn][Ff][Ii][Gg]\\.[Ww][Oo][Rr](K|k|K)[Tt][Rr][Ee][Ee]|[Cc][Oo][Mm][Mm][Oo][Nn][Dd][Ii][Rr])$""#
        ),
        format!(r#"{gitdir}[Hh][Oo][Oo](K|k|K)(S|s|ſ)(/.*)?$""#),
    ] {
        assert!(writes.contains(&re), "missing {re}");
    }
    // Every anchored deny regex also matches the Data-volume spelling.
    for line in t
        .lines()
        .filter(|l| l.trim_start().starts_with("(regex \"^/"))
    {
        assert!(
            !line.contains("[Uu](S|s|ſ)[Ee][Rr](S|s|ſ)") || line.contains("[Dd][Aa][Tt][Aa])?"),
            "{line}"
        );
    }
    assert_eq!(sb.param("HIDDEN_9"), Some("/.vol"));
}

#[test]
fn the_owner_probe_is_denied_only_here() {
    let p = Policy::new(WS);
    let sb = build(&p, &workspace_layout(WS));
    let (allowed, denied) = sb.owner_probes();
    assert!(allowed.starts_with(sb.tmp_dir()) && denied.starts_with(sb.tmp_dir()));
    assert_ne!(allowed, denied);
    assert_eq!(sb.param("OWNER_PROBE"), denied.to_str());
    assert!(sb
        .text()
        .contains("(require-not (literal (param \"OWNER_PROBE\")))"));
    // A different run (another token) denies another name.
    let mut ctx = MacContext::example(&p);
    ctx.probe_token = "ffffffffffffffffffffffffffffffff".into();
    let other = profile(&p, &workspace_layout(WS), &ctx).unwrap();
    assert_ne!(other.owner_probes().1, denied);
    ctx.probe_token = "../../x".into();
    assert!(profile(&p, &workspace_layout(WS), &ctx).is_err());
}

/// python's SharedMemory calls fstat right after shm_open (XNU checks it as
/// ipc-posix-shm-read-metadata): the rule that lets the command create its own
/// segments must allow it for the same names, and only those.
#[test]
fn own_shared_memory_segments_may_be_stat_ed() {
    let text = workfence_macos::BASE_PROFILE;
    let start = text
        .find("(allow ipc-posix-shm-read-data")
        .expect("the segment rule");
    let rule = &text[start..start + text[start..].find("))\n").unwrap() + 2];
    for op in [
        "ipc-posix-shm-read-data",
        "ipc-posix-shm-read-metadata",
        "ipc-posix-shm-write-create",
        "ipc-posix-shm-write-data",
        "ipc-posix-shm-write-unlink",
    ] {
        assert!(rule.contains(op), "{op} missing from {rule}");
    }
    assert!(rule.contains(r#"(ipc-posix-name-regex "^/psm_[0-9a-f]+$")"#));
    assert!(rule.contains(r#"(ipc-posix-name-regex "^/__KMP_REGISTERED_LIB_[0-9]+$")"#));
    // No other rule opens segments' metadata by a wider filter.
    let others = text.replace(rule, "");
    assert!(!others.contains("ipc-posix-shm-read-metadata"));
    assert!(!others.contains("(allow ipc-posix-shm-read*)"));
}

/// ioctls on terminals only where opening them is allowed: the command's own
/// ptys (the sandbox's pty extension), /dev/tty, /dev/ptmx and the handed-over
/// ones. No rule allows file-ioctl on /dev/ttysNNN by name alone (TIOCSETA or
/// TIOCSTOP on another tab).
#[test]
fn terminal_ioctls_need_an_allowed_terminal() {
    let sb = build(&Policy::new(WS), &workspace_layout(WS));
    let t = sb.text();
    for (i, _) in t.match_indices("(allow ") {
        let form = &t[i..];
        // The form up to its closing parenthesis at depth 0.
        let mut depth = 0;
        let mut end = form.len();
        for (j, c) in form.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let form = &form[..end];
        let head = form.lines().next().unwrap_or("");
        if head.contains("file-ioctl") && form.contains("/dev/ttys") {
            assert!(
                form.contains("(extension \"com.apple.sandbox.pty\")"),
                "terminal ioctls by name: {form}"
            );
        }
    }
}
