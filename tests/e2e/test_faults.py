"""End-to-end fault tests: circusd killed, restarted on the same endpoints, and frozen (SIGSTOP).

Owns the timeout/recovery contract: with circusd down every tool answers within the configured
connect/read/mutation timeouts plus a margin with kind circus_unavailable or timeout (and /readyz
is 503); the warden recovers without a restart once circusd is back; and a mutation the caller
was told timed out never takes effect later in circusd (no stale execution).
"""

from __future__ import annotations

import time

import pytest

from harness import SLEEP, Circusd, DelayProxy, ok, tool_error, unique_name, wait_for, watcher_exists, watcher_pids

pytestmark = pytest.mark.timeout(180)

CONNECT_MS, READ_MS, MUTATION_MS = 500, 2000, 1500
FAULT_CONFIG = {"circus": {
    "connect_timeout_ms": CONNECT_MS,
    "read_timeout_ms": READ_MS,
    "mutation_timeout_ms": MUTATION_MS,
    "lock_retries": 1,
    "lock_retry_delay_ms": 50,
    "reconcile_interval_ms": 500,
}}
MARGIN_S = 3.0
BOUND_S = (CONNECT_MS + max(READ_MS, MUTATION_MS)) / 1000 + MARGIN_S
UNAVAILABLE = ("circus_unavailable", "timeout")


def all_tool_calls(existing: str) -> list[tuple[str, dict]]:
    return [
        ("add_process", {"name": unique_name(), "command": SLEEP, "args": ["3600"]}),
        ("start_process", {"name": existing}),
        ("stop_process", {"name": existing}),
        ("restart_process", {"name": existing}),
        ("reload_process", {"name": existing}),
        ("scale_process", {"name": existing, "num_processes": 2}),
        ("signal_process", {"name": existing, "signal": "HUP"}),
        ("remove_process", {"name": existing}),
        ("list_processes", {}),
        ("get_process_status", {"name": existing}),
        ("get_process_stats", {}),
        ("get_process_stats", {"name": existing}),
    ]


def timed(conn, tool: str, args: dict) -> tuple[dict, float]:
    t0 = time.monotonic()
    res = conn.call(tool, args, timeout=BOUND_S + 30)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_circusd_down_then_back(conn_factory, circusd: Circusd, workroot, transport):
    conn = conn_factory(transport, circusd, workroot, "faults", config_over=FAULT_CONFIG)
    existing = unique_name("pre")
    ok(conn.call("add_process", {"name": existing, "command": SLEEP, "args": ["3600"]}))
    wait_for(lambda: watcher_pids(circusd.endpoint, existing), 15, what="pre running")

    # (a) circusd down: every tool fails fast with the right kind
    circusd.kill9()
    failures = []
    for tool, args in all_tool_calls(existing):
        res, dt = timed(conn, tool, args)
        try:
            tool_error(res, UNAVAILABLE)
        except AssertionError as e:
            failures.append(f"{tool}: {e}")
        if dt > BOUND_S:
            failures.append(f"{tool}: took {dt:.2f}s > {BOUND_S:.2f}s")
    if transport == "http":
        wait_for(lambda: conn.warden.readyz() == 503, BOUND_S, what="/readyz 503 while circusd is down")
    assert not failures, "\n".join(failures)

    # (b) circusd back on the same endpoints: the warden recovers by itself
    circusd.restart_same_endpoints()
    wait_for(lambda: ok(conn.call("list_processes", {}, timeout=BOUND_S + 10)) is not None, 15,
             interval=0.25, what="a successful call after circusd came back")
    name = unique_name("post")
    ok(conn.call("add_process", {"name": name, "command": SLEEP, "args": ["3600"]}))
    assert watcher_exists(circusd.endpoint, name)
    if transport == "http":
        wait_for(lambda: conn.warden.readyz() == 200, 15, what="/readyz 200 after recovery")


