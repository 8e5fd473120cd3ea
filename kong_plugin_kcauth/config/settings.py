"""kcauth's configuration: every field, its Kong attributes and description, the rules
between fields, and what is derived from them.

The machinery that turns this one definition into Kong's schema, the typed config and the
reference in docs/configuration.md is schema.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, ClassVar
from urllib.parse import urlsplit

from .schema import (
    ConfigError,
    Unusable,
    canonical,
    conditional,
    conditional_at_least_one_of,
    kong_fields,
    kong_record,
    load,
    setting,
    unusable_fields,
)
from .values import (
    ASYMMETRIC_ALGORITHMS,
    KONG_IDENTITY_HEADERS,
    RESERVED_HEADERS,
    load_assertion_key,
    load_ca_bundle,
    load_public_key,
    load_signing_key,
    rewrite_origin,
)

SYSTEM_CA_STORE = "system"

__all__ = ["REALM_NAME_MAX", "AssertionConfig", "Config", "ConfigError", "FeedConfig", "IssuerEntry", "RedisConfig",
           "kong_config_record", "kong_schema"]



def _any_spelling(name: str) -> str:
    """A Lua pattern matching exactly `name` in any letter case, `-` written `-` or `_` (WSGI,
    CGI and many frameworks read `x_consumer_id` as `X-Consumer-ID`)."""
    return "".join(f"[{ch.upper()}{ch.lower()}]" if ch.isalpha() else "[%-_]" if ch in "-_" else
                   (ch if ch.isdigit() else "%" + ch) for ch in name)


# Claim header names that would let a token rewrite how the request is routed, framed or
# authenticated, or pass for Kong's own identity headers, in any spelling.
_RESERVED_NAME_RULES = [{"pattern": f"^{_any_spelling(name)}$",
                         "err": f"'{name}' is reserved and cannot carry a claim (in any spelling)"}
                        for name in sorted(RESERVED_HEADERS | {h.lower() for h in KONG_IDENTITY_HEADERS})]

# URL fields, as Lua patterns: http(s) with a host, no user-info, query, fragment, whitespace or
# backslash (Keycloak's issuers and endpoints never have them; each makes an issuer match, a
# request go elsewhere, or a DPoP `htu` compare, otherwise than it reads). Kong enforces them; so
# does instance start (schema.load), with the same patterns.
URL = "^https?://"
ORIGIN = "^https?://[^/]+$"  # scheme://host[:port], nothing after
_URL_RULES = [
    {"pattern": "^https?://$", "err": "the URL needs a host"},
    {"pattern": "^https?://[/?#:]", "err": "the URL needs a host"},
    {"pattern": "^https?://[^/?#]*@", "err": "the URL must not carry user-info (user@)"},
    {"pattern": "[?#]", "err": "the URL must not carry a query or a fragment"},
    {"pattern": "[%s%c\\]", "err": "the URL must not contain whitespace, control characters or backslashes"},
]
_ORIGIN_RULES = [*_URL_RULES, {"pattern": "^https?://[^/]*/", "err": "expected an origin (scheme://host[:port]) "
                                                                      "without a path"}]
# claims.parse_claim_path's rule, as Lua patterns: no empty segment in `a.b` nor in `/a/b`.
_CLAIM_PATH_RULES = [{"pattern": pattern, "err": "the claim path has an empty segment"}
                     for pattern in ("^%.", "^[^/].*%.$", "^[^/].*%.%.", "^/$", "^//", "^/.*//", "^/.*/$")]


@dataclass(frozen=True)
class SentinelNode:
    host: str = setting("A Sentinel's host name or address.", required=True)
    port: int = setting("The Sentinel's port.", 26379, between=[1, 65535])


@dataclass(frozen=True)
class ClusterNode:
    ip: str = setting("A cluster node's address or host name.", required=True)
    port: int = setting("The node's port.", 6379, between=[1, 65535])


@dataclass(frozen=True)
class RedisConfig:
    """Kong's names (kong/tools/redis/schema.lua for a standalone Redis and TLS; Kong
    Enterprise's for Sentinel), so an operator points kcauth at the Redis Kong already uses."""

    host: str | None = setting(
        "A standalone Redis shared by every Kong node (or use `sentinel_master`). Empty, and no "
        "Sentinel: caches and revocations stay in each plugin server process (shared by its "
        "workers).",
        None,
    )
    port: int = setting("TCP port of the Redis server.", 6379, between=[1, 65535])
    ssl: bool = setting(
        "Connect to Redis (and to the Sentinels) over TLS, trusting `tls_ca_bundle`.", False,
    )
    ssl_verify: bool = setting(
        "Verify the server's certificate: its chain (`tls_ca_bundle`) and its name (`server_name`, "
        "else the address connected to). On by default, unlike Kong's own record: kcauth keeps "
        "revocations in Redis. Off only for a test Redis.",
        True,
    )
    server_name: str | None = setting(
        "The name sent in TLS (SNI) and verified in Redis's certificate, when it differs from the "
        "address connected to (a load balancer, or the addresses Sentinel names).",
        None, len_min=1,
    )
    tls: bool | None = setting(
        "Deprecated, `ssl` says it: still turns TLS on; `tls: false` with `ssl: true` is refused.",
        None,
    )
    username: str | None = setting("Redis ACL user name, when Redis uses ACLs.", None)
    password: str | None = setting(
        "Redis password. Referenceable: use a Kong vault reference such as "
        "`{vault://env/kcauth-redis-password}`; never logged.",
        None, referenceable=True, encrypted=True,
    )
    database: int = setting("Redis logical database number.", 0, between=[0, 15])
    sentinel_master: str | None = setting(
        "Redis Sentinel: the name of the monitored primary (`sentinel monitor <name> ...`). kcauth asks "
        "`sentinel_nodes` for its address and follows a failover to the promoted replica.",
        None, len_min=1,
    )
    sentinel_role: str = setting(
        "Which server of `sentinel_master` kcauth talks to: `master` (kcauth writes revocations, "
        "so a replica will not do).",
        "master", one_of=["master"],
    )
    sentinel_nodes: tuple[SentinelNode, ...] | None = setting(
        "The Sentinels asked for the primary's address, each `{host, port}`.",
        None, len_min=1,
    )
    sentinel_username: str | None = setting("ACL user name at the Sentinels, when they use ACLs.", None)
    sentinel_password: str | None = setting(
        "Password of the Sentinels (`requirepass` in sentinel.conf). Referenceable; never logged.",
        None, referenceable=True, encrypted=True,
    )
    cluster_nodes: tuple[ClusterNode, ...] | None = setting(
        "Redis Cluster: some of its nodes, each `{ip, port}`; kcauth learns the others and the "
        "slots from them, and follows a replica's promotion. Database 0 only.",
        None, len_min=1,
    )
    cluster_max_redirections: int = setting(
        "Redis Cluster: how many MOVED/ASK redirections one call follows.", 5, between=[1, 16],
    )
    keepalive_pool_size: int = setting(
        "Connections to Redis each plugin server process opens at most for requests (per Redis "
        "node; each revocation subscription has one of its own). A call that finds every one "
        "busy waits for one, at most `timeout`.",
        256, between=[1, 4096],
    )
    secret: str | None = setting(
        "Required with Redis: a secret of at least 32 characters shared by every gateway (e.g. "
        "`openssl rand -base64 32`), from which kcauth derives the key that encrypts and "
        "authenticates every entry it writes to Redis, so whoever can write to Redis cannot forge "
        "a verdict or read a claim. Referenceable; never logged.",
        None, referenceable=True, encrypted=True, len_min=32,
    )
    prefix: str = setting(
        "Prefix of every key kcauth writes to Redis, so several gateways can share one Redis.",
        "kcauth:", len_min=1,
    )
    timeout: float = setting(
        "Connect and read timeout in seconds for Redis (and each Sentinel). A slow or dead Redis "
        "is skipped for a few seconds and the in-process state carries on.",
        0.25, between=[0.01, 5],
    )
    # Referenceable fields whose vault reference gave nothing usable (schema.load): without a
    # usable password or secret, this config does not use Redis (decision/wiring.py shared_store).
    unusable: Unusable = unusable_fields()

    ENTITY_CHECKS: ClassVar[list[dict[str, Any]]] = [
        conditional("tls", {"eq": False}, "ssl", {"eq": False},
                    "redis.tls is deprecated (redis.ssl says it) and disagrees with redis.ssl"),
        conditional("sentinel_master", {"required": True}, "sentinel_nodes", {"required": True}),
        conditional("sentinel_nodes", {"required": True}, "sentinel_master", {"required": True}),
        conditional("sentinel_master", {"required": True}, "host", {"len_max": 0},
                    "redis.host and redis.sentinel_master name two Redis: set one"),
        conditional("cluster_nodes", {"required": True}, "host", {"len_max": 0},
                    "redis.host and redis.cluster_nodes name two Redis: set one"),
        conditional("cluster_nodes", {"required": True}, "sentinel_master", {"len_max": 0},
                    "redis.sentinel_master and redis.cluster_nodes name two Redis: set one"),
        conditional("cluster_nodes", {"required": True}, "database", {"eq": 0},
                    "a Redis Cluster has database 0 only"),
    ]

    @property
    def enabled(self) -> bool:
        """Redis is configured (standalone or Sentinel) and its secrets usable."""
        return bool(self.host or self.sentinel_master or self.cluster_nodes) and not self.unusable

    @property
    def uses_tls(self) -> bool:
        return self.ssl or bool(self.tls)

    @property
    def address(self) -> str:
        """What the log names (never a secret)."""
        if self.sentinel_master:
            return f"sentinel master {self.sentinel_master}"
        if self.cluster_nodes:
            return "cluster " + ",".join(f"{node.ip}:{node.port}" for node in self.cluster_nodes)
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FeedConfig:
    client_id: str | None = setting(
        "Turns the revocation feed on for the realm of `issuer` (a Keycloak realm issuer, "
        "`.../realms/<name>`): the client id of a confidential client of that realm whose service "
        "account holds one role, `realm-management` `view-events`. The feed reads the realm's "
        "login and admin events and turns those that end a user's access (disabled, deleted, "
        "password changed, sessions signed out) into revocations every guard of the issuer "
        "enforces with no call to Keycloak. Empty: no feed.",
        None,
    )
    client_secret: str | None = setting(
        "Secret of the feed's `client_id` (client_secret_basic at the realm's token endpoint). "
        "Referenceable: use a Kong vault reference; never logged.",
        None, referenceable=True, encrypted=True,
    )
    interval: int = setting(
        "Seconds between two reads of the realm's events, for the whole cluster when `redis` is "
        "set (one process reads, chosen through Redis; every process learns the revocations at "
        "once), per plugin server process otherwise. What Keycloak does not push is enforced "
        "within this plus about a second.",
        10, between=[1, 3600],
    )
    role_changes: bool = setting(
        "Also revoke a user's earlier tokens when an administrator removes a realm role, a client "
        "role or a group from that user (the tokens still carry it). Off: such tokens keep their "
        "roles until they expire.",
        False,
    )
    # Without a usable client_secret the feed is off (decision/wiring.py revocation_feed).
    unusable: Unusable = unusable_fields()


