"""Key sets: the realm's signing keys, fetched, held and rotated safely.

One `KeySet` per key source (explicit JWKS URI, or discovery on the issuer) and timing settings,
shared by every plugin instance in the process. Rules:
- keys come only from the configured source; `jku`, `x5u`, `jwk` and `x5c` token headers and the
  token's own `iss` are never used to find them;
- only `use: sig` keys whose type (and `alg`, when the key names one) agree with the token's alg;
- held keys are refreshed in the background every `refresh_interval`; requests never wait on it;
- a token with an unknown `kid` triggers at most one download per `min_refresh_interval`, shared
  by every request that needs it (single-flight), so random kids cannot flood the provider;
  failed downloads are retried at most once per `min_refresh_interval` too;
- when the provider is down, held keys keep working until `max_stale` after the last successful
  download; with none usable, `KeysUnavailable` (503).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import InvalidToken, KeysUnavailable, ProviderUnavailable, Refusal, UnknownKey
from ..ops.logs import health
from ..tokens import jws
from ..tokens.jwk import Jwk, parse_jwks, select_key
from . import http

log = logging.getLogger("kcauth.keys")


@dataclass(frozen=True)
class KeySource:
    """Where keys come from and how they are kept; the registry key of a `KeySet`."""

    jwks_uri: str | None
    discovery_url: str
    issuer: str
    refresh_interval: float
    min_refresh_interval: float
    max_stale: float
    timeout: float
    rewrite: tuple[str, str] | None = None  # (issuer origin, provider origin): see provider_url
    ca: str | None = None  # tls_ca_bundle
    confine: str | None = None  # template realms: the origin discovered endpoints must be at

    @classmethod
    def from_config(cls, config: Config) -> KeySource:
        return cls(jwks_uri=config.jwks_uri, discovery_url=config.discovery_url, issuer=config.the_issuer,
                   refresh_interval=config.jwks_refresh_interval,
                   min_refresh_interval=config.jwks_min_refresh_interval, max_stale=config.jwks_max_stale,
                   timeout=config.http_timeout, rewrite=config.provider_rewrite, ca=config.tls_ca_bundle,
                   confine=config.confined_origin)


class KeySet:
    def __init__(
        self,
        source: KeySource,
        fetch_json: Callable[..., dict[str, Any]] = http.get_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._fetch_json = fetch_json
        self._clock = clock
        self._keys: dict[str | None, tuple[Jwk, ...]] = {}
        self._fetched_at: float | None = None  # last successful download
        self._last_attempt = float("-inf")
        self._last_kid_refresh = float("-inf")
        self._inflight: threading.Event | None = None
        self._lock = threading.Lock()
        self._component = f"key set of {source.issuer}"
        # The last download failed because the provider answered 404 (no such realm); cleared by
        # a successful one.
        self.not_found = False

    def verify(self, signed: jws.Signed, refusal: Refusal | None = None) -> None:
        """A token's signature, after its claim rules (`refusal`: what they refused, if any).
        A refused token costs no download: it is checked against the keys held only, and its
        refusal is told only when one of them signed it (so only to whoever holds a real token);
        any other is the generic `InvalidToken`, and forgers learn nothing of the rules."""
        if refusal is not None:
            key = self.held_key(signed.kid, signed.alg)
            if key is not None and jws.signed_by(signed, key):
                raise refusal
            raise InvalidToken()
        jws.verify(signed, self.key_for(signed.kid, signed.alg))

    def verify_pushed(self, signed: jws.Signed, refusal: Refusal | None, invalid: Refusal) -> None:
        """`verify` for what Keycloak pushes (logout tokens, not-before actions, SETs): a refusal
        of the push's own kind (`invalid`'s class) and an unreachable provider stand; any other
        (bad signature, unknown key, a refusal no held key signed) is `invalid`."""
        try:
            self.verify(signed, refusal)
        except (type(invalid), ProviderUnavailable):
            raise
        except Refusal:
            raise invalid from None

    def key_for(self, kid: str | None, alg: str) -> Any:
        """The verification key for a token header, downloaded when needed (rate-limited), or a
        `Refusal`: UnknownKey, or KeysUnavailable when no keys can be had."""
        now = self._clock()
        keys = self._usable(now)
        if keys is None:
            self.refresh(wait=True)
            keys = self._usable(self._clock())
            if keys is None:
                raise KeysUnavailable()
        elif now - (self._fetched_at or now) >= self.source.refresh_interval:
            self.refresh(wait=False)
        jwk = select_key(keys, kid, alg)
        if jwk is None and kid not in keys:
            # Maybe the realm rotated: ask again, at most once per min_refresh_interval.
            if self.refresh(wait=True, unknown_kid=True):
                jwk = select_key(self._keys, kid, alg)
        if jwk is None:
            raise UnknownKey()
        return jwk.key

    def held_key(self, kid: str | None, alg: str) -> Any | None:
        """The held key for a token header, or None; never starts a download (before the first
        key set is in, it waits for the one under way, instance start's)."""
        keys = self._usable(self._clock())
        if keys is None and self._fetched_at is None and self._inflight is not None:
            self.refresh(wait=True, join_only=True)
            keys = self._usable(self._clock())
        jwk = select_key(keys or {}, kid, alg)
        return None if jwk is None else jwk.key

    @property
    def fetched_at(self) -> float | None:
        """When the held keys were downloaded (monotonic clock), None before the first time."""
        return self._fetched_at

    def exists(self) -> bool | None:
        """Whether the provider knows this key set's realm: True once keys are held (the first
        key set is downloaded when none is), False when it answered 404, None when it could not
        be asked."""
        if self._fetched_at is None:
            self.refresh(wait=True)
        if self._fetched_at is not None:
            return True
        return False if self.not_found else None

    def prefetch(self) -> None:
        """Warm the key set without blocking the caller (instance start)."""
        if self._fetched_at is None:
            self.refresh(wait=False)

    def _usable(self, now: float) -> dict[str | None, tuple[Jwk, ...]] | None:
        if self._fetched_at is None or now - self._fetched_at > self.source.max_stale:
            return None
        return self._keys

    def refresh(self, wait: bool, *, unknown_kid: bool = False, join_only: bool = False) -> bool:
        """Start (or join) one download; `join_only` joins one under way and never starts one.
        Returns False when nothing was attempted or joined: rate-limited because the last attempt
        of the same kind was under `min_refresh_interval` ago, or nothing to join. Downloads for
        unknown kids are paced on their own, so a rotation right after a routine refresh is
        still picked up at once, while a flood of random kids gets at most one download per
        interval."""
        with self._lock:
            joined = self._inflight
            leader = joined is None
            if joined is None:
                if join_only:
                    return False
                now = self._clock()
                last = self._last_kid_refresh if unknown_kid else self._last_attempt
                if now - last < self.source.min_refresh_interval:
                    return False
                self._last_attempt = now
                if unknown_kid:
                    self._last_kid_refresh = now
                event = self._inflight = threading.Event()
            else:
                event = joined
        if leader:
            if wait:
                self._download(event)
            else:
                threading.Thread(target=self._download, args=(event,), daemon=True,
                                 name="kcauth-jwks").start()
        if wait:
            # Two requests (discovery, key set) of at most `timeout` each, connect and read.
            event.wait(4 * self.source.timeout + 1)
        return True

    def _download(self, done: threading.Event) -> None:
        try:
            uri = self.source.jwks_uri or self._discover()
            try:
                keys = parse_jwks(self._fetch_json(uri, self.source.timeout, revalidate=True, ca=self.source.ca))
            except ValueError as exc:
                raise http.FetchError(str(exc)) from None
            if not keys:
                raise http.FetchError(f"key set at {uri} holds no usable signing key")
            self._keys, self._fetched_at = keys, self._clock()
            self.not_found = False
            health.report(self._component, True)
        except http.FetchError as exc:
            self.not_found = exc.status == 404
            if self.not_found and self.source.confine is not None:
                return  # a template realm the provider does not know: not a failure to report
            health.report(self._component, False, f"key set download failed ({exc}); held keys serve "
                          f"until {self.source.max_stale:.0f} s after the last success, then 503")
        except Exception:  # never let a background thread die silently
            log.exception("key set refresh failed unexpectedly")
        finally:
            with self._lock:
                self._inflight = None
            done.set()

    def _discover(self) -> str:
        return http.discover(self.source.discovery_url, self.source.issuer, "jwks_uri",
                             self.source.timeout, self.source.rewrite, self._fetch_json, self.source.ca,
                             self.source.confine)
