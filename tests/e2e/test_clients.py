"""Third-party MCP clients against the warden in embedded mode: the MCP conformance suite over
HTTP (with a written baseline of the scenarios that assume the suite's reference server) and
the MCP Inspector CLI over stdio and HTTP. Both come from npm into .tools/ (see the Makefile);
the tests fail, not skip, when they are missing, because `make test` installs them."""

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CIRCUS_WARDEN_BIN", str(ROOT / "target/release/circus-warden"))
TOOLS_BIN = ROOT / ".tools/node_modules/.bin"
NODE = TOOLS_BIN / "node"


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{TOOLS_BIN}:{ROOT / '.venv/bin'}:{env.get('PATH', '')}"
    return env


# What the client tests need: sleep with an optional duration, for the default identity.
POLICY = """\
version: 1
run_as: {user: circus-run}
programs:
  - id: sleep
    path: /usr/bin/sleep
    args:
      positional:
        - match: ["[0-9]*", "infinity"]
identities:
  local:
    tools: ["*"]
    programs: ["*"]
"""


def _policy_and_audit(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return f"policy:\n  path: {policy}\naudit:\n  path: {tmp_path / 'audit.log'}\n"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def embedded_http(tmp_path):
    """The warden over HTTP with its own circusd; yields the /mcp URL."""
    port = _free_port()
    cfg = tmp_path / "warden.yaml"
    cfg.write_text(
        f"server:\n  transport: http\n  bind: 127.0.0.1:{port}\n"
        f"circus:\n  runtime_dir: {tmp_path}\n"
        + _policy_and_audit(tmp_path)
    )
    log = open(tmp_path / "warden.log", "wb")
    proc = subprocess.Popen([BIN, "serve", "--config", str(cfg)], stdout=log, stderr=log, env=_env())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(base + "/readyz", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.terminate()
        pytest.fail(f"warden not ready; log: {(tmp_path / 'warden.log').read_text()}")
    yield base + "/mcp"
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def _run(args, timeout, cwd=None):
    assert NODE.exists(), "Node 22 missing from .tools: run `make tools`"
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd)


@pytest.mark.timeout(600)
def test_conformance_suite_passes_except_the_written_baseline(embedded_http):
    r = _run(
        [str(NODE), str(TOOLS_BIN / "conformance"), "server", "--url", embedded_http,
         "--expected-failures", str(ROOT / "tests/conformance/expected-failures.yaml")],
        timeout=540,
    )
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, tail
    assert "Baseline check passed" in r.stdout, tail
    # The scenarios that matter most for this server must be among the passes.
    for scenario in ["server-initialize", "tools-list", "tools-call-error", "dns-rebinding-protection", "ping"]:
        assert f"✓ {scenario}:" in r.stdout, f"{scenario} did not pass\n{tail}"


@pytest.mark.timeout(120)
def test_inspector_cli_over_http_calls_a_tool(embedded_http):
    r = _run(
        [str(NODE), str(TOOLS_BIN / "mcp-inspector"), "--cli", embedded_http, "--transport", "http",
         "--method", "tools/call", "--tool-name", "add_process",
         "--tool-arg", "name=inspected", "--tool-arg", "command=sleep", "--tool-arg", "start=false"],
        timeout=90,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    body = json.loads(r.stdout)
    assert body["isError"] is False, body
    assert body["structuredContent"]["command"] == "/usr/bin/sleep"
    listed = _run(
        [str(NODE), str(TOOLS_BIN / "mcp-inspector"), "--cli", embedded_http, "--transport", "http",
         "--method", "tools/call", "--tool-name", "list_processes"],
        timeout=90,
    )
    names = [p["name"] for p in json.loads(listed.stdout)["structuredContent"]["processes"]]
    assert "inspected" in names


@pytest.mark.timeout(120)
def test_inspector_cli_over_stdio_lists_tools(tmp_path):
    # The Inspector claims --config for itself: the warden reads its default file instead.
    (tmp_path / "config").mkdir()
    (tmp_path / "config/circus-warden.yaml").write_text(
        f"circus:\n  runtime_dir: {tmp_path}\n" + _policy_and_audit(tmp_path)
    )
    r = _run(
        [str(NODE), str(TOOLS_BIN / "mcp-inspector"), "--cli", BIN, "serve", "--method", "tools/list"],
        timeout=90,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    names = {t["name"] for t in json.loads(r.stdout)["tools"]}
    assert names == {
        "add_process", "start_process", "stop_process", "restart_process", "reload_process",
        "remove_process", "scale_process", "signal_process", "list_processes",
        "get_process_status", "get_process_stats", "explain_policy",
        "get_logs", "get_log_summary", "list_alerts",
    }
