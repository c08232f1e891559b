"""The guides for reporters and functionarissen (``inboxd guide``), rendered from the
configuration through the sandboxed templates: the real destinations and forms, an
example reply the command parser accepts, the mail subjects as they are really sent,
and HTML that escapes configured text and loads nothing from outside."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_statspage import chromium, needs_chromium

from inboxd import config, guides
from inboxd.commands import Forward, SetForm, parse_commands
from inboxd.templates import Templates

REPO = Path(__file__).resolve().parent.parent
IMAP_EXAMPLE = REPO / "config" / "inboxd.imap.toml"


def load(tmp_path: Path, extra: str = "", **replace: str) -> config.Config:
    text = IMAP_EXAMPLE.read_text(encoding="utf-8")
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "inboxd.toml"
    path.write_text(text + extra, encoding="utf-8")
    return config.load(str(path))


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return load(tmp_path)


LANGS = ["nl", "en"]
FORMATS = ["text", "html"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("lang", LANGS)
def test_command_card_names_every_destination_and_form(
    cfg: config.Config, lang: str, fmt: str
) -> None:
    card = guides.render(cfg, "functionaris", fmt, lang)  # type: ignore[arg-type]
    for key, dest in cfg.destinations.items():
        assert key.upper() in card
        assert dest.label in card
    forms = ("seksueel", "arbeid", "crimineel", "overig")
    forms_en = ("sexual", "labour", "criminal", "other")
    for word in forms if lang == "nl" else forms_en:
        assert word in card
    for word in ("AFSLUITEN", "VRAAG", "WACHT", "GEEN TERUGKOPPELING", "STATUS", "HULP"):
        assert word in card  # the English card lists the Dutch words too
    assert cfg.from_address in card
    # What to do with the triage request afterwards.
    assert ("Verzonden items" if lang == "nl" else "Sent Items") in card
    assert "2 dagen" in card if lang == "nl" else "2 days" in card


@pytest.mark.parametrize("lang", LANGS)
def test_example_reply_is_a_command_mail_inboxd_carries_out(cfg: config.Config, lang: str) -> None:
    lines = guides.example_reply(cfg, lang)  # type: ignore[arg-type]
    parsed = parse_commands("\n".join(lines), cfg.destinations.keys())
    assert parsed.errors == ()
    kinds = {type(c) for c in parsed.commands}
    assert kinds == {Forward, SetForm}
    forward = next(c for c in parsed.commands if isinstance(c, Forward))
    assert set(forward.destinations) <= set(cfg.destinations)
    card = guides.render(cfg, "functionaris", "text", lang)  # type: ignore[arg-type]
    for line in lines:
        assert line in card


@pytest.mark.parametrize("lang", LANGS)
def test_subjects_on_the_card_are_those_of_the_real_mails(tmp_path: Path, lang: str) -> None:
    cfg = load(tmp_path, **{'language = "nl"': f'language = "{lang}"'})
    ref = guides.example_reference(cfg.reference_prefix)
    real = Templates(lang).render(
        "triage_closed", {"ref": ref, "destinations": ["KEDO"], "language": lang}
    )
    card = guides.render(cfg, "functionaris", "text")
    assert real.subject in card
    # The example reference passes the check character test, like a real one.
    from inboxd.references import normalise

    assert normalise(ref, cfg.reference_prefix) == ref


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("lang", LANGS)
def test_reporter_guide(cfg: config.Config, lang: str, fmt: str) -> None:
    guide = guides.render(cfg, "melder", fmt, lang)  # type: ignore[arg-type]
    assert "112" in guide
    assert cfg.from_address in guide
    assert "BSN" in guide  # what not to include
    # Who gets an acknowledgement (the text may wrap between the words).
    who = (
        "Alleen adressen van gemeente.example"
        if lang == "nl"
        else "Only addresses at gemeente.example"
    )
    assert who in " ".join(guide.split())
    words = ("terugkoppeling", "beschermd") if lang == "nl" else ("feedback", "protects")
    for w in words:
        assert w in guide.lower()


def test_drill_destinations_are_named_when_they_have_a_test_address(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        **{
            'test_address = ""                      # drills go here (default: the functionarissen)': 'test_address = "oefen-kedo@gemeente.example"'
        },
    )
    card = guides.render(cfg, "functionaris", "text", "nl")
    assert "testadressen van KEDO" in card
    assert "oefen-kedo@" not in card  # an address the officers do not need


HOSTILE_LABEL = '<img src=x onerror=alert(1)> {{ 7*7 }} & "Co"'


def test_html_escapes_configured_text_and_templates_stay_inert(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        **{'label = "KEDO (slachtofferspoor)"': f"label = '{HOSTILE_LABEL}'"},
    )
    assert cfg.destinations["kedo"].label == HOSTILE_LABEL
    html = guides.render(cfg, "functionaris", "html", "nl")
    assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; {{ 7*7 }} &amp; &#34;Co&#34;" in html
    text = guides.render(cfg, "functionaris", "text", "nl")
    assert HOSTILE_LABEL in text  # text is text: printed as configured, not evaluated
    assert "49" not in text


EXTERNAL = re.compile(r"(?i)(https?:|//[a-z]|\bsrc=|<link|@import|url\()")


@pytest.mark.parametrize("audience", ["melder", "functionaris"])
@pytest.mark.parametrize("lang", LANGS)
def test_html_is_one_self_contained_printable_page(
    cfg: config.Config, audience: str, lang: str
) -> None:
    html = guides.render(cfg, audience, "html", lang)  # type: ignore[arg-type]
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert f'<html lang="{lang}">' in html
    assert "@media print" in html
    assert EXTERNAL.search(html) is None


def test_override_in_templates_dir(tmp_path: Path) -> None:
    own = tmp_path / "own" / "nl" / "pages"
    own.mkdir(parents=True)
    (own / "guide_melder.txt").write_text("Eigen tekst: {{ address }}\n", encoding="utf-8")
    cfg = load(tmp_path, **{'templates_dir = ""': 'templates_dir = "own"'})
    assert guides.render(cfg, "melder", "text") == "Eigen tekst: vreemdverhaal@gemeente.example\n"
    # The card still comes from the shipped template.
    assert "KEDO" in guides.render(cfg, "functionaris", "text")


@pytest.mark.parametrize(
    ("cron", "lang", "words"),
    [
        ("0 9 * * mon-fri", "nl", "op werkdagen (maandag tot en met vrijdag) om 9:00"),
        ("30 8 * * *", "en", "every day at 8:30"),
        ("0 9 1 * *", "en", 'on the schedule "0 9 1 * *" (cron)'),
    ],
)
def test_digest_time_in_words(cron: str, lang: str, words: str) -> None:
    assert guides.digest_when(cron, lang) == words  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "lang", "words"),
    [(172800, "nl", "2 dagen"), (86400, "en", "1 day"), (5400, "en", "90 minutes")],
)
def test_spoken_duration(seconds: float, lang: str, words: str) -> None:
    assert guides.spoken_duration(seconds, lang) == words  # type: ignore[arg-type]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inboxd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_cli_writes_the_card_without_keys_or_store(tmp_path: Path) -> None:
    load(tmp_path)  # the master key named there does not exist; not needed
    out = tmp_path / "kaart.html"
    p = run_cli(
        "guide", "functionaris", "--format", "html", "--out", str(out),
        "--config", str(tmp_path / "inboxd.toml"), cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert "RIEC Informatieplein (daderspoor)" in out.read_text(encoding="utf-8")
    p = run_cli(
        "guide", "melder", "--language", "en", "--config", str(tmp_path / "inboxd.toml"),
        cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("REPORTING A SIGNAL")


def test_cli_unknown_audience_is_a_usage_error(tmp_path: Path) -> None:
    p = run_cli("guide", "burgemeester", cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1


def test_context_holds_no_personal_configuration(cfg: config.Config) -> None:
    ctx: dict[str, Any] = guides.context(cfg, "nl")
    flat = repr(ctx)
    for officer in cfg.triage.functionarissen:
        assert officer not in flat  # the card need not list colleagues' addresses
    for dest in cfg.destinations.values():
        assert dest.address not in flat  # officers forward by key, never by address


@needs_chromium
@pytest.mark.parametrize("audience", ["melder", "functionaris"])
def test_chromium_renders_the_printable_guides(
    cfg: config.Config, audience: str, tmp_path: Path
) -> None:
    page = tmp_path / f"{audience}.html"
    page.write_text(guides.render(cfg, audience, "html", "nl"), encoding="utf-8")  # type: ignore[arg-type]
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout.decode()
    assert "<h1>" in text and "</html>" in text
    if audience == "functionaris":
        # Every destination is a row of the card's table, as the browser parsed it.
        for key, dest in cfg.destinations.items():
            assert f'<td class="cmd">{key.upper()}</td><td>doorzetten naar {dest.label}' in text
    else:
        assert "Bel 112." in text
    pdf = tmp_path / f"{audience}.pdf"
    printed = chromium(tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri())
    assert printed.returncode == 0, printed.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    # A4, as the page's @page rule asks (595 x 842 points), on one or two sheets.
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data)
    assert boxes
    for w, h in boxes:
        assert abs(float(w) - 595) < 1 and abs(float(h) - 842) < 1, (w, h)
    assert 1 <= len(re.findall(rb"/Type\s*/Page[^s]", data)) <= 2
