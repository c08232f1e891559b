"""Optional Prometheus endpoint (``[metrics] listen``).

Counters come from the log events themselves (a structlog processor counts every
event name), so there is one source of truth for "what happened"; gauges are read
from the store at scrape time, under the work lock, and match ``status --json``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inboxd.config import MetricsConfig
from inboxd.event_counts import EVENTS, REGISTRY
from inboxd.intake import status_snapshot
from inboxd.store import Store

__all__ = ["EVENTS", "REGISTRY", "StoreCollector", "registry_for", "serve"]


class StoreCollector(Collector):
    """The store's gauges, read under the work lock at scrape time."""

    def __init__(self, store: Store, clock: Callable[[], float], lock: threading.RLock) -> None:
        self.store = store
        self.clock = clock
        self.lock = lock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.lock:
            snap: dict[str, Any] = status_snapshot(self.store, self.clock())
            last = {k: self.store.get_meta(k) for k in ("last_fetch", "last_send")}
        g = GaugeMetricFamily(
            "inboxd_signals", "Signals not yet deleted, by state", labels=["state"]
        )
        for state, n in sorted(snap["by_state"].items()):
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily(
            "inboxd_open_signals", "Signals not yet deleted", value=float(snap["open"])
        )
        oldest = snap["oldest_open_seconds"]
        yield GaugeMetricFamily(
            "inboxd_oldest_open_seconds", "Age of the oldest open signal", value=float(oldest or 0)
        )
        yield GaugeMetricFamily(
            "inboxd_outbox", "Mails waiting to be sent", value=float(snap["outbox"])
        )
        yield GaugeMetricFamily(
            "inboxd_shred_pending",
            "Deletions committed and not yet shredded (a reader holds the store's log)",
            value=float(snap["shred_pending"]),
        )
        for key, value in last.items():
            yield GaugeMetricFamily(
                f"inboxd_{key}_timestamp_seconds",
                f"Unix time of the {key.replace('_', ' ')}",
                value=float(value or 0),
            )


def registry_for(
    store: Store, clock: Callable[[], float], lock: threading.RLock
) -> CollectorRegistry:
    """The event counters (process-wide) and this store's gauges, in a registry of
    their own: a second app in the same process (tests, a restart) does not collide
    with the first one's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    # Gauges first: they wait for the work lock, so the counters read after them
    # include every event of the cycle the gauges show the end of.
    registry.register(StoreCollector(store, clock, lock))
    registry.register(EVENTS)
    return registry


def serve(
    settings: MetricsConfig | None,
    store: Store,
    clock: Callable[[], float],
    lock: threading.RLock,
) -> threading.Thread | None:
    """The endpoint ``[metrics] listen`` names, if any."""
    if settings is None:
        return None
    host, _, port = settings.listen.rpartition(":")
    _server, thread = start_http_server(
        int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry_for(store, clock, lock)
    )
    return thread
