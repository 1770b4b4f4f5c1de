//! Policy + layout + host context -> Seatbelt (SBPL) profile. Pure: no I/O, so the
//! same profile is produced, printed and snapshot-tested on any host.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use workfence_policy::layout::{FileKind, FsLayout, Protection, RootKind};
use workfence_policy::{Mode, Network, Policy};

use crate::{MacContext, MacError};

/// The only `sandbox-exec` workfence runs: by absolute path, never through `PATH`.
pub const SANDBOX_EXEC: &str = "/usr/bin/sandbox-exec";

/// The policy-independent part of every profile (see the file for the why of each rule).
pub const BASE_PROFILE: &str = include_str!("base.sbpl");

/// A compiled Seatbelt profile: the SBPL text and the `-D NAME=value` parameters it
/// refers to. `Display` prints both, exactly as `sandbox-exec` receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatbeltProfile {
    text: String,
    params: Vec<(String, String)>,
    tmp_dir: PathBuf,
    remove_tmp_after_run: bool,
}

impl SeatbeltProfile {
    /// The SBPL text passed with `-p`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parameters passed with `-D NAME=value`, in order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The value of one parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The private temp dir (canonical), which the command gets as `TMPDIR`.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// Whether `run` deletes the private temp dir after the command.
    pub fn removes_tmp_after_run(&self) -> bool {
        self.remove_tmp_after_run
    }

    /// The arguments of `sandbox-exec` before the command: `-p TEXT -D NAME=value ...`.
    pub fn sandbox_exec_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), self.text.clone()];
        for (name, value) in &self.params {
            args.push("-D".to_string());
            args.push(format!("{name}={value}"));
        }
        args
    }
}

impl fmt::Display for SeatbeltProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, ";; workfence Seatbelt profile, run as:")?;
        writeln!(f, ";;   {SANDBOX_EXEC} -p '<this profile>' \\")?;
        for (name, value) in &self.params {
            writeln!(
                f,
                ";;     -D {} \\",
                shell_quote(&format!("{name}={value}"))
            )?;
        }
        // The shim with the first marker fd (3); a request that keeps fd 3 gets 4, ...
        writeln!(
            f,
            ";;     /bin/sh -c {} COMMAND...",
            shell_quote(&crate::launch::shim(3))
        )?;
        writeln!(f, ";; The command gets TMPDIR={}/", self.tmp_dir.display())?;
        writeln!(f)?;
        f.write_str(&self.text)
    }
}

