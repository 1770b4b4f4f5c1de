//! Applying the plan's ACEs with the journal, undoing them, and crash recovery.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::decisions;
use crate::error::WindowsError;
use crate::journal::{self, Entry, ObjectId, Outstanding};
use crate::path::WinPath;
use crate::plan::{AcePlan, AcePurpose, PartialPropagation, WindowsPlan, JOURNAL_FILE};
use crate::sddl::Dacl;
use crate::sddl::Inherit;
use crate::win::state::{self, io, Lock};
use crate::win::sys;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What identifies the object at `path` now (creation time, volume serial and file
/// ID), to tell a re-created path from the object the journal describes.
fn identity(path: &str) -> ObjectId {
    // One open for all three (the creation time is the same value as
    // `MetadataExt::creation_time`, which earlier versions journaled).
    match sys::file_identity(path) {
        Some((volume, index, created)) => ObjectId {
            created: Some(created),
            file_id: Some(ObjectId::file_id_text(volume, index)),
        },
        None => ObjectId::default(),
    }
}

/// The journal, open for appending while the state lock is held.
pub struct Journal {
    path: PathBuf,
    entries: Vec<Entry>,
    next: u64,
    _lock: Lock,
}

impl Journal {
    /// Takes the state lock and reads the journal.
    pub fn open() -> Result<Journal, WindowsError> {
        let lock = Lock::acquire()?;
        let path = state::state_dir().join(JOURNAL_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("reading the ACL journal", &path)(e)),
        };
        let entries = journal::parse(&text).map_err(|(line, why)| WindowsError::Journal {
            path: path.clone(),
            line,
            why,
        })?;
        let next = journal::next_id(&entries);
        Ok(Journal {
            path,
            entries,
            next,
            _lock: lock,
        })
    }

    fn id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    /// Appends one entry; an intent is flushed *before* the change it describes is
    /// made, a completion record is not (see [`journal::must_sync`]).
    fn append(&mut self, e: Entry) -> Result<(), WindowsError> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io("writing the ACL journal", &self.path))?;
        f.write_all(format!("{}\n", e.to_line()).as_bytes())
            .and_then(|_| {
                if journal::must_sync(&e) {
                    f.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(io("writing the ACL journal", &self.path))?;
        self.entries.push(e);
        Ok(())
    }

    fn outstanding(&self) -> Outstanding {
        journal::outstanding(&self.entries)
    }

    /// Rewrites the journal with only what is outstanding ([`journal::compacted`]),
    /// atomically (a temp file, flushed, renamed over it), when that drops anything.
    fn compact(&mut self) -> Result<(), WindowsError> {
        let keep = journal::compacted(&self.entries);
        if keep.len() == self.entries.len() {
            return Ok(());
        }
        let text: String = keep.iter().map(|e| format!("{}\n", e.to_line())).collect();
        state::write_atomic(&self.path, text.as_bytes())?;
        self.entries = keep;
        Ok(())
    }
}

/// Opens an object for an ACL change, refusing reparse points and objects whose final
/// path is not the planned one (a junction swapped in anywhere on the path).
fn target(path: &str) -> Result<Option<sys::AclTarget>, WindowsError> {
    let planned = WinPath::parse(path).map_err(|source| WindowsError::BadPath {
        what: "ACL target".into(),
        source,
    })?;
    let Some(t) = sys::open_for_acl(&planned.verbatim_string())? else {
        return Ok(None);
    };
    let actual = WinPath::parse(&t.final_path)
        .map(|p| p.key())
        .unwrap_or_default();
    if t.reparse || actual != planned.key() {
        return Err(WindowsError::Reparse {
            path: path.to_string(),
            actual: t.final_path.clone(),
        });
    }
    Ok(Some(t))
}

/// Adds `aces` to the object at `path` (journaled); nothing when already present.
/// Returns a note when a tree grant reached the object but not all of its existing
/// children (propagation stopped at one without `WRITE_DAC` for the user, say).
fn add_aces(
    j: &mut Journal,
    path: &str,
    aces: &[&AcePlan],
) -> Result<Option<String>, WindowsError> {
    let Some(t) = target(path)? else {
        return Err(WindowsError::State {
            step: "applying the sandbox ACLs".into(),
            path: PathBuf::from(path),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "the path disappeared"),
        });
    };
    let before = t.dacl_sddl()?;
    let mut dacl = Dacl::parse(&before).map_err(|source| WindowsError::Dacl {
        path: path.to_string(),
        source,
    })?;
    // Inheritance flags mean nothing on a file (an extra writable root may be one).
    // An inherit-only ACE on a file would become an effective one: it is left out.
    let wanted: Vec<_> = aces
        .iter()
        .filter(|a| t.dir || a.ace.inherit != Inherit::InheritOnly)
        .map(|a| {
            let mut ace = a.ace.clone();
            if !t.dir {
                ace.inherit = crate::sddl::Inherit::None;
            }
            ace
        })
        .collect();
    let added = dacl.add(&wanted);
    if added.is_empty() {
        // Every ACE is explicitly in place, but the journal did not recognise the
        // object (an entry of an earlier version without a file ID, or an object
        // re-created with the same grants): record what it is now, so later runs need
        // not open it.
        let cur = identity(path);
        if cur.file_id.is_some() {
            let texts: Vec<String> = wanted.iter().map(|a| a.sddl()).collect();
            let key = crate::path::fold_case(path);
            let stale: Vec<u64> = j
                .outstanding()
                .changes
                .iter()
                .filter(|c| {
                    c.applied
                        && !cur.is(c)
                        && crate::path::fold_case(&c.path) == key
                        && c.aces.iter().all(|a| texts.contains(a))
                })
                .map(|c| c.id)
                .collect();
            for id in stale {
                j.append(Entry::Applied {
                    id,
                    time: now(),
                    created: cur.created,
                    file_id: cur.file_id.clone(),
                })?;
            }
        }
        return Ok(None);
    }
    let id = j.id();
    j.append(Entry::Intent {
        id,
        time: now(),
        path: path.to_string(),
        before: Dacl::parse(&before).map(|d| d.to_sddl()).unwrap_or(before),
        aces: added.iter().map(|a| a.sddl()).collect(),
    })?;
    let new = dacl.to_sddl();
    let mut note = None;
    // This object only; what its inheritable ACEs give the existing tree below is
    // workfence's own walk, which never goes through a junction or symbolic link.
    t.set_dacl_no_propagation(&new)?;
    if t.dir && added.iter().any(|a| a.inherit != Inherit::None) {
        let walk = propagate(&t, &added, &[], None);
        let purposes: Vec<AcePurpose> = aces.iter().map(|a| a.purpose).collect();
        let refuse = crate::plan::on_partial_propagation(&purposes) == PartialPropagation::Refuse;
        if let Some(gap) = walk.gap(refuse) {
            if refuse {
                // Fail closed: the intent stays journaled, so `cleanup` (or the next
                // run's recovery) undoes whatever part of the tree did change.
                return Err(WindowsError::PartialDeny {
                    path: path.to_string(),
                    cause: gap,
                });
            }
            note = Some(format!(
                "{path}: the new ACEs did not reach every existing file below it ({gap}); files created from now on get them"
            ));
        }
        if walk.links > 0 {
            let n = format!(
                "{path}: {} junction(s) or symbolic link(s) below it got the ACEs on the link itself; workfence never propagates through a link, so what they point at keeps its DACL",
                walk.links
            );
            note = Some(match note {
                Some(x) => format!("{x}\n{n}"),
                None => n,
            });
        }
    }
    let obj = identity(path);
    j.append(Entry::Applied {
        id,
        time: now(),
        created: obj.created,
        file_id: obj.file_id,
    })?;
    Ok(note)
}

