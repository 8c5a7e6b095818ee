//! Compiling a policy file: parse, check every field, build glob sets. Errors name the file,
//! the line and the field. The result is immutable; a new file makes a new [`Policy`].

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};

use super::args::{ArgRule, ArgShape};
use super::model::{OneOrMany, RawArg, RawPolicy, RawRunAs, RawWatcherScope, Text};
use crate::circus::signal_number;
use crate::isolation::users::RunAs;

/// Environment variables that load code or redirect trust. A policy that allows one does not
/// compile, and a request that sets one is denied.
pub const DENIED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "SHELL",
    "IFS",
    "ENV",
    "BASH_ENV",
    "CDPATH",
    "PS4",
    "PROMPT_COMMAND",
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_EXTRA_CA_CERTS",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "PYTHONBREAKPOINT",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "RUBYOPT",
    "RUBYLIB",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSH_COMMAND",
    "GIT_SSH",
    "GIT_ASKPASS",
    "GIT_EXEC_PATH",
    "GIT_CONFIG",
    "SSH_ASKPASS",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "TMPDIR",
    "GCONV_PATH",
    "LOCPATH",
    "HOSTALIASES",
    "RESOLV_HOST_CONF",
    "MALLOC_CHECK_",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "ZDOTDIR",
    "INPUTRC",
    "TERMINFO",
];
pub const DENIED_ENV_PREFIXES: &[&str] =
    &["LD_", "DYLD_", "GIT_CONFIG", "CIRCUS", "PYTHON", "NODE_", "NPM_CONFIG_", "GLIBC_", "BASH_FUNC_", "PERL", "RUBY"];
pub const DENIED_ENV_SUFFIXES: &[&str] = &["_PROXY"];
/// Names under a denied prefix that only switch behaviour and load nothing; a policy may list them.
pub const HARMLESS_IN_DENIED_FAMILIES: &[&str] =
    &["NODE_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONHASHSEED", "PYTHONUTF8"];

/// The circus options a policy may allow requests to set, and whether each is a number.
/// Everything else (hooks, streams, shell, copy_env, rlimit_*, uid/gid, env, cmd, args,
/// working_dir, numprocesses…) is either never settable or has its own field.
pub const SETTABLE_OPTIONS: &[(&str, bool)] = &[
    ("graceful_timeout", true),
    ("warmup_delay", true),
    ("max_retry", true),
    ("retry_in", true),
    ("max_age", true),
    ("max_age_variance", true),
    ("respawn", false),
    ("singleton", false),
    ("stop_signal", false),
];

static DENIED_ENV_SET: std::sync::LazyLock<HashSet<&'static str>> = std::sync::LazyLock::new(|| DENIED_ENV.iter().copied().collect());

/// Whether a variable name is in a code-loading or trust-redirecting family (any case).
pub fn env_denied(name: &str) -> bool {
    if HARMLESS_IN_DENIED_FAMILIES.contains(&name) {
        return false;
    }
    // Names are usually upper case already: no allocation then.
    let upper: std::borrow::Cow<str> =
        if name.bytes().any(|b| b.is_ascii_lowercase()) { name.to_ascii_uppercase().into() } else { name.into() };
    DENIED_ENV_SET.contains(upper.as_ref())
        || DENIED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
        || DENIED_ENV_SUFFIXES.iter().any(|s| upper.ends_with(s))
}

/// The limits are used as written (after the range checks below).
pub type Limits = super::model::RawLimits;

#[derive(Debug, Clone)]
pub struct OptionBound {
    /// circus's name for it.
    pub name: &'static str,
    pub numeric: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub default: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Program {
    pub id: String,
    pub path_glob: String,
    pub args: ArgShape,
    pub working_dirs: Vec<PathBuf>,
    pub require_working_dir: bool,
    pub env: HashSet<String>,
    pub max_processes: u32,
    /// Who the processes run as: the program's own `run_as`, else the policy's.
    pub run_as: Option<RunAsRule>,
    /// Where a process starts without a requested `working_dir`.
    pub default_working_dir: PathBuf,
}

/// A compiled `run_as`: the account, and whether it may be root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAsRule {
    pub who: RunAs,
    pub allow_root: bool,
}

