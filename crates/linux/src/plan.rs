//! The Linux plan: pure data computed from a policy, its filesystem layout and the
//! host's facts. The apply layer executes it step by step; `explain` prints it; the
//! snapshot tests pin it. Nothing here touches the OS.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use workfence_policy::layout::{FileKind, FsLayout, Protection};
use workfence_policy::secrets;
use workfence_policy::{Enforcement, LayerStatus, Network, Policy};

/// What the host offers, gathered by `probe` (or written by hand in tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Real uid and gid of the caller.
    pub uid: u32,
    /// Real gid of the caller.
    pub gid: u32,
    /// The best Landlock ABI the kernel offers (0: none).
    pub landlock_abi: u32,
    /// Listening pathname unix sockets of the host (from `/proc/net/unix`).
    pub unix_sockets: Vec<PathBuf>,
    /// Directories of host daemons' sockets to mask (`/run`, `/var/run` when it is a
    /// real directory, `$XDG_RUNTIME_DIR`).
    pub run_dirs: Vec<PathBuf>,
    /// The real path of `/etc/resolv.conf` when it lives under a masked directory.
    pub resolv_conf: Option<PathBuf>,
    /// Directory listings: the ancestors of every secret pattern (existing or not,
    /// literal and resolved), so that Landlock grants reads per entry around them;
    /// in the degraded plan also the ancestors of every protected path.
    pub listings: BTreeMap<PathBuf, Vec<String>>,
    /// Secret patterns with their existing ancestors' symlinks resolved, where that
    /// differs from the literal pattern (`~/.config` -> `/data/config` gives
    /// `/data/config/gh`): the same file is reachable under both names.
    pub resolved_secrets: Vec<PathBuf>,
    /// A cgroup directory (v2 or v1 `pids`) where workfence may create a child group.
    pub pids_cgroup: Option<PathBuf>,
    /// A cgroup directory (v2) where memory and CPU limits can be set.
    pub v2_cgroup: Option<PathBuf>,
    /// Private temp dir on the host, used only in degraded mode (no mount namespace).
    pub degraded_tmp: PathBuf,
    /// `/proc` is not the procfs of workfence's pid namespace (a container showing
    /// the host's): the broker cannot find its callers there. Only matters in
    /// degraded mode; with namespaces the sandbox mounts its own.
    pub foreign_procfs: bool,
    /// `kernel.pid_max` is per pid namespace (Linux 6.14): the sandbox's own caps
    /// its number of tasks without a cgroup.
    #[serde(default)]
    pub pid_max_per_pidns: bool,
    /// The smallest `kernel.pid_max` this kernel accepts: `max(RESERVED_PIDS + 1,
    /// 8 per possible CPU)` (0: unknown, taken as [`PID_MAX_MIN`]).
    #[serde(default)]
    pub pid_max_min: u32,
    /// workfence runs as the real root (uid 0 of the initial user namespace), which
    /// RLIMIT_NPROC does not bind.
    #[serde(default)]
    pub nproc_exempt: bool,
}

/// The smallest `kernel.pid_max` any kernel accepts (`RESERVED_PIDS + 1`).
pub const PID_MAX_MIN: u32 = 301;

/// The largest `kernel.pid_max` (`PID_MAX_LIMIT` on 64-bit kernels).
pub const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// What pid_max adds to the cap: once the pids wrap, a pid namespace allocates only
/// from `RESERVED_PIDS` (300) up, and workfence's own tasks (the supervisor, the
/// broker and its up to 64 threads) count too.
pub const PID_MAX_HEADROOM: u32 = 300 + 70;

/// How the sandbox is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// user, mount, pid, net, ipc, uts and cgroup namespaces, plus Landlock and seccomp.
    Namespaces,
    /// Landlock and seccomp only (user namespaces unavailable, `--allow-degraded`).
    Degraded,
}

/// One step of building the sandbox's filesystem view. Paths are as seen inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum MountStep {
    /// Recursive bind of the host root, read-only, nosuid, nodev.
    RootReadOnly,
    /// A fresh tmpfs.
    Tmpfs {
        /// Target.
        path: PathBuf,
        /// Size limit in bytes.
        size: u64,
        /// Mode of the root directory.
        mode: u32,
        /// Mounted read-only (a mask).
        read_only: bool,
        /// Why.
        why: String,
    },
    /// A minimal `/dev`: null, zero, full, random, urandom, tty, a private devpts and `/dev/shm`.
    Dev {
        /// Size of `/dev/shm`.
        shm_size: u64,
    },
    /// A fresh procfs for the sandbox's pid namespace; kernel knobs read-only.
    Proc,
    /// A writable bind of a host directory (recursive).
    BindWritable {
        /// Path.
        path: PathBuf,
    },
    /// A read-only bind of a path onto itself (recursive).
    BindReadOnly {
        /// Path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A writable bind of a directory onto itself, so it becomes a mount point that
    /// cannot be renamed, replaced or removed.
    Pin {
        /// Path.
        path: PathBuf,
    },
    /// Hide a file: an empty read-only file over it.
    MaskFile {
        /// Path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Hide a directory: an empty read-only tmpfs over it.
    MaskDir {
        /// Path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Re-expose one host file read-only under a masked directory.
    Expose {
        /// Path.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Landlock filesystem access rights (named, so the plan stays pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum LlAccess {
    Execute,
    WriteFile,
    ReadFile,
    ReadDir,
    RemoveDir,
    RemoveFile,
    MakeChar,
    MakeDir,
    MakeReg,
    MakeSock,
    MakeFifo,
    MakeBlock,
    MakeSym,
    Refer,
    Truncate,
    IoctlDev,
    ResolveUnix,
}

impl LlAccess {
    /// The ABI that introduced the right.
    pub fn abi(self) -> u32 {
        match self {
            LlAccess::Refer => 2,
            LlAccess::Truncate => 3,
            LlAccess::IoctlDev => 5,
            LlAccess::ResolveUnix => 9,
            _ => 1,
        }
    }
}

const READ: &[LlAccess] = &[LlAccess::Execute, LlAccess::ReadFile, LlAccess::ReadDir];
const WRITE: &[LlAccess] = &[
    LlAccess::WriteFile,
    LlAccess::RemoveDir,
    LlAccess::RemoveFile,
    LlAccess::MakeDir,
    LlAccess::MakeReg,
    LlAccess::MakeSock,
    LlAccess::MakeFifo,
    LlAccess::MakeSym,
    LlAccess::Refer,
    LlAccess::Truncate,
    LlAccess::ResolveUnix,
];

/// One Landlock rule: rights beneath a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockRule {
    /// Path (as seen inside).
    pub path: PathBuf,
    /// Rights.
    pub access: Vec<LlAccess>,
}

/// The Landlock layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPlan {
    /// ABI the plan targets (the kernel's best).
    pub abi: u32,
    /// Handled (restricted) filesystem rights.
    pub handled: Vec<LlAccess>,
    /// Rules.
    pub rules: Vec<LandlockRule>,
    /// Restrict TCP bind and connect entirely (ABI 4; degraded mode with network off).
    pub deny_tcp: bool,
    /// Scope abstract unix sockets (ABI 6).
    pub scope_abstract_unix: bool,
    /// Scope signals (ABI 6).
    pub scope_signal: bool,
}

/// A comparison of one syscall argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgCond {
    /// Argument index.
    pub index: u8,
    /// Compare only the low 32 bits (the kernel ignores the high bits of `int` args).
    pub low32: bool,
    /// Operation.
    pub op: ArgOp,
    /// Value.
    pub value: u64,
}

