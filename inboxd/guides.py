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
from inboxd.templates import Templates

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


def example_reply(cfg: Config, language: Language) -> list[str]:
    """Command lines a functionaris could send: the first destination and a form, then
    a greeting that ends the commands. tests/test_guides.py runs it through the real
    command parser."""
    forms = form_words(language)
    lines = []
    if cfg.destinations:
        lines.append(sorted(cfg.destinations)[0].upper())
    lines.append(f"{'VORM' if language == 'nl' else 'TYPE'} {forms[1]}")
    lines += ["", "Groet," if language == "nl" else "Regards,", "A. Jansen"]
    return lines


_UNITS: dict[Language, tuple[tuple[int, str, str], ...]] = {
    "nl": ((86400, "dag", "dagen"), (3600, "uur", "uur"), (60, "minuut", "minuten")),
    "en": ((86400, "day", "days"), (3600, "hour", "hours"), (60, "minute", "minutes")),
}


def spoken_duration(seconds: float, language: Language) -> str:
    """``172800`` → "2 dagen" / "2 days"; the largest unit that divides it."""
    for size, one, many in _UNITS[language]:
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {one if n == 1 else many}"
    return f"{int(seconds)} {'seconden' if language == 'nl' else 'seconds'}"


_DAYS: dict[Language, dict[str, str]] = {
    "nl": {
        "mon-fri": "op werkdagen (maandag tot en met vrijdag)",
        "1-5": "op werkdagen (maandag tot en met vrijdag)",
        "*": "elke dag",
    },
    "en": {
        "mon-fri": "on working days (Monday to Friday)",
        "1-5": "on working days (Monday to Friday)",
        "*": "every day",
    },
}


def digest_when(cron: str, language: Language) -> str:
    """The usual digest schedules in words; anything else as the crontab line."""
    parts = cron.split()
    days = _DAYS[language].get(parts[4].lower()) if len(parts) == 5 else None
    if days and parts[0].isdigit() and parts[1].isdigit() and parts[2:4] == ["*", "*"]:
        at = f"{int(parts[1])}:{int(parts[0]):02d}"
        return f"{days} om {at}" if language == "nl" else f"{days} at {at}"
    return (
        f"volgens het schema „{cron}” (cron)"
        if language == "nl"
        else f'on the schedule "{cron}" (cron)'
    )


def context(cfg: Config, language: Language) -> dict[str, Any]:
    destinations = [
        Destination(key, key.upper(), d.label, bool(d.certificate))
        for key, d in sorted(cfg.destinations.items())
    ]
    ack_domains = sorted(cfg.reporters.ack_domains)
    # The subjects as the functionarissen will really see them: the mail language.
    mails = Templates(cfg.language, cfg.templates_dir)
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
        "example_reply": example_reply(cfg, language),
        "ack_domains": ack_domains,
        "destinations": destinations,
        "forms": form_words(language),
        "include_content": cfg.triage.include_content,
        "remind_after": spoken_duration(cfg.triage.remind_after, language),
        "digest_when": digest_when(cfg.triage.digest_cron, language),
        "functionaris_count": len(cfg.triage.functionarissen),
        "encrypted_to_me": bool(cfg.triage.certificates),
        "forward_retry_for": spoken_duration(cfg.triage.forward_retry_for, language),
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