/// Compiles `policy` on the host described by `layout` and `ctx` into a profile.
///
/// `layout` is `workfence_policy::layout::compute`'s result for this policy; its
/// paths are canonical. Paths under `/tmp`, `/var` and `/etc` are rewritten to
/// their real `/private/...` form, which is what Seatbelt matches.
pub fn profile(
    policy: &Policy,
    layout: &FsLayout,
    ctx: &MacContext,
) -> Result<SeatbeltProfile, MacError> {
    if policy.mode == Mode::FullAccess {
        return Err(MacError::FullAccess);
    }
    let mut b = Builder::default();
    b.text.push_str(BASE_PROFILE);
    if !b.text.ends_with('\n') {
        b.text.push('\n');
    }
    let _ = write!(
        b.text,
        "\n;;; ================================================================\n\
         ;;; Generated for this policy: mode {}, network {}.\n\
         ;;; Paths are parameters (-D); each deny also has a case-insensitive regex,\n\
         ;;; because APFS is case-insensitive by default (.GIT names .git).\n\
         ;;; ================================================================\n",
        policy.mode,
        policy.network.name()
    );

    let tmp = real_path(&ctx.tmp_dir)?;
    let tmp_param = b.param("TMPDIR", &tmp);

    // Hidden paths: the policy's secrets plus the user's keychain files.
    let mut hidden: Vec<Hidden> = Vec::new();
    for h in &layout.hidden {
        hidden.push(Hidden {
            path: real_path(&h.path)?,
            dir: h.kind == FileKind::Dir,
            glob: false,
            why: h.source.to_string(),
        });
    }
    // Every secret pattern as written, too: Seatbelt matches paths, not files, so a
    // pattern that matches nothing now (or a wildcard) also covers what is created
    // there during the run (a login in another terminal).
    for d in &policy.deny_read {
        let path = real_path(&d.path)?;
        if hidden.iter().any(|h| h.path == path) {
            continue;
        }
        hidden.push(Hidden {
            glob: workfence_policy::secrets::is_wildcard(&d.path),
            path,
            dir: true,
            why: format!("{}; guarded by name", d.source),
        });
    }
    let keychains = real_path(&ctx.home.join("Library/Keychains"))?;
    if !hidden.iter().any(|h| h.path == keychains) {
        hidden.push(Hidden {
            path: keychains,
            dir: true,
            glob: false,
            why: "macOS: keychain files, crackable offline".into(),
        });
    }
    let mut hidden_filters = Vec::new();
    for (i, h) in hidden.iter().enumerate() {
        if h.glob {
            // No parameter: a wildcard is a regex over the names in one directory.
            hidden_filters.push(Filter {
                comment: format!("{} ({})", h.path, h.why),
                exprs: vec![glob_regex_filter(&h.path)],
            });
            continue;
        }
        let name = b.param(&format!("HIDDEN_{i}"), &h.path);
        let (kind, tail) = if h.dir {
            ("subpath", Tail::Subtree)
        } else {
            ("literal", Tail::Exact)
        };
        hidden_filters.push(Filter {
            comment: format!("{} ({})", h.path, h.why),
            exprs: vec![
                format!("({kind} (param \"{name}\"))"),
                regex_filter(&h.path, tail),
            ],
        });
    }

    b.section("reads");
    b.line(";; Reads everywhere (the sandbox confines changes, not inspection), except the");
    b.line(";; hidden paths. Mapping code (dylibs) and existence tests follow reads.");
    b.allow_except(
        "file-read* file-test-existence file-map-executable",
        None,
        &hidden_filters,
    );

    b.section("writes");
    b.line(";; The private temp dir (TMPDIR): per-run scratch space that no host process");
    b.line(";; shares. Hard links and clones are writes too, so they get the same scope.");
    let _ = writeln!(
        b.text,
        "(allow file-write* file-link file-clone\n  (subpath (param \"{tmp_param}\")))"
    );
    b.line(";; Unix-domain sockets between the command's own processes, by path, only in");
    b.line(";; the private temp dir (never a host daemon's socket).");
    let _ = writeln!(
        b.text,
        "(allow network-bind (local unix-socket (subpath (param \"{tmp_param}\"))))\n\
         (allow network-outbound (remote unix-socket (subpath (param \"{tmp_param}\"))))"
    );

    if layout.writable.is_empty() {
        b.line(";; No writable roots: nothing else may be changed.");
    } else {
        let mut roots = Vec::new();
        let mut root_paths = Vec::new();
        for (i, w) in layout.writable.iter().enumerate() {
            let p = real_path(&w.path)?;
            let name = b.param(&format!("WRITABLE_ROOT_{i}"), &p);
            roots.push(Filter {
                comment: format!("{p} ({}; {})", root_kind(&w.kind), w.source),
                exprs: vec![format!("(subpath (param \"{name}\"))")],
            });
            root_paths.push(p);
        }
        let mut except = Vec::new();
        let mut pinned: Vec<String> = Vec::new();
        for (i, pp) in layout.protected.iter().enumerate() {
            let p = real_path(&pp.path)?;
            let state = if pp.exists.is_some() {
                "present"
            } else {
                "missing: must not be created"
            };
            match pp.protection {
                Protection::ReadOnly => {
                    let name = b.param(&format!("PROTECTED_{i}"), &p);
                    except.push(Filter {
                        comment: format!("read-only, {state}: {p} ({})", pp.reason),
                        exprs: vec![
                            format!("(subpath (param \"{name}\"))"),
                            regex_filter(&p, Tail::Subtree),
                        ],
                    });
                }
                Protection::Pinned => {
                    let name = b.param(&format!("PROTECTED_{i}"), &p);
                    except.push(Filter {
                        comment: format!(
                            "pinned (writable inside, the object itself cannot be renamed, replaced or deleted), {state}: {p} ({})",
                            pp.reason
                        ),
                        exprs: vec![
                            format!("(literal (param \"{name}\"))"),
                            regex_filter(&p, Tail::Exact),
                        ],
                    });
                    pinned.push(p.clone());
                }
            }
        }
        // Renaming any directory between a root and a protected path (or the root
        // itself) would carry the protected object to an unprotected name.
        // The same for hidden paths inside a root: renaming their parent would give
        // the secret a readable name.
        let mut ancestors: Vec<String> = root_paths.clone();
        let mut guarded: Vec<PathBuf> = Vec::new();
        for pp in &layout.protected {
            guarded.push(PathBuf::from(real_path(&pp.path)?));
        }
        guarded.extend(hidden.iter().map(|h| PathBuf::from(&h.path)));
        for p in &guarded {
            for a in p.ancestors().skip(1) {
                let a = a.to_string_lossy().into_owned();
                if !root_paths.iter().any(|r| is_within(&a, r)) {
                    break;
                }
                ancestors.push(a);
            }
        }
        ancestors.sort();
        ancestors.dedup();
        ancestors.retain(|a| !pinned.contains(a));
        for (i, a) in ancestors.iter().enumerate() {
            let name = b.param(&format!("PINNED_PARENT_{i}"), a);
            except.push(Filter {
                comment: format!(
                    "pinned parent: {a} (renaming it would move what it protects or hides)"
                ),
                exprs: vec![
                    format!("(literal (param \"{name}\"))"),
                    regex_filter(a, Tail::Exact),
                ],
            });
        }
        for (h, f) in hidden.iter().zip(&hidden_filters) {
            if root_paths.iter().any(|r| is_within(&h.path, r)) {
                except.push(Filter {
                    comment: format!("hidden: {}", f.comment),
                    exprs: f.exprs.clone(),
                });
            }
        }
        b.line(";; Writable roots, minus the protected paths, the parents that pin them and the");
        b.line(";; hidden paths inside them. Protected paths that do not exist yet are matched");
        b.line(";; by name, so creating them (mkdir .codex, ln -s x .git) is refused too.");
        b.allow_except("file-write* file-link file-clone", Some(&roots), &except);
    }

    b.section("network");
    match &policy.network {
        Network::Off => {
            b.line(";; Network off: no network rule, so (deny default) refuses every TCP/UDP");
            b.line(";; socket, DNS lookup and host daemon socket.");
        }
        Network::Proxy(_) => {
            let port = ctx.proxy_port.ok_or(MacError::NoProxyPort)?;
            b.line(";; Network through workfence's proxy only: TCP to the loopback proxy port.");
            b.line(";; No DNS: the proxy resolves names, so lookups cannot carry data out.");
            b.line("(allow system-socket (socket-domain AF_INET) (socket-domain AF_INET6))");
            let _ = writeln!(
                b.text,
                "(allow network-outbound (remote ip \"localhost:{port}\"))"
            );
            b.line(";; TLS certificate evaluation for Security.framework clients (trust only,");
            b.line(";; not the keychain's secrets).");
            b.line("(allow mach-lookup (global-name \"com.apple.trustd.agent\"))");
        }
        Network::On => {
            b.line(
                ";; Network on: outbound TCP/UDP to anywhere, listening for dev servers, and DNS",
            );
            b.line(";; through mDNSResponder. Host daemons' unix sockets stay closed.");
            b.line("(allow system-socket)");
            b.line("(allow network-outbound (remote ip \"*:*\"))");
            b.line("(allow network-bind (local ip \"*:*\"))");
            b.line("(allow network-inbound (local ip \"*:*\"))");
            b.line("(allow network-outbound (literal \"/private/var/run/mDNSResponder\"))");
            b.line("(allow mach-lookup");
            b.line("  ;; DNS configuration and resolver.");
            b.line("  (global-name \"com.apple.SystemConfiguration.configd\")");
            b.line("  (global-name \"com.apple.SystemConfiguration.DNSConfiguration\")");
            b.line("  (global-name \"com.apple.dnssd.service\")");
            b.line("  (global-name \"com.apple.networkd\")");
            b.line("  ;; TLS certificate evaluation (trust only, not the keychain's secrets).");
            b.line("  (global-name \"com.apple.trustd.agent\")");
            b.line("  (global-name \"com.apple.ocspd\"))");
            b.line(";; Interface and route tables (getifaddrs, happy eyeballs).");
            b.line("(allow sysctl-read (sysctl-name-prefix \"net.routetable.\"))");
        }
    }

    Ok(SeatbeltProfile {
        text: b.text,
        params: b.params,
        tmp_dir: PathBuf::from(tmp),
        remove_tmp_after_run: ctx.remove_tmp_after_run,
    })
}

