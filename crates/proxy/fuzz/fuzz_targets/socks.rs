//! The SOCKS5 parsers (greeting, RFC 1929 auth, request) on arbitrary bytes: no panic, a
//! parsed message never claims more bytes than it was given, a request parses the same
//! from exactly its own bytes and from any longer buffer, every strict prefix of it is
//! "need more", and an accepted hostname is canonical and free of NUL/control bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workfence_proxy::socks::{parse_greeting, parse_request, parse_userpass};
use workfence_proxy::{Host, Target};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((methods, n))) = parse_greeting(data) {
        assert!(n <= data.len());
        assert_eq!(n, 2 + methods.len());
        assert_eq!(&data[2..n], &methods[..]);
    }
    if let Ok(Some(((u, p), n))) = parse_userpass(data) {
        assert!(n <= data.len());
        assert_eq!(n, 3 + u.len() + p.len());
    }
    if let Ok(Some((t, n))) = parse_request(data) {
        assert!(n <= data.len());
        assert_eq!(parse_request(&data[..n]), Ok(Some((t.clone(), n))));
        for i in 0..n {
            assert_eq!(parse_request(&data[..i]), Ok(None), "prefix {i} of {n}");
        }
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x05\x01\x00");
        assert_eq!(parse_request(&longer), Ok(Some((t.clone(), n))));
        assert_ne!(t.port, 0);
        if let Host::Name(name) = &t.host {
            // ATYP 3: the name's raw bytes are data[5..5 + data[4]].
            let raw = &data[5..5 + data[4] as usize];
            assert!(
                !raw.iter().any(|b| *b < 0x20 || *b == 0x7f),
                "{raw:?} accepted"
            );
            assert!(!name.chars().any(char::is_control), "{name:?}");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
            // The target reads back as itself through the HTTP path's parser.
            assert_eq!(Target::parse_authority(&t.to_string(), None), Ok(t.clone()));
        }
    }
});
