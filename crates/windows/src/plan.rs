//! The Windows plan: which token, ACEs, filters, job limits and environment a policy
//! becomes. Pure data, built and tested on every OS; the apply layer only executes it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use workfence_policy::layout::{FileKind, FsLayout, Protection};
use workfence_policy::{Enforcement, LayerStatus, Mode, Network, Policy};

use crate::error::WindowsError;
use crate::path::WinPath;
use crate::sddl::{rights, Ace, AceKind, Inherit};

/// The local group both sandbox users belong to.
pub const GROUP_NAME: &str = "workfence-sandbox";
/// The hidden local user that runs commands with the network off.
pub const OFFLINE_USER: &str = "wf-offline";
/// The hidden local user that runs commands with the network on.
pub const ONLINE_USER: &str = "wf-online";
/// The loopback port of workfence's proxy that the offline user may reach.
pub const DEFAULT_PROXY_PORT: u16 = 47380;
/// The ACL journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "acl-journal.jsonl";

/// Well-known SIDs named in plans.
pub mod sids {
    /// Everyone.
    pub const EVERYONE: &str = "S-1-1-0";
    /// BUILTIN\Users.
    pub const USERS: &str = "S-1-5-32-545";
    /// NT AUTHORITY\Authenticated Users.
    pub const AUTHENTICATED_USERS: &str = "S-1-5-11";
    /// NT AUTHORITY\SYSTEM.
    pub const SYSTEM: &str = "S-1-5-18";
    /// NT AUTHORITY\RESTRICTED.
    pub const RESTRICTED: &str = "S-1-5-12";
    /// OWNER RIGHTS: an ACE for it replaces the owner's implicit rights.
    pub const OWNER_RIGHTS: &str = "S-1-3-4";
}

/// Stands for the logon SID of the command's token in [`restricting_sids`]: it is only
/// known at run time (the runner reads it from its own token).
pub const LOGON_SID: &str = "logon";

/// How the job object holds the command. Windows refuses to nest a job that has UI
/// limits (`JOBOBJECT_BASIC_UI_RESTRICTIONS`), and a process started through
/// `CreateProcessWithLogonW` is always already in the Secondary Logon service's job, as
/// is workfence itself under `cargo test` or a CI runner: so the job has no UI limits
/// (the private desktop does that job) and relies on nested jobs (Windows 8 and later).
pub const JOB_NESTING: &[&str] = &[
    "no JOBOBJECT_BASIC_UI_RESTRICTIONS: a job with UI limits cannot be nested, and the runner is always in seclogon's job (the private desktop confines windows instead)",
    "without setup: the command is created in the job (PROC_THREAD_ATTRIBUTE_JOB_LIST), so it runs no instruction outside it, even when workfence itself runs in a job",
    "with setup: the suspended runner is assigned to the job (nested under seclogon's); if Windows refuses, the runner creates the kill-on-close job itself, creates the command in it with PROC_THREAD_ATTRIBUTE_JOB_LIST and hands workfence a handle to it",
];

/// Which SIDs the restricted token's restricting list holds beyond the minimum.
///
/// The minimum (`Narrow`) is the workspace's capability SID, the logon SID and, with
/// setup, the sandbox user's own SID. Wider sets exist because whether real tools run
/// with the minimum can only be measured on a real Windows machine (`workfence
/// selftest` records the set that worked, see [`WindowsContext::restricting`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestrictingSet {
    /// Capability SID, logon SID, and with setup the sandbox user's SID.
    #[default]
    Narrow,
    /// Narrow plus `RESTRICTED` (`S-1-5-12`), which many system objects grant to
    /// restricted code (named objects, devices); few directories grant it writes.
    Restricted,
    /// Restricted plus `Everyone`: every world-writable directory becomes writable from
    /// the sandbox (reported as a partly enforced filesystem layer).
    Everyone,
}

impl RestrictingSet {
    /// Every set, narrowest first (the order `selftest` tries them in).
    pub const ALL: [RestrictingSet; 3] = [
        RestrictingSet::Narrow,
        RestrictingSet::Restricted,
        RestrictingSet::Everyone,
    ];

    /// The name used in state files and reports.
    pub fn name(self) -> &'static str {
        match self {
            RestrictingSet::Narrow => "narrow",
            RestrictingSet::Restricted => "restricted",
            RestrictingSet::Everyone => "everyone",
        }
    }
}

/// The restricting SIDs of a command's token, in order: the capability SID, the logon
/// SID ([`LOGON_SID`], filled in at run time), the sandbox user's SID when the command
/// runs as one, then what `set` adds.
///
/// The sandbox user's SID is there because a named pipe created with the default
/// security descriptor grants its *owner* (the token user), not the token's default
/// DACL: without the user's SID the restricted check fails and a process cannot open
/// its own pipe for writing (libuv's piped stdio in Node, Python's multiprocessing,
/// Ninja, MSBuild). The invoking user's SID is never added: it is granted on the whole
/// profile, which would make the write restriction void.
pub fn restricting_sids(cap: &str, sandbox_user: Option<&str>, set: RestrictingSet) -> Vec<String> {
    let mut out = vec![cap.to_string(), LOGON_SID.to_string()];
    if let Some(u) = sandbox_user {
        out.push(u.to_string());
    }
    if set != RestrictingSet::Narrow {
        out.push(sids::RESTRICTED.to_string());
    }
    if set == RestrictingSet::Everyone {
        out.push(sids::EVERYONE.to_string());
    }
    out
}

/// The Medium mandatory integrity level (`S-1-16-8192`). A restricted token keeps its
/// base token's integrity level, so an elevated invoking user without setup would run
/// the command at High: above every Medium process of the user's desktop session,
/// which integrity checks (UIPI, process and object access) then do not protect from
/// it. The command's token is lowered to Medium whenever its base is above it.
pub const MEDIUM_INTEGRITY_SID: &str = "S-1-16-8192";

/// The integrity level RID (the last sub-authority of an `S-1-16-x` label SID) a
/// command's token must be set to, given its base token's: `Some(Medium)` when the base
/// is above Medium, `None` to leave it (never raised: that needs a privilege and
/// would give the command more than its caller has).
pub fn lowered_integrity(base_rid: u32) -> Option<u32> {
    const MEDIUM: u32 = 0x2000;
    (base_rid > MEDIUM).then_some(MEDIUM)
}

/// SIDs made deny-only in every command's token (`SidsToDisable`): an elevated
/// invoking user without setup would otherwise pass write checks as Administrators
/// (`LUA_TOKEN` filters privileges, not every group). Absent SIDs are ignored.
pub const DISABLED_SIDS: &[(&str, &str)] = &[
    ("S-1-5-32-544", "BUILTIN\\Administrators"),
    (
        "S-1-5-114",
        "Local account and member of Administrators group",
    ),
    ("S-1-5-32-551", "BUILTIN\\Backup Operators"),
];

/// The entries of a command's default DACL (the DACL of every object it creates without
/// an explicit one: processes, threads, events, sections), as (SID, SDDL rights).
///
/// - Without setup (`token_user == invoking_user`): the token user, the capability SID,
///   SYSTEM. Not the logon SID: it is the interactive session's, shared by every
///   sandboxed command of the user, so another workspace's command would pass both
///   checks on these objects.
/// - With setup: the run's own logon SID (every `CreateProcessWithLogonW` makes a new
///   logon session), the capability SID, SYSTEM and the invoking user. Not the sandbox
///   user: its SID is a restricting SID of *every* run as that user, so a command of
///   another workspace would pass both checks on this command's processes.
/// - Always `OWNER RIGHTS` with `READ_CONTROL` only, so that the owner (the token user)
///   gets no implicit `WRITE_DAC` it could use to re-open the objects.
///
/// `logon` is the logon SID, or [`LOGON_SID`] in a plan.
pub fn default_dacl_entries(
    token_user: &str,
    cap: &str,
    invoking_user: &str,
    logon: &str,
) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if token_user == invoking_user {
        out.push((token_user.to_string(), "GA"));
    } else {
        out.push((logon.to_string(), "GA"));
    }
    out.push((cap.to_string(), "GA"));
    out.push((sids::SYSTEM.to_string(), "GA"));
    if token_user != invoking_user {
        out.push((invoking_user.to_string(), "GA"));
    }
    out.push((sids::OWNER_RIGHTS.to_string(), "RC"));
    out
}

/// [`default_dacl_entries`] as SDDL (`D:...`).
pub fn default_dacl_sddl(token_user: &str, cap: &str, invoking_user: &str, logon: &str) -> String {
    let mut s = String::from("D:");
    for (sid, mask) in default_dacl_entries(token_user, cap, invoking_user, logon) {
        s.push_str(&format!("(A;;{mask};;;{sid})"));
    }
    s
}

/// The DACL workfence puts on the runner's process and main thread while it is still
/// suspended (`SetSecurityInfo`), replacing the one they got from the seclogon token's
/// default DACL, which grants the sandbox user full access. The sandbox user's SID is
/// a restricting SID of every command that runs as that user, so with that DACL
/// another run's command would pass both access checks for `PROCESS_ALL_ACCESS` on
/// this unrestricted runner: inject code, duplicate its control pipe handle, read the
/// request or forge the reply. Only SYSTEM and the invoking user (never a restricting
/// SID) get access; `OWNER RIGHTS` with `READ_CONTROL` only takes away the owner's
/// (the sandbox user's) implicit `WRITE_DAC`. Protected, so nothing is inherited.
pub fn runner_object_sddl(invoking_user: &str) -> String {
    format!(
        "D:P(A;;GA;;;{})(A;;GA;;;{invoking_user})(A;;RC;;;{})",
        sids::SYSTEM,
        sids::OWNER_RIGHTS
    )
}

