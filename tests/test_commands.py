"""parse_commands: the grammar of docs/contract.md, "Commands by reply", all or nothing."""

from __future__ import annotations

import email
import email.policy
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxd.commands import (
    MAX_COMMAND_LINES,
    MAX_IGNORED_LINES,
    MAX_LINE_CHARS,
    MAX_QUOTED_CHARS,
    Ask,
    Close,
    Command,
    ErrorCode,
    Form,
    Forward,
    Help,
    Hold,
    LineError,
    NoFeedback,
    Parsed,
    SetForm,
    Status,
    describe,
    explain,
    help_lines,
    parse_commands,
)
from inboxd.replytext import reply_text

DESTS = frozenset({"kedo", "riec", "nla", "zvh"})


def ok(text: str, destinations: frozenset[str] = DESTS) -> tuple[Command, ...]:
    parsed = parse_commands(text, destinations)
    assert parsed.errors == (), parsed.errors
    return parsed.commands


def codes(text: str, destinations: frozenset[str] = DESTS) -> list[tuple[int, str]]:
    parsed = parse_commands(text, destinations)
    assert parsed.commands == ()
    return [(e.line_no, e.code) for e in parsed.errors]


# --- every command and alias ---------------------------------------------------------

COMMANDS: list[tuple[str, tuple[Command, ...]]] = [
    ("KEDO", (Forward(("kedo",)),)),
    ("kedo", (Forward(("kedo",)),)),
    ("Kedo", (Forward(("kedo",)),)),
    ("RIEC KEDO", (Forward(("kedo", "riec")),)),
    ("RIEC, KEDO", (Forward(("kedo", "riec")),)),
    ("KEDO en RIEC", (Forward(("kedo", "riec")),)),
    ("KEDO and RIEC", (Forward(("kedo", "riec")),)),
    ("KEDO/RIEC", (Forward(("kedo", "riec")),)),
    ("KEDO + NLA", (Forward(("kedo", "nla")),)),
    ("KEDO KEDO", (Forward(("kedo",)),)),
    ("DOORZETTEN KEDO", (Forward(("kedo",)),)),
    ("doorzetten riec nla", (Forward(("nla", "riec")),)),
    ("DOORZETTEN: KEDO", (Forward(("kedo",)),)),
    ("DOORZETTEN : KEDO", (Forward(("kedo",)),)),
    ("DOORZETTEN naar KEDO", (Forward(("kedo",)),)),
    ("FORWARD KEDO", (Forward(("kedo",)),)),
    ("Forward to RIEC", (Forward(("riec",)),)),
    ("VORM seksueel", (SetForm(Form.SEKSUEEL),)),
    ("VORM arbeid", (SetForm(Form.ARBEID),)),
    ("VORM crimineel", (SetForm(Form.CRIMINEEL),)),
    ("VORM overig", (SetForm(Form.OVERIG),)),
    ("vorm: Arbeid", (SetForm(Form.ARBEID),)),
    ("TYPE sexual", (SetForm(Form.SEKSUEEL),)),
    ("TYPE labour", (SetForm(Form.ARBEID),)),
    ("TYPE labor", (SetForm(Form.ARBEID),)),
    ("TYPE criminal", (SetForm(Form.CRIMINEEL),)),
    ("TYPE other", (SetForm(Form.OVERIG),)),
    ("VORM labour", (SetForm(Form.ARBEID),)),
    ("AFSLUITEN", (Close(""),)),
    ("AFSLUITEN dubbel signaal", (Close("dubbel signaal"),)),
    ("AFSLUITEN: dubbel", (Close("dubbel"),)),
    ("AFSLUITEN – geen mensenhandel", (Close("geen mensenhandel"),)),
    ("CLOSE duplicate", (Close("duplicate"),)),
    ("close", (Close(""),)),
    ("VRAAG Waar werkt zij?", (Ask("Waar werkt zij?"),)),
    ("VRAAG: Waar werkt zij?", (Ask("Waar werkt zij?"),)),
    ("ASK Where does she work?", (Ask("Where does she work?"),)),
    ("WACHT", (Hold(),)),
    ("HOLD", (Hold(),)),
    ("wacht.", (Hold(),)),
    ("GEEN TERUGKOPPELING", (NoFeedback(),)),
    ("Geen terugkoppeling.", (NoFeedback(),)),
    ("NO FEEDBACK", (NoFeedback(),)),
    ("STATUS", (Status(),)),
    ("status?", (Status(),)),
    ("HULP", (Help(),)),
    ("HELP", (Help(),)),
    ("Help!", (Help(),)),
]


