//! Alert rules over classified entries: a level threshold, a pattern, or a rate ("more than N
//! lines at LEVEL within W seconds"), each with an id and a severity. A firing is counted and
//! kept in a bounded list; matches during a rule's cooldown are folded into the last firing.

use std::collections::VecDeque;

use globset::{Glob, GlobMatcher};
use regex::Regex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::Stream;
use super::classify::Level;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Lines at this level or above count.
    pub level: Level,
    /// Fires when more than `count` lines arrive within `window_s`.
    #[validate(range(min = 1, max = 100_000))]
    pub count: u32,
    #[validate(range(min = 1, max = 86_400))]
    pub window_s: u32,
}

/// One rule as configured. Exactly one of `level`, `pattern` and `rate` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    #[validate(length(min = 1, max = 64))]
    pub id: String,
    pub severity: Severity,
    /// Every line at this level or above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Every line this regular expression matches (linear-time `regex` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[validate(length(min = 1, max = 1024))]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[validate(nested)]
    pub rate: Option<RateRule>,
    /// Watchers the rule applies to (a glob); absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchers: Option<String>,
    /// Only this stream; absent means both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    /// After firing for a watcher, further matches within this many seconds are folded into
    /// that alert's count instead of firing again. A rate rule waits at least its window.
    #[serde(default = "default_cooldown")]
    #[validate(range(max = 86_400))]
    pub cooldown_s: u32,
}

fn default_cooldown() -> u32 {
    60
}

/// The rules shipped when the config names none.
pub fn default_rules() -> Vec<AlertRule> {
    let rule = |id: &str, severity| AlertRule {
        id: id.into(),
        severity,
        level: None,
        pattern: None,
        rate: None,
        watchers: None,
        stream: None,
        cooldown_s: default_cooldown(),
    };
    vec![
        AlertRule { level: Some(Level::Critical), ..rule("critical-line", Severity::Critical) },
        AlertRule { rate: Some(RateRule { level: Level::Error, count: 10, window_s: 60 }), ..rule("error-burst", Severity::Warning) },
    ]
}

enum Kind {
    Level(Level),
    Pattern(Regex),
    Rate { level: Level, count: usize, window_ms: u64 },
}

struct Compiled {
    id: String,
    severity: Severity,
    kind: Kind,
    watchers: Option<GlobMatcher>,
    stream: Option<Stream>,
    cooldown_ms: u64,
}

/// A firing, as listed by `list_alerts` and pushed to subscribers.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Alert {
    /// Increases with every firing (per warden run).
    pub id: u64,
    pub rule: String,
    pub severity: Severity,
    pub watcher: String,
    pub stream: Stream,
    pub level: Level,
    /// When it fired (RFC 3339).
    pub time: String,
    #[serde(skip)]
    pub time_ms: u64,
    /// The entry that fired it, cut to 512 bytes.
    pub message: String,
    /// Matches folded into this firing (1 + those within the cooldown).
    pub count: u64,
}

/// Compiled rules plus their per-watcher state.
pub struct Alerting {
    rules: Vec<Compiled>,
    /// (rule index, watcher) → recent match times (rate rules) and the last firing.
    state: FxHashMap<(usize, String), RuleState>,
    recent: VecDeque<Alert>,
    max_recent: usize,
    next_id: u64,
}

#[derive(Default)]
struct RuleState {
    times: VecDeque<u64>,
    /// Index-free handle on the last firing: its id and time.
    last: Option<(u64, u64)>,
}

