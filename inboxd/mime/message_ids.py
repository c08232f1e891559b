"""Message-IDs: of a message (``Message-ID``, ``In-Reply-To``, ``References``), of the
original in a report part, and quoted in the text of a bounce.

An id is kept only well-formed: ``<`` up to MSGID_MAX printable ASCII characters
``>``, the whitespace of folding removed.
"""

from __future__ import annotations

import re

from inboxd.mime.defects import Defects
from inboxd.mime.field_values import WHITESPACE
from inboxd.mime.headers import Headers

IDS_SOURCE_MAX = 64 << 10  # chars of In-Reply-To/References read (head + tail)
MAX_IDS = 200
MSGID_MAX = 250  # chars between the angle brackets
BODY_ID_SCAN = 256 << 10  # chars of a text searched for quoted Message-ID lines

_ANGLED = re.compile(r"<([^<>]*)>")
_MSGID_TEXT = re.compile(r"[\x21-\x7e]+\Z")
_ORIGINAL_ID_LINE = re.compile(
    rb"^[ \t]*(?:x-)?original-message-id[ \t]*:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE
)
_QUOTED_ID_LINE = re.compile(
    r"^[ \t>]*message-id[ \t]*:[ \t]*(<[^>\n]*>)", re.IGNORECASE | re.MULTILINE
)


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
    for m in _ANGLED.finditer(WHITESPACE.sub("", value)):
        inner = m.group(1)
        if _valid_id(inner):
            found[f"<{inner}>"] = None
    ids = list(found)
    if len(ids) > MAX_IDS:
        ids = ids[: MAX_IDS // 2] + ids[-MAX_IDS // 2 :]
    return ids


def read_message_id(headers: Headers, defects: Defects) -> str | None:
    value = headers.once("message-id", defects)
    if value is None:
        return None
    value = value[:IDS_SOURCE_MAX]
    ids = _ids(value)
    if ids:
        return ids[0]
    bare = WHITESPACE.sub("", value)
    if "<" not in bare and ">" not in bare and "@" in bare and _valid_id(bare):
        defects.add("message-id-unbracketed")
        return f"<{bare}>"
    defects.add("message-id-invalid")
    return None


def id_list(headers: Headers, name: str) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for value in headers.all(name)[:4]:
        found.update(dict.fromkeys(_ids(value)))
    ids = list(found)
    return tuple(ids[: MAX_IDS // 2] + ids[-MAX_IDS // 2 :] if len(ids) > MAX_IDS else ids)


def quoted_ids(text: str) -> list[str]:
    """``Message-ID:`` lines quoted in a text (text bounces: qmail, Exim)."""
    found: list[str] = []
    for m in _QUOTED_ID_LINE.finditer(text[:BODY_ID_SCAN]):
        found.extend(_ids(m.group(1)))
        if len(found) >= 10:
            break
    return found


def original_ids(fields: bytes) -> list[str]:
    """The ``Original-Message-ID``/``X-Original-Message-ID`` ids of a report part."""
    found: list[str] = []
    for m in _ORIGINAL_ID_LINE.finditer(fields):
        found.extend(_ids(m.group(1).decode("latin-1")))
    return found
