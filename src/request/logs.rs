//! The log tools: `get_logs`, `get_log_summary` and `list_alerts`. Process output is
//! untrusted text: it is returned as data (JSON strings), bounded by the read caps.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ErrorKind, ToolError, Warden};
use crate::circus::WatcherName;
use crate::output::alerts::Alert;
use crate::output::classify::Level;
use crate::output::store::{Entry, Query, Summary};
use crate::output::{Logs, Stream, now_ms, parse_since, rfc3339};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetLogsArgs {
    /// The watcher's exact name.
    pub name: String,
    /// Only this stream; both when omitted.
    #[serde(default)]
    pub stream: Option<Stream>,
    /// Most entries to return (newest are kept); default 100, capped by output.max_read_entries.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only entries at this level or above.
    #[serde(default)]
    pub level: Option<Level>,
    /// Only entries read at or after this time: RFC 3339, or a duration back from now ("10m").
    #[serde(default)]
    pub since: Option<String>,
    /// Only entries whose text contains this (case-sensitive, up to 256 bytes).
    #[serde(default)]
    pub contains: Option<String>,
    /// Only entries after this sequence number (a previous answer's last_seq), to poll for news.
    #[serde(default)]
    pub after: Option<u64>,
    /// Only entries before this sequence number: page back with the oldest seq of an answer
    /// that said `more`.
    #[serde(default)]
    pub before: Option<u64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LogEntry {
    /// Per watcher, increasing; restarts when the warden does (see `epoch`).
    pub seq: u64,
    /// When the warden read it (RFC 3339, milliseconds).
    pub time: String,
    pub stream: Stream,
    pub level: Level,
    /// The line, or a traceback with its header line; invalid UTF-8 shows as U+FFFD.
    pub text: String,
    /// Cut at output.max_line_bytes.
    pub truncated: bool,
}

impl From<Entry> for LogEntry {
    fn from(e: Entry) -> LogEntry {
        LogEntry { seq: e.seq, time: rfc3339(e.time_ms), stream: e.stream, level: e.level, text: e.text.into(), truncated: e.truncated }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LogsOutput {
    pub name: String,
    /// Oldest first, newest last.
    pub entries: Vec<LogEntry>,
    /// Older matching entries exist beyond limit or the byte cap (page back with `before`).
    pub more: bool,
    /// The newest sequence number stored for this watcher: pass it as `after` to get only news.
    pub last_seq: u64,
    /// The oldest sequence number still in memory (older lines were evicted; the files keep them).
    pub oldest_seq: Option<u64>,
    /// When this warden started (ms since the epoch); sequence numbers restart with it.
    pub epoch: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAlertsArgs {
    /// Only this watcher's alerts.
    #[serde(default)]
    pub name: Option<String>,
    /// Only alerts fired at or after this time: RFC 3339, or a duration back from now ("1h").
    #[serde(default)]
    pub since: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AlertsOutput {
    /// Oldest first; the list keeps the last output.max_alerts firings.
    pub alerts: Vec<Alert>,
    /// The newest alert id.
    pub last_id: u64,
}

fn logs(w: &Warden) -> Result<&Logs, ToolError> {
    w.logs.as_ref().ok_or_else(|| ToolError::new(ErrorKind::NotFound, "output capture is off in this warden (output.enabled: false)"))
}

fn watcher(name: &str) -> Result<WatcherName, ToolError> {
    WatcherName::parse(name)
        .ok_or_else(|| ToolError::invalid("name", "watcher.name", "a watcher name is 1-64 lower-case letters, digits, '_' and '-'"))
}

fn since(s: Option<&str>) -> Result<Option<u64>, ToolError> {
    s.map(|s| parse_since(s, now_ms()).map_err(|m| ToolError::invalid("since", "schema.format", m))).transpose()
}

/// Nothing stored is an empty answer for a watcher circus knows, and not_found otherwise.
fn unknown(w: &Warden, name: &WatcherName) -> Result<(), ToolError> {
    if w.view.get(name.as_str()).is_some() {
        Ok(())
    } else {
        Err(ToolError::new(ErrorKind::NotFound, format!("no watcher named '{name}' and no output stored for it")))
    }
}

pub fn get_logs(w: &Warden, a: GetLogsArgs) -> Result<LogsOutput, ToolError> {
    let logs = logs(w)?;
    let name = watcher(&a.name)?;
    if a.contains.as_ref().is_some_and(|c| c.len() > 256) {
        return Err(ToolError::invalid("contains", "schema.max_length", "contains is at most 256 bytes"));
    }
    let max = logs.limits.max_entries;
    let limit = match a.limit {
        Some(0) => return Err(ToolError::invalid("limit", "schema.minimum", "limit is at least 1")),
        Some(n) => (n as usize).min(max),
        None => 100.min(max),
    };
    let q = Query {
        stream: a.stream,
        min_level: a.level,
        since_ms: since(a.since.as_deref())?,
        after: a.after,
        before: a.before,
        contains: a.contains,
        limit,
        max_bytes: logs.limits.max_bytes,
    };
    let read = logs.lock().read(name.as_str(), &q);
    let Some(read) = read else {
        unknown(w, &name)?;
        return Ok(LogsOutput { name: a.name, entries: vec![], more: false, last_seq: 0, oldest_seq: None, epoch: logs.epoch });
    };
    Ok(LogsOutput {
        name: a.name,
        entries: read.entries.into_iter().map(LogEntry::from).collect(),
        more: read.more,
        last_seq: read.last_seq,
        oldest_seq: read.oldest_seq,
        epoch: logs.epoch,
    })
}

pub fn summary(w: &Warden, name: &str) -> Result<Summary, ToolError> {
    let logs = logs(w)?;
    let name = watcher(name)?;
    let s = logs.lock().summary(name.as_str(), now_ms());
    match s {
        Some(s) => Ok(s),
        None => {
            unknown(w, &name)?;
            Err(ToolError::new(ErrorKind::NotFound, format!("watcher '{name}' has written no output yet")))
        }
    }
}

pub fn alerts(w: &Warden, a: ListAlertsArgs) -> Result<AlertsOutput, ToolError> {
    let logs = logs(w)?;
    if let Some(n) = &a.name {
        watcher(n)?;
    }
    let since = since(a.since.as_deref())?;
    let store = logs.lock();
    Ok(AlertsOutput { alerts: store.alerts.list(a.name.as_deref(), since), last_id: store.alerts.last_id() })
}

/// Entries the `logs://{name}/recent` resource shows.
const RECENT: u32 = 50;

/// The `logs://{name}/recent` resource: the newest entries and this watcher's recent alerts.
pub fn recent(w: &Warden, name: &str) -> Result<serde_json::Value, ToolError> {
    let args = GetLogsArgs {
        name: name.to_string(),
        stream: None,
        limit: Some(RECENT),
        level: None,
        since: None,
        contains: None,
        after: None,
        before: None,
    };
    let out = get_logs(w, args)?;
    let alerts = logs(w)?.lock().alerts.list(Some(name), None);
    let alerts = &alerts[alerts.len().saturating_sub(20)..];
    Ok(serde_json::json!({
        "name": out.name, "entries": out.entries, "alerts": alerts, "last_seq": out.last_seq, "epoch": out.epoch,
    }))
}

/// A `logs://{name}/recent` URI's watcher name.
pub fn resource_watcher(uri: &str) -> Option<WatcherName> {
    uri.strip_prefix("logs://")?.strip_suffix("/recent").and_then(WatcherName::parse)
}
