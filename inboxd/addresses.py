"""Strict reading of one mailbox address from a header value.

The sender's address decides whether a mail may be a command, who gets an
acknowledgement and which source a signal is counted under, so this module is
deliberately narrower than RFC 5322: whatever is ambiguous is refused (``None``)
rather than guessed. Python 3.11's ``parseaddr``/``getaddresses`` are not used: they
lack the CVE-2023-27043 fix and read ``victim@x)<attacker@y>`` as ``victim@x``.

Decisions (all refusals give ``None``):

* exactly one mailbox: a list (``,``), a group (``:`` / ``;``), a route
  (``<@a:b@c>``), a domain literal (``[…]``), a second ``<`` or ``>`` or an
  unbalanced quote, comment or bracket is refused;
* ``name <addr>``: the address between the angle brackets is returned, never
  anything from the display name — ``"a.jansen@gemeente.example"
  <attacker@outsider.example>`` gives ``attacker@outsider.example``;
* the display name may be atoms, dots (``A. Jansen``) and quoted strings; an
  unquoted ``@`` in it is refused, a quoted one is allowed (we never use the name);
* RFC 2047 encoded-words in the display name or a comment are decoded only to be
  checked: if one yields a control character or ``<``/``>`` (a second, hidden
  address for a reader that decodes first and parses second) the value is refused.
  A decoded ``@`` or ``,`` is allowed: MUAs encode names like "Jansén, A.";
* comments are allowed around the address (``root@host (Cron Daemon)``) but must be
  balanced, at most 4 deep, and must not contain ``@``, ``<`` or ``>``;
* CR, LF, NUL and every other control character are refused (after unfolding
  CRLF + whitespace);
* local part: an ASCII dot-atom or a quoted string of printable ASCII and spaces
  without ``@``, ``<``, ``>`` or escapes (returned quoted, as written); one that
  looks like an encoded-word is refused; ≤ 64 chars;
* domain: LDH labels (1–63 chars, no leading/trailing hyphen), the last not all
  digits, no trailing dot; a Unicode domain is accepted when IDNA 2008 can encode
  it, and returned as A-labels (``xn--…``); ≤ 253 chars; whole address ≤ 254;
* the result is lower-cased.

:func:`header_safe` lives here too: it is the check for values inboxd puts into
headers of the mail it sends (addresses and subjects alike).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import idna

MAX_VALUE = 2048  # a single-mailbox header value longer than this is not a person's From
MAX_ADDRESS = 254
MAX_LOCAL = 64
MAX_DOMAIN = 253
MAX_COMMENT_DEPTH = 4

_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# C0 except TAB, DEL, C1, line/paragraph separators, lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def header_safe(value: str) -> bool:
    """True if ``value`` can go into an outgoing header as is.

    Refuses CR, LF, NUL and every other C0 control except TAB, DEL, the C1
    controls (NEL among them), U+2028/U+2029 (``str.splitlines`` breaks on them,
    and the email package folds with it) and lone surrogates.
    """
    return _UNSAFE.search(value) is None


@dataclass(frozen=True)
class _Token:
    kind: str  # "atom" | "quoted" | "comment" | "ws" | one special character
    text: str


class _Refused(Exception):
    """Internal: the value is not one unambiguous mailbox."""


def _read_enclosed(value: str, i: int, close: str, *, nests: bool) -> tuple[str, int]:
    """The quoted string (``"…"``) or comment (``(…)``, which may hold comments:
    ``nests``) that opens at ``value[i]``, and the index after it. A backslash
    escapes the next character in both."""
    depth, j = 0, i
    while j < len(value):
        c = value[j]
        if c == "\\":
            j += 2
            continue
        if c == close and j > i:
            depth -= 1
            if depth == 0:
                return value[i : j + 1], j + 1
        elif c == value[i] and (nests or j == i):
            depth += 1
            if depth > MAX_COMMENT_DEPTH:
                raise _Refused("comment too deep")
        j += 1
    raise _Refused("unbalanced comment" if nests else "unterminated quoted string")


def _tokenize(value: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c in " \t":
            j = i
            while j < n and value[j] in " \t":
                j += 1
            tokens.append(_Token("ws", value[i:j]))
            i = j
        elif c == '"':
            text, i = _read_enclosed(value, i, '"', nests=False)
            tokens.append(_Token("quoted", text))
        elif c == "(":
            text, i = _read_enclosed(value, i, ")", nests=True)
            tokens.append(_Token("comment", text))
        elif c in "<>@.,;:[]":
            tokens.append(_Token(c, c))
            i += 1
        elif c in _ATEXT or ord(c) > 0x7F:
            j = i
            while j < n and (value[j] in _ATEXT or ord(value[j]) > 0x7F):
                j += 1
            tokens.append(_Token("atom", value[i:j]))
            i = j
        else:
            # ")", "\" outside quotes, or anything else that has no place here.
            raise _Refused("stray character")
    return tokens


def _decoded_words(text: str) -> list[str]:
    """The decoded text of each RFC 2047 encoded-word in ``text`` (lossy, for checks)."""
    out: list[str] = []
    for m in _ENCODED_WORD.finditer(text):
        charset, enc, payload = m.group(1).split("*", 1)[0], m.group(2).lower(), m.group(3)
        try:
            if enc == "b":
                data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=False)
            else:
                data = binascii.a2b_qp(payload.encode("ascii", "replace"), header=True)
            try:
                out.append(data.decode(charset, "replace"))
            except (LookupError, ValueError):
                out.append(data.decode("latin-1"))
        except (ValueError, TypeError, binascii.Error):
            # Undecodable: a reader shows it as is, and as is it was checked.
            continue
    return out


def _check_hidden(value: str) -> None:
    """Refuse encoded-words that decode to controls or angle brackets.

    Checked on the whole value: an encoded-word may contain "." and so span
    several atoms, and the address itself can hold none (refused there).
    """
    if "=?" not in value:
        return
    for decoded in _decoded_words(value):
        if "<" in decoded or ">" in decoded or _UNSAFE.search(decoded):
            raise _Refused("encoded-word hides an address or a control")


def _check_comments(tokens: list[_Token]) -> None:
    for tok in tokens:
        if tok.kind == "comment" and any(c in tok.text for c in "@<>"):
            raise _Refused("address-like comment")


def _domain(labels: str) -> str:
    text = labels.lower()
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=False).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise _Refused("not an IDNA domain") from None
    if len(text) > MAX_DOMAIN or not text:
        raise _Refused("domain length")
    parts = text.split(".")
    for label in parts:
        if not _LABEL.match(label):
            raise _Refused("bad label")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                raise _Refused("bad A-label") from None
    if parts[-1].isdigit():
        raise _Refused("numeric top label")
    return text


def _quoted_local_ok(text: str) -> bool:
    """Printable ASCII and spaces; no quoted-pairs and nothing address-like.

    ``"boss@gemeente.example"@outsider.example`` is a valid address whose first
    ``@`` misleads anyone who splits naively, so it is refused; so are escapes.
    """
    inner = text[1:-1]
    if not inner or not text.isascii():
        return False
    return all((c == " " or 0x21 <= ord(c) < 0x7F) and c not in '@<>\\"' for c in inner)


def _addr_spec(tokens: list[_Token]) -> str:
    """``local@domain`` from the tokens of a bare addr-spec (no whitespace inside)."""
    ats = [i for i, t in enumerate(tokens) if t.kind == "@"]
    if len(ats) != 1:
        raise _Refused("not exactly one @")
    local_toks, domain_toks = tokens[: ats[0]], tokens[ats[0] + 1 :]
    if not local_toks or not domain_toks:
        raise _Refused("empty local part or domain")

    if len(local_toks) == 1 and local_toks[0].kind == "quoted":
        local = local_toks[0].text
        if not _quoted_local_ok(local):
            raise _Refused("bad quoted local part")
    else:
        local = _dot_atom(local_toks)
        if not local.isascii():
            raise _Refused("non-ASCII local part")
        if "=?" in local:
            raise _Refused("encoded-word in local part")
    if len(local) > MAX_LOCAL:
        raise _Refused("local part too long")

    domain = _domain(_dot_atom(domain_toks))
    addr = f"{local.lower()}@{domain}"
    if len(addr) > MAX_ADDRESS:
        raise _Refused("address too long")
    return addr


def _dot_atom(tokens: list[_Token]) -> str:
    """atom ("." atom)*, exactly alternating."""
    for i, tok in enumerate(tokens):
        want = "atom" if i % 2 == 0 else "."
        if tok.kind != want:
            raise _Refused("not a dot-atom")
    if tokens[-1].kind != "atom":
        raise _Refused("dot-atom ends in a dot")
    return "".join(t.text for t in tokens)


def _strip_cfws(tokens: list[_Token]) -> list[_Token]:
    start, end = 0, len(tokens)
    while start < end and tokens[start].kind in ("ws", "comment"):
        start += 1
    while end > start and tokens[end - 1].kind in ("ws", "comment"):
        end -= 1
    return tokens[start:end]


def _parse(value: str) -> str:
    if len(value) > MAX_VALUE:
        raise _Refused("too long")
    value = _FOLD.sub("", value)
    if _UNSAFE.search(value):
        raise _Refused("control character")
    tokens = _tokenize(value)
    kinds = [t.kind for t in tokens]
    if any(k in kinds for k in ",;:[]"):
        raise _Refused("list, group, route or domain literal")
    _check_comments(tokens)
    _check_hidden(value)

    opens, closes = kinds.count("<"), kinds.count(">")
    if opens == 0 and closes == 0:
        inner = _strip_cfws(tokens)
        if any(t.kind in ("ws", "comment") for t in inner):
            raise _Refused("whitespace inside address")
        return _addr_spec(inner)
    if opens != 1 or closes != 1:
        raise _Refused("angle brackets")
    lt, gt = kinds.index("<"), kinds.index(">")
    if gt < lt:
        raise _Refused("angle brackets reversed")
    display, inner, trailer = tokens[:lt], tokens[lt + 1 : gt], tokens[gt + 1 :]
    if any(t.kind not in ("atom", "quoted", "ws", "comment", ".") for t in display):
        raise _Refused("display name holds specials")
    if any(t.kind not in ("ws", "comment") for t in trailer):
        raise _Refused("text after the address")
    # Spaces just inside the brackets are legal; anything else inside is not.
    start, end = 0, len(inner)
    while start < end and inner[start].kind == "ws":
        start += 1
    while end > start and inner[end - 1].kind == "ws":
        end -= 1
    inner = inner[start:end]
    if any(t.kind in ("ws", "comment") for t in inner):
        raise _Refused("whitespace inside address")
    return _addr_spec(inner)


def parse_single_address(value: str) -> str | None:
    """The lower-cased ``local@domain`` of the one mailbox in ``value``, or None.

    ``value`` is a raw (possibly folded, possibly encoded-word carrying) header
    value such as that of ``From``. See the module docstring for what is refused.
    """
    try:
        return _parse(value)
    except _Refused:
        return None
    except RecursionError:  # defensive: nothing here recurses, but never raise
        return None


def is_valid_addr_spec(addr: str) -> bool:
    """True for a bare ``local@domain`` in the canonical form this module returns.

    No display name, comments, whitespace or angle brackets; the domain in ASCII
    (A-labels for IDN). Case does not matter.
    """
    return parse_single_address(addr) == addr.lower()


def domain_of(addr: str) -> str:
    """The lower-cased domain of an addr-spec (text after the last ``@``; "" if none)."""
    local, at, domain = addr.rpartition("@")
    return domain.lower() if at and local else ""
