//! The memory-capped store of recent output: a ring per watcher and stream under a byte cap,
//! a global byte cap over all rings with fair eviction (the ring holding the most bytes gives
//! first), cumulative per-watcher statistics, and alert evaluation. Bytes are counted as held:
//! text, one allocation header per entry and the ring's slot capacity.

use std::collections::VecDeque;
use std::mem::size_of;

use prometheus::{IntCounter, IntGauge};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::Stream;
use super::alerts::{Alert, Alerting};
use super::classify::Level;
use super::lines::Line;
use crate::metrics::Metrics;

/// One stored entry: a line, or a traceback grouped with its header.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Per watcher, increasing across both streams (restarts from 1 with the warden).
    pub seq: u64,
    pub time_ms: u64,
    pub stream: Stream,
    pub level: Level,
    pub truncated: bool,
    pub text: Box<str>,
}

/// What the allocator keeps beside each text allocation (glibc: one 16-byte header).
pub const ALLOC_HEADER: usize = 16;

#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    text: usize,
    /// Entries evicted so far: the ordinal of the front entry.
    evicted: u64,
}

impl Ring {
    fn held(&self) -> usize {
        self.text + self.entries.len() * ALLOC_HEADER + self.entries.capacity() * size_of::<Entry>()
    }

    /// Releases spare slot capacity when more than a third of it is unused.
    fn trim(&mut self) -> bool {
        let (len, cap) = (self.entries.len(), self.entries.capacity());
        if cap > 64 && cap - len > cap / 3 {
            self.entries.shrink_to(len + len / 4);
            return self.entries.capacity() < cap;
        }
        false
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.text -= e.text.len();
        self.evicted += 1;
        Some(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    StreamCap = 0,
    GlobalCap = 1,
}

struct Handles {
    lines: [IntCounter; 6],
    bytes: [IntCounter; 6],
    dropped: IntCounter,
    evicted_lines: [IntCounter; 2],
    evicted_bytes: [IntCounter; 2],
    held: IntGauge,
}

impl Handles {
    fn new(m: &Metrics, w: &str) -> Handles {
        let lv = |v: &prometheus::IntCounterVec| Level::ALL.map(|l| v.with_label_values(&[w, l.as_str()]));
        let cause = |v: &prometheus::IntCounterVec| ["stream_cap", "global_cap"].map(|c| v.with_label_values(&[w, c]));
        Handles {
            lines: lv(&m.log_lines),
            bytes: lv(&m.log_bytes),
            dropped: m.log_dropped_bytes.with_label_values(&[w]),
            evicted_lines: cause(&m.log_evicted_lines),
            evicted_bytes: cause(&m.log_evicted_bytes),
            held: m.log_buffer_bytes.with_label_values(&[w]),
        }
    }
}

/// Cumulative facts about one watcher's output since the warden started.
#[derive(Default)]
struct Stats {
    lines: [u64; 6],
    bytes: u64,
    first_ms: u64,
    last_ms: u64,
    dropped_bytes: u64,
    evicted_lines: u64,
    /// (minute, lines, errors) for the last few minutes.
    minutes: VecDeque<(u64, u64, u64)>,
    top: FxHashMap<String, TopError>,
}

#[derive(Clone, Serialize, schemars::JsonSchema)]
pub struct TopError {
    /// The message with digits replaced by `#`, so repeats group.
    pub message: String,
    pub count: u64,
    /// The latest full text (cut to 300 bytes).
    pub example: String,
    pub last_time: String,
}

const TOP_ERRORS: usize = 64;
const RATE_MINUTES: u64 = 5;

struct Watcher {
    rings: [Ring; 2],
    next_seq: u64,
    stats: Stats,
    handles: Option<Handles>,
}

impl Watcher {
    fn held(&self) -> usize {
        self.rings[0].held() + self.rings[1].held()
    }
}

/// Byte caps, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub stream: usize,
    pub global: usize,
    pub max_watchers: usize,
}

pub struct Store {
    watchers: FxHashMap<String, Watcher>,
    held: usize,
    caps: Caps,
    pub alerts: Alerting,
    metrics: Option<Metrics>,
}

/// A read's filters. `limit` and `max_bytes` bound the answer.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub stream: Option<Stream>,
    pub min_level: Option<Level>,
    pub since_ms: Option<u64>,
    pub after: Option<u64>,
    /// Only entries before this sequence number (paging back from a previous answer).
    pub before: Option<u64>,
    pub contains: Option<String>,
    pub limit: usize,
    pub max_bytes: usize,
}

