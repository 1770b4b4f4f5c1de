//! Every FFI call of the backend. Nothing outside this module uses `unsafe`; each
//! block says why it is sound. Handles are `OwnedHandle`s or small owning types that
//! release on drop.

use std::ffi::c_void;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::ptr::{null, null_mut};

use windows_sys::core::{GUID, PWSTR};
use windows_sys::Wdk::Foundation as WF;
use windows_sys::Wdk::Storage::FileSystem as WFS;
use windows_sys::Win32::Foundation as F;
use windows_sys::Win32::NetworkManagement::NetManagement as NM;
use windows_sys::Win32::NetworkManagement::WindowsFilteringPlatform as WFP;
use windows_sys::Win32::Security as S;
use windows_sys::Win32::Security::Authentication::Identity as ID;
use windows_sys::Win32::Security::Authorization as A;
use windows_sys::Win32::Security::Cryptography as C;
use windows_sys::Win32::Storage::FileSystem as FS;
use windows_sys::Win32::System::Console as CON;
use windows_sys::Win32::System::Diagnostics::Debug as DBG;
use windows_sys::Win32::System::JobObjects as J;
use windows_sys::Win32::System::Pipes as P;
use windows_sys::Win32::System::Registry as R;
use windows_sys::Win32::System::Services as SV;
use windows_sys::Win32::System::StationsAndDesktops as SD;
use windows_sys::Win32::System::Threading as T;
use windows_sys::Win32::UI::Shell as UISH;

use crate::decisions::{self as d, check_last_error, launch_flags, Launch, StdHandles};
use crate::error::WindowsError;
use crate::plan::{JobSpec, WfpAction, WfpCondition, WfpFilter, WfpLayer};

/// Result of this module.
pub type Result<T> = std::result::Result<T, WindowsError>;

// The pure decisions repeat these Win32 values (windows-sys is Windows-only there):
// they must be the same.
const _: () = {
    use d::win32 as w;
    assert!(w::CREATE_SUSPENDED == T::CREATE_SUSPENDED);
    assert!(w::CREATE_NEW_CONSOLE == T::CREATE_NEW_CONSOLE);
    assert!(w::CREATE_UNICODE_ENVIRONMENT == T::CREATE_UNICODE_ENVIRONMENT);
    assert!(w::EXTENDED_STARTUPINFO_PRESENT == T::EXTENDED_STARTUPINFO_PRESENT);
    assert!(w::CREATE_NO_WINDOW == T::CREATE_NO_WINDOW);
    assert!(w::STARTF_USESHOWWINDOW == T::STARTF_USESHOWWINDOW);
    assert!(w::STARTF_USESTDHANDLES == T::STARTF_USESTDHANDLES);
    // SW_HIDE (0) is in UI_WindowsAndMessaging, a feature not otherwise needed.
    assert!(w::SW_HIDE == 0);
    assert!(w::LOGON_WITH_PROFILE == T::LOGON_WITH_PROFILE);
    assert!(w::UF_SCRIPT == NM::UF_SCRIPT);
    assert!(w::UF_ACCOUNTDISABLE == NM::UF_ACCOUNTDISABLE);
    assert!(w::UF_LOCKOUT == NM::UF_LOCKOUT);
    assert!(w::UF_PASSWD_NOTREQD == NM::UF_PASSWD_NOTREQD);
    assert!(w::UF_PASSWD_CANT_CHANGE == NM::UF_PASSWD_CANT_CHANGE);
    assert!(w::UF_TEMP_DUPLICATE_ACCOUNT == NM::UF_TEMP_DUPLICATE_ACCOUNT);
    assert!(w::UF_NORMAL_ACCOUNT == NM::UF_NORMAL_ACCOUNT);
    assert!(w::UF_INTERDOMAIN_TRUST_ACCOUNT == NM::UF_INTERDOMAIN_TRUST_ACCOUNT);
    assert!(w::UF_WORKSTATION_TRUST_ACCOUNT == NM::UF_WORKSTATION_TRUST_ACCOUNT);
    assert!(w::UF_SERVER_TRUST_ACCOUNT == NM::UF_SERVER_TRUST_ACCOUNT);
    assert!(w::UF_DONT_EXPIRE_PASSWD == NM::UF_DONT_EXPIRE_PASSWD);
    assert!(w::FILE_ATTRIBUTE_DIRECTORY == FS::FILE_ATTRIBUTE_DIRECTORY);
    assert!(w::ERROR_NO_DATA == F::ERROR_NO_DATA);
    assert!(w::ERROR_PIPE_CONNECTED == F::ERROR_PIPE_CONNECTED);
    assert!(w::ERROR_PIPE_LISTENING == F::ERROR_PIPE_LISTENING);
    assert!(
        crate::plan::FWP_CONDITION_FLAG_IS_RAW_ENDPOINT == WFP::FWP_CONDITION_FLAG_IS_RAW_ENDPOINT
    );
    // The directory listing is parsed from bytes by the pure `parse_dir_entries`.
    use d::dir_info as o;
    use std::mem::offset_of;
    type Info = FS::FILE_ID_BOTH_DIR_INFO;
    assert!(offset_of!(Info, NextEntryOffset) == o::NEXT);
    assert!(offset_of!(Info, FileAttributes) == o::ATTRIBUTES);
    assert!(offset_of!(Info, FileNameLength) == o::NAME_LENGTH);
    assert!(offset_of!(Info, FileId) == o::FILE_ID);
    assert!(offset_of!(Info, FileName) == o::NAME);
};

/// NUL-terminated UTF-16.
pub fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn from_wide(buf: &[u16]) -> String {
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    String::from_utf16_lossy(&buf[..end])
}

/// Reads a NUL-terminated UTF-16 string.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated UTF-16 string.
unsafe fn from_wide_ptr(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut n = 0usize;
    loop {
        let q = p.wrapping_add(n);
        // SAFETY: the caller guarantees a terminating NUL, so every read up to it is in bounds.
        if unsafe { q.read() } == 0 {
            break;
        }
        n += 1;
    }
    // SAFETY: the n units before the NUL were just read, so they are valid.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

/// `GetLastError`.
pub fn last_error() -> u32 {
    // SAFETY: no preconditions.
    unsafe { F::GetLastError() }
}

/// The system's text for an error code.
pub fn message(code: u32) -> String {
    let mut buf = [0u16; 512];
    // SAFETY: the buffer and its length match; no inserts are used.
    let n = unsafe {
        DBG::FormatMessageW(
            DBG::FORMAT_MESSAGE_FROM_SYSTEM | DBG::FORMAT_MESSAGE_IGNORE_INSERTS,
            null(),
            code,
            0,
            buf.as_mut_ptr(),
            buf.len() as u32,
            null(),
        )
    };
    from_wide(&buf[..n as usize]).trim().to_string()
}

/// A Win32 failure as a [`WindowsError`].
pub fn api(step: &str, api: &'static str, code: u32, hint: &str) -> WindowsError {
    let hint = if hint.is_empty() {
        "Run `workfence doctor` to see which layer fails on this machine, and report the error if it persists"
    } else {
        hint
    };
    WindowsError::Api {
        step: step.to_string(),
        api,
        code,
        message: message(code),
        hint: hint.to_string(),
    }
}

/// [`check`] with a step text built only after the thread's last error was read:
/// formatting allocates, and an allocation may overwrite `GetLastError`.
fn check_lazy(
    ok: i32,
    step: impl FnOnce() -> String,
    name: &'static str,
    hint: &'static str,
) -> Result<()> {
    check_last_error(ok == 0, last_error, |code| api(&step(), name, code, hint))
}

/// Checks a `BOOL` result. `step` and `hint` are `'static`: arguments are evaluated
/// before the call, so a `format!` here would run between the API and `GetLastError`;
/// the type refuses it (use [`check_lazy`]).
fn check(ok: i32, step: &'static str, name: &'static str, hint: &'static str) -> Result<()> {
    check_last_error(ok == 0, last_error, |code| api(step, name, code, hint))
}

fn current_process() -> F::HANDLE {
    // SAFETY: returns a pseudo-handle; no preconditions.
    unsafe { T::GetCurrentProcess() }
}

fn owned(h: F::HANDLE) -> Option<OwnedHandle> {
    if h.is_null() || h == F::INVALID_HANDLE_VALUE {
        None
    } else {
        // SAFETY: h is a valid handle just returned to us, and nothing else owns it.
        Some(unsafe { OwnedHandle::from_raw_handle(h as RawHandle) })
    }
}

fn raw(h: &impl AsRawHandle) -> F::HANDLE {
    h.as_raw_handle() as F::HANDLE
}

/// Memory returned by an API that must be released with `LocalFree`.
struct LocalBox(*mut c_void);

impl Drop for LocalBox {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from an API documented to allocate with LocalAlloc.
            unsafe { F::LocalFree(self.0) };
        }
    }
}

// ---------------------------------------------------------------- randomness, DPAPI

/// Fills `buf` from the system CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let st = unsafe {
        C::BCryptGenRandom(
            null_mut(),
            buf.as_mut_ptr(),
            buf.len() as u32,
            C::BCRYPT_USE_SYSTEM_PREFERRED_RNG,
        )
    };
    if st != 0 {
        return Err(api(
            "generating random bytes",
            "BCryptGenRandom",
            st as u32,
            "check that the Cryptographic Services are running",
        ));
    }
    Ok(())
}

/// DPAPI (user scope): only the current user can decrypt.
pub fn protect(data: &[u8]) -> Result<Vec<u8>> {
    let input = C::CRYPT_INTEGER_BLOB {
        cbData: data.len() as u32,
        pbData: data.as_ptr() as *mut u8,
    };
    let mut out = C::CRYPT_INTEGER_BLOB {
        cbData: 0,
        pbData: null_mut(),
    };
    let desc = wide("workfence sandbox credential");
    // SAFETY: input points at `data`, which outlives the call; out receives a LocalAlloc buffer.
    let ok = unsafe {
        C::CryptProtectData(
            &input,
            desc.as_ptr(),
            null(),
            null(),
            null(),
            C::CRYPTPROTECT_UI_FORBIDDEN,
            &mut out,
        )
    };
    check(
        ok,
        "protecting the sandbox credential",
        "CryptProtectData",
        "run setup from your own (elevated) session so that DPAPI can use your profile",
    )?;
    let _free = LocalBox(out.pbData as *mut c_void);
    // SAFETY: on success out.pbData holds out.cbData bytes.
    Ok(unsafe { std::slice::from_raw_parts(out.pbData, out.cbData as usize) }.to_vec())
}

/// Reverses [`protect`].
pub fn unprotect(data: &[u8]) -> Result<Vec<u8>> {
    let input = C::CRYPT_INTEGER_BLOB {
        cbData: data.len() as u32,
        pbData: data.as_ptr() as *mut u8,
    };
    let mut out = C::CRYPT_INTEGER_BLOB {
        cbData: 0,
        pbData: null_mut(),
    };
    // SAFETY: as in `protect`.
    let ok = unsafe {
        C::CryptUnprotectData(
            &input,
            null_mut(),
            null(),
            null(),
            null(),
            C::CRYPTPROTECT_UI_FORBIDDEN,
            &mut out,
        )
    };
    check(
        ok,
        "reading the sandbox credential",
        "CryptUnprotectData",
        "the credential belongs to the user who ran `workfence setup`; run setup again as yourself",
    )?;
    let _free = LocalBox(out.pbData as *mut c_void);
    // SAFETY: on success out.pbData holds out.cbData bytes.
    Ok(unsafe { std::slice::from_raw_parts(out.pbData, out.cbData as usize) }.to_vec())
}

// ---------------------------------------------------------------- SIDs and tokens

/// A binary SID from its string form.
pub struct Sid(LocalBox);

impl Sid {
    /// `ConvertStringSidToSidW`.
    pub fn parse(s: &str) -> Result<Sid> {
        let w = wide(s);
        let mut p: S::PSID = null_mut();
        // SAFETY: w is NUL-terminated; p receives a LocalAlloc'd SID.
        let ok = unsafe { A::ConvertStringSidToSidW(w.as_ptr(), &mut p) };
        check_lazy(ok, || format!("parsing SID {s}"), "ConvertStringSidToSidW", "the state directory may be corrupt; run `workfence cleanup` and `workfence setup` again")?;
        Ok(Sid(LocalBox(p)))
    }

    fn ptr(&self) -> S::PSID {
        self.0 .0
    }
}

fn sid_string(p: S::PSID) -> Result<String> {
    let mut s: PWSTR = null_mut();
    // SAFETY: p is a valid SID owned by the caller; s receives a LocalAlloc'd string.
    let ok = unsafe { A::ConvertSidToStringSidW(p, &mut s) };
    check(ok, "formatting a SID", "ConvertSidToStringSidW", "")?;
    let _free = LocalBox(s as *mut c_void);
    // SAFETY: s is a NUL-terminated string from the API.
    Ok(unsafe { from_wide_ptr(s) })
}

/// The current process's primary token.
pub fn process_token() -> Result<OwnedHandle> {
    let mut h: F::HANDLE = null_mut();
    let me = current_process();
    // SAFETY: `me` is the current-process pseudo-handle; h receives a new handle.
    let ok = unsafe { T::OpenProcessToken(me, S::TOKEN_ALL_ACCESS, &mut h) };
    check(ok, "opening the process token", "OpenProcessToken", "")?;
    owned(h).ok_or_else(|| {
        api(
            "opening the process token",
            "OpenProcessToken",
            last_error(),
            "",
        )
    })
}

fn token_info(token: &OwnedHandle, class: S::TOKEN_INFORMATION_CLASS) -> Result<Vec<u64>> {
    let mut len = 0u32;
    // SAFETY: a size query with a null buffer.
    unsafe { S::GetTokenInformation(raw(token), class, null_mut(), 0, &mut len) };
    // u64 elements keep the SID structures aligned.
    let mut buf = vec![0u64; (len as usize).div_ceil(8) + 1];
    // SAFETY: buf holds at least len bytes.
    let ok = unsafe {
        S::GetTokenInformation(
            raw(token),
            class,
            buf.as_mut_ptr() as *mut c_void,
            (buf.len() * 8) as u32,
            &mut len,
        )
    };
    check(ok, "reading the token", "GetTokenInformation", "")?;
    Ok(buf)
}

