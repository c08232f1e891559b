"""The header section of a message or a MIME part, read from the raw bytes.

Read up to the first blank line, with caps on the section's size, the number of
fields, each value and the lines read (a line costs a Python loop turn, so lines
are bounded, not only bytes). Values are decoded UTF-8, else Latin-1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inboxd.mime.defects import Defects

HEADER_SECTION_MAX = 1 << 20  # bytes of the top-level header section kept
PART_HEADER_MAX = 64 << 10  # bytes of a MIME part's header section kept
MAX_FIELDS = 1000  # header fields kept per section
TOP_MAX_LINES = 10_000  # header lines read in the top-level section
PART_MAX_LINES = 1_000  # header lines read in one MIME part's section
WALK_MAX_LINES = 100_000  # header lines read in all MIME parts together
FIELD_MAX = 64 << 10  # bytes kept of one (unfolded) field value

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
class Headers:
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

    def once(self, name: str, defects: Defects) -> str | None:
        """The first value of a field meant to stand once; a repeat is the defect
        ``duplicate-<name>``."""
        values = self.all(name)
        if len(values) > 1:
            defects.add(f"duplicate-{name}")
        return values[0] if values else None


def _decode_field(raw: bytes, defects: Defects) -> str:
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
class LineBudget:
    """Header lines that may still be read (shared by all sections of one walk)."""

    left: int


class _Unfolder:
    """The fields of one section as its lines come in: a continuation line joins its
    field (the line break dropped, the whitespace kept), a value keeps at most
    FIELD_MAX bytes, a section at most MAX_FIELDS fields."""

    __slots__ = ("defects", "fields", "name", "size", "value")

    def __init__(self, defects: Defects) -> None:
        self.defects = defects
        self.fields: list[tuple[str, str]] = []
        self.name: str | None = None
        self.value: list[bytes] = []
        self.size = 0

    def start_field(self, line: bytes) -> bool:
        """Begin the field ``line`` starts; False when it starts none."""
        fm = _FIELD.match(line)
        if fm is None:
            return False
        self.end_field()
        self.name = fm.group(1).decode("ascii").lower()
        piece = line[fm.end() : fm.end() + FIELD_MAX]
        self.value = [piece]
        self.size = len(piece)
        if len(piece) < len(line) - fm.end():
            self.defects.add("field-truncated")
        return True

    def continue_field(self, line: bytes) -> None:
        if self.name is None:
            self.defects.add("leading-continuation")
        elif self.size < FIELD_MAX:
            piece = line[: FIELD_MAX - self.size]
            self.value.append(piece)
            self.size += len(piece)
            if len(piece) < len(line):
                self.defects.add("field-truncated")

    def end_field(self) -> None:
        if self.name is None:
            return
        if len(self.fields) >= MAX_FIELDS:
            self.defects.add("too-many-fields")
            return
        self.fields.append((self.name, _decode_field(b"".join(self.value), self.defects)))


def read_headers(
    buf: bytes,
    start: int,
    end: int,
    limit: int,
    defects: Defects,
    *,
    top: bool = False,
    budget: LineBudget | None = None,
) -> tuple[Headers, int]:
    """The header fields of the entity at ``buf[start:end]`` and where its body starts.

    Unfolds continuation lines (the line break is dropped, the whitespace kept).
    A line that is neither a field nor a continuation ends the section (it is the
    first body line), as in the email package. At most ``limit`` bytes and
    TOP_MAX_LINES/PART_MAX_LINES lines are read (a line costs a Python loop turn,
    so lines are bounded, not only bytes); the rest of a larger section is skipped.
    """
    lines = budget if budget is not None else LineBudget(WALK_MAX_LINES)
    max_lines = min(TOP_MAX_LINES if top else PART_MAX_LINES, lines.left)
    stop = min(end, start + limit)
    unfolder = _Unfolder(defects)
    eols: set[bytes] = set()
    body_start = end
    pos = start
    first_line = True
    while pos < end:
        m = None if max_lines <= 0 else _LINE.match(buf, pos, stop)
        max_lines -= 1
        lines.left -= 1
        if m is None or (not m.group(2) and m.end() < end):
            body_start = _past_unread_section(buf, start, pos, end, defects)
            break
        content, eol = m.group(1, 2)
        if eol:
            eols.add(eol)
        if not content:
            body_start = m.end()
            break
        if content[:1] in (b" ", b"\t"):
            unfolder.continue_field(content)
        elif first_line and top and content.startswith(b"From "):
            defects.add("mbox-from-line")
        elif not unfolder.start_field(content):
            defects.add("missing-header-body-separator")
            body_start = pos
            break
        first_line = False
        pos = m.end()
    unfolder.end_field()
    _check_line_endings(eols, defects)
    return Headers(tuple(unfolder.fields)), body_start


def _past_unread_section(buf: bytes, start: int, pos: int, end: int, defects: Defects) -> int:
    """Where the body starts when the section is larger than we read: what was read
    is kept, the blank line is found without keeping anything more."""
    defects.add("header-section-too-large")
    # From two bytes back: an empty line right at ``pos`` counts too.
    return _blank_line_end(buf, max(start, pos - 2), end)


def _check_line_endings(eols: set[bytes], defects: Defects) -> None:
    if len(eols) > 1:
        # A lone CR among CRLF lines is how a "Subject: x\rBcc: y" injection looks.
        defects.add("bare-cr" if b"\r" in eols else "mixed-line-endings")
