"""Kong entry: the plugin class kong-pdk instantiates per configuration, and its access phase.

`Plugin.access` (at the bottom) is the whole request path; `Guard` above it is one configuration
compiled and shared, and `Guard.admit` decides a request: bearer token, remembered outcome or
local validation (tokens.py) then, on sensitive routes, introspection (introspection.py), the
scope/role policy (policy.py), the upstream headers (headers.py) and, on every request,
the revocations Keycloak pushed (revocation.py). In `revocation_receiver` mode the route instead
receives those pushes (`Plugin._receive`, logout.py).

Two properties of Kong's plugin-server bridge shape it (see README, "Security model"):
- Kong proxies the request when the plugin server fails (fail-open), so nothing here may raise,
  hang or crash: every outcome is either "headers set, proceed" or one `kong.response.exit`.
- kong-pdk serializes every handler until its first PDK call, and wedges for good if a handler
  raises before it; the first statement is therefore a PDK call, and it carries all the input
  the request path needs (one round trip for all request headers).

PDK round trips: 2 on the reject path (read headers, exit), 3 on the allow path (read headers,
set upstream headers, hand groups to Kong's ACL plugin), plus `kong.client.authenticate` (and a
`load_consumer` per minute per consumer) when consumers are mapped. Nothing follows
`kong.response.exit`.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any

from . import errors
from .cache import ExpiringCache, Registry, SingleFlight, token_key
from .claims import Claims
from .consumers import ConsumerMap, consumer_headers, credential_for
from .errors import Refusal
from .headers import HeaderPlan, HeaderValue, cleared_headers, groups_for, upstream_headers
from .introspection import Introspector
from .keys import KeySet, KeySource
from .logout import PUSH_NOT_BEFORE_PATH, LogoutRejected, check_logout_token, check_push_not_before, logout_token_of
from .policy import Policy, authorize
from .revocation import RevocationStore, Subject, digest
from .schema import Config, RedisConfig
from .shared import SharedStore, SharedUnavailable
from .tokens import Rules, validate

log = logging.getLogger("kcauth")

_KEYSETS: Registry[KeySet] = Registry()
_SHARED: Registry[SharedStore] = Registry()
_REVOCATIONS: Registry[RevocationStore] = Registry()
_GUARDS: Registry[Guard] = Registry()


@dataclass(frozen=True)
class Grant:
    """The outcome of an accepted token, ready to hand to Kong."""

    headers: dict[str, HeaderValue]
    groups: list[str]
    subject: Subject  # what revocations are checked against, on every request
    consumer: str | None = None  # the consumer_claim value, when consumer mapping is on
    credential: dict[str, str] | None = None


@dataclass(frozen=True)
class Denial:
    """A remembered refusal of a token that passed validation (scope, role, inactive)."""

    refusal: type[Refusal]
    required_scopes: tuple[str, ...] = ()

    def exception(self) -> Refusal:
        # A fresh exception each time: re-raising one cached instance would keep growing its
        # traceback.
        if self.refusal is errors.InsufficientScope:
            return errors.InsufficientScope(self.required_scopes)
        return self.refusal()


class Guard:
    """One configuration compiled: its rules, keys and cache, shared by every instance with
    the same settings (Kong starts one instance per worker and more on every reload)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rules = Rules(
            issuer=config.issuer,
            audiences=frozenset(config.audiences),
            verify_audience=config.verify_audience,
            authorized_parties=frozenset(config.authorized_parties),
            algorithms=frozenset(config.algorithms),
            leeway=config.leeway,
            max_token_age=config.max_token_age,
            max_token_size=config.max_token_size,
        )
        self.policy = Policy(config.required_scopes, config.scopes_match,
                             config.required_roles, config.roles_match)
        self.plan = HeaderPlan.compile(config.claim_headers, config.header_value_max_length,
                                       config.strip_authorization)
        source = KeySource(
            jwks_uri=config.jwks_uri,
            discovery_url=config.discovery_url,
            issuer=config.issuer,
            refresh_interval=config.jwks_refresh_interval,
            min_refresh_interval=config.jwks_min_refresh_interval,
            max_stale=config.jwks_max_stale,
            timeout=config.http_timeout,
            rewrite=config.provider_rewrite,
        )
        self.keys = _KEYSETS.get(source, lambda: KeySet(source))
        self.keys.prefetch()
        shared = _shared(config.redis)
        self.revocations = _REVOCATIONS.get((config.issuer, config.redis),
                                            lambda: RevocationStore(config.issuer, shared))
        self.introspector: Introspector | None = None
        if config.introspect:
            self.introspector = Introspector(config, replace(self.rules, defer_missing_audience=False),
                                             config.fingerprint(), shared)
            self.rules = replace(self.rules, defer_missing_audience=True)
        self.consumers = (ConsumerMap(config.consumer_claim, config.consumer_match, config.anonymous)
                          if config.consumer_claim or config.anonymous else None)
        # Outcomes of tokens that passed validation, by token hash: never past the token's life,
        # nor past the introspection answer they rest on.
        self.cache: ExpiringCache[Grant | Denial] = ExpiringCache(config.token_cache_size)
        self._flights: SingleFlight[Grant | Denial] = SingleFlight()

    def admit(self, request_headers: dict[str, Any], now: float) -> Grant:
        token = bearer_token(request_headers)
        key = token_key(token)
        outcome = self.cache.get(key)
        if outcome is None:
            # Concurrent requests with the same unremembered token share one evaluation (one
            # key download, one introspection call), and the outcome is remembered before the
            # others are released, so no late arrival starts a second one.
            try:
                outcome = self._flights.do(key, lambda: self._remember(token, key, now),
                                           wait=8 * self.config.http_timeout + 2)
            except TimeoutError:
                raise errors.ProviderUnavailable() from None
        if isinstance(outcome, Denial):
            raise outcome.exception()
        if self.revocations.revoked(outcome.subject, self.config.not_before):
            raise errors.TokenRevoked()
        return outcome

    def receive(self, path: str, body: bytes, now: float) -> None:
        """Receiver mode: check and record one push from Keycloak (raises LogoutRejected,
        ProviderUnavailable, or SharedUnavailable when Redis cannot take the record)."""
        audiences = frozenset(self.config.logout_audiences)
        ttl = self.config.revocation_ttl
        if path.rstrip("/").endswith("/" + PUSH_NOT_BEFORE_PATH):
            push = check_push_not_before(body.decode("utf-8", "replace").strip(), self.rules,
                                         self.keys.key_for, audiences, now)
            self.revocations.record("nbf", push.client, push.not_before, ttl)
            return
        logout = check_logout_token(logout_token_of(body), self.rules, self.keys.key_for, audiences, now)
        if not self.revocations.first_sighting(logout.jti, ttl):
            raise LogoutRejected("replayed logout token")
        if logout.sid is not None:
            self.revocations.record("sid", logout.sid, logout.iat, ttl)
        else:
            self.revocations.record("sub", logout.sub or "", logout.iat, ttl)

    def _remember(self, token: str, key: bytes, now: float) -> Grant | Denial:
        outcome, deadline = self._evaluate(token, key, now)
        self.cache.put(key, outcome, deadline)
        return outcome

    def _evaluate(self, token: str, key: bytes, now: float) -> tuple[Grant | Denial, float]:
        """Local validation first (every token that looks like a JWT), then, on sensitive
        routes, introspection, whose claims then drive the policy and the headers."""
        claims: Claims | None = None
        deadline = float("inf")
        if not (self.config.accept_opaque_tokens and token.count(".") != 2):
            claims = validate(token, self.rules, self.keys.key_for, now)
            deadline = self._cache_deadline(claims)
        if self.introspector is not None:
            try:
                verdict = self.introspector.verdict(token, key, now)
            except errors.IntrospectionUnavailable:
                if claims is None or self.config.introspection_failure != "local":
                    raise
                self.introspector.note_fallback()
                return self._decide(claims), now  # not remembered: ask again next time
            if verdict.refusal is not None:
                return Denial(verdict.refusal), verdict.deadline
            claims, deadline = verdict.claims, min(deadline, verdict.deadline)
        assert claims is not None
        return self._decide(claims), deadline

    def _decide(self, claims: Claims) -> Grant | Denial:
        try:
            authorize(self.policy, claims)
        except errors.InsufficientScope as refusal:
            return Denial(errors.InsufficientScope, refusal.required_scopes)
        groups = groups_for(claims, self.config.authenticated_group, self.config.roles_as_groups)
        iat = claims.get("iat")
        subject = Subject(sid=digest(claims.get("sid")), sub=digest(claims.get("sub")),
                          azp=claims.get("azp") if isinstance(claims.get("azp"), str) else None,
                          iat=float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None)
        consumer = self.consumers.name_in(claims) if self.consumers else None
        credential = credential_for(self.config.issuer, claims) if self.consumers else None
        return Grant(upstream_headers(self.plan, claims), groups, subject, consumer, credential)

    def _cache_deadline(self, claims: Claims) -> float:
        deadline = float(claims["exp"])
        if self.rules.max_token_age is not None:
            deadline = min(deadline, float(claims["iat"]) + self.rules.max_token_age)
        return deadline


