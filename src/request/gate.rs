//! The single gate every mutating tool passes before anything is sent to circusd.
//!
//! This is the interim deny-by-default gate: executables from config, forced-safe circus
//! options, exact names, bounded arguments. The policy engine replaces [`Gate::decide`] and
//! keeps its shape: filesystem facts are gathered first ([`Gate::facts`]), the decision is a
//! pure function of the compiled gate, the request and those facts, and an allowed decision
//! carries the exact [`Command`] that will be sent — nothing is re-derived after the check.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::circus::{signal_number, Command, WatcherName};
use crate::config::GateConfig;

/// Watchers no request may touch, whatever the config says.
const RESERVED_WATCHERS: &[&str] = &["circusd-stats"];

/// Environment variables that load code or redirect trust; denied by name or prefix always.
const DENIED_ENV: &[&str] = &[
    "PATH", "HOME", "SHELL", "IFS", "ENV", "BASH_ENV", "CDPATH", "PS4", "PROMPT_COMMAND",
    "NODE_OPTIONS", "NODE_PATH", "NODE_EXTRA_CA_CERTS", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
    "PYTHONUSERBASE", "PYTHONINSPECT", "PYTHONBREAKPOINT", "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB",
    "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    "OPENSSL_CONF", "OPENSSL_ENGINES", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "GIT_SSH_COMMAND", "GIT_SSH", "GIT_ASKPASS", "GIT_EXEC_PATH", "GIT_CONFIG",
    "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "SSH_ASKPASS", "EDITOR", "VISUAL", "PAGER", "TMPDIR",
    "GCONV_PATH", "LOCPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "MALLOC_CHECK_",
];
const DENIED_ENV_PREFIXES: &[&str] = &["LD_", "DYLD_", "GIT_CONFIG_", "CIRCUS", "PYTHON", "NODE_", "NPM_CONFIG_", "GLIBC_"];
const DENIED_ENV_SUFFIXES: &[&str] = &["_PROXY"];
const MAX_ENV_NAME: usize = 128;
const MAX_ENV_VALUE: usize = 4096;
const MAX_COMMAND: usize = 4096;

/// One failed check: which field, which rule, and what would have been allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub field: String,
    pub rule: &'static str,
    pub message: String,
}

impl Violation {
    fn new(field: impl Into<String>, rule: &'static str, message: impl Into<String>) -> Violation {
        Violation { field: field.into(), rule, message: message.into() }
    }
}

/// An `add_process` request as the agent sent it (after JSON decoding, before any check).
#[derive(Debug, Clone, PartialEq)]
pub struct AddRequest {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub num_processes: u32,
    pub start: bool,
}

/// Every request that can change what runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Add(AddRequest),
    Start { name: String },
    Stop { name: String },
    Restart { name: String },
    Reload { name: String },
    Remove { name: String },
    /// `current` is the watcher's process count now; the gate turns the change into incr/decr.
    Scale { name: String, num_processes: u32, current: u32 },
    Signal { name: String, signal: String },
}

/// Filesystem facts about a request, gathered before the (pure) decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The command resolved through the gate's search path and canonicalised.
    pub command: Option<Result<PathBuf, String>>,
    /// The canonical working directory, or why it has none.
    pub working_dir: Option<Result<PathBuf, String>>,
}

/// The outcome: the exact command to send, or every reason it may not be sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Command),
    Deny(Vec<Violation>),
}

/// The compiled gate.
#[derive(Debug, Clone)]
pub struct Gate {
    executables: HashSet<PathBuf>,
    search_path: Vec<PathBuf>,
    working_dirs: Vec<PathBuf>,
    max_processes: u32,
    max_args: usize,
    max_arg_bytes: usize,
    max_env: usize,
    signals: Vec<&'static str>,
    protected: HashSet<String>,
    graceful_timeout_s: u32,
}

