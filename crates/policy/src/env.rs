//! Environment scrubbing: which inherited variables reach the command.

use crate::defaults::{ENV_ALLOW_EXACT, ENV_DENY_EXACT, ENV_DENY_SUBSTRINGS, ENV_DENY_SUFFIXES};
use crate::model::EnvPolicy;

use std::fmt;

use serde::Serialize;

/// Why a variable was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "format")]
pub enum Removed {
    /// Its name looks like a secret.
    SecretName,
    /// Its value has the documented shape of a credential (the format's name).
    SecretValue(&'static str),
    /// It points to a host socket or helper.
    HostPointer,
    /// The policy's explicit deny list names it.
    Denied,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removed::SecretName => f.write_str("secret name"),
            Removed::SecretValue(kind) => write!(f, "value looks like {kind}"),
            Removed::HostPointer => f.write_str("host socket or helper"),
            Removed::Denied => f.write_str("denied by policy"),
        }
    }
}

/// One removed variable: its name and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedVar {
    /// The variable's name.
    pub name: String,
    /// Why.
    pub reason: Removed,
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

/// Decides for one variable by name only: `None` keeps it, `Some(reason)` removes it.
pub fn verdict(policy: &EnvPolicy, name: &str) -> Option<Removed> {
    if policy.keep.iter().any(|k| k == name) {
        return None;
    }
    if policy.deny.iter().any(|d| d == name) {
        return Some(Removed::Denied);
    }
    builtin_verdict(name)
}

/// Decides for one variable by name and value. `keep` wins over every rule, so
/// `--env-keep NAME` brings back a value-scrubbed variable too.
pub fn verdict_for(policy: &EnvPolicy, name: &str, value: &str) -> Option<Removed> {
    if policy.keep.iter().any(|k| k == name) {
        return None;
    }
    verdict(policy, name).or_else(|| secret_value(value).map(Removed::SecretValue))
}

/// Computes the command's environment from the inherited one.
///
/// Returns the kept variables (in input order, then the `set` ones) and the removed
/// ones with their reasons (names only: values never leave this function).
pub fn scrub<I, K, V>(policy: &EnvPolicy, inherited: I) -> (Vec<(String, String)>, Vec<RemovedVar>)
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
        let v = v.into();
        match verdict_for(policy, &k, &v) {
            None => kept.push((k, v)),
            Some(reason) => removed.push(RemovedVar { name: k, reason }),
        }
    }
    for (k, v) in &policy.set {
        kept.push((k.clone(), v.clone()));
    }
    (kept, removed)
}

// ---------------------------------------------------------------------------------
// Value formats. Each matcher follows the issuer's documented token format; a value
// matches when the token appears anywhere in it at a word boundary (so `Bearer
// ghp_...` and `https://x/?key=AIza...` count too).

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}
fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}
fn is_upper_alnum(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

/// Positions just after each occurrence of `prefix` that starts at a word boundary
/// (start of the value or a non-alphanumeric byte before it).
fn after_prefix<'a>(v: &'a [u8], prefix: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    (0..v.len().saturating_sub(prefix.len() - 1)).filter_map(move |i| {
        (v[i..].starts_with(prefix) && (i == 0 || !is_alnum(v[i - 1]))).then_some(i + prefix.len())
    })
}

/// Length of the run of `class` bytes starting at `at`.
fn run(v: &[u8], at: usize, class: fn(u8) -> bool) -> usize {
    v[at..].iter().take_while(|b| class(**b)).count()
}

/// `prefix` followed by at least `min` (and, with `exact`, exactly `min`) bytes of `class`.
fn prefixed(v: &[u8], prefix: &str, class: fn(u8) -> bool, min: usize, exact: bool) -> bool {
    after_prefix(v, prefix.as_bytes()).any(|at| {
        let n = run(v, at, class);
        if exact {
            n == min
        } else {
            n >= min
        }
    })
}

fn has_digit_and_letter(s: &[u8]) -> bool {
    s.iter().any(u8::is_ascii_digit) && s.iter().any(u8::is_ascii_alphabetic)
}

/// A JSON Web Token (RFC 7519, compact JWS of RFC 7515): three base64url parts, the
/// header a JSON object (so it starts `eyJ`, the encoding of `{"`).
fn jwt(v: &[u8]) -> bool {
    after_prefix(v, b"eyJ").any(|at| {
        let h = run(v, at, is_b64url);
        let p_at = at + h;
        if h < 7 || v.get(p_at) != Some(&b'.') {
            return false;
        }
        let p = run(v, p_at + 1, is_b64url);
        let s_at = p_at + 1 + p;
        p >= 8 && v.get(s_at) == Some(&b'.')
    })
}

