//! Plan tests: run on every OS. Layouts are built by hand with Windows paths.

use std::time::Duration;

use workfence_policy::layout::{
    FileKind, FsLayout, HiddenPath, ProtectedPath, Protection, RootKind, WritableRoot,
};
use workfence_policy::{Enforcement, Mode, Network, Policy, ProxyPolicy, Source, SourcedPath};
use workfence_windows::sddl::{rights, AceKind, Inherit};
use workfence_windows::{
    git_safe_directory_env, plan, restricting_sids, sids, AcePurpose, RestrictingSet, RunAs,
    WindowsContext, WindowsError, WindowsPlan, LOGON_SID, PLATFORM_LIMIT_NETWORK,
};

const WS: &str = r"C:\Users\dev\src\proj";

fn root(p: &str, kind: RootKind) -> WritableRoot {
    WritableRoot {
        path: p.into(),
        kind,
        source: Source::Default,
    }
}

fn prot(p: &str, exists: Option<FileKind>, protection: Protection, reason: &str) -> ProtectedPath {
    ProtectedPath {
        path: p.into(),
        exists,
        missing_as_dir: !p.ends_with(".json"),
        protection,
        reason: reason.into(),
    }
}

fn hidden(p: &str, kind: FileKind) -> HiddenPath {
    HiddenPath {
        path: p.into(),
        kind,
        source: Source::Default,
    }
}