@pytest.mark.parametrize("text,expected", COMMANDS)
def test_each_command_and_alias(text: str, expected: tuple[Command, ...]) -> None:
    assert ok(text) == expected


TOLERATED = [
    "  KEDO  ",
    "\tKEDO\t",
    "KEDO.",
    "KEDO,",
    "KEDO!",
    "“KEDO”",
    "*KEDO*",
    "\u00a0KEDO\u00a0",
    "\u200bKEDO\u200b",
    "\ufeffKEDO",
    "\u202fKEDO",
    "ＫＥＤＯ",
    "KEDO\r",
]


@pytest.mark.parametrize("text", TOLERATED)
def test_spaces_punctuation_and_smart_characters_are_tolerated(text: str) -> None:
    assert ok(text) == (Forward(("kedo",)),)


def test_smart_characters_inside_arguments_are_kept() -> None:
    assert ok("VRAAG Wat bedoelt u met “de baas”…?") == (Ask("Wat bedoelt u met “de baas”…?"),)
    assert ok("VRAAG\u00a0Wie\u00a0is\u00a0de  baas?") == (Ask("Wie is de baas?"),)
    assert ok("GEEN\u00a0TERUGKOPPELING") == (NoFeedback(),)


def test_line_endings_of_any_kind_separate_commands() -> None:
    expected = (SetForm(Form.ARBEID), Forward(("kedo",)))
    for sep in ("\n", "\r\n", "\r", "\u2028"):
        assert ok(f"KEDO{sep}VORM arbeid") == expected


# --- several commands, merging and order -------------------------------------------


def test_forward_lines_are_merged_sorted_and_unique() -> None:
    assert ok("RIEC\nKEDO\nDOORZETTEN riec NLA") == (Forward(("kedo", "nla", "riec")),)


def test_commands_come_in_canonical_order() -> None:
    text = "HULP\nSTATUS\nKEDO\nGEEN TERUGKOPPELING\nVORM arbeid"
    assert ok(text) == (
        SetForm(Form.ARBEID),
        NoFeedback(),
        Forward(("kedo",)),
        Status(),
        Help(),
    )


def test_identical_repeats_are_merged() -> None:
    assert ok("VORM arbeid\nTYPE labour") == (SetForm(Form.ARBEID),)
    assert ok("AFSLUITEN dubbel\nAFSLUITEN dubbel") == (Close("dubbel"),)
    assert ok("VRAAG waar?\nVRAAG waar?") == (Ask("waar?"),)
    assert ok("WACHT\nHOLD") == (Hold(),)
    assert ok("STATUS\nSTATUS\nHULP\nHELP") == (Status(), Help())


ALLOWED = [
    ("VORM arbeid\nAFSLUITEN geen signaal", (SetForm(Form.ARBEID), Close("geen signaal"))),
    ("GEEN TERUGKOPPELING\nAFSLUITEN", (NoFeedback(), Close(""))),
    ("GEEN TERUGKOPPELING\nKEDO", (NoFeedback(), Forward(("kedo",)))),
    ("VRAAG hoe oud?\nWACHT", (Ask("hoe oud?"), Hold())),
    ("VRAAG hoe oud?\nVORM overig", (SetForm(Form.OVERIG), Ask("hoe oud?"))),
    ("WACHT\nVORM arbeid\nSTATUS", (SetForm(Form.ARBEID), Hold(), Status())),
    ("AFSLUITEN\nHULP", (Close(""), Help())),
    ("KEDO\nSTATUS\nHULP", (Forward(("kedo",)), Status(), Help())),
]


@pytest.mark.parametrize("text,expected", ALLOWED)
def test_combinations_that_are_allowed(text: str, expected: tuple[Command, ...]) -> None:
    assert ok(text) == expected


