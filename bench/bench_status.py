#!/usr/bin/env python3
"""Latency benchmark: raw circusd `status` vs the warden's get_process_status over stdio and HTTP.

Owns `make bench`. In one run it starts a real circusd (ipc:// endpoints) with one watcher
(`sleep 3600`), the warden over stdio and over Streamable HTTP against it, and measures:
  * N raw ZMQ DEALER `status name=w` round trips on one persistent socket (the floor);
  * N MCP `ping` calls per transport (the Python SDK client's own cost + transport, no circus);
  * N `get_process_status {name: w}` tool calls per transport (SDK clients, after a warm-up).
It prints median/p90/p99 (ms) and each tool median's ratio/difference over the raw median, and
estimates the warden's own added time as tool median - ping median - raw median.
Bounded: each phase stops early when the overall time budget (--budget, default 55 s) runs out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import zmq  # noqa: E402

from harness import SLEEP, Circusd, Warden, base_config, circus_call, private_dir, warden_bin  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def share(budget: Budget, phases_left: int) -> float:
    return max(1.0, budget.left() / max(1, phases_left))


def bench_raw(endpoint: str, n: int, seconds: float) -> list[float]:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, uuid.uuid4().hex.encode())
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    out = []
    stop = time.monotonic() + seconds
    try:
        for i in range(n + 50):
            rid = uuid.uuid4().hex
            payload = json.dumps({"id": rid, "command": "status", "properties": {"name": "w"}}).encode()
            t0 = time.perf_counter()
            s.send(payload)
            while True:
                if not s.poll(5000):
                    raise RuntimeError("circusd did not answer status")
                reply = json.loads(s.recv())
                if reply.get("id") == rid:
                    break
            dt = time.perf_counter() - t0
            if reply.get("status") == "error":
                raise RuntimeError(f"status failed: {reply}")
            if i >= 50:  # warm-up
                out.append(dt * 1000)
            if time.monotonic() > stop:
                break
    finally:
        s.close(0)
    return out


def bench_client(client, n: int, seconds: float, what: str) -> list[float]:
    """Time `what` ("ping" or "status") calls on an SDK session, inside its own event loop."""

    async def run(session):
        from mcp.types import CallToolResult  # noqa: F401

        async def one():
            if what == "ping":
                await session.send_ping()
            else:
                r = await session.call_tool("get_process_status", {"name": "w"})
                if r.is_error:
                    raise RuntimeError(f"get_process_status failed: {r}")

        for _ in range(50):  # warm-up (also primes the SDK's output-schema cache)
            await one()
        res = []
        stop = time.monotonic() + seconds
        for _ in range(n):
            t0 = time.perf_counter()
            await one()
            res.append((time.perf_counter() - t0) * 1000)
            if time.monotonic() > stop:
                break
        return res

    return client.run(run, timeout=seconds + 120)


def bench_validation(client, seconds: float, n: int = 500) -> list[float]:
    """Client-side cost the SDK adds to every successful call_tool: output-schema validation."""

    async def run(session):
        r = await session.call_tool("get_process_status", {"name": "w"})
        res = []
        stop = time.monotonic() + seconds
        for _ in range(n):
            t0 = time.perf_counter()
            await session.validate_tool_result("get_process_status", r)
            res.append((time.perf_counter() - t0) * 1000)
            if time.monotonic() > stop:
                break
        return res

    return client.run(run, timeout=seconds + 60)


def bench_stdio_raw(w: Warden, n: int, seconds: float) -> list[float]:
    """get_process_status over stdio from a minimal JSON-RPC client (one JSON line each way, no
    SDK): what the warden adds over the raw circusd round trip, with the least client cost."""
    import json as _json
    proc = subprocess.Popen([warden_bin(), "serve", "--transport", "stdio", "--config", str(w.config_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=w.env)
    try:
        def rpc(i: int, method: str, params: dict) -> dict:
            proc.stdin.write((_json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode())
            proc.stdin.flush()
            while True:
                msg = _json.loads(proc.stdout.readline())
                if msg.get("id") == i:
                    return msg
        rpc(0, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        proc.stdin.flush()
        call = {"name": "get_process_status", "arguments": {"name": "w"}}
        for i in range(1, 201):
            assert rpc(i, "tools/call", call)["result"].get("isError") is False
        out: list[float] = []
        deadline = time.monotonic() + seconds
        i = 1000
        while len(out) < n and time.monotonic() < deadline:
            i += 1
            t = time.perf_counter()
            r = rpc(i, "tools/call", call)
            out.append((time.perf_counter() - t) * 1000)
            assert r["result"].get("isError") is False, r
        return out
    finally:
        proc.stdin.close()
        proc.wait(timeout=20)


def row(label: str, xs: list[float], raw_median: float | None) -> str:
    med = statistics.median(xs)
    extra = ""
    if raw_median is not None:
        extra = f"{med / raw_median:9.1f}x {med - raw_median:10.3f}"
    return f"{label:<34}{len(xs):>6}{med:>10.3f}{pct(xs, 90):>10.3f}{pct(xs, 99):>10.3f}  {extra}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per phase (default 2000)")
    ap.add_argument("--budget", type=float, default=55.0, help="overall time budget in seconds")
    ap.add_argument("--bin", default=warden_bin(), help="warden binary")
    args = ap.parse_args()
    os.environ["CIRCUS_WARDEN_BIN"] = args.bin
    if not os.path.exists(args.bin):
        print(f"warden binary not found: {args.bin} (run `make build`)", file=sys.stderr)
        return 2

    # the SDK logs a warning when the server answers DELETE with 202; not relevant here
    logging.getLogger("mcp").setLevel(logging.ERROR)
    budget = Budget(args.budget)
    circus = Circusd().start()
    work = private_dir("cw-bench-")
    wardens: list[Warden] = []
    clients = []
    try:
        circus_call(circus.endpoint, "add", name="w", cmd=SLEEP, args=["3600"], start=True, waiting=True)
        # base_config carries the e2e policy (harness.e2e_policy): each Warden writes it, and its
        # audit log, into its own directory. `w` is added with a raw DEALER (not owned by the
        # warden's identity), which only matters for mutations: reads need only the tool allowlist.
        cfg = base_config(circus, work, log={"format": "human", "level": "warn"})
        w_stdio = Warden(cfg, work / "stdio", "bench-stdio")
        w_http = Warden(cfg, work / "http", "bench-http")
        wardens += [w_stdio, w_http]
        w_http.start_http()
        c_stdio = w_stdio.stdio_client()
        clients.append(c_stdio)
        c_http = w_http.http_client()
        clients.append(c_http)

        results: dict[str, list[float]] = {}
        phases = [
            ("raw DEALER status", lambda s: bench_raw(circus.endpoint, args.n, s)),
            ("stdio  ping (SDK no-op)", lambda s: bench_client(c_stdio, args.n, s, "ping")),
            ("stdio  get_process_status", lambda s: bench_client(c_stdio, args.n, s, "status")),
            ("stdio  status, raw JSON-RPC", lambda s: bench_stdio_raw(w_stdio, args.n, s)),
            ("http   ping (SDK no-op)", lambda s: bench_client(c_http, args.n, s, "ping")),
            ("http   get_process_status", lambda s: bench_client(c_http, args.n, s, "status")),
            ("SDK output-schema validation", lambda s: bench_validation(c_stdio, min(s, 5.0))),
        ]
        for i, (label, fn) in enumerate(phases):
            results[label] = fn(share(budget, len(phases) - i))

        raw_med = statistics.median(results["raw DEALER status"])
        print()
        print(f"circus-warden latency, N={args.n} requested per phase (fewer if the {args.budget:.0f}s budget ran out)")
        print("Times in ms. The SDK client (Python) overhead is included in every MCP row.")
        print(f"{'phase':<34}{'n':>6}{'median':>10}{'p90':>10}{'p99':>10}  {'vs raw':>10} {'diff ms':>10}")
        for label, xs in results.items():
            print(row(label, xs, None if label.startswith(("raw", "SDK")) else raw_med))
        print()
        val = statistics.median(results["SDK output-schema validation"])
        print("Estimated warden-added time per status call = tool - ping - SDK validation - raw circusd:")
        for t in ("stdio", "http"):
            tool = statistics.median(results[f"{t:<6} get_process_status"])
            ping = statistics.median(results[f"{t:<6} ping (SDK no-op)"])
            own = tool - ping - val - raw_med
            print(f"  {t:<5}: {tool:.3f} - {ping:.3f} - {val:.3f} - {raw_med:.3f} = {own:.3f} ms")
        raw_rpc = statistics.median(results["stdio  status, raw JSON-RPC"])
        print(f"  stdio, minimal JSON-RPC client (no SDK): {raw_rpc:.3f} - {raw_med:.3f} = {raw_rpc - raw_med:.3f} ms"
              " (includes that client's own JSON and pipe cost)")
        print("(ping covers the SDK request/response path and the transport; the remainder is the warden's")
        print(" tool dispatch, gate, circus client and JSON (de)serialisation, plus call_tool's extra parsing.)")
        return 0
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        for w in wardens:
            w.close()
        circus.stop()
        shutil.rmtree(circus.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
