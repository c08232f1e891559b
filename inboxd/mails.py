"""Building outgoing mail: headers we control, bodies from templates, originals
attached byte for byte.

``email.message.EmailMessage`` builds the text parts, so header encoding is right;
every header value is also checked here for CR/LF first, because the Python on
these machines predates the fix for encoded newlines (CVE-2024-6923).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, formatdate

_CRLF = b"\r\n"


class HeaderInjection(ValueError):
    pass


@dataclass(frozen=True)
class Attachment:
    """An original message, attached unchanged as ``message/rfc822``."""

    raw: bytes
    filename: str = "signaal.eml"


@dataclass(frozen=True)
class Mail:
    sender: str  # the From header (may carry a display name)
    to: str
    subject: str
    body: str
    message_id: str
    auto_submitted: str  # "auto-replied" for answers, "auto-generated" otherwise
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = field(default=())
    date: float | None = None


def new_message_id(domain: str) -> str:
    return f"<inboxd.{secrets.token_hex(12)}@{domain}>"


_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")


def is_msg_id(value: str) -> bool:
    """A plain ``<id@host>``: no spaces, no encoded words, nothing to decode."""
    return bool(_MSG_ID.fullmatch(value)) and "=?" not in value


def _controls(text: str) -> bool:
    return any(ord(c) < 32 and c != "\t" for c in text) or "\x7f" in text


def _safe(name: str, value: str) -> str:
    """Refuse a header value that holds, or would decode to, a control character:
    Python 3.11.7 re-serialises an encoded CR/LF as a real header (CVE-2024-6923)."""
    if _controls(value):
        raise HeaderInjection(f"{name} header value holds a control character")
    if "=?" in value:
        try:
            decoded = "".join(
                part.decode(charset or "ascii", "replace") if isinstance(part, bytes) else part
                for part, charset in decode_header(value)
            )
        except (ValueError, LookupError):
            raise HeaderInjection(f"{name} header value has undecodable encoded words") from None
        if _controls(decoded):
            raise HeaderInjection(f"{name} header value encodes a control character")
    if name in ("Message-ID", "In-Reply-To") and not is_msg_id(value):
        raise HeaderInjection(f"{name} is not a plain message id")
    if name == "References" and not all(is_msg_id(v) for v in value.split()):
        raise HeaderInjection("References holds something other than message ids")
    return value


def _crlf(raw: bytes) -> bytes:
    """Line endings as the wire wants them; the content itself is untouched."""
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", _CRLF)


def _attachment_part(att: Attachment) -> bytes:
    data = _crlf(att.raw)
    lines = data.split(_CRLF)
    name = _safe("filename", att.filename).replace('"', "")
    if b"\0" in data or any(len(line) > 998 for line in lines):
        # message/rfc822 may not be base64-encoded (RFC 2046 §5.2.1); an original
        # that cannot travel as 8bit goes as an opaque file instead, still unchanged.
        import base64

        b64 = base64.encodebytes(att.raw).replace(b"\n", _CRLF)
        head = (
            f'Content-Type: application/octet-stream; name="{name}"\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        return head + b64
    cte = "7bit" if data.isascii() else "8bit"
    head = (
        "Content-Type: message/rfc822\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode()
    return head + data + (b"" if data.endswith(_CRLF) else _CRLF)


def _set_headers(msg: EmailMessage, headers: list[tuple[str, str] | None]) -> None:
    for h in headers:
        if h is None:
            continue
        try:
            msg[h[0]] = _safe(h[0], h[1])
        except HeaderInjection:
            raise
        except (ValueError, IndexError, TypeError):
            # The email package's own objections (an encoded CR/LF in a display
            # name, a broken address) mean the same thing here.
            raise HeaderInjection(f"{h[0]} header value is not acceptable") from None


def render(mail: Mail) -> bytes:
    headers: list[tuple[str, str] | None] = [
        ("From", mail.sender),
        ("To", mail.to),
        ("Subject", mail.subject),
        ("Date", format_datetime_ts(mail.date)),
        ("Message-ID", mail.message_id),
        ("Auto-Submitted", mail.auto_submitted),
        ("X-Auto-Response-Suppress", "All"),
        ("Precedence", "bulk") if mail.auto_submitted == "auto-generated" else None,
    ]
    if mail.in_reply_to:
        headers.append(("In-Reply-To", mail.in_reply_to))
    if mail.references:
        headers.append(("References", " ".join(mail.references)))
    text = MIMEPart(policy=policy.SMTP)
    text.set_content(mail.body, charset="utf-8", cte="quoted-printable")
    if not mail.attachments:
        msg = EmailMessage(policy=policy.SMTP)
        _set_headers(msg, headers)
        msg.set_content(mail.body, charset="utf-8", cte="quoted-printable")
        return msg.as_bytes()
    boundary = "inboxd-" + secrets.token_hex(20)
    while any(boundary.encode() in a.raw for a in mail.attachments):
        boundary = "inboxd-" + secrets.token_hex(20)
    head = EmailMessage(policy=policy.SMTP)
    _set_headers(head, headers)
    head["MIME-Version"] = "1.0"
    head["Content-Type"] = f'multipart/mixed; boundary="{boundary}"'
    # Only the header block of ``head``: the body is assembled here so that the
    # originals go out exactly as they came in.
    header_block = head.as_bytes().split(_CRLF + _CRLF, 1)[0] + _CRLF + _CRLF
    out = [header_block, b"--" + boundary.encode() + _CRLF, text.as_bytes()]
    for att in mail.attachments:
        out += [_CRLF + b"--" + boundary.encode() + _CRLF, _attachment_part(att)]
    out.append(_CRLF + b"--" + boundary.encode() + b"--" + _CRLF)
    return b"".join(out)


def format_datetime_ts(ts: float | None) -> str:
    if ts is None:
        return formatdate(time.time(), localtime=False, usegmt=True)
    import datetime as dt

    return format_datetime(dt.datetime.fromtimestamp(ts, dt.UTC), usegmt=True)
