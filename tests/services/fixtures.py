"""Pytest plugin: a session-wide Redis server and a per-test client on a flushed database.

Load with `pytest_plugins = ["tests.services.fixtures"]` in the root conftest, or import
`redis_server` and `redis_client` into a test module's namespace.

A missing or broken redis-server FAILS the tests that need it, never skips them: a skipped
shared-cache test would hide exactly the setups where the cache is broken.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TypeVar

import pytest
import redis

from tests.services.redis import ClusterGroup, RedisServer


class Service(Protocol):
    def start(self) -> object: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Service)


@contextmanager
def started(service: S) -> Iterator[S]:
    """A running RedisServer, SentinelGroup or ClusterGroup, stopped on exit; pytest.fail (not
    skip) if it cannot start."""
    try:
        service.start()
    except Exception as exc:  # noqa: BLE001 - any reason must surface as a failure message
        service.stop()
        pytest.fail(f"could not start {type(service).__name__} for the tests: {exc}", pytrace=False)
    try:
        yield service
    finally:
        service.stop()


def started_redis(password: str | None = None) -> AbstractContextManager[RedisServer]:
    return started(RedisServer(password=password))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with started_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterGroup]:
    """A Redis Cluster (three primaries, a replica each) for the whole run."""
    with started(ClusterGroup()) as group:
        yield group


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    # A test may have crashed or paused the shared server through its own handle: bring it back.
    if not redis_server.running:
        redis_server.restart()
    elif redis_server.paused:
        redis_server.resume()
    client = redis_server.client(socket_timeout=5, socket_connect_timeout=5)
    client.flushall()
    try:
        yield client
    finally:
        client.close()
