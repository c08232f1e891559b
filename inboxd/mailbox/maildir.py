"""A local Maildir as the signals mailbox (local delivery, and the demo)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from inboxd.logs import get_logger
from inboxd.mailbox.base import Mailbox, MailboxError, MailboxItem
from inboxd.pace import Beat, rest

log = get_logger(__name__)


def _key(name: str) -> str:
    return name.split(":", 1)[0]


class MaildirMailbox(Mailbox):
    name = "maildir"

    def __init__(self, path: str, poll_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._listed: set[str] | None = None

    def _files(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for sub in ("new", "cur"):
            d = self.path / sub
            try:
                names = os.listdir(d)
            except OSError as exc:
                raise MailboxError(f"cannot read maildir ({type(exc).__name__})") from None
            for n in names:
                if not n.startswith("."):
                    out[_key(n)] = d / n
        return out

    def open(self) -> None:
        if self._listed is not None:
            return  # already open: like a live connection, keep what was listed
        for sub in ("new", "cur", "tmp"):
            if not (self.path / sub).is_dir():
                raise MailboxError(f"{self.path} is not a Maildir (no {sub}/)")
        self._listed = set()
        log.info("mailbox.connected", backend=self.name)

    def close(self) -> None:
        self._listed = None

    def list_new(self) -> list[str]:
        if self._listed is None:
            self.open()
        assert self._listed is not None
        files = self._files()
        new = [k for k in files if k not in self._listed]
        # Oldest first: Maildir names start with the delivery time.
        new.sort(key=lambda k: (files[k].stat().st_mtime if files[k].exists() else 0, k))
        self._listed.update(new)
        return new

    def fetch(self, keys: Sequence[str], *, beat: Beat = rest) -> Iterator[MailboxItem]:
        files = self._files()
        for k in keys:
            p = files.get(k)
            if p is None:
                continue
            try:
                yield MailboxItem(k, p.read_bytes())
            except FileNotFoundError:
                continue

    def delete(self, keys: Sequence[str]) -> None:
        files = self._files()
        gone = 0
        for k in keys:
            p = files.get(k)
            if p is None:
                continue
            try:
                p.unlink()
                gone += 1
            except FileNotFoundError:
                pass
        for sub in ("new", "cur"):
            fd = os.open(self.path / sub, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if gone:
            log.info("mailbox.expunged", backend=self.name, count=gone)

    def verify_deleted(self, keys: Sequence[str], message_ids: Sequence[str]) -> list[str]:
        """A Maildir has no other folders inboxd can see and no server-side copies:
        the file under ``new/`` or ``cur/`` is the message. ``message_ids`` are not
        needed (a redelivered copy would carry a new key and be taken in again)."""
        files = self._files()
        return sorted({files[k].parent.name for k in keys if k in files})

    def wait(self, timeout: float, stop: threading.Event) -> None:
        stop.wait(min(timeout, self.poll_interval))
