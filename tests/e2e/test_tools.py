"""End-to-end tests of every tool, resource and prompt in docs/interface.md, over stdio and HTTP.

Owns the positive-path contract checks: each call's structuredContent shape, and the effect
in circusd verified independently with a raw ZMQ DEALER (list/status/options/numprocesses),
never only from the warden's reply.
"""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from harness import (
    CIRCUSD_MARKER_VAR,
    PYTHON,
    SLEEP,
    circus_call,
    ok,
    pid_alive,
    process_environ,
    resource_json,
    tool_error,
    unique_name,
    wait_for,
    watcher_exists,
    watcher_options,
    watcher_pids,
    watcher_status,
)

pytestmark = [pytest.mark.usefixtures("cleanup_watchers"), pytest.mark.timeout(120)]

TOOLS = {
    "add_process", "start_process", "stop_process", "restart_process", "reload_process",
    "remove_process", "scale_process", "signal_process", "list_processes",
    "get_process_status", "get_process_stats", "explain_policy",
}


def add_sleep(mcp, name: str, **kw) -> dict:
    args = {"name": name, "command": SLEEP, "args": ["3600"], **kw}
    return ok(mcp.call("add_process", args))


def wait_active(endpoint: str, name: str, n: int = 1, timeout: float = 15.0) -> list[int]:
    def check():
        if watcher_status(endpoint, name) != "active":
            return None
        pids = watcher_pids(endpoint, name)
        return pids if len(pids) == n and all(pid_alive(p) for p in pids) else None

    return wait_for(check, timeout, what=f"{name} active with {n} process(es)")


# --------------------------------------------------------------------------- discovery


def test_tools_are_listed_with_schemas(mcp):
    tools = {t["name"]: t for t in mcp.client.list_tools()}
    missing = TOOLS - set(tools)
    assert not missing, f"tools missing from tools/list: {sorted(missing)}"
    for name in TOOLS:
        schema = tools[name].get("inputSchema")
        assert isinstance(schema, dict) and schema.get("type") == "object", f"{name}: inputSchema {schema}"
    props = tools["add_process"]["inputSchema"].get("properties", {})
    for key in ("name", "command", "args", "working_dir", "env", "num_processes", "start", "options"):
        assert key in props, f"add_process inputSchema lacks {key}: {sorted(props)}"
    required = set(tools["add_process"]["inputSchema"].get("required", []))
    assert {"name", "command"} <= required, f"add_process required: {required}"


# --------------------------------------------------------------------------- add_process


def test_add_process_creates_watcher(mcp):
    name = unique_name()
    sc = add_sleep(mcp, name)
    assert sc["name"] == name
    assert sc["command"] == SLEEP
    assert sc["args"] == ["3600"]
    assert sc["started"] is True

    assert watcher_exists(mcp.endpoint, name), "circusd list does not show the watcher"
    opts = watcher_options(mcp.endpoint, name)
    assert opts["cmd"] == SLEEP and os.path.isabs(opts["cmd"]), f"cmd in circusd: {opts['cmd']!r}"
    assert list(opts["args"]) == ["3600"], f"args in circusd: {opts['args']!r}"
    assert opts["copy_env"] is False, "copy_env must be false"
    assert not opts.get("hooks"), f"hooks present: {opts.get('hooks')}"
    assert opts["shell"] is False
    assert opts["numprocesses"] == 1
    # The e2e policy's run_as (root, with allow_root) is sent as written.
    assert opts.get("uid") == 0 and opts.get("gid") == 0, (opts.get("uid"), opts.get("gid"))
    assert float(opts["graceful_timeout"]) == 2.0, (
        f"the policy's options.graceful_timeout.default not applied: {opts['graceful_timeout']}")
    assert opts["env"].get("CIRCUS_WARDEN_OWNER") == "local", f"owner marker missing: {opts.get('env')}"
    assert opts["stop_children"] is True and opts["close_child_stdin"] is True
    pids = wait_active(mcp.endpoint, name)
    proc = psutil.Process(pids[0])
    assert proc.cmdline() == [SLEEP, "3600"]
    env = process_environ(pids[0])
    assert CIRCUSD_MARKER_VAR not in env, "circusd's environment leaked into the child (copy_env)"


def test_add_process_canonicalises_symlink(mcp):
    link = mcp.workroot / f"sleep-link-{mcp.transport}"
    if not link.exists():
        link.symlink_to(SLEEP)
    name = unique_name()
    sc = ok(mcp.call("add_process", {"name": name, "command": str(link), "args": ["3600"]}))
    assert sc["command"] == SLEEP
    assert watcher_options(mcp.endpoint, name)["cmd"] == SLEEP