CONFLICTS = [
    "VORM arbeid\nVORM seksueel",
    "TYPE labour\nVORM crimineel",
    "AFSLUITEN dubbel\nAFSLUITEN geen signaal",
    "AFSLUITEN\nKEDO",
    "KEDO\nAFSLUITEN",
    "DOORZETTEN RIEC\nCLOSE",
    "AFSLUITEN\nVRAAG waar?",
    "VRAAG waar?\nAFSLUITEN",
    "VRAAG waar?\nVRAAG wanneer?",
    "KEDO\nVRAAG waar?",
    "VRAAG waar?\nRIEC",
    "WACHT\nKEDO",
    "KEDO\nHOLD",
    "WACHT\nAFSLUITEN",
    "AFSLUITEN\nWACHT",
]


@pytest.mark.parametrize("text", CONFLICTS)
def test_conflicts_reject_everything(text: str) -> None:
    parsed = parse_commands(text, DESTS)
    assert parsed.commands == ()
    assert parsed.errors == (
        LineError(line_no=2, line=text.splitlines()[1], code="conflict", detail="1"),
    )


def test_each_conflicting_line_is_reported_against_the_first_earlier_one() -> None:
    assert codes("AFSLUITEN\nKEDO\nVRAAG x") == [(2, "conflict"), (3, "conflict")]
    parsed = parse_commands("KEDO\n\nWACHT\nVORM arbeid\nVORM overig", DESTS)
    assert [(e.line_no, e.detail) for e in parsed.errors] == [(3, "1"), (5, "4")]


# --- errors -------------------------------------------------------------------------

ERRORS = [
    ("DOORZETTEN x@evil.example", "unknown_destination", "x@evil.example"),
    ("DOORZETTEN: x@evil.example", "unknown_destination", "x@evil.example"),
    ("FORWARD mailto:x@evil.example", "unknown_destination", "mailto:x@evil.example"),
    ("DOORZETTEN KEDO x@evil.example", "unknown_destination", "x@evil.example"),
    ("KEDO x@evil.example", "unknown_destination", "x@evil.example"),
    ("DOORZETTEN politie", "unknown_destination", "politie"),
    ("KEDO POLITIE", "unknown_destination", "POLITIE"),
    ("KEDO is de juiste plek", "unknown_destination", "is"),
    ("KEDO - RIEC", "unknown_destination", "-"),
    ("Doorzetten?? Graag naar KEDO", "unknown_destination", "Graag"),
    ("DOORZETTEN", "missing_argument", "DOORZETTEN"),
    ("FORWARD:", "missing_argument", "FORWARD"),
    ("DOORZETTEN naar", "missing_argument", "DOORZETTEN"),
    ("VORM", "missing_argument", "VORM"),
    ("TYPE", "missing_argument", "TYPE"),
    ("VRAAG", "missing_argument", "VRAAG"),
    ("ASK:", "missing_argument", "ASK"),
    ("VORM arbeidsuitbuiting", "bad_form", "arbeidsuitbuiting"),
    ("VORM x@evil.example", "bad_form", "x@evil.example"),
    ("VORM arbeid crimineel", "unexpected_argument", "VORM"),
    ("WACHT tot maandag", "unexpected_argument", "WACHT"),
    ("HOLD until Monday", "unexpected_argument", "HOLD"),
    ("STATUS graag", "unexpected_argument", "STATUS"),
    ("HULP nodig? Bel mij", "unexpected_argument", "HULP"),
    ("GEEN TERUGKOPPELING aan de melder", "unexpected_argument", "GEEN TERUGKOPPELING"),
    ("no feedback please", "unexpected_argument", "NO FEEDBACK"),
]


@pytest.mark.parametrize("text,code,detail", ERRORS)
def test_error_codes(text: str, code: str, detail: str) -> None:
    parsed = parse_commands(text, DESTS)
    assert parsed.commands == ()
    assert parsed.errors == (LineError(line_no=1, line=text, code=code, detail=detail),)