fn root_kind(k: &RootKind) -> &'static str {
    match k {
        RootKind::Workspace => "workspace",
        RootKind::Extra => "extra root",
        RootKind::GitDir => "git directory outside the workspace",
    }
}

struct Hidden {
    path: String,
    dir: bool,
    /// The last component holds `*` wildcards.
    glob: bool,
    why: String,
}

/// One commented group of SBPL filters.
struct Filter {
    comment: String,
    exprs: Vec<String>,
}

#[derive(Default)]
struct Builder {
    text: String,
    params: Vec<(String, String)>,
}

impl Builder {
    fn param(&mut self, name: &str, value: &str) -> String {
        self.params.push((name.to_string(), value.to_string()));
        name.to_string()
    }

    fn section(&mut self, title: &str) {
        let dashes = "-".repeat(64usize.saturating_sub(title.len()));
        let _ = write!(self.text, "\n;;; {dashes} {title}\n\n");
    }

    fn line(&mut self, l: &str) {
        self.text.push_str(l);
        self.text.push('\n');
    }

    /// `(allow OPS (require-all (require-any ROOTS) (require-not (require-any EXCEPT))))`,
    /// simplified when a part is empty. Exceptions as `require-not` make the rule's
    /// meaning independent of its position in the profile.
    fn allow_except(&mut self, ops: &str, roots: Option<&[Filter]>, except: &[Filter]) {
        let mut out = format!("(allow {ops}");
        let write_group = |out: &mut String, indent: &str, fs: &[Filter]| {
            for f in fs {
                let _ = write!(out, "\n{indent};; {}", f.comment);
                for e in &f.exprs {
                    let _ = write!(out, "\n{indent}{e}");
                }
            }
        };
        match (roots, except.is_empty()) {
            (None, true) => {}
            (None, false) => {
                out.push_str("\n  (require-not\n    (require-any");
                write_group(&mut out, "      ", except);
                out.push_str(")))");
                self.line(&out);
                return;
            }
            (Some(r), true) => {
                out.push_str("\n  (require-any");
                write_group(&mut out, "    ", r);
                out.push(')');
            }
            (Some(r), false) => {
                out.push_str("\n  (require-all\n    (require-any");
                write_group(&mut out, "      ", r);
                out.push_str(")\n    (require-not\n      (require-any");
                write_group(&mut out, "        ", except);
                out.push_str("))))");
                self.line(&out);
                return;
            }
        }
        out.push(')');
        self.line(&out);
    }
}

