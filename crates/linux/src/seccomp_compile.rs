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
        "openat2" => libc::SYS_openat2,
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

/// Syscalls that always go to the broker: they create, replace or truncate a name;
/// and `umask`, which the broker only notes (it caches callers' umasks).
fn brokered_always() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_umask,
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_symlinkat,
        libc::SYS_linkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_truncate,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_creat,
        libc::SYS_mkdir,
        libc::SYS_mknod,
        libc::SYS_symlink,
        libc::SYS_link,
        libc::SYS_rename,
    ]);
    v
}

/// Opens that go to the broker when their flags carry write intent: (nr, flags arg).
fn brokered_opens() -> Vec<(i64, u32)> {
    let mut v = vec![(libc::SYS_openat, 2)];
    #[cfg(target_arch = "x86_64")]
    v.push((libc::SYS_open, 1));
    v
}

/// The user-notification filter, installed last, with a listener held by the broker:
/// write-intent opens (any of `O_WRONLY`, `O_RDWR`, `O_CREAT`, `O_TRUNC`: reads never
/// leave the kernel), the name-creating syscalls, and with `unix` also connect,
/// sendmsg, sendmmsg, and sendto when it carries an address.
pub fn notify_program(unix: bool) -> BpfProgram {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    // A tiny assembler: jumps name a label, resolved to relative offsets at the end.
    #[derive(Clone, Copy)]
    enum To {
        Next,
        Notify,
        Allow,
        Label(usize),
    }
    struct Ins {
        code: u32,
        k: u32,
        jt: To,
        jf: To,
    }
    let ld = |k: u32| Ins {
        code: BPF_LD | BPF_W | BPF_ABS,
        k,
        jt: To::Next,
        jf: To::Next,
    };
    let jeq = |k: u32, jt: To, jf: To| Ins {
        code: BPF_JMP | BPF_JEQ | BPF_K,
        k,
        jt,
        jf,
    };
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7;
    #[cfg(not(target_arch = "aarch64"))]
    const ARCH: u32 = 0xC000_003E;
    // Offsets in struct seccomp_data: nr 0, arch 4, args from 16 (low word first on
    // the little-endian targets workfence supports).
    let arg_lo = |i: u32| 16 + 8 * i;
    let write_intent = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32;

    let mut prog: Vec<Ins> = vec![
        ld(4),
        jeq(ARCH, To::Next, To::Allow), // another arch: another filter kills it
        ld(0),
    ];
    for nr in brokered_always() {
        prog.push(jeq(nr as u32, To::Notify, To::Next));
    }
    if unix {
        for nr in [libc::SYS_connect, libc::SYS_sendmsg, libc::SYS_sendmmsg] {
            prog.push(jeq(nr as u32, To::Notify, To::Next));
        }
    }
    // Each conditional syscall: `if nr == N { load arg; test } else { next block }`.
    // A body always ends in a jump to notify or allow, and the skip path leaves the
    // accumulator (nr) untouched for the next block's comparison.
    let mut blocks: Vec<(u32, Vec<Ins>)> = Vec::new();
    for (nr, arg) in brokered_opens() {
        blocks.push((
            nr as u32,
            vec![
                ld(arg_lo(arg)),
                Ins {
                    code: BPF_JMP | BPF_JSET | BPF_K,
                    k: write_intent,
                    jt: To::Notify,
                    jf: To::Allow,
                },
            ],
        ));
    }
    if unix {
        blocks.push((
            libc::SYS_sendto as u32,
            vec![
                ld(arg_lo(4)),
                jeq(0, To::Next, To::Notify),
                ld(arg_lo(4) + 4),
                jeq(0, To::Allow, To::Notify),
            ],
        ));
    }
    let n = blocks.len();
    for (i, (nr, body)) in blocks.into_iter().enumerate() {
        let next_block = prog.len() + 1 + body.len();
        prog.push(jeq(
            nr,
            To::Next,
            if i + 1 == n {
                To::Allow
            } else {
                To::Label(next_block)
            },
        ));
        prog.extend(body);
    }
    let notify_at = prog.len();
    let allow_at = notify_at + 1;
    let mut out = Vec::with_capacity(prog.len() + 2);
    for (pc, ins) in prog.iter().enumerate() {
        let off = |t: To| -> u8 {
            let target = match t {
                To::Next => pc + 1,
                To::Notify => notify_at,
                To::Allow => allow_at,
                To::Label(l) => l,
            };
            // Jumps are forward and the program is far below 256 instructions.
            u8::try_from(target - pc - 1).expect("BPF jump out of range")
        };
        out.push(seccompiler::sock_filter {
            code: ins.code as u16,
            jt: off(ins.jt),
            jf: off(ins.jf),
            k: ins.k,
        });
    }
    out.push(seccompiler::sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_USER_NOTIF,
    });
    out.push(seccompiler::sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: SECCOMP_RET_ALLOW,
    });
    out
}
