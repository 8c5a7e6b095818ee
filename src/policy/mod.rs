//! The policy engine: a YAML policy compiled once into a pure value, and
//! `decide(policy, request, facts) -> Decision` with no I/O. Deny is the default and every
//! error. Filesystem and circusd facts are gathered before `decide` by the caller
//! ([`crate::request::gate`]); an allowed decision carries the exact [`Command`] to send.
//!
//! - [`model`]: the file format people write; [`compile`]: checking and compiling it;
//! - [`decide`]: the decision order; [`args`]: argument shapes;
//! - [`cases`]: YAML test cases (`circus-warden policy test`); [`reload`]: hot reload.

pub mod args;
pub mod cases;
pub mod compile;
pub mod decide;
pub mod facts;
pub mod model;
pub mod reload;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::circus::Command;
use crate::isolation::users::Account;

pub use compile::{CompileError, Policy};

/// The read-only tools; a read of any other name is denied (fail closed on unknown tools).
pub const READ_TOOLS: &[&str] =
    &["list_processes", "get_process_status", "get_process_stats", "explain_policy", "get_logs", "get_log_summary", "list_alerts"];

/// The env variable that marks which identity created a watcher. circusd keeps it in the
/// watcher's options, so ownership survives warden restarts; requests can never set it.
pub const OWNER_ENV: &str = "CIRCUS_WARDEN_OWNER";

/// One failed check: which field, which rule, and what would have been allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Violation {
    pub field: String,
    pub rule: String,
    pub message: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, rule: &str, message: impl Into<String>) -> Violation {
        Violation { field: field.into(), rule: rule.to_string(), message: message.into() }
    }
}

/// A request as the policy sees it: who, which tool, and the decoded arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub identity: String,
    #[serde(flatten)]
    pub action: Action,
}

/// What the caller wants. Reads carry only the tool name; mutations carry their arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tool", content = "arguments", rename_all = "snake_case")]
pub enum Action {
    #[serde(rename = "add_process")]
    Add(AddRequest),
    #[serde(rename = "start_process")]
    Start { name: String },
    #[serde(rename = "stop_process")]
    Stop { name: String },
    #[serde(rename = "restart_process")]
    Restart { name: String },
    #[serde(rename = "reload_process")]
    Reload { name: String },
    #[serde(rename = "remove_process")]
    Remove { name: String },
    #[serde(rename = "scale_process")]
    Scale { name: String, num_processes: u32 },
    #[serde(rename = "signal_process")]
    Signal { name: String, signal: String },
    /// A read-only tool (list, status, stats, explain): only the tool allowlist applies.
    #[serde(rename = "read")]
    Read { tool: String },
}

impl Action {
    pub fn tool(&self) -> &str {
        match self {
            Action::Add(_) => "add_process",
            Action::Start { .. } => "start_process",
            Action::Stop { .. } => "stop_process",
            Action::Restart { .. } => "restart_process",
            Action::Reload { .. } => "reload_process",
            Action::Remove { .. } => "remove_process",
            Action::Scale { .. } => "scale_process",
            Action::Signal { .. } => "signal_process",
            Action::Read { tool } => tool,
        }
    }

    /// The existing watcher the action targets (for ownership and counts).
    pub fn target(&self) -> Option<&str> {
        match self {
            Action::Add(a) => Some(&a.name),
            Action::Start { name }
            | Action::Stop { name }
            | Action::Restart { name }
            | Action::Reload { name }
            | Action::Remove { name }
            | Action::Scale { name, .. }
            | Action::Signal { name, .. } => Some(name),
            Action::Read { .. } => None,
        }
    }

    pub fn mutates(&self) -> bool {
        !matches!(self, Action::Read { .. })
    }
}

/// `add_process`'s arguments, decoded strictly (unknown fields are errors). This type is the
/// tool's JSON schema too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// The new watcher's name: 1-64 characters from a-z, 0-9, '_' and '-'.
    pub name: String,
    /// An allowed executable: an absolute path, or a bare name found on the policy's search path.
    pub command: String,
    /// Arguments, passed to the program exactly as given (no shell, no splitting).
    #[serde(default)]
    pub args: Vec<String>,
    /// Absolute working directory inside an allowed root.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Environment variables for the process (it inherits nothing else).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many processes to run (default 1).
    #[serde(default = "one")]
    pub num_processes: u32,
    /// Start the processes now (default true).
    #[serde(default = "yes")]
    pub start: bool,
    /// Circus options the policy allows (for example graceful_timeout, max_retry, respawn).
    #[serde(default)]
    pub options: BTreeMap<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// What the world looks like, gathered before the decision (filesystem and circusd).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Facts {
    /// The command resolved through the policy's search path and canonicalised.
    pub command: Option<Result<PathBuf, String>>,
    /// The canonical working directory, or why there is none.
    pub working_dir: Option<Result<PathBuf, String>>,
    /// Canonical forms of the path-like strings in the arguments (keyed by the raw string).
    pub paths: rustc_hash::FxHashMap<String, Result<PathBuf, String>>,
    /// The watcher the request names, as circusd reports it.
    pub target: Option<Target>,
    /// Watchers circusd holds now.
    pub watchers: u32,
    /// Processes across all watchers now.
    pub total_processes: u32,
    /// circusd can start processes under another uid (it runs as root, or its user is not
    /// known: fail closed). When false, no `run_as` can apply: processes run as circusd's user.
    pub circusd_switches: bool,
    /// For each candidate program (by id) that has a `run_as`: the account and what it can reach.
    pub run_as: rustc_hash::FxHashMap<String, RunAsFact>,
}

/// The run-as account of one program, and whether it can use the command and working
/// directory (circus changes directory with circusd's credentials, so a directory the account
/// cannot enter would only fail later, inside the process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAsFact {
    pub account: Result<Account, String>,
    /// It can read and execute the command.
    pub command: Result<(), String>,
    /// It can enter and read the working directory the process gets.
    pub working_dir: Result<(), String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Target {
    pub exists: bool,
    /// The identity that created it (from [`OWNER_ENV`]); none for ini-defined watchers.
    pub owner: Option<String>,
    pub num_processes: u32,
    /// The executable it runs (canonical, as the warden sent it).
    pub command: Option<String>,
}

/// The outcome of [`decide::decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allow: bool,
    /// The rule ids that fired: for an allow, the rules that allowed it; for a denial, the
    /// rules whose checks failed.
    pub rules: Vec<String>,
    /// Every failed check (empty when allowed).
    pub violations: Vec<Violation>,
    /// The exact command to send (mutations only, and only when allowed).
    pub command: Option<Command>,
    /// For an allowed add: the account its processes run as; `None` means circusd's own user.
    pub run_as: Option<Account>,
}

impl Decision {
    pub fn deny(violations: Vec<Violation>) -> Decision {
        let mut rules: Vec<String> = violations.iter().map(|v| v.rule.clone()).collect();
        rules.dedup();
        Decision { allow: false, rules, violations, command: None, run_as: None }
    }
}
