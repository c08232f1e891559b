"""What a transport without an SMTP envelope (EWS, Graph) reads from the headers of
a message inboxd wrote: the recipients Exchange will deliver to, and the
Message-ID. Such a server takes the recipients from the message's own To, Cc and
Bcc, so a transport there can honour the envelope only when they name exactly its
recipient; a message that names anyone else is refused rather than sent to people
the outbox did not ask for."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from inboxd.logs import get_logger
from inboxd.transport.base import Envelope, SendError

log = get_logger(__name__)

# A header block bigger than this is not one inboxd wrote.
MAX_HEADER_BYTES = 256 * 1024


def _headers(message: bytes) -> Message:
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0][:MAX_HEADER_BYTES]
    # compat32 parses lazily and never raises on odd header values.
    return BytesHeaderParser(policy=compat32).parsebytes(head)


def header_recipients(message: bytes) -> list[str]:
    """The addresses in the message's To, Cc and Bcc headers (lower case)."""
    parsed = _headers(message)
    values = [str(v) for name in ("To", "Cc", "Bcc") for v in (parsed.get_all(name) or [])]
    return [addr.strip().lower() for _name, addr in getaddresses(values) if addr.strip()]


def recipients_match(message: bytes, recipient: str) -> bool:
    found = header_recipients(message)
    return bool(found) and set(found) == {recipient.strip().lower()}


def refuse_other_recipients(message: bytes, envelope: Envelope, transport: str) -> None:
    """Raise a permanent :class:`SendError` unless the message's To/Cc/Bcc name
    exactly the envelope recipient."""
    if not recipients_match(message, envelope.recipient):
        log.error("transport.refused", transport=transport, reason="recipient-mismatch")
        raise SendError(
            f"{transport} send: the message's To/Cc/Bcc must name exactly the envelope recipient",
            temporary=False,
        )


def message_id(message: bytes) -> str | None:
    value = _headers(message).get("Message-ID")
    return str(value).strip() if value else None