def test_frozen_circusd_mutation_never_applies_late(conn_factory, circusd: Circusd, workroot):
    """(c) SIGSTOP circusd; add_process times out; after SIGCONT the watcher must not appear."""
    conn = conn_factory("http", circusd, workroot, "freeze", config_over=FAULT_CONFIG)
    ok(conn.call("list_processes", {}))
    name = unique_name("frozen")
    circusd.sigstop()
    try:
        res, dt = timed(conn, "add_process", {"name": name, "command": SLEEP, "args": ["3600"]})
    finally:
        circusd.sigcont()
    tool_error(res, UNAVAILABLE)
    assert dt <= BOUND_S, f"add_process took {dt:.2f}s against a frozen circusd (bound {BOUND_S:.2f}s)"
    # watch circusd for 2 s after it resumes; the watcher must not exist at the end
    seen = False
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        seen = seen or watcher_exists(circusd.endpoint, name)
        time.sleep(0.1)
    exists = watcher_exists(circusd.endpoint, name)
    assert not exists, (f"watcher {name} exists in circusd after a timed-out add "
                        f"(stale execution; appeared during the window: {seen})")
    # and the warden is usable again
    wait_for(lambda: ok(conn.call("list_processes", {})) is not None, 10, interval=0.25, what="recovery")


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_frozen_circusd_read_times_out_and_replies_do_not_mix(conn_factory, circusd: Circusd, workroot, transport):
    """A read against a frozen circusd times out; its late reply must not answer a later call."""
    conn = conn_factory(transport, circusd, workroot, "freeze-read", config_over=FAULT_CONFIG)
    a, b = unique_name("a"), unique_name("b")
    ok(conn.call("add_process", {"name": a, "command": SLEEP, "args": ["3600"]}))
    ok(conn.call("add_process", {"name": b, "command": SLEEP, "args": ["3600"], "start": False}))
    circusd.sigstop()
    try:
        res, dt = timed(conn, "get_process_status", {"name": a})
    finally:
        circusd.sigcont()
    tool_error(res, UNAVAILABLE)
    assert dt <= BOUND_S, f"read took {dt:.2f}s (bound {BOUND_S:.2f}s)"

    def status_b():
        r = conn.call("get_process_status", {"name": b})
        return r if r.get("isError") is not True else None

    sc = ok(wait_for(status_b, 10, interval=0.25, what="status b after SIGCONT"))
    assert sc["name"] == b and sc["state"] == "stopped", f"reply for another request leaked in: {sc}"
    sc = ok(conn.call("get_process_status", {"name": a}))
    assert sc["name"] == a and sc["state"] == "active", sc


def test_slow_circusd_mutation_reported_as_timeout(conn_factory, circusd: Circusd, workroot):
    """A mutation circusd received but did not answer in time must be reported as `timeout`
    (outcome unknown), never as `circus_unavailable` (which promises nothing was sent).

    A delaying proxy in front of circusd holds `add` back past mutation_timeout_ms; the add
    then really happens late, which is the case the error kind must not hide."""
    front = f"ipc://{circusd.dir}/proxy.sock"
    delay = MUTATION_MS / 1000 + 1.5
    proxy = DelayProxy(front, circusd.endpoint, {"add"}, delay)
    try:
        cfg = {"circus": {**FAULT_CONFIG["circus"], "endpoint": front,
                          "pubsub_endpoint": circusd.pubsub_endpoint}}
        conn = conn_factory("http", circusd, workroot, "slow", config_over=cfg)
        ok(conn.call("list_processes", {}))
        name = unique_name("slow")
        res, dt = timed(conn, "add_process", {"name": name, "command": SLEEP, "args": ["3600"]})
        assert dt <= BOUND_S, f"add_process took {dt:.2f}s (bound {BOUND_S:.2f}s)"
        err = tool_error(res, UNAVAILABLE)
        # the proxy delivers it late: make sure the scenario really happened
        wait_for(lambda: any(name in f for _, f in proxy.delivered), delay + 5, what="late delivery to circusd")
        assert err["kind"] == "timeout", (
            f"the add reached circusd (it was sent) but the warden answered {err['kind']!r}: {err['message']}")
    finally:
        proxy.close()


def test_warden_starts_while_circusd_is_down(conn_factory, circusd: Circusd, workroot):
    """The warden must start (and answer with circus_unavailable) before circusd exists."""
    circusd.kill9()
    conn = conn_factory("http", circusd, workroot, "late", config_over=FAULT_CONFIG)
    res, dt = timed(conn, "list_processes", {})
    tool_error(res, UNAVAILABLE)
    assert dt <= BOUND_S
    assert conn.warden.readyz() == 503
    circusd.restart_same_endpoints()
    wait_for(lambda: ok(conn.call("list_processes", {})) is not None, 15, interval=0.25, what="first success")
    wait_for(lambda: conn.warden.readyz() == 200, 15, what="/readyz 200")
