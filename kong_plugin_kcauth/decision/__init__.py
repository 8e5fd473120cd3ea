"""The decision: what a request gets, the middle of kcauth. Kong is never touched here.

- `guard.py`: `Guard.decide`, the one call per guarded request, sequencing each stage once:
  scheme rules, the token cache, parse, issuer, claim rules then signature, introspection,
  policy and identity, revocations, the DPoP proof;
- `receiver.py`: `Receiver.receive`, the decision on a push from Keycloak (back-channel logout,
  not-before);
- its stages and state: `issuers.py` (which issuer: listed, or template realms within bounds),
  `policy.py` (scopes, roles), `headers.py` (what the upstream receives), `consumers.py` (Kong
  consumers), `proofs.py` (DPoP single use and nonces), `cache.py` (expiring maps, single-flight),
  `assertion.py` (the gateway-signed identity for the upstream, and the JWK Set an
  `assertion_keys` route publishes);
- `wiring.py`: the objects every plugin instance of the process shares, keyed by what they
  depend on (key sets, Redis clients, revocation stores, feeds, one guard per config).

May import: `idp`, `revocation`, `tokens`, `config`, `ops`, `errors`.
"""
