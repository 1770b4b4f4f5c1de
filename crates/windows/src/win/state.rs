//! workfence's state directory (`%LOCALAPPDATA%\workfence\state`): the ACL journal,
//! the per-workspace capability SIDs, what setup installed and the DPAPI-protected
//! credentials. It lies in the invoking user's profile, which the sandbox users cannot
//! read, and the capability SID is never granted there.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::WindowsError;
use crate::plan::SandboxUsers;
use crate::win::sys;

fn local_app_data() -> PathBuf {
    std::env::var_os("LOCALAPPDATA")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("USERPROFILE").map(|p| PathBuf::from(p).join("AppData").join("Local"))
        })
        .unwrap_or_else(|| PathBuf::from("C:\\ProgramData\\workfence-unknown-user"))
}

/// `%LOCALAPPDATA%\workfence\state`.
pub fn state_dir() -> PathBuf {
    local_app_data().join("workfence").join("state")
}

/// `%LOCALAPPDATA%\workfence\tmp`.
pub fn temp_root() -> PathBuf {
    local_app_data().join("workfence").join("tmp")
}

pub(crate) fn io(step: &str, path: &Path) -> impl FnOnce(std::io::Error) -> WindowsError {
    let step = step.to_string();
    let path = path.to_path_buf();
    move |source| WindowsError::State { step, path, source }
}

/// Writes a file atomically (temp file, flush, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), WindowsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("creating the state directory", dir))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp).map_err(io("writing state", &tmp))?;
        f.write_all(data).map_err(io("writing state", &tmp))?;
        f.sync_all().map_err(io("writing state", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io("writing state", path))
}

/// The capability SID of a workspace, created from 16 random bytes on first use.
pub fn capability_sid(workspace_key: &str) -> Result<String, WindowsError> {
    let path = state_dir().join("capabilities.json");
    let _lock = Lock::acquire()?;
    let mut map: BTreeMap<String, String> = fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(s) = map.get(workspace_key) {
        return Ok(s.clone());
    }
    let mut b = [0u8; 16];
    sys::random_bytes(&mut b)?;
    let sid = crate::plan::capability_sid_from_bytes(&b);
    map.insert(workspace_key.to_string(), sid.clone());
    let text = serde_json::to_string_pretty(&map).unwrap_or_default();
    write_atomic(&path, text.as_bytes())?;
    Ok(sid)
}

/// What setup installed, if it ran (and its credentials are present).
pub fn setup_info() -> Option<SandboxUsers> {
    let dir = state_dir();
    let info: SandboxUsers =
        serde_json::from_str(&fs::read_to_string(dir.join("setup.json")).ok()?).ok()?;
    (dir.join(cred_file(&info.offline_user)).exists()
        && dir.join(cred_file(&info.online_user)).exists())
    .then_some(info)
}

fn cred_file(user: &str) -> String {
    format!("credential-{user}.bin")
}

/// Stores a password, DPAPI-protected for the current user.
pub fn store_password(user: &str, password: &str) -> Result<(), WindowsError> {
    let blob = sys::protect(password.as_bytes())?;
    write_atomic(&state_dir().join(cred_file(user)), &blob)
}

/// Reads a stored password.
pub fn load_password(user: &str) -> Result<String, WindowsError> {
    let path = state_dir().join(cred_file(user));
    let blob = fs::read(&path).map_err(io("reading the sandbox credential", &path))?;
    let clear = sys::unprotect(&blob)?;
    String::from_utf8(clear).map_err(|_| {
        WindowsError::Runner("the stored credential is corrupt; run `workfence setup` again".into())
    })
}

/// Removes setup's files.
pub fn remove_setup_files(info: Option<&SandboxUsers>) {
    let dir = state_dir();
    if let Some(i) = info {
        let _ = fs::remove_file(dir.join(cred_file(&i.offline_user)));
        let _ = fs::remove_file(dir.join(cred_file(&i.online_user)));
    }
    let _ = fs::remove_file(dir.join("setup.json"));
}

const FACTS_FILE: &str = "os-facts.json";

/// Facts about this machine measured by `workfence selftest` (or set by hand).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    /// The narrowest restricting set with which real tools ran.
    #[serde(default)]
    pub restricting: Option<crate::plan::RestrictingSet>,
}

/// The recorded facts (defaults when none were recorded).
pub fn facts() -> Facts {
    fs::read_to_string(state_dir().join(FACTS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Records facts.
pub fn write_facts(f: &Facts) -> Result<(), WindowsError> {
    let text = serde_json::to_string_pretty(f).unwrap_or_default();
    write_atomic(&state_dir().join(FACTS_FILE), text.as_bytes())
}

/// Records what setup installed.
pub fn write_setup_info(info: &SandboxUsers) -> Result<(), WindowsError> {
    let text = serde_json::to_string_pretty(info).unwrap_or_default();
    write_atomic(&state_dir().join("setup.json"), text.as_bytes())
}

/// An exclusive lock on the state directory (journal and capability map), so that
/// concurrent runs do not interleave ids or roll back each other's changes.
pub struct Lock(#[allow(dead_code)] fs::File);

impl Lock {
    /// Waits up to 30 s for the lock.
    pub fn acquire() -> Result<Lock, WindowsError> {
        use std::os::windows::fs::OpenOptionsExt;
        let dir = state_dir();
        fs::create_dir_all(&dir).map_err(io("creating the state directory", &dir))?;
        let path = dir.join("lock");
        let mut last = None;
        for _ in 0..300 {
            match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .share_mode(0)
                .open(&path)
            {
                Ok(f) => return Ok(Lock(f)),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(WindowsError::State {
            step: "waiting for another workfence to release the state lock".into(),
            path,
            source: last.unwrap_or_else(|| std::io::Error::other("timeout")),
        })
    }
}

/// Marks a live run for a workspace (`runs\<workspace id>\<pid>`); the last run out
/// removes the workspace's placeholders.
pub struct RunMarker {
    path: PathBuf,
}

impl RunMarker {
    /// Creates this run's marker (`<pid>-<n>`: one process may run several sandboxes).
    pub fn create(workspace_id: &str) -> Result<RunMarker, WindowsError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = state_dir().join("runs").join(workspace_id);
        fs::create_dir_all(&dir).map_err(io("registering the run", &dir))?;
        let path = dir.join(format!("{}-{n}", std::process::id()));
        fs::write(&path, b"").map_err(io("registering the run", &path))?;
        Ok(RunMarker { path })
    }

    /// The marker file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether another live run uses the same workspace.
    pub fn others_alive(&self) -> bool {
        others_alive(
            self.path.parent().unwrap_or(Path::new(".")),
            Some(&self.path),
        )
    }
}

impl Drop for RunMarker {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether any live run (other than the marker `except`) is registered under `dir`
/// (one workspace's run dir, or the whole `runs` dir). Markers of dead processes are
/// removed on the way.
pub fn others_alive(dir: &Path, except: Option<&Path>) -> bool {
    let mut alive = false;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if Some(p.as_path()) == except {
                continue;
            }
            let Some(pid) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || sys::pid_alive(pid) {
                alive = true;
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
    alive
}

/// The runs directory.
pub fn runs_dir() -> PathBuf {
    state_dir().join("runs")
}
