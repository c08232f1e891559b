"""Outgoing mail dropped into local Maildirs, one per recipient (the demo's world)."""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

from inboxd.pace import Beat, rest
from inboxd.transport.base import Envelope, Message, SendError, Transport, joined


def deliver(root: Path, recipient: str, message: bytes) -> Path:
    """Maildir delivery: write to tmp/, fsync, rename into new/."""
    box = root / recipient.lower()
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    name = f"{time.time():.6f}.{os.getpid()}_{secrets.token_hex(6)}.{socket.gethostname()}"
    tmp = box / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, message)
        os.fsync(fd)
    finally:
        os.close(fd)
    final = box / "new" / name
    os.rename(tmp, final)
    return final


class MaildirTransport(Transport):
    name = "maildir"

    def __init__(self, path: str) -> None:
        self.root = Path(path)

    def send(self, envelope: Envelope, message: Message, *, beat: Beat = rest) -> None:
        if "/" in envelope.recipient or envelope.recipient.startswith("."):
            raise SendError("recipient is not a mailbox name", temporary=False)
        try:
            deliver(self.root, envelope.recipient, joined(message))
        except OSError as exc:
            raise SendError(
                f"maildir write failed ({type(exc).__name__})", temporary=True
            ) from None

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SendError(
                f"maildir not writable ({type(exc).__name__})", temporary=False
            ) from None

    def close(self) -> None:
        pass
