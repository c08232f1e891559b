"""Sending through Microsoft Graph, with the MIME message base64-encoded as
``text/plain`` (how Graph takes MIME).

Graph has no envelope: it delivers to the message's own To/Cc/Bcc, so a message
whose headers name anyone but the envelope recipient is refused rather than sent
to people the outbox did not ask for.

Every message Exchange sends for us is first a message in Drafts and then, once
transport took it, a copy in Sent Items (a MIME send cannot opt out), and forwards
carry the whole signal. Exchange may give that copy another Message-ID, and its
default id changes with every move. So a mail is sent in two steps under an
immutable id (``Prefer: IdType="ImmutableId"``, which stays with the item from
Drafts to Sent Items: https://learn.microsoft.com/en-us/graph/outlook-immutable-id):
``POST /messages`` (the draft, 201 with its id), then ``POST /messages/{id}/send``;
:meth:`GraphTransport.purge_sent` then permanently deletes that item once it is
in Sent Items. Should the id not resolve any more, the Message-ID is looked for
in every folder, Drafts included. ``send`` and ``check`` purge what is already
there; the daemon calls ``purge_sent`` every few minutes as well, and
:meth:`GraphTransport.pending_copies` says what is still waiting. What is still
awaited is saved in the :class:`~inboxd.transport.base.SentCopies` given to
the ``copies`` it was built with whenever it changes (the app keeps it in the
store), which also hands back what an earlier process still awaited, so a copy
Exchange files after the process ended is deleted by the next one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import quopri
import time
from collections.abc import Iterable
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING
from urllib.parse import quote

from inboxd.graph_client import GraphClient, GraphConnection, GraphFailure, odata_quote
from inboxd.logs import get_logger
from inboxd.pace import Beat, rest
from inboxd.tokens import TokenSource
from inboxd.transport.base import Envelope, Message, SendError, SentCopies, Transport, joined
from inboxd.transport.own_headers import MAX_HEADER_BYTES, message_id, refuse_other_recipients

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = get_logger(__name__)

# Give up looking for a Sent Items copy after this long (and say so in the log).
PURGE_GIVE_UP = 24 * 3600.0
# Copies looked for per purge call, oldest first: a send stays a few requests.
PURGE_BATCH = 20


IMMUTABLE = {"Prefer": 'IdType="ImmutableId"'}

# Graph refuses a request body above about 4 MB with a 413 (Microsoft's answer at
# learn.microsoft.com/en-in/answers/questions/1824204); base64 makes that 3 MB of
# MIME. A larger mail goes as a draft of its text, with each large part uploaded
# in an upload session (up to 150 MB each, in ranges of at most 4 MB:
# https://learn.microsoft.com/en-us/graph/api/attachment-createuploadsession).
MAX_REQUEST = 4 * 1024 * 1024
UPLOAD_FROM = 512 * 1024  # parts larger than this are uploaded, not sent inline
UPLOAD_CHUNK = 4 * 1024 * 1024 - 64 * 1024
MAX_UPLOAD = 150 * 1024 * 1024
# Where Graph may point an upload session (besides its own host): the Outlook
# REST hosts of the clouds (https://learn.microsoft.com/en-us/graph/outlook-large-attachments).
UPLOAD_HOSTS = frozenset(
    {"outlook.office.com", "outlook.office365.com", "outlook.office365.us", "outlook.office.de"}
)


def request_size(message: bytes) -> int:
    """Bytes of a MIME request: the message in base64."""
    return 4 * ((len(message) + 2) // 3)


def split_for_upload(message: bytes) -> tuple[bytes, list[tuple[str, str, bytes]]] | None:
    """A multipart message as (the message without its large parts, those parts
    as (file name, content type, content)); None when it cannot be split (one
    part, as an S/MIME-encrypted mail). Works on the bytes: every header and every
    part that stays is sent exactly as it was."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        return None
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head[:MAX_HEADER_BYTES] + b"\r\n\r\n")
    if parsed.get_content_maintype() != "multipart":
        return None
    boundary = parsed.get_boundary()
    if not boundary:
        return None
    delim = b"--" + boundary.encode()
    first = body.find(delim)
    closing = body.rfind(b"\r\n" + delim + b"--")
    if first != 0 and (first < 2 or body[first - 2 : first] != b"\r\n"):
        return None
    if first < 0 or closing < first:
        return None
    chunks = body[first:closing].split(b"\r\n" + delim)
    kept: list[bytes] = []
    files: list[tuple[str, str, bytes]] = []
    for n, chunk in enumerate(chunks):
        part = chunk[len(delim) :] if n == 0 else chunk
        if n == 0 or len(part) <= UPLOAD_FROM:
            kept.append(part)
            continue
        part_head, _, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        info = BytesHeaderParser(policy=compat32).parsebytes(part_head + b"\r\n\r\n")
        cte = str(info.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte == "base64":
            data = base64.b64decode(content)
        elif cte == "quoted-printable":
            data = quopri.decodestring(content)
        else:
            data = content
        ctype = info.get_content_type()
        name = info.get_filename() or (
            "original.eml" if ctype == "message/rfc822" else f"bijlage-{n}"
        )
        files.append((str(name), ctype, data))
    if not files:
        return None
    reduced = (
        head
        + b"\r\n\r\n"
        + body[:first]
        + delim
        + kept[0]
        + b"".join(b"\r\n" + delim + p for p in kept[1:])
        + body[closing:]
    )
    return reduced, files


def pending_entry(immutable_id: str, mid: str | None) -> str:
    """How an awaited copy is remembered: ``"<immutable id> <Message-ID>"`` (ids
    hold no spaces). An entry of a Message-ID alone (``"<…>"``) is one an earlier
    version of inboxd remembered."""
    return f"{immutable_id} {mid or ''}".strip()


def _split_entry(entry: str) -> tuple[str | None, str | None]:
    if entry.startswith("<"):
        return None, entry
    key, _, mid = entry.partition(" ")
    return key, mid or None


class GraphTransport(Transport):
    name = "graph"

    def __init__(
        self,
        mailbox: str,
        token: TokenSource,
        *,
        copies: SentCopies | None = None,
        **connection: Unpack[GraphConnection],
    ) -> None:
        """``copies``: where the Sent Items copies still awaited are kept across
        restarts (the store); what it holds from an earlier run is looked for again.
        ``throttle``: the mailbox's, so that a back-off one of them was given holds
        for both (it is one account on one service)."""
        self.client = GraphClient(mailbox, token, **connection)
        self._pending: dict[str, float] = {}  # pending_entry -> when sent (monotonic)
        self._sent_items_id: str | None = None
        self._copies = copies
        if copies is not None:
            self.expect_copies(copies.load())

    def _pending_changed(self) -> None:
        if self._copies is None:
            return
        try:
            self._copies.save(list(self._pending))
        except Exception as exc:
            # Losing the list costs at most a copy left in Sent Items after a restart,
            # which is logged as such; never a mail.
            log.warning("transport.purge_state_failed", transport="graph", error=type(exc).__name__)

    def expect_copies(self, entries: Iterable[str]) -> None:
        """Copies a previous process was still waiting for: look for them again
        (from now on: the give-up clock restarts)."""
        now = time.monotonic()
        for entry in entries:
            self._pending.setdefault(entry, now)

    def __repr__(self) -> str:
        return f"GraphTransport({self.client.host!r})"

    def _message_url(self, key: str, suffix: str = "") -> str:
        return self.client.url(f"/messages/{quote(key, safe='-_=')}{suffix}")

    def send(self, envelope: Envelope, message: Message, *, beat: Beat = rest) -> None:
        message = joined(message)  # a large mail is split below, from one bytes object
        refuse_other_recipients(message, envelope, "graph")
        mid = message_id(message)
        draft: bytes = message
        files: list[tuple[str, str, bytes]] = []
        if request_size(message) > MAX_REQUEST:
            split = split_for_upload(message)
            if (
                split is None
                or request_size(split[0]) > MAX_REQUEST
                or any(len(data) > MAX_UPLOAD for _n, _t, data in split[1])
            ):
                raise self._too_large(len(message), "no part small enough to send inline")
            draft, files = split
        try:
            resp = self.client.request(
                "POST",
                self.client.url("/messages"),
                what="send",
                content=base64.b64encode(draft),
                headers={"Content-Type": "text/plain", **IMMUTABLE},
                ok=(201,),
            )
            key = resp.json().get("id")
            if not isinstance(key, str) or not key:
                raise GraphFailure("draft without an id", auth=False, temporary=True)
        except (GraphFailure, ValueError, AttributeError) as exc:
            raise self._send_error(exc, len(message)) from None
        # From here a draft holding the mail is in the mailbox: remembered before it
        # is sent, so that it is deleted whatever happens next.
        self._pending[pending_entry(key, mid)] = time.monotonic()
        self._pending_changed()
        try:
            for name, ctype, data in files:
                self._attach(key, name, ctype, data, beat)
            self.client.request(
                "POST", self._message_url(key, "/send"), what="send", headers=IMMUTABLE, ok=(202,)
            )
        except (GraphFailure, ValueError, AttributeError) as exc:
            self._discard_draft(key, mid)
            raise self._send_error(exc, len(message)) from None
        log.info("transport.sent", transport="graph", size=len(message), uploaded=len(files))
        self.purge_sent()

    def _attach(self, key: str, name: str, ctype: str, data: bytes, beat: Beat) -> None:
        """One large part, through an upload session on the draft."""
        item = {"attachmentType": "file", "name": name, "size": len(data), "contentType": ctype}
        resp = self.client.request(
            "POST",
            self._message_url(key, "/attachments/createUploadSession"),
            what="send",
            content=json.dumps({"AttachmentItem": item}).encode(),
            headers={"Content-Type": "application/json", **IMMUTABLE},
            ok=(200, 201),
        )
        url = resp.json().get("uploadUrl")
        if not isinstance(url, str):
            raise GraphFailure("upload session without a URL", auth=False, temporary=True)
        self.client.upload(url, data, chunk=UPLOAD_CHUNK, hosts=UPLOAD_HOSTS, beat=beat)

    @staticmethod
    def _too_large(size: int, why: str) -> SendError:
        mb = max(1, round(size / 1_000_000))
        log.error("transport.too_large", transport="graph", size=size)
        return SendError(f"graph send: message of {mb} MB too large ({why})", temporary=False)

    @classmethod
    def _send_error(cls, exc: Exception, size: int) -> SendError:
        if isinstance(exc, GraphFailure):
            if exc.status == 413 or exc.code == "ErrorMessageSizeExceeded":
                # Refused for its size (the tenant's MaxSendSize, or a request too
                # big): say so, with the size, instead of a bare status code.
                return cls._too_large(size, f"refused: {exc.reason}")
            log.warning("transport.error", transport="graph", kind="send", error=exc.reason)
            return SendError(
                f"graph send: {exc.reason}", temporary=exc.temporary, retry_after=exc.retry_after
            )
        log.warning("transport.error", transport="graph", kind="send", error=type(exc).__name__)
        return SendError(f"graph send: {type(exc).__name__}", temporary=True)

    def _discard_draft(self, key: str, mid: str | None) -> None:
        """The send failed: the draft must not stay behind with the signal in it
        (left pending when even that fails, so that purge_sent finds it)."""
        try:
            self._delete(key)
        except GraphFailure as exc:
            log.warning("transport.purge_failed", transport="graph", error=exc.reason)
            return
        self._pending.pop(pending_entry(key, mid), None)
        self._pending_changed()

    def check(self) -> None:
        try:
            # Sent Items is what purge_sent works on: proves token and permission.
            self._sent_items()
        except GraphFailure as exc:
            raise SendError(
                f"graph check: {exc.reason}", temporary=exc.temporary, retry_after=exc.retry_after
            ) from None
        self.purge_sent()

    def _sent_items(self) -> str:
        if self._sent_items_id is None:
            resp = self.client.request(
                "GET", self.client.url("/mailFolders/sentitems?$select=id"), what="check"
            )
            try:
                folder = resp.json().get("id")
            except (ValueError, AttributeError):
                folder = None
            if not isinstance(folder, str):
                raise GraphFailure("Sent Items without an id", auth=False, temporary=True)
            self._sent_items_id = folder
        return self._sent_items_id

    def pending_copies(self) -> list[str]:
        """Copies not deleted yet (see :func:`pending_entry`)."""
        return list(self._pending)

    def purge_sent(self, entries: Iterable[str] = ()) -> int:
        """Permanently delete the Sent Items copies of what was sent (and of
        ``entries``). Never raises; returns how many copies are still awaited."""
        self.expect_copies(entries)
        now = time.monotonic()
        before = len(self._pending)
        try:
            self._purge_some(now)
        finally:
            if len(self._pending) != before:
                self._pending_changed()
        return len(self._pending)

    def _purge_some(self, now: float) -> None:
        for entry, since in list(self._pending.items())[:PURGE_BATCH]:
            overdue = now - since > PURGE_GIVE_UP
            try:
                done = self._purge_one(entry, overdue)
            except GraphFailure as exc:
                log.warning("transport.purge_failed", transport="graph", error=exc.reason)
                break
            except (ValueError, AttributeError) as exc:
                log.warning("transport.purge_failed", transport="graph", error=type(exc).__name__)
                break
            if done:
                del self._pending[entry]
            elif overdue:
                del self._pending[entry]
                log.error("transport.sent_copy_not_found", transport="graph")

    def _purge_one(self, entry: str, overdue: bool) -> bool:
        """Whether the copy is gone now. A message still on its way (in Drafts or
        the Outbox) is left alone, unless it has been stuck there for a day."""
        key, mid = _split_entry(entry)
        if key is not None:
            resp = self.client.request(
                "GET",
                self._message_url(key, "?$select=id,parentFolderId"),
                what="purge",
                headers=IMMUTABLE,
                tolerate=(404,),
            )
            if resp.status_code != 404:
                where = resp.json().get("parentFolderId")
                if where != self._sent_items() and not overdue:
                    return False  # not sent yet: deleting it now could stop the send
                self._delete(key)
                log.info("transport.sent_copy_deleted", transport="graph", count=1)
                return True
            if mid is None:
                return True  # gone, and nothing else to look for
        assert mid is not None
        # By Message-ID, in every folder (Drafts and Sent Items included).
        flt = quote(f"internetMessageId eq {odata_quote(mid)}", safe="")
        resp = self.client.request(
            "GET",
            self.client.url(f"/messages?$select=id,isDraft&$filter={flt}"),
            what="purge",
            headers=IMMUTABLE,
        )
        found = [e for e in resp.json().get("value", []) if isinstance(e.get("id"), str)]
        ready = [e["id"] for e in found if overdue or not e.get("isDraft")]
        for item in ready:
            self._delete(item)
        if ready:
            log.info("transport.sent_copy_deleted", transport="graph", count=len(ready))
        return bool(ready) and len(ready) == len(found)

    def _delete(self, key: str) -> None:
        self.client.request(
            "POST",
            self._message_url(key, "/permanentDelete"),
            what="purge",
            headers=IMMUTABLE,
            ok=(200, 204),
            tolerate=(404,),
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
