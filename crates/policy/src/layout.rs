//! The filesystem layout of a policy: which real paths are writable, which are
//! protected inside them, and which are hidden. Every backend turns the same
//! [`FsLayout`] into its own mechanism (mounts, Seatbelt rules, ACEs), so that one
//! policy means the same on every OS.
//!
//! The host is read through [`FsProbe`], so this logic is pure and tested with a fake
//! filesystem; the `workfence` crate supplies the real probe.

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::model::{Mode, Policy, Source};

/// What kind of object a path names (not following a final symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A socket, fifo or device.
    Other,
}

/// Read-only access to the host filesystem, for layout discovery.
pub trait FsProbe {
    /// The kind of `p`, without following a final symlink; `None` if absent.
    fn kind(&self, p: &Path) -> Option<FileKind>;
    /// The canonical path (all symlinks resolved); `None` if it does not resolve.
    fn canonicalize(&self, p: &Path) -> Option<PathBuf>;
    /// A small text file's contents.
    fn read_to_string(&self, p: &Path) -> Option<String>;
    /// The names in a directory (empty if it cannot be read).
    fn read_dir(&self, p: &Path) -> Vec<String>;
}

/// Why a writable root is writable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootKind {
    /// The workspace.
    Workspace,
    /// An extra root from `--allow-write` or config.
    Extra,
    /// The gitdir or commondir of the workspace's repository, outside the workspace
    /// (linked worktree, submodule, workspace below the repository root).
    GitDir,
}

/// A writable directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WritableRoot {
    /// Canonical path.
    pub path: PathBuf,
    /// Why.
    pub kind: RootKind,
    /// Where it came from.
    pub source: Source,
}

/// How a protected path is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protection {
    /// Read-only, including metadata; cannot be renamed, replaced or deleted.
    ReadOnly,
    /// Stays writable inside, but the object itself cannot be renamed, replaced or
    /// deleted (the `.git` directory: git must write its index and objects).
    Pinned,
}

/// A path inside a writable root that must not be changed, or created when missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectedPath {
    /// Canonical path (the parent is canonical; the last component is literal).
    pub path: PathBuf,
    /// Current kind; `None` when it does not exist yet (then it must not be created).
    pub exists: Option<FileKind>,
    /// When missing: whether a placeholder should be a directory.
    pub missing_as_dir: bool,
    /// How.
    pub protection: Protection,
    /// Why (for explain).
    pub reason: String,
}

/// A path whose contents are hidden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HiddenPath {
    /// Canonical path.
    pub path: PathBuf,
    /// Directory or file.
    pub kind: FileKind,
    /// Where the deny rule came from.
    pub source: Source,
}

/// The resolved filesystem view of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsLayout {
    /// Writable trees, sorted, outermost first.
    pub writable: Vec<WritableRoot>,
    /// Protected paths inside writable roots, sorted.
    pub protected: Vec<ProtectedPath>,
    /// Hidden paths, sorted.
    pub hidden: Vec<HiddenPath>,
    /// The canonical working directory.
    pub cwd: PathBuf,
    /// Observations for explain (for example an auto-added gitdir).
    pub notes: Vec<String>,
}

/// Why a layout cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// The workspace does not exist or is not a directory.
    #[error(
        "workspace {0} does not exist or is not a directory; create it or pass another with -C"
    )]
    MissingWorkspace(PathBuf),
    /// A writable root does not exist.
    #[error("writable root {0} does not exist; create it first or drop --allow-write/allow_write for it")]
    MissingRoot(PathBuf),
    /// A writable root is too broad to grant.
    #[error("refusing to make {0} writable: it is the filesystem root or the home directory itself; name a narrower directory, or use --mode full-access")]
    TooBroad(PathBuf),
    /// The workspace lies inside a hidden path.
    #[error("workspace {0} is inside the hidden path {1}; pick another workspace, or take {1} off the secret list (allow_read)")]
    WorkspaceHidden(PathBuf, PathBuf),
    /// The working directory is not inside the sandbox view.
    #[error("working directory {0} does not exist; pass an existing --cwd")]
    MissingCwd(PathBuf),
}