/// Comparison operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArgOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

/// One seccomp rule: the syscall fails with `errno` when all conditions hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompRule {
    /// Syscall name (x86_64 / aarch64 names).
    pub syscall: String,
    /// Conditions (all must hold; none: always).
    pub args: Vec<ArgCond>,
    /// errno returned.
    pub errno: String,
    /// Why.
    pub why: String,
}

/// The seccomp layer: a deny list over an allow-by-default filter, plus an
/// architecture check (non-native ABIs are killed) and an x32 guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompPlan {
    /// Rules.
    pub rules: Vec<SeccompRule>,
    /// connect/sendto/sendmsg go to the supervisor (seccomp user notification), which
    /// lets unix-socket connections reach only sockets under `unix_allow` (Landlock
    /// controls unix connects only from ABI 9; a host daemon may create a socket
    /// anywhere after the sandbox started).
    pub notify_unix: bool,
    /// Where sockets may be connected to: the writable roots, /tmp and /dev/shm.
    pub unix_allow: Vec<PathBuf>,
    /// Every write-intent `open`/`openat`/`creat`, and every `mkdir`, `mknod`,
    /// `symlink`, `link`, `rename` and `truncate`, goes to the broker, which performs
    /// it on the caller's behalf (same uid, same Landlock domain, no capabilities)
    /// after resolving the real path, and refuses what the guard names.
    pub write_guard: crate::guard::WriteGuard,
    /// Whether the broker runs at all (not in degraded mode without a procfs of our
    /// own pid namespace; then `gaps` says what is lost).
    pub brokered: bool,
}

/// Cgroup limits (applied when the host lets workfence create a cgroup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlan {
    /// Parent directory.
    pub parent: PathBuf,
    /// pids.max
    pub pids_max: Option<u32>,
    /// memory.max (v2)
    pub memory_max: Option<u64>,
    /// cpu.max quota in percent of one CPU (v2)
    pub cpu_percent: Option<u32>,
}

/// The complete Linux plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxPlan {
    /// Isolation mode.
    pub isolation: Isolation,
    /// Namespaces created.
    pub namespaces: Vec<String>,
    /// uid inside (mapped to the same uid outside).
    pub uid: u32,
    /// gid inside.
    pub gid: u32,
    /// Mount steps, in order.
    pub mounts: Vec<MountStep>,
    /// Landlock.
    pub landlock: Option<LandlockPlan>,
    /// seccomp.
    pub seccomp: SeccompPlan,
    /// RLIMIT_NPROC inside the user namespace (per-namespace accounting).
    pub nproc: u64,
    /// `kernel.pid_max` of the sandbox's pid namespace, written by its init before
    /// anything else runs there.
    pub pid_max: Option<u32>,
    /// cgroup limits.
    pub cgroup: Option<CgroupPlan>,
    /// `TMPDIR` for the command.
    pub tmpdir: PathBuf,
    /// Working directory inside.
    pub cwd: PathBuf,
    /// Whether the network namespace is private.
    pub private_network: bool,
    /// With a network allowlist: how the sandbox reaches workfence's proxy.
    pub proxy: Option<ProxyBridge>,
    /// Layers not (fully) enforced by this plan.
    pub gaps: Vec<LayerStatus>,
}

/// Where the port of workfence's proxy appears inside the sandbox's own network
/// namespace. Fixed: nothing else listens in that namespace, and a fixed value keeps
/// the plan (and `explain`) identical between runs.
pub const PROXY_PORT: u16 = 3128;

/// The network allowlist's path out of the sandbox. The sandbox keeps its private
/// network namespace (loopback only). Its supervisor, before the command starts,
/// creates the listening socket `listen` in that namespace and passes it over an
/// inherited unix socket to workfence outside, whose proxy accepts on it: every
/// connection to the proxy is accepted straight into the proxy, no relay copies bytes,
/// and no port exists on the host. Nothing else leaves the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyBridge {
    /// The proxy's address inside the sandbox (HTTP, CONNECT and SOCKS5 on one port).
    pub listen: std::net::SocketAddr,
    /// Variables set for the command so that clients use the proxy.
    pub env: Vec<(String, String)>,
    /// Transparent mode (proxy-unaware clients), when enabled.
    pub transparent: Option<TransparentPlan>,
}

