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
  Latin-1; Subject encoded-words are decoded by a linear decoder;
* the MIME structure is found by searching the raw bytes for boundary lines
  (``bytes.find``: no copies), walking iteratively with caps on depth, parts and
  bytes scanned; attachment bodies are never decoded;
* only the chosen text/plain and text/html parts are decoded, incrementally,
  and only up to :data:`TEXT_MAX` characters; HTML is laid out by inscriptis up to
  :data:`HTML_RENDER_MAX` characters, the rest is tag-stripped.

``text``: the first non-empty text/plain part that is not an attachment, else the
first such text/html part rendered, else the same inside an attached message (a
forward with no words of its own), else an inline part with a file name. CRLF/CR
become LF; other control characters become spaces. ``attachment_count`` counts
leaves with ``Content-Disposition: attachment`` or a file name, attached messages,
and non-text leaves, except signatures and report parts; what is inside an attached
message is not counted again.

``auto`` (docs/contract.md, "The life of a signal", step 3) is the OR of small named predicates (``AUTO_RULES``); the codes
in ``auto_reasons`` are stable:

==========================  ===================================================
``auto-submitted``          ``Auto-Submitted`` present and not ``no`` (RFC 3834;
                            an empty value counts)
``report``                  top-level ``multipart/report`` (DSN, MDN, ARF, …)
``report-part``             a ``message/delivery-status``, ``…/disposition-
                            notification`` or ``…/feedback-report`` part that is
                            not inside an attached message
``x-autoreply``             ``X-Autoreply`` present and not no/false/0
``x-autorespond``           ``X-Autorespond`` or ``X-Autoresponder``, likewise
``precedence``              ``Precedence: bulk|junk|list|auto_reply``
``list-id``                 ``List-Id`` present
``null-return-path``        ``Return-Path: <>`` (the topmost one) or
                            ``X-Envelope-From: <>``
``mailer-daemon``           Return-Path or From local part ``mailer-daemon``
``x-failed-recipients``     ``X-Failed-Recipients`` (Exim, Gmail bounces)
``exchange-ndr``            ``X-MS-Exchange-Message-Is-Ndr`` present
``inbox-rules-loop``        ``X-MS-Exchange-Inbox-Rules-Loop``: sent by an Exchange
                            inbox rule (rule replies, auto-forwards)
``apple-vacation``          ``X-Apple-Action: vacation`` (iCloud vacation reply)
==========================  ===================================================

Not markers: ``X-Auto-Response-Suppress`` (Outlook and inboxd itself put it on
ordinary mail; it asks others not to auto-reply, it does not say this mail is
one) and ``List-Unsubscribe`` (the contract names ``List-Id``; a human reply to an ack
wrongly taken as automatic would be deleted as an auto-answer).

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

import binascii
import codecs
import html as html_lib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import unquote

from inscriptis import get_text

from inboxd.addresses import parse_single_address

# --- limits -------------------------------------------------------------------
HEADER_SECTION_MAX = 1 << 20  # bytes of the top-level header section kept
PART_HEADER_MAX = 64 << 10  # bytes of a MIME part's header section kept
MAX_FIELDS = 1000  # header fields kept per section
TOP_MAX_LINES = 10_000  # header lines read in the top-level section
PART_MAX_LINES = 1_000  # header lines read in one MIME part's section
WALK_MAX_LINES = 100_000  # header lines read in all MIME parts together
FIELD_MAX = 64 << 10  # bytes kept of one (unfolded) field value
SUBJECT_SOURCE_MAX = 16 << 10  # chars of the raw Subject decoded
SUBJECT_MAX = 998
FROM_MAX = 2048
IDS_SOURCE_MAX = 64 << 10  # chars of In-Reply-To/References read (head + tail)
MAX_IDS = 200
MSGID_MAX = 250  # chars between the angle brackets
AUTH_RESULTS_MAX = 20
AUTH_RESULT_LEN = 4096
PARAMS_SOURCE_MAX = 8192  # chars of Content-Type/-Disposition parsed
MAX_DEPTH = 50
# Boundary searches re-scan nested bodies: their total is bounded (~0.4 s at 40 MB).
SCAN_FACTOR = 16
SCAN_FLOOR = 64 << 20
MAX_PARTS = 500
TEXT_MAX = 1_000_000  # chars of text and of html
HTML_RENDER_MAX = 256 << 10  # chars of HTML laid out by inscriptis (see _render_html)
TEXT_SOURCE_MAX = 8 << 20  # encoded bytes of one text part read at most
CHUNK = 256 << 10
EMBEDDED_DECODE_MAX = 4 << 20  # base64/QP message/rfc822 bytes decoded, in all
REPORT_FIELDS_MAX = 64 << 10
BODY_ID_SCAN = 256 << 10
MAX_REPORTED = 50
MAX_DEFECTS = 50

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


