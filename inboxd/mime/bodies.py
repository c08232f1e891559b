"""The text of one body part: its transfer encoding and charset decoded
incrementally, at most TEXT_MAX characters, and HTML laid out as readable text.

Only the parts chosen as the body text come here; attachments are never decoded.
"""

from __future__ import annotations

import binascii
import codecs
import html as html_lib
import re
from collections.abc import Iterator

from inscriptis import get_text

from inboxd.mime.charsets import B64_DELETE, FALLBACK, b64, codec
from inboxd.mime.defects import Defects
from inboxd.mime.field_values import WHITESPACE

TEXT_MAX = 1_000_000  # chars of text and of html
HTML_RENDER_MAX = 256 << 10  # chars of HTML laid out by inscriptis (see render_html)
TEXT_SOURCE_MAX = 8 << 20  # encoded bytes of one text part read at most
CHUNK = 256 << 10

_BODY_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NEWLINES = re.compile(r"\r\n|\r")


def cte_chunks(buf: bytes, start: int, end: int, cte: str) -> Iterator[bytes]:
    """The body decoded from its transfer encoding, chunk by chunk."""
    end = min(end, start + TEXT_SOURCE_MAX)
    if cte == "base64":
        carry = b""
        pos = start
        while pos < end:
            clean = carry + buf[pos : min(end, pos + CHUNK)].translate(None, B64_DELETE)
            pos += CHUNK
            cut = len(clean) - len(clean) % 4
            carry = clean[cut:]
            if cut:
                yield binascii.a2b_base64(clean[:cut])
        if carry:
            yield b64(carry)
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


def decode_part(
    buf: bytes, start: int, end: int, cte: str, charset: str | None, defects: Defects
) -> tuple[str, bool]:
    """(text, truncated): at most TEXT_MAX characters of the part, newlines as LF."""
    name, errors = codec(charset, defects)
    try:
        decoder = codecs.getincrementaldecoder(name)(errors)
    except (LookupError, ValueError):
        defects.add("unknown-charset")
        decoder = codecs.getincrementaldecoder("utf-8")(FALLBACK)
    pieces: list[str] = []
    count = 0
    truncated = end - start > TEXT_SOURCE_MAX
    for chunk in cte_chunks(buf, start, end, cte):
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


def render_html(markup: str, defects: Defects) -> str:
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
    return WHITESPACE.sub(" ", html_lib.unescape(text)).strip()
