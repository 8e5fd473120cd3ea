"""`redis.keepalive_pool_size`: the connections to Redis each plugin server process keeps at most.
With the smallest pool Kong accepts (1), requests that need Redis at the same moment wait their
turn for the connection (never an error, never Redis set aside as failed), no process opens more
than its pool for requests, and the revocation subscription lives on a connection of its own, so
revocations still reach every process."""

from __future__ import annotations

import time
from typing import Any

import redis

from tests.conftest import at_once, bearer, guard_config, own_gateway, receiver_config, sensitive_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong
from tests.harness.pushes import logout_token, post_logout
from tests.services.redis import RedisServer


def request_connections(client: redis.Redis) -> list[dict[str, Any]]:
    """Every connection to Redis but the test's own and the subscriptions."""
    own = client.client_id()
    return [c for c in client.client_list()
            if int(c["id"]) != own and "P" not in c["flags"] and int(c.get("sub", 0)) == 0]


def test_the_smallest_pool_serves_concurrent_requests_and_revocations(
        each_mode_kong: Kong, idp: LocalIdP, minter: Minter, redis_server: RedisServer,
        redis_client: redis.Redis) -> None:
    kong = each_mode_kong
    shared = redis_server.plugin_config(keepalive_pool_size=1)
    sensitive = kong.plugin(sensitive_config(idp, redis=shared))
    idp.delay = 0.02  # the requests overlap at Redis: each looks its answer up, then stores it
    tokens = [minter.token(sub=f"user-{i}") for i in range(24)]
    answers = at_once(24, lambda: kong.request(sensitive, bearer(tokens.pop())))
    assert [a.status for a in answers] == [200] * 24, [(a.status, a.body) for a in answers if a.status != 200]
    assert len(request_connections(redis_client)) <= 1, request_connections(redis_client)
    assert not [line for line in kong.error_log if "redis" in line.lower() and "failed" in line], kong.error_log

    with own_gateway() as other:  # another process learns a revocation through its subscription
        guard = other.plugin(guard_config(idp, redis=shared))
        token = minter.token(sid="pooled")
        assert other.request(guard, bearer(token)).status == 200
        receiver = kong.plugin(receiver_config(idp, redis=shared))
        assert post_logout(kong, receiver, logout_token(idp, sid="pooled")).status == 200
        started = time.monotonic()
        while other.request(guard, bearer(token)).status != 401:
            assert time.monotonic() - started < 2, "the other process never learned the logout"
            time.sleep(0.05)
        assert other.request(guard, bearer(minter.token(sid="another"))).status == 200
