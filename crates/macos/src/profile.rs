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
    /// (allowed, denied) paths of this run's owner probe, see [`Self::owner_probes`].
    owner_probes: (PathBuf, PathBuf),
    /// The user's home directory (for the read-only toolchain caches in the
    /// command's environment).
    home: PathBuf,
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

    /// The user's home directory the profile was made for.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Whether `run` deletes the private temp dir after the command.
    pub fn removes_tmp_after_run(&self) -> bool {
        self.remove_tmp_after_run
    }

    /// Two paths of the same shape in the private temp dir: this run's processes
    /// may create the first but not the second, and no other sandbox names the
    /// second (its name is random per run), so `sandbox_check` on both tells this
    /// run's processes from everything else (Homebrew's, bazel's, another agent's
    /// sandbox, which may allow the whole per-user temp dir, and unsandboxed ones).
    pub fn owner_probes(&self) -> (&Path, &Path) {
        (&self.owner_probes.0, &self.owner_probes.1)
    }

    /// The same profile with every handed-over terminal slot set to `tty` (the pty
    /// slave that `run` makes for `--pty`, which then replaces workfence's own
    /// terminal). Refused for a path that [`profile`] would refuse.
    pub fn with_handed_tty(mut self, tty: &Path) -> Result<Self, MacError> {
        let t = real_path(tty)?;
        for (name, value) in &mut self.params {
            if name.starts_with(HANDED_TTY) {
                value.clone_from(&t);
            }
        }
        Ok(self)
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
        let mut head = String::new();
        comment_line(&mut head, "", "workfence Seatbelt profile, run as:");
        comment_line(
            &mut head,
            "",
            &format!("  {SANDBOX_EXEC} -p '<this profile>' \\"),
        );
        for (name, value) in &self.params {
            comment_line(
                &mut head,
                "",
                &format!("    -D {} \\", shell_quote(&format!("{name}={value}"))),
            );
        }
        // The shim with the first free marker fd (3 when workfence holds no other).
        comment_line(
            &mut head,
            "",
            &format!(
                "    /bin/sh -c {} COMMAND...",
                shell_quote(&crate::launch::shim(3))
            ),
        );
        comment_line(
            &mut head,
            "",
            &format!("The command gets TMPDIR={}/", self.tmp_dir.display()),
        );
        f.write_str(&head)?;
        writeln!(f)?;
        f.write_str(&self.text)
    }
}

/// Secrets macOS keeps in its own places, hidden on top of the policy's list
/// (relative to the home directory): desktop agent apps' configuration (MCP
/// servers with their tokens), browser data the policy's list does not name,
/// and Terminal's per-session shell histories.
pub const MACOS_SECRETS: &[(&str, &str)] = &[
    (
        "Library/Application Support/Claude",
        "Claude desktop app (MCP server config and tokens)",
    ),
    (
        "Library/Application Support/com.openai.chat",
        "ChatGPT desktop app",
    ),
    ("Library/Application Support/Arc", "Arc browser profiles"),
    ("Library/Safari", "Safari history, cookies and passwords"),
    (".zsh_sessions", "Terminal's per-session zsh histories"),
];

/// The firmlink spelling of the Data volume: `/Users/x` is also
/// `/System/Volumes/Data/Users/x`. Every deny regex also matches it.
const DATA_VOLUME: &str = "/System/Volumes/Data";

