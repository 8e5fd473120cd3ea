"""What an operator sees: state changes in Kong's own log (once each), Prometheus metrics from
the plugin server, and each request's decision for Kong's log plugins."""

from __future__ import annotations

import time

import requests

from tests.conftest import bearer, free_port, guard_config, own_gateway, round_trips, sensitive_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong


def test_a_dependency_s_failure_and_recovery_reach_kong_s_log_once_each(kong: Kong, idp: LocalIdP,
                                                                         minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp, jwks_min_refresh_interval=1))
    idp.fail_with = 500
    carriers = []
    for _ in range(4):  # the key set fails on the first; a request after that carries the news
        res = kong.request(entity, bearer(minter.token()))
        assert res.status == 503
        carriers += [res] if "kong.log.err" in res.pdk_calls else []
        time.sleep(1.1)
    lines = [e for e in kong.error_log if f"key set of {idp.issuer}" in e]
    assert len(lines) == 1, "once per change of state, not per request"
    assert lines[0].startswith("[err] kcauth: ") and "download failed" in lines[0], lines
    assert len(carriers) == 1
    idp.fail_with = None
    time.sleep(1.1)
    assert kong.request(entity, bearer(minter.token())).status == 200
    back = kong.request(entity, bearer(minter.token()))
    assert back.status == 200 and round_trips(back) == ["kong.request.get_headers",
                                                        "kong.service.request.set_headers", "kong.ctx.shared.set"]
    assert [e for e in kong.error_log if f"key set of {idp.issuer}: recovered" in e], kong.error_log[-3:]


def test_each_config_s_failure_is_reported_once_under_its_own_plugin(kong: Kong, idp: LocalIdP,
                                                                      minter: Minter) -> None:
    """Two routes of one issuer with wrong client secrets and one with the right one: each broken
    config is reported once, naming its plugin, carried by a request of its own route; the
    working one neither hides them nor is reported recovering."""
    good = kong.plugin(sensitive_config(idp, introspection_breaker_seconds=0))
    bad = kong.plugin(sensitive_config(idp, client_secret="wrong", introspection_breaker_seconds=0))
    worse = kong.plugin(sensitive_config(idp, client_secret="also-wrong", introspection_breaker_seconds=0))
    carried: dict[str, int] = {}
    for _ in range(4):
        for entity, status in ((good, 200), (bad, 503), (worse, 503)):
            res = kong.request(entity, bearer(minter.token()))
            assert res.status == status
            carried[entity.id] = carried.get(entity.id, 0) + res.pdk_calls.count("kong.log.err")
    lines = [e for e in kong.error_log if f"introspection at {idp.issuer}" in e]
    for entity in (bad, worse):
        mine = [line for line in lines if entity.id in line]
        assert len(mine) == 1 and "failing" in mine[0] and mine[0].startswith("[err]"), lines
        assert carried[entity.id] == 1, "carried by a request of its own route"
    assert carried[good.id] == 0 and not [line for line in lines if good.id in line or "recovered" in line], lines


def test_prometheus_metrics_when_asked_for(idp: LocalIdP, minter: Minter) -> None:
    port = free_port()
    with own_gateway(extra_args=f"--metrics 127.0.0.1:{port}") as gateway:
        entity = gateway.plugin(guard_config(idp))
        sensitive = gateway.plugin(sensitive_config(idp))
        token = minter.token()
        for _ in range(3):
            assert gateway.request(entity, bearer(token)).status == 200
        assert gateway.request(entity, bearer("garbage")).status == 401
        assert gateway.request(entity, bearer(minter.token(exp=int(time.time()) - 600))).status == 401
        assert gateway.request(sensitive, bearer(minter.token())).status == 200
        issuer = f'issuer="{idp.issuer}"'
        # The node's endpoint sums the workers' metrics; their gauges are set every second.
        deadline = time.monotonic() + 5
        while True:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            if f"kcauth_jwks_age_seconds{{{issuer}}}" in text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert f'kcauth_requests_total{{decision="allowed",{issuer},reason="allowed"}} 4.0' in text, text
        assert 'reason="MalformedToken"} 1.0' in text and 'reason="Expired"} 1.0' in text
        assert f'kcauth_token_cache_total{{{issuer},result="hit"}} 2.0' in text
        assert f'kcauth_introspection_seconds_count{{{issuer},outcome="active"}} 1.0' in text
        age = next(line for line in text.splitlines() if line.startswith(f"kcauth_jwks_age_seconds{{{issuer}}}"))
        assert 0 <= float(age.split()[-1]) < 60
        assert "kcauth_events_running 0.0" in text


def test_each_decision_for_kong_s_log_plugins_when_asked_for(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    quiet = kong.plugin(guard_config(idp))
    assert kong.request(quiet, bearer(minter.token())).serialized == {}, "off by default: no round trip"
    told = kong.plugin(guard_config(idp, log_decision=True, required_roles=["realm:user"]))
    token = minter.token()
    allowed = kong.request(told, bearer(token))
    assert allowed.serialized["kcauth"] == {"decision": "allowed", "reason": None, "status": 200,
                                            "issuer": idp.issuer, "client": "test-cli"}
    refused = kong.request(told, bearer(minter.token(exp=int(time.time()) - 60)))
    assert refused.serialized["kcauth"] == {"decision": "refused", "reason": "Expired", "status": 401,
                                            "issuer": idp.issuer, "client": None}
    assert refused.pdk_calls[-1] == "kong.response.exit", "the decision is handed over before the answer"
    lacking = kong.request(kong.plugin(guard_config(idp, log_decision=True, required_roles=["realm:admin"])),
                           bearer(token))
    assert lacking.serialized["kcauth"]["reason"] == "InsufficientScope" and lacking.status == 403
    assert token not in str(allowed.serialized) and minter.claims()["sub"] not in str(allowed.serialized)
