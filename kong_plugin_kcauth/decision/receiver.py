"""The revocation receiver (`mode: revocation_receiver`): a route Keycloak pushes back-channel
logout tokens, not-before actions and (`ssf.delivery: push`) Security Event Tokens to. Each
push is checked (tokens/logout.py) with the keys of the issuer it comes from and recorded in that
issuer's revocation store (revocation/store.py), which every guard of that issuer consults. One
receiver serves every issuer of its config: a logout token names its issuer (`iss`, chosen as
guards choose, issuers.py); a not-before push names none, so it belongs to the issuer whose held
key signed it.

Answers, chosen so Keycloak logs a failed delivery (it never retries one): 200 when recorded,
400 `invalid_request` with a reason category for a bad push, 405 for another method, 503 when it
cannot be recorded (keys unavailable, Redis down: applied in this process anyway).

A Security Event Token (`Content-Type: application/secevent+jwt`, RFC 8935) names its realm
(`iss`): that realm's Shared Signals receiver (idp/ssf.py `Signals.receive`) checks and records
it. Answers per RFC 8935: 202 when recorded, 400 `{"err", "description"}` when refused, 503 when
it cannot be recorded yet (Keycloak retries it).
"""

from __future__ import annotations

from .. import errors
from ..config import Config
from ..idp.ssf import MAX_SET_SIZE
from ..ops.logs import Owners
from ..revocation.store import Kind
from ..tokens import secevent
from ..tokens.access import Rules
from ..tokens.jws import Signed
from ..tokens.logout import (
    PUSH_NOT_BEFORE_PATH,
    logout_of,
    logout_refusal,
    logout_token_of,
    not_before_of,
    not_before_refusal,
    parse_push,
)
from .issuers import Issuers, Realm, refuse_unlisted, signed_by_held

SECEVENT_MEDIA_TYPE = "application/secevent+jwt"


class Receiver:
    def __init__(self, config: Config) -> None:
        self.owners = Owners()  # the plugin entities with this config, named in its log lines
        self.sources = Issuers(config, self.owners)
        self.ttl = config.revocation_ttl
        self._max_size, self._algorithms = config.max_token_size, frozenset(config.algorithms)

    def receive(self, path: str, body: bytes, now: float, content_type: str = "") -> bool:
        """Check and record one POSTed push; True for a Security Event Token (answered 202).
        Raises a Refusal (PushRejected, EventRejected, ProviderUnavailable) or
        shared.SharedUnavailable when Redis cannot take the record."""
        if content_type.split(";", 1)[0].strip().lower() == SECEVENT_MEDIA_TYPE:
            self._security_event(body, now)
            return True
        if path.rstrip("/").endswith("/" + PUSH_NOT_BEFORE_PATH):
            signed = parse_push(body.decode("utf-8", "replace").strip(), self._max_size, self._algorithms)
            source = self._signer(signed)
            source.keys.verify_pushed(signed, not_before_refusal(signed, source.rules, source.audiences, now),
                                      errors.PushRejected("invalid signature"))
            push = not_before_of(signed)
            source.revocations.record(Kind.NOT_BEFORE, push.client, push.not_before, self.ttl)
            return False
        signed = parse_push(logout_token_of(body), self._max_size, self._algorithms)
        source = self._issuer(signed, now)
        source.keys.verify_pushed(signed, logout_refusal(signed, source.rules, source.audiences, now),
                                  errors.PushRejected("invalid signature"))
        logout = logout_of(signed)
        if not source.revocations.first_sighting(logout.jti, self.ttl):
            raise errors.PushRejected("replayed logout token")
        if logout.sid is not None:
            source.revocations.record(Kind.SESSION, logout.sid, logout.iat, self.ttl)
        else:
            source.revocations.record(Kind.SUBJECT, logout.sub or "", logout.iat, self.ttl)
        return False

    def _security_event(self, body: bytes, now: float) -> None:
        """A pushed SET, to the pushed stream of the realm it names (a listed one)."""
        signed = secevent.parse(body.decode("utf-8", "replace").strip(), MAX_SET_SIZE, self._algorithms)
        iss = signed.claims.get("iss")
        source = self.sources.listed.get(iss) if isinstance(iss, str) else None
        signals = source.signals if source is not None else None
        if signals is None or not signals.push:
            raise errors.EventRejected("invalid_issuer", "no pushed stream of this issuer")
        signals.receive(signed, now)

    def _issuer(self, signed: Signed, now: float) -> Realm:
        """A logout token's issuer, chosen by its `iss` before any key is fetched (a template
        realm not held yet only for a token that passes the rules that need no key)."""
        iss = signed.claims.get("iss")
        source = self.sources.held(iss)
        if source is not None:
            return source
        config = self.sources.candidate(iss)
        if config is not None and isinstance(iss, str):
            if logout_refusal(signed, Rules.from_config(config), frozenset(config.audiences), now) is not None:
                raise errors.PushRejected("invalid signature")  # no key of it is held: the generic answer
            source = self.sources.look_up(iss, config)
            if source is not None:
                return source
        try:
            refuse_unlisted(signed, (s.keys for s in self.sources.listed.values()))
        except errors.WrongIssuer:
            raise errors.PushRejected("wrong issuer") from None
        except errors.Refusal:
            raise errors.PushRejected("invalid signature") from None

    def _signer(self, signed: Signed) -> Realm:
        """A not-before push's issuer: the only one, or the one whose held key signed it."""
        listed = list(self.sources.listed.values())
        if len(listed) == 1 and self.sources.template is None:
            return listed[0]  # its key set may still download for an unknown kid, as guards do
        source = signed_by_held(signed, ((s, s.keys) for s in self.sources))
        if source is None:
            raise errors.PushRejected("invalid signature")
        return source
