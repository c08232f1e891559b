"""Graph's Sent Items copies: a MIME ``sendMail`` always files one, and Exchange may
file it after the send returned. The copies still awaited are kept in the store (our
own Message-IDs, no content) and purged by the scheduler and at shutdown."""

from __future__ import annotations

import json
import threading

from inboxd.logs import get_logger
from inboxd.store import Store
from inboxd.transport.base import Transport

log = get_logger(__name__)


def purge_sent_copies(transport: Transport, lock: threading.RLock) -> int:
    """Delete the Sent Items copies the transport still owes.

    For the daemon's scheduler and the end of ``inboxd once``; a no-op for other
    transports. Never raises; returns how many copies are still awaited.
    """
    purge = getattr(transport, "purge_sent", None)
    if purge is None:
        return 0
    try:
        with lock:
            return int(purge())
    except Exception as exc:
        log.warning("transport.purge_failed", transport=transport.name, error=type(exc).__name__)
        return 0


SENT_COPIES_META = "sent_copies_pending"


def keep_sent_copies(transport: Transport, store: Store) -> None:
    """Graph: the Sent Items copies still awaited live in the store (our own
    Message-IDs, no content), so a restart goes on looking for them."""
    expect = getattr(transport, "expect_copies", None)
    if expect is None:
        return
    saved = store.get_meta(SENT_COPIES_META)
    if saved:
        try:
            ids = json.loads(saved)
        except ValueError:
            ids = []
        expect([i for i in ids if isinstance(i, str)] if isinstance(ids, list) else [])

    def save(ids: list[str]) -> None:
        store.set_meta(SENT_COPIES_META, json.dumps(ids))

    transport.on_pending = save  # type: ignore[attr-defined]
