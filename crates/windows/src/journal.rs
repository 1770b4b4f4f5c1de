//! The ACL journal: every DACL change and placeholder, written (and flushed) to the
//! state directory *before* it is applied, so that `workfence cleanup` can restore the
//! exact previous DACLs and a crash never leaves an ACE nobody knows about.
//!
//! The format is JSON lines, append-only. This module is pure: parsing, and deciding
//! what is outstanding; the apply layer does the I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Entry {
    /// About to change a DACL.
    Intent {
        /// Change id (increasing).
        id: u64,
        /// Unix time, seconds.
        time: u64,
        /// Object path.
        path: String,
        /// The DACL before the change, as SDDL (`D:...`), exactly as read.
        before: String,
        /// The ACEs being added, as SDDL.
        aces: Vec<String>,
    },
    /// The change with this id is in place.
    Applied {
        /// Change id.
        id: u64,
        /// Unix time.
        time: u64,
        /// The object's creation time (Windows file time) when the change was made, so
        /// that a later run recognises a workspace deleted and re-created at the same
        /// path as a new object. Absent in journals of earlier versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created: Option<u64>,
        /// The object's volume serial number and file ID (`vvvvvvvv-iiiiiiiiiiiiiiii`,
        /// hex), which identify it whatever its timestamps say: a creation time can be
        /// set (`SetFileTime`) and is carried over by NTFS tunnelling to a name deleted
        /// and re-created within seconds; a file ID is neither. Absent in journals of
        /// earlier versions (such entries are not trusted, see [`covered`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_id: Option<String>,
    },
    /// The change with this id was undone (or found never to have happened).
    Restored {
        /// Change id.
        id: u64,
        /// Unix time.
        time: u64,
    },
    /// About to create a placeholder for a missing protected path.
    Created {
        /// Change id.
        id: u64,
        /// Unix time.
        time: u64,
        /// Path.
        path: String,
        /// Directory or file.
        dir: bool,
    },
    /// The placeholder with this id is gone.
    Removed {
        /// Change id.
        id: u64,
        /// Unix time.
        time: u64,
    },
}

impl Entry {
    /// The entry's change id.
    pub fn id(&self) -> u64 {
        match self {
            Entry::Intent { id, .. }
            | Entry::Applied { id, .. }
            | Entry::Restored { id, .. }
            | Entry::Created { id, .. }
            | Entry::Removed { id, .. } => *id,
        }
    }

    /// One JSON line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses a journal; returns the 1-based line number and reason of the first bad line.
///
/// A torn last line (a crash while appending) is ignored: its change was never applied,
/// because the apply layer writes and flushes the intent first.
pub fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => out.push(e),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err((i + 1, e.to_string())),
        }
    }
    Ok(out)
}

/// A DACL change not yet undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Id.
    pub id: u64,
    /// Path.
    pub path: String,
    /// Previous DACL.
    pub before: String,
    /// ACEs added.
    pub aces: Vec<String>,
    /// Whether the `Applied` line was written.
    pub applied: bool,
    /// The object's creation time recorded with `Applied`.
    pub created: Option<u64>,
    /// The object's volume serial and file ID recorded with `Applied`.
    pub file_id: Option<String>,
}

/// What identifies an object on disk now: its creation time and its volume serial and
/// file ID (see [`Entry::Applied`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectId {
    /// Creation time (Windows file time).
    pub created: Option<u64>,
    /// `vvvvvvvv-iiiiiiiiiiiiiiii` (volume serial, file ID; hex).
    pub file_id: Option<String>,
}

impl ObjectId {
    /// The text form of a volume serial number and a 64-bit file index.
    pub fn file_id_text(volume: u32, index: u64) -> String {
        format!("{volume:08x}-{index:016x}")
    }

