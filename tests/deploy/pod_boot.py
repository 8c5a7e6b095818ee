#!/usr/bin/env python3
"""tests/deploy/pod_boot.py -- boots the circus-warden pod the chart renders, without
Kubernetes, and drives it with the official MCP Python SDK (deploy tests).

What it does, in order:
  1. `helm template` the chart (release `cw`, namespace `demo`, the given values files).
  2. Takes the Deployment's two containers and, for each volume mount, the files it would see:
     ConfigMap keys (circus.ini, config.yaml, the policies), the token Secret (through the
     warden's env: secretKeyRef + Kubernetes' `$(VAR)` substitution), emptyDirs shared by name.
  3. Lays them out under a temp dir T, rewriting only the absolute mount paths
     (/run/circus -> T/run/circus, /etc/circus-warden -> T/etc/circus-warden, ...) in the
     files, the args and the env; every other byte stays. The one other rewrite: the warden's
     `0.0.0.0:<port>` binds become `127.0.0.1:<free port>`.
     The volumes get what the kubelet gives them with the pod's fsGroup: emptyDirs 2777 with
     group fsGroup, ConfigMap files the volume's defaultMode with group fsGroup.
  4. Starts circusd and the warden exactly as the containers' args say (the image's tini
     entrypoint is left out; `circusd` comes from .venv/bin, `circus-warden` is
     target/release/circus-warden), with each container's working dir (/tmp -> T/tmp) and
     security context, through setpriv: runAsUser/runAsGroup, fsGroup as the supplementary
     group, the bounding set cut to the added capabilities (none inheritable), no_new_privs
     for allowPrivilegeEscalation: false. So circusd runs as uid 0 with SETUID, SETGID and
     KILL only, and the warden as 10001. The users circus (10001) and circus-run (10002) are
     created on this machine when missing (groupadd/useradd), as the image has them: circus
     switches only to users with a passwd entry, and the warden resolves the run-as user.
  5. Checks: the shared directories are 2770 and circusd's ipc sockets 0770, owner root,
     group fsGroup (open to the warden's group, closed to the run-as user); the warden
     reached isolation `uid` (/readyz body, circus_warden_isolation_level); no circusd-stats,
     no TCP endpoint; GET /healthz,
     /readyz (200) and /metrics; the circusd liveness probe command passes; the Service DNS
     names pass the Host check and a foreign Host does not; /mcp needs the token when the
     chart made one, and every configured token works; over MCP: `list_processes`, then
     `add_process /usr/bin/sleep 300` succeeds if the rendered policy lets the caller's
     identity run it (checked in circusd with a raw DEALER: the watcher runs /usr/bin/sleep)
     or is denied (and circusd has no such watcher); an added sleep runs as the policy's
     run-as user (uid, gid and groups read from /proc/<pid>/status, not from the warden's
     reply: no group of the warden's); ini-defined watchers cannot be stopped;
     `remove_process` cleans up. Process output: the warden's output caps are the rendered
     config's (circus_warden_log_buffer_limit_bytes); when the policy has the program
     `podboot-print` (values-all.yaml: python3 -c printing two lines), it is added, both
     lines land in <output.dir>/<watcher>/stdout.log on the shared emptyDir and come back
     from get_logs with their levels, get_log_summary counts them, the CRITICAL line fires
     the configured level rules (list_alerts, circus_warden_log_alerts_total), and the
     watcher's log series appear. Then the policy is updated the way the kubelet updates a
     ConfigMap volume (a `..data` symlink swap): a broken version is rejected and counted in
     circus_warden_policy_reloads_total{result="failure"}, a valid one without programs
     becomes active (generation + 1) and add_process is denied. Last, the series the chart's
     alerts use must be in /metrics (the log ones only when a process wrote output).
  6. Stops both with SIGTERM (as the kubelet would), then kills whatever is left.

  pod_boot.py [-f VALUES]... [--helm PATH] [--bin PATH]
  pod_boot.py [-f VALUES]... --expect-refusal TEXT   (the warden must refuse to start: exit
      non-zero within 30 s with TEXT in its log, e.g. a pod below `isolation.require: uid`)
  pod_boot.py [-f VALUES]... --extract-only DIR   (for container_smoke.sh: the same files
      with the real in-container paths, plus the args, the env file and the probe command)

Runs with .venv/bin/python (circus, pyzmq, psutil, PyYAML, the `mcp` SDK), as root (the boot
sets uids with setpriv; --extract-only needs root for the files' group). Bounded: every wait
has a deadline and the whole run has a watchdog.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import configparser
import fnmatch
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import yaml
import zmq

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "circus-warden"
RELEASE, NAMESPACE = "cw", "demo"
VENV_BIN = REPO / ".venv" / "bin"
WATCHDOG_S = 240
# The image's users (Dockerfile): the warden's and the default run-as user (docs: chart README).
IMAGE_USERS = (("circus", 10001), ("circus-run", 10002))


def log(msg: str) -> None:
    print(f"[pod-boot {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fail(msg: str) -> None:
    raise SystemExit(f"[pod-boot] FAILED: {msg}")


# --------------------------------------------------------------------------- the rendered pod


def render(helm: str, values: list[str]) -> list[dict]:
    cmd = [helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--api-versions", "monitoring.coreos.com/v1"]
    for v in values:
        cmd += ["-f", v]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


class Pod:
    """The Deployment's pod template with the objects it refers to."""

    def __init__(self, docs: list[dict]):
        self.docs = docs
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        if len(deployments) != 1:
            fail(f"expected one Deployment, found {len(deployments)}")
        self.spec = deployments[0]["spec"]["template"]["spec"]
        self.volumes = {v["name"]: v for v in self.spec["volumes"]}
        self.containers = {c["name"]: c for c in self.spec["containers"]}
        if set(self.containers) != {"circusd", "warden"}:
            fail(f"unexpected containers {sorted(self.containers)}")

    def obj(self, kind: str, name: str) -> dict:
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        fail(f"{kind} {name} is referenced but not rendered")

    @property
    def fs_group(self) -> int | None:
        return (self.spec.get("securityContext") or {}).get("fsGroup")

    def security(self, container: str) -> dict:
        """The container's effective security settings (its securityContext over the pod's)."""
        pod_sc = self.spec.get("securityContext") or {}
        sc = self.containers[container].get("securityContext") or {}
        get = lambda k: sc.get(k, pod_sc.get(k))  # noqa: E731
        caps = sc.get("capabilities") or {}
        return {
            "uid": get("runAsUser"),
            "gid": get("runAsGroup"),
            "groups": sorted({*pod_sc.get("supplementalGroups", []), *([self.fs_group] if self.fs_group is not None else [])}),
            "drop": [c.upper() for c in caps.get("drop", [])],
            "add": [c.upper() for c in caps.get("add", [])],
            "no_new_privs": sc.get("allowPrivilegeEscalation") is False,
        }

    def file_mode(self, mount: dict) -> int:
        """The mode of a ConfigMap volume's files (defaultMode, Kubernetes' default 0644)."""
        return self.volumes[mount["name"]].get("configMap", {}).get("defaultMode", 0o644)

    def secret_value(self, name: str, key: str) -> str:
        return base64.b64decode(self.obj("Secret", name)["data"][key]).decode()

    def files_of_mount(self, mount: dict) -> dict[str, str] | None:
        """Relative path -> text for ConfigMap mounts; None for emptyDirs."""
        vol = self.volumes[mount["name"]]
        if "configMap" in vol:
            data = self.obj("ConfigMap", vol["configMap"]["name"]).get("data", {})
            if "subPath" in mount:
                return {"": data[mount["subPath"]]}
            return dict(data)
        if "emptyDir" in vol:
            return None
        fail(f"volume {mount['name']}: unsupported source {sorted(vol)}")

    def env(self, container: str) -> dict[str, str]:
        """The container's environment as the kubelet builds it (secretKeyRef, $(VAR))."""
        resolved: dict[str, str] = {}
        for e in self.containers[container].get("env", []):
            if "valueFrom" in e:
                ref = e["valueFrom"]
                if "secretKeyRef" in ref:
                    value = self.secret_value(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
                elif "configMapKeyRef" in ref:
                    value = self.obj("ConfigMap", ref["configMapKeyRef"]["name"])["data"][ref["configMapKeyRef"]["key"]]
                else:
                    fail(f"env {e['name']}: unsupported valueFrom {sorted(ref)}")
            else:
                value = expand_k8s(e.get("value", ""), resolved)
            resolved[e["name"]] = value
        return resolved


def expand_k8s(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' dependent-variable expansion: $(VAR) of an earlier variable; $$ escapes."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i + 2:]:
            end = value.index(")", i + 2)
            name = value[i + 2:end]
            out.append(defined[name] if name in defined else value[i:end + 1])
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------- rewriting


class Rewriter:
    """Maps in-container absolute mount paths into T, and 0.0.0.0:<port> binds to loopback."""

    def __init__(self, root: Path, mount_paths: list[str]):
        self.root = root
        self.ports: dict[int, int] = {}
        alternatives = "|".join(re.escape(p) for p in sorted(set(mount_paths), key=len, reverse=True))
        # A path starts at the beginning, after whitespace/quote/=/:/,/[ or after ipc:// and
        # ends where path characters end (so /tmp never matches /tmpfoo).
        self.path_re = re.compile(
            r"(?:(?<=^)|(?<=[\s\"'=:,\[])|(?<=ipc://))(" + alternatives + r")(?=/|$|[^A-Za-z0-9_.\-/])",
            re.MULTILINE,
        )
        self.bind_re = re.compile(r"0\.0\.0\.0:(\d+)")

    def port(self, container_port: int) -> int:
        if container_port not in self.ports:
            self.ports[container_port] = free_port()
        return self.ports[container_port]

    def __call__(self, text: str) -> str:
        text = self.path_re.sub(lambda m: str(self.root) + m.group(1), text)
        return self.bind_re.sub(lambda m: f"127.0.0.1:{self.port(int(m.group(1)))}", text)

    def path(self, p: str) -> Path:
        return Path(str(self.root) + p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lay_out(pod: Pod, root: Path, rewrite) -> None:
    """Writes every container's mounts under root (rewrite maps file contents), with the
    ownership and modes the kubelet gives them: an emptyDir is created 0777 and fsGroup makes
    it group fsGroup with the setgid bit (2777); ConfigMap files get the volume's defaultMode
    and group fsGroup. Owner root throughout, as on a node."""
    gid = pod.fs_group
    for container in pod.containers.values():
        for m in container.get("volumeMounts", []):
            target = Path(str(root) + m["mountPath"])
            files = pod.files_of_mount(m)
            if files is None:
                target.mkdir(parents=True, exist_ok=True)
                if gid is not None:
                    os.chown(target, 0, gid)
                target.chmod(0o2777 if gid is not None else 0o777)
                continue
            if "subPath" in m:  # the kubelet bind-mounts the one file
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(rewrite(files[""]), encoding="utf-8")
                kubelet_file(target, pod.file_mode(m), gid)
                continue
            if (target / "..data").exists():  # the other container's mount of the same volume
                continue
            configmap_dir(target, {k: rewrite(v) for k, v in files.items()}, pod.file_mode(m), gid)


def kubelet_file(path: Path, mode: int, gid: int | None) -> None:
    if gid is not None:
        os.chown(path, 0, gid)
    path.chmod(mode)


def configmap_dir(target: Path, files: dict[str, str], mode: int = 0o644, gid: int | None = None) -> None:
    """A ConfigMap volume as the kubelet writes it: files in a timestamped dir, `..data`
    pointing at it, and each key a symlink through `..data`. An update writes a new dir and
    swaps `..data` atomically, which is what the warden's policy hot reload must notice."""
    target.mkdir(parents=True, exist_ok=True)
    data = target / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:8]}"
    data.mkdir()
    for key, text in files.items():
        (data / key).write_text(text, encoding="utf-8")
        kubelet_file(data / key, mode, gid)
    tmp = target / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, target / "..data")
    for key in files:
        link = target / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")


