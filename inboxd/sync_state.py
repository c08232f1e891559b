"""The incremental-sync state of the Microsoft backends (Graph's delta link, EWS's
sync state) in a small file under ``state_dir``: written atomically, read back only
when it belongs to the same mailbox and folder. No mail content: an opaque server
token and the scope it belongs to."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from inboxd.logs import get_logger

log = get_logger(__name__)


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
