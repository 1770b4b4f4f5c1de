//! Windows path normalization: one comparison key for the many names of one object.
//!
//! Windows accepts many spellings of one file: any letter case, `/` or `\`, the `\\?\`,
//! `\\.\` and `\??\` prefixes, UNC forms, trailing dots and spaces (dropped by the
//! Win32 layer), 8.3 short names (`GIT~1`), and stream suffixes (`.git::$INDEX_ALLOCATION`
//! is the `.git` directory itself; `file:stream` writes into `file`).
//!
//! Every path that workfence compares goes through [`WinPath::parse`]. This module is
//! pure: it cannot resolve short names, junctions or symlinks, so it *flags* them
//! ([`Flags`]) and the apply layer resolves the object itself (opening a handle and
//! asking `GetFinalPathNameByHandleW`). Protection is attached to objects, never to
//! strings: this module only decides which strings could alias which.

use std::fmt;

use serde::Serialize;

/// Why a string is not a usable absolute Windows path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty input.
    #[error("empty path")]
    Empty,
    /// Relative, drive-relative (`C:foo`) or rooted without a drive (`\foo`).
    #[error("{0:?} is not an absolute path with a drive letter or UNC share; pass a full path such as C:\\src\\project")]
    NotAbsolute(String),
    /// A NUL, a control character or one of `<>"|?*` in a Win32 path.
    #[error("{0:?} contains a character Windows does not allow in file names; rename the file")]
    BadChar(String),
    /// `\\?\Volume{..}\`, `\\?\GLOBALROOT\` and other device-namespace paths.
    #[error("{0:?} is a device-namespace path; pass the drive-letter path instead")]
    DeviceNamespace(String),
    /// `..` climbs above the root.
    #[error("{0:?} climbs above its root with ..")]
    AboveRoot(String),
}

/// What the normalizer noticed; any of these means the string may name an object
/// other than its literal reading, so the apply layer must resolve the object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flags {
    /// Had a `\\?\`, `\\.\` or `\??\` prefix.
    pub verbatim: bool,
    /// A component ended in dots or spaces (Win32 drops them: `.git.` is `.git`).
    pub trailing_dots_or_spaces: bool,
    /// A component had a stream suffix (`:stream`, `::$DATA`, `::$INDEX_ALLOCATION`).
    pub stream: bool,
    /// A component looks like an 8.3 short name (`GIT~1`, `PROGRA~2`).
    pub short_name: bool,
    /// A component is a DOS device name (`NUL`, `CON`, `COM1.txt`).
    pub device_name: bool,
    /// A `..` component was folded lexically.
    pub dotdot: bool,
}

impl Flags {
    /// Whether the literal string may name a different object than it seems.
    pub fn may_alias(&self) -> bool {
        self.trailing_dots_or_spaces || self.stream || self.short_name || self.device_name
    }
}

/// The root of an absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Root {
    /// `C:\` (the letter upper-cased).
    Drive(char),
    /// `\\server\share`.
    Unc {
        /// Server name as written.
        server: String,
        /// Share name as written.
        share: String,
    },
}

/// A normalized absolute Windows path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WinPath {
    root: Root,
    /// Components as written (streams and trailing dots/spaces removed).
    parts: Vec<String>,
    /// What was noticed while parsing.
    pub flags: Flags,
}

const DEVICE_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "COM¹", "COM²", "COM³", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8",
    "LPT9", "LPT¹", "LPT²", "LPT³", "CONIN$", "CONOUT$",
];

/// Upper-cases like NTFS's upcase table: one-to-one simple mappings only
/// (`ß` stays `ß`, unlike Unicode full case folding which would give `SS`).
pub fn fold_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Whether a component looks like an 8.3 short name: a base of 1-6 characters, `~`,
/// digits, and an optional extension of up to 3 characters.
pub fn looks_like_short_name(component: &str) -> bool {
    let (base, ext) = match component.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, Some(e)),
        _ => (component, None),
    };
    if ext.is_some_and(|e| e.chars().count() > 3) {
        return false;
    }
    let Some((stem, digits)) = base.rsplit_once('~') else {
        return false;
    };
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (1..=6).contains(&stem.chars().count())
        && stem.len() + 1 + digits.len() <= 8
}

/// Splits `name:stream:$TYPE` into the object name and whether a stream was named.
///
/// `x::$DATA` and `x::$INDEX_ALLOCATION` name `x` itself; `x:s` names a stream of `x`,
/// and writing it changes `x`. Either way the object is `x`.
pub fn strip_stream(component: &str) -> (&str, bool) {
    match component.split_once(':') {
        Some((name, _)) => (name, true),
        None => (component, false),
    }
}

/// Whether a component (after stream and trailing-dot stripping) is a DOS device name.
pub fn is_device_name(component: &str) -> bool {
    let base = component
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end_matches(' ');
    DEVICE_NAMES.iter().any(|d| d.eq_ignore_ascii_case(base))
}