/// Transparent mode: every destination address is routed to the sandbox's loopback,
/// where listeners on these ports hand connections to the proxy, and DNS is answered
/// by workfence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransparentPlan {
    /// TCP ports with a listener (80, 443 and the ports named in rules).
    pub tcp_ports: Vec<u16>,
    /// Whether a UDP DNS socket on port 53 answers lookups.
    pub dns: bool,
}

/// The most sockets the supervisor passes to workfence in its one message (the
/// proxy listener, the transparent TCP listeners, the DNS socket).
pub const MAX_PROXY_SOCKETS: usize = 16;

/// The TCP ports transparent mode listens on: 80, 443, and every port an allow or
/// allow-local rule names (`host:22`), in any scope or named list, so that one plan
/// serves every command of the policy; the proxy checks each connection against the
/// command's own rules. The proxy's port is left out (its listener holds it; a
/// connection to another address on that port is refused). The rules themselves are
/// validated by the proxy's parser before a run; this reads only their port suffix.
pub fn transparent_ports(net: &workfence_policy::ProxyPolicy) -> Vec<u16> {
    let mut rules: Vec<&String> = net.allow.iter().chain(&net.allow_local).collect();
    for sc in &net.scoped {
        rules.extend(sc.allow.iter().chain(&sc.allow_local));
    }
    let expanded = rules.into_iter().flat_map(|r| match r.strip_prefix('@') {
        Some(name) => net
            .lists
            .get(name)
            .map(|l| l.iter().collect::<Vec<_>>())
            .unwrap_or_default(),
        None => vec![r],
    });
    let mut ports: Vec<u16> = [80, 443]
        .into_iter()
        .chain(expanded.filter_map(|r| rule_port(r)))
        .filter(|p| *p != PROXY_PORT)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The `:PORT` of a rule, if it has one: `host:22`, `[2001:db8::1]:22`, `192.0.2.1:22`;
/// not a bare IPv6 address.
fn rule_port(rule: &str) -> Option<u16> {
    if rule.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let (host, port) = rule.rsplit_once(':')?;
    if host.contains(':') && !host.ends_with(']') {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

/// The variables that point clients at the proxy at `addr`: the common
/// `HTTP(S)_PROXY`/`ALL_PROXY`/`NO_PROXY` in both cases, and the ones of tools that
/// ignore those (npm, yarn, pip, Node's built-in fetch, the JVM).
pub fn proxy_env(addr: std::net::SocketAddr) -> Vec<(String, String)> {
    let http = format!("http://{addr}");
    let socks = format!("socks5h://{addr}");
    let no_proxy = "localhost,127.0.0.1,::1".to_string();
    let host = addr.ip().to_string();
    let port = addr.port();
    let mut v: Vec<(String, String)> = Vec::new();
    for (k, val) in [
        ("HTTP_PROXY", &http),
        ("HTTPS_PROXY", &http),
        ("ALL_PROXY", &socks),
        ("NO_PROXY", &no_proxy),
    ] {
        v.push((k.to_string(), val.clone()));
        v.push((k.to_lowercase(), val.clone()));
    }
    for (k, val) in [
        ("npm_config_proxy", &http),
        ("npm_config_https_proxy", &http),
        ("npm_config_noproxy", &no_proxy),
        ("YARN_HTTP_PROXY", &http),
        ("YARN_HTTPS_PROXY", &http),
        ("PIP_PROXY", &http),
        ("GLOBAL_AGENT_HTTP_PROXY", &http),
        ("GLOBAL_AGENT_NO_PROXY", &no_proxy),
    ] {
        v.push((k.to_string(), val.clone()));
    }
    v.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    v.push((
        "JAVA_TOOL_OPTIONS".into(),
        format!(
            "-Dhttp.proxyHost={host} -Dhttp.proxyPort={port} -Dhttps.proxyHost={host} -Dhttps.proxyPort={port} -Dhttp.nonProxyHosts=localhost|127.0.0.1"
        ),
    ));
    v
}

/// Why a policy cannot be planned on Linux.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A network allowlist needs a private network namespace.
    #[error("network allowlists (--network allow=...) need a private network namespace, which needs user namespaces; this run would have none (degraded mode); enable unprivileged user namespaces, or use --network off or on")]
    ProxyNeedsNamespace,
    /// More rule ports than the transparent mode carries.
    #[error("transparent mode carries at most {} TCP ports, and the network rules name {}: {:?}; name fewer ports in rules, or set transparent = false under [network]", MAX_PROXY_SOCKETS - 2, .0.len(), .0)]
    TooManyTransparentPorts(Vec<u16>),
}

fn gap(layer: &str, state: Enforcement, detail: impl Into<String>) -> LayerStatus {
    LayerStatus {
        layer: layer.to_string(),
        state,
        detail: detail.into(),
    }
}

/// Rights available at `abi` out of `set`.
fn at_abi(set: &[LlAccess], abi: u32) -> Vec<LlAccess> {
    set.iter().copied().filter(|a| a.abi() <= abi).collect()
}

fn union(a: &[LlAccess], b: &[LlAccess]) -> Vec<LlAccess> {
    let mut v: Vec<LlAccess> = a.iter().chain(b).copied().collect();
    v.sort();
    v.dedup();
    v
}

/// Landlock cannot subtract a subtree from a granted one. To exclude paths, grant
/// the siblings along the way instead (needs directory listings from the host).
/// An excluded path's last component may hold `*` (all matching siblings are left
/// out). Where a listing is unknown nothing is granted (fail closed). Anything
/// created later in an expanded directory is not covered by any rule: unreadable.
fn expand(root: &Path, excluded: &[PathBuf], facts: &HostFacts, out: &mut Vec<PathBuf>) {
    // Indexed once: a home with a few hundred entries and a secret table of a
    // hundred-odd patterns would otherwise cost a pattern scan per entry.
    let mut exact: BTreeSet<&Path> = BTreeSet::new();
    let mut globs: BTreeMap<&Path, Vec<String>> = BTreeMap::new();
    let mut ancestors: BTreeSet<&Path> = BTreeSet::new();
    for e in excluded {
        match (e.parent(), e.file_name()) {
            (Some(parent), Some(name)) if secrets::is_wildcard(e) => {
                globs
                    .entry(parent)
                    .or_default()
                    .push(name.to_string_lossy().into_owned());
            }
            _ => {
                exact.insert(e.as_path());
            }
        }
        ancestors.extend(e.ancestors().skip(1));
    }
    let ix = Exclusions {
        exact,
        globs,
        ancestors,
    };
    expand_in(root, &ix, facts, out);
}

struct Exclusions<'a> {
    /// Excluded paths without a wildcard.
    exact: BTreeSet<&'a Path>,
    /// Wildcard patterns of the last component, by parent directory.
    globs: BTreeMap<&'a Path, Vec<String>>,
    /// Every strict ancestor of an excluded path or pattern.
    ancestors: BTreeSet<&'a Path>,
}

impl Exclusions<'_> {
    fn excludes(&self, p: &Path) -> bool {
        if self.exact.contains(p) {
            return true;
        }
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => self.globs.get(parent).is_some_and(|pats| {
                let name = name.to_string_lossy();
                pats.iter().any(|pat| secrets::glob_match(pat, &name))
            }),
            _ => false,
        }
    }
}

