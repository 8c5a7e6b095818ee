"""End-to-end tests of the warden's Prometheus metrics (docs/metrics.md).

Owns: the `/metrics` exposition of a real warden against a real circusd after real MCP
traffic (an allowed add, a denied add, a status read, a stop, a bad-argument call, a policy
reload), linted by `promtool check metrics` and checked series by series (values, naming
conventions, histogram consistency, process metrics against psutil); the same over the admin
listener `server.metrics_bind` while MCP is served on stdio (/metrics, /healthz, /readyz there,
/mcp not); and a real Prometheus server scraping the warden every second until the denial, `up`
and `circus_warden_circus_up` are visible through its query API. promtool and prometheus come
from apt (`make test` installs them); a missing one fails the test, nothing is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from harness import (
    REPO,
    SLEEP,
    Abort,
    Circusd,
    RawHttp,
    Warden,
    base_config,
    e2e_policy,
    free_port,
    metric_value,
    ok,
    private_dir,
    tool_error,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.timeout(150)

RELOAD_MS = 300
INSTALL_HINT = "`make test` installs it (target system-tools: apt-get install prometheus)"


def tool_path(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}")
    return path


def crate_version() -> str:
    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["package"]["version"]


# --------------------------------------------------------------------------- exposition parsing


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> tuple[dict[str, str], dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """(types {family: type}, helps {family: help}, samples [(name, labels, value)])."""
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            assert name not in types, f"family {name} declared twice"
            types[name] = kind.strip()
        elif line.startswith("# HELP "):
            parts = line.split(None, 3)
            helps[parts[2]] = parts[3] if len(parts) > 3 else ""
        elif line.startswith("#"):
            continue
        else:
            m = SAMPLE.match(line)
            assert m, f"unparsable sample line: {line!r}"
            samples.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return types, helps, samples


def family_of(sample: str, types: dict[str, str]) -> str | None:
    if sample in types:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample[: -len(suffix)] if sample.endswith(suffix) else None
        if base and types.get(base) == "histogram":
            return base
    return None


def check_conventions(text: str) -> None:
    """docs/metrics.md: every name has the circus_warden_ prefix, counters end in _total, every
    sample belongs to a declared family with help text, histograms are internally consistent."""
    types, helps, samples = parse_exposition(text)
    assert types, f"no # TYPE lines in the exposition:\n{text[:2000]}"
    bad_prefix = [n for n in types if not n.startswith("circus_warden_")]
    assert not bad_prefix, f"families without the circus_warden_ prefix: {bad_prefix}"
    bad_counters = [n for n, k in types.items() if k == "counter" and not n.endswith("_total")]
    assert not bad_counters, f"counters not ending in _total: {bad_counters}"
    no_help = [n for n in types if not helps.get(n)]
    assert not no_help, f"families without help text: {no_help}"
    orphans = sorted({s for s, _, _ in samples if family_of(s, types) is None})
    assert not orphans, f"samples without a # TYPE family: {orphans}"
    for s, labels, v in samples:
        if types.get(family_of(s, types) or "") == "counter":
            assert v >= 0, f"negative counter {s}{labels} = {v}"

    # histograms: per label set, cumulative buckets non-decreasing, +Inf == _count, _sum >= 0
    for fam in (n for n, k in types.items() if k == "histogram"):
        series: dict[tuple, dict[str, Any]] = {}
        for s, labels, v in samples:
            if family_of(s, types) != fam:
                continue
            key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
            entry = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
            if s == fam + "_bucket":
                entry["buckets"].append((float(labels["le"]), v))
            elif s == fam + "_sum":
                entry["sum"] = v
            elif s == fam + "_count":
                entry["count"] = v
        for key, e in series.items():
            b = sorted(e["buckets"])
            assert b and b[-1][0] == float("inf"), f"{fam}{dict(key)}: no +Inf bucket: {b}"
            counts = [c for _, c in b]
            assert counts == sorted(counts), f"{fam}{dict(key)}: buckets not cumulative: {b}"
            assert e["count"] == b[-1][1], f"{fam}{dict(key)}: _count {e['count']} != +Inf bucket {b[-1][1]}"
            assert e["sum"] is not None and e["sum"] >= 0, f"{fam}{dict(key)}: bad _sum {e['sum']}"


def promtool_check(text: str) -> None:
    """`promtool check metrics` must exit 0 (it exits 3 on lint problems)."""
    promtool = tool_path("promtool")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (
        f"promtool check metrics exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}\n"
        f"--- exposition ---\n{text}")


# --------------------------------------------------------------------------- traffic and checks


def denied_add(call: Callable[[str, dict], dict]) -> None:
    err = tool_error(call("add_process", {"name": unique_name("deny"), "command": "/bin/sh", "args": ["-c", "id"]}),
                     ["denied"], field="command")
    assert "command.not_allowed" in {v["rule"] for v in err["violations"]}, json.dumps(err)


def drive_traffic(call: Callable[[str, dict], dict], write_policy: Callable[[dict], None], workroot: Path) -> str:
    """The traffic the checks expect, on a fresh warden; returns the added watcher's name."""
    name = unique_name("met")
    ok(call("add_process", {"name": name, "command": SLEEP, "args": ["3600"]}))
    denied_add(call)
    assert ok(call("get_process_status", {"name": name}))["name"] == name
    ok(call("stop_process", {"name": name}))
    tool_error(call("scale_process", {"name": name, "num_processes": "x"}), ["invalid_arguments"], field="num_processes")
    doc = e2e_policy(workroot)
    doc["env"] = [*doc["env"], "PYTHONUNBUFFERED"]  # a real change: a new hash, generation 2
    write_policy(doc)
    return name