impl Query {
    /// The level and text filters (a follower applies them too).
    pub fn matches(&self, e: &Entry) -> bool {
        self.min_level.is_none_or(|l| e.level >= l) && self.contains.as_ref().is_none_or(|c| e.text.contains(c.as_str()))
    }
}

pub struct Read {
    /// Oldest first.
    pub entries: Vec<Entry>,
    /// Older matching entries were left out by the limits.
    pub more: bool,
    pub last_seq: u64,
    pub oldest_seq: Option<u64>,
}

/// Where a follower is: for each stream, the ordinal of the next entry it wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor(pub [u64; 2]);

impl Store {
    pub fn new(caps: Caps, alerts: Alerting, metrics: Option<Metrics>) -> Store {
        if let Some(m) = &metrics {
            m.log_buffer_limit.with_label_values(&["stream"]).set(caps.stream as i64);
            m.log_buffer_limit.with_label_values(&["global"]).set(caps.global as i64);
        }
        Store { watchers: FxHashMap::default(), held: 0, caps, alerts, metrics }
    }

    /// Bytes held over all rings (what the global cap bounds).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Stores a batch of one stream's lines read at `time_ms`; returns the alerts they fired.
    pub fn push(&mut self, watcher: &str, stream: Stream, lines: Vec<Line>, dropped: u64, time_ms: u64) -> Vec<Alert> {
        let mut fired = Vec::new();
        if lines.is_empty() && dropped == 0 {
            return fired;
        }
        if !self.watchers.contains_key(watcher) {
            self.make_room_for_watcher();
            let handles = self.metrics.as_ref().map(|m| Handles::new(m, watcher));
            let w = Watcher { rings: Default::default(), next_seq: 1, stats: Stats { first_ms: time_ms, ..Default::default() }, handles };
            self.watchers.insert(watcher.to_string(), w);
        }
        let w = self.watchers.get_mut(watcher).expect("inserted above");
        let before = w.held();
        let (mut n, mut b) = ([0u64; 6], [0u64; 6]);
        let minute = time_ms / 60_000;
        for line in lines {
            let li = line.level as usize;
            n[li] += 1;
            b[li] += line.text.len() as u64;
            self.alerts.observe(watcher, stream, line.level, &line.text, time_ms, &mut fired);
            if line.level >= Level::Error {
                note_error(&mut w.stats, &line.text, time_ms);
            }
            let ring = &mut w.rings[stream as usize];
            ring.text += line.text.len();
            let seq = w.next_seq;
            w.next_seq += 1;
            ring.entries.push_back(Entry {
                seq,
                time_ms,
                stream,
                level: line.level,
                truncated: line.truncated,
                text: line.text.into_boxed_str(),
            });
        }
        let s = &mut w.stats;
        let total: u64 = n.iter().sum();
        for i in 0..6 {
            s.lines[i] += n[i];
        }
        s.bytes += b.iter().sum::<u64>();
        s.last_ms = time_ms;
        s.dropped_bytes += dropped;
        match s.minutes.back_mut() {
            Some(m) if m.0 == minute => {
                m.1 += total;
                m.2 += n[Level::Error as usize] + n[Level::Critical as usize];
            }
            _ => s.minutes.push_back((minute, total, n[Level::Error as usize] + n[Level::Critical as usize])),
        }
        while s.minutes.front().is_some_and(|m| m.0 + RATE_MINUTES <= minute) {
            s.minutes.pop_front();
        }
        if let Some(h) = &w.handles {
            for i in 0..6 {
                if n[i] > 0 {
                    h.lines[i].inc_by(n[i]);
                    h.bytes[i].inc_by(b[i]);
                }
            }
            h.dropped.inc_by(dropped);
        }
        // The stream's own cap first, then the global one.
        let ring = &mut w.rings[stream as usize];
        let (mut lines_out, mut bytes_out) = (0u64, 0u64);
        while ring.held() > self.caps.stream {
            // Spare slots count as held; give them back before evicting lines.
            if ring.trim() {
                continue;
            }
            let Some(e) = ring.pop() else { break };
            lines_out += 1;
            bytes_out += e.text.len() as u64;
        }
        w.stats.evicted_lines += lines_out;
        if let Some(h) = &w.handles {
            h.evicted_lines[Cause::StreamCap as usize].inc_by(lines_out);
            h.evicted_bytes[Cause::StreamCap as usize].inc_by(bytes_out);
        }
        let after = w.held();
        self.held = self.held + after - before;
        if let Some(h) = &w.handles {
            h.held.set(after as i64);
        }
        if self.held > self.caps.global {
            self.evict_global();
        }
        if let Some(m) = &self.metrics {
            for a in &fired {
                m.log_alerts.with_label_values(&[watcher, &a.rule, a.severity.as_str()]).inc();
            }
        }
        fired
    }