fn bad_char(c: char, verbatim: bool) -> bool {
    (c as u32) < 0x20 || (!verbatim && matches!(c, '<' | '>' | '"' | '|' | '?' | '*'))
}

impl WinPath {
    /// Parses and normalizes an absolute path.
    pub fn parse(input: &str) -> Result<WinPath, PathError> {
        if input.is_empty() {
            return Err(PathError::Empty);
        }
        if input.contains('\0') {
            return Err(PathError::BadChar(input.to_string()));
        }
        let mut flags = Flags::default();
        let unified = input.replace('/', "\\");
        let mut rest: &str = &unified;
        // Namespace prefixes. `\\?\` skips Win32 normalization, so `.git.` there is a
        // distinct name; we still fold it (conservatively: it may alias `.git`).
        for prefix in ["\\\\?\\", "\\\\.\\", "\\??\\"] {
            if let Some(r) = rest.strip_prefix(prefix) {
                flags.verbatim = true;
                rest = r;
                break;
            }
        }
        let (root, body) = if flags.verbatim {
            if let Some(r) = strip_prefix_ci(rest, "UNC\\") {
                split_unc(r, input)?
            } else if let Some((d, r)) = drive(rest) {
                (Root::Drive(d), r)
            } else {
                return Err(PathError::DeviceNamespace(input.to_string()));
            }
        } else if let Some(r) = rest.strip_prefix("\\\\") {
            split_unc(r, input)?
        } else if let Some((d, r)) = drive(rest) {
            (Root::Drive(d), r)
        } else {
            return Err(PathError::NotAbsolute(input.to_string()));
        };
        let mut parts: Vec<String> = Vec::new();
        for raw in body.split('\\') {
            if raw.is_empty() || raw == "." {
                continue;
            }
            if raw.chars().any(|c| bad_char(c, flags.verbatim)) {
                return Err(PathError::BadChar(input.to_string()));
            }
            if raw == ".." {
                flags.dotdot = true;
                if parts.pop().is_none() {
                    return Err(PathError::AboveRoot(input.to_string()));
                }
                continue;
            }
            let (name, stream) = strip_stream(raw);
            flags.stream |= stream;
            let trimmed = name.trim_end_matches(['.', ' ']);
            if trimmed.len() != name.len() {
                flags.trailing_dots_or_spaces = true;
            }
            if trimmed.is_empty() {
                // `...` or `. .`: Win32 reduces these to the directory itself.
                continue;
            }
            flags.short_name |= looks_like_short_name(trimmed);
            flags.device_name |= is_device_name(trimmed);
            parts.push(trimmed.to_string());
        }
        Ok(WinPath { root, parts, flags })
    }

    /// The comparison key: upper-cased (NTFS rules), `\`-separated, no prefix.
    pub fn key(&self) -> String {
        fold_case(&self.display_string())
    }

    /// The path as Win32 APIs take it (`C:\a\b`, `\\server\share\a`).
    pub fn display_string(&self) -> String {
        let mut s = match &self.root {
            Root::Drive(d) => format!("{d}:"),
            Root::Unc { server, share } => format!("\\\\{server}\\{share}"),
        };
        if self.parts.is_empty() {
            s.push('\\');
        }
        for p in &self.parts {
            s.push('\\');
            s.push_str(p);
        }
        s
    }

    /// The `\\?\` form, which lifts MAX_PATH and skips Win32 name munging.
    pub fn verbatim_string(&self) -> String {
        match &self.root {
            Root::Drive(_) => format!("\\\\?\\{}", self.display_string()),
            Root::Unc { .. } => format!("\\\\?\\UNC\\{}", &self.display_string()[2..]),
        }
    }

    /// The root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The components below the root.
    pub fn components(&self) -> &[String] {
        &self.parts
    }

    /// Whether this is a drive root (`C:\`) or a share root (`\\server\share`).
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// Whether the path is on a network share.
    pub fn is_unc(&self) -> bool {
        matches!(self.root, Root::Unc { .. })
    }

    /// The last component.
    pub fn file_name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }

    /// The parent directory (`None` at the root).
    pub fn parent(&self) -> Option<WinPath> {
        let mut p = self.clone();
        p.parts.pop()?;
        Some(p)
    }

    /// Appends one component (parsed like any other, so `x:s` or `.git.` are folded).
    pub fn join(&self, name: &str) -> Result<WinPath, PathError> {
        WinPath::parse(&format!("{}\\{name}", self.display_string()))
    }

    /// Case-insensitive component-wise prefix test (`C:\a` is within `C:\A`, not `C:\ab`).
    pub fn starts_with(&self, base: &WinPath) -> bool {
        root_key(&self.root) == root_key(&base.root)
            && self.parts.len() >= base.parts.len()
            && self
                .parts
                .iter()
                .zip(&base.parts)
                .all(|(a, b)| fold_case(a) == fold_case(b))
    }

    /// Same object name (case-insensitively).
    pub fn same(&self, other: &WinPath) -> bool {
        self.key() == other.key()
    }
}