/// `scheme://user:password@host`: a password in the URL's userinfo (RFC 3986 3.2.1).
fn url_password(v: &str) -> bool {
    let mut rest = v;
    while let Some(i) = rest.find("://") {
        let scheme = &rest[..i];
        let scheme_ok = scheme
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
        let after = &rest[i + 3..];
        let authority = after.split(['/', '?', '#', ' ']).next().unwrap_or("");
        if scheme_ok {
            if let Some((userinfo, host)) = authority.rsplit_once('@') {
                if let Some((_, pass)) = userinfo.split_once(':') {
                    if !pass.is_empty() && !host.is_empty() {
                        return true;
                    }
                }
            }
        }
        rest = after;
    }
    false
}

/// The credential format `value` matches, if any.
pub fn secret_value(value: &str) -> Option<&'static str> {
    // Short values cannot hold any of the formats below.
    if value.len() < 16 {
        return None;
    }
    let v = value.as_bytes();
    // GitHub: ghp_/gho_/ghu_/ghs_/ghr_ + 36 alphanumerics, github_pat_ fine-grained.
    // https://github.blog/engineering/platform-security/behind-githubs-new-authentication-token-formats/
    for p in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        if prefixed(v, p, is_alnum, 36, false) {
            return Some("a GitHub token");
        }
    }
    if prefixed(v, "github_pat_", is_b64url, 60, false) {
        return Some("a GitHub fine-grained token");
    }
    // GitLab: glpat- + 20 or more. https://docs.gitlab.com/security/tokens/#token-prefixes
    for p in ["glpat-", "gldt-", "glrt-", "glptt-", "gloas-"] {
        if prefixed(v, p, is_b64url, 20, false) {
            return Some("a GitLab token");
        }
    }
    // Slack: xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, xapp-. https://api.slack.com/authentication/token-types
    for p in ["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xapp-"] {
        if prefixed(v, p, is_b64url, 10, false) {
            return Some("a Slack token");
        }
    }
    // Slack incoming webhooks: https://api.slack.com/messaging/webhooks
    for p in ["hooks.slack.com/services/", "hooks.slack.com/workflows/"] {
        if let Some(i) = value.find(p) {
            if run(v, i + p.len(), |b| is_b64url(b) || b == b'/') >= 20 {
                return Some("a Slack webhook URL");
            }
        }
    }
    // Discord webhooks: https://discord.com/developers/docs/resources/webhook
    for p in ["discord.com/api/webhooks/", "discordapp.com/api/webhooks/"] {
        if let Some(i) = value.find(p) {
            if run(v, i + p.len(), |b| is_b64url(b) || b == b'/') >= 20 {
                return Some("a Discord webhook URL");
            }
        }
    }
    // AWS access key ids: AKIA (long-term) / ASIA (temporary) + 16 [A-Z0-9].
    // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html#identifiers-unique-ids
    for p in ["AKIA", "ASIA"] {
        if prefixed(v, p, is_upper_alnum, 16, true) {
            return Some("an AWS access key id");
        }
    }
    // Google API keys: AIza + 35. https://cloud.google.com/docs/authentication/api-keys
    if prefixed(v, "AIza", is_b64url, 35, true) {
        return Some("a Google API key");
    }
    // Anthropic (sk-ant-), OpenAI (sk-, sk-proj-, sk-svcacct-). Long and mixed, so
    // that words like `sk-learn` stay.
    // https://platform.openai.com/docs/api-reference/authentication
    // https://docs.anthropic.com/en/api/getting-started
    // The `sk-ant-` prefix alone is distinctive: any 16 or more key characters after it.
    if after_prefix(v, b"sk-ant-").any(|at| run(v, at, is_b64url) >= 16) {
        return Some("an Anthropic API key");
    }
    if after_prefix(v, b"sk-").any(|at| {
        let n = run(v, at, is_b64url);
        n >= 32 && has_digit_and_letter(&v[at..at + n])
    }) {
        return Some(if value.contains("sk-ant-") {
            "an Anthropic API key"
        } else {
            "an OpenAI-style API key"
        });
    }
    // Stripe: https://docs.stripe.com/keys and https://docs.stripe.com/webhooks
    for p in ["sk_live_", "rk_live_", "sk_test_", "rk_test_", "whsec_"] {
        if prefixed(v, p, is_alnum, 16, false) {
            return Some("a Stripe key");
        }
    }
    // npm: npm_ + 36. https://github.blog/changelog/2021-09-23-npm-has-a-new-access-token-format/
    if prefixed(v, "npm_", is_alnum, 36, true) {
        return Some("an npm token");
    }
    // PyPI: pypi- + macaroon. https://pypi.org/help/#apitoken
    if prefixed(v, "pypi-", is_b64url, 50, false) {
        return Some("a PyPI token");
    }
    // Hugging Face: hf_ + 34. https://huggingface.co/docs/hub/security-tokens
    if prefixed(v, "hf_", is_alnum, 30, false) {
        return Some("a Hugging Face token");
    }
    // Twilio API key SIDs: SK + 32 hex. https://www.twilio.com/docs/iam/api-keys
    if prefixed(v, "SK", is_hex, 32, true) {
        return Some("a Twilio API key");
    }
    // SendGrid: SG.<22>.<43>. https://www.twilio.com/docs/sendgrid/ui/account-and-settings/api-keys
    if after_prefix(v, b"SG.").any(|at| {
        let a = run(v, at, is_b64url);
        a >= 16 && v.get(at + a) == Some(&b'.') && run(v, at + a + 1, is_b64url) >= 30
    }) {
        return Some("a SendGrid API key");
    }
    // DigitalOcean: dop_v1_/doo_v1_/dor_v1_ + 64 hex.
    // https://docs.digitalocean.com/reference/api/create-personal-access-token/
    for p in ["dop_v1_", "doo_v1_", "dor_v1_"] {
        if prefixed(v, p, is_hex, 64, false) {
            return Some("a DigitalOcean token");
        }
    }
    // Doppler: dp.pt. / dp.st. / dp.sa. / dp.ct. / dp.scim. / dp.audit. + 40 or more.
    // https://docs.doppler.com/reference/auth-token-formats
    for p in [
        "dp.pt.",
        "dp.st.",
        "dp.sa.",
        "dp.ct.",
        "dp.scim.",
        "dp.audit.",
    ] {
        if prefixed(v, p, is_alnum, 40, false) {
            return Some("a Doppler token");
        }
    }
    // Shopify: shpat_/shpca_/shppa_/shpss_ + 32 hex.
    // https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens
    for p in ["shpat_", "shpca_", "shppa_", "shpss_"] {
        if prefixed(v, p, is_hex, 32, false) {
            return Some("a Shopify token");
        }
    }
    // Databricks personal access tokens: dapi + 32 hex.
    // https://docs.databricks.com/en/dev-tools/auth/pat.html
    if prefixed(v, "dapi", is_hex, 32, false) {
        return Some("a Databricks token");
    }
    if jwt(v) {
        return Some("a JSON Web Token");
    }
    // PEM private keys (RFC 7468): PKCS#1/#8, EC, OpenSSH, encrypted.
    if value.contains("-----BEGIN ") && value.contains("PRIVATE KEY-----") {
        return Some("a PEM private key");
    }
    // Azure storage / Service Bus connection strings.
    // https://learn.microsoft.com/en-us/azure/storage/common/storage-configure-connection-string
    for p in ["AccountKey=", "SharedAccessSignature=", "SharedAccessKey="] {
        if value.contains(p) {
            return Some("an Azure connection string");
        }
    }
    if url_password(value) {
        return Some("a URL with a password");
    }
    None
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
        assert_eq!(
            removed,
            vec![RemovedVar {
                name: "HOME".into(),
                reason: Removed::Denied
            }]
        );
    }

    /// Builds fake tokens at run time, so that the source holds no token-shaped literal
    /// for secret scanners to flag.
    fn fake(prefix: &str, body: &str, n: usize) -> String {
        let mut s = prefix.to_string();
        s.extend(body.chars().cycle().take(n));
        s
    }

    #[test]
    fn token_shaped_values_are_recognized() {
        let jwt = format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.{}",
            "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
            fake("", "Sflk", 43)
        );
        let cases: Vec<(String, &str)> = vec![
            (fake("ghp_", "aB3d", 36), "GitHub token"),
            (format!("Bearer {}", fake("gho_", "Zz9y", 36)), "GitHub token"),
            (fake("github_pat_", "11AB_cd", 82), "GitHub fine-grained"),
            (fake("glpat-", "xY1_", 20), "GitLab"),
            (fake("xoxb-", "123-abc", 40), "Slack token"),
            (format!("https://hooks.slack.com/services/T000/B000/{}", fake("", "XyZ1", 24)), "Slack webhook"),
            (format!("https://discord.com/api/webhooks/123456/{}", fake("", "aZ-_", 60)), "Discord webhook"),
            (fake("AKIA", "IOSFODNN7EXAMPL", 16), "AWS access key"),
            (fake("ASIA", "Q3EGRSZNL2ZE6FB", 16), "AWS access key"),
            (fake("AIza", "SyA-1b_", 35), "Google API key"),
            (fake("sk-", "aB3dE5", 48), "OpenAI"),
            (fake("sk-proj-", "aB3dE5_-", 120), "OpenAI"),
            (fake("sk-ant-api03-", "aB3dE5_-", 90), "Anthropic"),
            (fake("sk_live_", "4eC39Hq", 24), "Stripe"),
            (fake("whsec_", "4eC39Hq", 32), "Stripe"),
            (fake("npm_", "aB3d", 36), "npm"),
            (fake("pypi-", "AgEIcHlwaS5vcmc", 80), "PyPI"),
            (fake("hf_", "aB3d", 34), "Hugging Face"),
            (fake("SK", "0123456789abcdef", 32), "Twilio"),
            (format!("SG.{}.{}", fake("", "aB3d_", 22), fake("", "xY-9", 43)), "SendGrid"),
            (fake("dop_v1_", "0123456789abcdef", 64), "DigitalOcean"),
            (fake("dp.pt.", "aB3d", 43), "Doppler"),
            (fake("shpat_", "0123456789abcdef", 32), "Shopify"),
            (fake("dapi", "0123456789abcdef", 32), "Databricks"),
            (jwt, "JSON Web Token"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----".into(), "PEM"),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE".into(), "PEM"),
            ("postgres://app:hunter2@db.internal:5432/app".into(), "URL with a password"),
            ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9vYmFy==;".into(), "Azure"),
            ("Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=r;SharedAccessKey=abc=".into(), "Azure"),
        ];
        for (v, want) in cases {
            let got = secret_value(&v).unwrap_or_else(|| panic!("not recognized: {want}"));
            assert!(
                got.to_lowercase().contains(&want.to_lowercase()),
                "{want}: got {got}"
            );
        }
    }

    #[test]
    fn ordinary_values_are_kept() {
        let ordinary = [
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/home/u/.cargo/bin",
            "rs=0:di=01;34:ln=01;36:mh=00:pi=40;33:so=01;35:do=01;35:bd=40;33;01:cd=40;33;01:or=40;31;01:mi=00:su=37;41:sg=30;43:ca=00:tw=30;42:ow=34;42:st=37;44:ex=01;32:*.tar=01;31",
            "9fceb02d0ae598e95dc970b74767f19372d61af8",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "aGVsbG8gd29ybGQsIHRoaXMgaXMgbm90IGEgc2VjcmV0Cg==",
            "xterm-256color",
            "en_US.UTF-8",
            "https://github.com/workfence/workfence.git",
            "ssh://git@github.com/workfence/workfence.git",
            "http://[::1]:8080/path?x=1",
            "http://proxy.internal:3128",
            "/home/u/.local/share/fish/fish_history",
            "scikit-learn-1.5.0-something-long-enough-to-test",
            "task-runner-with-a-very-long-descriptive-name-1",
            "AKIA",
            "git@github.com:workfence/workfence.git",
            "--color=auto --group-directories-first --sort=version",
            "SKIP_TESTS_FOR_THIS_VERY_LONG_VARIABLE_VALUE",
            "eyJ is just three letters here, not a token",
            "node_modules/.bin:npm_config_prefix_is_not_a_token",
        ];
        for v in ordinary {
            assert_eq!(secret_value(v), None, "{v}");
        }
    }

    #[test]
    fn values_are_scrubbed_and_keep_brings_them_back() {
        let tok = fake("ghp_", "aB3d", 36);
        let inherited = vec![
            ("DEPLOY".to_string(), tok.clone()),
            ("EDITOR".to_string(), "vim".to_string()),
            ("GH_TOKEN".to_string(), "x".to_string()),
            ("SSH_AUTH_SOCK".to_string(), "/tmp/a".to_string()),
        ];
        let mut p = EnvPolicy::default();
        p.deny.push("EDITOR".into());
        let (kept, removed) = scrub(&p, inherited.clone());
        assert!(kept.is_empty(), "{kept:?}");
        let reasons: Vec<(String, Removed)> =
            removed.iter().map(|r| (r.name.clone(), r.reason)).collect();
        assert_eq!(
            reasons,
            [
                ("DEPLOY".into(), Removed::SecretValue("a GitHub token")),
                ("EDITOR".into(), Removed::Denied),
                ("GH_TOKEN".into(), Removed::SecretName),
                ("SSH_AUTH_SOCK".into(), Removed::HostPointer),
            ]
        );
        // The reasons print without the value.
        for r in &removed {
            assert!(!r.reason.to_string().contains(&tok));
        }
        p.keep.push("DEPLOY".into());
        let (kept, _) = scrub(&p, inherited);
        assert_eq!(kept, vec![("DEPLOY".to_string(), tok)]);
    }
}