/// The token's user SID.
pub fn token_user_sid(token: &OwnedHandle) -> Result<String> {
    let buf = token_info(token, S::TokenUser)?;
    // SAFETY: GetTokenInformation(TokenUser) filled buf with a TOKEN_USER.
    let tu = unsafe { &*(buf.as_ptr() as *const S::TOKEN_USER) };
    sid_string(tu.User.Sid)
}

/// The token's logon SID (`S-1-5-5-x-y`).
pub fn token_logon_sid(token: &OwnedHandle) -> Result<String> {
    let buf = token_info(token, S::TokenGroups)?;
    let tg = buf.as_ptr() as *const S::TOKEN_GROUPS;
    // SAFETY: GetTokenInformation(TokenGroups) filled buf with a TOKEN_GROUPS.
    let count = unsafe { (*tg).GroupCount } as usize;
    // The array is declared with one element but holds `count`: take its address from
    // the buffer's pointer, not from a reference to the one-element field.
    // SAFETY: tg points at a TOKEN_GROUPS in buf; addr_of! reads nothing.
    let first = unsafe { std::ptr::addr_of!((*tg).Groups) }.cast::<S::SID_AND_ATTRIBUTES>();
    // SAFETY: the API wrote `count` entries from `first` on, all inside buf.
    let groups = unsafe { std::slice::from_raw_parts(first, count) };
    for g in groups {
        if g.Attributes & (windows_sys::Win32::System::SystemServices::SE_GROUP_LOGON_ID as u32)
            != 0
        {
            return sid_string(g.Sid);
        }
    }
    Err(WindowsError::Runner(
        "the token has no logon SID; run workfence from an interactive session".into(),
    ))
}

/// Whether the process runs elevated.
pub fn is_elevated() -> bool {
    let Ok(t) = process_token() else { return false };
    let Ok(buf) = token_info(&t, S::TokenElevation) else {
        return false;
    };
    // SAFETY: GetTokenInformation(TokenElevation) filled buf with a TOKEN_ELEVATION.
    let e = unsafe { &*(buf.as_ptr() as *const S::TOKEN_ELEVATION) };
    e.TokenIsElevated != 0
}

/// The integrity level RID of a token (`S-1-16-x`: 0x2000 Medium, 0x3000 High).
fn token_integrity_rid(token: &OwnedHandle) -> Result<u32> {
    let buf = token_info(token, S::TokenIntegrityLevel)?;
    // SAFETY: GetTokenInformation(TokenIntegrityLevel) filled buf with a
    // TOKEN_MANDATORY_LABEL whose SID points into buf.
    let label = unsafe { &*(buf.as_ptr() as *const S::TOKEN_MANDATORY_LABEL) };
    let sid = sid_string(label.Label.Sid)?;
    sid.strip_prefix("S-1-16-")
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| {
            WindowsError::Runner(format!(
                "the token's integrity label {sid} is not a mandatory label; run workfence from a normal user session"
            ))
        })
}

/// Sets a token's integrity level to `S-1-16-<rid>` (lowering needs no privilege).
fn set_token_integrity(token: &OwnedHandle, rid: u32) -> Result<()> {
    let sid = Sid::parse(&format!("S-1-16-{rid}"))?;
    let label = S::TOKEN_MANDATORY_LABEL {
        Label: S::SID_AND_ATTRIBUTES {
            Sid: sid.ptr(),
            Attributes: windows_sys::Win32::System::SystemServices::SE_GROUP_INTEGRITY as u32,
        },
    };
    // SAFETY: sid.ptr() is a valid SID owned by `sid`.
    let sid_len = unsafe { S::GetLengthSid(sid.ptr()) };
    // SAFETY: the token handle is open (without TOKEN_ADJUST_DEFAULT the call fails with
    // an error code); label is a valid TOKEN_MANDATORY_LABEL whose SID is kept alive by
    // `sid` for the call, and the length covers the structure and the SID.
    let ok = unsafe {
        S::SetTokenInformation(
            raw(token),
            S::TokenIntegrityLevel,
            &label as *const _ as *const c_void,
            std::mem::size_of::<S::TOKEN_MANDATORY_LABEL>() as u32 + sid_len,
        )
    };
    check(
        ok,
        "lowering the command's token to Medium integrity",
        "SetTokenInformation",
        "",
    )
}

/// A self-relative security descriptor built from SDDL.
pub struct SecurityDescriptor {
    sd: LocalBox,
    len: u32,
}

impl SecurityDescriptor {
    /// `ConvertStringSecurityDescriptorToSecurityDescriptorW`.
    pub fn from_sddl(sddl: &str) -> Result<Self> {
        let w = wide(sddl);
        let mut sd: S::PSECURITY_DESCRIPTOR = null_mut();
        let mut len = 0u32;
        // SAFETY: w is NUL-terminated; sd receives a LocalAlloc'd descriptor.
        let ok = unsafe {
            A::ConvertStringSecurityDescriptorToSecurityDescriptorW(
                w.as_ptr(),
                A::SDDL_REVISION_1,
                &mut sd,
                &mut len,
            )
        };
        check_lazy(ok, || format!("parsing the security descriptor {sddl}"), "ConvertStringSecurityDescriptorToSecurityDescriptorW", "the journal may hold a DACL this Windows version cannot parse; fix the ACL by hand with icacls")?;
        Ok(SecurityDescriptor {
            sd: LocalBox(sd),
            len,
        })
    }

    fn ptr(&self) -> S::PSECURITY_DESCRIPTOR {
        self.sd.0
    }

    /// The DACL pointer (into the descriptor) and whether it is protected.
    fn dacl(&self) -> Result<(*mut S::ACL, bool)> {
        let mut present = 0i32;
        let mut defaulted = 0i32;
        let mut acl: *mut S::ACL = null_mut();
        // SAFETY: self.sd is a valid descriptor; the outputs are valid pointers.
        let ok = unsafe {
            S::GetSecurityDescriptorDacl(self.ptr(), &mut present, &mut acl, &mut defaulted)
        };
        check(ok, "reading a DACL", "GetSecurityDescriptorDacl", "")?;
        let mut control = 0u16;
        let mut rev = 0u32;
        // SAFETY: as above.
        let ok = unsafe { S::GetSecurityDescriptorControl(self.ptr(), &mut control, &mut rev) };
        check(ok, "reading a DACL", "GetSecurityDescriptorControl", "")?;
        Ok((acl, control & S::SE_DACL_PROTECTED != 0))
    }
}

/// `CreateRestrictedToken(WRITE_RESTRICTED | DISABLE_MAX_PRIVILEGE | LUA_TOKEN)` with
/// `restricting` SIDs and `disable` SIDs made deny-only (absent ones are ignored by
/// Windows), then the default DACL `default_dacl` (SDDL `D:...`).
pub fn restricted_token(
    base: &OwnedHandle,
    restricting: &[&str],
    disable: &[&str],
    default_dacl: &str,
) -> Result<OwnedHandle> {
    let sids: Vec<Sid> = restricting
        .iter()
        .map(|s| Sid::parse(s))
        .collect::<Result<_>>()?;
    let entries: Vec<S::SID_AND_ATTRIBUTES> = sids
        .iter()
        .map(|s| S::SID_AND_ATTRIBUTES {
            Sid: s.ptr(),
            Attributes: 0,
        })
        .collect();
    let off: Vec<Sid> = disable
        .iter()
        .map(|s| Sid::parse(s))
        .collect::<Result<_>>()?;
    let off_entries: Vec<S::SID_AND_ATTRIBUTES> = off
        .iter()
        .map(|s| S::SID_AND_ATTRIBUTES {
            Sid: s.ptr(),
            Attributes: 0,
        })
        .collect();
    let mut out: F::HANDLE = null_mut();
    // SAFETY: entries and off_entries point at SIDs kept alive by `sids` and `off`;
    // out receives a new token handle.
    let ok = unsafe {
        S::CreateRestrictedToken(
            raw(base),
            S::WRITE_RESTRICTED | S::DISABLE_MAX_PRIVILEGE | S::LUA_TOKEN,
            off_entries.len() as u32,
            if off_entries.is_empty() {
                null()
            } else {
                off_entries.as_ptr()
            },
            0,
            null(),
            entries.len() as u32,
            entries.as_ptr(),
            &mut out,
        )
    };
    check(
        ok,
        "building the restricted token",
        "CreateRestrictedToken",
        "run workfence from a normal user session",
    )?;
    let token = owned(out).ok_or_else(|| {
        api(
            "building the restricted token",
            "CreateRestrictedToken",
            last_error(),
            "",
        )
    })?;
    if let Some(rid) = crate::plan::lowered_integrity(token_integrity_rid(&token)?) {
        set_token_integrity(&token, rid)?;
    }
    set_default_dacl(
        &token,
        default_dacl,
        "setting the restricted token's default DACL",
    )?;
    Ok(token)
}

// ---------------------------------------------------------------- files and DACLs

/// A file or directory opened for DACL changes; every change goes through this
/// handle to the object itself, whatever its name becomes meanwhile. A directory is
/// normally held with `FILE_LIST_DIRECTORY`, a data access, so the share mode applies
/// and, without `FILE_SHARE_DELETE`, it cannot be renamed or deleted while open; a
/// file (or a directory that refused the listing right) is held with metadata access
/// only, which share modes do not govern. An empty directory can still be made a
/// mount point through another handle; the walk never reuses its path, see
/// [`list_dir`] and [`open_child`].
pub struct AclTarget {
    handle: OwnedHandle,
    /// The final path (`GetFinalPathNameByHandleW`).
    pub final_path: String,
    /// Whether the object itself is a reparse point (junction, symlink).
    pub reparse: bool,
    /// Its reparse tag when it is one (`Some(0)`: it could not be read).
    pub reparse_tag: Option<u32>,
    /// Whether it is a directory.
    pub dir: bool,
    /// Its number of names (`nNumberOfLinks`): more than 1 for a hard-linked file.
    pub links: u32,
    /// Whether the handle may list the directory (`FILE_LIST_DIRECTORY`).
    pub listable: bool,
}

/// The volume serial number, file index and creation time (Windows file time) of
/// `path` (not following a final reparse point), opened for no access at all
/// (`GetFileInformationByHandle` needs none); `None` when it cannot be opened.
pub fn file_identity(path: &str) -> Option<(u32, u64, u64)> {
    let w = wide(path);
    // SAFETY: w is NUL-terminated; the other arguments are plain flags.
    let h = unsafe {
        FS::CreateFileW(
            w.as_ptr(),
            0,
            FS::FILE_SHARE_READ | FS::FILE_SHARE_WRITE | FS::FILE_SHARE_DELETE,
            null(),
            FS::OPEN_EXISTING,
            FS::FILE_FLAG_BACKUP_SEMANTICS | FS::FILE_FLAG_OPEN_REPARSE_POINT,
            null_mut(),
        )
    };
    let handle = owned(h)?;
    let mut info: FS::BY_HANDLE_FILE_INFORMATION = Default::default();
    // SAFETY: handle is open; info is a valid output.
    let ok = unsafe { FS::GetFileInformationByHandle(raw(&handle), &mut info) };
    let t = info.ftCreationTime;
    (ok != 0).then(|| {
        (
            info.dwVolumeSerialNumber,
            (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow),
            (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime),
        )
    })
}

/// The access an ACL change needs, and what the walk needs to list a directory.
const ACL_ACCESS: u32 =
    FS::READ_CONTROL | FS::WRITE_DAC | FS::FILE_READ_ATTRIBUTES | FS::SYNCHRONIZE;

/// Whether an open failed for want of the listing right (or because listing reads
/// data, which another process's share mode may exclude): then it is retried without.
fn list_refused(code: u32) -> bool {
    code == F::ERROR_ACCESS_DENIED || code == F::ERROR_SHARING_VIOLATION
}

/// Opens `path` (not following a final reparse point), with `FILE_LIST_DIRECTORY`
/// when that is allowed, so that a directory can be walked from this handle.
pub fn open_for_acl(path: &str) -> Result<Option<AclTarget>> {
    let w = wide(path);
    let open = |access: u32| {
        // SAFETY: w is NUL-terminated and outlives the call; the other arguments are
        // plain flags; the returned handle is checked by `owned`.
        let h = unsafe {
            FS::CreateFileW(
                w.as_ptr(),
                access,
                FS::FILE_SHARE_READ | FS::FILE_SHARE_WRITE,
                null(),
                FS::OPEN_EXISTING,
                FS::FILE_FLAG_BACKUP_SEMANTICS | FS::FILE_FLAG_OPEN_REPARSE_POINT,
                null_mut(),
            )
        };
        owned(h).ok_or_else(last_error)
    };
    let (handle, listable) = match open(ACL_ACCESS | FS::FILE_LIST_DIRECTORY) {
        Ok(h) => (h, true),
        Err(code) if list_refused(code) => match open(ACL_ACCESS) {
            Ok(h) => (h, false),
            Err(code) => return open_failed(path, code, "CreateFileW"),
        },
        Err(code) => return open_failed(path, code, "CreateFileW"),
    };
    describe(handle, path, listable).map(Some)
}

fn open_failed(path: &str, code: u32, name: &'static str) -> Result<Option<AclTarget>> {
    if code == F::ERROR_FILE_NOT_FOUND || code == F::ERROR_PATH_NOT_FOUND {
        return Ok(None);
    }
    Err(api(
        &format!("opening {path} to change its ACL"),
        name,
        code,
        "close programs that hold it open exclusively, or check that you own it",
    ))
}

/// Reads what the walk decides on from an open handle: attributes, link count,
/// reparse tag and final path, all of the object the handle holds (not of whatever a
/// path names now).
fn describe(handle: OwnedHandle, path: &str, listable: bool) -> Result<AclTarget> {
    let mut info: FS::BY_HANDLE_FILE_INFORMATION = Default::default();
    // SAFETY: handle is open; info is a valid output.
    let ok = unsafe { FS::GetFileInformationByHandle(raw(&handle), &mut info) };
    check_lazy(
        ok,
        || format!("inspecting {path}"),
        "GetFileInformationByHandle",
        "",
    )?;
    let reparse = info.dwFileAttributes & FS::FILE_ATTRIBUTE_REPARSE_POINT != 0;
    let reparse_tag = reparse.then(|| {
        let mut tag = FS::FILE_ATTRIBUTE_TAG_INFO {
            FileAttributes: 0,
            ReparseTag: 0,
        };
        // SAFETY: handle is open; tag is a valid output of the size given.
        let ok = unsafe {
            FS::GetFileInformationByHandleEx(
                raw(&handle),
                FS::FileAttributeTagInfo,
                (&raw mut tag).cast(),
                std::mem::size_of::<FS::FILE_ATTRIBUTE_TAG_INFO>() as u32,
            )
        };
        // 0 (unknown) is treated as a link by the propagation walk.
        if ok != 0 {
            tag.ReparseTag
        } else {
            0
        }
    });
    let final_path = final_path(&handle, path)?;
    Ok(AclTarget {
        handle,
        final_path,
        reparse,
        reparse_tag,
        dir: info.dwFileAttributes & FS::FILE_ATTRIBUTE_DIRECTORY != 0,
        links: info.nNumberOfLinks,
        listable,
    })
}