impl Alerting {
    pub fn new(rules: &[AlertRule], max_recent: usize) -> Result<Alerting, String> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let at = format!("output.alerts[{i}] ({})", r.id);
            let kind = match (&r.level, &r.pattern, &r.rate) {
                (Some(l), None, None) => Kind::Level(*l),
                (None, Some(p), None) => Kind::Pattern(Regex::new(p).map_err(|e| format!("{at}.pattern: {e}"))?),
                (None, None, Some(rate)) => {
                    Kind::Rate { level: rate.level, count: rate.count as usize, window_ms: u64::from(rate.window_s) * 1000 }
                }
                _ => return Err(format!("{at}: set exactly one of level, pattern and rate")),
            };
            let watchers = match &r.watchers {
                Some(g) => Some(Glob::new(g).map_err(|e| format!("{at}.watchers: {e}"))?.compile_matcher()),
                None => None,
            };
            if rules[..i].iter().any(|o| o.id == r.id) {
                return Err(format!("{at}.id: duplicate id"));
            }
            let window = match kind {
                Kind::Rate { window_ms, .. } => window_ms,
                _ => 0,
            };
            compiled.push(Compiled {
                id: r.id.clone(),
                severity: r.severity,
                kind,
                watchers,
                stream: r.stream,
                cooldown_ms: (u64::from(r.cooldown_s) * 1000).max(window),
            });
        }
        Ok(Alerting { rules: compiled, state: FxHashMap::default(), recent: VecDeque::new(), max_recent, next_id: 1 })
    }

    /// Evaluates one entry; returns the new firings (folded matches return nothing).
    pub fn observe(&mut self, watcher: &str, stream: Stream, level: Level, text: &str, time_ms: u64, fired: &mut Vec<Alert>) {
        for (i, r) in self.rules.iter().enumerate() {
            if r.stream.is_some_and(|s| s != stream) || r.watchers.as_ref().is_some_and(|g| !g.is_match(watcher)) {
                continue;
            }
            let matched = match &r.kind {
                Kind::Level(min) | Kind::Rate { level: min, .. } => level >= *min,
                Kind::Pattern(re) => re.is_match(text),
            };
            if !matched {
                continue;
            }
            let key = (i, watcher.to_string());
            let st = self.state.entry(key).or_default();
            if let Some((id, at)) = st.last {
                if time_ms < at + r.cooldown_ms {
                    if let Some(a) = self.recent.iter_mut().rev().find(|a| a.id == id) {
                        a.count += 1;
                    }
                    continue;
                }
            }
            if let Kind::Rate { count, window_ms, .. } = r.kind {
                st.times.push_back(time_ms);
                while st.times.len() > count + 1 || st.times.front().is_some_and(|t| t + window_ms < time_ms) {
                    st.times.pop_front();
                }
                if st.times.len() <= count {
                    continue;
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            st.last = Some((id, time_ms));
            st.times.clear();
            let alert = Alert {
                id,
                rule: r.id.clone(),
                severity: r.severity,
                watcher: watcher.to_string(),
                stream,
                level,
                time: super::rfc3339(time_ms),
                time_ms,
                message: super::cut(text, 512).to_string(),
                count: 1,
            };
            if self.recent.len() == self.max_recent {
                self.recent.pop_front();
            }
            self.recent.push_back(alert.clone());
            fired.push(alert);
        }
    }

    /// Recent firings, oldest first, optionally for one watcher and after a time.
    pub fn list(&self, watcher: Option<&str>, since_ms: Option<u64>) -> Vec<Alert> {
        self.recent.iter().filter(|a| watcher.is_none_or(|w| a.watcher == w) && since_ms.is_none_or(|t| a.time_ms >= t)).cloned().collect()
    }

    /// The newest firing for `watcher` still listed (0 when none).
    pub fn last_id_for(&self, watcher: &str) -> u64 {
        self.recent.iter().rev().find(|a| a.watcher == watcher).map_or(0, |a| a.id)
    }

    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Drops per-watcher state of a watcher whose logs are gone.
    pub fn forget(&mut self, watcher: &str) {
        self.state.retain(|(_, w), _| w != watcher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str) -> AlertRule {
        AlertRule {
            id: id.into(),
            severity: Severity::Warning,
            level: None,
            pattern: None,
            rate: None,
            watchers: None,
            stream: None,
            cooldown_s: 0,
        }
    }

    #[test]
    fn rate_fires_above_the_count_within_the_window() {
        let r = AlertRule { rate: Some(RateRule { level: Level::Error, count: 3, window_s: 10 }), ..rule("burst") };
        let mut a = Alerting::new(&[r], 10).unwrap();
        let mut fired = Vec::new();
        for t in [0, 1000, 2000] {
            a.observe("w", Stream::Stderr, Level::Error, "e", t, &mut fired);
        }
        // Three errors, then a WARNING: not above the count.
        a.observe("w", Stream::Stderr, Level::Warning, "w", 2500, &mut fired);
        assert!(fired.is_empty());
        // Spread out: the window forgets the old ones.
        a.observe("w", Stream::Stderr, Level::Error, "e", 20_000, &mut fired);
        assert!(fired.is_empty());
        for t in [20_100, 20_200, 20_300] {
            a.observe("w", Stream::Stderr, Level::Critical, "c", t, &mut fired);
        }
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule, "burst");
        // Within the window after firing: folded into the firing.
        a.observe("w", Stream::Stderr, Level::Error, "e", 21_000, &mut fired);
        assert_eq!(fired.len(), 1);
        assert_eq!(a.list(Some("w"), None)[0].count, 2);
    }

    #[test]
    fn level_and_pattern_rules_respect_scope_and_cooldown() {
        let rules = vec![
            AlertRule { level: Some(Level::Critical), cooldown_s: 5, ..rule("crit") },
            AlertRule {
                pattern: Some("(?i)out of memory".into()),
                watchers: Some("web-*".into()),
                stream: Some(Stream::Stderr),
                ..rule("oom")
            },
        ];
        let mut a = Alerting::new(&rules, 2).unwrap();
        let mut fired = Vec::new();
        a.observe("web-1", Stream::Stderr, Level::Info, "Out of memory!", 0, &mut fired);
        a.observe("db", Stream::Stderr, Level::Info, "out of memory", 0, &mut fired);
        a.observe("web-1", Stream::Stdout, Level::Info, "out of memory", 0, &mut fired);
        assert_eq!(fired.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(), ["oom"]);
        a.observe("db", Stream::Stdout, Level::Critical, "x", 1000, &mut fired);
        a.observe("db", Stream::Stdout, Level::Critical, "x", 2000, &mut fired);
        a.observe("db", Stream::Stdout, Level::Critical, "x", 7000, &mut fired);
        assert_eq!(fired.len(), 3);
        // The recent list is bounded.
        assert_eq!(a.list(None, None).len(), 2);
        assert_eq!(a.list(None, Some(5000)).len(), 1);
    }

    #[test]
    fn bad_rules_are_named() {
        let both = AlertRule { level: Some(Level::Error), pattern: Some("x".into()), ..rule("two") };
        assert!(Alerting::new(&[both], 1).err().unwrap().contains("output.alerts[0] (two): set exactly one"));
        let bad = AlertRule { pattern: Some("(".into()), ..rule("p") };
        assert!(Alerting::new(&[bad], 1).err().unwrap().contains("output.alerts[0] (p).pattern"));
        assert!(
            Alerting::new(&[AlertRule { level: Some(Level::Error), ..rule("a") }, AlertRule { level: Some(Level::Error), ..rule("a") }], 1)
                .is_err()
        );
    }
}