def check_page(fetch: Callable[[], str], name: str, policy_path: Path, pid: int, http_sessions: int) -> str:
    """Polls the asynchronous series, then checks every value the traffic determines; returns the
    final exposition (promtool-checked)."""
    digest = hashlib.sha256(policy_path.read_bytes()).hexdigest()

    def settled() -> bool:
        t = fetch()
        return (metric_value(t, "circus_warden_process_spawns_total", watcher=name) >= 1
                and metric_value(t, "circus_warden_process_reaps_total", watcher=name, exit_class="signal") >= 1
                and metric_value(t, "circus_warden_policy_info", generation="2", hash=digest) == 1
                and metric_value(t, "circus_warden_circus_up") == 1
                and metric_value(t, "circus_warden_watchers", state="stopped") == 1)

    try:
        wait_for(settled, 20, 0.1, "spawn/reap events, the reload, circus_up and the stopped watcher on /metrics")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- last exposition ---\n{fetch()}") from None
    text = fetch()
    promtool_check(text)
    check_conventions(text)

    def v(metric: str, **labels: str) -> float:
        return metric_value(text, metric, **labels)

    def series(metric: str) -> list[tuple[dict[str, str], float]]:
        return [(lb, val) for s, lb, val in parse_exposition(text)[2] if s == metric]

    problems: list[str] = []

    def expect(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    # tool calls: exactly the five calls made, by tool and outcome
    calls = {(lb["tool"], lb["outcome"]): val for lb, val in series("circus_warden_tool_calls_total")}
    want_calls = {("add_process", "ok"): 1, ("add_process", "denied"): 1, ("get_process_status", "ok"): 1,
                  ("stop_process", "ok"): 1, ("scale_process", "invalid_arguments"): 1}
    expect(calls == want_calls, f"tool_calls_total: {calls} != {want_calls}")
    expect(v("circus_warden_tool_calls_total", outcome="denied", tool="add_process") >= 1, "denied add_process not counted")
    # gate decisions: the denial by its rule; allowed mutations; a bad argument never reaches the gate
    expect(v("circus_warden_policy_decisions_total", decision="deny", tool="add_process", rule="command.not_allowed") == 1,
           "policy_decisions_total{decision=deny,tool=add_process,rule=command.not_allowed} != 1")
    expect(v("circus_warden_policy_decisions_total", decision="allow", tool="add_process", rule="allow") == 1,
           "policy_decisions_total{allow,add_process} != 1")
    expect(v("circus_warden_policy_decisions_total", decision="allow", tool="stop_process", rule="allow") == 1,
           "policy_decisions_total{allow,stop_process} != 1")
    expect(v("circus_warden_policy_decisions_total", tool="scale_process") == 0,
           "a call with bad arguments was counted as a gate decision")
    # circusd: up, one add and one stop round trip timed
    expect(v("circus_warden_circus_up") == 1, "circus_up != 1")
    expect(v("circus_warden_circus_call_duration_seconds_count", command="add") == 1, "duration count{add} != 1")
    expect(v("circus_warden_circus_call_duration_seconds_count", command="stop") == 1, "duration count{stop} != 1")
    expect(v("circus_warden_circus_call_duration_seconds_sum", command="add") > 0, "duration sum{add} not > 0")
    # the watcher: spawned, reaped by the stop's signal, stopped, not crash looping
    expect(v("circus_warden_process_spawns_total", watcher=name) >= 1, f"no spawn counted for {name}")
    expect(v("circus_warden_process_reaps_total", watcher=name, exit_class="signal") >= 1, f"no signal reap for {name}")
    expect(v("circus_warden_process_reaps_total", watcher=name, exit_class="error") == 0, f"error reap for {name}")
    expect(v("circus_warden_crash_looping", watcher=name) == 0, f"crash_looping{{{name}}} != 0")
    states = {lb["state"]: val for lb, val in series("circus_warden_watchers")}
    expect(sum(states.values()) == 1 and states.get("stopped") == 1, f"watchers by state: {states}")
    # policy: one successful reload, generation 2 with the file's hash, generation 1 gone
    expect(v("circus_warden_policy_reloads_total", result="success") == 1, "policy_reloads_total{success} != 1")
    expect(v("circus_warden_policy_reloads_total", result="failure") == 0, "policy_reloads_total{failure} != 0")
    info = series("circus_warden_policy_info")
    expect(info == [({"generation": "2", "hash": digest}, 1.0)], f"policy_info: {info} (file hash {digest})")
    # the rest of the contract
    expect(series("circus_warden_build_info") == [({"version": crate_version()}, 1.0)],
           f"build_info: {series('circus_warden_build_info')} (Cargo.toml {crate_version()})")
    expect(v("circus_warden_audit_write_failures_total") == 0, "audit_write_failures_total != 0")
    expect(v("circus_warden_rate_limited_total") == 0, "rate_limited_total != 0")
    expect(series("circus_warden_http_sessions") == [({}, float(http_sessions))],
           f"http_sessions: {series('circus_warden_http_sessions')} != {http_sessions}")
    # the warden process itself, against what the kernel says
    proc = psutil.Process(pid)
    rss = proc.memory_info().rss
    got_rss = v("circus_warden_process_resident_memory_bytes")
    expect(rss / 2 <= got_rss <= rss * 2, f"resident_memory_bytes {got_rss} vs psutil rss {rss}")
    expect(v("circus_warden_process_virtual_memory_bytes") >= got_rss > 0, "virtual_memory_bytes < resident")
    expect(abs(v("circus_warden_process_start_time_seconds") - proc.create_time()) <= 2,
           f"start_time_seconds {v('circus_warden_process_start_time_seconds')} vs {proc.create_time()}")
    expect(0 < v("circus_warden_process_open_fds") <= v("circus_warden_process_max_fds"), "open_fds/max_fds")
    expect(v("circus_warden_process_threads") >= 2, "process_threads < 2")
    expect(any(s == "circus_warden_process_cpu_seconds_total" for s, _, _ in parse_exposition(text)[2]),
           "process_cpu_seconds_total missing")
    assert not problems, "metrics page is wrong:\n  " + "\n  ".join(problems) + f"\n--- exposition ---\n{text}"
    return text


# --------------------------------------------------------------------------- 1. HTTP transport


def test_metrics_page_after_real_traffic_http(warden_factory, circusd: Circusd, workroot):
    cfg = base_config(circusd, workroot, policy={"reload_interval_ms": RELOAD_MS})
    w = warden_factory(cfg, "metrics-http").start_http()
    # before any traffic: already a valid page
    promtool_check(w.metrics_text())
    with w.http_client() as c:
        name = drive_traffic(c.call_tool, w.write_policy, workroot)
        assert w.policy_path is not None
        # one SDK session is open while /metrics is read on the MCP listener
        check_page(w.metrics_text, name, w.policy_path, w.pid, http_sessions=1)
    assert w.proc is not None and w.proc.poll() is None, "warden died"


# --------------------------------------------------------------------------- 2. admin listener, stdio


def warden_child_pid(config_path: Path) -> int:
    """The stdio warden the SDK spawned (a child of this process)."""
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if str(config_path) in p.cmdline():
                return p.pid
    raise AssertionError(f"no warden child runs with {config_path}")


def test_metrics_bind_admin_listener_with_stdio(conn_factory, circusd: Circusd, workroot):
    conn = None
    for attempt in range(3):  # the probed port can be taken before the warden binds it
        port = free_port()
        over = {"server": {"metrics_bind": f"127.0.0.1:{port}"}, "policy": {"reload_interval_ms": RELOAD_MS}}
        try:
            conn = conn_factory("stdio", circusd, workroot, "metrics-admin", config_over=over)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    assert conn is not None and conn.transport == "stdio"
    admin = RawHttp("127.0.0.1", port)

    def get(path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
        return admin.request(method, path, body, headers, timeout=5.0)

    def fetch() -> str:
        status, hdrs, body = get("/metrics")
        assert status == 200, f"admin GET /metrics: HTTP {status}: {body[:300]!r}"
        assert hdrs.get("content-type", "").startswith("text/plain"), hdrs
        return body.decode()

    assert get("/healthz")[0] == 200
    wait_for(lambda: get("/readyz")[0] == 200, 15, what="admin /readyz 200")
    # the admin port is not an MCP endpoint, whatever the method
    assert get("/mcp")[0] == 404
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                  "clientInfo": {"name": "raw-e2e", "version": "0"}}}).encode()
    st, _, body = get("/mcp", "POST", init, {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    assert st == 404, f"POST /mcp on the admin port: HTTP {st}: {body[:200]!r}"
    assert get("/", "GET")[0] == 404

    name = drive_traffic(conn.call, conn.warden.write_policy, workroot)
    assert conn.warden.policy_path is not None
    # stdio has no HTTP sessions
    check_page(fetch, name, conn.warden.policy_path, warden_child_pid(conn.warden.config_path), http_sessions=0)
    conn.client.ping()  # MCP over stdio still works after all that


# --------------------------------------------------------------------------- 3. a real Prometheus


class Prometheus:
    """A prometheus server on 127.0.0.1 with a private tsdb, scraping one target every second."""

    JOB = "circus-warden"

    def __init__(self, target: str):
        self.binary = tool_path("prometheus")
        self.dir = private_dir("cw-prom-")
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: {self.JOB}\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n")
        # next to the run's warden logs (target/e2e-logs/latest), which outlive the temp dir
        log_dir = Warden.log_dir.parent if Warden.log_dir else self.dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"prometheus-{self.dir.name}.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self, timeout: float = 20.0) -> "Prometheus":
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    [self.binary, f"--config.file={self.config}", f"--web.listen-address=127.0.0.1:{self.port}",
                     f"--storage.tsdb.path={self.dir / 'data'}", "--log.level=info"],
                    cwd=str(self.dir), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            finally:
                log.close()
            try:
                wait_for(self._ready, timeout, 0.05, "prometheus /-/ready")
                return self
            except (AssertionError, Abort):
                self.stop()
                if "address already in use" not in self.log_tail().lower():
                    break
        raise AssertionError(f"prometheus did not become ready\n{self.log_tail()}")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise Abort(f"prometheus exited with {self.proc.returncode}")
        return self._get("/-/ready")[0] == 200

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def query(self, promql: str) -> list[dict]:
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert status == 200, f"query {promql!r}: HTTP {status}: {body[:300]!r}"
        doc = json.loads(body)
        assert doc.get("status") == "success", doc
        return doc["data"]["result"]

    def targets(self) -> list[dict]:
        return json.loads(self._get("/api/v1/targets")[1])["data"]["activeTargets"]

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        if os.environ.get("E2E_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


def values(result: list[dict]) -> list[tuple[dict, float]]:
    return [(r["metric"], float(r["value"][1])) for r in result]


@pytest.mark.timeout(180)
def test_prometheus_scrapes_the_denial(warden_factory, circusd: Circusd, workroot):
    tool_path("prometheus")  # fail before starting anything if it is missing
    w = warden_factory(base_config(circusd, workroot), "metrics-prom").start_http()
    prom = Prometheus(f"127.0.0.1:{w.port}")
    try:
        prom.start()
        job = Prometheus.JOB
        deny_q = f'circus_warden_policy_decisions_total{{job="{job}",decision="deny"}}'
        last: dict[str, Any] = {}

        def scraped(*, denial: bool) -> bool:
            last["up"] = values(prom.query(f'up{{job="{job}"}}'))
            last["circus_up"] = values(prom.query(f'circus_warden_circus_up{{job="{job}"}}'))
            last["deny"] = values(prom.query(deny_q))
            up_ok = [v for _, v in last["up"]] == [1.0]
            circus_ok = [v for _, v in last["circus_up"]] == [1.0]
            denials = [v for m, v in last["deny"]
                       if m.get("tool") == "add_process" and m.get("rule") == "command.not_allowed"]
            return up_ok and circus_ok and (denials == [1.0] if denial else not last["deny"])

        def poll(what: str, deadline: float, **kw: bool) -> None:
            try:
                wait_for(lambda: scraped(**kw), deadline, 0.25, what)
            except AssertionError as e:
                with contextlib.suppress(Exception):
                    last["targets"] = [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape")}
                                       for t in prom.targets()]
                raise AssertionError(f"{e}\nlast answers: {json.dumps(last, indent=1)}\n"
                                     f"--- prometheus log ---\n{prom.log_tail()}") from None

        t0 = time.monotonic()
        # the target is up and scraped before the denial, and no denial is recorded yet
        poll("up == 1 and circus_up == 1 in Prometheus, no denial yet", 30, denial=False)
        with w.http_client() as c:
            denied_add(c.call_tool)
        poll("the denial in Prometheus", max(5.0, 60 - (time.monotonic() - t0)), denial=True)
        assert time.monotonic() - t0 <= 60
        # the series Prometheus stored carries the exposition's labels plus job and instance
        (labels, value), = [(m, v) for m, v in last["deny"] if m.get("rule") == "command.not_allowed"]
        assert labels.get("instance") == f"127.0.0.1:{w.port}" and value == 1.0, labels
    finally:
        prom.close()


# --------------------------------------------------------------------------- faults found and fixed
# Observed while writing the tests above (they failed against an earlier warden).


def test_allowed_reads_are_counted_as_gate_decisions(warden_factory, circusd: Circusd, workroot):
    counts = {}
    for reads in (True, False):
        w = warden_factory(base_config(circusd, workroot, audit={"reads": reads}), f"metrics-reads-{reads}").start_http()
        with w.http_client() as c:
            ok(c.call_tool("list_processes", {}))
        assert w.metric("circus_warden_tool_calls_total", tool="list_processes", outcome="ok") == 1
        counts[reads] = w.metric("circus_warden_policy_decisions_total", tool="list_processes", decision="allow", rule="allow")
    assert counts[True] == 1, counts
    assert counts[False] == 1, f"the decision metric depends on the audit setting: {counts}"


def test_http_sessions_on_the_admin_listener(warden_factory, circusd: Circusd, workroot):
    port = free_port()
    w = warden_factory(base_config(circusd, workroot, server={"metrics_bind": f"127.0.0.1:{port}"}),
                       "metrics-sessions").start_http()
    admin = RawHttp("127.0.0.1", port)

    def sessions() -> float:
        status, _, body = admin.request("GET", "/metrics", timeout=5.0)
        assert status == 200, status
        return metric_value(body.decode(), "circus_warden_http_sessions")

    with w.http_client() as c:
        c.ping()
        # The gauge is refreshed every second for the admin listener.
        wait_for(lambda: sessions() == 1, timeout=5, what="one open session on the admin /metrics")
    wait_for(lambda: sessions() == 0, timeout=5, what="no session on the admin /metrics after the client closed")
