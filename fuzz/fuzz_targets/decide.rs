//! Request decoding and `decide` must never panic, whatever the input: arbitrary JSON tool
//! arguments through the tools' strict decoders and the policy request decoder, and arbitrary
//! structured requests and facts through `decide` on the example policies.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use circus_warden::policy::decide::decide;
use circus_warden::policy::{cases, Action, AddRequest, Facts, Policy, Request, Target};
use circus_warden::request::tools;
use libfuzzer_sys::fuzz_target;

static POLICIES: LazyLock<Vec<Policy>> = LazyLock::new(|| {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    ["default.yaml", "examples/python-web.yaml", "examples/node-worker.yaml", "examples/gunicorn.yaml"]
        .iter()
        .map(|f| Policy::load(&PathBuf::from(root).join(f)).expect("the shipped policies compile"))
        .collect()
});

const TOOLS: &[&str] = &[
    "add_process", "start_process", "stop_process", "restart_process", "reload_process", "remove_process",
    "scale_process", "signal_process", "list_processes", "get_process_status", "get_process_stats",
    "explain_policy", "set_policy", "",
];
/// Strings that matter to the rules, mixed into generated ones.
const ATOMS: &[&str] = &[
    "/usr/bin/sleep", "sleep", "/srv/app/x.py", "../x", "--port", "--port=80", "-c", "$(circus.env.X)", "((1))",
    "$WID", "\0", "\n", "LD_PRELOAD", "PYTHONPATH", "NODE_ENV", "local", "deployer", "ci", "operator", "web-1",
    "circusd-stats", "w*", "HUP", "KILL", "*", "/", "", "é", "\u{85}",
];

fn text(u: &mut Unstructured) -> arbitrary::Result<String> {
    if u.ratio(1, 2)? {
        Ok(u.choose(ATOMS)?.to_string())
    } else {
        let parts: Vec<&str> = (0..u.int_in_range(0..=3)?).map(|_| u.choose(ATOMS).copied()).collect::<Result<_, _>>()?;
        Ok(format!("{}{}", parts.concat(), String::arbitrary(u)?))
    }
}

fn structured(u: &mut Unstructured) -> arbitrary::Result<()> {
    let policy = u.choose(&POLICIES)?;
    let name = text(u)?;
    let action = match u.int_in_range(0..=8)? {
        0 => Action::Add(AddRequest {
            name,
            command: text(u)?,
            args: (0..u.int_in_range(0..=6)?).map(|_| text(u)).collect::<Result<_, _>>()?,
            working_dir: if u.arbitrary()? { Some(text(u)?) } else { None },
            env: (0..u.int_in_range(0..=3)?).map(|_| Ok((text(u)?, text(u)?))).collect::<arbitrary::Result<BTreeMap<_, _>>>()?,
            num_processes: u.arbitrary()?,
            start: u.arbitrary()?,
            options: BTreeMap::new(),
        }),
        1 => Action::Start { name },
        2 => Action::Stop { name },
        3 => Action::Remove { name },
        4 => Action::Scale { name, num_processes: u.arbitrary()? },
        5 => Action::Signal { name, signal: text(u)? },
        6 => Action::Reload { name },
        7 => Action::Restart { name },
        _ => Action::Read { tool: text(u)? },
    };
    let mut facts = Facts {
        command: if u.arbitrary()? { Some(Ok(PathBuf::from(text(u)?))) } else { Some(Err(text(u)?)) },
        working_dir: if u.arbitrary()? { Some(Ok(PathBuf::from(text(u)?))) } else { None },
        target: if u.arbitrary()? {
            Some(Target { exists: u.arbitrary()?, owner: if u.arbitrary()? { Some(text(u)?) } else { None }, num_processes: u.arbitrary()?, command: if u.arbitrary()? { Some(text(u)?) } else { None } })
        } else {
            None
        },
        watchers: u.arbitrary()?,
        total_processes: u.arbitrary()?,
        circusd_switches: u.arbitrary()?,
        ..Facts::default()
    };
    for _ in 0..u.int_in_range(0..=3)? {
        facts.paths.insert(text(u)?, Ok(PathBuf::from(text(u)?)));
    }
    let identity = text(u)?;
    let d = decide(policy, &Request { identity, action }, &facts);
    assert!(d.allow == d.violations.is_empty(), "allowed with violations, or denied without");
    // A circusd that switches users never gets an add without a run-as account; no run-as
    // facts are made up here, so every such add must be denied.
    if facts.circusd_switches && matches!(d.command, Some(circus_warden::circus::Command::Add { .. })) {
        panic!("an add allowed for a root circusd without a run-as account");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    if let Some((&mode, rest)) = data.split_first() {
        if mode % 2 == 0 {
            let mut u = Unstructured::new(rest);
            let _ = structured(&mut u);
        } else if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
            let tool = v.get("tool").and_then(|t| t.as_str()).unwrap_or("add_process");
            let args = v.get("arguments").cloned().unwrap_or(serde_json::Value::Null);
            let _ = cases::action(tool, args.clone());
            let _ = tools::decode::<tools::AddArgs>(args.clone());
            let _ = tools::decode::<tools::ScaleArgs>(args.clone());
            let _ = tools::decode::<tools::SignalArgs>(args.clone());
            let _ = tools::decode::<tools::ExplainArgs>(args);
        }
    }
});
