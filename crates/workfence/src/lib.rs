//! workfence facade (in progress).
