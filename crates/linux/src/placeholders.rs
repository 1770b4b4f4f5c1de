//! Host-side placeholders for protected names that do not exist yet.
//!
//! A mount needs an existing mount point, so for a missing `.codex` (and the like)
//! workfence creates an empty directory or file on the host, mounts an empty
//! read-only object over it inside the sandbox, and removes it after the run if it is
//! still empty and no other live run uses it. Concurrent runs coordinate through
//! per-run records under an exclusive lock; a record whose process is gone is stale.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::LinuxError;
use crate::plan::{LinuxPlan, MountStep};
use crate::sys;

/// The placeholders of one run; [`Placeholders::release`] removes them.
#[derive(Debug, Default)]
pub struct Placeholders {
    dir: Option<PathBuf>,
    paths: Vec<(PathBuf, bool)>,
    owner: u32,
}

fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("workfence/guards")
}

fn lock(dir: &Path) -> Option<File> {
    fs::create_dir_all(dir).ok()?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .ok()?;
    sys::lock_exclusive(f.as_raw_fd()).ok()?;
    Some(f)
}

/// Creates the placeholders the plan needs.
pub fn create(plan: &LinuxPlan) -> Result<Placeholders, LinuxError> {
    let wanted: Vec<(PathBuf, bool)> = plan
        .mounts
        .iter()
        .filter_map(|m| match m {
            MountStep::Placeholder { path, dir } => Some((path.clone(), *dir)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Placeholders::default());
    }
    let owner = std::process::id();
    let dir = state_dir();
    let _guard = lock(&dir);
    let mut record = String::new();
    for (p, is_dir) in &wanted {
        let r = if *is_dir {
            fs::create_dir(p)
        } else {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map(drop)
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            // A read-only parent: nothing can create the name inside either.
            Err(_) => continue,
        }
        record.push_str(&format!(
            "{}\t{}\n",
            if *is_dir { "d" } else { "f" },
            p.display()
        ));
    }
    let _ = fs::write(dir.join(format!("{owner}.run")), record);
    Ok(Placeholders {
        dir: Some(dir),
        paths: wanted,
        owner,
    })
}

fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

impl Placeholders {
    /// Whether there is anything to clean up.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Removes this run's placeholders that are still empty and unused by other runs,
    /// and those of runs that died without cleaning up.
    pub fn release(&self) {
        let Some(dir) = &self.dir else { return };
        let dir = dir.clone();
        let _guard = lock(&dir);
        let own = format!("{}.run", self.owner);
        let _ = fs::remove_file(dir.join(&own));
        let mut in_use = Vec::new();
        let mut stale = Vec::new();
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_suffix(".run") else {
                    continue;
                };
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                let entries: Vec<(PathBuf, bool)> = text
                    .lines()
                    .filter_map(|l| l.split_once('\t'))
                    .map(|(k, p)| (PathBuf::from(p), k == "d"))
                    .collect();
                if alive(pid) {
                    in_use.extend(entries.into_iter().map(|e| e.0));
                } else {
                    stale.extend(entries);
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let mut all: Vec<(PathBuf, bool)> = self.paths.iter().cloned().chain(stale).collect();
        // Deepest first, so that placeholder parents become empty before their turn.
        all.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (p, is_dir) in all {
            if in_use.contains(&p) {
                continue;
            }
            if is_dir {
                let _ = fs::remove_dir(&p); // fails (kept) unless empty
            } else if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0) {
                let _ = fs::remove_file(&p);
            }
        }
    }
}
