"""Raw mail bytes → plain, bounded, safe data (:class:`ParsedMessage`).

Every message the mailbox holds passes through :func:`parse_message`, whatever it
is: a careful Outlook mail, a bounce, a spam torture test. It never raises (only
``MemoryError`` may propagate), never hangs and never copies a large body, and it
says ``malformed`` instead of giving up, so a broken signal is queued and flagged,
never dropped. The raw bytes are stored unchanged elsewhere; this is only a reading.

Why not ``email.message_from_bytes``: on 3.11 it materialises every body line
(> 2x the message in memory), some headers take seconds (20,000 addresses: 14 s),
~970 nested parts raise ``RecursionError`` and lazily parsed header values raise
``IndexError``/``AttributeError``/``ValueError`` on access. So the reading here is
our own and small:

* headers are read from the bytes up to the first blank line, with caps on the
  section size, the number of fields and each value; values are decoded UTF-8 then
  Latin-1 (:mod:`inboxd.mime.headers`); Subject encoded-words are decoded by a
  linear decoder (:mod:`inboxd.mime.charsets`);
* the MIME structure is found by searching the raw bytes for boundary lines
  (``bytes.find``: no copies), walking iteratively with caps on depth, parts and
  bytes scanned; attachment bodies are never decoded (:mod:`inboxd.mime.walk`);
* only the chosen text/plain and text/html parts are decoded, incrementally,
  and only up to :data:`TEXT_MAX` characters; HTML is laid out by inscriptis up to
  ``HTML_RENDER_MAX`` characters, the rest is tag-stripped (:mod:`inboxd.mime.bodies`).

This module puts the pieces together; each piece of :mod:`inboxd.mime` and
:mod:`inboxd.auto_rules` is pure and bounded on its own.

``text``: the first non-empty text/plain part that is not an attachment, else the
first such text/html part rendered, else the same inside an attached message (a
forward with no words of its own), else an inline part with a file name. CRLF/CR
become LF; other control characters become spaces. ``attachment_count`` counts
leaves with ``Content-Disposition: attachment`` or a file name, attached messages,
and non-text leaves, except signatures and report parts; what is inside an attached
message is not counted again.

``auto`` is the OR of the small named rules of :mod:`inboxd.auto_rules`, which lists
them; the codes in ``auto_reasons`` are stable.

``reported_message_ids`` is filled only when ``auto``: the Message-ID of attached
``message/rfc822`` parts and ``text/rfc822-headers`` parts (not inside another
attached message), ``Original-Message-ID``/``X-Original-Message-ID`` fields of
report parts, ``Message-ID:`` lines quoted in the first 256 KB of the text (text
bounces such as qmail/Exim), then the message's own In-Reply-To and References.

``defects`` holds stable codes, never content: ``error:<stage>:<ExceptionType>``
for anything unexpected, the others listed in :data:`MINOR_DEFECTS` and in the
code. ``malformed`` is true when a defect outside :data:`MINOR_DEFECTS` occurred.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inboxd.addresses import parse_single_address
from inboxd.auto_rules import WEAK_AUTO_REASONS, Facts, auto_reasons, is_null_path
from inboxd.mime.bodies import TEXT_MAX, decode_part, render_html
from inboxd.mime.charsets import decode_encoded_words
from inboxd.mime.defects import Defects, guard
from inboxd.mime.field_values import WHITESPACE, content_type, first_token
from inboxd.mime.headers import HEADER_SECTION_MAX, Headers, read_headers
from inboxd.mime.message_ids import id_list, quoted_ids, read_message_id
from inboxd.mime.walk import RANK_HTML, Entity, TextRef, Walk, walk_parts

# What callers use; the rest lives in the modules above.
__all__ = [
    "MINOR_DEFECTS",
    "TEXT_MAX",
    "WEAK_AUTO_REASONS",
    "ParsedMessage",
    "parse_message",
    "unreadable",
]

SUBJECT_SOURCE_MAX = 16 << 10  # chars of the raw Subject decoded
SUBJECT_MAX = 998
FROM_MAX = 2048
AUTH_RESULTS_MAX = 20
AUTH_RESULT_LEN = 4096
MAX_REPORTED = 50

MINOR_DEFECTS = frozenset(
    {
        "bom",  # UTF-8 byte order mark before the headers
        "8bit-header",  # raw UTF-8 in a header (RFC 6532): legal
        "field-truncated",
        "message-id-unbracketed",
        "text-truncated",
        "html-truncated",
        "html-render-partial",
        "decode-replaced",  # some bytes did not fit the declared charset
        "unknown-transfer-encoding",
        "mbox-from-line",
        "mixed-line-endings",  # LF and CRLF lines in one header section
    }
)


@dataclass(frozen=True)
class ParsedMessage:
    size: int
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    from_addr: str | None
    return_path_null: bool
    subject: str
    text: str
    html: str | None
    attachment_count: int
    auto: bool
    auto_reasons: tuple[str, ...]
    report_type: str | None
    reported_message_ids: tuple[str, ...]
    authentication_results: tuple[str, ...]
    auto_submitted: str | None
    malformed: bool
    defects: tuple[str, ...]
    # ``text`` came from a text/plain part with format=flowed (RFC 3676): its soft
    # line breaks are not the writer's; reading commands must join them first.
    text_flowed: bool = False
    text_delsp: bool = False
    # Exchange's X-MS-Exchange-Organization-AuthAs values (sender evidence).
    exchange_auth_as: tuple[str, ...] = ()
    # ``text`` is a rendering of the HTML part (there was no text/plain to read).
    text_from_html: bool = False


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _one_line(text: str, limit: int) -> str:
    """Every control character (CR, LF, NUL, C1, U+2028, …) becomes a space."""
    return _CONTROLS.sub(" ", text)[:limit]


def _subject(headers: Headers, defects: Defects) -> str:
    value = headers.once("subject", defects)
    if value is None:
        return ""
    raw = value[:SUBJECT_SOURCE_MAX]
    decoded = decode_encoded_words(_one_line(raw, SUBJECT_SOURCE_MAX), defects)
    return _one_line(decoded, SUBJECT_MAX).strip()


def _from(headers: Headers, defects: Defects) -> str | None:
    values = headers.all("from")
    if not values:
        return None
    if len(values) > 1:
        # Not Headers.once: a repeated From names no one sender, so none is read.
        defects.add("duplicate-from")
        return None
    if len(values[0]) > FROM_MAX:
        defects.add("from-too-long")
        return None
    addr = parse_single_address(values[0])
    if addr is None:
        defects.add("from-unusable")
    return addr


def _auth_results(headers: Headers) -> tuple[str, ...]:
    # A cut field could end inside an address and name another one: a field too long
    # to keep whole is kept as nothing, which no reader takes for evidence.
    return tuple(
        WHITESPACE.sub(" ", _one_line(v, AUTH_RESULT_LEN)).strip()
        if len(v) <= AUTH_RESULT_LEN
        else ""
        for v in headers.all("authentication-results")[:AUTH_RESULTS_MAX]
    )


def _exchange_auth_as(headers: Headers) -> tuple[str, ...]:
    return tuple(
        _one_line(v, 64).strip()
        for v in headers.all("x-ms-exchange-organization-authas")[:AUTH_RESULTS_MAX]
    )


def _auto_submitted(headers: Headers) -> str | None:
    value = headers.first("auto-submitted")
    if value is None:
        return None
    return _one_line(first_token(value), 64)


def _texts(w: Walk, defects: Defects) -> tuple[str, str | None, TextRef | None]:
    """(text, html, where text came from): the first non-empty text of the best
    rank, and the raw html."""
    decoded: dict[int, str] = {}

    def decode(ref: TextRef) -> str:
        if id(ref) not in decoded:
            # One undecodable part must not cost the others.
            body, cut = guard(
                defects,
                "decode",
                ("", False),
                lambda: decode_part(ref.buf, ref.start, ref.end, ref.cte, ref.charset, defects),
            )
            if cut:
                defects.add("html-truncated" if ref.is_html else "text-truncated")
            decoded[id(ref)] = body
        return decoded[id(ref)]

    html: str | None = None
    for rank, ref in w.texts:
        if rank == RANK_HTML:
            html = decode(ref)
            if html.strip():
                break
    for _rank, ref in sorted(w.texts, key=lambda rt: rt[0]):
        body = decode(ref)
        if not body.strip():
            continue
        return (render_html(body, defects) if ref.is_html else body), html, ref
    return "", html, None


def _unique(items: list[str], limit: int) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))[:limit]


_NONE: tuple[str, ...] = ()
_NO_TEXT: tuple[str, str | None, TextRef | None] = ("", None, None)
_BOM = b"\xef\xbb\xbf"


def _top_headers(raw: bytes, d: Defects) -> tuple[Headers, int]:
    """The message's header section, after a byte order mark if there is one."""
    start = 0
    if raw.startswith(_BOM):
        d.add("bom")
        start = len(_BOM)
    headers, body_start = guard(
        d,
        "headers",
        (Headers(), len(raw)),
        lambda: read_headers(raw, start, len(raw), HEADER_SECTION_MAX, d, top=True),
    )
    if not headers.fields:
        d.add("no-headers")
    return headers, body_start