fn glob_match(pat: &str, name: &str) -> bool {
    // `*` matches any run of characters; nothing else is special.
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.len() >= part.len() && rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

/// Parses `core.hooksPath` from git config text (last value wins, like git).
fn hooks_path(config: &str) -> Option<String> {
    let mut in_core = false;
    let mut found = None;
    for line in config.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            let sec = t
                .trim_start_matches('[')
                .split([']', ' ', '"'])
                .next()
                .unwrap_or("");
            in_core = sec.eq_ignore_ascii_case("core");
            // `[core] hooksPath = x` on one line
            if let Some(rest) = t.split_once(']').map(|(_, r)| r.trim()) {
                if in_core && !rest.is_empty() {
                    if let Some(v) = kv(rest, "hookspath") {
                        found = Some(v);
                    }
                }
            }
            continue;
        }
        if in_core {
            if let Some(v) = kv(t, "hookspath") {
                found = Some(v);
            }
        }
    }
    found
}

fn kv(line: &str, key: &str) -> Option<String> {
    let (k, v) = line.split_once('=')?;
    if !k.trim().eq_ignore_ascii_case(key) {
        return None;
    }
    let v = v
        .split(['#', ';'])
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    Some(v.to_string())
}

struct Builder<'a> {
    probe: &'a dyn FsProbe,
    home: PathBuf,
    policy: &'a Policy,
    layout: FsLayout,
}