# --- defects and guards ---------------------------------------------------------

T = TypeVar("T")


class _Defects:
    """Ordered, unique, bounded list of codes."""

    def __init__(self) -> None:
        self.codes: list[str] = []

    def add(self, code: str) -> None:
        if code not in self.codes and len(self.codes) < MAX_DEFECTS:
            self.codes.append(code)


def _guard(defects: _Defects, stage: str, default: T, fn: Callable[[], T]) -> T:
    """Run one stage; an unexpected exception becomes a defect, never a crash."""
    try:
        return fn()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract is "never raise"
        defects.add(f"error:{stage}:{type(exc).__name__}")
        return default


# --- text helpers ----------------------------------------------------------------

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_BODY_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NEWLINES = re.compile(r"\r\n|\r")
_WS_RUN = re.compile(r"\s+")
# cp1252 leaves these undefined; Latin-1 gives them a (C1) code point.
_CP1252_HOLES = frozenset({0x81, 0x8D, 0x8F, 0x90, 0x9D})


def _cp1252_fallback(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler: bytes that are not UTF-8 are read as Windows-1252."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    text = "".join(chr(b) if b in _CP1252_HOLES else bytes([b]).decode("cp1252") for b in bad)
    return text, exc.end


_FALLBACK = "inboxd-cp1252"
codecs.register_error(_FALLBACK, _cp1252_fallback)


def _one_line(text: str, limit: int) -> str:
    """Every control character (CR, LF, NUL, C1, U+2028, …) becomes a space."""
    return _CONTROLS.sub(" ", text)[:limit]


# --- header section ----------------------------------------------------------------

_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|)")
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def _blank_line_end(buf: bytes, start: int, end: int) -> int:
    """Where the first blank line in ``buf[start:end]`` ends, or ``end``.

    ``bytes.find`` rather than a regex: it runs at memory speed on large bodies.
    """
    best = end
    for sep in (b"\n\n", b"\n\r\n", b"\r\r"):
        i = buf.find(sep, start, best)
        if i >= 0 and i + len(sep) <= best:
            best = i + len(sep)
    return best


@dataclass(frozen=True)
class _Headers:
    fields: tuple[tuple[str, str], ...] = ()

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k == name]

    def first(self, name: str) -> str | None:
        for k, v in self.fields:
            if k == name:
                return v
        return None

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self.fields)


def _decode_field(raw: bytes, defects: _Defects) -> str:
    if raw.isascii():
        text = raw.decode("ascii")
    else:
        try:
            text = raw.decode("utf-8")
            defects.add("8bit-header")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
            defects.add("8bit-header-invalid")
    if "\x00" in text:
        defects.add("nul-in-header")
    return text.strip(" \t")


@dataclass
class _LineBudget:
    """Header lines that may still be read (shared by all sections of one walk)."""

    left: int


def _read_headers(
    buf: bytes,
    start: int,
    end: int,
    limit: int,
    defects: _Defects,
    *,
    top: bool = False,
    budget: _LineBudget | None = None,
) -> tuple[_Headers, int]:
    """The header fields of the entity at ``buf[start:end]`` and where its body starts.

    Unfolds continuation lines (the line break is dropped, the whitespace kept).
    A line that is neither a field nor a continuation ends the section (it is the
    first body line), as in the email package. At most ``limit`` bytes and
    TOP_MAX_LINES/PART_MAX_LINES lines are read (a line costs a Python loop turn,
    so lines are bounded, not only bytes); the rest of a larger section is skipped.
    """
    lines = budget if budget is not None else _LineBudget(WALK_MAX_LINES)
    max_lines = min(TOP_MAX_LINES if top else PART_MAX_LINES, lines.left)
    fields: list[tuple[str, str]] = []
    stop = min(end, start + limit)
    pos = start
    name: str | None = None
    value: list[bytes] = []
    size = 0
    first_line = True

    def flush() -> None:
        if name is None:
            return
        if len(fields) >= MAX_FIELDS:
            defects.add("too-many-fields")
            return
        fields.append((name, _decode_field(b"".join(value), defects)))

    body_start = end
    eols: set[bytes] = set()
    while True:
        if pos >= end:
            break
        m = None if max_lines <= 0 else _LINE.match(buf, pos, stop)
        max_lines -= 1
        lines.left -= 1
        if m is None or (not m.group(2) and m.end() < end):
            # The section is larger than we read: keep what we have and find the
            # blank line without keeping anything more.
            defects.add("header-section-too-large")
            # From two bytes back: an empty line right at ``pos`` counts too.
            body_start = _blank_line_end(buf, max(start, pos - 2), end)
            break
        content = m.group(1)
        if m.group(2):
            eols.add(m.group(2))
        if not content:
            body_start = m.end()
            break
        if content[:1] in (b" ", b"\t"):
            if name is None:
                defects.add("leading-continuation")
            elif size < FIELD_MAX:
                piece = content[: FIELD_MAX - size]
                value.append(piece)
                size += len(piece)
                if len(piece) < len(content):
                    defects.add("field-truncated")
        elif first_line and top and content.startswith(b"From "):
            defects.add("mbox-from-line")
        else:
            fm = _FIELD.match(content)
            if fm is None:
                defects.add("missing-header-body-separator")
                body_start = pos
                break
            flush()
            name = fm.group(1).decode("ascii").lower()
            piece = content[fm.end() : fm.end() + FIELD_MAX]
            value = [piece]
            size = len(piece)
            if len(piece) < len(content) - fm.end():
                defects.add("field-truncated")
        first_line = False
        pos = m.end()
    flush()
    if len(eols) > 1:
        # A lone CR among CRLF lines is how a "Subject: x\rBcc: y" injection looks.
        defects.add("bare-cr" if b"\r" in eols else "mixed-line-endings")
    return _Headers(tuple(fields)), body_start


