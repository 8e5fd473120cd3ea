"""ARCHITECTURE.md follows the request through every module of the package: it names each
one, and names no module that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_architecture_names_every_module_and_only_those() -> None:
    text = (REPO / "ARCHITECTURE.md").read_text()
    modules = {p.name for p in (REPO / "kong_plugin_kcauth").glob("*.py") if p.name != "__init__.py"}
    named = set(re.findall(r"`([a-z_]+\.py)`", text))
    assert modules - named == set(), "modules missing from ARCHITECTURE.md"
    assert named - modules == set(), "ARCHITECTURE.md names modules that do not exist"
