"""TLS to Redis behind Sentinel and to a Redis Cluster, as managed offerings run them: every
server, Sentinel and cluster bus speaks TLS only, with a certificate from a private CA that names
`redis.internal` and not the address kcauth connects to. With `ssl`, `server_name` and
`tls_ca_bundle`, two plugin server processes share revocations and introspection answers through
the Sentinels' primary, and through the cluster; a certificate that fails verification (the
address instead of the name) leaves Redis unused, never the route."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import bearer, guard_config, own_gateway, receiver_config, sensitive_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.pushes import logout_token, post_logout
from tests.harness.tls import PrivateCA
from tests.services.fixtures import started
from tests.services.redis import ClusterGroup, SentinelGroup

NAME = "redis.internal"


@pytest.fixture(scope="module")
def ca() -> Iterator[PrivateCA]:
    directory = Path(tempfile.mkdtemp(prefix="kcca"))
    yield PrivateCA(directory)
    shutil.rmtree(directory, ignore_errors=True)


def tls_files(ca: PrivateCA) -> tuple[Path, Path, Path]:
    issued = ca.issue(NAME, with_ip=False)
    return issued.cert, issued.key, ca.bundle


class OverTLS:
    """A TLS-only Sentinel group or cluster: kcauth's `redis` record for it (by Kong's names),
    and the keys it holds."""

    def __init__(self, group: SentinelGroup | ClusterGroup) -> None:
        self.group = group

    def config(self, **extra: Any) -> dict[str, Any]:
        return self.group.plugin_config(ssl=True, **extra)

    def keys(self, pattern: str) -> list[Any]:
        client = self.group.client() if isinstance(self.group, ClusterGroup) else self.group.primary.client()
        return list(client.scan_iter(match=pattern))  # every primary of a cluster


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def over_tls(request: pytest.FixtureRequest, ca: PrivateCA) -> Iterator[OverTLS]:
    group = SentinelGroup(password="redis-pass-0123", sentinel_password="sentinel-pass-4567", tls=tls_files(ca)) \
        if request.param == "sentinel" else ClusterGroup(replicas=0, tls=tls_files(ca))
    with started(group):
        yield OverTLS(group)


def test_revocations_and_answers_are_shared_over_tls_verified_by_name(
        over_tls: OverTLS, ca: PrivateCA, idp: LocalIdP, minter: Minter) -> None:
    redis = over_tls.config(server_name=NAME)
    trust = {"tls_ca_bundle": str(ca.bundle)}
    with own_gateway() as first, own_gateway() as second:
        sensitive = [kong.plugin(sensitive_config(idp, redis=redis, **trust)) for kong in (first, second)]
        token = minter.token()
        assert first.request(sensitive[0], bearer(token)).status == 200
        calls = idp.introspection_requests
        assert second.request(sensitive[1], bearer(token)).status == 200
        assert idp.introspection_requests == calls, "the other process took the answer from Redis"

        guard = second.plugin(guard_config(idp, redis=redis, **trust))
        receiver = first.plugin(receiver_config(idp, redis=redis, **trust))
        session = minter.token(sid="over-tls")
        assert second.request(guard, bearer(session)).status == 200
        assert post_logout(first, receiver, logout_token(idp, sid="over-tls")).status == 200
        started_at = time.monotonic()
        while second.request(guard, bearer(session)).status != 401:
            assert time.monotonic() - started_at < 2, "the other process never learned the logout"
            time.sleep(0.05)

        # By address, the certificate does not match: Redis is left unused, the route still works.
        assert over_tls.keys("kcauth:introspection:*"), "the answer is in Redis"
        unverified = first.plugin(sensitive_config(idp, redis=over_tls.config(prefix="by-address:"), **trust))
        assert first.request(unverified, bearer(minter.token())).status == 200
        assert not over_tls.keys("by-address:*"), "nothing went to a Redis whose certificate did not verify"
