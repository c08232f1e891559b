"""Every log event counted by name: a structlog processor (see ``inboxd.logs``) feeds
the counter the Prometheus endpoint (``inboxd.metrics``) serves, so there is one source
of truth for "what happened". At the bottom with logging, which depends on it."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

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