# --- structured header values ------------------------------------------------------

_TOKEN = r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"  # noqa: S105 - an RFC 2045 token, not a password
_CTYPE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})")
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")
_FIRST_TOKEN = re.compile(r"\s*([^\s;(]*)")


@dataclass(frozen=True)
class _CType:
    maintype: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def type(self) -> str:
        return f"{self.maintype}/{self.subtype}"

    def param(self, key: str) -> str | None:
        for k, v in self.params:
            if k == key:
                return v
        return None


def _params(text: str, defects: _Defects) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for m in _PARAM.finditer(text[:PARAMS_SOURCE_MAX]):
        key, raw = m.group(1).lower(), m.group(2).strip()
        base, star, rest = key.partition("*")
        if star and rest.strip("*") not in ("", "0"):
            continue  # RFC 2231 continuation segments after the first: not needed
        if raw.startswith('"'):
            raw = _QUOTED_PAIR.sub(
                r"\1", raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
            )
        if star and "'" in raw:
            # RFC 2231 extended value: charset'lang'percent-encoded
            raw = unquote(raw.split("'", 2)[-1], errors="replace")
        if base in seen:
            defects.add("duplicate-parameter")
            continue
        seen.add(base)
        out.append((base, raw))
    return tuple(out)


def _content_type(value: str | None, default: str, defects: _Defects) -> _CType:
    dmain, dsub = default.split("/")
    if value is None:
        return _CType(dmain, dsub)
    m = _CTYPE.match(value[:PARAMS_SOURCE_MAX])
    if m is None:
        defects.add("invalid-content-type")
        if value.strip().lower().startswith("text"):
            return _CType("text", "plain", _params(value, defects))
        return _CType(dmain, dsub, _params(value, defects))
    return _CType(m.group(1).lower(), m.group(2).lower(), _params(value[m.end() :], defects))


def _first_token(value: str) -> str:
    m = _FIRST_TOKEN.match(value)
    return m.group(1).lower() if m else ""