fn expand_in(root: &Path, ix: &Exclusions<'_>, facts: &HostFacts, out: &mut Vec<PathBuf>) {
    if ix.excludes(root) {
        return;
    }
    if !ix.ancestors.contains(root) {
        out.push(root.to_path_buf());
        return;
    }
    let Some(children) = facts.listings.get(root) else {
        // Unknown listing: the safe choice is to grant nothing here.
        return;
    };
    for c in children {
        expand_in(&root.join(c), ix, facts, out);
    }
}

fn seccomp_rules(policy: &Policy, isolation: Isolation) -> SeccompPlan {
    let mut rules = Vec::new();
    let mut add = |syscall: &str, args: Vec<ArgCond>, errno: &str, why: &str| {
        rules.push(SeccompRule {
            syscall: syscall.into(),
            args,
            errno: errno.into(),
            why: why.into(),
        })
    };
    for s in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        add(
            s,
            vec![],
            "ENOSYS",
            "io_uring bypasses seccomp argument checks (network, open)",
        );
    }
    add(
        "clone3",
        vec![],
        "ENOSYS",
        "its flags cannot be inspected; libc falls back to clone(2), which is checked",
    );
    for s in ["keyctl", "add_key", "request_key"] {
        add(
            s,
            vec![],
            "EPERM",
            "the kernel keyring is shared with the host user",
        );
    }
    for s in ["bpf", "perf_event_open", "userfaultfd"] {
        add(s, vec![], "EPERM", "kernel attack surface");
    }
    for s in [
        "mount",
        "umount2",
        "pivot_root",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "open_tree",
        "move_mount",
        "mount_setattr",
    ] {
        add(s, vec![], "EPERM", "the filesystem view is fixed");
    }
    const CLONE_NEWUSER: u64 = 0x1000_0000;
    let newuser = || {
        vec![ArgCond {
            index: 0,
            low32: false,
            op: ArgOp::MaskedEq(CLONE_NEWUSER),
            value: CLONE_NEWUSER,
        }]
    };
    add(
        "unshare",
        newuser(),
        "EPERM",
        "a new user namespace would regain capabilities",
    );
    add(
        "clone",
        newuser(),
        "EPERM",
        "a new user namespace would regain capabilities",
    );
    add("setns", vec![], "EPERM", "joining other namespaces");
    for (req, name) in [
        (0x5412u64, "TIOCSTI"),
        (0x541C, "TIOCLINUX"),
        (0x541D, "TIOCCONS"),
    ] {
        add(
            "ioctl",
            vec![ArgCond {
                index: 1,
                low32: true,
                op: ArgOp::Eq,
                value: req,
            }],
            "EPERM",
            &format!("{name}: terminal input injection / console redirection"),
        );
    }
    // Families other than these are not namespaced (vsock, bluetooth) or are
    // rarely needed attack surface.
    let fam = |v: u64| ArgCond {
        index: 0,
        low32: true,
        op: ArgOp::Ne,
        value: v,
    };
    add(
        "socket",
        vec![fam(1), fam(2), fam(10), fam(16)],
        "EAFNOSUPPORT",
        "only unix, inet, inet6 and netlink sockets",
    );
    if isolation == Isolation::Degraded && policy.network == Network::Off {
        for (f, name) in [(2u64, "AF_INET"), (10, "AF_INET6")] {
            add(
                "socket",
                vec![ArgCond {
                    index: 0,
                    low32: true,
                    op: ArgOp::Eq,
                    value: f,
                }],
                "EACCES",
                &format!("network off without a network namespace: no {name} sockets"),
            );
        }
    }
    add(
        "openat2",
        vec![],
        "ENOSYS",
        "its flags are in memory the filter cannot read; libc falls back to openat, which the broker checks",
    );
    SeccompPlan {
        rules,
        notify_unix: false,
        unix_allow: Vec::new(),
        write_guard: crate::guard::WriteGuard::default(),
        brokered: true,
    }
}

