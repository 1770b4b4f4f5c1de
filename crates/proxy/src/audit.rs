//! The audit trail: one JSON line per connection, and the denials a run collects.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Which front end carried the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// An absolute-form HTTP request (`GET http://host/...`).
    Http,
    /// HTTP `CONNECT host:port`.
    Connect,
    /// SOCKS5 `CONNECT`.
    Socks5,
    /// A DNS query answered by the transparent mode (recorded when refused).
    Dns,
    /// A TCP connection taken by the transparent mode, checked on the name its address
    /// was handed out for (and the TLS server name, when the client sent one).
    Transparent,
    /// A plain HTTP request taken by the transparent mode on port 80, checked on the
    /// name its address was handed out for and on the Host header.
    TransparentHttp,
    /// Not recognized or not parseable.
    Unknown,
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Allowed and carried.
    Allow,
    /// Refused by policy: see the denial's reason.
    Deny,
    /// Malformed or contradictory request, refused before any policy check.
    Reject,
    /// Allowed, but the destination could not be reached (resolution or connect failed).
    Error,
    /// Missing or wrong proxy credentials.
    Unauthorized,
}

/// One connection's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// When the connection was accepted, RFC 3339 UTC.
    pub time: String,
    /// Front end.
    pub protocol: Protocol,
    /// Canonical destination host, when one was parsed.
    pub host: Option<String>,
    /// Destination port, when one was parsed.
    pub port: Option<u16>,
    /// The address actually connected to (the one that was checked).
    pub resolved: Option<SocketAddr>,
    /// The outcome.
    pub decision: Decision,
    /// The rule that allowed or denied it (`allow=**.example.com`, `deny=...`).
    pub rule: Option<String>,
    /// Why it was refused or failed, in words.
    pub reason: Option<String>,
    /// The argv prefix of the per-command scope that applied, if any.
    pub scope: Option<Vec<String>>,
    /// Bytes from the client to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the client.
    pub bytes_down: u64,
    /// From accept to close, in milliseconds.
    pub duration_ms: u64,
}

/// Where audit records go. Called once per connection, from the proxy's tasks; keep it
/// quick (buffer, or hand off to a channel).
pub trait AuditSink: Send + Sync {
    /// Records one connection.
    fn record(&self, record: &AuditRecord);
}

/// Writes each record as one JSON line and flushes, so that a crash loses at most the
/// connection in flight. Write errors are counted, not raised: the connection they
/// describe has already finished.
#[derive(Debug)]
pub struct JsonLinesSink<W: Write + Send> {
    out: Mutex<W>,
    errors: std::sync::atomic::AtomicU64,
}

impl<W: Write + Send> JsonLinesSink<W> {
    /// Wraps a writer (a file opened for append, say).
    pub fn new(out: W) -> Self {
        JsonLinesSink {
            out: Mutex::new(out),
            errors: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many records could not be written.
    pub fn write_errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl JsonLinesSink<std::fs::File> {
    /// Opens (creating, appending) a JSON-lines audit file.
    pub fn append_to(path: &std::path::Path) -> std::io::Result<Self> {
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        // The audit names every host the user's commands reached: the user's only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let f = o.open(path)?;
        Ok(Self::new(f))
    }
}

impl<W: Write + Send> AuditSink for JsonLinesSink<W> {
    fn record(&self, record: &AuditRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(_) => {
                self.errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.write_all(&line).and_then(|_| out.flush()).is_err() {
            self.errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Keeps records in memory (tests, and a caller that writes them itself).
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<AuditRecord>>,
}

impl MemorySink {
    /// A copy of what was recorded so far.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl AuditSink for MemorySink {
    fn record(&self, record: &AuditRecord) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record.clone());
    }
}

/// A refused destination, for the run's result: what was asked for and what would allow it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Denial {
    /// Canonical host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Why, in words.
    pub reason: String,
    /// The deny rule that matched, if one did.
    pub rule: Option<String>,
    /// The flag or config change that would allow it.
    pub fix: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "workfence: {}. {}", self.reason, self.fix)
    }
}

/// The current time, RFC 3339 with milliseconds, UTC.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines() {
        let sink = JsonLinesSink::new(Vec::new());
        let r = AuditRecord {
            time: "2026-01-01T00:00:00.000Z".into(),
            protocol: Protocol::Connect,
            host: Some("a.test".into()),
            port: Some(443),
            resolved: Some("192.0.2.1:443".parse().unwrap()),
            decision: Decision::Allow,
            rule: Some("allow=a.test".into()),
            reason: None,
            scope: None,
            bytes_up: 1,
            bytes_down: 2,
            duration_ms: 3,
        };
        sink.record(&r);
        sink.record(&r);
        let out = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["protocol"], "connect");
        assert_eq!(v["resolved"], "192.0.2.1:443");
        assert_eq!(v["bytes_down"], 2);
    }
}
