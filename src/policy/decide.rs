//! The decision: a pure function of the compiled policy, the request and the gathered facts.
//! The order is written as one short chain so that a reader can audit it; every check that
//! fails adds a violation, and any violation means deny.

use std::path::Path;

use serde_json::{Value, json};

use super::compile::{Identity, Policy, Program, WatcherScope, env_denied};
use super::{Action, AddRequest, Decision, Facts, OWNER_ENV, READ_TOOLS, Request, Violation};
use crate::circus::command::AddOptions;
use crate::circus::{Command, WatcherName, signal_number};
use crate::isolation::users::Account;

const MAX_COMMAND_BYTES: usize = 4096;
const MAX_ENV_NAME_BYTES: usize = 128;
/// `graceful_timeout` sent when the policy gives no default (circus's own is 30 s).
const DEFAULT_GRACEFUL_TIMEOUT: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips() {
        for s in ["/usr/bin/python3", "/opt/my app/x", "/a'b", "/x\"y"] {
            assert_eq!(shell_unquote(&shell_quote(s)), s);
        }
        assert_eq!(shell_unquote("/bin/sleep 10"), "/bin/sleep");
    }

    /// Found by the fuzzer: a sum that wraps must not pass the total cap.
    #[test]
    fn huge_process_counts_do_not_wrap_into_an_allow() {
        let p = Policy::compile("p", "version: 1\nidentities:\n  local: {tools: ['*'], watchers: any}\n").unwrap();
        let facts = Facts {
            target: Some(super::super::Target { exists: true, ..Default::default() }),
            total_processes: u32::MAX,
            ..Facts::default()
        };
        let req = Request { identity: "local".into(), action: Action::Scale { name: "w".into(), num_processes: 2 } };
        let d = decide(&p, &req, &facts);
        assert!(!d.allow);
        assert_eq!(d.rules, ["processes.total"]);
    }

    fn add_facts(switches: bool, fact: Option<super::super::RunAsFact>) -> Facts {
        let mut f = Facts { command: Some(Ok("/usr/bin/sleep".into())), circusd_switches: switches, ..Facts::default() };
        if let Some(fact) = fact {
            f.run_as.insert("sleep".into(), fact);
        }
        f
    }

    fn account(uid: u32) -> Account {
        Account { user: "runner".into(), uid, gid: uid, groups: vec![uid] }
    }

    fn add(policy_run_as: &str, facts: &Facts) -> Decision {
        let p = Policy::compile(
            "p",
            &format!(
                "version: 1\n{policy_run_as}programs:\n  - {{id: sleep, path: /usr/bin/sleep, args: {{rest: {{match: '*'}}}}}}\nidentities:\n  local: {{tools: ['*'], programs: ['*']}}\n"
            ),
        )
        .unwrap();
        let req = Request {
            identity: "local".into(),
            action: Action::Add(AddRequest {
                name: "w".into(),
                command: "sleep".into(),
                args: vec!["9".into()],
                working_dir: None,
                env: Default::default(),
                num_processes: 1,
                start: true,
                options: Default::default(),
            }),
        };
        decide(&p, &req, facts)
    }

    fn sent_options(d: &Decision) -> &AddOptions {
        match d.command.as_ref() {
            Some(Command::Add { options, .. }) => options,
            other => panic!("not an add: {other:?}"),
        }
    }

    #[test]
    fn a_root_circusd_needs_a_run_as_and_sends_its_ids() {
        let d = add("", &add_facts(true, None));
        assert!(!d.allow && d.rules == ["run_as.required"], "{d:?}");
        let ok = super::super::RunAsFact { account: Ok(account(10002)), command: Ok(()), working_dir: Ok(()) };
        let d = add("run_as: {user: runner}\n", &add_facts(true, Some(ok)));
        assert!(d.allow, "{d:?}");
        let o = sent_options(&d);
        assert_eq!((o.uid, o.gid), (Some(10002), Some(10002)));
        assert_eq!(o.working_dir.as_deref(), Some("/"), "never circusd's own directory");
        assert_eq!(d.run_as, Some(account(10002)));
    }

    #[test]
    fn run_as_failures_deny_with_their_rule() {
        let cases = [
            (Err("user runner does not exist".to_string()), Ok(()), Ok(()), "run_as.unresolved"),
            (Ok(account(0)), Ok(()), Ok(()), "run_as.root"),
            (Ok(account(10002)), Err("cannot enter /root".to_string()), Ok(()), "run_as.command"),
            (Ok(account(10002)), Ok(()), Err("cannot enter /srv".to_string()), "run_as.working_dir"),
        ];
        for (account, command, working_dir, rule) in cases {
            let fact = super::super::RunAsFact { account, command, working_dir };
            let d = add("run_as: {user: runner}\n", &add_facts(true, Some(fact)));
            assert!(!d.allow && d.rules == [rule], "{rule}: {d:?}");
        }
        let d = add("run_as: {user: runner}\n", &add_facts(true, None));
        assert_eq!(d.rules, ["run_as.unresolved"], "a missing fact fails closed");
    }

    #[test]
    fn a_circusd_that_cannot_switch_users_runs_processes_as_itself() {
        let d = add("run_as: {user: runner}\n", &add_facts(false, None));
        assert!(d.allow, "{d:?}");
        let o = sent_options(&d);
        assert_eq!((o.uid, o.gid, d.run_as.as_ref()), (None, None, None));
    }

    #[test]
    fn configured_totals_bound_start_reload_and_scale_up_but_never_scale_down() {
        let p =
            Policy::compile("p", "version: 1\nlimits: {max_total_processes: 10}\nidentities:\n  local: {tools: ['*'], watchers: any}\n")
                .unwrap();
        let facts = |total: u32, mine: u32| Facts {
            target: Some(super::super::Target { exists: true, num_processes: mine, ..Default::default() }),
            total_processes: total,
            ..Facts::default()
        };
        let go = |action: Action, f: &Facts| decide(&p, &Request { identity: "local".into(), action }, f);
        let n = || "w".to_string();
        assert!(go(Action::Start { name: n() }, &facts(10, 2)).allow, "a stopped watcher is counted already");
        assert_eq!(go(Action::Start { name: n() }, &facts(11, 2)).rules, ["processes.total"], "over a lowered cap");
        assert_eq!(go(Action::Restart { name: n() }, &facts(11, 2)).rules, ["processes.total"]);
        assert!(go(Action::Reload { name: n() }, &facts(8, 2)).allow, "8 + 2 side by side fits 10");
        assert_eq!(go(Action::Reload { name: n() }, &facts(9, 2)).rules, ["processes.total"], "9 + 2 does not");
        assert!(go(Action::Scale { name: n(), num_processes: 1 }, &facts(12, 2)).allow, "scaling down always passes");
        assert_eq!(go(Action::Scale { name: n(), num_processes: 3 }, &facts(10, 2)).rules, ["processes.total"]);
        assert!(go(Action::Stop { name: n() }, &facts(50, 2)).allow);
    }

    #[test]
    fn text_checks_match_char_is_control_and_find_expansions() {
        for s in ["a\0b", "a\nb", "\r", "x\u{7f}", "x\u{85}y", "\u{9f}"] {
            let mut v = Vec::new();
            check_text(|| "f".into(), s, 100, &mut v);
            assert_eq!(v.len(), 1, "{s:?}");
            assert!(s.chars().any(char::is_control));
        }
        for s in ["$(circus.env.HOME)", "((x))", "a$WID", "x$(", "(("] {
            let mut v = Vec::new();
            check_text(|| "f".into(), s, 100, &mut v);
            assert_eq!(v.iter().map(|v| v.rule.as_str()).collect::<Vec<_>>(), ["text.expansion"], "{s:?}");
        }
        for s in ["plain", "é ü ñ", "$HOME", "(a)(b)", "$ (", "\u{a0}", "日本"] {
            let mut v = Vec::new();
            check_text(|| "f".into(), s, 100, &mut v);
            assert!(v.is_empty(), "{s:?}: {v:?}");
        }
    }
}