def extract_only(pod: Pod, out: Path) -> None:
    """For container_smoke.sh: the files with their real paths, args, env file, probe."""
    identity = lambda s: s  # noqa: E731 - no rewriting inside a container
    staging = Path(tempfile.mkdtemp(prefix="cwx", dir="/tmp"))
    try:
        lay_out(pod, staging, identity)
        for src, name in (("etc/circus", "etc-circus"), ("etc/circus-warden", "etc-circus-warden")):
            shutil.copytree(staging / src, out / name, dirs_exist_ok=True, symlinks=False,
                            ignore=shutil.ignore_patterns("..*"), copy_function=copy_owned)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in ("circusd", "warden"):
        (out / f"{name}.args").write_text("\n".join(pod.containers[name]["args"]) + "\n")
        (out / f"{name}.workdir").write_text(pod.containers[name].get("workingDir", "") + "\n")
    env = pod.env("warden")
    (out / "warden.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    probe = pod.containers["circusd"].get("livenessProbe", {}).get("exec", {}).get("command", ["true"])
    (out / "circusd.liveness").write_text("\n".join(probe) + "\n")
    for name in ("circusd", "warden"):
        (out / f"{name}.security").write_text("\n".join(docker_flags(pod.security(name))) + "\n")
    for p in out.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    (out / "fsgroup").write_text(f"{pod.fs_group if pod.fs_group is not None else ''}\n")
    log(f"extracted the pod's files (ConfigMap modes and group kept), args, env, probe and security flags into {out}")


def copy_owned(src: str, dst: str) -> None:
    """copy2 that keeps the owner and group too (the kubelet's fsGroup on ConfigMap files)."""
    shutil.copy2(src, dst)
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)