#[derive(Clone, Copy)]
enum Tail {
    /// The path itself.
    Exact,
    /// The path and everything below it.
    Subtree,
}

/// `(regex "^...$")` matching `path` in any letter case.
fn regex_filter(path: &str, tail: Tail) -> String {
    let mut re = String::from("^");
    re.push_str(&case_insensitive_regex(path));
    re.push_str(match tail {
        Tail::Exact => "$",
        Tail::Subtree => "(/.*)?$",
    });
    format!("(regex {})", sbpl_string(&re))
}

/// `(regex "^...$")` for a path whose last component holds `*` (any run of
/// characters but `/`), in any letter case, with everything below a match.
fn glob_regex_filter(path: &str) -> String {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let mut re = String::from("^");
    re.push_str(&case_insensitive_regex(parent));
    re.push('/');
    let parts: Vec<String> = name.split('*').map(case_insensitive_regex).collect();
    re.push_str(&parts.join("[^/]*"));
    re.push_str("(/.*)?$");
    format!("(regex {})", sbpl_string(&re))
}

/// Latin letters with one diacritic, for both spellings APFS treats as the same
/// name: precomposed (NFC, `é`) and decomposed (NFD, `e` + U+0301).
const COMPOSED: &str = "ÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝàáâãäåçèéêëìíîïñòóôõöùúûüýÿ";
const BASES: &str = "AAAAAACEEEEIIIINOOOOOUUUUYaaaaaaceeeeiiiinooooouuuuyy";
const MARKS: [char; 53] = [
    '\u{300}', '\u{301}', '\u{302}', '\u{303}', '\u{308}', '\u{30a}', '\u{327}', '\u{300}',
    '\u{301}', '\u{302}', '\u{308}', '\u{300}', '\u{301}', '\u{302}', '\u{308}', '\u{303}',
    '\u{300}', '\u{301}', '\u{302}', '\u{303}', '\u{308}', '\u{300}', '\u{301}', '\u{302}',
    '\u{308}', '\u{301}', '\u{300}', '\u{301}', '\u{302}', '\u{303}', '\u{308}', '\u{30a}',
    '\u{327}', '\u{300}', '\u{301}', '\u{302}', '\u{308}', '\u{300}', '\u{301}', '\u{302}',
    '\u{308}', '\u{303}', '\u{300}', '\u{301}', '\u{302}', '\u{303}', '\u{308}', '\u{300}',
    '\u{301}', '\u{302}', '\u{308}', '\u{301}', '\u{308}',
];

/// The decomposition of a precomposed letter, if it is in the table.
fn decompose(c: char) -> Option<(char, char)> {
    let i = COMPOSED.chars().position(|x| x == c)?;
    Some((BASES.chars().nth(i)?, MARKS[i]))
}

