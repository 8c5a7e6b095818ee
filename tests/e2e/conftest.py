"""pytest fixtures for the circus-warden end-to-end suite.

Owns: real circusd instances (module- and function-scoped, private ipc:// endpoints),
the `circus_call` raw-DEALER helper (re-exported from harness), warden launches over stdio
(MCP SDK stdio client) and over Streamable HTTP (SDK client on /mcp), the `mcp` fixture
parametrized over both transports, and per-test capture of the warden's stderr
(slices written to target/e2e-logs/run-*/ (latest: target/e2e-logs/latest), and appended to the report of a failing test).
The process/ZMQ/MCP plumbing itself lives in harness.py.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import (  # noqa: F401 - circus_call is re-exported for tests
    REPO,
    Circusd,
    CircusError,
    McpClient,
    Warden,
    base_config,
    circus_call,
    deep_merge,
    private_dir,
    warden_bin,
)

# One directory per run (concurrent runs in one checkout must not clobber each other's logs);
# target/e2e-logs/latest points at the newest, and only the last few runs are kept.
LOG_ROOT = REPO / "target" / "e2e-logs"
ARTIFACTS = LOG_ROOT / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
KEEP = os.environ.get("E2E_KEEP") == "1"
KEEP_RUNS = 5


def pytest_sessionstart(session: pytest.Session) -> None:
    LOG_ROOT.mkdir(parents=True, exist_ok=True)
    runs = sorted(p for p in LOG_ROOT.glob("run-*") if p.is_dir())
    for old in runs[:-(KEEP_RUNS - 1)] if len(runs) >= KEEP_RUNS else []:
        shutil.rmtree(old, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    latest = LOG_ROOT / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(ARTIFACTS.name)
    except OSError:
        pass
    Warden.log_dir = ARTIFACTS / "wardens"
    if not os.path.exists(warden_bin()):
        raise pytest.UsageError(f"warden binary not found: {warden_bin()} (set CIRCUS_WARDEN_BIN or run cargo build --release)")


def _rmtree(p: Path) -> None:
    if not KEEP:
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- stderr capture


def _sizes() -> dict[int, int]:
    out = {}
    for w in Warden.registry:
        try:
            out[id(w)] = w.log_path.stat().st_size
        except OSError:
            out[id(w)] = 0
    return out


def _slices(start: dict[int, int]) -> list[tuple[str, str]]:
    out = []
    for w in list(Warden.registry):
        try:
            with open(w.log_path, "rb") as f:
                f.seek(start.get(id(w), 0))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        if text:
            out.append((w.label, text))
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item._warden_log_start = _sizes()  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for label, text in _slices(getattr(item, "_warden_log_start", {})):
            lines = [ln if len(ln) <= 600 else ln[:600] + " …" for ln in text.splitlines()[-60:]]
            rep.sections.append((f"warden stderr ({label}, last {len(lines)} lines, clipped)", "\n".join(lines)))


@pytest.fixture(autouse=True)
def _warden_stderr_per_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Write each live warden's stderr produced during this test to <run dir>/<test>--<label>.log."""
    yield
    start = getattr(request.node, "_warden_log_start", {})
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
    for label, text in _slices(start):
        (ARTIFACTS / f"{safe}--{label}.log").write_text(text)
    Warden.registry[:] = [w for w in Warden.registry if not w.closed]


# --------------------------------------------------------------------------- circusd


@pytest.fixture
def circusd() -> Iterator[Circusd]:
    """A fresh circusd for one test (fault tests kill/stop it)."""
    c = Circusd().start()
    try:
        yield c
    finally:
        c.stop()
        _keep_log(c, "circusd-fn")
        _rmtree(c.dir)


@pytest.fixture(scope="module")
def circusd_mod() -> Iterator[Circusd]:
    c = Circusd().start()
    try:
        yield c
    finally:
        c.stop()
        _keep_log(c, "circusd-mod")
        _rmtree(c.dir)