/// The default DACL the runner sets on its own token as its first action after it has
/// read the request, before it creates a job, a ConPTY (whose console host is a
/// process of the runner's token) or the command: the per-run one of
/// [`default_dacl_entries`] (this run's logon SID, the capability SID, SYSTEM, the
/// invoking user, `OWNER RIGHTS` read-only), never the sandbox user.
pub fn runner_default_dacl_sddl(
    sandbox_user: &str,
    cap: &str,
    invoking_user: &str,
    logon: &str,
) -> String {
    default_dacl_sddl(sandbox_user, cap, invoking_user, logon)
}

/// Account rights `workfence setup` gives both sandbox users: they must never log on
/// over the network, by Remote Desktop, as a batch job or as a service. Interactive
/// logon stays allowed: `CreateProcessWithLogonW` needs it.
pub const DENY_LOGON_RIGHTS: &[&str] = &[
    "SeDenyNetworkLogonRight",
    "SeDenyRemoteInteractiveLogonRight",
    "SeDenyBatchLogonRight",
    "SeDenyServiceLogonRight",
];

/// The DACL of a run's private window station and desktop: SYSTEM, the invoking user
/// (who creates and closes them), the account the command runs as (with
/// `CreateProcessWithLogonW` and an explicit desktop, granting the account is the
/// caller's job) and the capability SID (the restricted check of an open). Nobody
/// else, so no other process can hook or inject input there, and the command shares no
/// clipboard, atoms or hooks with the user's desktop.
pub fn desktop_sddl(invoking_user: &str, token_user: &str, cap: &str) -> String {
    let mut sids = vec![sids::SYSTEM, invoking_user, token_user, cap];
    sids.dedup();
    let mut out = String::from("D:P");
    for s in sids {
        out.push_str(&format!("(A;;GA;;;{s})"));
    }
    out
}

/// The DACL of the runner's control pipe: SYSTEM and the invoking user get all access,
/// the sandbox user read/write (`0x12019f`). The command's restricted token passes the
/// normal check as the sandbox user, so the DACL alone does not keep another run's
/// command out: the server also checks the client's process id.
pub fn control_pipe_sddl(invoking_user: &str, sandbox_user: &str) -> String {
    format!("D:P(A;;GA;;;SY)(A;;GA;;;{invoking_user})(A;;0x12019f;;;{sandbox_user})")
}

/// The ACE `workfence setup` adds to the null device (`\\.\NUL`) for a sandbox user,
/// whose SID is a restricting SID: file read, write and execute (`0x1201bf`, what
/// `GRGWGX` maps to for files), as the device grants Everyone. The device's security descriptor is not persistent: it is back to
/// the default after every boot, so setup re-applies it and `doctor` reports it.
pub fn null_device_ace(sandbox_user: &str) -> crate::sddl::Ace {
    crate::sddl::Ace {
        kind: AceKind::Allow,
        sid: sandbox_user.to_string(),
        mask: 0x1201bf,
        inherit: Inherit::None,
    }
}

/// The Task Scheduler task `workfence setup` registers to re-apply the null device
/// grant at every boot ([`null_device_ace`] lasts until the next boot only).
pub const BOOT_TASK_NAME: &str = r"\workfence\repair-null-device";

/// The hidden first argument with which a workfence binary re-applies the null device
/// grant and exits (the boot task runs it as SYSTEM). It takes no other argument: the
/// sandbox users' SIDs are looked up from their fixed names, so nothing on the task's
/// command line comes from anyone but setup.
pub const REPAIR_NULL_DEVICE_FLAG: &str = "--workfence-windows-repair-null-device";

/// A local account's name qualified with the computer's (`COMPUTER\\name`), as
/// `LookupAccountNameW` is given it: unqualified, it would also search the domain.
pub fn local_account_name(computer: &str, name: &str) -> String {
    format!("{computer}\\{name}")
}

/// The longest `/TR` value `schtasks /Create` accepts.
pub const SCHTASKS_TR_MAX: usize = 261;

/// Where setup copies the workfence executable for the boot task:
/// `%ProgramFiles%\workfence\workfence-boot.exe`. A task that runs as SYSTEM must not
/// run a file the user (or a sandboxed command) can replace: wherever the user keeps
/// workfence (`~\.cargo\bin`) is writable without elevation, so that path would turn
/// the task into a way to SYSTEM. Only administrators can create or change anything
/// below Program Files, and nobody else can have created the directory beforehand.
pub fn boot_exe_path(program_files: &str) -> String {
    format!(
        "{}\\workfence\\workfence-boot.exe",
        program_files.trim_end_matches(['\\', '/'])
    )
}

/// The `schtasks.exe` arguments that register, remove and query the boot task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootTask {
    /// The task's action: the command line Task Scheduler runs as SYSTEM.
    pub command_line: String,
    /// `schtasks /Create ...` (replaces an existing task of the same name).
    pub create: Vec<String>,
    /// `schtasks /Delete ...`.
    pub delete: Vec<String>,
    /// `schtasks /Query ...` (exit status 0 when the task exists).
    pub query: Vec<String>,
}

/// The boot task for the executable at `exe` ([`boot_exe_path`]): at startup, as
/// SYSTEM with the highest privileges, `exe` [`REPAIR_NULL_DEVICE_FLAG`]. The command
/// line is built by [`crate::cmdline::command_line`] (the one quoting place), and
/// refused when it cannot be passed safely: a `%` (Task Scheduler expands
/// `%VARIABLE%` in an action), a quote or NUL (no Windows command line carries them in
/// a program name), a relative path, or more than `schtasks`'s 261 characters.
pub fn boot_task(exe: &str) -> Result<BootTask, WindowsError> {
    let err = |why: String| WindowsError::BootTask {
        task: BOOT_TASK_NAME.into(),
        why,
    };
    if exe.contains('%') {
        return Err(err(format!("its program path {exe:?} contains %, which Task Scheduler would expand; install workfence under a path without %")));
    }
    if exe.contains(['\n', '\r']) {
        return Err(err(format!(
            "its program path {exe:?} contains a line break"
        )));
    }
    match WinPath::parse(exe) {
        Ok(p) if !p.is_unc() => {}
        _ => {
            return Err(err(format!(
                "its program path {exe:?} is not an absolute path on a local drive"
            )))
        }
    }
    let line = crate::cmdline::command_line(&[exe, REPAIR_NULL_DEVICE_FLAG])
        .map_err(|e| err(e.to_string()))?;
    let n = line.encode_utf16().count();
    if n > SCHTASKS_TR_MAX {
        return Err(err(format!(
            "its command line is {n} characters long; schtasks accepts {SCHTASKS_TR_MAX}: set ProgramFiles to a shorter path"
        )));
    }
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>();
    let mut create = s(&[
        "/Create",
        "/F",
        "/TN",
        BOOT_TASK_NAME,
        "/SC",
        "ONSTART",
        "/RU",
        "SYSTEM",
        "/RL",
        "HIGHEST",
        "/TR",
    ]);
    create.push(line.clone());
    Ok(BootTask {
        command_line: line,
        create,
        delete: s(&["/Delete", "/F", "/TN", BOOT_TASK_NAME]),
        query: s(&["/Query", "/TN", BOOT_TASK_NAME]),
    })
}

/// `schtasks /Query /XML` of the boot task: its definition, checked after
/// registration with [`boot_task_xml_check`].
pub fn boot_task_query_xml() -> Vec<String> {
    ["/Query", "/TN", BOOT_TASK_NAME, "/XML"]
        .iter()
        .map(|x| (*x).to_string())
        .collect()
}

/// The text between the first `<tag>` and the following `</tag>` (XML entities
/// decoded), if any.
fn xml_element(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    let raw = &xml[start..start + len];
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let semi = rest[i..].find(';')? + i;
        let ent = &rest[i + 1..semi];
        let c = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let n = match ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X")) {
                    Some(h) => u32::from_str_radix(h, 16).ok(),
                    None => ent.strip_prefix('#').and_then(|d| d.parse().ok()),
                };
                char::from_u32(n?)?
            }
        };
        out.push(c);
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Some(out.trim().to_string())
}

/// Whether the registered boot task (`xml`, its definition as `schtasks /Query /XML`
/// prints it) is the one setup meant: it runs as LocalSystem (`S-1-5-18`), and its
/// one action runs `exe` with exactly [`REPAIR_NULL_DEVICE_FLAG`]. A task of the
/// same name that someone else registered (or that schtasks registered differently)
/// would run other code as SYSTEM at every boot, or not repair anything; the caller
/// removes it and refuses. The program path is compared case-insensitively, with
/// the quotes schtasks may keep around it removed.
pub fn boot_task_xml_check(xml: &str, exe: &str) -> Result<(), String> {
    let principal = xml_element(xml, "Principals")
        .ok_or("the task definition has no principal (Principals element)")?;
    let user = xml_element(&principal, "UserId").unwrap_or_default();
    let system = ["S-1-5-18", "SYSTEM", "NT AUTHORITY\\SYSTEM"];
    if !system.iter().any(|s| s.eq_ignore_ascii_case(&user)) {
        return Err(format!(
            "the task runs as {user:?}, not as SYSTEM (S-1-5-18)"
        ));
    }
    if xml.matches("<Exec>").count() != 1 {
        return Err("the task does not have exactly one program action".into());
    }
    let command = xml_element(xml, "Command").unwrap_or_default();
    let command = command.trim_matches('"');
    if !command.eq_ignore_ascii_case(exe) {
        return Err(format!("the task runs {command:?}, not {exe:?}"));
    }
    let args = xml_element(xml, "Arguments").unwrap_or_default();
    if args != REPAIR_NULL_DEVICE_FLAG {
        return Err(format!(
            "the task passes {args:?}, not {REPAIR_NULL_DEVICE_FLAG:?}"
        ));
    }
    Ok(())
}

