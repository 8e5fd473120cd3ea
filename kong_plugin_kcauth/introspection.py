"""Introspection (RFC 7662): asking Keycloak whether a token is still active.

Local validation cannot see logout or revocation; on sensitive routes this module asks.
Keycloak-friendly by construction:
- one call per token at a time: concurrent requests with the same uncached token share it
  (handler.Guard.admit coalesces them);
- answers are reused, active ones until min(`introspection_cache_ttl`, token `exp`), inactive
  ones for `introspection_negative_ttl`, in process and, when configured, in Redis for every
  node and process (keys are digests of the config fingerprint and the token, never tokens);
- after 3 failures in a row a breaker fails fast for `introspection_breaker_seconds`, so a dead
  Keycloak does not add a timeout to every request.
An answer counts as active only when `active` is the boolean true and its claims pass the same
claim rules as local validation (issuer, expiry, audience, token type, authorized party).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import jwt

from . import errors, http
from .claims import Claims
from .schema import Config, load_signing_key
from .shared import SharedStore
from .tokens import Rules, check_claims

log = logging.getLogger("kcauth.introspection")

BREAKER_FAILURES = 3
ASSERTION_LIFETIME = 60


@dataclass(frozen=True)
class Verdict:
    """What introspection decided, and until when that may be reused."""

    refusal: type[errors.Refusal] | None  # None: active and acceptable
    deadline: float
    claims: Claims = field(default_factory=dict)


def judge(answer: dict[str, Any], rules: Rules, now: float, ttl: float, negative_ttl: float) -> Verdict:
    """Turn an introspection answer into a verdict (pure)."""
    active = answer.get("active")
    if active is False:
        return Verdict(errors.TokenInactive, now + negative_ttl)
    if active is not True:
        raise http.FetchError("introspection answer has no boolean `active`")
    try:
        check_claims(answer, rules, now)
    except errors.Refusal as refusal:
        return Verdict(type(refusal), now + negative_ttl)
    return Verdict(None, min(now + ttl, float(answer["exp"])), answer)


def client_authentication(config: Config, audience: str, now: float) -> tuple[dict[str, str], dict[str, str]]:
    """Form fields and headers that authenticate kcauth's client (RFC 6749 2.3, RFC 7523)."""
    client_id = config.client_id or ""
    if config.client_auth_method == "client_secret_basic":
        # RFC 6749 2.3.1: id and secret are form-encoded before base64.
        pair = f"{quote_plus(client_id)}:{quote_plus(config.client_secret or '')}"
        return {}, {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    if config.client_auth_method == "client_secret_post":
        return {"client_id": client_id, "client_secret": config.client_secret or ""}, {}
    key, alg = load_signing_key(config.client_private_key or "")
    assertion = jwt.encode(
        {"iss": client_id, "sub": client_id, "aud": audience, "jti": str(uuid.uuid4()),
         "iat": int(now), "exp": int(now) + ASSERTION_LIFETIME},
        key, algorithm=alg,
    )
    return {
        "client_id": client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }, {}


class Introspector:
    def __init__(self, config: Config, rules: Rules, fingerprint: str, shared: SharedStore | None) -> None:
        self.config = config
        self.rules = rules
        self.shared = shared
        self._salt = fingerprint.encode()
        self._endpoint = config.introspection_endpoint
        self._failures = 0
        self._open_until = 0.0
        self._lock = threading.Lock()
        self._last_fallback_log = 0.0

    def verdict(self, token: str, key: bytes, now: float) -> Verdict:
        """The verdict for a token (`key` is its digest): from Redis when another node or process
        asked already, else from Keycloak. Raises IntrospectionUnavailable. Callers coalesce
        concurrent requests for one token (handler.Guard.admit)."""
        shared_key = "introspection:" + hashlib.sha256(self._salt + key).hexdigest()
        if self.shared is not None:
            cached = self._from_shared(self.shared.get(shared_key), now)
            if cached is not None:
                return cached
        try:
            answer = self._call(token, now)
            verdict = judge(answer, self.rules, now, self.config.introspection_cache_ttl,
                            self.config.introspection_negative_ttl)
        except http.FetchError as exc:
            self._failed(exc)
            raise errors.IntrospectionUnavailable() from None
        with self._lock:
            self._failures = 0
        if self.shared is not None:
            self.shared.put(shared_key, _to_shared(verdict), verdict.deadline - now)
        return verdict

    def note_fallback(self) -> None:
        now = time.monotonic()
        if now - self._last_fallback_log > 30:
            self._last_fallback_log = now
            log.warning("introspection unavailable: accepting locally validated tokens "
                        "(introspection_failure = local)")

    def _call(self, token: str, now: float) -> dict[str, Any]:
        if time.monotonic() < self._open_until:
            raise http.FetchError("breaker open")
        endpoint = self._endpoint or self._discover()
        form, headers = client_authentication(self.config, self.config.issuer, now)
        form.update(token=token, token_type_hint="access_token")
        return http.post_form(endpoint, form, headers, self.config.http_timeout)

    def _discover(self) -> str:
        self._endpoint = http.discover(self.config.discovery_url, self.config.issuer, "introspection_endpoint",
                                       self.config.http_timeout, self.config.provider_rewrite)
        return self._endpoint

    def _failed(self, exc: http.FetchError) -> None:
        seconds = self.config.introspection_breaker_seconds
        with self._lock:
            if str(exc) == "breaker open":
                return
            self._failures += 1
            opening = seconds > 0 and self._failures >= BREAKER_FAILURES
            if opening:
                self._open_until = time.monotonic() + seconds
                self._failures = 0
        log.warning("introspection failed: %s%s", exc,
                    f"; failing fast for {seconds} s" if opening else "")

    @staticmethod
    def _from_shared(value: dict[str, Any] | None, now: float) -> Verdict | None:
        if not value or not isinstance(value.get("deadline"), (int, float)) or value["deadline"] <= now:
            return None
        name = value.get("refusal")
        refusal = getattr(errors, name, None) if isinstance(name, str) else None
        if name is not None and not (isinstance(refusal, type) and issubclass(refusal, errors.Refusal)):
            return None
        claims = value.get("claims")
        if refusal is None and not (isinstance(claims, dict) and claims.get("active") is True):
            return None  # an active verdict always carries the answer it came from
        return Verdict(refusal, float(value["deadline"]), claims if refusal is None else {})


def _to_shared(verdict: Verdict) -> dict[str, Any]:
    return {"refusal": verdict.refusal.__name__ if verdict.refusal else None,
            "deadline": verdict.deadline, "claims": verdict.claims}
