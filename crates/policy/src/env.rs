//! Environment scrubbing: which inherited variables reach the command.

use crate::defaults::{ENV_ALLOW_EXACT, ENV_DENY_EXACT, ENV_DENY_SUBSTRINGS, ENV_DENY_SUFFIXES};
use crate::model::EnvPolicy;

/// Why a variable was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Its name looks like a secret.
    SecretName,
    /// It points to a host socket or helper.
    HostPointer,
    /// The policy's explicit deny list names it.
    Denied,
}

/// Whether the built-in rules treat `name` as a secret or a host pointer.
pub fn builtin_verdict(name: &str) -> Option<Removed> {
    if ENV_ALLOW_EXACT.contains(&name) {
        return None;
    }
    if ENV_DENY_EXACT.contains(&name) {
        return Some(Removed::HostPointer);
    }
    let upper = name.to_ascii_uppercase();
    if ENV_DENY_SUBSTRINGS.iter().any(|s| upper.contains(s))
        || ENV_DENY_SUFFIXES.iter().any(|s| upper.ends_with(s))
        || upper.starts_with("AWS_SECRET")
        || upper.starts_with("AWS_SESSION")
    {
        return Some(Removed::SecretName);
    }
    None
}

/// Decides for one variable: `None` keeps it, `Some(reason)` removes it.
pub fn verdict(policy: &EnvPolicy, name: &str) -> Option<Removed> {
    if policy.keep.iter().any(|k| k == name) {
        return None;
    }
    if policy.deny.iter().any(|d| d == name) {
        return Some(Removed::Denied);
    }
    builtin_verdict(name)
}

/// Computes the command's environment from the inherited one.
///
/// Returns the kept variables (in input order, then the `set` ones) and the names removed.
pub fn scrub<I, K, V>(policy: &EnvPolicy, inherited: I) -> (Vec<(String, String)>, Vec<String>)
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    for (k, v) in inherited {
        let k = k.into();
        if policy.set.contains_key(&k) {
            continue;
        }
        match verdict(policy, &k) {
            None => kept.push((k, v.into())),
            Some(_) => removed.push(k),
        }
    }
    for (k, v) in &policy.set {
        kept.push((k.clone(), v.clone()));
    }
    (kept, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_go_and_ordinary_variables_stay() {
        let inherited = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/u"),
            ("LD_LIBRARY_PATH", "/x"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SESSION_TOKEN", "t"),
            ("AWS_REGION", "eu"),
            ("GITHUB_TOKEN", "g"),
            ("GH_TOKEN", "g"),
            ("OPENAI_API_KEY", "o"),
            ("ANTHROPIC_API_KEY", "a"),
            ("NPM_TOKEN", "n"),
            ("MY_PASSWORD", "p"),
            ("SSH_AUTH_SOCK", "/tmp/ssh"),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:"),
            ("PWD", "/w"),
            ("TERM", "xterm"),
            ("GITHUB_PAT", "x"),
            ("STRIPE_KEY", "x"),
        ];
        let (kept, removed) = scrub(&EnvPolicy::default(), inherited);
        let kept: Vec<_> = kept.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kept,
            [
                "PATH",
                "HOME",
                "LD_LIBRARY_PATH",
                "AWS_REGION",
                "PWD",
                "TERM"
            ]
        );
        assert_eq!(removed.len(), 13);
    }

    #[test]
    fn keep_set_and_deny() {
        let mut p = EnvPolicy::default();
        p.keep.push("GH_TOKEN".into());
        p.deny.push("HOME".into());
        p.set.insert("X".into(), "1".into());
        let (kept, removed) = scrub(&p, [("GH_TOKEN", "g"), ("HOME", "/h"), ("X", "0")]);
        assert_eq!(
            kept,
            vec![("GH_TOKEN".into(), "g".into()), ("X".into(), "1".into())]
        );
        assert_eq!(removed, vec!["HOME".to_string()]);
    }
}