/// `GetFinalPathNameByHandleW` (normalized, with a drive letter).
fn final_path(handle: &OwnedHandle, path: &str) -> Result<String> {
    let mut buf = vec![0u16; 1024];
    loop {
        // SAFETY: buf and its length match.
        let n = unsafe {
            FS::GetFinalPathNameByHandleW(
                raw(handle),
                buf.as_mut_ptr(),
                buf.len() as u32,
                FS::FILE_NAME_NORMALIZED | FS::VOLUME_NAME_DOS,
            )
        } as usize;
        if n == 0 {
            let code = last_error();
            return Err(api(
                &format!("resolving {path}"),
                "GetFinalPathNameByHandleW",
                code,
                "",
            ));
        }
        if n < buf.len() {
            buf.truncate(n);
            return Ok(String::from_utf16_lossy(&buf));
        }
        buf.resize(n + 1, 0);
    }
}

/// Opens the child `name` (one component, [`d::child_name_ok`]) of the directory
/// `parent` by name relative to the parent's handle (`NtCreateFile` with
/// `OBJECT_ATTRIBUTES.RootDirectory`), with `FILE_OPEN_REPARSE_POINT`: neither the
/// parent's path (which may now lead elsewhere) nor a reparse point on the child is
/// followed. With `list`, asks for `FILE_LIST_DIRECTORY` too (retried without when
/// refused). `Ok(None)`: the child is gone.
pub fn open_child(parent: &AclTarget, name: &[u16], list: bool) -> Result<Option<AclTarget>> {
    let shown = format!("{}\\{}", parent.final_path, String::from_utf16_lossy(name));
    if !d::child_name_ok(name) || name.len() * 2 > usize::from(u16::MAX) {
        return Err(WindowsError::Reparse {
            path: shown.clone(),
            actual: "a listed name that is not one path component".into(),
        });
    }
    let us = F::UNICODE_STRING {
        Length: (name.len() * 2) as u16,
        MaximumLength: (name.len() * 2) as u16,
        // The name is only read (NtCreateFile takes a const OBJECT_ATTRIBUTES).
        Buffer: name.as_ptr().cast_mut(),
    };
    let oa = WF::OBJECT_ATTRIBUTES {
        Length: std::mem::size_of::<WF::OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: raw(&parent.handle),
        ObjectName: &us,
        Attributes: 0,
        SecurityDescriptor: null(),
        SecurityQualityOfService: null(),
    };
    let open = |access: u32| -> std::result::Result<OwnedHandle, i32> {
        let mut h: F::HANDLE = null_mut();
        let mut iosb: windows_sys::Win32::System::IO::IO_STATUS_BLOCK = Default::default();
        // SAFETY: oa points to us (whose buffer is `name`, alive for the call, of the
        // length given) and to the parent's open directory handle; h and iosb are
        // valid outputs; no allocation size or EA buffer. SYNCHRONIZE is requested with
        // FILE_SYNCHRONOUS_IO_NONALERT, as that option requires.
        let status = unsafe {
            WFS::NtCreateFile(
                &mut h,
                access,
                &oa,
                &mut iosb,
                null(),
                0,
                FS::FILE_SHARE_READ | FS::FILE_SHARE_WRITE,
                WFS::FILE_OPEN,
                WFS::FILE_OPEN_REPARSE_POINT
                    | WFS::FILE_SYNCHRONOUS_IO_NONALERT
                    | WFS::FILE_OPEN_FOR_BACKUP_INTENT,
                null(),
                0,
            )
        };
        if status < 0 {
            return Err(status);
        }
        owned(h).ok_or(F::STATUS_INVALID_HANDLE)
    };
    let dos = |status: i32| {
        // SAFETY: a pure translation of a status code.
        unsafe { F::RtlNtStatusToDosError(status) }
    };
    let first = if list {
        open(ACL_ACCESS | FS::FILE_LIST_DIRECTORY)
    } else {
        open(ACL_ACCESS)
    };
    let (handle, listable) = match first {
        Ok(h) => (h, list),
        Err(st) if list && list_refused(dos(st)) => match open(ACL_ACCESS) {
            Ok(h) => (h, false),
            Err(st) => return open_failed(&shown, dos(st), "NtCreateFile"),
        },
        Err(st) => return open_failed(&shown, dos(st), "NtCreateFile"),
    };
    describe(handle, &shown, listable).map(Some)
}

/// Lists the directory `t` from its own handle (`GetFileInformationByHandleEx` with
/// `FileIdBothDirectoryInfo`, repeated until `ERROR_NO_MORE_FILES`), never by path:
/// what it returns is the contents of the directory this handle holds, even if that
/// directory has since become a mount point. Needs a [`AclTarget::listable`] handle.
pub fn list_dir(t: &AclTarget) -> Result<Vec<d::DirEntry>> {
    // u64 words: the records are 8-byte aligned.
    let mut buf = vec![0u64; 8192];
    let mut out = Vec::new();
    let mut class = FS::FileIdBothDirectoryRestartInfo;
    loop {
        // SAFETY: the handle is an open directory with FILE_LIST_DIRECTORY and
        // synchronous I/O; buf is writable for the byte length given.
        let ok = unsafe {
            FS::GetFileInformationByHandleEx(
                raw(&t.handle),
                class,
                buf.as_mut_ptr().cast(),
                (buf.len() * 8) as u32,
            )
        };
        if ok == 0 {
            let code = last_error();
            if code == F::ERROR_NO_MORE_FILES {
                return Ok(out);
            }
            return Err(api(
                &format!("listing {}", t.final_path),
                "GetFileInformationByHandleEx",
                code,
                "",
            ));
        }
        class = FS::FileIdBothDirectoryInfo;
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_le_bytes()).collect();
        let entries = d::parse_dir_entries(&bytes).map_err(|why| {
            api(
                &format!("listing {} ({why})", t.final_path),
                "GetFileInformationByHandleEx",
                F::ERROR_INVALID_DATA,
                "",
            )
        })?;
        out.extend(entries);
    }
}

impl AclTarget {
    /// The DACL as SDDL (`D:...`).
    pub fn dacl_sddl(&self) -> Result<String> {
        handle_dacl_sddl(&self.handle, &self.final_path, "check that you own it")
    }

    /// Sets the DACL from SDDL on this object only, through the pinned handle.
    ///
    /// `SetKernelObjectSecurity` (`NtSetSecurityObject`) writes the object's own
    /// descriptor and nothing else. `SetNamedSecurityInfoW` and `SetSecurityInfo`
    /// would also propagate inheritable ACEs to the existing tree below, by path,
    /// without saying what they do at a junction: workfence propagates itself
    /// (`acl::propagate`), deciding at every reparse point. The descriptor from SDDL
    /// carries the `P`/`AI` control bits with the DACL.
    pub fn set_dacl_no_propagation(&self, sddl: &str) -> Result<()> {
        let sd = SecurityDescriptor::from_sddl(sddl)?;
        // SAFETY: the handle is open with WRITE_DAC; sd is a valid self-relative
        // security descriptor alive for the call.
        let ok = unsafe {
            S::SetKernelObjectSecurity(raw(&self.handle), S::DACL_SECURITY_INFORMATION, sd.ptr())
        };
        check_lazy(
            ok,
            || format!("changing the DACL of {}", self.final_path),
            "SetKernelObjectSecurity",
            "check that you own it (icacls shows the owner); `workfence cleanup` undoes partial changes",
        )
    }
}

// ---------------------------------------------------------------- job objects

/// A job object; closing it kills every process in it (KILL_ON_JOB_CLOSE).
pub struct Job(OwnedHandle);

impl Job {
    /// Creates the job with the plan's limits.
    pub fn new(spec: &JobSpec) -> Result<Job> {
        // SAFETY: no name, default security.
        let h = unsafe { J::CreateJobObjectW(null(), null()) };
        let job = Job(owned(h).ok_or_else(|| {
            api(
                "creating the job object",
                "CreateJobObjectW",
                last_error(),
                "free some system resources and retry",
            )
        })?);
        let mut info: J::JOBOBJECT_EXTENDED_LIMIT_INFORMATION = Default::default();
        let mut flags = J::JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
            | J::JOB_OBJECT_LIMIT_ACTIVE_PROCESS
            | J::JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
        info.BasicLimitInformation.ActiveProcessLimit = spec.active_process_limit;
        if let Some(m) = spec.job_memory_limit {
            flags |= J::JOB_OBJECT_LIMIT_JOB_MEMORY;
            info.JobMemoryLimit = usize::try_from(m).unwrap_or(usize::MAX);
        }
        info.BasicLimitInformation.LimitFlags = flags;
        // SAFETY: info is a valid JOBOBJECT_EXTENDED_LIMIT_INFORMATION of the given size.
        let ok = unsafe {
            J::SetInformationJobObject(
                raw(&job.0),
                J::JobObjectExtendedLimitInformation,
                &info as *const _ as *const c_void,
                std::mem::size_of_val(&info) as u32,
            )
        };
        check(ok, "setting the job limits", "SetInformationJobObject", "")?;
        // No JOBOBJECT_BASIC_UI_RESTRICTIONS: Windows refuses to nest a job with UI
        // limits, and the runner is always in seclogon's job (see plan::JOB_NESTING).
        if let Some(pct) = spec.cpu_percent {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            // The rate is in 1/100 percent of the whole machine.
            let rate = (pct.saturating_mul(100) / cpus.max(1)).clamp(1, 10_000);
            let cpu = J::JOBOBJECT_CPU_RATE_CONTROL_INFORMATION {
                ControlFlags: J::JOB_OBJECT_CPU_RATE_CONTROL_ENABLE
                    | J::JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP,
                Anonymous: J::JOBOBJECT_CPU_RATE_CONTROL_INFORMATION_0 { CpuRate: rate },
            };
            // SAFETY: cpu is a valid JOBOBJECT_CPU_RATE_CONTROL_INFORMATION of the given size.
            let ok = unsafe {
                J::SetInformationJobObject(
                    raw(&job.0),
                    J::JobObjectCpuRateControlInformation,
                    &cpu as *const _ as *const c_void,
                    std::mem::size_of_val(&cpu) as u32,
                )
            };
            check(ok, "setting the job CPU cap", "SetInformationJobObject", "")?;
        }
        Ok(job)
    }

    /// A job whose handle was taken over from the runner.
    pub fn from_handle(h: OwnedHandle) -> Job {
        Job(h)
    }

    /// The handle value, to name the job to another process.
    pub fn handle_value(&self) -> usize {
        raw(&self.0) as usize
    }

    /// Puts a (suspended) process in the job.
    pub fn assign(&self, process: &OwnedHandle) -> Result<()> {
        // SAFETY: both handles are open.
        let ok = unsafe { J::AssignProcessToJobObject(raw(&self.0), raw(process)) };
        check(
            ok,
            "putting the command in its job object",
            "AssignProcessToJobObject",
            "workfence itself may run in a job that forbids nesting; run it from a normal console",
        )
    }

    /// Kills every process in the job.
    pub fn terminate(&self, code: u32) {
        // SAFETY: the handle is open.
        unsafe { J::TerminateJobObject(raw(&self.0), code) };
    }
}

// ---------------------------------------------------------------- processes

/// A started (suspended) process.
pub struct Child {
    /// Process handle.
    pub process: OwnedHandle,
    /// Main thread handle.
    pub thread: OwnedHandle,
    /// Process id.
    pub pid: u32,
}

impl Child {
    fn from(pi: T::PROCESS_INFORMATION) -> Option<Child> {
        Some(Child {
            process: owned(pi.hProcess)?,
            thread: owned(pi.hThread)?,
            pid: pi.dwProcessId,
        })
    }

    /// Lets the main thread run.
    pub fn resume(&self) -> Result<()> {
        resume_thread(&self.thread)
    }
}

/// `ResumeThread` on a suspended main thread.
pub fn resume_thread(thread: &OwnedHandle) -> Result<()> {
    // SAFETY: the thread handle is open.
    let r = unsafe { T::ResumeThread(raw(thread)) };
    if r == u32::MAX {
        return Err(api(
            "starting the command",
            "ResumeThread",
            last_error(),
            "",
        ));
    }
    Ok(())
}

/// A failed process creation: the Win32 error code.
#[derive(Debug, Clone, Copy)]
pub struct SpawnError(pub u32);

/// Duplicates a handle as inheritable (for the child's stdio).
pub fn inheritable(h: RawHandle) -> Result<OwnedHandle> {
    let mut out: F::HANDLE = null_mut();
    let me = current_process();
    // SAFETY: h is a handle of this process; out receives a new handle.
    let ok = unsafe {
        F::DuplicateHandle(
            me,
            h as F::HANDLE,
            me,
            &mut out,
            0,
            1,
            F::DUPLICATE_SAME_ACCESS,
        )
    };
    check(
        ok,
        "passing stdio to the command",
        "DuplicateHandle",
        "run workfence with valid standard handles",
    )?;
    owned(out).ok_or_else(|| {
        api(
            "passing stdio to the command",
            "DuplicateHandle",
            last_error(),
            "",
        )
    })
}

/// A `PROC_THREAD_ATTRIBUTE_LIST`, freed on drop.
struct AttrList {
    buf: Vec<u64>,
}

