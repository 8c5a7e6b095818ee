//! Policy test cases in YAML (`circus-warden policy test DIR`, like `opa test`): each case is
//! a request, optional circusd facts, and the expected decision and rule. Filesystem facts are
//! gathered for real, exactly as the warden does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{Action, Decision, Facts, Policy, Request, Target, decide::decide, facts};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The policy under test, relative to the case file.
    pub policy: PathBuf,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The threat-model family a denial case covers (e.g. `3-loose-matching`), or `legit`.
    #[serde(default)]
    pub family: Option<String>,
    pub identity: String,
    pub tool: String,
    #[serde(default)]
    pub arguments: Value,
    /// circusd facts: the named watcher, and the totals.
    #[serde(default)]
    pub target: Option<Target>,
    #[serde(default)]
    pub watchers: u32,
    #[serde(default)]
    pub total_processes: u32,
    /// circusd runs as root, so `run_as` applies (default false: the decision does not depend
    /// on this machine's users).
    #[serde(default)]
    pub circusd_root: bool,
    pub want: Want,
    /// A rule id that must be among the decision's rules.
    #[serde(default)]
    pub rule: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Want {
    Allow,
    Deny,
    /// The arguments must not even decode (the warden answers `invalid_arguments`).
    Invalid,
}

/// Turns a tool name and its JSON arguments into an [`Action`], with the tools' own strict
/// decoding (unknown fields, wrong types and missing fields are errors).
pub fn action(tool: &str, arguments: Value) -> Result<Action, String> {
    let arguments = if arguments.is_null() { Value::Object(Default::default()) } else { arguments };
    crate::request::tools::action(tool, arguments).map_err(|e| e.message)
}

/// The outcome of one case.
pub struct Outcome {
    pub file: String,
    pub name: String,
    pub family: Option<String>,
    pub want: Want,
    pub decision: Option<Decision>,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

/// Runs every `*.yaml` case file under `dir` (recursively), in name order.
pub fn run_dir(dir: &Path) -> Result<Vec<Outcome>, String> {
    let mut files = Vec::new();
    collect(dir, &mut files).map_err(|e| format!("{}: {e}", dir.display()))?;
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no *.yaml case files", dir.display()));
    }
    let mut policies: BTreeMap<PathBuf, Policy> = BTreeMap::new();
    let mut out = Vec::new();
    for file in files {
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{shown}: {e}"))?;
        let cf: CaseFile = serde_saphyr::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        let policy_path = file.parent().unwrap_or(Path::new(".")).join(&cf.policy);
        if !policies.contains_key(&policy_path) {
            let p = Policy::load(&policy_path).map_err(|e| e.to_string())?;
            policies.insert(policy_path.clone(), p);
        }
        let policy = &policies[&policy_path];
        for case in cf.cases {
            out.push(run_case(policy, &shown, case));
        }
    }
    Ok(out)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    Ok(())
}

fn run_case(policy: &Policy, file: &str, case: Case) -> Outcome {
    let mut outcome = Outcome {
        file: file.to_string(),
        name: case.name.clone(),
        family: case.family.clone(),
        want: case.want,
        decision: None,
        failure: None,
    };
    let action = match (action(&case.tool, case.arguments), case.want) {
        (Err(_), Want::Invalid) => return outcome,
        (Ok(a), Want::Invalid) => {
            outcome.failure = Some(format!("want invalid arguments, but they decoded to {a:?}"));
            return outcome;
        }
        (Ok(a), _) => a,
        (Err(e), _) => {
            outcome.failure = Some(format!("bad case: {e}"));
            return outcome;
        }
    };
    let mut f: Facts = facts::gather(policy, &action);
    f.target = case.target;
    f.watchers = case.watchers;
    f.total_processes = case.total_processes;
    f.circusd_switches = case.circusd_root;
    let decision = decide(policy, &Request { identity: case.identity, action }, &f);
    let got = if decision.allow { Want::Allow } else { Want::Deny };
    if got != case.want {
        outcome.failure = Some(format!("want {:?}, got {:?} (rules {:?}; {:?})", case.want, got, decision.rules, decision.violations));
    } else if let Some(rule) = &case.rule {
        if !decision.rules.iter().any(|r| r == rule) {
            outcome.failure = Some(format!("rule {rule:?} did not fire; rules: {:?}; {:?}", decision.rules, decision.violations));
        }
    }
    outcome.decision = Some(decision);
    outcome
}
