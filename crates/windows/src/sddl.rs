//! ACEs as pure data, and DACL edits on SDDL text.
//!
//! The apply layer reads a DACL as SDDL (`ConvertSecurityDescriptorToStringSecurityDescriptorW`),
//! journals that exact text, edits it here and converts it back. Keeping the edit pure
//! means the ordering rules (explicit deny, explicit allow, inherited) and the
//! idempotence and undo logic are tested on any OS.

use std::fmt;

use serde::Serialize;

/// File access rights (winnt.h), named for the plan.
pub mod rights {
    /// Read data / list directory.
    pub const FILE_READ_DATA: u32 = 0x1;
    /// Write data / add file.
    pub const FILE_WRITE_DATA: u32 = 0x2;
    /// Append data / add subdirectory.
    pub const FILE_APPEND_DATA: u32 = 0x4;
    /// Read extended attributes.
    pub const FILE_READ_EA: u32 = 0x8;
    /// Write extended attributes.
    pub const FILE_WRITE_EA: u32 = 0x10;
    /// Execute / traverse.
    pub const FILE_EXECUTE: u32 = 0x20;
    /// Delete a child, whatever the child's own DACL says.
    pub const FILE_DELETE_CHILD: u32 = 0x40;
    /// Read attributes.
    pub const FILE_READ_ATTRIBUTES: u32 = 0x80;
    /// Write attributes (timestamps, read-only bit).
    pub const FILE_WRITE_ATTRIBUTES: u32 = 0x100;
    /// Delete (and rename).
    pub const DELETE: u32 = 0x1_0000;
    /// Read the security descriptor.
    pub const READ_CONTROL: u32 = 0x2_0000;
    /// Change the DACL.
    pub const WRITE_DAC: u32 = 0x4_0000;
    /// Take ownership.
    pub const WRITE_OWNER: u32 = 0x8_0000;
    /// Wait on the handle.
    pub const SYNCHRONIZE: u32 = 0x10_0000;
    /// `icacls (M)`: read, write, execute, delete; no DELETE_CHILD, WRITE_DAC or WRITE_OWNER.
    pub const MODIFY: u32 = 0x1301bf;
    /// `icacls (RX)`.
    pub const READ_EXECUTE: u32 = 0x1200a9;
    /// Everything that changes an object or lets it be replaced.
    pub const DENY_WRITE: u32 = FILE_WRITE_DATA
        | FILE_APPEND_DATA
        | FILE_WRITE_EA
        | FILE_DELETE_CHILD
        | FILE_WRITE_ATTRIBUTES
        | DELETE
        | WRITE_DAC
        | WRITE_OWNER;
    /// The object cannot be renamed, deleted or re-permissioned; its contents stay writable.
    pub const DENY_PIN: u32 = DELETE | WRITE_DAC | WRITE_OWNER;
    /// Contents cannot be read or listed, nor executed.
    pub const DENY_READ: u32 = FILE_READ_DATA | FILE_READ_EA | FILE_EXECUTE;

    const NAMES: &[(u32, &str)] = &[
        (FILE_READ_DATA, "READ_DATA"),
        (FILE_WRITE_DATA, "WRITE_DATA"),
        (FILE_APPEND_DATA, "APPEND_DATA"),
        (FILE_READ_EA, "READ_EA"),
        (FILE_WRITE_EA, "WRITE_EA"),
        (FILE_EXECUTE, "EXECUTE"),
        (FILE_DELETE_CHILD, "DELETE_CHILD"),
        (FILE_READ_ATTRIBUTES, "READ_ATTRIBUTES"),
        (FILE_WRITE_ATTRIBUTES, "WRITE_ATTRIBUTES"),
        (DELETE, "DELETE"),
        (READ_CONTROL, "READ_CONTROL"),
        (WRITE_DAC, "WRITE_DAC"),
        (WRITE_OWNER, "WRITE_OWNER"),
        (SYNCHRONIZE, "SYNCHRONIZE"),
    ];

    /// A readable name for a mask (`MODIFY`, or the list of bits).
    pub fn describe(mask: u32) -> String {
        match mask {
            MODIFY => return "MODIFY".into(),
            READ_EXECUTE => return "READ_EXECUTE".into(),
            _ => {}
        }
        NAMES
            .iter()
            .filter(|(b, _)| mask & b != 0)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join("|")
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AceKind {
    /// `A`
    Allow,
    /// `D`
    Deny,
}

/// Inheritance of an ACE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Inherit {
    /// This object only (files, or a directory node itself).
    None,
    /// This directory, its subdirectories and files (`OICI`).
    Tree,
    /// Not this directory, only what is created below it, recursively (`OICIIO`).
    InheritOnly,
}

/// One access-control entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ace {
    /// Allow or deny.
    pub kind: AceKind,
    /// Trustee SID (`S-1-...`).
    pub sid: String,
    /// Access mask.
    pub mask: u32,
    /// Inheritance.
    pub inherit: Inherit,
}