impl AttrList {
    fn new(count: u32) -> std::result::Result<AttrList, u32> {
        let mut size = 0usize;
        // SAFETY: a size query with a null list.
        unsafe { T::InitializeProcThreadAttributeList(null_mut(), count, 0, &mut size) };
        let mut buf = vec![0u64; size.div_ceil(8) + 1];
        // SAFETY: buf holds at least `size` bytes.
        let ok = unsafe {
            T::InitializeProcThreadAttributeList(
                buf.as_mut_ptr() as *mut c_void,
                count,
                0,
                &mut size,
            )
        };
        if ok == 0 {
            return Err(last_error());
        }
        Ok(AttrList { buf })
    }

    fn ptr(&mut self) -> T::LPPROC_THREAD_ATTRIBUTE_LIST {
        self.buf.as_mut_ptr() as *mut c_void
    }

    /// Returns the `GetLastError` code on failure, read before anything else runs.
    ///
    /// # Safety
    /// `value` must stay valid and unmoved until the list is dropped.
    unsafe fn set(
        &mut self,
        attr: usize,
        value: *const c_void,
        size: usize,
    ) -> std::result::Result<(), u32> {
        // SAFETY: the list is initialized; the caller keeps value alive.
        let ok = unsafe {
            T::UpdateProcThreadAttribute(self.ptr(), 0, attr, value, size, null_mut(), null())
        };
        if ok == 0 {
            Err(last_error())
        } else {
            Ok(())
        }
    }
}

impl Drop for AttrList {
    fn drop(&mut self) {
        // SAFETY: the list was initialized in `new`.
        unsafe { T::DeleteProcThreadAttributeList(self.ptr()) };
    }
}

/// How the command gets its stdio.
pub enum Stdio<'a> {
    /// These three inheritable handles, and only these.
    Handles([&'a OwnedHandle; 3]),
    /// A pseudo console.
    Pty(&'a PseudoConsole),
}

/// Where the command is created.
pub struct Placement<'a> {
    /// A job to create it in (`PROC_THREAD_ATTRIBUTE_JOB_LIST`), so that it runs no
    /// instruction outside it.
    pub job: Option<&'a Job>,
    /// `STARTUPINFO.lpDesktop` (`winsta\desktop`); `None` inherits ours.
    pub desktop: Option<&'a str>,
}

/// Starts a suspended process: with `token` through `CreateProcessAsUserW` (a restricted
/// version of our own token needs no privilege), else with `CreateProcessW`.
///
/// The error is the `GetLastError` code, read right after the failing call.
pub fn spawn(
    token: Option<&OwnedHandle>,
    app: &str,
    cmdline: &str,
    env: &[u16],
    cwd: &str,
    stdio: Stdio<'_>,
    place: Placement<'_>,
) -> std::result::Result<Child, SpawnError> {
    // Declared before the attribute list, so that they outlive it.
    let handle_list: Vec<F::HANDLE>;
    let hpc: CON::HPCON;
    let job_list: [F::HANDLE; 1];
    let flags = launch_flags(match stdio {
        Stdio::Handles(_) => Launch::Pipes,
        Stdio::Pty(_) => Launch::Pty,
    });
    let mut attrs = AttrList::new(1 + u32::from(place.job.is_some())).map_err(SpawnError)?;
    let mut si: T::STARTUPINFOEXW = Default::default();
    si.StartupInfo.cb = std::mem::size_of::<T::STARTUPINFOEXW>() as u32;
    let mut desktop_w = place.desktop.map(wide);
    if let Some(d) = desktop_w.as_mut() {
        si.StartupInfo.lpDesktop = d.as_mut_ptr();
    }
    match stdio {
        Stdio::Handles(h) => {
            handle_list = h.iter().map(|h| raw(*h)).collect();
            debug_assert_eq!(flags.std_handles, StdHandles::Given);
            si.StartupInfo.hStdInput = handle_list[0];
            si.StartupInfo.hStdOutput = handle_list[1];
            si.StartupInfo.hStdError = handle_list[2];
            // SAFETY: handle_list lives until after CreateProcess (and the list's drop).
            unsafe {
                attrs.set(
                    T::PROC_THREAD_ATTRIBUTE_HANDLE_LIST as usize,
                    handle_list.as_ptr() as *const c_void,
                    handle_list.len() * std::mem::size_of::<F::HANDLE>(),
                )
            }
            .map_err(SpawnError)?;
        }
        Stdio::Pty(pc) => {
            hpc = pc.0;
            // SAFETY: the HPCON value itself is the attribute (documented usage); pc outlives the call.
            unsafe {
                attrs.set(
                    T::PROC_THREAD_ATTRIBUTE_PSEUDOCONSOLE as usize,
                    hpc as *const c_void,
                    std::mem::size_of::<CON::HPCON>(),
                )
            }
            .map_err(SpawnError)?;
            // Null std handles with STARTF_USESTDHANDLES (decisions::launch_flags): the
            // command takes the pseudo console's, never workfence's own.
            debug_assert_eq!(flags.std_handles, StdHandles::Null);
            si.StartupInfo.hStdInput = null_mut();
            si.StartupInfo.hStdOutput = null_mut();
            si.StartupInfo.hStdError = null_mut();
        }
    }
    si.StartupInfo.dwFlags = flags.startf;
    si.StartupInfo.wShowWindow = flags.show_window;
    let inherit = i32::from(flags.inherit_handles);
    if let Some(job) = place.job {
        job_list = [raw(&job.0)];
        // SAFETY: job_list lives until after CreateProcess (and the list's drop).
        unsafe {
            attrs.set(
                T::PROC_THREAD_ATTRIBUTE_JOB_LIST as usize,
                job_list.as_ptr() as *const c_void,
                std::mem::size_of::<F::HANDLE>(),
            )
        }
        .map_err(SpawnError)?;
    }
    si.lpAttributeList = attrs.ptr();
    let app_w = wide(app);
    let mut cmd_w = wide(cmdline);
    let cwd_w = wide(cwd);
    // With pipes the command gets its own hidden console, never ours; with a ConPTY
    // the pseudo console is its console (decisions::launch_flags).
    let mut pi: T::PROCESS_INFORMATION = Default::default();
    let ok = match token {
        // SAFETY: all strings are NUL-terminated and live for the call; env is a
        // double-NUL-terminated block; si and its attribute list are initialized.
        Some(t) => unsafe {
            T::CreateProcessAsUserW(
                raw(t),
                app_w.as_ptr(),
                cmd_w.as_mut_ptr(),
                null(),
                null(),
                inherit,
                flags.creation,
                env.as_ptr() as *const c_void,
                cwd_w.as_ptr(),
                &si.StartupInfo,
                &mut pi,
            )
        },
        // SAFETY: as above.
        None => unsafe {
            T::CreateProcessW(
                app_w.as_ptr(),
                cmd_w.as_mut_ptr(),
                null(),
                null(),
                inherit,
                flags.creation,
                env.as_ptr() as *const c_void,
                cwd_w.as_ptr(),
                &si.StartupInfo,
                &mut pi,
            )
        },
    };
    // First thing after the call: nothing may overwrite the thread's last error.
    check_last_error(ok == 0, last_error, SpawnError)?;
    Child::from(pi).ok_or(SpawnError(F::ERROR_INVALID_HANDLE))
}

/// Starts a suspended process as another user (`CreateProcessWithLogonW`,
/// `LOGON_WITH_PROFILE`), with the given stdio.
pub fn spawn_with_logon(
    user: &str,
    password: &str,
    app: &str,
    cmdline: &str,
    cwd: &str,
    stdio: [&OwnedHandle; 3],
    desktop: Option<&str>,
) -> Result<Child> {
    let mut desktop_w = desktop.map(wide);
    // CREATE_NO_WINDOW is not among the flags seclogon accepts: a new console that is
    // hidden instead (decisions::launch_flags). The desktop named here is the one
    // seclogon grants the new logon SID access to (the private desktop, never the user's).
    let flags = launch_flags(Launch::Seclogon);
    debug_assert_eq!(flags.std_handles, StdHandles::Given);
    let si = T::STARTUPINFOW {
        cb: std::mem::size_of::<T::STARTUPINFOW>() as u32,
        dwFlags: flags.startf,
        wShowWindow: flags.show_window,
        lpDesktop: desktop_w.as_mut().map_or(null_mut(), |d| d.as_mut_ptr()),
        hStdInput: raw(stdio[0]),
        hStdOutput: raw(stdio[1]),
        hStdError: raw(stdio[2]),
        ..Default::default()
    };
    let (u, d, p) = (wide(user), wide("."), wide(password));
    let app_w = wide(app);
    let mut cmd_w = wide(cmdline);
    let cwd_w = wide(cwd);
    let mut pi: T::PROCESS_INFORMATION = Default::default();
    // SAFETY: all strings are NUL-terminated and live for the call; a null environment
    // gives the runner the sandbox user's own.
    let ok = unsafe {
        T::CreateProcessWithLogonW(
            u.as_ptr(),
            d.as_ptr(),
            p.as_ptr(),
            flags.logon,
            app_w.as_ptr(),
            cmd_w.as_mut_ptr(),
            flags.creation,
            null(),
            cwd_w.as_ptr(),
            &si,
            &mut pi,
        )
    };
    check_lazy(ok, || format!("starting the runner as {user}"), "CreateProcessWithLogonW", "the Secondary Logon service must run (sc start seclogon); if the password was changed, run `workfence setup` again")?;
    Child::from(pi).ok_or_else(|| {
        api(
            "starting the runner",
            "CreateProcessWithLogonW",
            last_error(),
            "",
        )
    })
}

/// Replaces the DACL of a process or thread (a kernel object) with `sddl`, protected,
/// through a handle that holds `WRITE_DAC`.
pub fn set_kernel_object_dacl(h: &OwnedHandle, sddl: &str, step: &str) -> Result<()> {
    let sd = SecurityDescriptor::from_sddl(sddl)?;
    let (acl, _) = sd.dacl()?;
    // SAFETY: the handle is open (the caller needs WRITE_DAC on it, else the call
    // fails with an error code and changes nothing); acl points into sd, alive for the
    // call; owner, group and SACL are not set, so their null pointers are not read.
    let code = unsafe {
        A::SetSecurityInfo(
            raw(h),
            A::SE_KERNEL_OBJECT,
            S::DACL_SECURITY_INFORMATION | S::PROTECTED_DACL_SECURITY_INFORMATION,
            null_mut(),
            null_mut(),
            acl,
            null(),
        )
    };
    if code != 0 {
        return Err(api(
            step,
            "SetSecurityInfo",
            code,
            "the runner is stopped; run again, and report the error if it persists",
        ));
    }
    Ok(())
}

/// Sets the default DACL of the current process's own primary token, so that every
/// object the process creates from now on without an explicit descriptor (threads,
/// a job, a ConPTY's console host, pipes) gets `sddl` instead of the logon's default.
pub fn set_own_default_dacl(sddl: &str) -> Result<()> {
    set_default_dacl(&process_token()?, sddl, "setting the runner's default DACL")
}

/// Sets `token`'s default DACL (the descriptor of objects created without one) to the
/// DACL of `sddl`. The token must be open with TOKEN_ADJUST_DEFAULT.
fn set_default_dacl(token: &OwnedHandle, sddl: &str, what: &'static str) -> Result<()> {
    let sd = SecurityDescriptor::from_sddl(sddl)?;
    let (acl, _) = sd.dacl()?;
    let dd = S::TOKEN_DEFAULT_DACL { DefaultDacl: acl };
    // SAFETY: the caller's token handle is valid and open with TOKEN_ADJUST_DEFAULT
    // (a restricted token workfence just created, or its own process token opened
    // with TOKEN_ALL_ACCESS); dd points into sd, which lives until after the call.
    let ok = unsafe {
        S::SetTokenInformation(
            raw(token),
            S::TokenDefaultDacl,
            &dd as *const _ as *const c_void,
            std::mem::size_of::<S::TOKEN_DEFAULT_DACL>() as u32,
        )
    };
    check(ok, what, "SetTokenInformation", "")
}

/// Waits for a handle; `Ok(true)` when it was signaled, `Ok(false)` on timeout.
pub fn wait(h: &OwnedHandle, timeout_ms: Option<u32>) -> Result<bool> {
    // SAFETY: the handle is open.
    let r = unsafe { T::WaitForSingleObject(raw(h), timeout_ms.unwrap_or(T::INFINITE)) };
    match r {
        F::WAIT_OBJECT_0 => Ok(true),
        F::WAIT_TIMEOUT => Ok(false),
        _ => Err(api(
            "waiting for the command",
            "WaitForSingleObject",
            last_error(),
            "",
        )),
    }
}

/// A process's exit code.
pub fn exit_code(process: &OwnedHandle) -> Result<u32> {
    let mut code = 0u32;
    // SAFETY: the handle is open; code is a valid output.
    let ok = unsafe { T::GetExitCodeProcess(raw(process), &mut code) };
    check(ok, "reading the exit status", "GetExitCodeProcess", "")?;
    Ok(code)
}

/// Kills one process (a suspended child that could not be put in its job).
pub fn terminate_process(process: &OwnedHandle, code: u32) {
    // SAFETY: the handle is open.
    unsafe { T::TerminateProcess(raw(process), code) };
}

/// Whether a handle is a character device (a console): such a handle is never passed
/// to the command, because a console input handle can inject keystrokes into the
/// host shell after the command exits (`WriteConsoleInput`, like TIOCSTI).
pub fn is_console(h: RawHandle) -> bool {
    // SAFETY: GetFileType only inspects the handle; an invalid one yields FILE_TYPE_UNKNOWN.
    unsafe { FS::GetFileType(h as F::HANDLE) == FS::FILE_TYPE_CHAR }
}

/// Whether a process id is alive (for journal recovery).
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: OpenProcess has no memory preconditions.
    let h = unsafe { T::OpenProcess(T::PROCESS_SYNCHRONIZE, 0, pid) };
    match owned(h) {
        Some(h) => matches!(wait(&h, Some(0)), Ok(false)),
        // Access denied means it exists (another user's process).
        None => last_error() == F::ERROR_ACCESS_DENIED,
    }
}