    /// Evicts from the rings holding the most bytes until the total is a little under the
    /// cap (1/32 of it, so a steady flood does not evict on every batch). A ring is evicted
    /// only while no other ring holds more, so quiet rings keep their lines.
    fn evict_global(&mut self) {
        let target = self.caps.global - self.caps.global / 32;
        while self.held > target {
            let mut largest: Option<(usize, &str, usize)> = None;
            let mut second = 0;
            for (name, w) in &self.watchers {
                for (i, r) in w.rings.iter().enumerate().filter(|(_, r)| !r.entries.is_empty()) {
                    let h = r.held();
                    match largest {
                        Some((l, ..)) if h <= l => second = second.max(h),
                        _ => {
                            second = second.max(largest.map_or(0, |l| l.0));
                            largest = Some((h, name, i));
                        }
                    }
                }
            }
            let Some((_, name, i)) = largest else { return };
            let name = name.to_string();
            let need = self.held - target;
            let w = self.watchers.get_mut(&name).expect("found above");
            let ring = &mut w.rings[i];
            let start = ring.held();
            let (mut lines_out, mut bytes_out) = (0u64, 0u64);
            while lines_out == 0 || (start - ring.held() < need && ring.held() > second) {
                let Some(e) = ring.pop() else { break };
                lines_out += 1;
                bytes_out += e.text.len() as u64;
            }
            ring.trim();
            let after = ring.held();
            self.held -= start - after;
            w.stats.evicted_lines += lines_out;
            if let Some(h) = &w.handles {
                h.evicted_lines[Cause::GlobalCap as usize].inc_by(lines_out);
                h.evicted_bytes[Cause::GlobalCap as usize].inc_by(bytes_out);
                h.held.set(w.held() as i64);
            }
        }
    }
}

impl Store {
    /// Keeps the number of watchers with stored output under the cap: the one written to
    /// longest ago is forgotten (its lines and its metric series).
    fn make_room_for_watcher(&mut self) {
        while self.watchers.len() >= self.caps.max_watchers {
            let Some(oldest) = self.watchers.iter().min_by_key(|(_, w)| w.stats.last_ms).map(|(n, _)| n.clone()) else { return };
            self.forget(&oldest);
        }
    }

    fn forget(&mut self, watcher: &str) {
        if let Some(w) = self.watchers.remove(watcher) {
            self.held -= w.held();
            self.alerts.forget(watcher);
            if let Some(m) = &self.metrics {
                m.forget_log_series(watcher);
            }
        }
    }

    pub fn last_seq(&self, watcher: &str) -> Option<u64> {
        self.watchers.get(watcher).map(|w| w.next_seq - 1)
    }

