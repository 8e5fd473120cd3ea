"""Kong's plugin protocol: how Kong's MessagePack-RPC reaches the adapter (handler.py).

- `core.py`: kcauth's own server core, the default: one OS thread on gevent, a greenlet per
  event, Steps on any of Kong's pooled connections, a janitor for events Kong gave up on;
- `bridge.py`: the same guarantees on kong-pdk's server (`--server kong-pdk [-g]`), the
  reference and fallback; the constants both share (what ends an event, the 500 and 503).
Nothing an event carries can drop Kong's connection (Kong would proxy: fail-open).

May import: `config`, `ops`, `errors` (never the decision: it serves any plugin class).
"""