@dataclass(frozen=True)
class SignalsClient:
    """The realm's client the Shared Signals receiver works as (plugin level, and `issuers[]`)."""

    client_id: str | None = setting(
        "Turns on the OpenID Shared Signals receiver for this realm (Keycloak 26.7+ with "
        "`--features=ssf`, the realm's transmitter on): the client id of a confidential client of "
        "the realm with SSF enabled, a service account and the scopes `ssf.read` and `ssf.manage` "
        "(no realm-management role). kcauth adopts or creates that client's stream for CAEP "
        "session-revoked and credential-change and enforces them on every guard of the issuer. "
        "Empty: off.",
        None,
    )
    client_secret: str | None = setting(
        "Secret of the receiver's `client_id` (client_secret_basic at the realm's token endpoint). "
        "Referenceable: use a Kong vault reference; never logged.",
        None, referenceable=True, encrypted=True,
    )
    # Without a usable client_secret the receiver is off (decision/wiring.py signals).
    unusable: Unusable = unusable_fields()

    ENTITY_CHECKS: ClassVar[list[dict[str, Any]]] = [
        conditional("client_id", {"required": True}, "client_secret", {"required": True}),
    ]


@dataclass(frozen=True)
class SignalsConfig(SignalsClient):
    delivery: str = setting(
        "How Keycloak delivers the stream's events, for every realm of the config: `poll` (RFC "
        "8936: kcauth asks, and acknowledges each event once recorded) or `push` (RFC 8935: "
        "Keycloak posts each event to `push_url`, a `revocation_receiver` route, and retries "
        "until it is recorded). docs/revocation.md \"Revocation by Shared Signals\" compares them.",
        "poll", one_of=["poll", "push"],
    )
    push_url: str | None = setting(
        "With `delivery: push`: the URL Keycloak posts events to, the public address of this "
        "`revocation_receiver` route (list it in the client's `ssf.validPushUrls`). One route "
        "takes the events of every realm of the config.",
        None, match=URL, match_none=_URL_RULES,
    )
    poll_interval: int = setting(
        "Seconds between two polls of the stream, for the whole cluster when `redis` is set (one "
        "process polls, chosen through Redis), per node otherwise. A signal is enforced within "
        "this plus about a second. With `delivery: push`: how soon a stream that could not be "
        "set up is tried again.",
        2, between=[1, 300],
    )

    ENTITY_CHECKS: ClassVar[list[dict[str, Any]]] = [
        *SignalsClient.ENTITY_CHECKS,
        conditional("delivery", {"eq": "push"}, "push_url", {"required": True}),
        conditional("push_url", {"required": True}, "delivery", {"eq": "push"},
                    "push_url is used only with delivery push"),
    ]


