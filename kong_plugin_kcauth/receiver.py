"""The revocation receiver (`mode: revocation_receiver`): a route Keycloak pushes back-channel
logout tokens and not-before actions to. Each push is checked (logout.py) and recorded in the
issuer's revocation store (revocation.py), which every guard of that issuer consults.

Answers, chosen so Keycloak logs a failed delivery (it never retries one): 200 when recorded,
400 `invalid_request` with a reason category for a bad push, 405 for another method, 503 when it
cannot be recorded (keys unavailable, Redis down: applied in this process anyway).
"""

from __future__ import annotations

from . import errors, process
from .config import Config
from .logout import PUSH_NOT_BEFORE_PATH, check_logout_token, check_push_not_before, logout_token_of
from .revocation import Kind
from .tokens import Rules


class Receiver:
    def __init__(self, config: Config) -> None:
        self.rules = Rules.from_config(config)
        self.keys = process.key_set(config)
        self.revocations = process.revocation_store(config)
        self.audiences = frozenset(config.audiences)  # the clients whose pushes are accepted
        self.ttl = config.revocation_ttl

    def receive(self, path: str, body: bytes, now: float) -> None:
        """Check and record one POSTed push; raises a Refusal (PushRejected, ProviderUnavailable)
        or shared.SharedUnavailable when Redis cannot take the record."""
        if path.rstrip("/").endswith("/" + PUSH_NOT_BEFORE_PATH):
            push = check_push_not_before(body.decode("utf-8", "replace").strip(), self.rules,
                                         self.keys.key_for, self.audiences, now)
            self.revocations.record(Kind.NOT_BEFORE, push.client, push.not_before, self.ttl)
            return
        logout = check_logout_token(logout_token_of(body), self.rules, self.keys.key_for, self.audiences, now)
        if not self.revocations.first_sighting(logout.jti, self.ttl):
            raise errors.PushRejected("replayed logout token")
        if logout.sid is not None:
            self.revocations.record(Kind.SESSION, logout.sid, logout.iat, self.ttl)
        else:
            self.revocations.record(Kind.SUBJECT, logout.sub or "", logout.iat, self.ttl)