# --- RFC 2047 ------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")
_B64_DELETE = bytes(
    b for b in range(256) if not (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/"))
)


def _b64(data: bytes, defects: _Defects | None = None) -> bytes:
    """Tolerant base64: junk characters and padding ignored, a stray last char dropped."""
    clean = data.translate(None, _B64_DELETE)
    extra = len(clean) % 4
    if extra == 1:
        clean = clean[:-1]
        if defects is not None:
            defects.add("base64-truncated")
    elif extra:
        clean += b"=" * (4 - extra)
    return binascii.a2b_base64(clean)


def _codec(charset: str | None, defects: _Defects) -> tuple[str, str]:
    """(codec name, error handler) for a declared charset; unknown → UTF-8/cp1252."""
    cs = (charset or "").strip().strip("\"'").lower().split("*", 1)[0]
    if cs in _UTF8_LIKE:
        return "utf-8", _FALLBACK
    cs = _CHARSET_ALIASES.get(cs, cs)
    try:
        info = codecs.lookup(cs)
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        defects.add("unknown-charset")
        return "utf-8", _FALLBACK
    if info.name in _NOT_MAIL_CODECS or not getattr(info, "_is_text_encoding", True):
        defects.add("unknown-charset")
        return "utf-8", _FALLBACK
    if info.name == "utf-8":
        return "utf-8", _FALLBACK
    return info.name, "replace"


_UTF8_LIKE = frozenset(
    {"", "us-ascii", "ascii", "utf-8", "utf8", "unknown-8bit", "x-unknown", "unknown", "default"}
    | {"8bit", "7bit", "binary", "none", "charset", "x-user-defined"}
)
_CHARSET_ALIASES = {
    # What browsers do (WHATWG): Latin-1 labels mean Windows-1252.
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "iso-8859-8-i": "iso-8859-8",
    "x-sjis": "shift_jis",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "x-mac-roman": "mac_roman",
    "windows-874": "cp874",
}
_NOT_MAIL_CODECS = frozenset(
    {"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape", "mbcs", "oem"}
    | {"unicode_escape", "raw_unicode_escape"}
)


def _decode_bytes(data: bytes, charset: str | None, defects: _Defects) -> str:
    name, errors = _codec(charset, defects)
    try:
        return data.decode(name, errors)
    except (LookupError, ValueError):
        defects.add("unknown-charset")
        return data.decode("utf-8", _FALLBACK)


def _decode_encoded_words(value: str, defects: _Defects | None = None) -> str:
    """RFC 2047 decoding, linear; adjacent words of one charset are joined first."""
    sink = defects if defects is not None else _Defects()
    out: list[str] = []
    pending_charset: str | None = None
    pending: list[bytes] = []
    pos = 0
    last_was_word = False

    def flush() -> None:
        nonlocal pending_charset, pending
        if pending_charset is not None:
            out.append(_decode_bytes(b"".join(pending), pending_charset, sink))
        pending_charset, pending = None, []

    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos : m.start()]
        if not (last_was_word and not gap.strip()):
            flush()
            out.append(gap)
        charset = m.group(1).split("*", 1)[0].lower()
        payload = m.group(3).encode("ascii", "replace")
        try:
            data = _b64(payload) if m.group(2) in "bB" else binascii.a2b_qp(payload, header=True)
        except (binascii.Error, ValueError):
            sink.add("bad-encoded-word")
            flush()
            out.append(m.group(0))
            pos, last_was_word = m.end(), False
            continue
        if charset != pending_charset:
            flush()
            pending_charset = charset
        pending.append(data)
        pos, last_was_word = m.end(), True
    flush()
    out.append(value[pos:])
    return "".join(out)


# --- message ids -----------------------------------------------------------------

_ANGLED = re.compile(r"<([^<>]*)>")
_WS = re.compile(r"\s+")
_MSGID_TEXT = re.compile(r"[\x21-\x7e]+\Z")


def _valid_id(inner: str) -> bool:
    return 0 < len(inner) <= MSGID_MAX and _MSGID_TEXT.match(inner) is not None


