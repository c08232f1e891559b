"""Optional Prometheus endpoint (``[metrics] listen``).

Counters come from the log events themselves (a structlog processor counts every
event name), so there is one source of truth for "what happened"; gauges are read
from the store at scrape time, under the work lock, and match ``status --json``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from inboxd.app import App

REGISTRY = CollectorRegistry(auto_describe=True)
EVENTS = Counter(
    "inboxd_events",
    "Log events by name (signal.queued, ack.sent, mail.failed, …)",
    ["event"],
    registry=REGISTRY,
)

# Every event name of the code is a dotted constant ("signal.queued", "cycle.failed",
# "transport.error" …): count them all, so failures can be alerted on too. The
# pattern keeps anything else (free text) from becoming a label value.
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}(\.[a-z][a-z0-9_]{0,30}){1,2}")


def count_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    name = event_dict.get("event")
    if isinstance(name, str) and _EVENT_NAME.fullmatch(name):
        EVENTS.labels(event=name).inc()
    return event_dict


class StoreCollector(Collector):
    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from inboxd.intake import status_snapshot

        with self.app.lock:
            snap: dict[str, Any] = status_snapshot(self.app.store, self.app.clock())
            last = {k: self.app.store.get_meta(k) for k in ("last_fetch", "last_send")}
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
        for key, value in last.items():
            yield GaugeMetricFamily(
                f"inboxd_{key}_timestamp_seconds",
                f"Unix time of the {key.replace('_', ' ')}",
                value=float(value or 0),
            )


def registry_for(app: App) -> CollectorRegistry:
    """The event counters (process-wide) and this app's store gauges, in a registry of
    their own: a second app in the same process (tests, a restart) does not collide
    with the first one's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    # Gauges first: they wait for the work lock, so the counters read after them
    # include every event of the cycle the gauges show the end of.
    registry.register(StoreCollector(app))
    registry.register(EVENTS)
    return registry


def serve(app: App) -> threading.Thread | None:
    if app.cfg.metrics is None:
        return None
    host, _, port = app.cfg.metrics.listen.rpartition(":")
    _server, thread = start_http_server(
        int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry_for(app)
    )
    return thread