def _keep_log(c: Circusd, label: str) -> None:
    try:
        shutil.copy(c.log_path, ARTIFACTS / f"{label}-{c.dir.name}.log")
    except OSError:
        pass


@pytest.fixture
def workroot() -> Iterator[Path]:
    d = private_dir("cw-work-")
    yield d
    _rmtree(d)


@pytest.fixture(scope="module")
def workroot_mod() -> Iterator[Path]:
    d = private_dir("cw-work-")
    yield d
    _rmtree(d)


# --------------------------------------------------------------------------- warden connections


@dataclass
class Conn:
    """One warden + one SDK client session, and the circusd it manages."""

    transport: str
    warden: Warden
    client: McpClient
    circus: Circusd | None
    workroot: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        assert self.circus is not None
        return self.circus.endpoint

    def call(self, tool: str, args: dict | None = None, timeout: float | None = None) -> dict:
        return self.client.call_tool(tool, args or {}, timeout)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.warden.close()


def open_conn(transport: str, circus: Circusd | None, workroot: Path, label: str,
              config_over: dict | None = None, env: dict[str, str] | None = None,
              headers: dict[str, str] | None = None) -> Conn:
    cfg = base_config(circus, workroot, **(config_over or {}))
    wdir = private_dir("cw-warden-")
    warden = Warden(cfg, wdir, f"{label}-{transport}", env)
    try:
        if transport == "stdio":
            client = warden.stdio_client()
        else:
            warden.start_http()
            client = warden.http_client(headers)
    except BaseException:
        warden.close()
        _rmtree(wdir)
        raise
    return Conn(transport, warden, client, circus, workroot, {"wdir": wdir})


def close_conn(conn: Conn) -> None:
    try:
        conn.close()
    finally:
        _rmtree(conn.extra["wdir"])


# The interim gate's `protected_watchers: [keep-me]`, now the policy's `watchers.protected`.
MAIN_CONFIG = {"policy": {"document": {"watchers": {"names": ["*"], "protected": ["keep-me"]}}}}


@pytest.fixture(scope="module", params=["stdio", "http"])
def mcp(request: pytest.FixtureRequest, circusd_mod: Circusd, workroot_mod: Path) -> Iterator[Conn]:
    """The main fixture: a warden against the module's circusd, over each transport in turn."""
    conn = open_conn(request.param, circusd_mod, workroot_mod, request.module.__name__, MAIN_CONFIG)
    try:
        yield conn
    finally:
        close_conn(conn)


@pytest.fixture
def conn_factory() -> Iterator[Any]:
    """Open extra connections inside one test; all are closed at teardown."""
    opened: list[Conn] = []

    def make(transport: str, circus: Circusd | None, workroot: Path, label: str = "fn", **kw: Any) -> Conn:
        c = open_conn(transport, circus, workroot, label, **kw)
        opened.append(c)
        return c

    yield make
    for c in reversed(opened):
        try:
            close_conn(c)
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def warden_factory() -> Iterator[Any]:
    """Create bare Warden objects (HTTP launches, embedded mode) cleaned up at teardown."""
    made: list[tuple[Warden, Path]] = []

    def make(config: dict, label: str = "w", env: dict[str, str] | None = None) -> Warden:
        wdir = private_dir("cw-warden-")
        w = Warden(config, wdir, label, env)
        made.append((w, wdir))
        return w

    yield make
    for w, wdir in reversed(made):
        try:
            w.close()
        finally:
            _rmtree(wdir)


@pytest.fixture
def cleanup_watchers(circusd_mod: Circusd) -> Iterator[None]:
    """Remove every watcher from the module's circusd after the test (verification stays raw)."""
    yield
    try:
        names = circus_call(circusd_mod.endpoint, "list")["watchers"]
    except Exception:  # noqa: BLE001
        return
    for n in names:
        try:
            circus_call(circusd_mod.endpoint, "rm", name=n, waiting=True, _timeout=15.0)
        except (CircusError, TimeoutError):
            pass


__all__ = ["Conn", "open_conn", "close_conn", "deep_merge", "circus_call"]