/// What a run as a sandbox user does about the null device grant, given whether the
/// device grants the sandbox users now (`None`: unknown, or no setup) and whether
/// the boot task is registered (`None`: unknown).
#[derive(Debug)]
pub enum NullDeviceCheck {
    /// The grant is there (or cannot be judged): run.
    Run,
    /// Gone, and the run may be degraded: run, with this note.
    Warn(String),
    /// Gone: refuse with this error (it names the repair command).
    Refuse(WindowsError),
}

/// See [`NullDeviceCheck`]. The grant is a compatibility matter (without it `> NUL`
/// fails in the sandbox), not a boundary, but a run that breaks every build script
/// in a confusing way is worse than a clear refusal that says how to repair it.
pub fn null_device_check(
    granted: Option<bool>,
    boot_task: Option<bool>,
    allow_degraded: bool,
) -> NullDeviceCheck {
    if granted != Some(false) {
        return NullDeviceCheck::Run;
    }
    let why = match boot_task {
        Some(true) => format!("and the boot task {BOOT_TASK_NAME} that re-applies the grant has not run (or failed; Task Scheduler shows its last result)"),
        Some(false) => format!("and the boot task {BOOT_TASK_NAME} that would re-apply the grant is not registered"),
        None => format!("and the boot task {BOOT_TASK_NAME} could not be queried"),
    };
    if allow_degraded {
        NullDeviceCheck::Warn(format!(
            "the null device does not grant the sandbox users ({why}): redirects to NUL fail in the sandbox; run `workfence setup` (elevated) to repair"
        ))
    } else {
        NullDeviceCheck::Refuse(WindowsError::NullDeviceLost { why })
    }
}

/// The environment that makes git accept a workspace owned by another account (the
/// command runs as the sandbox user, the workspace belongs to the invoking user):
/// `safe.directory` through `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`,
/// appended after the entries the caller already passes, never by writing a config
/// file. `existing` is the command's environment (names compared case-insensitively).
pub fn git_safe_directory_env(
    existing: &[(String, String)],
    workspace: &str,
) -> Vec<(String, String)> {
    let get = |n: &str| {
        existing
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let n: usize = get("GIT_CONFIG_COUNT")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // git compares safe.directory with forward slashes on Windows.
    let value = workspace.replace('\\', "/");
    vec![
        ("GIT_CONFIG_COUNT".to_string(), (n + 1).to_string()),
        (format!("GIT_CONFIG_KEY_{n}"), "safe.directory".to_string()),
        (format!("GIT_CONFIG_VALUE_{n}"), value),
    ]
}

/// What `workfence setup` installed (read from the state directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SandboxUsers {
    /// The local group.
    pub group_name: String,
    /// Its SID.
    pub group_sid: String,
    /// The offline user.
    pub offline_user: String,
    /// Its SID (the WFP filters match it).
    pub offline_sid: String,
    /// The online user.
    pub online_user: String,
    /// Its SID.
    pub online_sid: String,
    /// The proxy port the filters let through.
    pub proxy_port: u16,
}

/// Everything the plan needs to know about the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowsContext {
    /// The invoking user (`DOMAIN\name`).
    pub user_name: String,
    /// The invoking user's SID.
    pub user_sid: String,
    /// `%USERPROFILE%`.
    pub profile_dir: String,
    /// `%SystemRoot%`.
    pub windows_dir: String,
    /// `C:\Users`, `C:\Program Files`, `C:\Program Files (x86)`, `C:\ProgramData`:
    /// shared roots on which nothing is ever granted.
    pub shared_roots: Vec<String>,
    /// workfence's state directory (journal, capability SIDs, credentials); never
    /// writable from the sandbox.
    pub state_dir: String,
    /// Parent of the private temp directories.
    pub temp_root: String,
    /// A stable id of the workspace (hash of its normalized path).
    pub workspace_id: String,
    /// The per-workspace capability SID (random, stored in the state directory).
    pub capability_sid: String,
    /// Proxy port for network-off and proxy runs.
    pub proxy_port: u16,
    /// What setup installed; `None` when setup has not run.
    pub users: Option<SandboxUsers>,
    /// Paths the sandbox users may read although they cannot read the profile:
    /// toolchains such as `.cargo` and `.rustup`, and the runner executable.
    pub read_roots: Vec<String>,
    /// `cmd.exe`, for batch files.
    pub cmd_exe: String,
    /// Unix paths in the policy were mapped to this form (explain on a non-Windows host).
    pub mapped_from_unix: bool,
    /// The restricting set to use (measured by `workfence selftest` and recorded in the
    /// state directory; [`RestrictingSet::Narrow`] until then).
    pub restricting: RestrictingSet,
    /// Whether the WebClient service can start (installed and not disabled): WebDAV
    /// paths (`\\host@80\x`) are then opened by that service, as LOCAL SERVICE,
    /// outside the offline user's filters. `None` when unknown.
    pub webdav_client: Option<bool>,
}

/// FNV-1a, for stable ids (not a security boundary: the capability SID is random).
fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The workspace id for a normalized workspace path.
pub fn workspace_id(ws: &WinPath) -> String {
    format!("{:016x}", fnv64(&ws.key()))
}

/// A capability SID from 16 random bytes: `S-1-5-21-a-b-c-d`. The form of a machine
/// or domain account SID, so every tool displays it, but no account has it.
pub fn capability_sid_from_bytes(b: &[u8; 16]) -> String {
    let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    format!("S-1-5-21-{}-{}-{}-{}", w(0), w(4), w(8), w(12))
}

/// Maps a policy path to Windows form. On Windows paths are Windows paths; when a
/// plan is explained on another host, `/home/u/x` and `/Users/u/x` become
/// `C:\Users\u\x` and other absolute paths `C:\...`, for illustration.
pub fn to_win(p: &Path) -> Result<WinPath, crate::path::PathError> {
    let s = p.to_string_lossy();
    match WinPath::parse(&s) {
        Ok(w) => Ok(w),
        Err(e) => {
            if cfg!(windows) || !s.starts_with('/') {
                return Err(e);
            }
            let mut parts: Vec<&str> = s.split('/').filter(|c| !c.is_empty()).collect();
            if parts.len() >= 2 && (parts[0] == "home" || parts[0] == "Users") {
                parts[0] = "Users";
            }
            WinPath::parse(&format!("C:\\{}", parts.join("\\")))
        }
    }
}

fn win(p: &Path, what: &str) -> Result<WinPath, WindowsError> {
    to_win(p).map_err(|source| WindowsError::BadPath {
        what: what.to_string(),
        source,
    })
}

fn win_str(p: &str, what: &str) -> Result<WinPath, WindowsError> {
    WinPath::parse(p).map_err(|source| WindowsError::BadPath {
        what: what.to_string(),
        source,
    })
}

impl WindowsContext {
    /// A deterministic context for `explain` and snapshots on any host: user `dev`,
    /// profile `C:\Users\dev` (or the profile the workspace lies in), setup done.
    pub fn example(policy: &Policy) -> Self {
        let ws = to_win(&policy.workspace).ok();
        let user = ws
            .as_ref()
            .and_then(|w| match (w.root(), w.components()) {
                (crate::path::Root::Drive('C'), [users, name, ..])
                    if users.eq_ignore_ascii_case("Users") =>
                {
                    Some(name.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| "dev".to_string());
        let profile = format!("C:\\Users\\{user}");
        let id = ws
            .as_ref()
            .map(workspace_id)
            .unwrap_or_else(|| "0".repeat(16));
        let h = fnv64(&id).to_le_bytes();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&h);
        bytes[8..].copy_from_slice(&fnv64(&format!("{id}:cap")).to_le_bytes());
        let machine = "S-1-5-21-1004336348-1177238915-682003330";
        WindowsContext {
            user_name: format!("DEVBOX\\{user}"),
            user_sid: format!("{machine}-1001"),
            read_roots: vec![format!("{profile}\\.cargo"), format!("{profile}\\.rustup")],
            state_dir: format!("{profile}\\AppData\\Local\\workfence\\state"),
            temp_root: format!("{profile}\\AppData\\Local\\workfence\\tmp"),
            profile_dir: profile,
            windows_dir: "C:\\Windows".into(),
            shared_roots: default_shared_roots('C'),
            workspace_id: id,
            capability_sid: capability_sid_from_bytes(&bytes),
            proxy_port: DEFAULT_PROXY_PORT,
            users: Some(SandboxUsers {
                group_name: GROUP_NAME.into(),
                group_sid: format!("{machine}-1010"),
                offline_user: OFFLINE_USER.into(),
                offline_sid: format!("{machine}-1011"),
                online_user: ONLINE_USER.into(),
                online_sid: format!("{machine}-1012"),
                proxy_port: DEFAULT_PROXY_PORT,
            }),
            cmd_exe: "C:\\Windows\\System32\\cmd.exe".into(),
            mapped_from_unix: !cfg!(windows) && policy.workspace.to_string_lossy().starts_with('/'),
            restricting: RestrictingSet::Narrow,
            webdav_client: Some(false),
        }
    }

    /// The same context as if `workfence setup` had not been run.
    pub fn without_setup(mut self) -> Self {
        self.users = None;
        self
    }
}

/// The shared roots of a system drive.
pub fn default_shared_roots(drive: char) -> Vec<String> {
    [
        "Users",
        "Program Files",
        "Program Files (x86)",
        "ProgramData",
    ]
    .iter()
    .map(|d| format!("{drive}:\\{d}"))
    .collect()
}

/// Which account runs the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RunAs {
    /// The hidden offline user, whose outbound traffic the WFP filters block.
    OfflineUser {
        /// Account name.
        name: String,
        /// SID.
        sid: String,
    },
    /// The hidden online user (network on).
    OnlineUser {
        /// Account name.
        name: String,
        /// SID.
        sid: String,
    },
    /// The invoking user (setup not run, or full access).
    CurrentUser {
        /// Account name.
        name: String,
        /// SID.
        sid: String,
    },
}

impl RunAs {
    /// The account's SID.
    pub fn sid(&self) -> &str {
        match self {
            RunAs::OfflineUser { sid, .. }
            | RunAs::OnlineUser { sid, .. }
            | RunAs::CurrentUser { sid, .. } => sid,
        }
    }
}

/// A SID in the plan, with a name and the reason it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedSid {
    /// `S-1-...`, or a description when only known at run time.
    pub sid: String,
    /// What it is.
    pub name: String,
    /// Why it is (or is not) in the token.
    pub why: String,
}

