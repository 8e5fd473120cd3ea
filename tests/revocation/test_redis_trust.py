"""Redis is a trust boundary: whoever can write to it cannot make an inactive or revoked token
pass, nor change the identity sent upstream; what kcauth stores there reveals no claim; and
revocations survive a Redis that restarts empty. Real redis-server, real plugin servers; the
trust tests run on a standalone Redis and on a Redis Cluster (`shared`). A cluster does not
restart empty as one server does: what it loses in a failover is written back
(tests/revocation/test_redis_cluster.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import bearer, guard_config, own_gateway, receiver_config, sensitive_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong
from tests.harness.pushes import logout_token, post_logout
from tests.services.redis import ClusterGroup, RedisServer

# One cluster per run: its tests share a pytest-xdist worker (the cluster is session-scoped).
pytestmark = pytest.mark.xdist_group("redis-cluster")


@dataclass
class Shared:
    """The Redis under test: kcauth's `redis` record for it, and a client for the test's own look."""

    config: dict[str, object]
    client: Any


@pytest.fixture(params=["standalone", "cluster"])
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    if request.param == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        yield Shared(server.plugin_config(), request.getfixturevalue("redis_client"))
        return
    cluster: ClusterGroup = request.getfixturevalue("redis_cluster")
    client = cluster.client()
    client.flushall(target_nodes=client.PRIMARIES)
    yield Shared(cluster.plugin_config(), client)
    client.close()


@pytest.fixture
def second(shared: Shared) -> Iterator[Kong]:
    with own_gateway() as gateway:  # another Kong node: nothing in its own memory
        yield gateway


def keys(client: Any, pattern: str) -> set[bytes]:
    return set(client.scan_iter(match=pattern))  # every node of a cluster


def test_forged_verdicts_in_redis_are_ignored(kong: Kong, idp: LocalIdP, minter: Minter, shared: Shared) -> None:
    redis_client = shared.client
    config = sensitive_config(idp, introspection_negative_ttl=60, redis=shared.config)
    active, revoked = minter.token(), minter.token()
    idp.revoked.add(revoked)
    assert kong.request(kong.plugin(config), bearer(active)).status == 200
    active_key = keys(redis_client, "kcauth:introspection:*")
    assert kong.request(kong.plugin(config), bearer(revoked)).status == 401
    (revoked_key,) = keys(redis_client, "kcauth:introspection:*") - active_key
    assert b"alice" not in b"".join(redis_client.get(k) or b"" for k in active_key | {revoked_key}), \
        "verdicts are sealed: no claim in clear"

    forged = ('{"refusal": null, "deadline": 99999999999, "claims": {"active": true, "iss": "' + idp.issuer + '", '
              '"typ": "Bearer", "aud": "orders-api", "exp": 99999999999, "sub": "mallory", '
              '"preferred_username": "mallory"}}').encode()
    genuine_active = redis_client.get(next(iter(active_key)))
    for value in (forged, genuine_active):  # made up, then a genuine verdict moved to another key
        redis_client.set(revoked_key, value)
        redis_client.set(next(iter(active_key)), forged)
        with own_gateway() as node:
            calls = idp.introspection_requests
            res = node.request(node.plugin(config), bearer(revoked))
            assert res.status == 401, "a forged or moved verdict never makes a revoked token pass"
            assert idp.introspection_requests == calls + 1, "the entry was ignored: Keycloak was asked"
            res = node.request(node.plugin(config), bearer(active))
            assert res.status == 200 and res.upstream("X-Auth-Username") == ["alice"], "the identity is Keycloak's"
            assert "fails authentication" in node.server.log()


def test_revocations_cannot_be_forged_or_hidden_by_overwriting(
        kong: Kong, second: Kong, idp: LocalIdP, minter: Minter, shared: Shared) -> None:
    redis_config, redis_client = shared.config, shared.client
    token = minter.token(sid="session-w")
    receiver = kong.plugin(receiver_config(idp, redis=redis_config))
    assert post_logout(kong, receiver, logout_token(idp, sid="session-w")).status == 200
    records = keys(redis_client, "kcauth:revocation:*:rec:*")
    assert len(records) == 1
    for name in records:
        redis_client.set(name, b'{"kind": "sid", "key": "x", "at": 0, "until": 1}')  # the value means nothing
    redis_client.publish(next(iter(keys(redis_client, "*"))).split(b":rec:")[0] + b":events", b"forged")
    forged_name = next(iter(records)).rsplit(b".", 1)[0] + b".AAAAAAAAAAAAAAAAAAAAAA"
    redis_client.set(forged_name, b"")
    guard = guard_config(idp, redis=redis_config)
    assert second.request(second.plugin(guard), bearer(token)).status == 401, "the revocation stands"
    assert second.request(second.plugin(guard), bearer(minter.token(sid="session-other"))).status == 200


def test_revocations_survive_a_redis_that_restarts_empty(kong: Kong, idp: LocalIdP, minter: Minter,
                                                         redis_server: RedisServer) -> None:
    redis_config = redis_server.plugin_config()
    token = minter.token(sid="session-r")
    receiver = kong.plugin(receiver_config(idp, redis=redis_config))
    guard = guard_config(idp, redis=redis_config)
    assert post_logout(kong, receiver, logout_token(idp, sid="session-r")).status == 200
    assert kong.request(kong.plugin(guard), bearer(token)).status == 401

    redis_server.restart()  # no persistence in the tests: it comes back empty
    client = redis_server.client(socket_timeout=5)
    deadline = time.monotonic() + 20
    while not client.keys("kcauth:revocation:*:rec:*"):
        assert time.monotonic() < deadline, "the surviving process did not write its revocations back"
        time.sleep(0.2)

    with own_gateway() as late:
        assert late.request(late.plugin(guard), bearer(token)).status == 401, \
            "a process started after the restart refuses a session revoked before it"
        assert late.request(late.plugin(guard), bearer(minter.token(sid="session-x"))).status == 200


def test_revocation_is_checked_on_the_tokens_own_identifiers_too(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    """An introspection answer without `sid` or `sub` (stripped in transit, or a lightweight
    answer) does not hide the token's own session from the revocation check."""
    receiver = kong.plugin(receiver_config(idp))
    token = minter.token(sid="session-t")
    assert post_logout(kong, receiver, logout_token(idp, sid="session-t")).status == 200
    idp.answer_without = {"sid", "sub"}
    entity = kong.plugin(sensitive_config(idp))
    res = kong.request(entity, bearer(token))
    assert res.status == 401 and "revoked" in res.headers["WWW-Authenticate"]
    assert idp.introspection_requests == 1, "the answer itself was active"


