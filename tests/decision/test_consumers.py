"""Kong consumer mapping and the anonymous consumer, through the real plugin server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import bearer, guard_config, round_trips
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong

CLI = {"id": str(uuid.uuid4()), "username": "test-cli", "custom_id": "cli-1"}
ANON = {"id": str(uuid.uuid4()), "username": "anonymous"}


@pytest.fixture
def gateway(kong: Kong) -> Iterator[Kong]:
    kong.consumers = [CLI, ANON]
    yield kong
    kong.consumers = []


def test_token_maps_to_a_consumer(gateway: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = gateway.plugin(guard_config(idp, consumer_claim="azp"))
    claims = minter.claims()
    first = gateway.request(entity, bearer(minter.token()) + [("X-Consumer-ID", "forged"),
                                                              ("X-Anonymous-Consumer", "true")])
    assert first.status == 200
    assert first.consumer == CLI
    expected_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{idp.issuer}#{claims['sub']}"))
    assert first.credential == {"id": expected_id}
    assert first.upstream("X-Consumer-ID") == [CLI["id"]]
    assert first.upstream("X-Consumer-Username") == ["test-cli"]
    assert first.upstream("X-Consumer-Custom-ID") == ["cli-1"]
    assert first.upstream("X-Credential-Identifier") == [expected_id]
    assert first.upstream("X-Anonymous-Consumer") == []
    # What lets the request through comes last (handler.set_identity): headers, consumer, groups.
    assert round_trips(first) == ["kong.request.get_headers", "kong.client.load_consumer",
                                  "kong.service.request.set_headers", "kong.client.authenticate", "kong.ctx.shared.set"]
    second = gateway.request(entity, bearer(minter.token()))
    assert "kong.client.load_consumer" not in second.pdk_calls, "the lookup is remembered"
    assert second.consumer == CLI


def test_unknown_consumer_proceeds_without_one_or_is_refused(gateway: Kong, idp: LocalIdP, minter: Minter) -> None:
    token = minter.token(azp="web-app")
    loose = gateway.request(gateway.plugin(guard_config(idp, consumer_claim="azp")),
                            bearer(token) + [("X-Consumer-ID", "forged")])
    assert loose.status == 200 and loose.consumer is None and loose.upstream("X-Consumer-ID") == []
    strict = gateway.request(gateway.plugin(guard_config(idp, consumer_claim="azp", consumer_required=True)),
                             bearer(token))
    assert strict.status == 403
    assert "does not map to a Kong consumer" in strict.headers["WWW-Authenticate"]


def test_anonymous_consumer_for_requests_without_a_valid_token(gateway: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = gateway.plugin(guard_config(idp, anonymous="anonymous", required_roles=["realm:admin"]))
    for headers in ([], bearer("garbage"), bearer(minter.token(exp=1))):
        res = gateway.request(entity, headers + [("X-Auth-Subject", "forged")])
        assert res.status == 200 and res.proxied
        assert res.consumer == ANON and res.credential is None
        assert res.upstream("X-Anonymous-Consumer") == ["true"]
        assert res.upstream("X-Auth-Subject") == [], "an anonymous request carries no identity"
        assert "authenticated_groups" not in res.ctx_shared
        guarded = gateway.request(entity, headers, acl_allow=["kcauth:authenticated"])
        assert guarded.status == 401, "ACL still keeps anonymous requests out of guarded routes"
    assert gateway.request(entity, bearer(minter.token())).status == 403, "a valid token lacking a role is still 403"


def test_missing_anonymous_consumer_keeps_the_refusal(gateway: Kong, idp: LocalIdP) -> None:
    """The refusal stands, and Kong's log says why at `error`, as Kong's own auth plugins do when
    their anonymous consumer does not exist: once a minute, naming the plugin."""
    entity = gateway.plugin(guard_config(idp, anonymous="nobody"))
    for _ in range(3):
        res = gateway.request(entity, [])
        assert res.status == 401 and res.consumer is None
    lines = [e for e in gateway.error_log if "config.anonymous 'nobody' names no Kong consumer" in e]
    assert len(lines) == 1 and lines[0].startswith("[err]") and entity.id in lines[0], gateway.error_log[-3:]
