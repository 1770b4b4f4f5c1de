//! `workfence setup` and `workfence setup --uninstall` (elevated).

use crate::error::WindowsError;
use crate::plan::{
    wfp_filters, SandboxUsers, DEFAULT_PROXY_PORT, GROUP_NAME, OFFLINE_USER, ONLINE_USER,
};
use crate::win::{acl, state, sys};

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
    let filters = wfp_filters(&info.offline_sid, info.proxy_port);
    sys::wfp_install(&filters)?;
    notes.push(format!(
        "installed {} WFP filters for {} ({}): only 127.0.0.1:{} and [::1]:{} are reachable",
        filters.len(),
        info.offline_user,
        info.offline_sid,
        info.proxy_port,
        info.proxy_port
    ));
    state::write_setup_info(&info)?;
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
    let offline_sid = info
        .as_ref()
        .map(|i| i.offline_sid.clone())
        .unwrap_or_else(|| "S-1-0-0".into());
    sys::wfp_uninstall(&wfp_filters(&offline_sid, DEFAULT_PROXY_PORT))?;
    notes.push("removed the WFP filters, sublayer and provider".into());
    for (user, sid) in [
        (OFFLINE_USER, info.as_ref().map(|i| i.offline_sid.clone())),
        (ONLINE_USER, info.as_ref().map(|i| i.online_sid.clone())),
    ] {
        let sid = sid.or_else(|| sys::lookup_sid(user).ok());
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
