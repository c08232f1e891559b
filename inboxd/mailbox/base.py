"""The one small interface every mailbox backend implements.

The core never sees an IMAP UID or an EWS item id as such: a backend names each
message with an opaque ``key`` that is stable for as long as the message sits in the
mailbox (IMAP: ``"<uidvalidity>:<uid>"``). The store remembers keys it has queued,
which is what makes a crash between commit and expunge harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from inboxd.logs import get_logger
from inboxd.pace import Beat, rest

log = get_logger(__name__)


class MailboxError(Exception):
    """The mailbox could not be reached or refused us.

    ``auth`` is True when the server refused the credentials (exit 3 in ``check``,
    and no point retrying quickly). ``retry_after`` is how long the server asked
    to be left alone (seconds), when it did. The message must never contain mail
    content.
    """

    def __init__(
        self, reason: str, *, auth: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth = auth
        self.retry_after = retry_after


@dataclass(frozen=True)
class MailboxItem:
    key: str
    # The message as the server has it. A large one may come as a bytearray (fetched
    # in parts into one buffer): treat it as read-only bytes.
    raw: bytes


class Mailbox(Protocol):
    """A folder that signals arrive in. Subclass it explicitly: a backend with
    nothing to report for a member inherits the default here.

    Methods raise :class:`MailboxError` on connection or authentication failures;
    the caller reconnects with backoff by calling :meth:`open` again.
    """

    name: str

    def open(self) -> None:
        """Connect and log in (idempotent: reconnects when the connection is gone)."""

    def close(self) -> None:
        """Log out; never raises."""

    def list_new(self) -> list[str]:
        """Keys of messages not yet listed since :meth:`open`, oldest first.

        The first call after ``open`` lists every message in the folder, so that
        whatever a crash left behind is seen again; later calls cost O(new messages).
        """

    def fetch(self, keys: Sequence[str], *, beat: Beat = rest) -> Iterator[MailboxItem]:
        """The raw bytes of these messages, unchanged; keys that vanished are skipped.

        ``beat`` is called between the requests that bring in one message when a
        backend fetches a large one in parts (IMAP), so that the daemon's watchdog
        is fed while it comes in."""

    def delete(self, keys: Sequence[str]) -> None:
        """Hard-delete exactly these messages (IMAP: ``\\Deleted`` + ``UID EXPUNGE``).

        Keys that are already gone are not an error. Never removes anything else.
        """

    def verify_deleted(self, keys: Sequence[str], message_ids: Sequence[str]) -> list[str]:
        """Where any of these just-deleted messages can still be found: by key, and by
        Message-ID in every folder the account can see. Folder names (IMAP, Maildir)
        or item keys (EWS, Graph); an empty list means nothing visible is left.
        Does not log the outcome: :func:`verify_deletion` does, for every backend."""

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Block until new mail may have arrived, ``timeout`` seconds passed, or
        ``stop`` is set — whichever comes first (IMAP IDLE where offered)."""

    def recoverable_items_reach(self) -> dict[str, str] | None:
        """What ``inboxd check`` reports for Exchange: which parts of Recoverable
        Items (``Deletions``, ``Purges``) this account can look into after a hard
        delete. None for servers that keep no such thing."""
        return None


def verify_deletion(mailbox: Mailbox, keys: Sequence[str], message_ids: Sequence[str]) -> bool:
    """Check that what was just hard-deleted is gone, and say so in the log.

    ``mailbox.delete_verified`` when nothing is found; otherwise a warning
    ``mailbox.delete_unverified`` with where it was found (IMAP folder names; for
    EWS/Graph only the count, their item ids say nothing to an administrator). A
    failure to check is a warning too, never an exception: the delete itself
    happened, and the next delete is checked again.
    """
    if not keys and not message_ids:
        return True
    try:
        found = mailbox.verify_deleted(keys, message_ids)
    except MailboxError as exc:
        log.warning(
            "mailbox.delete_unverified",
            backend=mailbox.name,
            count=len(keys),
            reason="check_failed",
            error=exc.reason[:100],
        )
        return False
    if not found:
        log.info("mailbox.delete_verified", backend=mailbox.name, count=len(keys))
        return True
    named = {"folder": ",".join(sorted(set(found)))} if mailbox.name in ("imap", "maildir") else {}
    log.warning(
        "mailbox.delete_unverified",
        backend=mailbox.name,
        count=len(found),
        reason="found",
        **named,
    )
    return False
