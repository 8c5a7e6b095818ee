//! Table-driven policy cases covering the threat model (docs: threat-model families 1-15).
//!
//! Builds a fixture tree in a temporary directory (the "root"), renders
//! `tests/policy/policy.yaml.tmpl` and every case template `tests/policy/*.yaml.tmpl` with
//! `@ROOT@` replaced by that root, and runs them through `circus_warden::policy::cases::run_dir`
//! exactly as `circus-warden policy test` does (filesystem facts are gathered for real).
//!
//! Asserts: every case passes; at least 80 deny/invalid cases, each with a `family` naming its
//! threat-model family (`N-name`); at least 20 `want: allow` cases with `family: legit`; and
//! several cases for each family that is a policy decision (1-10, 12-15). Prints the counts.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use circus_warden::policy::cases::{Want, run_dir};

const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/policy");
/// The families that are policy decisions and need several cases each.
const DECISION_FAMILIES: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15];
const MIN_PER_FAMILY: usize = 5;
const MIN_DENY: usize = 80;
const MIN_LEGIT: usize = 20;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// An "executable": never run by these tests, it only has to be a regular file with x bits.
fn exe(path: &Path) {
    write(path, "#!/bin/sh\nexit 0\n");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn link(target: impl AsRef<Path>, at: &Path) {
    fs::create_dir_all(at.parent().unwrap()).unwrap();
    symlink(target, at).unwrap();
}

/// The fixture tree the templates refer to through @ROOT@.
fn build_fixture(root: &Path) {
    let r = |p: &str| root.join(p);
    // trusted binaries: the app's interpreter, the worker's node, gunicorn in the app's venv
    exe(&r("usr/bin/python3.11"));
    link("python3.11", &r("usr/bin/python3"));
    exe(&r("usr/bin/python3-evil")); // a prefix of an allowed name
    exe(&r("usr/bin/python3.11-dbg")); // a suffix of an allowed name
    link("/bin/sh", &r("usr/bin/python3.12")); // named like an interpreter, is a shell
    link("python3.99", &r("usr/bin/python3-dangling"));
    exe(&r("opt/node/bin/node"));
    link("../../../opt/node/bin/node", &r("usr/local/bin/node")); // bare `node` resolves through it
    exe(&r("srv/venv/bin/gunicorn"));

    // the web app, and what sits beside it
    for f in ["app.py", "manage.py", "settings.py", "wsgi.py"] {
        write(&r(&format!("srv/app/{f}")), "print('app')\n");
    }
    link("app.py", &r("srv/app/main.py")); // a symlink that stays inside
    write(&r("srv/app/conf/app.toml"), "[app]\n");
    fs::create_dir_all(r("srv/app/sub")).unwrap();
    link("../../tmp/evil.py", &r("srv/app/link-out.py")); // escapes the app
    link("missing-target.py", &r("srv/app/dangling.py"));
    link("nowhere", &r("srv/app/dangling-dir"));
    link("/etc", &r("srv/app/etc")); // escapes the fixture root entirely
    write(&r("srv/app-evil/app.py"), "import os; os.system('id')\n"); // sibling with the root as prefix

    // the worker
    write(&r("srv/worker/worker.js"), "console.log('worker')\n");
    write(&r("srv/worker/jobs.js"), "console.log('jobs')\n");
    write(&r("srv/worker/sub/evil.js"), "require('child_process')\n");
    write(&r("srv/worker-evil/worker.js"), "require('child_process')\n");
    fs::create_dir_all(r("srv/shared")).unwrap();
    fs::create_dir_all(r("run/app")).unwrap();

    // a writable directory with the attacker's material
    for f in ["evil.py", "evil.js", "evil.sh", "evil.toml", "evil.yaml"] {
        write(&r(&format!("tmp/{f}")), "evil\n");
    }
    fs::create_dir_all(r("tmp/bin")).unwrap();
    fs::copy(r("usr/bin/python3.11"), r("tmp/bin/python3.11")).unwrap();
    fs::copy("/usr/bin/sleep", r("tmp/bin/sleep")).unwrap();
    link("/bin/sh", &r("tmp/bin/node"));
    link("/bin/sh", &r("tmp/bin/gunicorn"));

    // the warden's own policy, which nothing may write or run beside
    write(&r("etc/circus-warden/policy.yaml"), "version: 1\nidentities: {}\n");
}

fn render(template: &Path, root: &str, out: &Path) {
    let text = fs::read_to_string(template).unwrap();
    write(out, &text.replace("@ROOT@", root));
}

#[test]
fn policy_cases_cover_the_threat_model() {
    let tmp = tempfile::tempdir().unwrap();
    // Program paths are matched against canonical paths: render with the canonical root.
    let root: PathBuf = tmp.path().canonicalize().unwrap();
    let root_str = root.to_str().unwrap().to_string();
    assert!(!root_str.contains(['*', '?', '[', ']', '{', '}', '\\', '"']), "root {root_str} would be a glob");
    let fixture = root.join("root");
    build_fixture(&fixture);
    let fixture_str = fixture.to_str().unwrap();

    // tmp/policy.yaml and tmp/cases/*.yaml: the case files name the policy as ../policy.yaml
    render(&Path::new(TEMPLATES).join("policy.yaml.tmpl"), fixture_str, &root.join("policy.yaml"));
    let mut templates: Vec<PathBuf> = fs::read_dir(TEMPLATES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".yaml.tmpl")) && !p.ends_with("policy.yaml.tmpl"))
        .collect();
    templates.sort();
    assert!(!templates.is_empty(), "no case templates in {TEMPLATES}");
    for t in &templates {
        let name = t.file_name().unwrap().to_str().unwrap().trim_end_matches(".tmpl");
        render(t, fixture_str, &root.join("cases").join(name));
    }

    let outcomes = run_dir(&root.join("cases")).unwrap_or_else(|e| panic!("{e}"));

    // every case passes
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("{}: {}: {f}", o.file.rsplit('/').next().unwrap_or(&o.file), o.name)))
        .collect();

    // counts per family
    let mut per_family: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new(); // (allow, deny, invalid)
    let mut problems = Vec::new();
    let mut names = std::collections::HashSet::new();
    for o in &outcomes {
        if !names.insert((o.file.clone(), o.name.clone())) {
            problems.push(format!("duplicate case name {:?} in {}", o.name, o.file));
        }
        let family = o.family.clone().unwrap_or_default();
        let e = per_family.entry(family.clone()).or_default();
        match o.want {
            Want::Allow => e.0 += 1,
            Want::Deny => e.1 += 1,
            Want::Invalid => e.2 += 1,
        }
        match (o.want, family.as_str()) {
            (Want::Allow, "legit") => {}
            (Want::Allow, f) => problems.push(format!("{}: an allow case must have family legit, not {f:?}", o.name)),
            (_, "legit") | (_, "") => problems.push(format!("{}: a deny/invalid case needs a threat-model family", o.name)),
            (_, f) => {
                let number = f.split_once('-').and_then(|(n, rest)| (!rest.is_empty()).then_some(n)).and_then(|n| n.parse::<u32>().ok());
                if !number.is_some_and(|n| (1..=18).contains(&n)) {
                    problems.push(format!("{}: family {f:?} is not `N-name` with N a threat-model family (1-18)", o.name));
                }
            }
        }
    }

    println!("\npolicy cases by family (allow / deny / invalid):");
    let mut ordered: Vec<(&String, &(usize, usize, usize))> = per_family.iter().collect();
    ordered.sort_by_key(|(f, _)| (f.split_once('-').and_then(|(n, _)| n.parse::<u32>().ok()).unwrap_or(u32::MAX), (*f).clone()));
    for (family, (a, d, i)) in ordered {
        println!("  {family:<28} {a:>4} {d:>4} {i:>4}");
    }
    let deny: usize = outcomes.iter().filter(|o| o.want != Want::Allow).count();
    let legit: usize = per_family.get("legit").map_or(0, |c| c.0);
    println!(
        "  {:<28} {:>4} {:>4}  (deny+invalid {deny}, legit allows {legit}, total {})",
        "total",
        per_family.values().map(|c| c.0).sum::<usize>(),
        per_family.values().map(|c| c.1).sum::<usize>(),
        outcomes.len()
    );

    if deny < MIN_DENY {
        problems.push(format!("only {deny} deny/invalid cases; want at least {MIN_DENY}"));
    }
    if legit < MIN_LEGIT {
        problems.push(format!("only {legit} legit allow cases; want at least {MIN_LEGIT}"));
    }
    for n in DECISION_FAMILIES {
        let count: usize =
            per_family.iter().filter(|(f, _)| f.split_once('-').is_some_and(|(k, _)| k == n.to_string())).map(|(_, (_, d, i))| d + i).sum();
        if count < MIN_PER_FAMILY {
            problems.push(format!("family {n} has {count} cases; want at least {MIN_PER_FAMILY}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} policy cases failed:\n{}", failures.len(), outcomes.len(), failures.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