/// The restricted token every command starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenSpec {
    /// `CreateRestrictedToken` flags.
    pub flags: Vec<&'static str>,
    /// Restricting SIDs: a write must pass the ACL check for these too.
    pub restricting_sids: Vec<NamedSid>,
    /// The restricting set chosen (see [`RestrictingSet`]).
    pub restricting_set: RestrictingSet,
    /// The restricting SIDs as the launcher passes them ([`LOGON_SID`] stands for the
    /// token's logon SID).
    pub restricting: Vec<String>,
    /// SIDs made deny-only (`SidsToDisable`).
    pub disabled_sids: Vec<NamedSid>,
    /// SIDs deliberately kept out of the restricting list.
    pub excluded_sids: Vec<NamedSid>,
    /// The token's default DACL (for objects the command creates without an explicit one).
    pub default_dacl: Vec<NamedSid>,
}

/// What an ACE entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcePurpose {
    /// Write access to a writable root or the temp dir.
    Write,
    /// Read access for the sandbox users.
    Read,
    /// A protected path.
    Protect,
    /// Keeps a protected child from being deleted or renamed through its parent.
    ProtectChild,
    /// A hidden path.
    Hide,
}

impl AcePurpose {
    /// Whether a failure to apply an ACE of this purpose must stop the run. Denies
    /// (protected and hidden paths) fail closed; a grant that cannot be applied to one
    /// object (a file without `WRITE_DAC` for the user, say) only makes that object
    /// unwritable or unreadable for the command, so it is reported and the run goes on.
    pub fn fails_closed(self) -> bool {
        matches!(
            self,
            AcePurpose::Protect | AcePurpose::ProtectChild | AcePurpose::Hide
        )
    }
}

/// What to do when a tree ACE reached an object but Windows refused to propagate it
/// to some existing child (`ERROR_ACCESS_DENIED`: a child without `WRITE_DAC` for the
/// user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialPropagation {
    /// Set the DACL on the object only and go on with a note: new children inherit,
    /// existing ones keep theirs. Only for grants: such a child is merely unusable.
    ThisObjectOnly,
    /// Stop the run ([`WindowsError::PartialDeny`]): existing children of a protected
    /// or hidden tree would keep their old ACEs, writable or readable from the sandbox.
    Refuse,
}

/// [`PartialPropagation`] for the ACEs of one object, whatever else they are for: one
/// deny among them decides.
pub fn on_partial_propagation(purposes: &[AcePurpose]) -> PartialPropagation {
    if purposes.iter().any(|p| p.fails_closed()) {
        PartialPropagation::Refuse
    } else {
        PartialPropagation::ThisObjectOnly
    }
}

/// One ACE on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcePlan {
    /// Object path.
    pub path: String,
    /// The ACE.
    pub ace: Ace,
    /// Who the SID is.
    pub trustee: String,
    /// What for.
    pub purpose: AcePurpose,
    /// Why (for explain).
    pub why: String,
    /// Created for the run (placeholder) instead of persistent.
    pub per_run: bool,
}

/// A placeholder created for a missing protected path, so that it cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placeholder {
    /// Path.
    pub path: String,
    /// Directory (else an empty file).
    pub dir: bool,
}

/// A WFP filter layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WfpLayer {
    /// `FWPM_LAYER_ALE_AUTH_CONNECT_V4`: outbound connects and first UDP/ICMP sends.
    AleAuthConnectV4,
    /// `FWPM_LAYER_ALE_AUTH_CONNECT_V6`.
    AleAuthConnectV6,
    /// `FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4`: inbound connections and datagrams.
    AleAuthRecvAcceptV4,
    /// `FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6`.
    AleAuthRecvAcceptV6,
    /// `FWPM_LAYER_ALE_AUTH_LISTEN_V4`: `listen()` on a TCP socket.
    AleAuthListenV4,
    /// `FWPM_LAYER_ALE_AUTH_LISTEN_V6`.
    AleAuthListenV6,
    /// `FWPM_LAYER_ALE_RESOURCE_ASSIGNMENT_V4`: every bind, explicit or implicit, and
    /// the creation of a raw socket (flagged `FWP_CONDITION_FLAG_IS_RAW_ENDPOINT`).
    AleResourceAssignmentV4,
    /// `FWPM_LAYER_ALE_RESOURCE_ASSIGNMENT_V6`.
    AleResourceAssignmentV6,
}

/// A filter condition (same-field conditions are OR'ed by WFP, different fields AND'ed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WfpCondition {
    /// `FWPM_CONDITION_ALE_USER_ID` matches this SID.
    User(String),
    /// `FWPM_CONDITION_IP_REMOTE_ADDRESS` is this IPv4 address.
    RemoteV4([u8; 4]),
    /// `FWPM_CONDITION_IP_REMOTE_ADDRESS` is this IPv6 address.
    RemoteV6([u8; 16]),
    /// `FWPM_CONDITION_IP_REMOTE_PORT` is this port.
    RemotePort(u16),
    /// `FWPM_CONDITION_IP_LOCAL_PORT` is this port.
    LocalPort(u16),
    /// `FWPM_CONDITION_IP_PROTOCOL` is this protocol number.
    Protocol(u8),
    /// `FWPM_CONDITION_FLAGS` has all of these bits (`FWP_MATCH_FLAGS_ALL_SET`).
    Flags(u32),
}

/// `FWP_CONDITION_FLAG_IS_RAW_ENDPOINT`: the bind is that of a raw socket (the value
/// is checked against `windows-sys` in `win/sys`).
pub const FWP_CONDITION_FLAG_IS_RAW_ENDPOINT: u32 = 0x0000_0010;

/// Permit or block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WfpAction {
    /// `FWP_ACTION_PERMIT`
    Permit,
    /// `FWP_ACTION_BLOCK`
    Block,
}

/// One persistent WFP filter installed by setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WfpFilter {
    /// Fixed filter key (GUID), so uninstall removes exactly these.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Layer.
    pub layer: WfpLayer,
    /// Action.
    pub action: WfpAction,
    /// Weight in workfence's sublayer (higher is evaluated first).
    pub weight: u8,
    /// Conditions.
    pub conditions: Vec<WfpCondition>,
}

/// workfence's WFP provider key.
pub const WFP_PROVIDER_KEY: &str = "6b2f3a10-77c4-4e4f-9a61-776f726b6600";
/// workfence's WFP sublayer key.
pub const WFP_SUBLAYER_KEY: &str = "6b2f3a10-77c4-4e4f-9a61-776f726b6601";

/// The filters that confine the sandbox users (pure, so setup and explain agree):
/// everything for the offline user, and for the online user only that it may not
/// listen on the proxy port (so that no command can stand in for workfence's proxy).
/// Each filter's first condition is the user it applies to.
pub fn wfp_filters(offline_sid: &str, online_sid: &str, proxy_port: u16) -> Vec<WfpFilter> {
    use WfpCondition::*;
    let mut out = Vec::new();
    let mut n = 0u8;
    let mut add = |name: &str, layer, action, weight, mut conds: Vec<WfpCondition>| {
        n += 1;
        if !matches!(conds.first(), Some(User(_))) {
            conds.insert(0, User(offline_sid.to_string()));
        }
        out.push(WfpFilter {
            key: format!("6b2f3a10-77c4-4e4f-9a61-776f726b66{n:02x}"),
            name: format!("workfence: {name}"),
            layer,
            action,
            weight,
            conditions: conds,
        });
    };
    let (c4, c6) = (WfpLayer::AleAuthConnectV4, WfpLayer::AleAuthConnectV6);
    // No permit at all: the loopback permit of earlier versions (TCP to 127.0.0.1 and
    // ::1 on the proxy port) let every offline run reach whatever listened on that
    // port. Proxy runs are refused until the proxy exists; when it does, its permit
    // belongs in a dynamic WFP session that lives as long as the proxy run, with a
    // per-run secret the proxy checks.
    for (layer, v) in [(c4, "IPv4"), (c6, "IPv6")] {
        add(
            &format!("block DNS ({v})"),
            layer,
            WfpAction::Block,
            14,
            vec![
                RemotePort(53),
                RemotePort(853),
                RemotePort(5353),
                RemotePort(5355),
            ],
        );
        add(
            &format!("block SMB and NetBIOS ({v})"),
            layer,
            WfpAction::Block,
            14,
            vec![
                RemotePort(445),
                RemotePort(139),
                RemotePort(137),
                RemotePort(138),
            ],
        );
        let icmp = if layer == c4 { 1 } else { 58 };
        add(
            &format!("block ICMP ({v})"),
            layer,
            WfpAction::Block,
            14,
            vec![Protocol(icmp)],
        );
        add(
            &format!("block all other outbound traffic, loopback included ({v})"),
            layer,
            WfpAction::Block,
            1,
            vec![],
        );
    }
    for (layer, v) in [
        (WfpLayer::AleAuthRecvAcceptV4, "IPv4"),
        (WfpLayer::AleAuthRecvAcceptV6, "IPv6"),
    ] {
        add(
            &format!("block inbound connections and datagrams ({v})"),
            layer,
            WfpAction::Block,
            1,
            vec![],
        );
    }
    for (layer, v) in [
        (WfpLayer::AleAuthListenV4, "IPv4"),
        (WfpLayer::AleAuthListenV6, "IPv6"),
    ] {
        add(
            &format!("online user may not listen on the proxy port ({v})"),
            layer,
            WfpAction::Block,
            15,
            vec![User(online_sid.to_string()), LocalPort(proxy_port)],
        );
    }
    // No listener of the offline user on any port, the proxy port included: a command
    // must not stand in for workfence's proxy or for a host service.
    for (layer, v) in [
        (WfpLayer::AleAuthListenV4, "IPv4"),
        (WfpLayer::AleAuthListenV6, "IPv6"),
    ] {
        add(
            &format!("block listening ({v})"),
            layer,
            WfpAction::Block,
            1,
            vec![],
        );
    }
    // ICMP and raw sockets at the bind (resource assignment) layer too, appended so the
    // keys above keep their numbers. AUTH_CONNECT sees only the first outbound
    // non-error ICMP message per type, code and ID, and a raw socket can carry any
    // protocol: blocking the socket's bind stops both before any packet exists. An
    // unprivileged user cannot open a raw socket anyway (defence in depth); what
    // `IcmpSendEcho` (ping) does in the kernel is an open question of
    // docs/windows.md that `attack/windows-icmp` settles.
    for (layer, v, icmp) in [
        (WfpLayer::AleResourceAssignmentV4, "IPv4", 1),
        (WfpLayer::AleResourceAssignmentV6, "IPv6", 58),
    ] {
        add(
            &format!("block raw sockets at bind ({v})"),
            layer,
            WfpAction::Block,
            14,
            vec![Flags(FWP_CONDITION_FLAG_IS_RAW_ENDPOINT)],
        );
        add(
            &format!("block ICMP sockets at bind ({v})"),
            layer,
            WfpAction::Block,
            14,
            vec![Protocol(icmp)],
        );
    }
    out
}

