"""End-to-end tests of embedded mode: no circus.endpoint, the warden starts and supervises circusd.

Owns: discovery of the embedded circusd (a child of the warden found with psutil) and of its
sockets in the runtime dir; the 0700 private dir and ipc:// endpoints; that add_process works
and is visible in that circusd over a raw DEALER; restart after kill -9; and that circusd (and
the processes it ran) are gone after the warden is stopped (SIGTERM over HTTP, stdin EOF over stdio).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from harness import (
    SLEEP,
    CircusClient,
    base_config,
    kill_pids,
    ok,
    pid_alive,
    private_dir,
    process_environ,
    unique_name,
    wait_for,
    warden_bin,
)

pytestmark = pytest.mark.timeout(120)

SECRET_VAR = "CW_WARDEN_SECRET_FOR_TEST"


def embedded_config(rundir: Path, workroot: Path) -> dict:
    cfg = base_config(None, workroot, circus={
        "runtime_dir": str(rundir),
        "restart_backoff_initial_ms": 100,
        "restart_backoff_max_ms": 1000,
    })
    del cfg["circus"]["endpoint"]  # really absent, not null
    return cfg


def circusd_children(warden_pid: int) -> list[psutil.Process]:
    out = []
    try:
        kids = psutil.Process(warden_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for k in kids:
        try:
            cmd = " ".join(k.cmdline())
            if "circusd" in cmd and "circusd-stats" not in cmd and k.status() != psutil.STATUS_ZOMBIE:
                out.append(k)
        except psutil.NoSuchProcess:
            pass
    return out


def one_circusd(warden_pid: int, timeout: float = 20.0) -> psutil.Process:
    def find():
        kids = circusd_children(warden_pid)
        return kids[0] if len(kids) == 1 else None
    return wait_for(find, timeout, what="exactly one circusd child of the warden")


def sockets_under(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            try:
                if stat.S_ISSOCK(p.lstat().st_mode):
                    out.append(p)
            except OSError:
                pass
    return out


def control_endpoint(root: Path, timeout: float = 20.0) -> tuple[str, dict]:
    """The ipc:// socket under `root` that answers circus `globaloptions`, and its options."""
    def probe():
        for s in sockets_under(root):
            ep = f"ipc://{s}"
            c = CircusClient(ep, timeout=1.0)
            try:
                reply = c.call("globaloptions")
                if reply.get("status") == "ok":
                    return ep, reply["options"]
            except (TimeoutError, ValueError):
                pass
            finally:
                c.close()
        return None
    return wait_for(probe, timeout, interval=0.2, what=f"a circusd control socket under {root}")


