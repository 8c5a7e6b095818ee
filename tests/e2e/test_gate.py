"""End-to-end tests of the deny-by-default gate (the policy engine), over stdio and HTTP.

Owns: every denial path of add_process and the lifecycle tools (executable allowlist and
canonicalisation, circus expansions and control bytes in args, watcher names, env, working_dir,
process cap, signals, protected watchers, unknown argument keys, circus options outside the
policy's `options` allowlist or bounds) and the canary check that a denied command never ran.
Each denial must be a tool result with isError and the contract's error shape naming the
offending field and the policy rule that fired, and circusd (checked with a raw DEALER) must
be unchanged. The policy is harness.e2e_policy (sleep and python with any arguments, so that
these denials come from the checks under test) with `keep-me` in `watchers.protected`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness import (
    PYTHON,
    SLEEP,
    circus_call,
    ok,
    pid_alive,
    tool_error,
    unique_name,
    wait_for,
    watcher_exists,
    watcher_names,
    watcher_options,
    watcher_pids,
    watcher_status,
)

pytestmark = [pytest.mark.usefixtures("cleanup_watchers"), pytest.mark.timeout(120)]

DENIED = ("denied",)
# Malformed values (bad name syntax, control bytes, sizes) may reasonably be either kind.
DENIED_OR_INVALID = ("denied", "invalid_arguments")


def snapshot(endpoint: str) -> set[str]:
    return set(watcher_names(endpoint))


def has_rule(err: dict, rule: str) -> bool:
    return any(v.get("rule") == rule for v in err.get("violations") or [])


def expect_add_refused(mcp, args: dict, field: str | None, kinds=DENIED, rule: str | None = None) -> dict:
    """The add is refused with one of `kinds`, a violation on `field`, and (when the kind is
    `denied`) a violation with policy rule `rule`; circusd is unchanged."""
    before = snapshot(mcp.endpoint)
    res = mcp.call("add_process", args)
    err = tool_error(res, kinds, field)
    if rule is not None and err["kind"] == "denied":
        assert has_rule(err, rule), f"rule {rule!r} did not fire: {err['violations']}"
    after = snapshot(mcp.endpoint)
    assert after == before, f"circusd watchers changed after a refused add: {sorted(after ^ before)}"
    name = args.get("name")
    if isinstance(name, str) and name:
        assert name not in after, f"watcher {name!r} exists in circusd"
    return err


def sleep_args(name: str | None = None, **kw) -> dict:
    return {"name": unique_name() if name is None else name, "command": SLEEP, "args": ["3600"], **kw}


# --------------------------------------------------------------------------- executables


@pytest.mark.parametrize("command,rule", [
    ("/bin/sh", "command.not_allowed"),
    ("/usr/bin/env", "command.not_allowed"),
    ("../bin/sh", "command.resolve"),
    ("./sleep", "command.resolve"),
    ("/usr/bin/../bin/sh", "command.not_allowed"),
    ("sh", "command.not_allowed"),
    (f"{SLEEP} 10", "command.resolve"),
    ("/nonexistent/program", "command.resolve"),
    ("/usr/bin/sl*p", "command.glob"),
], ids=["sh", "env", "dotdot-relative", "dot-relative", "dotdot-absolute", "bare-sh", "with-space", "missing",
        "glob"])
def test_executable_not_allowed(mcp, command, rule):
    expect_add_refused(mcp, {"name": unique_name(), "command": command, "args": []}, "command", rule=rule)


def test_symlink_to_disallowed_program(mcp):
    link = mcp.workroot / f"innocent-{mcp.transport}"
    if not link.is_symlink():
        link.symlink_to("/bin/sh")
    expect_add_refused(mcp, {"name": unique_name(), "command": str(link), "args": ["-c", "true"]}, "command",
                       rule="command.not_allowed")


def test_symlink_named_like_allowed_program(mcp):
    d = mcp.workroot / f"fakebin-{mcp.transport}"
    d.mkdir(exist_ok=True)
    link = d / "sleep"
    if not link.is_symlink():
        link.symlink_to("/bin/sh")
    expect_add_refused(mcp, {"name": unique_name(), "command": str(link), "args": ["-c", "true"]}, "command",
                       rule="command.not_allowed")


def test_copy_of_allowed_binary_in_writable_dir(mcp):
    """A byte-identical copy of sleep outside its allowed path is another program."""
    import shutil

    d = mcp.workroot / f"copybin-{mcp.transport}"
    d.mkdir(exist_ok=True)
    copy = d / "sleep"
    if not copy.exists():
        shutil.copy2(SLEEP, copy)
    expect_add_refused(mcp, {"name": unique_name(), "command": str(copy), "args": ["3600"]}, "command",
                       rule="command.not_allowed")


# --------------------------------------------------------------------------- args


@pytest.mark.parametrize("arg", [
    "$(circus.env.HOME)",
    "x$(circus.env.PATH)y",
    "((circus.env.HOME))",
    "$(circus.wid)",
    "((circus.wid))",
    "$(CIRCUS.ENV.HOME)",
], ids=["env", "env-embedded", "paren-env", "wid", "paren-wid", "upper"])
def test_circus_expansion_in_args_denied(mcp, arg):
    expect_add_refused(mcp, sleep_args(args=["3600", arg]), "args", rule="text.expansion")


@pytest.mark.parametrize("arg", ["a\x00b", "a\nb", "a\rb"], ids=["nul", "newline", "cr"])
def test_control_bytes_in_args_denied(mcp, arg):
    expect_add_refused(mcp, sleep_args(args=["3600", arg]), "args", DENIED_OR_INVALID, rule="text.control")


def test_too_many_args_denied(mcp):
    expect_add_refused(mcp, sleep_args(args=["1"] * 65), "args", DENIED_OR_INVALID, rule="args.count")


def test_arg_too_long_denied(mcp):
    expect_add_refused(mcp, sleep_args(args=["3600", "x" * 4097]), "args", DENIED_OR_INVALID, rule="args.length")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", [
    "w*", "w?", "[w]", "", "W1", "-lead", "a" * 65, "a b", "a/b", "a.b", "ünï", "circusd-stats", "keep-me",
], ids=["glob-star", "glob-q", "glob-class", "empty", "upper", "leading-dash", "too-long", "space",
        "slash", "dot", "non-ascii", "circusd-stats", "protected"])
def test_bad_names_denied(mcp, name):
    protected = name in ("circusd-stats", "keep-me")
    kinds = DENIED if protected else DENIED_OR_INVALID
    expect_add_refused(mcp, sleep_args(name=name), "name", kinds, rule="name.protected" if protected else "name.syntax")


def test_upper_case_collision(mcp):
    name = unique_name("coll")
    ok(mcp.call("add_process", sleep_args(name=name)))
    pids = wait_for(lambda: watcher_pids(mcp.endpoint, name), 15, what="first watcher running")
    expect_add_refused(mcp, sleep_args(name=name.upper(), args=["7200"]), "name", DENIED_OR_INVALID)
    # the original is untouched
    assert watcher_options(mcp.endpoint, name)["args"] == ["3600"]
    assert watcher_pids(mcp.endpoint, name) == pids
    assert sum(1 for w in watcher_names(mcp.endpoint) if w.lower() == name) == 1


@pytest.mark.parametrize("tool", ["stop_process", "restart_process", "reload_process", "remove_process"])
def test_lifecycle_glob_name_denied(mcp, tool):
    name = unique_name("glob")
    ok(mcp.call("add_process", sleep_args(name=name)))
    pids = wait_for(lambda: watcher_pids(mcp.endpoint, name), 15, what="running")
    res = mcp.call(tool, {"name": "glob*"})
    err = tool_error(res, DENIED_OR_INVALID + ("not_found",), None)
    if err["kind"] == "denied":
        assert has_rule(err, "name.syntax"), err
    assert watcher_exists(mcp.endpoint, name)
    assert watcher_status(mcp.endpoint, name) == "active"
    assert watcher_pids(mcp.endpoint, name) == pids


# --------------------------------------------------------------------------- env


@pytest.mark.parametrize("var", ["LD_PRELOAD", "PYTHONPATH", "LD_LIBRARY_PATH"])
def test_dangerous_env_denied(mcp, var):
    expect_add_refused(mcp, sleep_args(env={var: "/tmp/evil"}), "env", rule="env.denied")


def test_env_with_circus_expansion_denied(mcp):
    expect_add_refused(mcp, sleep_args(env={"FOO": "$(circus.env.HOME)"}), "env", rule="text.expansion")


def test_env_not_in_policy_denied(mcp):
    expect_add_refused(mcp, sleep_args(env={"BAR": "x"}), "env", rule="env.not_allowed")


def test_owner_marker_cannot_be_set(mcp):
    """CIRCUS_WARDEN_OWNER is how the warden marks ownership: a request may never set it."""
    expect_add_refused(mcp, sleep_args(env={"CIRCUS_WARDEN_OWNER": "someone-else"}), "env", rule="env.denied")


# --------------------------------------------------------------------------- working_dir


def test_working_dir_outside_roots(mcp):
    expect_add_refused(mcp, sleep_args(working_dir="/etc"), "working_dir", rule="working_dir.roots")


def test_working_dir_prefix_sibling(mcp):
    sibling = Path(str(mcp.workroot) + "-evil")
    sibling.mkdir(exist_ok=True)
    try:
        expect_add_refused(mcp, sleep_args(working_dir=str(sibling)), "working_dir", rule="working_dir.roots")
    finally:
        os.rmdir(sibling)


def test_working_dir_dotdot_escape(mcp):
    expect_add_refused(mcp, sleep_args(working_dir=f"{mcp.workroot}/.."), "working_dir", rule="working_dir.roots")


def test_working_dir_symlink_escape(mcp):
    link = mcp.workroot / f"etc-link-{mcp.transport}"
    if not link.is_symlink():
        link.symlink_to("/etc")
    expect_add_refused(mcp, sleep_args(working_dir=str(link)), "working_dir", rule="working_dir.roots")


def test_working_dir_relative(mcp):
    expect_add_refused(mcp, sleep_args(working_dir="."), "working_dir", DENIED_OR_INVALID, rule="working_dir.resolve")


def test_working_dir_dangling_symlink(mcp):
    link = mcp.workroot / f"dangling-{mcp.transport}"
    if not link.is_symlink():
        link.symlink_to(mcp.workroot / "does-not-exist")
    expect_add_refused(mcp, sleep_args(working_dir=str(link)), "working_dir", rule="working_dir.resolve")


def test_working_dir_inside_root_allowed(mcp):
    sub = mcp.workroot / f"ok-{mcp.transport}"
    sub.mkdir(exist_ok=True)
    name = unique_name()
    ok(mcp.call("add_process", sleep_args(name=name, working_dir=str(sub))))
    assert watcher_options(mcp.endpoint, name)["working_dir"] == str(sub)


def test_working_dir_sent_canonical(mcp):
    """A working_dir given through a symlink and `..` inside the root is sent canonical."""
    sub = mcp.workroot / f"canon-{mcp.transport}"
    sub.mkdir(exist_ok=True)
    link = mcp.workroot / f"canon-link-{mcp.transport}"
    if not link.is_symlink():
        link.symlink_to(sub)
    name = unique_name()
    ok(mcp.call("add_process", sleep_args(name=name, working_dir=f"{link}/../{sub.name}/.")))
    assert watcher_options(mcp.endpoint, name)["working_dir"] == str(sub)


# --------------------------------------------------------------------------- process cap


def test_num_processes_over_cap(mcp):
    expect_add_refused(mcp, sleep_args(num_processes=5), "num_processes", rule="processes.per_watcher")


def test_num_processes_zero(mcp):
    expect_add_refused(mcp, sleep_args(num_processes=0), "num_processes", rule="processes.per_watcher")


def test_scale_over_cap(mcp):
    name = unique_name()
    ok(mcp.call("add_process", sleep_args(name=name, num_processes=2)))
    res = mcp.call("scale_process", {"name": name, "num_processes": 5})
    err = tool_error(res, DENIED, "num_processes")
    assert has_rule(err, "processes.per_watcher"), err
    assert circus_call(mcp.endpoint, "numprocesses", name=name)["numprocesses"] == 2


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", ["KILL", "SIGKILL", "9", "STOP", "SIGSTOP", "BOGUS"])
def test_signal_not_allowed(mcp, sig):
    name = unique_name()
    ok(mcp.call("add_process", sleep_args(name=name)))
    (pid,) = wait_for(lambda: watcher_pids(mcp.endpoint, name), 15, what="running")
    res = mcp.call("signal_process", {"name": name, "signal": sig})
    err = tool_error(res, DENIED_OR_INVALID if sig == "BOGUS" else DENIED, "signal")
    if err["kind"] == "denied":
        assert has_rule(err, "signal.not_allowed"), err
    time.sleep(0.3)  # a signal, if sent, acts at once
    assert pid_alive(pid) and psutil_status_ok(pid)
    assert watcher_pids(mcp.endpoint, name) == [pid]


def psutil_status_ok(pid: int) -> bool:
    import psutil

    return psutil.Process(pid).status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)


# --------------------------------------------------------------------------- protected watchers


@pytest.fixture
def protected_watcher(mcp):
    ep = mcp.endpoint
    if not watcher_exists(ep, "keep-me"):
        circus_call(ep, "add", name="keep-me", cmd=SLEEP, args=["3600"], start=True, waiting=True)
    pids = wait_for(lambda: watcher_pids(ep, "keep-me"), 15, what="keep-me running")
    yield pids


@pytest.mark.parametrize("tool,extra", [
    ("stop_process", {}), ("restart_process", {}), ("reload_process", {}), ("remove_process", {}),
    ("start_process", {}), ("scale_process", {"num_processes": 2}), ("signal_process", {"signal": "HUP"}),
])
def test_protected_watcher_untouched(mcp, protected_watcher, tool, extra):
    res = mcp.call(tool, {"name": "keep-me", **extra})
    err = tool_error(res, DENIED, "name")
    assert has_rule(err, "name.protected"), err
    assert watcher_status(mcp.endpoint, "keep-me") == "active"
    assert watcher_pids(mcp.endpoint, "keep-me") == protected_watcher
    assert circus_call(mcp.endpoint, "numprocesses", name="keep-me")["numprocesses"] == 1


@pytest.mark.parametrize("tool", ["stop_process", "remove_process", "restart_process"])
def test_circusd_stats_never_touched(mcp, tool):
    res = mcp.call(tool, {"name": "circusd-stats"})
    err = tool_error(res, DENIED, "name")
    assert has_rule(err, "name.protected"), err


@pytest.mark.parametrize("tool,extra", [
    ("stop_process", {}), ("remove_process", {}), ("signal_process", {"signal": "TERM"}),
    ("scale_process", {"num_processes": 2}),
])
def test_watcher_not_created_through_the_warden_untouched(mcp, tool, extra):
    """`watchers: owned`: a watcher added to circusd directly (an ini service, another tool)
    has no owner, so the caller may not act on it."""
    ep = mcp.endpoint
    name = unique_name("foreign")
    circus_call(ep, "add", name=name, cmd=SLEEP, args=["3600"], start=True, waiting=True)
    pids = wait_for(lambda: watcher_pids(ep, name), 15, what="foreign watcher running")
    res = mcp.call(tool, {"name": name, **extra})
    err = tool_error(res, DENIED, "name")
    assert has_rule(err, "watcher.scope"), err
    assert watcher_status(ep, name) == "active"
    assert watcher_pids(ep, name) == pids


# --------------------------------------------------------------------------- unknown argument keys


@pytest.mark.parametrize("key,value", [
    ("hooks", {"before_start": "os.system"}),
    ("shell", True),
    ("copy_env", True),
    ("stdout_stream", {"class": "subprocess.Popen", "args": ["/usr/bin/true"]}),
    ("stderr_stream", {"class": "FileStream", "filename": "/tmp/x.log"}),
    ("uid", 0),
    ("executable", "/bin/sh"),
    ("rlimit_nofile", None),
    ("hooks.before_start", "os.system"),
], ids=["hooks", "shell", "copy_env", "stdout_stream", "stderr_stream", "uid", "executable", "rlimit", "hooks-dotted"])
def test_unknown_argument_keys_rejected(mcp, key, value):
    args = sleep_args(**{key: value})
    err = expect_add_refused(mcp, args, None, ("invalid_arguments",))
    names_key = any(key in str(v.get("field", "")) or key in str(v.get("message", ""))
                    for v in err.get("violations") or []) or key in err["message"]
    assert names_key, f"error does not name the unknown key {key!r}: {err}"


@pytest.mark.parametrize("key,value", [
    ("hooks", {"before_start": "os.system"}),
    ("hooks.before_start", "os.system"),
    ("shell", True),
    ("copy_env", True),
    ("stdout_stream", {"class": "subprocess.Popen", "args": ["/usr/bin/true"]}),
    ("stderr_stream.class", "subprocess.Popen"),
    ("uid", 0),
    ("gid", 0),
    ("rlimit_nofile", None),
    ("env", {"LD_PRELOAD": "/tmp/x.so"}),
    ("cmd", "/bin/sh"),
    ("args", ["-c", "id"]),
    ("numprocesses", 50),
    ("working_dir", "/"),
    ("use_sockets", True),
], ids=["hooks", "hooks-dotted", "shell", "copy_env", "stdout_stream", "stderr_stream-dotted", "uid", "gid",
        "rlimit", "env", "cmd", "args", "numprocesses", "working_dir", "use_sockets"])
def test_circus_options_outside_allowlist_denied(mcp, key, value):
    """`options{}` carries only keys the policy's `options` lists; everything else is denied."""
    expect_add_refused(mcp, sleep_args(options={key: value}), f"options.{key}", rule="options.not_allowed")