def _ids(value: str) -> list[str]:
    """Every well-formed ``<id>`` in ``value`` (whitespace removed, as folded ids are).

    Unique, in order; at most MAX_IDS (the first and the last half: in References
    the newest ids are at the end).
    """
    if len(value) > IDS_SOURCE_MAX:
        half = IDS_SOURCE_MAX // 2
        value = value[:half] + " " + value[-half:]
    found: dict[str, None] = {}
    for m in _ANGLED.finditer(_WS.sub("", value)):
        inner = m.group(1)
        if _valid_id(inner):
            found[f"<{inner}>"] = None
    ids = list(found)
    if len(ids) > MAX_IDS:
        ids = ids[: MAX_IDS // 2] + ids[-MAX_IDS // 2 :]
    return ids


def _message_id(headers: _Headers, defects: _Defects) -> str | None:
    values = headers.all("message-id")
    if not values:
        return None
    if len(values) > 1:
        defects.add("duplicate-message-id")
    value = values[0][:IDS_SOURCE_MAX]
    ids = _ids(value)
    if ids:
        return ids[0]
    bare = _WS.sub("", value)
    if "<" not in bare and ">" not in bare and "@" in bare and _valid_id(bare):
        defects.add("message-id-unbracketed")
        return f"<{bare}>"
    defects.add("message-id-invalid")
    return None


def _id_list(headers: _Headers, name: str) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for value in headers.all(name)[:4]:
        found.update(dict.fromkeys(_ids(value)))
    ids = list(found)
    return tuple(ids[: MAX_IDS // 2] + ids[-MAX_IDS // 2 :] if len(ids) > MAX_IDS else ids)


# --- transfer and charset decoding of one body part -------------------------------


def _cte_chunks(buf: bytes, start: int, end: int, cte: str) -> Iterator[bytes]:
    """The body decoded from its transfer encoding, chunk by chunk."""
    end = min(end, start + TEXT_SOURCE_MAX)
    if cte == "base64":
        carry = b""
        pos = start
        while pos < end:
            clean = carry + buf[pos : min(end, pos + CHUNK)].translate(None, _B64_DELETE)
            pos += CHUNK
            cut = len(clean) - len(clean) % 4
            carry = clean[cut:]
            if cut:
                yield binascii.a2b_base64(clean[:cut])
        if carry:
            yield _b64(carry)
        return
    pos = start
    while pos < end:
        stop = min(end, pos + CHUNK)
        if stop < end:
            # Quoted-printable must be cut at a line end (soft breaks, =XX).
            nl = buf.find(b"\n", stop, min(end, stop + 4096))
            stop = nl + 1 if nl >= 0 else stop
        piece = buf[pos:stop]
        pos = stop
        if cte == "quoted-printable":
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            yield binascii.a2b_qp(piece)
        else:
            yield piece


def _decode_part(
    buf: bytes, start: int, end: int, cte: str, charset: str | None, defects: _Defects
) -> tuple[str, bool]:
    """(text, truncated): at most TEXT_MAX characters of the part, newlines as LF."""
    name, errors = _codec(charset, defects)
    try:
        decoder = codecs.getincrementaldecoder(name)(errors)
    except (LookupError, ValueError):
        defects.add("unknown-charset")
        decoder = codecs.getincrementaldecoder("utf-8")(_FALLBACK)
    pieces: list[str] = []
    count = 0
    truncated = end - start > TEXT_SOURCE_MAX
    for chunk in _cte_chunks(buf, start, end, cte):
        piece = decoder.decode(chunk)
        pieces.append(piece)
        count += len(piece)
        if count > TEXT_MAX:
            truncated = True
            break
    else:
        pieces.append(decoder.decode(b"", final=True))
    text = "".join(pieces)
    if errors == "replace" and "\ufffd" in text:
        defects.add("decode-replaced")
    text = _NEWLINES.sub("\n", text)
    text = _BODY_CONTROLS.sub(" ", text)
    return text[:TEXT_MAX], truncated


def _render_html(markup: str, defects: _Defects) -> str:
    """Readable text of an HTML body.

    inscriptis lays tables out at ~3 s per MB, so only the first HTML_RENDER_MAX
    characters get the proper rendering; the words of the rest are kept by a crude
    tag stripper.
    """
    head, tail = markup, ""
    if len(markup) > HTML_RENDER_MAX:
        cut = markup.rfind("<", 0, HTML_RENDER_MAX)
        cut = cut if cut > 0 else HTML_RENDER_MAX
        head, tail = markup[:cut], markup[cut:]
        defects.add("html-render-partial")
    try:
        text = get_text(head)
    except RecursionError:
        defects.add("html-render-failed")
        text = ""
    if not text.strip() and head.strip():
        # lxml gives up on pathological nesting and returns nothing; a crude
        # reading is better than losing the signal's words.
        text = _crude_text(head)
    if tail:
        text = f"{text}\n{_crude_text(tail)}"
    return _BODY_CONTROLS.sub(" ", text)[:TEXT_MAX]


# Linear on any input: a tag ends at ">" or where the next "<" starts.
_TAG = re.compile(r"<[^<>]*>?")
_HIDDEN_START = re.compile(r"<(script|style)\b", re.IGNORECASE)


def _crude_text(markup: str) -> str:
    """Tags removed, script/style content dropped, entities decoded, spaces collapsed."""
    lowered = markup.lower()
    kept: list[str] = []
    pos = 0
    for m in _HIDDEN_START.finditer(markup):
        if m.start() < pos:
            continue
        kept.append(markup[pos : m.start()])
        close = lowered.find(f"</{m.group(1).lower()}", m.end())
        if close < 0:
            pos = len(markup)
            break
        pos = close
    kept.append(markup[pos:])
    text = _TAG.sub(" ", "".join(kept))
    return _WS_RUN.sub(" ", html_lib.unescape(text)).strip()


# --- the MIME walk -------------------------------------------------------------------

_REPORT_PARTS = frozenset(
    {"message/delivery-status", "message/disposition-notification", "message/feedback-report"}
    | {"message/global-delivery-status", "message/global-disposition-notification"}
)
# Parts that carry structure, not content: not counted as attachments.
_STRUCTURAL = _REPORT_PARTS | {
    "text/rfc822-headers",
    "text/global-headers",
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
    "application/pgp-signature",
    "application/pgp-encrypted",
}
_EMBEDDED_TYPES = frozenset({"message/rfc822", "message/global"})
_ORIGINAL_ID_LINE = re.compile(
    rb"^[ \t]*(?:x-)?original-message-id[ \t]*:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE
)
_QUOTED_ID_LINE = re.compile(
    r"^[ \t>]*message-id[ \t]*:[ \t]*(<[^>\n]*>)", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True)
class _Entity:
    buf: bytes
    headers: _Headers
    body_start: int
    body_end: int
    depth: int
    embedded: bool  # inside an attached message
    default_type: str = "text/plain"


@dataclass(frozen=True)
class _TextRef:
    buf: bytes
    start: int
    end: int
    cte: str
    charset: str | None
    is_html: bool
    flowed: bool = False
    delsp: bool = False


# Rank of a text part as the body text: the first non-empty of the lowest rank wins.
_RANK_PLAIN, _RANK_HTML, _RANK_EMBEDDED_PLAIN, _RANK_EMBEDDED_HTML, _RANK_NAMED = range(5)
MAX_TEXT_CANDIDATES = 32


@dataclass
class _Walk:
    """What the walk found (mutable accumulator of the imperative walk)."""

    parts: int = 0
    attachments: int = 0
    # Body text candidates in document order, with their rank (see _visit).
    texts: list[tuple[int, _TextRef]] = field(default_factory=list)
    report_type: str | None = None
    report_part: bool = False
    reported: list[str] = field(default_factory=list)
    budget: int = 0  # bytes that boundary searches may still scan
    lines: _LineBudget = field(default_factory=lambda: _LineBudget(WALK_MAX_LINES))
    decode_left: int = EMBEDDED_DECODE_MAX  # bytes of encoded attached messages to decode


def _disposition(headers: _Headers, defects: _Defects) -> tuple[str, bool]:
    value = headers.first("content-disposition")
    has_name = False
    kind = ""
    if value is not None:
        kind = _first_token(value)
        has_name = any(k in ("filename", "name") for k, _ in _params(value, defects))
    return kind, has_name


def _cte(headers: _Headers, defects: _Defects) -> str:
    values = headers.all("content-transfer-encoding")
    if not values:
        return "7bit"
    if len(values) > 1:
        defects.add("duplicate-content-transfer-encoding")
    cte = _first_token(values[0])
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


def _walk(top: _Entity, defects: _Defects) -> _Walk:
    w = _Walk(budget=SCAN_FACTOR * len(top.buf) + SCAN_FLOOR)
    stack: list[_Entity] = [top]
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


def _visit(ent: _Entity, w: _Walk, defects: _Defects) -> list[_Entity]:
    """Note what this entity is; return its children (parts, or the attached message)."""
    h = ent.headers
    if len(h.all("content-type")) > 1:
        defects.add("duplicate-content-type")
    ct = _content_type(h.first("content-type"), ent.default_type, defects)
    kind, has_name = _disposition(h, defects)
    cte = _cte(h, defects)
    outside = not ent.embedded

    if ct.maintype == "multipart":
        children = _multipart_children(ent, ct, w, defects)
        if children is not None:
            return children
        ct = _CType("text", "plain", ct.params)  # unsplittable: read it as text

    if ct.type in _EMBEDDED_TYPES:
        if outside:
            w.attachments += 1
        return _embedded_child(ent, cte, w, defects)

    if ct.type in _REPORT_PARTS:
        if outside:
            w.report_part = True
            fields = ent.buf[ent.body_start : min(ent.body_end, ent.body_start + REPORT_FIELDS_MAX)]
            for m in _ORIGINAL_ID_LINE.finditer(fields):
                w.reported.extend(_ids(m.group(1).decode("latin-1")))
        return []

    if ct.type in ("text/rfc822-headers", "text/global-headers"):
        if outside:
            inner, _ = _read_headers(
                ent.buf, ent.body_start, ent.body_end, PART_HEADER_MAX, _Defects(), budget=w.lines
            )
            mid = _message_id(inner, _Defects())
            if mid:
                w.reported.append(mid)
        return []

    named = kind == "attachment" or has_name or ct.param("name") is not None
    if ct.type in ("text/plain", "text/html") and len(w.texts) < MAX_TEXT_CANDIDATES:
        is_html = ct.subtype == "html"
        ref = _TextRef(
            ent.buf,
            ent.body_start,
            ent.body_end,
            cte,
            ct.param("charset"),
            is_html,
            flowed=not is_html and (ct.param("format") or "").lower() == "flowed",
            delsp=(ct.param("delsp") or "").lower() == "yes",
        )
        if not named:
            rank = (_RANK_HTML if is_html else _RANK_PLAIN) + (0 if outside else 2)
            w.texts.append((rank, ref))
            return []
        if outside and kind != "attachment":
            # "inline; filename=msg.txt": shown inline by MUAs; a last resort.
            w.texts.append((_RANK_NAMED, ref))
    if outside and ct.type not in _STRUCTURAL:
        w.attachments += 1
    return []


def _multipart_children(
    ent: _Entity, ct: _CType, w: _Walk, defects: _Defects
) -> list[_Entity] | None:
    """The parts of a multipart entity, or None when it cannot be split."""
    boundary = ct.param("boundary")
    if not boundary or len(boundary) > 1000:
        defects.add("multipart-without-boundary")
        return None
    if ct.subtype == "report" and not ent.embedded and w.report_type is None:
        w.report_type = _first_token(ct.param("report-type") or "")[:64] or None
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
    children: list[_Entity] = []
    for s, e in spans:
        headers, body = _read_headers(ent.buf, s, e, PART_HEADER_MAX, defects, budget=w.lines)
        children.append(_Entity(ent.buf, headers, body, e, ent.depth + 1, ent.embedded, default))
    return children


def _embedded_child(ent: _Entity, cte: str, w: _Walk, defects: _Defects) -> list[_Entity]:
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
        buf = b"".join(_cte_chunks(buf, start, end, cte))
        start, end = 0, len(buf)
    headers, body = _read_headers(buf, start, end, PART_HEADER_MAX, defects, budget=w.lines)
    if not ent.embedded:
        mid = _message_id(headers, _Defects())
        if mid:
            w.reported.append(mid)
    return [_Entity(buf, headers, body, end, ent.depth + 1, True)]


# --- auto rules --------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What the auto rules look at."""

    headers: _Headers
    top_type: str
    report_part: bool
    from_addr: str | None


_FALSEY = frozenset({"no", "false", "0", "off"})


def _present_not_no(h: _Headers, *names: str) -> bool:
    for name in names:
        for value in h.all(name):
            if _first_token(value) not in _FALSEY:
                return True
    return False


def is_auto_submitted(f: _Facts) -> bool:
    value = f.headers.first("auto-submitted")
    return value is not None and _first_token(value) != "no"


def is_report(f: _Facts) -> bool:
    return f.top_type == "multipart/report"


def has_report_part(f: _Facts) -> bool:
    return f.report_part


def has_x_autoreply(f: _Facts) -> bool:
    return _present_not_no(f.headers, "x-autoreply")


def has_x_autorespond(f: _Facts) -> bool:
    return _present_not_no(f.headers, "x-autorespond", "x-autoresponder")


def has_bulk_precedence(f: _Facts) -> bool:
    return any(
        _first_token(v) in ("bulk", "junk", "list", "auto_reply")
        for v in f.headers.all("precedence")
    )


def has_list_id(f: _Facts) -> bool:
    return f.headers.has("list-id")


def _null_path(value: str | None) -> bool:
    return value is not None and _WS.sub("", value) in ("<>", "")


def has_null_return_path(f: _Facts) -> bool:
    return _null_path(f.headers.first("return-path")) or _null_path(
        f.headers.first("x-envelope-from")
    )


_DAEMON = re.compile(r"\s*<?\s*mailer-daemon\s*(?:[@>]|\Z)", re.IGNORECASE)


def is_from_mailer_daemon(f: _Facts) -> bool:
    rp = f.headers.first("return-path")
    if rp is not None and _DAEMON.match(rp):
        return True
    return f.from_addr is not None and f.from_addr.startswith("mailer-daemon@")


def has_failed_recipients(f: _Facts) -> bool:
    return f.headers.has("x-failed-recipients")


def is_exchange_ndr(f: _Facts) -> bool:
    return f.headers.has("x-ms-exchange-message-is-ndr")


def is_inbox_rule_mail(f: _Facts) -> bool:
    return f.headers.has("x-ms-exchange-inbox-rules-loop")


def is_apple_vacation(f: _Facts) -> bool:
    return any(_first_token(v) == "vacation" for v in f.headers.all("x-apple-action"))


AUTO_RULES: tuple[tuple[str, Callable[[_Facts], bool]], ...] = (
    ("auto-submitted", is_auto_submitted),
    ("report", is_report),
    ("report-part", has_report_part),
    ("x-autoreply", has_x_autoreply),
    ("x-autorespond", has_x_autorespond),
    ("precedence", has_bulk_precedence),
    ("list-id", has_list_id),
    ("null-return-path", has_null_return_path),
    ("mailer-daemon", is_from_mailer_daemon),
    ("x-failed-recipients", has_failed_recipients),
    ("exchange-ndr", is_exchange_ndr),
    ("inbox-rules-loop", is_inbox_rule_mail),
    ("apple-vacation", is_apple_vacation),
)


def auto_reasons(f: _Facts) -> tuple[str, ...]:
    return tuple(code for code, rule in AUTO_RULES if rule(f))


# --- the whole message --------------------------------------------------------------


def _subject(headers: _Headers, defects: _Defects) -> str:
    values = headers.all("subject")
    if not values:
        return ""
    if len(values) > 1:
        defects.add("duplicate-subject")
    raw = values[0][:SUBJECT_SOURCE_MAX]
    decoded = _decode_encoded_words(_one_line(raw, SUBJECT_SOURCE_MAX), defects)
    return _one_line(decoded, SUBJECT_MAX).strip()


def _from(headers: _Headers, defects: _Defects) -> str | None:
    values = headers.all("from")
    if not values:
        return None
    if len(values) > 1:
        defects.add("duplicate-from")
        return None
    if len(values[0]) > FROM_MAX:
        defects.add("from-too-long")
        return None
    addr = parse_single_address(values[0])
    if addr is None:
        defects.add("from-unusable")
    return addr


def _auth_results(headers: _Headers) -> tuple[str, ...]:
    # A cut field could end inside an address and name another one: a field too long
    # to keep whole is kept as nothing, which no reader takes for evidence.
    return tuple(
        _WS_RUN.sub(" ", _one_line(v, AUTH_RESULT_LEN)).strip() if len(v) <= AUTH_RESULT_LEN else ""
        for v in headers.all("authentication-results")[:AUTH_RESULTS_MAX]
    )


def _exchange_auth_as(headers: _Headers) -> tuple[str, ...]:
    return tuple(
        _one_line(v, 64).strip()
        for v in headers.all("x-ms-exchange-organization-authas")[:AUTH_RESULTS_MAX]
    )


def _auto_submitted(headers: _Headers) -> str | None:
    value = headers.first("auto-submitted")
    if value is None:
        return None
    return _one_line(_first_token(value), 64)


def _texts(w: _Walk, defects: _Defects) -> tuple[str, str | None, _TextRef | None]:
    """(text, html, where text came from): the first non-empty text of the best
    rank, and the raw html."""
    decoded: dict[int, str] = {}

    def decode(ref: _TextRef) -> str:
        if id(ref) not in decoded:
            # One undecodable part must not cost the others.
            body, cut = _guard(
                defects,
                "decode",
                ("", False),
                lambda: _decode_part(ref.buf, ref.start, ref.end, ref.cte, ref.charset, defects),
            )
            if cut:
                defects.add("html-truncated" if ref.is_html else "text-truncated")
            decoded[id(ref)] = body
        return decoded[id(ref)]

    html: str | None = None
    for rank, ref in w.texts:
        if rank == _RANK_HTML:
            html = decode(ref)
            if html.strip():
                break
    for _rank, ref in sorted(w.texts, key=lambda rt: rt[0]):
        body = decode(ref)
        if not body.strip():
            continue
        return (_render_html(body, defects) if ref.is_html else body), html, ref
    return "", html, None


def _quoted_ids(text: str) -> list[str]:
    found: list[str] = []
    for m in _QUOTED_ID_LINE.finditer(text[:BODY_ID_SCAN]):
        found.extend(_ids(m.group(1)))
        if len(found) >= 10:
            break
    return found


def _unique(items: list[str], limit: int) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))[:limit]


_NONE: tuple[str, ...] = ()


def _parse(raw: bytes) -> ParsedMessage:
    d = _Defects()
    start = 0
    if raw.startswith(b"\xef\xbb\xbf"):
        d.add("bom")
        start = 3
    headers, body_start = _guard(
        d,
        "headers",
        (_Headers(), len(raw)),
        lambda: _read_headers(raw, start, len(raw), HEADER_SECTION_MAX, d, top=True),
    )
    if not headers.fields:
        d.add("no-headers")

    message_id = _guard(d, "message-id", None, lambda: _message_id(headers, d))
    in_reply_to = _guard(d, "in-reply-to", _NONE, lambda: _id_list(headers, "in-reply-to"))
    references = _guard(d, "references", _NONE, lambda: _id_list(headers, "references"))
    from_addr = _guard(d, "from", None, lambda: _from(headers, d))
    subject = _guard(d, "subject", "", lambda: _subject(headers, d))
    auth = _guard(d, "authentication-results", _NONE, lambda: _auth_results(headers))
    auth_as = _guard(d, "authas", _NONE, lambda: _exchange_auth_as(headers))
    auto_submitted = _guard(d, "auto-submitted", None, lambda: _auto_submitted(headers))
    null_rp = _guard(d, "return-path", False, lambda: _null_path(headers.first("return-path")))

    top = _Entity(raw, headers, body_start, len(raw), 0, False)
    walk = _guard(d, "mime", _Walk(), lambda: _walk(top, d))
    no_text: tuple[str, str | None, _TextRef | None] = ("", None, None)
    text, html, text_ref = _guard(d, "text", no_text, lambda: _texts(walk, d))
    top_type = _guard(
        d,
        "content-type",
        "text/plain",
        lambda: _content_type(headers.first("content-type"), "text/plain", _Defects()).type,
    )
    facts = _Facts(headers, top_type, walk.report_part, from_addr)
    reasons = _guard(d, "auto", _NONE, lambda: auto_reasons(facts))

    reported = _NONE
    if reasons:
        reported = _guard(
            d,
            "reported",
            _NONE,
            lambda: _unique(
                [*walk.reported, *_quoted_ids(text), *in_reply_to, *references[::-1]], MAX_REPORTED
            ),
        )
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