impl Builder<'_> {
    fn within_writable(&self, p: &Path) -> bool {
        self.layout.writable.iter().any(|w| p.starts_with(&w.path))
    }

    fn protect(
        &mut self,
        path: PathBuf,
        protection: Protection,
        missing_as_dir: bool,
        reason: &str,
    ) {
        if self.layout.protected.iter().any(|p| p.path == path) {
            return;
        }
        let exists = self.probe.kind(&path);
        self.layout.protected.push(ProtectedPath {
            path: path.clone(),
            exists,
            missing_as_dir,
            protection,
            reason: reason.to_string(),
        });
        // Renaming an ancestor away (`mv .husky .old; mkdir -p .husky/_`) would move the
        // protection with it and free the name: pin every ancestor below the root.
        let root = self
            .layout
            .writable
            .iter()
            .filter(|w| path.starts_with(&w.path) && w.path != path)
            .map(|w| w.path.clone())
            .max_by_key(|w| w.components().count());
        if let Some(root) = root {
            let ancestors: Vec<PathBuf> = path
                .ancestors()
                .skip(1)
                .take_while(|a| *a != root && a.starts_with(&root))
                .map(Path::to_path_buf)
                .collect();
            for a in ancestors {
                if self.layout.protected.iter().any(|p| p.path == a) {
                    continue;
                }
                let exists = self.probe.kind(&a);
                self.layout.protected.push(ProtectedPath {
                    path: a,
                    exists,
                    missing_as_dir: true,
                    protection: Protection::Pinned,
                    reason: "ancestor of a protected path: cannot be renamed away".into(),
                });
            }
        }
    }

    fn protect_if_exists(&mut self, path: PathBuf, reason: &str) {
        if self.probe.kind(&path).is_some() {
            self.protect(path, Protection::ReadOnly, false, reason);
        }
    }

    fn add_root(&mut self, path: PathBuf, kind: RootKind, source: Source) {
        if self.layout.writable.iter().any(|w| w.path == path) {
            return;
        }
        self.layout
            .writable
            .push(WritableRoot { path, kind, source });
    }

    /// Protections of a git directory `g` (a gitdir or a commondir). `worktree` is the
    /// working tree it belongs to, for a relative `core.hooksPath`.
    fn protect_gitdir(&mut self, g: &Path, worktree: Option<&Path>, depth: u32) {
        self.protect(
            g.join("hooks"),
            Protection::ReadOnly,
            true,
            "git hooks run on the host",
        );
        self.protect(
            g.join("config"),
            Protection::ReadOnly,
            false,
            "git config can run commands (core.fsmonitor, filters, hooksPath)",
        );
        self.protect(
            g.join("config.worktree"),
            Protection::ReadOnly,
            false,
            "per-worktree git config (read when extensions.worktreeConfig is set)",
        );
        self.protect_if_exists(g.join("commondir"), "points git at another repository");
        for wt in self.probe.read_dir(&g.join("worktrees")) {
            let d = g.join("worktrees").join(&wt);
            self.protect_if_exists(d.join("config"), "git config of a linked worktree");
            self.protect(
                d.join("config.worktree"),
                Protection::ReadOnly,
                false,
                "git config of a linked worktree",
            );
            self.protect_if_exists(d.join("commondir"), "points git at another repository");
            self.protect_if_exists(d.join("hooks"), "git hooks of a linked worktree");
        }
        // A new submodule gitdir could carry its own config and hooks: `modules` is
        // read-only (and cannot be created); existing module gitdirs stay writable
        // (fetch, checkout), with their own config and hooks protected.
        let modules = g.join("modules");
        self.protect(
            modules.clone(),
            Protection::ReadOnly,
            true,
            "a new submodule gitdir could carry config and hooks",
        );
        if depth < 4 {
            for m in self.probe.read_dir(&modules) {
                let d = modules.join(&m);
                if self.probe.kind(&d) == Some(FileKind::Dir) {
                    self.protect(
                        d.clone(),
                        Protection::Pinned,
                        true,
                        "existing submodule gitdir: writable, cannot be replaced",
                    );
                    self.protect_gitdir(&d, None, depth + 1);
                }
            }
        }
        let config = self
            .probe
            .read_to_string(&g.join("config"))
            .unwrap_or_default();
        let global = [
            self.home.join(".gitconfig"),
            self.home.join(".config/git/config"),
        ]
        .iter()
        .filter_map(|p| self.probe.read_to_string(p))
        .collect::<Vec<_>>()
        .join("\n");
        if let Some(hp) = hooks_path(&config).or_else(|| hooks_path(&global)) {
            let hp = crate::resolve::expand_home(&self.home, Path::new(&hp));
            let base = worktree.unwrap_or(g);
            let abs = crate::resolve::absolutize(base, &hp);
            let abs = self.canonical_parent(&abs);
            if self.within_writable(&abs) {
                self.protect(
                    abs,
                    Protection::ReadOnly,
                    true,
                    "core.hooksPath: hooks run on the host",
                );
            }
        }
    }

    /// Canonicalizes the parent of `p` and keeps the last component literal.
    fn canonical_parent(&self, p: &Path) -> PathBuf {
        if let Some(c) = self.probe.canonicalize(p) {
            return c;
        }
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => self
                .probe
                .canonicalize(parent)
                .unwrap_or_else(|| parent.to_path_buf())
                .join(name),
            _ => p.to_path_buf(),
        }
    }

    /// Reads a `.git` file (`gitdir: X`) and returns the canonical gitdir.
    fn gitdir_from_file(&self, dotgit: &Path) -> Option<PathBuf> {
        let text = self.probe.read_to_string(dotgit)?;
        let target = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
        let base = dotgit.parent()?;
        self.probe
            .canonicalize(&crate::resolve::absolutize(base, Path::new(target)))
    }

    fn commondir(&self, gitdir: &Path) -> PathBuf {
        match self.probe.read_to_string(&gitdir.join("commondir")) {
            Some(t) => {
                let c = crate::resolve::absolutize(gitdir, Path::new(t.trim()));
                self.probe.canonicalize(&c).unwrap_or(c)
            }
            None => gitdir.to_path_buf(),
        }
    }

    /// The repository the workspace belongs to: protect its git metadata and, when
    /// `git_write` is on, make a gitdir outside the workspace writable.
    fn git_for_root(&mut self, root: &Path) {
        let dotgit = root.join(".git");
        match self.probe.kind(&dotgit) {
            Some(FileKind::Dir) => {
                self.protect(
                    dotgit.clone(),
                    Protection::Pinned,
                    true,
                    "the repository itself must not be renamed, replaced or deleted",
                );
                self.protect_gitdir(&dotgit, Some(root), 0);
            }
            Some(FileKind::File) | Some(FileKind::Symlink) => {
                let reason =
                    "gitdir pointer: rewriting it would point git at an attacker's repository";
                if self.probe.kind(&dotgit) == Some(FileKind::Symlink) {
                    self.layout.notes.push(format!(
                        "{} is a symlink: its target is protected, the link itself is not",
                        dotgit.display()
                    ));
                } else {
                    self.protect(dotgit.clone(), Protection::ReadOnly, false, reason);
                }
                let gitdir = if self.probe.kind(&dotgit) == Some(FileKind::Symlink) {
                    self.probe.canonicalize(&dotgit)
                } else {
                    self.gitdir_from_file(&dotgit)
                };
                if let Some(gd) = gitdir {
                    let cd = self.commondir(&gd);
                    for (d, why) in [(&gd, "gitdir"), (&cd, "git commondir")] {
                        if !self.within_writable(d) {
                            if self.policy.git_write && self.policy.mode == Mode::WorkspaceWrite {
                                self.add_root(
                                    d.clone(),
                                    RootKind::GitDir,
                                    Source::Auto(format!("{why} of {}", dotgit.display())),
                                );
                                self.layout.notes.push(format!("{why} {} made writable so that git works (hooks and config stay read-only)", d.display()));
                            } else {
                                continue;
                            }
                        }
                        self.protect(
                            d.clone(),
                            Protection::Pinned,
                            true,
                            "the repository itself must not be renamed, replaced or deleted",
                        );
                        self.protect_gitdir(d, Some(root), 0);
                    }
                }
            }
            Some(FileKind::Other) => {}
            None => {
                self.protect(
                    dotgit,
                    Protection::ReadOnly,
                    true,
                    "a new repository here could carry hooks and config",
                );
                if self
                    .layout
                    .writable
                    .iter()
                    .any(|w| w.path == root && w.kind == RootKind::Workspace)
                {
                    self.enclosing_repo(root);
                }
            }
        }
    }

    /// A workspace below a repository's root: the repository's `.git` is outside.
    fn enclosing_repo(&mut self, root: &Path) {
        let mut cur = root.parent();
        while let Some(dir) = cur {
            let dotgit = dir.join(".git");
            match self.probe.kind(&dotgit) {
                Some(FileKind::Dir) => {
                    if !self.within_writable(&dotgit) {
                        if !(self.policy.git_write && self.policy.mode == Mode::WorkspaceWrite) {
                            return;
                        }
                        self.add_root(
                            dotgit.clone(),
                            RootKind::GitDir,
                            Source::Auto(format!("gitdir of the repository at {}", dir.display())),
                        );
                        self.layout.notes.push(format!("gitdir {} made writable so that git works (hooks and config stay read-only)", dotgit.display()));
                    }
                    self.protect(
                        dotgit.clone(),
                        Protection::Pinned,
                        true,
                        "the repository itself must not be renamed, replaced or deleted",
                    );
                    self.protect_gitdir(&dotgit, Some(dir), 0);
                    return;
                }
                Some(_) => return,
                None => cur = dir.parent(),
            }
        }
    }
}

