"""Which issuer a token belongs to: chosen by its exact `iss`, before any key is fetched.

A guard or a receiver serves the issuers of its config: `issuer`, each entry of `issuers`, and
the realms of `issuer_template`, each made on first use. Every issuer gets the plugin's config as
that issuer sees it (`Config.for_issuer`), from which its own claim rules, key set,
introspection and revocation store are built, so nothing of one issuer is used for another.

Template realms are bounded:
- a realm name is one path segment of Keycloak's realm-name characters (`REALM_NAME`), so the
  issuer, and with it every URL fetched, stays under the template's origin; discovered endpoints
  must be there too (http.discover `confine`);
- the token's claims that need no key (expiry, audience, type...) are checked under the realm's
  rules (`candidate`) before anything is made or fetched for it (`look_up`): an expired, foreign
  or mis-addressed token costs no lookup;
- a name is a realm only once its provider has served its keys; at most `max_realms` are held,
  the least recently used one released beyond that;
- every lookup that does not find a realm spends the budget: names the provider does not know
  (404, remembered for a minute) and lookups that failed (provider down, answering garbage, too
  slow; backed off for `FAILED_FOR`). At most `unknown_realms_per_minute` of them in any minute,
  and as many at once, shared by every guard and receiver of the process with the same template
  (`RealmDirectory`); concurrent requests for one name share one lookup. A flood of random
  realm names thus costs the provider at most that many lookups a minute, whether it is up or
  down, while realms that exist are looked up freely (a restarted gateway finds all its tenants
  again).
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

from .. import errors
from ..config import REALM_NAME_MAX, Config
from ..idp.introspection import Introspector
from ..idp.keys import KeySet
from ..ops.logs import Owners
from ..revocation.store import RealmRevocations, RevocationStore
from ..tokens import jws
from ..tokens.access import Rules
from . import wiring
from .cache import ExpiringCache, Registry, SingleFlight

Owner = TypeVar("Owner")

REALM_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{REALM_NAME_MAX - 1}}}\Z")
MISSING_FOR = 60.0  # seconds a realm the provider does not know is remembered as missing
FAILED_FOR = 10.0  # seconds a name whose lookup failed is not looked up again
WINDOW = 60.0  # the lookup budget's period (a sliding window)
_NAMES_HELD = 10_000  # names remembered as missing or failed, at most each


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


class Lookup(enum.Enum):
    """How a template realm's lookup ended."""

    FOUND = "found"  # the provider served its keys: a realm
    MISSING = "missing"  # the provider answered 404: no such realm
    FAILED = "failed"  # the provider could not say (down, garbage, too slow)