def test_add_process_bare_name_resolved_on_search_path(mcp):
    name = unique_name()
    sc = ok(mcp.call("add_process", {"name": name, "command": "sleep", "args": ["3600"]}))
    assert sc["command"] == SLEEP
    assert watcher_options(mcp.endpoint, name)["cmd"] == SLEEP


def test_add_process_without_start_then_start(mcp):
    name = unique_name()
    sc = add_sleep(mcp, name, start=False)
    assert sc["started"] is False
    assert watcher_exists(mcp.endpoint, name)
    assert watcher_status(mcp.endpoint, name) == "stopped"
    assert watcher_pids(mcp.endpoint, name) == []

    sc = ok(mcp.call("start_process", {"name": name}))
    assert sc["name"] == name and sc["action"].startswith("start")
    assert sc["state"] == "active"
    wait_active(mcp.endpoint, name)


def test_add_process_env_working_dir_and_args_verbatim(mcp):
    sub = mcp.workroot / f"wd-{mcp.transport}"
    sub.mkdir(exist_ok=True)
    out = sub / "env.txt"
    if out.exists():
        out.unlink()
    script = ("import os, time; "
              "open(os.path.join(os.getcwd(), 'env.txt'), 'w').write(os.environ.get('FOO', '<unset>')); "
              "time.sleep(3600)")
    name = unique_name()
    sc = ok(mcp.call("add_process", {
        "name": name, "command": PYTHON, "args": ["-c", script, "a b", "$HOME", "*"],
        "working_dir": str(sub), "env": {"FOO": "bar baz"}, "num_processes": 1, "start": True,
    }))
    assert sc["command"] == PYTHON
    assert sc["args"] == ["-c", script, "a b", "$HOME", "*"]
    wait_for(out.exists, 15, what="child wrote env.txt")
    wait_for(lambda: out.read_text() != "", 5, what="env.txt content")
    assert out.read_text() == "bar baz"
    opts = watcher_options(mcp.endpoint, name)
    assert opts["working_dir"] == str(sub)
    assert (opts.get("env") or {}).get("FOO") == "bar baz"
    pids = wait_active(mcp.endpoint, name)
    cmdline = psutil.Process(pids[0]).cmdline()
    assert cmdline[1:] == ["-c", script, "a b", "$HOME", "*"], f"argv changed on the way: {cmdline}"


# --------------------------------------------------------------------------- lifecycle


def test_stop_start_restart_reload(mcp):
    name = unique_name()
    add_sleep(mcp, name)
    pids0 = wait_active(mcp.endpoint, name)

    sc = ok(mcp.call("stop_process", {"name": name}))
    assert sc["name"] == name and sc["action"].startswith("stop"), sc
    assert sc["state"] == "stopped", sc
    wait_for(lambda: watcher_status(mcp.endpoint, name) == "stopped", 15, what="stopped in circusd")
    assert watcher_pids(mcp.endpoint, name) == []
    wait_for(lambda: not pid_alive(pids0[0]), 10, what="old pid gone after stop")

    sc = ok(mcp.call("start_process", {"name": name}))
    assert sc["name"] == name and sc["action"].startswith("start") and sc["state"] == "active", sc
    pids1 = wait_active(mcp.endpoint, name)

    sc = ok(mcp.call("restart_process", {"name": name}))
    assert sc["name"] == name and sc["action"].startswith("restart") and sc["state"] == "active", sc
    pids2 = wait_for(lambda: (p := wait_active(mcp.endpoint, name)) != pids1 and p, 15, what="new pid after restart")

    sc = ok(mcp.call("reload_process", {"name": name}))
    assert sc["name"] == name and sc["action"].startswith("reload") and sc["state"] == "active", sc
    wait_for(lambda: (p := wait_active(mcp.endpoint, name)) != pids2 and p, 15, what="new pid after reload")


def test_stop_does_not_glob(mcp):
    """`name` must be matched literally: stopping "a" must not stop "a-b" (circus globs by default)."""
    base = unique_name()
    other = base + "-x"
    add_sleep(mcp, base)
    add_sleep(mcp, other)
    wait_active(mcp.endpoint, other)
    ok(mcp.call("stop_process", {"name": base}))
    wait_for(lambda: watcher_status(mcp.endpoint, base) == "stopped", 15, what="base stopped")
    assert watcher_status(mcp.endpoint, other) == "active"