@pytest.fixture
def embedded(warden_factory, workroot):
    """Start an embedded-mode HTTP warden; yield (warden, runtime dir); kill leftovers at the end."""
    rundir = private_dir("cw-rt-")
    started = []

    def start(env=None):
        w = warden_factory(embedded_config(rundir, workroot), "embedded", env={SECRET_VAR: "s3cr3t", **(env or {})})
        w.start_http(timeout=40)
        started.append(w)
        return w

    yield start, rundir
    leftovers = []
    for w in started:
        if w.proc is not None:
            for p in circusd_children(w.pid):
                leftovers.append(p.pid)
                try:
                    leftovers += [c.pid for c in p.children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
    kill_pids(leftovers)
    import shutil
    shutil.rmtree(rundir, ignore_errors=True)


def test_embedded_circusd_serves(embedded):
    start, rundir = embedded
    w = start()
    wait_for(lambda: w.readyz() == 200, 30, what="/readyz 200 in embedded mode")
    one_circusd(w.pid)

    socks = sockets_under(rundir)
    assert socks, f"no unix sockets under runtime_dir {rundir}"
    for s in socks:
        mode = stat.S_IMODE(s.parent.stat().st_mode)
        assert mode == 0o700, f"socket dir {s.parent} has mode {oct(mode)}, want 0700"
        smode = stat.S_IMODE(s.lstat().st_mode)
        assert smode & 0o077 == 0, f"socket {s} is accessible to group/others: {oct(smode)}"

    ep, opts = control_endpoint(rundir)
    assert opts["endpoint"].startswith("ipc://"), opts
    assert opts["pubsub_endpoint"].startswith("ipc://"), opts

    name = unique_name()
    with w.http_client() as c:
        script = "import os, time; time.sleep(3600)"
        from harness import PYTHON
        sc = ok(c.call_tool("add_process", {"name": name, "command": PYTHON, "args": ["-c", script]}))
        assert sc["started"] is True
    cc = CircusClient(ep)
    try:
        assert name in cc.call("list")["watchers"]
        pids = wait_for(lambda: cc.call("list", name=name)["pids"], 15, what="watcher pid")
        env = process_environ(int(pids[0]))
        assert SECRET_VAR not in env, "the warden's environment leaked into a managed process"
        assert cc.call("options", name=name)["options"]["copy_env"] is False
    finally:
        cc.close()


def _circusd_stats_running(warden_pid: int) -> bool:
    try:
        return any("circusd-stats" in " ".join(k.cmdline()) for k in psutil.Process(warden_pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return False


def test_embedded_no_multicast_no_tcp(embedded):
    """The embedded circusd must not answer UDP multicast discovery nor listen on TCP."""
    start, rundir = embedded
    w = start()
    wait_for(lambda: w.readyz() == 200, 30, what="/readyz 200")
    cd = one_circusd(w.pid)
    _, opts = control_endpoint(rundir)
    assert not opts.get("multicast_endpoint"), f"multicast discovery enabled: {opts.get('multicast_endpoint')!r}"
    conns = [c for c in cd.net_connections(kind="inet")]
    assert not conns, f"embedded circusd has inet sockets: {conns}"
    assert not _circusd_stats_running(w.pid), "circusd-stats is running (statsd should be off)"


def test_embedded_restart_after_kill9_and_sigterm_cleanup(embedded):
    start, rundir = embedded
    w = start()
    wait_for(lambda: w.readyz() == 200, 30, what="/readyz 200")
    first = one_circusd(w.pid)
    with w.http_client() as c:
        ok(c.call_tool("add_process", {"name": unique_name(), "command": SLEEP, "args": ["3601"]}))
    orphans = [k.pid for k in first.children(recursive=True)]

    first.send_signal(signal.SIGKILL)
    wait_for(lambda: not pid_alive(first.pid), 10, what="circusd killed")
    kill_pids(orphans)  # children of the killed circusd live in their own sessions

    second = wait_for(lambda: (k := circusd_children(w.pid)) and k[0].pid != first.pid and k[0], 30,
                      what="a new circusd child after kill -9")
    wait_for(lambda: w.readyz() == 200, 30, what="/readyz back to 200 after restart")
    with w.http_client() as c:
        name = unique_name()
        ok(c.call_tool("add_process", {"name": name, "command": SLEEP, "args": ["3602"]}))
    ep, _ = control_endpoint(rundir)
    cc = CircusClient(ep)
    try:
        pids = wait_for(lambda: cc.call("list", name=name)["pids"], 15, what="watcher running in new circusd")
    finally:
        cc.close()
    sleeper = int(pids[0])

    w.proc.send_signal(signal.SIGTERM)
    try:
        rc = w.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("warden did not exit within 30 s of SIGTERM")
    assert rc is not None
    wait_for(lambda: not pid_alive(second.pid), 15, what="embedded circusd gone after SIGTERM")
    wait_for(lambda: not pid_alive(sleeper), 15, what="managed process gone after SIGTERM")
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(rundir) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, f"processes still referencing the runtime dir: {[p.pid for p in leftovers]}"


def test_embedded_stdio_eof_stops_circusd(workroot):
    """Over stdio, EOF on stdin ends the warden and its embedded circusd."""
    rundir = private_dir("cw-rt-")
    from harness import Warden

    wdir = private_dir("cw-warden-")
    w = Warden(embedded_config(rundir, workroot), wdir, "embedded-stdio", {SECRET_VAR: "s3cr3t"})
    p = subprocess.Popen([warden_bin(), *w.stdio_params().args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=open(w.log_path, "ab"), env=w.env, cwd=str(wdir), bufsize=0)
    cds: list[psutil.Process] = []
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "raw", "version": "0"}}}
        p.stdin.write(json.dumps(init).encode() + b"\n")
        line = p.stdout.readline()
        assert b'"result"' in line, line
        cds.append(one_circusd(p.pid, 30))
        control_endpoint(rundir)
        p.stdin.close()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("warden did not exit within 30 s of stdin EOF")
        wait_for(lambda: not pid_alive(cds[0].pid), 15, what="embedded circusd gone after EOF")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        kill_pids(c.pid for c in cds if pid_alive(c.pid))
        w.close()
        import shutil
        shutil.rmtree(rundir, ignore_errors=True)
        shutil.rmtree(wdir, ignore_errors=True)


def test_embedded_survives_repeated_kills(embedded):
    """Backoff must not give up after a few crashes in a row."""
    start, _ = embedded
    w = start()
    wait_for(lambda: w.readyz() == 200, 30, what="/readyz 200")
    for _ in range(3):
        cd = one_circusd(w.pid)
        cd.send_signal(signal.SIGKILL)
        wait_for(lambda: not pid_alive(cd.pid), 10)
        wait_for(lambda: (k := circusd_children(w.pid)) and k[0].pid != cd.pid, 30, what="restarted")
        wait_for(lambda: w.readyz() == 200, 30, what="/readyz 200 after restart")


def test_embedded_stdio_child_output_stays_off_stdout(workroot):
    """Over stdio, stdout is the MCP channel: neither circusd's logs nor a managed process's
    output may appear on it (circus lets children inherit circusd's stdout when no stream is set)."""
    import select

    from harness import PYTHON, Warden

    rundir = private_dir("cw-rt-")
    wdir = private_dir("cw-warden-")
    w = Warden(embedded_config(rundir, workroot), wdir, "embedded-stdio-out")
    p = subprocess.Popen([warden_bin(), *w.stdio_params().args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=open(w.log_path, "ab"), env=w.env, cwd=str(wdir), bufsize=0)
    cds: list[psutil.Process] = []
    lines: list[bytes] = []

    def send(obj):
        p.stdin.write(json.dumps(obj).encode() + b"\n")

    def read_for(seconds: float, until_id=None):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.1)
            if r:
                ln = p.stdout.readline()
                if not ln:
                    return None
                lines.append(ln)
                try:
                    msg = json.loads(ln)
                except ValueError:
                    continue
                if until_id is not None and msg.get("id") == until_id:
                    return msg
        return None

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "0"}}})
        assert read_for(30, 1), lines
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        cds.append(one_circusd(p.pid, 30))
        script = "import sys, time; [print('CHILD-STDOUT-LINE', flush=True) for _ in range(3)]; " \
                 "print('CHILD-STDERR-LINE', file=sys.stderr, flush=True); time.sleep(3600)"
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
              "params": {"name": "add_process", "arguments": {"name": "chatty", "command": PYTHON, "args": ["-c", script]}}})
        reply = read_for(30, 2)
        assert reply and "result" in reply, lines
        assert reply["result"].get("isError") is not True, reply
        read_for(2.0)  # give the child time to print
        for ln in lines:
            try:
                msg = json.loads(ln)
            except ValueError:
                pytest.fail(f"non-JSON-RPC bytes on the stdio MCP channel: {ln[:200]!r}")
            assert msg.get("jsonrpc") == "2.0", ln
    finally:
        for c in cds:
            try:
                kill_pids([k.pid for k in c.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        p.stdin.close()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        kill_pids(c.pid for c in cds if pid_alive(c.pid))
        w.close()
        import shutil
        shutil.rmtree(rundir, ignore_errors=True)
        shutil.rmtree(wdir, ignore_errors=True)
