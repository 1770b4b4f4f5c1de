//! workfence macos backend (in progress).
