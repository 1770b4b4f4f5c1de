//! The human-readable plan printed by `workfence explain --target windows`.

use std::fmt;

use workfence_policy::Enforcement;

use crate::plan::{AcePurpose, RunAs, WfpAction, WfpCondition, WfpLayer, WindowsPlan};
use crate::sddl::{rights, AceKind, Inherit};

impl fmt::Display for WfpCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WfpCondition::User(s) => write!(f, "user = {s}"),
            WfpCondition::RemoteV4(a) => {
                write!(f, "remote address = {}", std::net::Ipv4Addr::from(*a))
            }
            WfpCondition::RemoteV6(a) => {
                write!(f, "remote address = {}", std::net::Ipv6Addr::from(*a))
            }
            WfpCondition::RemotePort(p) => write!(f, "remote port = {p}"),
            WfpCondition::LocalPort(p) => write!(f, "local port = {p}"),
            WfpCondition::Protocol(p) => write!(f, "protocol = {p}"),
            WfpCondition::Flags(b) => write!(f, "flags include {b:#x}"),
        }
    }
}

impl fmt::Display for WfpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WfpLayer::AleAuthConnectV4 => "ALE_AUTH_CONNECT_V4",
            WfpLayer::AleAuthConnectV6 => "ALE_AUTH_CONNECT_V6",
            WfpLayer::AleAuthRecvAcceptV4 => "ALE_AUTH_RECV_ACCEPT_V4",
            WfpLayer::AleAuthRecvAcceptV6 => "ALE_AUTH_RECV_ACCEPT_V6",
            WfpLayer::AleAuthListenV4 => "ALE_AUTH_LISTEN_V4",
            WfpLayer::AleAuthListenV6 => "ALE_AUTH_LISTEN_V6",
            WfpLayer::AleResourceAssignmentV4 => "ALE_RESOURCE_ASSIGNMENT_V4",
            WfpLayer::AleResourceAssignmentV6 => "ALE_RESOURCE_ASSIGNMENT_V6",
        })
    }
}

fn state(e: Enforcement) -> &'static str {
    match e {
        Enforcement::Full => "enforced",
        Enforcement::Partial => "partly enforced",
        Enforcement::None => "NOT enforced",
    }
}