/// The Windows directory.
pub fn windows_dir() -> String {
    let mut buf = [0u16; 260];
    // SAFETY: buf and its length match.
    let n = unsafe {
        windows_sys::Win32::System::SystemInformation::GetSystemWindowsDirectoryW(
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
    };
    if n == 0 || n as usize > buf.len() {
        return "C:\\Windows".into();
    }
    from_wide(&buf[..n as usize])
}

/// The Program Files directory (`FOLDERID_ProgramFiles`), from the shell rather than
/// the `ProgramFiles` variable, which the caller's environment could point anywhere.
pub fn program_files_dir() -> Result<String> {
    let mut p: windows_sys::core::PWSTR = null_mut();
    // SAFETY: the GUID is a static; p receives a CoTaskMemAlloc'd string (freed below).
    let hr = unsafe {
        windows_sys::Win32::UI::Shell::SHGetKnownFolderPath(
            &windows_sys::Win32::UI::Shell::FOLDERID_ProgramFiles,
            0,
            null_mut(),
            &mut p,
        )
    };
    // The string is read only on success: on failure the documentation promises
    // nothing about p but that it must still be freed (CoTaskMemFree takes null).
    let s = if hr >= 0 {
        // SAFETY: on success p is a NUL-terminated string allocated for us.
        unsafe { from_wide_ptr(p) }
    } else {
        String::new()
    };
    // SAFETY: p was set by SHGetKnownFolderPath (or is still null), is freed once
    // whatever hr says, as the documentation requires, and is not used after.
    unsafe { windows_sys::Win32::System::Com::CoTaskMemFree(p as *const core::ffi::c_void) };
    if hr < 0 || s.is_empty() {
        return Err(api(
            "finding the Program Files directory",
            "SHGetKnownFolderPath",
            hr as u32,
            "",
        ));
    }
    Ok(s)
}

// ---------------------------------------------------------------- pipes and ConPTY

/// An anonymous pipe (read end, write end), not inheritable.
pub fn pipe() -> Result<(OwnedHandle, OwnedHandle)> {
    let (mut r, mut w): (F::HANDLE, F::HANDLE) = (null_mut(), null_mut());
    // SAFETY: r and w receive new handles.
    let ok = unsafe { P::CreatePipe(&mut r, &mut w, null(), 0) };
    check(ok, "creating a pipe", "CreatePipe", "")?;
    match (owned(r), owned(w)) {
        (Some(r), Some(w)) => Ok((r, w)),
        _ => Err(api("creating a pipe", "CreatePipe", last_error(), "")),
    }
}

/// A single-instance, local-only named pipe server with the given DACL.
pub fn named_pipe_server(name: &str, sddl: &str) -> Result<OwnedHandle> {
    let sd = SecurityDescriptor::from_sddl(sddl)?;
    let sa = S::SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<S::SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.ptr(),
        bInheritHandle: 0,
    };
    let w = wide(name);
    // SAFETY: w is NUL-terminated; sa points into sd, alive for the call.
    let h = unsafe {
        P::CreateNamedPipeW(
            w.as_ptr(),
            FS::PIPE_ACCESS_DUPLEX | FS::FILE_FLAG_FIRST_PIPE_INSTANCE,
            P::PIPE_TYPE_BYTE
                | P::PIPE_READMODE_BYTE
                | P::PIPE_WAIT
                | P::PIPE_REJECT_REMOTE_CLIENTS,
            1,
            65536,
            65536,
            0,
            &sa,
        )
    };
    owned(h).ok_or_else(|| {
        api(
            "creating the runner's control pipe",
            "CreateNamedPipeW",
            last_error(),
            "",
        )
    })
}

/// Waits for the client of a named pipe.
pub fn connect_pipe(server: &OwnedHandle) -> Result<()> {
    // SAFETY: the handle is a pipe server; no overlapped I/O.
    let ok = unsafe { P::ConnectNamedPipe(raw(server), null_mut()) };
    if ok == 0 && last_error() != F::ERROR_PIPE_CONNECTED {
        return Err(api(
            "waiting for the runner",
            "ConnectNamedPipe",
            last_error(),
            "",
        ));
    }
    Ok(())
}

/// A pseudo console (ConPTY), closed on drop.
pub struct PseudoConsole(CON::HPCON);

// SAFETY: an HPCON is a kernel-object handle wrapper usable from any thread.
unsafe impl Send for PseudoConsole {}

impl PseudoConsole {
    /// `CreatePseudoConsole` reading `input` and writing `output`.
    pub fn new(
        cols: i16,
        rows: i16,
        input: &OwnedHandle,
        output: &OwnedHandle,
    ) -> Result<PseudoConsole> {
        let mut hpc: CON::HPCON = 0;
        // SAFETY: both pipe handles are open; hpc receives the console.
        let hr = unsafe {
            CON::CreatePseudoConsole(
                CON::COORD { X: cols, Y: rows },
                raw(input),
                raw(output),
                0,
                &mut hpc,
            )
        };
        if hr < 0 {
            return Err(api(
                "creating the pseudo console",
                "CreatePseudoConsole",
                hr as u32,
                "ConPTY needs Windows 10 1809 or later; run without --pty",
            ));
        }
        Ok(PseudoConsole(hpc))
    }
}

impl Drop for PseudoConsole {
    fn drop(&mut self) {
        // SAFETY: hpc came from CreatePseudoConsole and is closed once.
        unsafe { CON::ClosePseudoConsole(self.0) };
    }
}

/// The console size of stdout, if it is a console.
pub fn console_size() -> Option<(i16, i16)> {
    let out = std::io::stdout();
    let mut info: CON::CONSOLE_SCREEN_BUFFER_INFO = Default::default();
    // SAFETY: the handle is stdout's; info is a valid output.
    let ok =
        unsafe { CON::GetConsoleScreenBufferInfo(out.as_raw_handle() as F::HANDLE, &mut info) };
    (ok != 0).then(|| {
        let w = info.srWindow;
        (w.Right - w.Left + 1, w.Bottom - w.Top + 1)
    })
}

// ---------------------------------------------------------------- local users and groups

fn net_err(step: &str, api_name: &'static str, code: u32) -> WindowsError {
    api(step, api_name, code, "run `workfence setup` from an elevated prompt; if a policy blocks local accounts, ask your administrator")
}

/// Creates a local user, or resets its password when it exists. Returns whether it was created.
pub fn user_add(name: &str, password: &str, comment: &str) -> Result<bool> {
    let (mut n, mut p, mut c) = (wide(name), wide(password), wide(comment));
    let info = NM::USER_INFO_1 {
        usri1_name: n.as_mut_ptr(),
        usri1_password: p.as_mut_ptr(),
        usri1_password_age: 0,
        usri1_priv: NM::USER_PRIV_USER,
        usri1_home_dir: null_mut(),
        usri1_comment: c.as_mut_ptr(),
        usri1_flags: NM::UF_SCRIPT | NM::UF_DONT_EXPIRE_PASSWD | NM::UF_PASSWD_CANT_CHANGE,
        usri1_script_path: null_mut(),
    };
    let mut parm = 0u32;
    // SAFETY: info points at buffers alive for the call.
    let r = unsafe { NM::NetUserAdd(null(), 1, &info as *const _ as *const u8, &mut parm) };
    if r == NM::NERR_Success {
        return Ok(true);
    }
    if r != NM::NERR_UserExists {
        return Err(net_err(
            &format!("creating the local user {name}"),
            "NetUserAdd",
            r,
        ));
    }
    let set = NM::USER_INFO_1003 {
        usri1003_password: p.as_mut_ptr(),
    };
    // SAFETY: set points at a buffer alive for the call.
    let r = unsafe {
        NM::NetUserSetInfo(
            null(),
            n.as_ptr(),
            1003,
            &set as *const _ as *const u8,
            &mut parm,
        )
    };
    if r != NM::NERR_Success {
        return Err(net_err(
            &format!("resetting the password of {name}"),
            "NetUserSetInfo",
            r,
        ));
    }
    Ok(false)
}

/// Deletes a local user (absent is fine).
pub fn user_del(name: &str) -> Result<()> {
    let n = wide(name);
    // SAFETY: n is NUL-terminated.
    let r = unsafe { NM::NetUserDel(null(), n.as_ptr()) };
    if r == NM::NERR_Success || r == NM::NERR_UserNotFound {
        Ok(())
    } else {
        Err(net_err(
            &format!("deleting the local user {name}"),
            "NetUserDel",
            r,
        ))
    }
}

/// Creates a local group (existing is fine).
pub fn group_add(name: &str, comment: &str) -> Result<()> {
    let (mut n, mut c) = (wide(name), wide(comment));
    let info = NM::LOCALGROUP_INFO_1 {
        lgrpi1_name: n.as_mut_ptr(),
        lgrpi1_comment: c.as_mut_ptr(),
    };
    let mut parm = 0u32;
    // SAFETY: info points at buffers alive for the call.
    let r = unsafe { NM::NetLocalGroupAdd(null(), 1, &info as *const _ as *const u8, &mut parm) };
    if r == NM::NERR_Success || r == F::ERROR_ALIAS_EXISTS || r == NM::NERR_GroupExists {
        Ok(())
    } else {
        Err(net_err(
            &format!("creating the local group {name}"),
            "NetLocalGroupAdd",
            r,
        ))
    }
}

/// Adds a member to a local group (already a member is fine).
pub fn group_add_member(group: &str, member: &str) -> Result<()> {
    let g = wide(group);
    let mut m = wide(member);
    let info = NM::LOCALGROUP_MEMBERS_INFO_3 {
        lgrmi3_domainandname: m.as_mut_ptr(),
    };
    // SAFETY: info points at a buffer alive for the call.
    let r = unsafe {
        NM::NetLocalGroupAddMembers(null(), g.as_ptr(), 3, &info as *const _ as *const u8, 1)
    };
    if r == NM::NERR_Success || r == F::ERROR_MEMBER_IN_ALIAS {
        Ok(())
    } else {
        Err(net_err(
            &format!("adding {member} to {group}"),
            "NetLocalGroupAddMembers",
            r,
        ))
    }
}

/// Deletes a local group (absent is fine).
pub fn group_del(name: &str) -> Result<()> {
    let n = wide(name);
    // SAFETY: n is NUL-terminated.
    let r = unsafe { NM::NetLocalGroupDel(null(), n.as_ptr()) };
    if r == NM::NERR_Success || r == NM::NERR_GroupNotFound || r == F::ERROR_NO_SUCH_ALIAS {
        Ok(())
    } else {
        Err(net_err(
            &format!("deleting the local group {name}"),
            "NetLocalGroupDel",
            r,
        ))
    }
}

/// The computer's NetBIOS name (`GetComputerNameExW(ComputerNameNetBIOS)`), which
/// qualifies local accounts.
fn computer_name() -> Result<String> {
    use windows_sys::Win32::System::SystemInformation as SI;
    let mut buf = [0u16; 64];
    let mut n = buf.len() as u32;
    // SAFETY: buf and n match (a NetBIOS name is at most 15 characters); on success
    // n receives the length without the NUL.
    let ok = unsafe { SI::GetComputerNameExW(SI::ComputerNameNetBIOS, buf.as_mut_ptr(), &mut n) };
    check(ok, "reading the computer name", "GetComputerNameExW", "")?;
    Ok(String::from_utf16_lossy(
        &buf[..(n as usize).min(buf.len())],
    ))
}

/// The SID of a local account, looked up as `COMPUTER\name`
/// ([`crate::plan::local_account_name`]): an unqualified name is also searched in
/// the domain and its trusts, where someone else may hold an account of that name.
pub fn lookup_sid(name: &str) -> Result<String> {
    let n = wide(&crate::plan::local_account_name(&computer_name()?, name));
    let mut sid = vec![0u64; 16];
    let mut sid_len = (sid.len() * 8) as u32;
    let mut dom = vec![0u16; 256];
    let mut dom_len = dom.len() as u32;
    let mut use_ = 0;
    // SAFETY: buffers and lengths match.
    let ok = unsafe {
        S::LookupAccountNameW(
            null(),
            n.as_ptr(),
            sid.as_mut_ptr() as *mut c_void,
            &mut sid_len,
            dom.as_mut_ptr(),
            &mut dom_len,
            &mut use_,
        )
    };
    check_lazy(
        ok,
        || format!("looking up {name}"),
        "LookupAccountNameW",
        "run `workfence setup` again",
    )?;
    sid_string(sid.as_mut_ptr() as *mut c_void)
}

/// Deletes a user's profile directory and registry data (best effort).
pub fn delete_profile(sid: &str) {
    let s = wide(sid);
    // SAFETY: s is NUL-terminated.
    unsafe { windows_sys::Win32::UI::Shell::DeleteProfileW(s.as_ptr(), null(), null()) };
}

const USER_LIST: &str =
    "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon\\SpecialAccounts\\UserList";

