"""Pytest plugin: a session-wide Redis server and a per-test client on a flushed database.

Load with `pytest_plugins = ["tests.services.fixtures"]` in the root conftest, or import
`redis_server` and `redis_client` into a test module's namespace.

A missing or broken redis-server FAILS the tests that need it, never skips them: a skipped
shared-cache test would hide exactly the setups where the cache is broken.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from tests.services.redis import ClusterGroup, RedisServer, SentinelGroup


@contextmanager
def started_redis(password: str | None = None) -> Iterator[RedisServer]:
    """A running RedisServer, stopped on exit; pytest.fail (not skip) if it cannot start."""
    server = RedisServer(password=password)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - any reason must surface as a failure message
        server.stop()
        pytest.fail(f"could not start redis-server for the tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def started_group(group: SentinelGroup | ClusterGroup) -> Iterator[SentinelGroup | ClusterGroup]:
    """A running Sentinel or Cluster group, stopped on exit; pytest.fail (not skip) if it cannot start."""
    try:
        group.start()
    except Exception as exc:  # noqa: BLE001 - any reason must surface as a failure message
        group.stop()
        pytest.fail(f"could not start {type(group).__name__}: {exc}", pytrace=False)
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with started_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterGroup]:
    """A Redis Cluster (three primaries, a replica each) for the whole run."""
    with started_group(ClusterGroup()) as group:
        assert isinstance(group, ClusterGroup)
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
