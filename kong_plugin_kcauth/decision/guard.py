"""The decision on a guarded request: which identity a presented token stands for, or why not.

`Guard` is one configuration compiled (its rules, keys, caches, introspector and revocations),
shared by every plugin instance with the same settings. `Guard.decide` is the whole decision,
the one call the Kong adapter makes; each stage below is a module entered once, in order, and
left by returning:

1. the scheme rules (`dpop`: Bearer, DPoP or both);
2. a remembered outcome for this token (cache.py, by SHA-256), or one evaluation shared by every
   concurrent request carrying it (`evaluate`):
   a. the token's JWS and header policy (tokens/access.py over tokens/jws.py);
   b. its issuer (issuers.py: a `Realm`, chosen by the exact `iss`; a template realm not held
      yet is looked up only for a token that passes its claim rules, within the budget);
   c. the claim rules (tokens/access.py `refusal`), then the signature with the realm's keys
      (idp/keys.py `KeySet.verify`: a refused token costs no download);
   d. on sensitive routes the issuer's introspection (idp/introspection.py);
   e. the scope/role policy (policy.py) and the identity: upstream headers (headers.py),
      groups, consumer (consumers.py);
   the `Outcome` says how long it may be remembered;
3. on every request, remembered or not, the revocations of the token's issuer
   (revocation/store.py);
4. on every request with a DPoP-bound token or the DPoP scheme, the proof (tokens/dpop.py, its
   single use and nonces in proofs.py).

It returns a `Grant` or raises the `Refusal` (errors.py); Kong is never touched here: what the
request carries comes in as a `Presented`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..config import Config
from ..ops import logs, metrics
from ..revocation.store import Subject
from ..tokens import access, dpop, jws
from ..tokens.claims import Claims, parse_claim_path
from . import wiring
from .assertion import Signer, identity_of
from .cache import ExpiringCache, SingleFlight, token_key
from .consumers import ConsumerMap, credential_for
from .headers import HeaderPlan, HeaderValue, dropped_headers, groups_for, upstream_headers
from .issuers import Issuers, Realm, refuse_unlisted
from .policy import Policy, authorize
from .proofs import Proofs

NEVER = 0.0  # an Outcome remembered until then is not remembered at all


@dataclass(frozen=True)
class Grant:
    """An accepted token, ready to hand to Kong."""

    headers: dict[str, HeaderValue]  # the claim headers, each set or removed
    groups: list[str]  # for Kong's ACL plugin
    subject: Subject  # what revocations are checked against, on every request
    realm: Realm  # the issuer that accepted it: its revocations, its metrics label
    jkt: str | None = None  # DPoP: the thumbprint of the key the token is bound to (tokens/dpop.py)
    consumer: str | None = None  # the consumer_claim value, when consumer mapping is on
    credential: dict[str, str] | None = None
    identity: dict[str, Any] | None = None  # the upstream assertion's claims of the token (assertion.py)


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
class Presented:
    """What a request presents: its token and scheme and, under the DPoP scheme, its `DPoP`
    header values and what a proof must be about (asked of Kong only for that scheme)."""

    token: str
    dpop: bool = False  # the `DPoP` scheme (RFC 9449 7.1), else `Bearer`
    proofs: object = None  # the DPoP header's values, as Kong gives them
    method: str = ""
    url: str = ""  # the URL the client addressed, without the query


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


class Guard:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = Policy.from_config(config)
        self.plan = HeaderPlan.from_config(config)
        # The upstream assertion (assertion.py): its header is kcauth's on every guard, on or off.
        self.signer = Signer(config) if config.upstream_assertion.audience else None
        self.managed_headers = self.plan.managed | {config.upstream_assertion.header}
        self.groups_path = parse_claim_path(config.groups_claim) if config.groups_claim else None
        self.consumers = ConsumerMap.from_config(config)
        self.owners = logs.Owners()  # the plugin entities with this config, named in its log lines
        self.realms = Issuers(config, self.owners)
        # The metrics label of refusals made before an issuer was chosen.
        self.label = config.issuer or config.issuer_template or next(iter(self.realms.listed), "")
        self.algorithms = frozenset(config.algorithms)  # of access tokens and DPoP proofs alike
        # DPoP (tokens/dpop.py, proofs.py): the proofs' state, and the challenges refusals are answered with.
        self.proofs = Proofs(
            max_age=config.dpop_proof_max_age, leeway=config.leeway, nonces=config.dpop_nonce,
            shared=wiring.shared_store(config.redis, config.tls_ca_bundle), secret=wiring.shared_secret(config.redis),
        ) if config.dpop != "off" else None
        self.schemes = errors.Schemes(bearer=config.dpop != "required",
                                      dpop_algs=tuple(sorted(self.algorithms)) if config.dpop != "off" else ())
        self.cache: ExpiringCache[Grant | Denial] = ExpiringCache(config.token_cache_size)
        self.notes = logs.Throttled(logs.log, 60)  # this config's lines that can repeat per request
        self._flights: SingleFlight[Grant | Denial] = SingleFlight()
        # Long enough for the slowest evaluation: key set (2 requests) then introspection
        # (discovery and the call), each connect plus read.
        self._flight_wait = 8 * config.http_timeout + 2

    def decide(self, presented: Presented, now: float) -> Grant:
        if presented.dpop and self.config.dpop == "off":
            raise errors.MissingToken()  # a scheme this route does not take
        if not presented.dpop and self.config.dpop == "required":
            raise errors.DPoPRequired()
        token = presented.token
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
        if verdict.jkt is not None or presented.dpop:
            self._prove(verdict, presented, now)
        return verdict

    def _prove(self, grant: Grant, presented: Presented, now: float) -> None:
        """RFC 9449 section 4.3 on every request with a DPoP-bound token (or the DPoP scheme),
        remembered or not: the one `DPoP` header, for this method and URL, this token and its
        key, used once."""
        if not presented.dpop:
            raise errors.BoundTokenAsBearer()  # a bound token without its proof: a replayed theft
        if grant.jkt is None or self.proofs is None:
            raise errors.UnboundTokenAsDPoP()
        proofs = presented.proofs
        if not isinstance(proofs, list) or len(proofs) != 1 or not isinstance(proofs[0], str):
            raise errors.InvalidDPoPProof("The request must carry exactly one DPoP header")
        config = self.config
        proof = dpop.check_proof(proofs[0], method=presented.method, url=presented.url, token=presented.token,
                                 jkt=grant.jkt, algorithms=self.algorithms, max_age=config.dpop_proof_max_age,
                                 leeway=config.leeway, now=now)
        self.proofs.admit(proof, now)

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
            signed = access.parse(token, self.config.max_token_size, self.algorithms)
            realm = self._realm_of(signed, now)
            realm.keys.verify(signed, access.refusal(signed.claims, realm.rules, now))
            claims = signed.claims
            until = access.deadline_of(claims, realm.rules)
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
        """The issuer the token names, chosen before any key is fetched for it (issuers.py): a
        listed or held one, or a template realm looked up for a token its rules do not refuse
        (no key of it is held yet: a refused token gets the generic answer, as KeySet.verify
        gives one no held key signed). A token of no issuer of this route (a template realm the
        provider does not know included) is refused with `WrongIssuer` when a listed issuer's
        held key signed it, else `InvalidToken`."""
        iss = signed.claims.get("iss")
        realm = self.realms.held(iss)
        if realm is not None:
            return realm
        config = self.realms.candidate(iss)
        if config is not None and isinstance(iss, str):
            if access.refusal(signed.claims, access.Rules.from_config(config), now) is not None:
                raise errors.InvalidToken()
            realm = self.realms.look_up(iss, config)
            if realm is not None:
                return realm
        refuse_unlisted(signed, (r.keys for r in self.realms.listed.values()))

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
        identity = identity_of(claims.get("sub"), realm.issuer, self.plan, claims, headers) if self.signer else None
        return Grant(
            headers=headers, groups=groups, subject=realm.revocations.subject(token_claims, claims), realm=realm,
            jkt=jkt, consumer=consumer, credential=credential, identity=identity,
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

