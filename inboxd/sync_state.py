"""The incremental sync of the Microsoft backends: its state (Graph's delta link,
EWS's sync state) in a small file under ``state_dir``, written atomically, read back
only when it belongs to the same mailbox and folder (no mail content: an opaque
server token and the scope it belongs to); and what a listing plus a sync round
make new (:func:`fresh_items`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from inboxd.logs import get_logger
from inboxd.mailbox.base import MailboxError

log = get_logger(__name__)

R = TypeVar("R")


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state(path: str | None, scope: dict[str, str]) -> str | None:
    """The stored state, if the file exists and belongs to this mailbox and folder."""
    if not path:
        return None
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("mailbox.state_unreadable", backend=scope.get("backend"))
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("scope") != scope
        or not isinstance(doc.get("state"), str)
    ):
        log.warning("mailbox.state_ignored", backend=scope.get("backend"))
        return None
    return str(doc["state"])


def store_state(path: str | None, scope: dict[str, str], state: str) -> None:
    if path:
        write_atomically(path, json.dumps({"version": 1, "scope": scope, "state": state}).encode())


def keep_state(path: str | None, scope: dict[str, str], state: str, what: str) -> None:
    """:func:`store_state` for a listing: a state that cannot be written fails the
    listing (:class:`MailboxError` "<backend>: cannot write <what>"), so that what
    it found is listed again next time rather than lost."""
    try:
        store_state(path, scope, state)
    except OSError as exc:
        backend = scope.get("backend")
        log.error("mailbox.state_write_failed", backend=backend, error=type(exc).__name__)
        raise MailboxError(f"{backend}: cannot write {what}") from None


def fresh_items(
    present: Iterable[tuple[str, R]],
    changes: Iterable[tuple[bool, str, R]],
    seen: set[str],
) -> tuple[dict[str, R], set[str]]:
    """What to list now: the items of a full listing ``present`` (key, received)
    and of a sync round's ``changes`` (removed, key, received) that are not in
    ``seen`` (listed before), each once with its received time; and the keys the
    round removed, which the caller forgets (an item that comes back is new)."""
    fresh: dict[str, R] = {}
    for key, received in present:
        if key not in seen:
            fresh.setdefault(key, received)
    removed: set[str] = set()
    for gone, key, received in changes:
        if gone:
            fresh.pop(key, None)
            removed.add(key)
        elif key not in seen or key in removed:
            fresh.setdefault(key, received)
    return fresh, removed