pub fn decide(policy: &Policy, req: &Request, facts: &Facts) -> Decision {
    let tool = req.action.tool();
    // 1. Only identities the policy names may do anything.
    let Some(id) = policy.identities.get(&req.identity) else {
        return Decision::deny(vec![Violation::new(
            "identity",
            "identity.unknown",
            format!("identity {:?} is not in the policy", req.identity),
        )]);
    };
    // 2. The tool must exist, and the identity must be allowed it.
    if matches!(&req.action, Action::Read { tool } if !READ_TOOLS.contains(&tool.as_str())) {
        return Decision::deny(vec![Violation::new("tool", "tool.unknown", format!("there is no tool {tool:?}"))]);
    }
    if !id.tools.is_match(tool) {
        return Decision::deny(vec![Violation::new(
            "tool",
            "tool.not_allowed",
            format!("identity {:?} may not call {tool}", req.identity),
        )]);
    }
    let mut rules = vec![["identity:", &req.identity].concat(), ["tool:", tool].concat()];
    let mut v = Vec::new();
    // 3. Each action's own checks; reads need nothing more.
    let mut run_as = None;
    let command = match &req.action {
        Action::Read { .. } => None,
        Action::Add(add) => decide_add(policy, id, &req.identity, add, facts, &mut rules, &mut v).map(|(command, account)| {
            run_as = account;
            command
        }),
        other => {
            let name = existing(policy, id, &req.identity, other.target().unwrap_or_default(), facts, &mut rules, &mut v);
            name.and_then(|name| match other {
                Action::Start { .. } => within_total(policy, facts, 0, &mut v).then_some(Command::Start { name }),
                Action::Stop { .. } => Some(Command::Stop { name }),
                Action::Restart { .. } => within_total(policy, facts, 0, &mut v).then_some(Command::Restart { name }),
                // A graceful reload runs the new processes beside the old ones until they stop.
                Action::Reload { .. } => {
                    let side_by_side = facts.target.as_ref().map_or(0, |t| t.num_processes);
                    within_total(policy, facts, side_by_side, &mut v).then_some(Command::Reload { name })
                }
                Action::Remove { .. } => Some(Command::Rm { name }),
                Action::Scale { num_processes, .. } => scale(policy, name, *num_processes, facts, &mut v),
                Action::Signal { signal, .. } => match signal_number(signal) {
                    Some((n, num)) if id.signals.contains(&n) => Some(Command::Signal { name, signum: num }),
                    _ => {
                        v.push(Violation::new("signal", "signal.not_allowed", format!("allowed signals: {}", id.signals.join(", "))));
                        None
                    }
                },
                Action::Add(_) | Action::Read { .. } => None,
            })
        }
    };
    // 4. Any violation denies; an allowed mutation must have produced its command.
    if !v.is_empty() {
        return Decision::deny(v);
    }
    if req.action.mutates() && command.is_none() {
        return Decision::deny(vec![Violation::new("request", "policy.internal", "the request could not be checked")]);
    }
    Decision { allow: true, rules, violations: Vec::new(), command, run_as }
}

