"""End-to-end tests of configuration loading: `config print`, `config check`, and `serve` refusals.

Owns the "CLI" and "Config keys" sections of docs/interface.md as seen from outside: defaults
(`policy.*`, `audit.*`, `server.default_identity`), file < env (CIRCUS_WARDEN_*, `__` between
levels) precedence, the implicit config/circus-warden.yaml, unknown keys (the interim `gate:`
section included) and invalid values reported as `FILE: key: rule` with a non-zero exit, and
`serve` refusing to start without a usable policy file (fail closed).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import clean_env, e2e_policy, free_port, run_cli, to_yaml, warden_bin, write_policy

pytestmark = pytest.mark.timeout(60)


def write(dirpath: Path, text_or_dict, name: str = "warden.yaml") -> Path:
    p = dirpath / name
    p.write_text(text_or_dict if isinstance(text_or_dict, str) else to_yaml(text_or_dict) + "\n")
    return p


def names_file(out: str, path: Path) -> bool:
    """The message names the config file (as given; its base name is accepted too)."""
    return str(path) in out or re.search(r"(^|[\s/'\"`])" + re.escape(path.name) + r"\b", out) is not None


def printed(cwd: Path, args: list[str], env: dict | None = None) -> dict:
    r = run_cli(["config", "print", *args], cwd, env)
    assert r.returncode == 0, f"config print failed ({r.returncode}): {r.stderr}"
    try:
        doc = yaml.safe_load(r.stdout)
    except yaml.YAMLError as e:
        pytest.fail(f"config print stdout is not YAML ({e}): {r.stdout[:500]!r}")
    assert isinstance(doc, dict), r.stdout
    return doc


def test_print_defaults(workroot):
    doc = printed(workroot, [])
    assert doc["circus"]["endpoint"] is None
    assert doc["circus"]["connect_timeout_ms"] == 1000
    assert doc["circus"]["read_timeout_ms"] == 5000
    assert doc["circus"]["mutation_timeout_ms"] == 30000
    assert doc["server"]["transport"] == "stdio"
    assert doc["server"]["bind"] == "127.0.0.1:8731"
    assert doc["server"]["max_body_bytes"] == 1048576
    assert doc["server"]["tokens"] == []
    assert doc["server"]["default_identity"] == "local"
    assert "stdio_identity" not in doc["server"]
    assert "gate" not in doc, "the interim gate section is gone"
    assert doc["policy"]["path"] == "policies/default.yaml"
    assert doc["policy"]["reload_interval_ms"] == 2000
    assert doc["audit"]["path"] is None, "audit goes to stderr by default"
    assert doc["audit"]["max_bytes"] == 10 * 1024 * 1024
    assert doc["audit"]["keep"] == 5
    assert doc["audit"]["fail_closed"] is True
    assert doc["audit"]["reads"] is False
    assert doc["log"]["format"] == "human"


def test_print_file_and_env_override(workroot):
    cfg = write(workroot, {
        "circus": {"endpoint": "ipc:///tmp/cw-none/ctl.sock"},
        "server": {"bind": "127.0.0.1:1111", "default_identity": "agent"},
        "policy": {"path": "/etc/circus-warden/policy.yaml", "reload_interval_ms": 750},
        "audit": {"path": "/var/log/cw/audit.log", "keep": 3},
    })
    doc = printed(workroot, ["--config", str(cfg)], {"CIRCUS_WARDEN_SERVER__BIND": "127.0.0.1:9999",
                                                     "CIRCUS_WARDEN_AUDIT__KEEP": "7"})
    assert doc["server"]["bind"] == "127.0.0.1:9999", "env must override the file"
    assert doc["audit"]["keep"] == 7, "env must override the file"
    assert doc["policy"]["reload_interval_ms"] == 750, "file value lost"
    assert doc["policy"]["path"] == "/etc/circus-warden/policy.yaml"
    assert doc["audit"]["path"] == "/var/log/cw/audit.log"
    assert doc["server"]["default_identity"] == "agent"
    assert doc["circus"]["endpoint"] == "ipc:///tmp/cw-none/ctl.sock"
    assert doc["circus"]["read_timeout_ms"] == 5000, "default lost when merging"
    assert doc["audit"]["fail_closed"] is True, "default lost when merging"


def test_env_nested_key(workroot):
    doc = printed(workroot, [], {"CIRCUS_WARDEN_CIRCUS__ENDPOINT": "ipc:///run/circus/endpoint",
                                 "CIRCUS_WARDEN_CIRCUS__READ_TIMEOUT_MS": "1234"})
    assert doc["circus"]["endpoint"] == "ipc:///run/circus/endpoint"
    assert doc["circus"]["read_timeout_ms"] == 1234


def test_implicit_config_file_in_cwd(workroot):
    (workroot / "config").mkdir(exist_ok=True)
    write(workroot / "config", {"policy": {"reload_interval_ms": 1234}}, "circus-warden.yaml")
    doc = printed(workroot, [])
    assert doc["policy"]["reload_interval_ms"] == 1234


def test_missing_config_file_is_an_error(workroot):
    missing = workroot / "nope.yaml"
    r = run_cli(["config", "check", "--config", str(missing)], workroot)
    assert r.returncode != 0
    assert names_file(r.stderr + r.stdout, missing), r.stderr


def test_check_valid(workroot):
    cfg = write(workroot, {"policy": {"path": str(workroot / "p.yaml")},
                           "audit": {"path": str(workroot / "audit.log"), "fail_closed": True}})
    r = run_cli(["config", "check", "--config", str(cfg)], workroot)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("subcommand", [["config", "check"], ["config", "print"]])
@pytest.mark.parametrize("doc,key", [
    ("policy:\n  path: p.yaml\n  bogus_key: 1\n", "bogus_key"),
    ("bogus_section:\n  x: 1\n", "bogus_section"),
    ("server:\n  bindd: 127.0.0.1:1\n", "bindd"),
    ("gate:\n  executables: [/usr/bin/sleep]\n", "gate"),
    ("server:\n  stdio_identity: local\n", "stdio_identity"),
], ids=["nested", "top-level", "typo", "interim-gate", "renamed-stdio-identity"])
def test_unknown_key_rejected(workroot, subcommand, doc, key):
    cfg = write(workroot, doc)
    r = run_cli([*subcommand, "--config", str(cfg)], workroot)
    out = r.stderr + r.stdout
    assert r.returncode != 0, f"unknown key accepted: {out[:300]}"
    assert names_file(out, cfg), f"message does not name the file: {out[:500]}"
    assert key in out, f"message does not name the key {key!r}: {out[:500]}"


@pytest.mark.parametrize("doc,key", [
    ("policy:\n  reload_interval_ms: 0\n", "policy.reload_interval_ms"),
    ("policy:\n  reload_interval_ms: many\n", "policy.reload_interval_ms"),
    ("audit:\n  keep: 1000\n", "audit.keep"),
    ("audit:\n  max_bytes: 10\n", "audit.max_bytes"),
    ("audit:\n  fail_closed: maybe\n", "audit.fail_closed"),
    ("server:\n  default_identity: ''\n", "server.default_identity"),
    ("server:\n  transport: carrier-pigeon\n", "server.transport"),
    ("server:\n  max_body_bytes: 0\n", "server.max_body_bytes"),
    ("circus:\n  endpoint: http://example.com/\n", "circus.endpoint"),
    ("log:\n  format: xml\n", "log.format"),
], ids=["reload0", "reload-str", "keep", "audit-max-bytes", "fail-closed-str", "identity-empty", "transport",
        "body0", "endpoint-scheme", "log-format"])
def test_invalid_value_names_key_and_rule(workroot, doc, key):
    cfg = write(workroot, doc)
    r = run_cli(["config", "check", "--config", str(cfg)], workroot)
    out = r.stderr + r.stdout
    assert r.returncode == 1, f"exit {r.returncode} (contract: 1): {out[:300]}"
    assert key in out or key.split(".")[-1] in out, f"message does not name {key}: {out[:500]}"
    if key == "policy.reload_interval_ms" and "reload_interval_ms: 0" in doc:
        # the documented format: `FILE: key: rule`
        assert re.search(r"(" + re.escape(str(cfg)) + "|" + re.escape(cfg.name) + r"):\s*policy\.reload_interval_ms:\s*\S", out), \
            f"not in `FILE: key: rule` form: {out[:500]}"


def test_invalid_env_value(workroot):
    r = run_cli(["config", "check"], workroot, {"CIRCUS_WARDEN_POLICY__RELOAD_INTERVAL_MS": "abc"})
    out = r.stderr + r.stdout
    assert r.returncode != 0
    assert "reload_interval_ms" in out, out[:500]


def _serve_briefly(cfg: Path, cwd: Path) -> subprocess.CompletedProcess:
    port = free_port()
    try:
        return subprocess.run([warden_bin(), "serve", "--config", str(cfg), "--transport", "http",
                               "--bind", f"127.0.0.1:{port}"], cwd=str(cwd), env=clean_env(),
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("serve kept running without a usable policy or config")


@pytest.mark.parametrize("policy_text", [
    None,
    "version: 1\nidentities: [\n",
    "version: 1\nidentities: {local: {tools: ['*']}}\nbogus: 1\n",
    "version: 1\nenv: [LD_PRELOAD]\nidentities: {local: {tools: ['*']}}\n",
    "version: 2\nidentities: {local: {tools: ['*']}}\n",
    "",
], ids=["missing", "broken-yaml", "unknown-field", "dangerous-env", "version", "empty"])
def test_serve_refuses_unusable_policy(workroot, policy_text):
    """Fail closed at startup: without a policy that compiles, the warden does not serve."""
    policy = workroot / "policy.yaml"
    if policy_text is not None:
        policy.write_text(policy_text)
    cfg = write(workroot, {"policy": {"path": str(policy)},
                           "circus": {"endpoint": "ipc:///tmp/cw-nonexistent/ctl.sock"}})
    r = _serve_briefly(cfg, workroot)
    assert r.returncode != 0, f"serve started with policy {policy_text!r}"
    assert "policy" in r.stderr.lower() and str(policy) in r.stderr, r.stderr[-1000:]


def test_serve_default_policy_path_is_relative_to_cwd(workroot):
    """Without policy.path the warden reads policies/default.yaml from its working directory."""
    cfg = write(workroot, {"circus": {"endpoint": "ipc:///tmp/cw-nonexistent/ctl.sock"}})
    r = _serve_briefly(cfg, workroot)
    assert r.returncode != 0
    assert "policies/default.yaml" in r.stderr, r.stderr[-1000:]


def test_serve_refuses_unopenable_audit_log(workroot):
    policy = workroot / "policy.yaml"
    write_policy(policy, e2e_policy(workroot))
    (workroot / "not-a-dir").write_text("")
    cfg = write(workroot, {"policy": {"path": str(policy)},
                           "audit": {"path": str(workroot / "not-a-dir" / "audit.log")},
                           "circus": {"endpoint": "ipc:///tmp/cw-nonexistent/ctl.sock"}})
    r = _serve_briefly(cfg, workroot)
    assert r.returncode != 0
    assert "audit" in r.stderr.lower(), r.stderr[-1000:]


def test_serve_refuses_bad_config(workroot):
    cfg = write(workroot, "policy:\n  bogus_key: 1\n")
    port = free_port()
    try:
        r = subprocess.run([warden_bin(), "serve", "--config", str(cfg), "--transport", "http",
                            "--bind", f"127.0.0.1:{port}"], cwd=str(workroot), env=clean_env(),
                           capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("serve kept running with an invalid config")
    assert r.returncode != 0
    assert "bogus_key" in r.stderr


def test_cli_flags_override_env_and_file(warden_factory, circusd, workroot):
    """CLI flags win over env, env over the file: --endpoint must be the one used."""
    from harness import base_config, wait_for

    cfg = base_config(None, workroot, circus={"endpoint": "ipc:///tmp/cw-nonexistent/file.sock",
                                              "connect_timeout_ms": 300})
    w = warden_factory(cfg, "cli", env={"CIRCUS_WARDEN_CIRCUS__ENDPOINT": "ipc:///tmp/cw-nonexistent/env.sock"})
    w.start_http(extra_args=["--endpoint", circusd.endpoint, "--log-format", "json"])
    wait_for(lambda: w.readyz() == 200, 15, what="/readyz 200 via the --endpoint flag")
    with w.http_client() as c:  # something that logs (a gate decision)
        c.call_tool("add_process", {"name": "cli-x", "command": "/bin/sh", "args": []})
    lines = [ln for ln in w.log_path.read_text().splitlines() if ln.strip()]
    import json
    parsed = []
    for ln in lines:
        if ln.startswith("{"):
            parsed.append(json.loads(ln))
    assert parsed, f"--log-format json produced no JSON log lines: {lines[:5]}"
    assert all(("level" in p or "severity" in p) for p in parsed), parsed[:3]


def test_stdio_stdout_carries_only_mcp(workroot):
    """In stdio mode logs go to stderr: with a bad request and debug logging, stdout stays JSON-RPC."""
    policy = workroot / "policy.yaml"
    write_policy(policy, e2e_policy(workroot))
    cfg = write(workroot, {"log": {"level": "debug"}, "policy": {"path": str(policy)},
                           "circus": {"endpoint": "ipc:///tmp/cw-nonexistent/ctl.sock", "connect_timeout_ms": 200}})
    init = ('{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
            '"capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}\n'
            '{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
            '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"list_processes","arguments":{}}}\n')
    p = subprocess.Popen([warden_bin(), "serve", "--config", str(cfg), "--transport", "stdio"], cwd=str(workroot),
                         env=clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(init, timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    import json
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, f"no stdout; stderr: {err[-500:]}"
    for ln in lines:
        msg = json.loads(ln)
        assert msg.get("jsonrpc") == "2.0", ln
    assert err.strip(), "expected logs on stderr"
