//! The policy file as people write it (YAML, `deny_unknown_fields` everywhere). Every field
//! is documented in docs/policy.md; [`super::compile`] turns this into the checked form.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A string with the line it came from, so compile errors can point at it.
pub type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Format version; only 1 exists.
    pub version: u32,
    /// Directories searched for bare command names, in order. Never the request's PATH.
    #[serde(default = "default_search_path")]
    pub search_path: Vec<Text>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub watchers: RawWatchers,
    /// Signal names `signal_process` may send (identities may narrow it).
    #[serde(default = "default_signals")]
    pub signals: Vec<Text>,
    /// Circus options a request may set through `add_process.options`, with bounds.
    #[serde(default)]
    pub options: BTreeMap<String, RawOptionBound>,
    /// Environment variable names any program may be given.
    #[serde(default)]
    pub env: Vec<Text>,
    /// Roots any program may use as its working directory.
    #[serde(default)]
    pub working_dirs: Vec<Text>,
    /// Who every program's processes run as, unless the program says otherwise.
    #[serde(default)]
    pub run_as: Option<Spanned<RawRunAs>>,
    /// The executables that may run, each with the argument shapes it may take.
    #[serde(default)]
    pub programs: Vec<Spanned<RawProgram>>,
    /// Who may do what. A caller whose identity is not listed is denied everything.
    pub identities: BTreeMap<String, Spanned<RawIdentity>>,
}

fn default_search_path() -> Vec<Text> {
    ["/usr/local/bin", "/usr/bin", "/bin"].iter().map(|s| plain(s)).collect()
}

fn default_signals() -> Vec<Text> {
    ["HUP", "INT", "TERM", "QUIT", "USR1", "USR2"].iter().map(|s| plain(s)).collect()
}

/// A [`Text`] that did not come from a file (defaults).
pub fn plain(s: &str) -> Text {
    Spanned::new(s.to_string(), serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Watchers circusd may hold in all (ini-defined ones count).
    pub max_watchers: u32,
    /// Processes across every watcher.
    pub max_total_processes: u32,
    /// Processes of one watcher, unless a program says less.
    pub max_processes: u32,
    /// Hard caps on any request, whatever a program allows.
    pub max_args: u32,
    pub max_arg_bytes: u32,
    pub max_env: u32,
    pub max_env_value_bytes: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_watchers: 32,
            max_total_processes: 64,
            max_processes: 4,
            max_args: 64,
            max_arg_bytes: 4096,
            max_env: 32,
            max_env_value_bytes: 4096,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWatchers {
    /// Globs a new watcher's name must match (names are always also limited to
    /// `[a-z0-9][a-z0-9_-]*`, at most 64 bytes).
    pub names: Vec<Text>,
    /// Watchers no request may touch. `circusd-stats` always is.
    pub protected: Vec<Text>,
}

impl Default for RawWatchers {
    fn default() -> Self {
        RawWatchers { names: vec![plain("*")], protected: Vec::new() }
    }
}

/// Bounds of one circus option a request may set.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOptionBound {
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Sent when the request does not set the option.
    pub default: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgram {
    /// Rule id, used in decisions and metrics.
    pub id: String,
    /// Glob over the canonical absolute path (`*` never crosses `/`).
    pub path: Text,
    #[serde(default)]
    pub args: RawArgs,
    /// Roots this program may run in, added to the global ones.
    #[serde(default)]
    pub working_dirs: Vec<Text>,
    /// Require a working directory (default false).
    #[serde(default)]
    pub require_working_dir: bool,
    /// Environment variable names this program may be given, added to the global ones.
    #[serde(default)]
    pub env: Vec<Text>,
    /// Processes per watcher, at most the global limit.
    pub max_processes: Option<u32>,
    /// Who the processes run as; absent means the policy-wide `run_as`.
    pub run_as: Option<RawRunAs>,
    /// Where a process starts when the request gives no `working_dir` (absolute); absent
    /// means `/`.
    pub default_working_dir: Option<Text>,
}

/// Who processes run as: `user` (uid and primary group from passwd), or `uid` and `gid`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRunAs {
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// uid or gid 0 (or the user root) is refused unless this is true.
    #[serde(default)]
    pub allow_root: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawArgs {
    pub max_count: Option<u32>,
    pub max_bytes: Option<u32>,
    /// `args[i]` must satisfy `positional[i]`; a request may give fewer.
    pub positional: Vec<RawArg>,
    /// Required leading positionals (default 0).
    pub min_positional: u32,
    /// Flags (arguments starting with `-`) that may appear after the positionals. A flag
    /// with `value` takes one, as `--flag=V` or as the next argument.
    pub flags: BTreeMap<String, RawFlag>,
    /// Other non-flag arguments after the positionals; absent means none.
    pub rest: Option<RawArg>,
    /// Globs no argument may match, checked first.
    pub deny: Vec<Text>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawArg {
    /// Globs; the argument must match one. For `path: true`, matched against the canonical path.
    #[serde(rename = "match")]
    pub matches: OneOrMany,
    /// The argument is a path: it must exist, is canonicalised, matched, and sent canonical.
    #[serde(default)]
    pub path: bool,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFlag {
    /// The flag takes a value matching this.
    pub value: Option<RawArg>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(Text),
    Many(Vec<Text>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&Text> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v.iter().collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Tool names this identity may call (`*` for all).
    pub tools: Vec<Text>,
    /// Program ids it may add (`*` for all); absent means none.
    #[serde(default)]
    pub programs: Vec<Text>,
    /// Which existing watchers it may act on.
    #[serde(default)]
    pub watchers: RawWatcherScope,
    /// Narrows the global signal list.
    pub signals: Option<Vec<Text>>,
    /// Mutating calls allowed per minute, with a burst.
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RawWatcherScope {
    /// Only watchers this identity created.
    #[default]
    Owned,
    /// Any watcher that is not protected.
    Any,
    /// Watchers whose names match these globs.
    #[serde(untagged)]
    Names(Vec<Text>),
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_minute: u32,
    #[serde(default)]
    pub burst: u32,
}
