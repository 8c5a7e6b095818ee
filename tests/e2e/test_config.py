"""End-to-end tests of configuration loading: `config print`, `config check`, and `serve` refusals.

Owns the "CLI" and "Config keys" sections of docs/interface.md as seen from outside: defaults,
file < env (CIRCUS_WARDEN_*, `__` between levels) precedence, the implicit
config/circus-warden.yaml, unknown keys and invalid values reported as `FILE: key: rule`
with a non-zero exit.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import SLEEP, clean_env, free_port, run_cli, to_yaml, warden_bin

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
    assert doc["gate"]["executables"] == []
    assert doc["gate"]["max_processes"] == 4
    assert doc["gate"]["max_args"] == 64
    assert doc["gate"]["max_arg_bytes"] == 4096
    assert set(doc["gate"]["signals"]) == {"HUP", "INT", "TERM", "QUIT", "USR1", "USR2"}
    assert doc["log"]["format"] == "human"


def test_print_file_and_env_override(workroot):
    cfg = write(workroot, {
        "circus": {"endpoint": "ipc:///tmp/cw-none/ctl.sock"},
        "server": {"bind": "127.0.0.1:1111"},
        "gate": {"executables": [SLEEP], "max_processes": 3},
    })
    doc = printed(workroot, ["--config", str(cfg)], {"CIRCUS_WARDEN_SERVER__BIND": "127.0.0.1:9999"})
    assert doc["server"]["bind"] == "127.0.0.1:9999", "env must override the file"
    assert doc["gate"]["max_processes"] == 3, "file value lost"
    assert doc["circus"]["endpoint"] == "ipc:///tmp/cw-none/ctl.sock"
    assert doc["circus"]["read_timeout_ms"] == 5000, "default lost when merging"
    assert SLEEP in doc["gate"]["executables"]


def test_env_nested_key(workroot):
    doc = printed(workroot, [], {"CIRCUS_WARDEN_CIRCUS__ENDPOINT": "ipc:///run/circus/endpoint",
                                 "CIRCUS_WARDEN_CIRCUS__READ_TIMEOUT_MS": "1234"})
    assert doc["circus"]["endpoint"] == "ipc:///run/circus/endpoint"
    assert doc["circus"]["read_timeout_ms"] == 1234


def test_implicit_config_file_in_cwd(workroot):
    (workroot / "config").mkdir(exist_ok=True)
    write(workroot / "config", {"gate": {"max_processes": 2}}, "circus-warden.yaml")
    doc = printed(workroot, [])
    assert doc["gate"]["max_processes"] == 2


def test_missing_config_file_is_an_error(workroot):
    missing = workroot / "nope.yaml"
    r = run_cli(["config", "check", "--config", str(missing)], workroot)
    assert r.returncode != 0
    assert names_file(r.stderr + r.stdout, missing), r.stderr


def test_check_valid(workroot):
    cfg = write(workroot, {"gate": {"executables": [SLEEP], "working_dirs": [str(workroot)]}})
    r = run_cli(["config", "check", "--config", str(cfg)], workroot)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("subcommand", [["config", "check"], ["config", "print"]])
@pytest.mark.parametrize("doc,key", [
    ("gate:\n  executables: []\n  bogus_key: 1\n", "bogus_key"),
    ("bogus_section:\n  x: 1\n", "bogus_section"),
    ("server:\n  bindd: 127.0.0.1:1\n", "bindd"),
], ids=["nested", "top-level", "typo"])
def test_unknown_key_rejected(workroot, subcommand, doc, key):
    cfg = write(workroot, doc)
    r = run_cli([*subcommand, "--config", str(cfg)], workroot)
    out = r.stderr + r.stdout
    assert r.returncode != 0, f"unknown key accepted: {out[:300]}"
    assert names_file(out, cfg), f"message does not name the file: {out[:500]}"
    assert key in out, f"message does not name the key {key!r}: {out[:500]}"


@pytest.mark.parametrize("doc,key", [
    ("gate:\n  max_processes: 0\n", "gate.max_processes"),
    ("gate:\n  max_processes: many\n", "gate.max_processes"),
    ("server:\n  transport: carrier-pigeon\n", "server.transport"),
    ("server:\n  max_body_bytes: 0\n", "server.max_body_bytes"),
    ("circus:\n  endpoint: http://example.com/\n", "circus.endpoint"),
    ("gate:\n  executables: [sleep]\n", "gate.executables"),
    ("log:\n  format: xml\n", "log.format"),
], ids=["max0", "max-str", "transport", "body0", "endpoint-scheme", "exe-relative", "log-format"])
def test_invalid_value_names_key_and_rule(workroot, doc, key):
    cfg = write(workroot, doc)
    r = run_cli(["config", "check", "--config", str(cfg)], workroot)
    out = r.stderr + r.stdout
    assert r.returncode == 1, f"exit {r.returncode} (contract: 1): {out[:300]}"
    assert key in out or key.split(".")[-1] in out, f"message does not name {key}: {out[:500]}"
    if key == "gate.max_processes" and "max_processes: 0" in doc:
        # the documented format: `FILE: key: rule`
        assert re.search(r"(" + re.escape(str(cfg)) + "|" + re.escape(cfg.name) + r"):\s*gate\.max_processes:\s*\S", out), \
            f"not in `FILE: key: rule` form: {out[:500]}"


def test_invalid_env_value(workroot):
    r = run_cli(["config", "check"], workroot, {"CIRCUS_WARDEN_GATE__MAX_PROCESSES": "abc"})
    out = r.stderr + r.stdout
    assert r.returncode != 0
    assert "max_processes" in out, out[:500]


def test_serve_refuses_bad_config(workroot):
    cfg = write(workroot, "gate:\n  bogus_key: 1\n")
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
    cfg = write(workroot, {"log": {"level": "debug"}, "gate": {"executables": [SLEEP]},
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
