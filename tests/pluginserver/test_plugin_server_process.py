"""The plugin server as a process Kong starts and talks to: its two modes, the protocol's round
trips and instances, the command as an operator runs it (dump, help, priority, socket name,
refused multiprocessing mode, exit when orphaned, a parent that is pid 1), faults in the plugin
or in the bytes Kong hands over, and a dead plugin server (Kong fails open; the ACL guard closes
it). What a token or a handler can do to the RPC stream is in tests/pluginserver/test_protocol_faults.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import (
    bearer,
    guard_config,
    own_gateway,
    plugin_server_env,
    round_trips,
    short_prefix,
    start_script_server,
)
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong

FAULTS = Path(__file__).resolve().parents[1] / "faults"
COMMAND_ENV = {**plugin_server_env(), "HOME": "/tmp"}
# What each server says when it listens: kcauth's core, kong-pdk's threads and gevent modes.
STARTED = {"core": ": core server listening at", "threads": "INFO - ", "gevent": "server (gevent) started at path"}


# --- the modes: `each_mode_kong` really runs each ----------------------------------------------

def test_each_mode_kong_runs_the_server_in_its_mode(each_mode_kong: Kong, server_mode: str) -> None:
    assert ("-g" in each_mode_kong.server.start_cmd.split()) == (server_mode == "gevent")
    log = each_mode_kong.server.log()
    assert STARTED[server_mode] in log, log
    assert ("(gevent)" in log) == (server_mode == "gevent")
    assert ("kong-pdk server" in log) == (server_mode != "core")


# --- the protocol: round trips, instances, concurrency -----------------------------------------

def test_allow_and_reject_paths_cost_three_and_two_round_trips(each_mode_kong: Kong, idp: LocalIdP,
                                                               minter: Minter) -> None:
    kong = each_mode_kong
    entity = kong.plugin(guard_config(idp))
    ok = kong.request(entity, bearer(minter.token()))
    assert ok.status == 200 and ok.proxied
    assert round_trips(ok) == ["kong.request.get_headers", "kong.service.request.set_headers",
                               "kong.ctx.shared.set"]
    refused = kong.request(entity, bearer("garbage"))
    assert refused.status == 401 and not refused.proxied
    assert round_trips(refused) == ["kong.request.get_headers", "kong.response.exit"]


def test_config_change_starts_a_new_instance_and_closes_the_old(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp))
    assert kong.request(entity, bearer(minter.token())).status == 200
    changed = kong.update(entity, guard_config(idp, required_roles=["realm:admin"]))
    assert kong.request(changed, bearer(minter.token())).status == 403
    assert kong.rpc.calls[-4:-2] == ["plugin.StartInstance", "plugin.CloseInstance"]


def test_concurrent_requests(each_mode_kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    kong = each_mode_kong
    entity = kong.plugin(guard_config(idp))
    tokens = [minter.token() for _ in range(8)]
    statuses: list[int] = []

    def client(i: int) -> None:
        for j in range(20):
            statuses.append(kong.request(entity, bearer(tokens[(i + j) % 8])).status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 160


# --- the command, as an operator and Kong run it -----------------------------------------------

def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kcauth-pluginserver", *args], capture_output=True, text=True, timeout=60,
                          env=COMMAND_ENV)


def test_dump_is_what_kong_needs() -> None:
    out = subprocess.run("kcauth-pluginserver --dump", shell=True, capture_output=True, check=True,
                         env=COMMAND_ENV).stdout
    info = json.loads(out)[0]
    assert info["Name"] == "kcauth" and info["Phases"] == ["access"]
    assert 950 < info["Priority"] < 990
    major, minor, patch = info["Version"].split(".")
    assert all(p.isdigit() for p in (major, minor, patch))


def test_the_command_is_kcauths_own() -> None:
    from kong_plugin_kcauth import __version__

    assert run("--version").stdout.strip() == f"kcauth-pluginserver {__version__}"
    helped = run("--help").stdout
    assert helped.startswith("usage: kcauth-pluginserver") and "--priority" in helped and "Kong Gateway" in helped
    dump = json.loads(run("--dump", "--priority", "1100").stdout)[0]
    assert dump["Priority"] == 1100, "Kong's bundled auth plugins run at 1050 to 1450: this moves kcauth among them"
    assert json.loads(run("--dump").stdout)[0]["Priority"] == 980
    refused = run("--kong-prefix", "/nonexistent/prefix")
    assert refused.returncode == 2 and "does not exist" in refused.stderr


def test_multiprocessing_mode_is_refused() -> None:
    res = subprocess.run("kcauth-pluginserver -m --kong-prefix /tmp", shell=True, capture_output=True,
                         text=True, env=plugin_server_env())
    assert res.returncode != 0 and "multiprocessing" in res.stderr


def wait_for_socket(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {path}")


def test_socket_name_given_with_an_equals_sign_is_kept() -> None:
    prefix = short_prefix("kcq")
    proc = subprocess.Popen(["kcauth-pluginserver", f"--kong-prefix={prefix}", "--socket-name=custom.sock"],
                            env=COMMAND_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(prefix / "custom.sock")
        assert not (prefix / "kcauth.socket").exists()
    finally:
        proc.kill()  # killed just as it starts: its hub and workers end with it (none or forking)
        proc.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)
    deadline = time.monotonic() + 3
    while (left := processes_naming(str(prefix))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes outlived the killed server: {left}"


def processes_naming(text: str) -> list[int]:
    """Processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_an_orphaned_plugin_server_exits() -> None:
    """When Kong (its parent) dies, the plugin server must not linger."""
    prefix = short_prefix("kco")
    # Like Kong, the parent stays until the server listens, then dies (kill -9 of Kong).
    launcher = ("import os, subprocess, sys, time; "
                f"p = subprocess.Popen(['kcauth-pluginserver', '--kong-prefix', {str(prefix)!r}], "
                "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                f"[time.sleep(0.05) for _ in range(400) if not os.path.exists({str(prefix / 'kcauth.socket')!r})]; "
                "print(p.pid)")
    try:
        pid = int(subprocess.check_output([sys.executable, "-c", launcher], env=COMMAND_ENV, text=True).strip())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            # Reap it if it was reparented to us (pytest may be a subreaper).
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        os.kill(pid, 9)
        raise AssertionError("the orphaned plugin server kept running")
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def test_a_server_whose_parent_is_pid_1_keeps_serving() -> None:
    """systemd, tini, `docker --init` or Kong's "managed externally" mode: the parent is init
    from the start, so there is no Kong to outlive."""
    prefix = short_prefix("kc1")
    # A new pid namespace whose pid 1 is a shell that stays; the server is its child.
    script = f"kcauth-pluginserver --kong-prefix {prefix} & echo ppid-$(cat /proc/$!/stat | cut -d' ' -f4); wait"
    proc = subprocess.Popen(["unshare", "--fork", "--pid", "--mount-proc", "sh", "-c", script],
                            env=COMMAND_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ppid-1", "the server's parent is pid 1"
        wait_for_socket(prefix / "kcauth.socket")
        time.sleep(3)  # the old parent watch exited within a second
        assert proc.poll() is None
        wait_for_socket(prefix / "kcauth.socket", seconds=2)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)


