//! workfence proxy backend (in progress).
