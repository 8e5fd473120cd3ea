"""A real Redis Cluster (`redis.cluster_nodes`, Kong Enterprise's names): three primaries and a
replica each on loopback (tests/services/redis.py ClusterGroup). What kcauth shares works across
two plugin server processes as on one Redis: revocations (pub/sub is classic, broadcast over the
cluster bus, so a process subscribed on any node hears every publish), introspection answers,
DPoP proofs used once, the feed's lease; keys land on every primary (no cross-slot command is
ever sent). A primary killed mid-test, its replica promoted, loses nothing: what Redis lost is
written back by the processes that hold it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from kong_plugin_kcauth.config import Config
from kong_plugin_kcauth.revocation.shared import SharedStore
from tests.conftest import bearer, guard_config, own_gateway, receiver_config, sensitive_config
from tests.harness.dpop import BASE, PATH, Client, bound_token, dpop_headers
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong
from tests.harness.pushes import logout_token, post_logout
from tests.services.redis import ClusterGroup

# One cluster per run: its tests share a pytest-xdist worker (the cluster is session-scoped).
pytestmark = pytest.mark.xdist_group("redis-cluster")


@pytest.fixture
def cluster(redis_cluster: ClusterGroup) -> ClusterGroup:
    """The run's cluster (tests/services/fixtures.py): three primaries, each with its replica
    until the failover test below kills one."""
    assert redis_cluster.healthy(), "the cluster lost a node before this test"
    return redis_cluster


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Kong, Kong]]:
    with own_gateway() as first, own_gateway() as second:
        yield first, second


def refused_within(kong: Kong, entity: object, token: str, seconds: float) -> None:
    started = time.monotonic()
    while kong.request(entity, bearer(token)).status != 401:  # type: ignore[arg-type]
        assert time.monotonic() - started < seconds, f"still accepted after {seconds} s"
        time.sleep(0.05)


def keys_on(cluster: ClusterGroup, pattern: str) -> dict[int, int]:
    """How many keys matching `pattern` each primary holds."""
    return {node.port: len(node.client().keys(pattern)) for node in cluster.primaries()}


def store_of(cluster: ClusterGroup) -> SharedStore:
    config = Config.from_kong({"issuer": "https://sso.example.com/realms/a", "audiences": ["a"],
                               "redis": cluster.plugin_config()})
    return SharedStore(config.redis)


def test_what_kcauth_shares_works_across_processes_on_a_cluster(
        cluster: ClusterGroup, pair: tuple[Kong, Kong], idp: LocalIdP, minter: Minter) -> None:
    first, second = pair
    redis = cluster.plugin_config()
    guards = [kong.plugin(guard_config(idp, redis=redis)) for kong in pair]
    receiver = first.plugin(receiver_config(idp, redis=redis))
    sids = [f"cluster-{i}" for i in range(12)]  # sessions whose records spread over the slots
    tokens = {sid: minter.token(sid=sid) for sid in sids}
    for sid in sids:
        assert post_logout(first, receiver, logout_token(idp, sid=sid)).status == 200
    for sid in sids:
        refused_within(second, guards[1], tokens[sid], 2)
    spread = keys_on(cluster, "kcauth:revocation:*:rec:*")
    assert sum(spread.values()) == len(sids) and len([n for n in spread.values() if n]) >= 2, spread

    sensitive = [kong.plugin(sensitive_config(idp, redis=redis)) for kong in pair]
    valid = minter.token()
    assert first.request(sensitive[0], bearer(valid)).status == 200
    calls = idp.introspection_requests
    assert second.request(sensitive[1], bearer(valid)).status == 200
    assert idp.introspection_requests == calls, "the other process took the answer from the cluster"

    client = Client()
    here, there = (kong.plugin(guard_config(idp, public_base_url=BASE, redis=redis)) for kong in pair)
    token = bound_token(minter, client)
    proof = client.proof(token)
    assert first.request(here, dpop_headers(token, proof), path=PATH).status == 200
    res = second.request(there, dpop_headers(token, proof), path=PATH)
    assert res.status == 401 and "used before" in res.headers["WWW-Authenticate"], "a proof is used once"

    one, other = store_of(cluster), store_of(cluster)
    held = one.lease("feed:cluster:lease", 1.0)
    assert held is not None and held.renew()
    assert other.lease("feed:cluster:lease", 1.0) is None, "the feed's lease: one holder at a time"


def test_a_primary_killed_and_its_replica_promoted_loses_nothing(
        cluster: ClusterGroup, idp: LocalIdP, minter: Minter) -> None:
    redis = cluster.plugin_config()
    with own_gateway() as first, own_gateway() as second:
        guards = [first.plugin(guard_config(idp, redis=redis)), second.plugin(guard_config(idp, redis=redis))]
        receiver = first.plugin(receiver_config(idp, redis=redis))
        sids = [f"kept-{i}" for i in range(12)]
        tokens = {sid: minter.token(sid=sid) for sid in sids}
        for sid in sids[:6]:
            assert post_logout(first, receiver, logout_token(idp, sid=sid)).status == 200
        refused_within(second, guards[1], tokens[sids[5]], 2)
        # The worst node to lose: the one every process subscribed on (the channel's slot).
        channel = "kcauth:revocation:" + hashlib.sha256(idp.issuer.encode()).hexdigest()[:32] + ":events"
        slot = cluster.primaries()[0].client().cluster("keyslot", channel)
        victim = next(n for n in cluster.primaries() if any(
            int(start) <= slot <= int(end) for start, end in
            n.client().cluster("nodes")[f"127.0.0.1:{n.port}"]["slots"]))
        took = cluster.fail_over(victim)
        for sid in sids[6:]:  # after the promotion: stored and published as before
            post_logout(first, receiver, logout_token(idp, sid=sid))
        for sid in sids:
            refused_within(second, guards[1], tokens[sid], 3)
            assert first.request(guards[0], bearer(tokens[sid])).status == 401
        print(f"cluster failover took {took:.2f} s")
    with own_gateway() as third:  # a process that starts now learns every revocation from the cluster
        guard = third.plugin(guard_config(idp, redis=redis))
        deadline = time.monotonic() + 5
        missing = list(sids)
        while missing and time.monotonic() < deadline:
            missing = [sid for sid in missing if third.request(guard, bearer(tokens[sid])).status != 401]
            time.sleep(0.1)
        assert not missing, f"lost in the failover: {missing}"
        assert third.request(guard, bearer(minter.token(sid="never-revoked"))).status == 200
