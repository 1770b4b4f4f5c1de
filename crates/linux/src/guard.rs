//! The write guard: which names the sandbox may never create or write, whatever the
//! host does to the workspace meanwhile. Pure decisions over byte paths, used by the
//! broker (which performs every write-intent `open`, `mkdir`, `rename`, `link`,
//! `symlink`, `mknod` and `truncate` of the sandbox on its behalf, after resolving
//! the real path) and printed by `explain`.
//!
//! Two kinds of rules:
//! * **exact paths** from the layout (`.codex`, `.vscode`, `.mcp.json`, `.git/config`,
//!   `core.hooksPath`, files reached through `include.path`, ...): the path and
//!   everything below it, existing at start or not;
//! * **git names**, everywhere: inside any git directory (a directory named `.git`,
//!   a linked worktree's `.git/worktrees/NAME`, any directory under `.git/modules`),
//!   the names `config`, `config.worktree`, `commondir` and `hooks` (and everything
//!   below `hooks`); and any `.git` that is not a directory (a gitfile or a symlink
//!   would point host git at a directory the command filled). Host git reads these
//!   when it later runs in a nested repository (a shell prompt or an IDE does that
//!   unasked), so a command that plants them gets code run on the host.
//!
//! A directory may not be renamed to a place where its contents would become
//! protected (a gitdir, `worktrees`, `modules`, `hooks`, an ancestor of an exact
//! path). With that, a directory that is not protected can never become protected
//! through the sandbox's own renames, so checking a resolved parent and then acting
//! on it cannot race with the sandbox (the host is trusted).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What kind of object an operation would create at the final path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory (`mkdir`).
    Dir,
    /// Anything else: a regular file, a symlink, a hard link, a device node.
    NonDir,
}

/// The guard's rules (part of the plan).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteGuard {
    /// Paths (as seen inside) that may not be created, written or replaced, with
    /// everything below them.
    pub exact: Vec<PathBuf>,
    /// Directories below an exact path that stay writable (an existing submodule's
    /// gitdir under a read-only `.git/modules`); the git name rules still apply in them.
    pub writable_within: Vec<PathBuf>,
    /// Whether the git name rules apply (always, except in tests).
    pub git_names: bool,
    /// Directories whose contents vanish with the sandbox (its private `/tmp`): host
    /// git never runs in a repository there, so the git name rules do not apply and
    /// `git clone`/`git init` work there. Exact paths still do.
    #[serde(default)]
    pub ephemeral: Vec<PathBuf>,
    /// Host directories mounted inside an ephemeral one (a writable root under
    /// `/tmp`): the git name rules apply there as anywhere.
    #[serde(default)]
    pub ephemeral_except: Vec<PathBuf>,
}

/// Where a path sits relative to git directories, after walking its components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GitState {
    /// Not inside any git directory.
    Outside,
    /// Inside a git directory's ordinary content (`objects`, `refs`, ...).
    Content,
    /// At the top of a git directory: `config`, `commondir` and `hooks` here matter.
    Root,
    /// Directly inside `worktrees`: each entry is a linked worktree's gitdir.
    Worktrees,
    /// Somewhere under `modules`: every directory may be a submodule's gitdir
    /// (submodule names may contain slashes), so every level counts as a root.
    Modules,
    /// Inside `hooks`.
    Hooks,
}

const GIT_ROOT_NAMES: &[&[u8]] = &[b"config", b"config.worktree", b"commondir", b"hooks"];

/// Directories at the top of a git directory that hold other git directories: a
/// symlink or file in their place would redirect those.
const GIT_CONTAINERS: &[&[u8]] = &[b"worktrees", b"modules"];

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// The state after entering `comp` from `state`.
fn step(state: GitState, comp: &[u8]) -> GitState {
    use GitState::*;
    if comp == b".git" {
        return match state {
            Hooks => Hooks,
            _ => Root,
        };
    }
    match state {
        Outside => Outside,
        Content => Content,
        Hooks => Hooks,
        Root | Modules if comp == b"hooks" => Hooks,
        Root if comp == b"worktrees" => Worktrees,
        Root | Modules if comp == b"modules" => Modules,
        Root => Content,
        Worktrees => Root,
        Modules => Modules,
    }
}

fn state_of(path: &[u8]) -> GitState {
    components(path).fold(GitState::Outside, step)
}

