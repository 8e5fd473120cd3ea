"""The identity provider (Keycloak): everything kcauth asks of it.

- `http.py`: outbound HTTP: process-wide sessions, TLS always verified, every body bounded while
  read, discovery (requests-cache);
- `client_auth.py`: how kcauth authenticates as a client (basic, post, private_key_jwt);
- `keys.py`: key sets: fetched, held, rotated, rate-limited; `KeySet.verify` checks a token's
  signature after its claim rules (a refused token costs no download);
- `introspection.py`: RFC 7662, with its caches, breaker and sharing through Redis;
- `events.py` (pure) and `feed.py`: the revocation feed: Keycloak's login and admin events
  turned into revocations, one reader per cluster;
- `signals.py` (pure) and `ssf.py`: the Shared Signals receiver: the realm's stream polled, each
  CAEP event from Keycloak's transmitter recorded as a revocation, then acknowledged;
- `reader.py`: what the background readers share: the realm's lease, the service account's
  token, the reading thread.

May import: `revocation`, `tokens`, `config`, `ops`, `errors`.
"""