def test_an_address_is_never_a_destination_even_when_a_key_looks_alike() -> None:
    destinations = frozenset({"kedo", "kedo@gemeente.example"})
    assert codes("DOORZETTEN kedo@gemeente.example", destinations) == [(1, "unknown_destination")]


def test_a_configured_key_not_in_this_configuration_is_unknown() -> None:
    assert codes("NLA", frozenset({"kedo"})) == [(1, "no_command")]  # not even a command word
    assert codes("DOORZETTEN NLA", frozenset({"kedo"})) == [(1, "unknown_destination")]


def test_keys_are_matched_without_regard_to_case_and_returned_as_configured() -> None:
    assert ok("zvh", frozenset({"ZVH", "kedo"})) == (Forward(("ZVH",)),)
    # Keys that fold alike are ambiguous and match nothing.
    assert codes("DOORZETTEN kedo", frozenset({"kedo", "KEDO"})) == [(1, "unknown_destination")]


def test_a_key_that_is_a_command_word_needs_doorzetten() -> None:
    destinations = frozenset({"status", "kedo"})
    assert ok("STATUS", destinations) == (Status(),)
    assert ok("DOORZETTEN status", destinations) == (Forward(("status",)),)


def test_errors_on_several_lines_are_all_reported() -> None:
    assert codes("DOORZETTEN politie\nVORM x\nVRAAG\nKEDO") == [
        (1, "unknown_destination"),
        (2, "bad_form"),
        (3, "missing_argument"),
    ]


def test_no_command() -> None:
    assert parse_commands("", DESTS).errors == (LineError(0, "", "no_command", ""),)
    assert parse_commands(" \n\u00a0\n", DESTS).errors == (LineError(0, "", "no_command", ""),)
    parsed = parse_commands("\nHoi Anne,\nKEDO\nVORM arbeid", DESTS)
    assert parsed.errors == (LineError(2, "Hoi Anne,", "no_command", ""),)
    assert parsed.ignored == ("Hoi Anne,", "KEDO", "VORM arbeid")


NOT_COMMANDS = [
    "Hoi,",
    "Met vriendelijke groet,",
    "- KEDO",
    "1. KEDO",
    "> KEDO",
    ": KEDO",
    "KEDOO",
    "Geen idee",
    "No, thanks",
    "K\u00a0EDO",
    "КЕДО",  # Cyrillic look-alike
    "x@evil.example",
]


@pytest.mark.parametrize("line", NOT_COMMANDS)
def test_lines_that_are_not_commands(line: str) -> None:
    assert codes(line) == [(1, "no_command")]


def test_too_long_line() -> None:
    question = "VRAAG " + "x" * (MAX_LINE_CHARS - len("VRAAG "))
    assert ok(question) == (Ask("x" * (MAX_LINE_CHARS - len("VRAAG "))),)
    parsed = parse_commands("KEDO\n" + question + "x", DESTS)
    assert [(e.line_no, e.code, e.detail) for e in parsed.errors] == [
        (2, "too_long", str(MAX_LINE_CHARS))
    ]
    assert len(parsed.errors[0].line) == MAX_QUOTED_CHARS
    assert codes("VRAAG " + "x" * 10 * MAX_LINE_CHARS) == [(1, "too_long")]


def test_too_many_command_lines() -> None:
    assert ok("\n".join(["KEDO"] * MAX_COMMAND_LINES)) == (Forward(("kedo",)),)
    text = "\n".join(["KEDO"] * (MAX_COMMAND_LINES + 5))
    assert codes(text) == [(MAX_COMMAND_LINES + 1, "too_many_commands")]


# --- where commands end ----------------------------------------------------------------


def test_first_other_line_ends_the_commands_and_the_rest_is_ignored() -> None:
    text = "KEDO\n\nVORM arbeid\nMet vriendelijke groet,\n\nAnne\nAFSLUITEN\nRIEC"
    parsed = parse_commands(text, DESTS)
    assert parsed.commands == (SetForm(Form.ARBEID), Forward(("kedo",)))
    assert parsed.errors == ()
    assert parsed.ignored == ("Met vriendelijke groet,", "Anne", "AFSLUITEN", "RIEC")


