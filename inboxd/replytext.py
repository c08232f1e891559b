"""The text a functionaris typed above the quoted original of a reply.

``reply_text(plain, html, *, flowed=False, delsp=False) -> str`` returns only the
new text of a reply: everything from the first quote marker on is dropped, even
when it looks like text, because the quoted triage request is full of command
words (and of text a reporter wrote) that must never count as commands.

Source. The text/plain alternative is used when it has any non-blank content
(pass ``flowed``/``delsp`` from its ``Content-Type`` parameters, RFC 3676, so
that a long line Thunderbird wrapped is read as the one line it was typed as).
Otherwise the HTML is parsed with lxml; comments, ``<head>``, ``<style>``,
``<script>`` and elements a reader cannot see (``display:none``,
``visibility:hidden``, ``hidden``, ``mso-hide:all``, ``font-size:0``,
``opacity:0``) are removed, and everything from the first reply divider on is cut:
Outlook's ``divRplyFwdMsg``/``appendonsend``/``stopSpelling``/the ``border-top``
header box, Windows Mail's (``border-top-style: solid`` longhand), any ``<hr>`` or
``<blockquote>``, Gmail's ``gmail_quote``, Thunderbird's ``moz-cite-prefix``, Yahoo's
``yahoo_quoted`` (also prefixed, ``ydp…yahoo_quoted``), Outlook for Mac's reference
container. The rest
is rendered to text with inscriptis. CSS in ``<style>`` blocks is not evaluated:
an element hidden only by a class rule is read as visible.

Cut. In the text, the first of these lines ends the reply: a ``>``-quoted line;
``-----Oorspronkelijk bericht-----``/``-----Original Message-----``/``-----Reply
Message-----`` and friends (Gmail's bold ``*---- Original Message ----*`` too);
``Forwarded message:``; a rule of ten or more ``_``, ``-`` or ``=``; an Outlook
header block (a ``Van:``/``From:`` line, or two header lines such as
``Verzonden:``/``Sent:`` in a row); an attribution such as ``Op … schreef …:``,
``On … wrote:``, ``Op … heeft … het volgende geschreven:``, ``At …, you wrote:``
(Eudora), Zoho's and Android's ``---- On … wrote ----``/``---- Name wrote ----``,
Gmail's date-first ``2016-12-08 11:00 GMT+01:00 Name <addr>:``, or a line that is
only ``Name <addr> wrote:`` — each possibly folded over three lines, never over a
blank one. mail-parser-reply then looks at what is left with its Dutch and English
header patterns and may cut earlier (it knows none of the shapes above). Every text
rule (and every mail-parser-reply header pattern) is anchored at the start of a line
on something that is not a command word (a quote word, a digit, a dash), so a cut in
the text can only drop lines that would have ended the command list anyway: quote
detection there changes what is reported as ignored, never which commands run. (This
holds as long as no destination key is a quote word such as ``van``, ``from``, ``op``,
``on`` or ``at``; the configuration refuses those.) The one rule not anchored on a
word, ``Name <addr> wrote:``, must be the whole line with the address beginning on
it, which no command line is.
Leading and trailing blank lines are dropped, so line 1 is the first line with text.

Bounds. Never raises: input it cannot read gives ``""`` (which the command parser
rejects as ``no_command``). Lines are never shortened. Only the first
``MAX_HTML_CHARS`` of HTML are parsed and only ``MAX_ELEMENTS`` elements above the
divider are rendered; only ``MAX_LINES`` lines are examined. When part of a reply
was not read (too long, too many elements, a fatal parse error such as nesting
deeper than libxml2 allows) and no quote marker was found in the part that was,
the reply counts as empty: the unread part might hold more command lines, and
carrying out only some of them is worse than rejecting the mail.
mail-parser-reply sees at most ``LIBRARY_LINES`` lines cut to
``LIBRARY_LINE_CHARS`` characters, because its attribution patterns take time
quadratic in the length of a line (10,000 characters: 1.5 s; 100,000: minutes).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from typing import Any

from lxml import etree
from lxml import html as lxml_html

MAX_HTML_CHARS = 2_000_000
MAX_LINES = 500
MAX_ELEMENTS = 10_000
LIBRARY_LINES = 100
LIBRARY_LINE_CHARS = 200
_NORM_CHARS = 1_000  # quote markers are recognised by how a line starts

_LANGUAGES = ["nl", "en"]

# Only what no reader sees: dropping visible text could turn lines after it into commands.
_REMOVED_TAGS = frozenset({"head", "style", "script", "title", "template", "xml", "meta", "link"})
# Ids and classes that start the quoted part in the clients functionarissen use.
_DIVIDER_IDS = frozenset(
    {
        "divrplyfwdmsg",
        "x_divrplyfwdmsg",
        "appendonsend",
        "x_appendonsend",
        "stopspelling",
        "x_stopspelling",
        "olk_src_body_section",
        "mail-editor-reference-message-container",
        "zwchr",
        "isforwardcontent",
        "isreplycontent",
    }
)
_DIVIDER_CLASSES = frozenset(
    {
        "gmail_quote",
        "gmail_quote_container",
        "gmail_attr",
        "moz-cite-prefix",
        "moz-forward-container",
        "yahoo_quoted",
        "protonmail_quote",
        "outlookmessageheader",
        "zmail_extra",
        "mailquote",
    }
)
_HIDING_STYLE = re.compile(
    r"(?:^|;)(?:display:none|visibility:(?:hidden|collapse)|mso-hide:all"
    r"|font-size:0(?:\.0+)?(?:px|pt|em|rem|%)?(?:!important)?(?:;|$)"
    r"|opacity:0(?:\.0+)?(?:!important)?(?:;|$))"
)

_HEADER_WORD = (
    r"(?:van|from|verzonden|sent|aan|to|onderwerp|subject|datum|date|cc|bcc|"
    r"beantwoorden|reply-to|prioriteit|priority|importance|urgentie)"
)
_FROM_LINE = re.compile(r"\*{0,2}(?:van|from)\*{0,2}\s*:", re.IGNORECASE)
_HEADER_LINE = re.compile(r"\*{0,2}" + _HEADER_WORD + r"\*{0,2}\s*:", re.IGNORECASE)
_ORIGINAL = re.compile(
    r"\*{0,2}(?:-{2,}|_{2,}|={2,})\s*(?:oorspronkelijk(?:\s+e-mail)?\s*bericht|origineel\s+bericht"
    r"|original\s+message|reply\s+message|doorgestuurd\s+bericht|forwarded\s+message|oorspronkelijk)",
    re.IGNORECASE,
)
_FORWARDED = re.compile(
    r"(?:begin\s+)?(?:forwarded\s+message|doorgestuurd\s+bericht)\s*:", re.IGNORECASE
)
_RULE = re.compile(r"[_\-=]{10}")
_ATTRIBUTION_START = re.compile(r"(?:op|on|at)\s", re.IGNORECASE)
_ATTRIBUTION_VERB = re.compile(r"\b(?:schreef|wrote|geschreven)\b", re.IGNORECASE)
# Zoho and Android: "---- On … wrote ----", "---- Name wrote ----".
_DASHED_ATTRIBUTION = re.compile(r"-{2,}\s*\S.*\b(?:schreef|wrote|geschreven)\b", re.IGNORECASE)
# Gmail in some locales: "2016-12-08 11:00 GMT+01:00 Name <addr>:".
_DATE_FIRST = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b")
# "Name <addr> wrote:" as a whole line: a name (no colon, no brackets), an address.
_NAME_ADDRESS_WROTE = re.compile(
    r"[^:<>]{0,100}<\s?[^<>\s@]+@[^<>\s]+>\s*(?:wrote|schreef|(?:heeft\s+)?(?:het\s+volgende\s+)?"
    r"geschreven)\s*:",
    re.IGNORECASE,
)
_ADDRESS_END = re.compile(r"@[^\s<>]+>?\s*:$")
# An attribution a client folds over this many lines (Gmail wraps at 80 characters).
_ATTRIBUTION_LINES = 3


def reply_text(
    plain: str | None, html: str | None, *, flowed: bool = False, delsp: bool = False
) -> str:
    """The new text above the quoted original; ``""`` when there is none."""
    try:
        if plain is not None and plain.strip():
            lines = plain.splitlines()
            if flowed:
                lines = _unflow(lines, delsp=delsp)
            complete = True
        elif html is not None and html.strip():
            text, complete = _html_to_text(html)
            lines = text.splitlines()
        else:
            return ""
        complete = complete and len(lines) <= MAX_LINES
        kept, found = _cut_at_quote(lines)
        kept, found_by_library = _cut_at_library_header(kept)
        if not complete and not (found or found_by_library):
            # The part not read may hold more command lines: better none than some.
            return ""
        return "\n".join(kept)
    except Exception:  # a reply we cannot read must count as no command, never crash
        return ""


def _unflow(lines: list[str], *, delsp: bool) -> list[str]:
    """Join RFC 3676 soft line breaks in the unquoted lines; quoted ones are cut later."""
    out: list[str] = []
    pending: str | None = None
    for raw in lines:
        if raw.startswith(">"):
            if pending is not None:
                out.append(pending)
                pending = None
            out.append(raw)
            continue
        line = raw[1:] if raw.startswith(" ") else raw  # undo space-stuffing
        if pending is not None:
            line = pending + line
            pending = None
        if line.endswith(" ") and line != "-- ":
            pending = line[:-1] if delsp else line
        else:
            out.append(line)
    if pending is not None:
        out.append(pending)
    return out


def _html_to_text(html: str) -> tuple[str, bool]:
    """The visible text above the first reply divider, and whether all of it was read."""
    from inscriptis import Inscriptis  # local: importing it is slow and only HTML needs it

    complete = len(html) <= MAX_HTML_CHARS
    # lxml refuses str input that declares its own encoding.
    source = re.sub(r"^\s*<\?xml[^>]*\?>", "", html[:MAX_HTML_CHARS], count=1)
    parser = lxml_html.HTMLParser()
    try:
        tree = lxml_html.document_fromstring(source, parser=parser)
    except (etree.ParserError, ValueError):
        return "", True
    # libxml2 stops at a fatal error (e.g. nesting too deep) and keeps what it had.
    if any(error.level >= etree.ErrorLevels.FATAL for error in parser.error_log):
        complete = False
    if not _drop_invisible(tree):
        return "", True
    divider = next((el for el in tree.iter() if _is_divider(el)), None)
    if divider is tree:
        return "", True
    if divider is not None:
        _cut_from(divider)
    # Rendering time grows with the number of elements; what is above a divider is small.
    beyond = next(itertools.islice(tree.iter(), MAX_ELEMENTS, None), None)
    if beyond is not None:
        complete = False
        if beyond is tree:
            return "", False
        _cut_from(beyond)
    return str(Inscriptis(tree).get_text()), complete


def _drop_invisible(tree: Any) -> bool:
    """Remove what a reader cannot see; False when that is the whole document."""
    doomed = []
    for el in tree.iter():
        if not isinstance(el.tag, str):  # comments, processing instructions
            doomed.append(el)
            continue
        tag = el.tag.lower().rpartition(":")[2]
        style = re.sub(r"\s+", "", (el.get("style") or "").lower())
        if tag in _REMOVED_TAGS or el.get("hidden") is not None or _HIDING_STYLE.search(style):
            doomed.append(el)
    for el in doomed:
        parent = el.getparent()
        if parent is None:
            return False  # the whole document is hidden
        _remove_keeping_tail(el, parent)
    return True


def _remove_keeping_tail(el: Any, parent: Any) -> None:
    tail = el.tail
    previous = el.getprevious()
    parent.remove(el)
    if tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail


def _is_divider(el: Any) -> bool:
    if not isinstance(el.tag, str):
        return False
    tag = el.tag.lower()
    if tag in ("blockquote", "hr"):
        return True
    if (el.get("id") or "").lower() in _DIVIDER_IDS:
        return True
    classes = (el.get("class") or "").lower().split()
    # Yahoo prefixes its quote container per message: "ydp2d263a95yahoo_quoted"
    # (and "yiv…", "m_…" when the mail has been quoted again).
    if any(c in _DIVIDER_CLASSES or c.endswith("yahoo_quoted") for c in classes):
        return True
    style = re.sub(r"\s+", "", (el.get("style") or "").lower())
    # The header box of Outlook desktop (a solid top border over 3pt of padding) and of
    # Windows Mail (longhand: border-top-style:solid with a padding-top), any colour.
    solid_top = "border-top:solid" in style or "border-top-style:solid" in style
    return solid_top and ("padding:3.0pt0" in style or "padding-top:" in style)


def _cut_from(el: Any) -> None:
    """Remove ``el`` and everything after it in document order."""
    node = el
    while True:
        parent = node.getparent()
        if parent is None:
            break
        for sibling in list(node.itersiblings()):
            parent.remove(sibling)
        node.tail = None
        node = parent
    parent = el.getparent()
    if parent is not None:
        parent.remove(el)


def _norm(line: str) -> str:
    """The start of a line as it reads: format characters gone, any space a space."""
    return "".join(
        " " if ch.isspace() else ch for ch in line[:_NORM_CHARS] if unicodedata.category(ch) != "Cf"
    ).strip()


def _cut_at_quote(lines: list[str]) -> tuple[list[str], bool]:
    """The lines above the first quote marker, and whether there was one."""
    normed = [_norm(line) for line in lines[: MAX_LINES + _ATTRIBUTION_LINES]]
    kept: list[str] = []
    found = False
    for i in range(min(len(normed), MAX_LINES)):
        if _starts_quote(normed[i : i + _ATTRIBUTION_LINES]):
            found = True
            break
        kept.append(lines[i])
    # Blank lines around the text would only shift the line numbers a functionaris is shown.
    while kept and not _norm(kept[-1]):
        kept.pop()
    first = next((i for i, line in enumerate(kept) if _norm(line)), len(kept))
    return kept[first:], found


def _starts_quote(window: list[str]) -> bool:
    """Whether the first line of ``window`` starts the quote; the lines after it are
    there for attributions a client folded over several lines."""
    line = window[0]
    if line.startswith((">", "|>")):
        return True
    if _ORIGINAL.match(line) or _FORWARDED.match(line) or _RULE.match(line):
        return True
    if _FROM_LINE.match(line) or _DASHED_ATTRIBUTION.match(line):
        return True
    if _HEADER_LINE.match(line) and len(window) > 1 and _HEADER_LINE.match(window[1]):
        return True
    # A folded attribution has no blank line in it.
    folded = list(itertools.takewhile(bool, window))
    candidates = [" ".join(folded[:n]).rstrip() for n in range(1, len(folded) + 1)]
    if _ATTRIBUTION_START.match(line):
        return any(c.endswith(":") and _ATTRIBUTION_VERB.search(c) for c in candidates)
    if _DATE_FIRST.match(line):
        return any(_ADDRESS_END.search(c) for c in candidates)
    # Not anchored on a word: the address must begin on this very line, so that a
    # command line is never read as the start of a name on the lines below it.
    return "<" in line and any(_NAME_ADDRESS_WROTE.fullmatch(c) for c in candidates)


def _cut_at_library_header(lines: list[str]) -> tuple[list[str], bool]:
    """Let mail-parser-reply find a quote header we missed; keep the lines above it."""
    from mailparser_reply import EmailReplyParser

    window = [_norm(line)[:LIBRARY_LINE_CHARS] for line in lines[:LIBRARY_LINES]]
    # Its normalisation strips lines and joins underscore rules; ours already did both,
    # so its text is ours and a position in it maps back to a line here.
    shadow = "\n".join(window)
    message = EmailReplyParser(languages=list(_LANGUAGES)).read(shadow)
    if not message.replies:
        return lines, False
    first = message.replies[0]
    if first.headers:
        return [], True
    content = first.content
    start = shadow.find(content) if content else -1
    if start < 0:
        return ([], True) if shadow.strip() else (lines, False)
    end = start + len(content)
    if end >= len(shadow.rstrip()):
        return lines, False
    return lines[: shadow.count("\n", 0, end) + 1], True