/// Computes the plan. Pure: everything about the host comes in through `facts`.
pub fn plan(
    policy: &Policy,
    layout: &FsLayout,
    facts: &HostFacts,
    isolation: Isolation,
) -> Result<LinuxPlan, PlanError> {
    let abi = facts.landlock_abi;
    let ns = isolation == Isolation::Namespaces;
    if matches!(policy.network, Network::Proxy(_)) && !ns {
        return Err(PlanError::ProxyNeedsNamespace);
    }
    let proxy = match &policy.network {
        Network::Proxy(net) => {
            let listen = std::net::SocketAddr::from(([127, 0, 0, 1], PROXY_PORT));
            let transparent = if net.transparent {
                let tcp_ports = transparent_ports(net);
                // One SCM_RIGHTS message carries the proxy listener, these, and DNS.
                if tcp_ports.len() + 2 > MAX_PROXY_SOCKETS {
                    return Err(PlanError::TooManyTransparentPorts(tcp_ports));
                }
                Some(TransparentPlan {
                    tcp_ports,
                    dns: true,
                })
            } else {
                None
            };
            Some(ProxyBridge {
                listen,
                env: proxy_env(listen),
                transparent,
            })
        }
        _ => None,
    };
    let private_network = ns && policy.network != Network::On;
    let mut gaps = Vec::new();
    let mut mounts = Vec::new();
    let tmp = PathBuf::from("/tmp");

    if ns {
        mounts.push(MountStep::RootReadOnly);
        mounts.push(MountStep::Dev {
            shm_size: policy.limits.tmp_bytes,
        });
        mounts.push(MountStep::Proc);
        mounts.push(MountStep::Tmpfs {
            path: tmp.clone(),
            size: policy.limits.tmp_bytes,
            mode: 0o1777,
            read_only: false,
            why: "private /tmp".into(),
        });
        for d in &facts.run_dirs {
            mounts.push(MountStep::Tmpfs {
                path: d.clone(),
                size: 1 << 20,
                mode: 0o755,
                read_only: false,
                why: "host daemons' sockets (docker, session bus, resolver, agents)".into(),
            });
        }
        if let Some(r) = &facts.resolv_conf {
            if policy.network == Network::On {
                mounts.push(MountStep::Expose {
                    path: r.clone(),
                    why: "/etc/resolv.conf points here; name resolution with network on".into(),
                });
            }
        }
        // Outermost first, so that nested roots are bound on top of their parents.
        let mut roots: Vec<&PathBuf> = layout.writable.iter().map(|w| &w.path).collect();
        roots.sort_by_key(|p| p.components().count());
        for r in roots {
            mounts.push(MountStep::BindWritable { path: r.clone() });
        }
        let mut protected: Vec<_> = layout.protected.iter().collect();
        protected.sort_by_key(|p| p.path.components().count());
        for p in protected {
            match (p.exists, p.protection) {
                // Missing: the write guard refuses to create it (no host-visible
                // placeholder, so nothing the host removes mid-run can free the name).
                (None, _) => {}
                (Some(FileKind::Dir), Protection::Pinned) => mounts.push(MountStep::Pin {
                    path: p.path.clone(),
                }),
                (Some(FileKind::Symlink), _) => {}
                (Some(_), _) => mounts.push(MountStep::BindReadOnly {
                    path: p.path.clone(),
                    why: p.reason.clone(),
                }),
            }
        }
        for h in &layout.hidden {
            mounts.push(match h.kind {
                FileKind::Dir => MountStep::MaskDir {
                    path: h.path.clone(),
                    why: format!("secret ({})", h.source),
                },
                _ => MountStep::MaskFile {
                    path: h.path.clone(),
                    why: format!("secret ({})", h.source),
                },
            });
        }
        let masked_dirs: Vec<&PathBuf> = facts.run_dirs.iter().chain([&tmp]).collect();
        for s in &facts.unix_sockets {
            let under_masked = masked_dirs.iter().any(|d| s.starts_with(d));
            let under_writable = layout.writable.iter().any(|w| s.starts_with(&w.path));
            let under_hidden = layout.hidden.iter().any(|h| s.starts_with(&h.path));
            if !under_masked && !under_writable && !under_hidden {
                mounts.push(MountStep::MaskFile {
                    path: s.clone(),
                    why: "listening unix socket of a host daemon".into(),
                });
            }
        }
    }

    let landlock = if abi == 0 {
        gaps.push(gap(
            "landlock",
            if ns { Enforcement::Partial } else { Enforcement::None },
            "Landlock is not available: enable CONFIG_SECURITY_LANDLOCK and add 'landlock' to the lsm= boot parameter",
        ));
        None
    } else {
        let read = at_abi(READ, abi);
        let write = at_abi(WRITE, abi);
        let handled = union(&read, &write);
        let handled = if abi >= 5 {
            union(&handled, &[LlAccess::IoctlDev])
        } else {
            handled
        };
        let rw = union(&read, &write);
        let dev = at_abi(
            &[
                LlAccess::Execute,
                LlAccess::ReadFile,
                LlAccess::ReadDir,
                LlAccess::WriteFile,
                LlAccess::Truncate,
                LlAccess::IoctlDev,
            ],
            abi,
        );
        let mut rules = Vec::new();
        // Reads: everything except the secrets, existing or not. Granting per entry
        // along their ancestors (instead of beneath `/`) leaves out a secret that
        // appears during the run too (a login in another terminal); the mount masks
        // below only cover what existed at the start.
        let mut excluded: Vec<PathBuf> = policy.deny_read.iter().map(|d| d.path.clone()).collect();
        excluded.extend(layout.hidden.iter().map(|h| h.path.clone()));
        excluded.extend(facts.resolved_secrets.iter().cloned());
        excluded.sort();
        excluded.dedup();
        let mut reads = Vec::new();
        expand(Path::new("/"), &excluded, facts, &mut reads);
        if !reads.iter().any(|r| r == Path::new("/")) {
            // Names stay listable everywhere (`ls ~`, `ls /`, tools that scan a
            // directory), though not inside the existing secrets, which are masked:
            // only contents are secret. Without this the expanded directories
            // themselves could not be listed.
            rules.push(LandlockRule {
                path: "/".into(),
                access: vec![LlAccess::ReadDir],
            });
        }
        for r in reads {
            rules.push(LandlockRule {
                path: r,
                access: read.clone(),
            });
        }
        if ns {
            rules.push(LandlockRule {
                path: "/dev".into(),
                access: dev,
            });
            rules.push(LandlockRule {
                path: "/proc".into(),
                access: union(&read, &[LlAccess::WriteFile]),
            });
            rules.push(LandlockRule {
                path: tmp.clone(),
                access: rw.clone(),
            });
            rules.push(LandlockRule {
                path: "/dev/shm".into(),
                access: rw.clone(),
            });
            for w in &layout.writable {
                rules.push(LandlockRule {
                    path: w.path.clone(),
                    access: rw.clone(),
                });
            }
        } else {
            rules.push(LandlockRule {
                path: "/dev".into(),
                access: dev,
            });
            rules.push(LandlockRule {
                path: facts.degraded_tmp.clone(),
                access: rw.clone(),
            });
            let protected: Vec<PathBuf> = layout
                .protected
                .iter()
                .filter(|p| p.exists.is_some() && p.protection == Protection::ReadOnly)
                .map(|p| p.path.clone())
                .collect();
            for w in &layout.writable {
                let mut grants = Vec::new();
                expand(&w.path, &protected, facts, &mut grants);
                for g in grants {
                    rules.push(LandlockRule {
                        path: g,
                        access: rw.clone(),
                    });
                }
            }
        }
        Some(LandlockPlan {
            abi,
            handled,
            rules,
            deny_tcp: !ns && policy.network == Network::Off && abi >= 4,
            scope_abstract_unix: abi >= 6,
            scope_signal: abi >= 6,
        })
    };

    if !ns {
        gaps.push(gap(
            "namespaces",
            Enforcement::None,
            "no user namespace: no private mount, pid, network or IPC namespace",
        ));
        gaps.push(gap("secrets (files)", if abi > 0 { Enforcement::Partial } else { Enforcement::None },
            "hidden paths are unreadable through Landlock, but their names can be listed and new files next to their ancestors are not readable"));
        gaps.push(gap("protected paths", if abi > 0 { Enforcement::Partial } else { Enforcement::None },
            "existing protected paths are read-only through Landlock and missing ones are refused by the broker, but new entries cannot be created at the top of a writable root that contains a protected path, and .git can be renamed where its parent is writable"));
        gaps.push(gap("metadata", Enforcement::None, "Landlock does not cover chmod, chown, utime or xattrs outside the writable roots; ordinary file permissions still apply"));
        gaps.push(gap(
            "private /tmp",
            Enforcement::Partial,
            format!(
                "TMPDIR is {} on the host; /tmp and /dev/shm are not writable",
                facts.degraded_tmp.display()
            ),
        ));
        gaps.push(gap("processes", if abi >= 6 { Enforcement::Partial } else { Enforcement::None },
            "no pid namespace: host processes are visible in /proc; Landlock blocks signals and ptrace to them (ABI 6)"));
        gaps.push(gap("lifetime", Enforcement::Partial,
            "descendants are tracked as a subreaper and killed when the command exits, but they can outlive a SIGKILLed workfence"));
        if policy.network == Network::Off {
            gaps.push(gap("network", Enforcement::Partial,
                "no network namespace: inet sockets are refused by seccomp (so loopback inside does not work either); host pathname unix sockets stay reachable; abstract unix sockets are blocked only with Landlock ABI 6"));
        }
        gaps.push(gap(
            "IPC",
            Enforcement::None,
            "no IPC namespace: host SysV IPC and POSIX message queues are reachable",
        ));
        gaps.push(gap(
            "process limit",
            Enforcement::Partial,
            "RLIMIT_NPROC counts all of the user's processes on the host",
        ));
    }

    let mut namespaces = Vec::new();
    if ns {
        namespaces.extend(["user", "mount", "pid", "ipc", "uts", "cgroup"].map(String::from));
        if private_network {
            namespaces.push("net".into());
        }
    }
    // The task cap. RLIMIT_NPROC is exact for ordinary users but does not bind root.
    // The pid namespace's own pid_max (Linux 6.14) binds everyone, threads included,
    // with PID_MAX_HEADROOM of slack, and costs nothing; a cgroup is exact but costs
    // a synchronous RCU grace period per run on v1 (10-30 ms on a 2-core VM). So:
    // pid_max wherever the kernel has it, and a cgroup as well only for root when
    // pid_max is much looser than the cap asked for (a small cap, or a kernel whose
    // minimum pid_max is large).
    let pid_max_min = facts.pid_max_min.max(PID_MAX_MIN);
    let pid_max = (ns && facts.pid_max_per_pidns).then(|| {
        policy
            .limits
            .max_processes
            .saturating_add(PID_MAX_HEADROOM)
            .clamp(pid_max_min, PID_MAX_LIMIT)
    });
    // Near the cap: at most PID_MAX_HEADROOM over it, for a cap of 300 or more.
    let pid_max_binds = pid_max.is_some_and(|m| {
        policy.limits.max_processes >= 300
            && m == policy.limits.max_processes.saturating_add(PID_MAX_HEADROOM)
    });
    let need_v2 = policy.limits.memory_bytes.is_some() || policy.limits.cpu_percent.is_some();
    let cgroup = facts
        .pids_cgroup
        .as_ref()
        .filter(|_| {
            pid_max.is_none()
                || (facts.nproc_exempt && !pid_max_binds)
                || (need_v2 && facts.v2_cgroup.is_some())
        })
        .map(|parent| CgroupPlan {
            parent: parent.clone(),
            pids_max: Some(policy.limits.max_processes),
            memory_max: policy.limits.memory_bytes,
            cpu_percent: policy.limits.cpu_percent,
        });
    if (policy.limits.memory_bytes.is_some() || policy.limits.cpu_percent.is_some())
        && facts.v2_cgroup.is_none()
    {
        gaps.push(gap(
            "memory/cpu limits",
            Enforcement::None,
            "no delegated cgroup v2 subtree: run under a systemd user session (systemd-run --user --scope) or as root",
        ));
    }
    if facts.nproc_exempt && cgroup.is_none() && !pid_max_binds {
        gaps.push(gap(
            "process limit",
            Enforcement::None,
            "running as root, RLIMIT_NPROC does not apply to uid 0, no writable pids cgroup exists, and the kernel has no per-namespace pid_max (Linux 6.14) or it cannot come near the cap (below 300, or many CPUs): run as an ordinary user",
        ));
    }
    let mut seccomp = seccomp_rules(policy, isolation);
    // Every protected path that must stay read-only, present or not: the broker
    // refuses creating, writing or replacing it even if the host removes it (and
    // with it the read-only mount) while the command runs.
    let exact: Vec<PathBuf> = layout
        .protected
        .iter()
        .filter(|p| p.protection == Protection::ReadOnly)
        .map(|p| p.path.clone())
        .collect();
    // Existing pinned directories below a read-only one (a submodule's gitdir under
    // `.git/modules`) stay writable, as their mounts are.
    let writable_within = layout
        .protected
        .iter()
        .filter(|p| p.protection == Protection::Pinned && p.exists.is_some())
        .filter(|p| exact.iter().any(|e| p.path.starts_with(e) && p.path != *e))
        .map(|p| p.path.clone())
        .collect();
    // The private /tmp is a tmpfs of this sandbox alone, gone when it ends: nested
    // repositories there (a `git clone` into /tmp) never meet host git. Not in
    // degraded mode, whose TMPDIR is a host directory.
    let (ephemeral, ephemeral_except) = if ns {
        let under: Vec<PathBuf> = layout
            .writable
            .iter()
            .filter(|w| w.path.starts_with(&tmp))
            .map(|w| w.path.clone())
            .collect();
        (vec![tmp.clone()], under)
    } else {
        (Vec::new(), Vec::new())
    };
    seccomp.write_guard = crate::guard::WriteGuard {
        exact,
        writable_within,
        git_names: true,
        ephemeral,
        ephemeral_except,
    };
    if !ns && facts.foreign_procfs {
        seccomp.brokered = false;
        gaps.push(gap(
            "protected names",
            Enforcement::None,
            "/proc is not the procfs of this pid namespace, so the write broker cannot run: missing protected names (.codex, .git/commondir, nested .git/config, ...) can be created; mount a procfs for the container's pid namespace",
        ));
    }
    if ns {
        seccomp.notify_unix = true;
        seccomp.unix_allow = layout
            .writable
            .iter()
            .map(|w| w.path.clone())
            .chain([tmp.clone(), PathBuf::from("/dev/shm")])
            .collect();
    }
    Ok(LinuxPlan {
        isolation,
        namespaces,
        uid: facts.uid,
        gid: facts.gid,
        mounts,
        landlock,
        seccomp,
        nproc: u64::from(policy.limits.max_processes),
        pid_max,
        cgroup,
        tmpdir: if ns { tmp } else { facts.degraded_tmp.clone() },
        cwd: layout.cwd.clone(),
        private_network,
        proxy,
        gaps,
    })
}

