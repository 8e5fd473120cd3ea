"""The revocation receiver (`mode: revocation_receiver`): a route Keycloak pushes back-channel
logout tokens and not-before actions to. Each push is checked (logout.py) with the keys of the
issuer it comes from and recorded in that issuer's revocation store (revocation.py), which every
guard of that issuer consults. One receiver serves every issuer of its config: a logout token
names its issuer (`iss`, chosen as guards choose, issuers.py); a not-before push names none, so
it belongs to the issuer whose held key signed it.

Answers, chosen so Keycloak logs a failed delivery (it never retries one): 200 when recorded,
400 `invalid_request` with a reason category for a bad push, 405 for another method, 503 when it
cannot be recorded (keys unavailable, Redis down: applied in this process anyway).
"""

from __future__ import annotations

from . import errors, process
from .config import Config
from .issuers import Issuers, refuse_unlisted, signed_by_held
from .jws import Signed
from .logout import (
    PUSH_NOT_BEFORE_PATH,
    check_logout_token,
    check_push_not_before,
    logout_claims_first,
    logout_token_of,
    parse_push,
)
from .logs import Owners
from .revocation import Kind
from .tokens import Rules


class Source:
    """One issuer of a receiver: its rules, keys, accepted clients and revocations."""

    def __init__(self, config: Config, label: str, name: str) -> None:
        self.rules = Rules.from_config(config)
        self.keys = process.key_set(config)
        self.revocations = process.revocation_store(config)
        self.feed = process.revocation_feed(config)  # held: it reads while the receiver exists
        self.audiences = frozenset(config.audiences)  # the clients whose pushes are accepted


class Receiver:
    def __init__(self, config: Config) -> None:
        self.owners = Owners()  # the plugin entities with this config, named in its log lines
        self.sources: Issuers[Source] = Issuers(config, Source, process.realm_directory(config))
        self.ttl = config.revocation_ttl
        self._max_size, self._algorithms = config.max_token_size, frozenset(config.algorithms)

    def receive(self, path: str, body: bytes, now: float) -> None:
        """Check and record one POSTed push; raises a Refusal (PushRejected, ProviderUnavailable)
        or shared.SharedUnavailable when Redis cannot take the record."""
        if path.rstrip("/").endswith("/" + PUSH_NOT_BEFORE_PATH):
            signed = parse_push(body.decode("utf-8", "replace").strip(), self._max_size, self._algorithms)
            source = self._signer(signed)
            push = check_push_not_before(signed, source.rules, source.keys.key_for, source.audiences, now)
            source.revocations.record(Kind.NOT_BEFORE, push.client, push.not_before, self.ttl)
            return
        signed = parse_push(logout_token_of(body), self._max_size, self._algorithms)
        source = self._issuer(signed, now)
        logout = check_logout_token(signed, source.rules, source.keys.key_for, source.audiences, now)
        if not source.revocations.first_sighting(logout.jti, self.ttl):
            raise errors.PushRejected("replayed logout token")
        if logout.sid is not None:
            source.revocations.record(Kind.SESSION, logout.sid, logout.iat, self.ttl)
        else:
            source.revocations.record(Kind.SUBJECT, logout.sub or "", logout.iat, self.ttl)

    def _issuer(self, signed: Signed, now: float) -> Source:
        """A logout token's issuer, chosen by its `iss` before any key is fetched (a template
        realm not held yet only for a token that passes the rules that need no key)."""
        source = self.sources.select(signed.claims.get("iss"), vet=lambda config: logout_claims_first(
            signed, Rules.from_config(config), frozenset(config.audiences), now))
        if source is not None:
            return source
        try:
            refuse_unlisted(signed, (s.keys for s in self.sources.listed.values()))
        except errors.WrongIssuer:
            raise errors.PushRejected("wrong issuer") from None
        except errors.Refusal:
            raise errors.PushRejected("invalid signature") from None

    def _signer(self, signed: Signed) -> Source:
        """A not-before push's issuer: the only one, or the one whose held key signed it."""
        listed = list(self.sources.listed.values())
        if len(listed) == 1 and self.sources.template is None:
            return listed[0]  # its key set may still download for an unknown kid, as guards do
        source = signed_by_held(signed, ((s, s.keys) for s in self.sources))
        if source is None:
            raise errors.PushRejected("invalid signature")
        return source
