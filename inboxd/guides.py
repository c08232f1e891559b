"""The guides for the people who use inboxd, rendered from the running configuration.

``inboxd guide melder`` is for colleagues who report a signal; ``inboxd guide
functionaris`` is the designated officers' command card. Both come in the configured
language (or ``--language``), as text or as a printable HTML page, from the templates
in ``templates/<language>/pages/``. The context is built here from the configuration
alone: the mailbox address, the destinations (key and label), the forms, the timing.
Nothing from the store, so a guide can be printed on a machine without the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from inboxd.commands import Language, form_words
from inboxd.config import Config
from inboxd.references import check_char
from inboxd.templates import Templates, shipped

Audience = Literal["melder", "functionaris"]
Format = Literal["text", "html"]

# A reference and token that look real but belong to no signal (the body is fixed, the
# check character is computed, so the example passes the reference check).
_EXAMPLE_BODY = "7K3M9QX"
EXAMPLE_TOKEN = "4F7K-Q2ZD-9M1C-XH8B"  # noqa: S105 (an example printed on the card)


@dataclass(frozen=True)
class Destination:
    key: str
    command: str
    label: str
    has_certificate: bool


def example_reference(prefix: str) -> str:
    code = _EXAMPLE_BODY + check_char(_EXAMPLE_BODY)
    return f"{prefix}-{code[:4]}-{code[4:]}"


def example_reply(cfg: Config, language: Language, texts: Templates | None = None) -> list[str]:
    """Command lines a functionaris could send: the first destination and a form, then
    a greeting that ends the commands. tests/test_guides.py runs it through the real
    command parser."""
    phrase = (texts or shipped(language)).phrase
    forms = form_words(language)
    lines = []
    if cfg.destinations:
        lines.append(sorted(cfg.destinations)[0].upper())
    lines.append(f"{'VORM' if language == 'nl' else 'TYPE'} {forms[1]}")
    lines += ["", phrase("guides", "example_greeting"), phrase("guides", "example_name")]
    return lines


_UNITS = ((86400, "day"), (3600, "hour"), (60, "minute"))


def spoken_duration(seconds: float, language: Language, texts: Templates | None = None) -> str:
    """``172800`` → "2 dagen" / "2 days"; the largest unit that divides it (the words:
    ``duration`` in templates/<language>/text/guides.txt)."""
    phrase = (texts or shipped(language)).phrase
    for size, unit in _UNITS:
        if seconds >= size and seconds % size == 0:
            return phrase("guides", "duration", n=int(seconds // size), unit=unit)
    return phrase("guides", "duration", n=int(seconds), unit="second")


_DAYS = {"mon-fri": "workdays", "1-5": "workdays", "*": "daily"}


def digest_when(cron: str, language: Language, texts: Templates | None = None) -> str:
    """The usual digest schedules in words; anything else as the crontab line."""
    parts = cron.split()
    days = _DAYS.get(parts[4].lower(), "") if len(parts) == 5 else ""
    at = ""
    if days and parts[0].isdigit() and parts[1].isdigit() and parts[2:4] == ["*", "*"]:
        at = f"{int(parts[1])}:{int(parts[0]):02d}"
    else:
        days = ""
    return (texts or shipped(language)).phrase("guides", "digest_when", days=days, at=at, cron=cron)


def context(cfg: Config, language: Language) -> dict[str, Any]:
    destinations = [
        Destination(key, key.upper(), d.label, bool(d.certificate))
        for key, d in sorted(cfg.destinations.items())
    ]
    ack_domains = sorted(cfg.reporters.ack_domains)
    # The subjects as the functionarissen will really see them: the mail language.
    mails = Templates(cfg.language, cfg.templates_dir)
    texts = mails if language == cfg.language else Templates(language, cfg.templates_dir)
    ref = example_reference(cfg.reference_prefix)
    return {
        "lang": language,
        "triage_subject": mails.subject(
            "triage_request", {"ref": ref, "token": EXAMPLE_TOKEN, "drill": False}
        ),
        "closed_subject": mails.subject("triage_closed", {"ref": ref}),
        "address": cfg.from_address,
        "prefix": cfg.reference_prefix,
        "example_ref": ref,
        "example_token": EXAMPLE_TOKEN,
        "example_reply": example_reply(cfg, language, texts),
        "ack_domains": ack_domains,
        "destinations": destinations,
        "forms": form_words(language),
        "include_content": cfg.triage.include_content,
        "remind_after": spoken_duration(cfg.triage.remind_after, language, texts),
        "digest_when": digest_when(cfg.triage.digest_cron, language, texts),
        "functionaris_count": len(cfg.triage.functionarissen),
        "encrypted_to_me": bool(cfg.triage.certificates),
        "forward_retry_for": spoken_duration(cfg.triage.forward_retry_for, language, texts),
        "drill_destinations": [
            Destination(key, key.upper(), d.label, bool(d.certificate))
            for key, d in sorted(cfg.destinations.items())
            if d.test_address
        ],
    }


def render(cfg: Config, audience: Audience, fmt: Format, language: Language | None = None) -> str:
    lang: Language = language or cfg.language
    templates = Templates(lang, cfg.templates_dir)
    ext = "html" if fmt == "html" else "txt"
    return templates.page(f"guide_{audience}.{ext}", context(cfg, lang))