# --- faults: in the plugin's code, in the bytes Kong hands over --------------------------------

def test_plugin_fault_is_refused_and_the_server_keeps_answering(idp: LocalIdP, minter: Minter) -> None:
    with own_gateway(env={"PYTHONPATH": str(FAULTS), "KCAUTH_TEST_FAULT": "1"}, rpc_timeout=5) as gateway:
        entity = gateway.plugin(guard_config(idp))
        boom = gateway.request(entity, bearer("boom"))
        assert boom.status == 500 and not boom.proxied
        assert boom.body == {"message": "An unexpected error occurred"}
        assert any("ZeroDivisionError" in line for line in gateway.error_log)
        assert not any("boom" in line for line in gateway.error_log), "no token text in logs"
        for _ in range(3):
            assert gateway.request(entity, bearer(minter.token())).status == 200
            assert gateway.request(entity, bearer("boom")).status == 500
        assert gateway.server.alive()


def test_non_utf8_header_bytes_do_not_open_the_gateway(each_mode_kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    kong = each_mode_kong
    entity = kong.plugin(guard_config(idp))
    res = kong.request(entity, [("Authorization", b"Bearer \xff\xfe"), ("X-Junk", b"\xc3\x28")])
    assert res.status == 401 and not res.proxied, res.errors
    res = kong.request(entity, bearer(minter.token()) + [("User-Agent", b"caf\xe9")])
    assert res.status == 200, res.errors
    assert res.errors == []


def test_stock_kong_pdk_listener_would_fail_open_on_the_same_bytes(idp: LocalIdP) -> None:
    """Why kcauth ships its own listener: the same plugin class under kong-pdk's stock server."""
    prefix = short_prefix("kcs")
    server = start_script_server(prefix, f"{sys.executable} {FAULTS / 'stock_server.py'} --no-lua-style",
                                 "kcauth.socket")
    gateway = Kong(server, rpc_timeout=3)
    try:
        entity = gateway.plugin(guard_config(idp))
        assert gateway.request(entity, [("Authorization", "Bearer x")]).status == 401
        res = gateway.request(entity, [("Authorization", b"Bearer \xff")])
        assert res.status == 200 and res.proxied and res.errors, "stock kong-pdk drops the connection"
    finally:
        gateway.rpc.close()
        server.stop()
        shutil.rmtree(prefix, ignore_errors=True)


# --- a dead plugin server: Kong fails open, the ACL guard closes it ------------------------------

def test_dead_plugin_server_fails_open_in_kong_and_the_acl_guard_closes_it(
        idp: LocalIdP, minter: Minter) -> None:
    with own_gateway(rpc_timeout=5) as gateway:
        server = gateway.server
        entity = gateway.plugin(guard_config(idp))
        guarded = gateway.request(entity, bearer(minter.token()), acl_allow=["kcauth:authenticated"])
        assert guarded.status == 200 and guarded.upstream("X-Authenticated-Groups") == ["kcauth:authenticated"]
        server.kill()
        gateway.rpc.close()
        unguarded = gateway.request(entity, [])
        assert unguarded.status == 200 and unguarded.proxied, "Kong itself fails open"
        assert unguarded.errors, "and only logs the error"
        closed = gateway.request(entity, [], acl_allow=["kcauth:authenticated"])
        assert closed.status == 401 and not closed.proxied, "the ACL guard refuses it"
        server.start()
        back = gateway.request(entity, bearer(minter.token()), acl_allow=["kcauth:authenticated"])
        assert back.status == 200, back.errors