/// The precomposed letter of `base` + `mark`, if it is in the table.
fn compose(base: char, mark: char) -> Option<char> {
    COMPOSED
        .chars()
        .enumerate()
        .find(|(i, _)| BASES.chars().nth(*i) == Some(base) && MARKS[*i] == mark)
        .map(|(_, c)| c)
}

/// Escapes regex metacharacters and turns each letter into a class of both cases.
/// Seatbelt's regex dialect has no `(?i)` flag, so case-insensitivity is spelt out;
/// accented Latin letters also match their decomposed spelling.
pub(crate) fn case_insensitive_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    let mut chars = s.chars().peekable();
    while let Some(mut c) = chars.next() {
        if let Some(composed) = chars.peek().and_then(|&m| compose(c, m)) {
            chars.next();
            c = composed;
        }
        if c.is_ascii_alphabetic() {
            out.push('[');
            out.push(c.to_ascii_uppercase());
            out.push(c.to_ascii_lowercase());
            out.push(']');
        } else if "\\.^$|()[]{}*+?".contains(c) {
            out.push('\\');
            out.push(c);
        } else if !c.is_ascii() {
            // A group of whole alternatives: a bracket class would split the bytes of
            // a multi-byte UTF-8 character.
            let mut alts: Vec<String> = Vec::new();
            let lower: String = c.to_lowercase().collect();
            let upper: String = c.to_uppercase().collect();
            for v in [c.to_string(), lower, upper] {
                let mut one = v.chars();
                if let (Some(x), None) = (one.next(), one.next()) {
                    if let Some((b, m)) = decompose(x) {
                        alts.push(format!("{b}{m}"));
                    }
                }
                alts.push(v);
            }
            alts.sort();
            alts.dedup();
            if alts.len() == 1 {
                out.push_str(&alts[0]);
            } else {
                let _ = write!(out, "({})", alts.join("|"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An SBPL string literal: `"` and `\` escaped; everything else, including UTF-8,
/// verbatim. Control characters never get here (`real_path` rejects them).
pub(crate) fn sbpl_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The path as Seatbelt sees it: absolute, UTF-8, without control characters, with
/// the `/tmp`, `/var` and `/etc` symlinks replaced by their `/private` targets.
pub(crate) fn real_path(p: &Path) -> Result<String, MacError> {
    let bad = |reason: &str| MacError::BadPath {
        path: p.to_path_buf(),
        reason: reason.to_string(),
    };
    let s = p.to_str().ok_or_else(|| bad("it is not valid UTF-8"))?;
    if !s.starts_with('/') {
        return Err(bad("it is not absolute"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(bad("it contains a control character"));
    }
    let mut s = s.trim_end_matches('/').to_string();
    if s.is_empty() {
        s.push('/');
    }
    for link in ["/tmp", "/var", "/etc"] {
        if s == link || s.starts_with(&format!("{link}/")) {
            s = format!("/private{s}");
            break;
        }
    }
    Ok(s)
}

/// `s` as one POSIX shell word, so that the printed command can be pasted.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./,:@%+=-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn is_within(p: &str, root: &str) -> bool {
    Path::new(p).starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(sbpl_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(case_insensitive_regex("/a.b"), "/[Aa]\\.[Bb]");
        assert_eq!(case_insensitive_regex("é"), "(E\u{301}|e\u{301}|É|é)");
        // A decomposed name gets the same alternatives.
        assert_eq!(
            case_insensitive_regex("e\u{301}"),
            case_insensitive_regex("é")
        );
        assert_eq!(case_insensitive_regex("日"), "日");
        assert_eq!(case_insensitive_regex("1 (x)"), "1 \\([Xx]\\)");
        // A backslash is escaped for the regex, then again for the string.
        assert_eq!(
            regex_filter("/a\\b", Tail::Exact),
            r#"(regex "^/[Aa]\\\\[Bb]$")"#
        );
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("A=/x/y"), "A=/x/y");
        assert_eq!(shell_quote("A=/x y"), "'A=/x y'");
        assert_eq!(shell_quote("A=it's"), "'A=it'\\''s'");
    }

    #[test]
    fn real_paths() {
        let ok = |s: &str| real_path(Path::new(s)).unwrap();
        assert_eq!(ok("/tmp/x"), "/private/tmp/x");
        assert_eq!(ok("/var/folders/a"), "/private/var/folders/a");
        assert_eq!(ok("/etc"), "/private/etc");
        assert_eq!(ok("/private/tmp/x/"), "/private/tmp/x");
        assert_eq!(ok("/tmpfoo"), "/tmpfoo");
        assert!(real_path(Path::new("rel")).is_err());
        assert!(real_path(Path::new("/a\nb")).is_err());
    }
}
