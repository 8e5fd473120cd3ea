"""Kong's plugin protocol: how Kong's MessagePack-RPC reaches the adapter (handler.py), and the
processes that serve it.

- `supervisor.py`: the process Kong starts: binds the socket before anything heavy, forks the
  hub and one worker per nginx worker (or `--workers`), routes each connection by its peer's pid
  (SO_PEERCRED, SCM_RIGHTS), replaces a crashed child at once, and drains on a hand-over;
- `hub.py`: the node's shared state for the workers (what Redis is for a cluster) and the node's
  one metrics endpoint;
- `core.py`: kcauth's own server core, the default: one OS thread on gevent, a greenlet per
  event, Steps on any of Kong's pooled connections, a janitor for events Kong gave up on;
- `bridge.py`: the same guarantees on kong-pdk's server (`--server kong-pdk [-g]`), the
  reference and fallback; the constants both share (what ends an event, the 500 and 503).
Nothing an event carries can drop Kong's connection (Kong would proxy: fail-open).

May import: `config`, `ops`, `errors` (never the decision: it serves any plugin class).
"""