impl fmt::Display for LinuxPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Linux plan ({})",
            match self.isolation {
                Isolation::Namespaces => "namespaces + Landlock + seccomp",
                Isolation::Degraded => "DEGRADED: Landlock + seccomp only",
            }
        )?;
        if !self.namespaces.is_empty() {
            writeln!(f, "  namespaces: {}", self.namespaces.join(", "))?;
            writeln!(
                f,
                "  uid/gid inside: {}/{} (mapped to the same ids outside)",
                self.uid, self.gid
            )?;
        }
        writeln!(
            f,
            "  network: {}",
            if self.proxy.is_some() {
                "private namespace, loopback only; out only through workfence's proxy"
            } else if self.private_network {
                "private namespace, loopback only"
            } else if self.isolation == Isolation::Degraded {
                "host namespace (see gaps)"
            } else {
                "host network"
            }
        )?;
        if let Some(p) = &self.proxy {
            writeln!(
                f,
                "  proxy: {} inside the sandbox (HTTP, CONNECT, SOCKS5), a socket passed to workfence outside; no host port",
                p.listen
            )?;
            if let Some(t) = &p.transparent {
                let ports: Vec<String> = t.tcp_ports.iter().map(u16::to_string).collect();
                writeln!(
                    f,
                    "  transparent: every address routed to loopback; TCP {} to the proxy{}",
                    ports.join(", "),
                    if t.dns {
                        "; DNS answered by workfence"
                    } else {
                        ""
                    }
                )?;
            }
            let names: Vec<&str> = p.env.iter().map(|(k, _)| k.as_str()).collect();
            writeln!(f, "  proxy variables: {}", names.join(" "))?;
        }
        writeln!(f, "  cwd: {}", self.cwd.display())?;
        writeln!(f, "  TMPDIR: {}", self.tmpdir.display())?;
        writeln!(f, "\nMounts (in order):")?;
        if self.mounts.is_empty() {
            writeln!(f, "  (none: no mount namespace)")?;
        }
        for m in &self.mounts {
            match m {
                MountStep::RootReadOnly => writeln!(f, "  ro-bind   /  (recursive, nosuid, nodev)")?,
                MountStep::Tmpfs { path, size, mode, read_only, why } => writeln!(
                    f,
                    "  tmpfs     {} size={} mode={:o}{}  # {}",
                    path.display(),
                    workfence_policy::units::format_size(*size),
                    mode,
                    if *read_only { " ro" } else { "" },
                    why
                )?,
                MountStep::Dev { shm_size } => writeln!(
                    f,
                    "  dev       /dev  (null zero full random urandom tty, private devpts, /dev/shm size={})",
                    workfence_policy::units::format_size(*shm_size)
                )?,
                MountStep::Proc => writeln!(f, "  proc      /proc  (sandbox pid namespace; /proc/sys, sysrq-trigger, irq, bus read-only)")?,
                MountStep::BindWritable { path } => writeln!(f, "  rw-bind   {}", path.display())?,
                MountStep::BindReadOnly { path, why } => writeln!(f, "  ro-bind   {}  # {}", path.display(), why)?,
                MountStep::Pin { path } => writeln!(f, "  pin       {}  # writable inside, cannot be renamed or removed", path.display())?,
                MountStep::MaskFile { path, why } => writeln!(f, "  mask-file {}  # {}", path.display(), why)?,
                MountStep::MaskDir { path, why } => writeln!(f, "  mask-dir  {}  # {}", path.display(), why)?,
                MountStep::Expose { path, why } => writeln!(f, "  ro-bind   {}  # {}", path.display(), why)?,
            }
        }
        writeln!(f, "\nLandlock:")?;
        match &self.landlock {
            None => writeln!(f, "  (not available)")?,
            Some(l) => {
                writeln!(f, "  ABI {}; handled: {:?}", l.abi, l.handled)?;
                for r in &l.rules {
                    writeln!(f, "  allow {:?} beneath {}", r.access, r.path.display())?;
                }
                if l.deny_tcp {
                    writeln!(f, "  deny all TCP bind/connect")?;
                }
                if l.scope_abstract_unix || l.scope_signal {
                    writeln!(
                        f,
                        "  scoped: abstract unix sockets={}, signals={}",
                        l.scope_abstract_unix, l.scope_signal
                    )?;
                }
            }
        }
        writeln!(
            f,
            "\nseccomp (allow by default; non-native ABIs killed; x32 syscall numbers refused):"
        )?;
        for r in &self.seccomp.rules {
            let cond = if r.args.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = r
                    .args
                    .iter()
                    .map(|a| match a.op {
                        ArgOp::Eq => format!("arg{}=={:#x}", a.index, a.value),
                        ArgOp::Ne => format!("arg{}!={:#x}", a.index, a.value),
                        ArgOp::MaskedEq(m) => format!("arg{}&{:#x}=={:#x}", a.index, m, a.value),
                    })
                    .collect();
                format!(" if {}", parts.join(" && "))
            };
            writeln!(f, "  {}{} -> {}  # {}", r.syscall, cond, r.errno, r.why)?;
        }
        if self.seccomp.notify_unix {
            let allow: Vec<String> = self
                .seccomp
                .unix_allow
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            writeln!(
                f,
                "  connect, sendto (with an address), sendmsg, sendmmsg -> broker: unix sockets only under {}; datagram sendmsg only to the connected peer, without control data; other families continue",
                allow.join(", ")
            )?;
        }
        let g = &self.seccomp.write_guard;
        if !self.seccomp.brokered {
            writeln!(f, "  (no write broker: see the gaps below)")?;
        } else {
            writeln!(
            f,
            "  open/openat/creat with write intent, mkdir, mknod, symlink, link, rename, truncate -> broker (acts for the caller with its uid, Landlock domain and no capabilities); refused:"
        )?;
            for e in &g.exact {
                writeln!(f, "    {} and below (present or not)", e.display())?;
            }
            if g.git_names {
                writeln!(f, "    in every git directory (.git, .git/worktrees/*, .git/modules/**): config, config.worktree, commondir, hooks/**; any .git that is not a directory; directory renames that would create git metadata or an ancestor of a path above")?;
                for e in &g.ephemeral {
                    writeln!(
                        f,
                        "    (not in {}: the sandbox's private tmpfs, gone when it ends, so git clone/init work there{})",
                        e.display(),
                        if g.ephemeral_except.is_empty() {
                            String::new()
                        } else {
                            let v: Vec<String> =
                                g.ephemeral_except.iter().map(|p| p.display().to_string()).collect();
                            format!("; except the host directories {}", v.join(", "))
                        }
                    )?;
                }
            }
        }
        writeln!(f, "\nLimits:")?;
        writeln!(
            f,
            "  RLIMIT_NPROC {} (counted per user namespace; root is exempt)",
            self.nproc
        )?;
        if let Some(m) = self.pid_max {
            writeln!(
                f,
                "  kernel.pid_max {m} in the sandbox's pid namespace: at most {} tasks, workfence's included",
                m - 1
            )?;
        }
        match &self.cgroup {
            Some(c) => writeln!(
                f,
                "  cgroup under {}: pids.max={:?} memory.max={:?} cpu={:?}%",
                c.parent.display(),
                c.pids_max,
                c.memory_max,
                c.cpu_percent
            )?,
            None if self.pid_max.is_some() => {
                writeln!(f, "  cgroup: none (pid_max caps the tasks)")?
            }
            None => writeln!(f, "  cgroup: none (no writable cgroup on this host)")?,
        }
        if !self.gaps.is_empty() {
            writeln!(f, "\nNOT fully enforced:")?;
            for g in &self.gaps {
                writeln!(f, "  {} [{:?}]: {}", g.layer, g.state, g.detail)?;
            }
        }
        Ok(())
    }
}
