//! Rule and pattern parsing: no panic; an accepted rule prints as text that parses back to
//! the same rule; a pattern's base is a canonical name; matching agrees with the pattern
//! kind; a rule set compiled from newline-separated rules never allows a destination no
//! rule in it matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workfence_proxy::host::normalize_name;
use workfence_proxy::rules::HostMatcher;
use workfence_proxy::{Host, NamedLists, Pattern, Rule, RuleSet, Target, Verdict};

fn base(p: &Pattern) -> &str {
    match p {
        Pattern::Exact(b) | Pattern::Subdomains(b) | Pattern::ApexAndSubdomains(b) => b,
    }
}

fn check_pattern(p: &Pattern) {
    let b = base(p);
    assert_eq!(normalize_name(b).as_deref(), Ok(b), "{p:?}");
    assert_eq!(Pattern::parse(&p.to_string()).as_ref(), Ok(p));
    let sub = format!("x.{b}");
    match p {
        Pattern::Exact(_) => {
            assert!(p.matches(b));
            assert!(!p.matches(&sub));
        }
        Pattern::Subdomains(_) => {
            assert!(!p.matches(b));
            assert!(p.matches(&sub));
        }
        Pattern::ApexAndSubdomains(_) => {
            assert!(p.matches(b));
            assert!(p.matches(&sub));
        }
    }
    // A suffix that is not at a label boundary never matches.
    assert!(!p.matches(&format!("x{b}")));
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Pattern::parse(s) {
        assert!(!s.chars().any(char::is_control));
        check_pattern(&p);
    }
    if let Ok(r) = Rule::parse(s) {
        assert!(!s.chars().any(char::is_control));
        assert_eq!(Rule::parse(&r.to_string()).as_ref(), Ok(&r), "{s:?} -> {r}");
        if let HostMatcher::Name(p) = &r.host {
            check_pattern(p);
            // The rule's own name matches it when it is an exact or apex pattern.
            let t = Target {
                host: Host::Name(base(p).to_string()),
                port: r.port.unwrap_or(443),
            };
            assert_eq!(r.matches(&t), !matches!(p, Pattern::Subdomains(_)));
        }
    }
    // Allow the first line, deny the second; the others are destinations.
    let mut lines = s.split('\n');
    let (Some(a), Some(d)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(set) = RuleSet::new(&[a.to_string()], &[d.to_string()], &[], &NamedLists::new()) else {
        return;
    };
    let (ra, rd) = (Rule::parse(a).unwrap(), Rule::parse(d).unwrap());
    for dest in lines {
        let Ok(t) = Target::parse_authority(dest, Some(443)) else {
            continue;
        };
        match set.check(&t) {
            Verdict::Allowed { local_ok, .. } => {
                assert!(ra.matches(&t) && !rd.matches(&t), "{t} allowed");
                assert_eq!(local_ok, matches!(ra.host, HostMatcher::Ip(_)));
            }
            Verdict::DeniedByRule { .. } => assert!(rd.matches(&t)),
            Verdict::NoMatch => assert!(!ra.matches(&t) && !rd.matches(&t)),
        }
    }
});