/// Hides (or unhides) a user from the sign-in screen.
pub fn hide_user(name: &str, hide: bool) -> Result<()> {
    let key = wide(USER_LIST);
    let mut hk: R::HKEY = null_mut();
    // SAFETY: key is NUL-terminated; hk receives an open key.
    let r = unsafe {
        R::RegCreateKeyExW(
            R::HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            0,
            null(),
            R::REG_OPTION_NON_VOLATILE,
            R::KEY_SET_VALUE,
            null(),
            &mut hk,
            null_mut(),
        )
    };
    if r != 0 {
        return Err(api(
            "hiding the sandbox users from the sign-in screen",
            "RegCreateKeyExW",
            r,
            "run setup elevated",
        ));
    }
    struct Key(R::HKEY);
    impl Drop for Key {
        fn drop(&mut self) {
            // SAFETY: the key is open and closed once.
            unsafe { R::RegCloseKey(self.0) };
        }
    }
    let hk = Key(hk);
    let v = wide(name);
    let r = if hide {
        let zero = 0u32.to_le_bytes();
        // SAFETY: v is NUL-terminated; zero is 4 bytes.
        unsafe { R::RegSetValueExW(hk.0, v.as_ptr(), 0, R::REG_DWORD, zero.as_ptr(), 4) }
    } else {
        // SAFETY: v is NUL-terminated.
        let r = unsafe { R::RegDeleteValueW(hk.0, v.as_ptr()) };
        if r == F::ERROR_FILE_NOT_FOUND {
            0
        } else {
            r
        }
    };
    if r != 0 {
        return Err(api(
            "hiding the sandbox users from the sign-in screen",
            "RegSetValueExW",
            r,
            "run setup elevated",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- WFP

fn guid(s: &str) -> GUID {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    GUID::from_u128(u128::from_str_radix(&hex, 16).unwrap_or(0))
}

struct Engine(F::HANDLE);

impl Engine {
    fn open() -> Result<Engine> {
        let mut h: F::HANDLE = null_mut();
        // SAFETY: default session; h receives the engine handle.
        let r = unsafe {
            WFP::FwpmEngineOpen0(
                null(),
                windows_sys::Win32::System::Rpc::RPC_C_AUTHN_WINNT,
                null(),
                null(),
                &mut h,
            )
        };
        if r != 0 {
            return Err(api(
                "opening the filtering engine",
                "FwpmEngineOpen0",
                r,
                "the Base Filtering Engine service must run, and setup must be elevated",
            ));
        }
        Ok(Engine(h))
    }

    fn txn<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        // SAFETY: the engine is open.
        let r = unsafe { WFP::FwpmTransactionBegin0(self.0, 0) };
        if r != 0 {
            return Err(api(
                "starting a filter transaction",
                "FwpmTransactionBegin0",
                r,
                "",
            ));
        }
        match f() {
            Ok(v) => {
                // SAFETY: a transaction is open.
                let r = unsafe { WFP::FwpmTransactionCommit0(self.0) };
                if r != 0 {
                    return Err(api(
                        "committing the filters",
                        "FwpmTransactionCommit0",
                        r,
                        "",
                    ));
                }
                Ok(v)
            }
            Err(e) => {
                // SAFETY: a transaction is open.
                unsafe { WFP::FwpmTransactionAbort0(self.0) };
                Err(e)
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: the engine is open and closed once.
        unsafe { WFP::FwpmEngineClose0(self.0) };
    }
}

const FWP_E_ALREADY_EXISTS: u32 = F::FWP_E_ALREADY_EXISTS as u32;

fn ignore_exists(r: u32) -> u32 {
    if r == FWP_E_ALREADY_EXISTS {
        0
    } else {
        r
    }
}

/// Deletes the filters with these keys (absent ones are fine), inside the caller's
/// transaction.
fn delete_filters(engine: &Engine, keys: &[String]) {
    for k in keys {
        let key = guid(k);
        // SAFETY: key is a valid GUID; a missing filter is not an error here.
        unsafe { WFP::FwpmFilterDeleteByKey0(engine.0, &key) };
    }
}

/// Installs workfence's provider, sublayer and filters, after deleting the filters
/// with the keys `replace` (earlier versions' included), all in **one transaction**:
/// a re-run of setup never leaves a moment in which the sandbox users have no filters,
/// and a failure leaves the old ones in place.
pub fn wfp_install(replace: &[String], filters: &[WfpFilter]) -> Result<()> {
    let engine = Engine::open()?;
    let mut provider_key = guid(crate::plan::WFP_PROVIDER_KEY);
    let mut pname = wide("workfence");
    let mut sname = wide("workfence sandbox users");
    engine.txn(|| {
        delete_filters(&engine, replace);
        let provider = WFP::FWPM_PROVIDER0 {
            providerKey: provider_key,
            displayData: WFP::FWPM_DISPLAY_DATA0 {
                name: pname.as_mut_ptr(),
                description: null_mut(),
            },
            flags: WFP::FWPM_PROVIDER_FLAG_PERSISTENT,
            ..Default::default()
        };
        // SAFETY: provider points at buffers alive for the call.
        let r = ignore_exists(unsafe { WFP::FwpmProviderAdd0(engine.0, &provider, null_mut()) });
        if r != 0 {
            return Err(api("adding the WFP provider", "FwpmProviderAdd0", r, ""));
        }
        let sub = WFP::FWPM_SUBLAYER0 {
            subLayerKey: guid(crate::plan::WFP_SUBLAYER_KEY),
            displayData: WFP::FWPM_DISPLAY_DATA0 {
                name: sname.as_mut_ptr(),
                description: null_mut(),
            },
            flags: WFP::FWPM_SUBLAYER_FLAG_PERSISTENT,
            providerKey: &mut provider_key,
            weight: 0x8000,
            ..Default::default()
        };
        // SAFETY: sub points at buffers alive for the call.
        let r = ignore_exists(unsafe { WFP::FwpmSubLayerAdd0(engine.0, &sub, null_mut()) });
        if r != 0 {
            return Err(api("adding the WFP sublayer", "FwpmSubLayerAdd0", r, ""));
        }
        for f in filters {
            add_filter(&engine, f, &mut provider_key)?;
        }
        Ok(())
    })
}

fn add_filter(engine: &Engine, f: &WfpFilter, provider_key: &mut GUID) -> Result<()> {
    let key = guid(&f.key);
    // Replace an older copy of the same filter.
    // SAFETY: key is a valid GUID.
    unsafe { WFP::FwpmFilterDeleteByKey0(engine.0, &key) };
    // Condition values point into these boxes, which live until the call returns.
    let mut sds: Vec<(SecurityDescriptor, Box<WFP::FWP_BYTE_BLOB>)> = Vec::new();
    let mut v6: Vec<Box<WFP::FWP_BYTE_ARRAY16>> = Vec::new();
    let mut conds: Vec<WFP::FWPM_FILTER_CONDITION0> = Vec::new();
    for c in &f.conditions {
        let mut cond = WFP::FWPM_FILTER_CONDITION0 {
            matchType: WFP::FWP_MATCH_EQUAL,
            ..Default::default()
        };
        match c {
            WfpCondition::User(sid) => {
                let sd = SecurityDescriptor::from_sddl(&format!("D:(A;;CC;;;{sid})"))?;
                let mut blob = Box::new(WFP::FWP_BYTE_BLOB {
                    size: sd.len,
                    data: sd.ptr() as *mut u8,
                });
                cond.fieldKey = WFP::FWPM_CONDITION_ALE_USER_ID;
                cond.conditionValue.r#type = WFP::FWP_SECURITY_DESCRIPTOR_TYPE;
                cond.conditionValue.Anonymous.sd = &mut *blob;
                sds.push((sd, blob));
            }
            WfpCondition::RemoteV4(a) => {
                cond.fieldKey = WFP::FWPM_CONDITION_IP_REMOTE_ADDRESS;
                cond.conditionValue.r#type = WFP::FWP_UINT32;
                cond.conditionValue.Anonymous.uint32 = u32::from_be_bytes(*a);
            }
            WfpCondition::RemoteV6(a) => {
                let mut b = Box::new(WFP::FWP_BYTE_ARRAY16 { byteArray16: *a });
                cond.fieldKey = WFP::FWPM_CONDITION_IP_REMOTE_ADDRESS;
                cond.conditionValue.r#type = WFP::FWP_BYTE_ARRAY16_TYPE;
                cond.conditionValue.Anonymous.byteArray16 = &mut *b;
                v6.push(b);
            }
            WfpCondition::RemotePort(p) => {
                cond.fieldKey = WFP::FWPM_CONDITION_IP_REMOTE_PORT;
                cond.conditionValue.r#type = WFP::FWP_UINT16;
                cond.conditionValue.Anonymous.uint16 = *p;
            }
            WfpCondition::LocalPort(p) => {
                cond.fieldKey = WFP::FWPM_CONDITION_IP_LOCAL_PORT;
                cond.conditionValue.r#type = WFP::FWP_UINT16;
                cond.conditionValue.Anonymous.uint16 = *p;
            }
            WfpCondition::Protocol(p) => {
                cond.fieldKey = WFP::FWPM_CONDITION_IP_PROTOCOL;
                cond.conditionValue.r#type = WFP::FWP_UINT8;
                cond.conditionValue.Anonymous.uint8 = *p;
            }
            WfpCondition::Flags(bits) => {
                cond.fieldKey = WFP::FWPM_CONDITION_FLAGS;
                cond.matchType = WFP::FWP_MATCH_FLAGS_ALL_SET;
                cond.conditionValue.r#type = WFP::FWP_UINT32;
                cond.conditionValue.Anonymous.uint32 = *bits;
            }
        }
        conds.push(cond);
    }
    let mut name = wide(&f.name);
    let mut filter = WFP::FWPM_FILTER0 {
        filterKey: key,
        displayData: WFP::FWPM_DISPLAY_DATA0 {
            name: name.as_mut_ptr(),
            description: null_mut(),
        },
        flags: WFP::FWPM_FILTER_FLAG_PERSISTENT,
        providerKey: provider_key,
        layerKey: match f.layer {
            WfpLayer::AleAuthConnectV4 => WFP::FWPM_LAYER_ALE_AUTH_CONNECT_V4,
            WfpLayer::AleAuthConnectV6 => WFP::FWPM_LAYER_ALE_AUTH_CONNECT_V6,
            WfpLayer::AleAuthRecvAcceptV4 => WFP::FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4,
            WfpLayer::AleAuthRecvAcceptV6 => WFP::FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6,
            WfpLayer::AleAuthListenV4 => WFP::FWPM_LAYER_ALE_AUTH_LISTEN_V4,
            WfpLayer::AleAuthListenV6 => WFP::FWPM_LAYER_ALE_AUTH_LISTEN_V6,
            WfpLayer::AleResourceAssignmentV4 => WFP::FWPM_LAYER_ALE_RESOURCE_ASSIGNMENT_V4,
            WfpLayer::AleResourceAssignmentV6 => WFP::FWPM_LAYER_ALE_RESOURCE_ASSIGNMENT_V6,
        },
        subLayerKey: guid(crate::plan::WFP_SUBLAYER_KEY),
        numFilterConditions: conds.len() as u32,
        filterCondition: conds.as_mut_ptr(),
        ..Default::default()
    };
    filter.weight.r#type = WFP::FWP_UINT8;
    filter.weight.Anonymous.uint8 = f.weight;
    filter.action.r#type = match f.action {
        WfpAction::Permit => WFP::FWP_ACTION_PERMIT,
        WfpAction::Block => WFP::FWP_ACTION_BLOCK,
    };
    let mut id = 0u64;
    // SAFETY: filter and everything it points to (name, conds, sds, v6) live until the call returns.
    let r = unsafe { WFP::FwpmFilterAdd0(engine.0, &filter, null_mut(), &mut id) };
    drop((sds, v6));
    if r != 0 {
        return Err(api(
            &format!("adding the WFP filter '{}'", f.name),
            "FwpmFilterAdd0",
            r,
            "run setup elevated; the Base Filtering Engine service must run",
        ));
    }
    Ok(())
}

/// For each filter key, whether the filter exists (`FwpmFilterGetByKey0`): `Some(true)`
/// found, `Some(false)` not found, `None` when the engine would not say (reading
/// filters may need elevation).
pub fn wfp_filters_present(keys: &[String]) -> Result<Vec<Option<bool>>> {
    let engine = Engine::open()?;
    Ok(keys
        .iter()
        .map(|k| {
            let key = guid(k);
            let mut f: *mut WFP::FWPM_FILTER0 = null_mut();
            // SAFETY: the engine is open; key is a valid GUID alive for the call; f
            // receives memory the engine allocates, freed below.
            let r = unsafe { WFP::FwpmFilterGetByKey0(engine.0, &key, &mut f) };
            if !f.is_null() {
                let mut p = f.cast::<c_void>();
                // SAFETY: p was allocated by FwpmFilterGetByKey0 and is freed once.
                unsafe { WFP::FwpmFreeMemory0(&mut p) };
            }
            match r {
                0 => Some(true),
                r if r == F::FWP_E_FILTER_NOT_FOUND as u32 => Some(false),
                _ => None,
            }
        })
        .collect())
}

/// Removes the filters with these keys (absent is fine), then workfence's sublayer and
/// provider. Pass [`crate::plan::all_filter_keys`] to remove earlier versions' too.
pub fn wfp_uninstall(keys: &[String]) -> Result<()> {
    let engine = Engine::open()?;
    engine.txn(|| {
        delete_filters(&engine, keys);
        let sub = guid(crate::plan::WFP_SUBLAYER_KEY);
        let prov = guid(crate::plan::WFP_PROVIDER_KEY);
        // SAFETY: valid GUIDs; missing objects are not errors here.
        unsafe { WFP::FwpmSubLayerDeleteByKey0(engine.0, &sub) };
        // SAFETY: as above.
        unsafe { WFP::FwpmProviderDeleteByKey0(engine.0, &prov) };
        Ok(())
    })
}

/// Copies a handle out of another process (for the runner's child process handle).
pub fn duplicate_from(process: &OwnedHandle, value: usize) -> Result<OwnedHandle> {
    let mut out: F::HANDLE = null_mut();
    let me = current_process();
    // SAFETY: `process` is open with PROCESS_DUP_HANDLE; `value` names a handle in it
    // (an invalid value only makes the call fail); out receives a new handle.
    let ok = unsafe {
        F::DuplicateHandle(
            raw(process),
            value as F::HANDLE,
            me,
            &mut out,
            0,
            0,
            F::DUPLICATE_SAME_ACCESS,
        )
    };
    check(
        ok,
        "taking over the command's process handle from the runner",
        "DuplicateHandle",
        "",
    )?;
    owned(out).ok_or_else(|| {
        api(
            "taking over the command's process handle",
            "DuplicateHandle",
            last_error(),
            "",
        )
    })
}

/// A handle's numeric value, to name it to another process.
pub fn handle_value(h: &OwnedHandle) -> usize {
    raw(h) as usize
}

/// Puts our console in raw VT mode for `--pty` (keys pass through as escape sequences,
/// output interprets them); the previous modes are restored on drop.
pub struct RawConsole {
    saved: Vec<(F::HANDLE, u32)>,
}

impl RawConsole {
    /// Switches stdin and stdout if they are consoles.
    pub fn enable() -> RawConsole {
        let mut saved = Vec::new();
        let stdin = std::io::stdin().as_raw_handle() as F::HANDLE;
        let stdout = std::io::stdout().as_raw_handle() as F::HANDLE;
        for (h, clear, set) in [
            (
                stdin,
                CON::ENABLE_LINE_INPUT | CON::ENABLE_ECHO_INPUT | CON::ENABLE_PROCESSED_INPUT,
                CON::ENABLE_VIRTUAL_TERMINAL_INPUT,
            ),
            (
                stdout,
                0,
                CON::ENABLE_VIRTUAL_TERMINAL_PROCESSING | CON::DISABLE_NEWLINE_AUTO_RETURN,
            ),
        ] {
            let mut mode = 0u32;
            // SAFETY: h is one of our std handles; mode is a valid output.
            if unsafe { CON::GetConsoleMode(h, &mut mode) } == 0 {
                continue;
            }
            // SAFETY: h is a console handle (GetConsoleMode succeeded).
            if unsafe { CON::SetConsoleMode(h, (mode & !clear) | set) } != 0 {
                saved.push((h, mode));
            }
        }
        RawConsole { saved }
    }
}

impl Drop for RawConsole {
    fn drop(&mut self) {
        for (h, mode) in &self.saved {
            // SAFETY: h is a console handle of this process whose mode we changed.
            unsafe { CON::SetConsoleMode(*h, *mode) };
        }
    }
}

// ---------------------------------------------------------------- control pipe client

/// The process id of a named pipe's connected client.
pub fn pipe_client_pid(server: &OwnedHandle) -> Result<u32> {
    let mut pid = 0u32;
    // SAFETY: the handle is a connected pipe server; pid is a valid output.
    let ok = unsafe { P::GetNamedPipeClientProcessId(raw(server), &mut pid) };
    check(
        ok,
        "checking who opened the runner's control pipe",
        "GetNamedPipeClientProcessId",
        "",
    )?;
    Ok(pid)
}

// ---------------------------------------------------------------- private desktop

/// Held while the process is switched to a run's window station around
/// `CreateDesktopW`: the window station is the whole process's, so two sandboxes
/// started at once from different threads would otherwise create a desktop on the
/// other's window station, or switch back to the wrong one.
static WINSTA_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A window station and a desktop in it, created for one run and closed on drop
/// (Windows destroys them when the last handle and the last process on them are gone).
/// A window station of its own, not only a desktop, because the clipboard, global atoms
/// and hooks belong to the window station: on a desktop of the user's `WinSta0`, the
/// command could still read the user's clipboard.
pub struct PrivateDesktop {
    winsta: SD::HWINSTA,
    desktop: SD::HDESK,
    /// `winsta\desktop`, for `STARTUPINFO.lpDesktop`.
    pub name: String,
}

impl PrivateDesktop {
    /// `CreateWindowStationW` and `CreateDesktopW`, both with the DACL `sddl`. The
    /// desktop is created while our process is switched to the new window station
    /// (`CreateDesktopW` has no window station argument), then switched back.
    pub fn create(winsta_name: &str, sddl: &str) -> Result<PrivateDesktop> {
        let sd = SecurityDescriptor::from_sddl(sddl)?;
        let sa = S::SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<S::SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: sd.ptr(),
            bInheritHandle: 0,
        };
        let hint = "run workfence from a normal user session";
        let w = wide(winsta_name);
        // SAFETY: w is NUL-terminated; sa points into sd, alive for the call.
        let ws = unsafe { SD::CreateWindowStationW(w.as_ptr(), 0, F::GENERIC_ALL, &sa) };
        if ws.is_null() {
            return Err(api(
                "creating the run's window station",
                "CreateWindowStationW",
                last_error(),
                hint,
            ));
        }
        let d = wide("default");
        // The lock is held from before the switch to after the switch back
        // (decisions::with_window_station).
        let switched = d::with_window_station(
            &WINSTA_SWITCH,
            || {
                // SAFETY: returns the current window station (not to be closed).
                let old = unsafe { SD::GetProcessWindowStation() };
                // SAFETY: ws is a window station handle just created.
                let ok = unsafe { SD::SetProcessWindowStation(ws) };
                check_last_error(ok == 0, last_error, |code| code).map(|()| old)
            },
            || {
                // SAFETY: d is NUL-terminated; sa points into sd, alive for the call; no
                // device or mode is passed.
                let desktop = unsafe {
                    SD::CreateDesktopW(d.as_ptr(), null(), null(), 0, F::GENERIC_ALL, &sa)
                };
                // Read here: the switch back would overwrite it.
                (desktop, last_error())
            },
            |old| {
                // SAFETY: old is the window station we were on; switching back cannot
                // leave us without one.
                unsafe { SD::SetProcessWindowStation(old) };
            },
        );
        let (desktop, code) = match switched {
            Ok(r) => r,
            Err(code) => {
                // SAFETY: ws is open and closed once here.
                unsafe { SD::CloseWindowStation(ws) };
                return Err(api(
                    "switching to the run's window station",
                    "SetProcessWindowStation",
                    code,
                    hint,
                ));
            }
        };
        if desktop.is_null() {
            // SAFETY: ws is open and closed once here.
            unsafe { SD::CloseWindowStation(ws) };
            return Err(api(
                "creating the run's private desktop",
                "CreateDesktopW",
                code,
                hint,
            ));
        }
        Ok(PrivateDesktop {
            winsta: ws,
            desktop,
            name: format!("{winsta_name}\\default"),
        })
    }
}

impl Drop for PrivateDesktop {
    fn drop(&mut self) {
        // SAFETY: both handles came from the Create calls above and are closed once.
        unsafe { SD::CloseDesktop(self.desktop) };
        // SAFETY: as above.
        unsafe { SD::CloseWindowStation(self.winsta) };
    }
}

// ---------------------------------------------------------------- program lookup

/// The reparse tag of a file, if it is a reparse point (`FindFirstFileW` reports it in
/// `dwReserved0` without opening the file, which an app alias would refuse).
pub fn reparse_tag(path: &str) -> Option<u32> {
    let w = wide(path);
    let mut data: FS::WIN32_FIND_DATAW = Default::default();
    // SAFETY: w is NUL-terminated; data is a valid output.
    let h = unsafe { FS::FindFirstFileW(w.as_ptr(), &mut data) };
    if h == F::INVALID_HANDLE_VALUE {
        return None;
    }
    // SAFETY: h is a find handle just returned, closed once.
    unsafe { FS::FindClose(h) };
    (data.dwFileAttributes & FS::FILE_ATTRIBUTE_REPARSE_POINT != 0).then_some(data.dwReserved0)
}

// ---------------------------------------------------------------- the null device

fn open_null(access: u32) -> Result<OwnedHandle> {
    let w = wide("\\\\.\\NUL");
    // SAFETY: w is NUL-terminated; the other arguments are plain flags.
    let h = unsafe {
        FS::CreateFileW(
            w.as_ptr(),
            access,
            FS::FILE_SHARE_READ | FS::FILE_SHARE_WRITE,
            null(),
            FS::OPEN_EXISTING,
            0,
            null_mut(),
        )
    };
    owned(h).ok_or_else(|| {
        api(
            "opening the null device",
            "CreateFileW",
            last_error(),
            "run `workfence setup` from an elevated prompt",
        )
    })
}

/// The DACL of an open file or device handle (with READ_CONTROL) as SDDL (`D:...`).
fn handle_dacl_sddl(h: &OwnedHandle, what: &str, fix: &str) -> Result<String> {
    let mut sd: S::PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: the handle has READ_CONTROL; sd receives a LocalAlloc'd descriptor.
    let code = unsafe {
        A::GetSecurityInfo(
            raw(h),
            A::SE_FILE_OBJECT,
            S::DACL_SECURITY_INFORMATION,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
            &mut sd,
        )
    };
    if code != 0 {
        return Err(api(
            &format!("reading the DACL of {what}"),
            "GetSecurityInfo",
            code,
            fix,
        ));
    }
    let sd = LocalBox(sd);
    let mut s: PWSTR = null_mut();
    // SAFETY: sd is valid; s receives a LocalAlloc'd string.
    let ok = unsafe {
        A::ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd.0,
            A::SDDL_REVISION_1,
            S::DACL_SECURITY_INFORMATION,
            &mut s,
            null_mut(),
        )
    };
    check(
        ok,
        "formatting a DACL",
        "ConvertSecurityDescriptorToStringSecurityDescriptorW",
        "",
    )?;
    let _s = LocalBox(s as *mut c_void);
    // SAFETY: s is NUL-terminated.
    Ok(unsafe { from_wide_ptr(s) })
}

/// The owner and DACL of `path` as SDDL (`O:..D:..`), read from a handle opened
/// without following a final reparse point, and whether the object is a reparse
/// point; `None` when it does not exist.
pub fn owner_and_dacl(path: &str) -> Result<Option<(String, bool)>> {
    let w = wide(path);
    // SAFETY: w is NUL-terminated; the other arguments are plain flags; the handle
    // is checked by `owned`.
    let h = unsafe {
        FS::CreateFileW(
            w.as_ptr(),
            FS::READ_CONTROL | FS::FILE_READ_ATTRIBUTES,
            FS::FILE_SHARE_READ | FS::FILE_SHARE_WRITE | FS::FILE_SHARE_DELETE,
            null(),
            FS::OPEN_EXISTING,
            FS::FILE_FLAG_BACKUP_SEMANTICS | FS::FILE_FLAG_OPEN_REPARSE_POINT,
            null_mut(),
        )
    };
    let Some(handle) = owned(h) else {
        let code = last_error();
        if code == F::ERROR_FILE_NOT_FOUND || code == F::ERROR_PATH_NOT_FOUND {
            return Ok(None);
        }
        return Err(api(&format!("opening {path}"), "CreateFileW", code, ""));
    };
    let mut info: FS::BY_HANDLE_FILE_INFORMATION = Default::default();
    // SAFETY: handle is open; info is a valid output.
    let ok = unsafe { FS::GetFileInformationByHandle(raw(&handle), &mut info) };
    check_lazy(
        ok,
        || format!("inspecting {path}"),
        "GetFileInformationByHandle",
        "",
    )?;
    let reparse = info.dwFileAttributes & FS::FILE_ATTRIBUTE_REPARSE_POINT != 0;
    let what = S::OWNER_SECURITY_INFORMATION | S::DACL_SECURITY_INFORMATION;
    let mut sd: S::PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: the handle has READ_CONTROL; sd receives a LocalAlloc'd descriptor,
    // freed by the LocalBox below.
    let code = unsafe {
        A::GetSecurityInfo(
            raw(&handle),
            A::SE_FILE_OBJECT,
            what,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
            &mut sd,
        )
    };
    if code != 0 {
        return Err(api(
            &format!("reading the owner and DACL of {path}"),
            "GetSecurityInfo",
            code,
            "",
        ));
    }
    let sd = LocalBox(sd);
    let mut s: PWSTR = null_mut();
    // SAFETY: sd is a valid descriptor; s receives a LocalAlloc'd string.
    let ok = unsafe {
        A::ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd.0,
            A::SDDL_REVISION_1,
            what,
            &mut s,
            null_mut(),
        )
    };
    check(
        ok,
        "formatting a security descriptor",
        "ConvertSecurityDescriptorToStringSecurityDescriptorW",
        "",
    )?;
    let _s = LocalBox(s as *mut c_void);
    // SAFETY: on success s is a NUL-terminated string, alive until _s drops.
    Ok(Some((unsafe { from_wide_ptr(s) }, reparse)))
}

/// Creates the directory `path` with the security descriptor `sddl` (fails when it
/// exists).
pub fn create_dir_with_sddl(path: &str, sddl: &str) -> Result<()> {
    let sd = SecurityDescriptor::from_sddl(sddl)?;
    let sa = S::SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<S::SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.ptr(),
        bInheritHandle: 0,
    };
    let w = wide(path);
    // SAFETY: w is NUL-terminated; sa points into sd, alive for the call.
    let ok = unsafe { FS::CreateDirectoryW(w.as_ptr(), &sa) };
    check_lazy(ok, || format!("creating {path}"), "CreateDirectoryW", "")
}