    /// Matching entries, newest last, at most `limit` and about `max_bytes` of text.
    pub fn read(&self, watcher: &str, q: &Query) -> Option<Read> {
        let w = self.watchers.get(watcher)?;
        let rings: Vec<&VecDeque<Entry>> = match q.stream {
            Some(s) => vec![&w.rings[s as usize].entries],
            None => vec![&w.rings[0].entries, &w.rings[1].entries],
        };
        let oldest_seq = rings.iter().filter_map(|r| r.front()).map(|e| e.seq).min();
        let mut idx: Vec<usize> = rings.iter().map(|r| r.len()).collect();
        let (mut out, mut bytes, mut more) = (Vec::new(), 0usize, false);
        loop {
            // The newest remaining entry across the rings.
            let pick = (0..rings.len()).filter(|&r| idx[r] > 0).max_by_key(|&r| rings[r][idx[r] - 1].seq);
            let Some(r) = pick else { break };
            idx[r] -= 1;
            let e = &rings[r][idx[r]];
            if q.after.is_some_and(|a| e.seq <= a) || q.since_ms.is_some_and(|t| e.time_ms < t) {
                break;
            }
            if q.before.is_some_and(|b| e.seq >= b) || !q.matches(e) {
                continue;
            }
            if out.len() == q.limit || (bytes + e.text.len() > q.max_bytes && !out.is_empty()) {
                more = true;
                break;
            }
            bytes += e.text.len();
            out.push(e.clone());
        }
        out.reverse();
        Some(Read { entries: out, more, last_seq: w.next_seq - 1, oldest_seq })
    }

    /// A follower's cursor just past the newest entry of each stream.
    pub fn cursor_at_end(&self, watcher: &str) -> Cursor {
        let mut c = Cursor::default();
        if let Some(w) = self.watchers.get(watcher) {
            for (i, r) in w.rings.iter().enumerate() {
                c.0[i] = r.evicted + r.entries.len() as u64;
            }
        }
        c
    }

    /// Entries after a follower's cursor (at most `max`), and how many it missed because
    /// they were evicted before it read them. Advances the cursor.
    pub fn follow(&self, watcher: &str, stream: Option<Stream>, cursor: &mut Cursor, max: usize) -> (Vec<Entry>, u64) {
        let Some(w) = self.watchers.get(watcher) else { return (Vec::new(), 0) };
        let mut skipped = 0;
        let mut pos = [0usize; 2];
        for (i, r) in w.rings.iter().enumerate() {
            if stream.is_some_and(|s| s as usize != i) {
                pos[i] = r.entries.len();
                continue;
            }
            if cursor.0[i] < r.evicted {
                skipped += r.evicted - cursor.0[i];
                cursor.0[i] = r.evicted;
            }
            pos[i] = (cursor.0[i] - r.evicted) as usize;
        }
        let mut out = Vec::new();
        while out.len() < max {
            let next = (0..2).filter(|&i| pos[i] < w.rings[i].entries.len()).min_by_key(|&i| w.rings[i].entries[pos[i]].seq);
            let Some(i) = next else { break };
            out.push(w.rings[i].entries[pos[i]].clone());
            pos[i] += 1;
            cursor.0[i] += 1;
        }
        (out, skipped)
    }

    pub fn summary(&self, watcher: &str, now_ms: u64) -> Option<Summary> {
        let w = self.watchers.get(watcher)?;
        let s = &w.stats;
        let lines: u64 = s.lines.iter().sum();
        let errors = s.lines[Level::Error as usize] + s.lines[Level::Critical as usize];
        let minute = now_ms / 60_000;
        let recent: Vec<_> = s.minutes.iter().filter(|m| m.0 + RATE_MINUTES > minute).collect();
        let mut top: Vec<TopError> = s.top.values().cloned().collect();
        top.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_time.cmp(&a.last_time)));
        top.truncate(10);
        Some(Summary {
            name: watcher.to_string(),
            lines,
            bytes: s.bytes,
            levels: Level::ALL.iter().map(|l| (l.as_str().to_string(), s.lines[*l as usize])).collect(),
            error_ratio: if lines == 0 { 0.0 } else { errors as f64 / lines as f64 },
            errors_per_minute: recent.iter().map(|m| m.2).sum::<u64>() as f64 / RATE_MINUTES as f64,
            top_errors: top,
            first_time: super::rfc3339(s.first_ms),
            last_time: super::rfc3339(s.last_ms),
            buffer: BufferState {
                bytes: w.held() as u64,
                entries: (w.rings[0].entries.len() + w.rings[1].entries.len()) as u64,
                stream_cap_bytes: self.caps.stream as u64,
                evicted_lines: s.evicted_lines,
                dropped_bytes: s.dropped_bytes,
            },
            alerts: self.alerts.list(Some(watcher), None).len() as u64,
        })
    }
}

