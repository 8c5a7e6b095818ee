#!/usr/bin/env python3
"""Admission throughput: concurrent add_process calls from several HTTP sessions.

Part of `make bench`. One real circusd (ipc:// endpoints); for each warden binary (the current
one, and the baseline given by --baseline or $BASELINE_BIN when set) a Streamable HTTP warden
with the e2e policy. Each round: S sessions (default 8) each send --per-session add_process
calls one after another (start: false, so the figure is admission and circusd's `add`, not
process start-up), all sessions at once behind a barrier; then the same sessions remove every
watcher with remove_process. Rounds alternate between the binaries (A B A B …) so that drift on
a shared machine hits both alike. Prints adds/s and removes/s (median over rounds) and per-call
latency, and the current/baseline ratio. Every add must succeed and circusd must end empty.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from harness import SLEEP, Circusd, Warden, base_config, circus_call, private_dir, warden_bin  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


def phase(clients: list, calls_of: list[list[tuple[str, dict]]]) -> tuple[float, list[float]]:
    """Each session sends its calls one after another; all sessions start together. Returns the
    wall time and every call's latency (ms). Raises on any failed call."""
    barrier = threading.Barrier(len(clients) + 1)
    lat: list[list[float]] = [[] for _ in clients]

    def run(i: int) -> None:
        async def go(session):
            for tool, args in calls_of[i]:
                t0 = time.perf_counter()
                r = await session.call_tool(tool, args)
                lat[i].append((time.perf_counter() - t0) * 1000)
                if r.is_error:
                    raise RuntimeError(f"{tool} {args.get('name')} failed: {r.structured_content or r.content}")

        barrier.wait(60)
        clients[i].run(go, 600)

    with ThreadPoolExecutor(len(clients)) as pool:
        futs = [pool.submit(run, i) for i in range(len(clients))]
        barrier.wait(60)
        t0 = time.perf_counter()
        for f in futs:
            f.result()
        wall = time.perf_counter() - t0
    return wall, [x for xs in lat for x in xs]


class Target:
    def __init__(self, label: str, binary: str, circus: Circusd, work: Path, sessions: int):
        self.label = label
        self.binary = binary
        os.environ["CIRCUS_WARDEN_BIN"] = binary
        cfg = base_config(circus, work, log={"format": "human", "level": "warn"},
                          circus={"mutation_timeout_ms": 30000, "connect_timeout_ms": 5000})
        self.warden = Warden(cfg, work / label, f"bench-adm-{label}")
        self.warden.start_http()
        self.clients = [self.warden.http_client() for _ in range(sessions)]
        self.adds: list[float] = []
        self.removes: list[float] = []
        self.add_lat: list[float] = []

    def round(self, circus: Circusd, per_session: int) -> None:
        names = [[f"b-{uuid.uuid4().hex[:12]}" for _ in range(per_session)] for _ in self.clients]
        n = sum(len(x) for x in names)
        wall, lat = phase(self.clients, [[("add_process", {"name": nm, "command": SLEEP, "args": ["3600"], "start": False})
                                          for nm in xs] for xs in names])
        held = set(circus_call(circus.endpoint, "list")["watchers"])
        missing = {nm for xs in names for nm in xs} - held
        if missing:
            raise RuntimeError(f"{len(missing)} added watchers are not in circusd")
        self.adds.append(n / wall)
        self.add_lat += lat
        wall, _ = phase(self.clients, [[("remove_process", {"name": nm}) for nm in xs] for xs in names])
        self.removes.append(n / wall)
        left = circus_call(circus.endpoint, "list")["watchers"]
        if left:
            raise RuntimeError(f"watchers left after removal: {left[:5]} …")

    def close(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self.warden.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=warden_bin(), help="the current warden binary")
    ap.add_argument("--baseline", default=os.environ.get("BASELINE_BIN") or None,
                    help="a baseline warden binary to measure in the same run (default: $BASELINE_BIN; none when unset)")
    ap.add_argument("--sessions", type=int, default=8, help="concurrent HTTP sessions (default 8)")
    ap.add_argument("--per-session", type=int, default=40, help="adds per session per round (default 40)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per binary (default 5)")
    # `make bench` passes the same BENCH_ARGS to bench_status.py (--n, --budget): ignore those.
    args, _ = ap.parse_known_args()
    bins = [("current", args.bin)] + ([("baseline", args.baseline)] if args.baseline else [])
    for label, b in bins:
        if not os.path.exists(b):
            print(f"{label} warden binary not found: {b}", file=sys.stderr)
            return 2

    logging.getLogger("mcp").setLevel(logging.ERROR)
    circus = Circusd().start()
    work = private_dir("cw-bench-adm-")
    targets: list[Target] = []
    try:
        targets = [Target(label, b, circus, work, args.sessions) for label, b in bins]
        for t in targets:  # warm-up: connections, policy, circusd
            t.round(circus, 2)
            t.adds.clear(), t.removes.clear(), t.add_lat.clear()
        for _ in range(args.rounds):
            for t in targets:
                t.round(circus, args.per_session)

        n = args.sessions * args.per_session
        print()
        print(f"add_process throughput: {args.sessions} HTTP sessions x {args.per_session} adds (start: false), "
              f"{n} per round, median of {args.rounds} rounds; then the same sessions remove them")
        print(f"{'binary':<10}{'adds/s':>10}{'range':>17}{'add p50 ms':>12}{'p90':>9}{'p99':>9}{'removes/s':>11}  path")
        for t in targets:
            lo, hi = min(t.adds), max(t.adds)
            print(f"{t.label:<10}{statistics.median(t.adds):>10.1f}{f'{lo:.0f}-{hi:.0f}':>17}"
                  f"{pct(t.add_lat, 50):>12.2f}{pct(t.add_lat, 90):>9.2f}{pct(t.add_lat, 99):>9.2f}"
                  f"{statistics.median(t.removes):>11.1f}  {t.binary}")
        if len(targets) == 2:
            cur, base = (statistics.median(t.adds) for t in targets)
            rcur, rbase = (statistics.median(t.removes) for t in targets)
            print(f"current/baseline: adds/s {cur / base:.2f}, removes/s {rcur / rbase:.2f}")
        return 0
    finally:
        for t in targets:
            t.close()
        circus.stop()
        shutil.rmtree(circus.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