/// The name of a watcher the identity may act on, or violations.
fn existing(
    policy: &Policy,
    id: &Identity,
    identity: &str,
    raw: &str,
    facts: &Facts,
    rules: &mut Vec<String>,
    v: &mut Vec<Violation>,
) -> Option<WatcherName> {
    let name = valid_name(policy, raw, v)?;
    let target = facts.target.clone().unwrap_or_default();
    if !target.exists {
        v.push(Violation::new("name", "watcher.not_found", format!("no watcher named {name:?}")));
        return None;
    }
    let allowed = match &id.watchers {
        WatcherScope::Any => true,
        WatcherScope::Owned => target.owner.as_deref() == Some(identity),
        WatcherScope::Names(globs, _) => globs.is_match(name.as_str()),
    };
    if !allowed {
        let scope = match &id.watchers {
            WatcherScope::Owned => "watchers it created".to_string(),
            WatcherScope::Names(_, shown) => format!("watchers named {shown}"),
            WatcherScope::Any => "any unprotected watcher".to_string(),
        };
        v.push(Violation::new("name", "watcher.scope", format!("identity {identity:?} may act only on {scope}")));
        return None;
    }
    rules.push(format!(
        "watchers:{}",
        match id.watchers {
            WatcherScope::Owned => "owned",
            WatcherScope::Any => "any",
            WatcherScope::Names(..) => "names",
        }
    ));
    Some(name)
}

