//! The audit log: one JSON line per decision (allowed or denied), written before anything is
//! sent to circusd, and one `outcome` line per allowed mutation after circusd answered.
//! Writes are serialized through one file handle, so N decisions give exactly N decision
//! records. The file rotates by size (`audit.log` → `audit.log.1` … `.keep`). With
//! `fail_closed`, a decision record that cannot be written denies the mutation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::config::AuditConfig;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Audit {
    sink: Arc<Mutex<Sink>>,
    pub fail_closed: bool,
    /// Record allowed reads too (denied reads are always recorded).
    pub reads: bool,
    metrics: Metrics,
}

enum Target {
    Stderr,
    File { path: PathBuf, file: Option<File>, size: u64, max_bytes: u64, keep: u32 },
}

struct Sink {
    target: Target,
}

/// A decision record. `request` has env values redacted.
#[derive(Serialize)]
pub struct DecisionRecord<'a> {
    pub kind: &'static str,
    pub id: &'a str,
    pub time: String,
    pub identity: &'a str,
    pub tool: &'a str,
    pub request: Value,
    pub decision: &'static str,
    /// For an allowed add: the checked argv, the account its processes run as (absent:
    /// circusd's own user) and the command sent, env values redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<&'a crate::isolation::users::Account>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_send: Option<Value>,
    pub rules: &'a [String],
    pub violations: &'a [crate::policy::Violation],
    pub policy_generation: u64,
    pub policy_hash: &'a str,
}

#[derive(Serialize)]
struct OutcomeRecord<'a> {
    kind: &'static str,
    id: &'a str,
    time: String,
    circus: Value,
}

impl Audit {
    pub fn open(config: &AuditConfig, metrics: Metrics) -> std::io::Result<Audit> {
        let target = match &config.path {
            None => Target::Stderr,
            Some(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)?;
                }
                let file = open_append(path)?;
                let size = file.metadata()?.len();
                Target::File { path: path.clone(), file: Some(file), size, max_bytes: config.max_bytes, keep: config.keep }
            }
        };
        Ok(Audit { sink: Arc::new(Mutex::new(Sink { target })), fail_closed: config.fail_closed, reads: config.reads, metrics })
    }

    /// Writes a decision record.
    pub fn decision(&self, rec: &DecisionRecord) -> std::io::Result<()> {
        self.write(rec)
    }

    /// Writes the circusd outcome of an allowed mutation.
    pub fn outcome(&self, id: &str, circus: Value) {
        let _ = self.write(&OutcomeRecord { kind: "outcome", id, time: now_rfc3339(), circus });
    }

    fn write<T: Serialize>(&self, rec: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let result = self.sink.lock().unwrap_or_else(|p| p.into_inner()).write_line(&line);
        if let Err(e) = &result {
            self.metrics.audit_write_failures.inc();
            tracing::error!(error = %e, "cannot write the audit log");
        }
        result
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl Sink {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match &mut self.target {
            Target::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(line)?;
                err.flush()
            }
            Target::File { path, file, size, max_bytes, keep } => {
                if *size > 0 && *size + line.len() as u64 > *max_bytes {
                    rotate(path, *keep)?;
                    *file = None;
                    *size = 0;
                }
                if file.is_none() {
                    *file = Some(open_append(path)?);
                }
                let f = file.as_mut().expect("opened above");
                // One write call per record: with O_APPEND a record is never interleaved.
                if let Err(e) = f.write_all(line) {
                    // Reopen next time (the file may have been removed or the disk freed).
                    *file = None;
                    return Err(e);
                }
                *size += line.len() as u64;
                Ok(())
            }
        }
    }
}

fn rotate(path: &std::path::Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        return std::fs::remove_file(path).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) });
    }
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

/// A fresh decision id: 128 random bits, hex.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom fills at most the given number of bytes of our buffer.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// UTC time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: PathBuf, max_bytes: u64) -> AuditConfig {
        AuditConfig { path: Some(path), max_bytes, keep: 2, fail_closed: true, reads: false }
    }

    fn record(a: &Audit, id: &str) -> std::io::Result<()> {
        a.decision(&DecisionRecord {
            kind: "decision",
            id,
            time: now_rfc3339(),
            identity: "local",
            tool: "stop_process",
            request: serde_json::json!({"name": "w"}),
            decision: "allow",
            argv: None,
            run_as: None,
            would_send: None,
            rules: &[],
            violations: &[],
            policy_generation: 1,
            policy_hash: "h",
        })
    }

    #[test]
    fn concurrent_writers_give_exactly_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&config(path.clone(), 1 << 30), Metrics::new()).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let a = a.clone();
                s.spawn(move || {
                    for i in 0..250 {
                        record(&a, &format!("{t}-{i}")).unwrap()
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2000);
        let ids: std::collections::HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 2000);
    }

    #[test]
    fn rotates_by_size_keeping_k_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::open(&config(path.clone(), 2000), Metrics::new()).unwrap();
        for i in 0..100 {
            record(&a, &i.to_string()).unwrap();
        }
        assert!(path.exists() && dir.path().join("audit.log.1").exists() && dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 2000);
    }

    #[test]
    fn write_failures_are_reported_and_counted() {
        let m = Metrics::new();
        let a = Audit::open(&config(PathBuf::from("/dev/full"), 1 << 30), m.clone()).unwrap();
        assert!(record(&a, "x").is_err());
        assert_eq!(m.audit_write_failures.get(), 1);
    }

    #[test]
    fn time_is_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
