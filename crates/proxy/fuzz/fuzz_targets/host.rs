//! Host and authority parsing: no panic; an accepted name is lower-case ASCII letters,
//! digits, '-' and '.', never contains a NUL or control character and is within DNS
//! lengths; normalization is idempotent; what parses prints as text that parses back to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workfence_proxy::host::normalize_name;
use workfence_proxy::{Host, Target};

fn check_name(n: &str) {
    assert!(!n.is_empty());
    assert!(n.len() <= 253, "{n:?}");
    assert!(!n.chars().any(char::is_control), "{n:?}");
    assert!(
        n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
        "{n:?}"
    );
    assert!(
        n.split('.').all(|l| !l.is_empty() && l.len() <= 63),
        "{n:?}"
    );
    assert_eq!(normalize_name(n).as_deref(), Ok(n), "not idempotent");
}

fn check(s: &str) {
    let has_control = s.chars().any(char::is_control);
    match normalize_name(s) {
        Ok(n) => {
            assert!(!has_control, "{s:?} accepted");
            check_name(&n);
        }
        Err(_) => {}
    }
    if let Ok(h) = Host::parse(s) {
        assert!(!has_control, "{s:?} accepted");
        if let Host::Name(n) = &h {
            check_name(n);
            assert_eq!(normalize_name(s).as_deref(), Ok(n.as_str()));
        }
        assert_eq!(Host::parse(&h.to_string()), Ok(h.clone()), "{s:?}");
    }
    for default in [None, Some(80)] {
        if let Ok(t) = Target::parse_authority(s, default) {
            assert!(!has_control, "{s:?} accepted");
            assert_ne!(t.port, 0);
            if let Host::Name(n) = &t.host {
                check_name(n);
            }
            assert_eq!(
                Target::parse_authority(&t.to_string(), None),
                Ok(t.clone()),
                "{s:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
