"""Graph's Sent Items copies: a MIME ``sendMail`` always files one, and Exchange may
file it after the send returned. The copies still awaited are kept in the store (our
own Message-IDs, no content) and purged by the scheduler and at shutdown."""

from __future__ import annotations

import json
import threading

from inboxd.logs import get_logger
from inboxd.store import Store
from inboxd.transport.base import SentCopies, Transport

log = get_logger(__name__)


def purge_sent_copies(transport: Transport, lock: threading.RLock) -> int:
    """Delete the Sent Items copies the transport still owes.

    For the daemon's scheduler and the end of ``inboxd once``; a no-op for other
    transports. Never raises; returns how many copies are still awaited.
    """
    try:
        with lock:
            return int(transport.purge_sent())
    except Exception as exc:
        log.warning("transport.purge_failed", transport=transport.name, error=type(exc).__name__)
        return 0


SENT_COPIES_META = "sent_copies_pending"


class StoredSentCopies(SentCopies):
    """The copies still awaited, in the store's meta table as a JSON list."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def load(self) -> list[str]:
        saved = self.store.get_meta(SENT_COPIES_META)
        if not saved:
            return []
        try:
            ids = json.loads(saved)
        except ValueError:
            return []
        return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []

    def save(self, entries: list[str]) -> None:
        self.store.set_meta(SENT_COPIES_META, json.dumps(entries))
