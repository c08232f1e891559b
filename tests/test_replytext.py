"""reply_text: only what the functionaris typed above the quote counts."""

from __future__ import annotations

import email
import email.policy
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxd import commands, replytext
from inboxd.commands import parse_commands
from inboxd.replytext import reply_text

REPLIES = Path(__file__).parent / "data" / "replies"
# Text that only the quoted triage request holds.
QUOTE_MARKERS = ("Tekst van het signaal", "paspoorten", "AFSLUITEN", "4F7Q-2MZK-8PLD", "Ontvangen:")


def load(name: str) -> tuple[str | None, str | None, bool, bool]:
    msg = email.message_from_bytes((REPLIES / name).read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    plain_part = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    plain = plain_part.get_content() if plain_part is not None else None
    html = html_part.get_content() if html_part is not None else None
    flowed = plain_part is not None and (plain_part.get_param("format") or "") == "flowed"
    delsp = plain_part is not None and (plain_part.get_param("delsp") or "") == "yes"
    return plain, html, bool(flowed), bool(delsp)


# file → the first lines reply_text must give (after stripping each line)
TYPED = {
    "outlook_desktop_nl.eml": ["KEDO", "VORM arbeid"],
    "outlook_desktop_en.eml": ["RIEC KEDO", "TYPE labour"],
    "outlook_web_nl.eml": ["Doorzetten: KEDO", "Vorm: arbeid"],
    "thunderbird_plain_nl.eml": ["VORM crimineel"],
    "thunderbird_html_nl.eml": ["KEDO", "VORM arbeid"],
    "gmail_nl.eml": ["KEDO", "VORM seksueel"],
    "apple_mail_nl.eml": ["KEDO RIEC", "VORM arbeid"],
    "mutt_plain_en.eml": ["forward kedo", "type labour"],
    "html_only_hidden_commands.eml": ["VORM arbeid"],
    "yahoo_web_en.eml": ["KEDO", "VORM arbeid"],
    "windows_mail_nl.eml": ["RIEC", "VORM crimineel"],
    "gmail_date_first_nl.eml": ["KEDO", "VORM arbeid"],
    "zoho_en.eml": ["KEDO RIEC", "VORM arbeid"],
    "android_dashed_wrote_en.eml": ["VORM overig"],
    "name_address_wrote_en.eml": ["STATUS"],
    "eudora_you_wrote_en.eml": ["WACHT"],
    "folded_three_lines_nl.eml": ["KEDO", "VORM seksueel"],
    "reply_message_en.eml": ["RIEC", "VORM arbeid"],
    "gmail_bold_original_message_en.eml": ["RIEC"],
    "forwarded_message_colon_en.eml": ["KEDO"],
}

# The quote shapes of issue 10: all that is left is what was typed, so no attribution
# line is echoed back as "ignored" in the answer to the functionaris.
WHOLE = {
    "yahoo_web_en.eml": ["KEDO", "VORM arbeid", "Groet, Kees"],
    "windows_mail_nl.eml": ["RIEC", "VORM crimineel", "Rob"],
    "gmail_date_first_nl.eml": ["KEDO", "VORM arbeid", "Groet, Fatima"],
    "zoho_en.eml": ["KEDO RIEC", "VORM arbeid", "Groet,", "Sanne"],
    "android_dashed_wrote_en.eml": ["VORM overig", "Verstuurd vanaf mijn telefoon"],
    "name_address_wrote_en.eml": ["STATUS"],
    "eudora_you_wrote_en.eml": ["WACHT", "Ik bel de melder vanmiddag.", "-Dirk"],
    "folded_three_lines_nl.eml": ["KEDO", "VORM seksueel", "Marieke"],
    "reply_message_en.eml": ["RIEC", "VORM arbeid"],
    "gmail_bold_original_message_en.eml": ["RIEC", "Groet, Ahmed"],
    "forwarded_message_colon_en.eml": ["KEDO", "Zie hieronder.", "Joost"],
}


def nonblank(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def variants(name: str) -> list[tuple[str, str]]:
    """(label, reply text) for the mail as sent and for each alternative on its own."""
    plain, html, flowed, delsp = load(name)
    out = [("both", reply_text(plain, html, flowed=flowed, delsp=delsp))]
    if plain is not None and html is not None:
        out.append(("plain", reply_text(plain, None, flowed=flowed, delsp=delsp)))
        out.append(("html", reply_text(None, html)))
    return out


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in REPLIES.glob("*.eml")}
    assert names == set(TYPED) | {"outlook_desktop_nl_nothing_typed.eml"}


@pytest.mark.parametrize("name", sorted(TYPED))
def test_fixture_reply_starts_with_typed_commands_and_holds_no_quote(name: str) -> None:
    for label, text in variants(name):
        lines = nonblank(text)
        assert lines[: len(TYPED[name])] == TYPED[name], label
        for marker in QUOTE_MARKERS:
            assert marker not in text, (label, marker)


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_client_quote_shape_leaves_exactly_what_was_typed(name: str) -> None:
    for label, text in variants(name):
        assert nonblank(text) == WHOLE[name], label
        destinations = {"kedo", "riec", "nla"}
        parsed = parse_commands(text, destinations)
        assert not parsed.errors, (label, parsed.errors)
        assert all("wrote" not in line and "@" not in line for line in parsed.ignored), label


@pytest.mark.parametrize(
    ("name", "header", "foreign"),
    [
        # Windows Mail's header box as talon's fixture has it, with Russian labels.
        ("windows_mail_nl.eml", "<b>Van:</b>", "<b>От:</b>"),
        # Yahoo's attribution in a language the text rules do not know.
        ("yahoo_web_en.eml", "wrote:", "napisał:"),
    ],
)
def test_html_quote_container_cuts_whatever_language_its_header_is_in(
    name: str, header: str, foreign: str
) -> None:
    _, html, _, _ = load(name)
    assert html is not None and header in html
    text = reply_text(None, html.replace(header, foreign).replace("On Tuesday", "W dniu"))
    assert nonblank(text) == WHOLE[name]


def test_nothing_typed_above_an_outlook_quote_is_empty() -> None:
    for label, text in variants("outlook_desktop_nl_nothing_typed.eml"):
        assert text == "", label


def test_hidden_and_commented_html_is_not_read() -> None:
    _, html, _, _ = load("html_only_hidden_commands.eml")
    text = reply_text(None, html)
    for hidden in ("KEDO", "RIEC", "AFSLUITEN", "TERUGKOPPELING", "VRAAG"):
        assert hidden not in text
    assert nonblank(text) == ["VORM arbeid", "Groet, Anne"]


def test_flowed_lines_are_joined_into_the_line_that_was_typed() -> None:
    plain, _, flowed, _ = load("thunderbird_plain_nl.eml")
    assert flowed
    joined = nonblank(reply_text(plain, None, flowed=True))
    assert joined[1].startswith("VRAAG Kunt u aangeven")
    assert joined[1].endswith("wie hen daar naartoe bracht?")
    assert joined[2] == "WACHT"
    # Read without format=flowed the question breaks at the wrap.
    assert nonblank(reply_text(plain, None))[2] != "WACHT"


def test_unflow_space_stuffing_and_delsp() -> None:
    # A leading space on a flowed line is stuffing, not content.
    assert reply_text("VRAAG een \n lange vraag\nWACHT", None, flowed=True) == (
        "VRAAG een lange vraag\nWACHT"
    )
    assert reply_text("VRAAG een \nlange vraag", None, flowed=True) == "VRAAG een lange vraag"
    assert reply_text("VRAAG aan \nelkaar", None, flowed=True, delsp=True) == "VRAAG aanelkaar"
    # A stuffed ">" is typed text, not a quote, but a line starting with ">" still ends
    # the reply: cutting too early can only drop lines that end the commands anyway.
    assert reply_text("KEDO\n >RIEC", None, flowed=True) == "KEDO"
    assert reply_text("KEDO \n> RIEC", None, flowed=True) == "KEDO "


# --- quote markers in plain text --------------------------------------------------

PLAIN_QUOTES = [
    "> KEDO",
    ">KEDO",
    "-----Oorspronkelijk bericht-----\nKEDO",
    "-----Original Message-----\nKEDO",
    "---------- Forwarded message ---------\nKEDO",
    "----- Doorgestuurd bericht -----\nKEDO",
    "Begin doorgestuurd bericht:\nKEDO",
    "________________________________\nKEDO",
    "Van: Meldpunt <vreemdverhaal@gemeente.example>\nKEDO",
    "*From:* Meldpunt\nKEDO",
    "Verzonden: dinsdag 3 juni 2025\nAan: Anne\nKEDO",
    "Sent: Tuesday\nTo: Anne\nKEDO",
    "Op 03-06-2025 om 10:12 schreef Meldpunt vreemdverhaal:\nKEDO",
    "Op di 3 jun 2025 om 10:12 schreef Meldpunt vreemdverhaal <\nv@gemeente.example>:\nKEDO",
    "Op 3 jun 2025, om 10:12 heeft Meldpunt het volgende geschreven:\nKEDO",
    "On Tue, Jun 3, 2025 at 10:12 AM Meldpunt <\nv@gemeente.example> wrote:\nKEDO",
    "On 3 Jun 2025, at 10:12, Meldpunt <v@gemeente.example> wrote:\nKEDO",
    # Issue 10: shapes of real clients
    "2016-12-08 11:00 GMT+01:00 Meldpunt <v@gemeente.example>:\nKEDO",
    "2014-10-17 11:28 GMT+03:00 Meldpunt <\nv@gemeente.example>:\nKEDO",
    "2017-12-27 20:35 GMT+01:00 <v@gemeente.example>:\nKEDO",
    "---- On Thu, 08 Dec 2016 11:00:00 +0100 Meldpunt <v@gemeente.example> wrote ----\nKEDO",
    "---- Op do, 08 dec 2016 11:00:00 +0100 Meldpunt <v@gemeente.example> schreef ----\nKEDO",
    "---- Meldpunt wrote ----\nKEDO",
    "------On 12/29/1987 17:32 PM, Meldpunt wrote-----\nKEDO",
    "Meldpunt vreemdverhaal <v@gemeente.example> wrote:\nKEDO",
    "Meldpunt <v@gemeente.example> schreef:\nKEDO",
    "Meldpunt <\nv@gemeente.example> wrote:\nKEDO",
    "At 10:14 PM 1/28/2001 -0500, you wrote:\nKEDO",
    "On Nov 30, 2011, at 12:47 PM, Meldpunt <\nv@gemeente.example>\nwrote:\nKEDO",
    "Op 3 jun. 2025 om 10:12 heeft Meldpunt\n<v@gemeente.example> het volgende\ngeschreven:\nKEDO",
    "-----Reply Message-----\nKEDO",
    "*---- Original Message ----*\nKEDO",
    "Forwarded message:\nKEDO",
    "Doorgestuurd bericht:\nKEDO",
]


@pytest.mark.parametrize("quote", PLAIN_QUOTES)
def test_plain_quote_marker_first_leaves_nothing(quote: str) -> None:
    assert reply_text(quote, None) == ""
    assert reply_text("\n\u00a0\n" + quote, None) == ""
    assert reply_text("VORM arbeid\n" + quote, None) == "VORM arbeid"


def test_quote_markers_are_recognised_through_odd_spaces() -> None:
    assert reply_text("KEDO\n\u200b\u00a0> RIEC", None) == "KEDO"
    assert reply_text("KEDO\n\u00a0Van:\u00a0X\nRIEC", None) == "KEDO"


def test_mail_parser_reply_cuts_at_a_header_block_the_own_rules_do_not_know() -> None:
    text = "KEDO\nGroet\nOrganization: Gemeente Voorbeeld\nCc: iemand\nRIEC"
    assert reply_text(text, None) == "KEDO\nGroet"


def test_ordinary_lines_are_kept() -> None:
    text = "KEDO\nVORM arbeid\n\nOp maandag bel ik de melder.\nVan harte, Jan"
    # Not attributions or headers: no 'schreef'/'wrote' with a colon, no 'Van:'.
    assert reply_text(text, None) == text
    for kept in (
        "KEDO\nAt the door he wrote nothing.",
        "KEDO\n2025-06-03 belde ik de melder.",
        "KEDO\n-- \nJan",
        "KEDO\nBel Jan <j@gemeente.example> als er iets is.",
        "VRAAG wie is <j@gemeente.example>?\nDank, Jan",
    ):
        assert reply_text(kept, None) == kept


def test_a_command_line_is_never_read_as_part_of_a_folded_attribution() -> None:
    # The lines below a command would make "KEDO … <addr> wrote:" if joined: the
    # address must begin on the line that starts the attribution, and no blank line
    # is folded into one.
    text = "KEDO\nMeldpunt <v@gemeente.example> wrote:\n> RIEC"
    assert reply_text(text, None) == "KEDO"
    text = "KEDO\n\nMeldpunt <v@gemeente.example> wrote:\n> RIEC"
    assert reply_text(text, None) == "KEDO"
    text = "KEDO\nVORM arbeid\n2025-06-03 10:12 Meldpunt <\nv@gemeente.example>:\n> RIEC"
    assert reply_text(text, None) == "KEDO\nVORM arbeid"


def test_plain_is_preferred_and_blank_plain_falls_back_to_html() -> None:
    assert reply_text("KEDO", "<p>RIEC</p>") == "KEDO"
    assert nonblank(reply_text(" \n\u00a0\n", "<p>RIEC</p>")) == ["RIEC"]
    assert reply_text(None, None) == ""
    assert reply_text("", "") == ""


# --- HTML dividers and hidden content ----------------------------------------------

HTML_QUOTES = [
    "<blockquote>KEDO</blockquote>",
    '<blockquote type="cite">KEDO</blockquote>',
    '<div class="gmail_quote">KEDO</div>',
    '<div class="gmail_quote gmail_quote_container"><div>KEDO</div></div>',
    '<div class="moz-cite-prefix">KEDO</div>',
    '<div id="divRplyFwdMsg">KEDO</div>',
    '<div id="appendonsend"></div>KEDO',
    '<hr id="stopSpelling">KEDO',
    '<hr style="display:inline-block;width:98%" tabindex="-1"><div>KEDO</div>',
    '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
    "<p>KEDO</p></div>",
    '<div style="border:none; border-top:solid #B5C4DF 1.0pt; padding:3.0pt 0in 0in 0in">'
    "<p>KEDO</p></div>",
    '<div id="mail-editor-reference-message-container">KEDO</div>',
    '<div id="ydp2d263a95yahoo_quoted_3699820886" class="ydp2d263a95yahoo_quoted">KEDO</div>',
    '<div id="yiv4315141663yahoo_quoted_0836389664" class="yiv4315141663yahoo_quoted">KEDO</div>',
    '<div style="padding-top: 5px; border-top-color: rgb(229, 229, 229); '
    'border-top-width: 1px; border-top-style: solid;"><div><b>KEDO</b></div></div>',
]


@pytest.mark.parametrize("quote", HTML_QUOTES)
def test_html_divider_first_leaves_nothing(quote: str) -> None:
    assert reply_text(None, f"<html><body>{quote}<p>RIEC</p></body></html>") == ""
    text = reply_text(None, f"<html><body><div>VORM arbeid</div>{quote}<p>RIEC</p></body></html>")
    assert nonblank(text) == ["VORM arbeid"]


def test_divider_cuts_everything_after_it_in_document_order() -> None:
    html = (
        "<div><div>KEDO</div><div><blockquote>RIEC</blockquote>tail AFSLUITEN</div>"
        "<p>WACHT</p></div><p>STATUS</p>"
    )
    assert nonblank(reply_text(None, html)) == ["KEDO"]


HIDDEN = [
    "<!-- KEDO -->",
    "<!--[if gte mso 9]>KEDO<![endif]-->",
    "<head><title>KEDO</title></head>",
    "<style>KEDO {}</style>",
    "<script>KEDO</script>",
    '<div style="display:none">KEDO</div>',
    '<div style="DISPLAY : none !important">KEDO</div>',
    '<div style="visibility:hidden">KEDO</div>',
    '<span style="mso-hide:all">KEDO</span>',
    "<p hidden>KEDO</p>",
    '<span style="font-size:0px">KEDO</span>',
    '<span style="opacity:0">KEDO</span>',
]


@pytest.mark.parametrize("hidden", HIDDEN)
def test_hidden_html_gives_no_command(hidden: str) -> None:
    text = reply_text(None, f"<html>{hidden}<body><p>Groet</p></body></html>")
    assert "KEDO" not in text
    assert parse_commands(text, {"kedo"}).errors[0].code == "no_command"


def test_visible_small_text_is_still_read() -> None:
    text = reply_text(None, '<span style="font-size:0.8em">KEDO</span><p>Groet</p>')
    assert nonblank(text)[0] == "KEDO"


def test_hidden_body_or_document_gives_nothing() -> None:
    assert reply_text(None, "<html hidden><body><p>KEDO</p></body></html>") == ""
    assert reply_text(None, '<body style="display:none"><p>KEDO</p></body>') == ""


def test_html_with_xml_declaration_is_read() -> None:
    html = '<?xml version="1.0" encoding="utf-8"?><html><body><p>KEDO</p></body></html>'
    assert nonblank(reply_text(None, html)) == ["KEDO"]


# --- bounds -------------------------------------------------------------------------


def test_a_reply_too_long_to_read_without_a_quote_marker_counts_as_empty() -> None:
    lines = ["KEDO"] + [""] * replytext.MAX_LINES + ["VORM arbeid"]
    assert reply_text("\n".join(lines), None) == ""
    # With a quote marker inside what was read the rest does not matter.
    lines = ["KEDO", "> quoted"] + ["x"] * (replytext.MAX_LINES * 2)
    assert reply_text("\n".join(lines), None) == "KEDO"


def test_html_too_large_or_too_deep_without_a_divider_counts_as_empty() -> None:
    many = "<p>KEDO</p>" + "<span>x</span>" * (replytext.MAX_ELEMENTS + 10)
    assert reply_text(None, many) == ""
    deep = "<p>KEDO</p>" + "<div>" * 300 + "RIEC"
    assert reply_text(None, deep) == ""
    # A divider inside what was read makes the rest irrelevant.
    cut = "<p>KEDO</p><blockquote>q</blockquote>" + "<span>x</span>" * replytext.MAX_ELEMENTS * 2
    assert nonblank(reply_text(None, cut)) == ["KEDO"]


def test_truncated_reply_keeps_the_too_long_rule_meaningful() -> None:
    # Lines are never shortened, so an overlong command line still reads as too long.
    line = "VRAAG " + "x" * (commands.MAX_LINE_CHARS * 5)
    assert reply_text(line, None) == line


MEGABYTE = 1_000_000
HUGE_INPUTS = [
    ("Op " + "a" * MEGABYTE, None),
    ("\n".join(["On " + "a " * 300] * 3000), None),
    ("KEDO\n" * (MEGABYTE // 5), None),
    ("\u00a0" * MEGABYTE, None),
    (None, "<p>" + "word " * (MEGABYTE // 5) + "</p>"),
    (None, "<div>KEDO</div>" * (MEGABYTE // 15)),
    (None, "<table>" + "<tr><td>a</td><td>b</td></tr>" * (MEGABYTE // 30) + "</table>"),
    (None, "<div>" * (MEGABYTE // 5)),
    (None, "<!--x-->" * (MEGABYTE // 8)),
    (None, "<" * MEGABYTE),
]


@pytest.mark.parametrize("plain,html", HUGE_INPUTS)
def test_megabyte_inputs_take_bounded_time(plain: str | None, html: str | None) -> None:
    started = time.monotonic()
    result = reply_text(plain, html)
    assert isinstance(result, str)
    assert time.monotonic() - started < 5.0


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
def test_never_raises_on_any_text(plain: str | None, html: str | None) -> None:
    assert isinstance(reply_text(plain, html), str)


_HTML_BITS = st.sampled_from(
    [
        "<div>",
        "</div>",
        "<p>",
        "</p>",
        "<br>",
        "<blockquote>",
        "</blockquote>",
        "<hr>",
        "<!--",
        "-->",
        "<style>",
        "</style>",
        '<span style="display:none">',
        "</span>",
        "&nbsp;",
        "KEDO",
        "RIEC",
        "\n",
        "Van: x",
        "> ",
        "<![if !mso]>",
        "<![endif]>",
        "<?xml ?>",
        "\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_HTML_BITS, max_size=40), st.booleans(), st.booleans())
def test_never_raises_on_html_soup(bits: list[str], flowed: bool, delsp: bool) -> None:
    soup = "".join(bits)
    assert isinstance(reply_text(None, soup), str)
    assert isinstance(reply_text(soup, None, flowed=flowed, delsp=delsp), str)


_COMMAND_LINES = st.sampled_from(
    [
        "KEDO",
        "RIEC",
        "AFSLUITEN",
        "AFSLUITEN dubbel",
        "VORM arbeid",
        "VORM seksueel",
        "VRAAG waar?",
        "WACHT",
        "GEEN TERUGKOPPELING",
        "STATUS",
        "HULP",
        "DOORZETTEN RIEC",
        "",
    ]
)


_ATTRIBUTIONS = st.sampled_from(
    [
        "\n\nOp 3 jun 2025 schreef Meldpunt:\n",
        "\n2016-12-08 11:00 GMT+01:00 Meldpunt <\nv@gemeente.example>:\n",
        "\n---- On Thu, 08 Dec 2016 11:00:00 +0100 Meldpunt <v@gemeente.example> wrote ----\n",
        "\nMeldpunt <v@gemeente.example> wrote:\n",
        "\nAt 10:14 PM 1/28/2001 -0500, you wrote:\n",
        "\nOp 3 jun. 2025 om 10:12 heeft Meldpunt\n<v@gemeente.example> het volgende\ngeschreven:\n",
        "\n*---- Original Message ----*\n",
        "\nForwarded message:\n",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_COMMAND_LINES, max_size=6),
    st.lists(_COMMAND_LINES, min_size=1, max_size=8),
    _ATTRIBUTIONS,
)
def test_quoted_lines_never_change_the_commands(
    top: list[str], quoted: list[str], attribution: str
) -> None:
    destinations = {"kedo", "riec"}
    alone = parse_commands("\n".join(top), destinations)
    plain = "\n".join(top) + attribution + "\n".join("> " + q for q in quoted)
    from_plain = parse_commands(reply_text(plain, None), destinations)
    # Line numbers may differ: reply_text drops leading blank lines.
    assert from_plain.commands == alone.commands
    assert [e.code for e in from_plain.errors] == [e.code for e in alone.errors]
    assert from_plain.ignored == alone.ignored
    html = (
        "".join(f"<div>{t}</div>" for t in top)
        + "<blockquote>"
        + "".join(f"<div>{q}</div>" for q in quoted)
        + "</blockquote>"
    )
    from_html = parse_commands(reply_text(None, html), destinations)
    assert from_html.commands == alone.commands
    assert [e.code for e in from_html.errors] == [e.code for e in alone.errors]
