"""`kcauth-pluginserver --ready`, the kubelet's probe of a plugin server run beside Kong (a
sidecar, deploy/kubernetes/): run as the probe runs it, against the real plugin server process in
each of its modes, against no socket, a socket file its killed server left behind, and sockets
that accept but never answer, hang up, or answer something else than Kong's protocol."""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from kong_plugin_kcauth.server import READY_TIMEOUT, readiness
from tests.conftest import (
    BIN,
    SERVER_MODES,
    bearer,
    guard_config,
    own_gateway,
    plugin_server_env,
    short_prefix,
    start_plugin_server,
)
from tests.harness.idp import LocalIdP, Minter

SOCKET = "kcauth.socket"
# Python's start and the command's imports, on top of the bound (~0.16 s measured here).
STARTUP_SLACK = 1.5


def probe(prefix: Path, *extra: str) -> tuple[int, str, float]:
    """The probe as the kubelet runs it: (exit status, stderr, seconds)."""
    started = time.monotonic()
    done = subprocess.run([f"{BIN}/kcauth-pluginserver", "--ready", "--kong-prefix", str(prefix),
                           "--socket-name", SOCKET, *extra],
                          capture_output=True, text=True, timeout=30, env=plugin_server_env())
    return done.returncode, done.stderr, time.monotonic() - started


@pytest.fixture
def prefix() -> Iterator[Path]:
    path = short_prefix("kcr")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode", list(SERVER_MODES))
def test_ready_while_the_server_serves(prefix: Path, mode: str) -> None:
    server = start_plugin_server(prefix, SERVER_MODES[mode])
    try:
        status, err, _ = probe(prefix)
        assert (status, err) == (0, ""), err
        assert readiness(str(prefix / SOCKET)) is None
    finally:
        server.stop()


def test_not_ready_without_a_socket(prefix: Path) -> None:
    status, err, _ = probe(prefix)
    assert status == 1
    assert err == f"kcauth-pluginserver: not ready: no socket at {prefix / SOCKET}\n"
    missing = prefix / "gone"  # a prefix that does not exist says the same, not a usage error
    assert readiness(str(missing / SOCKET)) == f"no socket at {missing / SOCKET}"


def test_not_ready_with_the_stale_socket_file_of_a_killed_server(prefix: Path) -> None:
    server = start_plugin_server(prefix)
    try:
        assert probe(prefix)[0] == 0
    finally:
        server.kill()
    assert stat.S_ISSOCK((prefix / SOCKET).stat().st_mode), "SIGKILL leaves the socket file behind"
    status, err, _ = probe(prefix)
    assert status == 1
    assert err == f"kcauth-pluginserver: not ready: nothing listens at {prefix / SOCKET} (a stale socket file)\n"


class SilentServer:
    """A Unix socket that accepts every connection and reads what comes, then never answers
    (`reply`: sends those bytes and holds on; `hang_up`: closes each connection instead)."""

    def __init__(self, path: Path, hang_up: bool = False, reply: bytes = b"") -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.hang_up, self.reply = hang_up, reply
        self.held: list[socket.socket] = []
        self.received = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.received += conn.recv(65536)
            conn.sendall(self.reply)
            if self.hang_up:
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def test_bounded_when_the_socket_accepts_but_never_answers(prefix: Path) -> None:
    silent = SilentServer(prefix / SOCKET)
    try:
        status, err, took = probe(prefix, "--ready-timeout", "0.5")
        assert status == 1
        assert err == f"kcauth-pluginserver: not ready: no answer from {prefix / SOCKET} within 0.5 s\n"
        assert 0.5 <= took < 0.5 + STARTUP_SLACK
        assert b"plugin.GetStatus" in silent.received, "the one call it makes is Kong's GetStatus"

        started = time.monotonic()
        assert readiness(str(prefix / SOCKET)) == f"no answer from {prefix / SOCKET} within {READY_TIMEOUT:g} s"
        assert READY_TIMEOUT <= time.monotonic() - started < READY_TIMEOUT + 0.5, "the default bound holds"
    finally:
        silent.close()


def test_not_ready_when_the_socket_hangs_up(prefix: Path) -> None:
    silent = SilentServer(prefix / SOCKET, hang_up=True)
    try:
        status, err, took = probe(prefix)
        assert status == 1 and took < READY_TIMEOUT, "a hang-up is told at once, not after the bound"
        assert err == f"kcauth-pluginserver: not ready: {prefix / SOCKET} closed the connection without an answer\n"
    finally:
        silent.close()


def test_probing_leaves_kongs_instances_and_traffic_alone(idp: LocalIdP, minter: Minter) -> None:
    with own_gateway() as kong:
        entity = kong.plugin(guard_config(idp))
        assert kong.request(entity, bearer(minter.token())).status == 200
        for _ in range(3):
            assert probe(kong.server.prefix)[0] == 0
        calls = len(kong.rpc.calls)
        assert kong.request(entity, bearer(minter.token())).status == 200
        assert "plugin.StartInstance" not in kong.rpc.calls[calls:], "the instance Kong started is still there"
        assert kong.request(entity, bearer("garbage")).status == 401


@pytest.mark.parametrize(("reply", "reason"), [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "the answer is not Kong's MessagePack-RPC"),
    (msgpack.packb([1, 7, None, {}]), "the answer is not Kong's MessagePack-RPC"),  # not the call it made
    (msgpack.packb([2, "serverPid", [42]]) + msgpack.packb([1, 1, "RPC for plugin.GetStatus is not supported", None]),
     "the server answered with an error: RPC for plugin.GetStatus is not supported"),
], ids=["http", "another-request", "an-error-after-a-notification"])
def test_not_ready_when_the_answer_is_not_a_plugin_servers(prefix: Path, reply: bytes, reason: str) -> None:
    silent = SilentServer(prefix / SOCKET, reply=reply)
    try:
        status, err, took = probe(prefix)
        assert (status, err) == (1, f"kcauth-pluginserver: not ready: {reason}\n")
        assert took < STARTUP_SLACK, "told at once, not after the bound"
    finally:
        silent.close()