impl Ace {
    /// The SDDL form, for example `(D;OICI;0xd0156;;;S-1-5-21-1-2-3-4)`.
    pub fn sddl(&self) -> String {
        format!(
            "({};{};{:#x};;;{})",
            match self.kind {
                AceKind::Allow => "A",
                AceKind::Deny => "D",
            },
            match self.inherit {
                Inherit::None => "",
                Inherit::Tree => "OICI",
                Inherit::InheritOnly => "OICIIO",
            },
            self.mask,
            self.sid
        )
    }
}

impl fmt::Display for Ace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sddl())
    }
}

/// Why a DACL cannot be edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SddlError {
    /// Not a `D:` string.
    #[error("unexpected DACL text {0:?}")]
    Malformed(String),
    /// A NULL DACL grants everyone everything; adding ACEs would change that wholesale.
    #[error("the object has a NULL DACL (full access for everyone); set a real DACL on it first")]
    NullDacl,
}

/// One ACE as read back from Windows (which may spell masks as letter codes).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParsedAce {
    text: String,
    kind: Option<AceKind>,
    inherited: bool,
    inherit: Option<Inherit>,
    /// `IO`: the ACE does not apply to the object itself, only to what inherits it.
    inherit_only: bool,
    /// `CI` (containers inherit it): what a child directory passes on.
    container_inherit: bool,
    mask: Option<u32>,
    sid: String,
}

const RIGHT_CODES: &[(&str, u32)] = &[
    ("GA", 0x1000_0000),
    ("GR", 0x8000_0000),
    ("GW", 0x4000_0000),
    ("GX", 0x2000_0000),
    ("RC", 0x2_0000),
    ("SD", 0x1_0000),
    ("WD", 0x4_0000),
    ("WO", 0x8_0000),
    ("RP", 0x10),
    ("WP", 0x20),
    ("CC", 0x1),
    ("DC", 0x2),
    ("LC", 0x4),
    ("SW", 0x8),
    ("LO", 0x80),
    ("DT", 0x40),
    ("CR", 0x100),
    ("FA", 0x1f_01ff),
    ("FR", 0x12_0089),
    ("FW", 0x12_0116),
    ("FX", 0x12_00a0),
];

fn parse_mask(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok();
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    if s.len() % 2 != 0 {
        return None;
    }
    let mut mask = 0;
    for chunk in s.as_bytes().chunks(2) {
        let code = std::str::from_utf8(chunk).ok()?;
        mask |= RIGHT_CODES.iter().find(|(c, _)| *c == code)?.1;
    }
    Some(mask)
}

fn parse_ace(text: &str) -> ParsedAce {
    let inner = text.trim_start_matches('(').trim_end_matches(')');
    let f: Vec<&str> = inner.split(';').collect();
    let kind = match f.first().copied() {
        Some("A") => Some(AceKind::Allow),
        Some("D") => Some(AceKind::Deny),
        _ => None,
    };
    let flags = f.get(1).copied().unwrap_or("");
    let mut codes = Vec::new();
    for c in flags.as_bytes().chunks(2) {
        codes.push(std::str::from_utf8(c).unwrap_or(""));
    }
    let inherited = codes.contains(&"ID");
    let inherit_only = codes.contains(&"IO");
    let container_inherit = codes.contains(&"CI");
    let mut rest: Vec<&str> = codes.iter().copied().filter(|c| *c != "ID").collect();
    rest.sort_unstable();
    let inherit = match rest.as_slice() {
        [] => Some(Inherit::None),
        ["CI", "OI"] => Some(Inherit::Tree),
        ["CI", "IO", "OI"] => Some(Inherit::InheritOnly),
        _ => None,
    };
    ParsedAce {
        text: text.to_string(),
        kind,
        inherited,
        inherit,
        inherit_only,
        container_inherit,
        mask: f.get(2).and_then(|m| parse_mask(m)),
        sid: f
            .get(5)
            .map(|s| sid_from_alias(&s.to_ascii_uppercase()))
            .unwrap_or_default(),
    }
}

/// The SID an SDDL alias stands for, for the well-known SIDs plans name (Windows
/// prints `S-1-3-4` as `OW` when it converts a DACL to text); other text unchanged.
fn sid_from_alias(s: &str) -> String {
    match s {
        "OW" => "S-1-3-4",
        "SY" => "S-1-5-18",
        "WD" => "S-1-1-0",
        "BU" => "S-1-5-32-545",
        "AU" => "S-1-5-11",
        "RC" => "S-1-5-12",
        "BA" => "S-1-5-32-544",
        other => other,
    }
    .to_string()
}