#[derive(Debug, Clone)]
pub enum WatcherScope {
    Owned,
    Any,
    Names(GlobSet, String),
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub tools: GlobSet,
    pub programs: GlobSet,
    pub watchers: WatcherScope,
    pub signals: Vec<&'static str>,
    pub rate_limit: Option<(u32, u32)>,
}

/// A compiled policy: what `decide` reads. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// SHA-256 of the file, hex; shown in metrics and audit records.
    pub hash: String,
    /// Things that compile but probably do not do what was meant (`policy check` prints them).
    pub warnings: Vec<String>,
    pub search_path: Vec<PathBuf>,
    pub limits: Limits,
    pub names: GlobSet,
    pub protected: HashSet<String>,
    pub options: BTreeMap<String, OptionBound>,
    pub env: HashSet<String>,
    pub working_dirs: Vec<PathBuf>,
    /// The policy-wide `run_as` (programs without their own get it).
    pub run_as: Option<RunAsRule>,
    pub programs: Vec<Program>,
    pub identities: HashMap<String, Identity>,
    /// One glob per program, in order (index = program).
    program_paths: GlobSet,
}

/// Why a policy does not compile: `file:line: field: message`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct CompileError(pub Vec<String>);

struct Errors<'a> {
    file: &'a str,
    list: Vec<String>,
}

impl Errors<'_> {
    fn at(&mut self, t: Option<&Text>, field: &str, message: impl std::fmt::Display) {
        self.at_line(t.map(|t| t.referenced.line() as usize), field, message);
    }

    fn at_line(&mut self, line: Option<usize>, field: &str, message: impl std::fmt::Display) {
        match line.filter(|l| *l > 0) {
            Some(l) => self.list.push(format!("{}:{l}: {field}: {message}", self.file)),
            None => self.list.push(format!("{}: {field}: {message}", self.file)),
        }
    }
}

/// Globs with `*` never crossing `/` (what an allow rule means), case-sensitive.
fn glob(t: &Text, field: &str, e: &mut Errors) -> Option<Glob> {
    glob_with(t, field, true, e)
}

/// `literal_separator: false` is for deny rules, where `*` must reach across `/` too
/// (`--config*` has to catch `--config=/etc/x`).
fn glob_with(t: &Text, field: &str, literal_separator: bool, e: &mut Errors) -> Option<Glob> {
    match GlobBuilder::new(&t.value).literal_separator(literal_separator).backslash_escape(true).build() {
        Ok(g) => Some(g),
        Err(err) => {
            e.at(Some(t), field, format!("invalid glob {:?}: {err}", t.value));
            None
        }
    }
}

fn glob_set(items: &[&Text], field: &str, e: &mut Errors) -> GlobSet {
    glob_set_with(items, field, true, e)
}

fn glob_set_with(items: &[&Text], field: &str, literal_separator: bool, e: &mut Errors) -> GlobSet {
    let mut b = GlobSetBuilder::new();
    for (i, t) in items.iter().enumerate() {
        if let Some(g) = glob_with(t, &format!("{field}[{i}]"), literal_separator, e) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|err| {
        e.at(None, field, err);
        GlobSet::empty()
    })
}

fn absolute(t: &Text, field: &str, e: &mut Errors) -> Option<PathBuf> {
    let p = Path::new(&t.value);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        e.at(Some(t), field, format!("{:?} must be an absolute path without . or ..", t.value));
        return None;
    }
    // Roots are compared with canonical request paths, so compare with the canonical root
    // when it exists (a root behind a symlink would otherwise never match).
    Some(p.canonicalize().unwrap_or_else(|_| p.to_path_buf()))
}

