//! workfence windows backend (in progress).