fn valid_name(policy: &Policy, raw: &str, v: &mut Vec<Violation>) -> Option<WatcherName> {
    let Some(name) = WatcherName::parse(raw) else {
        v.push(Violation::new("name", "name.syntax", format!("watcher names are {}", WatcherName::RULE)));
        return None;
    };
    if policy.protected.contains(name.as_str()) {
        v.push(Violation::new("name", "name.protected", format!("watcher {name:?} is protected")));
        return None;
    }
    Some(name)
}

fn scale(policy: &Policy, name: WatcherName, n: u32, facts: &Facts, v: &mut Vec<Violation>) -> Option<Command> {
    let current = facts.target.as_ref().map_or(0, |t| t.num_processes);
    // The cap of the program the watcher runs (the strictest, when several match); a watcher
    // that runs no known program gets the global cap.
    let command = facts.target.as_ref().and_then(|t| t.command.as_deref());
    let cap = command
        .map(|c| policy.programs_for(c).map(|p| p.max_processes).min().unwrap_or(policy.limits.max_processes))
        .unwrap_or(policy.limits.max_processes);
    if n == 0 || n > cap {
        v.push(Violation::new("num_processes", "processes.per_watcher", format!("must be between 1 and {cap}")));
        return None;
    }
    // Saturating: counts come from circusd, and a wrapped sum must never look small. Scaling
    // down is always allowed, even where the total is over the cap (a lowered cap).
    let total = facts.total_processes.saturating_sub(current).saturating_add(n);
    if n > current && total > policy.limits.max_total_processes {
        v.push(Violation::new(
            "num_processes",
            "processes.total",
            format!("would run {total} processes in all; the limit is {}", policy.limits.max_total_processes),
        ));
        return None;
    }
    Some(if n >= current { Command::Incr { name, nb: n - current } } else { Command::Decr { name, nb: current - n } })
}

/// Whether starting processes keeps the configured total (every watcher's `numprocesses`,
/// stopped ones included) within the cap, with `extra` processes running beside them.
fn within_total(policy: &Policy, facts: &Facts, extra: u32, v: &mut Vec<Violation>) -> bool {
    let total = facts.total_processes.saturating_add(extra);
    let cap = policy.limits.max_total_processes;
    if total <= cap {
        return true;
    }
    let why = if extra > 0 {
        format!(
            "a graceful reload runs {extra} new processes beside the old ones: {total} in all, over the limit {cap}; restart_process instead"
        )
    } else {
        format!("circusd is configured for {total} processes in all, over the limit {cap}; scale a watcher down first")
    };
    v.push(Violation::new("name", "processes.total", why));
    false
}

/// No control characters (NUL, newline…) and none of circus's expansion syntax, which circus
/// expands after any check: `$(…)`, `((…))`, `$WID`. `field` is only built for a violation.
pub fn check_text(field: impl Fn() -> String, s: &str, max: usize, v: &mut Vec<Violation>) {
    if s.len() > max {
        v.push(Violation::new(field(), "text.length", format!("at most {max} bytes")));
    }
    // One pass over the bytes. Control characters are C0, DEL and C1 (U+0080–U+009F, which
    // UTF-8 encodes as 0xC2 0x80–0x9F): exactly `char::is_control`.
    let b = s.as_bytes();
    let (mut control, mut expansion) = (false, false);
    for (i, &c) in b.iter().enumerate() {
        let next = b.get(i + 1).copied();
        control |= c < 0x20 || c == 0x7f || (c == 0xc2 && next.is_some_and(|n| (0x80..=0x9f).contains(&n)));
        expansion |= (c == b'$' && (next == Some(b'(') || b[i + 1..].starts_with(b"WID"))) || (c == b'(' && next == Some(b'('));
    }
    if control {
        v.push(Violation::new(field(), "text.control", "control characters (NUL, newline, …) are not allowed"));
    }
    if expansion {
        v.push(Violation::new(field(), "text.expansion", "circus expansion syntax ($(…), ((…)), $WID) is not allowed"));
    }
}

/// The executable in a circus `cmd`: the inverse of [`shell_quote`] for commands the warden
/// built; for other watchers the first word (which at worst matches no program).
pub fn shell_unquote(cmd: &str) -> String {
    match cmd.strip_prefix('\'') {
        Some(rest) => rest.strip_suffix('\'').unwrap_or(rest).replace(r#"'"'"'"#, "'"),
        None => cmd.split_whitespace().next().unwrap_or_default().to_string(),
    }
}

/// Quotes `s` so that Python's `shlex.split` yields exactly `[s]`.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if safe { s.to_string() } else { format!("'{}'", s.replace('\'', r#"'"'"'"#)) }
}