ASSERTION_ALGORITHMS = ("ES256", "EdDSA", "RS256", "PS256")
_PEM_PRIVATE = "^%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-"
_PEM_PUBLIC = "^%-%-%-%-%-BEGIN PUBLIC KEY%-%-%-%-%-"


@dataclass(frozen=True)
class AssertionConfig:
    """The identity assertion signed for the upstream (docs/upstream-identity.md)."""

    audience: str | None = setting(
        "Turns the upstream assertion on: the upstream service's name, the assertion's `aud`. Each "
        "accepted request then carries `header`, a JWS signed by the gateway with `private_key` over "
        "the identity kcauth forwards, the request's method and path, for `ttl` seconds. Empty: off "
        "(a client's copy of `header` is still removed).",
        None,
    )
    header: str = setting(
        "The upstream header carrying the assertion (lower case). A client's copy of it, in any "
        "spelling, never reaches the upstream.",
        "x-auth-assertion", match="^[%l%d!#$%%&'*+.^_`|~-]+$", match_none=_RESERVED_NAME_RULES,
    )
    issuer: str = setting(
        "The assertion's `iss`: the gateway's name, which upstreams check.",
        "kcauth",
    )
    algorithm: str = setting(
        "The assertion's signature algorithm, matching `private_key`: `ES256` (EC P-256), `EdDSA` "
        "(Ed25519), `RS256` or `PS256` (RSA of 2048 bits or more). A key of another type is refused.",
        "ES256", one_of=list(ASSERTION_ALGORITHMS),
    )
    private_key: str | None = setting(
        "PEM private key (PKCS#8) the assertion is signed with, the same on every node. Its "
        "public key is published, with its RFC 7638 thumbprint as `kid`, by the `assertion_keys` "
        "route. Referenceable: use a Kong vault reference; never logged.",
        None, referenceable=True, encrypted=True, match=_PEM_PRIVATE,
        err="expected a PEM private key (-----BEGIN PRIVATE KEY-----)",
    )
    public_keys: tuple[str, ...] | None = setting(
        "`assertion_keys` route: more PEM public keys (`-----BEGIN PUBLIC KEY-----`) published beside "
        "`private_key`'s, for a rotation: the next key before any node signs with it, the previous "
        "one until its last assertions expired.",
        None, elements={"match": _PEM_PUBLIC, "err": "expected a PEM public key (-----BEGIN PUBLIC KEY-----)"},
    )
    ttl: int = setting(
        "Seconds an assertion is valid (`exp` - `iat`): short, it is made for one request.",
        30, between=[1, 300],
    )
    unusable: Unusable = unusable_fields()  # a private_key reference that gave nothing: refused at start

    ENTITY_CHECKS: ClassVar[list[dict[str, Any]]] = [
        conditional("audience", {"required": True}, "private_key", {"required": True},
                    "upstream_assertion.audience needs upstream_assertion.private_key to sign with"),
    ]


# The issuers the feed can derive the realm's admin REST address from (Lua pattern).
FEED_ISSUER_PATTERN = "^https?://[^/]+.*/realms/[^/]+$"

# A realm name in `issuer_template`: Keycloak's realm-name characters, bounded, no dot segments.
REALM_NAME_MAX = 64


