"""Revocation state: what every guard consults on every request, and what nodes share.

- `store.py`: `RevocationStore`, one per issuer: ended sessions, signed-out users and realms,
  not-before times; the new sessions a sign-out spares; a few dict lookups per request; with
  Redis, every process learns each record at once (pub/sub) and restores what Redis lost;
- `shared.py`: Redis, a trust boundary: sealed verdicts, MAC'd revocation records, leases; an
  optimisation on the request path, never a dependency;
- `node.py`: without Redis, the same through the node's hub (pluginserver/hub.py), shared by the
  workers of one plugin server.
Writers: the receiver (decision/receiver.py) and the feed (idp/feed.py).

May import: `tokens` (strict JSON, times), `config`, `ops`, `errors`.
"""