def test_later_errors_are_ignored_too() -> None:
    parsed = parse_commands("KEDO\nGroet\nDOORZETTEN x@evil.example\nVORM x", DESTS)
    assert parsed.commands == (Forward(("kedo",)),)
    assert parsed.ignored[1:] == ("DOORZETTEN x@evil.example", "VORM x")


def test_a_question_does_not_continue_on_the_next_line() -> None:
    parsed = parse_commands("VRAAG Waar werkt zij\nen sinds wanneer?", DESTS)
    assert parsed.commands == (Ask("Waar werkt zij"),)
    assert parsed.ignored == ("en sinds wanneer?",)


def test_ignored_is_bounded() -> None:
    text = "KEDO\n" + "\n".join(f"regel {i} " + "y" * 500 for i in range(100))
    parsed = parse_commands(text, DESTS)
    assert len(parsed.ignored) == MAX_IGNORED_LINES
    assert all(len(line) <= MAX_QUOTED_CHARS for line in parsed.ignored)
    assert parsed.ignored[0].startswith("regel 0 ")


# --- wording -----------------------------------------------------------------------------

ALL_CODES = [
    LineError(3, "DOORZETTEN x@evil.example", "unknown_destination", "x@evil.example"),
    LineError(3, "DOORZETTEN politie", "unknown_destination", "politie"),
    LineError(3, "VORM x", "bad_form", "x"),
    LineError(3, "VRAAG", "missing_argument", "VRAAG"),
    LineError(3, "VORM", "missing_argument", "VORM"),
    LineError(3, "DOORZETTEN", "missing_argument", "DOORZETTEN"),
    LineError(3, "GEEN TERUGKOPPELING x", "unexpected_argument", "GEEN TERUGKOPPELING"),
    LineError(3, "VORM arbeid x", "unexpected_argument", "VORM"),
    LineError(3, "KEDO", "conflict", "1"),
    LineError(3, "Hoi", "no_command", ""),
    LineError(0, "", "no_command", ""),
    LineError(3, "VRAAG xxx", "too_long", "1000"),
    LineError(3, "KEDO", "too_many_commands", "20"),
    LineError(3, "???", "something_new", ""),
]


@pytest.mark.parametrize("error", ALL_CODES)
def test_explain_names_the_line_in_both_languages(error: LineError) -> None:
    nl, en = explain(error, "nl"), explain(error, "en")
    assert nl != en
    for sentence in (nl, en):
        assert sentence.endswith(".")
        if error.line_no:
            assert str(error.line_no) in sentence
        if error.code not in ("too_long", "too_many_commands"):
            assert error.line in sentence
        if error.code in ("unknown_destination", "bad_form", "conflict"):
            assert error.detail in sentence


def test_explain_sentences_differ_per_code() -> None:
    for language in ("nl", "en"):
        sentences = {explain(e, language) for e in ALL_CODES}  # type: ignore[arg-type]
        assert len(sentences) == len(ALL_CODES)


def test_explain_tells_an_address_from_an_unknown_key() -> None:
    address, unknown = ALL_CODES[0], ALL_CODES[1]
    assert "e-mailadres" in explain(address, "nl")
    assert "e-mailadres" not in explain(unknown, "nl")
    assert "address" in explain(address, "en")


DESCRIBED = [
    (Forward(("kedo", "riec")), "Wordt doorgezet naar KEDO, RIEC", "Being forwarded to KEDO, RIEC"),
    (SetForm(Form.ARBEID), "Vorm vastgelegd: arbeid", "Form recorded: labour"),
    (SetForm(Form.SEKSUEEL), "Vorm vastgelegd: seksueel", "Form recorded: sexual"),
    (Close(""), "Afgesloten zonder doorzetten", "Closed without forwarding"),
    (
        Close("dubbel"),
        "Afgesloten zonder doorzetten (reden: dubbel)",
        "Closed without forwarding (reason: dubbel)",
    ),
    (
        Ask("Waar?"),
        "Vraag gesteld aan de melder: „Waar?”",
        'Question sent to the reporter: "Waar?"',
    ),
    (
        Hold(),
        "In de wacht: geen herinneringen tot de volgende opdracht",
        "On hold: no reminders until the next command",
    ),
    (
        NoFeedback(),
        "De melder krijgt geen automatische terugkoppeling",
        "The reporter will get no automatic feedback",
    ),
    (Status(), "Status opgevraagd", "Status requested"),
    (Help(), "Hulp opgevraagd", "Help requested"),
]


