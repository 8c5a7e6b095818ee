"""Test harness for the circus-warden end-to-end suite and the benchmark.

Owns everything that talks to real processes, independent of pytest:
  * `Circusd`: a real circusd on private ipc:// endpoints (0700 temp dir, umask 077,
    no statsd, multicast discovery disabled), owned as a plain subprocess;
  * `circus_call` / `CircusClient`: raw ZMQ DEALER requests to circusd (one JSON frame),
    used to verify effects independently of the warden;
  * `Warden`: the circus-warden binary over HTTP (`serve --transport http`), and the
    stdio launch parameters for the MCP SDK;
  * `McpClient`: a synchronous wrapper over the official MCP Python SDK (v2) client
    (`stdio_client` / `streamable_http_client` + `ClientSession`), running its event loop
    in a background thread so tests stay plain synchronous functions;
  * `RawHttp`: raw HTTP (http.client) for requests the SDK cannot make (bad Host, batches,
    malformed JSON, huge bodies, missing tokens);
  * small helpers: YAML emitter, free ports, polling, result assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil
import zmq

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
CIRCUSD = str(VENV_BIN / "circusd")


def warden_bin() -> str:
    return os.environ.get("CIRCUS_WARDEN_BIN", str(REPO / "target" / "release" / "circus-warden"))


def canonical_exe(name: str, *candidates: str) -> str:
    """Canonical absolute path of a program (first existing candidate, else PATH lookup)."""
    for c in candidates:
        if c and os.path.exists(c):
            return os.path.realpath(c)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found")
    return os.path.realpath(found)


SLEEP = canonical_exe("sleep", "/usr/bin/sleep", "/bin/sleep")
PYTHON = canonical_exe("python3", str(VENV_BIN / "python3"), "/usr/bin/python3")


# --------------------------------------------------------------------------- utilities


class Abort(Exception):
    """Raised by a polled predicate to stop polling at once (e.g. the process died)."""


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `pred` until it returns a truthy value or the deadline passes (then AssertionError)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Abort:
            raise
        except Exception as e:  # noqa: BLE001 - polling tolerates transient errors
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_dir(prefix: str = "cw-") -> Path:
    """A fresh 0700 directory under /tmp (short path: ipc socket paths are limited to ~107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o700)
    return Path(os.path.realpath(d))


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Tiny YAML emitter for config dicts: block mappings/sequences, JSON-quoted scalars."""
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        lines = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {to_yaml(v, 0)}")
        return "\n".join(lines)
    if isinstance(obj, list):
        if not obj:
            return "[]"
        lines = []
        for v in obj:
            if isinstance(v, dict) and v:
                inner = to_yaml(v, indent + 1).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {to_yaml(v, 0)}")
        return "\n".join(lines)
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, (int, float)):
        return json.dumps(obj)
    return json.dumps(str(obj))


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def pid_alive(pid: int) -> bool:
    """True if the pid exists and is not a zombie."""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------- circusd


class CircusError(Exception):
    pass


class CircusClient:
    """One persistent DEALER socket to circusd's control endpoint (like circus's own client)."""

    def __init__(self, endpoint: str, timeout: float = 5.0):
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = zmq.Context.instance()
        self._sock = None
        self._open()

    def _open(self) -> None:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, uuid.uuid4().hex.encode())
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        self._sock = s

    def call(self, command: str, _timeout: float | None = None, **properties: Any) -> dict:
        """Send one request, return the reply dict (raises TimeoutError; never raises on errno)."""
        rid = uuid.uuid4().hex
        msg = {"id": rid, "command": command, "properties": properties}
        timeout = self.timeout if _timeout is None else _timeout
        assert self._sock is not None
        self._sock.send(json.dumps(msg).encode())
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                # drop the socket: a late reply must not confuse the next call
                self._sock.close(0)
                self._open()
                raise TimeoutError(f"circusd {self.endpoint} did not answer {command!r} within {timeout}s")
            reply = json.loads(self._sock.recv())
            if reply.get("id") == rid:
                return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


def circus_call(endpoint: str, command: str, _timeout: float = 5.0, **properties: Any) -> dict:
    """One raw DEALER request to circusd; returns the reply; raises CircusError on status=error."""
    c = CircusClient(endpoint, _timeout)
    try:
        reply = c.call(command, **properties)
    finally:
        c.close()
    if reply.get("status") == "error":
        raise CircusError(f"{command} {properties}: errno {reply.get('errno')}: {reply.get('reason')}")
    return reply


def circus_ok(endpoint: str, timeout: float = 1.0) -> bool:
    try:
        circus_call(endpoint, "list", _timeout=timeout)
        return True
    except Exception:  # noqa: BLE001
        return False


def watcher_names(endpoint: str) -> list[str]:
    return circus_call(endpoint, "list")["watchers"]


def watcher_exists(endpoint: str, name: str) -> bool:
    return name.lower() in [w.lower() for w in watcher_names(endpoint)]


def watcher_pids(endpoint: str, name: str) -> list[int]:
    return sorted(int(p) for p in circus_call(endpoint, "list", name=name)["pids"])


def watcher_status(endpoint: str, name: str) -> str:
    return circus_call(endpoint, "status", name=name)["status"]


def watcher_options(endpoint: str, name: str) -> dict:
    return circus_call(endpoint, "options", name=name)["options"]


CIRCUSD_MARKER_VAR = "CW_CIRCUSD_ENV_MARKER"
CIRCUSD_MARKER_VALUE = "circusd-private-value"


def process_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    out = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


class Circusd:
    """A real circusd owned by the caller (not --daemon), on ipc:// endpoints in a 0700 dir."""

    def __init__(self, workdir: Path | None = None, check_delay: float = 5.0):
        self.dir = workdir or private_dir("cw-circus-")
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.endpoint = f"ipc://{self.dir}/ctl.sock"
        self.pubsub_endpoint = f"ipc://{self.dir}/pub.sock"
        self.ini = self.dir / "circus.ini"
        self.log_path = self.dir / "circusd.log"
        # An empty multicast_endpoint is falsy in circus.controller.Controller.initialize,
        # so the UDP discovery socket is never created. stats_endpoint is left unset:
        # setting it would force statsd on (circus/config.py).
        self.ini.write_text(
            "[circus]\n"
            f"endpoint = {self.endpoint}\n"
            f"pubsub_endpoint = {self.pubsub_endpoint}\n"
            "multicast_endpoint =\n"
            "statsd = False\n"
            "umask = 077\n"
            f"check_delay = {check_delay}\n"
            "loglevel = info\n"
        )
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._known_children: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> "Circusd":
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        # must never reach a managed process (the warden sends copy_env false)
        env[CIRCUSD_MARKER_VAR] = CIRCUSD_MARKER_VALUE
        self.proc = subprocess.Popen(
            [CIRCUSD, str(self.ini)],
            cwd=str(self.dir),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise Abort(f"circusd exited with {self.proc.returncode}: {self.log_tail()}")
            return circus_ok(self.endpoint, 0.5)

        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"circusd did not answer on {self.endpoint} within {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def call(self, command: str, **props: Any) -> dict:
        return circus_call(self.endpoint, command, **props)

    def children(self) -> list[int]:
        try:
            kids = [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            kids = []
        self._known_children.update(kids)
        return kids

    def kill9(self) -> None:
        """SIGKILL circusd and the processes it was running (they live in their own sessions)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        kids = self.children()
        self.proc.kill()
        self.proc.wait(10)
        kill_pids(kids)

    def sigstop(self, timeout: float = 5.0) -> None:
        """SIGSTOP circusd and wait until every thread is really stopped.

        kill() returns before a group stop completes: until the thread that dequeues SIGSTOP
        runs, the others (libzmq's I/O thread included) keep going, which on a loaded box is
        long enough to finish a ZMTP handshake. Poll /proc until all tasks are in state T."""
        os.kill(self.pid, signal.SIGSTOP)

        def all_stopped() -> bool:
            states = []
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                stat = (task / "stat").read_text()
                states.append(stat.rsplit(")", 1)[1].split()[0])
            return bool(states) and all(s in ("T", "t") for s in states)

        wait_for(all_stopped, timeout, 0.005, "circusd fully stopped")

    def sigcont(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """quit, then SIGKILL if it lingers; also kills any child left behind."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.sigcont()
            self.children()
            with contextlib.suppress(Exception):
                circus_call(self.endpoint, "quit", _timeout=2.0)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        kill_pids(p for p in self._known_children if pid_alive(p))
        if self._log:
            self._log.close()
            self._log = None

    def restart_same_endpoints(self, timeout: float = 20.0) -> None:
        """Start a new circusd on the same endpoints (after a kill)."""
        if self._log:
            self._log.close()
        self.start(timeout)


class DelayProxy:
    """A ZMQ ROUTER in front of circusd that forwards everything, holding back chosen commands.

    Simulates a circusd that accepted a request but is slow to act on it: messages whose
    `command` is in `delay_commands` reach circusd only after `delay` seconds. Runs in a thread.
    """

    def __init__(self, front: str, back: str, delay_commands: set[str], delay: float):
        self.front = front
        self.back = back
        self.delay_commands = {c.lower() for c in delay_commands}
        self.delay = delay
        self.delivered: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self.front)
        backs: dict[bytes, zmq.Socket] = {}
        queue: list[tuple[float, bytes, bytes]] = []
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        self._ready.set()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for item in [q for q in queue if q[0] <= now]:
                    queue.remove(item)
                    _, ident, frame = item
                    backs[ident].send(frame)
                    self.delivered.append((time.monotonic(), frame.decode(errors="replace")))
                timeout = 50
                for sock, _ in poller.poll(timeout):
                    if sock is router:
                        ident, frame = router.recv_multipart()[:2]
                        if ident not in backs:
                            b = ctx.socket(zmq.DEALER)
                            b.setsockopt(zmq.LINGER, 0)
                            b.connect(self.back)
                            backs[ident] = b
                            poller.register(b, zmq.POLLIN)
                        try:
                            cmd = str(json.loads(frame).get("command", "")).lower()
                        except (ValueError, AttributeError):
                            cmd = ""
                        due = time.monotonic() + (self.delay if cmd in self.delay_commands else 0.0)
                        queue.append((due, ident, frame))
                    else:
                        reply = sock.recv()
                        for ident, b in backs.items():
                            if b is sock:
                                router.send_multipart([ident, reply])
                                break
        finally:
            router.close(0)
            for b in backs.values():
                b.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- warden


def e2e_policy(workroot: Path) -> dict:
    """The policy document every e2e warden gets unless a test says otherwise.

    It allows what the suite needs and no more than the interim gate did: `sleep` and the venv's
    `python3` with any arguments (so that denials in the suite come from the checks under test,
    not from argument shapes), working directories under `workroot`, the `FOO`/`LANG`/`TZ`
    variables, at most 4 processes per watcher, `graceful_timeout` 2 s by default (the old
    `gate.graceful_timeout_s: 2`), and one identity, `local` (stdio callers, and HTTP callers
    when no tokens are configured), acting only on the watchers it created.

    Processes run as root (`run_as` with `allow_root`): the suite's interpreter lives in the
    venv, which may sit under a directory other users cannot enter (/root). The isolation
    tests (test_isolation.py) run theirs under the unprivileged run-as user."""
    return {
        "version": 1,
        "search_path": ["/usr/local/bin", "/usr/bin", "/bin"],
        "limits": {
            "max_watchers": 512,
            "max_total_processes": 1024,
            "max_processes": 4,
            "max_args": 64,
            "max_arg_bytes": 4096,
            "max_env": 32,
            "max_env_value_bytes": 4096,
        },
        "watchers": {"names": ["*"], "protected": []},
        "signals": ["HUP", "INT", "TERM", "QUIT", "USR1", "USR2"],
        "options": {
            "graceful_timeout": {"min": 1, "max": 60, "default": 2},
            "max_retry": {"min": 0, "max": 10},
            "warmup_delay": {"min": 0, "max": 30},
            "respawn": {},
        },
        "env": ["FOO", "LANG", "TZ"],
        "working_dirs": [str(workroot)],
        "run_as": {"uid": 0, "gid": 0, "allow_root": True},
        "programs": [
            {"id": "sleep", "path": SLEEP, "args": {"rest": {"match": "**"}}},
            {"id": "python", "path": PYTHON,
             "args": {"flags": {"-c": {"value": {"match": "**"}}}, "rest": {"match": "**"}}},
        ],
        "identities": {
            "local": {"tools": ["*"], "programs": ["*"], "watchers": "owned"},
        },
    }


def base_config(circusd: Circusd | None, workroot: Path, policy_document: dict | None = None, **over: Any) -> dict:
    """A warden config pointed at `circusd` (or embedded when None) with the e2e policy.

    `over` holds top-level sections (circus=, server=, policy=, audit=, log=) deep-merged over
    the base. `policy.document` is the policy itself (deep-merged over `e2e_policy`; lists are
    replaced): `Warden` writes it to `policy.yaml` in its private directory and points
    `policy.path` at it, and puts `audit.path` there too unless the test set one.
    `policy_document` replaces the e2e policy instead (then `policy.document` still merges)."""
    cfg: dict[str, Any] = {
        "circus": {
            "endpoint": circusd.endpoint if circusd else None,
            "connect_timeout_ms": 1000,
            "read_timeout_ms": 3000,
            "mutation_timeout_ms": 15000,
            "reconcile_interval_ms": 1000,
        },
        "server": {
            "transport": "stdio",
        },
        "policy": {"document": policy_document if policy_document is not None else e2e_policy(workroot)},
        "log": {"format": "human", "level": "debug"},
    }
    return deep_merge(cfg, over)


def write_policy(path: Path, doc: dict | str) -> None:
    """Write a policy file atomically (a reload never sees half a file). A dict is written as
    JSON, which is YAML."""
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the series `name{labels...}` in a Prometheus text exposition (label order
    and extra labels do not matter), or 0.0 when no series matches."""
    total = None
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(got.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(value)
    return total or 0.0


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The warden's environment: ours minus any CIRCUS_WARDEN_* plus .venv/bin on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUS_WARDEN_")}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.setdefault("RUST_BACKTRACE", "1")
    env.update(extra or {})
    return env


class Warden:
    """One circus-warden process started with a generated YAML config."""

    registry: list["Warden"] = []  # live instances, for per-test stderr slices

    log_dir: Path | None = None  # set by conftest: keep stderr logs outside the temp dirs

    def __init__(self, config: dict, workdir: Path, label: str, env: dict[str, str] | None = None):
        self.dir = workdir
        self.label = label
        self.closed = False
        self.dir.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(config)
        policy = config.setdefault("policy", {})
        self.policy_path: Path | None = None
        if "document" in policy:
            self.policy_path = self.dir / f"{label}.policy.yaml"
            write_policy(self.policy_path, policy.pop("document"))
            policy["path"] = str(self.policy_path)
        elif policy.get("path"):
            self.policy_path = Path(policy["path"])
        output = config.setdefault("output", {})
        output.setdefault("dir", str(self.dir / "output"))
        audit = config.setdefault("audit", {})
        if "path" not in audit:
            audit["path"] = str(self.dir / f"{label}.audit.log")
        self.audit_path: Path | None = Path(audit["path"]) if audit["path"] else None
        self.config = config
        self.config_path = self.dir / f"{label}.yaml"
        self.config_path.write_text(to_yaml(config) + "\n")
        log_dir = Warden.log_dir or self.dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{label}-{uuid.uuid4().hex[:8]}.stderr.log"
        self.env = clean_env(env)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._log = None
        Warden.registry.append(self)

    # -- stdio: parameters for the SDK's stdio_client
    def stdio_params(self):
        from mcp.client.stdio import StdioServerParameters

        return StdioServerParameters(
            command=warden_bin(),
            args=["serve", "--config", str(self.config_path), "--transport", "stdio"],
            env=self.env,
            cwd=str(self.dir),
        )

    def stdio_client(self, **kw: Any) -> "McpClient":
        return McpClient.stdio(self.stdio_params(), errlog_path=self.log_path, **kw)

    # -- http
    def start_http(self, timeout: float = 30.0, extra_args: list[str] | None = None) -> "Warden":
        last = None
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [warden_bin(), "serve", "--config", str(self.config_path), "--transport", "http",
                 "--bind", f"127.0.0.1:{self.port}", *(extra_args or [])],
                cwd=str(self.dir),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                env=self.env,
            )
            try:
                wait_for(self._healthy, timeout, 0.05, f"{self.label} /healthz")
                return self
            except (AssertionError, Abort) as e:
                last = e
                self.stop()
                if "in use" not in self.log_tail(20).lower():
                    break
        raise RuntimeError(f"warden {self.label} did not become healthy: {last}\n{self.log_tail()}")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise Abort(f"warden exited with {self.proc.returncode}")
        status, _, _ = self.http().request("GET", "/healthz", timeout=1.0)
        return status == 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def http(self) -> "RawHttp":
        assert self.port is not None
        return RawHttp("127.0.0.1", self.port)

    def http_client(self, headers: dict[str, str] | None = None, **kw: Any) -> "McpClient":
        return McpClient.http(self.url, headers=headers, **kw)

    def readyz(self) -> int:
        return self.http().request("GET", "/readyz", timeout=5.0)[0]

    def metrics_text(self) -> str:
        status, _, body = self.http().request("GET", "/metrics", timeout=5.0)
        assert status == 200, f"GET /metrics: HTTP {status}: {body[:300]!r}"
        return body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one series on /metrics (0 when absent: counters start unexported)."""
        return metric_value(self.metrics_text(), name, **labels)

    def write_policy(self, doc: dict | str) -> None:
        assert self.policy_path is not None, "this warden has no generated policy file"
        write_policy(self.policy_path, doc)

    def audit_records(self) -> list[dict]:
        """Every JSON line of the audit log (decision and outcome records)."""
        assert self.audit_path is not None
        if not self.audit_path.exists():
            return []
        return [json.loads(ln) for ln in self.audit_path.read_text().splitlines() if ln.strip()]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode if self.proc else None

    def close(self) -> None:
        """Stop the process; the registry entry is pruned by whoever reads the logs (conftest)."""
        self.stop()
        self.closed = True
        if Warden.log_dir is None:
            with contextlib.suppress(ValueError):
                Warden.registry.remove(self)


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([warden_bin(), *args], cwd=str(cwd), env=clean_env(env), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- MCP client (SDK)


def _dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


class McpClient:
    """Synchronous facade over the SDK's ClientSession; its event loop runs in a thread."""

    def __init__(self, open_transport: Callable[[], Any], label: str, timeout: float = 60.0):
        self._open_transport = open_transport
        self.label = label
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"mcp-{label}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"MCP {label}: initialize did not finish within {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"MCP {label}: could not connect: {self._error!r}") from self._error

    @classmethod
    def stdio(cls, params: Any, errlog_path: Path | None = None, timeout: float = 60.0) -> "McpClient":
        from mcp.client.stdio import stdio_client

        def open_transport():
            if errlog_path:
                errlog_path.parent.mkdir(parents=True, exist_ok=True)
            errlog = open(errlog_path, "a") if errlog_path else open(os.devnull, "w")

            @contextlib.asynccontextmanager
            async def cm():
                try:
                    async with stdio_client(params, errlog=errlog) as streams:
                        yield streams
                finally:
                    errlog.close()

            return cm()

        return cls(open_transport, "stdio", timeout)

    @classmethod
    def http(cls, url: str, headers: dict[str, str] | None = None, timeout: float = 60.0) -> "McpClient":
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        def open_transport():
            @contextlib.asynccontextmanager
            async def cm():
                async with httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30.0, read=300.0)) as hc:
                    async with streamable_http_client(url, http_client=hc) as streams:
                        yield streams[0], streams[1]

            return cm()

        return cls(open_transport, "http", timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from mcp import ClientSession

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with self._open_transport() as (read, write):
                async with ClientSession(read, write) as session:
                    self.init_result = await session.initialize()
                    self.session = session
                    self._ready.set()
                    await self._stop.wait()
        except BaseException as e:  # noqa: BLE001 - reported to the caller thread
            if not self._ready.is_set():
                self._error = e
        finally:
            self._ready.set()

    def run(self, fn: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """Run `fn(session)` (a coroutine factory) on the client loop and wait for its result."""
        assert self.loop is not None and self.session is not None
        fut = asyncio.run_coroutine_threadsafe(fn(self.session), self.loop)
        try:
            return fut.result(self.timeout if timeout is None else timeout)
        except TimeoutError:
            fut.cancel()
            raise

    # -- convenience wrappers returning plain JSON dicts
    def call_tool(self, name: str, arguments: dict | None = None, timeout: float | None = None) -> dict:
        res = self.run(lambda s: s.call_tool(name, arguments or {}), timeout)
        d = _dump(res)
        d.setdefault("isError", False)
        return d

    def list_tools(self) -> list[dict]:
        return [_dump(t) for t in self.run(lambda s: s.list_tools()).tools]

    def list_resources(self) -> list[dict]:
        return [_dump(r) for r in self.run(lambda s: s.list_resources()).resources]

    def list_resource_templates(self) -> list[dict]:
        return [_dump(r) for r in self.run(lambda s: s.list_resource_templates()).resource_templates]

    def read_resource(self, uri: str) -> dict:
        return _dump(self.run(lambda s: s.read_resource(uri)))

    def list_prompts(self) -> list[dict]:
        return [_dump(p) for p in self.run(lambda s: s.list_prompts()).prompts]

    def get_prompt(self, name: str, arguments: dict[str, str]) -> dict:
        return _dump(self.run(lambda s: s.get_prompt(name, arguments)))

    def ping(self) -> None:
        self.run(lambda s: s.send_ping())

    def close(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def __enter__(self) -> "McpClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- raw HTTP


PROTOCOL_VERSION = "2025-06-18"
MCP_ACCEPT = "application/json, text/event-stream"


class RawHttp:
    """Plain HTTP/1.1 requests (one connection each) for what the SDK cannot send."""

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.session_id: str | None = None
        self.token: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 15.0, chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            skip_host = any(k.lower() == "host" for k in hdrs)
            conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            if body is not None and not chunked:
                conn.putheader("Content-Length", str(len(body)))
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            try:
                conn.endheaders()
                if body is not None:
                    if chunked:
                        step = 16384
                        for i in range(0, len(body), step):
                            part = body[i:i + step]
                            conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                        conn.send(b"0\r\n\r\n")
                    else:
                        conn.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer (413) and close before reading the whole body
            resp = conn.getresponse()
            data = self._read_body(resp)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    @staticmethod
    def _read_body(resp: http.client.HTTPResponse) -> bytes:
        ctype = resp.getheader("content-type", "")
        if "text/event-stream" not in ctype:
            return resp.read()
        # SSE: read events until the first one carrying a JSON-RPC response (the stream may stay open)
        out = []
        while True:
            try:
                line = resp.readline()
            except (TimeoutError, socket.timeout):
                break
            if not line:
                break
            out.append(line)
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                with contextlib.suppress(ValueError):
                    msg = json.loads(payload)
                    if isinstance(msg, (dict, list)) and (isinstance(msg, list) or "result" in msg or "error" in msg):
                        break
        return b"".join(out)

    def mcp_headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": MCP_ACCEPT, "MCP-Protocol-Version": PROTOCOL_VERSION}
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(extra or {})
        return h

    def post_mcp(self, payload: Any | bytes, headers: dict[str, str] | None = None, timeout: float = 15.0,
                 chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", "/mcp", body, self.mcp_headers(headers), timeout, chunked)

    @staticmethod
    def messages(body: bytes) -> list[Any]:
        """JSON-RPC messages in a JSON or SSE body."""
        text = body.decode(errors="replace").strip()
        if not text:
            return []
        if text.startswith("{") or text.startswith("["):
            with contextlib.suppress(ValueError):
                return [json.loads(text)]
        msgs = []
        for line in text.splitlines():
            if line.startswith("data:"):
                with contextlib.suppress(ValueError):
                    msgs.append(json.loads(line[5:].strip()))
        return msgs

    def initialize(self) -> dict:
        status, headers, body = self.post_mcp({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                       "clientInfo": {"name": "raw-e2e", "version": "0"}},
        })
        if status != 200:
            raise AssertionError(f"initialize: HTTP {status}: {body[:500]!r}")
        self.session_id = headers.get("mcp-session-id")
        msgs = self.messages(body)
        st, _, b = self.post_mcp({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if st not in (200, 202, 204):
            raise AssertionError(f"initialized notification: HTTP {st}: {b[:300]!r}")
        return msgs[0] if msgs else {}

    def rpc(self, method: str, params: dict | None = None, rid: int = 7, timeout: float = 15.0) -> tuple[int, list[Any]]:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        status, _, body = self.post_mcp(msg, timeout=timeout)
        return status, self.messages(body)


# --------------------------------------------------------------------------- result assertions


def ok(res: dict) -> dict:
    """Assert a successful tool result; return its structuredContent."""
    assert res.get("isError") is not True, f"tool failed: {json.dumps(res)[:2000]}"
    sc = res.get("structuredContent")
    assert isinstance(sc, dict), f"missing structuredContent: {json.dumps(res)[:2000]}"
    return sc


def field_matches(actual: str, expected: str) -> bool:
    a = actual.lower()
    e = expected.lower()
    return a == e or a.startswith(e + ".") or a.startswith(e + "[") or a.startswith(e + "/")


def tool_error(res: dict, kinds: Iterable[str], field: str | None = None) -> dict:
    """Assert a failed tool result with the contract's error shape; return the error object."""
    kinds = tuple(kinds)
    assert res.get("isError") is True, f"expected isError, got: {json.dumps(res)[:2000]}"
    sc = res.get("structuredContent")
    assert isinstance(sc, dict) and isinstance(sc.get("error"), dict), f"error without structuredContent.error: {json.dumps(res)[:2000]}"
    err = sc["error"]
    assert err.get("kind") in kinds, f"kind {err.get('kind')!r} not in {kinds}: {json.dumps(err)[:2000]}"
    assert isinstance(err.get("message"), str) and err["message"], f"empty message: {err}"
    assert isinstance(err.get("retryable"), bool), f"retryable missing/not bool: {err}"
    for v in err.get("violations") or []:
        assert {"field", "rule", "message"} <= set(v), f"violation shape: {v}"
    if field is not None:
        vs = err.get("violations") or []
        assert any(field_matches(str(v.get("field", "")), field) for v in vs), (
            f"no violation names field {field!r}: {json.dumps(err)[:2000]}")
    return err


def resource_json(read_result: dict) -> Any:
    contents = read_result.get("contents") or []
    assert contents, f"empty resource: {read_result}"
    text = contents[0].get("text")
    assert isinstance(text, str), f"resource is not text: {contents[0]}"
    return json.loads(text)


def unique_name(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


if __name__ == "__main__":  # pragma: no cover - manual smoke check
    c = Circusd().start()
    print(c.endpoint, circus_call(c.endpoint, "globaloptions"))
    c.stop()
    sys.exit(0)
