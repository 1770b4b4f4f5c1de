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
    /// `$XDG_CONFIG_HOME` when set and not empty (git then reads
    /// `$XDG_CONFIG_HOME/git/config` instead of `~/.config/git/config`).
    fn xdg_config_home(&self) -> Option<PathBuf> {
        None
    }
    /// Git's own view of the configuration it reads for the repository at (or above)
    /// `repo`, with `home` as `$HOME`: every entry with its scope and origin file, as
    /// `git config --show-origin --show-scope --includes --list -z` prints it.
    /// `None` when git is not installed (the layout then rests on workfence's own
    /// parse); `Some(Err)` when git ran and failed (the layout is refused).
    fn git_config_origins(
        &self,
        repo: &Path,
        home: &Path,
    ) -> Option<Result<Vec<GitConfigEntry>, String>> {
        let _ = (repo, home);
        None
    }
}

/// One configuration entry as git reports it (see [`FsProbe::git_config_origins`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitConfigEntry {
    /// `system`, `global`, `local`, `worktree` or `command`.
    pub scope: String,
    /// The file it came from, as git opened it (relative paths are relative to the
    /// directory git ran in); `None` for a non-file origin (command line, blob).
    pub origin: Option<PathBuf>,
    /// The key, as git normalizes it (`section.subsection.key`, section and key in
    /// lower case).
    pub key: String,
    /// The value; `None` for a bare boolean key.
    pub value: Option<String>,
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
    /// Git reports configuration that workfence's own parse did not find, so a file
    /// that can make host git run code might be left writable.
    #[error("git reports {what} {file} that workfence did not find or protect; refusing to run; report a bug, or pass --mode full-access")]
    GitDisagrees {
        /// What git reported (for example "config file", "include of a config file").
        what: String,
        /// The file or path.
        file: PathBuf,
    },
    /// A git config path names a user workfence cannot find in /etc/passwd.
    #[error("a git config path ({0}) names a user that /etc/passwd does not list, so workfence cannot tell which file git reads and protect it; refusing to run; write the path out in the git config, or pass --mode full-access")]
    GitUnresolved(String),
    /// Asking git for its configuration (`git config --list`) failed.
    #[error("asking git for the configuration of {repo} failed ({detail}); fix what git complains about (try `git -C {repo} config --list`), or pass --mode full-access")]
    GitFailed {
        /// The directory git ran in.
        repo: PathBuf,
        /// Git's complaint.
        detail: String,
    },
}

/// Parses git config text into `(key, value)` pairs in file order, the way git's
/// own parser (config.c) reads it: `[section]`, `[section "sub"]` and the old
/// `[section.sub]` headers, keys after a header on the same line, quoted values with
/// `\\` escapes, `\\` line continuations, `#`/`;` comments. Keys are normalized like
/// git's (`section.sub.key`, section and key lower case, subsection verbatim); a bare
/// key is `None`. It stops at the first malformed line (git refuses such a file, so
/// nothing after it takes effect); git's own answer is compared with this parse.
pub fn parse_git_config(text: &str) -> Vec<(String, Option<String>)> {
    let c: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let mut section = String::new();
    let eol = |i: &mut usize| {
        while *i < c.len() && c[*i] != '\n' {
            *i += 1;
        }
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' || ch.is_whitespace() {
            i += 1;
            continue;
        }
        if ch == '#' || ch == ';' {
            eol(&mut i);
            continue;
        }
        if ch == '[' {
            i += 1;
            let mut name = String::new();
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '-' || c[i] == '.') {
                name.push(c[i].to_ascii_lowercase());
                i += 1;
            }
            if i < c.len() && (c[i] == ' ' || c[i] == '\t') {
                // `[section "subsection"]`: subsection is case-sensitive, with escapes.
                while i < c.len() && (c[i] == ' ' || c[i] == '\t') {
                    i += 1;
                }
                if i >= c.len() || c[i] != '"' {
                    return out;
                }
                i += 1;
                let mut sub = String::new();
                loop {
                    match c.get(i) {
                        None | Some('\n') => return out,
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            match c.get(i + 1) {
                                None | Some('\n') => return out,
                                Some(&e) => sub.push(e),
                            }
                            i += 2;
                        }
                        Some(&e) => {
                            sub.push(e);
                            i += 1;
                        }
                    }
                }
                if c.get(i) != Some(&']') {
                    return out;
                }
                name = format!("{name}.{sub}");
            } else if c.get(i) != Some(&']') || name.is_empty() {
                return out;
            }
            i += 1;
            section = name;
            continue;
        }
        if !ch.is_ascii_alphabetic() || section.is_empty() {
            return out;
        }
        let mut key = String::new();
        while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '-') {
            key.push(c[i].to_ascii_lowercase());
            i += 1;
        }
        while i < c.len() && (c[i] == ' ' || c[i] == '\t') {
            i += 1;
        }
        let full = format!("{section}.{key}");
        match c.get(i) {
            None | Some('\n') => {
                out.push((full, None));
                continue;
            }
            Some('#') | Some(';') => {
                out.push((full, None));
                eol(&mut i);
                continue;
            }
            Some('\r') if c.get(i + 1) == Some(&'\n') => {
                out.push((full, None));
                continue;
            }
            Some('=') => i += 1,
            _ => return out,
        }
        // The value.
        while i < c.len() && (c[i] == ' ' || c[i] == '\t') {
            i += 1;
        }
        let mut value = String::new();
        let mut quoted = false;
        // Whitespace outside quotes is kept only when more value follows.
        let mut pending_space = 0usize;
        loop {
            let Some(&v) = c.get(i) else {
                if quoted {
                    return out;
                }
                break;
            };
            i += 1;
            match v {
                '\n' => {
                    if quoted {
                        return out;
                    }
                    break;
                }
                '\r' if c.get(i) == Some(&'\n') && !quoted => {}
                ' ' | '\t' if !quoted => pending_space += 1,
                '#' | ';' if !quoted => {
                    eol(&mut i);
                    break;
                }
                _ => {
                    for _ in 0..pending_space {
                        value.push(' ');
                    }
                    pending_space = 0;
                    match v {
                        '"' => quoted = !quoted,
                        '\\' => {
                            let e = c.get(i).copied();
                            i += 1;
                            match e {
                                Some('\n') => {}
                                Some('t') => value.push('\t'),
                                Some('n') => value.push('\n'),
                                Some('b') => value.push('\u{8}'),
                                Some('"') => value.push('"'),
                                Some('\\') => value.push('\\'),
                                _ => return out,
                            }
                        }
                        other => value.push(other),
                    }
                }
            }
        }
        out.push((full, Some(value)));
    }
    out
}

