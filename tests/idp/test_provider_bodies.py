"""Every body read from the identity provider is bounded while it is read (http.py): a discovery
document, key set or introspection answer of 50 MB is refused after its first megabyte, with a 503
and a line in Kong's log, and the plugin server's memory does not grow by what was sent. (The
feed's pages: tests/idp/test_keycloak_feed.py.)"""

from __future__ import annotations

import pytest

from tests.conftest import bearer, own_gateway, sensitive_config
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import rss_mb

SENT = 50 << 20


@pytest.mark.parametrize("path", ["openid-configuration", "certs", "introspect"])
def test_an_oversized_answer_is_refused_while_it_is_read(idp: LocalIdP, minter: Minter, path: str) -> None:
    with own_gateway() as kong:
        entity = kong.plugin(sensitive_config(idp, jwks_min_refresh_interval=1, introspection_breaker_seconds=0))
        if path == "introspect":  # discovery and keys first, as usual
            assert kong.request(entity, bearer(minter.token())).status == 200
        before = rss_mb(kong.server.pid, "VmHWM")
        idp.oversized, idp.oversized_bytes = path, SENT
        for _ in range(3):
            res = kong.request(entity, bearer(minter.token()))
            assert res.status == 503 and not res.proxied, res
        growth = rss_mb(kong.server.pid, "VmHWM") - before
        print(f"{path}: 3 answers of {SENT >> 20} MB, peak RSS {growth:+.1f} MB")
        assert growth < 16, f"the peak RSS grew by {growth:.1f} MB: the body was held"
        assert [e for e in kong.error_log if e.startswith("[err]") and "BodyTooLarge" in e], kong.error_log[-3:]
        idp.oversized = None