impl ParsedAce {
    fn same_as(&self, ace: &Ace) -> bool {
        !self.inherited
            && self.kind == Some(ace.kind)
            && self.inherit == Some(ace.inherit)
            && self.mask == Some(ace.mask)
            && self.sid == ace.sid.to_ascii_uppercase()
    }
}

/// A DACL in SDDL form, split into its flags and ACE strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dacl {
    /// `P`, `AI`, `AR` flags, as written.
    pub flags: String,
    aces: Vec<ParsedAce>,
}

impl Dacl {
    /// Parses the `D:` part of an SDDL string (other parts are ignored).
    pub fn parse(sddl: &str) -> Result<Dacl, SddlError> {
        let start = sddl
            .find("D:")
            .ok_or_else(|| SddlError::Malformed(sddl.to_string()))?;
        let body = &sddl[start + 2..];
        if body.starts_with("NO_ACCESS_CONTROL") {
            return Err(SddlError::NullDacl);
        }
        let flags_end = body.find('(').unwrap_or(body.len());
        let flags = body[..flags_end].to_string();
        if flags.contains(':') {
            // `D:S:...`: an empty DACL followed by a SACL.
            let flags = flags.split(':').next().unwrap_or("");
            let flags = flags.strip_suffix('S').unwrap_or(flags).to_string();
            return Ok(Dacl {
                flags,
                aces: Vec::new(),
            });
        }
        let mut aces = Vec::new();
        let mut depth = 0usize;
        let mut cur = String::new();
        for c in body[flags_end..].chars() {
            match c {
                '(' => {
                    depth += 1;
                    cur.push(c);
                }
                ')' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| SddlError::Malformed(sddl.to_string()))?;
                    cur.push(c);
                    if depth == 0 {
                        aces.push(parse_ace(&cur));
                        cur.clear();
                    }
                }
                _ if depth == 0 => break, // start of `S:` or end
                _ => cur.push(c),
            }
        }
        if depth != 0 {
            return Err(SddlError::Malformed(sddl.to_string()));
        }
        Ok(Dacl { flags, aces })
    }

    /// The SDDL text (`D:<flags><aces>`).
    pub fn to_sddl(&self) -> String {
        let mut s = format!("D:{}", self.flags);
        for a in &self.aces {
            s.push_str(&a.text);
        }
        s
    }

    /// Whether the DACL already holds this exact explicit ACE.
    pub fn contains(&self, ace: &Ace) -> bool {
        self.aces.iter().any(|a| a.same_as(ace))
    }

    /// Adds the ACEs that are missing, in canonical order: explicit denies first,
    /// then explicit allows, then inherited ACEs. Returns the ACEs added.
    pub fn add(&mut self, new: &[Ace]) -> Vec<Ace> {
        let mut added = Vec::new();
        for ace in new {
            if self.contains(ace) || added.contains(ace) {
                continue;
            }
            added.push(ace.clone());
            let parsed = parse_ace(&ace.sddl());
            let pos = match ace.kind {
                AceKind::Deny => 0,
                AceKind::Allow => self
                    .aces
                    .iter()
                    .position(|a| a.inherited)
                    .unwrap_or(self.aces.len()),
            };
            self.aces.insert(pos, parsed);
        }
        added
    }

    /// Removes explicit ACEs equal to any of `aces`; returns how many were removed.
    pub fn remove(&mut self, aces: &[Ace]) -> usize {
        let before = self.aces.len();
        self.aces.retain(|a| !aces.iter().any(|x| a.same_as(x)));
        before - self.aces.len()
    }

    /// Removes every explicit ACE naming `sid` (for uninstall of orphaned SIDs).
    pub fn remove_sid(&mut self, sid: &str) -> usize {
        let sid = sid.to_ascii_uppercase();
        let before = self.aces.len();
        self.aces.retain(|a| a.inherited || a.sid != sid);
        before - self.aces.len()
    }

    /// Whether the DACL is protected from inheritance (`P` flag).
    pub fn protected(&self) -> bool {
        self.flags.contains('P')
    }

    /// The number of ACEs.
    pub fn len(&self) -> usize {
        self.aces.len()
    }

    /// Whether there are no ACEs (an empty DACL denies everyone).
    pub fn is_empty(&self) -> bool {
        self.aces.is_empty()
    }
}