/// Creates the file `path` (it must not exist) with the security descriptor `sddl`,
/// open for writing.
pub fn create_file_with_sddl(path: &str, sddl: &str) -> Result<std::fs::File> {
    let sd = SecurityDescriptor::from_sddl(sddl)?;
    let sa = S::SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<S::SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.ptr(),
        bInheritHandle: 0,
    };
    let w = wide(path);
    // SAFETY: w is NUL-terminated; sa points into sd, alive for the call; the handle
    // is checked by `owned`.
    let h = unsafe {
        FS::CreateFileW(
            w.as_ptr(),
            F::GENERIC_WRITE,
            0,
            &sa,
            FS::CREATE_NEW,
            FS::FILE_ATTRIBUTE_NORMAL,
            null_mut(),
        )
    };
    match owned(h) {
        Some(h) => Ok(std::fs::File::from(h)),
        None => {
            let code = last_error();
            Err(api(&format!("creating {path}"), "CreateFileW", code, ""))
        }
    }
}

/// The null device's DACL as SDDL (readable without elevation).
pub fn null_device_dacl() -> Result<String> {
    let h = open_null(FS::READ_CONTROL)?;
    handle_dacl_sddl(&h, "the null device", "")
}

/// Replaces the null device's DACL (elevated; lasts until the next boot).
pub fn set_null_device_dacl(sddl: &str) -> Result<()> {
    let h = open_null(FS::READ_CONTROL | FS::WRITE_DAC)?;
    let sd = SecurityDescriptor::from_sddl(sddl)?;
    let (acl, _) = sd.dacl()?;
    // SAFETY: the handle has WRITE_DAC; acl points into sd, alive for the call.
    let code = unsafe {
        A::SetSecurityInfo(
            raw(&h),
            A::SE_FILE_OBJECT,
            S::DACL_SECURITY_INFORMATION,
            null_mut(),
            null_mut(),
            acl,
            null(),
        )
    };
    if code != 0 {
        return Err(api(
            "granting the sandbox users the null device",
            "SetSecurityInfo",
            code,
            "run `workfence setup` from an elevated prompt",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- setup helpers

/// Creates a user's profile now (`CreateProfile`), so that the first run does not pay
/// for it; an existing profile is fine. Returns its path when Windows reports one.
pub fn create_profile(sid: &str, name: &str) -> Result<Option<String>> {
    let (s, n) = (wide(sid), wide(name));
    let mut buf = vec![0u16; 260];
    // SAFETY: s and n are NUL-terminated; buf and its length (in characters) match.
    let hr =
        unsafe { UISH::CreateProfile(s.as_ptr(), n.as_ptr(), buf.as_mut_ptr(), buf.len() as u32) };
    // HRESULT_FROM_WIN32(ERROR_ALREADY_EXISTS)
    const EXISTS: i32 = 0x8007_00B7_u32 as i32;
    if hr == EXISTS {
        return Ok(None);
    }
    if hr < 0 {
        return Err(api(
            &format!("creating the profile of {name}"),
            "CreateProfile",
            hr as u32,
            "run `workfence setup` from an elevated prompt",
        ));
    }
    Ok(Some(from_wide(&buf)))
}

/// A local user's `UF_` flags (`NetUserGetInfo`, level 1).
pub fn user_flags(name: &str) -> Result<u32> {
    let n = wide(name);
    let mut buf: *mut u8 = null_mut();
    // SAFETY: n is NUL-terminated; buf receives a buffer the API allocates.
    let r = unsafe { NM::NetUserGetInfo(null(), n.as_ptr(), 1, &mut buf) };
    if r != NM::NERR_Success {
        return Err(net_err(
            &format!("reading the account flags of {name}"),
            "NetUserGetInfo",
            r,
        ));
    }
    // SAFETY: on success buf points at a USER_INFO_1 the API allocated (it is aligned
    // for it), read once before it is freed.
    let flags = unsafe { (*(buf as *const NM::USER_INFO_1)).usri1_flags };
    // SAFETY: buf came from NetUserGetInfo and is freed once.
    unsafe { NM::NetApiBufferFree(buf as *const c_void) };
    Ok(flags)
}

/// Sets a local user's flags (`NetUserSetInfo`, level 1008) to `flags`, computed by
/// [`crate::decisions::account_flags`]: re-running setup repairs an account.
pub fn user_set_flags(name: &str, flags: u32) -> Result<()> {
    let n = wide(name);
    let info = NM::USER_INFO_1008 {
        usri1008_flags: flags,
    };
    let mut parm = 0u32;
    // SAFETY: info is a valid USER_INFO_1008 alive for the call.
    let r = unsafe {
        NM::NetUserSetInfo(
            null(),
            n.as_ptr(),
            1008,
            &info as *const _ as *const u8,
            &mut parm,
        )
    };
    if r != NM::NERR_Success {
        return Err(net_err(
            &format!("repairing the account flags of {name}"),
            "NetUserSetInfo",
            r,
        ));
    }
    Ok(())
}

struct Lsa(ID::LSA_HANDLE);

impl Lsa {
    fn open() -> Result<Lsa> {
        let attrs = ID::LSA_OBJECT_ATTRIBUTES {
            Length: std::mem::size_of::<ID::LSA_OBJECT_ATTRIBUTES>() as u32,
            ..Default::default()
        };
        let mut h: ID::LSA_HANDLE = 0;
        // SAFETY: attrs is zeroed as documented; h receives the policy handle.
        let st = unsafe {
            ID::LsaOpenPolicy(
                null(),
                &attrs,
                (ID::POLICY_CREATE_ACCOUNT | ID::POLICY_LOOKUP_NAMES) as u32,
                &mut h,
            )
        };
        if st != 0 {
            // SAFETY: no preconditions.
            let code = unsafe { ID::LsaNtStatusToWinError(st) };
            return Err(api(
                "opening the local security policy",
                "LsaOpenPolicy",
                code,
                "run `workfence setup` from an elevated prompt",
            ));
        }
        Ok(Lsa(h))
    }
}

impl Drop for Lsa {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once.
        unsafe { ID::LsaClose(self.0) };
    }
}

/// Gives `sid` the account rights `rights` (for example `SeDenyNetworkLogonRight`).
pub fn add_account_rights(sid: &str, rights: &[&str]) -> Result<()> {
    let lsa = Lsa::open()?;
    let sid_b = Sid::parse(sid)?;
    let mut bufs: Vec<Vec<u16>> = rights.iter().map(|r| r.encode_utf16().collect()).collect();
    let strs: Vec<ID::LSA_UNICODE_STRING> = bufs
        .iter_mut()
        .map(|b| ID::LSA_UNICODE_STRING {
            Length: (b.len() * 2) as u16,
            MaximumLength: (b.len() * 2) as u16,
            Buffer: b.as_mut_ptr(),
        })
        .collect();
    // SAFETY: the SID and the strings (in bufs) live for the call; lengths are in bytes.
    let st =
        unsafe { ID::LsaAddAccountRights(lsa.0, sid_b.ptr(), strs.as_ptr(), strs.len() as u32) };
    if st != 0 {
        // SAFETY: no preconditions.
        let code = unsafe { ID::LsaNtStatusToWinError(st) };
        return Err(api(
            "denying the sandbox users network, remote, batch and service logons",
            "LsaAddAccountRights",
            code,
            "run `workfence setup` from an elevated prompt",
        ));
    }
    Ok(())
}

/// Removes every account right of `sid` (best effort, before the account is deleted).
pub fn remove_account_rights(sid: &str) {
    let Ok(lsa) = Lsa::open() else { return };
    let Ok(sid_b) = Sid::parse(sid) else { return };
    // SAFETY: the SID lives for the call; AllRights needs no list.
    unsafe { ID::LsaRemoveAccountRights(lsa.0, sid_b.ptr(), true, null(), 0) };
}

// ---------------------------------------------------------------- services

/// A service control manager or service handle, closed on drop.
struct ScHandle(SV::SC_HANDLE);

impl Drop for ScHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenSCManagerW/OpenServiceW and is closed once.
        unsafe { SV::CloseServiceHandle(self.0) };
    }
}

/// Whether a service is installed with a start type other than disabled (a manual or
/// trigger-start service can be started on demand). `None`: not installed or
/// unreadable.
pub fn service_can_start(name: &str) -> Option<bool> {
    // SAFETY: local machine, default database; returns a handle or null.
    let scm = unsafe { SV::OpenSCManagerW(null(), null(), SV::SC_MANAGER_CONNECT) };
    if scm.is_null() {
        return None;
    }
    let scm = ScHandle(scm);
    let n = wide(name);
    // SAFETY: scm is open; n is NUL-terminated.
    let svc = unsafe { SV::OpenServiceW(scm.0, n.as_ptr(), SV::SERVICE_QUERY_CONFIG) };
    if svc.is_null() {
        return None;
    }
    let svc = ScHandle(svc);
    let mut need = 0u32;
    // SAFETY: a size query with a null buffer.
    unsafe { SV::QueryServiceConfigW(svc.0, null_mut(), 0, &mut need) };
    // u64 elements keep the structure aligned.
    let mut buf = vec![0u64; (need as usize).div_ceil(8) + 1];
    // SAFETY: buf holds at least `need` bytes; need is a valid output.
    let ok = unsafe {
        SV::QueryServiceConfigW(
            svc.0,
            buf.as_mut_ptr() as *mut SV::QUERY_SERVICE_CONFIGW,
            (buf.len() * 8) as u32,
            &mut need,
        )
    };
    if ok == 0 {
        return None;
    }
    // SAFETY: QueryServiceConfigW filled buf with a QUERY_SERVICE_CONFIGW.
    let cfg = unsafe { &*(buf.as_ptr() as *const SV::QUERY_SERVICE_CONFIGW) };
    Some(cfg.dwStartType != SV::SERVICE_DISABLED)
}

// ---------------------------------------------------------------- self-test probes
//
// Small actions `workfence selftest` performs from inside and outside the sandbox
// (through the safe wrappers of `crate::probes`). None of them is used by a run.

/// The number of ICMPv4 echo requests this host has sent (`GetIcmpStatistics`,
/// `icmpOutStats.dwEchos`): system-wide, so the self-test reads it from outside.
pub fn icmp_echo_requests_sent() -> Option<u64> {
    let mut m = windows_sys::Win32::NetworkManagement::IpHelper::MIB_ICMP::default();
    // SAFETY: m is a valid output of the documented type.
    let r = unsafe { windows_sys::Win32::NetworkManagement::IpHelper::GetIcmpStatistics(&mut m) };
    (r == 0).then_some(u64::from(m.stats.icmpOutStats.dwEchos))
}

/// The tick count of the last input event of this session (`GetLastInputInfo`).
pub fn last_input_tick() -> Option<u32> {
    use windows_sys::Win32::UI::Input::KeyboardAndMouse as KM;
    let mut li = KM::LASTINPUTINFO {
        cbSize: std::mem::size_of::<KM::LASTINPUTINFO>() as u32,
        dwTime: 0,
    };
    // SAFETY: li is a valid output with cbSize set.
    let ok = unsafe { KM::GetLastInputInfo(&mut li) };
    (ok != 0).then_some(li.dwTime)
}

/// Tries what a command would do to reach the user's desktop: open `WinSta0` and its
/// `Default` desktop with the rights hooks and injected input need
/// (`DESKTOP_HOOKCONTROL | DESKTOP_JOURNALPLAYBACK | DESKTOP_WRITEOBJECTS`), switch
/// this process and thread to them, and inject a one-pixel mouse move and its way
/// back (`SendInput`). Returns what succeeded, or the first step that failed.
pub fn inject_input_on_user_desktop() -> std::result::Result<String, String> {
    use windows_sys::Win32::UI::Input::KeyboardAndMouse as KM;
    let fail = |step: &str| {
        let code = last_error();
        format!("{step} failed: {}", message(code))
    };
    let winsta_name = wide("WinSta0");
    // SAFETY: the name is NUL-terminated; MAXIMUM_ALLOWED asks for what the DACL gives.
    let ws = unsafe {
        SD::OpenWindowStationW(
            winsta_name.as_ptr(),
            0,
            windows_sys::Win32::System::SystemServices::MAXIMUM_ALLOWED,
        )
    };
    if ws.is_null() {
        return Err(fail("OpenWindowStation(WinSta0)"));
    }
    // This process's window station is never closed here: the process exits right after
    // the probe, and closing the one in use would fail anyway.
    // SAFETY: ws is a window station handle just opened.
    if unsafe { SD::SetProcessWindowStation(ws) } == 0 {
        let e = fail("SetProcessWindowStation(WinSta0)");
        // SAFETY: ws is not in use by the process (the switch failed); closed once.
        unsafe { SD::CloseWindowStation(ws) };
        return Err(e);
    }
    let desk_name = wide("Default");
    let access = SD::DESKTOP_READOBJECTS
        | SD::DESKTOP_WRITEOBJECTS
        | SD::DESKTOP_HOOKCONTROL
        | SD::DESKTOP_JOURNALPLAYBACK;
    // SAFETY: the name is NUL-terminated; the flags are plain values.
    let desk = unsafe { SD::OpenDesktopW(desk_name.as_ptr(), 0, 0, access) };
    if desk.is_null() {
        return Err(fail("OpenDesktop(Default) for hooks and input"));
    }
    // SAFETY: desk was just opened; a new probe thread owns no windows or hooks.
    if unsafe { SD::SetThreadDesktop(desk) } == 0 {
        let e = fail("SetThreadDesktop(Default)");
        // SAFETY: desk is not the thread's desktop (the switch failed); closed once.
        unsafe { SD::CloseDesktop(desk) };
        return Err(e);
    }
    let mv = |dx: i32| KM::INPUT {
        r#type: KM::INPUT_MOUSE,
        Anonymous: KM::INPUT_0 {
            mi: KM::MOUSEINPUT {
                dx,
                dy: 0,
                mouseData: 0,
                dwFlags: KM::MOUSEEVENTF_MOVE,
                time: 0,
                dwExtraInfo: 0,
            },
        },
    };
    let inputs = [mv(1), mv(-1)];
    // SAFETY: inputs is an array of two INPUT structures of the size given.
    let sent = unsafe {
        KM::SendInput(
            inputs.len() as u32,
            inputs.as_ptr(),
            std::mem::size_of::<KM::INPUT>() as i32,
        )
    };
    if sent != inputs.len() as u32 {
        return Err(fail("SendInput on WinSta0\\Default"));
    }
    Ok("opened WinSta0\\Default with hook and journal rights and injected input".into())
}

/// Opens process `pid` with the rights code injection needs (`PROCESS_VM_WRITE`,
/// `PROCESS_VM_OPERATION`, `PROCESS_DUP_HANDLE`) and `PROCESS_TERMINATE`, all at
/// once, then terminates it with `code`: a visible effect the self-test judges from
/// outside.
pub fn open_and_terminate(pid: u32, code: u32) -> std::result::Result<(), String> {
    let access = T::PROCESS_VM_WRITE
        | T::PROCESS_VM_OPERATION
        | T::PROCESS_DUP_HANDLE
        | T::PROCESS_TERMINATE;
    // SAFETY: plain arguments; the result is checked below.
    let h = unsafe { T::OpenProcess(access, 0, pid) };
    let Some(h) = owned(h) else {
        let e = last_error();
        return Err(format!(
            "OpenProcess({pid}) for write, duplicate and terminate failed: {}",
            message(e)
        ));
    };
    // SAFETY: h is open with PROCESS_TERMINATE.
    if unsafe { T::TerminateProcess(raw(&h), code) } == 0 {
        let e = last_error();
        return Err(format!("TerminateProcess({pid}) failed: {}", message(e)));
    }
    Ok(())
}

/// A named pipe server created with the default security descriptor (no
/// `SECURITY_ATTRIBUTES`), as programs in the sandbox create them, in non-blocking
/// mode so that [`pipe_poll_client`] can poll it.
pub fn default_pipe_server(name: &str) -> Result<OwnedHandle> {
    let w = wide(name);
    // SAFETY: w is NUL-terminated; a null SECURITY_ATTRIBUTES means the default descriptor.
    let h = unsafe {
        P::CreateNamedPipeW(
            w.as_ptr(),
            FS::PIPE_ACCESS_DUPLEX,
            P::PIPE_TYPE_BYTE | P::PIPE_NOWAIT,
            1,
            4096,
            4096,
            0,
            null(),
        )
    };
    if h == F::INVALID_HANDLE_VALUE {
        let code = last_error();
        return Err(api(
            &format!("creating the pipe {name}"),
            "CreateNamedPipeW",
            code,
            "",
        ));
    }
    owned(h).ok_or_else(|| {
        let code = last_error();
        api(
            &format!("creating the pipe {name}"),
            "CreateNamedPipeW",
            code,
            "",
        )
    })
}

/// Whether a client has connected to a [`default_pipe_server`] (connected now, or
/// connected and gone already).
pub fn pipe_poll_client(server: &OwnedHandle) -> Result<bool> {
    // SAFETY: server is a pipe handle in non-blocking mode; no OVERLAPPED.
    let ok = unsafe { P::ConnectNamedPipe(raw(server), null_mut()) };
    let code = if ok != 0 { 0 } else { last_error() };
    d::nowait_pipe_connected(ok != 0, code)
        .map_err(|code| api("waiting for a pipe client", "ConnectNamedPipe", code, ""))
}
