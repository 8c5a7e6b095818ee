//! Argument shapes: which arguments a program may take, per position and per flag. The check
//! returns the argv to send (path arguments replaced by their canonical form), so what runs is
//! what was checked.

use rustc_hash::FxHashMap;
use std::path::PathBuf;

use globset::GlobSet;

use super::Violation;

/// One argument's rule: it must match one of the globs; a path is matched (and sent) canonical.
#[derive(Debug, Clone)]
pub struct ArgRule {
    pub globs: GlobSet,
    pub path: bool,
    /// Bytes a canonical path may have.
    pub max_path_bytes: usize,
    /// The patterns, for messages that say what would be allowed.
    pub shown: String,
}

#[derive(Debug, Clone)]
pub struct ArgShape {
    pub max_count: u32,
    pub max_bytes: u32,
    pub positional: Vec<ArgRule>,
    pub min_positional: u32,
    /// Allowed flags; `Some(rule)` when the flag takes a value.
    pub flags: FxHashMap<String, Option<ArgRule>>,
    pub rest: Option<ArgRule>,
    pub deny: GlobSet,
}

impl ArgRule {
    /// The value to send, or a violation on `field`.
    fn check(
        &self,
        index: usize,
        value: &str,
        paths: &FxHashMap<String, Result<PathBuf, String>>,
        v: &mut Vec<Violation>,
    ) -> Option<String> {
        let field = || format!("args[{index}]");
        let subject = if self.path {
            match paths.get(value) {
                Some(Ok(p)) => {
                    // The canonical path is what circus receives: it must be plain text too
                    // (a symlink can point at a name with circus expansion syntax in it).
                    let canonical = p.to_string_lossy().into_owned();
                    let before = v.len();
                    super::decide::check_text(field, &canonical, self.max_path_bytes, v);
                    if v.len() > before {
                        return None;
                    }
                    canonical
                }
                Some(Err(why)) => {
                    v.push(Violation::new(field(), "args.path", format!("{value:?} {why}")));
                    return None;
                }
                None => {
                    v.push(Violation::new(field(), "args.path", format!("{value:?} was not resolved")));
                    return None;
                }
            }
        } else {
            // Match before copying: most values are checked once and sent once.
            if self.globs.is_match(value) {
                return Some(value.to_string());
            }
            value.to_string()
        };
        if self.globs.is_match(&subject) {
            Some(subject)
        } else {
            let what = if self.path { format!("{value:?} (resolving to {subject})") } else { format!("{value:?}") };
            v.push(Violation::new(field(), "args.pattern", format!("{what} does not match {}", self.shown)));
            None
        }
    }
}

impl ArgShape {
    fn flag_list(&self) -> String {
        let mut f: Vec<&str> = self.flags.keys().map(String::as_str).collect();
        f.sort_unstable();
        if f.is_empty() { "none".into() } else { f.join(", ") }
    }

    /// Checks `args` against the shape. Returns the argv to send when no violation was added.
    pub fn check(&self, args: &[String], paths: &FxHashMap<String, Result<PathBuf, String>>, v: &mut Vec<Violation>) -> Vec<String> {
        let before = v.len();
        if args.len() > self.max_count as usize {
            v.push(Violation::new("args", "args.count", format!("at most {} arguments", self.max_count)));
        }
        for (i, a) in args.iter().enumerate() {
            if a.len() > self.max_bytes as usize {
                v.push(Violation::new(format!("args[{i}]"), "args.length", format!("at most {} bytes", self.max_bytes)));
            }
            if self.deny.is_match(a) {
                v.push(Violation::new(format!("args[{i}]"), "args.denied", format!("{a:?} is explicitly denied for this program")));
            }
        }
        if v.len() > before {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(args.len());
        let mut pos = 0usize;
        let mut i = 0usize;
        while i < args.len() {
            let a = &args[i];
            let field = || format!("args[{i}]");
            if !a.starts_with('-') {
                let rule = if pos < self.positional.len() {
                    pos += 1;
                    Some(&self.positional[pos - 1])
                } else {
                    self.rest.as_ref()
                };
                match rule {
                    Some(r) => out.extend(r.check(i, a, paths, v)),
                    None => v.push(Violation::new(
                        field(),
                        "args.extra",
                        format!(
                            "no further arguments are allowed after {} positional; allowed flags: {}",
                            self.positional.len(),
                            self.flag_list()
                        ),
                    )),
                }
                i += 1;
                continue;
            }
            if (pos as u32) < self.min_positional {
                v.push(Violation::new(
                    field(),
                    "args.positional",
                    format!("expected positional argument {} matching {}, not a flag", pos, self.positional[pos].shown),
                ));
                return out;
            }
            let (flag, inline) = match a.split_once('=') {
                Some((f, val)) => (f, Some(val)),
                None => (a.as_str(), None),
            };
            match self.flags.get(flag) {
                None => v.push(Violation::new(
                    field(),
                    "args.flag",
                    format!("flag {flag:?} is not allowed; allowed flags: {}", self.flag_list()),
                )),
                Some(None) if inline.is_some() => v.push(Violation::new(field(), "args.flag", format!("flag {flag} takes no value"))),
                Some(None) => out.push(a.clone()),
                Some(Some(rule)) => match inline {
                    Some(val) => {
                        if let Some(checked) = rule.check(i, val, paths, v) {
                            out.push(format!("{flag}={checked}"));
                        }
                    }
                    None => match args.get(i + 1) {
                        Some(val) => {
                            if let Some(checked) = rule.check(i + 1, val, paths, v) {
                                out.push(flag.to_string());
                                out.push(checked);
                            }
                            i += 1;
                        }
                        None => v.push(Violation::new(field(), "args.flag", format!("flag {flag} needs a value matching {}", rule.shown))),
                    },
                },
            }
            i += 1;
        }
        if (pos as u32) < self.min_positional {
            v.push(Violation::new(
                "args",
                "args.positional",
                format!(
                    "expected at least {} positional arguments; missing one matching {}",
                    self.min_positional, self.positional[pos].shown
                ),
            ));
        }
        out
    }
}
