//! The built-in secret table: where tools keep credentials, as data.
//!
//! The table lives in `secrets.toml` (embedded at build time) so that each entry
//! carries the tool and the documentation that says where it stores credentials.
//! [`default_patterns`] is what the policy hides by default on this OS.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

const TABLE: &str = include_str!("secrets.toml");

/// One entry of the secret table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Pattern relative to the home directory (`~/...`); the last component may hold
    /// `*` wildcards.
    pub path: String,
    /// Kind of credential (cloud, packages, browser, agent, ...).
    pub category: String,
    /// The tool that writes it.
    pub tool: String,
    /// The tool's documentation saying where it stores credentials.
    pub source: String,
    /// Only on these OSes (`linux`, `macos`, `windows`); empty: all.
    #[serde(default)]
    pub os: Vec<String>,
}

impl Secret {
    /// Whether the entry applies on `os` (a `std::env::consts::OS` value).
    pub fn applies_to(&self, os: &str) -> bool {
        self.os.is_empty() || self.os.iter().any(|o| o == os)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    secret: Vec<Secret>,
}

fn parse(text: &str) -> Result<Vec<Secret>, String> {
    let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
    for s in &f.secret {
        check_pattern(&s.path)?;
    }
    Ok(f.secret)
}

/// The whole table (every OS).
pub fn table() -> &'static [Secret] {
    static T: OnceLock<Vec<Secret>> = OnceLock::new();
    // The embedded file is fixed at build time and the unit tests parse it, so a
    // failure here is a build defect, not a runtime condition.
    T.get_or_init(|| parse(TABLE).expect("secrets.toml is checked by the unit tests"))
}

/// The entries for `os`.
pub fn for_os(os: &str) -> impl Iterator<Item = &'static Secret> + '_ {
    table().iter().filter(move |s| s.applies_to(os))
}

/// The default hidden patterns on the running OS (`~/...` form).
pub fn default_patterns() -> Vec<&'static str> {
    for_os(std::env::consts::OS)
        .map(|s| s.path.as_str())
        .collect()
}

/// Whether a table pattern is well formed: `~/` then relative components, no `.` or
/// `..`, no empty component, `*` only in the last component.
pub fn check_pattern(p: &str) -> Result<(), String> {
    let rest = p
        .strip_prefix("~/")
        .ok_or_else(|| format!("{p}: must start with ~/"))?;
    let comps: Vec<&str> = rest.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        if c.is_empty() || *c == "." || *c == ".." {
            return Err(format!("{p}: empty, . or .. component"));
        }
        if c.contains('*') && i + 1 != comps.len() {
            return Err(format!("{p}: * is only allowed in the last component"));
        }
        if *c == "*" {
            return Err(format!(
                "{p}: a bare * would hide a whole directory; name it"
            ));
        }
    }
    Ok(())
}