/// The layout `layout::compute` gives for a git repository workspace on Windows.
fn repo_layout(ws: &str) -> FsLayout {
    let j = |n: &str| format!(r"{ws}\{n}");
    FsLayout {
        writable: vec![root(ws, RootKind::Workspace)],
        protected: vec![
            prot(
                &j(".agents"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &j(".claude"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &j(".git"),
                Some(FileKind::Dir),
                Protection::Pinned,
                "the repository itself must not be renamed, replaced or deleted",
            ),
            prot(
                &j(r".git\config"),
                Some(FileKind::File),
                Protection::ReadOnly,
                "git config can run commands (core.fsmonitor, filters, hooksPath)",
            ),
            prot(
                &j(r".git\hooks"),
                Some(FileKind::Dir),
                Protection::ReadOnly,
                "git hooks run on the host",
            ),
            prot(
                &j(".mcp.json"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &j(".vscode"),
                Some(FileKind::Dir),
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
            prot(
                &j(".workfence"),
                None,
                Protection::ReadOnly,
                "runs code on the host later (agent or editor config)",
            ),
        ],
        hidden: vec![
            hidden(r"C:\Users\dev\.aws", FileKind::Dir),
            hidden(r"C:\Users\dev\.cargo\credentials.toml", FileKind::File),
            hidden(r"C:\Users\dev\.ssh", FileKind::Dir),
        ],
        cwd: ws.into(),
        notes: vec![],
    }
}

fn policy(ws: &str) -> Policy {
    Policy::new(ws)
}

fn build(p: &Policy, l: &FsLayout) -> WindowsPlan {
    plan(p, l, &WindowsContext::example(p)).unwrap()
}

fn snap(name: &str, p: &WindowsPlan) {
    insta::assert_snapshot!(format!("{name}-text"), p.to_string());
    insta::assert_yaml_snapshot!(format!("{name}-data"), p);
}

#[test]
fn workspace_write_repo_network_off() {
    let p = policy(WS);
    let l = repo_layout(WS);
    let plan = build(&p, &l);
    assert!(matches!(plan.run_as, RunAs::OfflineUser { .. }));
    // With setup every layer is enforced; what Windows does outside the filters (DNS
    // through Dnscache, SMB through the redirector) is a reported platform limit, so
    // the default run starts.
    assert!(plan.degraded().is_empty(), "{:?}", plan.degraded());
    assert!(plan.refusal().is_none() && plan.degraded_warning().is_none());
    assert!(plan
        .layers
        .iter()
        .any(|l| l.layer == PLATFORM_LIMIT_NETWORK && l.state == Enforcement::Partial));
    snap("workspace-write", &plan);
}

#[test]
fn read_only() {
    let mut p = policy(WS);
    p.mode = Mode::ReadOnly;
    let l = FsLayout {
        writable: vec![],
        protected: vec![],
        hidden: vec![hidden(r"C:\Users\dev\.ssh", FileKind::Dir)],
        cwd: WS.into(),
        notes: vec![],
    };
    let plan = build(&p, &l);
    // Only the temp dir is writable; the workspace is readable by the sandbox group.
    let writes: Vec<_> = plan
        .aces
        .iter()
        .filter(|a| a.purpose == AcePurpose::Write)
        .map(|a| a.path.as_str())
        .collect();
    assert!(
        writes.iter().all(|p| p.contains(r"workfence\tmp")),
        "{writes:?}"
    );
    assert!(plan
        .aces
        .iter()
        .any(|a| a.purpose == AcePurpose::Read && a.path == WS));
    snap("read-only", &plan);
}

#[test]
fn extra_roots_and_deny_read() {
    let mut p = policy(WS);
    p.allow_write.push(SourcedPath {
        path: r"D:\cache\build".into(),
        source: Source::Cli,
    });
    p.deny_read.push(SourcedPath {
        path: r"C:\Users\dev\src\proj\secrets.env".into(),
        source: Source::Cli,
    });
    p.limits.memory_bytes = Some(2 << 30);
    p.limits.cpu_percent = Some(150);
    p.limits.max_processes = 64;
    p.limits.timeout = Some(Duration::from_millis(90_500));
    let mut l = repo_layout(WS);
    let mut extra = root(r"D:\cache\build", RootKind::Extra);
    extra.source = Source::Cli;
    l.writable.push(extra);
    l.protected.push(prot(
        r"D:\cache\build\.git",
        None,
        Protection::ReadOnly,
        "the repository itself must not be renamed, replaced or deleted",
    ));
    l.hidden.push(HiddenPath {
        path: r"C:\Users\dev\src\proj\secrets.env".into(),
        kind: FileKind::File,
        source: Source::Cli,
    });
    let plan = build(&p, &l);
    assert_eq!(plan.job.active_process_limit, 64);
    assert_eq!(plan.job.job_memory_limit, Some(2 << 30));
    assert!(plan
        .job
        .limit_flags
        .contains(&"JOB_OBJECT_LIMIT_JOB_MEMORY"));
    assert_eq!(plan.job.timeout_ms, Some(90_500));
    snap("extra-roots", &plan);
}

#[test]
fn network_on_runs_as_the_online_user() {
    let mut p = policy(WS);
    p.network = Network::On;
    let plan = build(&p, &repo_layout(WS));
    assert!(matches!(plan.run_as, RunAs::OnlineUser { .. }));
    assert!(plan.network.enforced);
    snap("network-on", &plan);
}

#[test]
fn network_proxy_is_refused_until_the_proxy_exists() {
    let mut p = policy(WS);
    p.network = Network::Proxy(ProxyPolicy {
        allow: vec!["**.crates.example".into()],
        ..Default::default()
    });
    let err = plan(&p, &repo_layout(WS), &WindowsContext::example(&p)).unwrap_err();
    assert!(matches!(err, WindowsError::ProxyUnsupported), "{err}");
    assert!(err.to_string().contains("--network off or on"), "{err}");
}

#[test]
fn without_setup_is_degraded() {
    let p = policy(WS);
    let ctx = WindowsContext::example(&p).without_setup();
    let plan = plan(&p, &repo_layout(WS), &ctx).unwrap();
    assert!(plan.needs_setup);
    assert!(matches!(plan.run_as, RunAs::CurrentUser { .. }));
    let degraded: Vec<_> = plan.degraded().iter().map(|l| l.layer.clone()).collect();
    assert_eq!(
        degraded,
        [
            "filesystem writes",
            "secrets (deny-read)",
            "network",
            "processes"
        ]
    );
    // No group exists: every ACE is for the capability SID, but the inherit-only
    // OWNER RIGHTS ACE on the writable roots.
    assert!(plan
        .aces
        .iter()
        .all(|a| a.ace.sid == plan.capability_sid || a.ace.sid == sids::OWNER_RIGHTS));
    snap("no-setup", &plan);
}

#[test]
fn spaces_and_non_ascii() {
    let ws = r"C:\Users\Zoë Ångström\Projekte\mein projekt ü";
    let p = policy(ws);
    let plan = build(&p, &repo_layout(ws));
    assert!(plan.to_string().contains(ws));
    assert!(plan.temp_dir.starts_with(r"C:\Users\Zoë Ångström\AppData"));
    snap("spaces-non-ascii", &plan);
}

#[test]
fn full_access_has_only_the_job() {
    let mut p = policy(WS);
    p.mode = Mode::FullAccess;
    let l = FsLayout {
        writable: vec![],
        protected: vec![],
        hidden: vec![],
        cwd: WS.into(),
        notes: vec![],
    };
    let plan = build(&p, &l);
    assert!(plan.unsandboxed && plan.token.is_none() && plan.aces.is_empty());
    insta::assert_snapshot!("full-access-text", plan.to_string());
}

#[test]
fn token_excludes_everyone_and_users() {
    let p = policy(WS);
    let plan = build(&p, &repo_layout(WS));
    let t = plan.token.unwrap();
    assert_eq!(
        t.flags,
        ["WRITE_RESTRICTED", "DISABLE_MAX_PRIVILEGE", "LUA_TOKEN"]
    );
    let restricting: Vec<_> = t.restricting_sids.iter().map(|s| s.sid.as_str()).collect();
    assert_eq!(restricting[0], plan.capability_sid);
    assert!(restricting[1].starts_with("logon SID"));
    for sid in ["S-1-1-0", "S-1-5-32-545", "S-1-5-11"] {
        assert!(!restricting.contains(&sid));
        assert!(t.excluded_sids.iter().any(|s| s.sid == sid));
    }
}

#[test]
fn protected_paths_are_pinned_against_their_parents() {
    let p = policy(WS);
    let plan = build(&p, &repo_layout(WS));
    let cap = plan.capability_sid.clone();
    let has = |path: &str, kind: AceKind, mask: u32, inherit: Inherit| {
        plan.aces.iter().any(|a| {
            a.path == path
                && a.ace.sid == cap
                && a.ace.kind == kind
                && a.ace.mask == mask
                && a.ace.inherit == inherit
        })
    };
    let j = |n: &str| format!(r"{WS}\{n}");
    // .git itself: not deletable or renamable, contents writable.
    assert!(has(
        &j(".git"),
        AceKind::Deny,
        rights::DENY_PIN,
        Inherit::None
    ));
    assert!(!has(
        &j(".git"),
        AceKind::Deny,
        rights::DENY_WRITE,
        Inherit::Tree
    ));
    // hooks: read-only tree; config: read-only file.
    assert!(has(
        &j(r".git\hooks"),
        AceKind::Deny,
        rights::DENY_WRITE,
        Inherit::Tree
    ));
    assert!(has(
        &j(r".git\config"),
        AceKind::Deny,
        rights::DENY_WRITE,
        Inherit::None
    ));
    // The parents lose FILE_DELETE_CHILD, which would override the child's deny.
    assert!(has(
        WS,
        AceKind::Deny,
        rights::FILE_DELETE_CHILD,
        Inherit::None
    ));
    assert!(has(
        &j(".git"),
        AceKind::Deny,
        rights::FILE_DELETE_CHILD,
        Inherit::None
    ));
    // The capability grant never includes FILE_DELETE_CHILD.
    assert_eq!(rights::MODIFY & rights::FILE_DELETE_CHILD, 0);
    // Missing protected paths become per-run placeholders with a deny ACE.
    let ph: Vec<_> = plan
        .placeholders
        .iter()
        .map(|p| (p.path.as_str(), p.dir))
        .collect();
    assert!(ph.contains(&(j(".mcp.json").as_str(), false)));
    assert!(ph.contains(&(j(".codex").as_str(), true)) || !ph.is_empty());
    assert!(plan
        .aces
        .iter()
        .any(|a| a.per_run && a.path == j(".mcp.json")));
    // Hidden paths: a read deny for the group.
    let group = "S-1-5-21-1004336348-1177238915-682003330-1010";
    assert!(plan.aces.iter().any(|a| a.path == r"C:\Users\dev\.ssh"
        && a.ace.sid == group
        && a.ace.kind == AceKind::Deny
        && a.ace.mask == rights::DENY_READ));
}

fn refused(ws_root: &str) -> String {
    let p = policy(WS);
    let mut l = repo_layout(WS);
    l.writable.push(root(ws_root, RootKind::Extra));
    match plan(&p, &l, &WindowsContext::example(&p)) {
        Err(e @ WindowsError::DangerousGrant { .. }) => e.to_string(),
        other => panic!("{ws_root}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn dangerous_grants_are_refused() {
    for (path, why) in [
        (r"C:\", "drive root"),
        (r"D:\", "drive root"),
        (r"C:\Users\dev", "user profile root"),
        (r"c:\users\DEV\", "user profile root"),
        (r"C:\Users", "user profile root"),
        (r"C:\Windows", "Windows directory"),
        (r"C:\Windows\System32\config", "Windows directory"),
        (r"C:\Users\dev\NTUSER.DAT", "registry hive"),
        (
            r"C:\Users\dev\AppData\Local\Microsoft\Windows\UsrClass.dat",
            "registry hive",
        ),
        (r"C:\ProgramData", "shared directory"),
        (r"C:\Program Files", "shared directory"),
        (
            r"C:\Users\dev\AppData\Local\workfence\state",
            "state directory",
        ),
        (r"C:\Users\dev\AppData\Local\workfence", "state directory"),
        (r"\\server\share\x", "network share"),
        (r"\\?\C:\", "drive root"),
        (r"C:\Users\dev\.", "user profile root"),
        (r"C:\Users\dev\src\..", "user profile root"),
    ] {
        let msg = refused(path);
        assert!(msg.contains(why), "{path}: {msg}");
        assert!(msg.contains("name a narrower directory"), "{msg}");
    }
}

#[test]
fn wfp_filters_cover_the_issue_list() {
    let plan = build(&policy(WS), &repo_layout(WS));
    let names: Vec<_> = plan
        .network
        .filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    for want in [
        "listening (IPv4)",
        "listening (IPv6)",
        "online user may not listen on the proxy port (IPv4)",
        "DNS",
        "SMB",
        "ICMP",
        "all other outbound",
        "inbound",
        "raw sockets at bind (IPv4)",
        "raw sockets at bind (IPv6)",
        "ICMP sockets at bind (IPv4)",
        "ICMP sockets at bind (IPv6)",
    ] {
        assert!(names.iter().any(|n| n.contains(want)), "{want}: {names:?}");
    }
    let keys: std::collections::BTreeSet<_> = plan.network.filters.iter().map(|f| &f.key).collect();
    assert_eq!(
        keys.len(),
        plan.network.filters.len(),
        "filter keys are unique"
    );
    let layers = plan
        .layers
        .iter()
        .all(|l| l.state == Enforcement::Full || l.layer == PLATFORM_LIMIT_NETWORK);
    assert!(layers);
    // No permit of any kind: the fixed loopback permit reached any listener on the port.
    assert!(plan
        .network
        .filters
        .iter()
        .all(|f| f.action == workfence_windows::WfpAction::Block));
    // ICMP and raw sockets are blocked at the bind layer too, for the offline user,
    // with the same first condition as every other filter.
    use workfence_windows::{WfpCondition, WfpLayer};
    let offline = &plan.network.filters[0].conditions[0];
    for (layer, icmp) in [
        (WfpLayer::AleResourceAssignmentV4, 1),
        (WfpLayer::AleResourceAssignmentV6, 58),
    ] {
        let at: Vec<_> = plan
            .network
            .filters
            .iter()
            .filter(|f| f.layer == layer)
            .collect();
        assert_eq!(at.len(), 2, "{layer:?}");
        assert!(at.iter().all(|f| &f.conditions[0] == offline));
        assert!(at
            .iter()
            .any(|f| f.conditions[1..] == [WfpCondition::Protocol(icmp)]));
        assert!(at.iter().any(|f| f.conditions[1..]
            == [WfpCondition::Flags(
                workfence_windows::FWP_CONDITION_FLAG_IS_RAW_ENDPOINT
            )]));
    }
    // The filters of earlier versions keep their keys (the new ones are appended).
    assert_eq!(
        plan.network.filters[0].key,
        "6b2f3a10-77c4-4e4f-9a61-776f726b6601"
    );
    // Uninstall deletes every key, so filters of earlier versions go too.
    let all = workfence_windows::all_filter_keys();
    assert!(plan.network.filters.iter().all(|f| all.contains(&f.key)));
    assert!(!all.contains(&workfence_windows::WFP_PROVIDER_KEY.to_string()));
}

#[test]
fn unix_paths_are_mapped_for_explain() {
    if cfg!(windows) {
        return;
    }
    let p = policy("/home/me/src/p");
    let l = FsLayout {
        writable: vec![root("/home/me/src/p", RootKind::Workspace)],
        protected: vec![prot(
            "/home/me/src/p/.git",
            Some(FileKind::Dir),
            Protection::Pinned,
            "repo",
        )],
        hidden: vec![hidden("/home/me/.ssh", FileKind::Dir)],
        cwd: "/home/me/src/p".into(),
        notes: vec![],
    };
    let plan = build(&p, &l);
    assert_eq!(plan.workspace, r"C:\Users\me\src\p");
    assert!(plan.aces.iter().any(|a| a.path == r"C:\Users\me\.ssh"));
    assert!(plan.notes.iter().any(|n| n.contains("for illustration")));
}

#[test]
fn linked_worktree_gitdir_gets_both_grants() {
    let ws = r"C:\Users\dev\src\wt";
    let p = policy(ws);
    let mut l = repo_layout(ws);
    l.writable.push(root(
        r"C:\Users\dev\src\main\.git\worktrees\wt",
        RootKind::GitDir,
    ));
    l.protected.push(prot(
        r"C:\Users\dev\src\main\.git\hooks",
        Some(FileKind::Dir),
        Protection::ReadOnly,
        "git hooks run on the host",
    ));
    let plan = build(&p, &l);
    let gitdir = r"C:\Users\dev\src\main\.git\worktrees\wt";
    let grants: Vec<_> = plan
        .aces
        .iter()
        .filter(|a| {
            a.path == gitdir && a.purpose == AcePurpose::Write && a.ace.sid != sids::OWNER_RIGHTS
        })
        .collect();
    assert_eq!(grants.len(), 2, "group and capability SID");
    assert!(plan
        .aces
        .iter()
        .any(|a| a.path == gitdir && a.ace.sid == sids::OWNER_RIGHTS));
    // The hooks of the main repository are outside every writable root: denied, but
    // their parent gets no DELETE_CHILD deny (nothing there is writable anyway).
    assert!(
        plan.aces
            .iter()
            .any(|a| a.path == r"C:\Users\dev\src\main\.git\hooks"
                && a.purpose == AcePurpose::Protect)
    );
    assert!(!plan
        .aces
        .iter()
        .any(|a| a.path == r"C:\Users\dev\src\main\.git" && a.purpose == AcePurpose::ProtectChild));
}

#[test]
fn read_only_cwd_outside_the_workspace_is_readable() {
    let mut p = policy(WS);
    p.mode = Mode::ReadOnly;
    let l = FsLayout {
        writable: vec![],
        protected: vec![],
        hidden: vec![],
        cwd: r"D:\data\inputs".into(),
        notes: vec![],
    };
    let plan = build(&p, &l);
    assert!(plan
        .aces
        .iter()
        .any(|a| a.path == r"D:\data\inputs" && a.purpose == AcePurpose::Read));
}

#[test]
fn links_among_protected_paths_are_left_alone() {
    let p = policy(WS);
    let mut l = repo_layout(WS);
    l.protected.push(prot(
        r"C:\Users\dev\src\proj\.idea",
        Some(FileKind::Symlink),
        Protection::ReadOnly,
        "runs code on the host later (agent or editor config)",
    ));
    let plan = build(&p, &l);
    assert!(!plan.aces.iter().any(|a| a.path.ends_with(".idea")));
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains(".idea") && n.contains("link")));
}

#[test]
fn environment_keeps_what_windows_programs_need() {
    let plan = build(&policy(WS), &repo_layout(WS));
    for name in [
        "PATH",
        "PATHEXT",
        "SystemRoot",
        "windir",
        "ComSpec",
        "USERPROFILE",
    ] {
        assert!(plan.env.required.contains(&name), "{name}");
    }
    assert!(plan.env.set["TEMP"].starts_with(&plan.temp_dir));
    assert_eq!(plan.env.set["TEMP"], plan.env.set["TMP"]);
}

#[test]
fn bad_paths_are_reported_by_name() {
    let p = policy(WS);
    let mut l = repo_layout(WS);
    l.writable.push(root(r"relative\dir", RootKind::Extra));
    let err = plan(&p, &l, &WindowsContext::example(&p)).unwrap_err();
    assert!(err.to_string().starts_with("writable root:"), "{err}");
}

#[test]
fn every_ace_renders_valid_sddl() {
    let plan = build(&policy(WS), &repo_layout(WS));
    for a in &plan.aces {
        let d = workfence_windows::sddl::Dacl::parse(&format!("D:{}", a.ace.sddl())).unwrap();
        assert!(d.contains(&a.ace), "{}", a.ace.sddl());
    }
}

#[test]
fn job_has_no_ui_limits_so_it_can_nest() {
    for ctx in [
        WindowsContext::example(&policy(WS)),
        WindowsContext::example(&policy(WS)).without_setup(),
    ] {
        let plan = plan(&policy(WS), &repo_layout(WS), &ctx).unwrap();
        assert!(plan
            .job
            .limit_flags
            .contains(&"JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE"));
        let text = plan.to_string();
        assert!(!text.contains("UILIMIT"), "{text}");
        assert!(text.contains("PROC_THREAD_ATTRIBUTE_JOB_LIST"), "{text}");
        assert!(plan.private_desktop);
    }
}

#[test]
fn restricting_set_with_setup_includes_the_sandbox_user() {
    let p = policy(WS);
    let ctx = WindowsContext::example(&p);
    let plan = build(&p, &repo_layout(WS));
    let t = plan.token.as_ref().unwrap();
    let offline = ctx.users.as_ref().unwrap().offline_sid.clone();
    assert_eq!(
        t.restricting,
        vec![ctx.capability_sid.clone(), LOGON_SID.to_string(), offline]
    );
    assert_eq!(t.restricting_set, RestrictingSet::Narrow);
    // With setup: this run's logon SID, not the sandbox user (a restricting SID of
    // every run as that user), and OWNER RIGHTS limits the owner to READ_CONTROL.
    assert!(t.default_dacl.iter().any(|s| s.sid.contains("logon")));
    assert!(t.default_dacl.iter().all(|s| s.sid != offline_sid(&ctx)));
    assert!(t
        .default_dacl
        .iter()
        .any(|s| s.sid.starts_with(sids::OWNER_RIGHTS)));
    assert!(t.disabled_sids.iter().any(|s| s.sid == "S-1-5-32-544"));
    for s in [sids::EVERYONE, sids::USERS, sids::RESTRICTED] {
        assert!(!t.restricting.iter().any(|r| r == s), "{s}");
    }
}

#[test]
fn restricting_set_without_setup_never_holds_the_invoking_user() {
    let p = policy(WS);
    let ctx = WindowsContext::example(&p).without_setup();
    let plan = plan(&p, &repo_layout(WS), &ctx).unwrap();
    let t = plan.token.as_ref().unwrap();
    assert_eq!(t.restricting.len(), 2);
    assert!(!t.restricting.contains(&ctx.user_sid));
    // Without setup the logon SID is the interactive session's: not in the default DACL.
    assert!(t.default_dacl.iter().all(|s| !s.sid.contains("logon")));
    assert!(t.excluded_sids.iter().any(|s| s.sid == ctx.user_sid));
    // Without setup, deletes through FILE_DELETE_CHILD are not covered: reported.
    let w = plan
        .layers
        .iter()
        .find(|l| l.layer == "filesystem writes")
        .unwrap();
    assert_eq!(w.state, Enforcement::Partial);
    assert!(w.detail.contains("FILE_DELETE_CHILD"), "{}", w.detail);
    assert!(plan.home.is_none());
    assert!(plan.env.git_safe_directory.is_none());
}

#[test]
fn wider_restricting_sets() {
    assert_eq!(
        restricting_sids("S-1-5-21-9", Some("S-1-5-21-7"), RestrictingSet::Restricted),
        vec!["S-1-5-21-9", LOGON_SID, "S-1-5-21-7", sids::RESTRICTED]
    );
    assert_eq!(
        restricting_sids("S-1-5-21-9", None, RestrictingSet::Everyone),
        vec!["S-1-5-21-9", LOGON_SID, sids::RESTRICTED, sids::EVERYONE]
    );
    let p = policy(WS);
    let mut ctx = WindowsContext::example(&p);
    ctx.restricting = RestrictingSet::Everyone;
    let plan = plan(&p, &repo_layout(WS), &ctx).unwrap();
    let degraded: Vec<_> = plan.degraded().iter().map(|l| l.layer.clone()).collect();
    assert_eq!(degraded, ["filesystem writes"]);
    assert!(plan.to_string().contains("restricting set: everyone"));
}

#[test]
fn sandbox_user_gets_a_home_and_git_safe_directory() {
    let p = policy(WS);
    let plan = build(&p, &repo_layout(WS));
    let home = plan.home.clone().unwrap();
    assert!(
        home.contains(r"workfence\tmp") && home.ends_with(r"\home"),
        "{home}"
    );
    for k in [
        "USERPROFILE",
        "HOME",
        "APPDATA",
        "LOCALAPPDATA",
        "HOMEDRIVE",
        "HOMEPATH",
    ] {
        assert!(plan.env.set.contains_key(k), "{k}");
    }
    assert_eq!(
        plan.env.git_safe_directory.as_deref(),
        Some("C:/Users/dev/src/proj")
    );
}

#[test]
fn git_safe_directory_appends_to_the_callers_entries() {
    let ws = "C:\\Users\\dev\\src\\a \"b\";(c)\nx";
    assert_eq!(
        git_safe_directory_env(&[], ws),
        vec![
            ("GIT_CONFIG_COUNT".to_string(), "1".to_string()),
            ("GIT_CONFIG_KEY_0".to_string(), "safe.directory".to_string()),
            (
                "GIT_CONFIG_VALUE_0".to_string(),
                "C:/Users/dev/src/a \"b\";(c)\nx".to_string()
            ),
        ]
    );
    let existing = vec![
        ("git_config_count".to_string(), "2".to_string()),
        ("GIT_CONFIG_KEY_0".to_string(), "core.autocrlf".to_string()),
    ];
    let out = git_safe_directory_env(&existing, r"D:\w");
    assert_eq!(out[0], ("GIT_CONFIG_COUNT".to_string(), "3".to_string()));
    assert_eq!(out[1].0, "GIT_CONFIG_KEY_2");
    assert_eq!(out[2].1, "D:/w");
}

#[test]
fn desktop_pipe_and_null_device_descriptors() {
    use workfence_windows::{control_pipe_sddl, desktop_sddl, null_device_ace, DENY_LOGON_RIGHTS};
    assert_eq!(
        desktop_sddl("S-1-5-21-1-1001", "S-1-5-21-1-1011", "S-1-5-21-9-9-9-9"),
        "D:P(A;;GA;;;S-1-5-18)(A;;GA;;;S-1-5-21-1-1001)(A;;GA;;;S-1-5-21-1-1011)(A;;GA;;;S-1-5-21-9-9-9-9)"
    );
    // Without setup the token user is the invoking user: named once.
    assert_eq!(
        desktop_sddl("S-1-5-21-1-1001", "S-1-5-21-1-1001", "S-1-5-21-9"),
        "D:P(A;;GA;;;S-1-5-18)(A;;GA;;;S-1-5-21-1-1001)(A;;GA;;;S-1-5-21-9)"
    );
    let pipe = control_pipe_sddl("S-1-5-21-1-1001", "S-1-5-21-1-1011");
    assert!(pipe.starts_with("D:P(A;;GA;;;SY)"), "{pipe}");
    assert!(!pipe.contains("WD") && !pipe.contains("S-1-1-0"), "{pipe}");
    assert_eq!(
        null_device_ace("S-1-5-21-1-1011").sddl(),
        "(A;;0x1201bf;;;S-1-5-21-1-1011)"
    );
    assert!(!DENY_LOGON_RIGHTS.contains(&"SeDenyInteractiveLogonRight"));
    assert!(AcePurpose::Protect.fails_closed() && AcePurpose::Hide.fails_closed());
    assert!(!AcePurpose::Write.fails_closed() && !AcePurpose::Read.fails_closed());
}

fn offline_sid(ctx: &WindowsContext) -> String {
    ctx.users.as_ref().unwrap().offline_sid.clone()
}

#[test]
fn default_dacl_keeps_other_runs_out() {
    use workfence_windows::default_dacl_sddl;
    // Without setup: the token user is the invoking user.
    assert_eq!(
        default_dacl_sddl(
            "S-1-5-21-1-1001",
            "S-1-5-21-9",
            "S-1-5-21-1-1001",
            "S-1-5-5-0-1"
        ),
        "D:(A;;GA;;;S-1-5-21-1-1001)(A;;GA;;;S-1-5-21-9)(A;;GA;;;S-1-5-18)(A;;RC;;;S-1-3-4)"
    );
    // With setup: the run's logon SID and the invoking user, never the sandbox user.
    let d = default_dacl_sddl(
        "S-1-5-21-1-1011",
        "S-1-5-21-9",
        "S-1-5-21-1-1001",
        "S-1-5-5-0-1",
    );
    assert_eq!(
        d,
        "D:(A;;GA;;;S-1-5-5-0-1)(A;;GA;;;S-1-5-21-9)(A;;GA;;;S-1-5-18)(A;;GA;;;S-1-5-21-1-1001)(A;;RC;;;S-1-3-4)"
    );
    assert!(!d.contains("S-1-5-21-1-1011"));
}

#[test]
fn webdav_client_makes_the_network_partial() {
    let p = policy(WS);
    let mut ctx = WindowsContext::example(&p);
    ctx.webdav_client = Some(true);
    let off = plan(&p, &repo_layout(WS), &ctx).unwrap();
    let net = off.layers.iter().find(|l| l.layer == "network").unwrap();
    assert_eq!(net.state, Enforcement::Partial);
    assert!(net.detail.contains("WebClient"), "{}", net.detail);
    // Fail closed: refused without --allow-degraded, with the fix in the message.
    let err = off.refusal().unwrap();
    assert!(matches!(err, WindowsError::NotEnforced { .. }), "{err}");
    assert!(err.to_string().contains("sc config WebClient"), "{err}");
    let mut allowed = p.clone();
    allowed.allow_degraded = true;
    let ok = plan(&allowed, &repo_layout(WS), &ctx).unwrap();
    assert!(ok.refusal().is_none());
    assert!(ok.degraded_warning().unwrap().contains("network"));
    // Network on: nothing to restrict.
    let mut p_on = p.clone();
    p_on.network = Network::On;
    let on = plan(&p_on, &repo_layout(WS), &ctx).unwrap();
    let net = on.layers.iter().find(|l| l.layer == "network").unwrap();
    assert_eq!(net.state, Enforcement::Full);
}

#[test]
fn runner_objects_are_closed_to_other_runs() {
    use workfence_windows::{restricting_sids, runner_default_dacl_sddl, runner_object_sddl};
    let (user, sandbox, cap) = ("S-1-5-21-1-1001", "S-1-5-21-1-1011", "S-1-5-21-9-9-9-9");
    let sd = runner_object_sddl(user);
    assert_eq!(
        sd,
        "D:P(A;;GA;;;S-1-5-18)(A;;GA;;;S-1-5-21-1-1001)(A;;RC;;;S-1-3-4)"
    );
    // No SID any command's token restricts with may get access to the runner: not the
    // sandbox user, not a capability SID, not a logon SID, not RESTRICTED or Everyone.
    for set in RestrictingSet::ALL {
        for sid in restricting_sids(cap, Some(sandbox), set) {
            assert!(!sd.contains(&format!(";;;{sid})")), "{sid} in {sd}");
        }
    }
    // The runner's own default DACL (job, console host, command when unrestricted):
    // the run's logon SID, never the sandbox user.
    let d = runner_default_dacl_sddl(sandbox, cap, user, "S-1-5-5-0-7");
    assert!(
        d.contains("(A;;GA;;;S-1-5-5-0-7)") && d.contains(user),
        "{d}"
    );
    assert!(!d.contains(sandbox), "{d}");
    assert!(d.ends_with("(A;;RC;;;S-1-3-4)"), "{d}");
}

#[test]
fn writable_roots_take_the_owners_implicit_write_dac_away() {
    let p = policy(WS);
    for ctx in [
        WindowsContext::example(&p),
        WindowsContext::example(&p).without_setup(),
    ] {
        let mut allowed = p.clone();
        allowed.allow_degraded = true;
        let plan = plan(&allowed, &repo_layout(WS), &ctx).unwrap();
        let temp = plan.temp_dir.clone();
        for root in [WS.to_string(), temp] {
            let ow: Vec<_> = plan
                .aces
                .iter()
                .filter(|a| a.path == root && a.ace.sid == sids::OWNER_RIGHTS)
                .collect();
            assert_eq!(ow.len(), 1, "{root}: {ow:?}");
            let a = &ow[0].ace;
            assert_eq!(a.sddl(), "(A;OICIIO;0x1301bf;;;S-1-3-4)");
            assert_eq!(a.mask & (rights::WRITE_DAC | rights::WRITE_OWNER), 0);
            assert_eq!(a.inherit, Inherit::InheritOnly);
        }
        // Never on a read root or a protected path.
        assert!(plan
            .aces
            .iter()
            .filter(|a| a.ace.sid == sids::OWNER_RIGHTS)
            .all(|a| a.purpose == AcePurpose::Write));
    }
}

#[test]
fn no_setup_desktop_is_not_a_boundary() {
    let p = policy(WS);
    let mut allowed = p.clone();
    allowed.allow_degraded = true;
    let without = plan(
        &allowed,
        &repo_layout(WS),
        &WindowsContext::example(&p).without_setup(),
    )
    .unwrap();
    let procs = without
        .layers
        .iter()
        .find(|l| l.layer == "processes")
        .unwrap();
    assert_eq!(procs.state, Enforcement::Partial);
    assert!(procs.detail.contains("WinSta0"), "{}", procs.detail);
    assert!(procs.detail.contains("workfence setup"), "{}", procs.detail);
    // With setup the run's own logon SID is not granted on WinSta0: full.
    let with = build(&p, &repo_layout(WS));
    let procs = with.layers.iter().find(|l| l.layer == "processes").unwrap();
    assert_eq!(procs.state, Enforcement::Full);
    // Full access has only the job, which is full.
    let mut full = p.clone();
    full.mode = Mode::FullAccess;
    assert!(build(&full, &repo_layout(WS)).degraded().is_empty());
}

#[test]
fn network_off_names_the_service_leaks() {
    let p = policy(WS);
    let plan = build(&p, &repo_layout(WS));
    // The offline user's own connections are blocked: that layer is full.
    let net = plan.layers.iter().find(|l| l.layer == "network").unwrap();
    assert_eq!(net.state, Enforcement::Full);
    // What Windows does for it outside the filters is named, as a platform limit.
    let leak = plan
        .layers
        .iter()
        .find(|l| l.layer == PLATFORM_LIMIT_NETWORK)
        .unwrap();
    assert_eq!(leak.state, Enforcement::Partial);
    for want in ["DNS Client", "Dnscache", "SMB", "redirector", "README"] {
        assert!(leak.detail.contains(want), "{want}: {}", leak.detail);
    }
    // ... shown, but, like macOS's built-in process cap, not a refusal: with setup a
    // default run starts.
    assert!(plan.degraded().is_empty(), "{:?}", plan.degraded());
    assert!(plan.refusal().is_none());
    // Direct DNS and SMB connections stay blocked by the filters.
    let names: Vec<_> = plan
        .network
        .filters
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert!(names.iter().any(|n| n.contains("DNS")));
    assert!(names.iter().any(|n| n.contains("SMB")));
    // Network on: nothing to restrict.
    let mut on = p.clone();
    on.network = Network::On;
    let on = build(&on, &repo_layout(WS));
    let net = on.layers.iter().find(|l| l.layer == "network").unwrap();
    assert_eq!(net.state, Enforcement::Full);
}

#[test]
fn partial_propagation_of_a_deny_stops_the_run() {
    use workfence_windows::{on_partial_propagation, PartialPropagation};
    use AcePurpose::*;
    assert_eq!(
        on_partial_propagation(&[Write, Write]),
        PartialPropagation::ThisObjectOnly
    );
    assert_eq!(
        on_partial_propagation(&[Read]),
        PartialPropagation::ThisObjectOnly
    );
    for deny in [Protect, ProtectChild, Hide] {
        assert_eq!(on_partial_propagation(&[deny]), PartialPropagation::Refuse);
        // A grant on the same object does not soften it.
        assert_eq!(
            on_partial_propagation(&[Write, deny]),
            PartialPropagation::Refuse
        );
    }
    // Every tree deny the plan makes is one that refuses.
    let plan = build(&policy(WS), &repo_layout(WS));
    for a in plan
        .aces
        .iter()
        .filter(|a| a.ace.kind == AceKind::Deny && a.ace.inherit == Inherit::Tree)
    {
        assert_eq!(
            on_partial_propagation(&[a.purpose]),
            PartialPropagation::Refuse,
            "{}",
            a.path
        );
    }
    let e = WindowsError::PartialDeny {
        path: r"C:\w\.git\hooks".into(),
        cause: "access denied".into(),
    };
    let msg = e.to_string();
    assert!(msg.contains("stopped") && msg.contains("cleanup"), "{msg}");
}

#[test]
fn elevated_tokens_are_lowered_to_medium_never_raised() {
    use workfence_windows::{lowered_integrity, MEDIUM_INTEGRITY_SID};
    assert_eq!(MEDIUM_INTEGRITY_SID, format!("S-1-16-{}", 0x2000));
    // High (elevated without setup) and System: lowered to Medium.
    assert_eq!(lowered_integrity(0x3000), Some(0x2000));
    assert_eq!(lowered_integrity(0x4000), Some(0x2000));
    // Medium (the sandbox users, a normal prompt) and below: left alone.
    assert_eq!(lowered_integrity(0x2000), None);
    assert_eq!(lowered_integrity(0x2100), Some(0x2000));
    assert_eq!(lowered_integrity(0x1000), None);
}

/// The apply layer's launch decisions, as `win/` executes them: the handover order and
/// the creation flags of each launch (a change to either shows in review).
#[test]
fn apply_launch_decisions_snapshot() {
    use workfence_windows::decisions::{launch_flags, Launch, HANDOVER};
    let flags: Vec<String> = [Launch::Pipes, Launch::Pty, Launch::Seclogon]
        .into_iter()
        .map(|l| {
            let f = launch_flags(l);
            format!(
                "{l:?}: creation={:#010x} startf={:#06x} show={} std={:?} inherit={} logon={:#x}",
                f.creation, f.startf, f.show_window, f.std_handles, f.inherit_handles, f.logon
            )
        })
        .collect();
    let steps: Vec<String> = HANDOVER.iter().map(|s| format!("{s:?}")).collect();
    insta::assert_snapshot!(
        "apply-launch-decisions",
        format!(
            "handover:\n  {}\nflags:\n  {}",
            steps.join("\n  "),
            flags.join("\n  ")
        )
    );
}

/// `GetLastError` is read before anything that may allocate: in the apply layer's one
/// FFI module, no `last_error()` call shares a statement with a `format!`, `to_string`
/// or `String` built before it (the helpers `check`, `check_lazy` and
/// `decisions::check_last_error` take the message as `'static` text or a closure).
#[test]
fn last_error_is_read_before_formatting() {
    let src = include_str!("../src/win/sys.rs");
    let mut checked = 0;
    for (i, _) in src.match_indices("last_error()") {
        let before = &src[..i];
        // Statement boundaries of rustfmt'd code end a line (a `{` inside a format
        // string does not).
        let start = [";\n", "{\n", "}\n"]
            .iter()
            .filter_map(|d| before.rfind(d).map(|s| s + d.len()))
            .max()
            .unwrap_or(0);
        let stmt = &src[start..i];
        for bad in ["format!", "to_string", "String::", "to_owned", "vec!"] {
            assert!(
                !stmt.contains(bad),
                "sys.rs: `{bad}` runs before last_error() in:\n{stmt}last_error()"
            );
        }
        checked += 1;
    }
    assert!(checked > 10, "found only {checked} reads of last_error()");
}

#[test]
fn boot_task_reapplies_the_null_device_grant_as_system_at_startup() {
    use workfence_windows::cmdline::split_command_line;
    use workfence_windows::{boot_exe_path, boot_task, BOOT_TASK_NAME, REPAIR_NULL_DEVICE_FLAG};
    let exe = boot_exe_path(r"C:\Program Files\");
    assert_eq!(exe, r"C:\Program Files\workfence\workfence-boot.exe");
    let t = boot_task(&exe).unwrap();
    assert_eq!(
        t.command_line,
        format!("\"{exe}\" {REPAIR_NULL_DEVICE_FLAG}")
    );
    assert_eq!(
        split_command_line(&t.command_line),
        [exe.as_str(), REPAIR_NULL_DEVICE_FLAG]
    );
    let pair = |flag: &str| {
        let i = t.create.iter().position(|a| a == flag).unwrap();
        t.create[i + 1].clone()
    };
    assert_eq!(pair("/TN"), BOOT_TASK_NAME);
    assert_eq!(pair("/SC"), "ONSTART");
    assert_eq!(pair("/RU"), "SYSTEM");
    assert_eq!(pair("/RL"), "HIGHEST");
    assert_eq!(pair("/TR"), t.command_line);
    assert_eq!(t.create[0], "/Create");
    assert!(t.create.contains(&"/F".to_string()));
    assert_eq!(t.delete, ["/Delete", "/F", "/TN", BOOT_TASK_NAME]);
    assert_eq!(t.query, ["/Query", "/TN", BOOT_TASK_NAME]);
    insta::assert_yaml_snapshot!("boot-task", t);

    // Names cmd.exe would care about are fine: Task Scheduler starts the program
    // directly, and the argv round-trips.
    for odd in [
        r"C:\Pro & gram (x86); files\wf\workfence-boot.exe",
        r"C:\ü ß\workfence-boot.exe",
    ] {
        let t = boot_task(odd).unwrap();
        assert_eq!(
            split_command_line(&t.command_line),
            [odd, REPAIR_NULL_DEVICE_FLAG]
        );
    }
    // What cannot be passed safely is refused, naming the task.
    for bad in [
        r"C:\%SystemRoot%\workfence-boot.exe",
        "C:\\a\"b\\workfence-boot.exe",
        "C:\\a\nb\\workfence-boot.exe",
        "C:\\a\0b\\workfence-boot.exe",
        r"workfence-boot.exe",
        r"\\server\share\workfence-boot.exe",
        r"\\.\pipe\x",
    ] {
        let e = boot_task(bad).unwrap_err().to_string();
        assert!(e.contains(BOOT_TASK_NAME), "{bad:?}: {e}");
    }
    let long = format!(r"C:\{}\workfence-boot.exe", "x".repeat(240));
    let e = boot_task(&long).unwrap_err().to_string();
    assert!(e.contains("261"), "{e}");
}

#[test]
fn a_lost_null_device_grant_refuses_the_run_naming_the_repair() {
    use workfence_windows::{null_device_check, NullDeviceCheck};
    for task in [Some(true), Some(false), None] {
        assert!(matches!(
            null_device_check(Some(true), task, false),
            NullDeviceCheck::Run
        ));
        assert!(matches!(
            null_device_check(None, task, false),
            NullDeviceCheck::Run
        ));
        match null_device_check(Some(false), task, false) {
            NullDeviceCheck::Refuse(e) => {
                let m = e.to_string();
                assert!(m.contains("`workfence setup`"), "{m}");
                assert!(m.contains("elevated"), "{m}");
                assert!(m.contains(r"\workfence\repair-null-device"), "{m}");
                assert!(m.contains("--allow-degraded"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            null_device_check(Some(false), task, true),
            NullDeviceCheck::Warn(w) if w.contains("workfence setup")
        ));
    }
    let m = |task| match null_device_check(Some(false), task, false) {
        NullDeviceCheck::Refuse(e) => e.to_string(),
        _ => unreachable!(),
    };
    assert!(m(Some(false)).contains("not registered"));
    assert!(m(Some(true)).contains("has not run"));
}
