"""Authorization policy: does a valid token carry the scopes and roles this route requires?

Each list combines by its own mode (`all` or `any`); when both lists are set, both must hold.
An empty list requires nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..errors import InsufficientScope
from ..tokens.claims import Claims, roles_of, scopes_of


@dataclass(frozen=True)
class Policy:
    scopes: tuple[str, ...] = ()
    scopes_match: str = "all"
    roles: tuple[str, ...] = ()
    roles_match: str = "all"

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        return cls(config.required_scopes, config.scopes_match, config.required_roles, config.roles_match)


def satisfied(required: tuple[str, ...], held: frozenset[str], match: str) -> bool:
    if not required:
        return True
    if match == "any":
        return any(r in held for r in required)
    return all(r in held for r in required)


def authorize(policy: Policy, claims: Claims) -> None:
    # Claims are only read for what the route requires.
    if policy.scopes and not satisfied(policy.scopes, scopes_of(claims), policy.scopes_match):
        raise InsufficientScope(required_scopes=policy.scopes)
    if policy.roles and not satisfied(policy.roles, roles_of(claims), policy.roles_match):
        raise InsufficientScope()
