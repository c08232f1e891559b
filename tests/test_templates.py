"""Mail templates (docs/contract.md, "Mails in and out"): sandboxed Jinja2, user text is data, strict variables,
acknowledgements structurally unable to carry signal content."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inboxd
from inboxd.templates import SHIPPED, Rendered, TemplateError, Templates

LANGUAGES = ("nl", "en")
REF = "VV-7K3M-9QXD"
TOKEN = "ABCD-EFGH-JKMN-PQRS"


def triage_context(**kw: Any) -> dict[str, Any]:
    """What ``inboxd.intake.Intake.triage_requests`` passes."""
    ctx: dict[str, Any] = {
        "ref": REF,
        "token": TOKEN,
        "drill": False,
        "received": "2026-11-28 12:00 UTC",
        "source": "intern",
        "size": 4321,
        "attachment_count": 2,
        "flags": [],
        "related": [],
        "destinations": ["KEDO", "RIEC", "NLA"],
        "include_content": "full",
        "reporter": "melder@gemeente.example",
        "subject": "Zorgen over de buren",
        "text": "Er wonen twaalf mensen in een huis.",
    }
    ctx.update(kw)
    return ctx


CONTEXTS: dict[str, dict[str, Any]] = {
    "ack": {"ref": REF},
    "triage_request": triage_context(),
}


def shipped_names(lang: str) -> set[str]:
    return {p.stem for p in (SHIPPED / lang).glob("*.txt")}


def source(lang: str, name: str) -> str:
    return (SHIPPED / lang / f"{name}.txt").read_text(encoding="utf-8")


def variables(lang: str, name: str) -> set[str]:
    env = jinja2.Environment(autoescape=False)
    return set(jinja2.meta.find_undeclared_variables(env.parse(source(lang, name))))


# -- what is shipped ------------------------------------------------------------------


def test_both_languages_ship_the_same_templates() -> None:
    assert shipped_names("nl") == shipped_names("en")
    assert {"ack", "triage_request"} <= shipped_names("nl")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_shipped_template_compiles_in_the_sandbox(lang: str) -> None:
    t = Templates(lang)
    for name in shipped_names(lang):
        t.env.get_template(f"{name}.txt")  # raises on a syntax error
        assert source(lang, name).lower().startswith("subject:"), name


def test_both_languages_use_the_same_variables() -> None:
    # Otherwise one language fails (StrictUndefined) or shows what the other does not.
    for name in shipped_names("nl"):
        assert variables("nl", name) == variables("en", name), name


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_known_contexts_cover_the_template_variables(name: str) -> None:
    for lang in LANGUAGES:
        assert variables(lang, name) <= set(CONTEXTS[name]), (lang, name)


# What reporters receive never carries signal content (docs/contract.md: "The life of a signal" step 4, "Mails in and out").
REPORTER_TEMPLATES = {
    "ack": {"ref"},
    "feedback_closed": {"ref"},
    "feedback_forwarded": {"ref"},
    "question": {"ref", "question"},
}


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", sorted(REPORTER_TEMPLATES))
def test_reporter_templates_see_no_content(lang: str, name: str) -> None:
    if name not in shipped_names(lang):
        pytest.skip(f"{name} not shipped yet")
    assert variables(lang, name) == REPORTER_TEMPLATES[name]


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_shipped_templates_render(lang: str, name: str) -> None:
    r = Templates(lang).render(name, CONTEXTS[name])
    assert isinstance(r, Rendered)
    assert r.subject and "\n" not in r.subject
    assert REF in r.subject
    assert r.body.strip()
    assert "{{" not in r.body and "{%" not in r.body


@pytest.mark.parametrize("lang", LANGUAGES)
def test_ack_variables_are_only_ref(lang: str) -> None:
    # Structural: the acknowledgement cannot repeat a subject or content it never sees.
    assert variables(lang, "ack") == {"ref"}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_ack_ignores_content_even_if_passed(lang: str) -> None:
    ctx = {"ref": REF, "subject": "GEHEIM-ONDERWERP", "text": "GEHEIME-TEKST", "reporter": "x@y.z"}
    r = Templates(lang).render("ack", ctx)
    for secret in ("GEHEIM-ONDERWERP", "GEHEIME-TEKST", "x@y.z"):
        assert secret not in r.subject and secret not in r.body
    assert REF in r.body


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("include", ["full", "text", "none"])
@pytest.mark.parametrize("drill", [False, True])
def test_triage_request_variants(lang: str, include: str, drill: bool) -> None:
    ctx = triage_context(
        include_content=include,
        drill=drill,
        flags=["auto", "malformed"],
        text="DE-TEKST" if include != "none" else "",
        subject="HET-ONDERWERP",
    )
    r = Templates(lang).render("triage_request", ctx)
    assert REF in r.subject and TOKEN not in r.subject and TOKEN in r.body
    assert ("[OEFENING]" in r.subject or "[DRILL]" in r.subject) == drill
    assert "auto, malformed" in r.body
    assert "KEDO, RIEC, NLA" in r.body
    assert "4321" in r.body
    shows_content = include != "none"
    assert ("DE-TEKST" in r.body) == shows_content
    assert ("HET-ONDERWERP" in r.body) == shows_content
    assert ("melder@gemeente.example" in r.body) == shows_content
    # The content never reaches the subject line.
    assert "HET-ONDERWERP" not in r.subject and "DE-TEKST" not in r.subject


# -- user text is data -------------------------------------------------------------------


@pytest.mark.parametrize(
    "evil",
    [
        "{{7*7}}",
        "{% raw %}{{ 7*7 }}{% endraw %}",
        "{% for x in range(3) %}LOOP{% endfor %}",
        "{{ ''.__class__.__mro__ }}",
        "{# comment #}",
        "<script>alert(1)</script> & 'x'",
    ],
)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_user_data_stays_literal(lang: str, evil: str) -> None:
    r = Templates(lang).render(
        "triage_request", triage_context(subject=evil, text=evil, reporter=evil)
    )
    assert r.body.count(evil) == 3
    assert "49" not in r.body
    assert "LOOPLOOP" not in r.body


@given(st.text(max_size=200))
# No deadline: a render's wall-clock time says nothing about correctness, and a
# loaded 2-core machine made the 200 ms default fail at random.
@settings(max_examples=50, deadline=None)
def test_any_text_is_printed_as_written(text: str) -> None:
    r = Templates("nl").render("triage_request", triage_context(text=text))
    assert text in r.body


# -- sandbox, strictness, overrides -----------------------------------------------------


def override(tmp_path: Path, name: str, text: str, lang: str = "nl") -> Templates:
    d = tmp_path / "tpl" / lang
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.txt").write_text(text, encoding="utf-8")
    return Templates(lang, str(tmp_path / "tpl"))


@pytest.mark.parametrize(
    "expr",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ref.__class__.__mro__[1].__subclasses__() }}",
        "{{ ref.__class__ }}",
        "{{ ref.format.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ self._TemplateReference__context }}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{{ ''.join.__self__ }}",
    ],
)
def test_sandbox_blocks_attribute_escapes(tmp_path: Path, expr: str) -> None:
    t = override(tmp_path, "evil", f"Subject: x\n\n{expr}\n")
    with pytest.raises(TemplateError) as info:
        t.render("evil", {"ref": REF})
    assert "evil" in str(info.value)


def test_sandbox_is_immutable(tmp_path: Path) -> None:
    t = override(tmp_path, "mutate", "Subject: x\n\n{{ items.append(1) }}{{ items }}\n")
    items: list[int] = []
    with pytest.raises(TemplateError):
        t.render("mutate", {"items": items})
    assert items == []


def test_missing_variable_is_an_error() -> None:
    with pytest.raises(TemplateError) as info:
        Templates("nl").render("ack", {})
    assert "ack" in str(info.value)
    ctx = triage_context()
    del ctx["token"]
    with pytest.raises(TemplateError):
        Templates("en").render("triage_request", ctx)


def test_missing_attribute_is_an_error(tmp_path: Path) -> None:
    t = override(tmp_path, "attr", "Subject: x\n\n{{ ref.nope }}\n")
    with pytest.raises(TemplateError):
        t.render("attr", {"ref": REF})


def test_error_message_does_not_quote_user_data(tmp_path: Path) -> None:
    t = override(tmp_path, "boom", "Subject: x\n\n{{ text | int(strict) }}\n")
    with pytest.raises(TemplateError) as info:
        t.render("boom", {"text": "GEHEIM-12345"})
    assert "GEHEIM" not in str(info.value)


def test_unknown_template() -> None:
    with pytest.raises(TemplateError):
        Templates("nl").render("does_not_exist", {"ref": REF})


def test_override_takes_precedence_and_falls_back(tmp_path: Path) -> None:
    t = override(tmp_path, "ack", "Subject: Eigen bevestiging {{ ref }}\n\nEigen tekst {{ ref }}\n")
    r = t.render("ack", {"ref": REF})
    assert r.subject == f"Eigen bevestiging {REF}"
    assert r.body == f"Eigen tekst {REF}\n"
    # Templates not overridden come from the shipped set.
    assert TOKEN in t.render("triage_request", triage_context()).body


FOLLOWUP = {
    "ref": REF,
    "token": TOKEN,
    "number": 1,
    "received": "2026-11-28 12:00 UTC",
    "include_content": "text",
    "text": "Nog iets.",
}


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize(
    ("name", "context"), [("triage_request", triage_context()), ("followup_notice", FOLLOWUP)]
)
def test_the_token_is_in_the_body_never_in_the_subject(
    lang: str, name: str, context: dict[str, Any]
) -> None:
    r = Templates(lang).render(name, context)
    assert REF in r.subject
    assert TOKEN not in r.subject, "subjects end up in mail-server logs"
    assert f"{REF}  [{'sleutel' if lang == 'nl' else 'key'} {TOKEN}]" in r.body


@pytest.mark.parametrize(
    "subject",
    [
        "Triageverzoek {{ ref }} [sleutel {{ token }}]",
        "Triageverzoek {{ ref }} {{ token | lower }}",
    ],
)
def test_an_own_template_may_not_put_the_token_in_the_subject(tmp_path: Path, subject: str) -> None:
    t = override(tmp_path, "triage_request", f"Subject: {subject}\n\n{{{{ token }}}}\n")
    with pytest.raises(TemplateError) as info:
        t.render("triage_request", triage_context())
    assert "triage_request" in str(info.value) and "Subject" in str(info.value)
    assert TOKEN not in str(info.value)


def test_override_directory_without_language_subfolder(tmp_path: Path) -> None:
    d = tmp_path / "flat"
    d.mkdir()
    (d / "ack.txt").write_text("Subject: Plat {{ ref }}\n\nx\n", encoding="utf-8")
    assert Templates("en", str(d)).render("ack", {"ref": REF}).subject == f"Plat {REF}"


@pytest.mark.parametrize(
    "text",
    [
        "Geen onderwerpregel\n\ntekst\n",
        "Subject: zonder lege regel\ntekst\n",
        "",
        "Subject: een\nSubject: twee\n\ntekst\n",
    ],
)
def test_template_must_start_with_subject_and_blank_line(tmp_path: Path, text: str) -> None:
    t = override(tmp_path, "bad", text)
    with pytest.raises(TemplateError):
        t.render("bad", {"ref": REF})


def test_subject_and_body_split(tmp_path: Path) -> None:
    t = override(tmp_path, "ok", "subject:   Hallo {{ ref }}  \n\n\nRegel 1\n\nRegel 2\n")
    r = t.render("ok", {"ref": REF})
    assert r.subject == f"Hallo {REF}"
    assert r.body == "Regel 1\n\nRegel 2\n"


# -- packaging --------------------------------------------------------------------------


def test_templates_are_shipped_with_the_package() -> None:
    root = Path(inboxd.__file__).resolve().parent
    pyproject = tomllib.loads((root.parent / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools_cfg = pyproject["tool"]["setuptools"]
    patterns = setuptools_cfg.get("package-data", {}).get("inboxd", [])
    in_package = any(list(root.glob(p)) for p in patterns if p.startswith("templates"))
    data_files = setuptools_cfg.get("data-files", {})
    as_data = any("templates" in k for k in data_files)
    assert in_package or as_data


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_flood_notice_sees_counts_and_times_only(lang: str) -> None:
    """It names how many signals were held, never anything about them."""
    assert variables(lang, "flood_notice") == {
        "count",
        "senders",
        "since",
        "until",
        "per_sender",
        "sender_window",
        "per_functionaris",
        "functionaris_window",
    }
    r = Templates(lang).render(
        "flood_notice",
        {
            "count": 25,
            "senders": 1,
            "since": "2026-11-28 12:00 UTC",
            "until": "2026-11-28 12:20 UTC",
            "per_sender": 10,
            "sender_window": "1 uur",
            "per_functionaris": 60,
            "functionaris_window": "1 uur",
        },
    )
    assert "25" in r.subject and "25" in r.body and "queue list" in r.body


def test_both_languages_ship_the_same_short_texts() -> None:
    """Every macro of templates/<language>/text/ exists, with the same arguments, in
    Dutch and English: a caller never finds one missing in the other language."""
    import re

    def macros(language: str) -> dict[str, dict[str, str]]:
        found = {}
        for path in sorted((SHIPPED / language / "text").glob("*.txt")):
            text = path.read_text(encoding="utf-8")
            found[path.name] = dict(re.findall(r"{% macro (\w+)\(([^)]*)\) %}", text))
        return found

    nl, en = macros("nl"), macros("en")
    assert set(nl) >= {"commands.txt", "outbox.txt", "mail.txt", "guides.txt"}
    assert nl == en


def test_short_texts_follow_templates_dir(tmp_path: Path) -> None:
    from inboxd.guides import digest_when, spoken_duration

    ours = tmp_path / "en" / "text"
    ours.mkdir(parents=True)
    text = (SHIPPED / "en" / "text" / "guides.txt").read_text(encoding="utf-8")
    (ours / "guides.txt").write_text(
        text.replace("every day at", "daily, at").replace('"days"', '"whole days"'),
        encoding="utf-8",
    )
    texts = Templates("en", str(tmp_path))
    assert spoken_duration(172800, "en", texts) == "2 whole days"
    assert digest_when("30 8 * * *", "en", texts) == "daily, at 8:30"
    assert spoken_duration(172800, "en") == "2 days"
    assert texts.phrase("mail", "secure_subject", ref="VV-1") == "Secure message VV-1"


# -- short texts (text/<name>.txt) ------------------------------------------------------


def text_macros(lang: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """Per shipped ``text/`` file of a language: its macros and what each takes."""
    env = Templates(lang).env
    found: dict[str, dict[str, tuple[str, ...]]] = {}
    for path in sorted((SHIPPED / lang / "text").glob("*.txt")):
        module = env.get_template(f"text/{path.name}").module
        found[path.stem] = {
            name: tuple(macro.arguments)
            for name, macro in vars(module).items()
            if isinstance(macro, jinja2.runtime.Macro)
        }
    return found


def test_both_languages_ship_every_phrase_with_the_same_arguments() -> None:
    # A macro missing in one language fails only when that language's operator meets
    # it, in the middle of a command's answer or a status line.
    nl, en = text_macros("nl"), text_macros("en")
    assert set(nl) == set(en)
    for name in nl:
        assert nl[name] == en[name], name
        assert nl[name], f"text/{name}.txt has no macros"


# The files whose macros take plain words and numbers (commands.txt and guides.txt
# take codes and units; test_commands and test_guides render them).
PLAIN_TEXTS = ("mail", "outbox", "demo")


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", PLAIN_TEXTS)
def test_every_plain_phrase_renders(lang: str, name: str) -> None:
    # The language a demo or an operator never picks must still render, not only exist.
    t = Templates(lang)
    for macro, arguments in text_macros(lang)[name].items():
        text = t.phrase(name, macro, **{a: "7" for a in arguments})
        assert text.strip() and "{{" not in text, f"{lang}/text/{name}.txt {macro}"


# -- an operator's own templates, checked when the configuration is loaded --------------


def own(tmp_path: Path, name: str, text: str, lang: str = "nl") -> str:
    path = tmp_path / "own" / lang / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(tmp_path / "own")


def shipped_text(name: str, lang: str = "nl") -> str:
    return (SHIPPED / lang / name).read_text(encoding="utf-8")


def test_a_faithful_override_of_every_kind_passes(tmp_path: Path) -> None:
    from inboxd.templates import override_problem

    folder = own(tmp_path, "ack.txt", "Subject: Ontvangen {{ ref }}\n\nDank u. {{ ref }}\n")
    own(tmp_path, "text/outbox.txt", shipped_text("text/outbox.txt"))
    own(tmp_path, "pages/guide_melder.txt", shipped_text("pages/guide_melder.txt"))
    assert override_problem("nl", folder) is None
    # The folder itself is searched too, after <language>/.
    (tmp_path / "own" / "feedback_closed.txt").write_text(
        "Subject: Afgehandeld {{ ref }}\n\nKlaar.\n", encoding="utf-8"
    )
    assert override_problem("nl", folder) is None


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("ack.txt", "Subject: Ontvangen {{ ref }\n\nx\n", "line 1"),
        ("ack.txt", "Subject: Ontvangen {{ ref }}\n\n{{ reporter }}\n", "{{ reporter }}"),
        ("ack.txt", "Ontvangen {{ ref }}\n\nx\n", "'Subject:' line"),
        ("akc.txt", "Subject: x\n\nx\n", "no template of this name"),
        ("text/outbox.txt", "{% macro other() %}x{% endmacro %}\n", "lacks the macro"),
        ("pages/stats.html", "{% if %}", "line 1"),
    ],
)
def test_an_override_that_would_fail_a_mail_is_named(
    tmp_path: Path, name: str, text: str, said: str
) -> None:
    from inboxd.templates import override_problem

    folder = own(tmp_path, name, text)
    problem = override_problem("nl", folder)
    assert problem is not None and said in problem, problem
    assert str(tmp_path / "own" / "nl" / name) in problem and "\n" not in problem


def test_a_text_override_must_keep_each_macros_arguments(tmp_path: Path) -> None:
    from inboxd.templates import override_problem

    text = shipped_text("text/mail.txt")
    changed = text.replace("macro followup_attachment(number)", "macro followup_attachment(n)")
    assert changed != text
    problem = override_problem("nl", own(tmp_path, "text/mail.txt", changed))
    assert problem is not None and "followup_attachment must take (number)" in problem


def test_an_operator_rewords_the_administrators_lines(tmp_path: Path) -> None:
    from inboxd.admin import status_text
    from inboxd.templates import override_problem

    # text/admin.txt is shared by both languages (templates/common/); a copy in the
    # operator's folder, <language>/ or not, replaces it.
    shipped_admin = (SHIPPED / "common" / "text" / "admin.txt").read_text(encoding="utf-8")
    reworded = shipped_admin.replace("open signals: {{ open }}", "open meldingen: {{ open }}")
    assert reworded != shipped_admin
    folder = own(tmp_path, "text/admin.txt", reworded)
    assert override_problem("nl", folder) is None
    snap: dict[str, Any] = {
        "service": "running",
        "open": 2,
        "by_state": {"queued": 2},
        "flags": {},
        "oldest_open_seconds": 90061,
        "outbox": 0,
        "last_fetch": None,
        "last_send": None,
        "last_error": None,
        "keys": None,
        "version": "0",
    }
    lines = status_text(snap, Templates("nl", folder)).splitlines()
    assert "open meldingen: 2" in lines and "oldest open: 1d 1h 1m" in lines
    assert "open signals: 2" in status_text(snap).splitlines()
    assert not any("shredded" in line for line in status_text(snap).splitlines())
    held = status_text({**snap, "shred_pending": 2}).splitlines()
    assert any(line.startswith("deleted, not yet shredded: 2") for line in held), held
    broken = reworded.replace("macro queue_empty()", "macro queue_none()")
    problem = override_problem("en", own(tmp_path, "text/admin.txt", broken, lang="en"))
    assert problem is not None and "queue_empty" in problem