/// A `run_as`: exactly `user`, or both `uid` and `gid`; root only with `allow_root`.
fn run_as_rule(r: &RawRunAs, line: Option<usize>, field: &str, e: &mut Errors) -> Option<RunAsRule> {
    let who = match (&r.user, r.uid, r.gid) {
        (Some(user), None, None) => {
            let b = user.as_bytes();
            if b.is_empty() || b.len() > 32 || b[0] == b'-' || !b.iter().all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(c)) {
                e.at_line(line, field, format!("{user:?} is not a user name ([A-Za-z0-9_.-], at most 32 bytes)"));
                return None;
            }
            RunAs::User { user: user.clone() }
        }
        (None, Some(uid), Some(gid)) => RunAs::Ids { uid, gid },
        _ => {
            e.at_line(line, field, "give either user, or both uid and gid");
            return None;
        }
    };
    let root = match &who {
        RunAs::User { user } => user == "root",
        RunAs::Ids { uid, gid } => *uid == 0 || *gid == 0,
    };
    if root && !r.allow_root {
        e.at_line(line, field, "uid or gid 0 (root) needs allow_root: true");
        return None;
    }
    Some(RunAsRule { who, allow_root: r.allow_root })
}

fn env_names(list: &[Text], field: &str, e: &mut Errors) -> HashSet<String> {
    let mut out = HashSet::default();
    for (i, t) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let b = t.value.as_bytes();
        let ok = !b.is_empty() && (b[0].is_ascii_alphabetic() || b[0] == b'_') && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !ok {
            e.at(Some(t), &f, format!("{:?} is not a variable name", t.value));
        } else if env_denied(&t.value) {
            e.at(Some(t), &f, format!("{} loads code or redirects trust and can never be allowed", t.value));
        } else {
            out.insert(t.value.clone());
        }
    }
    out
}

fn arg_rule(raw: &RawArg, field: &str, e: &mut Errors) -> ArgRule {
    let items = match &raw.matches {
        OneOrMany::One(t) => vec![t],
        OneOrMany::Many(v) => v.iter().collect(),
    };
    let shown = items.iter().map(|t| t.value.clone()).collect::<Vec<_>>().join(" | ");
    ArgRule { globs: glob_set(&items, &format!("{field}.match"), e), path: raw.path, shown, max_path_bytes: 4096 }
}

fn signals(list: &[Text], field: &str, e: &mut Errors) -> Vec<&'static str> {
    list.iter()
        .enumerate()
        .filter_map(|(i, t)| match signal_number(&t.value) {
            Some((n, _)) => Some(n),
            None => {
                e.at(Some(t), &format!("{field}[{i}]"), format!("{:?} is not a signal name", t.value));
                None
            }
        })
        .collect()
}

