"""pytest plugin: one real Keycloak per test session, and the routes the tests put in front of it.

Load it with `pytest_plugins = ["tests.keycloak.fixtures"]` in the top-level conftest. Tests that
use the `keycloak` or `kc_admin` fixtures (directly or through `route`, `routes`, `key_providers`,
`keycloak_proxy`) are marked `keycloak` automatically as well (so `-m "not keycloak"` skips them);
marking them explicitly is still good style.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import parallel
from tests.conftest import LOGIN_CLIENT, guard_config, sensitive_config
from tests.harness.kong import Kong, PluginEntity
from tests.harness.proxy import CountingProxy
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.server import KeycloakServer

log = logging.getLogger(__name__)

KEYCLOAK_FIXTURES = frozenset({"keycloak", "kc_admin"})
REALM = "kcauth"  # kong/keycloak/kcauth-realm.json: users alice and bob, clients test-cli, orders-api
INTROSPECT = "/token/introspect"


class _Starting:
    """The session's Keycloak, started in the background as soon as collection shows a test
    needs it: its start (half a minute of mostly waiting) overlaps the tests before the first
    that needs it. `done` runs in the starting thread once the server is ready or has failed."""

    def __init__(self, done: Callable[[_Starting], None] | None = None) -> None:
        self.server = KeycloakServer()
        self.failure: str | None = None
        self._done = done
        self._thread = threading.Thread(target=self._start, name="keycloak-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.server.start()  # stops what it started if it fails
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
        if self._done is not None:
            self._done(self)

    def join(self) -> tuple[KeycloakServer, str | None]:
        self._thread.join()
        return self.server, self.failure


_starting: _Starting | None = None

# --- under pytest-xdist (`make test` runs two workers, tests/parallel.py) ------------------------
# One Keycloak for the run, started by the controller as soon as a worker's collection shows a
# test needs it, and handed to the workers through the run's shared directory: its URL and
# admin, or why it did not start. The Keycloak tests all run on one worker (group "keycloak"):
# they change realm-wide state (sign-outs, not-before, the SSF transmitter) that another test
# running at the same moment would see.
HANDOFF_WAIT_S = 240.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "keycloak: needs the real Keycloak (started once per session, or KCAUTH_KEYCLOAK_URL)",
    )


def _hand_over(starting: _Starting) -> None:
    server, failure = starting.server, starting.failure
    parallel.publish("keycloak.json", {"failure": failure} if failure is not None else {
        "url": server.base_url, "user": server.admin_user, "password": server.admin_password})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    global _starting
    if _starting is None and "keycloak" in parallel.groups().values():
        _starting = _Starting(done=_hand_over)


def _handed_over(where: Path) -> tuple[KeycloakServer, str | None]:
    """A worker's Keycloak: the one its controller started."""
    path = where / "keycloak.json"
    deadline = time.monotonic() + HANDOFF_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            return KeycloakServer(), f"the test run did not start Keycloak within {HANDOFF_WAIT_S:.0f} s"
        time.sleep(0.2)
    found = json.loads(path.read_text())
    if "failure" in found:
        return KeycloakServer(), str(found["failure"])
    server = KeycloakServer(external=(found["url"], found["user"], found["password"]))
    server.start()  # checks the realms
    return server, None