fn decide_add(
    policy: &Policy,
    id: &Identity,
    identity: &str,
    add: &AddRequest,
    facts: &Facts,
    rules: &mut Vec<String>,
    v: &mut Vec<Violation>,
) -> Option<(Command, Option<Account>)> {
    let lim = &policy.limits;
    // Name: valid, allowed by the policy's patterns and the identity's scope, free, and room
    // for one more watcher.
    let name = valid_name(policy, &add.name, v);
    if let Some(n) = &name {
        if !policy.names.is_match(n.as_str()) {
            v.push(Violation::new("name", "name.pattern", "the name does not match the policy's watcher name patterns"));
        }
        if let WatcherScope::Names(globs, shown) = &id.watchers {
            if !globs.is_match(n.as_str()) {
                v.push(Violation::new("name", "watcher.scope", format!("identity {identity:?} may only use watchers named {shown}")));
            }
        }
        if facts.target.as_ref().is_some_and(|t| t.exists) {
            v.push(Violation::new("name", "name.exists", format!("a watcher named {n:?} exists already")));
        }
    }
    if facts.watchers >= lim.max_watchers {
        v.push(Violation::new(
            "name",
            "watchers.max",
            format!("circusd holds {} watchers; the limit is {}", facts.watchers, lim.max_watchers),
        ));
    }

    // Command: plain text, resolved by the warden, allowlisted for this identity.
    check_text(|| "command".into(), &add.command, MAX_COMMAND_BYTES, v);
    if add.command.contains(['*', '?', '[', ']', '{', '}']) {
        v.push(Violation::new("command", "command.glob", "glob characters are not allowed in a command"));
    }
    let (path, candidates) = match &facts.command {
        Some(Ok(path)) => {
            let path_str = path.to_string_lossy();
            check_text(|| "command".into(), &path_str, MAX_COMMAND_BYTES, v);
            let found: Vec<&Program> = policy.programs_for(&path_str).filter(|p| id.programs.is_match(&p.id)).collect();
            if found.is_empty() {
                let mut allowed: Vec<&str> =
                    policy.programs.iter().filter(|p| id.programs.is_match(&p.id)).map(|p| p.path_glob.as_str()).collect();
                allowed.sort_unstable();
                allowed.dedup();
                v.push(Violation::new(
                    "command",
                    "command.not_allowed",
                    format!(
                        "{} resolves to {path_str}, which this identity may not run; allowed: {}",
                        add.command,
                        if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                    ),
                ));
            }
            (Some(path), found)
        }
        Some(Err(why)) => {
            v.push(Violation::new("command", "command.resolve", format!("{}: {why}", add.command)));
            (None, Vec::new())
        }
        None => {
            v.push(Violation::new("command", "command.resolve", "the command was not resolved"));
            (None, Vec::new())
        }
    };

    // Arguments, environment values: plain text whatever the program.
    for (i, a) in add.args.iter().enumerate() {
        check_text(|| format!("args[{i}]"), a, lim.max_arg_bytes as usize, v);
    }
    if add.env.len() > lim.max_env as usize {
        v.push(Violation::new("env", "env.count", format!("at most {} variables", lim.max_env)));
    }

    // Circus options: only the policy's allowlist, within bounds.
    let options = options(policy, id, add, v);

    // The program: several may share an executable; the first (in file order) whose own
    // rules all pass is the one that applies. When none passes, the first one's failures
    // are reported.
    let mut chosen = None;
    let mut first_failures = None;
    for program in &candidates {
        let mut pv = Vec::new();
        let checked = check_program(policy, program, add, facts, &mut pv);
        if pv.is_empty() {
            chosen = checked.map(|c| (*program, c));
            break;
        }
        first_failures.get_or_insert(pv);
    }
    match (chosen.is_none(), first_failures) {
        (true, Some(failures)) => v.extend(failures),
        // No program at all: still say what is wrong with the working directory.
        (true, None) => {
            check_working_dir(policy, None, add, facts, v);
        }
        _ => {}
    }

    if !v.is_empty() {
        return None;
    }
    let (name, path, (program, (argv, working_dir, run_as))) = (name?, path?, chosen?);
    rules.push(["program:", &program.id].concat());
    let command = build_add(name, path, argv, working_dir, run_as.as_ref(), &add.env, options, identity, add);
    Some((command, run_as))
}

