"""The state behind DPoP proofs (RFC 9449; the proof itself is checked by tokens/dpop.py): each
proof is accepted once, across every process and node when Redis is configured, and, with
`dpop_nonce`, carries a nonce this gateway issued (sections 8 and 9)."""

from __future__ import annotations

import hashlib
import hmac
import os
import time

from .. import errors
from ..revocation.shared import SharedStore
from ..tokens.dpop import Proof
from ..tokens.jwk import b64url
from .cache import ExpiringCache

_SEEN_HELD = 200_000  # proofs remembered in a process at most (each for its window only)
# Process-wide, so a proof is single-use across every route of the process, and a nonce issued on
# one route holds on the others.
_SEEN: ExpiringCache[bool] = ExpiringCache(_SEEN_HELD)
_PROCESS_SECRET = os.urandom(32)


class Proofs:
    """The state behind proofs: each is accepted once (its `jti`, per key, remembered for its
    window here and, with Redis, for every process and node), and, with `dpop_nonce`, carries a
    nonce this gateway issued: an HMAC of the time window under the Redis secret (so every node
    accepts every node's nonces) or, without Redis, a secret of this process."""

    def __init__(self, *, max_age: float, leeway: float, nonces: bool, shared: SharedStore | None,
                 secret: str | None) -> None:
        self.max_age, self.leeway = max_age, leeway
        self.nonces = nonces
        self._shared = shared
        self._seen = _SEEN
        seed = secret.encode() if secret else _PROCESS_SECRET
        self._secret = hashlib.sha256(b"kcauth dpop nonce\n" + seed).digest()

    def nonce(self, now: float | None = None) -> str:
        return self._nonce_for(int((now or time.time()) // self.max_age))

    def _nonce_for(self, window: int) -> str:
        return b64url(hmac.new(self._secret, str(window).encode(), hashlib.sha256).digest()[:18])

    def admit(self, proof: Proof, now: float) -> None:
        """Raises `UseDPoPNonce` (the client retries with the nonce answered), `InvalidDPoPProof`
        for a replay, or `ProviderUnavailable` when Redis is configured and cannot be asked."""
        if self.nonces:
            window = int(now // self.max_age)
            if proof.nonce is None or not any(hmac.compare_digest(proof.nonce, self._nonce_for(w))
                                              for w in (window, window - 1)):
                raise errors.UseDPoPNonce(self.nonce(now))
        key = hashlib.sha256(f"{proof.jkt}\n{proof.jti}".encode("utf-8", "surrogatepass")).hexdigest()[:40]
        ttl = self.max_age + 2 * self.leeway + 1
        if self._seen.get(key) is not None:
            raise errors.InvalidDPoPProof("The DPoP proof was used before")
        self._seen.put(key, True, now + ttl)
        if self._shared is not None:
            first = self._shared.set_if_absent(f"dpop:jti:{key}", ttl)
            if first is None:  # Redis cannot say whether another node took it: not proven single
                raise errors.ProviderUnavailable()
            if first is False:
                raise errors.InvalidDPoPProof("The DPoP proof was used before")