impl Gate {
    /// Compiles the config. Allowlisted executables and roots are canonicalised now; an entry
    /// that does not exist is dropped with a warning (it can allow nothing).
    pub fn compile(c: &GateConfig) -> Gate {
        let canon = |paths: &[PathBuf], what: &str| -> Vec<PathBuf> {
            paths
                .iter()
                .filter_map(|p| match p.canonicalize() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "gate.{what} entry ignored");
                        None
                    }
                })
                .collect()
        };
        Gate {
            executables: canon(&c.executables, "executables").into_iter().collect(),
            search_path: c.search_path.clone(),
            working_dirs: canon(&c.working_dirs, "working_dirs"),
            max_processes: c.max_processes,
            max_args: c.max_args,
            max_arg_bytes: c.max_arg_bytes,
            max_env: c.max_env,
            signals: c.signals.iter().filter_map(|s| signal_number(s).map(|(n, _)| n)).collect(),
            protected: c.protected_watchers.iter().map(|s| s.to_ascii_lowercase()).collect(),
            graceful_timeout_s: c.graceful_timeout_s,
        }
    }

    /// Gathers what the decision needs to know from the filesystem.
    pub fn facts(&self, req: &Request) -> Facts {
        let Request::Add(add) = req else { return Facts::default() };
        Facts {
            command: Some(self.resolve_command(&add.command)),
            working_dir: add.working_dir.as_deref().map(|d| {
                let p = Path::new(d);
                if !p.is_absolute() {
                    return Err("must be an absolute path".to_string());
                }
                match p.canonicalize() {
                    Ok(c) if c.is_dir() => Ok(c),
                    Ok(_) => Err("is not a directory".into()),
                    Err(e) => Err(format!("does not resolve: {e}")),
                }
            }),
        }
    }

    /// Resolves a command: an absolute path as is, a bare name through the gate's own search
    /// path (never the request's `PATH`), then canonicalised so symlinks cannot disguise it.
    fn resolve_command(&self, command: &str) -> Result<PathBuf, String> {
        let p = Path::new(command);
        let found = if p.is_absolute() {
            p.to_path_buf()
        } else if command.contains('/') {
            return Err("relative paths are not resolved; give an absolute path or a bare program name".into());
        } else {
            self.search_path
                .iter()
                .map(|d| d.join(command))
                .find(|c| c.is_file())
                .ok_or_else(|| format!("not found in the gate's search path {:?}", self.search_path))?
        };
        let canonical = found.canonicalize().map_err(|e| format!("does not resolve: {e}"))?;
        if !canonical.is_file() {
            return Err("is not a regular file".into());
        }
        Ok(canonical)
    }

    /// The decision. Pure: no I/O; everything it knows is in `self`, `req` and `facts`.
    pub fn decide(&self, req: &Request, facts: &Facts) -> Decision {
        let mut v = Vec::new();
        let command = match req {
            Request::Add(add) => self.decide_add(add, facts, &mut v),
            Request::Start { name } => self.name(name, &mut v).map(|name| Command::Start { name }),
            Request::Stop { name } => self.name(name, &mut v).map(|name| Command::Stop { name }),
            Request::Restart { name } => self.name(name, &mut v).map(|name| Command::Restart { name }),
            Request::Reload { name } => self.name(name, &mut v).map(|name| Command::Reload { name }),
            Request::Remove { name } => self.name(name, &mut v).map(|name| Command::Rm { name }),
            Request::Scale { name, num_processes, current } => {
                let name = self.name(name, &mut v);
                self.process_count("num_processes", *num_processes, &mut v);
                match name {
                    Some(name) if v.is_empty() && num_processes >= current => {
                        Some(Command::Incr { name, nb: num_processes - current })
                    }
                    Some(name) if v.is_empty() => Some(Command::Decr { name, nb: current - num_processes }),
                    _ => None,
                }
            }
            Request::Signal { name, signal } => {
                let name = self.name(name, &mut v);
                let signum = match signal_number(signal) {
                    Some((n, num)) if self.signals.contains(&n) => Some(num),
                    _ => {
                        v.push(Violation::new("signal", "signal.allowed", format!("allowed signals: {}", self.signals.join(", "))));
                        None
                    }
                };
                name.zip(signum).map(|(name, signum)| Command::Signal { name, signum })
            }
        };
        match command {
            Some(c) if v.is_empty() => Decision::Allow(c),
            _ => {
                if v.is_empty() {
                    v.push(Violation::new("request", "gate.internal", "the request could not be checked"));
                }
                Decision::Deny(v)
            }
        }
    }

    fn name(&self, raw: &str, v: &mut Vec<Violation>) -> Option<WatcherName> {
        let Some(name) = WatcherName::parse(raw) else {
            v.push(Violation::new("name", "name.syntax", format!("watcher names are {}", WatcherName::RULE)));
            return None;
        };
        if RESERVED_WATCHERS.contains(&name.as_str()) || self.protected.contains(name.as_str()) {
            v.push(Violation::new("name", "name.protected", format!("watcher '{name}' is protected; choose another watcher")));
            return None;
        }
        Some(name)
    }

    fn process_count(&self, field: &str, n: u32, v: &mut Vec<Violation>) {
        if n == 0 || n > self.max_processes {
            v.push(Violation::new(field, "processes.range", format!("must be between 1 and {}", self.max_processes)));
        }
    }

    fn decide_add(&self, add: &AddRequest, facts: &Facts, v: &mut Vec<Violation>) -> Option<Command> {
        let name = self.name(&add.name, v);
        self.process_count("num_processes", add.num_processes, v);

        check_text("command", &add.command, MAX_COMMAND, v);
        if add.command.contains(['*', '?', '[', ']', '{', '}']) {
            v.push(Violation::new("command", "command.glob", "glob characters are not allowed in a command"));
        }
        let executable = match &facts.command {
            Some(Ok(path)) if self.executables.contains(path) => {
                check_text("command", &path.to_string_lossy(), MAX_COMMAND, v);
                Some(path.clone())
            }
            Some(Ok(path)) => {
                v.push(Violation::new("command", "command.allowlist", format!(
                    "{} resolves to {}, which is not an allowed executable; allowed: {}",
                    add.command, path.display(), self.allowed_list())));
                None
            }
            Some(Err(why)) => {
                v.push(Violation::new("command", "command.resolve", format!("{}: {why}", add.command)));
                None
            }
            None => {
                v.push(Violation::new("command", "command.resolve", "the command was not resolved"));
                None
            }
        };

        if add.args.len() > self.max_args {
            v.push(Violation::new("args", "args.count", format!("at most {} arguments", self.max_args)));
        }
        for (i, a) in add.args.iter().enumerate() {
            check_text(&format!("args[{i}]"), a, self.max_arg_bytes, v);
        }

        let working_dir = match (&add.working_dir, &facts.working_dir) {
            (None, _) => None,
            (Some(_), Some(Ok(dir))) if self.working_dirs.iter().any(|root| within(dir, root)) => Some(dir.clone()),
            (Some(raw), Some(Ok(dir))) => {
                v.push(Violation::new("working_dir", "working_dir.roots", format!(
                    "{raw} resolves to {}, outside the allowed roots: {}", dir.display(), self.roots_list())));
                None
            }
            (Some(raw), Some(Err(why))) => {
                v.push(Violation::new("working_dir", "working_dir.resolve", format!("{raw}: {why}")));
                None
            }
            (Some(_), None) => {
                v.push(Violation::new("working_dir", "working_dir.resolve", "the working directory was not resolved"));
                None
            }
        };
        if let Some(dir) = &working_dir {
            check_text("working_dir", &dir.to_string_lossy(), MAX_COMMAND, v);
        }

        if add.env.len() > self.max_env {
            v.push(Violation::new("env", "env.count", format!("at most {} variables", self.max_env)));
        }
        for (k, val) in &add.env {
            let field = format!("env.{k}");
            if !env_name_ok(k) {
                v.push(Violation::new(&field, "env.name", "names are [A-Za-z_][A-Za-z0-9_]*, at most 128 bytes"));
            } else if env_denied(k) {
                v.push(Violation::new(&field, "env.denied", "this variable loads code or redirects trust and is never allowed"));
            }
            check_text(&field, val, MAX_ENV_VALUE, v);
        }

        if !v.is_empty() {
            return None;
        }
        let (name, executable) = (name?, executable?);
        let mut options = Map::new();
        options.insert("numprocesses".into(), json!(add.num_processes));
        options.insert("copy_env".into(), json!(false));
        options.insert("shell".into(), json!(false));
        options.insert("stop_children".into(), json!(true));
        options.insert("close_child_stdin".into(), json!(true));
        options.insert("graceful_timeout".into(), json!(self.graceful_timeout_s));
        options.insert("env".into(), Value::Object(add.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect()));
        if let Some(dir) = working_dir {
            options.insert("working_dir".into(), json!(dir.to_string_lossy()));
        }
        Some(Command::Add {
            name,
            cmd: shell_quote(&executable.to_string_lossy()),
            args: add.args.clone(),
            options,
            start: add.start,
        })
    }

    fn allowed_list(&self) -> String {
        let mut list: Vec<String> = self.executables.iter().map(|p| p.display().to_string()).collect();
        list.sort();
        if list.is_empty() { "none (gate.executables is empty)".into() } else { list.join(", ") }
    }

    fn roots_list(&self) -> String {
        if self.working_dirs.is_empty() {
            "none (gate.working_dirs is empty)".into()
        } else {
            self.working_dirs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        }
    }
}

