//! Program lookup, pure: which paths `run` tries for `argv[0]`, in order. The apply
//! layer only checks each candidate on disk (a regular file that is not a Store app
//! alias).
//!
//! The rules, and why:
//! - a name with a separator or drive (`.\tool`, `bin\tool.exe`, `C:\x\y`) is a path:
//!   relative ones are resolved against the *command's* working directory, as the
//!   command itself would, not against workfence's;
//! - a bare name is searched in the sandbox's `PATH` only; the working directory is not
//!   searched first (unlike `cmd.exe`), so a planted `git.exe` in the workspace is not
//!   run by accident, and relative `PATH` entries (`.`, `bin`) are skipped for the
//!   same reason;
//! - a name that already has an extension is tried as is, then with each `PATHEXT`
//!   extension (`python3.10` is not an extension).

use crate::path::WinPath;

/// `IO_REPARSE_TAG_APPEXECLINK`: a Store app execution alias (the zero-byte
/// `python.exe` in `%LOCALAPPDATA%\Microsoft\WindowsApps`). Such a file cannot be
/// started by `CreateProcessAsUserW` for another account, and usually only opens the
/// Store: lookup skips it and goes on along `PATH`.
pub const IO_REPARSE_TAG_APPEXECLINK: u32 = 0x8000_001B;

/// Whether a reparse tag marks a file lookup must skip.
pub fn is_app_alias(reparse_tag: Option<u32>) -> bool {
    reparse_tag == Some(IO_REPARSE_TAG_APPEXECLINK)
}

fn exts(pathext: Option<&str>) -> Vec<String> {
    pathext
        .unwrap_or(".COM;.EXE;.BAT;.CMD")
        .split(';')
        .map(str::trim)
        .filter(|e| e.starts_with('.') && e.len() > 1)
        .map(str::to_string)
        .collect()
}

fn with_exts(base: &str, exts: &[String], out: &mut Vec<String>) {
    let name = base.rsplit(['\\', '/']).next().unwrap_or(base);
    let has_ext = name
        .rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && !ext.is_empty());
    if has_ext {
        out.push(base.to_string());
    }
    for e in exts {
        out.push(format!("{base}{e}"));
    }
}

/// The candidate paths for `argv0`, in the order they are tried.
pub fn candidates(
    argv0: &str,
    path: Option<&str>,
    pathext: Option<&str>,
    cwd: &str,
) -> Vec<String> {
    let exts = exts(pathext);
    let mut out = Vec::new();
    if argv0.is_empty() {
        return out;
    }
    if argv0.contains(['\\', '/', ':']) {
        let full = match WinPath::parse(argv0) {
            Ok(p) => p.display_string(),
            // Drive-relative (`C:tool`) and stream names (`x:s`) name no one file.
            Err(_) if argv0.contains(':') => return out,
            Err(_) => match WinPath::parse(cwd).and_then(|c| c.join(argv0)) {
                Ok(p) => p.display_string(),
                Err(_) => return out,
            },
        };
        with_exts(&full, &exts, &mut out);
        return out;
    }
    for dir in path.unwrap_or("").split(';') {
        let dir = dir.trim().trim_matches('"');
        let Ok(d) = WinPath::parse(dir) else {
            // Empty or relative entries would resolve against the workspace.
            continue;
        };
        if let Ok(p) = d.join(argv0) {
            with_exts(&p.display_string(), &exts, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHEXT: &str = ".COM;.EXE;.BAT;.CMD";

    #[test]
    fn bare_names_search_absolute_path_entries_only() {
        let c = candidates(
            "git",
            Some(r#".;C:\Program Files\Git\cmd;bin;;"C:\Tools";C:rel"#),
            Some(PATHEXT),
            r"C:\Users\dev\src\proj",
        );
        assert_eq!(c[0], r"C:\Program Files\Git\cmd\git.COM");
        assert_eq!(c[1], r"C:\Program Files\Git\cmd\git.EXE");
        assert!(
            c.iter().all(|p| !p.starts_with(r"C:\Users\dev\src\proj")),
            "{c:?}"
        );
        assert!(c.contains(&r"C:\Tools\git.CMD".to_string()), "{c:?}");
        assert_eq!(c.len(), 8);
    }

    #[test]
    fn relative_paths_resolve_against_the_commands_cwd() {
        let c = candidates(r".\scripts\build.cmd", None, Some(PATHEXT), r"D:\w\sub");
        assert_eq!(c[0], r"D:\w\sub\scripts\build.cmd");
        let c = candidates(r"..\tool", None, Some(PATHEXT), r"D:\w\sub");
        assert_eq!(c[1], r"D:\w\tool.EXE");
        let c = candidates(r"C:\x\y.exe", None, Some(PATHEXT), r"D:\w");
        assert_eq!(c[0], r"C:\x\y.exe");
        assert!(candidates("C:tool", None, None, r"D:\w").is_empty());
    }

    #[test]
    fn names_with_dots_are_not_extensions_unless_they_are() {
        let c = candidates("python3.10", Some(r"C:\py"), Some(".EXE"), r"C:\w");
        assert_eq!(c, vec![r"C:\py\python3.10", r"C:\py\python3.10.EXE"]);
        let c = candidates("node", Some(r"C:\n"), Some(" .EXE ; junk ;"), r"C:\w");
        assert_eq!(c, vec![r"C:\n\node.EXE"]);
    }

    #[test]
    fn hostile_names_stay_one_path() {
        let c = candidates("a&b;(c) %x%.exe", Some(r"C:\t"), Some(".EXE"), r"C:\w");
        assert_eq!(c[0], r"C:\t\a&b;(c) %x%.exe");
        // A quote cannot be in a file name: no candidate rather than a wrong one.
        assert!(candidates("a\"b", Some(r"C:\t"), Some(".EXE"), r"C:\w").is_empty());
    }

    #[test]
    fn store_aliases_are_skipped() {
        assert!(is_app_alias(Some(IO_REPARSE_TAG_APPEXECLINK)));
        assert!(!is_app_alias(Some(0xA000_000C)));
        assert!(!is_app_alias(None));
    }
}