    /// Whether a journaled change was made to this very object: the file IDs must be
    /// known and equal, and so must the creation times. An entry without a file ID (an
    /// earlier version's) never matches, so the object is visited once and
    /// re-identified.
    pub fn is(&self, c: &Change) -> bool {
        self.file_id.is_some() && c.file_id == self.file_id && c.created == self.created
    }
}

/// What the journal says is still in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outstanding {
    /// Changes applied or possibly half-applied, in id order.
    pub changes: Vec<Change>,
    /// Placeholders not yet removed: (id, path, dir).
    pub placeholders: Vec<(u64, String, bool)>,
}

impl Outstanding {
    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.placeholders.is_empty()
    }

    /// Paths to restore, each with the DACL it had before workfence's *first*
    /// outstanding change to it (later `before`s already hold workfence's ACEs), and
    /// every change id that the restore undoes.
    pub fn restore_plan(&self) -> Vec<(String, String, Vec<u64>)> {
        let mut by_path: BTreeMap<String, (u64, String, Vec<u64>)> = BTreeMap::new();
        for c in &self.changes {
            let key = crate::path::fold_case(&c.path);
            let e = by_path
                .entry(key)
                .or_insert_with(|| (c.id, c.before.clone(), Vec::new()));
            if c.id < e.0 {
                e.0 = c.id;
                e.1 = c.before.clone();
            }
            e.2.push(c.id);
        }
        let mut out: Vec<(u64, String, String, Vec<u64>)> = Vec::new();
        for c in &self.changes {
            let key = crate::path::fold_case(&c.path);
            if let Some((first, before, ids)) = by_path.remove(&key) {
                out.push((first, c.path.clone(), before, ids));
            }
        }
        // Undo the newest first, so nested paths unwind in reverse order of application.
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        out.into_iter().map(|(_, p, b, ids)| (p, b, ids)).collect()
    }

    /// Whether `path` already carries an applied change adding exactly these ACEs.
    pub fn has_applied(&self, path: &str, aces: &[String]) -> bool {
        let key = crate::path::fold_case(path);
        let mut have: Vec<&String> = self
            .changes
            .iter()
            .filter(|c| c.applied && crate::path::fold_case(&c.path) == key)
            .flat_map(|c| c.aces.iter())
            .collect();
        have.sort();
        aces.iter().all(|a| have.binary_search(&a).is_ok())
    }
}

/// Whether the journal shows every ACE of `aces` applied on `path` (in the form
/// planned, or with inheritance dropped, as it is applied to a file) to the object
/// `now` ([`ObjectId::is`]), so that a run need not open the object for writing at
/// all. An unknown identity is never covered. Only grants are trusted this way: a grant removed
/// behind workfence's back makes the command fail, never the sandbox leak. Deny ACEs
/// are always checked on the object (see [`must_visit`]).
pub fn covered(o: &Outstanding, path: &str, aces: &[crate::sddl::Ace], now: &ObjectId) -> bool {
    if now.file_id.is_none() {
        return false;
    }
    let key = crate::path::fold_case(path);
    let have: std::collections::BTreeSet<&str> = o
        .changes
        .iter()
        .filter(|c| c.applied && now.is(c) && crate::path::fold_case(&c.path) == key)
        .flat_map(|c| c.aces.iter().map(String::as_str))
        .collect();
    let flat = |a: &crate::sddl::Ace| {
        let mut f = a.clone();
        f.inherit = crate::sddl::Inherit::None;
        f.sddl()
    };
    // A tree grant journaled without its inheritance flags shows the object is a file,
    // where inherit-only ACEs are left out (they would become effective there).
    let is_file = aces.iter().any(|a| {
        a.inherit == crate::sddl::Inherit::Tree
            && !have.contains(a.sddl().as_str())
            && have.contains(flat(a).as_str())
    });
    aces.iter().all(|a| {
        (is_file && a.inherit == crate::sddl::Inherit::InheritOnly)
            || have.contains(a.sddl().as_str())
            || have.contains(flat(a).as_str())
    })
}

