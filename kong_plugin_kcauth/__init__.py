"""kcauth: a Kong Gateway plugin that guards APIs with Keycloak access tokens.

The package, from what Kong sees down to what everything stands on. A module imports only from
its own subpackage and from the layers below its own (tests/e2e/test_architecture.py keeps it so,
with no import circle anywhere):

    server.py, handler.py   Kong's side: the command Kong runs, and the adapter (access phase)
    pluginserver/           Kong's plugin protocol (MessagePack-RPC): kcauth's core, kong-pdk's bridge
    decision/               what a request gets: the guard (one call per request), the receiver
    idp/                    the identity provider: HTTP, key sets, introspection, events, the feed
    revocation/             revocation state: the store every guard reads, Redis shared by nodes
    tokens/                 what a token is: strict JSON, JWS, JWK, access, logout and DPoP rules
    config/  ops/  errors   the config, the operator's view (logs, metrics), the refusals

`pluginserver` and `decision` are one layer (neither imports the other); so are `config`, `ops`
and `errors`. Each subpackage's `__init__` is its map.
"""

__version__ = "0.2.0"