/// Whether a config key names an include: `include.path` or `includeIf.<cond>.path`.
fn is_include_key(key: &str) -> bool {
    key == "include.path" || (key.starts_with("includeif.") && key.ends_with(".path"))
}

/// Parses the `-z` output of `git config --show-scope --show-origin --list`: records
/// of `scope NUL origin NUL key [LF value] NUL`.
pub fn parse_git_config_z(out: &[u8]) -> Result<Vec<GitConfigEntry>, String> {
    let text = String::from_utf8_lossy(out);
    let mut fields = text.split('\0');
    let mut entries = Vec::new();
    while let Some(scope) = fields.next() {
        if scope.is_empty() {
            // The final NUL leaves one empty field.
            if fields.next().is_none() {
                break;
            }
            return Err("empty scope in git's answer".into());
        }
        let (Some(origin), Some(kv)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "truncated record in git's answer after scope {scope:?}"
            ));
        };
        if kv.is_empty() {
            return Err(format!(
                "truncated record in git's answer after scope {scope:?}"
            ));
        }
        let origin = origin.strip_prefix("file:").map(PathBuf::from);
        let (key, value) = match kv.split_once('\n') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (kv.to_string(), None),
        };
        entries.push(GitConfigEntry {
            scope: scope.to_string(),
            origin,
            key,
            value,
        });
    }
    Ok(entries)
}

/// What workfence's own parse found in the git configuration (to compare with git's).
#[derive(Default)]
struct GitSeen {
    /// Config files read (canonical), so that each is read once.
    parsed: Vec<PathBuf>,
    /// Every include target (canonical parent, literal name).
    includes: Vec<PathBuf>,
    /// Every `core.hooksPath` value, verbatim.
    hooks: Vec<String>,
    /// The `core.hooksPath` values of the system, global and XDG configs.
    global_hooks: Option<Vec<String>>,
    /// `~user/` values that could not be expanded.
    unresolved: Vec<String>,
    /// Whether the "git not installed" note was added.
    noted_absent: bool,
}

