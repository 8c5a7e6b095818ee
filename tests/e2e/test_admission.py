"""End-to-end tests of exact admission: the process and watcher caps hold under any concurrency,
a mutation whose circusd dies fails fast, and shutdown drains what is in flight.

Owns:
  * the counting rule: `limits.max_total_processes` caps the sum of `numprocesses` that circusd's
    `options` holds over every watcher (stopped ones included), `limits.max_watchers` the number
    of watchers; start/restart of a stopped watcher are already counted, a graceful reload of n
    processes needs room for n more (old and new run side by side);
  * serialized admission: races of add_process, scale_process, start/restart/reload of stopped
    watchers, alone and mixed, from one session with concurrent calls (stdio and HTTP), from
    several HTTP sessions and from two wardens on one circusd ipc endpoint; after each race
    circusd holds no more than the caps and exactly as many changes succeeded as the caps allow;
    the lock between wardens is a flock on `<control socket path>.lock`;
  * circusd killed while a mutation is in flight: that call fails fast with `outcome_unknown`
    (well under circus.mutation_timeout_ms), the next mutations go through within 2 s of a new
    circusd answering; a mutation queued behind a slow one does not run out of connect time;
  * shutdown drain on SIGTERM/SIGINT: the in-flight call is answered and its outcome is in the
    audit log, new calls are refused, and what is unanswered when server.shutdown_grace_ms runs
    out gets an outcome record saying so; a call whose facts cannot be gathered still leaves
    its decision record.

Everything is checked on what circusd holds (`list`, `options`, `status` over a raw DEALER), on
/proc and on the audit log; the replies only say which calls succeeded.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness import (
    PYTHON,
    SLEEP,
    CircusClient,
    Circusd,
    Warden,
    _dump,
    base_config,
    deep_merge,
    e2e_policy,
    ok,
    tool_error,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.timeout(150)

MODES = ["stdio-session", "http-session", "http-sessions", "two-wardens"]
SESSIONS = 6  # HTTP sessions per warden in the multi-session modes

# A process that ignores SIGTERM: circusd's stop waits graceful_timeout, then sends SIGKILL.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


# --------------------------------------------------------------------------- circusd's view


def held(endpoint: str) -> dict[str, dict]:
    """Every watcher circusd holds: configured numprocesses, state and pids."""
    c = CircusClient(endpoint, timeout=10.0)
    try:
        out = {}
        for name in c.call("list")["watchers"]:
            opts = c.call("options", name=name)["options"]
            out[name] = {
                "numprocesses": int(opts["numprocesses"]),
                "status": c.call("status", name=name)["status"],
                "pids": sorted(int(p) for p in c.call("list", name=name)["pids"]),
            }
        return out
    finally:
        c.close()


def configured_total(h: dict[str, dict]) -> int:
    return sum(w["numprocesses"] for w in h.values())


def assert_within_caps(endpoint: str, max_watchers: int, max_total: int) -> dict[str, dict]:
    h = held(endpoint)
    assert len(h) <= max_watchers, f"circusd holds {len(h)} watchers, the cap is {max_watchers}: {sorted(h)}"
    total = configured_total(h)
    assert total <= max_total, (f"circusd's watchers are configured for {total} processes, the cap is {max_total}: "
                                f"{ {n: w['numprocesses'] for n, w in h.items()} }")
    return h


def settled(endpoint: str) -> dict[str, dict]:
    """circusd's view once every active watcher runs its configured processes and every stopped
    one none (a reload or scale may still be replacing processes when a race returns)."""
    def done():
        h = held(endpoint)
        for w in h.values():
            want = w["numprocesses"] if w["status"] == "active" else 0
            if w["status"] not in ("active", "stopped") or len(w["pids"]) != want:
                return None
        return h
    return wait_for(done, 30, 0.2, "circusd's processes to settle")


def sig_ignored(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


# --------------------------------------------------------------------------- wardens and calls


def config(circusd: Circusd, workroot: Path, limits: dict | None = None, **over: Any) -> dict:
    doc = {"limits": limits} if limits else {}
    over = deep_merge({"policy": {"reload_interval_ms": 200, "document": doc}}, over)
    return base_config(circusd, workroot, **over)


def full_policy(workroot: Path, limits: dict) -> dict:
    return deep_merge(e2e_policy(workroot), {"limits": limits})


def generation(client) -> int:
    return ok(client.call_tool("explain_policy", {"tool": "list_processes"}))["policy_generation"]


def rewrite_limits(warden: Warden, client, workroot: Path, limits: dict) -> None:
    """Write a policy with other limits and wait until the warden decides with it."""
    before = generation(client)
    warden.write_policy(full_policy(workroot, limits))
    wait_for(lambda: generation(client) > before, 15, 0.1, "the policy reload")


class Rig:
    """Wardens on one circusd and the MCP sessions a race is spread over."""

    def __init__(self, mode: str, circusd: Circusd, workroot: Path, warden_factory, cfg: dict):
        self.mode = mode
        self.circusd = circusd
        self.wardens: list[Warden] = []
        self.clients: list[Any] = []
        n_wardens = 2 if mode == "two-wardens" else 1
        for i in range(n_wardens):
            w = warden_factory(cfg, f"adm-{mode}-{i}")
            self.wardens.append(w)
            if mode == "stdio-session":
                self.clients.append(w.stdio_client())
                continue
            w.start_http()
            for _ in range(1 if mode == "http-session" else SESSIONS):
                self.clients.append(w.http_client())

    @property
    def first(self):
        return self.clients[0]

    def close(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def rigs(warden_factory):
    """Rigs made in a test; their sessions close before the wardens stop."""
    made: list[Rig] = []
    yield made
    for r in made:
        r.close()


def make_rig(rigs, mode, circusd, workroot, warden_factory, cfg) -> Rig:
    r = Rig(mode, circusd, workroot, warden_factory, cfg)
    rigs.append(r)
    return r


def race(clients: list[Any], calls: list[tuple[str, dict]], timeout: float = 90.0) -> list[dict]:
    """Send every call at once: spread round-robin over the sessions, which start together
    behind a barrier; each session sends its share concurrently. Results in call order (an
    exception becomes an error result carrying it)."""
    shares: list[list[int]] = [[] for _ in clients]
    for j in range(len(calls)):
        shares[j % len(clients)].append(j)
    results: list[dict | None] = [None] * len(calls)
    barrier = threading.Barrier(len(clients))

    def run(i: int) -> None:
        async def go(session):
            async def one(j: int) -> None:
                tool, args = calls[j]
                try:
                    d = _dump(await session.call_tool(tool, args))
                    d.setdefault("isError", False)
                except Exception as e:  # noqa: BLE001 - reported in the result
                    d = {"isError": True, "exception": repr(e)}
                results[j] = d

            await asyncio.gather(*(one(j) for j in shares[i]))

        barrier.wait(30)
        clients[i].run(go, timeout)

    with ThreadPoolExecutor(len(clients)) as pool:
        for f in [pool.submit(run, i) for i in range(len(clients))]:
            f.result()
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def succeeded(res: dict) -> bool:
    return res.get("isError") is not True


def rules_of(res: dict) -> list[str]:
    err = (res.get("structuredContent") or {}).get("error") or {}
    return [v.get("rule") for v in err.get("violations") or []]


def add_args(name: str, n: int = 1, start: bool = True) -> dict:
    return {"name": name, "command": SLEEP, "args": ["3600"], "num_processes": n, "start": start}


def stubborn_args(name: str, graceful: int) -> dict:
    return {"name": name, "command": PYTHON, "args": ["-c", STUBBORN], "options": {"graceful_timeout": graceful}}


def start_stubborn(client, endpoint: str, graceful: int) -> str:
    """A running watcher whose process ignores SIGTERM (so a stop takes `graceful` seconds)."""
    name = unique_name("stubborn")
    ok(client.call_tool("add_process", stubborn_args(name, graceful)))
    (pid,) = wait_for(lambda: held(endpoint)[name]["pids"] or None, 20, what="the stubborn process")
    wait_for(lambda: sig_ignored(pid, signal.SIGTERM), 20, what="the process to ignore SIGTERM")
    return name


def in_background(fn, *args) -> dict:
    """Run fn(*args) in a thread; the returned box gets 'result' or 'error', and 'done' (monotonic)."""
    box: dict[str, Any] = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - inspected by the test
            box["error"] = e
        box["done"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    box["thread"] = t
    return box


def wait_stopping(endpoint: str, name: str) -> None:
    c = CircusClient(endpoint)
    try:
        wait_for(lambda: c.call("status", name=name)["status"] == "stopping", 15, 0.02, f"{name} to be stopping")
    finally:
        c.close()


def audit_for(warden: Warden, tool: str, name: str) -> tuple[list[dict], list[dict]]:
    """The decision records of `tool` on watcher `name`, and the outcome records of those decisions."""
    records = warden.audit_records()
    decisions = [r for r in records if r.get("kind") == "decision" and r.get("tool") == tool
                 and f'"{name}"' in json.dumps(r.get("request"))]
    ids = {d["id"] for d in decisions}
    outcomes = [r for r in records if r.get("kind") == "outcome" and r.get("id") in ids]
    return decisions, outcomes


# --------------------------------------------------------------------------- races


@pytest.mark.parametrize("cap", ["watchers", "processes"])
@pytest.mark.parametrize("mode", MODES)
def test_parallel_adds_admit_exactly_what_the_cap_allows(rigs, circusd, workroot, warden_factory, mode, cap):
    """12 adds at once. max_watchers 5: exactly 5 watchers; max_total_processes 7 with 2 processes
    each: exactly 3 (6 processes). Half the adds are start: false, whose processes count too."""
    if cap == "watchers":
        limits, n, allowed, rule = {"max_watchers": 5, "max_total_processes": 1024}, 1, 5, "watchers.max"
    else:
        limits, n, allowed, rule = {"max_watchers": 512, "max_total_processes": 7}, 2, 3, "processes.total"
    rig = make_rig(rigs, mode, circusd, workroot, warden_factory, config(circusd, workroot, limits))
    names = [unique_name("race") for _ in range(12)]
    results = race(rig.clients, [("add_process", add_args(nm, n, start=i % 2 == 0)) for i, nm in enumerate(names)])

    h = assert_within_caps(circusd.endpoint, limits["max_watchers"], limits["max_total_processes"])
    won = {nm for nm, r in zip(names, results) if succeeded(r)}
    assert set(h) == won, f"circusd holds {sorted(h)}, the successful adds were {sorted(won)}"
    assert len(h) == allowed, f"{len(h)} adds went through, the cap allows exactly {allowed}"
    assert all(w["numprocesses"] == n for w in h.values()), h
    for nm, r in zip(names, results):
        if not succeeded(r):
            assert rule in rules_of(r), f"{nm} failed other than by {rule}: {json.dumps(r)[:1000]}"
    for nm, w in settled(circusd.endpoint).items():
        want = "active" if names.index(nm) % 2 == 0 else "stopped"
        assert w["status"] == want, (nm, w)


@pytest.mark.parametrize("mode", MODES)
def test_parallel_scale_up_stays_within_the_total(rigs, circusd, workroot, warden_factory, mode):
    """Six watchers of one process (three of them stopped), cap 10: scaling all six to 3 at once
    leaves room for exactly two."""
    limits = {"max_watchers": 512, "max_total_processes": 10}
    rig = make_rig(rigs, mode, circusd, workroot, warden_factory, config(circusd, workroot, limits))
    names = [unique_name("scale") for _ in range(6)]
    for i, nm in enumerate(names):
        ok(rig.first.call_tool("add_process", add_args(nm, 1, start=i % 2 == 0)))
    results = race(rig.clients, [("scale_process", {"name": nm, "num_processes": 3}) for nm in names])

    h = assert_within_caps(circusd.endpoint, 512, 10)
    won = {nm for nm, r in zip(names, results) if succeeded(r)}
    assert {nm for nm, w in h.items() if w["numprocesses"] == 3} == won, (h, won)
    assert {nm for nm, w in h.items() if w["numprocesses"] == 1} == set(names) - won, h
    assert len(won) == 2, f"{len(won)} scales went through, the cap allows exactly 2: {sorted(won)}"
    for nm, r in zip(names, results):
        if not succeeded(r):
            assert "processes.total" in rules_of(r), f"{nm}: {json.dumps(r)[:1000]}"
    s = settled(circusd.endpoint)
    assert sum(len(w["pids"]) for w in s.values()) <= 10


@pytest.mark.parametrize("mode", MODES)
def test_mixed_race_of_every_count_changing_tool(rigs, circusd, workroot, warden_factory, mode):
    """Three running and three stopped watchers of one process, caps 12/12; at once: six adds,
    four scales to 2 (each change takes one process of room, and there are six), starts of the
    stopped watchers, restarts and graceful reloads. Exactly six of the adds and scales go
    through; every start does (stopped watchers are already counted)."""
    limits = {"max_watchers": 12, "max_total_processes": 12}
    rig = make_rig(rigs, mode, circusd, workroot, warden_factory, config(circusd, workroot, limits))
    run = [unique_name("run") for _ in range(3)]
    stopped = [unique_name("stopped") for _ in range(3)]
    for nm in run:
        ok(rig.first.call_tool("add_process", add_args(nm, 1, start=True)))
    for nm in stopped:
        ok(rig.first.call_tool("add_process", add_args(nm, 1, start=False)))
    settled(circusd.endpoint)
    adds = [unique_name("new") for _ in range(6)]
    calls: list[tuple[str, dict]] = []
    calls += [("add_process", add_args(nm, 1, start=i % 2 == 0)) for i, nm in enumerate(adds)]
    calls += [("scale_process", {"name": nm, "num_processes": 2}) for nm in (run[0], stopped[0], run[1], stopped[1])]
    calls += [("start_process", {"name": nm}) for nm in stopped]
    calls += [("restart_process", {"name": run[0]}), ("restart_process", {"name": stopped[2]})]
    calls += [("reload_process", {"name": run[1]}), ("reload_process", {"name": run[2]})]
    # interleave the kinds so that every session sends a mix
    order = sorted(range(len(calls)), key=lambda j: (j % 4, j))
    calls = [calls[j] for j in order]
    results = race(rig.clients, calls)

    h = assert_within_caps(circusd.endpoint, 12, 12)
    outcome = list(zip(calls, results))
    won_adds = {a["name"] for (t, a), r in outcome if t == "add_process" and succeeded(r)}
    won_scales = {a["name"] for (t, a), r in outcome if t == "scale_process" and succeeded(r)}
    assert set(h) == set(run) | set(stopped) | won_adds, (sorted(h), sorted(won_adds))
    assert {nm for nm, w in h.items() if w["numprocesses"] == 2} == won_scales, (h, won_scales)
    assert len(won_adds) + len(won_scales) == 6, (
        f"{len(won_adds)} adds and {len(won_scales)} scales went through; the room was exactly 6")
    assert configured_total(h) == 12
    for (t, a), r in outcome:
        if t in ("add_process", "scale_process") and not succeeded(r):
            assert "processes.total" in rules_of(r), f"{t} {a['name']}: {json.dumps(r)[:1000]}"
        if t in ("start_process", "restart_process"):
            assert succeeded(r), f"{t} {a['name']} of a counted watcher failed: {json.dumps(r)[:1000]}"
    s = settled(circusd.endpoint)
    for nm in stopped:
        assert s[nm]["status"] == "active", (nm, s[nm])
    assert sum(len(w["pids"]) for w in s.values()) <= 12


def test_stopped_watchers_are_counted_when_the_cap_is_lowered(rigs, circusd, workroot, warden_factory):
    """Configured processes count whatever their state: with the cap lowered below what circusd
    holds, start, restart and reload are denied; a graceful reload needs room for its new
    processes beside the old ones."""
    limits = {"max_watchers": 512, "max_total_processes": 8}
    rig = make_rig(rigs, "http-session", circusd, workroot, warden_factory, config(circusd, workroot, limits))
    c, w = rig.first, rig.wardens[0]
    s1, s2, s3, r = (unique_name(p) for p in ("s1", "s2", "s3", "r"))
    for nm in (s1, s2, s3):
        ok(c.call_tool("add_process", add_args(nm, 2, start=False)))
    # the stopped watchers already hold 6 of 8
    res = c.call_tool("add_process", add_args(unique_name("over"), 3, start=True))
    assert "processes.total" in rules_of(res), json.dumps(res)[:1000]
    ok(c.call_tool("add_process", add_args(r, 2, start=True)))
    pids = wait_for(lambda: len(held(circusd.endpoint)[r]["pids"]) == 2 and held(circusd.endpoint)[r]["pids"], 20,
                    what="r's two processes")
    assert configured_total(held(circusd.endpoint)) == 8

    rewrite_limits(w, c, workroot, {"max_watchers": 512, "max_total_processes": 6})
    for tool, nm in (("start_process", s1), ("restart_process", s2), ("reload_process", s3), ("reload_process", r)):
        res = c.call_tool(tool, {"name": nm})
        assert "processes.total" in rules_of(res), f"{tool} {nm}: {json.dumps(res)[:1000]}"
    time.sleep(0.5)
    h = held(circusd.endpoint)
    assert [h[nm]["status"] for nm in (s1, s2, s3)] == ["stopped"] * 3, h
    assert h[r]["pids"] == pids and h[r]["status"] == "active", h[r]

    rewrite_limits(w, c, workroot, {"max_watchers": 512, "max_total_processes": 8})
    ok(c.call_tool("start_process", {"name": s1}))  # 8 of 8: already counted
    res = c.call_tool("reload_process", {"name": r})  # 8 + 2 side by side > 8
    assert "processes.total" in rules_of(res), json.dumps(res)[:1000]
    h = settled(circusd.endpoint)
    assert h[s1]["status"] == "active" and len(h[s1]["pids"]) == 2, h[s1]
    assert h[r]["pids"] == pids, "a denied reload replaced the processes"

    rewrite_limits(w, c, workroot, {"max_watchers": 512, "max_total_processes": 10})
    ok(c.call_tool("reload_process", {"name": r}))
    h = settled(circusd.endpoint)
    assert len(h[r]["pids"]) == 2 and not set(h[r]["pids"]) & set(pids), "the reload did not replace the processes"
    assert configured_total(h) == 8


@pytest.mark.parametrize("cap", ["watchers", "processes"])
def test_watchers_with_names_the_warden_cannot_use_count_too(rigs, circusd, workroot, warden_factory, cap):
    """Watchers circusd got from elsewhere (an ini file, another tool) count whatever their
    names: `legacy.web` and `Legacy_Web` are no names the warden accepts, and still hold two
    watchers and four configured processes."""
    for nm in ("legacy.web", "Legacy_Web"):
        CircusClient(circusd.endpoint).call("add", name=nm, cmd=SLEEP, args=["3600"], start=False,
                                            options={"numprocesses": 2})
    assert len(held(circusd.endpoint)) == 2
    if cap == "watchers":
        limits = {"max_watchers": 3, "max_total_processes": 1024}
        sizes, room = [1, 1, 1], 1
    else:
        limits = {"max_watchers": 512, "max_total_processes": 7}
        sizes, room = [4, 2, 1], 2  # 4 + 4 > 7; 4 + 2 fits; then 6 + 1 fits
    rig = make_rig(rigs, "http-session", circusd, workroot, warden_factory, config(circusd, workroot, limits))
    names = [unique_name("mine") for _ in sizes]
    for nm, n in zip(names, sizes):
        rig.first.call_tool("add_process", add_args(nm, n, start=False))
    h = assert_within_caps(circusd.endpoint, limits["max_watchers"], limits["max_total_processes"])
    mine = [nm for nm in names if nm in h]
    want = names[:1] if cap == "watchers" else names[1:]
    assert mine == want and len(mine) == room, f"circusd holds {sorted(h)}"


def test_admission_lock_is_a_flock_beside_the_control_socket(rigs, circusd, workroot, warden_factory):
    """Another warden holding `<control socket>.lock` keeps this one's add from reaching circusd;
    the add goes through once the lock is released."""
    rig = make_rig(rigs, "http-session", circusd, workroot, warden_factory, config(circusd, workroot))
    c = rig.first
    ok(c.call_tool("add_process", add_args(unique_name("first"), 1, start=False)))
    lock = Path(circusd.endpoint.removeprefix("ipc://") + ".lock")
    assert lock.exists(), f"no admission lock file at {lock}"
    fd = os.open(lock, os.O_RDWR)
    name = unique_name("held")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        box = in_background(c.call_tool, "add_process", add_args(name, 1, start=False), 60)
        time.sleep(2.0)
        assert name not in held(circusd.endpoint), "the add reached circusd while another holder had the lock"
        assert "done" not in box, f"the add finished while the lock was held: {box}"
        released = time.monotonic()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    box["thread"].join(30)
    ok(box["result"])
    assert box["done"] - released < 3.0, f"the add took {box['done'] - released:.2f}s after the lock was released"
    assert name in held(circusd.endpoint)


# --------------------------------------------------------------------------- circusd dies, slow mutations


def test_circusd_killed_under_a_mutation_gives_outcome_unknown_fast(rigs, circusd, workroot, warden_factory):
    """A stop is in flight (10 s of graceful_timeout) and an add waits behind it when circusd is
    killed: the stop fails with outcome_unknown within a few seconds, not after the 30 s mutation
    timeout; the queued add, and an add sent once a new circusd answers, finish within 2 s of it
    answering, on the new circusd."""
    cfg = config(circusd, workroot, circus={"mutation_timeout_ms": 30000, "connect_timeout_ms": 3000,
                                            "read_timeout_ms": 3000})
    rig = make_rig(rigs, "http-sessions", circusd, workroot, warden_factory, cfg)
    a, b, c = rig.clients[0], rig.clients[1], rig.clients[2]
    slow = start_stubborn(a, circusd.endpoint, graceful=10)
    stop = in_background(a.call_tool, "stop_process", {"name": slow}, 60)
    wait_stopping(circusd.endpoint, slow)
    queued = unique_name("queued")
    queued_box = in_background(b.call_tool, "add_process", add_args(queued, 1, start=False), 60)
    time.sleep(0.5)
    killed = time.monotonic()
    circusd.kill9()
    circusd.restart_same_endpoints()
    back = time.monotonic()
    after = unique_name("after")
    res = c.call_tool("add_process", add_args(after, 1, start=False), 30)
    after_done = time.monotonic()

    stop["thread"].join(40)
    assert "result" in stop, f"the stop got no answer: {stop.get('error')!r}"
    err = tool_error(stop["result"], ["outcome_unknown"])
    assert err["retryable"] is False, err
    assert stop["done"] - killed < 5.0, (
        f"the stop was answered {stop['done'] - killed:.2f}s after circusd died (mutation timeout 30 s)")
    queued_box["thread"].join(40)
    ok(queued_box["result"])
    assert queued_box["done"] - back < 2.0, f"the queued add finished {queued_box['done'] - back:.2f}s after circusd was back"
    ok(res)
    assert after_done - back < 2.0, f"the add finished {after_done - back:.2f}s after circusd was back"
    h = held(circusd.endpoint)
    assert queued in h and after in h, sorted(h)


def test_a_mutation_queued_behind_a_slow_stop_succeeds(rigs, circusd, workroot, warden_factory):
    """A stop waits 5 s on graceful_timeout, 10 times circus.connect_timeout_ms; an add and a scale
    sent meanwhile from other sessions wait their turn and then go through."""
    cfg = config(circusd, workroot, circus={"connect_timeout_ms": 500, "mutation_timeout_ms": 30000})
    rig = make_rig(rigs, "http-sessions", circusd, workroot, warden_factory, cfg)
    a, b, c = rig.clients[0], rig.clients[1], rig.clients[2]
    other = unique_name("other")
    ok(a.call_tool("add_process", add_args(other, 1, start=False)))
    slow = start_stubborn(a, circusd.endpoint, graceful=5)
    stop = in_background(a.call_tool, "stop_process", {"name": slow}, 60)
    wait_stopping(circusd.endpoint, slow)
    added = unique_name("queued")
    add = in_background(b.call_tool, "add_process", add_args(added, 1, start=False), 60)
    scale = in_background(c.call_tool, "scale_process", {"name": other, "num_processes": 2}, 60)
    for box in (stop, add, scale):
        box["thread"].join(60)
    ok(stop["result"])
    ok(add["result"])
    ok(scale["result"])
    h = held(circusd.endpoint)
    assert added in h, sorted(h)
    assert h[other]["numprocesses"] == 2, h[other]
    assert h[slow]["status"] == "stopped" and not h[slow]["pids"], h[slow]


# --------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_drains_the_call_in_flight(rigs, circusd, workroot, warden_factory, signum):
    """The signal arrives while a stop waits 4 s on graceful_timeout: the stop is answered, its
    outcome is in the audit log, a call sent after the signal is refused and reaches nothing."""
    rig = make_rig(rigs, "http-sessions", circusd, workroot, warden_factory, config(circusd, workroot))
    w, a, b = rig.wardens[0], rig.clients[0], rig.clients[1]
    slow = start_stubborn(a, circusd.endpoint, graceful=4)
    stop = in_background(a.call_tool, "stop_process", {"name": slow}, 30)
    wait_stopping(circusd.endpoint, slow)
    signalled = time.monotonic()
    w.proc.send_signal(signum)
    time.sleep(0.5)
    late = unique_name("late")
    try:
        late_res = b.call_tool("add_process", add_args(late, 1, start=True), 15)
    except Exception as e:  # noqa: BLE001 - a refused connection is a refusal
        late_res = {"isError": True, "exception": repr(e)}

    stop["thread"].join(30)
    assert "result" in stop, f"the in-flight stop got no answer: {stop.get('error')!r}"
    ok(stop["result"])
    assert not succeeded(late_res), f"a call after the signal was served: {json.dumps(late_res)[:1000]}"
    w.proc.wait(15)
    assert time.monotonic() - signalled < 12, "the warden did not exit after draining"
    h = held(circusd.endpoint)
    assert h[slow]["status"] == "stopped" and not h[slow]["pids"], h[slow]
    assert late not in h, "a call sent after the signal reached circusd"
    decisions, outcomes = audit_for(w, "stop_process", slow)
    assert len(decisions) == 1 and decisions[0]["decision"] == "allow", decisions
    assert len(outcomes) == 1 and outcomes[0]["circus"]["ok"] is True, outcomes
    late_decisions, _ = audit_for(w, "add_process", late)
    assert not [d for d in late_decisions if d["decision"] == "allow"], late_decisions


def test_shutdown_grace_ends_with_an_outcome_record(rigs, circusd, workroot, warden_factory):
    """With server.shutdown_grace_ms 1000 and a stop that needs 8 s, the warden exits about 1 s
    after SIGTERM and the stop's outcome record says it was shut down unanswered."""
    cfg = config(circusd, workroot, server={"shutdown_grace_ms": 1000})
    rig = make_rig(rigs, "http-session", circusd, workroot, warden_factory, cfg)
    w, a = rig.wardens[0], rig.clients[0]
    slow = start_stubborn(a, circusd.endpoint, graceful=8)
    in_background(a.call_tool, "stop_process", {"name": slow}, 30)
    wait_stopping(circusd.endpoint, slow)
    signalled = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    w.proc.wait(10)
    took = time.monotonic() - signalled
    assert took < 4.0, f"the warden took {took:.2f}s to exit with a 1 s grace"
    decisions, outcomes = audit_for(w, "stop_process", slow)
    assert len(decisions) == 1 and decisions[0]["decision"] == "allow", decisions
    assert len(outcomes) == 1, f"no outcome record for the unanswered stop: {outcomes}"
    circus = outcomes[0]["circus"]
    assert circus["ok"] is False and "shut down" in circus["error"], outcomes[0]


def test_a_call_whose_facts_fail_leaves_a_decision_record(rigs, circusd, workroot, warden_factory):
    """circusd is down: the add cannot gather its facts, and the audit log still records the
    decision."""
    rig = make_rig(rigs, "http-session", circusd, workroot, warden_factory, config(circusd, workroot))
    w, a = rig.wardens[0], rig.clients[0]
    ok(a.call_tool("list_processes", {}))
    circusd.kill9()
    name = unique_name("nofacts")
    res = a.call_tool("add_process", add_args(name, 1), 30)
    assert not succeeded(res)
    decisions, _ = wait_for(lambda: audit_for(w, "add_process", name)[0] and audit_for(w, "add_process", name), 5,
                            what="the decision record")
    assert len(decisions) == 1 and decisions[0]["decision"] != "allow", decisions
