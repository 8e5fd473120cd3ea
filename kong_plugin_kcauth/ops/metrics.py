"""Prometheus metrics of the plugin server, with the well-kept prometheus_client library.

Off unless the plugin server runs with `--metrics HOST:PORT`: then `/metrics` is served there
(keep it on loopback or a private network). Off, every hook below is a method that does nothing
(`METRICS` is the no-op `Metrics`), so nothing is counted or allocated on the request path.

Per request: one counter by decision and reason, and token cache hits. Per introspection call,
and per read of the revocation feed: a latency histogram by outcome; the feed's revocations by
cause. Read at scrape time only (no request cost): the age of every key set, dependency health
(logs.health), live events of the server core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any


class Metrics:
    """The hooks the plugin calls; this base class is the no-op used while metrics are off."""

    def decision(self, issuer: str, allowed: bool, reason: str) -> None:
        pass

    def cache(self, issuer: str, hit: bool) -> None:
        pass

    def introspection(self, issuer: str, outcome: str, seconds: float) -> None:
        pass

    def feed_read(self, issuer: str, outcome: str, seconds: float) -> None:
        pass

    def feed_revocation(self, issuer: str, cause: str) -> None:
        pass


METRICS: Metrics = Metrics()


class _Prometheus(Metrics):
    def __init__(self, registry: Any, key_sets: Callable[[], Iterator[Any]], events: Callable[[], int],
                 node: bool = False) -> None:
        from prometheus_client import Counter, Histogram
        from prometheus_client.core import GaugeMetricFamily

        self._decisions = Counter("kcauth_requests", "Guarded requests by decision and reason (refusal class).",
                                  ["issuer", "decision", "reason"], registry=registry)
        self._cache = Counter("kcauth_token_cache", "Token outcome cache lookups.", ["issuer", "result"],
                              registry=registry)
        self._introspection = Histogram(
            "kcauth_introspection_seconds", "Introspection calls to the identity provider, by outcome.",
            ["issuer", "outcome"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self._feed_reads = Histogram(
            "kcauth_feed_read_seconds", "Reads of Keycloak's events by the revocation feed, by outcome.",
            ["issuer", "outcome"], registry=registry, buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30))
        self._feed_revocations = Counter(
            "kcauth_feed_revocations", "Revocations the revocation feed recorded, by what happened.",
            ["issuer", "cause"], registry=registry)

        if node:
            _watch(key_sets, events, registry)
            return

        class Scraped:
            def collect(self) -> Iterator[Any]:
                from . import logs

                age = GaugeMetricFamily("kcauth_jwks_age_seconds", "Seconds since each key set was last "
                                        "downloaded successfully.", labels=["issuer"])
                now = time.monotonic()
                for keys in key_sets():
                    if keys.fetched_at is not None:
                        age.add_metric([keys.source.issuer], now - keys.fetched_at)
                yield age
                down = GaugeMetricFamily("kcauth_dependency_down", "1 for each dependency whose last "
                                         "state was a failure (see Kong's error log).", labels=["component"])
                for component in logs.health.down():
                    down.add_metric([component], 1)
                yield down
                yield GaugeMetricFamily("kcauth_events_running", "Events whose handler is running.",
                                        value=events())

        registry.register(Scraped())

    def decision(self, issuer: str, allowed: bool, reason: str) -> None:
        self._decisions.labels(issuer, "allowed" if allowed else "refused", reason).inc()

    def cache(self, issuer: str, hit: bool) -> None:
        self._cache.labels(issuer, "hit" if hit else "miss").inc()

    def introspection(self, issuer: str, outcome: str, seconds: float) -> None:
        self._introspection.labels(issuer, outcome).observe(seconds)

    def feed_read(self, issuer: str, outcome: str, seconds: float) -> None:
        self._feed_reads.labels(issuer, outcome).observe(seconds)

    def feed_revocation(self, issuer: str, cause: str) -> None:
        self._feed_revocations.labels(issuer, cause).inc()


def serve(address: str, events: Callable[[], int], key_sets: Callable[[], Iterator[Any]]) -> None:
    """Turn metrics on and serve them at http://address/metrics; `events` and `key_sets` are
    read at scrape time (the server core's live events, the process's key sets)."""
    global METRICS
    from prometheus_client import CollectorRegistry, start_http_server

    host, _, port = address.rpartition(":")
    registry = CollectorRegistry()
    METRICS = _Prometheus(registry, key_sets, events)
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)


def record_for_node(events: Callable[[], int], key_sets: Callable[[], Iterator[Any]]) -> None:
    """A worker of a supervised plugin server (pluginserver/supervisor.py): every worker records
    into the directory of prometheus_client's multiprocess mode, and the hub serves the node's
    sum at `--metrics` (pluginserver/hub.py)."""
    global METRICS
    from prometheus_client import CollectorRegistry

    METRICS = _Prometheus(CollectorRegistry(), key_sets, events, node=True)


def _watch(key_sets: Callable[[], Iterator[Any]], events: Callable[[], int], registry: Any) -> None:
    """What one process reads at scrape time, set every second instead, as gauges the node's
    endpoint combines: the stalest key set, a dependency down in any worker, every worker's
    running events."""
    import threading

    from prometheus_client import Gauge

    from . import logs

    age = Gauge("kcauth_jwks_age_seconds", "Seconds since each key set was last downloaded successfully "
                "(the stalest worker's).", ["issuer"], registry=registry, multiprocess_mode="max")
    down = Gauge("kcauth_dependency_down", "1 for each dependency whose last state was a failure in some "
                 "worker (see Kong's error log).", ["component"], registry=registry, multiprocess_mode="max")
    running = Gauge("kcauth_events_running", "Events whose handler is running.", registry=registry,
                    multiprocess_mode="livesum")

    def update() -> None:
        seen: set[str] = set()
        while True:
            now = time.monotonic()
            for keys in key_sets():
                if keys.fetched_at is not None:
                    age.labels(keys.source.issuer).set(now - keys.fetched_at)
            failing = set(logs.health.down())
            for component in seen | failing:
                down.labels(component).set(1 if component in failing else 0)
            seen |= failing
            running.set(events())
            time.sleep(1.0)

    threading.Thread(target=update, daemon=True, name="kcauth-metrics").start()