/// The circus options to send: the policy's defaults, then the request's, each allowlisted
/// and within bounds. A `stop_signal` must be one of the identity's signals.
fn options(policy: &Policy, id: &Identity, add: &AddRequest, v: &mut Vec<Violation>) -> Vec<(&'static str, Value)> {
    let mut options: Vec<(&'static str, Value)> = Vec::new();
    for bound in policy.options.values() {
        if let Some(d) = &bound.default {
            options.push((bound.name, d.clone()));
        }
    }
    for (key, value) in &add.options {
        let field = || format!("options.{key}");
        let Some(bound) = policy.options.get(key) else {
            let allowed: Vec<&str> = policy.options.keys().map(String::as_str).collect();
            v.push(Violation::new(
                field(),
                "options.not_allowed",
                format!("allowed options: {}", if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }),
            ));
            continue;
        };
        let signal = value.as_str().and_then(signal_number).filter(|(n, _)| id.signals.contains(n));
        let ok = match (bound.numeric, value) {
            (true, Value::Number(n)) => n.as_f64().is_some_and(|x| x >= bound.min.unwrap_or(0.0) && bound.max.is_none_or(|m| x <= m)),
            (false, Value::Bool(_)) => key != "stop_signal",
            (false, Value::String(_)) => key == "stop_signal" && signal.is_some(),
            _ => false,
        };
        if !ok {
            let range = match (bound.min, bound.max) {
                (Some(lo), Some(hi)) => format!("a number from {lo} to {hi}"),
                (None, Some(hi)) => format!("a number up to {hi}"),
                _ if bound.numeric => "a non-negative number".to_string(),
                _ if key == "stop_signal" => format!("one of the signals {}", id.signals.join(", ")),
                _ => "true or false".to_string(),
            };
            v.push(Violation::new(field(), "options.bound", format!("must be {range}")));
            continue;
        }
        let sent = match signal {
            Some((_, num)) => json!(num),
            None => value.clone(),
        };
        match options.iter_mut().find(|(k, _)| *k == bound.name) {
            Some(slot) => slot.1 = sent,
            None => options.push((bound.name, sent)),
        }
    }
    options
}