/// `get_log_summary`'s answer. Counts cover everything read since the warden started, not
/// only what the buffer still holds.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Summary {
    pub name: String,
    pub lines: u64,
    pub bytes: u64,
    /// Entries by level.
    pub levels: std::collections::BTreeMap<String, u64>,
    /// ERROR and CRITICAL entries over all entries.
    pub error_ratio: f64,
    /// ERROR and CRITICAL entries a minute, over the last five minutes.
    pub errors_per_minute: f64,
    /// The most repeated ERROR/CRITICAL messages, most frequent first.
    pub top_errors: Vec<TopError>,
    pub first_time: String,
    pub last_time: String,
    pub buffer: BufferState,
    /// Alerts still in the recent-alerts list for this watcher.
    pub alerts: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct BufferState {
    pub bytes: u64,
    pub entries: u64,
    pub stream_cap_bytes: u64,
    pub evicted_lines: u64,
    pub dropped_bytes: u64,
}

/// Counts an error under its signature; a bounded table (when full, the least frequent
/// signature makes room: the space-saving scheme for heavy hitters).
fn note_error(s: &mut Stats, text: &str, time_ms: u64) {
    // A traceback is known by its last line (the exception), a line by itself.
    let headline = text.lines().next_back().unwrap_or("");
    let sig: String = super::cut(headline, 200).chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
    let inherited = if !s.top.contains_key(&sig) && s.top.len() >= TOP_ERRORS {
        let (k, c) = s.top.iter().min_by_key(|(_, t)| t.count).map(|(k, t)| (k.clone(), t.count)).expect("the table is full");
        s.top.remove(&k);
        c
    } else {
        0
    };
    let t = s.top.entry(sig.clone()).or_insert_with(|| TopError {
        message: sig,
        count: inherited,
        example: String::new(),
        last_time: String::new(),
    });
    t.count += 1;
    t.example = super::cut(text, 300).to_string();
    t.last_time = super::rfc3339(time_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::alerts::Alerting;

    fn store(stream: usize, global: usize) -> Store {
        Store::new(Caps { stream, global, max_watchers: 8 }, Alerting::new(&[], 8).unwrap(), Some(Metrics::new()))
    }

    fn lines(n: usize, len: usize, level: Level) -> Vec<Line> {
        (0..n).map(|i| Line { text: format!("{i:0len$}"), level, truncated: false }).collect()
    }

    fn recount(s: &Store) -> usize {
        s.watchers.values().map(Watcher::held).sum()
    }

    #[test]
    fn accounting_matches_what_is_held_and_caps_hold() {
        let mut s = store(20_000, 50_000);
        for round in 0..50 {
            s.push("loud", Stream::Stdout, lines(100, 100, Level::Info), 0, round);
            s.push("loud", Stream::Stderr, lines(10, 50, Level::Error), 0, round);
            assert_eq!(s.held, recount(&s));
            assert!(s.held <= 50_000, "{}", s.held);
            for w in s.watchers.values() {
                for r in &w.rings {
                    assert!(r.held() <= 20_000 + 64 * size_of::<Entry>(), "{}", r.held());
                }
            }
        }
        let w = &s.watchers["loud"];
        let pushed = 50 * 110;
        let kept = w.rings[0].entries.len() + w.rings[1].entries.len();
        assert_eq!(w.stats.evicted_lines as usize + kept, pushed);
    }

    #[test]
    fn spare_slots_are_given_back_before_lines() {
        // Short lines under a small cap: the ring's slot capacity is a large part of what is held.
        let mut s = store(16_384, 1 << 22);
        for t in 0..100 {
            s.push("w", Stream::Stdout, lines(50, 8, Level::Info), 0, t);
        }
        let w = &s.watchers["w"];
        assert!(w.rings[0].held() <= 16_384);
        assert!(w.rings[0].entries.len() > 150, "only {} entries kept", w.rings[0].entries.len());
    }

    #[test]
    fn a_loud_watcher_cannot_evict_a_quiet_one_below_its_share() {
        let mut s = store(1 << 20, 60_000);
        s.push("quiet", Stream::Stdout, lines(20, 100, Level::Info), 0, 1);
        let quiet_before = s.watchers["quiet"].held();
        for t in 0..200 {
            s.push("loud", Stream::Stdout, lines(100, 100, Level::Info), 0, t);
        }
        assert!(s.held <= 60_000);
        assert_eq!(s.watchers["quiet"].rings[0].entries.len(), 20, "the quiet watcher lost lines");
        assert_eq!(s.watchers["quiet"].held(), quiet_before);
        assert!(s.watchers["loud"].stats.evicted_lines > 0);
    }

    #[test]
    fn reads_merge_streams_filter_and_bound() {
        let mut s = store(1 << 20, 1 << 22);
        s.push("w", Stream::Stdout, vec![Line { text: "a".into(), level: Level::Info, truncated: false }], 0, 1000);
        s.push("w", Stream::Stderr, vec![Line { text: "b boom".into(), level: Level::Error, truncated: false }], 0, 2000);
        s.push("w", Stream::Stdout, vec![Line { text: "c".into(), level: Level::Debug, truncated: false }], 0, 3000);
        let all = s.read("w", &Query { limit: 10, max_bytes: 1000, ..Default::default() }).unwrap();
        assert_eq!(all.entries.iter().map(|e| &*e.text).collect::<Vec<_>>(), ["a", "b boom", "c"]);
        let q = |f: Query| s.read("w", &Query { limit: 10, max_bytes: 1000, ..f }).unwrap().entries.len();
        assert_eq!(q(Query { min_level: Some(Level::Warning), ..Default::default() }), 1);
        assert_eq!(q(Query { stream: Some(Stream::Stdout), ..Default::default() }), 2);
        assert_eq!(q(Query { since_ms: Some(2000), ..Default::default() }), 2);
        assert_eq!(q(Query { after: Some(2), ..Default::default() }), 1);
        assert_eq!(q(Query { before: Some(3), ..Default::default() }), 2);
        assert_eq!(q(Query { contains: Some("boom".into()), ..Default::default() }), 1);
        let two = s.read("w", &Query { limit: 2, max_bytes: 1000, ..Default::default() }).unwrap();
        assert!(two.more);
        assert_eq!(two.entries[1].text.as_ref(), "c");
        assert!(s.read("nope", &Query::default()).is_none());
    }

    #[test]
    fn followers_see_every_line_once_or_a_skip_count() {
        let mut s = store(3_000, 1 << 22);
        let mut c = s.cursor_at_end("w");
        s.push("w", Stream::Stdout, lines(5, 10, Level::Info), 0, 1);
        s.push("w", Stream::Stderr, lines(5, 10, Level::Info), 0, 1);
        let (got, skipped) = s.follow("w", None, &mut c, 100);
        assert_eq!((got.len(), skipped), (10, 0));
        assert!(got.windows(2).all(|p| p[0].seq < p[1].seq));
        // A slow follower: far more than the ring holds arrives before it reads again.
        s.push("w", Stream::Stdout, lines(500, 10, Level::Info), 0, 2);
        let (got, skipped) = s.follow("w", None, &mut c, 10_000);
        assert!(skipped > 0);
        assert_eq!(got.len() as u64 + skipped, 500);
    }

    #[test]
    fn summary_groups_repeated_errors() {
        let mut s = store(1 << 20, 1 << 22);
        for i in 0..5 {
            s.push(
                "w",
                Stream::Stderr,
                vec![Line { text: format!("ERROR timeout after {i}s"), level: Level::Error, truncated: false }],
                0,
                60_000,
            );
        }
        s.push("w", Stream::Stdout, lines(5, 10, Level::Info), 0, 61_000);
        let sum = s.summary("w", 61_000).unwrap();
        assert_eq!(sum.lines, 10);
        assert_eq!(sum.top_errors[0].message, "ERROR timeout after #s");
        assert_eq!(sum.top_errors[0].count, 5);
        assert!((sum.error_ratio - 0.5).abs() < 1e-9);
        assert!((sum.errors_per_minute - 1.0).abs() < 1e-9);
    }
}