def test_remove_process(mcp):
    name = unique_name()
    add_sleep(mcp, name)
    pids = wait_active(mcp.endpoint, name)
    sc = ok(mcp.call("remove_process", {"name": name}))
    assert sc == {"name": name, "removed": True} or (sc["name"] == name and sc["removed"] is True), sc
    assert not watcher_exists(mcp.endpoint, name)
    wait_for(lambda: not pid_alive(pids[0]), 10, what="process gone after remove")


def test_scale_process(mcp):
    name = unique_name()
    add_sleep(mcp, name)
    wait_active(mcp.endpoint, name)
    sc = ok(mcp.call("scale_process", {"name": name, "num_processes": 3}))
    assert sc["name"] == name and sc["num_processes"] == 3, sc
    assert circus_call(mcp.endpoint, "numprocesses", name=name)["numprocesses"] == 3
    wait_active(mcp.endpoint, name, n=3)
    sc = ok(mcp.call("scale_process", {"name": name, "num_processes": 1}))
    assert sc["num_processes"] == 1
    wait_for(lambda: circus_call(mcp.endpoint, "numprocesses", name=name)["numprocesses"] == 1, 10,
             what="numprocesses back to 1")
    wait_active(mcp.endpoint, name, n=1)


@pytest.mark.parametrize("sig", ["HUP", "SIGHUP"])
def test_signal_process(mcp, sig):
    name = unique_name()
    add_sleep(mcp, name)
    (pid0,) = wait_active(mcp.endpoint, name)
    sc = ok(mcp.call("signal_process", {"name": name, "signal": sig}))
    assert sc["name"] == name and sc["signal"] in ("HUP", "SIGHUP"), sc
    # sleep dies of SIGHUP; circusd respawns it
    wait_for(lambda: not pid_alive(pid0), 10, what="signalled pid gone")
    wait_for(lambda: (p := watcher_pids(mcp.endpoint, name)) and pid0 not in p, 15, what="respawn")


def test_status_reports_last_exit(mcp):
    """After a process dies, get_process_status carries last_exit (pid, exit_code < 0 for a signal)."""
    name = unique_name()
    add_sleep(mcp, name)
    (pid0,) = wait_active(mcp.endpoint, name)
    ok(mcp.call("signal_process", {"name": name, "signal": "TERM"}))
    wait_for(lambda: not pid_alive(pid0), 10, what="process gone")

    def last_exit():
        sc = ok(mcp.call("get_process_status", {"name": name}))
        return sc.get("last_exit")

    le = wait_for(last_exit, 15, interval=0.2, what="last_exit in get_process_status")
    assert le["pid"] == pid0, le
    assert le["exit_code"] == -15, f"SIGTERM should give exit_code -15: {le}"
    sc = ok(mcp.call("get_process_status", {"name": name}))
    assert sc["spawns"] >= 2 and sc["restarts"] >= 1, sc


# --------------------------------------------------------------------------- read tools


def test_list_processes(mcp):
    a, b = unique_name(), unique_name()
    add_sleep(mcp, a)
    add_sleep(mcp, b, start=False)
    pids_a = wait_active(mcp.endpoint, a)
    sc = ok(mcp.call("list_processes", {}))
    procs = {p["name"]: p for p in sc["processes"]}
    assert {a, b} <= set(procs), sc
    for p in sc["processes"]:
        assert set(p) >= {"name", "state", "pids"}, p
        assert isinstance(p["pids"], list)
    assert procs[a]["state"] == "active" and sorted(procs[a]["pids"]) == pids_a
    assert procs[b]["state"] == "stopped" and procs[b]["pids"] == []
    assert set(procs) == set(circus_call(mcp.endpoint, "list")["watchers"]) - {"circusd-stats"}


def test_get_process_status(mcp):
    name = unique_name()
    add_sleep(mcp, name)
    pids = wait_active(mcp.endpoint, name)
    sc = ok(mcp.call("get_process_status", {"name": name}))
    assert sc["name"] == name and sc["state"] == "active", sc
    assert sorted(sc["pids"]) == pids
    assert isinstance(sc["spawns"], int) and sc["spawns"] >= 1, sc
    assert isinstance(sc["restarts"], int) and sc["restarts"] >= 0, sc
    ok(mcp.call("stop_process", {"name": name}))
    wait_for(lambda: watcher_status(mcp.endpoint, name) == "stopped", 10)
    sc = ok(mcp.call("get_process_status", {"name": name}))
    assert sc["state"] == "stopped" and sc["pids"] == [], sc


