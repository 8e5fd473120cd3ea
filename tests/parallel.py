"""pytest plugin: groups of tests that must share one pytest-xdist worker (`make test` runs two).

Most tests wait on timers and sockets, so two workers run them side by side on two cores. Some
must not run beside each other, or would be costly twice: a test marked
`pytest.mark.xdist_group("name")` runs on the same worker as every other test of that group, one
after another (the Keycloak tests, `tests/keycloak/fixtures.py`, change realm-wide state; the Redis
Cluster tests share one session cluster).

xdist's own `--dist loadgroup` finds the groups by a suffix it writes into each test's node id,
which pytest 9.2 no longer lets it change; here the workers write each grouped test's id and group
to a file in a directory the controller shares through the environment, and the controller's
scheduler reads it. Without `-n`, nothing of this runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

#: The directory the controller shares with its workers (groups.json, keycloak.json).
SHARED = "KCAUTH_XDIST_DIR"


def is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no"


def shared_dir() -> Path | None:
    """The run's shared directory, in the controller and its workers; None without xdist."""
    value = os.environ.get(SHARED)
    return Path(value) if value else None


def groups() -> dict[str, str]:
    """Node id -> group of every grouped test, as the workers collected them."""
    where = shared_dir()
    path = where / "groups.json" if where else None
    return json.loads(path.read_text()) if path is not None and path.exists() else {}


def publish(name: str, value: Any) -> None:
    """Write `name` in the shared directory at once (a reader never sees half of it)."""
    where = shared_dir()
    assert where is not None
    partial = where / f".{name}.{os.getpid()}"
    partial.write_text(json.dumps(value))
    partial.rename(where / name)


def pytest_configure(config: pytest.Config) -> None:
    if is_controller(config):
        # Set before the workers are spawned: they inherit the controller's environment.
        os.environ[SHARED] = tempfile.mkdtemp(prefix="kcauth-xdist-")


@pytest.hookimpl(trylast=True)  # after the plugins that mark tests as they are collected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput") and shared_dir() is not None:
        found = {item.nodeid: str(mark.args[0]) for item in items
                 if (mark := item.get_closest_marker("xdist_group")) is not None and mark.args}
        publish("groups.json", found)  # every worker collects the same tests: the same file


class GroupScheduling(LoadScopeScheduling):
    """xdist's load-by-scope scheduling where a scope is a group, or else a single test."""

    def _split_scope(self, nodeid: str) -> str:
        if not hasattr(self, "_groups"):
            self._groups = groups()  # complete: every worker wrote it before reporting its collection
        return self._groups.get(nodeid, nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> GroupScheduling:
    return GroupScheduling(config, log)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    where = shared_dir()
    if is_controller(session.config) and where is not None:
        shutil.rmtree(where, ignore_errors=True)
        del os.environ[SHARED]
