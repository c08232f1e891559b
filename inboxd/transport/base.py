"""The one small interface every outgoing-mail transport implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class SendError(Exception):
    """A mail was not accepted.

    ``temporary`` (SMTP 4xx, connection trouble) means: keep it in the outbox and
    retry later. A permanent refusal (5xx) will not get better by retrying. The
    reason is a short code/summary from the server, never mail content.
    """

    def __init__(self, reason: str, *, temporary: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary


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