def _shared(redis: RedisConfig) -> SharedStore | None:
    """The process's one Redis client for these settings, or None without Redis."""
    return _SHARED.get(redis, lambda: SharedStore(redis)) if redis.host else None


def bearer_token(request_headers: dict[str, Any]) -> str:
    """The token of the one `Authorization: Bearer` header (RFC 6750 2.1; never the query)."""
    values = request_headers.get("authorization")
    if not values:
        raise errors.MissingToken()
    if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
        raise errors.InvalidRequest()
    scheme, _, token = values[0].strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise errors.MissingToken()  # another scheme: no bearer credentials were presented
    token = token.strip(" \t")
    if not token or " " in token or "\t" in token:
        raise errors.InvalidRequest()
    return token


class Plugin:
    """Instantiated by kong-pdk at plugin.StartInstance with Kong's config for one entity."""

    def __init__(self, config: dict[str, Any]) -> None:
        # Raising here fails StartInstance: Kong then answers the route's requests with 500,
        # which is closed, and logs the message, which names the bad setting.
        self.config = Config.from_kong(config)
        self.guard = _GUARDS.get(self.config.fingerprint(), lambda: Guard(self.config))

    def access(self, kong: Any) -> None:
        if self.config.mode == "revocation_receiver":
            return self._receive(kong)
        guard = self.guard
        try:
            request_headers = kong.request.get_headers()
            try:
                grant = guard.admit(request_headers, time.time())
            except Refusal as refusal:
                if refusal.status == 401 and guard.consumers and guard.consumers.anonymous \
                        and _as_anonymous(kong, guard):
                    return
                raise
            headers = grant.headers
            if guard.consumers is not None:
                consumer = guard.consumers.find(kong, grant.consumer) if grant.consumer else None
                if consumer is None and guard.config.consumer_required:
                    raise errors.UnknownConsumer()
                if consumer is not None:
                    kong.client.authenticate(consumer, grant.credential)
                headers = {**headers, **consumer_headers(consumer, grant.credential if consumer else None)}
            kong.service.request.set_headers(headers)
            kong.ctx.shared.set("authenticated_groups", grant.groups)
            return
        except Refusal as refusal:
            reply = errors.answer(refusal, guard.config.realm)
        except Exception as exc:  # noqa: BLE001 - an escaping exception would fail open or wedge
            reply = errors.answer(errors.InternalFault(), guard.config.realm)
            _report_fault(kong, exc)
        _send(kong, reply)


    def _receive(self, kong: Any) -> None:
        """The revocation receiver: 200 (or proxied on) when recorded, 400 with the reason for
        a bad push, 503 when it cannot be recorded, so Keycloak logs the failure."""
        guard = self.guard
        try:
            method = kong.request.get_method()
            if method != "POST":
                reply = errors.Answer(405, {"message": "Method not allowed"}, {"Allow": "POST"})
            else:
                path = kong.request.get_path()
                body = kong.request.get_raw_body()
                guard.receive(path, body if isinstance(body, bytes) else b"", time.time())
                if self.config.pass_logout_upstream:
                    return
                reply = errors.Answer(200, {"message": "recorded"}, {"Cache-Control": "no-store"})
        except LogoutRejected as rejected:
            reply = errors.Answer(400, {"error": "invalid_request", "error_description": rejected.reason},
                                  {"Cache-Control": "no-store"})
        except (errors.ProviderUnavailable, SharedUnavailable):
            reply = errors.answer(errors.ProviderUnavailable(), guard.config.realm)
        except Exception as exc:  # noqa: BLE001 - an escaping exception would wedge or fail open
            reply = errors.answer(errors.InternalFault(), guard.config.realm)
            _report_fault(kong, exc)
        _send(kong, reply)


