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

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from . import http
from .config import Config
from .errors import KeysUnavailable, UnknownKey
from .logs import health

log = logging.getLogger("kcauth.keys")

MIN_RSA_BITS = 2048
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


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


@dataclass(frozen=True)
class Jwk:
    kid: str | None
    kty: str
    alg: str | None
    crv: str | None
    key: Any  # a cryptography public key object


def key_agrees(jwk: Jwk, alg: str) -> bool:
    """Whether `jwk` may verify a token signed with `alg` (type, curve and named alg agree)."""
    if jwk.alg is not None and jwk.alg != alg:
        return False
    if alg[:2] in ("RS", "PS"):
        return jwk.kty == "RSA"
    if alg in _EC_CURVES:
        return jwk.kty == "EC" and jwk.crv == _EC_CURVES[alg]
    if alg == "EdDSA":
        return jwk.kty == "OKP" and jwk.crv in ("Ed25519", "Ed448")
    return False


def parse_jwks(doc: dict[str, Any]) -> dict[str | None, tuple[Jwk, ...]]:
    """Signing keys of a JWKS document by kid; unusable entries are skipped and logged."""
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise http.FetchError("key set has no `keys` array")
    by_kid: dict[str | None, list[Jwk]] = {}
    for entry in entries:
        jwk = _parse_key(entry)
        if jwk is not None:
            by_kid.setdefault(jwk.kid, []).append(jwk)
    return {kid: tuple(keys) for kid, keys in by_kid.items()}


def _parse_key(entry: Any) -> Jwk | None:
    if not isinstance(entry, dict) or entry.get("use") != "sig":
        return None  # encryption keys (Keycloak publishes one) and malformed entries
    kty, kid, alg, crv = entry.get("kty"), entry.get("kid"), entry.get("alg"), entry.get("crv")
    if kty not in ("RSA", "EC", "OKP") or not isinstance(kid, (str, type(None))):
        return None
    if not isinstance(alg, (str, type(None))) or not isinstance(crv, (str, type(None))):
        return None
    try:
        key = jwt.PyJWK(entry).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        log.warning("skipping key %s: cannot load it (%s)", kid, type(exc).__name__)
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        log.warning("skipping key %s: RSA key of %d bits is too short", kid, key.key_size)
        return None
    if not hasattr(key, "verify"):  # a private or symmetric key has no business here
        return None
    return Jwk(kid=kid, kty=kty, alg=alg, crv=crv, key=key)


def select_key(keys: dict[str | None, tuple[Jwk, ...]], kid: str | None, alg: str) -> Jwk | None:
    """The key for a token header. Without a kid, only an unambiguous match is accepted."""
    if kid is not None:
        return next((k for k in keys.get(kid, ()) if key_agrees(k, alg)), None)
    fitting = [k for group in keys.values() for k in group if key_agrees(k, alg)]
    return fitting[0] if len(fitting) == 1 else None


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

    def key_for(self, kid: str | None, alg: str, *, download: bool = True) -> Any:
        """The verification key for a token header, or a `Refusal`. `download=False` uses only
        the keys held, never starting a download (jws.KeyLookup): before the first key set is in
        it waits for one already under way (instance start's), and without one it has no key."""
        now = self._clock()
        keys = self._usable(now)
        if not download:
            if keys is None and self._fetched_at is None and self._inflight is not None:
                self.refresh(wait=True, join_only=True)
                keys = self._usable(self._clock())
            jwk = select_key(keys or {}, kid, alg)
            if jwk is None:
                raise UnknownKey()
            return jwk.key
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
            keys = parse_jwks(self._fetch_json(uri, self.source.timeout, revalidate=True, ca=self.source.ca))
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