/// Compiles `policy` on the host described by `layout` and `ctx` into a profile.
///
/// `layout` is `workfence_policy::layout::compute`'s result for this policy; its
/// paths are canonical. Paths under `/tmp`, `/var` and `/etc` are rewritten to
/// their real `/private/...` form, which is what Seatbelt matches.
///
/// Every string that comes from outside (paths, reasons, where a setting came
/// from) reaches the text through exactly one of [`sbpl_string`] (string literals,
/// which also carry every regex) or [`comment_line`] (comments); paths are passed
/// as `-D` parameters wherever SBPL accepts one.
pub fn profile(
    policy: &Policy,
    layout: &FsLayout,
    ctx: &MacContext,
) -> Result<SeatbeltProfile, MacError> {
    if policy.mode == Mode::FullAccess {
        return Err(MacError::FullAccess);
    }
    // The workspace is checked in every mode (read-only has no writable root that
    // would check it), so that no mode accepts a name the others refuse.
    real_path(&policy.workspace)?;
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
         ;;; because APFS is case-insensitive by default (.GIT names .git), which\n\
         ;;; also matches the Data-volume spelling ({DATA_VOLUME}/...).\n\
         ;;; ================================================================\n",
        policy.mode,
        policy.network.name()
    );

    let tmp = real_path(&ctx.tmp_dir)?;
    let tmp_param = b.param("TMPDIR", &tmp);
    let probe_token = probe_token(&ctx.probe_token)?;
    let (probe_allowed, probe_denied) = owner_probes(&tmp, &probe_token);
    let probe_param = b.param("OWNER_PROBE", &probe_denied);

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
    let mut macos_only = vec![(
        real_path(&ctx.home.join("Library/Keychains"))?,
        "macOS: keychain files, crackable offline".to_string(),
    )];
    for (rel, why) in MACOS_SECRETS {
        macos_only.push((real_path(&ctx.home.join(rel))?, format!("macOS: {why}")));
    }
    macos_only.push((
        "/.vol".to_string(),
        "macOS: volfs names every file by volume and inode number, past every path rule".into(),
    ));
    for (path, why) in macos_only {
        if !hidden.iter().any(|h| h.path == path) {
            hidden.push(Hidden {
                path,
                dir: true,
                glob: false,
                why,
            });
        }
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
    b.line(";; hidden paths and the terminals. Mapping code (dylibs) and existence tests");
    b.line(";; follow reads.");
    let mut read_except = hidden_filters.clone();
    read_except.push(Filter {
        comment: "terminals: opening another tab's /dev/ttysNNN for reading would show what is typed there; the terminals section allows the command's own".into(),
        exprs: vec![format!("(regex {})", sbpl_string(TERMINALS))],
    });
    b.allow_except(
        "file-read* file-test-existence file-map-executable",
        None,
        &read_except,
    );

    b.section("terminals");
    b.line(";; The terminals workfence hands over (its own stdin/stdout/stderr, or the pty");
    b.line(";; it made for --pty): the command may reopen them by name. Every other");
    b.line(";; terminal of the user stays closed; ptys the command opens itself are");
    b.line(";; allowed by the base profile (com.apple.sandbox.pty).");
    let mut ttys: Vec<String> = Vec::new();
    for t in &ctx.ttys {
        let t = real_path(t)?;
        if !ttys.contains(&t) {
            ttys.push(t);
        }
    }
    if ttys.is_empty() {
        b.line(";; None now: the slot holds /dev/null until run puts a --pty slave in it.");
        ttys.push("/dev/null".into());
    }
    let mut tty_filters = Vec::new();
    for (i, t) in ttys.iter().enumerate() {
        let name = b.param(&format!("{HANDED_TTY}{i}"), t);
        tty_filters.push(Filter {
            comment: t.clone(),
            exprs: vec![format!("(literal (param \"{name}\"))")],
        });
    }
    b.allow_any("file-read* file-write-data file-ioctl", &tty_filters);
    b.line(";; Every terminal's metadata (stat, as ls and ttyname-style lookups do), not");
    b.line(";; its data.");
    let _ = writeln!(
        b.text,
        "(allow file-read-metadata file-test-existence (regex {}))",
        sbpl_string(TERMINALS)
    );

    b.section("writes");
    b.line(";; The private temp dir (TMPDIR): per-run scratch space that no host process");
    b.line(";; shares. Hard links and clones are writes too, so they get the same scope.");
    b.line(";; One random name in it is refused: the probe that tells this run's processes");
    b.line(";; (which cannot create it) from every other sandbox and from unsandboxed ones.");
    comment_line(
        &mut b.text,
        "",
        &format!("(the allowed twin, never created: {probe_allowed})"),
    );
    let _ = writeln!(
        b.text,
        "(allow file-write* file-link file-clone\n  (require-all\n    (subpath (param \"{tmp_param}\"))\n    (require-not (literal (param \"{probe_param}\")))))"
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
        except.push(Filter {
            comment: "the owner probe, should a root contain the private temp dir".into(),
            exprs: vec![format!("(literal (param \"{probe_param}\"))")],
        });
        except.push(Filter {
            comment: "nested repositories anywhere in the roots: host git reads their config and runs their hooks when it later runs there. A `.git` entry itself cannot be created, renamed or removed (else a prepared directory could be renamed into place), nor anything written to the config, config.worktree, commondir or hooks of any gitdir (a repository's .git, its submodules' and linked worktrees' gitdirs)".into(),
            exprs: nested_git_filters(),
        });
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
            b.line(";; socket, DNS lookup and host daemon socket. Loopback too: Seatbelt cannot");
            b.line(";; tell the command's own listeners from host services, so a test that binds");
            b.line(";; 127.0.0.1 needs network on (or unix sockets in TMPDIR).");
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
            b.line(";; through mDNSResponder. Host daemons' unix sockets stay closed. Host");
            b.line(";; loopback services (a Docker TCP port, a browser's debugging port, Redis)");
            b.line(";; are reachable: this mode does not except them, although Seatbelt could");
            b.line(";; ((require-not (remote ip \"localhost:*\")), docs/macos.md); use network");
            b.line(";; proxy when such services run.");
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
        }
    }

    Ok(SeatbeltProfile {
        text: b.text,
        params: b.params,
        tmp_dir: PathBuf::from(tmp),
        remove_tmp_after_run: ctx.remove_tmp_after_run,
        owner_probes: (PathBuf::from(probe_allowed), PathBuf::from(probe_denied)),
        home: ctx.home.clone(),
    })
}