@pytest.mark.parametrize("command,nl,en", DESCRIBED)
def test_describe(command: Command, nl: str, en: str) -> None:
    assert describe(command, "nl") == nl
    assert describe(command, "en") == en


def test_help_lines_list_every_command_and_destination() -> None:
    destinations = {"riec": "RIEC Informatieplein (daderspoor)", "kedo": "KEDO (slachtofferspoor)"}
    nl = help_lines(destinations, "nl")
    en = help_lines(destinations, "en")
    for word in ("VORM", "AFSLUITEN", "VRAAG", "WACHT", "GEEN TERUGKOPPELING", "STATUS", "HULP"):
        assert any(line.startswith(word) for line in nl), word
    for word in ("TYPE", "CLOSE", "ASK", "HOLD", "NO FEEDBACK", "STATUS", "HELP"):
        assert any(line.startswith(word) for line in en), word
    assert nl[-2:] == ["KEDO — KEDO (slachtofferspoor)", "RIEC — RIEC Informatieplein (daderspoor)"]
    assert en[-2:] == nl[-2:]


def test_help_lines_describe_a_grammar_the_parser_accepts() -> None:
    # Every "WORD — …" line that needs no argument parses as that command.
    for line in help_lines({"kedo": "KEDO"}, "nl") + help_lines({"kedo": "KEDO"}, "en"):
        head = line.split(" — ")[0]
        if head.isupper() and "<" not in head and "[" not in head and "|" not in head:
            assert parse_commands(head, {"kedo"}).errors == (), head


# --- properties ------------------------------------------------------------------------

_WORDS = st.sampled_from(
    [
        "KEDO",
        "riec",
        "NLA",
        "DOORZETTEN",
        "FORWARD",
        "VORM",
        "TYPE",
        "arbeid",
        "labour",
        "seksueel",
        "AFSLUITEN",
        "CLOSE",
        "VRAAG",
        "ASK",
        "WACHT",
        "HOLD",
        "GEEN",
        "TERUGKOPPELING",
        "NO",
        "FEEDBACK",
        "STATUS",
        "HULP",
        "HELP",
        "x@evil.example",
        "en",
        "naar",
        ":",
        ",",
        "Groet",
        "\u00a0",
        "\u200b",
        "*",
        "—",
        "?",
        "ＫＥＤＯ",
    ]
)
_LINES = st.lists(st.lists(_WORDS, max_size=5).map(" ".join), max_size=25).map("\n".join)


def _check_invariants(parsed: Parsed) -> None:
    if parsed.errors:
        assert parsed.commands == ()
    else:
        assert parsed.commands != ()
        kinds = [type(c) for c in parsed.commands]
        assert len(kinds) == len(set(kinds))
        for command in parsed.commands:
            if isinstance(command, Forward):
                assert command.destinations
                assert list(command.destinations) == sorted(set(command.destinations))
                assert set(command.destinations) <= DESTS
    for error in parsed.errors:
        assert error.code in set(ErrorCode)
        assert len(error.line) <= MAX_QUOTED_CHARS
        assert explain(error, "nl") and explain(error, "en")
    assert len(parsed.ignored) <= MAX_IGNORED_LINES
    for command in parsed.commands:
        assert describe(command, "nl") and describe(command, "en")


@settings(max_examples=400, deadline=None)
@given(_LINES)
def test_commands_or_errors_never_both(text: str) -> None:
    _check_invariants(parse_commands(text, DESTS))


@settings(max_examples=300, deadline=None)
@given(st.text(), st.frozensets(st.text(max_size=8), max_size=5))
def test_never_raises(text: str, destinations: frozenset[str]) -> None:
    parsed = parse_commands(text, destinations)
    if parsed.errors:
        assert parsed.commands == ()
    else:
        assert parsed.commands != ()


