"""Building outgoing mail: headers we control, bodies from templates, originals
attached byte for byte.

``email.message.EmailMessage`` builds the text parts, so header encoding is right;
every header value is also checked here for CR/LF first, because the Python on
these machines predates the fix for encoded newlines (CVE-2024-6923).
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from dataclasses import dataclass, field
from email import policy, quoprimime
from email.header import decode_header
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
    """Line endings as the wire wants them; the content itself is untouched. An
    original that has only CRLF already (the usual case) is returned as it is."""
    crlf = raw.count(_CRLF)
    if raw.count(b"\n") == crlf and raw.count(b"\r") == crlf:
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", _CRLF)


# A line longer than RFC 5322 allows (998 octets before the CRLF).
_LONG_LINE = re.compile(rb"(?m)^[^\r\n]{999}")


def _attachment_part(att: Attachment) -> bytes:
    return b"".join(_attachment_pieces(att))


def _attachment_pieces(att: Attachment) -> list[bytes]:
    """The part as pieces, so that a large original is copied once, into the
    finished mail, and not once per step on the way."""
    data = _crlf(att.raw)
    name = _safe("filename", att.filename).replace('"', "")
    if b"\0" in data or _LONG_LINE.search(data):
        # message/rfc822 may not be base64-encoded (RFC 2046 §5.2.1); an original
        # that cannot travel as 8bit goes as an opaque file instead, still unchanged.
        import base64

        b64 = base64.encodebytes(att.raw).replace(b"\n", _CRLF)
        head = (
            f'Content-Type: application/octet-stream; name="{name}"\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        return [head, b64]
    cte = "7bit" if data.isascii() else "8bit"
    head = (
        "Content-Type: message/rfc822\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode()
    return [head, data, b"" if data.endswith(_CRLF) else _CRLF]


_POLICY = policy.SMTP


@functools.lru_cache(maxsize=512)
def _header(name: str, value: str) -> bytes:
    """One header line as the email package folds and encodes it (RFC 2047 for
    non-ASCII, folded at 78). Cached: From, To and most values repeat from mail to
    mail, and the header registry's parsing is most of the cost of a mail."""
    _safe(name, value)
    try:
        folded = _POLICY.header_factory(name, value).fold(policy=_POLICY)
    except (ValueError, IndexError, TypeError):
        # The email package's own objections (an encoded CR/LF in a display name, a
        # broken address) mean the same thing here.
        raise HeaderInjection(f"{name} header value is not acceptable") from None
    try:
        return str(folded).encode("ascii")
    except UnicodeEncodeError:
        raise HeaderInjection(f"{name} header value is not acceptable") from None


def _plain_header(name: str, value: str) -> bytes:
    """A header whose value inboxd made and checked to be short plain ASCII (a
    Message-ID it generated, a date): no parsing, no folding needed."""
    _safe(name, value)
    return f"{name}: {value}\r\n".encode("ascii")


def _date(ts: float) -> str:
    import datetime as dt

    return format_datetime(dt.datetime.fromtimestamp(int(ts), dt.UTC))


def _text_part(body: str) -> tuple[bytes, bytes]:
    """(content headers, quoted-printable body) exactly as ``set_content(body,
    charset="utf-8", cte="quoted-printable")`` writes them, without building a
    message object."""
    lines = body.encode("utf-8").splitlines()
    normal = (b"\n".join(lines) + b"\n").decode("latin-1")
    encoded = quoprimime.body_encode(normal, _POLICY.max_line_length or 78)
    head = (
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n"
    )
    return head, encoded.replace("\n", "\r\n").encode("ascii")


def _headers(mail: Mail) -> list[bytes]:
    out = [
        _header("From", mail.sender),
        _header("To", mail.to),
        _header("Subject", mail.subject),
        # As the header registry writes a date: numeric zone, not "GMT".
        _plain_header("Date", _date(time.time() if mail.date is None else mail.date)),
        _plain_header("Message-ID", mail.message_id)
        if len(mail.message_id) < 60
        else _header("Message-ID", mail.message_id),
        _header("Auto-Submitted", mail.auto_submitted),
        b"X-Auto-Response-Suppress: All\r\n",
    ]
    if mail.auto_submitted == "auto-generated":
        out.append(b"Precedence: bulk\r\n")
    if mail.in_reply_to:
        out.append(_header("In-Reply-To", mail.in_reply_to))
    if mail.references:
        out.append(_header("References", " ".join(mail.references)))
    return out


def render(mail: Mail) -> bytes:
    return b"".join(render_pieces(mail))


def render_pieces(mail: Mail) -> list[bytes]:
    """The mail as pieces whose concatenation is :func:`render`'s result. An
    original that needs no line-ending repair is one of the pieces itself, not a
    copy: a transport that sends pieces never holds a large original twice."""
    headers = _headers(mail)
    text_head, text_body = _text_part(mail.body)
    if not mail.attachments:
        return [b"".join([*headers, text_head, b"MIME-Version: 1.0\r\n\r\n", text_body])]
    boundary = "inboxd-" + secrets.token_hex(20)
    while any(boundary.encode() in a.raw for a in mail.attachments):
        boundary = "inboxd-" + secrets.token_hex(20)
    delimiter = b"--" + boundary.encode()
    out = [
        *headers,
        b"MIME-Version: 1.0\r\n",
        _header("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
        b"\r\n",
        delimiter + _CRLF,
        text_head,
        b"\r\n",
        text_body,
    ]
    # The originals go out exactly as they came in.
    for att in mail.attachments:
        out += [_CRLF + delimiter + _CRLF, *_attachment_pieces(att)]
    out.append(_CRLF + delimiter + b"--" + _CRLF)
    return out


def format_datetime_ts(ts: float | None) -> str:
    if ts is None:
        return formatdate(time.time(), localtime=False, usegmt=True)
    import datetime as dt

    return format_datetime(dt.datetime.fromtimestamp(ts, dt.UTC), usegmt=True)
