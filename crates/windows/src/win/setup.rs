//! `workfence setup` and `workfence setup --uninstall` (elevated).

use crate::error::WindowsError;
use crate::plan::{
    all_filter_keys, boot_exe_path, boot_task, null_device_ace, wfp_filters, AcePlan, AcePurpose,
    SandboxUsers, BOOT_TASK_NAME, DEFAULT_PROXY_PORT, DENY_LOGON_RIGHTS, GROUP_NAME, OFFLINE_USER,
    ONLINE_USER,
};
use crate::sddl::{rights, Ace, AceKind, Dacl, Inherit};
use crate::win::{acl, state, sys};

/// Grants both sandbox users read, write and execute on the null device. Its security
/// descriptor is rebuilt at every boot, so this lasts until the next one: setup
/// registers a boot task that calls [`repair_null_device`], `doctor` reports both, and
/// runs refuse while the grant is gone ([`crate::plan::null_device_check`]).
fn grant_null_device(sids: &[&str]) -> Result<bool, WindowsError> {
    let before = sys::null_device_dacl()?;
    let mut dacl = Dacl::parse(&before).map_err(|source| WindowsError::Dacl {
        path: "\\\\.\\NUL".into(),
        source,
    })?;
    let aces: Vec<Ace> = sids.iter().map(|s| null_device_ace(s)).collect();
    if dacl.add(&aces).is_empty() {
        return Ok(false);
    }
    sys::set_null_device_dacl(&dacl.to_sddl())?;
    Ok(true)
}

/// The boot task's work ([`crate::plan::REPAIR_NULL_DEVICE_FLAG`], as SYSTEM): the
/// sandbox users' SIDs from their fixed names, then the grant. Returns the exit status
/// Task Scheduler records (0: granted or already there, 1: failed); prints nothing.
pub fn repair_null_device() -> i32 {
    let sids: Result<Vec<String>, WindowsError> = [OFFLINE_USER, ONLINE_USER]
        .iter()
        .map(|u| sys::lookup_sid(u))
        .collect();
    match sids {
        Ok(sids) => {
            let refs: Vec<&str> = sids.iter().map(String::as_str).collect();
            i32::from(grant_null_device(&refs).is_err())
        }
        Err(_) => 1,
    }
}

