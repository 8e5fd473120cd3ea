"""The decision on a guarded request: which identity a bearer token stands for, or why not.

`Guard` is one configuration compiled (its rules, keys, caches, introspector and revocations),
shared by every plugin instance with the same settings. `Guard.decide` is the whole decision:

1. a remembered outcome for this token (by SHA-256), or one evaluation shared by every
   concurrent request carrying it (`evaluate`):
   the token's issuer (issuers.py: its `Realm`, chosen by the exact `iss` before any key is
   fetched), local validation under that issuer's rules and keys (tokens.py over jws.py), then
   on sensitive routes the issuer's introspection (introspection.py), then the scope/role policy
   (policy.py) and the upstream headers (headers.py); the `Outcome` says how long it may be
   remembered;
2. on every request, remembered or not, the revocations Keycloak pushed to the token's issuer
   (revocation.py).

It returns a `Grant` or raises the `Refusal` (errors.py); Kong is never touched here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from . import dpop, errors, jws, logs, metrics, process
from .cache import ExpiringCache, SingleFlight, token_key
from .claims import Claims, parse_claim_path
from .config import Config
from .consumers import ConsumerMap, credential_for
from .headers import HeaderPlan, HeaderValue, dropped_headers, groups_for, upstream_headers
from .introspection import Introspector
from .issuers import Issuers, refuse_unlisted
from .policy import Policy, authorize
from .revocation import RealmRevocations, RevocationStore, Subject
from .tokens import Rules, check_claims, deadline_of, parse, validate_signed

NEVER = 0.0  # an Outcome remembered until then is not remembered at all


@dataclass(frozen=True)
class Grant:
    """An accepted token, ready to hand to Kong."""

    headers: dict[str, HeaderValue]  # the claim headers, each set or removed
    groups: list[str]  # for Kong's ACL plugin
    subject: Subject  # what revocations are checked against, on every request
    realm: Realm  # the issuer that accepted it: its revocations, its metrics label
    jkt: str | None = None  # DPoP: the thumbprint of the key the token is bound to (dpop.py)
    consumer: str | None = None  # the consumer_claim value, when consumer mapping is on
    credential: dict[str, str] | None = None


@dataclass(frozen=True)
class Denial:
    """A refusal of a token that passed validation (scope, role, inactive), remembered."""

    refusal: type[errors.Refusal]
    required_scopes: tuple[str, ...] = ()

    def exception(self) -> errors.Refusal:
        # A fresh exception each time: re-raising one cached instance would grow its traceback.
        if self.refusal is errors.InsufficientScope:
            return errors.InsufficientScope(self.required_scopes)
        return self.refusal()


@dataclass(frozen=True)
class Outcome:
    verdict: Grant | Denial
    remember_until: float  # a deadline (time.time()); NEVER: ask again next time


def presented_token(request_headers: dict[str, object]) -> tuple[str, str]:
    """(scheme, token) of the one Authorization header: `bearer` (RFC 6750 2.1; never the
    query) or `dpop` (RFC 9449 7.1), the scheme in lower case."""
    values = request_headers.get("authorization")
    if not values:
        raise errors.MissingToken()
    if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
        raise errors.InvalidRequest()
    scheme, _, token = values[0].strip(" \t").partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "dpop"):
        raise errors.MissingToken()  # another scheme: no credentials kcauth takes were presented
    token = token.strip(" \t")
    if not token or " " in token or "\t" in token:
        raise errors.InvalidRequest()
    return scheme, token


class Realm:
    """One issuer of a guard: its claim rules, keys, introspection and revocations, built from
    the guard's config as that issuer sees it (Config.for_issuer)."""

    def __init__(self, config: Config, label: str, name: str, owners: logs.Owners | None = None) -> None:
        self.issuer = config.the_issuer
        self.label = label  # metrics: the issuer, or a template realm's template
        self.group = f"issuer:{name}"
        self.rules = Rules.from_config(config)
        self.keys = process.key_set(config)
        self.revocations: RevocationStore | RealmRevocations = process.revocation_store(config)
        self.feed = process.revocation_feed(config)  # held: it reads while a guard needs it
        self.introspector = Introspector.from_config(
            config, replace(self.rules, defer_missing_audience=False),
            process.shared_store(config.redis, config.tls_ca_bundle), label, owners) if config.introspect else None