def docker_flags(sec: dict) -> list[str]:
    """A container's security settings as `docker run` flags (container_smoke.sh), one a line.
    readOnlyRootFilesystem and seccomp are the script's own (--read-only; Docker's default
    seccomp profile is RuntimeDefault)."""
    flags = [f"--user={sec['uid']}:{sec['gid']}"] + [f"--group-add={g}" for g in sec["groups"]]
    flags += [f"--cap-drop={c}" for c in sec["drop"]] + [f"--cap-add={c}" for c in sec["add"]]
    if sec["no_new_privs"]:
        flags.append("--security-opt=no-new-privileges")
    return flags


# --------------------------------------------------------------------------- checks


def http_get(url: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    fail(f"timed out after {timeout}s waiting for {what}")


class Dealer:
    """Raw ZeroMQ DEALER requests to circusd, independent of the warden."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context.instance()
        self.endpoint = endpoint

    def call(self, command: str, **props) -> dict:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt_string(zmq.IDENTITY, uuid.uuid4().hex)
        s.connect(self.endpoint)
        try:
            mid = uuid.uuid4().hex
            s.send(json.dumps({"id": mid, "command": command, "properties": props}).encode())
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if s.poll(200):
                    reply = json.loads(s.recv())
                    if reply.get("id") == mid:
                        return reply
            fail(f"circusd did not answer {command} within 5 s")
        finally:
            s.close()


def raw_post(port: int, host: str, headers: dict | None = None) -> int:
    """POST an initialize to /mcp with a chosen Host; returns the HTTP status."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pod-boot", "version": "0"}}})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/mcp", data=body.encode(), method="POST", headers={
        "Host": host, "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def mcp_session(url: str, headers: dict, steps):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0)) as hc:
        async with streamable_http_client(url, http_client=hc) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                init = await session.initialize()
                log(f"MCP session with {init.server_info.name} {init.server_info.version}")
                return await steps(session)


def dump(result) -> dict:
    d = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    d.setdefault("isError", False)
    return d


# --------------------------------------------------------------------------- the boot


def boot(pod: Pod, bin_path: str, keep: bool, refusal: str | None = None) -> None:
    root = Path(tempfile.mkdtemp(prefix="cwpod", dir="/tmp"))  # short: ipc paths < 100 bytes
    root.chmod(0o755)  # the containers' uids must get to their mounts, as on a node
    mounts = sorted({m["mountPath"] for c in pod.containers.values() for m in c.get("volumeMounts", [])})
    rw = Rewriter(root, mounts)
    lay_out(pod, root, rw)
    log(f"pod laid out under {root}: mounts {', '.join(mounts)}")
    procs: list[subprocess.Popen] = []
    try:
        run_pod(pod, root, rw, bin_path, procs, refusal)
    finally:
        stop_all(procs)
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def start(pod: Pod, name: str, root: Path, rw: Rewriter, bin_path: str, procs: list) -> subprocess.Popen:
    c = pod.containers[name]
    if c.get("command"):
        fail(f"{name}: the chart sets `command`; the test only knows the image's entrypoint")
    args = [rw(a) for a in c["args"]]
    program = {"circus-warden": bin_path}.get(args[0]) or shutil.which(args[0], path=f"{VENV_BIN}:{os.environ['PATH']}")
    if not program:
        fail(f"{name}: {args[0]} not found")
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    env.update({k: rw(v) for k, v in pod.env(name).items()})
    # The container's workingDir; without one the image's WORKDIR, which is not mounted here
    # (the warden gets absolute paths for everything), so the temp root stands in for it.
    cwd = rw.path(c["workingDir"]) if c.get("workingDir") else root
    logf = open(root / f"{name}.log", "wb")
    priv = setpriv(pod.security(name))
    log(f"start {name}: {' '.join([program] + args[1:])}  (cwd {cwd}, env {sorted(env)})")
    log(f"  as {' '.join(priv[1:-1])}")
    p = subprocess.Popen(priv + [program] + args[1:], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                         stderr=subprocess.STDOUT, start_new_session=True)
    p.name = name  # type: ignore[attr-defined]
    p.logfile = root / f"{name}.log"  # type: ignore[attr-defined]
    procs.append(p)
    return p