fn schtasks(args: &[String]) -> Result<bool, WindowsError> {
    let exe = std::path::Path::new(&sys::windows_dir()).join("System32\\schtasks.exe");
    std::process::Command::new(&exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .map_err(|e| WindowsError::BootTask {
            task: BOOT_TASK_NAME.into(),
            why: format!("cannot start {}: {e}", exe.display()),
        })
}

/// The standard output of `schtasks.exe args` (`None` when it fails), decoded from
/// UTF-16 when it carries a byte-order mark or NUL bytes, else as UTF-8 (lossy).
fn schtasks_output(args: &[String]) -> Result<Option<String>, WindowsError> {
    let exe = std::path::Path::new(&sys::windows_dir()).join("System32\\schtasks.exe");
    let out = std::process::Command::new(&exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| WindowsError::BootTask {
            task: BOOT_TASK_NAME.into(),
            why: format!("cannot start {}: {e}", exe.display()),
        })?;
    if !out.status.success() {
        return Ok(None);
    }
    let b = out.stdout;
    // ASCII text in UTF-16LE has a NUL in every odd byte.
    let utf16 = b.starts_with(&[0xff, 0xfe])
        || (b.len() >= 2 && b.iter().skip(1).step_by(2).take(64).all(|&x| x == 0));
    Ok(Some(if utf16 {
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
            .trim_start_matches('\u{feff}')
            .to_string()
    } else {
        String::from_utf8_lossy(&b).into_owned()
    }))
}

/// Whether the boot task is registered (`None`: schtasks could not be asked).
pub fn boot_task_registered() -> Option<bool> {
    let exe = boot_exe_path(&sys::program_files_dir().ok()?);
    schtasks(&boot_task(&exe).ok()?.query).ok()
}

/// Copies this executable to [`boot_exe_path`] (below Program Files, which only
/// administrators can change) and registers the boot task that runs it as SYSTEM.
fn register_boot_task() -> Result<String, WindowsError> {
    let err = |why: String| WindowsError::BootTask {
        task: BOOT_TASK_NAME.into(),
        why,
    };
    let exe = boot_exe_path(&sys::program_files_dir()?);
    // Checked before anything is copied: a path the task cannot carry is refused.
    let task = boot_task(&exe)?;
    let me =
        std::env::current_exe().map_err(|e| err(format!("cannot find this executable: {e}")))?;
    let bytes =
        std::fs::read(&me).map_err(|e| err(format!("cannot read {}: {e}", me.display())))?;
    install_boot_exe(&exe, &bytes)?;
    if !schtasks(&task.create)? {
        return Err(err(
            "schtasks /Create failed (is the Task Scheduler service running?)".into(),
        ));
    }
    // What was registered, not what was asked for: a task that does not run this
    // program as SYSTEM is removed again.
    let checked = match schtasks_output(&crate::plan::boot_task_query_xml())? {
        Some(xml) => crate::plan::boot_task_xml_check(&xml, &exe),
        None => Err("schtasks /Query /XML failed".into()),
    };
    if let Err(why) = checked {
        let _ = schtasks(&task.delete);
        return Err(err(format!(
            "the registered task is not the one setup asked for ({why}); it was removed: run `workfence setup` again"
        )));
    }
    Ok(format!(
        "registered the boot task {BOOT_TASK_NAME} (runs {} as SYSTEM at startup to re-apply the null device grant)",
        task.command_line
    ))
}

/// Writes the boot program to `exe`. SYSTEM runs it at every boot, so neither its
/// directory nor the file may be changeable by anyone but SYSTEM, Administrators and
/// TrustedInstaller: both are created with [`crate::sddl::install_sddl`] (a
/// protected DACL, nothing inherited), and an existing one is used only when
/// [`crate::sddl::install_check`] accepts its owner and DACL (then its DACL is reset
/// to that one too). `create_dir_all` and `fs::copy` would keep whatever an earlier
/// occupant of the path set.
fn install_boot_exe(exe: &str, bytes: &[u8]) -> Result<(), WindowsError> {
    use std::io::Write;
    let err = |why: String| WindowsError::BootTask {
        task: BOOT_TASK_NAME.into(),
        why,
    };
    let dir = std::path::Path::new(exe)
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .ok_or_else(|| err(format!("{exe} has no parent directory")))?;
    // Refuses a reparse point or an object others can change; Ok(true): it exists.
    let trusted = |path: &str| -> Result<bool, WindowsError> {
        match sys::owner_and_dacl(path)? {
            None => Ok(false),
            Some((_, true)) => Err(err(format!(
                "{path} is a junction or symbolic link; remove it, then run `workfence setup` again"
            ))),
            Some((sd, false)) => crate::sddl::install_check(&sd).map(|()| true).map_err(|why| {
                err(format!(
                    "{path} already exists and {why}; delete it (or give it to Administrators with a DACL only administrators can change), then run `workfence setup` again"
                ))
            }),
        }
    };
    let reset = |path: &str, dir: bool| -> Result<(), WindowsError> {
        if let Some(t) = sys::open_for_acl(path)? {
            t.set_dacl_no_propagation(&crate::sddl::install_sddl(dir))?;
        }
        Ok(())
    };
    if trusted(&dir)? {
        reset(&dir, true)?;
    } else {
        sys::create_dir_with_sddl(&dir, &crate::sddl::install_sddl(true))?;
    }
    if trusted(exe)? {
        std::fs::write(exe, bytes).map_err(|e| err(format!("cannot write {exe}: {e}")))?;
        reset(exe, false)?;
    } else {
        let mut f = sys::create_file_with_sddl(exe, &crate::sddl::install_sddl(false))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| err(format!("cannot write {exe}: {e}")))?;
    }
    Ok(())
}