def pytest_itemcollected(item: pytest.Item) -> None:
    # Marked as each is collected: before any pytest_collection_modifyitems (xdist's reads the groups).
    if KEYCLOAK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.keycloak)
    if item.get_closest_marker("keycloak"):
        item.add_marker(pytest.mark.xdist_group("keycloak"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _starting
    needed = any(item.get_closest_marker("keycloak") for item in items)
    if needed and _starting is None and not config.option.collectonly and parallel.shared_dir() is None:
        _starting = _Starting()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop a Keycloak started in the background that no test ended up using (deselected), and
    the controller's."""
    if _starting is not None:
        _starting.join()[0].stop()  # safe to call twice


@pytest.fixture(scope="session")
def keycloak() -> Iterator[KeycloakServer]:
    """The running Keycloak. A start failure fails every test that needs it (never a skip):
    a suite that silently skips its real-IdP tests proves nothing."""
    global _starting
    if (where := parallel.shared_dir()) is not None:
        server, failure = _handed_over(where)
    else:
        if _starting is None:  # a test asked for it without being collected as needing it
            _starting = _Starting()
        server, failure = _starting.join()
    if failure is not None:  # outside the except block: no chained tracebacks, just the reason
        pytest.fail(f"Keycloak is not available for the tests: {failure}", pytrace=False)
    log.info("Keycloak at %s, ready in %.1f s", server.base_url, server.startup_seconds or 0.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kc_admin(keycloak: KeycloakServer) -> KeycloakAdmin:
    return KeycloakAdmin(keycloak.base_url, keycloak.admin_user, keycloak.admin_password)


# --- logging in, and the routes in front of the realm -------------------------------------------

def login(kc_admin: KeycloakAdmin, user: str = "alice", client: str = LOGIN_CLIENT, scope: str | None = None,
          realm: str = REALM) -> dict[str, Any]:
    """The whole token response of a password login (every user's password is `<user>-pass`)."""
    return kc_admin.password_token(realm, client, user, f"{user}-pass", scope=scope)


def access_token(kc_admin: KeycloakAdmin, user: str = "alice", client: str = LOGIN_CLIENT, scope: str | None = None,
                 realm: str = REALM) -> str:
    return login(kc_admin, user, client, scope, realm)["access_token"]


MakeRoute = Callable[..., PluginEntity]  # the `route` fixture: route(**config) -> the plugin entity


@pytest.fixture
def route(kong: Kong, keycloak: KeycloakServer) -> MakeRoute:
    """route(**config): a guard on orders-api for the realm, local validation only."""
    def make(**extra: Any) -> PluginEntity:
        return kong.plugin(guard_config(keycloak.issuer(REALM), **extra))
    return make


@pytest.fixture
def keycloak_proxy(keycloak: KeycloakServer) -> Iterator[CountingProxy]:
    """A loopback proxy in front of Keycloak (tests/harness/proxy.py) that counts calls and makes
    introspection fail on demand (500, garbage, hang, refuse)."""
    with CountingProxy(keycloak.base_url, fault_path_suffix=INTROSPECT, hang_seconds=10) as p:
        yield p


class Routes:
    """plain(): local validation only; sensitive(**config): introspection through the proxy."""

    def __init__(self, kong: Kong, keycloak: KeycloakServer, proxy: CountingProxy) -> None:
        self.kong, self.issuer = kong, keycloak.issuer(REALM)
        self.endpoint = f"{proxy.url}/realms/{REALM}/protocol/openid-connect{INTROSPECT}"

    def config(self, **extra: Any) -> dict[str, Any]:
        return sensitive_config(self.issuer, introspection_endpoint=self.endpoint, **extra)

    def plain(self) -> PluginEntity:
        return self.kong.plugin(guard_config(self.issuer))

    def sensitive(self, **extra: Any) -> PluginEntity:
        return self.kong.plugin(self.config(**extra))


@pytest.fixture
def routes(kong: Kong, keycloak: KeycloakServer, keycloak_proxy: CountingProxy) -> Routes:
    return Routes(kong, keycloak, keycloak_proxy)


@pytest.fixture
def key_providers(kc_admin: KeycloakAdmin) -> Iterator[dict[str, str]]:
    """Remembers the realm's key providers and restores them afterwards: a test adds providers,
    and puts the id of each it disables in the dict."""
    before = {c["id"] for c in kc_admin.list_key_providers(REALM)}
    changed: dict[str, str] = {}
    yield changed
    for component_id in changed.values():
        kc_admin.set_key_provider_enabled(REALM, component_id, True)
    for c in kc_admin.list_key_providers(REALM):
        if c["id"] not in before:
            kc_admin.delete_component(REALM, c["id"])
