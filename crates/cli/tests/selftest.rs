//! `workfence selftest`: the real binary's report has the documented shape and passes
//! here, and the checks can fail: with the sandbox taken away (a library-level runner
//! the CLI cannot reach) every attack case reports a failure, and a control that does
//! not succeed makes a case fail, never pass.
#![cfg(unix)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use workfence::selftest::{self, Kind, Options, Status, Unsandboxed};

/// The workfence binary under test.
fn bin() -> PathBuf {
    match std::env::var_os("WORKFENCE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_workfence")),
    }
}

/// Where the temporary workspaces go (the attack suite's convention).
fn dir() -> Option<PathBuf> {
    std::env::var_os("WORKFENCE_TEST_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .inspect(|d| std::fs::create_dir_all(d).expect("create WORKFENCE_TEST_DIR"))
}

fn selftest_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("selftest").args(args);
    if let Some(d) = dir() {
        c.arg("--dir").arg(d);
    }
    c
}

/// Attack cases every unix runs.
const CORE_ATTACKS: &[&str] = &[
    "attack/write-outside",
    "attack/create-outside",
    "attack/delete-outside",
    "attack/rename-outside",
    "attack/git-rename",
    "attack/git-hook",
    "attack/git-config",
    "attack/nested-git-config",
    "attack/nested-git-hook",
    "attack/read-secret",
    "attack/read-late-secret",
    "attack/network-loopback",
    "attack/listen-loopback",
    "attack/kill-host-process",
    "attack/outlive-run",
];

#[test]
fn json_report_has_the_documented_shape_and_passes_here() {
    let out = selftest_cmd(&["--json"])
        .output()
        .expect("run workfence selftest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "selftest --json did not print JSON ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["os"], std::env::consts::OS);
    assert_eq!(v["runner"], "sandbox");
    assert!(v["version"].is_string());
    let ok = v["ok"].as_bool().expect("ok is a bool");
    assert_eq!(
        out.status.code() == Some(0),
        ok,
        "exit status must follow `ok`"
    );
    for k in ["passed", "failed", "skipped"] {
        assert!(v["summary"][k].is_u64(), "summary.{k}");
    }
    let facts = v["facts"].as_array().expect("facts");
    assert!(facts
        .iter()
        .all(|f| f["name"].is_string() && f["value"].is_string()));
    let names: Vec<&str> = facts.iter().filter_map(|f| f["name"].as_str()).collect();
    if cfg!(target_os = "linux") {
        for n in ["kernel", "landlock ABI", "user namespaces", "seccomp"] {
            assert!(names.contains(&n), "fact {n} missing: {names:?}");
        }
    }
    assert!(v["warnings"].is_array());
    assert!(v["pending"].is_array());
    let cases = v["cases"].as_array().expect("cases");
    // A pending case has a reason and is not also in the catalogue.
    for p in v["pending"].as_array().expect("pending") {
        assert!(p["why"].as_str().is_some_and(|w| !w.is_empty()), "{p}");
        assert!(!cases.iter().any(|c| c["id"] == p["id"]), "{p}");
    }
    // The Windows cases are listed on every OS, skipped with the reason elsewhere.
    for id in [
        "attack/windows-own-file-dacl",
        "attack/windows-smb-loopback",
        "attack/windows-integrity",
        "attack/windows-junction-grant",
    ] {
        let c = cases
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(c["status"], "skipped", "{c}");
        assert_eq!(c["reason"], "Windows only", "{c}");
    }
    let mut counted = [0u64; 3];
    for c in cases {
        for k in ["id", "what", "reason"] {
            assert!(c[k].is_string(), "case.{k}: {c}");
        }
        assert!(c["tools"].is_array(), "case.tools: {c}");
        assert!(
            matches!(c["kind"].as_str(), Some("compat" | "attack")),
            "{c}"
        );
        match c["status"].as_str() {
            Some("pass") => counted[0] += 1,
            Some("fail") => counted[1] += 1,
            Some("skipped") => counted[2] += 1,
            other => panic!("bad status {other:?} in {c}"),
        }
        if c["status"] == "pass" && c["id"] != "sandbox/starts" {
            let ctl = c["control"].as_str().unwrap_or_default();
            assert!(
                ctl.starts_with("succeeded"),
                "a pass without a control: {c}"
            );
        }
    }
    assert_eq!(v["summary"]["passed"], counted[0]);
    assert_eq!(v["summary"]["failed"], counted[1]);
    assert_eq!(v["summary"]["skipped"], counted[2]);
    let ids: Vec<&str> = cases.iter().filter_map(|c| c["id"].as_str()).collect();
    for id in CORE_ATTACKS
        .iter()
        .chain(["sandbox/starts", "compat/shell"].iter())
    {
        assert!(ids.contains(id), "case {id} missing: {ids:?}");
    }
    if cfg!(target_os = "linux") {
        let failed: Vec<&Value> = cases.iter().filter(|c| c["status"] == "fail").collect();
        assert!(failed.is_empty(), "selftest failed here: {failed:#?}");
        assert!(ok);
        // The shell is always there; under WORKFENCE_MUST_WORK=1 (CI) so are git,
        // python3, cc and make.
        let mut must = vec!["compat/shell", "compat/null-device"];
        if std::env::var("WORKFENCE_MUST_WORK").is_ok_and(|v| v == "1") {
            must.extend([
                "compat/git-status",
                "compat/git-commit",
                "compat/python-multiprocessing",
                "compat/cc-make",
            ]);
        }
        for id in must {
            let c = cases.iter().find(|c| c["id"] == id).expect(id);
            assert_eq!(c["status"], "pass", "{c}");
        }
        assert!(names.contains(&"degraded"), "{names:?}");
    }
}

