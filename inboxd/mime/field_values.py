"""Structured field values: a Content-Type (RFC 2045), the parameters of it and of
Content-Disposition (RFC 2231 extended values), a field's first token."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from inboxd.mime.defects import Defects

PARAMS_SOURCE_MAX = 8192  # chars of Content-Type/-Disposition parsed

# Unicode whitespace, as ``str.isspace`` has it.
WHITESPACE = re.compile(r"\s+")

_TOKEN = r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"  # noqa: S105 - an RFC 2045 token, not a password
_CTYPE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})")
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")
_FIRST_TOKEN = re.compile(r"\s*([^\s;(]*)")


@dataclass(frozen=True)
class CType:
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


def params(text: str, defects: Defects) -> tuple[tuple[str, str], ...]:
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


def content_type(value: str | None, default: str, defects: Defects) -> CType:
    dmain, dsub = default.split("/")
    if value is None:
        return CType(dmain, dsub)
    m = _CTYPE.match(value[:PARAMS_SOURCE_MAX])
    if m is None:
        defects.add("invalid-content-type")
        if value.strip().lower().startswith("text"):
            return CType("text", "plain", params(value, defects))
        return CType(dmain, dsub, params(value, defects))
    return CType(m.group(1).lower(), m.group(2).lower(), params(value[m.end() :], defects))


def first_token(value: str) -> str:
    m = _FIRST_TOKEN.match(value)
    return m.group(1).lower() if m else ""