def test_the_feed_s_lease_is_one_holder_at_a_time_and_a_forged_one_stops_nothing(shared: Shared) -> None:
    from kong_plugin_kcauth.config import Config
    from kong_plugin_kcauth.revocation.shared import SharedStore, SharedUnavailable

    redis_client = shared.client
    config = Config.from_kong({"issuer": "https://sso.example.com/realms/a", "audiences": ["a"],
                               "redis": shared.config})
    LEASE = 0.5  # seconds
    node, other = SharedStore(config.redis), SharedStore(config.redis)
    held = node.lease("feed:r:lease", LEASE)
    assert held is not None and held.renew()
    assert other.lease("feed:r:lease", LEASE) is None, "one holder at a time"
    time.sleep(LEASE + 0.2)
    assert other.lease("feed:r:lease", LEASE) is not None, "it lapses: the next taker comes after it"
    assert not held.renew(), "a lapsed lease cannot be renewed over another holder's"
    redis_client.set("kcauth:feed:s:lease", b"whatever")  # made up, without expiry
    with pytest.raises(SharedUnavailable):  # the caller works alone rather than never
        node.lease("feed:s:lease", LEASE)
    genuine = node.lease("feed:t:lease", LEASE)
    assert genuine is not None
    kept = redis_client.get("kcauth:feed:t:lease")
    time.sleep(5 * LEASE + 0.3)  # past its expiry and the renewals a holder may add (4 leases)
    redis_client.set("kcauth:feed:t:lease", kept or b"")  # a genuine one, replayed and kept forever
    with pytest.raises(SharedUnavailable):
        node.lease("feed:t:lease", LEASE)