#[test]
fn table_lists_cases_and_the_summary() {
    let out = selftest_cmd(&["--case", "attack/write-outside", "--case", "compat/shell"])
        .output()
        .expect("run workfence selftest");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Measured on this host:"), "{text}");
    assert!(text.contains("attack/write-outside"), "{text}");
    assert!(text.contains("compat/shell"), "{text}");
    assert!(
        !text.contains("attack/read-secret"),
        "--case filters: {text}"
    );
    if cfg!(target_os = "linux") {
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains(" passed, 0 failed, "), "{text}");
    }
}

#[test]
fn without_the_sandbox_every_attack_fails() {
    let opts = Options {
        dir: dir(),
        probe: Some(bin()),
        only: vec!["attack/".into(), "sandbox/".into()],
        keep: false,
        measure_restricting_set: false,
    };
    let report = selftest::run_with(&opts, &mut Unsandboxed).expect("selftest runs");
    assert_eq!(report.runner, "unsandboxed");
    assert!(!report.ok, "an unsandboxed run must fail the self-test");
    let mut failed = 0;
    for c in &report.cases {
        if c.id == "sandbox/starts" {
            assert_eq!(c.status, Status::Pass, "{c:?}");
            continue;
        }
        assert_eq!(c.kind, Kind::Attack, "{c:?}");
        if c.status == Status::Skipped {
            // Only other OSes' cases may skip here.
            assert!(c.reason.contains("only"), "{c:?}");
            continue;
        }
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.reason.starts_with("NOT blocked"), "{c:?}");
        assert!(
            c.control
                .as_deref()
                .is_some_and(|s| s.starts_with("succeeded")),
            "{c:?}"
        );
        failed += 1;
    }
    assert!(failed >= CORE_ATTACKS.len(), "{report:#?}");
    assert_eq!(report.summary.failed, failed);
}

#[test]
fn a_control_that_does_not_succeed_fails_the_case() {
    // A "probe" that does nothing: the controls cannot show any attack working, so
    // every attack must be a failure (a block would prove nothing), never a pass.
    let opts = Options {
        dir: dir(),
        probe: Some(PathBuf::from("/bin/true")),
        only: vec!["attack/write-outside".into(), "attack/read-secret".into()],
        keep: false,
        measure_restricting_set: false,
    };
    let report = selftest::run_with(&opts, &mut Unsandboxed).expect("selftest runs");
    let attacks: Vec<_> = report
        .cases
        .iter()
        .filter(|c| c.id.starts_with("attack/"))
        .collect();
    assert_eq!(attacks.len(), 2, "{report:#?}");
    for c in attacks {
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.reason.contains("control"), "{c:?}");
        assert!(
            c.control
                .as_deref()
                .is_some_and(|s| s.starts_with("did not succeed")),
            "{c:?}"
        );
    }
    assert!(!report.ok);
}

/// Refuses like a host that cannot enforce a layer, unless degraded mode is allowed,
/// then runs without a sandbox.
struct RefusesStrict;

impl selftest::Runner for RefusesStrict {
    fn name(&self) -> &'static str {
        "refuses-strict"
    }
    fn run(
        &mut self,
        policy: &workfence::policy::Policy,
        argv: Vec<std::ffi::OsString>,
        warn: &mut dyn FnMut(workfence::Warning),
    ) -> Result<workfence::RunOutcome, workfence::Error> {
        if !policy.allow_degraded {
            return Err(workfence::Error::NotEnforceable(
                "process limit (test: not enforceable)".into(),
            ));
        }
        warn(workfence::Warning::Degraded(Vec::new()));
        Unsandboxed.run(policy, argv, warn)
    }
}

#[test]
fn a_host_that_cannot_enforce_is_reported_degraded_and_fails() {
    let opts = Options {
        dir: dir(),
        probe: Some(bin()),
        only: vec!["compat/shell".into()],
        keep: false,
        measure_restricting_set: false,
    };
    let report = selftest::run_with(&opts, &mut RefusesStrict).expect("selftest runs");
    assert!(!report.ok);
    assert_eq!(
        report.degraded.as_deref(),
        Some("process limit (test: not enforceable)")
    );
    let starts = report
        .cases
        .iter()
        .find(|c| c.id == "sandbox/starts")
        .expect("sandbox/starts");
    assert_eq!(starts.status, Status::Fail, "{starts:?}");
    assert!(starts.reason.contains("--allow-degraded"), "{starts:?}");
    let fact = report
        .facts
        .iter()
        .find(|f| f.name == "degraded")
        .expect("degraded fact");
    assert!(fact.value.starts_with("yes"), "{fact:?}");
    assert!(
        !report.warnings.is_empty(),
        "the degraded warning is reported"
    );
    // The other cases still ran (degraded), so the report shows what holds.
    let shell = report
        .cases
        .iter()
        .find(|c| c.id == "compat/shell")
        .expect("compat/shell");
    assert_eq!(shell.status, Status::Pass, "{shell:?}");
}

#[test]
fn an_unusable_directory_is_a_one_line_error_with_exit_125() {
    let out = Command::new(bin())
        .args(["selftest", "--dir", "/proc/workfence-no-such-dir"])
        .output()
        .expect("run workfence selftest");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("selftest: cannot create the temporary directory") && err.contains("--dir"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn an_unknown_case_prefix_is_an_error_that_lists_the_cases() {
    let out = Command::new(bin())
        .args(["selftest", "--case", "attack/no-such-case"])
        .output()
        .expect("run workfence selftest");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("attack/no-such-case") && err.contains("attack/write-outside"),
        "{err}"
    );
}