/// Splits an absolute path into (parent, last component). Trailing slashes are ignored.
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    let mut end = path.len();
    while end > 1 && path[end - 1] == b'/' {
        end -= 1;
    }
    let p = &path[..end];
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
    }
}

/// `a` equals `b` or lies below it (component-wise).
fn at_or_below(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (trim(a), trim(b));
    a == b || (a.starts_with(b) && (b == b"/" || a.get(b.len()) == Some(&b'/')))
}

fn trim(p: &[u8]) -> &[u8] {
    let mut end = p.len();
    while end > 1 && p[end - 1] == b'/' {
        end -= 1;
    }
    &p[..end]
}

impl WriteGuard {
    /// Why writing, truncating, replacing or creating `path` (absolute, real: symlinks
    /// already resolved by the caller) is refused; `None` allows it. `kind` is what a
    /// creation would make (for writes to existing files: [`Kind::NonDir`]).
    pub fn refuse(&self, path: &[u8], kind: Kind) -> Option<&'static str> {
        let within = |list: &[PathBuf]| {
            list.iter()
                .any(|e| at_or_below(path, e.as_os_str().as_encoded_bytes()))
        };
        if within(&self.exact) && !within(&self.writable_within) {
            return Some("protected path: runs code on the host later");
        }
        // A file or symlink where a protected path needs a directory (`a` for a
        // protected `a/b/x.cfg`) would send host git to another file.
        if kind == Kind::NonDir
            && self
                .exact
                .iter()
                .any(|e| at_or_below(e.as_os_str().as_encoded_bytes(), path))
        {
            return Some("a non-directory here would redirect a protected path below it");
        }
        if !self.git_names || self.is_ephemeral(path) {
            return None;
        }
        let (parent, name) = split_last(path);
        if name == b".git" && kind == Kind::NonDir {
            return Some("a .git that is not a directory would point host git elsewhere");
        }
        match state_of(parent) {
            GitState::Hooks => Some("git hooks run on the host"),
            GitState::Root | GitState::Modules if GIT_ROOT_NAMES.contains(&name) => {
                Some("git config, hooks and commondir make host git run code")
            }
            GitState::Root | GitState::Modules
                if kind == Kind::NonDir && GIT_CONTAINERS.contains(&name) =>
            {
                Some("a non-directory here would redirect the git directories below it")
            }
            _ => None,
        }
    }

    /// Whether `path` is in the sandbox's own ephemeral storage (and not in a host
    /// directory mounted there).
    fn is_ephemeral(&self, path: &[u8]) -> bool {
        let within = |list: &[PathBuf]| {
            list.iter()
                .any(|e| at_or_below(path, e.as_os_str().as_encoded_bytes()))
        };
        within(&self.ephemeral) && !within(&self.ephemeral_except)
    }

    /// Why renaming a directory to `dst` is refused: its contents would land where
    /// they become protected.
    pub fn refuse_dir_destination(&self, dst: &[u8]) -> Option<&'static str> {
        if let Some(r) = self.refuse(dst, Kind::Dir) {
            return Some(r);
        }
        for e in &self.exact {
            if at_or_below(e.as_os_str().as_encoded_bytes(), dst) {
                return Some("the directory would become an ancestor of a protected path");
            }
        }
        if !self.git_names || self.is_ephemeral(dst) {
            return None;
        }
        match state_of(dst) {
            GitState::Outside | GitState::Content => None,
            _ => Some("the directory's contents would become git metadata"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> WriteGuard {
        WriteGuard {
            exact: vec![
                "/w/.codex".into(),
                "/w/.husky/_".into(),
                "/w/.mcp.json".into(),
                "/w/.git/modules".into(),
            ],
            writable_within: vec!["/w/.git/modules/sub".into()],
            git_names: true,
            ephemeral: vec!["/tmp".into()],
            ephemeral_except: vec!["/tmp/hostroot".into()],
        }
    }

    #[test]
    fn the_private_tmp_may_hold_new_repositories_host_mounts_in_it_may_not() {
        // A clone into the sandbox's own /tmp: it vanishes with the sandbox.
        assert!(!refused("/tmp/clone/.git/config", Kind::NonDir));
        assert!(!refused("/tmp/clone/.git/hooks", Kind::Dir));
        assert!(!refused("/tmp/clone/.git/hooks/pre-commit", Kind::NonDir));
        assert!(guard()
            .refuse_dir_destination(b"/tmp/clone/.git/hooks")
            .is_none());
        // A host directory bound under /tmp, and everything else, keep the rules.
        assert!(refused("/tmp/hostroot/r/.git/config", Kind::NonDir));
        assert!(refused("/tmp/hostroot/r/.git/hooks/x", Kind::NonDir));
        assert!(refused("/w/r/.git/config", Kind::NonDir));
        assert!(refused("/tmpx/r/.git/config", Kind::NonDir));
        assert!(guard().refuse_dir_destination(b"/w/r/.git/hooks").is_some());
        // A move from /tmp into the workspace is judged at its destination.
        assert!(guard().refuse_dir_destination(b"/w/sub/.git").is_some());
    }

    fn refused(p: &str, k: Kind) -> bool {
        guard().refuse(p.as_bytes(), k).is_some()
    }

    #[test]
    fn exact_paths_and_below() {
        assert!(refused("/w/.codex", Kind::Dir));
        assert!(refused("/w/.codex/config.toml", Kind::NonDir));
        assert!(refused("/w/.mcp.json", Kind::NonDir));
        assert!(refused("/w/.husky/_/pre-commit", Kind::NonDir));
        assert!(!refused("/w/.husky", Kind::Dir));
        assert!(refused("/w/.husky", Kind::NonDir));
        assert!(refused("/w/.git/worktrees", Kind::NonDir));
        assert!(!refused("/w/.git/worktrees", Kind::Dir));
        assert!(!refused("/w/.codexx", Kind::Dir));
        assert!(!refused("/w/src/.codex", Kind::Dir));
        assert!(refused("/w/.git/modules/new", Kind::Dir));
        assert!(!refused("/w/.git/modules/sub/objects/ab/cd", Kind::NonDir));
        assert!(refused("/w/.git/modules/sub/config", Kind::NonDir));
    }

    #[test]
    fn git_names_anywhere() {
        for p in [
            "/w/.git/config",
            "/w/.git/commondir",
            "/w/.git/config.worktree",
            "/w/.git/hooks",
            "/w/.git/hooks/post-checkout",
            "/w/sub/.git/config",
            "/w/a/b/.git/hooks/x/y",
            "/w/.git/worktrees/wt/commondir",
            "/w/.git/worktrees/wt/config.worktree",
            "/w/.git/worktrees/wt/hooks",
            "/w/.git/modules/sub/config",
            "/w/.git/modules/a/b/config",
            "/w/.git/modules/sub/modules/inner/hooks/x",
        ] {
            assert!(refused(p, Kind::NonDir), "{p}");
        }
        for p in [
            "/w/.git/index.lock",
            "/w/.git/HEAD",
            "/w/.git/refs/heads/config",
            "/w/.git/refs/heads/hooks/x",
            "/w/.git/objects/ab/cdef",
            "/w/.git/worktrees/wt/HEAD",
            "/w/.git/worktrees/wt/gitdir",
            "/w/src/config",
            "/w/hooks/x",
            "/w/.gitx/config",
            "/w/.git/logs/refs/heads/hooks",
        ] {
            assert!(!refused(p, Kind::NonDir), "{p}");
        }
    }

    #[test]
    fn dot_git_must_be_a_directory() {
        assert!(refused("/w/sub/.git", Kind::NonDir));
        assert!(!refused("/w/sub/.git", Kind::Dir));
    }

    #[test]
    fn directory_renames() {
        let g = guard();
        let refused = |p: &str| g.refuse_dir_destination(p.as_bytes()).is_some();
        assert!(refused("/w/sub/.git"));
        assert!(refused("/w/.git/worktrees"));
        assert!(refused("/w/.git/worktrees/new"));
        assert!(refused("/w/.git/modules"));
        assert!(refused("/w/.git/modules/x/y"));
        assert!(refused("/w/.git/hooks"));
        assert!(refused("/w/.husky"));
        assert!(refused("/w/.codex"));
        assert!(refused("/w/.codex/x"));
        assert!(!refused("/w/src/new"));
        assert!(!refused("/w/.git/refs/heads/feature"));
        assert!(!refused("/w/.git/rebase-merge"));
    }

    #[test]
    fn trailing_slashes_and_dots() {
        assert!(refused("/w/.codex/", Kind::Dir));
        assert!(refused("/w/sub/.git/./config", Kind::NonDir));
        assert!(refused("/w//sub//.git//hooks//", Kind::Dir));
    }

    #[test]
    fn git_names_can_be_off() {
        let g = WriteGuard::default();
        assert!(g.refuse(b"/w/.git/config", Kind::NonDir).is_none());
    }
}
