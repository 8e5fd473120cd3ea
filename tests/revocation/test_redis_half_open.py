"""A Redis that stops answering without closing anything (SIGSTOP: connections stay open, as
when its host vanishes without a reset): each request waits at most `redis.timeout` per Redis
call, the revocation subscriptions notice within the health-check interval, and a logout taken
meanwhile reaches every process once Redis answers again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import bearer, guard_config, own_gateway, receiver_config, sensitive_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.pushes import logout_token, post_logout
from tests.services.redis import RedisServer

SLOW = 1.0  # seconds: a request's bound with `timeout` 0.25 (one failed call, then Redis is skipped)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def test_a_frozen_redis_costs_a_request_at_most_its_timeout_and_loses_nothing(
        own_redis: RedisServer, idp: LocalIdP, minter: Minter) -> None:
    redis = own_redis.plugin_config(timeout=0.25)
    token = minter.token(sid="frozen-session")
    with own_gateway() as first, own_gateway() as second:
        guards = [first.plugin(guard_config(idp, redis=redis)), second.plugin(guard_config(idp, redis=redis))]
        sensitive = second.plugin(sensitive_config(idp, redis=redis))
        receiver = first.plugin(receiver_config(idp, redis=redis))
        assert second.request(guards[1], bearer(token)).status == 200  # both subscribed
        assert first.request(guards[0], bearer(token)).status == 200
        own_redis.pause()
        try:
            time.sleep(2.5)  # past the health-check interval: the subscriptions find Redis gone
            for kong, entity in ((first, guards[0]), (second, guards[1]), (second, sensitive)):
                started = time.monotonic()
                assert kong.request(entity, bearer(minter.token())).status == 200
                assert time.monotonic() - started < SLOW, "a request waited on a frozen Redis"
            started = time.monotonic()
            res = post_logout(first, receiver, logout_token(idp, sid="frozen-session"))
            assert res.status == 503 and time.monotonic() - started < SLOW, "Redis cannot take it: Keycloak is told"
            assert first.request(guards[0], bearer(token)).status == 401, "held by the process that took it"
        finally:
            own_redis.resume()
        deadline = time.monotonic() + 5
        while second.request(guards[1], bearer(token)).status != 401:
            assert time.monotonic() < deadline, "the other process never learned the logout"
            time.sleep(0.1)
        assert own_redis.client().keys("kcauth:revocation:*:rec:*"), "written back to Redis"
