#!/usr/bin/env python3
"""tests/isolation/hostile.py -- a hostile managed process, for the isolation tests.

An allowed program (this script, run by an allowed interpreter) tries every way around the
warden that a process circusd started could take. Standard library only, so that it needs
nothing its run-as user cannot read. Each attempt prints one line:

    ATTEMPT <what> BLOCKED <reason>
    ATTEMPT <what> SUCCEEDED <detail>

and the run ends with `DONE <attempts>`. The tests assert that no line says SUCCEEDED, and
they check the effects themselves (the canary file, circusd's watchers, the log files).

  hostile.py --control SOCK --pubsub SOCK --canary PATH [--file PATH]... [--dir PATH]...
             [--signal PID]... [--environ PID]... [--ptrace PID]...

--control/--pubsub: circusd's ipc socket paths (the control socket gets a ZMTP handshake and
an `add` of `/bin/sh -c 'touch CANARY'`; then an unlink-and-rebind of the control socket);
--file: read, append to, truncate and delete the file; --dir: list it and create a file in
it; --signal: kill(pid, 0) and kill(pid, SIGTERM); --environ: read /proc/PID/environ;
--ptrace: PTRACE_ATTACH.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import signal
import socket
import struct
import sys

ATTEMPTS = 0


def report(what: str, ok: bool, detail: str) -> None:
    global ATTEMPTS
    ATTEMPTS += 1
    print(f"ATTEMPT {what} {'SUCCEEDED' if ok else 'BLOCKED'} {detail}", flush=True)


def attempt(what: str, fn) -> None:
    try:
        detail = fn()
    except OSError as e:
        report(what, False, errno.errorcode.get(e.errno or 0, str(e.errno)))
    except Exception as e:  # any failure to do harm is a block; say what it was
        report(what, False, f"{type(e).__name__}: {e}")
    else:
        report(what, True, detail or "")


def zmtp_connect(path: str) -> socket.socket:
    """A ZMTP 3.0 DEALER handshake (NULL mechanism) over an AF_UNIX socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(path)
    s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31)
    greeting = b""
    while len(greeting) < 64:
        chunk = s.recv(64 - len(greeting))
        if not chunk:
            raise ConnectionError("closed during the greeting")
        greeting += chunk
    props = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + props
    s.sendall(b"\x04" + bytes([len(body)]) + body)
    return s


def zmtp_send(s: socket.socket, payload: bytes) -> None:
    if len(payload) < 256:
        s.sendall(b"\x00" + bytes([len(payload)]) + payload)
    else:
        s.sendall(b"\x02" + struct.pack(">Q", len(payload)) + payload)


def control_add(path: str, canary: str) -> str:
    s = zmtp_connect(path)
    msg = {"id": "hostile-1", "command": "add",
           "properties": {"name": "hostile-bypass", "cmd": "/bin/sh", "args": ["-c", f"touch {canary}"], "start": True}}
    zmtp_send(s, json.dumps(msg).encode())
    s.settimeout(3)
    try:
        reply = s.recv(4096)
    except socket.timeout:
        reply = b"(no reply)"
    s.close()
    return f"sent add; reply {reply[:120]!r}"


def pubsub(path: str) -> str:
    zmtp_connect(path).close()
    return "handshake done"


def replace_socket(path: str) -> str:
    os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return "unlinked and bound our own"


def read_file(path: str) -> str:
    with open(path, "rb") as f:
        return f"read {len(f.read(4096))} bytes"


def append_file(path: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"CRITICAL forged line from a managed process\n")
    finally:
        os.close(fd)
    return "appended"


def truncate_file(path: str) -> str:
    os.truncate(path, 0)
    return "truncated"


def delete_file(path: str) -> str:
    os.unlink(path)
    return "deleted"


def list_dir(path: str) -> str:
    return f"listed {len(os.listdir(path))} entries"


def create_in(path: str) -> str:
    fd = os.open(os.path.join(path, "hostile-was-here"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    return "created a file"


def send_signal(pid: int, sig: int) -> str:
    os.kill(pid, sig)
    return f"signal {sig} delivered"


def ptrace_attach(pid: int) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    return "attached"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--control")
    p.add_argument("--pubsub")
    p.add_argument("--canary", default="/tmp/hostile-canary")
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--dir", action="append", default=[])
    p.add_argument("--signal", action="append", type=int, default=[])
    p.add_argument("--environ", action="append", type=int, default=[])
    p.add_argument("--ptrace", action="append", type=int, default=[])
    a = p.parse_args()
    print(f"START uid={os.getuid()} gid={os.getgid()} groups={sorted(os.getgroups())} cwd={os.getcwd()}", flush=True)
    if a.control:
        attempt(f"control-add {a.control}", lambda: control_add(a.control, a.canary))
    if a.pubsub:
        attempt(f"pubsub-connect {a.pubsub}", lambda: pubsub(a.pubsub))
    for d in a.dir:
        attempt(f"list {d}", lambda d=d: list_dir(d))
        attempt(f"create-in {d}", lambda d=d: create_in(d))
    for f in a.file:
        attempt(f"read {f}", lambda f=f: read_file(f))
        attempt(f"append {f}", lambda f=f: append_file(f))
        attempt(f"truncate {f}", lambda f=f: truncate_file(f))
        attempt(f"delete {f}", lambda f=f: delete_file(f))
    for pid in a.signal:
        attempt(f"signal-0 {pid}", lambda pid=pid: send_signal(pid, 0))
        attempt(f"signal-TERM {pid}", lambda pid=pid: send_signal(pid, signal.SIGTERM))
    for pid in a.environ:
        attempt(f"environ {pid}", lambda pid=pid: read_file(f"/proc/{pid}/environ"))
    for pid in a.ptrace:
        attempt(f"ptrace {pid}", lambda pid=pid: ptrace_attach(pid))
    if a.control:
        # Last, so that a success cannot hide the other attempts from circusd.
        attempt(f"replace-socket {a.control}", lambda: replace_socket(a.control))
    print(f"DONE {ATTEMPTS}", flush=True)
    sys.stdout.flush()
    # Stay alive so the test can read the process's credentials from /proc.
    signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