impl Policy {
    /// Parses and compiles `text`; `file` names it in errors.
    pub fn compile(file: &str, text: &str) -> Result<Policy, CompileError> {
        let raw: RawPolicy = serde_saphyr::from_str(text).map_err(|err| CompileError(vec![format!("{file}: {err}")]))?;
        let mut e = Errors { file, list: Vec::new() };
        if raw.version != 1 {
            e.at(None, "version", "only version 1 exists");
        }
        let limits: Limits = raw.limits;
        let l = &limits;
        for (name, v, max) in [
            ("limits.max_watchers", l.max_watchers, 10_000),
            ("limits.max_total_processes", l.max_total_processes, 100_000),
            ("limits.max_processes", l.max_processes, 10_000),
            ("limits.max_args", l.max_args, 4096),
            ("limits.max_arg_bytes", l.max_arg_bytes, 131_072),
            ("limits.max_env", l.max_env, 1024),
            ("limits.max_env_value_bytes", l.max_env_value_bytes, 131_072),
        ] {
            if v == 0 || v > max {
                e.at(None, name, format!("must be between 1 and {max}"));
            }
        }

        let search_path =
            raw.search_path.iter().enumerate().filter_map(|(i, t)| absolute(t, &format!("search_path[{i}]"), &mut e)).collect();
        let names = glob_set(&raw.watchers.names.iter().collect::<Vec<_>>(), "watchers.names", &mut e);
        let protected = raw.watchers.protected.iter().map(|t| t.value.to_ascii_lowercase()).chain(["circusd-stats".to_string()]).collect();

        let mut options = BTreeMap::new();
        for (key, bound) in &raw.options {
            match SETTABLE_OPTIONS.iter().find(|(k, _)| k == key) {
                Some((name, numeric)) => {
                    options.insert(
                        key.clone(),
                        OptionBound { name, numeric: *numeric, min: bound.min, max: bound.max, default: bound.default.clone() },
                    );
                }
                None => e.at(
                    None,
                    &format!("options.{key}"),
                    format!("not a settable option; settable: {}", SETTABLE_OPTIONS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")),
                ),
            }
        }

        let env = env_names(&raw.env, "env", &mut e);
        let working_dirs =
            raw.working_dirs.iter().enumerate().filter_map(|(i, t)| absolute(t, &format!("working_dirs[{i}]"), &mut e)).collect();

        let default_run_as = raw.run_as.as_ref().and_then(|r| run_as_rule(&r.value, Some(r.referenced.line() as usize), "run_as", &mut e));

        let mut warnings = Vec::new();
        let mut programs = Vec::new();
        let mut paths = GlobSetBuilder::new();
        let mut ids = HashSet::default();
        for (i, sp) in raw.programs.iter().enumerate() {
            let p = &sp.value;
            let field = format!("programs[{i}] ({})", p.id);
            let here = Some(&p.path);
            if !ids.insert(p.id.clone()) {
                e.at(here, &format!("{field}.id"), "duplicate program id");
            }
            if !p.path.value.starts_with('/') {
                e.at(here, &format!("{field}.path"), "must be an absolute path glob");
            }
            // Commands are matched canonical: a literal path behind a symlink never matches.
            let literal = !p.path.value.contains(['*', '?', '[', '{']);
            if literal {
                match Path::new(&p.path.value).canonicalize() {
                    Ok(c) if c != Path::new(&p.path.value) => warnings.push(format!(
                        "{file}:{}: {field}.path: {} is a symlink to {}; commands are matched by canonical path, so write {}",
                        p.path.referenced.line(),
                        p.path.value,
                        c.display(),
                        c.display()
                    )),
                    Err(_) => warnings.push(format!(
                        "{file}:{}: {field}.path: {} does not exist on this machine",
                        p.path.referenced.line(),
                        p.path.value
                    )),
                    _ => {}
                }
            }
            // A glob that does not compile is an error; the placeholder keeps indices aligned.
            paths.add(glob(&p.path, &format!("{field}.path"), &mut e).unwrap_or_else(|| Glob::new("/\0never").expect("valid glob")));
            let a = &p.args;
            let mut flags = HashMap::default();
            for (flag, spec) in &a.flags {
                if !flag.starts_with('-') || flag.contains('=') || flag.len() < 2 {
                    e.at(here, &format!("{field}.args.flags.{flag}"), "a flag starts with '-' and has no '='");
                }
                flags.insert(flag.clone(), spec.value.as_ref().map(|v| arg_rule(v, &format!("{field}.args.flags.{flag}.value"), &mut e)));
            }
            let max_count = a.max_count.unwrap_or(limits.max_args).min(limits.max_args);
            let max_processes = p.max_processes.unwrap_or(limits.max_processes).min(limits.max_processes);
            if max_processes == 0 {
                e.at(here, &format!("{field}.max_processes"), "must be at least 1");
            }
            let run_as = match &p.run_as {
                Some(r) => run_as_rule(r, Some(p.path.referenced.line() as usize), &format!("{field}.run_as"), &mut e),
                None => default_run_as.clone(),
            };
            let default_working_dir = match &p.default_working_dir {
                Some(t) => absolute(t, &format!("{field}.default_working_dir"), &mut e).unwrap_or_else(|| PathBuf::from("/")),
                None => PathBuf::from("/"),
            };
            programs.push(Program {
                id: p.id.clone(),
                path_glob: p.path.value.clone(),
                args: ArgShape {
                    max_count,
                    max_bytes: a.max_bytes.unwrap_or(limits.max_arg_bytes).min(limits.max_arg_bytes),
                    positional: a
                        .positional
                        .iter()
                        .enumerate()
                        .map(|(j, r)| arg_rule(r, &format!("{field}.args.positional[{j}]"), &mut e))
                        .collect(),
                    min_positional: a.min_positional,
                    flags,
                    rest: a.rest.as_ref().map(|r| arg_rule(r, &format!("{field}.args.rest"), &mut e)),
                    deny: glob_set_with(&a.deny.iter().collect::<Vec<_>>(), &format!("{field}.args.deny"), false, &mut e),
                },
                working_dirs: p
                    .working_dirs
                    .iter()
                    .enumerate()
                    .filter_map(|(j, t)| absolute(t, &format!("{field}.working_dirs[{j}]"), &mut e))
                    .collect(),
                require_working_dir: p.require_working_dir,
                env: env_names(&p.env, &format!("{field}.env"), &mut e),
                max_processes,
                run_as,
                default_working_dir,
            });
            if a.min_positional as usize > a.positional.len() {
                e.at(here, &format!("{field}.args.min_positional"), "is more than the positional rules given");
            }
        }
        let program_paths = paths.build().unwrap_or_else(|err| {
            e.at(None, "programs", err);
            GlobSet::empty()
        });
        let global_signals = signals(&raw.signals, "signals", &mut e);
        let mut identities = HashMap::default();
        for (name, si) in &raw.identities {
            let id = &si.value;
            let field = format!("identities.{name}");
            let tools = glob_set(&id.tools.iter().collect::<Vec<_>>(), &format!("{field}.tools"), &mut e);
            let programs_globs = glob_set(&id.programs.iter().collect::<Vec<_>>(), &format!("{field}.programs"), &mut e);
            let watchers = match &id.watchers {
                RawWatcherScope::Owned => WatcherScope::Owned,
                RawWatcherScope::Any => WatcherScope::Any,
                RawWatcherScope::Names(list) => {
                    let shown = list.iter().map(|t| t.value.clone()).collect::<Vec<_>>().join(", ");
                    WatcherScope::Names(glob_set(&list.iter().collect::<Vec<_>>(), &format!("{field}.watchers"), &mut e), shown)
                }
            };
            let sigs = match &id.signals {
                Some(list) => {
                    let s = signals(list, &format!("{field}.signals"), &mut e);
                    if let Some(extra) = s.iter().find(|s| !global_signals.contains(s)) {
                        e.at(None, &format!("{field}.signals"), format!("{extra} is not in the global signals list"));
                    }
                    s
                }
                None => global_signals.clone(),
            };
            let rate_limit = id.rate_limit.map(|r| {
                if r.per_minute == 0 {
                    e.at(None, &format!("{field}.rate_limit.per_minute"), "must be at least 1");
                }
                (r.per_minute, r.burst.max(1))
            });
            identities.insert(name.clone(), Identity { tools, programs: programs_globs, watchers, signals: sigs, rate_limit });
        }

        if !e.list.is_empty() {
            return Err(CompileError(e.list));
        }
        Ok(Policy {
            hash: format!("{:x}", Sha256::digest(text.as_bytes())),
            warnings,
            search_path,
            limits,
            names,
            protected,
            options,
            env,
            working_dirs,
            run_as: default_run_as,
            programs,
            identities,
            program_paths,
        })
    }

    /// The programs whose path glob matches a canonical executable, in file order.
    pub fn programs_for<'p>(&'p self, path: &str) -> impl Iterator<Item = &'p Program> + use<'p> {
        self.program_paths.matches(path).into_iter().map(move |i| &self.programs[i])
    }