/// Every filter key workfence has used or may use (`...66 01` to `...66 ff`): uninstall
/// deletes them all, so filters of earlier versions (with other numbering) go too.
pub fn all_filter_keys() -> Vec<String> {
    (1u8..=0xff)
        .map(|n| format!("6b2f3a10-77c4-4e4f-9a61-776f726b66{n:02x}"))
        .collect()
}

/// What `doctor` says about the offline user's WFP filters, given for each planned
/// filter key whether it exists (`None`: the engine would not say). A missing
/// filter means the network layer is not what setup installed (removed by hand or
/// by another tool, or an older setup): the fix is to run setup again.
pub fn wfp_filters_status(keys: &[String], present: &[Option<bool>]) -> (Enforcement, String) {
    let missing: Vec<&str> = keys
        .iter()
        .zip(present)
        .filter(|(_, p)| **p == Some(false))
        .map(|(k, _)| k.as_str())
        .collect();
    let unknown =
        present.iter().filter(|p| p.is_none()).count() + keys.len().saturating_sub(present.len());
    if !missing.is_empty() {
        return (
            Enforcement::None,
            format!(
                "{} of the {} WFP filters are missing (e.g. {}): re-run `workfence setup` from an elevated prompt",
                missing.len(),
                keys.len(),
                missing[0]
            ),
        );
    }
    if unknown > 0 {
        return (
            Enforcement::Partial,
            format!(
                "cannot read {unknown} of the {} WFP filters (reading them may need elevation): run `workfence doctor` from an elevated prompt to check",
                keys.len()
            ),
        );
    }
    (
        Enforcement::Full,
        format!("all {} WFP filters are installed", keys.len()),
    )
}

/// The network part of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkPlan {
    /// `off`, `on` or `proxy`.
    pub policy: String,
    /// Whether the run enforces it.
    pub enforced: bool,
    /// How.
    pub mechanism: String,
    /// The offline user's filters (installed once by setup; empty without setup).
    pub filters: Vec<WfpFilter>,
}

/// Job object settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSpec {
    /// `JOBOBJECT_EXTENDED_LIMIT_INFORMATION.BasicLimitInformation.LimitFlags`.
    pub limit_flags: Vec<&'static str>,
    /// `ActiveProcessLimit`.
    pub active_process_limit: u32,
    /// `JobMemoryLimit`, bytes.
    pub job_memory_limit: Option<u64>,
    /// Hard CPU cap in percent of one core (converted to the job's rate at run time).
    pub cpu_percent: Option<u32>,
    /// How the job is attached to the command (nesting, see [`JOB_NESTING`]).
    pub nesting: Vec<&'static str>,
    /// Wall-clock limit in milliseconds (the whole job is terminated, exit 124).
    pub timeout_ms: Option<u64>,
}

/// The environment part of the plan (the caller has already scrubbed secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvPlan {
    /// Variables Windows programs need to start; taken from the host when the caller
    /// did not pass them.
    pub required: Vec<&'static str>,
    /// Set by workfence (TEMP and TMP point at the private temp dir of the run).
    pub set: BTreeMap<String, String>,
    /// `safe.directory` passed to git through `GIT_CONFIG_COUNT` (see
    /// [`git_safe_directory_env`]), when the command runs as a sandbox user.
    pub git_safe_directory: Option<String>,
    /// Names removed (rules, not names: `*^` would defeat cmd.exe escaping).
    pub removed: Vec<String>,
}

/// The complete Windows plan for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowsPlan {
    /// Filesystem mode.
    pub mode: Mode,
    /// Workspace.
    pub workspace: String,
    /// Working directory.
    pub cwd: String,
    /// No sandbox at all (full-access mode): only the job object applies.
    pub unsandboxed: bool,
    /// Who runs the command.
    pub run_as: RunAs,
    /// How the command is started.
    pub launch: Vec<String>,
    /// The restricted token.
    pub token: Option<TokenSpec>,
    /// Persistent and per-run ACEs (journaled; `workfence cleanup` undoes them).
    pub aces: Vec<AcePlan>,
    /// Placeholders created for each run and removed after it.
    pub placeholders: Vec<Placeholder>,
    /// Private temp directory (a fresh subdirectory per run is TEMP and TMP).
    pub temp_dir: String,
    /// The ACL journal.
    pub journal: String,
    /// Network.
    pub network: NetworkPlan,
    /// Job object.
    pub job: JobSpec,
    /// Environment.
    pub env: EnvPlan,
    /// `pipes` or `conpty`.
    pub stdio: &'static str,
    /// The sandbox user's home for this workspace (`USERPROFILE`, `APPDATA`, ...), when
    /// the command runs as a sandbox user.
    pub home: Option<String>,
    /// The command runs on a private desktop.
    pub private_desktop: bool,
    /// `cmd.exe` used for batch files.
    pub cmd_exe: String,
    /// The capability SID of this workspace.
    pub capability_sid: String,
    /// What each layer gets.
    pub layers: Vec<LayerStatus>,
    /// Whether setup is missing, so running needs --allow-degraded.
    pub needs_setup: bool,
    /// --allow-degraded.
    pub allow_degraded: bool,
    /// Observations (from the layout, and about path mapping).
    pub notes: Vec<String>,
}

/// Variables Windows programs need to start (Winsock fails without `SystemRoot`).
pub const REQUIRED_ENV: &[&str] = &[
    "SystemRoot",
    "windir",
    "SystemDrive",
    "PATH",
    "PATHEXT",
    "ComSpec",
    "ProgramData",
    "ProgramFiles",
    "ProgramFiles(x86)",
    "ProgramW6432",
    "CommonProgramFiles",
    "CommonProgramFiles(x86)",
    "CommonProgramW6432",
    "ALLUSERSPROFILE",
    "PUBLIC",
    "NUMBER_OF_PROCESSORS",
    "PROCESSOR_ARCHITECTURE",
    "PROCESSOR_IDENTIFIER",
    "OS",
    "USERPROFILE",
    "USERNAME",
    "HOMEDRIVE",
    "HOMEPATH",
    "APPDATA",
    "LOCALAPPDATA",
    "PSModulePath",
];

/// Registry hive files: granting on them corrupts or hijacks a profile.
fn is_hive_file(name: &str) -> bool {
    let n = crate::path::fold_case(name);
    n.starts_with("NTUSER.") || n.starts_with("USRCLASS.") || n == "NTUSER.DAT"
}

struct Guard {
    windows: WinPath,
    profile: WinPath,
    shared: Vec<WinPath>,
    state: WinPath,
}

impl Guard {
    /// Why a grant on `p` is refused, if it is.
    fn refuse(&self, p: &WinPath) -> Option<String> {
        if p.is_unc() {
            return Some("a network share (ACLs there are the server's)".into());
        }
        if p.is_root() {
            return Some("a drive root".into());
        }
        if p.starts_with(&self.windows) || self.windows.starts_with(p) {
            return Some("the Windows directory or one of its ancestors".into());
        }
        if self.profile.starts_with(p) {
            return Some("the user profile root or one of its ancestors".into());
        }
        if let Some(s) = self.shared.iter().find(|s| s.starts_with(p)) {
            return Some(format!("the shared directory {s} or one of its ancestors"));
        }
        if p.starts_with(&self.state) || self.state.starts_with(p) {
            return Some("workfence's own state directory (journal and credentials)".into());
        }
        if p.file_name().is_some_and(is_hive_file) {
            return Some("a registry hive file".into());
        }
        if p.components()
            .iter()
            .any(|c| c.eq_ignore_ascii_case("System Volume Information"))
        {
            return Some("a system volume directory".into());
        }
        None
    }
}

struct AceSink {
    aces: Vec<AcePlan>,
}

impl AceSink {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        path: &WinPath,
        kind: AceKind,
        sid: &str,
        trustee: &str,
        mask: u32,
        inherit: Inherit,
        purpose: AcePurpose,
        why: &str,
        per_run: bool,
    ) {
        let ace = Ace {
            kind,
            sid: sid.to_string(),
            mask,
            inherit,
        };
        let path = path.display_string();
        if self.aces.iter().any(|a| {
            a.ace == ace && crate::path::fold_case(&a.path) == crate::path::fold_case(&path)
        }) {
            return;
        }
        self.aces.push(AcePlan {
            path,
            ace,
            trustee: trustee.to_string(),
            purpose,
            why: why.to_string(),
            per_run,
        });
    }
}