/// Text that reaches circusd must carry no control characters (NUL, newline…) and none of
/// circus's expansion syntax, which circus expands after any check: `$(…)`, `((…))`, `$WID`.
fn check_text(field: &str, s: &str, max: usize, v: &mut Vec<Violation>) {
    if s.len() > max {
        v.push(Violation::new(field, "text.length", format!("at most {max} bytes")));
    }
    if s.chars().any(|c| c.is_control()) {
        v.push(Violation::new(field, "text.control", "control characters (NUL, newline, …) are not allowed"));
    }
    if s.contains("$(") || s.contains("((") || s.contains("$WID") {
        v.push(Violation::new(field, "text.expansion", "circus expansion syntax ($(…), ((…)), $WID) is not allowed"));
    }
}

/// Component-wise containment on canonical paths: `/srv/app-evil` is not within `/srv/app`.
fn within(path: &Path, root: &Path) -> bool {
    path.starts_with(root) && !path.components().any(|c| matches!(c, Component::ParentDir))
}

fn env_name_ok(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ENV_NAME
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn env_denied(k: &str) -> bool {
    let upper = k.to_ascii_uppercase();
    DENIED_ENV.contains(&upper.as_str())
        || DENIED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
        || DENIED_ENV_SUFFIXES.iter().any(|s| upper.ends_with(s))
}

/// Quotes `s` so that Python's `shlex.split` yields exactly `[s]`.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if safe { s.to_string() } else { format!("'{}'", s.replace('\'', r#"'"'"'"#)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        let mut c = GateConfig::default();
        c.executables = vec![PathBuf::from("/bin/sleep")];
        c.working_dirs = vec![std::env::temp_dir()];
        Gate::compile(&c)
    }

    fn add(command: &str, args: &[&str]) -> Request {
        Request::Add(AddRequest {
            name: "w".into(),
            command: command.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            working_dir: None,
            env: BTreeMap::new(),
            num_processes: 1,
            start: true,
        })
    }

    fn rules(g: &Gate, r: &Request) -> Vec<&'static str> {
        match g.decide(r, &g.facts(r)) {
            Decision::Allow(_) => vec![],
            Decision::Deny(v) => v.into_iter().map(|v| v.rule).collect(),
        }
    }

    #[test]
    fn allowed_command_is_sent_as_its_canonical_path() {
        let g = gate();
        let r = add("sleep", &["60"]);
        let Decision::Allow(Command::Add { cmd, args, options, .. }) = g.decide(&r, &g.facts(&r)) else { panic!() };
        assert_eq!(cmd, std::fs::canonicalize("/bin/sleep").unwrap().to_string_lossy());
        assert_eq!(args, vec!["60"]);
        assert_eq!(options["copy_env"], false);
        assert_eq!(options["shell"], false);
        assert!(!options.contains_key("hooks"));
    }

    #[test]
    fn unlisted_and_relative_commands_are_denied() {
        let g = gate();
        assert_eq!(rules(&g, &add("/bin/sh", &[])), ["command.allowlist"]);
        assert_eq!(rules(&g, &add("../bin/sleep", &[])), ["command.resolve"]);
        assert_eq!(rules(&g, &add("/bin/sle*p", &[])), ["command.glob", "command.resolve"]);
    }

    #[test]
    fn expansion_and_control_characters_are_denied() {
        let g = gate();
        assert_eq!(rules(&g, &add("sleep", &["$(circus.env.HOME)"])), ["text.expansion"]);
        assert_eq!(rules(&g, &add("sleep", &["((x))"])), ["text.expansion"]);
        assert_eq!(rules(&g, &add("sleep", &["1\n2"])), ["text.control"]);
        assert_eq!(rules(&g, &add("sleep", &["1\0"])), ["text.control"]);
    }

    #[test]
    fn code_loading_env_is_denied() {
        let g = gate();
        for k in ["LD_PRELOAD", "PYTHONPATH", "NODE_OPTIONS", "https_proxy", "BASH_ENV", "PATH"] {
            let mut r = add("sleep", &["1"]);
            let Request::Add(a) = &mut r else { unreachable!() };
            a.env.insert(k.into(), "x".into());
            assert_eq!(rules(&g, &r), ["env.denied"], "{k}");
        }
    }

    #[test]
    fn working_dir_must_be_within_a_root_by_component() {
        let root = tempfile::tempdir().unwrap();
        let inside = root.path().join("app");
        let sibling = PathBuf::from(format!("{}-evil", root.path().display()));
        std::fs::create_dir(&inside).unwrap();
        std::fs::create_dir(&sibling).unwrap();
        let mut c = GateConfig::default();
        c.executables = vec![PathBuf::from("/bin/sleep")];
        c.working_dirs = vec![root.path().to_path_buf()];
        let g = Gate::compile(&c);
        let with_dir = |d: &Path| {
            let mut r = add("sleep", &["1"]);
            let Request::Add(a) = &mut r else { unreachable!() };
            a.working_dir = Some(d.display().to_string());
            r
        };
        assert!(rules(&g, &with_dir(&inside)).is_empty());
        assert_eq!(rules(&g, &with_dir(&sibling)), ["working_dir.roots"]);
        assert_eq!(rules(&g, &with_dir(&inside.join("../.."))), ["working_dir.roots"]);
        std::fs::remove_dir(&sibling).unwrap();
    }

    #[test]
    fn names_are_exact_and_protected() {
        let g = gate();
        assert_eq!(rules(&g, &Request::Stop { name: "w*".into() }), ["name.syntax"]);
        assert_eq!(rules(&g, &Request::Stop { name: "".into() }), ["name.syntax"]);
        assert_eq!(rules(&g, &Request::Stop { name: "circusd-stats".into() }), ["name.protected"]);
        assert!(rules(&g, &Request::Stop { name: "web".into() }).is_empty());
    }

    #[test]
    fn scale_and_signal_are_bounded() {
        let g = gate();
        assert_eq!(rules(&g, &Request::Scale { name: "w".into(), num_processes: 5, current: 1 }), ["processes.range"]);
        assert_eq!(
            g.decide(&Request::Scale { name: "w".into(), num_processes: 1, current: 3 }, &Facts::default()),
            Decision::Allow(Command::Decr { name: WatcherName::parse("w").unwrap(), nb: 2 })
        );
        assert_eq!(rules(&g, &Request::Signal { name: "w".into(), signal: "KILL".into() }), ["signal.allowed"]);
        assert!(rules(&g, &Request::Signal { name: "w".into(), signal: "sighup".into() }).is_empty());
    }

    #[test]
    fn quoting_round_trips_through_shlex_rules() {
        assert_eq!(shell_quote("/usr/bin/python3"), "/usr/bin/python3");
        assert_eq!(shell_quote("/opt/my app/x"), "'/opt/my app/x'");
        assert_eq!(shell_quote("/a'b"), r#"'/a'"'"'b'"#);
    }
}