@settings(max_examples=200, deadline=None)
@given(_LINES, _LINES)
def test_nothing_after_the_first_other_line_changes_the_result(top: str, tail: str) -> None:
    base = parse_commands(top + "\nMet vriendelijke groet,", DESTS)
    more = parse_commands(top + "\nMet vriendelijke groet,\n" + tail, DESTS)
    assert more.commands == base.commands
    assert more.errors == base.errors


# --- the fixtures end to end -----------------------------------------------------------

REPLIES = Path(__file__).parent / "data" / "replies"
FIXTURES: dict[str, tuple[Command, ...] | str] = {
    "outlook_desktop_nl.eml": (SetForm(Form.ARBEID), Forward(("kedo",))),
    "outlook_desktop_en.eml": (SetForm(Form.ARBEID), Forward(("kedo", "riec"))),
    "outlook_web_nl.eml": (SetForm(Form.ARBEID), Forward(("kedo",))),
    "thunderbird_plain_nl.eml": (
        SetForm(Form.CRIMINEEL),
        Ask(
            "Kunt u aangeven op welke dag u de mannen in de loods aan de Havenweg heeft "
            "gezien, en of zij zelf iets zeiden over wie hen daar naartoe bracht?"
        ),
        Hold(),
    ),
    "thunderbird_html_nl.eml": (SetForm(Form.ARBEID), Forward(("kedo",))),
    "gmail_nl.eml": (SetForm(Form.SEKSUEEL), Forward(("kedo",))),
    "apple_mail_nl.eml": (SetForm(Form.ARBEID), Forward(("kedo", "riec"))),
    "mutt_plain_en.eml": (SetForm(Form.ARBEID), Forward(("kedo",))),
    "html_only_hidden_commands.eml": (SetForm(Form.ARBEID),),
    "outlook_desktop_nl_nothing_typed.eml": "no_command",
    "yahoo_web_en.eml": (SetForm(Form.ARBEID), Forward(("kedo",))),
    "windows_mail_nl.eml": (SetForm(Form.CRIMINEEL), Forward(("riec",))),
    "gmail_date_first_nl.eml": (SetForm(Form.ARBEID), Forward(("kedo",))),
    "zoho_en.eml": (SetForm(Form.ARBEID), Forward(("kedo", "riec"))),
    "android_dashed_wrote_en.eml": (SetForm(Form.OVERIG),),
    "name_address_wrote_en.eml": (Status(),),
    "eudora_you_wrote_en.eml": (Hold(),),
    "folded_three_lines_nl.eml": (SetForm(Form.SEKSUEEL), Forward(("kedo",))),
    "reply_message_en.eml": (SetForm(Form.ARBEID), Forward(("riec",))),
    "gmail_bold_original_message_en.eml": (Forward(("riec",)),),
    "forwarded_message_colon_en.eml": (Forward(("kedo",)),),
}


