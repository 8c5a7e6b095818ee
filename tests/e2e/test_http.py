"""End-to-end tests of the HTTP surface: /healthz, /readyz, bearer auth, Host/Origin checks, body cap.

Owns the HTTP-only contract points of docs/interface.md ("HTTP" section and server.* keys),
exercised with raw http.client requests (and the SDK client for the authorised path).
"""

from __future__ import annotations

import json

import pytest

from harness import Circusd, base_config, ok, wait_for

pytestmark = pytest.mark.timeout(90)

TOKEN = "e2e-token-7f3a9c1d2b4e6f80"


def init_payload(pad: int = 0) -> dict:
    p = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "raw-e2e", "version": "0"}}}
    if pad:
        p["params"]["clientInfo"]["padding"] = "p" * pad
    return p


@pytest.fixture
def http_warden(warden_factory, circusd_mod, workroot):
    def make(**over):
        w = warden_factory(base_config(circusd_mod, workroot, **over), "http")
        return w.start_http()
    return make


def test_healthz_and_readyz(http_warden):
    w = http_warden()
    assert w.http().request("GET", "/healthz")[0] == 200
    wait_for(lambda: w.readyz() == 200, 10, what="/readyz 200")


def test_readyz_follows_circusd(warden_factory, circusd: Circusd, workroot):
    cfg = base_config(circusd, workroot, circus={"connect_timeout_ms": 500, "read_timeout_ms": 1000})
    w = warden_factory(cfg, "readyz").start_http()
    wait_for(lambda: w.readyz() == 200, 10, what="/readyz 200 while circusd is up")
    circusd.kill9()
    wait_for(lambda: w.readyz() == 503, 10, what="/readyz 503 after circusd died")
    assert w.http().request("GET", "/healthz")[0] == 200, "/healthz must stay 200 while the process lives"
    circusd.restart_same_endpoints()
    wait_for(lambda: w.readyz() == 200, 15, what="/readyz 200 after circusd came back")


# --------------------------------------------------------------------------- bearer auth


@pytest.fixture
def auth_warden(http_warden):
    # With tokens, a caller's identity is its token's; the policy must name it.
    return http_warden(server={"tokens": [{"identity": "ci", "token": TOKEN}]},
                       policy={"document": {"identities": {"ci": {"tools": ["*"], "programs": ["*"]}}}})


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN,
                                  f"Bearer {TOKEN[:-1]}", "Bearer "],
                         ids=["none", "wrong", "suffix", "basic", "no-scheme", "prefix", "empty"])
def test_bearer_required(auth_warden, auth):
    raw = auth_warden.http()
    headers = {"Authorization": auth} if auth is not None else {}
    status, _, body = raw.post_mcp(init_payload(), headers=headers)
    assert status == 401, f"expected 401, got {status}: {body[:200]!r}"


def test_bearer_required_on_get_and_delete(auth_warden):
    raw = auth_warden.http()
    for method in ("GET", "DELETE"):
        status, _, _ = raw.request(method, "/mcp", headers={"Accept": "text/event-stream"}, timeout=5)
        assert status == 401, f"{method} /mcp without token: {status}"


def test_bearer_right_token_works(auth_warden):
    raw = auth_warden.http()
    raw.token = TOKEN
    raw.initialize()
    st, msgs = raw.rpc("tools/call", {"name": "list_processes", "arguments": {}})
    assert st == 200 and "result" in msgs[0], (st, msgs)
    with auth_warden.http_client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        ok(c.call_tool("list_processes", {}))


def test_health_endpoints_need_no_token(auth_warden):
    assert auth_warden.http().request("GET", "/healthz")[0] == 200
    assert auth_warden.readyz() in (200, 503)


# --------------------------------------------------------------------------- Host / Origin


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost.evil.example"])
def test_foreign_host_rejected(http_warden, host):
    w = http_warden()
    status, _, body = w.http().post_mcp(init_payload(), headers={"Host": host.format(port=w.port)})
    assert status == 403, f"Host {host}: expected 403, got {status}: {body[:200]!r}"


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "localhost"])
def test_allowed_host_accepted(http_warden, host):
    w = http_warden()
    status, _, body = w.http().post_mcp(init_payload(), headers={"Host": host.format(port=w.port)})
    assert status == 200, f"Host {host}: expected 200, got {status}: {body[:200]!r}"


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:8080"])
def test_local_origin_accepted(http_warden, origin):
    """The default allowed_origins admit local pages (http://localhost:*, http://127.0.0.1:*)."""
    w = http_warden()
    status, _, body = w.http().post_mcp(init_payload(), headers={"Origin": origin})
    assert status == 200, f"Origin {origin}: expected 200, got {status}: {body[:200]!r}"


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost.evil.example:80", "null"])
def test_foreign_origin_rejected(http_warden, origin):
    """A browser Origin outside allowed_origins must not reach the MCP endpoint (DNS rebinding)."""
    w = http_warden()
    status, _, body = w.http().post_mcp(init_payload(), headers={"Origin": origin})
    assert status == 403, f"Origin {origin}: expected 403, got {status}: {body[:200]!r}"


# --------------------------------------------------------------------------- body cap


@pytest.fixture
def small_body_warden(http_warden):
    return http_warden(server={"max_body_bytes": 4096})


def test_body_over_cap_413(small_body_warden):
    body = json.dumps(init_payload(pad=8192)).encode()
    assert len(body) > 4096
    status, _, resp = small_body_warden.http().post_mcp(body)
    assert status == 413, f"expected 413, got {status}: {resp[:200]!r}"


def test_chunked_body_over_cap_413(small_body_warden):
    body = json.dumps(init_payload(pad=65536)).encode()
    status, _, resp = small_body_warden.http().post_mcp(body, chunked=True)
    assert status == 413, f"expected 413 for a chunked body, got {status}: {resp[:200]!r}"


def test_body_under_cap_accepted(small_body_warden):
    body = json.dumps(init_payload(pad=2048)).encode()
    assert len(body) < 4096
    status, _, resp = small_body_warden.http().post_mcp(body)
    assert status == 200, f"{status}: {resp[:200]!r}"
    # and the server is still fine after an oversized one
    small_body_warden.http().post_mcp(json.dumps(init_payload(pad=8192)).encode())
    assert small_body_warden.http().request("GET", "/healthz")[0] == 200


def test_default_body_cap_is_1mib(http_warden):
    w = http_warden()
    body = json.dumps(init_payload(pad=1048576)).encode()
    status, _, _ = w.http().post_mcp(body, timeout=30)
    assert status == 413, status
