#!/usr/bin/env python3
"""tests/deploy/hostile_smoke.py -- the isolation check of container_smoke.sh: through the
warden (MCP over HTTP), add tests/isolation/hostile.py as a managed process of the circusd
container and check that every way around the warden it tries was blocked.

The circusd container runs with the chart's profile (uid 0, gid 10001, SETUID/SETGID/KILL
only); the process runs as the policy's run-as user. It attacks, from inside the circusd
container: the control and pubsub sockets (a ZMTP `add` that would touch a canary as root,
then replacing the socket), the shared directories (/run/circus, /var/log/circus-warden: list
and create), files in them and circus.ini (read, append, truncate, delete), and circusd
itself (signals, /proc/PID/environ, ptrace), as well as tini (pid 1). Checks:
  - the process's output (get_logs) reaches `DONE`, every ATTEMPT line says BLOCKED, and
    there is one line per attempt the arguments ask for;
  - the canary does not exist in the circusd container;
  - circusd (raw DEALER on the shared control socket from the host) holds exactly the
    expected watchers: the hostile one, no `hostile-bypass`;
  - the process runs as the run-as user: /proc/PID/status in the circusd container (docker
    exec) has that uid and gid everywhere and only that user's group, none of the warden's;
    circus `stats` agrees.

  hostile_smoke.py --url URL --token TOKEN --host-control PATH --container NAME [--user circus-run]

Runs with .venv/bin/python (the `mcp` SDK, pyzmq); reuses pod_boot.py's MCP and DEALER
helpers. Bounded: every wait has a deadline, and the whole run has a watchdog.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pod_boot import Dealer, dump, mcp_session, wait_for  # noqa: E402

WATCHDOG_S = 120
NAME = "hostile"
SCRIPT = "/opt/isolation/hostile.py"
CONTROL, PUBSUB = "/run/circus/control.sock", "/run/circus/pubsub.sock"
OUTPUT_DIR = "/var/log/circus-warden"
CANARY = "/tmp/hostile-canary"
WARDEN_GROUP = 10001


def log(msg: str) -> None:
    print(f"[hostile {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fail(msg: str) -> None:
    raise SystemExit(f"[hostile] FAILED: {msg}")


def docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/docker", *args], capture_output=True, text=True, timeout=30)


def creds(container: str, pid: int) -> dict[str, list[int]]:
    r = docker("exec", container, "cat", f"/proc/{pid}/status")
    if r.returncode != 0:
        fail(f"docker exec cat /proc/{pid}/status: {r.stderr}")
    out = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = sorted(int(v) for v in value.split()) if key == "Groups" else [int(v) for v in value.split()]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--host-control", required=True, help="the control socket's path on the host")
    ap.add_argument("--container", required=True, help="the circusd container")
    ap.add_argument("--uid", type=int, default=10002, help="the run-as user's uid (circus-run)")
    ap.add_argument("--gid", type=int, default=10002)
    a = ap.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: fail(f"watchdog: still running after {WATCHDOG_S}s"))
    signal.alarm(WATCHDOG_S)

    dealer = Dealer(f"ipc://{a.host_control}")
    before = dealer.call("list")["watchers"]
    circusd_pid = dealer.call("dstats")["info"]["pid"]  # in the container's pid namespace
    log(f"circusd is pid {circusd_pid} in its container, user {dealer.call('dstats')['info'].get('username')}; "
        f"watchers {before}")
    args = [SCRIPT, "--control", CONTROL, "--pubsub", PUBSUB, "--canary", CANARY,
            "--dir", "/run/circus", "--dir", OUTPUT_DIR,
            "--file", f"{OUTPUT_DIR}/{NAME}/stdout.log", "--file", f"{OUTPUT_DIR}/.circus-warden-positions.json",
            "--file", "/etc/circus/circus.ini",
            "--signal", "1", "--signal", str(circusd_pid), "--environ", str(circusd_pid), "--ptrace", str(circusd_pid)]
    # control-add, pubsub, 2 per --dir, 4 per --file, 2 per --signal, environ, ptrace, replace-socket
    expected_attempts = 1 + 1 + 2 * 2 + 4 * 3 + 2 * 2 + 1 + 1 + 1

    async def steps(session):
        added = dump(await session.call_tool("add_process", {"name": NAME, "command": "/usr/bin/python3", "args": args}))
        if added["isError"]:
            fail(f"add_process of the hostile program failed: {added}")
        log(f"MCP add_process /usr/bin/python3 {' '.join(args)} -> ok")
        deadline = time.monotonic() + 30
        while True:
            got = dump(await session.call_tool("get_logs", {"name": NAME}))
            if got["isError"]:
                fail(f"get_logs {NAME}: {got}")
            lines = [e["text"] for e in got["structuredContent"]["entries"]]
            if any(line.startswith("DONE") for line in lines):
                break
            if time.monotonic() > deadline:
                fail(f"no DONE from the hostile process within 30 s: {lines}")
            await asyncio.sleep(0.3)
        for line in lines:
            print(f"    {line}")
        start = [line for line in lines if line.startswith("START ")]
        if not start or f"uid={a.uid} gid={a.gid}" not in start[0]:
            fail(f"the hostile process reports {start}, want uid={a.uid} gid={a.gid}")
        attempts = [line for line in lines if line.startswith("ATTEMPT ")]
        succeeded = [line for line in attempts if " SUCCEEDED" in line]
        if succeeded:
            fail(f"{len(succeeded)} attempt(s) around the warden succeeded: {succeeded}")
        if len(attempts) != expected_attempts or f"DONE {expected_attempts}" not in lines:
            fail(f"{len(attempts)} ATTEMPT lines, want {expected_attempts}")
        log(f"all {len(attempts)} attempts BLOCKED")

        if docker("exec", a.container, "test", "-e", CANARY).returncode == 0:
            fail(f"the canary {CANARY} exists: circusd ran a command the warden never saw")
        watchers = dealer.call("list")["watchers"]
        if sorted(watchers) != sorted(before + [NAME]):
            fail(f"circusd holds {watchers}, want {sorted(before + [NAME])}")
        log(f"no canary; circusd (raw DEALER, so the control socket is still circusd's) holds {watchers}")

        pids = wait_for(lambda: dealer.call("list", name=NAME).get("pids"), 10, "the hostile process's pid")
        for pid in pids:
            c = creds(a.container, pid)
            want = {"Uid": [a.uid] * 4, "Gid": [a.gid] * 4, "Groups": [a.gid]}
            if c != want or WARDEN_GROUP in c["Groups"]:
                fail(f"pid {pid} runs with {c}, want {want}")
        stats = dealer.call("stats", name=NAME)["info"]
        users = {str(v.get("username")) for v in stats.values() if isinstance(v, dict)}
        log(f"/proc/{pids[0]}/status in the circusd container: {c}; circus stats: user {sorted(users)}")
        removed = dump(await session.call_tool("remove_process", {"name": NAME}))
        if removed["isError"]:
            fail(f"remove_process {NAME}: {removed}")
        wait_for(lambda: NAME not in dealer.call("list")["watchers"], 20, "the hostile watcher to be removed")
        log("MCP remove_process -> ok")

    asyncio.run(asyncio.wait_for(mcp_session(a.url, {"Authorization": f"Bearer {a.token}"}, steps), 90))
    log("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
