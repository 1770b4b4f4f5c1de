//! Reads the host facts a plan needs. Cheap: a few small files, no process spawning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use workfence_policy::layout::FsLayout;

use crate::plan::HostFacts;
use crate::sys;

/// Listening pathname unix sockets from `/proc/net/unix` (the host's network namespace).
fn unix_sockets() -> Vec<PathBuf> {
    const SO_ACCEPTCON: u32 = 0x0001_0000;
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(cols.get(3)?, 16).ok()?;
            let path = cols.get(7)?;
            (flags & SO_ACCEPTCON != 0 && path.starts_with('/')).then(|| PathBuf::from(path))
        })
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn own_cgroup_v1(controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for l in text.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == controller) {
            let dir = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'));
            return Some(dir);
        }
    }
    None
}

fn own_cgroup_v2() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    };
    Some(base.join(path.trim_start_matches('/')))
}

fn writable(p: &Path) -> bool {
    // Creating a child is the only reliable test (cgroupfs ignores mode bits for some writes).
    let probe = p.join(format!(".workfence-probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            true
        }
        Err(_) => false,
    }
}

/// A cgroup where workfence may create children with pids (and, on v2, memory/cpu)
/// limits: a delegated v2 subtree that already enables the controllers, else v1 `pids`.
fn cgroups() -> (Option<PathBuf>, Option<PathBuf>) {
    if let Some(v2) = own_cgroup_v2() {
        let ctl = std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
        if ctl.split_whitespace().any(|c| c == "pids") && writable(&v2) {
            let mem = ctl.split_whitespace().any(|c| c == "memory");
            return (Some(v2.clone()), mem.then_some(v2));
        }
    }
    if let Some(v1) = own_cgroup_v1("pids") {
        if (v1.join("pids.max").exists() || v1.join("cgroup.procs").exists()) && writable(&v1) {
            return (Some(v1), None);
        }
    }
    (None, None)
}

/// Whether `/proc` is the procfs of this process's pid namespace (a container may
/// show the host's): the broker finds its callers there.
pub fn procfs_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .is_ok_and(|l| l.as_os_str() == std::process::id().to_string().as_str())
}

fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Gathers the facts for a plan without secret patterns (doctor: cgroups only).
pub fn facts(layout: &FsLayout, degraded: bool, with_cgroup: bool) -> HostFacts {
    facts_for(&[], layout, degraded, with_cgroup)
}

/// Gathers the facts for a plan. `secrets` are the policy's deny patterns (absolute,
/// `*` allowed in the last component): their ancestors are listed, literally and
/// with symlinks resolved, so that Landlock can grant reads around them. `degraded`
/// adds the listings the Landlock-only plan needs for protected paths.
pub fn facts_for(
    secrets: &[PathBuf],
    layout: &FsLayout,
    degraded: bool,
    with_cgroup: bool,
) -> HostFacts {
    let (uid, gid) = sys::ids();
    let mut run_dirs = Vec::new();
    if Path::new("/run").is_dir() {
        run_dirs.push(PathBuf::from("/run"));
    }
    if std::fs::symlink_metadata("/var/run").is_ok_and(|m| m.is_dir()) {
        run_dirs.push(PathBuf::from("/var/run"));
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if x.is_absolute() && x.is_dir() && !run_dirs.iter().any(|r| x.starts_with(r)) {
            run_dirs.push(x);
        }
    }
    // Never mask a directory that holds a writable root.
    run_dirs.retain(|r| !layout.writable.iter().any(|w| w.path.starts_with(r)));
    let resolv_conf = std::fs::canonicalize("/etc/resolv.conf")
        .ok()
        .filter(|r| run_dirs.iter().any(|d| r.starts_with(d)));
    // The patterns share a few parents (~, ~/.config, ~/.local/share): resolve each
    // directory once.
    let cache = std::cell::RefCell::new(BTreeMap::<PathBuf, Option<PathBuf>>::new());
    let canon = |d: &Path| -> Option<PathBuf> {
        if let Some(c) = cache.borrow().get(d) {
            return c.clone();
        }
        let c = std::fs::canonicalize(d).ok();
        cache.borrow_mut().insert(d.to_path_buf(), c.clone());
        c
    };
    let resolved_secrets: Vec<PathBuf> = secrets
        .iter()
        .filter_map(|p| workfence_policy::secrets::resolved_form(p, canon))
        .collect();
    let mut targets: Vec<PathBuf> = secrets
        .iter()
        .chain(&resolved_secrets)
        .cloned()
        .chain(layout.hidden.iter().map(|h| h.path.clone()))
        .collect();
    if degraded {
        targets.extend(layout.protected.iter().map(|p| p.path.clone()));
    }
    let mut listings = BTreeMap::new();
    for t in &targets {
        for anc in t.ancestors().skip(1) {
            if listings.contains_key(anc) {
                continue;
            }
            listings.insert(anc.to_path_buf(), list(anc));
        }
    }
    let (pids_cgroup, v2_cgroup) = if with_cgroup { cgroups() } else { (None, None) };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    HostFacts {
        uid,
        gid,
        landlock_abi: sys::landlock_abi(),
        unix_sockets: unix_sockets(),
        run_dirs,
        resolv_conf,
        listings,
        resolved_secrets,
        pids_cgroup,
        v2_cgroup,
        degraded_tmp: std::env::temp_dir()
            .join(format!("workfence-{uid}-{}-{nanos:x}", std::process::id())),
        foreign_procfs: !procfs_is_ours(),
        pid_max_per_pidns: kernel_at_least(6, 14),
        pid_max_min: pid_max_min(),
        nproc_exempt: crate::is_global_root(),
    }
}

/// The kernel's smallest accepted pid_max: `max(301, 8 * possible CPUs)`
/// (`pid_idr_init`), 0 when the CPU list cannot be read.
fn pid_max_min() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| possible_cpus(&s))
        .map_or(0, |n| n.saturating_mul(8).max(301))
}

/// Counts the CPUs of a kernel CPU list (`0-3,8,10-11`).
fn possible_cpus(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        n = n.checked_add(b.checked_sub(a)? + 1)?;
    }
    (n > 0).then_some(n)
}

/// The running kernel's release is at least `major.minor` (from `uname`).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    release_at_least(&release, major, minor)
}

fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn cpu_lists() {
        use super::possible_cpus;
        assert_eq!(possible_cpus("0-1\n"), Some(2));
        assert_eq!(possible_cpus("0"), Some(1));
        assert_eq!(possible_cpus("0-3,8,10-11"), Some(7));
        assert_eq!(possible_cpus("0-255"), Some(256));
        assert_eq!(possible_cpus(""), None);
        assert_eq!(possible_cpus("3-1"), None);
    }

    #[test]
    fn kernel_releases() {
        assert!(release_at_least("6.18.0-1-amd64", 6, 14));
        assert!(release_at_least("6.14", 6, 14));
        assert!(release_at_least("7.0.1", 6, 14));
        assert!(!release_at_least("6.13.12-200.fc41.x86_64", 6, 14));
        assert!(!release_at_least("6.1.0-28-amd64", 6, 14));
        assert!(!release_at_least("garbage", 6, 14));
    }
}