/// Whether `name` matches `pat`, where `*` matches any run of characters.
pub fn glob_match(pat: &str, name: &str) -> bool {
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

/// Whether `path` is matched by the pattern `pat` (an absolute path whose last
/// component may hold `*`): equal, or same parent and a matching last component.
pub fn path_matches(pat: &Path, path: &Path) -> bool {
    if pat == path {
        return true;
    }
    match (pat.file_name(), path.file_name()) {
        (Some(pn), Some(n)) if pn.to_string_lossy().contains('*') => {
            pat.parent() == path.parent() && glob_match(&pn.to_string_lossy(), &n.to_string_lossy())
        }
        _ => false,
    }
}

/// Whether a pattern path holds a wildcard in its last component.
pub fn is_wildcard(pat: &Path) -> bool {
    pat.file_name()
        .is_some_and(|n| n.to_string_lossy().contains('*'))
}

/// The form of `pat` with the symlinks of its existing ancestors resolved (the
/// last component stays literal), through `canonicalize`; `None` when it is the same.
///
/// Sandboxes that grant reads per directory must leave out both the literal and
/// the resolved form: a path reached through a symlinked ancestor is the same file.
pub fn resolved_form(
    pat: &Path,
    canonicalize: impl Fn(&Path) -> Option<PathBuf>,
) -> Option<PathBuf> {
    let name = pat.file_name()?;
    let parent = pat.parent()?;
    // The deepest ancestor that resolves; the missing rest is appended literally.
    let mut missing = Vec::new();
    let mut cur = parent;
    loop {
        if let Some(c) = canonicalize(cur) {
            let mut out = c;
            for m in missing.iter().rev() {
                out.push(m);
            }
            out.push(name);
            return (out != pat).then_some(out);
        }
        missing.push(cur.file_name()?);
        cur = cur.parent()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_table_parses_and_every_entry_is_sourced() {
        let t = parse(TABLE).unwrap();
        assert!(t.len() >= 80, "{} entries", t.len());
        let cats = [
            "cloud",
            "hosting",
            "containers",
            "packages",
            "build",
            "infra",
            "data",
            "database",
            "history",
            "keys",
            "passwords",
            "browser",
            "forge",
            "agent",
            "workfence",
        ];
        let mut seen = BTreeSet::new();
        for s in &t {
            assert!(
                s.source.starts_with("https://") && s.source.len() > 12,
                "{}: source {:?}",
                s.path,
                s.source
            );
            assert!(!s.tool.trim().is_empty(), "{}: no tool", s.path);
            assert!(
                cats.contains(&s.category.as_str()),
                "{}: category {}",
                s.path,
                s.category
            );
            for o in &s.os {
                assert!(
                    ["linux", "macos", "windows"].contains(&o.as_str()),
                    "{}: os {o}",
                    s.path
                );
            }
            // The same path twice is a duplicate even on different OSes.
            assert!(seen.insert(s.path.clone()), "duplicate entry {}", s.path);
        }
    }

    #[test]
    fn the_old_built_in_list_is_still_covered() {
        for d in crate::defaults::DENY_READ {
            assert!(
                table().iter().any(|s| s.path == *d && s.os.is_empty()),
                "{d} is in DENY_READ but not in secrets.toml for every OS"
            );
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(check_pattern("~/.aws").is_ok());
        assert!(check_pattern("~/.cargo/credentials*").is_ok());
        assert!(check_pattern("/etc/x").is_err());
        assert!(check_pattern("~/a*/b").is_err());
        assert!(check_pattern("~/a/../b").is_err());
        assert!(check_pattern("~/a//b").is_err());
        assert!(check_pattern("~/.config/*").is_err());
        assert!(parse("[[secret]]\npath=\"~/x\"\ncategory=\"cloud\"\ntool=\"t\"\nsource=\"https://x\"\nextra=1\n").is_err());
    }

    #[test]
    fn per_os_entries() {
        let linux: Vec<_> = for_os("linux").map(|s| s.path.as_str()).collect();
        let mac: Vec<_> = for_os("macos").map(|s| s.path.as_str()).collect();
        assert!(linux.contains(&"~/.mozilla") && !mac.contains(&"~/.mozilla"));
        assert!(mac.contains(&"~/Library/Cookies") && !linux.contains(&"~/Library/Cookies"));
        assert!(linux.contains(&"~/.aws") && mac.contains(&"~/.aws"));
    }

    #[test]
    fn matching() {
        assert!(glob_match("credentials*", "credentials.toml"));
        assert!(glob_match("*.pem", "a.pem"));
        assert!(!glob_match("a*b", "ac"));
        let p = Path::new("/h/.cargo/credentials*");
        assert!(path_matches(p, Path::new("/h/.cargo/credentials")));
        assert!(path_matches(p, Path::new("/h/.cargo/credentials.toml")));
        assert!(!path_matches(p, Path::new("/h/.cargo/config.toml")));
        assert!(!path_matches(p, Path::new("/h/x/credentials")));
        assert!(path_matches(Path::new("/h/.aws"), Path::new("/h/.aws")));
        assert!(!path_matches(Path::new("/h/.aws"), Path::new("/h/.aws2")));
    }

    #[test]
    fn resolved_forms() {
        // /h/.config -> /data/config; /h/.config/gh is missing.
        let canon = |p: &Path| -> Option<PathBuf> {
            match p.to_str()? {
                "/" => Some("/".into()),
                "/h" => Some("/h".into()),
                "/h/.config" => Some("/data/config".into()),
                _ => None,
            }
        };
        assert_eq!(
            resolved_form(Path::new("/h/.config/gh/hosts.yml"), canon),
            Some(PathBuf::from("/data/config/gh/hosts.yml"))
        );
        assert_eq!(resolved_form(Path::new("/h/.aws"), canon), None);
        assert_eq!(resolved_form(Path::new("/h/.nope/x"), canon), None);
    }
}