@pytest.mark.parametrize("key,value", [
    ("graceful_timeout", 61), ("graceful_timeout", 0.5), ("graceful_timeout", -1), ("graceful_timeout", "10"),
    ("max_retry", 11), ("warmup_delay", 1e9), ("respawn", "yes"), ("respawn", 1),
], ids=["gt-over", "gt-under", "gt-negative", "gt-string", "retry-over", "warmup-huge", "respawn-str", "respawn-int"])
def test_circus_options_out_of_bounds_denied(mcp, key, value):
    expect_add_refused(mcp, sleep_args(options={key: value}), f"options.{key}", rule="options.bound")


def test_circus_options_within_bounds_sent(mcp):
    name = unique_name()
    ok(mcp.call("add_process", sleep_args(name=name, options={"graceful_timeout": 7, "max_retry": 3,
                                                               "respawn": False})))
    opts = watcher_options(mcp.endpoint, name)
    assert float(opts["graceful_timeout"]) == 7.0
    assert int(opts["max_retry"]) == 3
    assert opts["respawn"] is False


# --------------------------------------------------------------------------- canary


def test_denied_commands_never_run(mcp):
    """Every denied add would create a canary file if its command ever ran: none may appear."""
    canary_dir = mcp.workroot / f"canary-{mcp.transport}"
    canary_dir.mkdir(exist_ok=True)
    canaries = []

    def touch_script(tag: str) -> tuple[str, Path]:
        path = canary_dir / tag
        canaries.append(path)
        return f"open({str(path)!r}, 'w').write('ran')", path

    cases = []
    s, _ = touch_script("ld_preload")
    cases.append({"command": PYTHON, "args": ["-c", s], "env": {"LD_PRELOAD": "/nonexistent.so"}})
    s, _ = touch_script("pythonpath")
    cases.append({"command": PYTHON, "args": ["-c", s], "env": {"PYTHONPATH": "/tmp"}})
    s, _ = touch_script("workdir")
    cases.append({"command": PYTHON, "args": ["-c", s], "working_dir": "/etc"})
    s, _ = touch_script("expansion")
    cases.append({"command": PYTHON, "args": ["-c", s, "$(circus.env.HOME)"]})
    s, _ = touch_script("hooks")
    cases.append({"command": PYTHON, "args": ["-c", s], "hooks": {"before_start": "os.getcwd"}})
    s, _ = touch_script("hooks_option")
    cases.append({"command": PYTHON, "args": ["-c", s], "options": {"hooks": {"before_start": "os.getcwd"}}})
    s, _ = touch_script("cap")
    cases.append({"command": PYTHON, "args": ["-c", s], "num_processes": 5})
    s, _ = touch_script("shell")
    cases.append({"command": "/bin/sh", "args": ["-c", s]})
    _, p = touch_script("touch")
    cases.append({"command": "/usr/bin/touch", "args": [str(p)]})
    _, p = touch_script("stream")
    cases.append({"command": SLEEP, "args": ["3600"],
                  "stdout_stream": {"class": "subprocess.Popen", "args": ["/usr/bin/touch", str(p)]}})
    _, p = touch_script("stream_option")
    cases.append({"command": SLEEP, "args": ["3600"],
                  "options": {"stdout_stream": {"class": "subprocess.Popen", "args": ["/usr/bin/touch", str(p)]}}})
    s, _ = touch_script("nul")
    cases.append({"command": PYTHON, "args": ["-c", s, "a\x00b"]})

    before = snapshot(mcp.endpoint)
    for case in cases:
        res = mcp.call("add_process", {"name": unique_name("canary"), **case})
        assert res.get("isError") is True, f"add was not refused: {case} -> {res}"
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        ran = [c.name for c in canaries if c.exists()]
        assert not ran, f"denied commands ran: {ran}"
        time.sleep(0.1)
    assert snapshot(mcp.endpoint) == before