type Walk = decisions::WalkReport;

/// Gives every existing object below `root` the inherited copies of `add` and takes
/// away those of `remove` ([`crate::sddl::inherited_copy`]), each object by its own
/// handle and without propagation, deciding at each one with
/// [`decisions::propagation_visit`]. The walk never uses a path below the root: each
/// directory is listed from its open handle and each child opened by name relative
/// to it with `FILE_OPEN_REPARSE_POINT` ([`sys::list_dir`], [`sys::open_child`]), so
/// a junction, whether it was there before or a sandboxed command made one of a
/// directory meanwhile, is never followed; a child whose final path is not inside
/// the root's is refused all the same ([`decisions::inside_root`]).
///
/// During a removal, an ACE that a directory still passes down itself (a nested root
/// with the same grant, or a copy from a root above that still holds it) is not taken
/// from its children ([`crate::sddl::Dacl::not_passed_down`]); `root_dacl` is the
/// root's DACL after the change, for the same rule at the top.
fn propagate(
    root: &sys::AclTarget,
    add: &[crate::sddl::Ace],
    remove: &[crate::sddl::Ace],
    root_dacl: Option<&Dacl>,
) -> Walk {
    let mut walk = Walk::default();
    let remove = match root_dacl {
        Some(d) => d.not_passed_down(remove),
        None => remove.to_vec(),
    };
    if add.is_empty() && remove.is_empty() {
        return walk;
    }
    walk_dir(root, &root.final_path, root, add, &remove, 1, &mut walk);
    walk
}