impl fmt::Display for WindowsPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Windows plan")?;
        writeln!(f, "  mode:       {}", self.mode)?;
        writeln!(f, "  workspace:  {}", self.workspace)?;
        writeln!(f, "  cwd:        {}", self.cwd)?;
        writeln!(f, "  network:    {}", self.network.policy)?;
        let who = match &self.run_as {
            RunAs::OfflineUser { name, sid } => format!("{name} ({sid}), the hidden offline user"),
            RunAs::OnlineUser { name, sid } => format!("{name} ({sid}), the hidden online user"),
            RunAs::CurrentUser { name, sid } => format!("{name} ({sid}), the invoking user"),
        };
        writeln!(f, "  runs as:    {who}")?;
        if self.unsandboxed {
            writeln!(f, "\n  FULL ACCESS: no token restriction, no ACLs, no network filter; only the job object below applies.")?;
        }

        writeln!(f, "\nLayers")?;
        for l in &self.layers {
            writeln!(f, "  {:<22} {:<16} {}", l.layer, state(l.state), l.detail)?;
        }
        if self.needs_setup {
            if self.allow_degraded {
                writeln!(
                    f,
                    "  --allow-degraded: runs anyway, and says on stderr what is not enforced"
                )?;
            } else {
                writeln!(f, "  runs are refused (exit 125) until `workfence setup` is run, or with --allow-degraded")?;
            }
        }

        writeln!(f, "\nLaunch")?;
        for l in &self.launch {
            writeln!(f, "  - {l}")?;
        }

        if let Some(t) = &self.token {
            writeln!(f, "\nRestricted token (CreateRestrictedToken)")?;
            writeln!(f, "  flags: {}", t.flags.join(" | "))?;
            writeln!(
                f,
                "  restricting SIDs (every write must pass the ACL check for these too):"
            )?;
            for s in &t.restricting_sids {
                writeln!(f, "    {}  {}: {}", s.sid, s.name, s.why)?;
            }
            writeln!(f, "  restricting set: {}", t.restricting_set.name())?;
            writeln!(f, "  deny-only SIDs (SidsToDisable):")?;
            for s in &t.disabled_sids {
                writeln!(f, "    {}  {}", s.sid, s.name)?;
            }
            writeln!(f, "  not restricting SIDs:")?;
            for s in &t.excluded_sids {
                writeln!(f, "    {}  {}: {}", s.sid, s.name, s.why)?;
            }
            writeln!(f, "  default DACL (GENERIC_ALL):")?;
            for s in &t.default_dacl {
                writeln!(f, "    {}  {}", s.sid, s.name)?;
            }
            writeln!(
                f,
                "  capability SID of this workspace: {}",
                self.capability_sid
            )?;
        }

        if !self.unsandboxed {
            writeln!(f, "\nACL changes (journaled in {} before they are applied; `workfence cleanup` restores the previous DACLs)", self.journal)?;
            let groups = [
                (AcePurpose::Write, "write grants"),
                (
                    AcePurpose::Read,
                    "read grants (the sandbox users cannot read the profile otherwise)",
                ),
                (AcePurpose::Protect, "protected paths"),
                (AcePurpose::ProtectChild, "parents of protected paths"),
                (AcePurpose::Hide, "hidden paths"),
            ];
            for (purpose, title) in groups {
                let aces: Vec<_> = self.aces.iter().filter(|a| a.purpose == purpose).collect();
                if aces.is_empty() {
                    continue;
                }
                writeln!(f, "  {title}:")?;
                for a in aces {
                    let line = format!(
                        "    {:<5} {:<58} {}{}{}",
                        match a.ace.kind {
                            AceKind::Allow => "allow",
                            AceKind::Deny => "deny",
                        },
                        a.path,
                        rights::describe(a.ace.mask),
                        match a.ace.inherit {
                            Inherit::Tree => " (inherited by the tree)",
                            Inherit::InheritOnly => " (inherit-only: what is created below)",
                            Inherit::None => "",
                        },
                        if a.per_run { "  [per run]" } else { "" }
                    );
                    writeln!(f, "{}", line.trim_end())?;
                    writeln!(f, "          to {} {}", a.trustee, a.ace.sid)?;
                    writeln!(f, "          {}  {}", a.ace.sddl(), a.why)?;
                }
            }
            if purpose_missing(self, AcePurpose::Hide) && !self.needs_setup {
                writeln!(f, "  hidden paths: none exist on this host")?;
            }
            if !self.placeholders.is_empty() {
                writeln!(f, "  placeholders for missing protected paths (created before each run with the deny ACEs above, removed after it if still empty):")?;
                for p in &self.placeholders {
                    writeln!(f, "    {} {}", if p.dir { "dir " } else { "file" }, p.path)?;
                }
            }
            writeln!(f, "  never granted: drive roots, user profile roots, the Windows directory, shared roots, registry hive files, workfence's state dir")?;
        }

        writeln!(f, "\nNetwork")?;
        writeln!(
            f,
            "  {}: {}",
            if self.network.enforced {
                "enforced"
            } else {
                "NOT enforced"
            },
            self.network.mechanism
        )?;
        if !self.network.filters.is_empty() {
            writeln!(
                f,
                "  WFP filters of the sandbox users (installed by `workfence setup`, persistent):"
            )?;
            for flt in &self.network.filters {
                let conds: Vec<String> = flt.conditions.iter().map(|c| c.to_string()).collect();
                writeln!(
                    f,
                    "    {:<6} w{:<2} {:<27} {}  [{}]",
                    match flt.action {
                        WfpAction::Permit => "permit",
                        WfpAction::Block => "block",
                    },
                    flt.weight,
                    flt.layer.to_string(),
                    flt.name,
                    conds.join(", ")
                )?;
            }
        }

        writeln!(f, "\nJob object")?;
        writeln!(f, "  limits: {}", self.job.limit_flags.join(", "))?;
        writeln!(
            f,
            "  active processes: at most {}",
            self.job.active_process_limit
        )?;
        if let Some(m) = self.job.job_memory_limit {
            writeln!(
                f,
                "  job memory: {}",
                workfence_policy::units::format_size(m)
            )?;
        }
        if let Some(c) = self.job.cpu_percent {
            writeln!(f, "  CPU: hard cap at {c}% of one core")?;
        }
        for n in &self.job.nesting {
            writeln!(f, "  {n}")?;
        }
        writeln!(f, "  no JOB_OBJECT_LIMIT_BREAKAWAY_OK / SILENT_BREAKAWAY_OK: children cannot leave the job")?;
        match self.job.timeout_ms {
            Some(t) => writeln!(
                f,
                "  timeout: {}s, then TerminateJobObject (exit 124)",
                t as f64 / 1000.0
            )?,
            None => writeln!(f, "  timeout: none")?,
        }
        writeln!(
            f,
            "  when workfence exits or is killed, the job handle closes and the whole tree dies"
        )?;

        writeln!(f, "\nEnvironment (secrets already scrubbed by the caller)")?;
        writeln!(
            f,
            "  kept from the host when missing: {}",
            self.env.required.join(" ")
        )?;
        for (k, v) in &self.env.set {
            writeln!(f, "  set {k}={v}")?;
        }
        if let Some(h) = &self.home {
            writeln!(f, "  home of the sandbox user for this workspace: {h} (created before the run, kept between runs)")?;
        }
        if let Some(g) = &self.env.git_safe_directory {
            writeln!(f, "  git: safe.directory={g} through GIT_CONFIG_COUNT/GIT_CONFIG_KEY_n/GIT_CONFIG_VALUE_n (appended to the caller's; no config file is written)")?;
        }
        for r in &self.env.removed {
            writeln!(f, "  removed: {r}")?;
        }
        writeln!(f, "  stdio: {}", self.stdio)?;
        writeln!(
            f,
            "  batch files run through: {} /d /e:on /v:off /s /c (escaped)",
            self.cmd_exe
        )?;
        writeln!(f, "  private temp dir: {}", self.temp_dir)?;

        if !self.notes.is_empty() {
            writeln!(f, "\nNotes")?;
            for n in &self.notes {
                writeln!(f, "  - {n}")?;
            }
        }
        Ok(())
    }
}

fn purpose_missing(plan: &WindowsPlan, p: AcePurpose) -> bool {
    !plan.aces.iter().any(|a| a.purpose == p)
}
