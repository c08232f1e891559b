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

One definition per command. Each command is one class below (in the spirit of
Mailman 3's email commands): its Dutch and English words, its argument grammar
(``parse``), what it conflicts with, its description (the values its text takes)
and help line (their text named by ``name`` in templates/<language>/text/
commands.txt), and its effect (``apply``, on a :class:`CommandEffects` that triage
supplies). The parser, the conflict check, ``explain``, ``describe`` and
``help_lines`` read these classes; nothing else lists the commands.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal, Protocol

from inboxd.templates import Templates, shipped

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


class ErrorCode(StrEnum):
    UNKNOWN_DESTINATION = "unknown_destination"
    BAD_FORM = "bad_form"
    MISSING_ARGUMENT = "missing_argument"
    UNEXPECTED_ARGUMENT = "unexpected_argument"
    CONFLICT = "conflict"
    NO_COMMAND = "no_command"
    TOO_LONG = "too_long"
    TOO_MANY_COMMANDS = "too_many_commands"


class CommandEffects(Protocol):
    """What a command can do to its signal. Triage supplies it for one accepted
    mail; ``forward`` and ``close`` take effect after the other commands, as the
    contract says (a forward is queued once, a close ends the signal last)."""

    def set_form(self, form: Form) -> None: ...
    def hold(self) -> None: ...
    def no_feedback(self) -> None: ...
    def ask(self, question: str) -> None: ...
    def forward(self, destinations: tuple[str, ...]) -> None: ...
    def close(self, reason: str) -> None: ...
    def status(self) -> None: ...
    def help(self) -> None: ...


class _Definition:
    """What every command class defines; the values are class attributes."""

    # Folded command words per language; the first is the one the help shows. A
    # two-word command is written with one space ("geen terugkoppeling").
    words: ClassVar[Mapping[Language, tuple[str, ...]]]
    # Place in ``Parsed.commands`` (and so the order in which effects apply).
    rank: ClassVar[int]
    # Two different values on two lines are a conflict (two forms, two questions).
    single_valued: ClassVar[bool] = False
    # Names of the command classes this one cannot be combined with (both ways).
    conflicts_with: ClassVar[frozenset[str]] = frozenset()
    # Listed under "done" in the ``command_result`` answer.
    reported: ClassVar[bool] = True
    # Names its texts in templates/<language>/text/commands.txt: describe_<name>,
    # help_<name>, and ``command`` in explain.
    name: ClassVar[str]

    @classmethod
    def parse(
        cls, word: str, argument: str, keys: Mapping[str, str]
    ) -> Command | tuple[ErrorCode, str]:
        """The default grammar: the command word alone."""
        if argument.strip(_WORD_EDGE + " "):
            return ErrorCode.UNEXPECTED_ARGUMENT, word
        return cls()  # type: ignore[return-value]

    def described(self, language: Language) -> dict[str, str]:
        """The values its ``describe_<name>`` text takes."""
        return {}

    def apply(self, effects: CommandEffects) -> None:
        raise NotImplementedError

    def comparable(self) -> object:
        """What must agree between a mail's text and HTML parts (see triage)."""
        return self


@dataclass(frozen=True)
class Forward(_Definition):
    destinations: tuple[str, ...]  # config keys, sorted, unique

    name = "forward"
    words = {"nl": ("doorzetten",), "en": ("forward",)}
    rank = 2
    conflicts_with = frozenset({"Close", "Ask", "Hold"})

    @classmethod
    def parse(
        cls, word: str, argument: str, keys: Mapping[str, str]
    ) -> Command | tuple[ErrorCode, str]:
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
        return cls(tuple(sorted(chosen)))

    def described(self, language: Language) -> dict[str, str]:
        return {"destinations": ", ".join(d.upper() for d in self.destinations)}

    def apply(self, effects: CommandEffects) -> None:
        effects.forward(self.destinations)


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


@dataclass(frozen=True)
class SetForm(_Definition):
    form: Form

    name = "form"
    words = {"nl": ("vorm",), "en": ("type",)}
    rank = 0
    single_valued = True

    @classmethod
    def parse(
        cls, word: str, argument: str, keys: Mapping[str, str]
    ) -> Command | tuple[ErrorCode, str]:
        tokens = argument.split()
        if not tokens:
            return ErrorCode.MISSING_ARGUMENT, word
        if len(tokens) > 1:
            return ErrorCode.UNEXPECTED_ARGUMENT, word
        form = _FORMS.get(_fold(tokens[0]))
        return cls(form) if form is not None else (ErrorCode.BAD_FORM, tokens[0])

    def described(self, language: Language) -> dict[str, str]:
        return {"form": _FORM_WORDS[language][self.form]}

    def apply(self, effects: CommandEffects) -> None:
        effects.set_form(self.form)


@dataclass(frozen=True)
class Close(_Definition):
    reason: str  # "" when none was given

    name = "close"
    words = {"nl": ("afsluiten",), "en": ("close",)}
    rank = 3
    single_valued = True
    conflicts_with = frozenset({"Forward", "Ask", "Hold"})

    @classmethod
    def parse(
        cls, word: str, argument: str, keys: Mapping[str, str]
    ) -> Command | tuple[ErrorCode, str]:
        return cls(argument)

    def described(self, language: Language) -> dict[str, str]:
        return {"reason": self.reason}

    def apply(self, effects: CommandEffects) -> None:
        effects.close(self.reason)

    def comparable(self) -> object:
        return ("close", " ".join(self.reason.split()))


@dataclass(frozen=True)
class Ask(_Definition):
    question: str

    name = "ask"
    words = {"nl": ("vraag",), "en": ("ask",)}
    rank = 4
    single_valued = True
    conflicts_with = frozenset({"Forward", "Close"})

    @classmethod
    def parse(
        cls, word: str, argument: str, keys: Mapping[str, str]
    ) -> Command | tuple[ErrorCode, str]:
        return cls(argument) if argument else (ErrorCode.MISSING_ARGUMENT, word)

    def described(self, language: Language) -> dict[str, str]:
        return {"question": self.question}

    def apply(self, effects: CommandEffects) -> None:
        effects.ask(self.question)

    def comparable(self) -> object:
        # One part may wrap a question the other keeps on one line.
        return ("ask", " ".join(self.question.split()))


@dataclass(frozen=True)
class Hold(_Definition):
    name = "hold"
    words = {"nl": ("wacht",), "en": ("hold",)}
    rank = 5
    conflicts_with = frozenset({"Forward", "Close"})

    def apply(self, effects: CommandEffects) -> None:
        effects.hold()


@dataclass(frozen=True)
class NoFeedback(_Definition):
    name = "no_feedback"
    words = {"nl": ("geen terugkoppeling",), "en": ("no feedback",)}
    rank = 1

    def apply(self, effects: CommandEffects) -> None:
        effects.no_feedback()


@dataclass(frozen=True)
class Status(_Definition):
    name = "status"
    words = {"nl": ("status",), "en": ("status",)}
    rank = 6
    reported = False

    def apply(self, effects: CommandEffects) -> None:
        effects.status()


@dataclass(frozen=True)
class Help(_Definition):
    name = "help"
    words = {"nl": ("hulp",), "en": ("help",)}
    rank = 7
    reported = False

    def apply(self, effects: CommandEffects) -> None:
        effects.help()


Command = Forward | SetForm | Close | Ask | Hold | NoFeedback | Status | Help

# Every command, in the order the HULP answer lists them.
COMMANDS: tuple[type[Command], ...] = (Forward, SetForm, Close, Ask, Hold, NoFeedback, Status, Help)


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


def _words() -> tuple[dict[str, type[Command]], dict[tuple[str, str], type[Command]]]:
    one: dict[str, type[Command]] = {}
    two: dict[tuple[str, str], type[Command]] = {}
    for kind in COMMANDS:
        for words in kind.words.values():
            for word in words:
                first, _, second = word.partition(" ")
                if second:
                    two[(first, second)] = kind
                else:
                    one[first] = kind
    return one, two


_VERBS, _TWO_WORD_VERBS = _words()
_TWO_WORD_FIRSTS = frozenset(first for first, _ in _TWO_WORD_VERBS)
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
        kind, word, rest = _split(line, keys)
        if kind is None:
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
        result = kind.parse(word, rest.lstrip(_ARGUMENT_LEAD).strip(), keys)
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


def _split(line: str, keys: Mapping[str, str]) -> tuple[type[Command] | None, str, str]:
    """(command, the command word as written, the rest); None: not a command line."""
    first = _FIRST_WORD.match(line)
    if first is None:
        return None, "", ""
    word = _fold(first.group())
    rest = line[first.end() :]
    if word in _TWO_WORD_FIRSTS:
        second = _FIRST_WORD.search(rest)
        if second is not None and rest[: second.start()].strip() == "":
            kind = _TWO_WORD_VERBS.get((word, _fold(second.group())))
            if kind is not None:
                written = f"{first.group()} {second.group()}".strip(_WORD_EDGE)
                return kind, written.upper(), rest[second.end() :]
        return None, "", ""
    if word in _VERBS:
        return _VERBS[word], first.group().strip(_WORD_EDGE).upper(), rest
    if word in keys:
        return Forward, "", line  # a bare destination list: the words are the list
    return None, "", ""


def _conflicts(found: list[tuple[int, str, Command]]) -> list[LineError]:
    errors: list[LineError] = []
    for i, (line_no, line, command) in enumerate(found):
        for earlier_no, _, earlier in found[:i]:
            same = type(earlier) is type(command)
            if (same and command.single_valued and earlier != command) or (
                type(earlier).__name__ in command.conflicts_with
                or type(command).__name__ in earlier.conflicts_with
            ):
                errors.append(_error(line_no, line, ErrorCode.CONFLICT, str(earlier_no)))
                break
    return errors


def _merge(commands: list[Command]) -> tuple[Command, ...]:
    destinations = sorted({d for c in commands if isinstance(c, Forward) for d in c.destinations})
    merged: dict[type, Command] = {}
    for command in commands:
        merged.setdefault(type(command), command)
    if destinations:
        merged[Forward] = Forward(tuple(destinations))
    return tuple(sorted(merged.values(), key=lambda c: c.rank))


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


def _kind_of(word: str) -> type[Command] | None:
    """The command a command word (as an error's ``detail`` holds it) belongs to."""
    folded = _fold(word)
    if folded in _VERBS:
        return _VERBS[folded]
    parts = folded.split()
    return _TWO_WORD_VERBS.get((parts[0], parts[1])) if len(parts) == 2 else None


def explain(error: LineError, language: Language, texts: Templates | None = None) -> str:
    """One sentence for the ``command_rejected`` mail saying which line and why
    (``explain`` in templates/<language>/text/commands.txt; ``texts``: the
    configured templates, else the shipped ones)."""
    kind = _kind_of(error.detail) if error.code in _NAMES_A_WORD else None
    detail = error.detail
    return (texts or shipped(language)).phrase(
        "commands",
        "explain",
        code=error.code,
        line_no=error.line_no,
        line=error.line,
        detail=detail,
        command=kind.name if kind is not None else "",
        address="@" in detail or detail.casefold().startswith("mailto:"),
    )


# The error codes whose ``detail`` is the command word.
_NAMES_A_WORD = frozenset({ErrorCode.MISSING_ARGUMENT, ErrorCode.UNEXPECTED_ARGUMENT})


def describe(command: Command, language: Language, texts: Templates | None = None) -> str:
    """One line for the ``command_result`` mail saying what was done."""
    return (texts or shipped(language)).phrase(
        "commands", f"describe_{command.name}", **command.described(language)
    )


def form_words(language: Language) -> tuple[str, ...]:
    """The words ``VORM``/``TYPE`` takes, in the given language."""
    return tuple(_FORM_WORDS[language].values())


def help_lines(
    destinations: Mapping[str, str], language: Language, texts: Templates | None = None
) -> list[str]:
    """The HULP answer: every command, then each destination (KEY — label)."""
    phrase = (texts or shipped(language)).phrase
    other: Language = "en" if language == "nl" else "nl"
    # The other language's words, where they differ (STATUS is both).
    also = ", ".join(
        kind.words[other][0].upper()
        for kind in COMMANDS
        if kind.words[other][0] not in kind.words[language]
    )
    lines = [phrase("commands", "help_intro")]
    lines += [phrase("commands", f"help_{kind.name}") for kind in COMMANDS]
    lines += [phrase("commands", "help_also", words=also), phrase("commands", "help_destinations")]
    for key in sorted(destinations):
        lines.append(
            phrase("commands", "help_destination", key=key.upper(), label=destinations[key])
        )
    return lines