/// Whether a run must open the object at `path` to apply `aces`: always for deny ACEs
/// (they are what keeps the command in, and are few: protected and hidden paths), and
/// for grants the journal does not show applied. This is what keeps a run on a large
/// workspace from touching more than a handful of objects after the first.
pub fn must_visit(o: &Outstanding, path: &str, aces: &[crate::sddl::Ace], now: &ObjectId) -> bool {
    aces.iter().any(|a| a.kind == crate::sddl::AceKind::Deny) || !covered(o, path, aces, now)
}

/// Folds the entries into what is still in place.
pub fn outstanding(entries: &[Entry]) -> Outstanding {
    let mut changes: BTreeMap<u64, Change> = BTreeMap::new();
    let mut placeholders: BTreeMap<u64, (String, bool)> = BTreeMap::new();
    for e in entries {
        match e {
            Entry::Intent {
                id,
                path,
                before,
                aces,
                ..
            } => {
                changes.insert(
                    *id,
                    Change {
                        id: *id,
                        path: path.clone(),
                        before: before.clone(),
                        aces: aces.clone(),
                        applied: false,
                        created: None,
                        file_id: None,
                    },
                );
            }
            Entry::Applied {
                id,
                created,
                file_id,
                ..
            } => {
                // A later `Applied` for the same change re-identifies the object
                // (written when a run found the ACEs in place but the entry unmatched).
                if let Some(c) = changes.get_mut(id) {
                    c.applied = true;
                    c.created = *created;
                    c.file_id = file_id.clone();
                }
            }
            Entry::Restored { id, .. } => {
                changes.remove(id);
            }
            Entry::Created { id, path, dir, .. } => {
                placeholders.insert(*id, (path.clone(), *dir));
            }
            Entry::Removed { id, .. } => {
                placeholders.remove(id);
            }
        }
    }
    Outstanding {
        changes: changes.into_values().collect(),
        placeholders: placeholders
            .into_iter()
            .map(|(id, (p, d))| (id, p, d))
            .collect(),
    }
}

/// The entries a journal still needs: every entry of a change or placeholder that is
/// outstanding (an intent without its `Restored`, a placeholder without its `Removed`),
/// in their order. The entries of finished changes say nothing a recovery or cleanup
/// could use. Rewriting the journal with these (atomically) is what keeps it from
/// growing with every run: each run adds and removes placeholders, so without it the
/// journal, read twice per run, only grows.
pub fn compacted(entries: &[Entry]) -> Vec<Entry> {
    let o = outstanding(entries);
    let live: std::collections::BTreeSet<u64> = o
        .changes
        .iter()
        .map(|c| c.id)
        .chain(o.placeholders.iter().map(|(id, _, _)| *id))
        .collect();
    entries
        .iter()
        .filter(|e| live.contains(&e.id()))
        .cloned()
        .collect()
}

/// Whether an entry must reach the disk before the next step (`FlushFileBuffers`):
/// an intent (`Intent`, `Created`) must, since it is written *before* the change and is
/// what lets a crash be undone. A completion record (`Applied`, `Restored`,
/// `Removed`) need not: if a crash loses one, recovery takes the change for
/// half-done and undoes it again, which is idempotent (undo removes exactly
/// workfence's ACEs, an absent placeholder is skipped), and the next run re-applies
/// what it needs. So a run pays one flush per change instead of two.
pub fn must_sync(e: &Entry) -> bool {
    matches!(e, Entry::Intent { .. } | Entry::Created { .. })
}