def _as_anonymous(kong: Any, guard: Guard) -> bool:
    """Let a request without a valid token through as the anonymous consumer, carrying no
    identity; False (the refusal stands) when that consumer does not exist."""
    assert guard.consumers is not None
    consumer = guard.consumers.find_anonymous(kong)
    if consumer is None:
        log.warning("config.anonymous names no Kong consumer; refusing instead")
        return False
    kong.client.authenticate(consumer, None)
    kong.service.request.set_headers({**cleared_headers(guard.plan), **consumer_headers(consumer, None, True)})
    return True


def _send(kong: Any, reply: errors.Answer) -> None:
    """The one `kong.response.exit` of a request; nothing may follow it."""
    try:
        kong.response.exit(reply.status, reply.body, reply.headers)
    except Exception as exc:  # noqa: BLE001
        log.error("kcauth could not send its answer: %s", _where(exc))


def _report_fault(kong: Any, exc: BaseException) -> None:
    """Log an internal fault once: its type and place only, since messages can carry input."""
    reason = f"kcauth internal fault, request refused with 500: {_where(exc)}"
    log.error(reason)
    try:
        kong.log.err(reason)
    except Exception:  # noqa: BLE001 - the exit must still be sent
        pass


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{place}"


def _configure_logging() -> None:
    # Kong logs the plugin server's output at info level; keep it to warnings and above.
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)


_configure_logging()
