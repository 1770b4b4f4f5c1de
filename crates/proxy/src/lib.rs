//! # workfence-proxy
//!
//! The network proxy through which a sandbox with an allowlist (`--network allow=...`)
//! will reach the destinations its policy allows. The proxy runs outside the sandbox,
//! resolves names itself, refuses local destinations after resolution unless a rule
//! allows them, and connects only to the address it checked.
//!
//! This crate is the proxy core, a library: rules ([`rules`]), host normalization
//! ([`host`]), the address policy ([`addr`]), the SOCKS5 parser ([`socks`]), the audit
//! trail ([`audit`]) and the server ([`Proxy`]) speaking HTTP forward proxying, HTTP
//! `CONNECT` and SOCKS5, plus the transparent mode for proxy-unaware clients (Linux):
//! a DNS responder handing out synthetic addresses ([`Proxy::serve_dns`]) and listeners
//! that take connections to them and to literal addresses ([`Proxy::serve_transparent`]).
//!
//! ```
//! use workfence_proxy::Allowlist;
//! let a = Allowlist::new(&["**.example.org".into(), "api.test".into()], &["evil.example.org".into()]).unwrap();
//! assert!(a.allows("example.org"));
//! assert!(a.allows("x.example.org"));
//! assert!(!a.allows("evil.example.org"));
//! assert!(!a.allows("api.test.attacker.net"));
//! ```

pub mod addr;
pub mod audit;
pub mod host;
mod io;
pub mod rules;
mod server;
pub mod socks;
#[cfg(target_os = "linux")]
mod splice;

pub use audit::{AuditRecord, AuditSink, Decision, Denial, JsonLinesSink, MemorySink, Protocol};
pub use host::{Host, HostError, Target};
pub use rules::{
    normalize, Allowlist, CommandRules, NamedLists, Pattern, PatternError, Rule, RuleError,
    RuleSet, RulesConfig, ScopedRules, Verdict,
};
pub use server::{Handling, Proxy, ProxyAuth, ProxyConfig, ProxyError, SyntheticPool};