@dataclass(frozen=True)
class IssuerEntry:
    """One more accepted issuer, with what differs from the plugin-level settings."""

    issuer: str = setting(
        "The issuer, matched exactly against the `iss` claim.",
        required=True, match=URL, match_none=_URL_RULES,
    )
    provider_url: str | None = setting(
        "Origin Kong reaches this issuer's provider at. Empty: the plugin-level `provider_url`.",
        None, match=ORIGIN, match_none=_ORIGIN_RULES,
    )
    jwks_uri: str | None = setting(
        "This issuer's key set URL. Empty: discovery on this issuer (never the plugin-level "
        "`jwks_uri`, which belongs to `issuer`).",
        None, match=URL, match_none=_URL_RULES,
    )
    introspection_endpoint: str | None = setting(
        "This issuer's introspection URL. Empty: from discovery on this issuer.",
        None, match=URL, match_none=_URL_RULES,
    )
    client_id: str | None = setting(
        "Client id for this issuer's introspection. Empty: the plugin-level `client_id`.",
        None,
    )
    client_secret: str | None = setting(
        "Secret of this issuer's `client_id`. Empty: the plugin-level `client_secret`. "
        "Referenceable; never logged.",
        None, referenceable=True, encrypted=True,
    )
    audiences: tuple[str, ...] | None = setting(
        "Accepted audiences of this issuer's tokens (receiver: clients). Empty: the plugin-level "
        "`audiences`.",
        None, len_min=1,
    )
    authorized_parties: tuple[str, ...] | None = setting(
        "Accepted `azp` of this issuer's tokens. Empty: the plugin-level `authorized_parties`.",
        None, len_min=1,
    )
    ssf: SignalsClient = setting(
        "This realm's Shared Signals receiver: its client (`delivery`, `push_url` and "
        "`poll_interval` are the plugin-level `ssf`'s).",
        SignalsClient(),
    )
    unusable: Unusable = unusable_fields()  # this issuer's client_secret, when its reference gave nothing usable

    ENTITY_CHECKS: ClassVar[list[dict[str, Any]]] = [
        conditional("ssf.client_id", {"required": True}, "issuer", {"match": FEED_ISSUER_PATTERN},
                    "the Shared Signals receiver reads the stream of the entry's realm, a Keycloak realm "
                    "issuer (.../realms/<name>)"),
    ]


