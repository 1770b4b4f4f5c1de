//! workfence linux backend (in progress).
