"""End-to-end tests of malformed and hostile input: the warden answers clearly and stays up.

Owns: unknown tools, wrong argument types, missing required fields, oversized strings,
not_found on valid-but-absent names, raw JSON-RPC batches and malformed JSON POSTed to /mcp,
and garbage lines on the stdio transport. After each case the same server must still answer
a normal call, and nothing may have been created in circusd.
"""

from __future__ import annotations

import json
import select
import subprocess
import time

import pytest

from harness import (
    SLEEP,
    RawHttp,
    ok,
    tool_error,
    unique_name,
    watcher_exists,
    watcher_names,
)

pytestmark = [pytest.mark.usefixtures("cleanup_watchers"), pytest.mark.timeout(120)]


def still_alive(mcp) -> None:
    ok(mcp.call("list_processes", {}))


def call_expect_error(mcp, tool: str, args: dict, kinds=("invalid_arguments",), field: str | None = None):
    """The call must fail clearly: a tool error of `kinds` (contract) -- a JSON-RPC error is reported."""
    from mcp.shared.exceptions import MCPError

    try:
        res = mcp.call(tool, args)
    except MCPError as e:
        pytest.fail(f"{tool}: got a JSON-RPC error instead of a tool result with isError "
                    f"(contract: failures are tool results): code={e.code} {e.error.message}")
    return tool_error(res, kinds, field)


def test_unknown_tool(mcp):
    from mcp.shared.exceptions import MCPError

    try:
        res = mcp.call("no_such_tool", {"x": 1})
    except MCPError as e:
        # acceptable "clear error": a JSON-RPC error that names the tool
        assert "no_such_tool" in e.error.message or e.code in (-32601, -32602), e.error
    else:
        tool_error(res, ["unknown_tool"])
    still_alive(mcp)


@pytest.mark.parametrize("args,field", [
    ({"name": "NAME", "command": SLEEP, "args": ["3600"], "num_processes": "3"}, "num_processes"),
    ({"name": "NAME", "command": SLEEP, "args": "3600"}, "args"),
    ({"name": "NAME", "command": SLEEP, "args": [3600]}, "args"),
    ({"name": "NAME", "command": SLEEP, "args": ["3600"], "env": ["A=b"]}, "env"),
    ({"name": "NAME", "command": SLEEP, "args": ["3600"], "env": {"A": 1}}, "env"),
    ({"name": "NAME", "command": SLEEP, "args": ["3600"], "start": "yes"}, "start"),
    ({"name": "NAME", "command": ["/usr/bin/sleep"], "args": ["3600"]}, "command"),
    ({"name": "NAME", "command": SLEEP, "args": ["3600"], "num_processes": -1}, "num_processes"),
    ({"name": "NAME", "command": SLEEP, "args": ["3600"], "num_processes": 1.5}, "num_processes"),
    ({"name": 42, "command": SLEEP, "args": ["3600"]}, "name"),
], ids=["num-str", "args-str", "args-int", "env-list", "env-int-value", "start-str", "command-list",
        "num-negative", "num-float", "name-int"])
def test_wrong_types(mcp, args, field):
    name = unique_name()
    args = {k: (name if v == "NAME" else v) for k, v in args.items()}
    before = set(watcher_names(mcp.endpoint))
    kinds = ("invalid_arguments", "denied") if field == "num_processes" and args[field] == -1 else ("invalid_arguments",)
    call_expect_error(mcp, "add_process", args, kinds, field)
    assert set(watcher_names(mcp.endpoint)) == before
    still_alive(mcp)


@pytest.mark.parametrize("tool,args,field", [
    ("add_process", {"command": SLEEP, "args": []}, "name"),
    ("add_process", {"name": "NAME", "args": []}, "command"),
    ("start_process", {}, "name"),
    ("stop_process", {}, "name"),
    ("remove_process", {}, "name"),
    ("scale_process", {"name": "NAME"}, "num_processes"),
    ("signal_process", {"name": "NAME"}, "signal"),
    ("get_process_status", {}, "name"),
], ids=["add-no-name", "add-no-command", "start", "stop", "remove", "scale-no-n", "signal-no-sig", "status"])
def test_missing_required(mcp, tool, args, field):
    name = unique_name()
    args = {k: (name if v == "NAME" else v) for k, v in args.items()}
    before = set(watcher_names(mcp.endpoint))
    call_expect_error(mcp, tool, args, ("invalid_arguments",), field)
    assert set(watcher_names(mcp.endpoint)) == before
    still_alive(mcp)


@pytest.mark.parametrize("tool,extra", [
    ("start_process", {}), ("stop_process", {}), ("restart_process", {}), ("reload_process", {}),
    ("remove_process", {}), ("scale_process", {"num_processes": 2}), ("signal_process", {"signal": "HUP"}),
    ("get_process_status", {}),
])
def test_not_found(mcp, tool, extra):
    res = mcp.call(tool, {"name": unique_name("absent"), **extra})
    tool_error(res, ["not_found"])
    still_alive(mcp)


def test_huge_argument_100k(mcp):
    name = unique_name()
    res = mcp.call("add_process", {"name": name, "command": SLEEP, "args": ["3600", "x" * 100_000]})
    tool_error(res, ("denied", "invalid_arguments"), "args")
    assert not watcher_exists(mcp.endpoint, name)
    still_alive(mcp)


