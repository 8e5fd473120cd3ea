"""The operator's view: what an operator sees of kcauth, and nothing the request depends on.

- `logs.py`: lines once per change of state (a dependency failing, recovering), also in Kong's
  own log, carried by requests; a config's own lines name its plugins (`Owners`) and wait for a
  request of theirs; throttled lines for what can repeat per request.
- `metrics.py`: Prometheus metrics (`--metrics`), a no-op unless turned on.
- `tracing.py`: OpenTelemetry spans of the outbound calls (the identity provider's, Redis's),
  joined to the request's `traceparent`; off, and never imported, unless an OTLP endpoint is set.

May import: nothing of kcauth (the bottom layer, with config and errors).
"""