def _reply_variants(name: str) -> list[tuple[str, str]]:
    msg = email.message_from_bytes((REPLIES / name).read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    plain_part, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
    plain = plain_part.get_content() if plain_part is not None else None
    html = html_part.get_content() if html_part is not None else None
    flowed = plain_part is not None and plain_part.get_param("format") == "flowed"
    out = [("both", reply_text(plain, html, flowed=bool(flowed)))]
    if plain is not None:
        out.append(("plain", reply_text(plain, None, flowed=bool(flowed))))
    if html is not None:
        out.append(("html", reply_text(None, html)))
    return out


def test_every_fixture_has_expected_commands() -> None:
    assert set(FIXTURES) == {p.name for p in REPLIES.glob("*.eml")}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_gives_exactly_the_intended_commands(name: str) -> None:
    expected = FIXTURES[name]
    for label, text in _reply_variants(name):
        parsed = parse_commands(text, {"kedo", "riec"})
        if isinstance(expected, str):
            assert [e.code for e in parsed.errors] == [expected], label
            assert parsed.commands == ()
        else:
            assert parsed.errors == (), (label, parsed.errors)
            assert parsed.commands == expected, label


@pytest.mark.parametrize(
    "html",
    [
        "<div>Groet</div><blockquote>KEDO</blockquote>",
        "<blockquote>KEDO</blockquote>",
        "<!-- KEDO --><p>Groet</p>",
        '<div style="display:none">KEDO</div><p>Groet</p>',
        "<p hidden>KEDO</p>",
        '<div id="divRplyFwdMsg">KEDO</div>',
    ],
)
def test_commands_only_quoted_commented_or_hidden_give_no_command(html: str) -> None:
    parsed = parse_commands(reply_text(None, html), {"kedo"})
    assert [e.code for e in parsed.errors] == ["no_command"]


def test_command_only_in_plain_quote_gives_no_command() -> None:
    text = "Zie hieronder.\n\nOp 3 jun 2025 schreef Meldpunt:\n> KEDO"
    parsed = parse_commands(reply_text(text, None), {"kedo"})
    assert [e.code for e in parsed.errors] == ["no_command"]
    assert parsed.ignored == ("Zie hieronder.",)
    assert [e.code for e in parse_commands(reply_text("> KEDO", None), {"kedo"}).errors] == [
        "no_command"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "\n" * 1_000_000,
        "KEDO " * 200_000,
        "VRAAG " + "x" * 1_000_000,
        "KEDO\n" * 200_000,
        "Groet\n" + "KEDO\n" * 200_000,
        ("\u200b" * 10 + "\n") * 90_000,
    ],
)
def test_megabyte_texts_parse_in_bounded_time(text: str) -> None:
    started = time.thread_time()
    parsed = parse_commands(text, DESTS)
    assert parsed.commands == () or parsed.errors == ()
    assert time.thread_time() - started < 2.0


# --- one definition per command ---------------------------------------------------------


def test_every_definition_names_its_words_conflicts_and_help() -> None:
    from inboxd.commands import COMMANDS
    from inboxd.templates import shipped

    names = {kind.__name__ for kind in COMMANDS}
    assert sorted(kind.rank for kind in COMMANDS) == list(range(len(COMMANDS)))
    for kind in COMMANDS:
        assert kind.conflicts_with <= names, kind
        for language in ("nl", "en"):
            words = kind.words[language]  # type: ignore[index]
            assert words, (kind, language)
            help_line = shipped(language).phrase("commands", f"help_{kind.name}")
            assert help_line.startswith(words[0].upper() if kind is not Forward else "<")
            for word in words:
                parsed = parse_commands(f"{word} {'x' if kind in (Ask, Close) else ''}", {"x"})
                if kind is SetForm:
                    parsed = parse_commands(f"{word} overig", DESTS)
                if kind is Forward:
                    parsed = parse_commands(f"{word} x", {"x"})
                assert [type(c) for c in parsed.commands] == [kind], (word, parsed)


def test_the_wording_comes_from_the_configured_templates(tmp_path: Path) -> None:
    """A municipality rewords a command's answer in its templates_dir, no code."""
    from inboxd.templates import SHIPPED, Templates

    ours = tmp_path / "nl" / "text"
    ours.mkdir(parents=True)
    shipped_text = (SHIPPED / "nl" / "text" / "commands.txt").read_text(encoding="utf-8")
    (ours / "commands.txt").write_text(
        shipped_text.replace("Vorm vastgelegd:", "Soort uitbuiting genoteerd:")
        .replace("HULP — deze lijst", "HULP — dit overzicht")
        .replace("is geen ingestelde bestemming", "kennen we niet als bestemming"),
        encoding="utf-8",
    )
    texts = Templates("nl", str(tmp_path))
    assert describe(SetForm(Form.ARBEID), "nl", texts) == "Soort uitbuiting genoteerd: arbeid"
    assert "HULP — dit overzicht" in help_lines({}, "nl", texts)
    error = parse_commands("DOORZETTEN XYZZY", DESTS).errors
    assert explain(error[0], "nl", texts) == (
        "Regel 1 („DOORZETTEN XYZZY”): „XYZZY” kennen we niet als bestemming "
        "(stuur HULP voor de lijst)."
    )
    # The shipped wording is untouched for everyone else.
    assert describe(SetForm(Form.ARBEID), "nl") == "Vorm vastgelegd: arbeid"