fn walk_dir(
    root: &sys::AclTarget,
    root_path: &str,
    dir: &sys::AclTarget,
    add: &[crate::sddl::Ace],
    remove: &[crate::sddl::Ace],
    depth: usize,
    walk: &mut Walk,
) {
    if !dir.listable {
        return walk.fail(format!(
            "{}: cannot be listed (no list permission, or held open exclusively)",
            dir.final_path
        ));
    }
    let entries = match sys::list_dir(dir) {
        Ok(e) => e,
        Err(e) => return walk.fail(e.to_string()),
    };
    for entry in entries {
        const DOT: u16 = b'.' as u16;
        if entry.name == [DOT] || entry.name == [DOT, DOT] {
            continue;
        }
        let listed_dir = entry.attributes & decisions::win32::FILE_ATTRIBUTE_DIRECTORY != 0;
        let t = match sys::open_child(dir, &entry.name, listed_dir) {
            Ok(Some(t)) => t,
            Ok(None) => continue, // removed meanwhile
            Err(e) => {
                walk.fail(e.to_string());
                continue;
            }
        };
        let name = t.final_path.clone();
        if !decisions::inside_root(root_path, &name) {
            walk.fail(format!(
                "{name}: resolves outside {}, left unchanged",
                root.final_path
            ));
            continue;
        }
        let mut dacl = match t.dacl_sddl().and_then(|d| {
            Dacl::parse(&d).map_err(|source| WindowsError::Dacl {
                path: name.clone(),
                source,
            })
        }) {
            Ok(d) => d,
            Err(e) => {
                walk.fail(e.to_string());
                continue;
            }
        };
        let visit = decisions::propagation_visit(t.dir, t.reparse_tag, dacl.protected(), t.links);
        walk.count(visit);
        if matches!(visit, decisions::Visit::Skip | decisions::Visit::HardLinked) {
            continue;
        }
        let copies = |aces: &[crate::sddl::Ace]| -> Vec<String> {
            aces.iter()
                .filter_map(|a| crate::sddl::inherited_copy(a, t.dir))
                .collect()
        };
        let changed = dacl.add_inherited(&copies(add)) + dacl.remove_inherited(&copies(remove));
        if changed > 0 {
            if let Err(e) = t.set_dacl_no_propagation(&dacl.to_sddl()) {
                walk.fail(e.to_string());
                continue;
            }
        }
        match visit {
            decisions::Visit::Apply { descend: true }
                if depth >= decisions::MAX_PROPAGATION_DEPTH =>
            {
                walk.too_deep += 1;
            }
            decisions::Visit::Apply { descend: true } => {
                let below = dacl.not_passed_down(remove);
                if add.is_empty() && below.is_empty() {
                    continue;
                }
                walk_dir(root, root_path, &t, add, &below, depth + 1, walk);
            }
            _ => {}
        }
    }
}

