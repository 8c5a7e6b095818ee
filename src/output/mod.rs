//! Process output, along its data path: circusd writes each watcher's stdout and stderr to
//! files the warden names on every `add` ([`Files`]); [`tail`] follows them; [`lines`] splits
//! and groups, [`classify`] assigns levels; [`store`] keeps recent entries under byte caps and
//! evaluates [`alerts`]. [`Logs`] is the shared handle readers use.

pub mod alerts;
pub mod classify;
pub mod lines;
pub mod store;
pub mod tail;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::circus::WatcherName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout.log",
            Stream::Stderr => "stderr.log",
        }
    }
}

/// Where circusd writes a watcher's output: `<dir>/<watcher>/{stdout,stderr}.log`, rotated by
/// circus's FileStream at `max_bytes` with `backup_count` old files.
#[derive(Debug, Clone, PartialEq)]
pub struct Files {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub backup_count: u32,
}

impl Files {
    pub fn watcher_dir(&self, name: &WatcherName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// Creates the watcher's directory (circusd fails the `add` without it). An existing
    /// directory is reused; a symlink or a file in its place is an error.
    pub fn prepare(&self, name: &WatcherName) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.watcher_dir(name);
        match std::fs::DirBuilder::new().mode(0o770).create(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::fs::symlink_metadata(&dir)?.is_dir() {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!("{} exists and is not a directory", dir.display())))
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// The shared handle: the store behind a mutex, and a version that moves whenever something
/// new is stored (followers and subscription notifiers wait on it).
#[derive(Clone)]
pub struct Logs {
    store: Arc<Mutex<store::Store>>,
    changed: watch::Sender<u64>,
    /// When this warden started (unix ms): sequence numbers restart with it.
    pub epoch: u64,
    pub limits: ReadLimits,
}

/// Caps on what one read returns.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_followers: usize,
    pub notify_interval: Duration,
}

impl Logs {
    pub fn new(store: store::Store, limits: ReadLimits) -> Logs {
        Logs { store: Arc::new(Mutex::new(store)), changed: watch::Sender::new(0), epoch: now_ms(), limits }
    }

    pub fn lock(&self) -> MutexGuard<'_, store::Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores one stream's batch and wakes whoever waits for news.
    pub fn push(&self, watcher: &str, stream: Stream, lines: Vec<lines::Line>, dropped: u64, time_ms: u64) {
        if lines.is_empty() && dropped == 0 {
            return;
        }
        let fired = self.lock().push(watcher, stream, lines, dropped, time_ms);
        for a in &fired {
            tracing::warn!(alert = a.id, rule = %a.rule, severity = a.severity.as_str(), watcher = %a.watcher, message = %a.message, "log alert");
        }
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Where each of `watchers` stands now (its last entry and last alert).
    pub fn seen(&self, watchers: &[String]) -> Vec<Seen> {
        let s = self.lock();
        watchers.iter().map(|w| Seen { seq: s.last_seq(w).unwrap_or(0), alert: s.alerts.last_id_for(w) }).collect()
    }

    /// Waits until one of `watchers` has entries or alerts newer than `seen`; updates `seen` and
    /// returns the indexes that moved. `None` when the store is gone.
    pub async fn news(&self, rx: &mut watch::Receiver<u64>, watchers: &[String], seen: &mut [Seen]) -> Option<Vec<usize>> {
        loop {
            rx.borrow_and_update();
            let now = self.seen(watchers);
            let moved: Vec<usize> = (0..watchers.len()).filter(|&i| now[i] != seen[i]).collect();
            if !moved.is_empty() {
                seen.copy_from_slice(&now);
                return Some(moved);
            }
            rx.changed().await.ok()?;
        }
    }
}

/// What a subscriber last saw of one watcher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub seq: u64,
    pub alert: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `since` as agents write it: an RFC 3339 time, or a duration back from now (`90s`, `5m`).
pub fn parse_since(s: &str, now: u64) -> Result<u64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now.saturating_sub(d.as_millis() as u64)),
        Err(_) => Err(format!("since: {s:?} is neither an RFC 3339 time (2026-11-21T10:00:00Z) nor a duration (30s, 5m, 1h)")),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The default output directory when the config names none: `$XDG_STATE_HOME/circus-warden/
/// output`, else `~/.local/state/circus-warden/output`, else `./circus-warden-output`.
pub fn default_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")));
    match state {
        Some(s) => s.join("circus-warden/output"),
        None => PathBuf::from("circus-warden-output"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_durations() {
        assert_eq!(parse_since("2026-11-21T00:00:00Z", 0).unwrap(), 1_795_219_200_000);
        assert_eq!(parse_since("5m", 1_000_000).unwrap(), 700_000);
        assert!(parse_since("yesterday", 0).unwrap_err().contains("since:"));
        assert_eq!(cut("héllo", 2), "h");
    }
}