    /// Reads and compiles a policy file.
    pub fn load(path: &Path) -> Result<Policy, CompileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| CompileError(vec![format!("{file}: cannot read: {err}")]))?;
        Policy::compile(&file, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        Policy::compile("p.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = errors("version: 1\nidentities: {}\nprograms:\n  - id: a\n    path: /usr/bin/[\n");
        assert!(e.contains("p.yaml:5: programs[0] (a).path: invalid glob"), "{e}");
    }

    #[test]
    fn unknown_fields_and_bad_yaml_are_errors() {
        assert!(errors("version: 1\nidentities: {}\nprogramz: []\n").contains("programz"));
        assert!(errors("version: [1\n").starts_with("p.yaml"));
    }

    #[test]
    fn dangerous_things_cannot_be_allowed() {
        let e = errors("version: 1\nidentities: {}\nenv: [LD_PRELOAD, PYTHONPATH]\noptions:\n  hooks: {}\n  shell: {}\n");
        assert!(e.contains("env[0]: LD_PRELOAD loads code"), "{e}");
        assert!(e.contains("env[1]: PYTHONPATH"), "{e}");
        assert!(e.contains("options.hooks: not a settable option"), "{e}");
        assert!(e.contains("options.shell"), "{e}");
        let e = errors("version: 1\nidentities: {}\nprograms:\n  - {id: r, path: /bin/x, run_as: {uid: 0, gid: 0}}\n");
        assert!(e.contains("needs allow_root"), "{e}");
        let e = errors("version: 1\nidentities: {}\nrun_as: {user: root}\n");
        assert!(e.contains("p.yaml:3: run_as: uid or gid 0 (root) needs allow_root"), "{e}");
        let e = errors("version: 1\nidentities: {}\nrun_as: {user: x, uid: 5, gid: 5}\n");
        assert!(e.contains("run_as: give either user, or both uid and gid"), "{e}");
        let e = errors("version: 1\nidentities: {}\nrun_as: {uid: 5}\n");
        assert!(e.contains("give either user"), "{e}");
        let e = errors("version: 1\nidentities: {}\nrun_as: {user: \"a b\"}\n");
        assert!(e.contains("is not a user name"), "{e}");
    }

    #[test]
    fn a_program_inherits_the_policy_run_as_unless_it_has_its_own() {
        let p = Policy::compile(
            "p",
            "version: 1\nidentities: {}\nrun_as: {user: nobody}\nprograms:\n  - {id: a, path: /bin/a}\n  - {id: b, path: /bin/b, run_as: {uid: 7, gid: 8}, default_working_dir: /srv}\n",
        )
        .unwrap();
        assert_eq!(p.programs[0].run_as.as_ref().unwrap().who, RunAs::User { user: "nobody".into() });
        assert_eq!(p.programs[0].default_working_dir, PathBuf::from("/"));
        assert_eq!(p.programs[1].run_as.as_ref().unwrap().who, RunAs::Ids { uid: 7, gid: 8 });
        assert!(p.programs[1].default_working_dir.is_absolute());
    }

    #[test]
    fn relative_roots_are_refused() {
        let e = errors("version: 1\nidentities: {}\nworking_dirs: [srv, /srv/../etc]\n");
        assert!(e.contains("working_dirs[0]") && e.contains("working_dirs[1]"), "{e}");
    }

    #[test]
    fn globs_do_not_cross_separators() {
        let p = Policy::compile("p", "version: 1\nidentities: {}\nprograms:\n  - {id: a, path: /usr/bin/*}\n").unwrap();
        assert_eq!(p.programs_for("/usr/bin/python3").count(), 1);
        assert_eq!(p.programs_for("/usr/bin/x/evil").count(), 0);
        assert_eq!(p.programs_for("/usr/binx").count(), 0);
    }
}
