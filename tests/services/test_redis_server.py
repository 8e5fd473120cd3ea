"""RedisServer and its fixtures: start, auth, crash, restart, hang."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.services import fixtures
from tests.services.fixtures import started_redis
from tests.services.redis import RedisServer

# Without the repo's conftest (--noconftest), fixtures are found in the module's namespace.
redis_server = fixtures.redis_server
redis_client = fixtures.redis_client


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A private server for tests that crash or freeze it (the session one stays healthy)."""
    with started_redis(password="s3cret pass/:@") as server:
        yield server


def connect_refused(server: RedisServer) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_session_fixture_set_get(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    assert redis_server.host == "127.0.0.1"
    assert redis_server.password is None
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"
    assert redis.Redis.from_url(redis_server.url).get("k") == b"v"


def test_redis_client_starts_on_an_empty_db(redis_client: redis.Redis) -> None:
    # Runs after the test above wrote "k": the fixture flushed it.
    assert redis_client.dbsize() == 0


def test_server_config(redis_client: redis.Redis) -> None:
    config = redis_client.config_get("*")
    assert config["bind"] == "127.0.0.1"
    assert config["protected-mode"] == "yes"
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    assert config["daemonize"] == "no"


def test_password_required(own_server: RedisServer) -> None:
    # AuthenticationError is a ConnectionError, which redis-py retries by default: client() does not.
    with pytest.raises(redis.AuthenticationError):
        own_server.client(password=None).ping()
    with pytest.raises(redis.AuthenticationError):
        own_server.client(password="wrong").ping()
    client = own_server.client()
    assert client.set("a", "1") and client.get("a") == b"1"
    # The URL escapes the password's special characters.
    assert redis.Redis.from_url(own_server.url).get("a") == b"1"


def test_kill_refuses_then_restart_on_same_port(own_server: RedisServer) -> None:
    port = own_server.port
    client = own_server.client(socket_timeout=1, socket_connect_timeout=1)
    client.set("a", "1")
    own_server.kill()
    assert not own_server.running
    assert connect_refused(own_server)
    with pytest.raises(redis.ConnectionError):
        client.ping()

    own_server.restart()
    assert own_server.port == port and own_server.running
    assert client.ping()
    assert client.get("a") is None  # no persistence: a restart starts empty


def test_stop_then_restart(own_server: RedisServer) -> None:
    port = own_server.port
    own_server.stop()
    assert connect_refused(own_server)
    own_server.restart()
    assert own_server.port == port
    assert own_server.client().ping()


def test_pause_times_out_then_resume(own_server: RedisServer) -> None:
    client = own_server.client(socket_timeout=0.2, socket_connect_timeout=0.2)
    assert client.ping()
    own_server.pause()
    assert own_server.paused
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert time.monotonic() - started < 2
    own_server.resume()
    assert not own_server.paused
    assert client.ping()


def test_stop_while_paused(own_server: RedisServer) -> None:
    own_server.pause()
    started = time.monotonic()
    own_server.stop()
    assert time.monotonic() - started < 5
    assert not own_server.running


def test_missing_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="make system-deps.*apt-get install -y redis-server"):
        RedisServer().start()


def test_fixture_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="make system-deps"), started_redis():
        pass


def test_start_failure_reports_log_tail() -> None:
    # Two servers cannot share a fixed port: the second must fail with redis' own reason.
    with started_redis() as first:
        second = RedisServer(port=first.port)
        with pytest.raises(RuntimeError, match="(?s)did not start.*redis log.*[Aa]ddress already in use"):
            second.start()
        assert not second.running
        second.stop()
        assert first.client().ping()