/// The working directory: optional unless the program requires one; canonical, existing,
/// and inside a root (the policy's, plus the program's when one is known).
fn check_working_dir(
    policy: &Policy,
    program: Option<&Program>,
    add: &AddRequest,
    facts: &Facts,
    v: &mut Vec<Violation>,
) -> Option<std::path::PathBuf> {
    let roots = || policy.working_dirs.iter().chain(program.into_iter().flat_map(|p| p.working_dirs.iter()));
    match (&add.working_dir, &facts.working_dir) {
        (None, _) => {
            if program.is_some_and(|p| p.require_working_dir) {
                v.push(Violation::new("working_dir", "working_dir.required", "this program needs a working_dir"));
            }
            None
        }
        (Some(_), Some(Ok(dir))) if roots().any(|root| dir.starts_with(root)) => {
            check_text(|| "working_dir".into(), &dir.to_string_lossy(), MAX_COMMAND_BYTES, v);
            Some(dir.clone())
        }
        (Some(raw), Some(Ok(dir))) => {
            let shown = roots().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
            v.push(Violation::new(
                "working_dir",
                "working_dir.roots",
                format!(
                    "{raw} resolves to {}, outside the allowed roots: {}",
                    dir.display(),
                    if shown.is_empty() { "none".into() } else { shown }
                ),
            ));
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
    }
}

/// The checks that depend on the program: argument shape, working directory, run-as
/// account, environment names and process counts. Returns the argv, the working directory
/// and the account to send.
fn check_program(
    policy: &Policy,
    program: &Program,
    add: &AddRequest,
    facts: &Facts,
    v: &mut Vec<Violation>,
) -> Option<(Vec<String>, std::path::PathBuf, Option<Account>)> {
    let lim = &policy.limits;
    let argv = program.args.check(&add.args, &facts.paths, v);

    // Never circusd's own directory: without a request, the program's default (or `/`).
    let working_dir = check_working_dir(policy, Some(program), add, facts, v).unwrap_or_else(|| program.default_working_dir.clone());
    let run_as = run_as(program, facts, v);

    // Environment: names allowed explicitly; code-loading families never; values plain.
    for (k, val) in &add.env {
        let field = || format!("env.{k}");
        let b = k.as_bytes();
        let syntax = !b.is_empty()
            && b.len() <= MAX_ENV_NAME_BYTES
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !syntax {
            v.push(Violation::new(field(), "env.name", "names are [A-Za-z_][A-Za-z0-9_]*, at most 128 bytes"));
        } else if env_denied(k) {
            v.push(Violation::new(field(), "env.denied", "this variable loads code or redirects trust and is never allowed"));
        } else if !policy.env.contains(k) && !program.env.contains(k) {
            v.push(Violation::new(field(), "env.not_allowed", "not an allowed variable for this program"));
        }
        check_text(field, val, lim.max_env_value_bytes as usize, v);
    }

    // Processes: per watcher and in all.
    let cap = program.max_processes;
    if add.num_processes == 0 || add.num_processes > cap {
        v.push(Violation::new("num_processes", "processes.per_watcher", format!("must be between 1 and {cap}")));
    } else if facts.total_processes.saturating_add(add.num_processes) > lim.max_total_processes {
        v.push(Violation::new(
            "num_processes",
            "processes.total",
            format!(
                "would run {} processes in all; the limit is {}",
                facts.total_processes.saturating_add(add.num_processes),
                lim.max_total_processes
            ),
        ));
    }
    Some((argv, working_dir, run_as))
}

/// The account the processes run as. circusd that cannot switch users runs them as itself
/// (isolation level `none`); one that can (root) must be given an account, and only the
/// policy's `allow_root` lets that be root. The account must be able to use the command and
/// the working directory.
fn run_as(program: &Program, facts: &Facts, v: &mut Vec<Violation>) -> Option<Account> {
    if !facts.circusd_switches {
        return None;
    }
    let Some(rule) = &program.run_as else {
        v.push(Violation::new(
            "run_as",
            "run_as.required",
            format!("circusd runs as root and program {} has no run_as; the policy must name the user its processes run as", program.id),
        ));
        return None;
    };
    let Some(fact) = facts.run_as.get(&program.id) else {
        v.push(Violation::new("run_as", "run_as.unresolved", format!("the run-as {} was not resolved", rule.who)));
        return None;
    };
    match &fact.account {
        Err(why) => v.push(Violation::new("run_as", "run_as.unresolved", why.clone())),
        Ok(a) if (a.uid == 0 || a.gid == 0) && !rule.allow_root => v.push(Violation::new(
            "run_as",
            "run_as.root",
            format!("the run-as {} is uid {}, gid {}; root needs allow_root: true", rule.who, a.uid, a.gid),
        )),
        Ok(a) => {
            if let Err(why) = &fact.command {
                v.push(Violation::new("command", "run_as.command", why.clone()));
            }
            if let Err(why) = &fact.working_dir {
                v.push(Violation::new("working_dir", "run_as.working_dir", why.clone()));
            }
            return Some(a.clone());
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn build_add(
    name: WatcherName,
    path: &Path,
    argv: Vec<String>,
    working_dir: std::path::PathBuf,
    run_as: Option<&Account>,
    env: &std::collections::BTreeMap<String, String>,
    mut extra: Vec<(&'static str, Value)>,
    identity: &str,
    add: &AddRequest,
) -> Command {
    let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.push((OWNER_ENV.into(), identity.into()));
    if !extra.iter().any(|(k, _)| *k == "graceful_timeout") {
        extra.push(("graceful_timeout", json!(DEFAULT_GRACEFUL_TIMEOUT)));
    }
    let options = AddOptions {
        numprocesses: add.num_processes,
        env,
        working_dir: Some(working_dir.to_string_lossy().into_owned()),
        uid: run_as.map(|a| a.uid),
        gid: run_as.map(|a| a.gid),
        extra,
        output: None,
    };
    Command::Add { name, cmd: shell_quote(&path.to_string_lossy()), args: argv, options, start: add.start }
}
