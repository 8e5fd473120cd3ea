"""Runs every case of spec/*.yaml through the real plugin server and the Kong-side harness."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.idp import DROP, LocalIdP, Minter, SigningKey, b64url, forge, jwt_part
from tests.harness.kong import Kong

SPEC = Path(__file__).resolve().parent.parent / "spec"


def load_cases() -> list[Any]:
    params = []
    for path in sorted(SPEC.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for case in doc["cases"]:
            config = {**doc.get("config", {}), **case.get("config", {})}
            params.append(pytest.param(case, config, id=f"{path.stem}: {case['name']}"))
    return params


class SpecIdP:
    """The realm the cases run against: an RSA and an ES256 key published, an attacker key not."""

    def __init__(self) -> None:
        self.server = LocalIdP().start()
        self.rsa = SigningKey("RS256")
        self.es256 = SigningKey("ES256")
        self.attacker = SigningKey("RS256")
        self.server.keys += [self.rsa.jwk(), self.es256.jwk(), self.rsa.jwk(use="enc") | {"kid": "enc-1"}]
        self.minter = Minter(self.server.issuer, self.rsa)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"now"}:
            return int(time.time()) + value["now"]
        placeholders = {
            "$realm-kid": self.rsa.kid,
            "$issuer-prefix": self.server.issuer[:-1],
            "$issuer-suffix": self.server.issuer + "/",
        }
        return placeholders.get(value, value) if isinstance(value, str) else value

    def make_token(self, spec: dict[str, Any]) -> str:
        claims = {k: DROP if v == "$drop" else self.resolve(v) for k, v in spec.get("claims", {}).items()}
        if "pad_to" in spec:
            claims["pad"] = "x" * spec["pad_to"]
        key = {"realm": self.rsa, "realm-es256": self.es256, "attacker": self.attacker}[spec.get("key", "realm")]
        header = {k: self.resolve(v) for k, v in spec.get("header", {}).items()}
        embed = spec.get("embed")
        if embed == "jwk":
            header["jwk"] = self.attacker.jwk()
        elif embed in ("jku", "x5u"):
            header[embed] = f"http://127.0.0.1:{self.server.port}/attacker/certs"
        alg = spec.get("alg")
        body = self.minter.claims(**claims)
        if alg == "none":
            return forge({"alg": "none", "typ": "JWT", "kid": self.rsa.kid, **header}, body)
        if alg == "hs256-public":
            hdr = {"alg": "HS256", "typ": "JWT", "kid": self.rsa.kid, **header}
            unsigned = forge(hdr, body).rsplit(".", 1)[0]
            mac = hmac.new(self.rsa.public_pem(), unsigned.encode(), hashlib.sha256).digest()
            return f"{unsigned}.{b64url(mac)}"
        if alg == "es256-on-rsa-kid":
            rogue = SigningKey("ES256")
            return self.minter.token(key=rogue, headers={"kid": self.rsa.kid, **header}, **claims)
        token = self.minter.token(key=key, headers=header or None, **claims)
        if spec.get("tamper"):
            head, payload, sig = token.split(".")
            changed = jwt_part(token, 1) | {"sub": "someone-else"}
            token = ".".join([head, b64url(json.dumps(changed).encode()), sig])
        return token


@pytest.fixture(scope="module")
def spec_idp() -> Iterator[SpecIdP]:
    realm = SpecIdP()
    yield realm
    realm.server.stop()


@pytest.mark.parametrize(("case", "config"), load_cases())
def test_case(case: dict[str, Any], config: dict[str, Any], kong: Kong, spec_idp: SpecIdP) -> None:
    token = spec_idp.make_token(case["token"]) if case.get("token") is not None else ""
    headers: list[tuple[str, str]] = []
    authorization = case.get("authorization", "Bearer {token}" if case.get("token") is not None else None)
    for value in ([authorization] if isinstance(authorization, str) else authorization or []):
        headers.append(("Authorization", value.replace("{token}", token)))
    headers += list(case.get("headers", {}).items())

    entity = kong.plugin({"issuer": spec_idp.server.issuer, **config})
    res = kong.request(entity, headers)

    expect = case["expect"]
    assert res.status == expect["status"], (res.body, res.headers, res.errors)
    if "www_authenticate" in expect:
        assert res.headers.get("WWW-Authenticate") == expect["www_authenticate"]
    elif res.status in (401, 403):
        assert res.headers["WWW-Authenticate"].startswith('Bearer realm="')
    if "retry_after" in expect:
        assert res.headers.get("Retry-After") == expect["retry_after"]
    for name, value in expect.get("upstream", {}).items():
        got = res.upstream(name)
        if value is None:
            assert got == [], f"{name} must not reach the upstream"
        else:
            assert got == [value.replace("{token}", token)], name
    if "groups" in expect:
        assert res.ctx_shared.get("authenticated_groups") == expect["groups"]
    if res.status != 200:
        assert not res.proxied
        assert res.body == {"message": {401: "Unauthorized", 403: "Forbidden", 503:
                                        "The identity provider cannot be reached"}[res.status]}
    assert res.errors == [], "the plugin server must answer every event cleanly"