class RealmDirectory:
    """What every user of one template in the process shares: the budget of lookups that may
    not find a realm, and the names known to be missing or recently failed."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._spent: deque[float] = deque()  # when each lookup that found no realm ended
        self._pending = 0  # lookups under way
        self._missing: ExpiringCache[bool] = ExpiringCache(_NAMES_HELD)
        self._failed: ExpiringCache[bool] = ExpiringCache(_NAMES_HELD)
        self._lock = threading.Lock()

    def known(self, realm: str) -> Lookup | None:
        """MISSING or FAILED when the name is not to be looked up now, else None."""
        if self._missing.get(realm) is not None:
            return Lookup.MISSING
        if self._failed.get(realm) is not None:
            return Lookup.FAILED
        return None

    def reserve(self) -> bool:
        """Whether one more lookup may start now: lookups under way plus those that found no
        realm in the last minute stay within the budget, so a flood never has more requests in
        flight, nor more than the budget in any minute."""
        with self._lock:
            now = self._clock()
            while self._spent and now - self._spent[0] >= WINDOW:
                self._spent.popleft()
            if self._pending + len(self._spent) >= self._per_minute:
                return False
            self._pending += 1
            return True

    def settle(self, realm: str, outcome: Lookup) -> None:
        """A reserved lookup ended; one that found no realm spends the budget and is remembered."""
        with self._lock:
            self._pending -= 1
            if outcome is not Lookup.FOUND:
                self._spent.append(self._clock())
        if outcome is Lookup.MISSING:
            self._missing.put(realm, True, time.time() + MISSING_FOR)
        elif outcome is Lookup.FAILED:
            self._failed.put(realm, True, time.time() + FAILED_FOR)


def realm_directory(config: Config) -> RealmDirectory | None:
    """The discovery budget and missing realms of `issuer_template`, one per template and
    provider in the process."""
    if not config.issuer_template:
        return None
    return _DIRECTORIES.get((config.issuer_template, config.provider_url, config.unknown_realms_per_minute),
                            lambda: RealmDirectory(config.unknown_realms_per_minute))


_DIRECTORIES: Registry[RealmDirectory] = Registry()


class Realm:
    """One issuer of a guard or a receiver: its claim rules, keys, revocations and, on a guard's
    sensitive routes, introspection, built from the config as that issuer sees it
    (Config.for_issuer), so nothing of one issuer is used for another."""

    def __init__(self, config: Config, label: str, name: str, owners: Owners | None = None) -> None:
        self.issuer = config.the_issuer
        self.label = label  # metrics: the issuer, or a template realm's template
        self.group = f"issuer:{name}"
        self.rules = Rules.from_config(config)
        self.audiences = frozenset(config.audiences)  # a receiver's: the clients whose pushes it takes
        self.keys = wiring.key_set(config)
        self.revocations: RevocationStore | RealmRevocations = wiring.revocation_store(config)
        self.feed = wiring.revocation_feed(config)  # held: it reads while a guard or receiver needs it
        self.signals = wiring.signals(config)  # held likewise: it polls while one needs it
        self.introspector = Introspector.from_config(
            config, replace(self.rules, defer_missing_audience=False),
            wiring.shared_store(config.redis, config.tls_ca_bundle), label, owners,
        ) if config.introspect and config.mode == "guard" else None


class Issuers:
    """The issuers of one config: `listed` (`issuer` and `issuers`), and the template realms held."""

    def __init__(self, config: Config, owners: Owners | None = None) -> None:
        self._config = config
        self._owners = owners
        self.listed: dict[str, Realm] = {}
        if config.issuer:
            self.listed[config.issuer] = Realm(config.for_issuer(config.issuer), config.issuer,
                                               realm_name(config.issuer), owners)
        for entry in config.issuers or ():
            if entry.issuer not in self.listed:  # listed twice: the first settings hold
                self.listed[entry.issuer] = Realm(config.for_issuer(entry.issuer, entry), entry.issuer,
                                                  realm_name(entry.issuer), owners)
        self.template = Template.parse(config.issuer_template) if config.issuer_template else None
        self._directory = realm_directory(config)
        self._held: OrderedDict[str, Realm] = OrderedDict()
        self._lock = threading.Lock()
        self._lookups: SingleFlight[Realm | None] = SingleFlight()
        # A lookup is two requests (discovery, key set) of at most `http_timeout` each.
        self._lookup_wait = 4 * config.http_timeout + 2

    def held(self, iss: object) -> Realm | None:
        """The issuer `iss` names when it is listed or a template realm held now: no I/O."""
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

    def candidate(self, iss: object) -> Config | None:
        """The config a template realm named by `iss` would have, when `iss` is one of the
        template's and not held: its rules judge the token before any lookup (`look_up`)."""
        if self.template is None or self._directory is None or not isinstance(iss, str):
            return None
        if self.template.realm_of(iss) is None:
            return None
        return self._config.for_issuer(iss, discovered=True)

    def look_up(self, iss: str, config: Config) -> Realm | None:
        """A template realm not held yet (`candidate`), looked up within the budget: None when
        the provider does not know it; raises ProviderUnavailable past the budget or when the
        provider could not be asked (a name is a realm only once its keys were served)."""
        name = self.template.realm_of(iss) if self.template is not None else None
        assert name is not None and self._directory is not None
        known = self._directory.known(name)
        if known is Lookup.MISSING:
            return None
        if known is Lookup.FAILED:
            raise errors.ProviderUnavailable()
        try:
            return self._lookups.do(name, lambda: self._look_up(iss, name, config), wait=self._lookup_wait)
        except TimeoutError:
            raise errors.ProviderUnavailable() from None

    def _look_up(self, iss: str, name: str, config: Config) -> Realm | None:
        """One lookup of a template realm (one per name at a time), within the budget."""
        assert self._directory is not None
        with self._lock:
            found = self._held.get(iss)  # made by the lookup this one waited behind
        if found is not None:
            return found
        if not self._directory.reserve():
            raise errors.ProviderUnavailable()
        outcome = Lookup.FAILED
        try:
            made = Realm(config, self._config.issuer_template or "", name, self._owners)
            exists = made.keys.exists()
            outcome = Lookup.FOUND if exists else Lookup.MISSING if exists is False else Lookup.FAILED
        finally:
            self._directory.settle(name, outcome)
        if outcome is Lookup.MISSING:
            return None
        if outcome is Lookup.FAILED:
            raise errors.ProviderUnavailable()
        with self._lock:
            found = self._held.setdefault(iss, made)
            self._held.move_to_end(iss)
            while len(self._held) > self._config.max_realms:
                self._held.popitem(last=False)
        return found

    def __iter__(self) -> Iterator[Realm]:
        """The listed issuers, then the template realms held now."""
        with self._lock:
            held = list(self._held.values())
        return iter([*self.listed.values(), *held])

    @property
    def default(self) -> Realm | None:
        """The plugin-level `issuer`'s (opaque tokens are introspected there)."""
        return self.listed.get(self._config.issuer) if self._config.issuer else None


def refuse_unlisted(signed: jws.Signed, key_sets: Iterable[KeySet]) -> NoReturn:
    """Refuse a token of no issuer of the route without fetching anything for it: `WrongIssuer`
    when one of the listed issuers' key sets holds the key that signed it (so only a holder of a
    real token learns why, as KeySet.verify tells), else the generic `InvalidToken`."""
    if signed_by_held(signed, ((keys, keys) for keys in key_sets)) is not None:
        raise errors.WrongIssuer()
    raise errors.InvalidToken()


def signed_by_held(signed: jws.Signed, key_sets: Iterable[tuple[Owner, KeySet]]) -> Owner | None:
    """The first of `key_sets` whose held keys verify `signed` (no download for its kid), or None."""
    for owner, keys in key_sets:
        key = keys.held_key(signed.kid, signed.alg)
        if key is not None and jws.signed_by(signed, key):
            return owner
    return None
