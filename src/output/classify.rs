//! Line levels: the six levels, the built-in recognisers for plain text, logfmt and JSON logs,
//! and configured patterns. Everything here is linear in the line: configured patterns use
//! the `regex` crate (finite automata, no backtracking) and the built-ins scan a bounded prefix.

use std::fmt;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use memchr::memmem;
use regex::bytes::RegexSet;
use serde::{Deserialize, Serialize};

use super::Stream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Level {
    pub const ALL: [Level; 6] = [Level::Trace, Level::Debug, Level::Info, Level::Warning, Level::Error, Level::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    /// A level word as logging libraries write it, in any case (`warn`, `err`, `fatal`, …).
    pub fn from_word(w: &[u8]) -> Option<Level> {
        let mut buf = [0u8; 9];
        if w.len() > buf.len() {
            return None;
        }
        for (d, s) in buf.iter_mut().zip(w) {
            *d = s.to_ascii_lowercase();
        }
        Some(match &buf[..w.len()] {
            b"trace" => Level::Trace,
            b"debug" => Level::Debug,
            b"info" | b"notice" => Level::Info,
            b"warn" | b"warning" => Level::Warning,
            b"error" | b"err" => Level::Error,
            b"critical" | b"crit" | b"fatal" | b"panic" | b"emerg" | b"alert" => Level::Critical,
            _ => return None,
        })
    }

    /// pino/bunyan numeric levels.
    fn from_number(n: u32) -> Option<Level> {
        Some(match n {
            10 => Level::Trace,
            20 => Level::Debug,
            30 => Level::Info,
            40 => Level::Warning,
            50 => Level::Error,
            60 => Level::Critical,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Level {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Level::from_word(s.as_bytes()).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown level {s:?}; expected TRACE, DEBUG, INFO, WARNING, ERROR or CRITICAL"))
        })
    }
}

impl schemars::JsonSchema for Level {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Level".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
            "description": "A line level (WARN, ERR, FATAL and lowercase are accepted too)"
        })
    }
}

/// How far into a line the built-in recognisers look for a level word.
const PREFIX: usize = 200;

/// One configured pattern: lines it matches get `level`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LevelPattern {
    /// A regular expression (Rust `regex` syntax; matching is linear-time).
    pub pattern: String,
    pub level: Level,
}

