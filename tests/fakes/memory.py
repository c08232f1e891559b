"""In-memory stand-ins for the mailbox and the outgoing-mail transport, for tests
that run inboxd's workflows in the test process: no server, no root, no network.

They implement :class:`inboxd.mailbox.base.Mailbox` and
:class:`inboxd.transport.base.Transport` and nothing more, so what passes against
them is what the protocols promise; the real-server tests show the adapters keep
those promises.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from inboxd.mailbox.base import Mailbox, MailboxItem
from inboxd.pace import Beat, rest
from inboxd.transport.base import Envelope, Message, SendError, Transport, joined


@dataclass
class MemoryMailbox(Mailbox):
    """A folder of raw messages by key. Keys are never reused, as an IMAP UID is not."""

    name: str = "memory"
    messages: dict[str, bytes] = field(default_factory=dict)
    opened: int = 0
    _next: int = 0
    _listed: set[str] = field(default_factory=set)

    def deliver(self, raw: bytes) -> str:
        self._next += 1
        key = f"1:{self._next}"
        self.messages[key] = bytes(raw)
        return key

    def open(self) -> None:
        # As after a reconnect: the first listing sees everything again.
        self.opened += 1
        self._listed.clear()

    def close(self) -> None:
        pass

    def list_new(self) -> list[str]:
        new = [k for k in self.messages if k not in self._listed]
        self._listed.update(new)
        return new

    def fetch(self, keys: Sequence[str], *, beat: Beat = rest) -> Iterator[MailboxItem]:
        for key in keys:
            raw = self.messages.get(key)
            if raw is not None:
                yield MailboxItem(key, raw)

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.messages.pop(key, None)

    def verify_deleted(self, keys: Sequence[str], message_ids: Sequence[str]) -> list[str]:
        return ["INBOX"] if any(k in self.messages for k in keys) else []

    def wait(self, timeout: float, stop: threading.Event) -> None:
        stop.wait(timeout)


@dataclass(frozen=True)
class Sent:
    envelope: Envelope
    raw: bytes


@dataclass
class MemoryTransport(Transport):
    """Records every accepted mail. ``refuse[address]`` makes the next sends to
    ``address`` fail with the given errors, one per send, in order."""

    name: str = "memory"
    sent: list[Sent] = field(default_factory=list)
    refuse: dict[str, list[SendError]] = field(default_factory=dict)
    refused: list[Envelope] = field(default_factory=list)

    def send(self, envelope: Envelope, message: Message, *, beat: Beat = rest) -> None:
        errors = self.refuse.get(envelope.recipient)
        if errors:
            self.refused.append(envelope)
            raise errors.pop(0)
        self.sent.append(Sent(envelope, joined(message)))

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass

    def to(self, address: str) -> list[bytes]:
        """What ``address`` received, oldest first."""
        return [s.raw for s in self.sent if s.envelope.recipient == address]