def _automatic(
    h: Headers, walk: Walk, from_addr: str | None, subject: str, d: Defects
) -> tuple[str, ...]:
    """The codes of the auto rules that hold (the walk has counted the Content-Type's
    defects already)."""
    top_type = guard(
        d,
        "content-type",
        "text/plain",
        lambda: content_type(h.first("content-type"), "text/plain", Defects()).type,
    )
    facts = Facts(h, top_type, walk.report_part, from_addr, subject)
    return guard(d, "auto", _NONE, lambda: auto_reasons(facts))


def _reported(
    walk: Walk, text: str, in_reply_to: tuple[str, ...], references: tuple[str, ...], d: Defects
) -> tuple[str, ...]:
    """The Message-IDs an automatic mail answers, most telling first (see the module doc)."""
    return guard(
        d,
        "reported",
        _NONE,
        lambda: _unique(
            [*walk.reported, *quoted_ids(text), *in_reply_to, *references[::-1]], MAX_REPORTED
        ),
    )


def _parse(raw: bytes) -> ParsedMessage:
    d = Defects()
    h, body_start = _top_headers(raw, d)
    message_id = guard(d, "message-id", None, lambda: read_message_id(h, d))
    in_reply_to = guard(d, "in-reply-to", _NONE, lambda: id_list(h, "in-reply-to"))
    references = guard(d, "references", _NONE, lambda: id_list(h, "references"))
    from_addr = guard(d, "from", None, lambda: _from(h, d))
    subject = guard(d, "subject", "", lambda: _subject(h, d))
    auth = guard(d, "authentication-results", _NONE, lambda: _auth_results(h))
    auth_as = guard(d, "authas", _NONE, lambda: _exchange_auth_as(h))
    auto_submitted = guard(d, "auto-submitted", None, lambda: _auto_submitted(h))
    null_rp = guard(d, "return-path", False, lambda: is_null_path(h.first("return-path")))

    top = Entity(raw, h, body_start, len(raw), 0, False)
    walk = guard(d, "mime", Walk(), lambda: walk_parts(top, d))
    text, html, text_ref = guard(d, "text", _NO_TEXT, lambda: _texts(walk, d))
    reasons = _automatic(h, walk, from_addr, subject, d)
    reported = _reported(walk, text, in_reply_to, references, d) if reasons else _NONE
    return ParsedMessage(
        size=len(raw),
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        from_addr=from_addr,
        return_path_null=null_rp,
        subject=subject,
        text=text,
        html=html,
        attachment_count=walk.attachments,
        auto=bool(reasons),
        auto_reasons=reasons,
        report_type=walk.report_type,
        reported_message_ids=reported,
        authentication_results=auth,
        auto_submitted=auto_submitted,
        malformed=any(c not in MINOR_DEFECTS for c in d.codes),
        defects=tuple(d.codes),
        text_flowed=text_ref is not None and text_ref.flowed,
        text_delsp=text_ref is not None and text_ref.delsp,
        exchange_auth_as=auth_as,
        text_from_html=text_ref is not None and text_ref.is_html,
    )


def parse_message(raw: bytes) -> ParsedMessage:
    """Read one raw message; never raises (except MemoryError). See the module doc."""
    try:
        data = raw if type(raw) is bytes else bytes(raw)
        return _parse(data)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - last line of defence, never drop a signal
        size = len(raw) if isinstance(raw, bytes | bytearray | memoryview) else 0
        return unreadable(size, f"error:parse:{type(exc).__name__}")


def unreadable(size: int, defect: str) -> ParsedMessage:
    """What is known of a message nothing could be read from: its size."""
    return ParsedMessage(
        size=size,
        message_id=None,
        in_reply_to=(),
        references=(),
        from_addr=None,
        return_path_null=False,
        subject="",
        text="",
        html=None,
        attachment_count=0,
        auto=False,
        auto_reasons=(),
        report_type=None,
        reported_message_ids=(),
        authentication_results=(),
        auto_submitted=None,
        malformed=True,
        defects=(defect,),
    )
