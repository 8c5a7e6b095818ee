"""End-to-end tests of the policy engine's behaviour around the decision, against a real circusd.

Owns: ownership (`watchers: owned` between two token identities over HTTP, across a warden
restart, `any` and name-glob scopes, read-only and unknown identities, `server.default_identity`
over stdio); `explain_policy` (its decision and `would_send` equal what `add_process` then
really sends, compared with circusd's own `options`); hot reload (a rewritten file takes effect
within reload_interval + margin; a broken or missing file keeps the old policy and increments
`circus_warden_policy_reloads_total{result="failure"}`); the audit log (N concurrent mutations
from several clients give exactly N decision records, env values redacted, denials recorded;
`/dev/full` with fail_closed denies mutations with rule audit.unavailable while reads work);
rate limits (kind rate_limited, `circus_warden_rate_limited_total`); and "denied requests never
reach circusd": a batch of denied adds across the threat families leaves circusd's watchers and
process tree unchanged and never creates the canary file a successful bypass would create,
while an allowed control request proves the canaries would have appeared.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import (
    PYTHON,
    SLEEP,
    Circusd,
    base_config,
    circus_call,
    deep_merge,
    e2e_policy,
    ok,
    tool_error,
    unique_name,
    wait_for,
    watcher_exists,
    watcher_names,
    watcher_options,
    watcher_pids,
    watcher_status,
)

pytestmark = [pytest.mark.timeout(180)]

TOKENS = {name: f"{name}-e2e-token-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
          for name in ("alice", "bob", "ops", "scoped", "viewer", "mallory", "a1", "a2", "a3", "limited", "other")}
ALL_TOOLS = {"tools": ["*"], "programs": ["*"], "watchers": "owned"}
READ_TOOLS = ["list_processes", "get_process_status", "get_process_stats", "explain_policy"]


def rules_of(err_or_explain: dict) -> set[str]:
    return {v["rule"] for v in err_or_explain.get("violations") or []}


def denied(res: dict, rule: str, kinds=("denied",)) -> dict:
    err = tool_error(res, kinds)
    assert rule in rules_of(err), f"rule {rule!r} did not fire: {json.dumps(err)[:1500]}"
    return err


def sleep_add(name: str, **kw) -> dict:
    return {"name": name, "command": SLEEP, "args": ["3600"], **kw}


@pytest.fixture
def token_warden(warden_factory, circusd_mod, workroot):
    """An HTTP warden whose callers are identified by bearer tokens (server.tokens), with
    `identities` merged into the e2e policy; `client(name)` opens an SDK session as `name`."""
    opened = []

    def make(identities: dict, token_names: list[str], label: str = "tokens", circusd=None, **over):
        cfg = base_config(circusd or circusd_mod, workroot,
                          server={"tokens": [{"identity": n, "token": TOKENS[n]} for n in token_names]},
                          policy={"document": {"identities": identities}})
        cfg = deep_merge(cfg, over)
        w = warden_factory(cfg, label).start_http()

        def client(name: str):
            c = w.http_client(headers={"Authorization": f"Bearer {TOKENS[name]}"})
            opened.append(c)
            return c

        w.client = client  # type: ignore[attr-defined]
        return w

    yield make
    for c in opened:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def clean_circusd(circusd_mod):
    yield circusd_mod
    for n in watcher_names(circusd_mod.endpoint):
        try:
            circus_call(circusd_mod.endpoint, "rm", name=n, waiting=True, _timeout=15.0)
        except Exception:  # noqa: BLE001
            pass


# =========================================================================== ownership


LIFECYCLE = [
    ("stop_process", {}), ("restart_process", {}), ("reload_process", {}), ("remove_process", {}),
    ("start_process", {}), ("scale_process", {"num_processes": 2}), ("signal_process", {"signal": "TERM"}),
]


def assert_untouched(endpoint: str, name: str, pids: list[int]) -> None:
    assert watcher_exists(endpoint, name), f"{name} was removed"
    assert watcher_status(endpoint, name) == "active", watcher_status(endpoint, name)
    assert watcher_pids(endpoint, name) == pids
    assert circus_call(endpoint, "numprocesses", name=name)["numprocesses"] == 1


def test_identity_cannot_act_on_another_identitys_watcher(token_warden, clean_circusd):
    ep = clean_circusd.endpoint
    w = token_warden({"alice": ALL_TOOLS, "bob": ALL_TOOLS}, ["alice", "bob"])
    alice, bob = w.client("alice"), w.client("bob")
    a_name, b_name = unique_name("alice"), unique_name("bob")
    ok(alice.call_tool("add_process", sleep_add(a_name)))
    ok(bob.call_tool("add_process", sleep_add(b_name)))
    a_pids = wait_for(lambda: watcher_pids(ep, a_name), 15, what="alice's watcher running")
    wait_for(lambda: watcher_pids(ep, b_name), 15, what="bob's watcher running")

    # the warden marks each watcher with its creator, in circusd itself
    assert watcher_options(ep, a_name)["env"]["CIRCUS_WARDEN_OWNER"] == "alice"
    assert watcher_options(ep, b_name)["env"]["CIRCUS_WARDEN_OWNER"] == "bob"

    for tool, extra in LIFECYCLE:
        err = denied(bob.call_tool(tool, {"name": a_name, **extra}), "watcher.scope")
        assert any(v["field"] == "name" for v in err["violations"]), err
        assert_untouched(ep, a_name, a_pids)
    # nor can bob take the name over, or claim ownership through the env
    denied(bob.call_tool("add_process", sleep_add(a_name)), "name.exists")
    denied(bob.call_tool("add_process", sleep_add(unique_name("bob"), env={"CIRCUS_WARDEN_OWNER": "alice"})),
           "env.denied")
    ex = ok(bob.call_tool("explain_policy", {"tool": "stop_process", "arguments": {"name": a_name}}))
    assert ex["decision"] == "deny" and "watcher.scope" in rules_of(ex), ex
    assert_untouched(ep, a_name, a_pids)

    # each owner acts on its own
    sc = ok(alice.call_tool("stop_process", {"name": a_name}))
    assert sc["state"] == "stopped"
    ok(bob.call_tool("remove_process", {"name": b_name}))
    assert not watcher_exists(ep, b_name)
    denied(alice.call_tool("start_process", {"name": b_name}), "watcher.not_found", ("not_found",))


def test_ownership_survives_a_warden_restart(token_warden, clean_circusd):
    """Ownership lives in circusd (the watcher's env), not in the warden's memory."""
    ep = clean_circusd.endpoint
    ids = {"alice": ALL_TOOLS, "bob": ALL_TOOLS}
    w1 = token_warden(ids, ["alice", "bob"], label="first")
    name = unique_name("alice")
    ok(w1.client("alice").call_tool("add_process", sleep_add(name)))
    pids = wait_for(lambda: watcher_pids(ep, name), 15, what="running")
    w1.stop()

    w2 = token_warden(ids, ["alice", "bob"], label="second")
    denied(w2.client("bob").call_tool("signal_process", {"name": name, "signal": "TERM"}), "watcher.scope")
    assert_untouched(ep, name, pids)
    ok(w2.client("alice").call_tool("remove_process", {"name": name}))
    assert not watcher_exists(ep, name)


def test_watcher_scopes_read_only_and_unknown_identities(token_warden, clean_circusd):
    ep = clean_circusd.endpoint
    w = token_warden({
        "alice": ALL_TOOLS,
        "ops": {"tools": ["*"], "programs": [], "watchers": "any"},
        "scoped": {"tools": ["restart_process", "signal_process", "list_processes"], "programs": [],
                   "watchers": ["team-a-*"], "signals": ["HUP"]},
        "viewer": {"tools": READ_TOOLS, "programs": []},
    }, ["alice", "ops", "scoped", "viewer", "mallory"],
        policy={"document": {"watchers": {"names": ["*"], "protected": ["ini-db"]}}})
    # watchers that circusd got from elsewhere (an ini file, another tool): no owner
    for n in ("team-a-web", "team-b-web", "ini-db", "loose"):
        circus_call(ep, "add", name=n, cmd=SLEEP, args=["3600"], start=True, waiting=True)
    pids = {n: wait_for(lambda n=n: watcher_pids(ep, n), 15, what=f"{n} running")
            for n in ("team-a-web", "team-b-web", "ini-db", "loose")}
    alice_w = unique_name("alice")
    ok(w.client("alice").call_tool("add_process", sleep_add(alice_w)))

    alice, ops, scoped, viewer, mallory = (w.client(n) for n in ("alice", "ops", "scoped", "viewer", "mallory"))
    # owned: alice may not touch what she did not create
    denied(alice.call_tool("stop_process", {"name": "loose"}), "watcher.scope")
    assert_untouched(ep, "loose", pids["loose"])
    # any: ops may act on any watcher that is not protected, whoever created it
    ok(ops.call_tool("restart_process", {"name": "loose"}))
    ok(ops.call_tool("stop_process", {"name": alice_w}))
    assert watcher_status(ep, alice_w) == "stopped"
    denied(ops.call_tool("stop_process", {"name": "ini-db"}), "name.protected")
    assert_untouched(ep, "ini-db", pids["ini-db"])
    denied(ops.call_tool("add_process", sleep_add(unique_name("ops"))), "command.not_allowed")
    # names: scoped may act on team-a-* only, with its own tools and signals
    ok(scoped.call_tool("signal_process", {"name": "team-a-web", "signal": "HUP"}))
    denied(scoped.call_tool("signal_process", {"name": "team-a-web", "signal": "TERM"}), "signal.not_allowed")
    denied(scoped.call_tool("restart_process", {"name": "team-b-web"}), "watcher.scope")
    assert_untouched(ep, "team-b-web", pids["team-b-web"])
    denied(scoped.call_tool("stop_process", {"name": "team-a-web"}), "tool.not_allowed")
    # read-only: reads work, every change is refused before anything else
    assert {"team-a-web", "loose"} <= {p["name"] for p in ok(viewer.call_tool("list_processes"))["processes"]}
    ok(viewer.call_tool("get_process_status", {"name": "loose"}))
    denied(viewer.call_tool("add_process", sleep_add(unique_name("viewer"))), "tool.not_allowed")
    denied(viewer.call_tool("stop_process", {"name": "loose"}), "tool.not_allowed")
    # an identity with a valid token but no entry in the policy is denied everything
    denied(mallory.call_tool("list_processes"), "identity.unknown")
    denied(mallory.call_tool("add_process", sleep_add(unique_name("m"))), "identity.unknown")
    denied(mallory.call_tool("stop_process", {"name": "loose"}), "identity.unknown")
    assert_untouched(ep, "loose", watcher_pids(ep, "loose"))


def test_default_identity_over_stdio(conn_factory, clean_circusd, workroot):
    """stdio callers get server.default_identity: it owns what it creates, and an identity
    missing from the policy may do nothing at all."""
    ep = clean_circusd.endpoint
    conn = conn_factory("stdio", clean_circusd, workroot, "ident", config_over={
        "server": {"default_identity": "agent-7"},
        "policy": {"document": {"identities": {"agent-7": ALL_TOOLS}}}})
    name = unique_name("agent")
    ok(conn.call("add_process", sleep_add(name)))
    assert watcher_options(ep, name)["env"]["CIRCUS_WARDEN_OWNER"] == "agent-7"

    stranger = conn_factory("stdio", clean_circusd, workroot, "stranger", config_over={
        "server": {"default_identity": "nobody"}})
    denied(stranger.call("list_processes"), "identity.unknown")
    denied(stranger.call("add_process", sleep_add(unique_name("nobody"))), "identity.unknown")
    denied(stranger.call("remove_process", {"name": name}), "identity.unknown")
    assert watcher_exists(ep, name)


# =========================================================================== explain_policy


def close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_explain_policy_matches_what_add_really_sends(conn_factory, clean_circusd, workroot, transport):
    ep = clean_circusd.endpoint
    conn = conn_factory(transport, clean_circusd, workroot, "explain")
    sub = workroot / f"explained-{transport}"
    sub.mkdir(exist_ok=True)
    link = workroot / f"explained-link-{transport}"
    if not link.is_symlink():
        link.symlink_to(sub)
    name = unique_name("exp")
    args = {"name": name, "command": "sleep", "args": ["3600"], "working_dir": f"{link}/.",
            "env": {"FOO": "bar baz", "TZ": "UTC"}, "num_processes": 2, "start": True,
            "options": {"graceful_timeout": 5, "max_retry": 2}}
    before = set(watcher_names(ep))
    ex = ok(conn.call("explain_policy", {"tool": "add_process", "arguments": args}))
    assert ex["decision"] == "allow", ex
    assert "program:sleep" in ex["rules"] and "identity:local" in ex["rules"], ex
    assert ex["violations"] == []
    assert isinstance(ex["policy_generation"], int) and ex["policy_generation"] >= 1
    sent = ex["would_send"]
    assert sent["command"] == "add", sent
    props = sent["properties"]
    assert set(watcher_names(ep)) == before, "explain_policy ran something"
    assert props["cmd"] == SLEEP and props["args"] == ["3600"] and props["name"] == name
    assert props["options"]["working_dir"] == str(sub), "working_dir must be sent canonical"

    sc = ok(conn.call("add_process", args))
    assert sc["command"] == props["cmd"] and sc["args"] == props["args"], (sc, props)
    opts = watcher_options(ep, name)
    assert opts["cmd"] == props["cmd"] and list(opts["args"]) == props["args"], opts
    # circusd's `options` does not echo stream settings; the files circus opened show them.
    streams = {k: props["options"].pop(k) for k in ("stdout_stream", "stderr_stream")}
    for key, stream in streams.items():
        assert stream["class"] == "FileStream" and stream["filename"].endswith(f"/{name}/{key[:6]}.log"), stream
        wait_for(lambda: Path(stream["filename"]).is_file(), 10, what=f"circus to open {stream['filename']}")
    mismatched = {k: (v, opts.get(k)) for k, v in props["options"].items()
                  if not (close(v, opts.get(k)) if not isinstance(v, dict) else v == opts.get(k))}
    assert not mismatched, f"circusd's options differ from would_send: {mismatched}"
    assert opts["env"] == props["options"]["env"] == {"FOO": "bar baz", "TZ": "UTC", "CIRCUS_WARDEN_OWNER": "local"}
    wait_for(lambda: len(watcher_pids(ep, name)) == 2, 15, what="two processes")

    # a lifecycle call: what explain shows is what runs
    ex = ok(conn.call("explain_policy", {"tool": "scale_process", "arguments": {"name": name, "num_processes": 3}}))
    assert ex["decision"] == "allow" and ex["would_send"]["command"] == "incr", ex
    assert ex["would_send"]["properties"]["nb"] == 1 and ex["would_send"]["properties"]["name"] == name, ex
    assert circus_call(ep, "numprocesses", name=name)["numprocesses"] == 2, "explain_policy scaled"
    ok(conn.call("scale_process", {"name": name, "num_processes": 3}))
    assert circus_call(ep, "numprocesses", name=name)["numprocesses"] == 3
    ex = ok(conn.call("explain_policy", {"tool": "stop_process", "arguments": {"name": name}}))
    assert ex["would_send"] == {"command": "stop", "properties": {"name": name, "match": "simple", "waiting": True}}, ex
    ok(conn.call("stop_process", {"name": name}))
    assert watcher_status(ep, name) == "stopped"


@pytest.mark.parametrize("args", [
    {"command": SLEEP, "args": ["3600"], "env": {"LD_PRELOAD": "/tmp/x.so"}},
    {"command": "/bin/sh", "args": ["-c", "id"]},
    {"command": SLEEP, "args": ["3600"], "working_dir": "/etc", "num_processes": 9},
    {"command": SLEEP, "args": ["$(circus.env.HOME)"], "options": {"hooks": {"before_start": "os.system"}}},
], ids=["env", "program", "workdir-and-cap", "expansion-and-hooks"])
def test_explain_policy_denial_equals_the_real_denial(conn_factory, clean_circusd, workroot, args):
    conn = conn_factory("stdio", clean_circusd, workroot, "explain-deny")
    args = {"name": unique_name("exd"), **args}
    before = set(watcher_names(clean_circusd.endpoint))
    ex = ok(conn.call("explain_policy", {"tool": "add_process", "arguments": args}))
    assert ex["decision"] == "deny" and ex["would_send"] is None and ex["violations"], ex
    err = tool_error(conn.call("add_process", args), ("denied",))
    assert err["violations"] == ex["violations"], (err["violations"], ex["violations"])
    assert set(watcher_names(clean_circusd.endpoint)) == before


def test_explain_policy_refuses_unknown_tools_and_bad_arguments(conn_factory, clean_circusd, workroot):
    conn = conn_factory("stdio", clean_circusd, workroot, "explain-bad")
    for tool in ("quit", "reloadconfig", "set", "set_policy", "ipython"):
        ex = ok(conn.call("explain_policy", {"tool": tool, "arguments": {}}))
        assert ex["decision"] == "deny" and "tool.unknown" in ex["rules"], ex
    for bad in ({"name": "x", "command": SLEEP, "num_processes": "3"}, {"name": "x", "command": SLEEP, "hooks": {}}):
        tool_error(conn.call("explain_policy", {"tool": "add_process", "arguments": bad}), ("invalid_arguments",))
    tool_error(conn.call("explain_policy", {"tool": "add_process", "arguments": {}, "extra": 1}), ("invalid_arguments",))


# =========================================================================== hot reload


RELOAD_MS = 300
RELOAD_MARGIN_S = 3.0


def python_denied_policy(workroot: Path) -> dict:
    doc = e2e_policy(workroot)
    doc["programs"] = [p for p in doc["programs"] if p["id"] != "python"]
    return doc


def py_add(name: str) -> dict:
    return {"name": name, "command": PYTHON, "args": ["-c", "import time; time.sleep(3600)"]}


def test_hot_reload_and_broken_files_keep_the_old_policy(warden_factory, clean_circusd, workroot):
    ep = clean_circusd.endpoint
    cfg = base_config(clean_circusd, workroot, policy={"reload_interval_ms": RELOAD_MS})
    cfg["policy"]["document"] = python_denied_policy(workroot)
    w = warden_factory(cfg, "reload").start_http()
    failures = lambda: w.metric("circus_warden_policy_reloads_total", result="failure")  # noqa: E731
    successes = lambda: w.metric("circus_warden_policy_reloads_total", result="success")  # noqa: E731
    with w.http_client() as c:
        denied(c.call_tool("add_process", py_add(unique_name("py"))), "command.not_allowed")
        assert ok(c.call_tool("explain_policy", {"tool": "list_processes"}))["policy_generation"] == 1
        assert w.metric("circus_warden_policy_info", generation="1") == 1

        # (1) a new file allowing python: the denied add becomes allowed within interval + margin
        allowed_doc = e2e_policy(workroot)
        w.write_policy(allowed_doc)
        t0 = time.monotonic()

        def allowed():
            ex = ok(c.call_tool("explain_policy", {"tool": "add_process", "arguments": py_add("probe")}))
            return ex["decision"] == "allow"

        wait_for(allowed, RELOAD_MS / 1000 + RELOAD_MARGIN_S, interval=0.05, what="the reloaded policy")
        took = time.monotonic() - t0
        name = unique_name("py")
        ok(c.call_tool("add_process", py_add(name)))
        assert watcher_exists(ep, name)
        assert ok(c.call_tool("explain_policy", {"tool": "list_processes"}))["policy_generation"] == 2
        assert w.metric("circus_warden_policy_info", generation="2") == 1
        assert w.metric("circus_warden_policy_info", generation="1") == 0
        assert successes() == 1
        assert failures() == 0
        digest = hashlib.sha256(w.policy_path.read_bytes()).hexdigest()
        assert w.metric("circus_warden_policy_info", generation="2", hash=digest) == 1

        # (2) broken files -- one that would also allow /bin/sh -- keep the active policy
        sh_doc = deep_merge(allowed_doc, {})
        sh_doc["programs"] = allowed_doc["programs"] + [{"id": "sh", "path": "/usr/bin/dash"}]
        broken = [
            json.dumps({**sh_doc, "bogus_field": 1}),                           # unknown field
            json.dumps({**sh_doc, "env": ["LD_PRELOAD"]}),                      # never allowable
            "version: 1\nidentities: [\n",                                       # not YAML
            "",                                                                  # truncated
        ]
        for text in broken:
            before = failures()
            w.write_policy(text)
            wait_for(lambda: failures() > before, RELOAD_MS / 1000 + RELOAD_MARGIN_S, interval=0.05,
                     what="a failed reload counted")
            denied(c.call_tool("add_process", {"name": unique_name("sh"), "command": "/bin/sh", "args": ["-c", "id"]}),
                   "command.not_allowed")
            ok(c.call_tool("add_process", py_add(unique_name("py"))))
            assert ok(c.call_tool("explain_policy", {"tool": "list_processes"}))["policy_generation"] == 2
        # (3) a deleted file too
        before = failures()
        w.policy_path.unlink()
        wait_for(lambda: failures() > before, RELOAD_MS / 1000 + RELOAD_MARGIN_S, interval=0.05,
                 what="a failed reload counted for a missing file")
        ok(c.call_tool("add_process", py_add(unique_name("py"))))
        assert w.metric("circus_warden_policy_info", generation="2") == 1
        assert successes() == 1
        # (4) a good file again: generation 3, python denied again
        w.write_policy(python_denied_policy(workroot))
        wait_for(lambda: not allowed(), RELOAD_MS / 1000 + RELOAD_MARGIN_S, interval=0.05, what="reload 3")
        assert ok(c.call_tool("explain_policy", {"tool": "list_processes"}))["policy_generation"] == 3
        denied(c.call_tool("add_process", py_add(unique_name("py"))), "command.not_allowed")
    assert took <= RELOAD_MS / 1000 + RELOAD_MARGIN_S


# =========================================================================== audit log


def test_audit_records_every_concurrent_decision_exactly_once(token_warden, clean_circusd):
    ep = clean_circusd.endpoint
    ids = ["a1", "a2", "a3"]
    w = token_warden({n: ALL_TOOLS for n in ids}, ids, label="audit")
    assert w.audit_path is not None and not w.audit_records()
    secret = "s3cr3t-value-must-not-be-logged"
    clients = {n: w.client(n) for n in ids}
    per_client = []
    for n in ids:
        calls = []
        for i in range(3):
            calls.append(("add_process", sleep_add(f"{n}-ok-{i}", env={"FOO": f"{secret}-{n}-{i}"}), "allow"))
        calls.append(("add_process", sleep_add(f"{n}-env", env={"LD_PRELOAD": f"/tmp/{secret}.so"}), "deny"))
        calls.append(("add_process", {"name": f"{n}-sh", "command": "/bin/sh", "args": ["-c", "id"]}, "deny"))
        # (a lifecycle call on a watcher that does not exist: its order against the adds is free)
        calls.append(("scale_process", {"name": f"{n}-absent", "num_processes": 2}, "deny"))
        calls.append(("list_processes", {}, None))  # reads are not recorded (audit.reads false)
        calls.append(("explain_policy", {"tool": "add_process", "arguments": sleep_add(f"{n}-x")}, None))
        per_client.append((n, calls))

    def run(n_calls):
        n, calls = n_calls

        async def go(session):
            return await asyncio.gather(*[session.call_tool(t, a) for t, a, _ in calls])

        return n, clients[n].run(go, timeout=120)

    with ThreadPoolExecutor(len(ids)) as pool:
        results = list(pool.map(run, per_client))
    for (n, calls), (_, res) in zip(per_client, results):
        for (tool, args, want), r in zip(calls, res):
            if want == "allow" or want is None:
                assert not r.is_error, (n, tool, r.structured_content)
            else:
                assert r.is_error, (n, tool, args)

    mutations = sum(1 for _, calls in per_client for _, _, want in calls if want is not None)
    assert secret not in w.audit_path.read_text(), "an env value leaked into the audit log"
    recs = w.audit_records()
    decisions = [r for r in recs if r["kind"] == "decision"]
    outcomes = [r for r in recs if r["kind"] == "outcome"]
    assert len(decisions) == mutations, f"{len(decisions)} decision records for {mutations} mutations"
    assert len({r["id"] for r in decisions}) == mutations
    assert all(r["tool"] in ("add_process", "scale_process") for r in decisions), \
        {r["tool"] for r in decisions}
    policy_hash = hashlib.sha256(w.policy_path.read_bytes()).hexdigest()
    for n in ids:
        mine = [r for r in decisions if r["identity"] == n]
        assert len(mine) == 6, (n, mine)
        assert sorted(r["decision"] for r in mine) == ["allow"] * 3 + ["deny"] * 3
        for r in mine:
            assert r["policy_generation"] == 1 and r["policy_hash"] == policy_hash, r
            env = (r["request"].get("arguments") or {}).get("env") or {}
            assert all(v == "<redacted>" for v in env.values()), r
            if r["decision"] == "deny":
                assert r["violations"] and r["rules"], r
        assert {"env.denied", "command.not_allowed", "watcher.not_found"} <= \
            {v["rule"] for r in mine for v in r["violations"]}, mine
        names = {r["request"]["arguments"]["name"] for r in mine}
        assert {f"{n}-ok-0", f"{n}-env", f"{n}-sh"} <= names
    allowed_ids = {r["id"] for r in decisions if r["decision"] == "allow"}
    assert {r["id"] for r in outcomes} == allowed_ids, "one outcome per allowed mutation"
    assert all(r["circus"]["ok"] is True for r in outcomes), outcomes
    # the env values did reach circusd: redaction is the log's, not the request's
    assert watcher_options(ep, "a1-ok-0")["env"]["FOO"] == f"{secret}-a1-0"
    # every allowed decision ran; no denied one did
    present = set(watcher_names(ep))
    assert {f"{n}-ok-{i}" for n in ids for i in range(3)} <= present
    assert not {f"{n}-{k}" for n in ids for k in ("env", "sh")} & present


def test_audit_env_values_are_redacted(token_warden, clean_circusd):
    w = token_warden({"alice": ALL_TOOLS}, ["alice"], label="redact")
    c = w.client("alice")
    value = "hunter2-redact-me-please"
    ok(c.call_tool("add_process", sleep_add(unique_name("r"), env={"FOO": value, "TZ": value})))
    tool_error(c.call_tool("add_process", sleep_add(unique_name("r"), env={"PYTHONPATH": value})), ("denied",))
    text = w.audit_path.read_text()
    assert value not in text
    recs = [r for r in w.audit_records() if r["kind"] == "decision"]
    assert [sorted(r["request"]["arguments"]["env"]) for r in recs] == [["FOO", "TZ"], ["PYTHONPATH"]]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_audit_unwritable_fails_closed(conn_factory, clean_circusd, workroot, transport):
    ep = clean_circusd.endpoint
    conn = conn_factory(transport, clean_circusd, workroot, "devfull",
                        config_over={"audit": {"path": "/dev/full", "fail_closed": True}})
    before = set(watcher_names(ep))
    name = unique_name("full")
    res = conn.call("add_process", sleep_add(name))
    err = denied(res, "audit.unavailable")
    assert err["violations"][0]["field"] == "audit", err
    assert set(watcher_names(ep)) == before and not watcher_exists(ep, name)
    # a watcher the caller owns (marked as the warden marks it) cannot be changed either,
    # although the policy would allow it
    circus_call(ep, "add", name=name, cmd=SLEEP, args=["3600"], start=True, waiting=True,
                options={"env": {"CIRCUS_WARDEN_OWNER": "local"}})
    pids = wait_for(lambda: watcher_pids(ep, name), 15, what="running")
    ex = ok(conn.call("explain_policy", {"tool": "stop_process", "arguments": {"name": name}}))
    assert ex["decision"] == "allow", ex
    for tool, extra in LIFECYCLE:
        denied(conn.call(tool, {"name": name, **extra}), "audit.unavailable")
    assert watcher_pids(ep, name) == pids and watcher_status(ep, name) == "active"
    # reads still work
    assert name in {p["name"] for p in ok(conn.call("list_processes"))["processes"]}
    ok(conn.call("get_process_status", {"name": name}))
    ex = ok(conn.call("explain_policy", {"tool": "add_process", "arguments": sleep_add(unique_name("x"))}))
    assert ex["decision"] == "allow", "explain shows the policy's decision"
    if transport == "http":
        assert conn.warden.metric("circus_warden_audit_write_failures_total") >= 1


def test_audit_unwritable_with_fail_closed_off_allows(conn_factory, clean_circusd, workroot):
    """fail_closed: false is the documented opt-out: decisions stand, unrecorded."""
    ep = clean_circusd.endpoint
    conn = conn_factory("http", clean_circusd, workroot, "devfull-open",
                        config_over={"audit": {"path": "/dev/full", "fail_closed": False}})
    name = unique_name("open")
    ok(conn.call("add_process", sleep_add(name)))
    assert watcher_exists(ep, name)
    denied(conn.call("add_process", {"name": unique_name("sh"), "command": "/bin/sh"}), "command.not_allowed")
    assert conn.warden.metric("circus_warden_audit_write_failures_total") >= 2


# =========================================================================== rate limits


def test_rate_limit(token_warden, clean_circusd):
    ep = clean_circusd.endpoint
    limited = {**ALL_TOOLS, "rate_limit": {"per_minute": 12, "burst": 3}}  # one token per 5 s
    w = token_warden({"limited": limited, "other": limited}, ["limited", "other"], label="rate")
    c, other = w.client("limited"), w.client("other")
    names = [unique_name("rl") for _ in range(4)]
    t0 = time.monotonic()
    ok(c.call_tool("add_process", sleep_add(names[0])))
    ok(c.call_tool("add_process", sleep_add(names[1])))
    denied(c.call_tool("add_process", {"name": unique_name("sh"), "command": "/bin/sh"}), "command.not_allowed")
    # the burst is spent (denials count too): the next mutation is refused before any decision
    res = c.call_tool("add_process", sleep_add(names[2]))
    err = denied(res, "rate_limit", ("rate_limited",))
    assert err["retryable"] is True, err
    assert not watcher_exists(ep, names[2])
    res = c.call_tool("stop_process", {"name": names[0]})
    denied(res, "rate_limit", ("rate_limited",))
    assert watcher_status(ep, names[0]) == "active"
    assert time.monotonic() - t0 < 4.5, "too slow to test the burst reliably"
    assert w.metric("circus_warden_rate_limited_total", identity="limited", tool="add_process") == 1
    assert w.metric("circus_warden_rate_limited_total", identity="limited", tool="stop_process") == 1
    assert w.metric("circus_warden_tool_calls_total", tool="add_process", outcome="rate_limited") >= 1
    # reads are not limited; other identities have their own bucket
    for _ in range(10):
        ok(c.call_tool("list_processes"))
    ok(other.call_tool("add_process", sleep_add(names[3])))
    # the rate-limited calls are recorded as denials
    recs = [r for r in w.audit_records() if r["kind"] == "decision" and "rate_limit" in r["rules"]]
    assert len(recs) == 2 and all(r["identity"] == "limited" and r["decision"] == "deny" for r in recs), recs
    # the bucket refills at per_minute
    wait_for(lambda: not c.call_tool("add_process", sleep_add(names[2])).get("isError"), 8, interval=0.5,
             what="a token after the refill")
    assert watcher_exists(ep, names[2])
    assert w.metric("circus_warden_rate_limited_total", identity="other") == 0


# =========================================================================== denied requests never reach circusd


def build_bypass_fixture(root: Path) -> dict:
    """A realistic layout: an app under root/srv/app that the policy lets python run, and the
    material of the attacks: a writable dir with scripts, a symlink out of the app, a sibling
    app-evil, a copied shell and a symlink to /bin/sh named like python, a sitecustomize.py and
    a .pth file that run code at interpreter start."""
    canaries = root / "canaries"
    canaries.mkdir()
    app = root / "srv" / "app"
    app.mkdir(parents=True)
    # the allowed script writes a marker into its working directory, then sleeps
    (app / "app.py").write_text("import os, time\nopen(os.path.join(os.getcwd(), 'app-ran'), 'w').write('ran')\n"
                                "time.sleep(3600)\n")
    evil_dir = root / "srv" / "app-evil"
    evil_dir.mkdir()
    (evil_dir / "app.py").write_text(f"open({str(canaries / 'sibling')!r}, 'w').write('ran')\n")
    tmp = root / "tmp"
    tmp.mkdir()
    (tmp / "evil.py").write_text(f"open({str(canaries / 'outside-script')!r}, 'w').write('ran')\n")
    (root / "escape.py").write_text(f"open({str(canaries / 'dotdot-script')!r}, 'w').write('ran')\n")
    (app / "link.py").symlink_to(tmp / "evil.py")
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / Path(PYTHON).name).symlink_to("/bin/sh")
    shutil.copy2(os.path.realpath("/bin/sh"), bindir / "python3")
    pp = tmp / "pp"
    pp.mkdir()
    (pp / "sitecustomize.py").write_text(f"open({str(canaries / 'sitecustomize')!r}, 'w').write('ran')\n")
    userbase = tmp / "userbase"
    import sysconfig
    site = Path(sysconfig.get_path("purelib", "posix_user", {"userbase": str(userbase)}))
    site.mkdir(parents=True)
    (site / "evil.pth").write_text(f"import os; open({str(canaries / 'pth')!r}, 'w').write('ran')\n")
    return {"app": app, "canaries": canaries, "tmp": tmp, "evil_dir": evil_dir, "bindir": bindir, "pp": pp,
            "userbase": userbase}


def bypass_policy(root: Path, fx: dict) -> dict:
    return {
        "version": 1,
        "limits": {"max_processes": 2},
        "options": {"graceful_timeout": {"min": 1, "max": 30, "default": 2}},
        "env": ["TZ"],
        # The venv's interpreter may sit where other users cannot enter (see e2e_policy).
        "run_as": {"uid": 0, "gid": 0, "allow_root": True},
        "programs": [
            {"id": "app", "path": PYTHON, "require_working_dir": True, "working_dirs": [str(fx["app"])],
             "env": ["APP_ENV"],
             "args": {"positional": [{"match": f"{fx['app']}/*.py", "path": True}], "min_positional": 1,
                      "flags": {"--port": {"value": {"match": ["[0-9]", "[0-9][0-9]", "[0-9][0-9][0-9][0-9]"]}}}}},
            {"id": "sleep", "path": SLEEP,
             "args": {"positional": [{"match": ["[0-9]", "[0-9][0-9]", "[0-9][0-9][0-9]", "[0-9][0-9][0-9][0-9]"]}],
                      "min_positional": 1}},
        ],
        "identities": {"local": {"tools": ["*"], "programs": ["*"], "watchers": "owned"}},
    }


def test_denied_requests_never_reach_circusd(conn_factory, circusd: Circusd, workroot):
    root = workroot
    fx = build_bypass_fixture(root)
    C = fx["canaries"]
    app, app_py = fx["app"], str(fx["app"] / "app.py")
    conn = conn_factory("http", circusd, workroot, "bypass", config_over={"policy_document": bypass_policy(root, fx)})
    wd = {"working_dir": str(app)}

    def c(tag: str) -> str:
        return str(C / tag)

    def touch_py(tag: str) -> str:
        return f"open({c(tag)!r}, 'w').write('ran')"

    attempts: list[tuple[str, str, dict]] = [
        # 1 shell syntax as data
        ("1-shell", "command.resolve", {"command": f"/bin/sh -c 'touch {c('sh-string')}'", "args": []}),
        ("1-shell", "args.pattern", {"command": SLEEP, "args": [f"1; touch {c('semicolon')}"]}),
        ("1-shell", "text.control", {"command": SLEEP, "args": [f"1\ntouch {c('newline')}"]}),
        ("1-shell", "options.not_allowed", {"command": SLEEP, "args": ["5"], "options": {"shell": True}}),
        # 2 an allowed program that runs another
        ("2-interpreter", "args.positional", {"command": PYTHON, "args": ["-c", touch_py("python-c")], **wd}),
        ("2-interpreter", "args.flag", {"command": PYTHON, "args": [app_py, "-c", touch_py("python-c-late")], **wd}),
        ("2-interpreter", "args.positional", {"command": PYTHON, "args": ["-m", "this"], **wd}),
        ("2-runner", "command.not_allowed", {"command": "/bin/sh", "args": ["-c", f"touch {c('sh')}"]}),
        ("2-runner", "command.not_allowed", {"command": "find", "args": [str(root), "-maxdepth", "0", "-exec",
                                                                        "touch", c("find-exec"), ";"]}),
        ("2-runner", "command.not_allowed", {"command": "env", "args": ["touch", c("env")]}),
        ("2-runner", "command.not_allowed", {"command": "awk", "args": [f'BEGIN{{system("touch {c("awk")}")}}']}),
        ("2-runner", "command.not_allowed", {"command": "xargs", "args": ["-a", "/dev/null", "-r", "touch", c("xargs")]}),
        ("2-runner", "command.not_allowed", {"command": "timeout", "args": ["5", "touch", c("timeout")]}),
        ("2-runner", "command.not_allowed", {"command": "nice", "args": ["touch", c("nice")]}),
        ("2-runner", "command.not_allowed", {"command": "/usr/bin/touch", "args": [c("touch")]}),
        ("2-writable-script", "args.pattern", {"command": PYTHON, "args": [str(fx["tmp"] / "evil.py")], **wd}),
        # 3 loose matching
        ("3-glob", "command.glob", {"command": "/usr/bin/tou?h", "args": [c("glob")]}),
        ("3-anchored", "args.pattern", {"command": SLEEP, "args": ["1000000"]}),
        # 4 disguised executables
        ("4-symlink", "command.not_allowed", {"command": str(fx["bindir"] / Path(PYTHON).name),
                                              "args": ["-c", f"touch {c('symlink-sh')}"], **wd}),
        ("4-copy", "command.not_allowed", {"command": str(fx["bindir"] / "python3"),
                                           "args": ["-c", f"touch {c('copied-sh')}"], **wd}),
        ("4-relative", "command.resolve", {"command": "../../bin/sh", "args": ["-c", f"touch {c('relative')}"]}),
        # 5 path escapes
        ("5-dotdot", "args.pattern", {"command": PYTHON, "args": [f"{app}/../../escape.py"], **wd}),
        ("5-symlink", "args.pattern", {"command": PYTHON, "args": [str(app / "link.py")], **wd}),
        ("5-sibling", "args.pattern", {"command": PYTHON, "args": [str(fx["evil_dir"] / "app.py")], **wd}),
        ("5-workdir-sibling", "working_dir.roots", {"command": PYTHON, "args": [app_py],
                                                    "working_dir": str(fx["evil_dir"])}),
        ("5-workdir-relative", "args.pattern", {"command": PYTHON, "args": ["../app-evil/app.py"], **wd}),
        # 6 arguments that become flags or expand later
        ("6-expansion", "text.expansion", {"command": PYTHON, "args": [app_py, "--port", "$(circus.env.PORT)"], **wd}),
        ("6-flag-value", "args.pattern", {"command": PYTHON, "args": [app_py, "--port=80; touch x"], **wd}),
        # 7 code-loading environment
        ("7-pythonpath", "env.denied", {"command": PYTHON, "args": [app_py], **wd, "env": {"PYTHONPATH": str(fx["pp"])}}),
        ("7-pth", "env.denied", {"command": PYTHON, "args": [app_py], **wd,
                                 "env": {"PYTHONUSERBASE": str(fx["userbase"])}}),
        ("7-ld", "env.denied", {"command": PYTHON, "args": [app_py], **wd, "env": {"LD_PRELOAD": "/nonexistent.so"}}),
        ("7-path", "env.denied", {"command": PYTHON, "args": [app_py], **wd, "env": {"PATH": str(fx["bindir"])}}),
        ("7-unlisted", "env.not_allowed", {"command": PYTHON, "args": [app_py], **wd, "env": {"APP_MODE": "x"}}),
        # 8 inherited secrets
        ("8-copy-env", "options.not_allowed", {"command": PYTHON, "args": [app_py], **wd,
                                               "options": {"copy_env": True}}),
        ("8-expansion", "text.expansion", {"command": PYTHON, "args": [app_py], **wd,
                                           "env": {"APP_ENV": "$(circus.env.CW_CIRCUSD_ENV_MARKER)"}}),
        # 9 dangerous circus options
        ("9-stream", "options.not_allowed", {"command": SLEEP, "args": ["5"], "options": {
            "stdout_stream": {"class": "subprocess.Popen", "args": ["/usr/bin/touch", c("stream")]}}}),
        ("9-hooks", "options.not_allowed", {"command": SLEEP, "args": ["5"], "options": {
            "hooks": {"before_start": "os.system"}}}),
        ("9-uid", "options.not_allowed", {"command": PYTHON, "args": [app_py], **wd, "options": {"uid": 0}}),
        ("9-rlimit", "options.not_allowed", {"command": SLEEP, "args": ["5"], "options": {"rlimit_nproc": None}}),
        ("9-graceful", "options.bound", {"command": SLEEP, "args": ["5"], "options": {"graceful_timeout": 86400}}),
        # 12 names
        ("12-glob", "name.syntax", {"name": "app*", "command": PYTHON, "args": [app_py], **wd}),
        ("12-lookalike", "name.syntax", {"name": "аpp-web", "command": PYTHON, "args": [app_py], **wd}),
        ("12-upper", "name.syntax", {"name": "APP", "command": PYTHON, "args": [app_py], **wd}),
        ("12-reserved", "name.protected", {"name": "circusd-stats", "command": PYTHON, "args": [app_py], **wd}),
        # 13 exhaustion
        ("13-processes", "processes.per_watcher", {"command": PYTHON, "args": [app_py], **wd, "num_processes": 50}),
        ("13-huge-arg", "args.length", {"command": SLEEP, "args": ["1" * 5000]}),
    ]
    ep = circusd.endpoint
    before = set(watcher_names(ep))
    assert circusd.children() == []
    for i, (family, rule, args) in enumerate(attempts):
        req = {"name": f"bypass-{i}", **args}
        res = conn.call("add_process", req)
        err = tool_error(res, ("denied",))
        # a program missing from this machine would be command.resolve: denied all the same
        alts = {rule, "command.resolve"} if rule == "command.not_allowed" else {rule}
        assert alts & rules_of(err), f"{family}: rule {rule!r} did not fire: {json.dumps(err)[:1200]}"
    # nothing ran, now or a little later: no watcher, no child of circusd, no canary
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert set(watcher_names(ep)) == before, sorted(set(watcher_names(ep)) ^ before)
        assert circusd.children() == [], "circusd started a process"
        ran = sorted(p.name for p in C.iterdir())
        assert not ran, f"denied requests ran: {ran}"
        assert not (app / "app-ran").exists() and not (fx["evil_dir"] / "app-ran").exists()
        time.sleep(0.1)
    decisions = [r for r in conn.warden.audit_records() if r["kind"] == "decision"]
    assert len(decisions) == len(attempts) and all(r["decision"] == "deny" for r in decisions)

    # control: the canary mechanism works. The allowed app writes its marker; the same
    # interpreter with the attacks' environment and scripts would have written theirs.
    ok(conn.call("add_process", {"name": "control", "command": PYTHON, "args": [app_py], **wd, "env": {"APP_ENV": "x"}}))
    wait_for(lambda: (app / "app-ran").exists(), 15, what="the allowed app's marker")
    import subprocess
    subprocess.run([PYTHON, app_py.replace("app.py", "link.py")], check=True, cwd=str(app), timeout=30)
    subprocess.run([PYTHON, "-c", "pass"], check=True, env={"PYTHONPATH": str(fx["pp"])}, timeout=30)
    subprocess.run([PYTHON, "-c", "pass"], check=True, env={"PYTHONUSERBASE": str(fx["userbase"])}, timeout=30)
    subprocess.run([str(fx["bindir"] / "python3"), "-c", f"touch {c('copied-sh')}"], check=True, timeout=30)
    assert {"outside-script", "sitecustomize", "pth", "copied-sh"} <= {p.name for p in C.iterdir()}, \
        sorted(p.name for p in C.iterdir())


# =========================================================================== faults found and fixed
# Each of these failed against an earlier warden (they were pinned as strict xfails); they now
# guard the fixes.


def test_scale_respects_the_programs_process_cap(conn_factory, clean_circusd, workroot):
    ep = clean_circusd.endpoint
    doc = e2e_policy(workroot)
    doc["programs"][0]["max_processes"] = 1  # sleep: one process per watcher
    conn = conn_factory("stdio", clean_circusd, workroot, "scalecap", config_over={"policy_document": doc})
    name = unique_name("cap")
    denied(conn.call("add_process", sleep_add(name, num_processes=2)), "processes.per_watcher")
    ok(conn.call("add_process", sleep_add(name)))
    res = conn.call("scale_process", {"name": name, "num_processes": 3})
    n = circus_call(ep, "numprocesses", name=name)["numprocesses"]
    assert res.get("isError") is True and n == 1, f"scaled past the program's cap to {n}: {res}"


def test_two_programs_on_one_executable(conn_factory, clean_circusd, workroot):
    doc = e2e_policy(workroot)
    doc["programs"] = [
        {"id": "nap-short", "path": SLEEP, "args": {"positional": [{"match": "[1-9]"}], "min_positional": 1}},
        {"id": "nap-long", "path": SLEEP, "args": {"positional": [{"match": "[1-9][0-9][0-9]"}], "min_positional": 1}},
    ]
    conn = conn_factory("stdio", clean_circusd, workroot, "twoprogs", config_over={"policy_document": doc})
    ok(conn.call("add_process", {"name": unique_name("short"), "command": SLEEP, "args": ["5"]}))
    ok(conn.call("add_process", {"name": unique_name("long"), "command": SLEEP, "args": ["500"]}))


def test_explain_policy_and_the_call_agree_on_unknown_fields(conn_factory, clean_circusd, workroot):
    conn = conn_factory("stdio", clean_circusd, workroot, "explain-fields")
    name = unique_name("mine")
    ok(conn.call("add_process", sleep_add(name)))
    args = {"name": name, "match": "glob"}
    real = conn.call("stop_process", args)
    tool_error(real, ("invalid_arguments",))
    ex = conn.call("explain_policy", {"tool": "stop_process", "arguments": args})
    assert ex.get("isError") is True or ex["structuredContent"]["decision"] == "deny", \
        f"explain_policy allows what the tool refuses: {ex.get('structuredContent')}"


def test_canonical_path_arguments_carry_no_expansion(conn_factory, clean_circusd, workroot):
    app = workroot / "exp-app"
    app.mkdir()
    canary = workroot / "expanded-ran"
    # the checked file: its name is circus expansion syntax; what circus turns it into runs instead
    (app / "$(circus.env.CIRCUS_WARDEN_OWNER).py").write_text("import time; time.sleep(3600)\n")
    (app / "local.py").write_text(f"open({str(canary)!r}, 'w').write('ran'); import time; time.sleep(3600)\n")
    (app / "ok.py").symlink_to("$(circus.env.CIRCUS_WARDEN_OWNER).py")
    doc = e2e_policy(workroot)
    doc["programs"] = [{"id": "app", "path": PYTHON, "working_dirs": [str(app)],
                        "args": {"positional": [{"match": f"{app}/*.py", "path": True}], "min_positional": 1}}]
    conn = conn_factory("stdio", clean_circusd, workroot, "canon-exp", config_over={"policy_document": doc})
    res = conn.call("add_process", {"name": unique_name("exp"), "command": PYTHON, "args": ["ok.py"],
                                    "working_dir": str(app)})
    if res.get("isError"):
        denied(res, "text.expansion")
        return
    sent = ok(res)["args"]
    time.sleep(2.0)
    assert not canary.exists(), f"checked {sent}, but circus expanded it and ran {app / 'local.py'}"
