"""spec/*.yaml: loading the cases, making their tokens and requests, and checking outcomes.

Shared by the harness runner (tests/e2e/test_spec.py, through the Kong-side protocol) and the HTTP
runner (tests/spec_http.py, against a live gateway), so both prove the same contract.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .idp import DROP, LocalIdP, Minter, SigningKey, b64url, forge, jwt_part

SPEC = Path(__file__).resolve().parents[2] / "spec"
BODIES = {401: "Unauthorized", 403: "Forbidden", 503: "The identity provider cannot be reached"}
# `expect.body` placeholders: Kong's $kong_request_id (tests/harness/nginx.py).
BODY_PLACEHOLDERS = {"$request-id": re.compile(r"[0-9a-f]{32}")}


@dataclass(frozen=True)
class Case:
    id: str
    spec: dict[str, Any]
    config: dict[str, Any]  # the file's config merged with the case's, without the issuer

    @property
    def expect(self) -> dict[str, Any]:
        return self.spec["expect"]


def load_cases(directory: Path = SPEC) -> list[Case]:
    cases = []
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for case in doc["cases"]:
            config = {**doc.get("config", {}), **case.get("config", {})}
            cases.append(Case(f"{path.stem}: {case['name']}", case, config))
    return cases


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


def request_headers(case: Case, idp: SpecIdP) -> tuple[list[tuple[str, str]], str]:
    """The request's headers in the order sent, the case's extra headers first, and the token
    they carry ("" for none)."""
    token = idp.make_token(case.spec["token"]) if case.spec.get("token") is not None else ""
    headers: list[tuple[str, str]] = list(case.spec.get("headers", {}).items())
    authorization = case.spec.get("authorization", "Bearer {token}" if case.spec.get("token") is not None else None)
    for value in ([authorization] if isinstance(authorization, str) else authorization or []):
        headers.append(("Authorization", value.replace("{token}", token)))
    return headers, token


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def body_matches(got: Any, want: Any) -> bool:
    """`expect.body`: exact JSON, where a placeholder string stands for any value of its form."""
    if isinstance(want, str) and want in BODY_PLACEHOLDERS:
        return isinstance(got, str) and BODY_PLACEHOLDERS[want].fullmatch(got) is not None
    if isinstance(want, dict):
        return (isinstance(got, dict) and got.keys() == want.keys()
                and all(body_matches(got[k], want[k]) for k in want))
    if isinstance(want, list):
        return (isinstance(got, list) and len(got) == len(want)
                and all(body_matches(g, w) for g, w in zip(got, want, strict=True)))
    return type(got) is type(want) and got == want


def problems(case: Case, token: str, status: int, headers: dict[str, str], body: Any,
             upstream: dict[str, list[str]] | None, groups: list[str] | None = None) -> list[str]:
    """How an outcome differs from the case's expectations (empty: it passes). `upstream` maps
    lower-cased header names to what reached the upstream (None when nothing was proxied);
    `groups` is None where the runner cannot see kong.ctx.shared (over HTTP)."""
    expect, found = case.expect, []
    if status != expect["status"]:
        return [f"status {status}, expected {expect['status']} (body {body!r})"]
    challenge = _header(headers, "WWW-Authenticate")
    if "www_authenticate" in expect and challenge != expect["www_authenticate"]:
        found.append(f"WWW-Authenticate {challenge!r}, expected {expect['www_authenticate']!r}")
    if "www_authenticate" not in expect and status in (401, 403) and not (challenge or "").startswith('Bearer realm="'):
        found.append(f"WWW-Authenticate {challenge!r} is not a Bearer challenge")
    retry = _header(headers, "Retry-After")
    if "retry_after" in expect and retry != expect["retry_after"]:
        found.append(f"Retry-After {retry!r}, expected {expect['retry_after']!r}")
    for name, value in expect.get("upstream", {}).items():
        got = (upstream or {}).get(name.lower(), [])
        want = [] if value is None else [value.replace("{token}", token)]
        if got != want:
            found.append(f"upstream {name}: {got!r}, expected {want!r}")
    if groups is not None and "groups" in expect and groups != expect["groups"]:
        found.append(f"groups {groups!r}, expected {expect['groups']!r}")
    content_type = _header(headers, "Content-Type")
    if "content_type" in expect and content_type != expect["content_type"]:
        found.append(f"Content-Type {content_type!r}, expected {expect['content_type']!r}")
    if "body" in expect:
        if not body_matches(body, expect["body"]):
            found.append(f"body {body!r}, expected {expect['body']!r}")
    elif status != 200 and body != {"message": BODIES.get(status)}:
        found.append(f"body {body!r}, expected {{'message': {BODIES.get(status)!r}}}")
    return found