/// Removes the boot task and its copy of the executable (absent is fine).
fn unregister_boot_task() -> String {
    let Ok(pf) = sys::program_files_dir() else {
        return "could not find Program Files: remove the boot task by hand (schtasks /Delete /TN \\workfence\\repair-null-device)".into();
    };
    let exe = boot_exe_path(&pf);
    if let Ok(task) = boot_task(&exe) {
        let _ = schtasks(&task.delete);
    }
    let _ = std::fs::remove_file(&exe);
    if let Some(dir) = std::path::Path::new(&exe).parent() {
        let _ = std::fs::remove_dir(dir);
    }
    format!("removed the boot task {BOOT_TASK_NAME} and {exe}")
}

/// The read grants on the profile's toolchains and on the runner, applied at setup so
/// that the first run does not pay for their propagation (runs recognise them from the
/// journal). The same ACEs `plan` lists, so they match.
fn toolchain_grants(info: &SandboxUsers) -> Vec<AcePlan> {
    let Some(profile) = std::env::var_os("USERPROFILE") else {
        return Vec::new();
    };
    let mut roots = crate::win::detect::toolchain_roots(std::path::Path::new(&profile));
    roots.extend(crate::win::detect::runner_read_root(&sys::windows_dir()));
    roots
        .into_iter()
        .map(|path| AcePlan {
            path,
            ace: Ace {
                kind: AceKind::Allow,
                sid: info.group_sid.clone(),
                mask: rights::READ_EXECUTE,
                inherit: Inherit::Tree,
            },
            trustee: info.group_name.clone(),
            purpose: AcePurpose::Read,
            why: "readable by the sandbox users (a toolchain in the profile, or the runner)".into(),
            per_run: false,
        })
        .collect()
}

/// A random password that meets the default complexity policy.
fn password() -> Result<String, WindowsError> {
    const SETS: [&[u8]; 4] = [
        b"ABCDEFGHJKLMNPQRSTUVWXYZ",
        b"abcdefghijkmnopqrstuvwxyz",
        b"23456789",
        b"-_.!#%+=",
    ];
    let mut bytes = [0u8; 40];
    sys::random_bytes(&mut bytes)?;
    let mut out = String::new();
    for (i, b) in bytes.iter().enumerate() {
        // The first four come from each class in turn, so every class is present.
        let set = SETS[if i < 4 { i } else { usize::from(*b) % 4 }];
        out.push(char::from(set[usize::from(*b) % set.len()]));
    }
    Ok(out)
}