/// Terminal device nodes (`/dev/ttys001`, `/dev/tty.usbserial`, the old BSD
/// `/dev/ptyp0`): excepted from the global read rule; `/dev/tty` itself, the
/// ptys the command opens and the handed-over terminals are allowed by their own
/// rules.
const TERMINALS: &str = "^/dev/(tty|pty)";

/// The prefix of the parameters that name handed-over terminals.
pub(crate) const HANDED_TTY: &str = "HANDED_TTY_";

/// The probe token as given: 16 to 64 lowercase hex digits (so that it can only
/// be a file name, and is long enough that no other sandbox names it).
fn probe_token(t: &str) -> Result<String, MacError> {
    if (16..=64).contains(&t.len()) && t.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(MacError::Request(format!(
            "the owner probe token must be 16 to 64 hex digits, not {t:?}; use MacContext::detect or MacContext::example"
        )))
    }
}

/// (allowed, denied): two names of the same shape in the private temp dir; only
/// this run's profile denies the second.
fn owner_probes(tmp: &str, token: &str) -> (String, String) {
    let twin: String = token.chars().rev().collect();
    (format!("{tmp}/.wf-{twin}x"), format!("{tmp}/.wf-{token}y"))
}

/// What host git reads from a repository it finds in the roots and that runs code
/// or redirects it: `.git` entries anywhere (a gitfile or a prepared directory
/// cannot be created, renamed or removed), and in every gitdir, in any letter case
/// (srt's `**/.git/config`, `**/.git/hooks/**`, widened):
/// - `config` and `config.worktree` (core.fsmonitor, core.hooksPath, aliases and
///   filters run commands; `config.worktree` is read with extensions.worktreeConfig),
/// - `commondir` (`X/.git/commondir` -> `../evil` makes git read `evil/config`
///   and run `evil/hooks`),
/// - `hooks` and everything in it.
///
/// The gitdirs: `X/.git`, its submodule repositories `X/.git/modules/NAME/` (NAME may
/// hold slashes, and nested submodules are `modules/A/modules/B/`) and linked
/// worktrees `X/.git/worktrees/NAME/` (also under a submodule's gitdir).
///
/// Seatbelt's regexes have no lookahead, so `modules/.+/` cannot tell where a
/// submodule's name ends and its gitdir begins: a branch or tag named `config`,
/// `commondir` or `hooks` inside a submodule's gitdir (`.git/modules/m/refs/heads/config`)
/// is refused as well. That errs towards refusing; docs/macos.md says so.
fn nested_git_filters() -> Vec<String> {
    nested_git_regexes()
        .iter()
        .map(|re| format!("(regex {})", sbpl_string(re)))
        .collect()
}