impl fmt::Display for WinPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_string())
    }
}

fn root_key(r: &Root) -> String {
    match r {
        Root::Drive(d) => d.to_string(),
        Root::Unc { server, share } => fold_case(&format!("{server}\\{share}")),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// `C:\rest` or `C:` alone (drive root); `C:rest` is drive-relative and refused by the caller.
fn drive(s: &str) -> Option<(char, &str)> {
    let mut it = s.chars();
    let letter = it.next()?;
    if !letter.is_ascii_alphabetic() || it.next()? != ':' {
        return None;
    }
    let rest = &s[2..];
    if rest.is_empty() || rest.starts_with('\\') {
        Some((letter.to_ascii_uppercase(), rest))
    } else {
        None
    }
}

fn split_unc<'a>(s: &'a str, input: &str) -> Result<(Root, &'a str), PathError> {
    let mut it = s.splitn(3, '\\');
    let server = it.next().unwrap_or("");
    let share = it.next().unwrap_or("");
    if server.is_empty() || share.is_empty() || server == "." || server == "?" {
        return Err(PathError::NotAbsolute(input.to_string()));
    }
    if server
        .chars()
        .chain(share.chars())
        .any(|c| bad_char(c, false))
    {
        return Err(PathError::BadChar(input.to_string()));
    }
    Ok((
        Root::Unc {
            server: server.to_string(),
            share: share.to_string(),
        },
        it.next().unwrap_or(""),
    ))
}

/// Whether a name could refer to the protected name `protected` on NTFS: equal after
/// case folding, stream stripping and trailing dot/space removal, or an 8.3 short name
/// that could be generated from it (`GIT~1` for `.git`, `VSCODE~1` for `.vscode`).
pub fn may_name(candidate: &str, protected: &str) -> bool {
    let (name, _) = strip_stream(candidate);
    let name = name.trim_end_matches(['.', ' ']);
    if fold_case(name) == fold_case(protected) {
        return true;
    }
    if !looks_like_short_name(name) {
        return false;
    }
    // Short names are built from the long name's valid 8.3 characters, upper-cased,
    // without leading dots; the stem before `~` is a prefix of that.
    let stem = name.rsplit_once('~').map(|(s, _)| s).unwrap_or("");
    let long_base: String = fold_case(protected)
        .chars()
        .filter(|c| *c != '.' && *c != ' ')
        .collect();
    !stem.is_empty() && long_base.starts_with(&fold_case(stem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        WinPath::parse(s).unwrap().key()
    }

    #[test]
    fn case_and_separators() {
        assert_eq!(key("c:/Users/Dev/Src"), "C:\\USERS\\DEV\\SRC");
        assert_eq!(key("C:\\users\\dev\\src\\"), key("C:/USERS//DEV/./SRC"));
        assert_eq!(key("C:"), "C:\\");
        assert_eq!(key("C:\\"), "C:\\");
        assert!(WinPath::parse("C:\\").unwrap().is_root());
    }

    #[test]
    fn prefixes_name_the_same_object() {
        let plain = key("C:\\ws\\.git");
        for v in [
            "\\\\?\\C:\\ws\\.git",
            "\\\\.\\c:\\ws\\.git",
            "\\??\\C:\\ws\\.GIT",
            "//?/C:/ws/.git",
        ] {
            let p = WinPath::parse(v).unwrap();
            assert_eq!(p.key(), plain, "{v}");
            assert!(p.flags.verbatim);
        }
        let unc = WinPath::parse("\\\\?\\UNC\\srv\\Share\\x").unwrap();
        assert_eq!(unc.key(), key("\\\\SRV\\share\\X"));
        assert!(unc.is_unc());
        assert_eq!(unc.verbatim_string(), "\\\\?\\UNC\\srv\\Share\\x");
        assert_eq!(
            WinPath::parse("c:\\a").unwrap().verbatim_string(),
            "\\\\?\\C:\\a"
        );
    }

    #[test]
    fn trailing_dots_spaces_and_streams_fold_to_the_object() {
        let plain = key("C:\\ws\\.git");
        for v in [
            "C:\\ws\\.git.",
            "C:\\ws\\.git . .",
            "C:\\ws\\.git::$INDEX_ALLOCATION",
            "C:\\ws\\.git:$I30:$INDEX_ALLOCATION",
            "C:\\ws\\.GIT::$DATA",
            "C:\\ws\\.git:evil",
        ] {
            let p = WinPath::parse(v).unwrap();
            assert_eq!(p.key(), plain, "{v}");
            assert!(p.flags.may_alias(), "{v}");
        }
        let hooks = WinPath::parse("C:\\ws\\.git::$INDEX_ALLOCATION\\hooks").unwrap();
        assert_eq!(hooks.key(), key("C:\\ws\\.git\\hooks"));
        // `...` is the directory itself under Win32 rules.
        assert_eq!(key("C:\\ws\\...\\x"), key("C:\\ws\\x"));
    }

    #[test]
    fn short_names() {
        for s in [
            "GIT~1",
            "git~12",
            "PROGRA~1",
            "VSCODE~1",
            "A~1.TXT",
            "MCP~1.JSO",
        ] {
            assert!(looks_like_short_name(s), "{s}");
        }
        for s in [
            "~1",
            "git~",
            "git~x",
            "readme.md",
            "LONGNAME~1",
            "a~1.json",
            "x~1~",
        ] {
            assert!(!looks_like_short_name(s), "{s}");
        }
        assert!(
            WinPath::parse("C:\\ws\\GIT~1\\hooks")
                .unwrap()
                .flags
                .short_name
        );
        assert!(may_name("GIT~1", ".git"));
        assert!(may_name("git~2", ".git"));
        assert!(may_name("VSCODE~1", ".vscode"));
        assert!(may_name("MCP~1.JSO", ".mcp.json"));
        assert!(may_name(".GIT.", ".git"));
        assert!(may_name(".git::$INDEX_ALLOCATION", ".git"));
        assert!(!may_name("GITX~1", ".git"));
        assert!(!may_name("src", ".git"));
        assert!(!may_name(".github", ".git"));
    }

    #[test]
    fn dotdot_and_containment() {
        let ws = WinPath::parse("C:\\Users\\dev\\src\\proj").unwrap();
        let inside = WinPath::parse("c:\\users\\DEV\\src\\proj\\a\\..\\b").unwrap();
        assert!(inside.flags.dotdot);
        assert!(inside.starts_with(&ws));
        let escape = WinPath::parse("C:\\Users\\dev\\src\\proj\\..\\other").unwrap();
        assert!(!escape.starts_with(&ws));
        let sibling = WinPath::parse("C:\\Users\\dev\\src\\project2").unwrap();
        assert!(!sibling.starts_with(&ws));
        assert!(!WinPath::parse("D:\\Users\\dev\\src\\proj\\x")
            .unwrap()
            .starts_with(&ws));
        assert_eq!(
            WinPath::parse("C:\\..\\x"),
            Err(PathError::AboveRoot("C:\\..\\x".into()))
        );
    }

    #[test]
    fn hostile_inputs_are_refused() {
        for bad in [
            "",
            "relative\\path",
            "C:relative",
            "\\rooted",
            "\\\\?\\Volume{0b1f}\\x",
            "\\\\?\\GLOBALROOT\\Device\\HarddiskVolume1\\x",
            "\\\\server",
            "\\\\\\share",
            "C:\\a\0b",
            "C:\\a\\b|c",
            "C:\\a\\b*",
            "C:\\a\\b?",
            "C:\\a\\\u{1}x",
            "\\\\.\\pipe",
        ] {
            assert!(WinPath::parse(bad).is_err(), "{bad:?}");
        }
        // Verbatim paths may hold `?`-free names that Win32 would refuse, but never NUL.
        assert!(WinPath::parse("\\\\?\\C:\\a\0").is_err());
    }

    #[test]
    fn device_names() {
        for d in [
            "C:\\ws\\nul",
            "C:\\ws\\NUL.txt",
            "C:\\ws\\com1 .log",
            "C:\\ws\\CONIN$",
        ] {
            assert!(WinPath::parse(d).unwrap().flags.device_name, "{d}");
        }
        assert!(!WinPath::parse("C:\\ws\\null").unwrap().flags.device_name);
    }

    #[test]
    fn unicode_case() {
        assert_eq!(key("C:\\Ünïcödé\\ПРОЕКТ"), key("c:\\üNÏCÖDÉ\\проект"));
        // NTFS upcases one-to-one; `ß` does not become `SS`.
        assert_ne!(key("C:\\straße"), key("C:\\STRASSE"));
        assert_eq!(fold_case("ß"), "ß");
    }

    #[test]
    fn join_and_parent() {
        let ws = WinPath::parse("C:\\Users\\dev\\my proj").unwrap();
        let g = ws.join(".git.").unwrap();
        assert_eq!(g.display_string(), "C:\\Users\\dev\\my proj\\.git");
        assert!(g.flags.trailing_dots_or_spaces);
        assert!(g.parent().unwrap().same(&ws));
        assert_eq!(g.file_name(), Some(".git"));
        assert!(WinPath::parse("C:\\").unwrap().parent().is_none());
    }
}
