#!/usr/bin/env bash
# Type-checks and lints the Windows apply layer (src/win, tests/attacks.rs, examples)
# on a Linux host that has no Windows target installed: it copies this crate to a
# temporary directory, forces `cfg(windows)` on, makes windows-sys an ordinary
# dependency (its declarations compile on any target) and replaces `std::os::windows`
# with a small shim of the few handle and metadata traits the backend uses.
#
# It catches what the compiler catches (types, signatures of windows-sys functions and
# structs, borrows) and clippy's lints; it links nothing and runs nothing. When the
# Windows targets are installed, `cargo clippy --target x86_64-pc-windows-msvc` is the
# real check.
#
# Usage: crates/windows/tools/typecheck-on-linux.sh [clippy|check]
set -euo pipefail
crate="$(cd "$(dirname "$0")/.." && pwd)"
root="$(cd "$crate/../.." && pwd)"
work="${WF_WINCHECK_DIR:-${TMPDIR:-/tmp}/workfence-wincheck}"
mkdir -p "$work"
rm -rf "$work/src" "$work/tests" "$work/examples"
cp -r "$crate/src" "$crate/tests" "$crate/examples" "$work/"
python3 - "$crate" "$root" "$work" <<'PY'
import glob, os, re, sys
crate, root, work = sys.argv[1:]
toml = open(os.path.join(crate, "Cargo.toml")).read()
ws = open(os.path.join(root, "Cargo.toml")).read()
def wsval(key):
    return re.search(r'^%s = "([^"]+)"' % key, ws, re.M).group(1)
toml = toml.replace("rust-version.workspace = true", 'rust-version = "%s"' % wsval("rust-version"))
toml = toml.replace("version.workspace = true", 'version = "0.0.0"')
toml = toml.replace("edition.workspace = true", 'edition = "%s"' % wsval("edition"))
toml = toml.replace("license.workspace = true", 'license = "MIT"')
toml = toml.replace("workfence-policy.workspace = true",
                    'workfence-policy = { path = "%s/crates/policy" }' % root)
for name in ["thiserror", "serde", "serde_json", "insta", "tempfile", "windows-sys"]:
    spec = re.search(r'^%s = (.+)$' % re.escape(name), ws, re.M).group(1)
    if spec.startswith("{"):
        spec = spec[1:-1].strip()
    else:
        spec = "version = %s" % spec
    toml = toml.replace("%s.workspace = true" % name, "%s = { %s }" % (name, spec))
    toml = toml.replace("%s = { workspace = true," % name, "%s = { %s," % (name, spec))
toml = toml.replace("[target.'cfg(windows)'.dependencies]\n", "")
toml = toml.replace("[target.'cfg(windows)'.dev-dependencies]\n", "")
lints = re.search(r"^\[workspace\.lints\.rust\](.*?)(?=^\[profile|\Z)", ws, re.M | re.S).group(0)
toml = toml.replace("[lints]\nworkspace = true", lints.replace("workspace.lints", "lints"))
toml += "\n[workspace]\n"
open(os.path.join(work, "Cargo.toml"), "w").write(toml)
for f in glob.glob(work + "/src/**/*.rs", recursive=True) + glob.glob(work + "/tests/*.rs") + glob.glob(work + "/examples/*.rs"):
    t = open(f).read()
    inside = "/src/" in f
    t = t.replace("std::os::windows", "crate::winshim" if inside else "workfence_windows::winshim")
    t = t.replace("#![cfg(windows)]", "")
    t = t.replace("#[cfg(windows)]", '#[cfg(target_os = "linux")]')
    t = t.replace("#[cfg(not(windows))]", '#[cfg(not(target_os = "linux"))]')
    open(f, "w").write(t)
PY
cat >> "$work/src/lib.rs" <<'SHIM'

/// Stand-in for `std::os::windows` (type-checking only; never run).
#[allow(missing_docs, missing_debug_implementations, clippy::missing_safety_doc)]
pub mod winshim {
    pub mod io {
        pub type RawHandle = *mut core::ffi::c_void;
        #[derive(Debug)]
        pub struct OwnedHandle(RawHandle);
        // SAFETY: a stand-in, never run.
        unsafe impl Send for OwnedHandle {}
        impl Drop for OwnedHandle { fn drop(&mut self) {} }
        pub trait AsRawHandle { fn as_raw_handle(&self) -> RawHandle; }
        pub trait FromRawHandle { unsafe fn from_raw_handle(h: RawHandle) -> Self; }
        impl AsRawHandle for OwnedHandle { fn as_raw_handle(&self) -> RawHandle { self.0 } }
        impl FromRawHandle for OwnedHandle { unsafe fn from_raw_handle(h: RawHandle) -> Self { OwnedHandle(h) } }
        impl AsRawHandle for std::fs::File { fn as_raw_handle(&self) -> RawHandle { core::ptr::null_mut() } }
        impl AsRawHandle for std::io::Stdin { fn as_raw_handle(&self) -> RawHandle { core::ptr::null_mut() } }
        impl AsRawHandle for std::io::Stdout { fn as_raw_handle(&self) -> RawHandle { core::ptr::null_mut() } }
        impl AsRawHandle for std::io::Stderr { fn as_raw_handle(&self) -> RawHandle { core::ptr::null_mut() } }
        impl From<OwnedHandle> for std::fs::File { fn from(_: OwnedHandle) -> Self { unreachable!() } }
        impl From<std::fs::File> for OwnedHandle { fn from(_: std::fs::File) -> Self { unreachable!() } }
    }
    pub mod fs {
        pub trait MetadataExt { fn creation_time(&self) -> u64; }
        impl MetadataExt for std::fs::Metadata { fn creation_time(&self) -> u64 { 0 } }
        pub trait OpenOptionsExt { fn share_mode(&mut self, m: u32) -> &mut Self; }
        impl OpenOptionsExt for std::fs::OpenOptions { fn share_mode(&mut self, _m: u32) -> &mut Self { self } }
    }
}
SHIM
cd "$work"
CARGO_TARGET_DIR="$work/target" cargo "${1:-clippy}" --all-targets --offline -- -D warnings
