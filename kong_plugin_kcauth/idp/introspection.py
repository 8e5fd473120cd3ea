"""Introspection (RFC 7662): asking Keycloak whether a token is still active.

Local validation cannot see logout or revocation; on sensitive routes this module asks.
Keycloak-friendly by construction:
- one call per token at a time: concurrent requests with the same uncached token share it
  (decision.Guard coalesces them);
- answers are reused, active ones until min(`introspection_cache_ttl`, token `exp`), inactive
  ones for `introspection_negative_ttl`, in process and, when configured, in Redis for every
  node and process (sealed, keyed by digests of the config fingerprint and the token);
- after 3 failures in a row a breaker fails fast for `introspection_breaker_seconds`, so a dead
  Keycloak does not add a timeout to every request.

An answer counts only when it is about this token: `sub`, `iss`, `azp`/`client_id`, `sid`, `jti`
and `iat` present in both the answer and the locally validated token must agree; an answer that
does not is a failure of the identity provider (503 under `deny`), never remembered. An active
answer is accepted only when `active` is the boolean true, its times are sane and its claims pass
the same claim rules as local validation (issuer, expiry, audience, token type, authorized party).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..config import Config
from ..ops import metrics
from ..ops.logs import Owners, Throttled, health
from ..revocation.shared import SharedStore
from ..tokens.access import Rules, check_claims
from ..tokens.claims import Claims, time_of
from . import http
from .client_auth import client_authentication

log = logging.getLogger("kcauth.introspection")

BREAKER_FAILURES = 3
# Claims an answer and the token it is about must agree on, where both carry them.
BOUND_CLAIMS = ("sub", "iss", "sid", "jti", "iat")


class BadAnswer(http.FetchError):
    """Keycloak answered, but not with a usable answer about this token."""


class BreakerOpen(http.FetchError):
    """Too many failures in a row: not asking for a while."""


@dataclass(frozen=True)
class Verdict:
    """What introspection decided, and until when that may be reused."""

    refusal: type[errors.Refusal] | None  # None: active and acceptable
    deadline: float
    claims: Claims = field(default_factory=dict)


def about_this_token(answer: Claims, token: Claims) -> bool:
    """Whether an answer can be about the token whose validated claims are `token`."""
    if any(name in answer and name in token and answer[name] != token[name] for name in BOUND_CLAIMS):
        return False
    azp = token.get("azp")
    return azp is None or all(answer.get(name, azp) == azp for name in ("azp", "client_id"))


def judge(answer: dict[str, Any], token: Claims | None, rules: Rules, now: float, ttl: float,
          negative_ttl: float) -> Verdict:
    """Turn an introspection answer into a verdict (pure); BadAnswer when it is unusable.
    `token` is the locally validated claims, None for an opaque token."""
    active = answer.get("active")
    if active is False:
        return Verdict(errors.TokenInactive, now + negative_ttl)
    if active is not True:
        raise BadAnswer("introspection answer has no boolean `active`")
    if token is not None and not about_this_token(answer, token):
        raise BadAnswer("introspection answered about another token")
    if any(name in answer and time_of(answer[name]) is None for name in ("exp", "iat", "nbf")) \
            or "exp" not in answer:
        raise BadAnswer("introspection answer has no sane `exp`, `iat` or `nbf`")
    try:
        check_claims(answer, rules, now)
    except errors.Refusal as refusal:
        return Verdict(type(refusal), now + negative_ttl)
    return Verdict(None, min(now + ttl, time_of(answer["exp"]) or now), answer)


class Introspector:
    def __init__(self, *, rules: Rules, issuer: str, endpoint: str | None, discovery_url: str,
                 rewrite: tuple[str, str] | None, client_id: str,
                 credentials: tuple[str, str | None, str | None] | str, ttl: float,
                 negative_ttl: float, breaker_seconds: float, timeout: float, salt: str,
                 shared: SharedStore | None, fallback: bool = False, ca: str | None = None,
                 confine: str | None = None, label: str | None = None, owners: Owners | None = None) -> None:
        self.rules = rules
        self.shared = shared
        self._issuer = issuer
        self._label = label or issuer  # the metrics' issuer label (a template realm's: the template)
        self._confine = confine
        self._endpoint = endpoint
        self._discovery_url = discovery_url
        self._rewrite = rewrite
        self._client_id = client_id
        self._credentials = credentials  # (method, secret, key), or why there are none (Config.client_credentials)
        self._ttl, self._negative_ttl = ttl, negative_ttl
        self._breaker_seconds = breaker_seconds
        self._timeout = timeout
        self._salt = salt.encode()
        self._failures = 0
        self._open_until = 0.0
        self._lock = threading.Lock()
        self._notes = Throttled(log, 30)
        self._component = f"introspection at {issuer}"
        self._owners = owners  # its state is this config's: another config of the issuer has its own
        self._fallback = fallback
        self._ca = ca

    @classmethod
    def from_config(cls, config: Config, rules: Rules, shared: SharedStore | None,
                    label: str | None = None, owners: Owners | None = None) -> Introspector:
        return cls(
            rules=rules, issuer=config.the_issuer, endpoint=config.introspection_endpoint,
            discovery_url=config.discovery_url, rewrite=config.provider_rewrite,
            client_id=config.client_id or "", credentials=config.client_credentials,
            ttl=config.introspection_cache_ttl, negative_ttl=config.introspection_negative_ttl,
            breaker_seconds=config.introspection_breaker_seconds, timeout=config.http_timeout,
            salt=config.fingerprint(), shared=shared, fallback=config.introspection_failure == "local",
            ca=config.tls_ca_bundle, confine=config.confined_origin, label=label, owners=owners,
        )

    def verdict(self, token: str, key: bytes, claims: Claims | None, now: float) -> Verdict:
        """The verdict for a token (`key` is its digest, `claims` its validated claims): from
        Redis when another node or process asked already, else from Keycloak. Raises
        IntrospectionUnavailable. Callers coalesce concurrent requests for one token."""
        shared_key = "introspection:" + hashlib.sha256(self._salt + key).hexdigest()
        if self.shared is not None:
            cached = _from_shared(self.shared.get(shared_key), claims, now)
            if cached is not None:
                return cached
        started = time.monotonic()
        try:
            verdict = judge(self._call(token, now), claims, self.rules, now, self._ttl, self._negative_ttl)
        except http.FetchError as exc:
            metrics.METRICS.introspection(self._label, type(exc).__name__, time.monotonic() - started)
            self._failed(exc)
            raise errors.IntrospectionUnavailable() from None
        metrics.METRICS.introspection(self._label, verdict.refusal.__name__ if verdict.refusal else "active",
                                      time.monotonic() - started)
        with self._lock:
            self._failures = 0
        health.report(self._component, True, owners=self._owners)
        if self.shared is not None:
            self.shared.put(shared_key, _to_shared(verdict), verdict.deadline - now)
        return verdict

    def note_fallback(self) -> None:
        self._notes.warning("introspection unavailable: accepting locally validated tokens "
                            "(introspection_failure = local)")

    def _call(self, token: str, now: float) -> dict[str, Any]:
        if isinstance(self._credentials, str):
            raise http.FetchError(self._credentials)  # a config problem, named: never a call without credentials
        if time.monotonic() < self._open_until:
            raise BreakerOpen("breaker open")
        endpoint = self._endpoint or self._discover()
        method, secret, private_key = self._credentials
        form, headers = client_authentication(method, self._client_id, secret, private_key, self._issuer, now)
        form.update(token=token, token_type_hint="access_token")
        return http.post_form(endpoint, form, headers, self._timeout, self._ca)

    def _discover(self) -> str:
        self._endpoint = http.discover(self._discovery_url, self._issuer, "introspection_endpoint",
                                       self._timeout, self._rewrite, ca=self._ca, confine=self._confine)
        return self._endpoint

    def _failed(self, exc: http.FetchError) -> None:
        if isinstance(exc, BreakerOpen):
            return
        seconds = self._breaker_seconds
        with self._lock:
            self._failures += 1
            opening = seconds > 0 and self._failures >= BREAKER_FAILURES
            if opening:
                self._open_until = time.monotonic() + seconds
                self._failures = 0
        health.report(self._component, False, f"introspection failing ({exc}): requests get "
                      f"{'the local verdict' if self._fallback else '503'}"
                      + (f"; failing fast for {seconds} s at a time" if seconds > 0 else ""), self._owners)


def _from_shared(value: dict[str, Any] | None, claims: Claims | None, now: float) -> Verdict | None:
    """A verdict another process stored (already opened: sealed by a gateway), if still usable."""
    if value is None:
        return None
    deadline, name, answer = time_of(value.get("deadline")), value.get("refusal"), value.get("claims")
    if deadline is None or deadline <= now:
        return None
    if name is not None:
        refusal = errors.VERDICT_REFUSALS.get(name) if isinstance(name, str) else None
        return Verdict(refusal, deadline) if refusal is not None else None
    if not (isinstance(answer, dict) and answer.get("active") is True):
        return None  # an active verdict always carries the answer it came from
    if claims is not None and not about_this_token(answer, claims):
        return None
    return Verdict(None, deadline, answer)


def _to_shared(verdict: Verdict) -> dict[str, Any]:
    return {"refusal": verdict.refusal.__name__ if verdict.refusal else None,
            "deadline": verdict.deadline, "claims": verdict.claims}
