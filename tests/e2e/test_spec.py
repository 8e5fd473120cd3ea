"""Runs every case of spec/*.yaml through the real plugin server and the Kong-side harness, in
each of the plugin server's modes (`each_mode_kong`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.kong import Kong
from tests.harness.spec import Case, SpecIdP, load_cases, problems, request_headers


@pytest.fixture(scope="module")
def spec_idp() -> Iterator[SpecIdP]:
    realm = SpecIdP()
    yield realm
    realm.server.stop()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in load_cases()])
def test_case(case: Case, each_mode_kong: Kong, spec_idp: SpecIdP) -> None:
    kong = each_mode_kong
    headers, token = request_headers(case, spec_idp)
    res = kong.request(kong.plugin({"issuer": spec_idp.server.issuer, **case.config}), headers)
    upstream: dict[str, list[str]] = {}
    for name, value in res.upstream_headers:
        upstream.setdefault(name.lower(), []).append(value if isinstance(value, str) else value.decode())
    assert problems(case, token, res.status, res.headers, res.body, upstream if res.proxied else None,
                    res.ctx_shared.get("authenticated_groups")) == []
    assert res.proxied == (res.status == 200)
    assert res.errors == [], "the plugin server must answer every event cleanly"