class Guard:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = Policy.from_config(config)
        self.plan = HeaderPlan.from_config(config)
        self.managed_headers = self.plan.managed
        self.groups_path = parse_claim_path(config.groups_claim) if config.groups_claim else None
        self.consumers = ConsumerMap.from_config(config)
        self.owners = logs.Owners()  # the plugin entities with this config, named in its log lines
        self.realms: Issuers[Realm] = Issuers(
            config, lambda c, label, name: Realm(c, label, name, self.owners), process.realm_directory(config))
        # The metrics label of refusals made before an issuer was chosen.
        self.label = config.issuer or config.issuer_template or next(iter(self.realms.listed), "")
        self.algorithms = frozenset(config.algorithms)  # of access tokens and DPoP proofs alike
        # DPoP (dpop.py): the proofs' state, and the challenges refusals are answered with.
        self.proofs = dpop.Proofs(
            max_age=config.dpop_proof_max_age, leeway=config.leeway, nonces=config.dpop_nonce,
            shared=process.shared_store(config.redis, config.tls_ca_bundle), secret=config.redis.secret,
        ) if config.dpop != "off" else None
        self.schemes = errors.Schemes(bearer=config.dpop != "required",
                                      dpop_algs=tuple(sorted(self.algorithms)) if config.dpop != "off" else ())
        self.cache: ExpiringCache[Grant | Denial] = ExpiringCache(config.token_cache_size)
        self.notes = logs.Throttled(logs.log, 60)  # this config's lines that can repeat per request
        self._flights: SingleFlight[Grant | Denial] = SingleFlight()
        # Long enough for the slowest evaluation: key set (2 requests) then introspection
        # (discovery and the call), each connect plus read.
        self._flight_wait = 8 * config.http_timeout + 2

    def decide(self, token: str, now: float) -> Grant:
        key = token_key(token)
        verdict = self.cache.get(key)
        metrics.METRICS.cache(verdict.realm.label if isinstance(verdict, Grant) else self.label, verdict is not None)
        if verdict is None:
            # Concurrent requests with the same unremembered token share one evaluation (one
            # key download, one introspection call), remembered before the others are released.
            try:
                verdict = self._flights.do(key, lambda: self._remembered(token, key, now), wait=self._flight_wait)
            except TimeoutError:
                raise errors.ProviderUnavailable() from None
        if isinstance(verdict, Denial):
            raise verdict.exception()
        if verdict.realm.revocations.revoked(verdict.subject, self.config.not_before):
            raise errors.TokenRevoked()
        return verdict

    def _remembered(self, token: str, key: bytes, now: float) -> Grant | Denial:
        outcome = self.evaluate(token, key, now)
        if outcome.remember_until > now:
            self.cache.put(key, outcome.verdict, outcome.remember_until)
        return outcome.verdict

    def evaluate(self, token: str, key: bytes, now: float) -> Outcome:
        """Local validation first (every token that looks like a JWT), then, on sensitive
        routes, introspection, whose answer then drives the policy and the headers."""
        claims: Claims | None = None
        until = math.inf
        if self.config.accept_opaque_tokens and token.count(".") != 2:
            realm = self.realms.default  # the entity checks make `issuer` present
            assert realm is not None
        else:
            signed = parse(token, self.config.max_token_size, self.algorithms)
            realm = self._realm_of(signed, now)
            claims = validate_signed(signed, realm.rules, realm.keys.key_for, now)
            until = deadline_of(claims, realm.rules)
        introspector = realm.introspector
        if introspector is None:
            assert claims is not None
            return Outcome(self._verdict(realm, claims, claims), until)
        try:
            verdict = introspector.verdict(token, key, claims, now)
        except errors.IntrospectionUnavailable:
            if claims is None or self.config.introspection_failure != "local":
                raise
            introspector.note_fallback()
            return Outcome(self._verdict(realm, claims, claims), NEVER)
        if verdict.refusal is not None:
            return Outcome(Denial(verdict.refusal), verdict.deadline)
        return Outcome(self._verdict(realm, verdict.claims, claims or verdict.claims), min(until, verdict.deadline))

    def _realm_of(self, signed: jws.Signed, now: float) -> Realm:
        """The issuer the token names, chosen before any key is fetched for it (issuers.py); a
        template realm not held yet is looked up only for a token that passes its claim rules.
        A token of no issuer of this route (a template realm the provider does not know included)
        is refused with `WrongIssuer` when a listed issuer's held key signed it, else
        `InvalidToken`."""
        claims = signed.claims
        realm = self.realms.select(claims.get("iss"), vet=lambda config: jws.claims_first(
            lambda: check_claims(claims, Rules.from_config(config), now)))
        if realm is None:
            refuse_unlisted(signed, (r.keys for r in self.realms.listed.values()))
        assert realm is not None
        return realm

    def _verdict(self, realm: Realm, claims: Claims, token_claims: Claims) -> Grant | Denial:
        """The policy and the identity of accepted `claims` (the introspection answer's on
        sensitive routes); revocations watch the token's own identifiers as well as those."""
        jkt = key_binding(claims, token_claims)
        if isinstance(jkt, Denial):
            return jkt
        try:
            authorize(self.policy, claims)
        except errors.InsufficientScope as refusal:
            return Denial(errors.InsufficientScope, refusal.required_scopes)
        consumer = credential = None
        if self.consumers is not None:
            consumer = self.consumers.name_in(claims)
            credential = credential_for(realm.issuer, claims)
        headers = upstream_headers(self.plan, claims)
        for name in dropped_headers(self.plan, claims, headers):
            logs.once(f"{name} not forwarded for some tokens: the value is over header_value_max_length "
                      f"({self.plan.max_length}) for issuer {realm.label}; raise it to forward it")
        groups = groups_for(claims, self.config.authenticated_group, self.config.roles_as_groups, self.groups_path)
        if self.config.issuer_groups:
            groups.append(realm.group)
        return Grant(
            headers=headers, groups=groups, subject=realm.revocations.subject(token_claims, claims), realm=realm,
            jkt=jkt, consumer=consumer, credential=credential,
        )


def key_binding(claims: Claims, token_claims: Claims) -> str | None | Denial:
    """The key an accepted token is bound to (DPoP `cnf.jkt`), from the token and, on sensitive
    routes, the introspection answer, which must agree with it; a Denial when they do not, or when
    a token says DPoP without naming its key."""
    jkt = dpop.bound_key(token_claims)
    if claims is token_claims:  # no introspection answer
        return Denial(errors.MalformedToken) if jkt is None and token_claims.get("typ") == "DPoP" else jkt
    answered = dpop.bound_key(claims)
    if jkt is not None and answered is not None and answered != jkt:
        return Denial(errors.BindingMismatch)
    jkt = jkt or answered
    if jkt is None and (claims.get("token_type") == "DPoP" or token_claims.get("typ") == "DPoP"):
        return Denial(errors.BindingMismatch)
    return jkt