/// The compiled classifier: configured patterns first (the first that matches wins), then the
/// built-in recognisers, then the stream's default level.
pub struct Classifier {
    patterns: Option<(RegexSet, Vec<Level>)>,
    words: AhoCorasick,
    json_keys: [memmem::Finder<'static>; 4],
    logfmt_keys: [memmem::Finder<'static>; 3],
    defaults: [Level; 2],
}

const WORDS: &[&str] = &["TRACE", "DEBUG", "INFO", "NOTICE", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL", "PANIC"];

impl Classifier {
    /// Compiles once; a bad pattern is an error naming its index.
    pub fn new(patterns: &[LevelPattern], stdout: Level, stderr: Level) -> Result<Classifier, String> {
        let patterns = if patterns.is_empty() {
            None
        } else {
            for (i, p) in patterns.iter().enumerate() {
                regex::bytes::Regex::new(&p.pattern).map_err(|e| format!("output.patterns[{i}].pattern: {e}"))?;
            }
            let set = RegexSet::new(patterns.iter().map(|p| &p.pattern)).map_err(|e| format!("output.patterns: {e}"))?;
            Some((set, patterns.iter().map(|p| p.level).collect()))
        };
        let words = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(WORDS)
            .map_err(|e| e.to_string())?;
        Ok(Classifier {
            patterns,
            words,
            json_keys: [
                memmem::Finder::new(b"\"level\""),
                memmem::Finder::new(b"\"severity\""),
                memmem::Finder::new(b"\"levelname\""),
                memmem::Finder::new(b"\"lvl\""),
            ],
            logfmt_keys: [memmem::Finder::new(b"level="), memmem::Finder::new(b"lvl="), memmem::Finder::new(b"severity=")],
            defaults: [stdout, stderr],
        })
    }

    pub fn classify(&self, line: &[u8], stream: Stream) -> Level {
        if let Some((set, levels)) = &self.patterns {
            if let Some(i) = set.matches(line).iter().next() {
                return levels[i];
            }
        }
        self.builtin(line).unwrap_or(self.defaults[stream as usize])
    }

    /// JSON `level`/`severity`, logfmt `level=`, then a level word near the start.
    pub fn builtin(&self, line: &[u8]) -> Option<Level> {
        let start = line.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(line.len());
        let line = &line[start..];
        if line.first() == Some(&b'{') {
            for key in &self.json_keys {
                if let Some(at) = key.find(line) {
                    if let Some(level) = json_value(&line[at + key.needle().len()..]) {
                        return Some(level);
                    }
                }
            }
        }
        let prefix = &line[..line.len().min(PREFIX)];
        for key in &self.logfmt_keys {
            if let Some(at) = key.find(prefix) {
                if at == 0 || prefix[at - 1] == b' ' {
                    let mut v = &line[at + key.needle().len()..];
                    if v.first() == Some(&b'"') {
                        v = &v[1..];
                    }
                    let end = v.iter().position(|b| !b.is_ascii_alphabetic()).unwrap_or(v.len());
                    if let Some(level) = Level::from_word(&v[..end]) {
                        return Some(level);
                    }
                }
            }
        }
        for m in self.words.find_iter(prefix) {
            let (s, e) = (m.start(), m.end());
            let word = &prefix[s..e];
            let before = s.checked_sub(1).map(|i| prefix[i]);
            let after = prefix.get(e).copied();
            let boundary = |b: Option<u8>| b.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_'));
            let upper = word.iter().all(u8::is_ascii_uppercase);
            let accepted = (upper && boundary(before) && boundary(after))
                || (before == Some(b'[') && after == Some(b']'))
                || (s == 0 && after == Some(b':'));
            if accepted {
                return Level::from_word(word);
            }
        }
        None
    }
}

/// After a JSON key: `: "word"` or `: 50`.
fn json_value(rest: &[u8]) -> Option<Level> {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while rest.get(*i).is_some_and(u8::is_ascii_whitespace) {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if rest.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    match rest.get(i)? {
        b'"' => {
            let v = &rest[i + 1..];
            let end = memchr::memchr(b'"', &v[..v.len().min(16)])?;
            Level::from_word(&v[..end])
        }
        b'0'..=b'9' => {
            let digits = rest[i..].iter().take_while(|b| b.is_ascii_digit()).take(3);
            let n = digits.fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            Level::from_number(n)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> Classifier {
        Classifier::new(&[], Level::Info, Level::Info).unwrap()
    }

    #[test]
    fn plain_text_formats() {
        let c = c();
        let cases: &[(&str, Level)] = &[
            ("ERROR:root:boom", Level::Error),
            ("WARNING:app:slow", Level::Warning),
            ("2026-11-21 10:00:00,123 INFO [web] started", Level::Info),
            ("[2026-11-21 10:00:00 +0000] [42] [ERROR] Worker timeout", Level::Error),
            ("2026/11/21 10:00:00 [error] 7#7: open() failed", Level::Error),
            ("[warn] deprecated", Level::Warning),
            ("error: cannot open file", Level::Error),
            ("ts=1 level=debug msg=hi", Level::Debug),
            ("ts=1 level=\"warn\" msg=hi", Level::Warning),
            ("FATAL: out of memory", Level::Critical),
            ("CRITICAL something", Level::Critical),
            ("  DEBUG indented", Level::Debug),
        ];
        for (line, want) in cases {
            assert_eq!(c.builtin(line.as_bytes()), Some(*want), "{line}");
        }
    }

    #[test]
    fn words_inside_other_words_or_prose_do_not_count() {
        let c = c();
        for line in ["Information about 3 errors", "no Errors found", "INFORMATION", "the error count is 0", "TERROR", "ERRORS_TOTAL 3"] {
            assert_eq!(c.builtin(line.as_bytes()), None, "{line}");
        }
        assert_eq!(c.classify(b"hello", Stream::Stdout), Level::Info);
    }

    #[test]
    fn json_logs() {
        let c = c();
        assert_eq!(c.builtin(br#"{"time":"x","level":"error","msg":"a"}"#), Some(Level::Error));
        assert_eq!(c.builtin(br#"{"severity": "WARNING", "message": "b"}"#), Some(Level::Warning));
        assert_eq!(c.builtin(br#"{"level":50,"msg":"pino"}"#), Some(Level::Error));
        assert_eq!(c.builtin(br#"{"levelname":"CRITICAL"}"#), Some(Level::Critical));
        assert_eq!(c.builtin(br#"{"msg":"level is fine"}"#), None);
    }

    #[test]
    fn configured_patterns_win_and_bad_ones_are_named() {
        let p = vec![
            LevelPattern { pattern: "^E\\d{4} ".into(), level: Level::Error },
            LevelPattern { pattern: "(?i)deprecated".into(), level: Level::Warning },
        ];
        let c = Classifier::new(&p, Level::Info, Level::Warning).unwrap();
        assert_eq!(c.classify(b"E1121 glog style", Stream::Stdout), Level::Error);
        assert_eq!(c.classify(b"INFO: Deprecated call", Stream::Stdout), Level::Warning);
        assert_eq!(c.classify(b"plain", Stream::Stderr), Level::Warning);
        let bad = vec![LevelPattern { pattern: "(".into(), level: Level::Error }];
        assert!(Classifier::new(&bad, Level::Info, Level::Info).err().unwrap().contains("output.patterns[0].pattern"));
    }
}
