"""Signal references like ``VV-7K3M-9QXF``.

Seven random Crockford base32 characters and one check character. Random, so a
reference says nothing about how many signals there are; checked, so a mistyped
reference in a reply is caught instead of acting on another signal.

The check is Damm's algorithm over a totally anti-symmetric quasigroup of order 32:
``x * y = a·(x XOR y)`` in the field GF(32) (modulus x^5 + x^2 + 1) with ``a`` the
element x, i.e. neither 0 nor 1. Its rows and columns are permutations, so every
single-character substitution is caught; ``(c*x)*y = (c*y)*x`` only when ``x = y``
(the two sides differ by a·(a+1)·(x XOR y)), so every swap of two neighbouring
characters is caught too, the check character included. A position-weighted sum
mod 32 cannot do this: an even weight times 16 is 0 mod 32.
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
from collections.abc import Iterable, Iterator

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
# Crockford's reading rules: what people type for what they meant.
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})


def _times_a(v: int) -> int:
    """``v`` times the field element x in GF(32) with modulus x^5 + x^2 + 1."""
    v <<= 1
    return v ^ 0b100101 if v & 0b100000 else v


# QUASIGROUP[x][y] = a·(x XOR y); its diagonal is 0, so the check character is the
# interim value itself and a whole valid code runs to 0.
QUASIGROUP: tuple[tuple[int, ...], ...] = tuple(
    tuple(_times_a(x ^ y) for y in range(32)) for x in range(32)
)


def _damm(code: str) -> int:
    interim = 0
    for c in code:
        interim = QUASIGROUP[interim][_VALUE[c]]
    return interim


def check_char(body: str) -> str:
    """Damm's check character of ``body`` (any length; references use seven)."""
    return ALPHABET[_damm(body)]


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
    if _damm(code) != 0:
        return None
    return f"{p}-{code[:4]}-{code[4:]}"


@functools.lru_cache(maxsize=8)
def _pattern(prefix: str) -> re.Pattern[str]:
    chars = "0-9A-Za-z"
    return re.compile(
        rf"(?<![{chars}]){re.escape(prefix)}[ \-]?([{chars}]{{4}})[ \-]?([{chars}]{{4}})(?![{chars}])",
        re.IGNORECASE,
    )


# A message is searched for at most this many distinct valid references, and at most
# MAX_CANDIDATES look-alikes (valid or not) are checked per text: a reply names one
# or two, and a mail that lists thousands (or thousands of near misses) must cost no
# more than one that lists a few.
MAX_REFERENCES = 10
MAX_CANDIDATES = 1_000
SCAN_MAX = 2_000_000  # characters of one text searched


def _valid(text: str, prefix: str) -> Iterator[str]:
    """Valid references in ``text`` in order, repeats included; at most
    :data:`MAX_CANDIDATES` look-alikes are checked."""
    text = text[:SCAN_MAX]
    if prefix.lower() not in text.lower():
        return  # the usual case for a new signal, and a cheap test
    matches = itertools.islice(_pattern(prefix).finditer(text), MAX_CANDIDATES)
    for m in matches:
        ref = normalise(f"{prefix}-{m.group(1)}-{m.group(2)}", prefix)
        if ref is not None:
            yield ref


def first_references(texts: Iterable[str], prefix: str, limit: int = MAX_REFERENCES) -> list[str]:
    """The first ``limit`` distinct valid references in ``texts`` (read one after the
    other), canonical, in order of appearance.

    Linear in the text: de-duplication is a dict, and the search stops at ``limit``.
    """
    found: dict[str, None] = {}
    for text in texts:
        for ref in _valid(text, prefix):
            found[ref] = None
            if len(found) >= limit:
                return list(found)
    return list(found)


def find_references(text: str, prefix: str, limit: int = MAX_REFERENCES) -> list[str]:
    """:func:`first_references` of one text."""
    return first_references((text,), prefix, limit)
