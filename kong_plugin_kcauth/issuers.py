"""Which issuer a token belongs to: chosen by its exact `iss`, before any key is fetched.

A guard or a receiver serves the issuers of its config: `issuer`, each entry of `issuers`, and
the realms of `issuer_template`, each made on first use. Every issuer gets the plugin's config as
that issuer sees it (`Config.for_issuer`), from which its own claim rules, key set,
introspection and revocation store are built, so nothing of one issuer is used for another.

Template realms are bounded:
- a realm name is one path segment of Keycloak's realm-name characters (`REALM_NAME`), so the
  issuer, and with it every URL fetched, stays under the template's origin; discovered endpoints
  must be there too (http.discover `confine`);
- a realm is made on first use and kept only if the provider knows it (its first key set);
  at most `max_realms` are held, the least recently used one released beyond that;
- lookups of names the provider turns out not to know are limited to
  `unknown_realms_per_minute` (and as many at once), shared by every guard and receiver of the
  process with the same template (`RealmDirectory`), and a name found missing is remembered for
  a minute: a flood of random realm names costs the provider a few requests per minute, while
  realms that exist are looked up freely (a restarted gateway finds all its tenants again).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NoReturn, Protocol, TypeVar
from urllib.parse import urlsplit

from . import errors, jws
from .cache import ExpiringCache
from .config import REALM_NAME_MAX, Config

if TYPE_CHECKING:
    from .keys import KeySet

T = TypeVar("T", bound="HasKeys")
Owner = TypeVar("Owner")

REALM_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{REALM_NAME_MAX - 1}}}\Z")
MISSING_FOR = 60.0  # seconds a realm the provider does not know is remembered as missing
WINDOW = 60.0  # the discovery budget's period
_MISSING_HELD = 10_000  # names remembered as missing, at most


@dataclass(frozen=True)
class Template:
    """`https://sso.example.com/realms/{realm}`, split around its one `{realm}`."""

    prefix: str
    suffix: str

    @classmethod
    def parse(cls, template: str) -> Template:
        prefix, _, suffix = template.partition("{realm}")
        return cls(prefix, suffix)

    def realm_of(self, iss: str) -> str | None:
        """The realm name an issuer stands for, or None when it is no issuer of this template:
        exact prefix and suffix (no case folding, no decoding), a name of `REALM_NAME`, no `..`."""
        if len(iss) <= len(self.prefix) + len(self.suffix) or not (
                iss.startswith(self.prefix) and iss.endswith(self.suffix)):
            return None
        name = iss[len(self.prefix):len(iss) - len(self.suffix)]
        return name if REALM_NAME.match(name) and ".." not in name else None

    def issuer(self, realm: str) -> str:
        return self.prefix + realm + self.suffix


def realm_name(issuer: str) -> str:
    """A listed issuer's realm name for the `issuer:<realm>` group: the last path segment
    (Keycloak's `.../realms/<name>`), else the whole issuer."""
    segment = urlsplit(issuer).path.rstrip("/").rpartition("/")[2]
    return segment or issuer


class RealmDirectory:
    """What every user of one template in the process shares: the budget of lookups that may
    turn out to be of missing realms, and the names known to be missing."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._window_start = float("-inf")
        self._missed = 0  # names found missing in this window
        self._pending = 0  # lookups under way
        self._missing: ExpiringCache[bool] = ExpiringCache(_MISSING_HELD)
        self._lock = threading.Lock()

    def is_missing(self, realm: str) -> bool:
        return self._missing.get(realm) is not None

    def reserve(self) -> bool:
        """Whether one more lookup may start now: lookups under way plus names found missing
        this minute stay within the budget, so a flood never has more requests in flight."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= WINDOW:
                self._window_start, self._missed = now, 0
            if self._pending + self._missed >= self._per_minute:
                return False
            self._pending += 1
            return True

    def settle(self, realm: str, missing: bool) -> None:
        """A reserved lookup ended; a missing realm spends the budget and is remembered."""
        with self._lock:
            self._pending -= 1
            if missing:
                self._missed += 1
        if missing:
            self._missing.put(realm, True, time.time() + MISSING_FOR)


class HasKeys(Protocol):
    keys: KeySet


# What a guard or receiver builds per issuer: from the issuer's config, its metrics label (the
# issuer, or the template for its realms) and its realm name.
Build = Callable[[Config, str, str], T]


class Issuers(Generic[T]):
    def __init__(self, config: Config, build: Build[T], directory: RealmDirectory | None) -> None:
        self._config = config
        self._build = build
        self.listed: dict[str, T] = {}
        if config.issuer:
            self.listed[config.issuer] = build(config.for_issuer(config.issuer), config.issuer,
                                               realm_name(config.issuer))
        for entry in config.issuers or ():
            if entry.issuer not in self.listed:  # listed twice: the first settings hold
                self.listed[entry.issuer] = build(config.for_issuer(entry.issuer, entry), entry.issuer,
                                                  realm_name(entry.issuer))
        self.template = Template.parse(config.issuer_template) if config.issuer_template else None
        self._directory = directory
        self._held: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def select(self, iss: object) -> T | None:
        """The issuer `iss` names, or None when it is none of this config's. May raise
        ProviderUnavailable: an unknown template realm past this minute's discovery budget."""
        if not isinstance(iss, str):
            return None
        found = self.listed.get(iss)
        if found is not None or self.template is None:
            return found
        with self._lock:
            found = self._held.get(iss)
            if found is not None:
                self._held.move_to_end(iss)
                return found
        name = self.template.realm_of(iss)
        if name is None or self._directory is None or self._directory.is_missing(name):
            return None
        if not self._directory.reserve():
            raise errors.ProviderUnavailable()
        missing = False
        try:
            made = self._build(self._config.for_issuer(iss, discovered=True), self._config.issuer_template or "",
                               name)
            missing = made.keys.exists() is False
        finally:
            self._directory.settle(name, missing)
        if missing:
            return None
        with self._lock:  # kept also when the provider could not be asked: its key set retries
            found = self._held.setdefault(iss, made)  # a concurrent request may have made it first
            self._held.move_to_end(iss)
            while len(self._held) > self._config.max_realms:
                self._held.popitem(last=False)
        return found

    def __iter__(self) -> Iterator[T]:
        """The listed issuers, then the template realms held now."""
        with self._lock:
            held = list(self._held.values())
        return iter([*self.listed.values(), *held])

    @property
    def default(self) -> T | None:
        """The plugin-level `issuer`'s (opaque tokens are introspected there)."""
        return self.listed.get(self._config.issuer) if self._config.issuer else None


def refuse_unlisted(signed: jws.Signed, key_sets: Iterable[KeySet]) -> NoReturn:
    """Refuse a token of no issuer of the route without fetching anything for it: `WrongIssuer`
    when one of the listed issuers' key sets holds the key that signed it (so only a holder of a
    real token learns why, as jws.verify_after tells), else the generic `InvalidToken`."""
    if signed_by_held(signed, ((keys, keys) for keys in key_sets)) is not None:
        raise errors.WrongIssuer()
    raise errors.InvalidToken()

def signed_by_held(signed: jws.Signed, key_sets: Iterable[tuple[Owner, KeySet]]) -> Owner | None:
    """The first of `key_sets` whose held keys verify `signed` (no download for its kid), or None."""
    for owner, keys in key_sets:
        try:  # held keys only (a configured key set's first download aside, as jws.verify_after)
            jws.verify(signed, keys.key_for, download=False)
        except errors.Refusal:
            continue
        return owner
    return None