/// The SDDL text of the copy of `ace` that a child inherits (Windows's inheritance
/// rules for the two inheritable forms workfence writes, `OICI` and `OICIIO`): a child
/// directory gets `OICIID` (effective there and inherited further), a child file `ID`
/// (effective, nothing to inherit). An ACE for this object only is not inherited.
///
/// workfence propagates its ACEs itself with these copies instead of letting
/// `SetNamedSecurityInfoW` walk the tree, so that it can decide what to do with each
/// reparse point it meets ([`crate::decisions::propagation_visit`]).
pub fn inherited_copy(ace: &Ace, child_dir: bool) -> Option<String> {
    if ace.inherit == Inherit::None {
        return None;
    }
    Some(format!(
        "({};{};{:#x};;;{})",
        match ace.kind {
            AceKind::Allow => "A",
            AceKind::Deny => "D",
        },
        if child_dir { "OICIID" } else { "ID" },
        ace.mask,
        ace.sid
    ))
}

impl ParsedAce {
    /// The same inherited ACE (flags in any order, masks in any spelling).
    fn same_inherited(&self, other: &ParsedAce) -> bool {
        self.inherited
            && other.inherited
            && self.kind == other.kind
            && self.kind.is_some()
            && self.inherit == other.inherit
            && self.mask == other.mask
            && self.mask.is_some()
            && self.sid == other.sid
    }
}

impl Dacl {
    /// Adds inherited copies ([`inherited_copy`]) that are missing, at the start of the
    /// inherited part (they come from the nearest ancestor), denies before allows.
    /// Returns how many were added.
    pub fn add_inherited(&mut self, copies: &[String]) -> usize {
        let mut n = 0;
        let mut parsed: Vec<ParsedAce> = copies.iter().map(|c| parse_ace(c)).collect();
        // Denies first, in the given order otherwise.
        parsed.sort_by_key(|p| p.kind != Some(AceKind::Deny));
        let mut at = self
            .aces
            .iter()
            .position(|a| a.inherited)
            .unwrap_or(self.aces.len());
        for p in parsed {
            if self.aces.iter().any(|a| a.same_inherited(&p)) {
                continue;
            }
            self.aces.insert(at, p);
            at += 1;
            n += 1;
        }
        n
    }

    /// Of the ACEs a removal walk takes back (`remove`), the ones whose copies it must
    /// still take from the children of the directory with this DACL (read after the
    /// walk changed it): an ACE the directory still passes down itself, explicitly
    /// (a nested root with the same grant) or as a copy inherited from a root above
    /// that still holds it, is left in place below it. Without this, undoing an outer
    /// root would strip the copies an inner root still grants, and the journal never
    /// visits the inner root again.
    pub fn not_passed_down(&self, remove: &[Ace]) -> Vec<Ace> {
        remove
            .iter()
            .filter(|r| {
                !self.aces.iter().any(|a| {
                    a.container_inherit
                        && a.kind == Some(r.kind)
                        && a.mask == Some(r.mask)
                        && a.sid == r.sid.to_ascii_uppercase()
                })
            })
            .cloned()
            .collect()
    }

    /// Removes inherited ACEs equal to any of `copies`; returns how many were removed.
    pub fn remove_inherited(&mut self, copies: &[String]) -> usize {
        let parsed: Vec<ParsedAce> = copies.iter().map(|c| parse_ace(c)).collect();
        let before = self.aces.len();
        self.aces
            .retain(|a| !parsed.iter().any(|p| a.same_inherited(p)));
        before - self.aces.len()
    }
}

impl Ace {
    /// Parses an ACE in the form [`Ace::sddl`] writes (`(A;OICI;0x1301bf;;;S-1-...)`).
    pub fn parse_own(s: &str) -> Option<Ace> {
        let inner = s.strip_prefix('(')?.strip_suffix(')')?;
        let f: Vec<&str> = inner.split(';').collect();
        if f.len() != 6 {
            return None;
        }
        Some(Ace {
            kind: match f[0] {
                "A" => AceKind::Allow,
                "D" => AceKind::Deny,
                _ => return None,
            },
            inherit: match f[1] {
                "" => Inherit::None,
                "OICI" => Inherit::Tree,
                "OICIIO" => Inherit::InheritOnly,
                _ => return None,
            },
            mask: parse_mask(f[2])?,
            sid: f[5].to_string(),
        })
    }
}

/// The TrustedInstaller service SID (`NT SERVICE\\TrustedInstaller`).
pub const TRUSTED_INSTALLER: &str =
    "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464";

/// The SIDs that may own or change the boot task's directory and program: LocalSystem,
/// Administrators, TrustedInstaller (what owns and writes Program Files by default).
pub const INSTALL_TRUSTEES: [&str; 3] = ["S-1-5-18", "S-1-5-32-544", TRUSTED_INSTALLER];

/// Every right that changes an object, its contents or its DACL, generic ones included.
const ANY_WRITE: u32 = rights::DENY_WRITE | 0x1000_0000 | 0x4000_0000;

