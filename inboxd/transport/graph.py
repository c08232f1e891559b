"""Sending through Microsoft Graph: ``POST /users/{mailbox}/sendMail`` with the MIME
message, base64-encoded, as ``text/plain`` (how Graph takes MIME).

Graph has no envelope: it delivers to the message's own To/Cc/Bcc, so a message
whose headers name anyone but the envelope recipient is refused rather than sent
to people the outbox did not ask for.

A MIME ``sendMail`` always saves a copy in Sent Items (``saveToSentItems`` exists
only for JSON messages), and forwards carry the whole signal. So every send
remembers the Message-ID, and :meth:`GraphTransport.purge_sent` permanently deletes
the copies from Sent Items once Exchange has filed them (it does so after the
202, asynchronously). ``send`` and ``check`` purge what is already there; the
daemon calls ``purge_sent`` every few minutes as well, and
:meth:`GraphTransport.pending_copies` says what is still waiting. What is still
awaited is handed to ``on_pending`` whenever it changes (the app keeps it in the
store), and :meth:`GraphTransport.expect_copies` takes it back after a restart, so
a copy Exchange files after the process ended is deleted by the next one.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterable
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from urllib.parse import quote

from inboxd.logs import get_logger
from inboxd.mailbox.graph import DEFAULT_ENDPOINT, GraphClient, GraphFailure, odata_quote
from inboxd.msauth import TokenSource
from inboxd.throttle import Throttle
from inboxd.transport.base import Envelope, SendError

log = get_logger(__name__)

# Give up looking for a Sent Items copy after this long (and say so in the log).
PURGE_GIVE_UP = 24 * 3600.0
# Copies looked for per purge call, oldest first: a send stays a few requests.
PURGE_BATCH = 20


# A header block bigger than this is not one inboxd wrote.
_MAX_HEADER_BYTES = 256 * 1024


def header_recipients(message: bytes) -> list[str]:
    """The addresses in the message's To, Cc and Bcc headers (lower case).

    Servers without an SMTP envelope (EWS, Graph) deliver to these, so a transport
    there can only honour the envelope when they name exactly its recipient.
    """
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0][:_MAX_HEADER_BYTES]
    # compat32 parses lazily and never raises on odd header values.
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    values = [str(v) for name in ("To", "Cc", "Bcc") for v in (parsed.get_all(name) or [])]
    return [addr.strip().lower() for _name, addr in getaddresses(values) if addr.strip()]


def recipients_match(message: bytes, recipient: str) -> bool:
    found = header_recipients(message)
    return bool(found) and set(found) == {recipient.strip().lower()}


def message_id(message: bytes) -> str | None:
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0][:_MAX_HEADER_BYTES]
    value = BytesHeaderParser(policy=compat32).parsebytes(head).get("Message-ID")
    return str(value).strip() if value else None


class GraphTransport:
    name = "graph"

    def __init__(
        self,
        mailbox: str,
        token: TokenSource,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float = 30.0,
        ca_file: str | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        # ``throttle``: the mailbox's, so that a back-off one of them was given
        # holds for both (it is one account on one service).
        self.client = GraphClient(
            mailbox, token, endpoint=endpoint, timeout=timeout, ca_file=ca_file, throttle=throttle
        )
        self._pending: dict[str, float] = {}  # Message-ID -> when sent (monotonic)
        self.on_pending: Callable[[list[str]], None] | None = None

    def _pending_changed(self) -> None:
        if self.on_pending is None:
            return
        try:
            self.on_pending(list(self._pending))
        except Exception as exc:
            # Losing the list costs at most a copy left in Sent Items after a restart,
            # which is logged as such; never a mail.
            log.warning("transport.purge_state_failed", transport="graph", error=type(exc).__name__)

    def expect_copies(self, message_ids: Iterable[str]) -> None:
        """Copies a previous process was still waiting for: look for them again
        (from now on: the give-up clock restarts)."""
        now = time.monotonic()
        for mid in message_ids:
            self._pending.setdefault(mid, now)

    def __repr__(self) -> str:
        return f"GraphTransport({self.client.host!r})"

    def send(self, envelope: Envelope, message: bytes) -> None:
        if not recipients_match(message, envelope.recipient):
            log.error("transport.refused", transport="graph", reason="recipient-mismatch")
            raise SendError(
                "graph send: the message's To/Cc/Bcc must name exactly the envelope recipient",
                temporary=False,
            )
        mid = message_id(message)
        try:
            self.client.request(
                "POST",
                self.client.url("/sendMail"),
                what="send",
                content=base64.b64encode(message),
                headers={"Content-Type": "text/plain"},
                ok=(202,),
            )
        except GraphFailure as exc:
            log.warning("transport.error", transport="graph", kind="send", error=exc.reason)
            raise SendError(
                f"graph send: {exc.reason}", temporary=exc.temporary, retry_after=exc.retry_after
            ) from None
        log.info("transport.sent", transport="graph", size=len(message))
        if mid:
            self._pending[mid] = time.monotonic()
            self._pending_changed()
        else:
            log.warning("transport.sent_copy_untraceable", transport="graph")
        self.purge_sent()

    def check(self) -> None:
        try:
            # Sent Items is what purge_sent works on: proves token and permission.
            self.client.request(
                "GET", self.client.url("/mailFolders/sentitems?$select=id"), what="check"
            )
        except GraphFailure as exc:
            raise SendError(
                f"graph check: {exc.reason}", temporary=exc.temporary, retry_after=exc.retry_after
            ) from None
        self.purge_sent()

    def pending_copies(self) -> list[str]:
        """Message-IDs whose Sent Items copy has not been deleted yet."""
        return list(self._pending)

    def purge_sent(self, message_ids: Iterable[str] = ()) -> int:
        """Permanently delete the Sent Items copies of what was sent (and of
        ``message_ids``). Never raises; returns how many copies are still awaited."""
        self.expect_copies(message_ids)
        now = time.monotonic()
        before = len(self._pending)
        try:
            self._purge_some(now)
        finally:
            if len(self._pending) != before:
                self._pending_changed()
        return len(self._pending)

    def _purge_some(self, now: float) -> None:
        for mid, since in list(self._pending.items())[:PURGE_BATCH]:
            try:
                found = self._purge_one(mid)
            except GraphFailure as exc:
                log.warning("transport.purge_failed", transport="graph", error=exc.reason)
                break
            except ValueError:
                log.warning("transport.purge_failed", transport="graph", error="ValueError")
                break
            if found:
                del self._pending[mid]
            elif now - since > PURGE_GIVE_UP:
                del self._pending[mid]
                log.error("transport.sent_copy_not_found", transport="graph")

    def _purge_one(self, mid: str) -> bool:
        flt = quote(f"internetMessageId eq {odata_quote(mid)}", safe="")
        resp = self.client.request(
            "GET",
            self.client.url(f"/mailFolders/sentitems/messages?$select=id&$filter={flt}"),
            what="purge",
        )
        ids = [e.get("id") for e in resp.json().get("value", []) if isinstance(e.get("id"), str)]
        for key in ids:
            self.client.request(
                "POST",
                self.client.url(f"/messages/{quote(key, safe='-_=')}/permanentDelete"),
                what="purge",
                ok=(200, 204),
                tolerate=(404,),
            )
        if ids:
            log.info("transport.sent_copy_deleted", transport="graph", count=len(ids))
        return bool(ids)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