/// The regexes of [`nested_git_filters`], before SBPL string escaping.
fn nested_git_regexes() -> Vec<String> {
    let ci = case_insensitive_regex;
    let git = ci("/.git");
    let gitdir = format!("{git}/({}/.+/|{}/[^/]+/)?", ci("modules"), ci("worktrees"));
    vec![
        format!("{git}$"),
        format!(
            "{gitdir}({}|{}|{})$",
            ci("config"),
            ci("config.worktree"),
            ci("commondir")
        ),
        format!("{gitdir}{}(/.*)?$", ci("hooks")),
    ]
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
#[derive(Clone)]
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

    /// `(allow OPS FILTERS...)`, each filter group under its comment.
    fn allow_any(&mut self, ops: &str, filters: &[Filter]) {
        let mut out = format!("(allow {ops}");
        for f in filters {
            out.push('\n');
            comment_line(&mut out, "  ", &f.comment);
            out.pop();
            for e in &f.exprs {
                let _ = write!(out, "\n  {e}");
            }
        }
        out.push(')');
        self.line(&out);
    }

    /// `(allow OPS (require-all (require-any ROOTS) (require-not (require-any EXCEPT))))`,
    /// simplified when a part is empty. Exceptions as `require-not` make the rule's
    /// meaning independent of its position in the profile.
    fn allow_except(&mut self, ops: &str, roots: Option<&[Filter]>, except: &[Filter]) {
        let mut out = format!("(allow {ops}");
        let write_group = |out: &mut String, indent: &str, fs: &[Filter]| {
            for f in fs {
                out.push('\n');
                comment_line(out, indent, &f.comment);
                out.pop();
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

/// `^` and the optional Data-volume prefix, then `path` without it: a rule for
/// `/Users/x` also matches `/System/Volumes/Data/Users/x`, in any letter case.
fn anchored_prefix(path: &str) -> (String, &str) {
    let rest = match path.strip_prefix(DATA_VOLUME) {
        Some(r) if r.starts_with('/') => r,
        _ => path,
    };
    (format!("^({})?", case_insensitive_regex(DATA_VOLUME)), rest)
}

/// `(regex "^...$")` matching `path` in any letter case and volume spelling.
fn regex_filter(path: &str, tail: Tail) -> String {
    let (mut re, path) = anchored_prefix(path);
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
    let (mut re, path) = anchored_prefix(path);
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
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

/// LATIN SMALL LETTER LONG S: case folding (and so APFS) maps it to `s`.
const LONG_S: char = '\u{17f}';
/// KELVIN SIGN: case folding (and so APFS) maps it to `k`.
const KELVIN: char = '\u{212a}';

/// The non-ASCII letter that names the same file as ASCII letter `c` on a
/// case-insensitive volume: Unicode's simple case folding maps exactly two
/// characters onto ASCII letters, `ſ` onto `s` and `K` (Kelvin) onto `k`, so
/// `~/.ſſh` is `~/.ssh` and `.git/hooKs` is `.git/hooks`.
fn folded_alias(c: char) -> Option<char> {
    match c.to_ascii_lowercase() {
        's' => Some(LONG_S),
        'k' => Some(KELVIN),
        _ => None,
    }
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
        // The two non-ASCII letters that case folding maps onto ASCII ones: the
        // path is matched as if it were spelt with the ASCII letter.
        c = match c {
            LONG_S => 's',
            KELVIN => 'k',
            c => c,
        };
        if let Some(alias) = folded_alias(c) {
            // A group, not a class: the alias is a multi-byte UTF-8 character.
            let _ = write!(
                out,
                "({}|{}|{alias})",
                c.to_ascii_uppercase(),
                c.to_ascii_lowercase()
            );
        } else if c.is_ascii_alphabetic() {
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
/// verbatim. Control characters never get here (`real_path` rejects them); should
/// one arrive anyway, it becomes U+FFFD, which no real path contains, so the
/// string stays one literal and matches nothing it was not meant to.
///
/// TinyScheme, the reader SBPL is built on, refuses a string literal longer than
/// its 256-byte buffer ("Error reading string"), and the case-insensitive regex of
/// an ordinary path is longer than that. A long string is therefore cut into
/// literals of at most [`MAX_LITERAL`] bytes, never inside an escape or a UTF-8
/// character, and joined by `string-append` (which Apple's own profiles use to
/// build regexes), so that it evaluates to the same string.
pub(crate) fn sbpl_string(s: &str) -> String {
    let mut pieces: Vec<String> = vec![String::new()];
    for c in s.chars() {
        let mut esc = String::new();
        if c == '"' || c == '\\' {
            esc.push('\\');
        }
        esc.push(if breaks_line(c) { '\u{fffd}' } else { c });
        let cur = pieces.last_mut().expect("never empty");
        if !cur.is_empty() && cur.len() + esc.len() > MAX_LITERAL {
            pieces.push(esc);
        } else {
            cur.push_str(&esc);
        }
    }
    let lit = |p: &String| format!("\"{p}\"");
    if pieces.len() == 1 {
        lit(&pieces[0])
    } else {
        let parts: Vec<String> = pieces.iter().map(lit).collect();
        format!("(string-append {})", parts.join(" "))
    }
}

/// The longest string literal [`sbpl_string`] writes, in bytes between the quotes
/// (TinyScheme's reader buffer is 256).
pub(crate) const MAX_LITERAL: usize = 200;

/// Whether `c` could end a comment or confuse a reader: every control character
/// and the Unicode line and paragraph separators.
fn breaks_line(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Appends `indent;; text\n`, with every line-breaking character of `text` shown
/// as an escape (`\n`, `\u{2028}`): the one way outside text enters a comment, so a
/// newline in a reason or a config path cannot end the comment and start a rule.
pub(crate) fn comment_line(out: &mut String, indent: &str, text: &str) {
    out.push_str(indent);
    out.push_str(";; ");
    for c in text.chars() {
        if breaks_line(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\n');
}

/// The path as Seatbelt sees it: absolute, UTF-8, without control characters or
/// Unicode line separators (every character [`sbpl_string`] would replace), with
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
    // sbpl_string would turn these into U+FFFD (they could end a comment or confuse
    // a reader), and a rule for a path that is not the real one protects nothing.
    if s.chars().any(|c| c == '\u{2028}' || c == '\u{2029}') {
        return Err(bad(
            "it contains a Unicode line or paragraph separator (U+2028/U+2029), which a Seatbelt profile cannot carry",
        ));
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
        let data = "(/(S|s|\u{17f})[Yy](S|s|\u{17f})[Tt][Ee][Mm]/[Vv][Oo][Ll][Uu][Mm][Ee](S|s|\u{17f})/[Dd][Aa][Tt][Aa])?";
        assert_eq!(
            regex_filter("/a\\b", Tail::Exact),
            format!(r#"(regex "^{data}/[Aa]\\\\[Bb]$")"#)
        );
        // The Data-volume spelling of a path matches the same rule.
        assert_eq!(
            regex_filter("/System/Volumes/Data/a", Tail::Exact),
            regex_filter("/a", Tail::Exact)
        );
        // Long strings are cut into literals the reader accepts, never inside an
        // escape: the pieces concatenate to the original.
        let long = format!("{}\\\"{}", "a".repeat(199), "é".repeat(150));
        let lit = sbpl_string(&long);
        assert!(lit.starts_with("(string-append \""), "{lit}");
        let inner = &lit["(string-append ".len()..lit.len() - 1];
        let mut joined = String::new();
        for piece in inner.split("\" \"") {
            let piece = piece.trim_matches('"');
            assert!(piece.len() <= MAX_LITERAL, "{}", piece.len());
            assert!(!piece.ends_with('\\') || piece.ends_with("\\\\"), "{piece}");
            joined.push_str(piece);
        }
        assert_eq!(joined, long.replace('\\', "\\\\").replace('"', "\\\""));
        // Never a line break in a string or a comment.
        assert_eq!(sbpl_string("a\nb\u{2028}"), "\"a\u{fffd}b\u{fffd}\"");
        let mut c = String::new();
        comment_line(&mut c, "  ", "x\n(allow default)\r\u{2029};");
        assert_eq!(c, "  ;; x\\n(allow default)\\r\\u{2029};\n");
        assert_eq!(c.lines().count(), 1);
    }

    /// Whether `path` is refused by one of the nested-repository regexes, with
    /// the `regex` crate standing in for Seatbelt's matcher (the constructs used,
    /// classes, groups, alternation, `.+`, `[^/]`, anchors, mean the same in both).
    fn nested_git_denies(path: &str) -> bool {
        nested_git_regexes()
            .iter()
            .any(|re| regex::Regex::new(re).unwrap().is_match(path))
    }

    #[test]
    fn nested_repositories_every_gitdir_file_that_runs_code() {
        let ws = "/Users/dev/proj";
        for rel in [
            ".git",
            "sub/.GIT",
            ".git/config",
            "sub/.git/config",
            "sub/.git/config.worktree",
            "sub/.git/commondir",
            "sub/.git/CommonDir",
            "sub/.git/hooks",
            "sub/.git/hooks/post-checkout",
            ".git/modules/m/config",
            ".git/modules/a/b/commondir",
            ".git/modules/a/modules/b/config.worktree",
            ".git/modules/m/hooks/pre-commit",
            ".git/worktrees/wt/commondir",
            ".git/worktrees/wt/config.worktree",
            ".git/worktrees/wt/config",
            ".git/worktrees/wt/hooks/x",
            ".git/modules/m/worktrees/wt/commondir",
        ] {
            assert!(nested_git_denies(&format!("{ws}/{rel}")), "{rel} allowed");
        }
        // What git writes in ordinary work stays writable.
        for rel in [
            ".git/index",
            ".git/index.lock",
            ".git/HEAD",
            ".git/objects/ab/cdef",
            ".git/refs/heads/config",
            ".git/refs/heads/hooks",
            ".git/logs/refs/heads/commondir",
            ".git/worktrees/wt/refs/heads/config",
            ".git/worktrees/wt/index",
            ".git/modules/m/index",
            ".git/config.lock.d",
            ".gitignore",
            "src/config",
            "hooks/x",
            "commondir",
        ] {
            assert!(!nested_git_denies(&format!("{ws}/{rel}")), "{rel} refused");
        }
        // The documented cost of `modules/.+/` (no lookahead in Seatbelt's regexes):
        // a branch named like a gitdir file inside a submodule's gitdir is refused.
        assert!(nested_git_denies(&format!(
            "{ws}/.git/modules/m/refs/heads/config"
        )));
    }

    #[test]
    fn case_folding_onto_ascii_long_s_and_kelvin() {
        assert_eq!(case_insensitive_regex("s"), "(S|s|\u{17f})");
        assert_eq!(case_insensitive_regex("K"), "(K|k|\u{212a})");
        // Written with the alias itself, the same alternatives.
        assert_eq!(
            case_insensitive_regex("\u{17f}"),
            case_insensitive_regex("s")
        );
        assert_eq!(
            case_insensitive_regex("\u{212a}"),
            case_insensitive_regex("k")
        );
        let raw = |f: String| {
            // `(regex "...")` -> the regex, unescaped (no long-string pieces here).
            let lit = f
                .strip_prefix("(regex \"")
                .unwrap()
                .strip_suffix("\")")
                .unwrap();
            regex::Regex::new(&lit.replace("\\\\", "\\")).unwrap()
        };
        let ssh = raw(regex_filter("/Users/dev/.ssh", Tail::Subtree));
        for p in [
            "/Users/dev/.ssh/id_rsa",
            "/Users/dev/.\u{17f}\u{17f}h/id_rsa",
            "/Users/dev/.S\u{17f}H",
            "/System/Volumes/Data/U\u{17f}ers/dev/.ssh",
        ] {
            assert!(ssh.is_match(p), "{p}");
        }
        assert!(!ssh.is_match("/Users/dev/.sh"));
        for p in [
            ".git/hoo\u{212a}s/pre-commit",
            ".git/hooks/x",
            "sub/.git/HOO\u{212a}\u{17f}",
        ] {
            assert!(nested_git_denies(&format!("/w/{p}")), "{p}");
        }
    }

    #[test]
    fn probes() {
        assert!(probe_token("0123456789abcdef").is_ok());
        for bad in [
            "",
            "short",
            "0123456789abcdeg",
            "../../../../etc/x0123456789",
        ] {
            assert!(probe_token(bad).is_err(), "{bad}");
        }
        let (ok, denied) = owner_probes("/t", "0123456789abcdef");
        assert_eq!(ok, "/t/.wf-fedcba9876543210x");
        assert_eq!(denied, "/t/.wf-0123456789abcdefy");
        assert_eq!(ok.len(), denied.len());
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
        for sep in ['\u{2028}', '\u{2029}'] {
            let p = format!("/Users/dev/a{sep}b");
            let err = real_path(Path::new(&p)).unwrap_err().to_string();
            assert!(err.contains("U+2028/U+2029"), "{err}");
        }
        // Everything real_path accepts, sbpl_string keeps verbatim.
        let odd = "/Users/dev/a\"b(c);d\\e\u{200b}\u{feff}é";
        let p = real_path(Path::new(odd)).unwrap();
        assert!(!sbpl_string(&p).contains('\u{fffd}'), "{p}");
        assert!(
            real_path(Path::new("/a\u{85}b")).is_err(),
            "NEL is a control"
        );
    }
}