/// The security descriptor the boot task's directory (`dir`) and program are created
/// with: a protected DACL (nothing inherited from Program Files, whatever it holds)
/// with full control for SYSTEM, Administrators and TrustedInstaller and read and
/// execute for Users; for the directory the ACEs are inherited by what is created in
/// it. The owner is the creating administrator's default (not set here: assigning
/// another owner needs a privilege).
pub fn install_sddl(dir: bool) -> String {
    let i = if dir { "OICI" } else { "" };
    let mut s = "D:P".to_string();
    for sid in INSTALL_TRUSTEES {
        s.push_str(&format!("(A;{i};FA;;;{sid})"));
    }
    s.push_str(&format!(
        "(A;{i};{:#x};;;S-1-5-32-545)",
        rights::READ_EXECUTE
    ));
    s
}

/// Whether an existing boot task directory or program, with the security descriptor
/// `sd` (SDDL with owner and DACL, as read from the object), can be trusted: SYSTEM
/// runs the program at every boot, so anyone else able to replace it would run code
/// as SYSTEM. Refused (with why) when its owner is not one of [`INSTALL_TRUSTEES`]
/// (an owner can always rewrite the DACL), or when an allow ACE that applies to the
/// object (not inherit-only) grants any write right to anyone else. An ACE that
/// cannot be read (an unknown type or mask) counts as a write grant: fail closed.
pub fn install_check(sd: &str) -> Result<(), String> {
    let owner = sd
        .strip_prefix("O:")
        // The owner runs up to the next part's letter and colon (`G:`, `D:`, `S:`).
        .map(|r| match r.find(':') {
            Some(i) => &r[..i.saturating_sub(1)],
            None => r,
        })
        .map(|o| sid_from_alias(&o.to_ascii_uppercase()))
        .ok_or_else(|| format!("its owner cannot be read ({sd})"))?;
    let trusted = |sid: &str| INSTALL_TRUSTEES.iter().any(|t| t.eq_ignore_ascii_case(sid));
    if !trusted(&owner) {
        return Err(format!(
            "it is owned by {owner}, not by SYSTEM, Administrators or TrustedInstaller"
        ));
    }
    let dacl = Dacl::parse(sd).map_err(|e| e.to_string())?;
    for a in &dacl.aces {
        if a.kind == Some(AceKind::Deny) || a.inherit_only {
            continue;
        }
        let writes = a.mask.is_none_or(|m| m & ANY_WRITE != 0);
        if writes && !trusted(&a.sid) {
            return Err(format!(
                "its DACL lets {} change it (ACE {})",
                if a.sid.is_empty() { "someone" } else { &a.sid },
                a.text
            ));
        }
    }
    Ok(())
}