pub fn install() -> Result<String, WindowsError> {
    if !sys::is_elevated() {
        return Err(WindowsError::NotElevated);
    }
    let mut notes = Vec::new();
    sys::group_add(
        GROUP_NAME,
        "workfence sandbox users (commands run by coding agents)",
    )?;
    for user in [OFFLINE_USER, ONLINE_USER] {
        let pw = password()?;
        let created = sys::user_add(user, &pw, "workfence sandbox user (hidden)")?;
        // Re-running setup repairs an account someone disabled, locked or changed.
        let current = sys::user_flags(user)?;
        let repairs = crate::decisions::account_flag_repairs(current);
        sys::user_set_flags(user, crate::decisions::account_flags(current))?;
        if !created && !repairs.is_empty() {
            let list: Vec<String> = repairs.iter().map(ToString::to_string).collect();
            notes.push(format!("repaired the account {user}: {}", list.join(", ")));
        }
        sys::group_add_member(GROUP_NAME, user)?;
        sys::hide_user(user, true)?;
        // Stored before anything depends on it; only this user can decrypt it.
        state::store_password(user, &pw)?;
        notes.push(format!(
            "{} the hidden local user {user}",
            if created {
                "created"
            } else {
                "reset the password of"
            }
        ));
    }
    let info = SandboxUsers {
        group_name: GROUP_NAME.into(),
        group_sid: sys::lookup_sid(GROUP_NAME)?,
        offline_user: OFFLINE_USER.into(),
        offline_sid: sys::lookup_sid(OFFLINE_USER)?,
        online_user: ONLINE_USER.into(),
        online_sid: sys::lookup_sid(ONLINE_USER)?,
        proxy_port: DEFAULT_PROXY_PORT,
    };
    for (user, sid) in [
        (&info.offline_user, &info.offline_sid),
        (&info.online_user, &info.online_sid),
    ] {
        sys::add_account_rights(sid, DENY_LOGON_RIGHTS)?;
        // Created now, not at the first run (LOGON_WITH_PROFILE would create it then).
        match sys::create_profile(sid, user)? {
            Some(p) => notes.push(format!("created the profile of {user} ({p})")),
            None => notes.push(format!("the profile of {user} exists")),
        }
    }
    notes.push(format!(
        "denied the sandbox users {}",
        DENY_LOGON_RIGHTS.join(", ")
    ));
    // Filters of earlier versions (other keys, the old loopback permit) are replaced in
    // the same transaction that adds the new ones: no window without filters.
    let filters = wfp_filters(&info.offline_sid, &info.online_sid, info.proxy_port);
    sys::wfp_install(&all_filter_keys(), &filters)?;
    notes.push(format!(
        "installed {} WFP filters for {} ({}): all its traffic and listens are blocked, loopback included; the online user may not listen on the proxy port",
        filters.len(),
        info.offline_user,
        info.offline_sid,
    ));
    notes.push(
        if grant_null_device(&[&info.offline_sid, &info.online_sid])? {
            "granted the sandbox users the null device (Windows resets it at every boot; the boot task re-applies it)"
        } else {
            "the null device already grants the sandbox users"
        }
        .into(),
    );
    // Without the task, the grant is gone after the next reboot and runs refuse (with
    // the repair command) until setup runs again: a note, not a failed setup.
    notes.push(match register_boot_task() {
        Ok(n) => n,
        Err(e) => format!("WARNING: {e}; after every reboot, runs as the sandbox users refuse until `workfence setup` runs again"),
    });
    state::write_setup_info(&info)?;
    for n in acl::apply_grants(&toolchain_grants(&info))? {
        notes.push(n);
    }
    notes.push(format!(
        "group {GROUP_NAME} ({}); credentials DPAPI-protected in {}",
        info.group_sid,
        state::state_dir().display()
    ));
    notes.push("undo with `workfence setup --uninstall`".into());
    Ok(notes.join("\n"))
}

pub fn uninstall() -> Result<String, WindowsError> {
    if !sys::is_elevated() {
        return Err(WindowsError::NotElevated);
    }
    let mut notes = Vec::new();
    // ACEs first, while the journal and SIDs still mean something.
    notes.push(acl::cleanup()?);
    let info = std::fs::read_to_string(state::state_dir().join("setup.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<SandboxUsers>(&t).ok());
    notes.push(unregister_boot_task());
    // Every key workfence ever used, so filters of earlier versions go too.
    sys::wfp_uninstall(&all_filter_keys())?;
    notes.push("removed the WFP filters, sublayer and provider".into());
    for (user, sid) in [
        (OFFLINE_USER, info.as_ref().map(|i| i.offline_sid.clone())),
        (ONLINE_USER, info.as_ref().map(|i| i.online_sid.clone())),
    ] {
        let sid = sid.or_else(|| sys::lookup_sid(user).ok());
        if let Some(sid) = &sid {
            sys::remove_account_rights(sid);
        }
        sys::user_del(user)?;
        if let Some(sid) = sid {
            sys::delete_profile(&sid);
        }
        let _ = sys::hide_user(user, false);
        notes.push(format!("removed the user {user} and its profile"));
    }
    sys::group_del(GROUP_NAME)?;
    notes.push(format!("removed the group {GROUP_NAME}"));
    state::remove_setup_files(info.as_ref());
    notes.push("removed the stored credentials".into());
    Ok(notes.join("\n"))
}
