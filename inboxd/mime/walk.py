"""The MIME structure of a message, found in the raw bytes: what each part is, which
text parts may be the body text, how many attachments, report parts and the ids
they report.

Boundary lines are searched with ``bytes.find`` (no copies); the walk is iterative,
with caps on depth, parts, bytes scanned and header lines read. Attachment bodies
are never decoded; an attached message in base64 or quoted-printable is, up to
EMBEDDED_DECODE_MAX bytes over the whole walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inboxd.mime.bodies import cte_chunks
from inboxd.mime.defects import Defects
from inboxd.mime.field_values import CType, content_type, first_token, params
from inboxd.mime.headers import (
    PART_HEADER_MAX,
    WALK_MAX_LINES,
    Headers,
    LineBudget,
    read_headers,
)
from inboxd.mime.message_ids import original_ids, read_message_id

MAX_DEPTH = 50
# Boundary searches re-scan nested bodies: their total is bounded (~0.4 s at 40 MB).
SCAN_FACTOR = 16
SCAN_FLOOR = 64 << 20
MAX_PARTS = 500
EMBEDDED_DECODE_MAX = 4 << 20  # base64/QP message/rfc822 bytes decoded, in all
REPORT_FIELDS_MAX = 64 << 10

_REPORT_PARTS = frozenset(
    {"message/delivery-status", "message/disposition-notification", "message/feedback-report"}
    | {"message/global-delivery-status", "message/global-disposition-notification"}
)
# The header section of an original, as bounces attach it.
_HEADER_PARTS = frozenset({"text/rfc822-headers", "text/global-headers"})
_SIGNATURE_PARTS = frozenset(
    {"application/pkcs7-signature", "application/x-pkcs7-signature"}
    | {"application/pgp-signature", "application/pgp-encrypted"}
)
# Parts that carry structure, not content: not counted as attachments.
_STRUCTURAL = _REPORT_PARTS | _HEADER_PARTS | _SIGNATURE_PARTS
_EMBEDDED_TYPES = frozenset({"message/rfc822", "message/global"})


@dataclass(frozen=True)
class Entity:
    buf: bytes
    headers: Headers
    body_start: int
    body_end: int
    depth: int
    embedded: bool  # inside an attached message
    default_type: str = "text/plain"


@dataclass(frozen=True)
class TextRef:
    buf: bytes
    start: int
    end: int
    cte: str
    charset: str | None
    is_html: bool
    flowed: bool = False
    delsp: bool = False


# Rank of a text part as the body text: the first non-empty of the lowest rank wins.
_RANK_PLAIN, RANK_HTML, _RANK_EMBEDDED_PLAIN, _RANK_EMBEDDED_HTML, _RANK_NAMED = range(5)
MAX_TEXT_CANDIDATES = 32


@dataclass
class Walk:
    """What the walk found (mutable accumulator of the imperative walk)."""

    parts: int = 0
    attachments: int = 0
    # Body text candidates in document order, with their rank (see _note_leaf).
    texts: list[tuple[int, TextRef]] = field(default_factory=list)
    report_type: str | None = None
    report_part: bool = False
    reported: list[str] = field(default_factory=list)
    budget: int = 0  # bytes that boundary searches may still scan
    lines: LineBudget = field(default_factory=lambda: LineBudget(WALK_MAX_LINES))
    decode_left: int = EMBEDDED_DECODE_MAX  # bytes of encoded attached messages to decode


def _disposition(headers: Headers, defects: Defects) -> tuple[str, bool]:
    value = headers.first("content-disposition")
    has_name = False
    kind = ""
    if value is not None:
        kind = first_token(value)
        has_name = any(k in ("filename", "name") for k, _ in params(value, defects))
    return kind, has_name


def _cte(headers: Headers, defects: Defects) -> str:
    value = headers.once("content-transfer-encoding", defects)
    if value is None:
        return "7bit"
    cte = first_token(value)
    if cte not in ("7bit", "8bit", "binary", "base64", "quoted-printable"):
        defects.add("unknown-transfer-encoding")
    return cte


def _split_multipart(
    buf: bytes, start: int, end: int, boundary: bytes
) -> tuple[list[tuple[int, int]], bool]:
    """Spans of the body parts between boundary lines, and whether it was closed.

    A boundary line is ``--boundary`` at the start of a line, optionally ``--``,
    optional spaces/tabs, then the line end (RFC 2046; as the email package).
    """
    delim = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while True:
        i = buf.find(delim, pos, end)
        if i < 0:
            break
        if i > start and buf[i - 1] not in (10, 13):
            pos = i + 1
            continue
        j = i + len(delim)
        closing = buf.startswith(b"--", j, end)
        if closing:
            j += 2
        while j < end and buf[j] in (32, 9):
            j += 1
        if j < end and buf[j] not in (10, 13):
            pos = i + 1  # "--boundaryX": a longer boundary, or text
            continue
        if j < end:
            j += 2 if buf.startswith(b"\r\n", j, end) else 1
        if part_start is not None:
            pe = i
            if pe > part_start and buf[pe - 1] == 10:
                pe -= 1
            if pe > part_start and buf[pe - 1] == 13:
                pe -= 1
            spans.append((part_start, pe))
            if len(spans) >= MAX_PARTS:
                return spans, closing
        if closing:
            return spans, True
        part_start = j
        pos = j
    if part_start is not None:
        spans.append((part_start, end))
    return spans, False


def walk_parts(top: Entity, defects: Defects) -> Walk:
    w = Walk(budget=SCAN_FACTOR * len(top.buf) + SCAN_FLOOR)
    stack: list[Entity] = [top]
    while stack:
        ent = stack.pop()
        w.parts += 1
        if w.parts > MAX_PARTS:
            defects.add("too-many-parts")
            break
        try:
            children = _visit(ent, w, defects)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken part must not stop the walk
            defects.add(f"error:part:{type(exc).__name__}")
            children = []
        stack.extend(reversed(children))
    return w


def _visit(ent: Entity, w: Walk, defects: Defects) -> list[Entity]:
    """Note what this entity is; return its children (parts, or the attached message)."""
    h = ent.headers
    ct = content_type(h.once("content-type", defects), ent.default_type, defects)
    kind, has_name = _disposition(h, defects)
    cte = _cte(h, defects)

    if ct.maintype == "multipart":
        children = _multipart_children(ent, ct, w, defects)
        if children is not None:
            return children
        ct = CType("text", "plain", ct.params)  # unsplittable: read it as text

    if ct.type in _EMBEDDED_TYPES:
        if not ent.embedded:
            w.attachments += 1
        return _embedded_child(ent, cte, w, defects)
    if ct.type in _REPORT_PARTS:
        _note_report_part(ent, w)
    elif ct.type in _HEADER_PARTS:
        _note_headers_part(ent, w)
    else:
        _note_leaf(ent, ct, cte, kind == "attachment", has_name, w)
    return []


def _note_report_part(ent: Entity, w: Walk) -> None:
    """A delivery or disposition report: the mail is a report, it names the original."""
    if ent.embedded:
        return
    w.report_part = True
    fields = ent.buf[ent.body_start : min(ent.body_end, ent.body_start + REPORT_FIELDS_MAX)]
    w.reported.extend(original_ids(fields))


def _note_headers_part(ent: Entity, w: Walk) -> None:
    """The header section of the original, as a bounce attaches it: its Message-ID."""
    if ent.embedded:
        return
    inner, _ = read_headers(
        ent.buf, ent.body_start, ent.body_end, PART_HEADER_MAX, Defects(), budget=w.lines
    )
    mid = read_message_id(inner, Defects())
    if mid:
        w.reported.append(mid)


def _note_leaf(ent: Entity, ct: CType, cte: str, attachment: bool, has_name: bool, w: Walk) -> None:
    """A part with content: a candidate for the body text, an attachment, or both
    (a text shown inline under a file name)."""
    outside = not ent.embedded
    named = attachment or has_name or ct.param("name") is not None
    if ct.type in ("text/plain", "text/html") and len(w.texts) < MAX_TEXT_CANDIDATES:
        ref = _text_ref(ent, ct, cte)
        if not named:
            rank = (RANK_HTML if ref.is_html else _RANK_PLAIN) + (0 if outside else 2)
            w.texts.append((rank, ref))
            return
        if outside and not attachment:
            # "inline; filename=msg.txt": shown inline by MUAs; a last resort.
            w.texts.append((_RANK_NAMED, ref))
    if outside and ct.type not in _STRUCTURAL:
        w.attachments += 1


def _text_ref(ent: Entity, ct: CType, cte: str) -> TextRef:
    is_html = ct.subtype == "html"
    return TextRef(
        ent.buf,
        ent.body_start,
        ent.body_end,
        cte,
        ct.param("charset"),
        is_html,
        flowed=not is_html and (ct.param("format") or "").lower() == "flowed",
        delsp=(ct.param("delsp") or "").lower() == "yes",
    )


def _multipart_children(ent: Entity, ct: CType, w: Walk, defects: Defects) -> list[Entity] | None:
    """The parts of a multipart entity, or None when it cannot be split."""
    boundary = ct.param("boundary")
    if not boundary or len(boundary) > 1000:
        defects.add("multipart-without-boundary")
        return None
    if ct.subtype == "report" and not ent.embedded and w.report_type is None:
        w.report_type = first_token(ct.param("report-type") or "")[:64] or None
    w.budget -= ent.body_end - ent.body_start
    if w.budget < 0:
        defects.add("scan-budget-exhausted")
        return []
    spans, closed = _split_multipart(
        ent.buf, ent.body_start, ent.body_end, boundary.encode("utf-8", "replace")
    )
    if not spans:
        defects.add("boundary-not-found")
        return None
    if not closed:
        defects.add("missing-close-delimiter")
    if ent.depth + 1 > MAX_DEPTH:
        defects.add("too-deep")
        return []
    default = "message/rfc822" if ct.subtype == "digest" else "text/plain"
    children: list[Entity] = []
    for s, e in spans:
        headers, body = read_headers(ent.buf, s, e, PART_HEADER_MAX, defects, budget=w.lines)
        children.append(Entity(ent.buf, headers, body, e, ent.depth + 1, ent.embedded, default))
    return children


def _embedded_child(ent: Entity, cte: str, w: Walk, defects: Defects) -> list[Entity]:
    if ent.depth + 1 > MAX_DEPTH:
        defects.add("too-deep")
        return []
    buf, start, end = ent.buf, ent.body_start, ent.body_end
    if cte in ("base64", "quoted-printable"):
        defects.add("encoded-message-part")
        # Decoding copies: the total over the walk is bounded, not each one.
        if end - start > w.decode_left:
            return []
        w.decode_left -= end - start
        buf = b"".join(cte_chunks(buf, start, end, cte))
        start, end = 0, len(buf)
    headers, body = read_headers(buf, start, end, PART_HEADER_MAX, defects, budget=w.lines)
    if not ent.embedded:
        mid = read_message_id(headers, Defects())
        if mid:
            w.reported.append(mid)
    return [Entity(buf, headers, body, end, ent.depth + 1, True)]
