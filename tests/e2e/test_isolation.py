"""End-to-end tests of isolation, part 1: managed processes run under their own uid and cannot
reach circusd, the warden or the logs.

Owns: the embedded default as root (the warden starts circusd as root, which starts every
process as the policy's run-as user `circus-run`); a hostile allowed program
(tests/isolation/hostile.py run by /usr/bin/python3) that tries every way around the warden,
each of which must fail, checked on what the operating system and circusd hold (the canary
file, circusd's watchers over a raw DEALER, the bytes of the log files, /proc credentials);
a legitimate web server that binds a port, writes its working directory and reads /usr and
/etc; denials when the run-as user cannot use the working directory; the isolation level on
/readyz, /metrics, `config check` and the startup log; `isolation.require: uid` refusing to
start below it; and the command contract (argv, run_as, would_send) in explain and audit.
Both transports. Needs root (CI runs as root): uids can only be switched by root.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from harness import (
    REPO,
    CircusClient,
    Warden,
    base_config,
    free_port,
    kill_pids,
    metric_value,
    ok,
    run_cli,
    tool_error,
    unique_name,
    wait_for,
)

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root (CI runs as root)"),
]

RUN_USER = "circus-run"
PY = os.path.realpath("/usr/bin/python3")
HOSTILE = REPO / "tests" / "isolation" / "hostile.py"
TOKEN = "isolation-test-token-0123456789abcdef"


def run_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(RUN_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_USER],
                       check=True)
        return pwd.getpwnam(RUN_USER)


def proc_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups of a process, from /proc (what the kernel holds)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in rest.split()]
    return out


def policy(base: Path) -> dict:
    return {
        "version": 1,
        "search_path": ["/usr/local/bin", "/usr/bin", "/bin"],
        "limits": {"max_watchers": 64, "max_total_processes": 64, "max_processes": 4},
        "options": {"graceful_timeout": {"min": 1, "max": 30, "default": 2}},
        "working_dirs": [str(base / "app")],
        "run_as": {"user": RUN_USER},
        "programs": [
            {"id": "python", "path": PY,
             "args": {"flags": {"-c": {"value": {"match": "**"}}, "-m": {"value": {"match": "http.server"}}},
                      "rest": {"match": "**"}}},
            {"id": "hostile", "path": PY,
             "args": {"positional": [{"match": str(base / "bin" / "hostile.py")}], "min_positional": 1,
                      "flags": {f"--{f}": {"value": {"match": "**"}}
                                for f in ("control", "pubsub", "canary", "file", "dir", "signal", "environ", "ptrace")}}},
        ],
        "identities": {"local": {"tools": ["*"], "programs": ["*"], "watchers": "owned"}},
    }


class Setup:
    """One root warden with its embedded circusd, laid out the way an operator would."""

    def __init__(self, transport: str, require: str = "uid", tokens: bool = True, doc: dict | None = None):
        self.user = run_user()
        # Reachable by the run-as user (0755): the CI clone itself may not be.
        self.base = Path(os.path.realpath(__import__("tempfile").mkdtemp(prefix="cw-iso-", dir="/tmp")))
        os.chmod(self.base, 0o755)
        for d in ("bin", "run", "audit", "warden"):
            (self.base / d).mkdir(mode=0o755)
            os.chmod(self.base / d, 0o755)
        app = self.base / "app"
        app.mkdir()
        os.chown(app, self.user.pw_uid, self.user.pw_gid)
        shutil.copy(HOSTILE, self.base / "bin" / "hostile.py")
        os.chmod(self.base / "bin" / "hostile.py", 0o644)
        self.canary = self.base / "app" / "canary"
        self.transport = transport
        self.admin_port = free_port()
        server = {"transport": transport, "metrics_bind": f"127.0.0.1:{self.admin_port}"}
        if tokens:
            server["tokens"] = [{"identity": "local", "token": TOKEN}]
        cfg = base_config(None, self.base, policy_document=doc or policy(self.base),
                          circus={"runtime_dir": str(self.base / "run")},
                          server=server,
                          output={"dir": str(self.base / "output")},
                          audit={"path": str(self.base / "audit" / "audit.log")},
                          isolation={"require": require})
        del cfg["circus"]["endpoint"]
        self.warden = Warden(cfg, self.base / "warden", f"iso-{transport}")
        # An operator keeps the file with the tokens private; the warden checks that it is.
        os.chmod(self.warden.config_path, 0o600)
        self.client = None

    def start(self) -> "Setup":
        if self.transport == "stdio":
            self.client = self.warden.stdio_client()
        else:
            self.warden.start_http()
            self.client = self.warden.http_client({"Authorization": f"Bearer {TOKEN}"})
        return self

    def call(self, tool: str, args: dict) -> dict:
        return self.client.call_tool(tool, args, 60)

    def warden_pid(self) -> int:
        conf = str(self.warden.config_path)
        def find():
            for p in psutil.process_iter(["cmdline"]):
                if conf in (p.info["cmdline"] or []) and "serve" in p.info["cmdline"]:
                    return p.pid
            return None
        return wait_for(find, 20, what="the warden process")

    def circusd(self) -> psutil.Process:
        def find():
            for k in psutil.Process(self.warden_pid()).children(recursive=True):
                try:
                    if any("circusd" in a for a in k.cmdline()[:2]) and k.status() != psutil.STATUS_ZOMBIE:
                        return k
                except psutil.NoSuchProcess:
                    pass
            return None
        return wait_for(find, 20, what="the embedded circusd")

    def runtime_dir(self) -> Path:
        ini = next(a for a in self.circusd().cmdline() if a.endswith("circus.ini"))
        return Path(ini).parent

    def endpoint(self) -> str:
        return f"ipc://{self.runtime_dir() / 'control.sock'}"

    def readyz(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=5) as r:
            return r.read().decode()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def logs(self, name: str) -> list[str]:
        sc = ok(self.call("get_logs", {"name": name, "stream": "stdout", "limit": 500}))
        return [e["text"] for e in sc["entries"]]

    def close(self) -> None:
        if self.client:
            self.client.close()
        self.warden.close()
        # Everything left is the run-as user's: nothing of it may outlive the test.
        kill_pids([p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == self.user.pw_uid])
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module", params=["stdio", "http"])
def iso(request):
    s = Setup(request.param)
    try:
        s.start()
        yield s
    finally:
        s.close()


def test_the_level_is_uid_on_every_surface(iso):
    assert "isolation: uid" in iso.readyz(), iso.readyz()
    text = iso.metrics()
    assert metric_value(text, "circus_warden_isolation_level", level="uid") == 1
    assert metric_value(text, "circus_warden_isolation_level", level="none") == 0
    r = run_cli(["config", "check", "--config", str(iso.warden.config_path)], iso.base)
    assert r.returncode == 0 and "isolation: uid" in r.stderr and RUN_USER in r.stderr, r.stderr
    wait_for(lambda: "isolation level: uid" in iso.warden.log_path.read_text(errors="replace"), 10, what="the startup log line")


def test_a_hostile_process_reaches_nothing(iso):
    circusd = iso.circusd()
    warden_pid = iso.warden_pid()
    runtime = iso.runtime_dir()
    out = iso.base / "output"
    victim = unique_name("victim")
    ok(iso.call("add_process", {"name": victim, "command": "/usr/bin/python3",
                                "args": ["-c", "print('victim line', flush=True); import time; time.sleep(3600)"]}))
    wait_for(lambda: iso.logs(victim) == ["victim line"], 20, what="the victim's line")
    victim_bytes = (out / victim / "stdout.log").read_bytes()
    positions = out / ".circus-warden-positions.json"
    wait_for(positions.exists, 20, what="a positions file")
    name = unique_name("hostile")
    own = out / name / "stdout.log"
    files = [own, out / name / "stderr.log", out / victim / "stdout.log", positions, runtime / "circus.ini",
             iso.base / "audit" / "audit.log", iso.warden.config_path]
    args = [str(iso.base / "bin" / "hostile.py"),
            "--control", str(runtime / "control.sock"), "--pubsub", str(runtime / "pubsub.sock"),
            "--canary", str(iso.canary)]
    for f in files:
        args += ["--file", str(f)]
    for d in (runtime, out, out / victim):
        args += ["--dir", str(d)]
    for pid in (circusd.pid, warden_pid):
        args += ["--signal", str(pid), "--environ", str(pid), "--ptrace", str(pid)]
    watchers_before = set(CircusClient(iso.endpoint()).call("list")["watchers"])
    ok(iso.call("add_process", {"name": name, "command": "/usr/bin/python3", "args": args, "num_processes": 2}))
    expected = 2 + 2 * 3 + 4 * len(files) + 2 * 4 + 1  # control, pubsub, dirs, files, pids, replace

    def finished():
        lines = iso.logs(name)
        return lines if sum(1 for ln in lines if ln.startswith("DONE")) == 2 else None
    lines = wait_for(finished, 60, what="both hostile processes to finish")
    print("\n".join(lines))  # with -s: what each attempt ran into
    attempts = [ln for ln in lines if ln.startswith("ATTEMPT")]
    assert len(attempts) == 2 * expected, f"{len(attempts)} attempts, want {2 * expected}:\n" + "\n".join(lines)
    succeeded = [ln for ln in attempts if " SUCCEEDED " in ln]
    assert not succeeded, "the hostile process got through:\n" + "\n".join(succeeded)

    # What the operating system and circusd hold.
    assert not iso.canary.exists(), "circusd ran the hostile add"
    c = CircusClient(iso.endpoint())
    assert set(c.call("list")["watchers"]) == watchers_before | {name}, "circusd's watchers changed behind the warden"
    assert circusd.is_running() and psutil.pid_exists(warden_pid)
    sock = os.stat(runtime / "control.sock")
    assert stat.S_ISSOCK(sock.st_mode) and sock.st_uid == 0, "the control socket was replaced"
    assert (out / victim / "stdout.log").read_bytes() == victim_bytes, "another watcher's log was altered"
    assert positions.exists()
    # get_logs returns exactly what the processes printed: the file holds those lines, no more.
    assert own.read_text().splitlines() == lines
    pids = c.call("list", name=name)["pids"]
    assert len(pids) == 2
    for pid in pids:
        ids = proc_ids(pid)
        assert ids["Uid"] == [iso.user.pw_uid] * 4 and ids["Gid"] == [iso.user.pw_gid] * 4, ids
        assert 0 not in ids["Groups"] and all(g not in os.getgroups() for g in ids["Groups"]), ids
        assert os.readlink(f"/proc/{pid}/cwd") == "/", "a process without working_dir starts in /"
    assert any(ln.startswith(f"START uid={iso.user.pw_uid} ") and "cwd=/" in ln for ln in lines), lines
    for n in (name, victim):
        ok(iso.call("remove_process", {"name": n}))


def test_concurrent_adds_from_several_sessions_all_run_as_the_user(iso):
    if iso.transport == "stdio":
        pytest.skip("a stdio warden has one session; the http run covers several")
    from concurrent.futures import ThreadPoolExecutor
    names = [unique_name("par") for _ in range(8)]
    clients = [iso.warden.http_client({"Authorization": f"Bearer {TOKEN}"}) for _ in names]
    try:
        with ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(lambda nc: nc[1].call_tool("add_process", {
                "name": nc[0], "command": "/usr/bin/python3", "args": ["-c", "import time; time.sleep(600)"]}, 60),
                zip(names, clients)))
    finally:
        for c in clients:
            c.close()
    for r in results:
        ok(r)
    c = CircusClient(iso.endpoint())
    for name in names:
        pids = wait_for(lambda: c.call("list", name=name)["pids"] or None, 20, what=f"{name}'s pid")
        assert proc_ids(pids[0])["Uid"] == [iso.user.pw_uid] * 4, name
        assert c.call("options", name=name)["options"]["uid"] == iso.user.pw_uid
        ok(iso.call("remove_process", {"name": name}))


def test_a_legitimate_web_server_works(iso):
    port = free_port()
    app = iso.base / "app"
    name = unique_name("web")
    script = iso.base / "bin" / f"{name}.py"
    script.write_text("import os, sys, http.server, socketserver\n"
                      "open('started', 'w').write(str(len(os.listdir('/usr'))) + ' ' + open('/etc/os-release').readline())\n"
                      "socketserver.TCPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()\n")
    os.chmod(script, 0o644)
    ok(iso.call("add_process", {"name": name, "command": "/usr/bin/python3", "args": [str(script), str(port)], "working_dir": str(app)}))
    started = app / "started"
    wait_for(started.exists, 20, what="the server to write its working directory")
    assert os.stat(started).st_uid == iso.user.pw_uid, "the file is not the run-as user's"

    def fetch():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/started", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None
    body = wait_for(fetch, 20, what="the server to answer")
    assert body.split(" ", 1)[1].startswith(("PRETTY_NAME", "NAME")), body
    ok(iso.call("remove_process", {"name": name}))


def test_a_working_dir_the_run_as_user_cannot_enter_is_denied(iso):
    private = iso.base / "app" / f"private-{unique_name()}"
    private.mkdir(mode=0o700)
    os.chown(private, 0, 0)
    name = unique_name("closed")
    res = iso.call("add_process", {"name": name, "command": "/usr/bin/python3", "args": ["-c", "print(1)"], "working_dir": str(private)})
    err = tool_error(res, ["denied"])
    rules = [v["rule"] for v in err["violations"]]
    assert rules == ["run_as.working_dir"], err
    assert f"the run-as user {RUN_USER} cannot use it" in err["message"] and str(private) in err["message"], err
    assert name not in CircusClient(iso.endpoint()).call("list")["watchers"]


def test_explain_and_audit_show_argv_run_as_and_would_send(iso):
    name = unique_name("contract")
    args = {"name": name, "command": "/usr/bin/python3", "args": ["-c", "import time; time.sleep(60)"], "start": False}
    ex = ok(iso.call("explain_policy", {"tool": "add_process", "arguments": args}))
    assert ex["decision"] == "allow", ex
    assert ex["argv"] == [PY, "-c", "import time; time.sleep(60)"], ex
    assert ex["run_as"]["user"] == RUN_USER and ex["run_as"]["uid"] == iso.user.pw_uid, ex
    opts = ex["would_send"]["properties"]["options"]
    assert (opts["uid"], opts["gid"], opts["working_dir"]) == (iso.user.pw_uid, iso.user.pw_gid, "/"), opts
    ok(iso.call("add_process", args))
    held = CircusClient(iso.endpoint()).call("options", name=name)["options"]
    assert (held["uid"], held["gid"], held["working_dir"]) == (iso.user.pw_uid, iso.user.pw_gid, "/"), held
    records = [json.loads(ln) for ln in (iso.base / "audit" / "audit.log").read_text().splitlines()]
    rec = next(r for r in records if r.get("kind") == "decision" and r["tool"] == "add_process" and r["request"]["arguments"]["name"] == name)
    assert rec["argv"] == ex["argv"] and rec["run_as"] == ex["run_as"], rec
    assert rec["would_send"]["properties"]["options"]["uid"] == iso.user.pw_uid, rec
    ok(iso.call("remove_process", {"name": name}))


# --------------------------------------------------------------------------- below the level


def test_require_uid_refuses_to_start_when_the_run_as_user_is_missing():
    doc = policy(Path("/tmp"))
    doc["run_as"] = {"user": "no-such-user-cw"}
    s = Setup("http", doc=doc)
    try:
        with pytest.raises(RuntimeError):
            s.warden.start_http(timeout=20)
        log = s.warden.log_tail(60)
        assert "isolation.require is uid" in log and "no-such-user-cw does not exist" in log, log
        r = run_cli(["config", "check", "--config", str(s.warden.config_path)], s.base)
        assert r.returncode == 1 and "isolation: none" in r.stderr, r.stderr
    finally:
        s.close()


def test_a_readable_config_with_tokens_gives_none_and_adds_still_run_as_the_user():
    s = Setup("http", require="none")
    os.chmod(s.warden.config_path, 0o644)
    try:
        s.start()
        body = s.readyz()
        assert "isolation: none" in body and str(s.warden.config_path) in body and "can read it" in body, body
        assert metric_value(s.metrics(), "circus_warden_isolation_level", level="none") == 1
        name = unique_name("still")
        ok(s.call("add_process", {"name": name, "command": "/usr/bin/python3", "args": ["-c", "import time; time.sleep(60)"]}))
        pids = wait_for(lambda: CircusClient(s.endpoint()).call("list", name=name)["pids"] or None, 20, what="a pid")
        assert proc_ids(pids[0])["Uid"][0] == s.user.pw_uid
    finally:
        s.close()


def test_require_uid_refuses_to_start_on_a_readable_config_with_tokens():
    s = Setup("http")
    try:
        os.chmod(s.warden.config_path, 0o644)
        with pytest.raises(RuntimeError):
            s.warden.start_http(timeout=20)
        assert "can read it" in s.warden.log_tail(60)
    finally:
        s.close()


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_require_uid_denies_adds_once_the_level_drops(transport):
    """The level is assessed again every reconcile interval (1 s here): a policy reload whose
    run-as user is missing drops it to none, and from then on every add is denied."""
    s = Setup(transport)
    try:
        s.start()
        doc = policy(s.base)
        doc["run_as"] = {"user": "no-such-user-cw"}
        s.warden.write_policy(doc)
        wait_for(lambda: "isolation: none" in s.readyz(), 20, what="the level to drop")
        name = unique_name("late")
        err = tool_error(s.call("add_process", {"name": name, "command": "/usr/bin/python3", "args": ["-c", "print(1)"]}), ["denied"])
        assert "isolation.required" in [v["rule"] for v in err["violations"]] or "run_as.unresolved" in [v["rule"] for v in err["violations"]], err
        assert name not in CircusClient(s.endpoint()).call("list")["watchers"]
        assert metric_value(s.metrics(), "circus_warden_isolation_level", level="none") == 1
    finally:
        s.close()
