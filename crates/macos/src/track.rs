//! Which processes belong to a run: the pure decision, separate from `run` (which
//! reads the process table on macOS) so that it is tested on every host.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use std::collections::BTreeSet;

/// What the tracker knows about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub zombie: bool,
    /// Never reused while the system runs, unlike pids.
    pub uniqueid: u64,
    /// The parent's unique id at fork time (0 when unknown). It stays the same
    /// after the parent dies and the process is reparented to launchd.
    pub puniqueid: u64,
}

/// The lineage of a run: every unique id that ever belonged to it, including
/// processes that have died since. A double fork (`sh -c '(daemon &) &'`) leaves a
/// grandchild whose parent is gone; its fork-time parent id still names a member,
/// so it is adopted by lineage, whether or not a scan saw the parent alive.
#[derive(Debug, Clone)]
pub(crate) struct Lineage {
    root_uniqueid: u64,
    uid: u32,
    members: BTreeSet<u64>,
}

impl Lineage {
    /// A run whose command is `root` (unique id 0 when it died before it was
    /// seen: then "younger than the root" admits any process of `uid`, and only
    /// lineage and the sandbox probe select).
    pub fn new(root_uniqueid: u64, uid: u32) -> Lineage {
        let mut members = BTreeSet::new();
        if root_uniqueid != 0 {
            members.insert(root_uniqueid);
        }
        Lineage {
            root_uniqueid,
            uid,
            members,
        }
    }

    /// Whether `p` may belong to the run at all: alive, of the same user and
    /// younger than the command (unique ids grow with time).
    pub fn candidate(&self, p: &ProcInfo) -> bool {
        p.uid == self.uid && p.uniqueid > self.root_uniqueid && !p.zombie
    }

    /// Whether the process with this unique id ever belonged to the run.
    #[cfg(test)]
    pub fn contains(&self, uniqueid: u64) -> bool {
        self.members.contains(&uniqueid)
    }

    /// Records `uniqueid` as a member (it is never forgotten, even after death).
    pub fn add(&mut self, uniqueid: u64) {
        self.members.insert(uniqueid);
    }

    /// One pass over the process table: adopts every candidate whose fork-time
    /// parent is a member (transitively, so a chain of dead parents is followed)
    /// or that `carries_our_sandbox` recognises. Returns the newly adopted.
    pub fn adopt(
        &mut self,
        table: &[ProcInfo],
        mut carries_our_sandbox: impl FnMut(&ProcInfo) -> bool,
    ) -> Vec<ProcInfo> {
        let mut adopted = Vec::new();
        let mut probed: BTreeSet<u64> = BTreeSet::new();
        loop {
            let mut added = false;
            for p in table {
                if !self.candidate(p) || self.members.contains(&p.uniqueid) {
                    continue;
                }
                let by_lineage = p.puniqueid != 0 && self.members.contains(&p.puniqueid);
                // The probe is a system call per process: ask once per pass.
                let by_sandbox = !by_lineage && probed.insert(p.uniqueid) && carries_our_sandbox(p);
                if by_lineage || by_sandbox {
                    self.members.insert(p.uniqueid);
                    adopted.push(*p);
                    added = true;
                }
            }
            if !added {
                return adopted;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, uniqueid: u64, puniqueid: u64) -> ProcInfo {
        ProcInfo {
            pid,
            ppid: 1,
            uid: 501,
            zombie: false,
            uniqueid,
            puniqueid,
        }
    }

    #[test]
    fn double_fork_is_adopted_by_lineage_after_the_parent_died() {
        // root (100) forked 101, which forked 102 and exited: 102 now has ppid 1
        // and 101 is not in the table any more.
        let mut l = Lineage::new(100, 501);
        l.add(101);
        let table = [p(200, 102, 101), p(201, 103, 102), p(300, 150, 7)];
        let got = l.adopt(&table, |_| false);
        let ids: Vec<u64> = got.iter().map(|p| p.uniqueid).collect();
        assert_eq!(ids, vec![102, 103], "the chain, not the stranger");
        assert!(l.contains(101) && l.contains(102) && l.contains(103));
        assert!(!l.contains(150));
    }

    #[test]
    fn chains_through_parents_no_scan_saw() {
        // 101 died before any scan: only its child's fork-time parent id names it,
        // so the chain starts from the root itself.
        let mut l = Lineage::new(100, 501);
        let table = [p(202, 104, 103), p(201, 103, 101), p(200, 101, 100)];
        assert_eq!(l.adopt(&table, |_| false).len(), 3);
    }

    #[test]
    fn strangers_are_not_adopted() {
        let mut l = Lineage::new(100, 501);
        let mut other_user = p(10, 120, 100);
        other_user.uid = 0;
        let older = p(11, 50, 100);
        let mut zombie = p(12, 121, 100);
        zombie.zombie = true;
        let unrelated = p(13, 122, 9);
        let got = l.adopt(&[other_user, older, zombie, unrelated], |_| false);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn the_sandbox_probe_adopts_and_its_children_follow() {
        let mut l = Lineage::new(100, 501);
        let escaped = p(20, 130, 0);
        let child = p(21, 131, 130);
        let mut asked = Vec::new();
        let got = l.adopt(&[child, escaped], |x| {
            asked.push(x.uniqueid);
            x.uniqueid == 130
        });
        assert_eq!(got.len(), 2);
        // Each process is probed at most once; the child follows by lineage.
        asked.sort_unstable();
        assert_eq!(asked, vec![130, 131]);
    }
}