@dataclass(frozen=True)
class Config:
    issuer: str | None = setting(
        "The token issuer, matched exactly against the `iss` claim, e.g. "
        "`https://sso.example.com/realms/acme`. Key discovery uses "
        "`<issuer>/.well-known/openid-configuration` unless `jwks_uri` is set. At least one of "
        "`issuer`, `issuers` and `issuer_template` is needed.",
        None, match=URL, match_none=_URL_RULES,
    )
    issuers: tuple[IssuerEntry, ...] | None = setting(
        "More accepted issuers (several realms, or one realm under a second hostname), each "
        "with its own keys, introspection, caches and revocations. The token's `iss` selects "
        "the entry by exact match; a token of no listed issuer is refused before any key is "
        "fetched. An issuer listed twice (or equal to `issuer`) takes its first settings.",
        None,
    )
    issuer_template: str | None = setting(
        "Multi-tenant realms: an issuer with `{realm}` in its path, e.g. "
        "`https://sso.example.com/realms/{realm}`. A realm name is 1 to 64 of `A-Z a-z 0-9 _ . -` "
        "(not starting with a dot, no `..`); its discovery and keys are fetched on first use, "
        "only from the template's origin (or `provider_url`). See `max_realms` and "
        "`unknown_realms_per_minute`.",
        None, match="^https?://[^/{}?#@%s%c\\:][^/{}?#@%s%c\\]*/[^{}?#%s%c\\]*{realm}[^{}?#%s%c\\]*$",
        err="expected an http(s) URL with a host and one {realm} in its path (no user-info, query, fragment, "
            "whitespace or backslash)",
    )
    max_realms: int = setting(
        "Template realms held at once (keys, introspection, revocations each); the least "
        "recently used one is released beyond it.",
        1000, between=[1, 100000],
    )
    unknown_realms_per_minute: int = setting(
        "Template realm lookups that find no realm, in any minute at most (and as many at once): "
        "names the provider does not know (remembered as missing for a minute) and lookups that "
        "failed (provider down or answering garbage; such a name is left alone for 10 s). Once "
        "spent, tokens of template realms not held yet get 503; held realms are not affected.",
        10, between=[1, 1000],
    )
    provider_url: str | None = setting(
        "Origin (scheme://host:port) at which Kong reaches the identity provider when it is not "
        "the issuer's (containers: issuer http://localhost:8080/..., Kong reaches "
        "http://keycloak:8080). Discovery and the endpoints it names are fetched there; the "
        "issuer is still matched exactly.",
        None, match=ORIGIN, match_none=_ORIGIN_RULES,
    )
    jwks_uri: str | None = setting(
        "Explicit URL of the realm's JSON Web Key Set. Leave empty to find it through OpenID "
        "Connect discovery on the issuer. Never taken from a token.",
        None, match=URL, match_none=_URL_RULES,
    )
    audiences: tuple[str, ...] = setting(
        "Accepted audiences: the token's `aud` claim must contain at least one of them. "
        "Required while `verify_audience` is true (Keycloak adds a client id to `aud` through "
        "an audience mapper). On a `revocation_receiver` route: the client ids whose logout "
        "tokens and not-before pushes are accepted (the Keycloak clients whose back-channel "
        "logout URL or admin URL point at the route).",
        [],
    )
    verify_audience: bool = setting(
        "Check the `aud` claim against `audiences`. Turn off only for realms that cannot "
        "put the API into `aud`; any token of the realm is then accepted.",
        True,
    )
    authorized_parties: tuple[str, ...] = setting(
        "Accepted authorized parties: when not empty, the token's `azp` claim (the Keycloak "
        "client that obtained it) must be one of these client ids.",
        [],
    )
    algorithms: tuple[str, ...] = setting(
        "Accepted signature algorithms. Only asymmetric ones can be named; `none` and HS* "
        "can never be enabled. The key's type and `alg` must agree with the token too.",
        ["RS256", "PS256", "ES256", "EdDSA"], elements={"one_of": list(ASYMMETRIC_ALGORITHMS)},
        len_min=1,
    )
    leeway: int = setting(
        "Clock skew tolerance in seconds applied to `exp`, `nbf`, `iat` and `max_token_age`.",
        10, between=[0, 300],
    )
    max_token_age: int | None = setting(
        "Refuse tokens whose `iat` is older than this many seconds, whatever their `exp` says. "
        "Empty means no limit.",
        None, gt=0,
    )
    max_token_size: int = setting(
        "Largest accepted token, in bytes; longer tokens are refused before any parsing.",
        8192, between=[512, 65536],
    )
    required_scopes: tuple[str, ...] = setting(
        "Scopes the token's space-separated `scope` claim must carry, combined by "
        "`scopes_match`. Empty means no scope requirement.",
        [], elements={"match": "^[]-~!#-[]+$"},  # RFC 6749 3.3 scope-token: %x21 / %x23-5B / %x5D-7E
    )
    scopes_match: str = setting(
        "How `required_scopes` combine: `all` needs every listed scope, `any` needs one.",
        "all", one_of=["all", "any"],
    )
    required_roles: tuple[str, ...] = setting(
        "Roles the token must carry, written `realm:<role>` for realm roles and "
        "`<client-id>:<role>` for client roles (split at the last colon), combined by "
        "`roles_match`. Scope and role requirements must both hold.",
        [], elements={"match": "^.+:[^:]+$"},
    )
    roles_match: str = setting(
        "How `required_roles` combine: `all` needs every listed role, `any` needs one.",
        "all", one_of=["all", "any"],
    )
    claim_headers: dict[str, str] = setting(
        "Upstream headers to set from token claims: header name (lower case, as HTTP/2 writes "
        "them; header names are case-insensitive, so one spelling each) to claim path. Paths are "
        "dot-separated (`realm_access.roles`) or RFC 6901 JSON Pointers (`/a.b/c`). Client "
        "copies of every listed header are always removed.",
        {
            "x-auth-subject": "sub",
            "x-auth-username": "preferred_username",
            "x-auth-client": "azp",
            "x-auth-scope": "scope",
            "x-auth-realm-roles": "realm_access.roles",
            "x-auth-issuer": "iss",
        },
        keys={"match": "^[%l%d!#$%%&'*+.^_`|~-]+$", "match_none": _RESERVED_NAME_RULES},
        values={"match_none": _CLAIM_PATH_RULES},
    )
    header_value_max_length: int = setting(
        "Longest claim header value in bytes after encoding. A longer value is not "
        "forwarded (the header is removed) rather than truncated into a wrong value.",
        2048, between=[16, 16384],
    )
    strip_authorization: bool = setting(
        "Remove the Authorization header before proxying, so the upstream never sees the "
        "token. Off by default because many upstreams pass the token on.",
        False,
    )
    authenticated_group: str = setting(
        "Group always handed to Kong's ACL plugin (kong.ctx.shared.authenticated_groups) "
        "for an accepted token, so ACL can refuse requests this plugin did not accept.",
        "kcauth:authenticated", match="%S",
    )
    roles_as_groups: bool = setting(
        "Also hand the token's roles to Kong's ACL plugin as groups, named `realm:<role>` "
        "and `<client-id>:<role>` like `required_roles`.",
        True,
    )
    groups_claim: str | None = setting(
        "Claim path of the token's Keycloak group memberships (the `groups` claim of Keycloak's "
        "group membership mapper: `/staff/admins` with full paths, `admins` without), handed to "
        "Kong's ACL plugin as groups named `group:<value>`, e.g. `groups`. Empty: none.",
        None, match_none=_CLAIM_PATH_RULES,
    )
    issuer_groups: bool = setting(
        "Also hand Kong's ACL plugin the group `issuer:<realm>` of the accepted issuer (the "
        "realm name: the template's `{realm}`, else the last path segment of the issuer), so "
        "ACL can allow a route to some realms only.",
        False,
    )
    realm: str = setting(
        "The `realm` parameter of the WWW-Authenticate challenge sent with 401 and 403.",
        "kong", match='^[^%c"\\]+$',
    )
    jwks_refresh_interval: int = setting(
        "Seconds after which held signing keys are refreshed from the key set in the "
        "background (requests keep using the held keys meanwhile).",
        300, between=[10, 3600],
    )
    jwks_min_refresh_interval: int = setting(
        "Least seconds between two key set downloads caused by tokens with an unknown key "
        "id, so a flood of random key ids cannot turn into a flood of downloads.",
        10, between=[1, 3600],
    )
    jwks_max_stale: int = setting(
        "Seconds held keys stay usable after the last successful key set download while "
        "the identity provider cannot be reached; past that requests get 503. At least an hour, "
        "so held keys always outlive the refresh intervals.",
        3600, between=[3600, 604800],
    )
    http_timeout: float = setting(
        "Connect and read timeout in seconds for each request to the identity provider (discovery, "
        "key set, introspection). At most 5: a request's evaluation may need four such requests, and "
        "Kong gives up on the plugin server after 60 s (and then proxies).",
        3.0, between=[0.1, 5], gt=0,  # gt: Kong's `between` lets NaN through, `gt` does not
    )
    tls_ca_bundle: str | None = setting(
        "CAs trusted for TLS to the identity provider and to Redis: a PEM file on the Kong node "
        "(a private or corporate CA), or `system` for the operating system's store. Empty: the "
        "Mozilla CA bundle kcauth ships with (certifi). Certificates are always verified.",
        None,
    )
    token_cache_size: int = setting(
        "Validated tokens remembered per plugin configuration (by SHA-256 of the token, "
        "never the token itself, and never past `exp`); about 2 KB each. 0 disables it.",
        10000, between=[0, 200000],
    )
    introspect: bool = setting(
        "Sensitive route: after local validation, also ask the realm's RFC 7662 "
        "introspection endpoint whether the token is still active, so logout and revocation "
        "are seen (within `introspection_cache_ttl`).",
        False,
    )
    accept_opaque_tokens: bool = setting(
        "With `introspect`, also accept tokens that are not JWTs, judged by introspection "
        "alone. Off: every token must pass local validation first.",
        False,
    )
    introspection_endpoint: str | None = setting(
        "Explicit introspection URL. Empty: the `introspection_endpoint` of the issuer's "
        "discovery document.",
        None, match=URL, match_none=_URL_RULES,
    )
    client_id: str | None = setting(
        "Client id kcauth authenticates as at the introspection endpoint (the API's "
        "confidential client; Keycloak 26.7+ requires it in the token's `aud`).",
        None,
    )
    client_secret: str | None = setting(
        "Secret of `client_id` for client_secret_basic and client_secret_post. "
        "Referenceable: use a Kong vault reference; never logged.",
        None, referenceable=True, encrypted=True,
    )
    client_auth_method: str = setting(
        "How kcauth authenticates to the introspection endpoint.",
        "client_secret_basic", one_of=["client_secret_basic", "client_secret_post", "private_key_jwt"],
    )
    client_private_key: str | None = setting(
        "PEM private key (RSA or EC P-256) signing the client assertion for private_key_jwt. "
        "Referenceable: use a Kong vault reference; never logged.",
        None, referenceable=True, encrypted=True, match="^%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-",
        err="expected a PEM private key (-----BEGIN PRIVATE KEY-----)",
    )
    introspection_cache_ttl: int = setting(
        "Seconds an active answer is reused (never past the token's `exp`): the longest a "
        "revoked token can still pass. 0 asks Keycloak on every request.",
        30, between=[0, 3600],
    )
    introspection_negative_ttl: int = setting(
        "Seconds an inactive answer is reused, so a replayed revoked token cannot hammer "
        "Keycloak. 0 disables the negative cache.",
        10, between=[0, 3600],
    )
    introspection_failure: str = setting(
        "When introspection fails (Keycloak down, slow, answering garbage): `deny` answers "
        "503 with Retry-After; `local` accepts what local validation accepted.",
        "deny", one_of=["deny", "local"],
    )
    introspection_breaker_seconds: int = setting(
        "After 3 failed introspection calls in a row, fail fast for this many seconds "
        "instead of waiting for a dead Keycloak on every request. 0 disables it.",
        5, between=[0, 300],
    )
    redis: RedisConfig = setting(
        "Optional Redis shared by Kong nodes and plugin server processes for introspection "
        "answers (keyed by token hash, never the token).",
        RedisConfig(),
    )
    consumer_claim: str | None = setting(
        "Claim path whose value names the Kong consumer the request is authenticated as "
        "(e.g. `azp` for one consumer per client, `preferred_username` per user). Empty: no "
        "consumer mapping.",
        None, match_none=_CLAIM_PATH_RULES,
    )
    consumer_match: str = setting(
        "How `consumer_claim` names the consumer: by `username` (an id is tried first) or by "
        "consumer `id` only.",
        "username", one_of=["username", "id"],
    )
    consumer_required: bool = setting(
        "Refuse (403) a valid token whose `consumer_claim` names no Kong consumer. Off: such "
        "requests proceed without a consumer.",
        False,
    )
    anonymous: str | None = setting(
        "Consumer (id or username) a request without a valid token is let through as, Kong's "
        "usual way to make authentication optional. Empty: such requests get 401. As with "
        "Kong's own auth plugins, a request another auth plugin already authenticated is "
        "left to it (logical OR between auth plugins).",
        None,
    )
    run_on_preflight: bool = setting(
        "Authenticate CORS preflight requests (`OPTIONS`) too, as Kong's auth plugins do by "
        "default. Off: they pass unchecked (pair with Kong's cors plugin).",
        True,
    )
    dpop: str = setting(
        "DPoP-bound access tokens (RFC 9449; Keycloak's \"Require DPoP bound tokens\"): `allowed` "
        "takes them as `Authorization: DPoP` with a valid `DPoP` proof on every request, and "
        "unbound tokens as Bearer; `required` takes DPoP-bound tokens only; `off` takes Bearer "
        "tokens only. A DPoP-bound token presented as Bearer is always refused.",
        "allowed", one_of=["off", "allowed", "required"],
    )
    dpop_proof_max_age: int = setting(
        "Seconds a DPoP proof is accepted after its `iat` (plus `leeway`); each proof is accepted "
        "once in that window, across every Kong node when `redis` is set.",
        60, between=[1, 300],
    )
    dpop_nonce: bool = setting(
        "Require server-provided nonces in DPoP proofs (RFC 9449 section 9): a proof without a "
        "current one gets 401 `use_dpop_nonce` with a `DPoP-Nonce` header to retry with. Nonces "
        "change every `dpop_proof_max_age` seconds and are valid on every node that shares "
        "`redis.secret` (without Redis, on the plugin server that issued them).",
        False,
    )
    public_base_url: str | None = setting(
        "The origin clients address this API at (`https://api.example.com`), for the DPoP proof's "
        "`htu`. Empty: the scheme, host and port Kong sees, where `X-Forwarded-Proto`, "
        "`X-Forwarded-Host` and `X-Forwarded-Port` count only from Kong's `trusted_ips`.",
        None, match=ORIGIN, match_none=_ORIGIN_RULES,
    )
    revocation_feed: FeedConfig = setting(
        "The revocation feed: Keycloak's own record of what it does not push (docs/revocation.md "
        "\"Which revocations are seen, and how fast\").",
        FeedConfig(),
    )
    ssf: SignalsConfig = setting(
        "The Shared Signals (SSF/CAEP) receiver: revocations Keycloak's transmitter keeps until "
        "kcauth has recorded them (docs/revocation.md \"Which revocations are seen, and how fast\").",
        SignalsConfig(),
    )
    upstream_assertion: AssertionConfig = setting(
        "An identity the upstream can verify: a gateway-signed JWS beside the claim headers "
        "(docs/upstream-identity.md).",
        AssertionConfig(),
    )
    mode: str = setting(
        "`guard` protects the route. `revocation_receiver` makes the route the endpoint "
        "Keycloak sends back-channel logout tokens and not-before pushes to; every guard of "
        "the same issuer then refuses the revoked sessions' tokens. `assertion_keys` makes the "
        "route publish the public keys of `upstream_assertion` as a JWK Set (GET).",
        "guard", one_of=["guard", "revocation_receiver", "assertion_keys"],
    )
    pass_logout_upstream: bool = setting(
        "Receiver: after recording a valid logout, proxy the request on so the application "
        "behind the route receives its own back-channel logout too.",
        False,
    )
    revocation_ttl: int = setting(
        "Seconds a revoked session or subject is remembered: at least the realm's longest "
        "access-token lifespan, after which its tokens have expired anyway.",
        3600, between=[60, 604800],
    )
    not_before: int | None = setting(
        "Refuse every token issued (`iat`) before this Unix time, like Keycloak's realm "
        "not-before policy. Empty: no operator not-before.",
        None, gt=0,
    )
    log_decision: bool = setting(
        "Hand each request's decision (allowed or refused, the reason, issuer, client, whether "
        "it was remembered) to Kong's log plugins as `kcauth` in the serialized log "
        "(`kong.log.set_serialize_value`). Costs one round trip per request when on.",
        False,
    )

    # Rules between fields, in Kong's schema language: the Admin API, `POST /config` and decK
    # refuse a config breaking one; the plugin checks them again at instance start.
    ENTITY_CHECKS: ClassVar[list[dict[str, Any]]] = [
        conditional("verify_audience", {"eq": True}, "audiences", {"required": True, "len_min": 1},
                    "audiences must name at least one audience while verify_audience is true"),
        conditional("mode", {"eq": "revocation_receiver"}, "verify_audience", {"eq": True},
                    "a revocation receiver always checks the audience of what it receives"),
        conditional("introspect", {"eq": True}, "client_id", {"required": True}),
        conditional_at_least_one_of(
            "introspect", {"eq": True}, ["client_secret", "client_private_key"],
            "introspect needs the client's credentials: at least one of %s"),
        conditional("client_auth_method", {"eq": "private_key_jwt"}, "client_private_key", {"required": True}),
        conditional("client_private_key", {"required": True}, "client_auth_method", {"eq": "private_key_jwt"},
                    "client_private_key is used only with client_auth_method private_key_jwt"),
        conditional("accept_opaque_tokens", {"eq": True}, "introspect", {"eq": True},
                    "accept_opaque_tokens needs introspect: only introspection can judge opaque tokens"),
        conditional("consumer_required", {"eq": True}, "consumer_claim", {"required": True}),
        conditional("redis.host", {"required": True}, "redis.secret", {"required": True}),
        conditional("redis.sentinel_master", {"required": True}, "redis.secret", {"required": True}),
        conditional("redis.cluster_nodes", {"required": True}, "redis.secret", {"required": True}),
        conditional_at_least_one_of(
            "mode", {"one_of": ["guard", "revocation_receiver"]}, ["issuer", "issuers", "issuer_template"],
            "at least one issuer is needed: one of %s"),
        conditional("accept_opaque_tokens", {"eq": True}, "issuer", {"required": True},
                    "opaque tokens name no issuer: accept_opaque_tokens introspects them at `issuer`"),
        conditional("revocation_feed.client_id", {"required": True}, "revocation_feed.client_secret",
                    {"required": True}),
        conditional("revocation_feed.client_id", {"required": True}, "issuer",
                    {"required": True, "match": FEED_ISSUER_PATTERN},
                    "the revocation feed reads the realm of `issuer`, a Keycloak realm issuer "
                    "(.../realms/<name>)"),
        conditional("ssf.delivery", {"eq": "push"}, "mode", {"eq": "revocation_receiver"},
                    "Shared Signals push delivery arrives at a revocation_receiver route: set it on that "
                    "route's kcauth"),
        conditional("ssf.client_id", {"required": True}, "issuer",
                    {"required": True, "match": FEED_ISSUER_PATTERN},
                    "the Shared Signals receiver reads the stream of the realm of `issuer`, a Keycloak realm "
                    "issuer (.../realms/<name>)"),
        conditional("mode", {"eq": "assertion_keys"}, "upstream_assertion.private_key", {"required": True},
                    "an assertion_keys route publishes the public key of upstream_assertion.private_key"),
        conditional("upstream_assertion.audience", {"required": True}, "mode", {"eq": "guard"},
                    "upstream_assertion.audience is set on guard routes (assertion_keys routes publish keys)"),
    ]
    # Introspection credentials whose vault reference gave nothing usable, or a key that cannot
    # sign (`checked`): introspection answers 503 (or falls back, `introspection_failure`) and
    # the rest of the route works; Plugin logs each at instance start.
    unusable: Unusable = unusable_fields()

    @classmethod
    def from_kong(cls, raw: dict[str, Any]) -> Config:
        """Build the typed config from what Kong sends at StartInstance (defaults applied,
        plus Kong's own keys such as `__seq__` and `route_id`, which are ignored)."""
        return load(cls, raw).checked()

    def checked(self) -> Config:
        """What only the plugin can check: the private key itself (one that cannot sign is
        unusable, like a reference that gave nothing), the CA bundle file (refused)."""
        if self.tls_ca_bundle and self.tls_ca_bundle != SYSTEM_CA_STORE:
            try:
                load_ca_bundle(self.tls_ca_bundle)
            except ValueError as exc:
                raise ConfigError(f"config.tls_ca_bundle: {exc}") from None
        self.upstream_assertion_checked()
        if self.client_private_key and self.problem("client_private_key") is None:
            try:
                load_signing_key(self.client_private_key)
            except ValueError as exc:
                return replace(self, unusable=(*self.unusable, ("client_private_key",
                                                                f"config.client_private_key: {exc}")))
        return self

    def upstream_assertion_checked(self) -> None:
        """The assertion's key must sign with its algorithm, and its header be no claim header's:
        refused at instance start (the route then answers 500, closed) rather than proxying
        requests without the identity their upstream verifies."""
        record = self.upstream_assertion
        wanted = record.audience is not None or self.mode == "assertion_keys"
        if not wanted:
            return
        where = "config.upstream_assertion"
        for _, why in record.unusable:
            raise ConfigError(f"{why}: the upstream assertion cannot be signed")
        if record.header in {name.lower() for name in self.claim_headers}:
            raise ConfigError(f"{where}.header: {record.header!r} is already a claim header")
        try:
            load_assertion_key(record.private_key or "", record.algorithm)
        except ValueError as exc:
            raise ConfigError(f"{where}.private_key: {exc}") from None
        for i, pem in enumerate(record.public_keys or (), 1):
            try:
                load_public_key(pem)
            except ValueError as exc:
                raise ConfigError(f"{where}.public_keys.{i}: {exc}") from None

    def problem(self, name: str) -> str | None:
        """Why the field `name` (of this record) cannot be used, or None."""
        return next((why for field, why in self.unusable if field == name), None)

    def problems(self) -> list[str]:
        """Every unusable field of the config, each with what it turns off, for the log."""
        out = [_effect(why, self, "introspection") for _, why in self.unusable]
        for entry in self.issuers or ():
            out += [_effect(why, self.for_issuer(entry.issuer, entry), f"introspection of {entry.issuer}")
                    for _, why in entry.unusable]
        out += [f"{why}: Redis is not used (caches, revocations and DPoP proofs stay in each process)"
                for _, why in self.redis.unusable]
        out += [f"{why}: the revocation feed is off" for _, why in self.revocation_feed.unusable]
        out += [f"{why}: the Shared Signals receiver is off" for record in
                (self.ssf, *(entry.ssf for entry in self.issuers or ())) for _, why in record.unusable]
        return out

    @property
    def client_credentials(self) -> tuple[str, str | None, str | None] | str:
        """(client_auth_method, secret, private key) introspection authenticates with, or why it
        cannot. A client_private_key without a client_secret signs (private_key_jwt) whatever
        the method says: Kong lets that through when the key is a vault reference (it skips the
        rule that pairs them), and it is then the only credential."""
        method, secret, key = self.client_auth_method, self.client_secret or None, self.client_private_key or None
        if method != "private_key_jwt" and secret is None and key is not None and not self.problem("client_secret"):
            method = "private_key_jwt"
        needed = "client_private_key" if method == "private_key_jwt" else "client_secret"
        why = self.problem(needed)
        if why is not None:
            return why
        if (key if method == "private_key_jwt" else secret) is None:
            return f"config.{needed} is needed by client_auth_method {method}"
        return method, secret, key

    def fingerprint(self) -> str:
        """Stable digest of every setting: caches are scoped by it, so an answer computed under
        one configuration is never served under another."""
        return hashlib.sha256(canonical(self).encode()).hexdigest()

    @property
    def the_issuer(self) -> str:
        """The issuer of a config that has one: every per-issuer config (`for_issuer`)."""
        if self.issuer is None:
            raise ValueError("this configuration names no single issuer")
        return self.issuer

    def for_issuer(self, issuer: str, entry: IssuerEntry | None = None, *, discovered: bool = False) -> Config:
        """This config as seen by one of its issuers: the entry's own settings over the
        plugin-level ones. `jwks_uri` and `introspection_endpoint` are never inherited by another
        issuer (they name one realm's endpoints); `discovered` (template realms) drops them."""
        if entry is None and issuer == self.issuer and not discovered:
            return replace(self, issuers=None, issuer_template=None)
        own = entry or IssuerEntry(issuer=issuer)
        unusable = {name: why for name, why in self.unusable if not (name == "client_secret" and own.client_secret)}
        return replace(
            self, issuer=issuer, issuers=None, issuer_template=self.issuer_template if discovered else None,
            revocation_feed=FeedConfig(),  # the feed reads the realm of the plugin-level `issuer` only
            # The entry's own Shared Signals client, delivered as the plugin level's; none for a
            # template realm (its realms come and go with requests: no stream is made for them).
            ssf=replace(self.ssf, client_id=own.ssf.client_id, client_secret=own.ssf.client_secret,
                        unusable=own.ssf.unusable),
            provider_url=own.provider_url or self.provider_url, jwks_uri=own.jwks_uri,
            introspection_endpoint=own.introspection_endpoint, client_id=own.client_id or self.client_id,
            client_secret=own.client_secret if own.client_secret is not None else self.client_secret,
            unusable=tuple({**unusable, **dict(own.unusable)}.items()),
            audiences=self.audiences if own.audiences is None else own.audiences,
            authorized_parties=self.authorized_parties if own.authorized_parties is None else own.authorized_parties,
        )

    @property
    def confined_origin(self) -> str | None:
        """A template realm's config (it keeps `issuer_template`): the one origin its discovered
        endpoints may be at, the template's or `provider_url`."""
        if not self.issuer_template:
            return None
        rewrite = self.provider_rewrite
        if rewrite:
            return rewrite[1]
        parts = urlsplit(self.the_issuer)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def provider_rewrite(self) -> tuple[str, str] | None:
        """(issuer origin, provider origin) when `provider_url` is set."""
        if not self.provider_url:
            return None
        parts = urlsplit(self.the_issuer)
        return f"{parts.scheme}://{parts.netloc}", self.provider_url.rstrip("/")

    @property
    def admin_url(self) -> str:
        """The realm's admin REST base (`<origin>[/<context>]/admin/realms/<name>`), at `provider_url`."""
        head, _, name = self.the_issuer.rstrip("/").rpartition("/realms/")
        return rewrite_origin(f"{head}/admin/realms/{name}", self.provider_rewrite)

    @property
    def discovery_url(self) -> str:
        return rewrite_origin(self.the_issuer.rstrip("/") + "/.well-known/openid-configuration",
                              self.provider_rewrite)


def _effect(why: str, config: Config, what: str) -> str:
    """What an unusable introspection credential turns off under `config`."""
    if not config.introspect:
        return f"{why} (not used: introspect is off)"
    if config.client_credentials != why:
        return f"{why} (not used by client_auth_method {config.client_auth_method})"
    fallback = "answers 503" if config.introspection_failure == "deny" else "is skipped (introspection_failure local)"
    return f"{why}: {what} {fallback}"


def kong_schema() -> list[dict[str, Any]]:
    """The config record's fields."""
    return kong_fields(Config)


def kong_config_record() -> dict[str, Any]:
    """The config record as `kcauth-pluginserver --dump` reports it to Kong: fields and entity checks."""
    return kong_record(Config)

