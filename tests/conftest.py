"""Shared fixtures and helpers: the real plugin server (in each of its modes), Kong's side of the
protocol, a local IdP, and the route configs the tests are written against."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.harness.idp import LocalIdP, Minter, SigningKey
from tests.harness.kong import Kong, PluginServerProcess, Response, kcauth_commands

pytest_plugins = ["tests.parallel", "tests.keycloak.fixtures", "tests.services.fixtures"]

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
# The plugin server command must resolve as it would for Kong: from the environment's PATH.
BIN = str(Path(sys.executable).parent)

# kong-pdk's two usable modes: threads (its default) and gevent (`-g`, the recommended one).
# The plugin server's modes: kcauth's own core (the default), and kong-pdk's server in its
# threads and gevent modes (`--server kong-pdk [-g]`, the reference and the fallback).
SERVER_MODES = {"core": "--server core", "threads": "--server kong-pdk", "gevent": "--server kong-pdk -g"}


# --- route configs ----------------------------------------------------------------------------

API = "orders-api"  # the API the guards protect; also the confidential client that introspects
CLIENT_SECRET = "orders-api-secret"
LOGIN_CLIENT = "test-cli"  # the client users log in with: the audience of its logout tokens


def issuer_of(idp: LocalIdP | str) -> str:
    return idp if isinstance(idp, str) else idp.issuer


def guard_config(idp: LocalIdP | str, **extra: Any) -> dict[str, Any]:
    """A guard on orders-api: local validation only. `idp`: a LocalIdP or an issuer URL."""
    return {"issuer": issuer_of(idp), "audiences": [API], **extra}


def sensitive_config(idp: LocalIdP | str, **extra: Any) -> dict[str, Any]:
    """A sensitive route: the guard plus introspection, as the orders-api client."""
    return {**guard_config(idp), "introspect": True, "client_id": API, "client_secret": CLIENT_SECRET, **extra}


def receiver_config(idp: LocalIdP | str, **extra: Any) -> dict[str, Any]:
    """The revocation receiver: Keycloak's back-channel logouts and not-before pushes to test-cli."""
    return {"issuer": issuer_of(idp), "mode": "revocation_receiver", "audiences": [LOGIN_CLIENT], **extra}


# --- plugin server processes ------------------------------------------------------------------

def plugin_server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": BIN + os.pathsep + os.environ.get("PATH", ""), **(extra or {})}


def short_prefix(name: str = "kc") -> Path:
    """A fresh Kong prefix under /tmp: Unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=name, dir="/tmp"))


def start_plugin_server(prefix: Path, extra_args: str = "", env: dict[str, str] | None = None) -> PluginServerProcess:
    start, query, socket_path = kcauth_commands(prefix, extra_args)
    server = PluginServerProcess(prefix, start, query, socket_path, env=plugin_server_env(env))
    server.start()
    return server


def start_script_server(prefix: Path, cmd: str, socket_name: str, extra_args: str = "",
                        env: dict[str, str] | None = None) -> PluginServerProcess:
    """A plugin server other than kcauth-pluginserver (tests/faults/), started as Kong starts one."""
    start = f"{cmd} --kong-prefix {prefix} --socket-name {socket_name} {extra_args}".strip()
    server = PluginServerProcess(prefix, start, f"{cmd} --dump", prefix / socket_name, env=plugin_server_env(env))
    server.start()
    return server


@contextmanager
def own_gateway(mode: str = "core", extra_args: str = "", env: dict[str, str] | None = None,
                **kong_options: Any) -> Iterator[Kong]:
    """A plugin server process of its own (another Kong node, nothing in its memory) in `mode`,
    and Kong on it (`kong_options`: Kong's arguments); all stopped and removed on exit."""
    prefix = short_prefix("kcg")
    server = start_plugin_server(prefix, f"{SERVER_MODES[mode]} {extra_args}".strip(), env)
    gateway: Kong | None = None
    try:
        gateway = Kong(server, **kong_options)
        yield gateway
    finally:
        if gateway is not None:
            gateway.rpc.close()
        server.stop()
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def prefix() -> Iterator[Path]:
    path = short_prefix()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def plugin_server(prefix: Path) -> Iterator[PluginServerProcess]:
    server = start_plugin_server(prefix)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kong(plugin_server: PluginServerProcess) -> Iterator[Kong]:
    """Kong driving the module's plugin server (threads mode)."""
    gateway = Kong(plugin_server)
    yield gateway
    gateway.rpc.close()


# Where the server mode itself is under test (event handling, memory, protocol faults) every mode
# runs; elsewhere kcauth's core and kong-pdk's gevent mode, the two event loops (kong-pdk's
# threads mode serves the same handler code as its gevent mode with plain threads).
EVERY_MODE_MODULES = frozenset({"test_memory", "test_plugin_server_process", "test_protocol_faults"})
MATRIX_MODES = ("core", "gevent")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_mode" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        modes = list(SERVER_MODES) if module in EVERY_MODE_MODULES else list(MATRIX_MODES)
        metafunc.parametrize("server_mode", modes, indirect=True, scope="module")


@pytest.fixture(scope="module")
def server_mode(request: pytest.FixtureRequest) -> str:
    """Each of the plugin server's modes in turn (pytest_generate_tests): a test that asks for it
    runs once per mode."""
    return str(request.param)


@pytest.fixture(scope="module")
def each_mode_kong(server_mode: str) -> Iterator[Kong]:
    """Kong driving a plugin server of each mode in turn (tests that must hold in both); checked
    by tests/pluginserver/test_plugin_server_process.py::test_each_mode_kong_runs_the_server_in_its_mode."""
    with own_gateway(server_mode) as gateway:
        yield gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- identity providers -----------------------------------------------------------------------

def started_idp(tls: tuple[Path, Path] | None = None) -> LocalIdP:
    """A running LocalIdP publishing one RS256 key, its `primary`."""
    server = LocalIdP(tls=tls).start()
    server.primary = SigningKey("RS256")  # type: ignore[attr-defined]
    server.keys.append(server.primary.jwk())  # type: ignore[attr-defined]
    return server


@pytest.fixture
def idp() -> Iterator[LocalIdP]:
    server = started_idp()
    yield server
    server.stop()


@pytest.fixture
def minter(idp: LocalIdP) -> Minter:
    return Minter(idp.issuer, idp.primary)  # type: ignore[attr-defined]


# --- requests ---------------------------------------------------------------------------------

def at_once(count: int, call: Callable[[], T], timeout: float = 60) -> list[T]:
    """Run `call` from `count` threads released together; their results."""
    barrier = threading.Barrier(count)
    results: list[T] = []

    def worker() -> None:
        barrier.wait(timeout)
        results.append(call())

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results


def round_trips(res: Response) -> list[str]:
    """The PDK calls of a request's own path: without the `kong.log` line a request carries to
    Kong's log once after a dependency changed state (logs.py), whichever request comes next."""
    return [call for call in res.pdk_calls if not call.startswith("kong.log.")]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]
