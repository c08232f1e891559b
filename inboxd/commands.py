"""The commands in a functionaris's reply: grammar, conflicts, wording (the contract:
docs/contract.md, "Commands by reply").

``parse_commands(text, destinations) -> Parsed`` reads the text ``reply_text``
returned. ``destinations`` are the keys of ``[destinations]`` in the config.

Grammar. The commands are the leading non-empty lines, one per line. The first
non-empty line that does not begin with a command word ends them; it and every
later non-empty line go to ``Parsed.ignored`` (at most ``MAX_IGNORED_LINES``, each
cut to ``MAX_QUOTED_CHARS``), command words there included. Case does not matter,
nor do NFKC variants (full-width letters), format characters (zero-width spaces,
bidi marks), non-breaking or other Unicode spaces, asterisks around a line (Gmail's
plain-text bold), trailing ``.,;:!?`` and quotes on a word.

=============================  =========================  ==========================
command                        alias                      result
=============================  =========================  ==========================
``<DEST> …``                   ``DOORZETTEN``/``FORWARD``  ``Forward``
                               ``[naar|to] <DEST> …``
``VORM <vorm>``                ``TYPE <form>``            ``SetForm``
``AFSLUITEN [reden]``          ``CLOSE [reason]``         ``Close``
``VRAAG <tekst>``              ``ASK <text>``             ``Ask``
``WACHT``                      ``HOLD``                   ``Hold``
``GEEN TERUGKOPPELING``        ``NO FEEDBACK``            ``NoFeedback``
``STATUS``                                                ``Status``
``HULP``                       ``HELP``                   ``Help``
=============================  =========================  ==========================

* A colon may follow the command word: ``DOORZETTEN: KEDO``, ``VORM: arbeid``,
  ``VRAAG: …``. A ``-``/``–``/``—`` before a reason or question is dropped too.
* Destinations are config keys, matched without regard to case; in a list they may
  be separated by spaces, ``,`` ``;`` ``/`` ``+`` ``&`` or the words ``en``/``and``.
  A token with ``@`` or ``mailto:`` is an address and always an
  ``unknown_destination``: inboxd forwards only to configured destinations. A key
  that is also a command word (``status``) or that differs from another only in
  case is never matched as a bare word; ``DOORZETTEN status`` still works for the
  former.
* Forms: ``seksueel``/``sexual``, ``arbeid``/``labour``/``labor``,
  ``crimineel``/``criminal``, ``overig``/``other``.
* ``VRAAG`` and ``AFSLUITEN`` take the rest of their one line; a question does not
  continue on the next line (that line ends the commands and is reported ignored).

Conflicts (code ``conflict``, reported on the later line, ``detail`` = the number
of the earlier line): two different forms; two different ``AFSLUITEN`` reasons; two
different questions; ``AFSLUITEN`` with a forward or with ``VRAAG``; a forward with
``VRAAG`` (the signal would be deleted before the answer came); ``WACHT`` with a
forward or with ``AFSLUITEN``. Identical repeats are merged, and so are all forward
lines (``KEDO`` + ``RIEC`` = one ``Forward``). ``WACHT`` with ``VRAAG``, ``VORM`` or
``GEEN TERUGKOPPELING`` with anything, and ``STATUS``/``HULP`` with anything are
allowed.

Result. All or nothing: when ``errors`` is not empty, ``commands`` is empty, so a
caller cannot carry out part of a rejected mail. Otherwise ``commands`` holds at
most one command of each type in this order: ``SetForm``, ``NoFeedback``,
``Forward``, ``Close``, ``Ask``, ``Hold``, ``Status``, ``Help``. No command at all
is the error ``no_command`` on the first non-empty line (line 0 if there is none).
``line_no`` counts the lines of ``text`` from 1. Error codes and their ``detail``:

======================  ==================================================
``unknown_destination``  the token, as written
``bad_form``             the token, as written
``missing_argument``     the command word, upper case
``unexpected_argument``  the command word, upper case
``conflict``             the number of the earlier line
``no_command``           ``""``
``too_long``             ``MAX_LINE_CHARS``
``too_many_commands``    ``MAX_COMMAND_LINES`` (parsing stops there)
======================  ==================================================

``explain``, ``describe`` and ``help_lines`` word errors, results and the HULP
answer in Dutch or English for the ``command_rejected`` and ``command_result``
mails.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Literal

MAX_COMMAND_LINES = 20
MAX_LINE_CHARS = 1_000
MAX_IGNORED_LINES = 20
MAX_QUOTED_CHARS = 200

Language = Literal["nl", "en"]


class Form(StrEnum):
    SEKSUEEL = "seksueel"
    ARBEID = "arbeid"
    CRIMINEEL = "crimineel"
    OVERIG = "overig"


@dataclass(frozen=True)
class Forward:
    destinations: tuple[str, ...]  # config keys, sorted, unique


@dataclass(frozen=True)
class SetForm:
    form: Form


@dataclass(frozen=True)
class Close:
    reason: str  # "" when none was given


@dataclass(frozen=True)
class Ask:
    question: str


@dataclass(frozen=True)
class Hold:
    pass


@dataclass(frozen=True)
class NoFeedback:
    pass


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Help:
    pass


Command = Forward | SetForm | Close | Ask | Hold | NoFeedback | Status | Help


class ErrorCode(StrEnum):
    UNKNOWN_DESTINATION = "unknown_destination"
    BAD_FORM = "bad_form"
    MISSING_ARGUMENT = "missing_argument"
    UNEXPECTED_ARGUMENT = "unexpected_argument"
    CONFLICT = "conflict"
    NO_COMMAND = "no_command"
    TOO_LONG = "too_long"
    TOO_MANY_COMMANDS = "too_many_commands"


@dataclass(frozen=True)
class LineError:
    line_no: int
    line: str  # the line as read, cut to MAX_QUOTED_CHARS
    code: str  # an ErrorCode
    detail: str


@dataclass(frozen=True)
class Parsed:
    commands: tuple[Command, ...]
    errors: tuple[LineError, ...]
    ignored: tuple[str, ...]


class _Verb(Enum):
    FORWARD = "forward"
    FORM = "form"
    CLOSE = "close"
    ASK = "ask"
    HOLD = "hold"
    NO_FEEDBACK = "no_feedback"
    STATUS = "status"
    HELP = "help"


_VERBS: dict[str, _Verb] = {
    "doorzetten": _Verb.FORWARD,
    "forward": _Verb.FORWARD,
    "vorm": _Verb.FORM,
    "type": _Verb.FORM,
    "afsluiten": _Verb.CLOSE,
    "close": _Verb.CLOSE,
    "vraag": _Verb.ASK,
    "ask": _Verb.ASK,
    "wacht": _Verb.HOLD,
    "hold": _Verb.HOLD,
    "status": _Verb.STATUS,
    "hulp": _Verb.HELP,
    "help": _Verb.HELP,
}
_TWO_WORD_VERBS: dict[tuple[str, str], _Verb] = {
    ("geen", "terugkoppeling"): _Verb.NO_FEEDBACK,
    ("no", "feedback"): _Verb.NO_FEEDBACK,
}
_FORMS: dict[str, Form] = {
    "seksueel": Form.SEKSUEEL,
    "sexual": Form.SEKSUEEL,
    "arbeid": Form.ARBEID,
    "labour": Form.ARBEID,
    "labor": Form.ARBEID,
    "crimineel": Form.CRIMINEEL,
    "criminal": Form.CRIMINEEL,
    "overig": Form.OVERIG,
    "other": Form.OVERIG,
}
_LIST_FILLERS = frozenset({"en", "and"})
_FORWARD_PREFIXES = frozenset({"naar", "to"})

_WORD_EDGE = ".,;:!?\"'`“”‘’„‚«»‹›()[]"
_FIRST_WORD = re.compile(r"[^\s:,;/+&]+")
_LIST_SPLIT = re.compile(r"[\s,;/+&]+")
_ARGUMENT_LEAD = " :-–—"
# Cleaning a huge line costs time; anything this long is far over the limit anyway.
_CLEAN_CHARS = 4 * MAX_LINE_CHARS


def parse_commands(text: str, destinations: Collection[str]) -> Parsed:
    """Read the command lines at the top of ``text``; never raises on any string."""
    keys = _destination_keys(destinations)
    lines = text.splitlines()
    found: list[tuple[int, str, Command]] = []
    errors: list[LineError] = []
    first_text: tuple[int, str] | None = None
    end = len(lines)
    command_lines = 0
    for index, raw in enumerate(lines):
        if not raw or raw.isspace():
            continue
        line = _clean(raw[:_CLEAN_CHARS])
        if not line:
            continue
        line_no = index + 1
        if first_text is None:
            first_text = (line_no, line)
        verb, word, rest = _split(line, keys)
        if verb is None:
            end = index
            break
        command_lines += 1
        if command_lines > MAX_COMMAND_LINES:
            errors.append(
                _error(line_no, line, ErrorCode.TOO_MANY_COMMANDS, str(MAX_COMMAND_LINES))
            )
            end = len(lines)
            break
        if len(raw) > _CLEAN_CHARS or len(line) > MAX_LINE_CHARS:
            errors.append(_error(line_no, line, ErrorCode.TOO_LONG, str(MAX_LINE_CHARS)))
            continue
        result = _parse_line(verb, word, rest, keys)
        if isinstance(result, tuple):
            code, detail = result
            errors.append(_error(line_no, line, code, detail))
        else:
            found.append((line_no, line, result))

    errors.extend(_conflicts(found))
    if not found and not errors:
        line_no, line = first_text if first_text is not None else (0, "")
        errors.append(_error(line_no, line, ErrorCode.NO_COMMAND, ""))
    ignored = _ignored(lines[end:])
    if errors:
        return Parsed(commands=(), errors=tuple(errors), ignored=ignored)
    return Parsed(commands=_merge([cmd for _, _, cmd in found]), errors=(), ignored=ignored)


def _destination_keys(destinations: Collection[str]) -> dict[str, str]:
    """Folded key → config key; keys that fold alike are ambiguous and left out."""
    by_fold: dict[str, list[str]] = {}
    for key in destinations:
        by_fold.setdefault(_fold(key), []).append(key)
    return {folded: keys[0] for folded, keys in by_fold.items() if len(keys) == 1 and folded}


def _clean(line: str) -> str:
    text = "".join(" " if ch.isspace() else ch for ch in line if unicodedata.category(ch) != "Cf")
    text = " ".join(text.split())
    return text.strip("*").strip()


def _fold(word: str) -> str:
    return unicodedata.normalize("NFKC", word).casefold().strip(_WORD_EDGE)


def _split(line: str, keys: Mapping[str, str]) -> tuple[_Verb | None, str, str]:
    """(verb, the command word as written, the rest); verb None: not a command line."""
    first = _FIRST_WORD.match(line)
    if first is None:
        return None, "", ""
    word = _fold(first.group())
    rest = line[first.end() :]
    if word in ("geen", "no"):
        second = _FIRST_WORD.search(rest)
        if second is not None and rest[: second.start()].strip() == "":
            verb = _TWO_WORD_VERBS.get((word, _fold(second.group())))
            if verb is not None:
                written = f"{first.group()} {second.group()}".strip(_WORD_EDGE)
                return verb, written.upper(), rest[second.end() :]
        return None, "", ""
    if word in _VERBS:
        return _VERBS[word], first.group().strip(_WORD_EDGE).upper(), rest
    if word in keys:
        return _Verb.FORWARD, "", line  # a bare destination list: the words are the list
    return None, "", ""


def _parse_line(
    verb: _Verb, word: str, rest: str, keys: Mapping[str, str]
) -> Command | tuple[ErrorCode, str]:
    argument = rest.lstrip(_ARGUMENT_LEAD).strip()
    if verb is _Verb.FORWARD:
        return _parse_forward(word, argument, keys)
    if verb is _Verb.FORM:
        tokens = argument.split()
        if not tokens:
            return ErrorCode.MISSING_ARGUMENT, word
        if len(tokens) > 1:
            return ErrorCode.UNEXPECTED_ARGUMENT, word
        form = _FORMS.get(_fold(tokens[0]))
        return SetForm(form) if form is not None else (ErrorCode.BAD_FORM, tokens[0])
    if verb is _Verb.CLOSE:
        return Close(argument)
    if verb is _Verb.ASK:
        return Ask(argument) if argument else (ErrorCode.MISSING_ARGUMENT, word)
    if argument.strip(_WORD_EDGE + " "):
        return ErrorCode.UNEXPECTED_ARGUMENT, word
    simple: dict[_Verb, Command] = {
        _Verb.HOLD: Hold(),
        _Verb.NO_FEEDBACK: NoFeedback(),
        _Verb.STATUS: Status(),
        _Verb.HELP: Help(),
    }
    return simple[verb]


def _parse_forward(
    word: str, argument: str, keys: Mapping[str, str]
) -> Forward | tuple[ErrorCode, str]:
    tokens = [t for t in _LIST_SPLIT.split(argument) if t.strip(_WORD_EDGE)]
    if word and tokens and _fold(tokens[0]) in _FORWARD_PREFIXES:
        tokens = tokens[1:]
    chosen: set[str] = set()
    for token in tokens:
        folded = _fold(token)
        if folded in _LIST_FILLERS:
            continue
        if "@" in token or folded.startswith("mailto:") or folded not in keys:
            return ErrorCode.UNKNOWN_DESTINATION, _cut(token)
        chosen.add(keys[folded])
    if not chosen:
        return ErrorCode.MISSING_ARGUMENT, word
    return Forward(tuple(sorted(chosen)))


_CONFLICTING_KINDS = frozenset(
    {
        frozenset({Close, Forward}),
        frozenset({Close, Ask}),
        frozenset({Forward, Ask}),
        frozenset({Hold, Forward}),
        frozenset({Hold, Close}),
    }
)
_SINGLE_VALUED = (SetForm, Close, Ask)


def _conflicts(found: list[tuple[int, str, Command]]) -> list[LineError]:
    errors: list[LineError] = []
    for i, (line_no, line, command) in enumerate(found):
        for earlier_no, _, earlier in found[:i]:
            same = type(earlier) is type(command)
            if (same and isinstance(command, _SINGLE_VALUED) and earlier != command) or (
                frozenset({type(earlier), type(command)}) in _CONFLICTING_KINDS
            ):
                errors.append(_error(line_no, line, ErrorCode.CONFLICT, str(earlier_no)))
                break
    return errors


_ORDER: tuple[type, ...] = (SetForm, NoFeedback, Forward, Close, Ask, Hold, Status, Help)


def _merge(commands: list[Command]) -> tuple[Command, ...]:
    destinations = sorted({d for c in commands if isinstance(c, Forward) for d in c.destinations})
    merged: dict[type, Command] = {}
    for command in commands:
        merged.setdefault(type(command), command)
    if destinations:
        merged[Forward] = Forward(tuple(destinations))
    return tuple(merged[kind] for kind in _ORDER if kind in merged)


def _ignored(lines: list[str]) -> tuple[str, ...]:
    ignored: list[str] = []
    for raw in lines:
        if len(ignored) >= MAX_IGNORED_LINES:
            break
        if not raw or raw.isspace():
            continue
        line = _clean(raw[:_CLEAN_CHARS])
        if line:
            ignored.append(_cut(line))
    return tuple(ignored)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 1] + "…"


def _error(line_no: int, line: str, code: ErrorCode, detail: str) -> LineError:
    return LineError(line_no=line_no, line=_cut(line), code=str(code), detail=detail)


# --- wording ---------------------------------------------------------------------

_FORM_WORDS: dict[Language, dict[Form, str]] = {
    "nl": {
        Form.SEKSUEEL: "seksueel",
        Form.ARBEID: "arbeid",
        Form.CRIMINEEL: "crimineel",
        Form.OVERIG: "overig",
    },
    "en": {
        Form.SEKSUEEL: "sexual",
        Form.ARBEID: "labour",
        Form.CRIMINEEL: "criminal",
        Form.OVERIG: "other",
    },
}

_MISSING: dict[Language, dict[_Verb, str]] = {
    "nl": {
        _Verb.FORWARD: "de bestemming",
        _Verb.FORM: "de vorm (seksueel, arbeid, crimineel of overig)",
        _Verb.ASK: "de vraag aan de melder",
    },
    "en": {
        _Verb.FORWARD: "the destination",
        _Verb.FORM: "the form (sexual, labour, criminal or other)",
        _Verb.ASK: "the question for the reporter",
    },
}


def _verb_of(word: str) -> _Verb | None:
    folded = _fold(word)
    if folded in _VERBS:
        return _VERBS[folded]
    parts = folded.split()
    return _TWO_WORD_VERBS.get((parts[0], parts[1])) if len(parts) == 2 else None


def explain(error: LineError, language: Language) -> str:
    """One sentence for the ``command_rejected`` mail saying which line and why."""
    nl = language == "nl"
    where = (
        f"Regel {error.line_no} („{error.line}”)"
        if nl
        else f'Line {error.line_no} ("{error.line}")'
    )
    code, detail = error.code, error.detail
    if code == ErrorCode.UNKNOWN_DESTINATION:
        if "@" in detail or detail.casefold().startswith("mailto:"):
            return (
                f"{where}: „{detail}” is een e-mailadres; doorzetten kan alleen naar een "
                "ingestelde bestemming (stuur HULP voor de lijst)."
                if nl
                else f'{where}: "{detail}" is an e-mail address; signals can only be '
                "forwarded to a configured destination (send HELP for the list)."
            )
        return (
            f"{where}: „{detail}” is geen ingestelde bestemming (stuur HULP voor de lijst)."
            if nl
            else f'{where}: "{detail}" is not a configured destination (send HELP for the list).'
        )
    if code == ErrorCode.BAD_FORM:
        return (
            f"{where}: „{detail}” is geen vorm van uitbuiting; kies seksueel, arbeid, "
            "crimineel of overig."
            if nl
            else f'{where}: "{detail}" is not a form of exploitation; choose sexual, labour, '
            "criminal or other."
        )
    if code == ErrorCode.MISSING_ARGUMENT:
        verb = _verb_of(detail) or _Verb.FORWARD
        what = _MISSING[language].get(verb, _MISSING[language][_Verb.FORWARD])
        return (
            f"{where}: achter {detail or 'DOORZETTEN'} ontbreekt {what}."
            if nl
            else f"{where}: {detail or 'FORWARD'} needs {what}."
        )
    if code == ErrorCode.UNEXPECTED_ARGUMENT:
        if _verb_of(detail) is _Verb.FORM:
            return (
                f"{where}: achter {detail} hoort precies één vorm te staan."
                if nl
                else f"{where}: {detail} takes exactly one form."
            )
        return (
            f"{where}: achter {detail} hoort niets te staan; zet een toelichting onder de "
            "opdrachten."
            if nl
            else f"{where}: {detail} takes nothing after it; put any remark below the commands."
        )
    if code == ErrorCode.CONFLICT:
        return (
            f"{where} gaat niet samen met regel {detail}; stuur één samenhangende opdracht."
            if nl
            else f"{where} cannot be combined with line {detail}; send one consistent command."
        )
    if code == ErrorCode.NO_COMMAND:
        if error.line_no == 0:
            return (
                "Er stond geen opdracht boven het aangehaalde bericht."
                if nl
                else "There was no command above the quoted message."
            )
        return (
            f"{where} is geen opdracht. Zet de opdrachten bovenaan uw antwoord, elk op een "
            "eigen regel, vóór een aanhef of ondertekening (stuur HULP voor de lijst)."
            if nl
            else f"{where} is not a command. Put the commands at the top of your reply, one "
            "per line, before any greeting or signature (send HELP for the list)."
        )
    if code == ErrorCode.TOO_LONG:
        return (
            f"Regel {error.line_no} is langer dan {detail} tekens."
            if nl
            else f"Line {error.line_no} is longer than {detail} characters."
        )
    if code == ErrorCode.TOO_MANY_COMMANDS:
        return (
            f"Er staan meer dan {detail} opdrachtregels in uw antwoord (vanaf regel "
            f"{error.line_no})."
            if nl
            else f"Your reply has more than {detail} command lines (from line {error.line_no})."
        )
    return f"{where} is niet begrepen." if nl else f"{where} was not understood."


def describe(command: Command, language: Language) -> str:
    """One line for the ``command_result`` mail saying what was done."""
    nl = language == "nl"
    if isinstance(command, Forward):
        names = ", ".join(d.upper() for d in command.destinations)
        return f"Wordt doorgezet naar {names}" if nl else f"Being forwarded to {names}"
    if isinstance(command, SetForm):
        form = _FORM_WORDS[language][command.form]
        return f"Vorm vastgelegd: {form}" if nl else f"Form recorded: {form}"
    if isinstance(command, Close):
        if command.reason:
            return (
                f"Afgesloten zonder doorzetten (reden: {command.reason})"
                if nl
                else f"Closed without forwarding (reason: {command.reason})"
            )
        return "Afgesloten zonder doorzetten" if nl else "Closed without forwarding"
    if isinstance(command, Ask):
        return (
            f"Vraag gesteld aan de melder: „{command.question}”"
            if nl
            else f'Question sent to the reporter: "{command.question}"'
        )
    if isinstance(command, Hold):
        return (
            "In de wacht: geen herinneringen tot de volgende opdracht"
            if nl
            else "On hold: no reminders until the next command"
        )
    if isinstance(command, NoFeedback):
        return (
            "De melder krijgt geen automatische terugkoppeling"
            if nl
            else "The reporter will get no automatic feedback"
        )
    if isinstance(command, Status):
        return "Status opgevraagd" if nl else "Status requested"
    return "Hulp opgevraagd" if nl else "Help requested"


def form_words(language: Language) -> tuple[str, ...]:
    """The words ``VORM``/``TYPE`` takes, in the given language."""
    return tuple(_FORM_WORDS[language].values())


def help_lines(destinations: Mapping[str, str], language: Language) -> list[str]:
    """The HULP answer: every command, then each destination (KEY — label)."""
    if language == "nl":
        lines = [
            "Zet de opdrachten bovenaan uw antwoord, één per regel, vóór aanhef of "
            "ondertekening. Hoofdletters maken niet uit.",
            "<BESTEMMING> … (bijv. KEDO of RIEC KEDO), ook DOORZETTEN <BESTEMMING> … — "
            "doorzetten naar elke genoemde bestemming",
            "VORM seksueel|arbeid|crimineel|overig — de vorm van uitbuiting vastleggen",
            "AFSLUITEN [reden] — afsluiten zonder doorzetten; het signaal wordt verwijderd",
            "VRAAG <tekst> — de vraag per mail aan de melder stellen",
            "WACHT — open houden, geen herinneringen tot de volgende opdracht",
            "GEEN TERUGKOPPELING — de melder krijgt geen automatische terugkoppeling",
            "STATUS — de stand van het signaal",
            "HULP — deze lijst",
            "Engels mag ook: FORWARD, TYPE, CLOSE, ASK, HOLD, NO FEEDBACK, HELP.",
            "Bestemmingen:",
        ]
    else:
        lines = [
            "Put the commands at the top of your reply, one per line, before any greeting "
            "or signature. Case does not matter.",
            "<DESTINATION> … (e.g. KEDO or RIEC KEDO), also FORWARD <DESTINATION> … — "
            "forward to each destination named",
            "TYPE sexual|labour|criminal|other — record the form of exploitation",
            "CLOSE [reason] — close without forwarding; the signal is deleted",
            "ASK <text> — mail the question to the reporter",
            "HOLD — keep open, no reminders until the next command",
            "NO FEEDBACK — the reporter gets no automatic feedback",
            "STATUS — the state of the signal",
            "HELP — this list",
            "Dutch works too: DOORZETTEN, VORM, AFSLUITEN, VRAAG, WACHT, GEEN "
            "TERUGKOPPELING, HULP.",
            "Destinations:",
        ]
    for key in sorted(destinations):
        lines.append(f"{key.upper()} — {destinations[key]}")
    return lines