/// The DACL to write back when undoing: the current DACL without the ACEs workfence
/// added (`ours`, as journaled), so that changes others made since are kept. That is
/// exactly `before` when nobody else touched the object. Falls back to `before` when
/// the current DACL cannot be parsed.
pub fn undo(current: &str, before: &str, ours: &[String]) -> String {
    let ours: Vec<Ace> = ours.iter().filter_map(|s| Ace::parse_own(s)).collect();
    match Dacl::parse(current) {
        Ok(mut d) => {
            d.remove(&ours);
            d.to_sddl()
        }
        Err(_) => before.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: &str = "S-1-5-21-11-22-33-44";

    fn ace(kind: AceKind, mask: u32, inherit: Inherit) -> Ace {
        Ace {
            kind,
            sid: CAP.into(),
            mask,
            inherit,
        }
    }

    #[test]
    fn ace_text() {
        assert_eq!(
            ace(AceKind::Deny, rights::DENY_WRITE, Inherit::Tree).sddl(),
            "(D;OICI;0xd0156;;;S-1-5-21-11-22-33-44)"
        );
        assert_eq!(
            ace(AceKind::Allow, rights::MODIFY, Inherit::None).sddl(),
            "(A;;0x1301bf;;;S-1-5-21-11-22-33-44)"
        );
        assert_eq!(
            rights::describe(rights::DENY_PIN),
            "DELETE|WRITE_DAC|WRITE_OWNER"
        );
    }

    #[test]
    fn canonical_insertion_and_undo() {
        let before = "D:AI(A;;FA;;;SY)(A;OICIID;FA;;;BA)(A;OICIID;0x1301bf;;;AU)";
        let mut d = Dacl::parse(before).unwrap();
        let deny = ace(AceKind::Deny, rights::DENY_WRITE, Inherit::Tree);
        let allow = ace(AceKind::Allow, rights::MODIFY, Inherit::Tree);
        assert_eq!(d.add(&[allow.clone(), deny.clone()]).len(), 2);
        assert_eq!(
            d.to_sddl(),
            format!(
                "D:AI{}(A;;FA;;;SY){}(A;OICIID;FA;;;BA)(A;OICIID;0x1301bf;;;AU)",
                deny.sddl(),
                allow.sddl()
            )
        );
        // Idempotent.
        assert!(d.add(&[allow.clone(), deny.clone()]).is_empty());
        assert_eq!(d.remove(&[allow, deny]), 2);
        assert_eq!(d.to_sddl(), before);
    }

    #[test]
    fn letter_codes_are_understood() {
        // Windows may print our masks as letter codes; they still match.
        let d = Dacl::parse(&format!(
            "O:BAD:P(D;CIOI;DCLCRPDTCRSDWDWO;;;{})(A;;SDWDWO;;;{})",
            CAP.to_lowercase(),
            CAP
        ))
        .unwrap();
        assert!(d.protected());
        assert!(d.contains(&ace(AceKind::Deny, rights::DENY_WRITE, Inherit::Tree)));
        assert!(d.contains(&ace(AceKind::Allow, rights::DENY_PIN, Inherit::None)));
        assert!(!d.contains(&ace(AceKind::Allow, rights::DENY_PIN, Inherit::Tree)));
    }

    #[test]
    fn inherited_copies_follow_windows_rules() {
        let tree = Ace {
            kind: AceKind::Allow,
            sid: CAP.into(),
            mask: 0x1301bf,
            inherit: Inherit::Tree,
        };
        let io = Ace {
            inherit: Inherit::InheritOnly,
            ..tree.clone()
        };
        let here = Ace {
            inherit: Inherit::None,
            ..tree.clone()
        };
        let deny = Ace {
            kind: AceKind::Deny,
            mask: 0xd0156,
            ..tree.clone()
        };
        assert_eq!(
            inherited_copy(&tree, true).unwrap(),
            format!("(A;OICIID;0x1301bf;;;{CAP})")
        );
        assert_eq!(
            inherited_copy(&io, true).unwrap(),
            format!("(A;OICIID;0x1301bf;;;{CAP})")
        );
        assert_eq!(
            inherited_copy(&tree, false).unwrap(),
            format!("(A;ID;0x1301bf;;;{CAP})")
        );
        assert_eq!(inherited_copy(&here, true), None);
        // Added once, at the start of the inherited part, denies first; Windows's own
        // spelling (flags reordered, `FA`-style masks) counts as present.
        let mut d = Dacl::parse("D:AI(A;;FA;;;SY)(A;OICIID;FA;;;BA)").unwrap();
        let copies = vec![
            inherited_copy(&tree, true).unwrap(),
            inherited_copy(&deny, true).unwrap(),
        ];
        assert_eq!(d.add_inherited(&copies), 2);
        assert_eq!(
            d.to_sddl(),
            format!("D:AI(A;;FA;;;SY)(D;OICIID;0xd0156;;;{CAP})(A;OICIID;0x1301bf;;;{CAP})(A;OICIID;FA;;;BA)")
        );
        assert_eq!(d.add_inherited(&copies), 0);
        let mut w = Dacl::parse(&format!("D:AI(A;CIOIID;0x1301bf;;;{CAP})")).unwrap();
        assert_eq!(w.add_inherited(&copies[..1]), 0);
        // An explicit ACE of the same shape is not an inherited copy.
        let mut e = Dacl::parse(&format!("D:(A;OICI;0x1301bf;;;{CAP})")).unwrap();
        assert_eq!(e.add_inherited(&copies[..1]), 1);
        // Removal takes only the inherited copies.
        assert_eq!(e.remove_inherited(&copies), 1);
        assert_eq!(e.to_sddl(), format!("D:(A;OICI;0x1301bf;;;{CAP})"));
        assert_eq!(d.remove_inherited(&copies), 2);
        assert_eq!(d.to_sddl(), "D:AI(A;;FA;;;SY)(A;OICIID;FA;;;BA)");
    }

    #[test]
    fn inherited_copies_do_not_count() {
        let d = Dacl::parse(&format!("D:(A;OICIID;0x1301bf;;;{CAP})")).unwrap();
        assert!(!d.contains(&ace(AceKind::Allow, rights::MODIFY, Inherit::Tree)));
        let mut d2 = d.clone();
        assert_eq!(d2.remove_sid(CAP), 0);
    }

    #[test]
    fn only_inherited_and_empty_dacls() {
        let deny = ace(AceKind::Deny, rights::FILE_DELETE_CHILD, Inherit::None);
        let allow = ace(AceKind::Allow, rights::READ_EXECUTE, Inherit::Tree);
        let mut d = Dacl::parse("D:AI(A;OICIID;FA;;;SY)").unwrap();
        d.add(&[allow.clone(), deny.clone()]);
        assert_eq!(
            d.to_sddl(),
            format!("D:AI{}{}(A;OICIID;FA;;;SY)", deny.sddl(), allow.sddl())
        );
        let mut e = Dacl::parse("D:P").unwrap();
        e.add(std::slice::from_ref(&allow));
        assert_eq!(e.to_sddl(), format!("D:P{}", allow.sddl()));
        assert_eq!(e.remove_sid(CAP), 1);
        assert!(e.is_empty());
    }

    #[test]
    fn undo_removes_exactly_ours() {
        let before = "D:AI(A;;FA;;;SY)(A;OICIID;FA;;;BA)";
        let mut d = Dacl::parse(before).unwrap();
        let ours = [
            ace(AceKind::Allow, rights::MODIFY, Inherit::Tree),
            ace(AceKind::Deny, rights::FILE_DELETE_CHILD, Inherit::None),
        ];
        d.add(&ours);
        let journaled: Vec<String> = ours.iter().map(Ace::sddl).collect();
        assert_eq!(undo(&d.to_sddl(), before, &journaled), before);
        // Someone else added an ACE meanwhile: it stays.
        d.add(&[Ace {
            kind: AceKind::Allow,
            sid: "S-1-5-32-545".into(),
            mask: rights::READ_EXECUTE,
            inherit: Inherit::None,
        }]);
        let after = undo(&d.to_sddl(), before, &journaled);
        assert!(
            after.contains("S-1-5-32-545") && !after.contains(CAP),
            "{after}"
        );
        // Windows may print our masks as letters; still found.
        let lettered = format!("D:AI(D;;DT;;;{CAP})(A;;FA;;;SY)");
        assert_eq!(
            undo(&lettered, before, &[journaled[1].clone()]),
            "D:AI(A;;FA;;;SY)"
        );
        assert_eq!(undo("garbage", before, &journaled), before);
        assert_eq!(
            Ace::parse_own("(A;OICI;0x1301bf;;;S-1-1-0)").unwrap().mask,
            rights::MODIFY
        );
        assert!(Ace::parse_own("(XA;;FA;;;WD)").is_none());
    }

    #[test]
    fn inherit_only_owner_rights() {
        let ow = Ace {
            kind: AceKind::Allow,
            sid: "S-1-3-4".into(),
            mask: rights::MODIFY,
            inherit: Inherit::InheritOnly,
        };
        assert_eq!(ow.sddl(), "(A;OICIIO;0x1301bf;;;S-1-3-4)");
        assert_eq!(Ace::parse_own(&ow.sddl()), Some(ow.clone()));
        // Windows may order the flags differently and spell OW for the SID: found.
        let d = Dacl::parse("D:(A;CIOIIO;0x1301bf;;;OW)(A;;FA;;;SY)").unwrap();
        assert!(d.contains(&ow));
        // An inherited copy on a child is not ours, nor is an effective one.
        let d = Dacl::parse("D:(A;OICIID;0x1301bf;;;S-1-3-4)(A;OICI;0x1301bf;;;S-1-3-4)").unwrap();
        assert!(!d.contains(&ow));
    }

    #[test]
    fn nested_roots_keep_their_grants_on_removal() {
        // ws (outer root) and ws\\sub (inner root) both grant the same tree ACE.
        let grant = ace(AceKind::Allow, rights::MODIFY, Inherit::Tree);
        let copy_dir = inherited_copy(&grant, true).unwrap();
        let copy_file = inherited_copy(&grant, false).unwrap();
        // Undoing the outer root: at ws\\sub the walk takes the copy from ws off...
        let mut sub =
            Dacl::parse(&format!("D:AI{}{copy_dir}(A;OICIID;FA;;;SY)", grant.sddl())).unwrap();
        assert_eq!(sub.remove_inherited(std::slice::from_ref(&copy_dir)), 1);
        // ...but sub still grants it explicitly: nothing more is removed below it.
        let below = sub.not_passed_down(std::slice::from_ref(&grant));
        assert!(below.is_empty(), "{below:?}");
        let mut file = Dacl::parse(&format!("D:AI{copy_file}(A;ID;FA;;;SY)")).unwrap();
        assert_eq!(file.remove_inherited(&[]), 0);
        assert!(file.to_sddl().contains(CAP));
        // Undoing the inner root first: sub's explicit ACE goes, but the copy from ws
        // stays on sub and keeps its children's copies.
        let sub2 = Dacl::parse(&format!("D:AI{copy_dir}(A;OICIID;FA;;;SY)")).unwrap();
        assert!(sub2
            .not_passed_down(std::slice::from_ref(&grant))
            .is_empty());
        // An inherit-only explicit ACE passes down the same copy.
        let io = ace(AceKind::Allow, rights::MODIFY, Inherit::InheritOnly);
        let sub3 = Dacl::parse(&format!("D:{}", io.sddl())).unwrap();
        assert!(sub3
            .not_passed_down(std::slice::from_ref(&grant))
            .is_empty());
        // A directory that does not pass it down: removal goes on below it, and only
        // for the ACEs it does not still pass down.
        let deny = ace(AceKind::Deny, rights::DENY_WRITE, Inherit::Tree);
        let plain = Dacl::parse("D:AI(A;OICIID;FA;;;SY)").unwrap();
        assert_eq!(
            plain.not_passed_down(&[grant.clone(), deny.clone()]),
            vec![grant.clone(), deny.clone()]
        );
        let mixed = Dacl::parse(&format!("D:AI{}", deny.sddl())).unwrap();
        assert_eq!(
            mixed.not_passed_down(&[grant.clone(), deny]),
            vec![grant.clone()]
        );
        // An ACE for the directory only, or a file-only copy, passes nothing down.
        let here = Dacl::parse(&format!(
            "D:{}{copy_file}",
            ace(AceKind::Allow, rights::MODIFY, Inherit::None).sddl()
        ))
        .unwrap();
        assert_eq!(
            here.not_passed_down(std::slice::from_ref(&grant)),
            vec![grant]
        );
    }

    #[test]
    fn install_directory_is_admin_only() {
        let d = install_sddl(true);
        assert!(d.starts_with("D:P"), "{d}");
        let parsed = Dacl::parse(&d).unwrap();
        assert!(parsed.protected());
        assert_eq!(parsed.len(), 4);
        assert!(d.contains(TRUSTED_INSTALLER) && d.contains("(A;OICI;0x1200a9;;;S-1-5-32-545)"));
        assert!(!install_sddl(false).contains("OICI"));
        // What we create passes our own check, with the owner Windows reports.
        for owner in ["BA", "SY", TRUSTED_INSTALLER, "S-1-5-32-544"] {
            assert_eq!(
                install_check(&format!("O:{owner}G:SY{d}")),
                Ok(()),
                "{owner}"
            );
            assert_eq!(
                install_check(&format!("O:{owner}{}", install_sddl(false))),
                Ok(())
            );
        }
        // Program Files' usual DACL (CREATOR OWNER inherit-only, Users read) is fine.
        let pf = format!("O:{TRUSTED_INSTALLER}D:PAI(A;;FA;;;{TRUSTED_INSTALLER})(A;CIIO;GA;;;{TRUSTED_INSTALLER})(A;;0x1301bf;;;SY)(A;OICIIO;GA;;;SY)(A;;0x1301bf;;;BA)(A;OICIIO;GA;;;BA)(A;;0x1200a9;;;BU)(A;OICIIO;GXGR;;;BU)(A;OICIIO;GA;;;CO)");
        assert_eq!(install_check(&pf), Ok(()));
        // Another owner, or a write grant to anyone else, is refused.
        let user = "S-1-5-21-1-2-3-1001";
        let e = install_check(&format!("O:{user}{d}")).unwrap_err();
        assert!(e.contains("owned by") && e.contains(user), "{e}");
        for bad in [
            format!("(A;;FA;;;{user})"),
            "(A;OICI;0x1301bf;;;BU)".to_string(),
            "(A;;GW;;;WD)".to_string(),
            "(A;;WD;;;AU)".to_string(),
            "(A;ID;0x2;;;S-1-5-11)".to_string(),
            "(XA;;FA;;;WD;(@User.x == 1))".to_string(),
            "(A;;ZZ;;;WD)".to_string(),
        ] {
            let sd = format!("O:BAD:P(A;;FA;;;SY){bad}");
            assert!(install_check(&sd).is_err(), "{sd}");
        }
        // Denies and read grants are fine; an unreadable owner is not.
        assert_eq!(
            install_check(&format!(
                "O:BAD:P(D;;FA;;;WD)(A;;FR;;;WD){}",
                "(A;;FA;;;SY)"
            )),
            Ok(())
        );
        assert!(install_check("D:P(A;;FA;;;SY)").is_err());
        assert!(install_check("O:BAD:NO_ACCESS_CONTROL").is_err());
    }

    #[test]
    fn odd_dacls() {
        assert_eq!(Dacl::parse("D:NO_ACCESS_CONTROL"), Err(SddlError::NullDacl));
        assert!(Dacl::parse("O:BA").is_err());
        assert!(Dacl::parse("D:(A;;FA;;;SY").is_err());
        let empty = Dacl::parse("D:P").unwrap();
        assert!(empty.is_empty() && empty.protected());
        let with_sacl = Dacl::parse("D:(A;;FA;;;SY)S:(AU;FA;FA;;;WD)").unwrap();
        assert_eq!(with_sacl.to_sddl(), "D:(A;;FA;;;SY)");
        // Conditional ACEs nest parentheses.
        let cond = Dacl::parse("D:(XA;;FX;;;WD;(@User.x == 1))(A;;FA;;;SY)").unwrap();
        assert_eq!(cond.len(), 2);
    }
}
