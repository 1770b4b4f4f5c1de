//! Applies a [`LandlockPlan`] with the `landlock` crate, as a hard requirement: the
//! plan was made for this kernel's ABI, so anything less than full enforcement is an
//! error (fail closed).

use landlock::{
    AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::plan::{LandlockPlan, LlAccess};

fn flag(a: LlAccess) -> AccessFs {
    match a {
        LlAccess::Execute => AccessFs::Execute,
        LlAccess::WriteFile => AccessFs::WriteFile,
        LlAccess::ReadFile => AccessFs::ReadFile,
        LlAccess::ReadDir => AccessFs::ReadDir,
        LlAccess::RemoveDir => AccessFs::RemoveDir,
        LlAccess::RemoveFile => AccessFs::RemoveFile,
        LlAccess::MakeChar => AccessFs::MakeChar,
        LlAccess::MakeDir => AccessFs::MakeDir,
        LlAccess::MakeReg => AccessFs::MakeReg,
        LlAccess::MakeSock => AccessFs::MakeSock,
        LlAccess::MakeFifo => AccessFs::MakeFifo,
        LlAccess::MakeBlock => AccessFs::MakeBlock,
        LlAccess::MakeSym => AccessFs::MakeSym,
        LlAccess::Refer => AccessFs::Refer,
        LlAccess::Truncate => AccessFs::Truncate,
        LlAccess::IoctlDev => AccessFs::IoctlDev,
        LlAccess::ResolveUnix => AccessFs::ResolveUnix,
    }
}

fn flags(v: &[LlAccess]) -> BitFlags<AccessFs> {
    v.iter().fold(BitFlags::empty(), |acc, a| acc | flag(*a))
}

/// Restricts the calling thread (before exec).
pub fn restrict(plan: &LandlockPlan) -> Result<(), String> {
    let abi = ABI::from(plan.abi as i32);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(flags(&plan.handled))
        .map_err(|e| format!("handling filesystem rights for ABI {}: {e}", plan.abi))?;
    if plan.deny_tcp {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(|e| format!("handling TCP rights: {e}"))?;
    }
    let mut scopes = BitFlags::<Scope>::empty();
    if plan.scope_abstract_unix {
        scopes |= Scope::AbstractUnixSocket;
    }
    if plan.scope_signal {
        scopes |= Scope::Signal;
    }
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(|e| format!("scoping: {e}"))?;
    }
    let mut created = ruleset
        .create()
        .map_err(|e| format!("creating the ruleset: {e}"))?;
    for rule in &plan.rules {
        // A path that does not exist needs no rule: nothing can be reached through it.
        let Ok(fd) = PathFd::new(&rule.path) else {
            continue;
        };
        let mut access = flags(&rule.access) & flags(&plan.handled);
        // fstat on the rule's own fd: no second path walk.
        let is_dir = rustix::fs::fstat(&fd)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir());
        if !is_dir {
            // Directory-only rights (listing, creating, removing) do not apply to files.
            access &= AccessFs::from_file(abi);
        }
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| format!("adding the rule for {}: {e}", rule.path.display()))?;
    }
    let status = created
        .restrict_self()
        .map_err(|e| format!("restrict_self: {e}"))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(format!(
            "the ruleset is only {:?} on this kernel",
            status.ruleset
        ));
    }
    Ok(())
}
