"""Redis behind Sentinel (`redis.sentinel_master`, `redis.sentinel_nodes`, Kong Enterprise's
names), with passwords on Redis and on the Sentinels: a primary, a replica and three Sentinels
(tests/services/redis.py SentinelGroup). Two plugin server processes share revocations and
introspection answers through the primary the Sentinels name; when it dies under mixed traffic,
the replica is promoted, no request gets a wrong answer or waits past the Redis timeout bound,
and a logout taken while there was no primary reaches both processes within 2 s of the new one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import bearer, guard_config, own_gateway, receiver_config, sensitive_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong
from tests.harness.pushes import logout_token, post_logout
from tests.services.fixtures import started
from tests.services.redis import SentinelGroup

TIMEOUT = 0.25  # redis.timeout
SLOW = 1.0  # seconds: no request may take longer (a few Redis calls, each bounded by TIMEOUT)


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelGroup]:
    # Passwords on both, as deployed: Redis's (`password`) and the Sentinels' own (`sentinel_password`).
    with started(SentinelGroup(password="redis-pass-0123", sentinel_password="sentinel-pass-4567")) as group:
        yield group


class Node:
    """One plugin server process with a guard, an introspected route and a receiver."""

    def __init__(self, kong: Kong, idp: LocalIdP, redis: dict[str, Any]) -> None:
        self.kong = kong
        self.guard = kong.plugin(guard_config(idp, redis=redis))
        self.sensitive = kong.plugin(sensitive_config(idp, redis=redis))
        self.receiver = kong.plugin(receiver_config(idp, redis=redis))

    def status(self, token: str, sensitive: bool = False) -> int:
        return self.kong.request(self.sensitive if sensitive else self.guard, bearer(token)).status


def refused_within(node: Node, token: str, seconds: float) -> float:
    started = time.monotonic()
    while node.status(token) != 401:
        assert time.monotonic() - started < seconds, f"still accepted after {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_failover_under_traffic_loses_nothing(sentinels: SentinelGroup, idp: LocalIdP, minter: Minter) -> None:
    redis = sentinels.plugin_config(timeout=TIMEOUT)
    with own_gateway() as first, own_gateway() as second:
        a, b = Node(first, idp, redis), Node(second, idp, redis)
        valid, before = minter.token(sid="valid"), minter.token(sid="revoked-before")
        during = minter.token(sid="revoked-during")
        assert post_logout(a.kong, a.receiver, logout_token(idp, sid="revoked-before")).status == 200
        refused_within(b, before, 2)
        assert a.status(valid, sensitive=True) == 200 and b.status(valid, sensitive=True) == 200
        assert sentinels.primary.client().keys("kcauth:introspection:*"), "answers shared through the primary"

        wrong: list[str] = []
        slowest = [0.0]
        stop = threading.Event()

        def traffic(node: Node) -> None:
            while not stop.is_set():
                for token, sensitive, expected in ((valid, False, 200), (valid, True, 200), (before, False, 401),
                                                   (before, True, 401)):
                    started = time.monotonic()
                    status = node.status(token, sensitive)
                    slowest[0] = max(slowest[0], time.monotonic() - started)
                    if status != expected:
                        wrong.append(f"{status} for {'sensitive ' if sensitive else ''}{expected}")

        threads = [threading.Thread(target=traffic, args=(node,), daemon=True) for node in (a, b)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        result: dict[str, Any] = {}
        failing = threading.Thread(target=lambda: result.update(
            zip(("primary", "window"), sentinels.fail_over(), strict=True)))
        failing.start()
        time.sleep(0.2)  # the primary is gone; none is promoted yet
        res = post_logout(a.kong, a.receiver, logout_token(idp, sid="revoked-during"))
        assert res.status in (200, 503), res.status  # 503: Redis could not take it; this process holds it
        assert a.status(during) == 401, "the process that took the logout enforces it at once"
        failing.join(20)
        promoted = time.monotonic()
        took = refused_within(b, during, 2.0)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(10)
        print(f"failover window {result['window']:.2f} s; the other process refused the logout taken meanwhile "
              f"{took:.2f} s after the promotion; slowest request {slowest[0]:.3f} s")
        assert time.monotonic() - promoted < 10
        assert not wrong, f"{len(wrong)} wrong answers: {sorted(set(wrong))}"
        assert slowest[0] < SLOW, f"a request took {slowest[0]:.2f} s"
        assert a.status(during) == 401 and b.status(during) == 401 and a.status(valid) == 200
        assert len(result["primary"].client().keys("kcauth:revocation:*:rec:*")) >= 2, "both logouts in the new primary"
