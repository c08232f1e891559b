"""The one small interface every outgoing-mail transport implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# A message as bytes, or as pieces whose concatenation is the message: a transport
# with ``takes_pieces = True`` accepts the latter, so a large original attached to a
# mail is sent from the very bytes object it was read into, never copied whole.
Message = bytes | Sequence[bytes]


def pieces_of(message: Message) -> Sequence[bytes]:
    return (message,) if isinstance(message, bytes) else message


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


class Transport(Protocol):
    name: str

    def send(self, envelope: Envelope, message: bytes) -> None:
        """Deliver ``message`` to ``envelope.recipient``; return only once the server
        accepted it. Raises :class:`SendError`. Keeps its connection open between
        calls (reconnecting when needed) so that a batch costs one login."""

    def check(self) -> None:
        """Connect (and log in where credentials are configured), send nothing.
        Raises :class:`SendError`."""

    def close(self) -> None:
        """Quit the connection; never raises."""