/// Applies `aces` object by object: an object the journal shows granted is not opened
/// (so a run on a large workspace touches only its protected and hidden paths after
/// the first); a grant that cannot be applied becomes a note, a deny that cannot be
/// applied stops the run (see [`AcePurpose::fails_closed`]).
fn apply_aces(
    j: &mut Journal,
    aces: &[&AcePlan],
    notes: &mut Vec<String>,
) -> Result<(), WindowsError> {
    let o = j.outstanding();
    for (path, group) in by_path(aces.iter().copied()) {
        let plain: Vec<crate::sddl::Ace> = group.iter().map(|a| a.ace.clone()).collect();
        if !journal::must_visit(&o, &path, &plain, &identity(&path)) {
            continue;
        }
        let fail_closed = group.iter().any(|a| a.purpose.fails_closed());
        if fs::symlink_metadata(&path).is_err() {
            if group.iter().all(|a| a.purpose == AcePurpose::Hide) {
                // Nothing to hide any more.
                continue;
            }
            if group
                .iter()
                .all(|a| matches!(a.purpose, AcePurpose::Protect | AcePurpose::ProtectChild))
            {
                // A protected path vanished since the layout was computed (for example
                // another run's placeholder): guard it with a placeholder of our own.
                let dir = group.iter().any(|a| {
                    a.ace.inherit == Inherit::Tree || a.purpose == AcePurpose::ProtectChild
                });
                placeholder(j, &path, dir)?;
            }
        }
        match add_aces(j, &path, &group) {
            Ok(Some(n)) => notes.push(n),
            Ok(None) => {}
            Err(e) if !fail_closed => notes.push(format!(
                "{path} stays as it was ({e}); the command may be unable to use it"
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Groups ACEs by object, keeping the plan's order.
fn by_path<'a>(aces: impl Iterator<Item = &'a AcePlan>) -> Vec<(String, Vec<&'a AcePlan>)> {
    let mut out: Vec<(String, Vec<&AcePlan>)> = Vec::new();
    for a in aces {
        match out
            .iter_mut()
            .find(|(p, _)| crate::path::fold_case(p) == crate::path::fold_case(&a.path))
        {
            Some((_, v)) => v.push(a),
            None => out.push((a.path.clone(), vec![a])),
        }
    }
    out
}

/// Applies the persistent ACEs and creates the per-run placeholders. Returns notes
/// about grants that could not be applied everywhere (the run goes on).
pub fn apply(plan: &WindowsPlan, marker: &Path) -> Result<Vec<String>, WindowsError> {
    let mut j = Journal::open()?;
    recover(&mut j, false, Some(marker))?;
    fs::create_dir_all(&plan.temp_dir)
        .map_err(io("creating the private temp dir", plan.temp_dir.as_ref()))?;
    let mut notes = Vec::new();
    let persistent: Vec<&AcePlan> = plan.aces.iter().filter(|a| !a.per_run).collect();
    apply_aces(&mut j, &persistent, &mut notes)?;
    for ph in &plan.placeholders {
        placeholder(&mut j, &ph.path, ph.dir)?;
        let aces: Vec<&AcePlan> = plan
            .aces
            .iter()
            .filter(|a| {
                a.per_run && crate::path::fold_case(&a.path) == crate::path::fold_case(&ph.path)
            })
            .collect();
        // A placeholder is new and empty: there is nothing propagation could miss.
        add_aces(&mut j, &ph.path, &aces)?;
    }
    Ok(notes)
}

/// Applies grants outside a run (setup: the read grants on toolchains, so that the
/// first run does not pay for their propagation). Returns notes as [`apply`] does.
pub fn apply_grants(aces: &[AcePlan]) -> Result<Vec<String>, WindowsError> {
    let mut j = Journal::open()?;
    let mut notes = Vec::new();
    let refs: Vec<&AcePlan> = aces.iter().collect();
    apply_aces(&mut j, &refs, &mut notes)?;
    Ok(notes)
}

/// Creates an empty placeholder for a missing protected path (journaled first).
fn placeholder(j: &mut Journal, path: &str, dir: bool) -> Result<(), WindowsError> {
    let id = j.id();
    j.append(Entry::Created {
        id,
        time: now(),
        path: path.to_string(),
        dir,
    })?;
    let res = if dir {
        fs::create_dir(path)
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map(|_| ())
    };
    match res {
        Ok(()) => Ok(()),
        // Created meanwhile by someone else: not ours to remove; it is protected anyway.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            j.append(Entry::Removed { id, time: now() })
        }
        Err(e) => Err(io(
            "creating a placeholder for a protected path",
            path.as_ref(),
        )(e)),
    }
}

/// Removes this run's placeholders unless another run on the workspace still needs
/// them, then compacts the journal (also while other runs live: the state lock is
/// held, and only finished entries are dropped).
pub fn finish_run(plan: &WindowsPlan, others_alive: bool) -> Result<(), WindowsError> {
    let mut j = Journal::open()?;
    if !others_alive && !plan.placeholders.is_empty() {
        remove_placeholders(&mut j, |p| {
            plan.placeholders
                .iter()
                .any(|ph| crate::path::fold_case(&ph.path) == crate::path::fold_case(p))
        })?;
    }
    j.compact()
}

/// Removes outstanding placeholders matching `filter` if they are still empty, and
/// marks the ACE changes on them as undone (the object is gone).
fn remove_placeholders(
    j: &mut Journal,
    filter: impl Fn(&str) -> bool,
) -> Result<Vec<String>, WindowsError> {
    let o = j.outstanding();
    let mut removed = Vec::new();
    for (id, path, dir) in o.placeholders {
        if !filter(&path) {
            continue;
        }
        let gone = match fs::symlink_metadata(&path) {
            Err(_) => true,
            Ok(m) if m.file_type().is_symlink() => false,
            Ok(_) if dir => fs::remove_dir(&path).is_ok(),
            Ok(m) if m.len() == 0 => fs::remove_file(&path).is_ok(),
            Ok(_) => false,
        };
        if gone {
            for c in o
                .changes
                .iter()
                .filter(|c| crate::path::fold_case(&c.path) == crate::path::fold_case(&path))
            {
                j.append(Entry::Restored {
                    id: c.id,
                    time: now(),
                })?;
            }
            removed.push(path);
        }
        // A placeholder that is no longer empty was filled by the user: keep it, and
        // let the restore below give it back its DACL.
        j.append(Entry::Removed { id, time: now() })?;
    }
    Ok(removed)
}

/// Restores one path to its DACL before workfence's first outstanding change.
fn restore(
    j: &mut Journal,
    path: &str,
    before: &str,
    ids: &[u64],
    notes: &mut Vec<String>,
) -> Result<(), WindowsError> {
    match target(path) {
        Ok(Some(t)) => {
            // Keep ACEs added by others since: restore only removes what we added.
            let now_sddl = t.dacl_sddl()?;
            let ours: Vec<String> = j
                .outstanding()
                .changes
                .iter()
                .filter(|c| ids.contains(&c.id))
                .flat_map(|c| c.aces.iter().cloned())
                .collect();
            let target_sddl = crate::sddl::undo(&now_sddl, before, &ours);
            t.set_dacl_no_propagation(&target_sddl)?;
            if t.dir {
                // Take back the inherited copies below, with the same walk that put them
                // there (never through a link).
                let aces: Vec<crate::sddl::Ace> = ours
                    .iter()
                    .filter_map(|a| crate::sddl::Ace::parse_own(a))
                    .filter(|a| a.inherit != Inherit::None)
                    .collect();
                if !aces.is_empty() {
                    let after = Dacl::parse(&target_sddl).ok();
                    if let Some(gap) = propagate(&t, &[], &aces, after.as_ref()).gap(false) {
                        notes.push(format!(
                            "{path}: inherited copies of workfence's ACEs may remain below it ({gap})"
                        ));
                    }
                }
            }
            notes.push(format!("restored the DACL of {path}"));
        }
        Ok(None) => notes.push(format!("{path} no longer exists; nothing to restore")),
        Err(e @ WindowsError::Reparse { .. }) => {
            notes.push(format!("left {path} alone: {e}"));
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    for id in ids {
        j.append(Entry::Restored {
            id: *id,
            time: now(),
        })?;
    }
    Ok(())
}

/// Finishes what a crashed run left: rolls back half-applied changes and, when no run
/// is alive, removes leftover placeholders. With `everything`, undoes all changes.
fn recover(
    j: &mut Journal,
    everything: bool,
    own: Option<&Path>,
) -> Result<Vec<String>, WindowsError> {
    let mut notes = Vec::new();
    let live = state::others_alive(&state::runs_dir(), own);
    if !live {
        notes.extend(
            remove_placeholders(j, |_| true)?
                .into_iter()
                .map(|p| format!("removed the placeholder {p}")),
        );
    }
    let o = j.outstanding();
    let incomplete: Vec<u64> = o
        .changes
        .iter()
        .filter(|c| !c.applied)
        .map(|c| c.id)
        .collect();
    for (path, before, ids) in o.restore_plan() {
        if everything || ids.iter().any(|i| incomplete.contains(i)) {
            if !everything && live {
                // Another run may be mid-apply on this path; leave it to that run.
                continue;
            }
            restore(j, &path, &before, &ids, &mut notes)?;
        }
    }
    Ok(notes)
}

/// `workfence cleanup`: restores every DACL in the journal and removes placeholders
/// and temp dirs.
pub fn cleanup() -> Result<String, WindowsError> {
    let mut j = Journal::open()?;
    if state::others_alive(&state::runs_dir(), None) {
        return Err(WindowsError::Runner(
            "another workfence run is active; wait for it to finish, then run `workfence cleanup` again".into(),
        ));
    }
    let mut notes = recover(&mut j, true, None)?;
    let temp = state::temp_root();
    if temp.exists() {
        match fs::remove_dir_all(&temp) {
            Ok(()) => notes.push(format!("removed {}", temp.display())),
            Err(e) => notes.push(format!("could not remove {}: {e}", temp.display())),
        }
    }
    j.compact()?;
    if notes.is_empty() {
        notes.push("nothing to clean up: the journal has no outstanding changes".into());
    }
    Ok(notes.join("\n"))
}