struct Builder<'a> {
    probe: &'a dyn FsProbe,
    home: PathBuf,
    policy: &'a Policy,
    layout: FsLayout,
    git: GitSeen,
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
        // Absent from an ordinary repository, and the gitdir is writable: created, it
        // would point host git at a repository (and config) of the command's making.
        self.protect(
            g.join("commondir"),
            Protection::ReadOnly,
            false,
            "points git at another repository",
        );
        for wt in self.probe.read_dir(&g.join("worktrees")) {
            let d = g.join("worktrees").join(&wt);
            if self.probe.kind(&d) != Some(FileKind::Dir) {
                continue;
            }
            for (name, as_dir, why) in [
                ("config", false, "git config of a linked worktree"),
                ("config.worktree", false, "git config of a linked worktree"),
                ("commondir", false, "points git at another repository"),
                ("hooks", true, "git hooks of a linked worktree"),
            ] {
                self.protect(d.join(name), Protection::ReadOnly, as_dir, why);
            }
            // Read when host git runs in that worktree: its includes and hooksPath
            // (a relative hooksPath is relative to that worktree, outside our view).
            let mut hooks = Vec::new();
            self.scan_config(&d.join("config.worktree"), 0, &mut hooks);
            self.protect_hooks_paths(&hooks, None);
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
        // Every core.hooksPath that git can read for this gitdir (the last one wins,
        // but which is last depends on includeIf conditions the command can change,
        // such as onbranch:): protect every candidate.
        let mut hooks = self.global_hooks();
        self.scan_config(&g.join("config"), 0, &mut hooks);
        self.scan_config(&g.join("config.worktree"), 0, &mut hooks);
        self.protect_hooks_paths(&hooks, Some(worktree.unwrap_or(g)));
        // Not protected: info/attributes (and .gitattributes) only name filter, diff
        // and merge drivers; git runs a driver only when config defines its command
        // (filter.<name>.clean, diff.<name>.textconv, ...), and config is protected.
        // Likewise .gitmodules cannot set `submodule.*.update = !cmd` (git honours
        // that only from config).
    }

    /// Protects each `core.hooksPath` value that lies in a writable root. A relative
    /// one is relative to the working tree (`base`); without a base only absolute
    /// and `~/` values are resolved.
    fn protect_hooks_paths(&mut self, hooks: &[String], base: Option<&Path>) {
        for hp in hooks {
            let Some(hp) = self.expand_tilde(hp) else {
                continue;
            };
            let abs = match base {
                _ if hp.is_absolute() => hp,
                Some(b) => crate::resolve::absolutize(b, &hp),
                None => continue,
            };
            let abs = self.lexical_canon(&abs);
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

    /// The deepest existing ancestor of `p` canonicalized, the rest kept literal, so
    /// that the protected name is where git will look even while it does not exist.
    fn lexical_canon(&self, p: &Path) -> PathBuf {
        let p = crate::resolve::absolutize(Path::new("/"), p);
        let mut rest = Vec::new();
        let mut cur = p.as_path();
        loop {
            // Only a missing path keeps its last component literal: an existing
            // symlink resolves to where git will read.
            if self.probe.kind(cur).is_some() {
                if let Some(c) = self.probe.canonicalize(cur) {
                    let mut out = c;
                    for r in rest.iter().rev() {
                        out.push(r);
                    }
                    return out;
                }
            }
            match (cur.parent(), cur.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    cur = parent;
                }
                _ => return p.clone(),
            }
        }
    }

    /// Reads a git config file that git opens as `opened` and, recursively, every
    /// file it includes (`include.path`, `includeIf.*.path`, whatever the condition:
    /// conditions such as `onbranch:` change under the command's hands). Protects
    /// each of them that lies in a writable root, existing or not, and collects the
    /// `core.hooksPath` values into `hooks`.
    fn scan_config(&mut self, opened: &Path, depth: u32, hooks: &mut Vec<String>) {
        let real = self.lexical_canon(opened);
        // A symlinked config inside a root: both the link and its target matter.
        let literal = match (opened.parent(), opened.file_name()) {
            (Some(parent), Some(name)) => self.lexical_canon(parent).join(name),
            _ => real.clone(),
        };
        for p in [&literal, &real] {
            if self.within_writable(p) {
                self.protect(
                    p.clone(),
                    Protection::ReadOnly,
                    false,
                    "git config file (or one it includes): can make host git run commands",
                );
            }
        }
        // Git stops at 10 levels of includes.
        if depth > 10 || self.git.parsed.contains(&real) {
            return;
        }
        self.git.parsed.push(real);
        let Some(text) = self.probe.read_to_string(opened) else {
            return;
        };
        for (key, value) in parse_git_config(&text) {
            let Some(value) = value else { continue };
            if key == "core.hookspath" {
                self.git.hooks.push(value.clone());
                hooks.push(value);
            } else if is_include_key(&key) {
                let target = self.include_target(opened, &value);
                let canon = self.lexical_canon(&target);
                if !self.git.includes.contains(&canon) {
                    self.git.includes.push(canon);
                }
                self.scan_config(&target, depth + 1, hooks);
            }
        }
    }

    /// Where git looks for an include: `~/` is the home directory, a relative path
    /// is relative to the directory of the including file as git opened it.
    fn include_target(&mut self, including: &Path, value: &str) -> PathBuf {
        let dir = including.parent().unwrap_or(Path::new("/"));
        let Some(v) = self.expand_tilde(value) else {
            // Unresolvable here; kept literal so that the error names it.
            return crate::resolve::absolutize(dir, Path::new(value));
        };
        crate::resolve::absolutize(dir, &v)
    }

    /// Git's expansion of a path value: `~/` is the home directory and `~user/` that
    /// user's home (git asks getpwnam; this reads /etc/passwd). A `~user/` that
    /// /etc/passwd does not name (a directory service) is recorded as unresolved,
    /// which refuses the layout: where git would look is unknown.
    fn expand_tilde(&mut self, value: &str) -> Option<PathBuf> {
        let Some(rest) = value.strip_prefix('~') else {
            return Some(PathBuf::from(value));
        };
        let (user, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if user.is_empty() {
            return Some(self.home.join(tail));
        }
        let passwd = self
            .probe
            .read_to_string(Path::new("/etc/passwd"))
            .unwrap_or_default();
        let home = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[0] == user).then(|| PathBuf::from(f[5]))
        });
        match home {
            Some(h) => Some(h.join(tail)),
            None => {
                self.git.unresolved.push(value.to_string());
                None
            }
        }
    }

    /// The system, global and XDG config files git reads for every repository.
    fn global_config_files(&self) -> Vec<PathBuf> {
        let xdg = self
            .probe
            .xdg_config_home()
            .unwrap_or_else(|| self.home.join(".config"));
        vec![
            PathBuf::from("/etc/gitconfig"),
            xdg.join("git/config"),
            self.home.join(".gitconfig"),
        ]
    }

    /// Scans the system, global and XDG configs once; their hooksPath values.
    fn global_hooks(&mut self) -> Vec<String> {
        if let Some(h) = &self.git.global_hooks {
            return h.clone();
        }
        let mut hooks = Vec::new();
        for f in self.global_config_files() {
            self.scan_config(&f, 0, &mut hooks);
        }
        self.git.global_hooks = Some(hooks.clone());
        hooks
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

    /// After every root's repository is handled: the global configs' includes, then
    /// git's own answer for each root, compared with ours (fail closed).
    fn finish_git(&mut self, roots: &[PathBuf]) -> Result<(), LayoutError> {
        self.global_hooks();
        if let Some(v) = self.git.unresolved.first() {
            return Err(LayoutError::GitUnresolved(v.clone()));
        }
        // Roots added after a file was first read (a gitdir outside the workspace).
        let known: Vec<PathBuf> = self
            .git
            .parsed
            .iter()
            .chain(self.git.includes.iter())
            .cloned()
            .collect();
        for p in known {
            if self.within_writable(&p) {
                self.protect(
                    p,
                    Protection::ReadOnly,
                    false,
                    "git config file (or one it includes): can make host git run commands",
                );
            }
        }
        for root in roots {
            let Some(answer) = self.probe.git_config_origins(root, &self.home) else {
                if !self.git.noted_absent {
                    self.git.noted_absent = true;
                    self.layout.notes.push("git is not installed (or not on PATH): git metadata is protected from workfence's own reading of the config files, not checked against git".into());
                }
                continue;
            };
            let entries = answer.map_err(|detail| LayoutError::GitFailed {
                repo: root.clone(),
                detail,
            })?;
            // Git names the repository's files relative to the top of its worktree
            // (it moves there first), which is an ancestor when the root is a
            // subdirectory of a repository.
            let top = self.git_top(root);
            self.check_git_answer(&top, &entries)?;
        }
        if let Some(v) = self.git.unresolved.first() {
            return Err(LayoutError::GitUnresolved(v.clone()));
        }
        Ok(())
    }

    /// Every config file git reports inside a writable root must be protected, and
    /// every include and hooksPath git reports must be one workfence found.
    fn check_git_answer(
        &mut self,
        root: &Path,
        entries: &[GitConfigEntry],
    ) -> Result<(), LayoutError> {
        // The system config's location is compiled into git ($(prefix)/etc/gitconfig):
        // read the one git names when it is not /etc/gitconfig.
        for e in entries.iter().filter(|e| e.scope == "system") {
            let Some(origin) = &e.origin else { continue };
            let abs = crate::resolve::absolutize(root, origin);
            if !self.git.parsed.contains(&self.lexical_canon(&abs)) {
                let mut hooks = Vec::new();
                self.scan_config(&abs, 0, &mut hooks);
                self.protect_hooks_paths(&hooks, Some(root));
                self.layout.notes.push(format!(
                    "git reads its system config from {}; read it too",
                    abs.display()
                ));
            }
        }
        for e in entries {
            // Only `-c safe.directory=*` of our own invocation (the environment is
            // scrubbed, so nothing else comes from the command line).
            let Some(origin) = &e.origin else { continue };
            let opened = crate::resolve::absolutize(root, origin);
            let file = self.lexical_canon(&opened);
            let guarded = |b: &Self, p: &Path| {
                b.layout
                    .protected
                    .iter()
                    .any(|x| x.path == p && x.protection == Protection::ReadOnly)
            };
            if self.within_writable(&file) && !guarded(self, &file) {
                return Err(LayoutError::GitDisagrees {
                    what: "config file".into(),
                    file,
                });
            }
            let Some(value) = &e.value else { continue };
            if is_include_key(&e.key) {
                let target = self.include_target(&opened, value);
                let target = self.lexical_canon(&target);
                if !self.git.includes.contains(&target) {
                    return Err(LayoutError::GitDisagrees {
                        what: format!("an include ({} = {value} in {})", e.key, file.display()),
                        file: target,
                    });
                }
            } else if e.key == "core.hookspath" && !self.git.hooks.contains(value) {
                return Err(LayoutError::GitDisagrees {
                    what: format!("core.hooksPath = {value}, set in"),
                    file,
                });
            }
        }
        Ok(())
    }

    /// A workspace below a repository's root: the repository's `.git` is outside.
    /// Where git, asked about `root`, finds its repository: the nearest of `root` and
    /// its ancestors that holds a `.git` (git's own discovery; the scrubbed
    /// environment sets no `GIT_DIR` or ceiling). `root` itself when there is none.
    fn git_top(&self, root: &Path) -> PathBuf {
        root.ancestors()
            .find(|d| self.probe.kind(&d.join(".git")).is_some())
            .unwrap_or(root)
            .to_path_buf()
    }

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
        git: GitSeen::default(),
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
        if policy.protected_names.iter().any(|n| n == ".git") {
            b.finish_git(&roots)?;
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
                        .filter(|n| crate::secrets::glob_match(&name, n))
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
    fn xdg_config_home(&self) -> Option<PathBuf> {
        std::env::var_os("XDG_CONFIG_HOME")
            .filter(|x| !x.is_empty())
            .map(PathBuf::from)
    }
    fn git_config_origins(
        &self,
        repo: &Path,
        home: &Path,
    ) -> Option<Result<Vec<GitConfigEntry>, String>> {
        host_git_config(repo, home, self.xdg_config_home().as_deref())
    }
}

/// Runs the host's `git config --list` for `repo` (see [`FsProbe::git_config_origins`]).
///
/// `git config` reads config files and nothing else: it runs no hooks and does not
/// touch the index, so `core.fsmonitor` (run by index refreshes) and hooks do not run.
/// The environment is scrubbed so that the answer is about the files (no
/// `GIT_DIR`, `GIT_CONFIG_*`, `GIT_CONFIG_NOSYSTEM` from the caller), and
/// `safe.directory=*` makes git read the repository config of a repository owned by
/// another user (host git run as that user would).
fn host_git_config(
    repo: &Path,
    home: &Path,
    xdg: Option<&Path>,
) -> Option<Result<Vec<GitConfigEntry>, String>> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("LANG", "C")
        .env("LC_ALL", "C");
    if let Some(x) = xdg {
        cmd.env("XDG_CONFIG_HOME", x);
    }
    // Git for Windows finds its home and system files through these.
    #[cfg(windows)]
    for v in [
        "SystemRoot",
        "USERPROFILE",
        "HOMEDRIVE",
        "HOMEPATH",
        "ProgramData",
    ] {
        if let Some(val) = std::env::var_os(v) {
            cmd.env(v, val);
        }
    }
    cmd.arg("-C")
        .arg(repo)
        .args([
            "-c",
            "safe.directory=*",
            "config",
            "--show-origin",
            "--show-scope",
        ])
        .args(["--includes", "--list", "-z"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("cannot start git: {e}"))),
    };
    // Read both pipes while waiting, so a large answer cannot block git. Each reader
    // reports at EOF (git exited or closed them): no polling delay on the hot path.
    let reader = |pipe: Option<Box<dyn Read + Send>>, cap: u64| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(cap).read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        16 << 20,
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        64 << 10,
    );
    // A hung git (a config on a dead network filesystem) must not hang every run.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = || deadline.saturating_duration_since(Instant::now());
    let (Ok(out), Ok(err)) = (out.recv_timeout(left()), err.recv_timeout(left())) else {
        let _ = child.kill();
        let _ = child.wait();
        return Some(Err("git config did not answer within 10 s (killed)".into()));
    };
    let status = match child.wait() {
        Ok(st) => st,
        Err(e) => return Some(Err(format!("waiting for git config: {e}"))),
    };
    if !status.success() {
        return Some(Err(format!(
            "git config --list exited with {status}: {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    Some(parse_git_config_z(&out))
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
        /// `$XDG_CONFIG_HOME`.
        pub xdg: Option<PathBuf>,
        /// Git's scripted answer for [`FsProbe::git_config_origins`], for any
        /// repository; `None`: git is not installed.
        pub git: Option<Result<Vec<GitConfigEntry>, String>>,
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
        /// Scripts git's answer: `(scope, origin file, key, value)` records.
        pub fn git_answer(mut self, entries: &[(&str, &str, &str, Option<&str>)]) -> Self {
            self.git = Some(Ok(entries
                .iter()
                .map(|(scope, origin, key, value)| GitConfigEntry {
                    scope: scope.to_string(),
                    origin: Some(PathBuf::from(origin)),
                    key: key.to_string(),
                    value: value.map(str::to_string),
                })
                .collect()));
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
        fn xdg_config_home(&self) -> Option<PathBuf> {
            self.xdg.clone()
        }
        fn git_config_origins(
            &self,
            _repo: &Path,
            _home: &Path,
        ) -> Option<Result<Vec<GitConfigEntry>, String>> {
            self.git.clone()
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

    fn has(l: &FsLayout, line: &str) -> bool {
        paths(l).iter().any(|p| p == line)
    }

    /// The attack: `.git/commondir` does not exist in an ordinary repository.
    #[test]
    fn missing_commondir_and_configs_are_protected() {
        let fs = FakeFs::default()
            .dir("/home/u/p/.git/objects")
            .file("/home/u/p/.git/config", "[core]\n\tbare = false\n");
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        let got = paths(&l);
        for line in [
            "/home/u/p/.git/commondir ReadOnly missing",
            "/home/u/p/.git/config ReadOnly present",
            "/home/u/p/.git/config.worktree ReadOnly missing",
            "/home/u/p/.git/hooks ReadOnly missing",
        ] {
            assert!(got.contains(&line.to_string()), "{line} not in {got:#?}");
        }
        let c = l
            .protected
            .iter()
            .find(|p| p.path == Path::new("/home/u/p/.git/commondir"))
            .unwrap();
        assert!(!c.missing_as_dir);
        assert!(l.notes.iter().any(|n| n.contains("git is not installed")));
    }

    #[test]
    fn linked_worktree_protects_both_sets() {
        let fs = FakeFs::default()
            .file(
                "/home/u/wt/.git",
                "gitdir: /home/u/main/.git/worktrees/wt\n",
            )
            .file("/home/u/main/.git/worktrees/wt/commondir", "../..\n")
            .file(
                "/home/u/main/.git/worktrees/wt/config.worktree",
                "[include]\n\tpath = ../../../wt-inc\n",
            )
            .dir("/home/u/main/.git/worktrees/other")
            .file("/home/u/main/.git/config", "");
        let l = compute(&policy("/home/u/wt"), Path::new("/home/u"), &fs).unwrap();
        for line in [
            // The linked worktree's gitdir.
            "/home/u/main/.git/worktrees/wt/commondir ReadOnly present",
            "/home/u/main/.git/worktrees/wt/config ReadOnly missing",
            "/home/u/main/.git/worktrees/wt/config.worktree ReadOnly present",
            "/home/u/main/.git/worktrees/wt/hooks ReadOnly missing",
            // The commondir's own set.
            "/home/u/main/.git/commondir ReadOnly missing",
            "/home/u/main/.git/config ReadOnly present",
            "/home/u/main/.git/config.worktree ReadOnly missing",
            "/home/u/main/.git/hooks ReadOnly missing",
            // Another linked worktree's gitdir.
            "/home/u/main/.git/worktrees/other/commondir ReadOnly missing",
            "/home/u/main/.git/worktrees/other/config.worktree ReadOnly missing",
            "/home/u/main/.git/worktrees/other/hooks ReadOnly missing",
        ] {
            assert!(has(&l, line), "{line} not in {:#?}", paths(&l));
        }
        // The include lies in /home/u/main (not writable): nothing to protect.
        assert!(!paths(&l).iter().any(|p| p.contains("wt-inc")));
    }

    #[test]
    fn module_gitdirs_get_the_same_set() {
        let fs = FakeFs::default()
            .file("/home/u/p/.git/config", "")
            .file("/home/u/p/.git/modules/sub/config", "");
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        for line in [
            "/home/u/p/.git/modules/sub/commondir ReadOnly missing",
            "/home/u/p/.git/modules/sub/config ReadOnly present",
            "/home/u/p/.git/modules/sub/config.worktree ReadOnly missing",
            "/home/u/p/.git/modules/sub/hooks ReadOnly missing",
        ] {
            assert!(has(&l, line), "{line} not in {:#?}", paths(&l));
        }
    }

    #[test]
    fn global_includes_into_the_workspace() {
        let fs = FakeFs::default()
            .dir("/home/u/p/.git")
            .file(
                "/home/u/.gitconfig",
                "[include]\n\tpath = /home/u/p/team.cfg\n\tpath = ~/p/missing.cfg\n\
                 [includeIf \"gitdir:~/p/\"]\n\tpath = p/cond.cfg\n",
            )
            .file("/home/u/p/team.cfg", "[include]\n\tpath = sub/more.cfg\n")
            .file(
                "/home/u/.config/git/config",
                "[includeIf \"onbranch:main\"]\n\tpath = ../../p/xdg.cfg\n",
            )
            .file("/etc/gitconfig", "[include]\n\tpath = /home/u/p/sys.cfg\n");
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        for line in [
            "/home/u/p/team.cfg ReadOnly present",
            "/home/u/p/missing.cfg ReadOnly missing",
            // includeIf, whatever the condition; relative to the including file.
            "/home/u/p/cond.cfg ReadOnly missing",
            // Include of an include, relative to the included file.
            "/home/u/p/sub/more.cfg ReadOnly missing",
            "/home/u/p/sub Pinned missing",
            "/home/u/p/xdg.cfg ReadOnly missing",
            "/home/u/p/sys.cfg ReadOnly missing",
        ] {
            assert!(has(&l, line), "{line} not in {:#?}", paths(&l));
        }
        let inc = l
            .protected
            .iter()
            .find(|p| p.path == Path::new("/home/u/p/missing.cfg"))
            .unwrap();
        assert!(!inc.missing_as_dir);
        // The global files themselves are outside every writable root.
        assert!(!paths(&l)
            .iter()
            .any(|p| p.starts_with("/home/u/.gitconfig")));
    }

    #[test]
    fn xdg_config_home_and_config_files_in_a_writable_root() {
        let mut fs = FakeFs::default()
            .dir("/home/u/p/.git")
            .dir("/home/u/cfg")
            .file(
                "/home/u/cfg/git/config",
                "[include]\n\tpath = ../../p/x.cfg\n",
            );
        fs.xdg = Some("/home/u/cfg".into());
        let mut pol = policy("/home/u/p");
        pol.allow_write.push(SourcedPath {
            path: "/home/u/cfg".into(),
            source: Source::Cli,
        });
        let l = compute(&pol, Path::new("/home/u"), &fs).unwrap();
        assert!(
            has(&l, "/home/u/p/x.cfg ReadOnly missing"),
            "{:#?}",
            paths(&l)
        );
        // The XDG config itself lies in a writable root.
        assert!(has(&l, "/home/u/cfg/git/config ReadOnly present"));
        assert!(!has(&l, "/home/u/.config/git/config ReadOnly missing"));
    }

    #[test]
    fn symlinked_include_protects_link_and_target() {
        let fs = FakeFs::default()
            .dir("/home/u/p/.git")
            .file(
                "/home/u/.gitconfig",
                "[include]\n\tpath = /home/u/p/link.cfg\n",
            )
            .file("/home/u/p/real.cfg", "")
            .link("/home/u/p/link.cfg", "real.cfg");
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        assert!(
            has(&l, "/home/u/p/link.cfg ReadOnly present"),
            "{:#?}",
            paths(&l)
        );
        assert!(has(&l, "/home/u/p/real.cfg ReadOnly present"));
    }

    #[test]
    fn hooks_path_relative_absolute_home_and_included() {
        let fs = FakeFs::default()
            .file(
                "/home/u/p/.git/config",
                "[core]\n\thooksPath = rel/hooks\n[include]\n\tpath = ../inc.cfg\n",
            )
            .file("/home/u/p/inc.cfg", "[core]\n\thooksPath = /home/u/p/abs\n")
            .file(
                "/home/u/.gitconfig",
                "[core]\n\thooksPath = ~/p/home-hooks\n",
            )
            .file(
                "/home/u/.config/git/config",
                "[core]\n\thooksPath = /elsewhere\n",
            );
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        for line in [
            "/home/u/p/rel/hooks ReadOnly missing",
            "/home/u/p/abs ReadOnly missing",
            "/home/u/p/home-hooks ReadOnly missing",
            "/home/u/p/inc.cfg ReadOnly present",
        ] {
            assert!(has(&l, line), "{line} not in {:#?}", paths(&l));
        }
        let hooks = l
            .protected
            .iter()
            .find(|p| p.path == Path::new("/home/u/p/rel/hooks"))
            .unwrap();
        assert!(hooks.missing_as_dir);
        assert!(!paths(&l).iter().any(|p| p.starts_with("/elsewhere")));
    }

    fn repo_with_include() -> FakeFs {
        FakeFs::default()
            .file(
                "/home/u/p/.git/config",
                "[core]\n\thooksPath = .husky\n[include]\n\tpath = ../inc.cfg\n",
            )
            .file("/home/u/p/inc.cfg", "[user]\n\tname = x\n")
    }

    #[test]
    fn git_agrees() {
        let fs = repo_with_include().git_answer(&[
            ("global", "/home/u/.gitconfig", "user.email", Some("a@b")),
            ("local", ".git/config", "core.hookspath", Some(".husky")),
            ("local", ".git/config", "include.path", Some("../inc.cfg")),
            ("local", ".git/../inc.cfg", "user.name", Some("x")),
            ("local", ".git/config", "core.bare", None),
        ]);
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        assert!(has(&l, "/home/u/p/inc.cfg ReadOnly present"));
        assert!(!l.notes.iter().any(|n| n.contains("git is not installed")));
    }

    /// A workspace in a subdirectory of a repository: git names the repository's
    /// files relative to the worktree's top, not to the workspace.
    #[test]
    fn git_agrees_for_a_subdirectory_workspace() {
        let fs = repo_with_include()
            .dir("/home/u/p/crates/cli")
            .git_answer(&[
                ("local", ".git/config", "core.hookspath", Some(".husky")),
                ("local", ".git/config", "include.path", Some("../inc.cfg")),
                ("local", ".git/../inc.cfg", "user.name", Some("x")),
            ]);
        let l = compute(&policy("/home/u/p/crates/cli"), Path::new("/home/u"), &fs).unwrap();
        assert!(has(&l, "/home/u/p/.git/config ReadOnly present"), "{l:#?}");
    }

    #[test]
    fn git_disagrees_fails_closed() {
        let pol = policy("/home/u/p");
        let home = Path::new("/home/u");
        // A config file inside the workspace that our parse never reached.
        let fs = repo_with_include().git_answer(&[(
            "local",
            "/home/u/p/unknown.cfg",
            "core.fsmonitor",
            Some("touch /tmp/x"),
        )]);
        let e = compute(&pol, home, &fs).unwrap_err();
        assert_eq!(
            e,
            LayoutError::GitDisagrees {
                what: "config file".into(),
                file: "/home/u/p/unknown.cfg".into()
            }
        );
        assert!(e.to_string().contains("refusing to run"), "{e}");
        // An include our parse did not see (target outside the workspace).
        let fs = repo_with_include().git_answer(&[(
            "global",
            "/home/u/.gitconfig",
            "include.path",
            Some("/opt/x.cfg"),
        )]);
        assert!(matches!(
            compute(&pol, home, &fs),
            Err(LayoutError::GitDisagrees { file, .. }) if file == Path::new("/opt/x.cfg")
        ));
        // A hooksPath our parse did not see.
        let fs = repo_with_include().git_answer(&[(
            "global",
            "/home/u/.gitconfig",
            "core.hookspath",
            Some("elsewhere"),
        )]);
        assert!(matches!(
            compute(&pol, home, &fs),
            Err(LayoutError::GitDisagrees { .. })
        ));
        // Git ran and failed.
        let mut fs = repo_with_include();
        fs.git = Some(Err("fatal: bad config line 1".into()));
        let e = compute(&pol, home, &fs).unwrap_err();
        assert!(matches!(e, LayoutError::GitFailed { .. }));
        assert!(e.to_string().contains("bad config line 1"), "{e}");
    }

    #[test]
    fn system_config_at_a_prefix_is_read() {
        let fs = FakeFs::default()
            .dir("/home/u/p/.git")
            .file(
                "/usr/local/etc/gitconfig",
                "[include]\n\tpath = /home/u/p/s.cfg\n",
            )
            .git_answer(&[(
                "system",
                "/usr/local/etc/gitconfig",
                "include.path",
                Some("/home/u/p/s.cfg"),
            )]);
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        assert!(
            has(&l, "/home/u/p/s.cfg ReadOnly missing"),
            "{:#?}",
            paths(&l)
        );
    }

    /// A dotfiles repository as the workspace: ~/.gitconfig links into it. Git
    /// resolves relative includes from the link's directory, not the target's.
    #[test]
    fn global_config_symlinked_into_the_workspace() {
        let fs = FakeFs::default()
            .dir("/home/u/dots/.git")
            .file(
                "/home/u/dots/gitconfig",
                "[include]\n\tpath = dots/extra.cfg\n",
            )
            .link("/home/u/.gitconfig", "dots/gitconfig")
            .git_answer(&[
                (
                    "global",
                    "/home/u/.gitconfig",
                    "include.path",
                    Some("dots/extra.cfg"),
                ),
                ("global", "/home/u/.gitconfig", "user.name", Some("n")),
            ]);
        let l = compute(&policy("/home/u/dots"), Path::new("/home/u"), &fs).unwrap();
        assert!(
            has(&l, "/home/u/dots/gitconfig ReadOnly present"),
            "{:#?}",
            paths(&l)
        );
        assert!(has(&l, "/home/u/dots/extra.cfg ReadOnly missing"));
    }

    #[test]
    fn tilde_user_paths() {
        let fs = FakeFs::default()
            .dir("/home/u/p/.git")
            .file(
                "/etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nbob:x:1:1::/home/u/p/bob:/bin/sh\n",
            )
            .file(
                "/home/u/.gitconfig",
                "[include]\n\tpath = ~bob/inc.cfg\n[core]\n\thooksPath = ~bob/hk\n",
            );
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        assert!(
            has(&l, "/home/u/p/bob/inc.cfg ReadOnly missing"),
            "{:#?}",
            paths(&l)
        );
        assert!(has(&l, "/home/u/p/bob/hk ReadOnly missing"));
        let fs = FakeFs::default()
            .dir("/home/u/p/.git")
            .file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
            .file(
                "/home/u/.gitconfig",
                "[include]\n\tpath = ~ldapuser/inc.cfg\n",
            );
        assert_eq!(
            compute(&policy("/home/u/p"), Path::new("/home/u"), &fs),
            Err(LayoutError::GitUnresolved("~ldapuser/inc.cfg".into()))
        );
    }

    #[test]
    fn no_repository_still_follows_global_includes() {
        let fs = FakeFs::default()
            .dir("/home/u/p")
            .file("/home/u/.gitconfig", "[include]\n\tpath = ~/p/g.cfg\n");
        let l = compute(&policy("/home/u/p"), Path::new("/home/u"), &fs).unwrap();
        assert!(
            has(&l, "/home/u/p/g.cfg ReadOnly missing"),
            "{:#?}",
            paths(&l)
        );
    }

    #[test]
    fn config_parser() {
        let text = "# c\n[core]\n\thooksPath = \"a b\" # x\n\tFSMonitor\n\
                    [includeIf \"gitdir:~/W/\"] path = x\\\n y\n\
                    [Section.Sub]\nk = v ; c\n[includeIf\t\"x\"]path=t\n[s \"q\\\"\"]\nk=\"a\\tb\\\\\" \n\
                    bad line\n[core]\nhooksPath = never\n";
        assert_eq!(
            parse_git_config(text),
            [
                ("core.hookspath".to_string(), Some("a b".to_string())),
                ("core.fsmonitor".to_string(), None),
                (
                    "includeif.gitdir:~/W/.path".to_string(),
                    Some("x y".to_string())
                ),
                ("section.sub.k".to_string(), Some("v".to_string())),
                ("includeif.x.path".to_string(), Some("t".to_string())),
                ("s.q\".k".to_string(), Some("a\tb\\".to_string())),
            ]
        );
        assert!(is_include_key("includeif.gitdir:~/W/.path"));
        assert!(is_include_key("include.path"));
        assert!(!is_include_key("include.other"));
    }

    #[test]
    fn z_parser() {
        let out = b"global\0file:/h/.gitconfig\0user.name\nA B\0local\0file:.git/config\0x.flag\0command\0command line:\0safe.directory\n*\0";
        let e = parse_git_config_z(out).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].origin.as_deref(), Some(Path::new("/h/.gitconfig")));
        assert_eq!(e[0].value.as_deref(), Some("A B"));
        assert_eq!(e[1].key, "x.flag");
        assert_eq!(e[1].value, None);
        assert_eq!(e[2].origin, None);
        assert!(parse_git_config_z(b"global\0file:/x\0").is_err());
        assert_eq!(parse_git_config_z(b"").unwrap(), []);
    }

    #[test]
    fn globs() {
        assert!(crate::secrets::glob_match(
            "credentials*",
            "credentials.toml"
        ));
        assert!(crate::secrets::glob_match("*.pem", "a.pem"));
        assert!(crate::secrets::glob_match("a*b*c", "aXXbYYc"));
        assert!(!crate::secrets::glob_match("a*b", "ac"));
        assert!(!crate::secrets::glob_match("x", "y"));
    }
}
