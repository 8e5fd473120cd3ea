"""pytest plugin: one real Keycloak per test session.

Load it with `pytest_plugins = ["tests.keycloak.fixtures"]` in the top-level conftest. Tests that
use the `keycloak` or `kc_admin` fixtures are marked `keycloak` automatically as well (so
`-m "not keycloak"` skips them); marking them explicitly is still good style.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.server import KeycloakServer

log = logging.getLogger(__name__)

KEYCLOAK_FIXTURES = frozenset({"keycloak", "kc_admin"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "keycloak: needs the real Keycloak (started once per session, or KCAUTH_KEYCLOAK_URL)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if KEYCLOAK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.keycloak)


@pytest.fixture(scope="session")
def keycloak() -> Iterator[KeycloakServer]:
    """The running Keycloak. A start failure fails every test that needs it (never a skip):
    a suite that silently skips its real-IdP tests proves nothing."""
    server = KeycloakServer()
    failure: str | None = None
    try:
        server.start()  # stops what it started if it fails
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
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
