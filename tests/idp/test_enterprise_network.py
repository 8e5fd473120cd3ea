"""Enterprise networks: an identity provider and a Redis behind a private CA (`tls_ca_bundle`),
and an outbound HTTP proxy from the plugin server's environment (HTTP(S)_PROXY, NO_PROXY)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import bearer, guard_config, own_gateway, sensitive_config, started_idp
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong
from tests.harness.tls import PrivateCA
from tests.services.redis import RedisServer


@pytest.fixture(scope="module")
def ca() -> Iterator[PrivateCA]:
    directory = Path(tempfile.mkdtemp(prefix="kcca"))
    yield PrivateCA(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tls_idp(ca: PrivateCA) -> Iterator[tuple[LocalIdP, Minter]]:
    issued = ca.issue("localhost")
    idp = started_idp(tls=(issued.cert, issued.key))
    yield idp, Minter(idp.issuer, idp.primary)  # type: ignore[attr-defined]
    idp.stop()


def test_an_identity_provider_behind_a_private_ca(kong: Kong, tls_idp: tuple[LocalIdP, Minter], ca: PrivateCA) -> None:
    idp, minter = tls_idp
    assert idp.issuer.startswith("https://")
    base = guard_config(idp, http_timeout=1)
    untrusted = kong.request(kong.plugin(base), bearer(minter.token()))
    assert untrusted.status == 503, "not in the Mozilla bundle: the key set cannot be fetched"
    assert kong.request(kong.plugin({**base, "tls_ca_bundle": "system"}), bearer(minter.token())).status == 503
    trusted = kong.request(kong.plugin({**base, "tls_ca_bundle": str(ca.bundle)}), bearer(minter.token()))
    assert trusted.status == 200 and idp.jwks_requests >= 1
    missing = kong.request(kong.plugin({**base, "tls_ca_bundle": "/nonexistent/ca.pem"}), bearer(minter.token()))
    assert missing.status == 500 and any("config.tls_ca_bundle: no file at" in e for e in missing.errors)


def test_redis_behind_a_private_ca(kong: Kong, idp: LocalIdP, minter: Minter, ca: PrivateCA) -> None:
    issued = ca.issue("localhost")
    server = RedisServer(tls=(issued.cert, issued.key, ca.bundle))
    server.start()
    try:
        config = sensitive_config(idp, tls_ca_bundle=str(ca.bundle), redis=server.plugin_config(tls=True))
        assert kong.request(kong.plugin(config), bearer(minter.token())).status == 200
        assert server.client().keys("kcauth:introspection:*"), "the answer was shared over TLS"
    finally:
        server.stop()


def test_redis_by_name_behind_a_private_ca(kong: Kong, idp: LocalIdP, minter: Minter, ca: PrivateCA) -> None:
    """Kong's TLS names: `ssl`, `server_name` (sent and verified instead of the address: a
    certificate for `redis.internal` only) and `ssl_verify`. A certificate that fails
    verification leaves Redis unused, never the route."""
    issued = ca.issue("redis.internal", with_ip=False)
    server = RedisServer(tls=(issued.cert, issued.key, ca.bundle))
    server.start()
    try:
        client = server.client()
        base = sensitive_config(idp, tls_ca_bundle=str(ca.bundle))

        def shared(prefix: str, **redis: Any) -> bool:
            entity = kong.plugin({**base, "redis": server.plugin_config(ssl=True, prefix=prefix, **redis)})
            assert kong.request(entity, bearer(minter.token())).status == 200
            return bool(client.keys(f"{prefix}introspection:*"))

        assert shared("named:", server_name="redis.internal"), "verified by its name, over 127.0.0.1"
        assert not shared("by-address:"), "the address is not in the certificate: Redis unused, the route works"
        assert not shared("other-name:", server_name="cache.internal")
        base = sensitive_config(idp)  # the Mozilla bundle: the private CA is not trusted...
        assert not shared("untrusted:", server_name="redis.internal")
        assert shared("unverified:", ssl_verify=False), "...unless verification is off"
    finally:
        server.stop()


class ForwardProxy:
    """A plain HTTP forward proxy on loopback that counts what it forwards."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.seen.append(self.path)
                upstream = requests.get(self.path, timeout=5, proxies={"http": "", "https": ""})
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.parametrize("no_proxy", ["", "127.0.0.1"])
def test_the_environment_s_proxy_is_used_unless_no_proxy_says_otherwise(idp: LocalIdP, minter: Minter,
                                                                        no_proxy: str) -> None:
    proxy = ForwardProxy()
    try:
        with own_gateway(env={"HTTP_PROXY": proxy.url, "NO_PROXY": no_proxy}) as gateway:
            res = gateway.request(gateway.plugin(guard_config(idp)), bearer(minter.token()))
            assert res.status == 200
            through = [p for p in proxy.seen if p.startswith(idp.origin)]
            if no_proxy:
                assert through == [], "NO_PROXY: straight to the identity provider"
            else:
                assert any(p.endswith("/certs") for p in through), proxy.seen
    finally:
        proxy.stop()
