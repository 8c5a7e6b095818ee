//! `decide` on a policy of 100 programs, facts gathered beforehand (no filesystem in the
//! loop): an allowed add of the last program (every earlier path glob is tried), a denied add
//! with several violations, the allowed add against a 1-program policy (what the 99 others
//! cost), and an allowed stop. Target: under 2 µs at the median.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

use circus_warden::policy::decide::decide;
use circus_warden::policy::{Action, AddRequest, Facts, Policy, Request, Target};
use criterion::{Criterion, criterion_group, criterion_main};

fn policy(n: usize) -> Policy {
    let mut y = String::from(
        "version: 1\nenv: [LANG]\nworking_dirs: [/srv]\noptions:\n  graceful_timeout: {min: 1, max: 60, default: 10}\nprograms:\n",
    );
    for i in (0..100).rev().take(n) {
        y.push_str(&format!(
            "  - id: app{i}\n    path: /opt/app{i}/bin/*\n    env: [PORT]\n    args:\n      positional:\n        - match: \"/srv/app{i}/**/*.py\"\n          path: true\n      min_positional: 1\n      flags:\n        --port: {{value: {{match: \"[0-9]*\"}}}}\n        --workers: {{value: {{match: \"[1-8]\"}}}}\n      deny: [\"-c*\"]\n"
        ));
    }
    y.push_str("identities:\n  local:\n    tools: [\"*\"]\n    programs: [\"*\"]\n    watchers: owned\n");
    Policy::compile("bench", &y).expect("the bench policy compiles")
}

fn add(command: &str, script: &str) -> (Request, Facts) {
    let req = Request {
        identity: "local".into(),
        action: Action::Add(AddRequest {
            name: "web-1".into(),
            command: command.into(),
            args: vec![script.into(), "--port".into(), "8000".into(), "--workers=4".into()],
            working_dir: Some("/srv/app99".into()),
            env: BTreeMap::from([("PORT".into(), "8000".into()), ("LANG".into(), "C.UTF-8".into())]),
            num_processes: 2,
            start: true,
            options: BTreeMap::from([("graceful_timeout".into(), serde_json::json!(5))]),
        }),
    };
    let mut facts = Facts {
        command: Some(Ok(PathBuf::from(command))),
        working_dir: Some(Ok(PathBuf::from("/srv/app99"))),
        target: Some(Target::default()),
        watchers: 5,
        total_processes: 10,
        ..Facts::default()
    };
    facts.paths.insert(script.into(), Ok(PathBuf::from(script)));
    (req, facts)
}

fn bench(c: &mut Criterion) {
    let p = policy(100);
    let one = policy(1);
    let (ok_req, ok_facts) = add("/opt/app99/bin/python3", "/srv/app99/web/main.py");
    assert!(decide(&p, &ok_req, &ok_facts).allow, "the allowed request must be allowed");
    let (bad_req, mut bad_facts) = add("/opt/app99/bin/python3", "/etc/passwd");
    bad_facts.paths.insert("/etc/passwd".into(), Ok(PathBuf::from("/etc/passwd")));
    assert!(!decide(&p, &bad_req, &bad_facts).allow, "the denied request must be denied");
    let stop = Request { identity: "local".into(), action: Action::Stop { name: "web-1".into() } };
    let stop_facts =
        Facts { target: Some(Target { exists: true, owner: Some("local".into()), num_processes: 2, command: None }), ..Facts::default() };
    assert!(decide(&p, &stop, &stop_facts).allow);

    c.bench_function("decide/add allowed, 100 programs", |b| b.iter(|| decide(black_box(&p), black_box(&ok_req), black_box(&ok_facts))));
    c.bench_function("decide/add denied, 100 programs", |b| b.iter(|| decide(black_box(&p), black_box(&bad_req), black_box(&bad_facts))));
    c.bench_function("decide/add allowed, 1 program", |b| b.iter(|| decide(black_box(&one), black_box(&ok_req), black_box(&ok_facts))));
    c.bench_function("decide/stop allowed", |b| b.iter(|| decide(black_box(&p), black_box(&stop), black_box(&stop_facts))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