/// Computes the layout of `policy` on the host seen through `probe`.
///
/// `home` is the user's home directory. In full-access mode the layout is empty.
pub fn compute(policy: &Policy, home: &Path, probe: &dyn FsProbe) -> Result<FsLayout, LayoutError> {
    let ws = probe
        .canonicalize(&policy.workspace)
        .filter(|w| probe.kind(w) == Some(FileKind::Dir))
        .ok_or_else(|| LayoutError::MissingWorkspace(policy.workspace.clone()))?;
    let cwd = probe
        .canonicalize(&policy.cwd)
        .ok_or_else(|| LayoutError::MissingCwd(policy.cwd.clone()))?;
    let home_c = probe
        .canonicalize(home)
        .unwrap_or_else(|| home.to_path_buf());
    let mut b = Builder {
        probe,
        home: home.to_path_buf(),
        policy,
        layout: FsLayout {
            writable: Vec::new(),
            protected: Vec::new(),
            hidden: Vec::new(),
            cwd,
            notes: Vec::new(),
        },
    };
    if policy.mode == Mode::FullAccess {
        return Ok(b.layout);
    }
    if policy.mode == Mode::WorkspaceWrite {
        let too_broad = |p: &Path| p == Path::new("/") || p == home_c;
        if too_broad(&ws) {
            return Err(LayoutError::TooBroad(ws));
        }
        b.add_root(
            ws.clone(),
            RootKind::Workspace,
            policy.source_of("workspace"),
        );
        for extra in &policy.allow_write {
            let c = probe
                .canonicalize(&extra.path)
                .filter(|c| {
                    probe.kind(c) == Some(FileKind::Dir) || probe.kind(c) == Some(FileKind::File)
                })
                .ok_or_else(|| LayoutError::MissingRoot(extra.path.clone()))?;
            if too_broad(&c) {
                return Err(LayoutError::TooBroad(c));
            }
            b.add_root(c, RootKind::Extra, extra.source.clone());
        }
        let roots: Vec<PathBuf> = b
            .layout
            .writable
            .iter()
            .filter(|w| w.kind != RootKind::GitDir && probe.kind(&w.path) == Some(FileKind::Dir))
            .map(|w| w.path.clone())
            .collect();
        for root in &roots {
            for name in &policy.protected_names {
                if name == ".git" {
                    b.git_for_root(root);
                    continue;
                }
                let p = root.join(name);
                match probe.kind(&p) {
                    Some(FileKind::Symlink) => {
                        if let Some(t) = probe.canonicalize(&p) {
                            if b.within_writable(&t) {
                                b.protect(
                                    t,
                                    Protection::ReadOnly,
                                    true,
                                    "target of a protected name",
                                );
                            }
                        }
                        b.layout.notes.push(format!(
                            "{} is a symlink: its target is protected, the link itself is not",
                            p.display()
                        ));
                    }
                    _ => b.protect(
                        p,
                        Protection::ReadOnly,
                        // Always a directory, even for `.mcp.json`: git ignores empty
                        // directories, so `git status` stays clean during the run.
                        true,
                        "runs code on the host later (agent or editor config)",
                    ),
                }
            }
        }
    }

    // Hidden paths, canonical so that a symlinked secret is hidden where it lives.
    let mut hidden = Vec::new();
    for d in &policy.deny_read {
        let candidates: Vec<PathBuf> =
            match d.path.file_name().map(|n| n.to_string_lossy().into_owned()) {
                Some(name) if name.contains('*') => {
                    let parent = d.path.parent().unwrap_or(Path::new("/"));
                    probe
                        .read_dir(parent)
                        .into_iter()
                        .filter(|n| glob_match(&name, n))
                        .map(|n| parent.join(n))
                        .collect()
                }
                _ => vec![d.path.clone()],
            };
        for c in candidates {
            if probe.kind(&c).is_none() {
                continue;
            }
            let Some(real) = probe.canonicalize(&c) else {
                continue;
            };
            let kind = match probe.kind(&real) {
                Some(FileKind::Dir) => FileKind::Dir,
                Some(_) => FileKind::File,
                None => continue,
            };
            if real == Path::new("/") {
                continue;
            }
            hidden.push(HiddenPath {
                path: real,
                kind,
                source: d.source.clone(),
            });
        }
    }
    if policy.mode != Mode::FullAccess {
        if let Some(h) = hidden.iter().find(|h| ws.starts_with(&h.path)) {
            return Err(LayoutError::WorkspaceHidden(ws, h.path.clone()));
        }
    }
    hidden.sort_by(|a, b| a.path.cmp(&b.path));
    hidden.dedup_by(|a, b| a.path == b.path);
    b.layout.hidden = hidden;
    b.layout.writable.sort_by(|a, b| a.path.cmp(&b.path));
    b.layout.protected.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(b.layout)
}

