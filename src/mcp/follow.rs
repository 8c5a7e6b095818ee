//! `GET /logs/{name}`: a watcher's output for people and tools, as NDJSON or Server-Sent
//! Events, with `follow=true` to keep streaming. The body is pulled by the client: a slow
//! reader holds one batch at most, and when the lines it has not read yet are evicted it
//! skips ahead and gets a `skipped` marker with the count.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::watch;

use super::http::{Body, plain};
use crate::output::classify::Level;
use crate::output::store::{Cursor, Entry, Query};
use crate::output::{Logs, Stream, now_ms, parse_since};
use crate::request::logs::LogEntry;

/// Entries sent per body chunk.
const BATCH: usize = 256;
/// A follower with nothing new gets a heartbeat this often (it also reveals a gone client).
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The query string: `follow`, `format` (ndjson|sse), `stream`, `level`, `contains`, `since`, `limit`.
#[derive(Debug, Default)]
pub struct Params {
    follow: bool,
    sse: bool,
    stream: Option<Stream>,
    level: Option<Level>,
    contains: Option<String>,
    since: Option<u64>,
    limit: Option<usize>,
}

impl Params {
    /// Parses the query; `accept_sse` is the `Accept: text/event-stream` header.
    pub fn parse(query: Option<&str>, accept_sse: bool) -> Result<Params, String> {
        let mut p = Params { sse: accept_sse, ..Default::default() };
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
            match k {
                "follow" => p.follow = matches!(v.as_str(), "true" | "1" | "yes" | ""),
                "format" => match v.as_str() {
                    "ndjson" => p.sse = false,
                    "sse" => p.sse = true,
                    _ => return Err("format: ndjson or sse".into()),
                },
                "stream" => p.stream = Some(Stream::parse(&v).ok_or("stream: stdout or stderr")?),
                "level" => p.level = Some(Level::from_word(v.as_bytes()).ok_or("level: TRACE, DEBUG, INFO, WARNING, ERROR or CRITICAL")?),
                "contains" if v.len() <= 256 => p.contains = Some(v),
                "contains" => return Err("contains: at most 256 bytes".into()),
                "since" => p.since = Some(parse_since(&v, now_ms())?),
                "limit" => p.limit = Some(v.parse().map_err(|_| "limit: a number")?),
                other => return Err(format!("unknown parameter {other:?}; known: follow, format, stream, level, contains, since, limit")),
            }
        }
        Ok(p)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Counts open follow streams; dropping one releases its slot.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

struct State {
    logs: Logs,
    name: String,
    p: Params,
    /// The backlog's query; its level and text filters apply to what follows too.
    q: Query,
    cursor: Cursor,
    rx: watch::Receiver<u64>,
    backlog: Option<Vec<Entry>>,
    skipped_total: prometheus::IntCounter,
    _slot: Option<Slot>,
}

impl State {
    fn frame(&self, kind: &str, value: serde_json::Value, out: &mut Vec<u8>) {
        if self.p.sse {
            out.extend_from_slice(format!("event: {kind}\ndata: ").as_bytes());
            out.extend_from_slice(value.to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
        } else {
            let mut v = value;
            v["type"] = json!(kind);
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
    }

    fn entries(&self, entries: impl IntoIterator<Item = Entry>, out: &mut Vec<u8>) {
        for e in entries {
            self.frame("entry", json!(LogEntry::from(e)), out);
        }
    }

    /// The next chunk of the body, or `None` at its end.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(backlog) = self.backlog.take() {
            let mut out = Vec::new();
            self.entries(backlog, &mut out);
            if !self.p.follow {
                return (!out.is_empty()).then(|| out.into());
            }
            if !out.is_empty() {
                return Some(out.into());
            }
        }
        if !self.p.follow {
            return None;
        }
        loop {
            self.rx.borrow_and_update();
            let (entries, skipped) = self.logs.lock().follow(&self.name, self.p.stream, &mut self.cursor, BATCH);
            let mut out = Vec::new();
            if skipped > 0 {
                self.skipped_total.inc_by(skipped);
                self.frame(
                    "skipped",
                    json!({ "lines": skipped, "message": "this reader fell behind; these lines were evicted before it read them" }),
                    &mut out,
                );
            }
            // The backlog came filtered from Store::read; followed batches are filtered here.
            self.entries(entries.into_iter().filter(|e| self.q.matches(e)), &mut out);
            if !out.is_empty() {
                return Some(out.into());
            }
            tokio::select! {
                changed = self.rx.changed() => changed.ok()?,
                _ = tokio::time::sleep(HEARTBEAT) => {
                    let mut out = Vec::new();
                    if self.p.sse {
                        out.extend_from_slice(b": keepalive\n\n");
                    } else {
                        self.frame("heartbeat", json!({ "time": crate::output::rfc3339(now_ms()) }), &mut out);
                    }
                    return Some(out.into());
                }
            }
        }
    }
}

/// Builds the response for an authorized reader.
pub fn respond(logs: &Logs, open: &Arc<AtomicUsize>, metrics: &crate::metrics::Metrics, name: &str, mut p: Params) -> Response<Body> {
    let slot = if p.follow {
        if open.fetch_add(1, Ordering::Relaxed) >= logs.limits.max_followers {
            open.fetch_sub(1, Ordering::Relaxed);
            return plain(StatusCode::SERVICE_UNAVAILABLE, "too many log followers; close one and retry");
        }
        metrics.log_followers.inc();
        Some(Slot { open: open.clone(), gauge: metrics.log_followers.clone() })
    } else {
        None
    };
    let limit = p.limit.unwrap_or(100).min(logs.limits.max_entries);
    let q = Query {
        stream: p.stream,
        min_level: p.level,
        since_ms: p.since,
        contains: p.contains.take(),
        limit,
        max_bytes: logs.limits.max_bytes,
        after: None,
        before: None,
    };
    let (backlog, cursor) = {
        let store = logs.lock();
        let backlog = store.read(name, &q).map(|r| r.entries).unwrap_or_default();
        (backlog, store.cursor_at_end(name))
    };
    let sse = p.sse;
    let state = State {
        logs: logs.clone(),
        name: name.to_string(),
        p,
        q,
        cursor,
        rx: logs.subscribe(),
        backlog: Some(backlog),
        skipped_total: metrics.log_follow_skipped.clone(),
        _slot: slot,
    };
    let stream = futures::stream::unfold(state, |mut st| async move { st.next().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), st)) });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    let kind = if sse { "text/event-stream" } else { "application/x-ndjson" };
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r.headers_mut().insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_refuse_clearly() {
        let p = Params::parse(Some("follow=true&stream=stderr&level=warn&contains=a%20b&limit=5"), false).unwrap();
        assert!(p.follow && !p.sse);
        assert_eq!((p.stream, p.level, p.contains.as_deref(), p.limit), (Some(Stream::Stderr), Some(Level::Warning), Some("a b"), Some(5)));
        assert!(Params::parse(Some("format=sse"), false).unwrap().sse);
        assert!(Params::parse(Some("follow=true&bogus=1"), false).unwrap_err().contains("unknown parameter"));
        assert!(Params::parse(Some("level=loud"), false).unwrap_err().starts_with("level:"));
        assert!(Params::parse(Some("contains=%zz"), false).is_err());
    }
}