def setpriv(sec: dict) -> list[str]:
    """setpriv (util-linux) arguments that run a program the way the container runtime would
    under the container's security context: uid, gid, supplementary groups (fsGroup), the
    bounding set limited to the added capabilities when ALL are dropped (for uid 0 the
    permitted and effective sets follow it at exec; for another uid they are empty anyway),
    nothing inheritable or ambient, and no_new_privs."""
    if sec["uid"] is None or sec["gid"] is None:
        fail(f"the pod does not set runAsUser/runAsGroup: {sec}")
    argv = ["setpriv", f"--reuid={sec['uid']}", f"--regid={sec['gid']}"]
    argv.append(f"--groups={','.join(map(str, sec['groups']))}" if sec["groups"] else "--clear-groups")
    if sec["drop"] != ["ALL"]:
        fail(f"the test knows only `capabilities: drop: [ALL]` (plus adds), not {sec['drop']}")
    argv.append("--bounding-set=" + ",".join(["-all"] + [f"+{c.lower()}" for c in sec["add"]]))
    argv += ["--inh-caps=-all", "--ambient-caps=-all"]
    if sec["no_new_privs"]:
        argv.append("--no-new-privs")
    return argv + ["--"]


def ensure_image_users() -> None:
    """The image's users on this machine, created when missing (idempotent): circus switches
    only to a user with a passwd entry, and the warden resolves the run-as user by name. An
    existing run-as user keeps its uid (`make run-user` may have made it a system user); the
    checks compare against this machine's passwd, as the warden does, and require only that
    it is neither root nor in the warden's group."""
    for name, uid in IMAGE_USERS:
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        if name == "circus" and any(u.pw_uid == uid for u in pwd.getpwall()):
            continue  # the warden runs as the number; another name for it is fine
        free = not any(u.pw_uid == uid for u in pwd.getpwall()) and not any(g.gr_gid == uid for g in grp.getgrall())
        if free:
            subprocess.run(["groupadd", "--gid", str(uid), name], check=True, timeout=30)
        ids = ["--uid", str(uid), "--gid", str(uid)] if free else ["--system", "--user-group"]
        subprocess.run(["useradd", *ids, "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                        name], check=True, timeout=30, stderr=subprocess.DEVNULL)
    run_as = pwd.getpwnam(IMAGE_USERS[1][0])
    if run_as.pw_uid in (0, IMAGE_USERS[0][1]) or IMAGE_USERS[0][1] in run_as_groups(run_as):
        fail(f"{run_as.pw_name} is uid {run_as.pw_uid} with groups {run_as_groups(run_as)}: it must be neither root, "
             f"nor the warden, nor in the warden's group {IMAGE_USERS[0][1]}")
    log("users: " + ", ".join(f"{n}={pwd.getpwnam(n).pw_uid}:{pwd.getpwnam(n).pw_gid} groups {run_as_groups(pwd.getpwnam(n))}"
                              for n, _ in IMAGE_USERS if n in {u.pw_name for u in pwd.getpwall()}))


def stop_all(procs: list) -> None:
    """SIGTERM (the kubelet's way), bounded wait, then SIGKILL of the whole process trees."""
    trees = []
    for p in procs:
        try:
            trees.append([psutil.Process(p.pid)] + psutil.Process(p.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
            log(f"{p.name} exited with {p.returncode} after SIGTERM")
        except subprocess.TimeoutExpired:
            log(f"{p.name} outlived SIGTERM by 20 s: killing")
    for tree in trees:
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def show_logs(procs) -> None:
    for p in procs:
        print(f"----- {p.name} log (last 40 lines)")
        print("\n".join(Path(p.logfile).read_text(errors="replace").splitlines()[-40:]))


def run_pod(pod: Pod, root: Path, rw: Rewriter, bin_path: str, procs: list, refusal: str | None = None) -> None:
    warden_c = pod.containers["warden"]
    config = yaml.safe_load(rw.path("/etc/circus-warden/config.yaml").read_text())
    control = config["circus"]["endpoint"]
    http_port = rw.port(next(p["containerPort"] for p in warden_c["ports"] if p["name"] == "http"))
    metrics_ports = [rw.port(p["containerPort"]) for p in warden_c["ports"] if p["name"] == "metrics"]
    metrics_port = metrics_ports[0] if metrics_ports else http_port
    base = f"http://127.0.0.1:{http_port}"

    circusd = start(pod, "circusd", root, rw, bin_path, procs)
    sock = Path(control.removeprefix("ipc://"))
    try:
        wait_for(lambda: sock.exists() or circusd.poll() is not None, 20, "circusd's control socket")
        if circusd.poll() is not None:
            fail(f"circusd exited with {circusd.returncode}")
        warden = start(pod, "warden", root, rw, bin_path, procs)
        if refusal is not None:
            wait_for(lambda: warden.poll() is not None, 30, "the warden to refuse to start")
            text = Path(warden.logfile).read_text(errors="replace")  # type: ignore[attr-defined]
            if warden.returncode == 0 or refusal not in text:
                fail(f"the warden exited with {warden.returncode}, want non-zero with {refusal!r} in its log")
            line = next(line for line in text.splitlines() if refusal in line)
            log(f"the warden refused to start (exit {warden.returncode}): {line.strip()[:300]}")
            return
        wait_for(lambda: http_get(base + "/readyz")[0] == 200 or warden.poll() is not None, 30, "GET /readyz == 200")
        if warden.poll() is not None:
            fail(f"the warden exited with {warden.returncode}")
        checks(pod, config, rw, base, http_port, metrics_port, control, sock, circusd.pid)
    except BaseException:
        show_logs(procs)
        raise


def metric(port: int, name: str, labels: dict | None = None) -> float | None:
    """The value of one series in the warden's /metrics (None when absent)."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        fail(f"GET /metrics -> {status}")
    for line in body.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in (labels or {}).items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def metric_names(port: int) -> set[str]:
    body = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    return {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}


def policy_generation(port: int) -> int:
    body = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    found = re.findall(r'^circus_warden_policy_info\{[^}]*generation="(\d+)"', body, re.MULTILINE)
    return int(found[0]) if found else 0


async def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.2)
    fail(f"timed out after {timeout}s waiting for {what}")


def policy_allows_sleep(policy: dict, identity: str) -> bool:
    """Whether the rendered policy should let `identity` add /usr/bin/sleep 300 (a simple
    reading of the policy: tools, program ids, path globs; the warden is the authority)."""
    ident = (policy.get("identities") or {}).get(identity)
    if not ident:
        return False
    if not ({"*", "add_process"} & set(ident.get("tools", []))):
        return False
    may = set(ident.get("programs", ["*"]))
    sleep = os.path.realpath("/usr/bin/sleep")
    return any(("*" in may or prog["id"] in may) and fnmatch.fnmatchcase(sleep, prog["path"])
               for prog in policy.get("programs") or [])


PRINT_PROGRAM = "podboot-print"
LEVEL_ORDER = ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def print_program(policy: dict, identity: str) -> str | None:
    """The code of the `podboot-print` program (python3 -c CODE) when the rendered policy
    lets `identity` add it and read logs, else None."""
    ident = (policy.get("identities") or {}).get(identity) or {}
    tools = ident.get("tools", [])
    if not all(any(fnmatch.fnmatchcase(t, g) for g in tools) for t in ("add_process", "get_logs", "list_alerts")):
        return None
    may = ident.get("programs", ["*"])
    for prog in policy.get("programs") or []:
        if prog.get("id") == PRINT_PROGRAM and any(fnmatch.fnmatchcase(PRINT_PROGRAM, g) for g in may):
            return prog["args"]["flags"]["-c"]["value"]["match"]
    return None


def level_rules(output: dict, watcher: str, stream: str, level: str) -> list[str]:
    """Ids of the configured level rules a line at `level` of `watcher`'s `stream` fires
    (the warden's default rules when the config names none)."""
    rules = output.get("alerts")
    if rules is None:
        rules = [{"id": "critical-line", "level": "CRITICAL"}]
    return [r["id"] for r in rules
            if "level" in r and LEVEL_ORDER.index(level) >= LEVEL_ORDER.index(str(r["level"]).upper())
            and fnmatch.fnmatchcase(watcher, r.get("watchers", "*")) and r.get("stream", stream) == stream]


def proc_creds(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, fs) and Groups of a process, as the kernel has them."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(v) for v in value.split()]
    out["Groups"] = sorted(out["Groups"])
    return out


def run_as_groups(user: pwd.struct_passwd) -> list[int]:
    """The groups initgroups(3) gives the user: its primary group and those listing it."""
    return sorted({user.pw_gid, *(g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem)})


def checks(pod, config, rw, base, http_port, metrics_port, control, sock, circusd_pid) -> None:
    log("GET /readyz -> 200")
    # The shared paths: open to the warden's group (fsGroup), closed to everyone else, the
    # run-as user included (circusd's start step, umask 007, the warden's 0770 directories).
    gid = pod.fs_group
    output_dir = Path(config.get("output", {}).get("dir", ""))
    for path_, want in ((sock.parent, 0o2770), (output_dir, 0o2770)):
        st = path_.stat()
        if stat.S_IMODE(st.st_mode) != want or st.st_uid != 0 or st.st_gid != gid:
            fail(f"{path_} is {oct(stat.S_IMODE(st.st_mode))} {st.st_uid}:{st.st_gid}, want {oct(want)} 0:{gid}")
    for path_ in (Path(control.removeprefix("ipc://")), Path(config["circus"]["pubsub_endpoint"].removeprefix("ipc://"))):
        st = path_.stat()
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISSOCK(st.st_mode) or mode & 0o007 or st.st_gid != gid:
            fail(f"{path_} is not a socket closed to others with group {gid} (mode {oct(mode)}, group {st.st_gid})")
    log(f"{sock.parent} and {output_dir} are 2770 root:{gid}; the ipc sockets {oct(mode)} group {gid}")
    ini = rw.path("/etc/circus/circus.ini")
    if ini.exists() and stat.S_IMODE(ini.stat().st_mode) & 0o007:
        fail(f"circus.ini is readable by others: {oct(stat.S_IMODE(ini.stat().st_mode))}")

    # The isolation level the warden assessed: uid (circusd is root and the run-as user
    # reaches none of the control plane); the chart requires it by default.
    status, body = http_get(base + "/readyz")
    if "isolation: uid" not in body:
        fail(f"/readyz does not report `isolation: uid`: {status} {body!r}")
    for level, want in (("uid", 1), ("none", 0)):
        got = metric(metrics_port, "circus_warden_isolation_level", {"level": level})
        if got is not None and got != want or (level == "uid" and got is None):
            fail(f"circus_warden_isolation_level{{level={level}}} is {got}, want {want}")
    log(f"isolation: /readyz says {body.strip()!r}; circus_warden_isolation_level{{level=uid}} 1")
    status, body = http_get(base + "/healthz")
    if status != 200:
        fail(f"GET /healthz -> {status} {body}")
    status, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    if status != 200 or "circus_warden_" not in body:
        fail(f"GET /metrics on port {metrics_port} -> {status}: {body[:200]}")
    log(f"GET /healthz -> 200; GET /metrics on {'the metrics' if metrics_port != http_port else 'the MCP'} port -> 200")

    dealer = Dealer(control)
    opts = dealer.call("globaloptions")["options"]
    watchers = dealer.call("list")["watchers"]
    # globaloptions always reports a default stats_endpoint; only circusd-stats would bind it.
    if "circusd-stats" in watchers or opts.get("statsd"):
        fail(f"circusd-stats is on: watchers {watchers}, options {opts}")
    listening = [c for c in psutil.Process(circusd_pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    if listening:
        fail(f"circusd listens on TCP/UDP: {listening}")
    for key in ("endpoint", "pubsub_endpoint"):
        if not str(opts.get(key, "")).startswith("ipc://"):
            fail(f"circusd {key} is {opts.get(key)!r}, not ipc://")
    if opts.get("multicast_endpoint"):
        fail(f"multicast discovery is on: {opts.get('multicast_endpoint')}")
    log(f"circusd: ipc endpoints only, no TCP listener, no multicast, no circusd-stats; watchers {watchers}")

    # circus.ini watchers run as their `uid` (the chart's default: circus-run), not as root.
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(rw.path("/etc/circus/circus.ini").read_text())
    for section in ini.sections():
        if not section.startswith("watcher:"):
            continue
        user = pwd.getpwnam(ini[section].get("uid") or fail(f"circus.ini [{section}] has no uid: it would run as root"))
        ini_name = section.removeprefix("watcher:")
        for pid in wait_for(lambda: dealer.call("list", name=ini_name).get("pids"), 10, f"{ini_name}'s pid"):
            creds = proc_creds(pid)
            if creds["Uid"] != [user.pw_uid] * 4 or creds["Groups"] != run_as_groups(user):
                fail(f"circus.ini watcher {ini_name} pid {pid} runs with {creds}, want {user.pw_name}")
        log(f"circus.ini watcher {ini_name} runs as {user.pw_name} ({user.pw_uid}:{user.pw_gid})")

    probe = pod.containers["circusd"].get("livenessProbe", {}).get("exec", {}).get("command")
    if probe:
        argv = [rw(a) for a in probe]
        argv[0] = shutil.which(argv[0], path=str(VENV_BIN)) or argv[0]
        # An exec probe runs in the container, with its security context.
        r = subprocess.run(setpriv(pod.security("circusd")) + argv, capture_output=True, timeout=30)
        if r.returncode != 0:
            fail(f"circusd liveness probe {argv} -> {r.returncode}: {r.stdout!r} {r.stderr!r}")
        log("circusd liveness probe command -> 0")

    # The Host check: the Service's names pass, a foreign name does not.
    ids = pod.env("warden")
    tokens_env = ids.get("CIRCUS_WARDEN_SERVER__TOKENS")
    headers = {}
    if tokens_env:
        tokens = re.findall(r'token="([^"]+)"', tokens_env)
        for t in tokens:  # every identity's token, as substituted by the kubelet, is accepted
            if raw_post(http_port, "127.0.0.1", {"Authorization": f"Bearer {t}"}) != 200:
                fail(f"/mcp refused one of the {len(tokens)} configured tokens")
        headers = {"Authorization": f"Bearer {tokens[0]}"}
        if raw_post(http_port, "127.0.0.1") != 401:
            fail("/mcp without a token was not refused with 401")
        if raw_post(http_port, "127.0.0.1", {"Authorization": "Bearer not-the-token-0123456789"}) != 401:
            fail("/mcp with a wrong token was not refused with 401")
        log(f"/mcp: each of the {len(tokens)} tokens -> 200; no token or a wrong one -> 401")
    svc = f"{RELEASE}-circus-warden"
    for host in (f"{svc}.{NAMESPACE}.svc.cluster.local:8731", f"{svc}:8731"):
        status = raw_post(http_port, host, headers)
        if status != 200:
            fail(f"Host {host} -> {status}, want 200")
    status = raw_post(http_port, "evil.example.com", headers)
    if status not in (400, 403, 421):
        fail(f"Host evil.example.com -> {status}, want a refusal")
    log(f"Host: the Service names -> 200, evil.example.com -> {status}")

    policy = yaml.safe_load(Path(config["policy"]["path"]).read_text())
    run_as = pwd.getpwnam(((policy.get("run_as") or {}).get("user")) or fail("the policy has no run_as.user"))
    identity = (re.findall(r'identity="([^"]+)"', tokens_env or "") or [config["server"].get("default_identity", "local")])[0]
    allowed = policy_allows_sleep(policy, identity)
    protected = [w for w in (policy.get("watchers") or {}).get("protected", []) if w in watchers]
    log(f"policy {config['policy']['path']}: identity {identity!r} may {'' if allowed else 'not '}add /usr/bin/sleep; "
        f"protected watchers {protected}")
    name = "podboot"

    # Process output: the chart points the warden at the shared emptyDir, with the caps of
    # the rendered config (the warden's own defaults where the config has none).
    output = config.get("output") or {}
    out_dir = Path(output.get("dir", ""))
    if not out_dir.is_absolute() or not out_dir.is_dir():
        fail(f"output.dir {out_dir} is not the shared emptyDir (a directory laid out for the pod)")
    for scope, key, default in (("stream", "stream_cap_bytes", 1 << 20), ("global", "global_cap_bytes", 64 << 20)):
        got = metric(metrics_port, "circus_warden_log_buffer_limit_bytes", {"scope": scope})
        if got != output.get(key, default):
            fail(f"circus_warden_log_buffer_limit_bytes{{scope={scope}}} is {got}, the config says {output.get(key, default)}")
    log(f"output.dir {out_dir} (the process-logs emptyDir); buffer caps as configured")
    code = print_program(policy, identity)
    printer = "podboot-out"
    lines = ["podboot: hello from the pod", "CRITICAL podboot: test alert"]

    async def steps(session):
        listed = dump(await session.call_tool("list_processes", {}))
        if listed["isError"]:
            fail(f"list_processes failed: {listed}")
        names = [p["name"] for p in listed["structuredContent"]["processes"]]
        log(f"MCP list_processes -> {names}")
        if sorted(names) != sorted(watchers):
            fail(f"list_processes {names} != circusd's watchers {watchers}")
        added = dump(await session.call_tool("add_process", {"name": name, "command": "/usr/bin/sleep", "args": ["300"]}))
        present = name in dealer.call("list")["watchers"]
        if allowed:
            if added["isError"] or not present:
                fail(f"add_process of an allowed /usr/bin/sleep failed: {added}")
            pids = wait_for(lambda: dealer.call("list", name=name).get("pids"), 10, "the watcher's pid")
            cmd = dealer.call("get", name=name, keys=["cmd"])["options"]["cmd"]
            log(f"MCP add_process /usr/bin/sleep -> ok; circusd runs {cmd!r} as pids {pids}")
            if not os.path.realpath(cmd.split()[0]) == os.path.realpath("/usr/bin/sleep"):
                fail(f"circusd runs {cmd!r}, not /usr/bin/sleep")
            for pid in pids:
                creds = proc_creds(pid)
                want = {"Uid": [run_as.pw_uid] * 4, "Gid": [run_as.pw_gid] * 4, "Groups": run_as_groups(run_as)}
                if creds != want:
                    fail(f"pid {pid} runs with {creds}, want {run_as.pw_name}'s {want}")
                if gid in creds["Groups"]:
                    fail(f"pid {pid} is in the warden's group {gid}")
            log(f"/proc/{pids[0]}/status: uid/gid {run_as.pw_uid}/{run_as.pw_gid} ({run_as.pw_name}), groups "
                f"{want['Groups']}: not circusd's uid 0, not in group {gid}")
            removed = dump(await session.call_tool("remove_process", {"name": name}))
            if removed["isError"]:
                fail(f"remove_process failed: {removed}")
            wait_for(lambda: name not in dealer.call("list")["watchers"], 15, "the watcher to be removed")
            log("MCP remove_process -> ok; circusd no longer has it")
        else:
            kind = added.get("structuredContent", {}).get("error", {}).get("kind")
            if not added["isError"] or kind != "denied" or present:
                fail(f"add_process was not denied by the policy: {added}, watcher present: {present}")
            log("MCP add_process /usr/bin/sleep -> denied by the policy; circusd has no such watcher")
        logged = False
        if code is not None:
            added = dump(await session.call_tool("add_process", {"name": printer, "command": "/usr/bin/python3", "args": ["-c", code]}))
            if added["isError"]:
                fail(f"add_process of {PRINT_PROGRAM} failed: {added}")
            deadline = time.monotonic() + 20
            while True:
                got = dump(await session.call_tool("get_logs", {"name": printer}))
                if got["isError"]:
                    fail(f"get_logs {printer} failed: {got}")
                entries = got["structuredContent"]["entries"]
                if [e["text"] for e in entries] == lines:
                    break
                if time.monotonic() > deadline:
                    fail(f"get_logs {printer} did not return {lines} within 20 s: {entries}")
                await asyncio.sleep(0.3)
            levels = [(e["stream"], e["level"]) for e in entries]
            if levels != [("stdout", "INFO"), ("stdout", "CRITICAL")]:
                fail(f"get_logs {printer}: streams/levels {levels}, want stdout INFO then stdout CRITICAL")
            for path_, want in ((out_dir / printer, 0o2770), (out_dir / printer / "stdout.log", 0o660)):
                mode = stat.S_IMODE(path_.stat().st_mode)
                if mode & 0o007 or not mode & 0o040 or path_.stat().st_gid != gid:
                    fail(f"{path_} is {oct(mode)} group {path_.stat().st_gid}: want group {gid} access only ({oct(want)})")
            on_disk = (out_dir / printer / "stdout.log").read_text()
            if on_disk != "".join(f"{line}\n" for line in lines):
                fail(f"{out_dir / printer / 'stdout.log'} holds {on_disk!r}")
            log(f"MCP add_process {PRINT_PROGRAM} -> ok; circusd wrote {out_dir / printer / 'stdout.log'}; "
                f"get_logs -> {[(e['seq'], e['level'], e['text']) for e in entries]}")
            summary = dump(await session.call_tool("get_log_summary", {"name": printer}))
            sc = summary.get("structuredContent", {})
            if summary["isError"] or sc.get("lines") != 2 or sc.get("levels", {}).get("CRITICAL") != 1:
                fail(f"get_log_summary {printer}: {summary}")
            expected = level_rules(output, printer, "stdout", "CRITICAL")
            listed = dump(await session.call_tool("list_alerts", {"name": printer}))
            fired = sorted(a["rule"] for a in listed["structuredContent"]["alerts"] if a["level"] == "CRITICAL")
            if listed["isError"] or fired != sorted(expected):
                fail(f"list_alerts {printer}: CRITICAL firings of {fired}, want {sorted(expected)}: {listed}")
            for rule in expected:
                if metric(metrics_port, "circus_warden_log_alerts_total", {"watcher": printer, "rule": rule}) != 1:
                    fail(f"circus_warden_log_alerts_total{{watcher={printer},rule={rule}}} is not 1")
            for series, labels, want in (("circus_warden_log_lines_total", {"level": "CRITICAL"}, 1),
                                         ("circus_warden_log_lines_total", {"level": "INFO"}, 1),
                                         ("circus_warden_log_dropped_bytes_total", {}, 0)):
                got = metric(metrics_port, series, {"watcher": printer, **labels})
                if got != want:
                    fail(f"{series}{{watcher={printer},{labels}}} is {got}, want {want}")
            if not metric(metrics_port, "circus_warden_log_buffer_bytes", {"watcher": printer}):
                fail(f"circus_warden_log_buffer_bytes{{watcher={printer}}} is missing or 0")
            log(f"get_log_summary -> {sc['lines']} lines; list_alerts -> {fired}; "
                f"log_lines_total, log_dropped_bytes_total, log_buffer_bytes, log_alerts_total present for {printer}")
            removed = dump(await session.call_tool("remove_process", {"name": printer}))
            if removed["isError"]:
                fail(f"remove_process {printer} failed: {removed}")
            wait_for(lambda: printer not in dealer.call("list")["watchers"], 15, f"{printer} to be removed")
            logged = True
        else:
            log(f"the policy has no {PRINT_PROGRAM} program for {identity!r}: no process output to read")

        for w in protected:
            r = dump(await session.call_tool("stop_process", {"name": w}))
            kind = r.get("structuredContent", {}).get("error", {}).get("kind")
            state = dealer.call("status", name=w)["status"]
            if not r["isError"] or kind != "denied" or state != "active":
                fail(f"stop_process of ini-defined {w} was not denied: {r}, circusd says {state}")
            log(f"MCP stop_process {w} (ini-defined, protected) -> denied; circusd: {state}")

        # Hot reload through a kubelet-style ConfigMap update (a `..data` symlink swap).
        policy_dir = Path(config["policy"]["path"]).parent
        files = {p.name: p.read_text() for p in policy_dir.iterdir() if not p.name.startswith("..")}
        kubelet = (stat.S_IMODE(Path(config["policy"]["path"]).stat().st_mode), gid)
        original = files["default.yaml"]
        gen = policy_generation(metrics_port)
        failures = metric(metrics_port, "circus_warden_policy_reloads_total", {"result": "failure"}) or 0
        configmap_dir(policy_dir, {**files, "default.yaml": "version: 1\nidentities: {}\nprogramz: []\n"}, *kubelet)
        await until(lambda: (metric(metrics_port, "circus_warden_policy_reloads_total", {"result": "failure"}) or 0) > failures,
                    15, "the broken policy to be rejected")
        if policy_generation(metrics_port) != gen:
            fail("a broken policy replaced the active one")
        log(f"policy update with an unknown key -> rejected (reloads_total{{result=failure}} "
            f"{failures:g} -> {failures + 1:g}); generation {gen} stays active")
        tightened = yaml.safe_dump({**policy, "programs": []}, sort_keys=False)
        configmap_dir(policy_dir, {**files, "default.yaml": tightened}, *kubelet)
        await until(lambda: policy_generation(metrics_port) > gen, 15, "the new policy to be loaded")
        again = dump(await session.call_tool("add_process", {"name": name, "command": "/usr/bin/sleep", "args": ["300"]}))
        kind = again.get("structuredContent", {}).get("error", {}).get("kind")
        if not again["isError"] or kind != "denied" or name in dealer.call("list")["watchers"]:
            fail(f"after the reload without programs, add_process was not denied: {again}")
        log(f"policy update without programs -> generation {policy_generation(metrics_port)}; add_process -> denied")
        configmap_dir(policy_dir, {**files, "default.yaml": original}, *kubelet)

        # The series the chart's alerts use. crash_looping needs a watcher event, and the log
        # series a watcher that wrote output (the podboot-print step above).
        names = metric_names(metrics_port)
        wanted = ["circus_warden_circus_up", "circus_warden_crash_looping", "circus_warden_policy_decisions_total",
                  "circus_warden_policy_reloads_total", "circus_warden_log_alerts_total",
                  "circus_warden_log_dropped_bytes_total"]
        present = [n for n in wanted if n in names]
        missing = [n for n in wanted if n not in names]
        required = ["circus_warden_circus_up", "circus_warden_policy_decisions_total", "circus_warden_policy_reloads_total"]
        if logged:
            required += ["circus_warden_log_alerts_total", "circus_warden_log_dropped_bytes_total"]
        for series in required:
            if series not in names:
                fail(f"/metrics lacks {series}, which the chart's alerts use")
        log(f"alert series exported: {', '.join(present)}; not exported in this run: {', '.join(missing) or 'none'}")

    asyncio.run(asyncio.wait_for(mcp_session(base + "/mcp", headers, steps), 90))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--helm", default=str(REPO / ".tools" / "deploy-venv" / "bin" / "helm"))
    ap.add_argument("--bin", default=os.environ.get("CIRCUS_WARDEN_BIN", str(REPO / "target" / "release" / "circus-warden")))
    ap.add_argument("--extract-only", metavar="DIR")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, files)")
    ap.add_argument("--expect-refusal", metavar="TEXT", help="the warden must exit non-zero with TEXT in its log")
    a = ap.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: fail(f"watchdog: still running after {WATCHDOG_S}s"))
    signal.alarm(WATCHDOG_S)
    started = time.monotonic()
    pod = Pod(render(a.helm, a.values))
    if os.geteuid() != 0:
        fail("run as root: the containers' uids and groups are set with setpriv and chown, as a node would")
    if a.extract_only:
        extract_only(pod, Path(a.extract_only))
        return 0
    ensure_image_users()
    if not os.access(a.bin, os.X_OK):
        fail(f"{a.bin} is not an executable (build it: cargo build --release)")
    log(f"values: {a.values or ['(chart defaults)']}; binary {a.bin}")
    boot(pod, a.bin, a.keep, a.expect_refusal)
    log(f"PASSED in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