/// The next free change id.
pub fn next_id(entries: &[Entry]) -> u64 {
    entries.iter().map(Entry::id).max().map_or(1, |m| m + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fid(n: u64) -> String {
        ObjectId::file_id_text(0xabcd, n)
    }

    fn at(n: u64) -> ObjectId {
        ObjectId {
            created: Some(n),
            file_id: Some(fid(n)),
        }
    }

    #[test]
    fn objects_are_recognised_by_file_id_not_by_timestamps() {
        use crate::sddl::{Ace, AceKind, Inherit};
        let grant = Ace {
            kind: AceKind::Allow,
            sid: "S-1-5-21-1-2-3-1".into(),
            mask: 0x1301bf,
            inherit: Inherit::Tree,
        };
        let applied = |created: Option<u64>, file_id: Option<String>| {
            vec![
                Entry::Intent {
                    id: 1,
                    time: 0,
                    path: "C:\\w".into(),
                    before: "D:".into(),
                    aces: vec![grant.sddl()],
                },
                Entry::Applied {
                    id: 1,
                    time: 0,
                    created,
                    file_id,
                },
            ]
        };
        let one = std::slice::from_ref(&grant);
        let o = outstanding(&applied(Some(7), Some(fid(7))));
        assert!(covered(&o, "C:\\w", one, &at(7)));
        // Same creation time (SetFileTime, NTFS tunnelling), another object: visit.
        let tunnelled = ObjectId {
            created: Some(7),
            file_id: Some(fid(9)),
        };
        assert!(!covered(&o, "C:\\w", one, &tunnelled));
        // Same file ID on another volume: visit.
        let other_volume = ObjectId {
            created: Some(7),
            file_id: Some(ObjectId::file_id_text(0x1234, 7)),
        };
        assert!(!covered(&o, "C:\\w", one, &other_volume));
        // Identity unknown now: visit.
        let unknown = ObjectId {
            created: Some(7),
            file_id: None,
        };
        assert!(!covered(&o, "C:\\w", one, &unknown));
        // An earlier version's entry (creation time only) is not trusted...
        let mut entries = applied(Some(7), None);
        assert!(!covered(&outstanding(&entries), "C:\\w", one, &at(7)));
        // ...until a run re-identifies the object with a second Applied line.
        entries.push(Entry::Applied {
            id: 1,
            time: 1,
            created: Some(7),
            file_id: Some(fid(7)),
        });
        assert!(covered(&outstanding(&entries), "C:\\w", one, &at(7)));
        // The line format keeps the file ID.
        let line = entries[2].to_line();
        assert!(
            line.contains("\"file_id\":\"0000abcd-0000000000000007\""),
            "{line}"
        );
        assert_eq!(
            parse(&format!("{line}\n")).unwrap(),
            vec![entries[2].clone()]
        );
    }

    #[test]
    fn compaction_keeps_exactly_what_is_outstanding() {
        let mut entries = Vec::new();
        // Ten runs' worth of finished work: a grant applied then restored, and a
        // placeholder created then removed.
        for run in 0..10u64 {
            let (a, b) = (100 + 2 * run, 101 + 2 * run);
            entries.push(intent(a, "C:\\w\\x", "D:"));
            entries.push(Entry::Applied {
                id: a,
                time: 0,
                created: Some(1),
                file_id: Some(fid(1)),
            });
            entries.push(Entry::Restored { id: a, time: 0 });
            entries.push(Entry::Created {
                id: b,
                time: 0,
                path: "C:\\w\\.codex".into(),
                dir: true,
            });
            entries.push(Entry::Removed { id: b, time: 0 });
        }
        // Outstanding: an applied grant, a half-applied one, a live placeholder.
        entries.push(intent(1, "C:\\w", "D:(A;;FA;;;SY)"));
        entries.push(Entry::Applied {
            id: 1,
            time: 0,
            created: Some(7),
            file_id: Some(fid(7)),
        });
        entries.push(intent(2, "C:\\w\\y", "D:"));
        entries.push(Entry::Created {
            id: 3,
            time: 0,
            path: "C:\\w\\.mcp.json".into(),
            dir: false,
        });
        let c = compacted(&entries);
        assert_eq!(c.len(), 4, "{c:?}");
        // Same meaning: recovery and recognition see exactly what they saw before.
        assert_eq!(outstanding(&c), outstanding(&entries));
        // Idempotent, and it round-trips through the file format.
        assert_eq!(compacted(&c), c);
        let text: String = c.iter().map(|e| format!("{}\n", e.to_line())).collect();
        assert_eq!(parse(&text).unwrap(), c);
        // Ids stay unique after compaction (a dropped id may be reused: nothing names it).
        assert!(next_id(&c) > 3);
        // Nothing outstanding: the journal becomes empty.
        assert!(compacted(&entries[..50]).is_empty());
        // Only intents are flushed before going on.
        assert!(must_sync(&entries[0]) && must_sync(&entries[3]));
        assert!(!must_sync(&entries[1]) && !must_sync(&entries[2]) && !must_sync(&entries[4]));
    }

    fn intent(id: u64, path: &str, before: &str) -> Entry {
        Entry::Intent {
            id,
            time: 1_700_000_000 + id,
            path: path.into(),
            before: before.into(),
            aces: vec![format!("(A;OICI;0x1301bf;;;S-1-5-21-1-2-3-{id})")],
        }
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let entries = vec![
            intent(1, "C:\\w", "D:(A;;FA;;;SY)"),
            Entry::Applied {
                id: 1,
                time: 5,
                created: Some(7),
                file_id: Some(fid(7)),
            },
            Entry::Created {
                id: 2,
                time: 6,
                path: "C:\\w\\.codex".into(),
                dir: true,
            },
        ];
        let mut text: String = entries.iter().map(|e| e.to_line() + "\n").collect();
        assert_eq!(parse(&text).unwrap(), entries);
        text.push_str("{\"op\":\"appl");
        assert_eq!(parse(&text).unwrap(), entries);
        let bad = format!("{{oops\n{text}");
        assert_eq!(parse(&bad).unwrap_err().0, 1);
        assert_eq!(next_id(&entries), 3);
        assert_eq!(next_id(&[]), 1);
    }

    #[test]
    fn journaled_grants_are_recognised_denies_are_checked() {
        use crate::sddl::{Ace, AceKind, Inherit};
        let grant = Ace {
            kind: AceKind::Allow,
            sid: "S-1-5-21-1-2-3-1".into(),
            mask: 0x1301bf,
            inherit: Inherit::Tree,
        };
        let entries = vec![
            Entry::Intent {
                id: 1,
                time: 0,
                path: "C:\\w".into(),
                before: "D:".into(),
                aces: vec![grant.sddl()],
            },
            Entry::Applied {
                id: 1,
                time: 0,
                created: Some(7),
                file_id: Some(fid(7)),
            },
        ];
        let o = outstanding(&entries);
        assert!(covered(&o, "c:\\W", std::slice::from_ref(&grant), &at(7)));
        assert!(!must_visit(
            &o,
            "C:\\w",
            std::slice::from_ref(&grant),
            &at(7)
        ));
        // Not applied yet (intent only): visit.
        let o2 = outstanding(&entries[..1]);
        assert!(must_visit(
            &o2,
            "C:\\w",
            std::slice::from_ref(&grant),
            &at(7)
        ));
        // Another path, or another ACE: visit.
        assert!(must_visit(
            &o,
            "C:\\w\\x",
            std::slice::from_ref(&grant),
            &at(7)
        ));
        let mut other = grant.clone();
        other.sid = "S-1-5-21-1-2-3-2".into();
        assert!(must_visit(&o, "C:\\w", &[grant.clone(), other], &at(7)));
        // A file got the grant without inheritance flags: still recognised.
        let mut flat = grant.clone();
        flat.inherit = Inherit::None;
        let file = vec![
            Entry::Intent {
                id: 1,
                time: 0,
                path: "C:\\w\\f.txt".into(),
                before: "D:".into(),
                aces: vec![flat.sddl()],
            },
            Entry::Applied {
                id: 1,
                time: 0,
                created: Some(7),
                file_id: Some(fid(7)),
            },
        ];
        assert!(covered(
            &outstanding(&file),
            "C:\\w\\f.txt",
            std::slice::from_ref(&grant),
            &at(7)
        ));
        // The OWNER RIGHTS inherit-only ACE is left out on a file: still recognised
        // there, but not on a directory that lacks it.
        let owner = Ace {
            kind: AceKind::Allow,
            sid: "S-1-3-4".into(),
            mask: 0x1301bf,
            inherit: Inherit::InheritOnly,
        };
        assert!(covered(
            &outstanding(&file),
            "C:\\w\\f.txt",
            &[grant.clone(), owner.clone()],
            &at(7)
        ));
        assert!(!covered(&o, "C:\\w", &[grant.clone(), owner], &at(7)));
        // The path was deleted and re-created (another creation time), or the time is
        // unknown: visit.
        assert!(must_visit(
            &o,
            "C:\\w",
            std::slice::from_ref(&grant),
            &at(8)
        ));
        assert!(must_visit(
            &o,
            "C:\\w",
            std::slice::from_ref(&grant),
            &ObjectId::default()
        ));
        // Denies are always checked on the object.
        let mut deny = grant;
        deny.kind = AceKind::Deny;
        let d = vec![
            Entry::Intent {
                id: 1,
                time: 0,
                path: "C:\\w\\.git".into(),
                before: "D:".into(),
                aces: vec![deny.sddl()],
            },
            Entry::Applied {
                id: 1,
                time: 0,
                created: Some(7),
                file_id: Some(fid(7)),
            },
        ];
        assert!(covered(
            &outstanding(&d),
            "C:\\w\\.git",
            std::slice::from_ref(&deny),
            &at(7)
        ));
        assert!(must_visit(&outstanding(&d), "C:\\w\\.git", &[deny], &at(7)));
    }

    #[test]
    fn restore_uses_the_first_before() {
        let entries = vec![
            intent(1, "C:\\w", "D:ORIGINAL"),
            Entry::Applied {
                id: 1,
                time: 0,
                created: Some(7),
                file_id: Some(fid(7)),
            },
            intent(2, "c:\\W", "D:ORIGINAL+1"),
            Entry::Applied {
                id: 2,
                time: 0,
                created: Some(7),
                file_id: Some(fid(7)),
            },
            intent(3, "C:\\w\\.git", "D:GIT"),
            intent(4, "C:\\gone", "D:X"),
            Entry::Restored { id: 4, time: 0 },
            Entry::Created {
                id: 5,
                time: 0,
                path: "C:\\w\\.codex".into(),
                dir: true,
            },
            Entry::Created {
                id: 6,
                time: 0,
                path: "C:\\w\\.mcp.json".into(),
                dir: false,
            },
            Entry::Removed { id: 6, time: 0 },
        ];
        let o = outstanding(&entries);
        assert_eq!(o.changes.len(), 3);
        assert!(!o.changes[2].applied, "3 was only intended");
        assert_eq!(
            o.restore_plan(),
            vec![
                ("C:\\w\\.git".to_string(), "D:GIT".to_string(), vec![3]),
                ("C:\\w".to_string(), "D:ORIGINAL".to_string(), vec![1, 2]),
            ]
        );
        assert_eq!(o.placeholders, vec![(5, "C:\\w\\.codex".to_string(), true)]);
        assert!(o.has_applied(
            "C:\\W",
            &["(A;OICI;0x1301bf;;;S-1-5-21-1-2-3-2)".to_string()]
        ));
        assert!(!o.has_applied(
            "C:\\w\\.git",
            &["(A;OICI;0x1301bf;;;S-1-5-21-1-2-3-3)".to_string()]
        ));
        let mut all = entries.clone();
        for id in [1, 2, 3] {
            all.push(Entry::Restored { id, time: 0 });
        }
        all.push(Entry::Removed { id: 5, time: 0 });
        assert!(outstanding(&all).is_empty());
    }
}
