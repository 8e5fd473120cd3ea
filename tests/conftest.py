"""Shared fixtures: the real plugin server, Kong's side of the protocol, a local IdP."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.harness.idp import LocalIdP, Minter, SigningKey
from tests.harness.kong import Kong, PluginServerProcess, Response, kcauth_commands

pytest_plugins = ["tests.keycloak.fixtures", "tests.services.fixtures"]

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
# The plugin server command must resolve as it would for Kong: from the environment's PATH.
BIN = str(Path(sys.executable).parent)


def plugin_server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": BIN + os.pathsep + os.environ.get("PATH", ""), **(extra or {})}


def start_plugin_server(prefix: Path, extra_args: str = "", env: dict[str, str] | None = None) -> PluginServerProcess:
    start, query, socket_path = kcauth_commands(prefix, extra_args)
    server = PluginServerProcess(prefix, start, query, socket_path, env=plugin_server_env(env))
    server.start()
    return server


@pytest.fixture(scope="module")
def prefix() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: keep the Kong prefix short.
    path = Path(tempfile.mkdtemp(prefix="kc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def plugin_server(prefix: Path, request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    # A test module may ask for other server arguments (test_gevent_mode.py: "-g").
    server = start_plugin_server(prefix, getattr(request.module, "PLUGIN_SERVER_ARGS", ""))
    yield server
    server.stop()


# kong-pdk's two usable modes: threads (its default) and gevent (`-g`, the recommended one).
SERVER_MODES = {"threads": "", "gevent": "-g"}


@pytest.fixture(scope="module", params=list(SERVER_MODES))
def each_mode_kong(request: pytest.FixtureRequest) -> Iterator[Kong]:
    """Kong driving a plugin server of each mode in turn (tests that must hold in both)."""
    path = Path(tempfile.mkdtemp(prefix="kcm", dir="/tmp"))
    server = start_plugin_server(path, SERVER_MODES[request.param])
    gateway = Kong(server)
    yield gateway
    gateway.rpc.close()
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.fixture(scope="module")
def kong(plugin_server: PluginServerProcess) -> Iterator[Kong]:
    gateway = Kong(plugin_server)
    yield gateway
    gateway.rpc.close()


@pytest.fixture
def idp() -> Iterator[LocalIdP]:
    server = LocalIdP().start()
    server.primary = SigningKey("RS256")  # type: ignore[attr-defined]
    server.keys.append(server.primary.jwk())  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def minter(idp: LocalIdP) -> Minter:
    return Minter(idp.issuer, idp.primary)  # type: ignore[attr-defined]


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