/// Builds the Windows plan for `policy` with the host layout `layout`.
pub fn plan(
    policy: &Policy,
    layout: &FsLayout,
    ctx: &WindowsContext,
) -> Result<WindowsPlan, WindowsError> {
    let guard = Guard {
        windows: win_str(&ctx.windows_dir, "the Windows directory")?,
        profile: win_str(&ctx.profile_dir, "the user profile")?,
        shared: ctx
            .shared_roots
            .iter()
            .map(|s| win_str(s, "a shared root"))
            .collect::<Result<_, _>>()?,
        state: win_str(&ctx.state_dir, "the state directory")?,
    };
    if matches!(policy.network, Network::Proxy(_)) {
        return Err(WindowsError::ProxyUnsupported);
    }
    let workspace = win(&policy.workspace, "workspace")?;
    let cwd = win(&layout.cwd, "working directory")?;
    let temp_dir = win_str(&ctx.temp_root, "the temp root")?
        .join(&ctx.workspace_id)
        .map_err(|source| WindowsError::BadPath {
            what: "temp dir".into(),
            source,
        })?;
    let cap = ctx.capability_sid.as_str();
    let full = policy.mode == Mode::FullAccess;

    let run_as = match (&ctx.users, &policy.network) {
        (_, _) if full => current(ctx),
        (Some(u), Network::On) => RunAs::OnlineUser {
            name: u.online_user.clone(),
            sid: u.online_sid.clone(),
        },
        (Some(u), _) => RunAs::OfflineUser {
            name: u.offline_user.clone(),
            sid: u.offline_sid.clone(),
        },
        (None, _) => current(ctx),
    };
    let group = ctx
        .users
        .as_ref()
        .map(|u| (u.group_sid.as_str(), u.group_name.as_str()));
    let cap_name = "workfence capability SID of this workspace";

    let mut sink = AceSink { aces: Vec::new() };
    let mut placeholders = Vec::new();
    let mut notes = layout.notes.clone();
    if ctx.mapped_from_unix {
        notes.push("the policy's Unix paths are shown in Windows form (/home/u/x as C:\\Users\\u\\x) for illustration".into());
    }

    if !full {
        // Write grants: both the user/group check and the restricted (capability) check
        // must pass, so each writable tree gets both.
        let mut write_roots: Vec<(WinPath, String)> = Vec::new();
        for w in &layout.writable {
            let p = win(&w.path, "writable root")?;
            write_roots.push((p, format!("writable root ({})", w.source)));
        }
        write_roots.push((temp_dir.clone(), "private temp dir (TEMP and TMP)".into()));
        for (p, why) in &write_roots {
            if let Some(reason) = guard.refuse(p) {
                return Err(WindowsError::DangerousGrant {
                    path: p.display_string(),
                    what: "write access".into(),
                    why: reason,
                });
            }
            if let Some((gsid, gname)) = group {
                sink.push(
                    p,
                    AceKind::Allow,
                    gsid,
                    gname,
                    rights::MODIFY,
                    Inherit::Tree,
                    AcePurpose::Write,
                    why,
                    false,
                );
            }
            sink.push(
                p,
                AceKind::Allow,
                cap,
                cap_name,
                rights::MODIFY,
                Inherit::Tree,
                AcePurpose::Write,
                why,
                false,
            );
            // What the command creates here is owned by its token user (with setup the
            // sandbox user, a restricting SID), so the owner's implicit READ_CONTROL and
            // WRITE_DAC would pass both checks: lock the user out, grant Everyone, or
            // plant protected-DACL files that later denies never reach. An OWNER RIGHTS
            // ACE replaces those implicit rights; inherit-only, so the root itself (the
            // user's) keeps its owner's rights.
            sink.push(
                p,
                AceKind::Allow,
                sids::OWNER_RIGHTS,
                "OWNER RIGHTS",
                rights::MODIFY,
                Inherit::InheritOnly,
                AcePurpose::Write,
                "owner of what the command creates gets MODIFY only: no implicit WRITE_DAC",
                false,
            );
        }
        // Read grants: the sandbox users cannot read the invoking user's profile.
        if let Some((gsid, gname)) = group {
            let mut reads: Vec<(WinPath, &str)> = vec![(workspace.clone(), "the workspace")];
            if !write_roots.iter().any(|(r, _)| cwd.starts_with(r)) && !cwd.starts_with(&workspace)
            {
                reads.push((cwd.clone(), "the working directory"));
            }
            for r in &ctx.read_roots {
                reads.push((
                    win_str(r, "read root")?,
                    "readable by the sandbox users (a toolchain in the profile, or the runner)",
                ));
            }
            for (p, why) in reads {
                if write_roots.iter().any(|(r, _)| p.starts_with(r)) {
                    continue;
                }
                if let Some(reason) = guard.refuse(&p) {
                    return Err(WindowsError::DangerousGrant {
                        path: p.display_string(),
                        what: "read access".into(),
                        why: reason,
                    });
                }
                sink.push(
                    &p,
                    AceKind::Allow,
                    gsid,
                    gname,
                    rights::READ_EXECUTE,
                    Inherit::Tree,
                    AcePurpose::Read,
                    why,
                    false,
                );
            }
        }
        // Protected paths: deny writes for the capability SID (the restricted check)
        // and the group (the normal check).
        let mut deny_sids = vec![(cap, cap_name)];
        if let Some(g) = group {
            deny_sids.push(g);
        }
        for pp in &layout.protected {
            let p = win(&pp.path, "protected path")?;
            let (mask, inherit, per_run) = match (pp.exists, pp.protection) {
                (Some(FileKind::Symlink) | Some(FileKind::Other), _) => {
                    notes.push(format!("{p} is a link or device: not changed; its target is protected where it lies inside a writable root"));
                    continue;
                }
                (Some(FileKind::Dir), Protection::ReadOnly) => {
                    (rights::DENY_WRITE, Inherit::Tree, false)
                }
                (Some(FileKind::Dir), Protection::Pinned) => {
                    (rights::DENY_PIN, Inherit::None, false)
                }
                (Some(FileKind::File), _) => (rights::DENY_WRITE, Inherit::None, false),
                (None, _) => {
                    placeholders.push(Placeholder {
                        path: p.display_string(),
                        dir: pp.missing_as_dir,
                    });
                    let inherit = if pp.missing_as_dir {
                        Inherit::Tree
                    } else {
                        Inherit::None
                    };
                    (rights::DENY_WRITE, inherit, true)
                }
            };
            for (sid, name) in &deny_sids {
                sink.push(
                    &p,
                    AceKind::Deny,
                    sid,
                    name,
                    mask,
                    inherit,
                    AcePurpose::Protect,
                    &pp.reason,
                    per_run,
                );
            }
            // A parent's FILE_DELETE_CHILD would let the child be deleted or renamed
            // whatever the child's own DACL says: deny it on the parent too.
            if let Some(parent) = p.parent() {
                if write_roots.iter().any(|(r, _)| parent.starts_with(r)) {
                    for (sid, name) in &deny_sids {
                        sink.push(&parent, AceKind::Deny, sid, name, rights::FILE_DELETE_CHILD, Inherit::None, AcePurpose::ProtectChild, "parent of a protected path: FILE_DELETE_CHILD would override the child's deny", false);
                    }
                }
            }
        }
        // Hidden paths: the normal (read) check sees the user's and group's SIDs only,
        // so the deny is for the group. Without setup nothing can carry it.
        if let Some((gsid, gname)) = group {
            for h in &layout.hidden {
                let p = win(&h.path, "hidden path")?;
                if p.is_root() {
                    continue;
                }
                let inherit = if h.kind == FileKind::Dir {
                    Inherit::Tree
                } else {
                    Inherit::None
                };
                sink.push(
                    &p,
                    AceKind::Deny,
                    gsid,
                    gname,
                    rights::DENY_READ,
                    inherit,
                    AcePurpose::Hide,
                    &format!("secret ({})", h.source),
                    false,
                );
            }
        }
    }

    let token = (!full).then(|| token_spec(ctx, &run_as, cap));
    let network = network_plan(policy, ctx, full);
    let job = JobSpec {
        limit_flags: {
            let mut f = vec![
                "JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE",
                "JOB_OBJECT_LIMIT_ACTIVE_PROCESS",
                "JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION",
            ];
            if policy.limits.memory_bytes.is_some() {
                f.push("JOB_OBJECT_LIMIT_JOB_MEMORY");
            }
            f
        },
        active_process_limit: policy.limits.max_processes.max(1),
        job_memory_limit: policy.limits.memory_bytes,
        cpu_percent: policy.limits.cpu_percent,
        nesting: JOB_NESTING.to_vec(),
        timeout_ms: policy
            .limits
            .timeout
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let mut set = BTreeMap::new();
    let run_temp = format!("{}\\run-<id>", temp_dir.display_string());
    if !full {
        set.insert("TEMP".to_string(), run_temp.clone());
        set.insert("TMP".to_string(), run_temp);
    }
    let sandbox_user = matches!(run_as, RunAs::OfflineUser { .. } | RunAs::OnlineUser { .. });
    // The sandbox user's own profile is shared by every workspace: a usable home per
    // workspace instead, in the private temp dir (so it carries the same grants).
    let home = sandbox_user.then(|| format!("{}\\home", temp_dir.display_string()));
    if let Some(h) = &home {
        set.insert("USERPROFILE".into(), h.clone());
        set.insert("HOME".into(), h.clone());
        set.insert("APPDATA".into(), format!("{h}\\AppData\\Roaming"));
        set.insert("LOCALAPPDATA".into(), format!("{h}\\AppData\\Local"));
        if let Some((drive, rest)) = h.split_once(':') {
            set.insert("HOMEDRIVE".into(), format!("{drive}:"));
            set.insert("HOMEPATH".into(), rest.to_string());
        }
    }
    let git_safe_directory = sandbox_user.then(|| workspace.display_string().replace('\\', "/"));
    let env = EnvPlan {
        required: REQUIRED_ENV.to_vec(),
        set,
        git_safe_directory,
        removed: vec![
            "names ending in ^ (they defeated the cmd.exe escaping of earlier versions)".into(),
            "CD (it would stand in for the dynamic %CD% that cmd.exe escaping of % relies on)"
                .into(),
        ],
    };

    let needs_setup = ctx.users.is_none() && !full;
    let mut launch = Vec::new();
    match &run_as {
        RunAs::OfflineUser { name, .. } | RunAs::OnlineUser { name, .. } => {
            launch.push(format!("CreateProcessWithLogonW as .\\{name} (LOGON_WITH_PROFILE, CREATE_SUSPENDED, window hidden) starts workfence-windows-runner; it is put in the job before it runs"));
            launch.push("while the runner is suspended, workfence replaces the DACL of its process and thread (SetSecurityInfo: SYSTEM and the invoking user only, OWNER RIGHTS read-only), so no other run's command can open it; the runner's first action is to set its own token's default DACL to the per-run one, before it creates the job, the ConPTY or the command".into());
            launch.push("the runner reads the request from a single-instance named pipe that only SYSTEM, the invoking user and the sandbox user may open, and whose client must be the runner's process id (GetNamedPipeClientProcessId); it builds the restricted token from its own token and creates the command suspended".into());
            launch.push("the runner hands workfence the command's process and thread handles; workfence resumes the command itself once it holds them, and the runner exits".into());
        }
        RunAs::CurrentUser { .. } if full => {
            launch.push(
                "CreateProcessW with the invoking user's token (no sandbox), created in the job"
                    .into(),
            );
        }
        RunAs::CurrentUser { .. } => {
            launch.push("workfence builds the restricted token from its own token and starts the command with CreateProcessAsUserW, suspended, created in the job".into());
        }
    }
    if !full {
        launch.push("on a private window station and desktop (CreateWindowStationW, CreateDesktopW), whose DACLs grant only SYSTEM, the invoking user, the token user and the capability SID: no hooks, SendInput, window messages, clipboard or global atoms shared with the user's desktop".into());
    }
    launch.push("STARTUPINFOEX with PROC_THREAD_ATTRIBUTE_HANDLE_LIST: only the three stdio handles are inherited".into());
    if policy.pty {
        launch.push("--pty: a ConPTY (CreatePseudoConsole) instead of pipes, PROC_THREAD_ATTRIBUTE_PSEUDOCONSOLE, STARTF_USESTDHANDLES with null handles so the command attaches to the pseudo console".into());
    }

    let layers = layers(policy, ctx, full);
    Ok(WindowsPlan {
        mode: policy.mode,
        workspace: workspace.display_string(),
        cwd: cwd.display_string(),
        unsandboxed: full,
        run_as,
        launch,
        token,
        aces: sink.aces,
        placeholders,
        temp_dir: temp_dir.display_string(),
        journal: format!("{}\\{JOURNAL_FILE}", guard.state.display_string()),
        network,
        job,
        env,
        stdio: if policy.pty { "conpty" } else { "pipes" },
        home,
        private_desktop: !full,
        cmd_exe: ctx.cmd_exe.clone(),
        capability_sid: cap.to_string(),
        layers,
        needs_setup,
        allow_degraded: policy.allow_degraded,
        notes,
    })
}

fn current(ctx: &WindowsContext) -> RunAs {
    RunAs::CurrentUser {
        name: ctx.user_name.clone(),
        sid: ctx.user_sid.clone(),
    }
}

fn token_spec(ctx: &WindowsContext, run_as: &RunAs, cap: &str) -> TokenSpec {
    let sandbox_user = match run_as {
        RunAs::OfflineUser { sid, .. } | RunAs::OnlineUser { sid, .. } => Some(sid.as_str()),
        RunAs::CurrentUser { .. } => None,
    };
    let set = ctx.restricting;
    let restricting = restricting_sids(cap, sandbox_user, set);
    let named = |sid: &str| -> NamedSid {
        let (name, why) = match sid {
            LOGON_SID => ("logon session", "lets the command use its window station, its private desktop and its console (read from the token at run time)"),
            sids::RESTRICTED => ("RESTRICTED", "restricting set 'restricted': system objects that grant restricted code (named objects, devices)"),
            sids::EVERYONE => ("Everyone", "restricting set 'everyone': world-writable places become writable from the sandbox"),
            s if s == cap => ("capability SID of this workspace", "random, stored in the state dir; only the writable roots and the temp dir grant it"),
            _ => ("the sandbox user", "named pipes with the default security descriptor grant their owner only: without it a process cannot write to its own pipes (Node's piped child_process, Python multiprocessing, Ninja, MSBuild). Its profile is not used: USERPROFILE and APPDATA point at a per-workspace home"),
        };
        NamedSid {
            sid: if sid == LOGON_SID {
                "logon SID (read from the token at run time)".into()
            } else {
                sid.into()
            },
            name: name.into(),
            why: why.into(),
        }
    };
    let excluded = |sid: &str, name: &str| {
        NamedSid {
        sid: sid.into(),
        name: name.into(),
        why: "kept out: directories writable by it (C:\\ProgramData, C:\\Users\\Public, pipes) would become writable from the sandbox".into(),
    }
    };
    let mut excluded_sids = Vec::new();
    if set != RestrictingSet::Everyone {
        excluded_sids.push(excluded(sids::EVERYONE, "Everyone"));
    }
    excluded_sids.push(excluded(sids::USERS, "BUILTIN\\Users"));
    excluded_sids.push(excluded(sids::AUTHENTICATED_USERS, "Authenticated Users"));
    if set == RestrictingSet::Narrow {
        excluded_sids.push(excluded(sids::RESTRICTED, "RESTRICTED"));
    }
    if sandbox_user.is_none() {
        excluded_sids.push(NamedSid {
            sid: ctx.user_sid.clone(),
            name: ctx.user_name.clone(),
            why: "kept out: the invoking user is granted on its whole profile, so the write restriction would be void".into(),
        });
    }
    let default_dacl = default_dacl_entries(run_as.sid(), cap, &ctx.user_sid, LOGON_SID)
        .into_iter()
        .map(|(sid, mask)| {
            let (name, why) = if sid == LOGON_SID {
                ("logon SID of this run", "with setup every run has its own logon session: the command's own objects, not those of another run of the same sandbox user")
            } else if sid == cap {
                ("capability SID", "so the restricted check passes on the command's own objects")
            } else if sid == sids::SYSTEM {
                ("SYSTEM", "GENERIC_ALL")
            } else if sid == sids::OWNER_RIGHTS {
                ("OWNER RIGHTS", "READ_CONTROL only: the owner (the token user, shared by every run as that user) gets no implicit WRITE_DAC")
            } else if sid == ctx.user_sid && sandbox_user.is_some() {
                ("the invoking user", "can always manage and kill what the sandbox creates")
            } else {
                ("token user (the invoking user)", "GENERIC_ALL on objects the command creates; other workspaces' commands fail the restricted check")
            };
            NamedSid {
                sid: if sid == LOGON_SID {
                    "logon SID (read from the token at run time)".into()
                } else {
                    format!("{sid}{}", if mask == "RC" { " (READ_CONTROL)" } else { "" })
                },
                name: name.into(),
                why: why.into(),
            }
        })
        .collect();
    TokenSpec {
        flags: vec!["WRITE_RESTRICTED", "DISABLE_MAX_PRIVILEGE", "LUA_TOKEN"],
        restricting_sids: restricting.iter().map(|s| named(s)).collect(),
        restricting_set: set,
        restricting,
        disabled_sids: DISABLED_SIDS
            .iter()
            .map(|(sid, name)| NamedSid {
                sid: (*sid).into(),
                name: (*name).into(),
                why: "deny-only: an elevated invoking user must not pass write checks through it"
                    .into(),
            })
            .collect(),
        excluded_sids,
        default_dacl,
    }
}

fn network_plan(policy: &Policy, ctx: &WindowsContext, full: bool) -> NetworkPlan {
    let filters = ctx
        .users
        .as_ref()
        .map(|u| wfp_filters(&u.offline_sid, &u.online_sid, u.proxy_port))
        .unwrap_or_default();
    let (enforced, mechanism) = match (&policy.network, &ctx.users) {
        (_, _) if full => (true, "full access: the host network".to_string()),
        (Network::On, _) => (true, "the host network, unfiltered".to_string()),
        (Network::Off, Some(u)) => (true, format!("runs as {}; its WFP filters block all its traffic, loopback included, and every listen; no port is permitted", u.offline_user)),
        (Network::Proxy(_), Some(_)) => (false, "refused: network allowlists are enforced only on Linux in this version".to_string()),
        (_, None) => (false, "NOT ENFORCED: `workfence setup` has not installed the offline user and its filters".to_string()),
    };
    NetworkPlan {
        policy: policy.network.name().to_string(),
        enforced,
        mechanism,
        filters,
    }
}

/// What the offline user's WFP filters cannot stop, because a system service or the
/// kernel does the network access on the command's behalf: name lookups through the
/// DNS Client service (`getaddrinfo` asks Dnscache, which resolves as NETWORK SERVICE,
/// so a lookup of `<data>.attacker.example` leaks data), and SMB to remote hosts,
/// opened by the kernel redirector (`\\host\share` paths) outside the user's
/// filters, and very likely ICMP echo requests through `IcmpSendEcho` (what `ping`
/// uses): the kernel sends them itself, with a payload the caller chooses, and
/// third-party WFP firewalls report them as "System", not as the calling process, so
/// a filter on the offline user's SID would not match them (M; `attack/windows-icmp`
/// measures it). Direct connections to DNS and SMB ports and raw or ICMP sockets of
/// the offline user are blocked; these are not.
pub const NETWORK_SERVICE_LEAKS: &str = "name lookups through the DNS Client service (Dnscache resolves as NETWORK SERVICE, so a lookup can carry data out), SMB to remote hosts (\\\\host\\share, opened by the kernel redirector) and, very likely, ICMP echo requests through IcmpSendEcho (ping: the kernel sends them as System, with a payload the caller chooses), all outside the offline user's filters";

fn layers(policy: &Policy, ctx: &WindowsContext, full: bool) -> Vec<LayerStatus> {
    let l = |layer: &str, state, detail: &str| LayerStatus {
        layer: layer.into(),
        state,
        detail: detail.into(),
    };
    if full {
        return vec![
            l(
                "filesystem writes",
                Enforcement::None,
                "full-access mode: no sandbox",
            ),
            l(
                "secrets (deny-read)",
                Enforcement::None,
                "full-access mode: no sandbox",
            ),
            l("network", Enforcement::None, "full-access mode: no sandbox"),
            l(
                "processes",
                Enforcement::Full,
                "job object (kill on close, timeout)",
            ),
        ];
    }
    let setup = ctx.users.is_some();
    let net = match (&policy.network, setup) {
        (Network::On, _) => l("network", Enforcement::Full, "on: nothing to restrict"),
        (_, true) if ctx.webdav_client == Some(true) => l("network", Enforcement::Partial, "offline user + WFP filters on its SID; NOT covered: WebDAV paths (\\\\host@80\\x) go through the WebClient service, outside the filters. Disable it to close this: `sc config WebClient start= disabled` (elevated)"),
        (_, true) => l("network", Enforcement::Full, "offline user + WFP filters on its SID: its own connections and listeners are blocked"),
        (_, false) => l("network", Enforcement::None, "not enforced: run `workfence setup` (elevated) to install the offline user and its WFP filters"),
    };
    let writes = if !setup {
        l("filesystem writes", Enforcement::Partial, "write-restricted token + capability SID ACEs; NOT covered without setup: deletes and renames outside the workspace through a parent directory's FILE_DELETE_CHILD, which the invoking user holds on its profile; run `workfence setup`")
    } else if ctx.restricting == RestrictingSet::Everyone {
        l("filesystem writes", Enforcement::Partial, "write-restricted token + capability SID ACEs; restricting set 'everyone': world-writable directories are writable from the sandbox")
    } else {
        l(
            "filesystem writes",
            Enforcement::Full,
            "sandbox user + write-restricted token + capability SID ACEs; deny ACEs on protected paths",
        )
    };
    let processes = if setup {
        l(
            "processes",
            Enforcement::Full,
            "job object: kill on close, no breakaway, process limit; private window station and desktop",
        )
    } else {
        l(
            "processes",
            Enforcement::Partial,
            "job object: kill on close, no breakaway, process limit; NOT covered without setup: the command's logon SID is the interactive session's, which WinSta0 and its Default desktop grant, so it can open them by name (OpenWindowStation(\"WinSta0\")) and hook or inject input (SetWindowsHookEx, SendInput) into the user's desktop; run `workfence setup`",
        )
    };
    vec![
        writes,
        if setup {
            l(
                "secrets (deny-read)",
                Enforcement::Full,
                "sandbox user cannot read the profile; deny-read ACEs for the sandbox group",
            )
        } else {
            l("secrets (deny-read)", Enforcement::None, "not enforced: a write-restricted token of the invoking user still reads its files; run `workfence setup` to run as a sandbox user")
        },
        net,
        processes,
    ]
    .into_iter()
    .chain(
        (policy.network != Network::On && setup).then(|| {
            l(
                PLATFORM_LIMIT_NETWORK,
                Enforcement::Partial,
                &format!("NOT covered: {NETWORK_SERVICE_LEAKS}: a limitation of Windows (README, Limitations), reported and not refused"),
            )
        }),
    )
    .collect()
}

/// The layer that names what Windows itself does for the command outside the
/// offline user's filters. Like macOS's built-in process cap it is a limitation of the
/// OS, shown by `explain` and `doctor` and listed in the README, not a host gap the
/// user can fix: it does not refuse a run (the rest of `degraded()` does).
pub const PLATFORM_LIMIT_NETWORK: &str = "network through system services";

impl WindowsPlan {
    /// Why `run` must refuse this plan (fail closed): a layer is not fully enforced
    /// and --allow-degraded was not given. `None` when it may run.
    pub fn refusal(&self) -> Option<WindowsError> {
        let gaps = self.degraded();
        if gaps.is_empty() || self.allow_degraded {
            return None;
        }
        if self.needs_setup {
            let missing: Vec<&str> = gaps.iter().map(|l| l.layer.as_str()).collect();
            return Some(WindowsError::SetupMissing {
                missing: missing.join(" and "),
            });
        }
        Some(WindowsError::NotEnforced {
            gaps: gaps
                .iter()
                .map(|l| format!("{}: {}", l.layer, l.detail))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// The warning `run` prints when it runs with gaps (--allow-degraded).
    pub fn degraded_warning(&self) -> Option<String> {
        let gaps = self.degraded();
        if gaps.is_empty() {
            return None;
        }
        let layers: Vec<&str> = gaps.iter().map(|l| l.layer.as_str()).collect();
        Some(if self.needs_setup {
            format!(
                "`workfence setup` has not been run: not enforced: {} (--allow-degraded)",
                layers.join(", ")
            )
        } else {
            format!("not fully enforced on this machine: {} (--allow-degraded; `workfence doctor` says how to fix each)", layers.join(", "))
        })
    }

    /// What is not enforced (empty when every layer is).
    pub fn degraded(&self) -> Vec<&LayerStatus> {
        if self.unsandboxed {
            return Vec::new();
        }
        self.layers
            .iter()
            .filter(|l| l.state != Enforcement::Full && l.layer != PLATFORM_LIMIT_NETWORK)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctor_reports_missing_filters() {
        let keys: Vec<String> = wfp_filters("S-1-5-21-1-2-3-1001", "S-1-5-21-1-2-3-1002", 8877)
            .into_iter()
            .map(|f| f.key)
            .collect();
        assert!(keys.len() > 2);
        let all = vec![Some(true); keys.len()];
        assert_eq!(wfp_filters_status(&keys, &all).0, Enforcement::Full);
        let mut one_gone = all.clone();
        one_gone[1] = Some(false);
        let (e, why) = wfp_filters_status(&keys, &one_gone);
        assert_eq!(e, Enforcement::None);
        assert!(
            why.contains("re-run `workfence setup`") && why.contains(&keys[1]),
            "{why}"
        );
        // Missing beats unknown; unknown alone is partial.
        one_gone[0] = None;
        assert_eq!(wfp_filters_status(&keys, &one_gone).0, Enforcement::None);
        let mut unknown = all.clone();
        unknown[0] = None;
        let (e, why) = wfp_filters_status(&keys, &unknown);
        assert_eq!(e, Enforcement::Partial);
        assert!(why.contains("elevated"), "{why}");
        assert_eq!(wfp_filters_status(&keys, &[]).0, Enforcement::Partial);
    }

    #[test]
    fn local_accounts_are_qualified() {
        assert_eq!(
            local_account_name("DEV-PC", OFFLINE_USER),
            format!("DEV-PC\\{OFFLINE_USER}")
        );
    }

    fn task_xml(user: &str, command: &str, args: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <Triggers><BootTrigger><Enabled>true</Enabled></BootTrigger></Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{user}</UserId>
      <RunLevel>HighestAvailable</RunLevel>
    </Principal>
  </Principals>
  <Actions Context="Author">
    <Exec>
      <Command>{command}</Command>
      <Arguments>{args}</Arguments>
    </Exec>
  </Actions>
</Task>"#
        )
    }

    #[test]
    fn boot_task_definition_is_checked() {
        let exe = r"C:\Program Files & Co\workfence\workfence-boot.exe";
        let xml_exe = r"C:\Program Files &amp; Co\workfence\workfence-boot.exe";
        let ok = task_xml(
            "S-1-5-18",
            &format!("\"{xml_exe}\""),
            REPAIR_NULL_DEVICE_FLAG,
        );
        assert_eq!(boot_task_xml_check(&ok, exe), Ok(()));
        let upper = xml_exe.to_uppercase().replace("&AMP;", "&amp;");
        let ok2 = task_xml("S-1-5-18", &upper, REPAIR_NULL_DEVICE_FLAG);
        assert_eq!(boot_task_xml_check(&ok2, exe), Ok(()));
        // Another principal, program or argument.
        let e = boot_task_xml_check(
            &task_xml("S-1-5-21-1-2-3-1001", xml_exe, REPAIR_NULL_DEVICE_FLAG),
            exe,
        )
        .unwrap_err();
        assert!(e.contains("not as SYSTEM"), "{e}");
        let e = boot_task_xml_check(
            &task_xml("S-1-5-18", r"C:\Users\me\evil.exe", REPAIR_NULL_DEVICE_FLAG),
            exe,
        )
        .unwrap_err();
        assert!(e.contains("evil.exe"), "{e}");
        let e = boot_task_xml_check(
            &task_xml(
                "S-1-5-18",
                xml_exe,
                &format!("{REPAIR_NULL_DEVICE_FLAG} &amp; calc"),
            ),
            exe,
        )
        .unwrap_err();
        assert!(e.contains("& calc"), "{e}");
        // Two actions, or none, or no principal.
        let two = ok.replace("</Exec>", "</Exec><Exec><Command>x.exe</Command></Exec>");
        assert!(boot_task_xml_check(&two, exe).is_err());
        assert!(boot_task_xml_check("<Task/>", exe).is_err());
        // Entities: decimal and hex forms, and a broken one.
        assert_eq!(
            xml_element("<a>&#65;&#x42;&lt;</a>", "a").as_deref(),
            Some("AB<")
        );
        assert_eq!(xml_element("<a>&bogus;</a>", "a"), None);
    }
}
