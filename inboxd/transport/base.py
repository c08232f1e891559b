"""The one small interface every outgoing-mail transport implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from inboxd.pace import Beat, rest

# A message as bytes, or as pieces whose concatenation is the message: a transport
# with ``takes_pieces = True`` accepts the latter, so a large original attached to a
# mail is sent from the very bytes object it was read into, never copied whole.
Message = bytes | Sequence[bytes]


def pieces_of(message: Message) -> Sequence[bytes]:
    return (message,) if isinstance(message, bytes) else message


def joined(message: Message) -> bytes:
    """The message as one bytes object (for a transport without ``takes_pieces``)."""
    return message if isinstance(message, bytes) else b"".join(message)


def message_size(message: Message) -> int:
    return sum(len(p) for p in pieces_of(message))


class SendError(Exception):
    """A mail was not accepted.

    ``temporary`` (SMTP 4xx, connection trouble) means: keep it in the outbox and
    retry later. A permanent refusal (5xx) will not get better by retrying. The
    reason is a short code/summary from the server, never mail content.
    ``retry_after``: how long the server asked to be left alone, when it did.
    """

    def __init__(self, reason: str, *, temporary: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary
        self.retry_after = retry_after


@dataclass(frozen=True)
class Envelope:
    sender: str  # envelope MAIL FROM (may be "" for a null sender)
    recipient: str  # exactly one: the outbox keeps one row per recipient


class SentCopies(Protocol):
    """Where a transport keeps the copies of sent mail it still has to delete (its
    own entries, no mail content), so that a restart goes on looking for them."""

    def load(self) -> list[str]:
        """What the last process left awaited; [] when nothing (or nothing readable)."""

    def save(self, entries: list[str]) -> None:
        """Remember ``entries`` as all that is awaited now."""


class Transport(Protocol):
    """Outgoing mail. Subclass it explicitly: a transport with nothing to do for a
    member (no size limit, no copies of sent mail) inherits the default here."""

    name: str
    # Whether :meth:`send` takes a message as pieces without joining them first.
    takes_pieces: bool = False

    def send(self, envelope: Envelope, message: Message, *, beat: Beat = rest) -> None:
        """Deliver ``message`` to ``envelope.recipient``; return only once the server
        accepted it. Raises :class:`SendError`. Keeps its connection open between
        calls (reconnecting when needed) so that a batch costs one login. A
        transport without ``takes_pieces`` is given bytes only (pieces it joins).

        ``beat`` is called between the pieces a large message is written in and
        while the server takes its time to answer them (SMTP, Graph's upload), so
        that the daemon's watchdog is fed while it goes out."""

    def check(self) -> None:
        """Connect (and log in where credentials are configured), send nothing.
        Raises :class:`SendError`."""

    def close(self) -> None:
        """Quit the connection; never raises."""

    def size_limit(self) -> int | None:
        """The largest message the server takes, None when it names none. Raises
        :class:`SendError` when the server cannot be asked."""
        return None

    def purge_sent(self) -> int:
        """Delete the copies of sent mail the server filed; returns how many are
        still awaited. Never raises."""
        return 0

    def pending_copies(self) -> list[str]:
        """The copies of sent mail still awaited (a transport that files them is
        given a :class:`SentCopies` to keep them in when it is built)."""
        return []
