"""Signal references like ``VV-7K3M-9QXD``.

Seven random Crockford base32 characters and one check character. Random, so a
reference says nothing about how many signals there are; checked, so a mistyped
reference in a reply is caught instead of acting on another signal.
"""

from __future__ import annotations

import functools
import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
# Crockford's reading rules: what people type for what they meant.
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})


def check_char(body: str) -> str:
    """Sum of the seven values weighted by position (1..7), mod 32."""
    return ALPHABET[sum((i + 1) * _VALUE[c] for i, c in enumerate(body)) % 32]


def new_reference(prefix: str) -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(7))
    code = body + check_char(body)
    return f"{prefix}-{code[:4]}-{code[4:]}"


def normalise(candidate: str, prefix: str) -> str | None:
    """The canonical form of a reference as a person may have typed it, or None.

    Case-insensitive; ``I``/``L`` read as 1 and ``O`` as 0; the hyphens may be
    missing or spaces. A wrong check character gives None.
    """
    text = candidate.strip().upper()
    p = prefix.upper()
    if not text.startswith(p):
        return None
    code = re.sub(r"[\s\-]", "", text[len(p) :]).translate(_READ_AS)
    if len(code) != 8 or any(c not in _VALUE for c in code):
        return None
    if check_char(code[:7]) != code[7]:
        return None
    return f"{p}-{code[:4]}-{code[4:]}"


@functools.lru_cache(maxsize=8)
def _pattern(prefix: str) -> re.Pattern[str]:
    chars = "0-9A-Za-z"
    return re.compile(
        rf"(?<![{chars}]){re.escape(prefix)}[ \-]?([{chars}]{{4}})[ \-]?([{chars}]{{4}})(?![{chars}])",
        re.IGNORECASE,
    )


def find_references(text: str, prefix: str) -> list[str]:
    """Every valid reference in ``text``, canonical, in order of appearance, unique."""
    found: list[str] = []
    text = text[:2_000_000]
    if prefix.lower() not in text.lower():
        return found  # the usual case for a new signal, and a cheap test
    for m in _pattern(prefix).finditer(text):
        ref = normalise(f"{prefix}-{m.group(1)}-{m.group(2)}", prefix)
        if ref is not None and ref not in found:
            found.append(ref)
    return found