def test_huge_name_1mb(mcp):
    """Over HTTP a 1 MB name exceeds max_body_bytes (413); over stdio it must be a clear tool error."""
    big = "a" * (1024 * 1024)
    before = set(watcher_names(mcp.endpoint))
    if mcp.transport == "http":
        raw = mcp.warden.http()
        raw.initialize()
        status, msgs = raw.rpc("tools/call", {"name": "add_process",
                                              "arguments": {"name": big, "command": SLEEP, "args": []}}, timeout=30)
        if status != 413:
            assert status == 200 and msgs, f"HTTP {status} {msgs!r:.300}"
            result = msgs[0].get("result")
            if result is not None:
                tool_error(result, ("denied", "invalid_arguments"), "name")
            else:
                assert "error" in msgs[0], msgs[0]
    else:
        res = mcp.call("add_process", {"name": big, "command": SLEEP, "args": []}, timeout=60)
        tool_error(res, ("denied", "invalid_arguments"), "name")
    assert set(watcher_names(mcp.endpoint)) == before
    still_alive(mcp)


def test_error_message_does_not_echo_megabytes(mcp):
    """A clear error should not echo a 100 KB argument back in full."""
    res = mcp.call("add_process", {"name": unique_name(), "command": SLEEP, "args": ["y" * 100_000]})
    assert res.get("isError") is True
    assert len(json.dumps(res)) < 60_000, f"error result is {len(json.dumps(res))} bytes"


# --------------------------------------------------------------------------- raw HTTP


def _http_only(mcp):
    assert mcp.transport == "http"


# raw /mcp requests only exist on the HTTP transport: pin the module's `mcp` fixture to it
http_only = pytest.mark.parametrize("mcp", ["http"], indirect=True)


@http_only
def test_jsonrpc_batch_rejected(mcp):
    _http_only(mcp)
    raw: RawHttp = mcp.warden.http()
    raw.initialize()
    batch = [
        {"jsonrpc": "2.0", "id": 11, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {"name": "list_processes", "arguments": {}}},
    ]
    status, _, body = raw.post_mcp(batch)
    if status == 200:
        msgs = RawHttp.messages(body)
        flat = [m for x in msgs for m in (x if isinstance(x, list) else [x])]
        assert flat and all("error" in m for m in flat), f"batch was executed: {body[:500]!r}"
    else:
        assert 400 <= status < 500, f"HTTP {status}: {body[:300]!r}"
    # the warden is still up and the same session still works
    st, msgs = raw.rpc("tools/call", {"name": "list_processes", "arguments": {}}, rid=13)
    assert st == 200 and msgs and "result" in msgs[0], (st, msgs)
    still_alive(mcp)


@http_only
@pytest.mark.parametrize("body", [
    b"{not json", b"", b"   ", b"null", b"[]", b"42", b'{"jsonrpc":"2.0","id":1}', b'{"jsonrpc":"2.0","method":5,"id":1}',
    b"\xff\xfe\x00garbage",
], ids=["broken", "empty", "spaces", "null", "empty-batch", "number", "no-method", "method-int", "binary"])
def test_malformed_json_to_mcp(mcp, body):
    _http_only(mcp)
    raw: RawHttp = mcp.warden.http()
    raw.initialize()
    status, _, resp = raw.post_mcp(body)
    if status == 200:
        msgs = RawHttp.messages(resp)
        assert msgs and all("error" in m for m in msgs if isinstance(m, dict)), f"{resp[:300]!r}"
    else:
        assert 400 <= status < 500, f"HTTP {status}: {resp[:300]!r}"
    assert mcp.warden.http().request("GET", "/healthz")[0] == 200
    st, msgs = raw.rpc("tools/call", {"name": "list_processes", "arguments": {}}, rid=21)
    assert st == 200 and msgs and "result" in msgs[0], (st, msgs)
    still_alive(mcp)


@http_only
def test_malformed_json_without_session(mcp):
    _http_only(mcp)
    raw: RawHttp = mcp.warden.http()
    status, _, _ = raw.post_mcp(b"{broken")
    assert 400 <= status < 500, status
    still_alive(mcp)


@http_only
def test_unknown_session_id(mcp):
    _http_only(mcp)
    raw: RawHttp = mcp.warden.http()
    raw.session_id = "does-not-exist-0000"
    status, _, _ = raw.post_mcp({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status in (400, 404), status
    still_alive(mcp)


# --------------------------------------------------------------------------- raw stdio


@pytest.mark.parametrize("mcp", ["stdio"], indirect=True)
def test_stdio_garbage_lines_do_not_kill_server(mcp):
    """Garbage on stdin gets a JSON-RPC parse error (or is ignored); the server keeps serving."""
    assert mcp.transport == "stdio"
    from harness import warden_bin

    p = subprocess.Popen([warden_bin(), *mcp.warden.stdio_params().args], stdin=subprocess.PIPE, bufsize=0,
                         stdout=subprocess.PIPE, stderr=open(mcp.warden.log_path, "ab"),
                         env=mcp.warden.env, cwd=str(mcp.warden.dir))
    try:
        def send(obj):
            data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            p.stdin.write(data + b"\n")
            p.stdin.flush()

        def read_until_id(rid, timeout=15.0):
            deadline = time.monotonic() + timeout
            buf = b""
            while time.monotonic() < deadline:
                r, _, _ = select.select([p.stdout], [], [], 0.2)
                if not r:
                    if p.poll() is not None:
                        raise AssertionError(f"server exited with {p.returncode}")
                    continue
                chunk = p.stdout.readline()
                if not chunk:
                    raise AssertionError(f"stdout closed (exit {p.poll()})")
                buf += chunk
                msg = json.loads(chunk)
                if msg.get("id") == rid:
                    return msg
            raise AssertionError(f"no reply with id {rid}: {buf[-500:]!r}")

        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
        assert "result" in read_until_id(1)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for junk in (b"{not json", b"[]", b"null", b'{"jsonrpc":"2.0","id":99,"method":"no/such/method"}'):
            send(junk)
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_processes", "arguments": {}}})
        reply = read_until_id(2)
        assert "result" in reply, reply
    finally:
        p.stdin.close()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