/// The real filesystem through `std::fs` (portable: no platform API), for [`compute`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StdProbe;

impl FsProbe for StdProbe {
    fn kind(&self, p: &Path) -> Option<FileKind> {
        let m = std::fs::symlink_metadata(p).ok()?;
        let t = m.file_type();
        Some(if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_dir() {
            FileKind::Dir
        } else if t.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        })
    }
    fn canonicalize(&self, p: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(p).ok()
    }
    fn read_to_string(&self, p: &Path) -> Option<String> {
        // Small files only (git config, .git files): a hostile workspace could point
        // these at something huge.
        let m = std::fs::metadata(p).ok()?;
        if !m.is_file() || m.len() > 1 << 20 {
            return None;
        }
        std::fs::read_to_string(p).ok()
    }
    fn read_dir(&self, p: &Path) -> Vec<String> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub mod memfs {
    //! An in-memory filesystem implementing [`FsProbe`], for plan tests of every
    //! backend (they run on any OS).
    use super::*;
    use std::collections::BTreeMap;

    /// Entries: path -> (kind, contents or symlink target).
    #[derive(Debug, Default, Clone)]
    pub struct MemFs {
        /// The entries.
        pub entries: BTreeMap<PathBuf, (FileKind, String)>,
    }

    impl MemFs {
        /// Adds a directory and its ancestors.
        pub fn dir(mut self, p: &str) -> Self {
            let mut cur = PathBuf::from("/");
            for c in Path::new(p).components().skip(1) {
                cur.push(c);
                self.entries
                    .entry(cur.clone())
                    .or_insert((FileKind::Dir, String::new()));
            }
            self
        }
        /// Adds a file (and its parent directories).
        pub fn file(mut self, p: &str, text: &str) -> Self {
            let parent = Path::new(p).parent().unwrap().to_str().unwrap().to_string();
            self = self.dir(&parent);
            self.entries.insert(p.into(), (FileKind::File, text.into()));
            self
        }
        /// Adds a symlink.
        pub fn link(mut self, p: &str, target: &str) -> Self {
            self.entries
                .insert(p.into(), (FileKind::Symlink, target.into()));
            self
        }
    }

    impl FsProbe for MemFs {
        fn kind(&self, p: &Path) -> Option<FileKind> {
            if p == Path::new("/") {
                return Some(FileKind::Dir);
            }
            self.entries.get(p).map(|e| e.0)
        }
        fn canonicalize(&self, p: &Path) -> Option<PathBuf> {
            let mut out = PathBuf::from("/");
            for c in p.components().skip(1) {
                out.push(c);
                let mut hops = 0;
                while let Some((FileKind::Symlink, t)) = self.entries.get(&out) {
                    hops += 1;
                    if hops > 8 {
                        return None;
                    }
                    let parent = out.parent().unwrap().to_path_buf();
                    out = crate::resolve::absolutize(&parent, Path::new(t));
                }
                if p != Path::new("/") && self.kind(&out).is_none() {
                    return None;
                }
            }
            Some(out)
        }
        fn read_to_string(&self, p: &Path) -> Option<String> {
            let c = self.canonicalize(p)?;
            match self.entries.get(&c) {
                Some((FileKind::File, t)) => Some(t.clone()),
                _ => None,
            }
        }
        fn read_dir(&self, p: &Path) -> Vec<String> {
            let Some(c) = self.canonicalize(p) else {
                return vec![];
            };
            self.entries
                .keys()
                .filter(|k| k.parent() == Some(c.as_path()))
                .map(|k| k.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memfs::MemFs as FakeFs;
    use super::*;
    use crate::model::SourcedPath;

    fn policy(ws: &str) -> Policy {
        let mut p = Policy::new(ws);
        p.deny_read = crate::defaults::DENY_READ
            .iter()
            .map(|d| SourcedPath {
                path: crate::resolve::expand_home(Path::new("/home/u"), Path::new(d)),
                source: Source::Default,
            })
            .collect();
        p
    }

    fn paths(l: &FsLayout) -> Vec<String> {
        l.protected
            .iter()
            .map(|p| {
                format!(
                    "{} {:?} {}",
                    p.path.display(),
                    p.protection,
                    if p.exists.is_some() {
                        "present"
                    } else {
                        "missing"
                    }
                )
            })
            .collect()
    }

    #[test]
    fn repo_workspace() {
        let fs = FakeFs::default()
            .dir("/home/u/p/.git/hooks")
            .file("/home/u/p/.git/config", "[core]\n\thooksPath = .husky\n")
            .dir("/home/u/p/.git/worktrees/w")
            .file("/home/u/p/.git/worktrees/w/commondir", "../..\n")
            .dir("/home/u/p/.git/modules/sub/hooks")
            .file("/home/u/p/.git/modules/sub/config", "")
            .dir("/home/u/p/.vscode")
            .dir("/home/u/.ssh")
            .file("/home/u/.cargo/credentials.toml", "x")
            .link("/home/u/.aws", "/data/aws")
            .dir("/data/aws");
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        let got = paths(&l);
        assert!(
            got.contains(&"/home/u/p/.git Pinned present".to_string()),
            "{got:#?}"
        );
        assert!(got.contains(&"/home/u/p/.git/hooks ReadOnly present".to_string()));
        assert!(got.contains(&"/home/u/p/.git/config ReadOnly present".to_string()));
        assert!(got.contains(&"/home/u/p/.husky ReadOnly missing".to_string()));
        assert!(got.contains(&"/home/u/p/.git/modules/sub/hooks ReadOnly present".to_string()));
        assert!(got.contains(&"/home/u/p/.git/worktrees/w/commondir ReadOnly present".to_string()));
        assert!(got.contains(&"/home/u/p/.codex ReadOnly missing".to_string()));
        assert!(got.contains(&"/home/u/p/.vscode ReadOnly present".to_string()));
        let hidden: Vec<_> = l
            .hidden
            .iter()
            .map(|h| h.path.display().to_string())
            .collect();
        assert_eq!(
            hidden,
            [
                "/data/aws",
                "/home/u/.cargo/credentials.toml",
                "/home/u/.ssh"
            ]
        );
    }

    #[test]
    fn linked_worktree_gets_its_gitdir() {
        let fs = FakeFs::default()
            .file(
                "/home/u/wt/.git",
                "gitdir: /home/u/main/.git/worktrees/wt\n",
            )
            .file("/home/u/main/.git/worktrees/wt/commondir", "../..\n")
            .file("/home/u/main/.git/config", "")
            .dir("/home/u/main/.git/hooks");
        let l = compute(&policy("/home/u/wt"), Path::new("/home/u"), &fs).unwrap();
        let roots: Vec<_> = l
            .writable
            .iter()
            .map(|w| (w.path.display().to_string(), w.kind.clone()))
            .collect();
        assert_eq!(
            roots,
            [
                ("/home/u/main/.git".to_string(), RootKind::GitDir),
                (
                    "/home/u/main/.git/worktrees/wt".to_string(),
                    RootKind::GitDir
                ),
                ("/home/u/wt".to_string(), RootKind::Workspace)
            ]
        );
        let got = paths(&l);
        assert!(
            got.contains(&"/home/u/wt/.git ReadOnly present".to_string()),
            "{got:#?}"
        );
        assert!(got.contains(&"/home/u/main/.git/hooks ReadOnly present".to_string()));
        assert!(got.contains(&"/home/u/main/.git/config ReadOnly present".to_string()));
        assert!(
            got.contains(&"/home/u/main/.git/worktrees/wt/commondir ReadOnly present".to_string())
        );
    }

    #[test]
    fn subdirectory_of_a_repo() {
        let fs = FakeFs::default()
            .dir("/home/u/r/.git/hooks")
            .file("/home/u/r/.git/config", "")
            .dir("/home/u/r/sub");
        let l = compute(&policy("/home/u/r/sub"), Path::new("/home/u"), &fs).unwrap();
        assert!(l
            .writable
            .iter()
            .any(|w| w.path == Path::new("/home/u/r/.git")));
        let mut p = policy("/home/u/r/sub");
        p.git_write = false;
        let l = compute(&p, Path::new("/home/u"), &fs).unwrap();
        assert_eq!(l.writable.len(), 1);
    }

    #[test]
    fn errors() {
        let fs = FakeFs::default().dir("/home/u/p");
        assert!(matches!(
            compute(&policy("/nope"), Path::new("/home/u"), &fs),
            Err(LayoutError::MissingWorkspace(_))
        ));
        assert!(matches!(
            compute(&policy("/home/u"), Path::new("/home/u"), &fs),
            Err(LayoutError::TooBroad(_))
        ));
        let mut p = policy("/home/u/p");
        p.allow_write.push(SourcedPath {
            path: "/missing".into(),
            source: Source::Cli,
        });
        assert!(matches!(
            compute(&p, Path::new("/home/u"), &fs),
            Err(LayoutError::MissingRoot(_))
        ));
        let mut p = policy("/home/u/p");
        p.mode = Mode::ReadOnly;
        let l = compute(&p, Path::new("/home/u"), &fs).unwrap();
        assert!(l.writable.is_empty() && l.protected.is_empty());
    }

    #[test]
    fn globs() {
        assert!(glob_match("credentials*", "credentials.toml"));
        assert!(glob_match("*.pem", "a.pem"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b", "ac"));
        assert!(!glob_match("x", "y"));
    }
}
