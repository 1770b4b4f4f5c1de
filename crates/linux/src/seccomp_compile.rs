//! Compiles a [`SeccompPlan`] into BPF with `seccompiler`, one filter per errno
//! (seccompiler has one match action per filter), plus a guard against x32 syscall
//! numbers, which share the x86_64 audit arch and would slip past a deny list.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::LinuxError;
use crate::plan::{ArgOp, SeccompPlan};

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        TargetArch::x86_64
    }
}

fn errno(name: &str) -> u32 {
    (match name {
        "ENOSYS" => libc::ENOSYS,
        "EAFNOSUPPORT" => libc::EAFNOSUPPORT,
        "EACCES" => libc::EACCES,
        _ => libc::EPERM,
    }) as u32
}

/// The syscall number for a name on this architecture (None: not on this arch).
pub fn syscall_nr(name: &str) -> Option<i64> {
    let n = match name {
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        "clone3" => libc::SYS_clone3,
        "clone" => libc::SYS_clone,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "bpf" => libc::SYS_bpf,
        "perf_event_open" => libc::SYS_perf_event_open,
        "userfaultfd" => libc::SYS_userfaultfd,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "open_tree" => libc::SYS_open_tree,
        "move_mount" => libc::SYS_move_mount,
        "mount_setattr" => libc::SYS_mount_setattr,
        "ioctl" => libc::SYS_ioctl,
        "socket" => libc::SYS_socket,
        _ => return None,
    };
    Some(n)
}

/// Compiles the plan into BPF programs (install all of them).
pub fn compile(plan: &SeccompPlan) -> Result<Vec<BpfProgram>, LinuxError> {
    let mut by_errno: BTreeMap<u32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for r in &plan.rules {
        let nr = syscall_nr(&r.syscall)
            .ok_or_else(|| LinuxError::Seccomp(format!("unknown syscall {}", r.syscall)))?;
        let group = by_errno.entry(errno(&r.errno)).or_default();
        if r.args.is_empty() {
            // An empty rule list means "always match" in seccompiler.
            group.insert(nr, Vec::new());
            continue;
        }
        if group.get(&nr).is_some_and(|v| v.is_empty()) {
            continue; // already unconditional
        }
        let conds = r
            .args
            .iter()
            .map(|a| {
                let len = if a.low32 {
                    SeccompCmpArgLen::Dword
                } else {
                    SeccompCmpArgLen::Qword
                };
                let op = match a.op {
                    ArgOp::Eq => SeccompCmpOp::Eq,
                    ArgOp::Ne => SeccompCmpOp::Ne,
                    ArgOp::MaskedEq(m) => SeccompCmpOp::MaskedEq(m),
                };
                SeccompCondition::new(a.index, len, op, a.value)
                    .map_err(|e| LinuxError::Seccomp(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rule = SeccompRule::new(conds).map_err(|e| LinuxError::Seccomp(e.to_string()))?;
        group.entry(nr).or_default().push(rule);
    }
    let mut progs = Vec::new();
    for (errno, rules) in by_errno {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            arch(),
        )
        .map_err(|e| LinuxError::Seccomp(e.to_string()))?;
        let prog: BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| LinuxError::Seccomp(e.to_string()))?;
        progs.push(prog);
    }
    progs.push(x32_guard());
    Ok(progs)
}

/// Refuses syscall numbers with the x32 bit set (x86_64 only; elsewhere a no-op allow).
fn x32_guard() -> BpfProgram {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let stmt = |code: u32, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| seccompiler::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    if cfg!(target_arch = "x86_64") {
        vec![
            stmt(BPF_LD | BPF_W | BPF_ABS, 4),
            jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
            stmt(BPF_LD | BPF_W | BPF_ABS, 0),
            jump(BPF_JMP | BPF_JSET | BPF_K, 0x4000_0000, 0, 1),
            stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
            stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        ]
    } else {
        vec![stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)]
    }
}

/// Installs one compiled program (`no_new_privs` must already be set).
pub fn install(prog: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(prog).map_err(|e| e.to_string())
}

/// The user-notification filter: connect, sendmsg and sendmmsg always, sendto when it
/// carries an address, go to the supervisor. Install it last, with a listener.
pub fn notify_program() -> BpfProgram {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let stmt = |code: u32, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| seccompiler::sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7;
    #[cfg(not(target_arch = "aarch64"))]
    const ARCH: u32 = 0xC000_003E;
    let ld = BPF_LD | BPF_W | BPF_ABS;
    vec![
        stmt(ld, 4),                                         // 0: arch
        jump(ARCH, 0, 10), // 1: other arch -> allow (another filter kills it)
        stmt(ld, 0),       // 2: nr
        jump(libc::SYS_connect as u32, 7, 0), // 3 -> notify
        jump(libc::SYS_sendmsg as u32, 6, 0), // 4 -> notify
        jump(libc::SYS_sendmmsg as u32, 5, 0), // 5 -> notify
        jump(libc::SYS_sendto as u32, 0, 5), // 6: not sendto -> allow
        stmt(ld, 16 + 8 * 4), // 7: args[4], low word
        jump(0, 0, 2),     // 8: non-null -> notify
        stmt(ld, 16 + 8 * 4 + 4), // 9: args[4], high word
        jump(0, 1, 0),     // 10: null -> allow, else notify
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_USER_NOTIF), // 11
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW), // 12
    ]
}
