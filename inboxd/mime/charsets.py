"""Bytes to text: the codec for a declared charset, tolerant base64, RFC 2047
encoded words.

A charset label is read as browsers read it (WHATWG: Latin-1 labels mean
Windows-1252); codecs that are no mail charset (``idna``, ``unicode-escape`` …) are
refused; UTF-8 and whatever is unknown decode as UTF-8 with bytes that do not fit
read as Windows-1252, so no byte is lost and none raises.
"""

from __future__ import annotations

import binascii
import codecs
import re

from inboxd.mime.defects import Defects

# cp1252 leaves these undefined; Latin-1 gives them a (C1) code point.
_CP1252_HOLES = frozenset({0x81, 0x8D, 0x8F, 0x90, 0x9D})


def _cp1252_fallback(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler: bytes that are not UTF-8 are read as Windows-1252."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    text = "".join(chr(b) if b in _CP1252_HOLES else bytes([b]).decode("cp1252") for b in bad)
    return text, exc.end


FALLBACK = "inboxd-cp1252"
codecs.register_error(FALLBACK, _cp1252_fallback)


_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")
B64_DELETE = bytes(
    b for b in range(256) if not (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/"))
)


def b64(data: bytes, defects: Defects | None = None) -> bytes:
    """Tolerant base64: junk characters and padding ignored, a stray last char dropped."""
    clean = data.translate(None, B64_DELETE)
    extra = len(clean) % 4
    if extra == 1:
        clean = clean[:-1]
        if defects is not None:
            defects.add("base64-truncated")
    elif extra:
        clean += b"=" * (4 - extra)
    return binascii.a2b_base64(clean)


def codec(charset: str | None, defects: Defects) -> tuple[str, str]:
    """(codec name, error handler) for a declared charset; unknown → UTF-8/cp1252."""
    cs = (charset or "").strip().strip("\"'").lower().split("*", 1)[0]
    if cs in _UTF8_LIKE:
        return "utf-8", FALLBACK
    cs = _CHARSET_ALIASES.get(cs, cs)
    try:
        info = codecs.lookup(cs)
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        defects.add("unknown-charset")
        return "utf-8", FALLBACK
    if info.name in _NOT_MAIL_CODECS or not getattr(info, "_is_text_encoding", True):
        defects.add("unknown-charset")
        return "utf-8", FALLBACK
    if info.name == "utf-8":
        return "utf-8", FALLBACK
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


def _decode_bytes(data: bytes, charset: str | None, defects: Defects) -> str:
    name, errors = codec(charset, defects)
    try:
        return data.decode(name, errors)
    except (LookupError, ValueError):
        defects.add("unknown-charset")
        return data.decode("utf-8", FALLBACK)


def decode_encoded_words(value: str, defects: Defects | None = None) -> str:
    """RFC 2047 decoding, linear; adjacent words of one charset are joined first."""
    sink = defects if defects is not None else Defects()
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
            data = b64(payload) if m.group(2) in "bB" else binascii.a2b_qp(payload, header=True)
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
