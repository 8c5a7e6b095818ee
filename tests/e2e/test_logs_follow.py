"""Following output: `logs://{name}/recent` subscriptions (2025-11-25 `resources/subscribe` through
the MCP Python SDK, 2026-07-28 `subscriptions/listen` over raw stdio JSON-RPC, since the SDK
negotiates 2025-11-25 with this server) and `GET /logs/{name}` (NDJSON, SSE, auth, slow readers,
the follower cap). Everything runs against a real circusd."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness import PYTHON, Circusd, Warden, base_config, wait_for, warden_bin

TICKER = "import sys, time\nn = int(sys.argv[1]); pause = float(sys.argv[2])\nfor i in range(n):\n    print(f'tick {i}', flush=True)\n    time.sleep(pause)\ntime.sleep(600)\n"


@pytest.fixture
def ticker(tmp_path: Path) -> Path:
    p = tmp_path / "ticker.py"
    p.write_text(TICKER)
    return p


def http_warden(circusd: Circusd, tmp_path: Path, label: str, **over) -> Warden:
    w = Warden(base_config(circusd, tmp_path, **over), tmp_path / label, label)
    return w.start_http()


def get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET with a raw socket (no client-side buffering surprises); returns status and body so far."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    s.sendall((f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode())
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except socket.timeout:
        pass
    s.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0
    return status, data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return out


def test_get_logs_http_ndjson_sse_and_auth(circusd, tmp_path, ticker):
    token = "follow-test-token-0123456789"
    w = http_warden(circusd, tmp_path, "fw", server={"tokens": [{"identity": "local", "token": token}]})
    try:
        with w.http_client(headers={"Authorization": f"Bearer {token}"}) as c:
            assert not c.call_tool("add_process", {"name": "tick", "command": PYTHON, "args": [str(ticker), "20", "0.01"]})["isError"]
            wait_for(lambda: c.call_tool("get_logs", {"name": "tick"})["structuredContent"]["last_seq"] >= 20, 15, what="20 lines")
        auth = {"Authorization": f"Bearer {token}"}
        assert get(w.port, "/logs/tick")[0] == 401
        assert get(w.port, "/logs/tick", {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        status, body = get(w.port, "/logs/tick?limit=5", auth)
        assert status == 200
        lines = [json.loads(ln) for ln in dechunk(body).splitlines()]
        assert [ln["text"] for ln in lines] == [f"tick {i}" for i in range(15, 20)]
        assert all(ln["type"] == "entry" and ln["stream"] == "stdout" and ln["level"] == "INFO" for ln in lines)
        status, body = get(w.port, "/logs/tick?limit=2&format=sse", auth)
        assert status == 200
        events = dechunk(body).decode().split("\n\n")
        assert events[0].startswith("event: entry\ndata: ") and json.loads(events[0].split("data: ", 1)[1])["text"] == "tick 18"
        # Same guards as /mcp: Host, no browser origins, bad names and parameters.
        s = get(w.port, "/logs/tick", {**auth, "Host": "evil.example"})[0]
        assert s == 403
        assert get(w.port, "/logs/tick", {**auth, "Origin": "http://localhost:3000"})[0] == 403
        assert get(w.port, "/logs/Bad..Name", auth)[0] == 400
        assert get(w.port, "/logs/tick?bogus=1", auth)[0] == 400
    finally:
        w.close()


def test_follow_streams_new_lines_and_caps_followers(circusd, tmp_path, ticker):
    w = http_warden(circusd, tmp_path, "ff", output={"max_followers": 1})
    try:
        with w.http_client() as c:
            assert not c.call_tool("add_process", {"name": "slow", "command": PYTHON, "args": [str(ticker), "40", "0.05"]})["isError"]
        s = socket.create_connection(("127.0.0.1", w.port), timeout=10)
        s.sendall(b"GET /logs/slow?follow=true&limit=0 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_for(lambda: w.metric("circus_warden_log_followers") == 1, 5, what="one follower")
        # The cap: a second follower is refused while the first is open.
        assert get(w.port, "/logs/slow?follow=true")[0] == 503
        data = b""
        deadline = time.time() + 15
        while b"tick 39" not in data and time.time() < deadline:
            data += s.recv(65536)
        s.close()
        texts = [json.loads(ln)["text"] for ln in dechunk(data.split(b"\r\n\r\n", 1)[1]).splitlines()
                 if ln.strip() and json.loads(ln)["type"] == "entry"]
        start = int(texts[0].split()[1])
        assert texts == [f"tick {i}" for i in range(start, 40)], texts
        wait_for(lambda: w.metric("circus_warden_log_followers") == 0, 10, what="the follower slot to be released")
    finally:
        w.close()


def test_slow_follower_is_skipped_ahead_with_exact_counts(circusd, tmp_path, ticker):
    """A reader that stops reading while a process floods a small ring: it is not allowed to hold
    memory; when it reads again it gets `skipped` markers whose counts fill the sequence gaps exactly."""
    w = http_warden(circusd, tmp_path, "fs", output={"stream_cap_bytes": 65536, "max_line_bytes": 4096})
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", w.port))
        s.sendall(b"GET /logs/flood?follow=true HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with w.http_client() as c:
            assert not c.call_tool("add_process", {"name": "flood", "command": PYTHON, "args": [str(ticker), "60000", "0"]})["isError"]
            wait_for(lambda: c.call_tool("get_logs", {"name": "flood", "limit": 1})["structuredContent"]["last_seq"] >= 60000,
                     60, what="the flood to finish")
        s.settimeout(3)
        data = b""
        try:
            while chunk := s.recv(1 << 20):
                data += chunk
        except socket.timeout:
            pass
        s.close()
        objs = [json.loads(ln) for ln in dechunk(data.split(b"\r\n\r\n", 1)[1]).splitlines() if ln.strip()]
        skipped = [o for o in objs if o["type"] == "skipped"]
        entries = [o for o in objs if o["type"] == "entry"]
        assert skipped, "a reader that fell 60000 lines behind a 64 KiB ring got no skipped marker"
        # Walk the stream: every gap in seq is announced by markers adding up to it.
        prev, pending = 0, 0
        for o in objs:
            if o["type"] == "skipped":
                pending += o["lines"]
            elif o["type"] == "entry":
                assert o["seq"] - prev - 1 == pending, f"gap {prev}->{o['seq']} but markers said {pending}"
                prev, pending = o["seq"], 0
        assert entries[-1]["text"] == "tick 59999"
        assert w.metric("circus_warden_log_follow_skipped_lines_total") == sum(o["lines"] for o in skipped)
        print(f"slow follower: {len(entries)} entries delivered, {sum(o['lines'] for o in skipped)} skipped "
              f"in {len(skipped)} markers")
    finally:
        w.close()


def test_legacy_subscription_notifies_coalesced(circusd, tmp_path, ticker):
    """2025-11-25: resources/subscribe through the SDK; updates arrive, no faster than the interval,
    and stop after unsubscribe."""
    from mcp import ClientSession
    from mcp.client.stdio import stdio_client

    w = Warden(base_config(circusd, tmp_path, output={"notify_interval_ms": 500}), tmp_path / "ls", "ls")
    updates: list[float] = []

    async def handler(message):
        root = getattr(message, "root", message)
        if getattr(root, "method", "") == "notifications/resources/updated" and root.params.uri == "logs://sub/recent":
            updates.append(time.monotonic())

    async def main():
        with open(w.log_path, "a") as errlog:
            async with stdio_client(w.stdio_params(), errlog=errlog) as (r, wr):
                async with ClientSession(r, wr, message_handler=handler) as s:
                    await s.initialize()
                    await s.subscribe_resource("logs://sub/recent")
                    res = await s.call_tool("add_process", {"name": "sub", "command": PYTHON, "args": [str(ticker), "60", "0.05"]})
                    assert not res.is_error
                    await asyncio.sleep(3.5)
                    during = list(updates)
                    await s.unsubscribe_resource("logs://sub/recent")
                    await asyncio.sleep(0.6)
                    settled = len(updates)
                    await asyncio.sleep(1.5)
                    after = len(updates) - settled
                    body = json.loads((await s.read_resource("logs://sub/recent")).contents[0].text)
                    with pytest.raises(Exception):
                        await s.subscribe_resource("process://sub/info")
                    return during, after, body

    during, after, body = asyncio.run(asyncio.wait_for(main(), 60))
    assert len(during) >= 2, f"only {len(during)} updates while the process printed for 3 s"
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert min(gaps) >= 0.45, f"updates closer than the 500 ms interval: {gaps}"
    assert after == 0, f"{after} updates after unsubscribe"
    assert body["entries"] and body["entries"][-1]["text"].startswith("tick ")


def test_listen_2026_notifies_subscribed_uri_only(circusd, tmp_path, ticker):
    """2026-07-28: subscriptions/listen over stdio JSON-RPC. The acknowledgment lists the accepted
    URIs (only logs:// ones), updates carry the subscription id, at most one per interval."""
    w = Warden(base_config(circusd, tmp_path, output={"notify_interval_ms": 300}), tmp_path / "ln", "ln")
    p = subprocess.Popen([warden_bin(), "serve", "--config", str(w.config_path), "--transport", "stdio"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(w.log_path, "ab"), cwd=str(w.dir))
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}

    def send(o):
        p.stdin.write((json.dumps(o) + "\n").encode())
        p.stdin.flush()

    def recv(t: float):
        r, _, _ = select.select([p.stdout], [], [], t)
        return json.loads(p.stdout.readline()) if r else None

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}})
        assert "2026-07-28" in recv(10)["result"]["supportedVersions"]
        send({"jsonrpc": "2.0", "id": "l1", "method": "subscriptions/listen", "params": {"_meta": meta, "notifications": {
            "resourceSubscriptions": ["logs://lis/recent", "circus://processes"]}}})
        ack = recv(10)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["notifications"]["resourceSubscriptions"] == ["logs://lis/recent"]
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"_meta": meta, "name": "add_process", "arguments": {
            "name": "lis", "command": PYTHON, "args": [str(ticker), "40", "0.05"]}}})
        t0, updates = time.monotonic(), []
        while time.monotonic() - t0 < 3:
            m = recv(0.5)
            if m and m.get("method") == "notifications/resources/updated":
                assert m["params"]["uri"] == "logs://lis/recent"
                assert m["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "l1"
                updates.append(time.monotonic())
        assert 2 <= len(updates) <= 3 / 0.3 + 1, updates
    finally:
        p.terminate()
        p.wait(10)