def test_get_process_status_not_found(mcp):
    res = mcp.call("get_process_status", {"name": unique_name("nope")})
    tool_error(res, ["not_found"])


def test_get_process_stats(mcp):
    name = unique_name()
    add_sleep(mcp, name, num_processes=2)
    pids = wait_active(mcp.endpoint, name, n=2)
    sc = ok(mcp.call("get_process_stats", {"name": name}))
    watchers = sc["watchers"]
    assert set(watchers) == {name}, sc
    per_pid = watchers[name]
    assert {str(p) for p in pids} == set(per_pid), f"pids {pids} vs {sorted(per_pid)}"
    for info in per_pid.values():
        assert isinstance(info["cpu"], (int, float)) and isinstance(info["mem"], (int, float)), info
    sc = ok(mcp.call("get_process_stats", {}))
    assert name in sc["watchers"], sorted(sc["watchers"])


# --------------------------------------------------------------------------- resources and prompts


def test_resources_and_template_listed(mcp):
    uris = {r["uri"] for r in mcp.client.list_resources()}
    assert {"circus://processes", "circus://stats"} <= uris, uris
    templates = {t["uriTemplate"] for t in mcp.client.list_resource_templates()}
    assert "process://{name}/info" in templates, templates


def test_resource_processes_matches_list_processes(mcp):
    name = unique_name()
    add_sleep(mcp, name)
    wait_active(mcp.endpoint, name)
    body = resource_json(mcp.client.read_resource("circus://processes"))
    tool = ok(mcp.call("list_processes", {}))
    assert set(body) == set(tool), (body, tool)
    assert {p["name"] for p in body["processes"]} == {p["name"] for p in tool["processes"]}
    assert name in {p["name"] for p in body["processes"]}


def test_resource_stats(mcp):
    name = unique_name()
    add_sleep(mcp, name)
    wait_active(mcp.endpoint, name)
    res = mcp.client.read_resource("circus://stats")
    body = resource_json(res)
    assert name in json.dumps(body), body


def test_resource_template_process_info(mcp):
    name = unique_name()
    add_sleep(mcp, name)
    pids = wait_active(mcp.endpoint, name)
    res = mcp.client.read_resource(f"process://{name}/info")
    assert res["contents"][0]["uri"] == f"process://{name}/info"
    body = resource_json(res)
    text = json.dumps(body)
    assert name in text and str(pids[0]) in text, body


def test_prompt_diagnose_process(mcp):
    prompts = {p["name"]: p for p in mcp.client.list_prompts()}
    assert "diagnose_process" in prompts, prompts
    arg_names = {a["name"] for a in prompts["diagnose_process"].get("arguments", [])}
    assert "name" in arg_names
    name = unique_name()
    add_sleep(mcp, name)
    res = mcp.client.get_prompt("diagnose_process", {"name": name})
    msgs = res.get("messages") or []
    assert msgs, res
    assert name in json.dumps(msgs), msgs


def test_session_survives_many_calls(mcp):
    """A burst of read calls over one session all succeed (no per-call socket leak or stall)."""
    name = unique_name()
    add_sleep(mcp, name)
    t0 = time.monotonic()
    for _ in range(50):
        ok(mcp.call("get_process_status", {"name": name}))
    assert time.monotonic() - t0 < 30


def test_concurrent_mutations(mcp):
    """Parallel adds and removes on one session all succeed (the warden serialises circusd's lock)."""
    import asyncio

    names = [unique_name("par") for _ in range(8)]

    async def adds(session):
        return await asyncio.gather(*[
            session.call_tool("add_process", {"name": n, "command": SLEEP, "args": ["3600"]}) for n in names])

    results = mcp.client.run(adds, timeout=120)
    bad = [r for r in results if r.is_error]
    assert not bad, [r.structured_content for r in bad]
    present = set(circus_call(mcp.endpoint, "list")["watchers"])
    assert set(names) <= present, sorted(set(names) - present)

    async def removes(session):
        return await asyncio.gather(*[session.call_tool("remove_process", {"name": n}) for n in names])

    results = mcp.client.run(removes, timeout=120)
    bad = [r for r in results if r.is_error]
    assert not bad, [r.structured_content for r in bad]
    present = set(circus_call(mcp.endpoint, "list")["watchers"])
    assert not set(names) & present
