"""``inboxd privacy-register``: the entry for the processing register (GDPR/AVG art. 30).

Built from the configuration (purposes, recipients, configured retention, security
settings) and from the live store, measured (how old the oldest open signal is, how
long duplicate records and statistics really go back). The store is read for counts
and times only: nothing is decrypted, and no reference, address or content of a
signal appears. What inboxd cannot know (the controller's name, the data-protection
officer, the legal basis) is marked to be filled in by the municipality.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from inboxd.commands import Language
from inboxd.config import Config
from inboxd.guides import spoken_duration
from inboxd.mail_limits import longest_window
from inboxd.store import Retention
from inboxd.templates import Templates


@dataclass(frozen=True)
class Recipient:
    key: str
    label: str
    address: str
    encrypted: bool
    test_address: str


def _day(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def _age(ts: float | None, now: float, language: Language, texts: Templates) -> str | None:
    if ts is None:
        return None
    seconds = max(0, int(now - ts))
    days, rest = divmod(seconds, 86400)
    if days:
        return spoken_duration(days * 86400.0, language, texts)
    hours = rest // 3600
    if hours:
        return spoken_duration(hours * 3600.0, language, texts)
    return spoken_duration(max(60, rest // 60 * 60), language, texts)


def _where(cfg: Config) -> tuple[str, str]:
    """The server behind the mailbox and behind outgoing mail (their operators are
    processors to name in the register)."""
    return cfg.mailbox.server, cfg.smtp.server or cfg.mailbox.server


def context(cfg: Config, kept: Retention, now: float, language: Language) -> dict[str, Any]:
    texts = Templates(language, cfg.templates_dir)
    mailbox_where, outgoing_where = _where(cfg)
    mb = cfg.mailbox
    # Exchange Online: the app's tenant is Microsoft's; where it keeps the mail is a
    # question for the register (transfers outside the EEA).
    microsoft = mb.microsoft_app
    sources = sorted(cfg.sources)
    return {
        "lang": language,
        "date": dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d"),
        "address": cfg.from_address,
        "backend": mb.backend,
        "mailbox_where": mailbox_where,
        "transport": cfg.smtp.transport,
        "outgoing_where": outgoing_where,
        "microsoft": microsoft,
        "sources": sources,
        "ack_domains": sorted(cfg.reporters.ack_domains),
        "functionaris_count": len(cfg.triage.functionarissen),
        "functionaris_certificates": len(cfg.triage.certificates),
        "include_content": cfg.triage.include_content,
        "recipients": [
            Recipient(key.upper(), d.label, d.address, bool(d.certificate), d.test_address)
            for key, d in sorted(cfg.destinations.items())
        ],
        "retain_in_mailbox": cfg.mailbox.retain_in_mailbox,
        "remind_after": spoken_duration(cfg.triage.remind_after, language, texts),
        "forward_retry_for": spoken_duration(cfg.triage.forward_retry_for, language, texts),
        "dedup_window": spoken_duration(cfg.dedup_window, language, texts),
        "ack_window": spoken_duration(longest_window(cfg), language, texts),
        "mailbox_security": mb.protection,
        "smtp_security": cfg.smtp.protection,
        "trusted_authserv_ids": sorted(cfg.evidence_policy.trusted_authserv_ids),
        "exchange_internal": cfg.evidence_policy.exchange_internal,
        "unauthenticated": cfg.evidence_policy.allow_unauthenticated,
        "key_count": len(cfg.crypto.key_files),
        "metrics": cfg.metrics.listen if cfg.metrics else None,
        "kept": kept,
        "oldest_open_age": _age(kept.oldest_open, now, language, texts),
        "oldest_open_day": _day(kept.oldest_open),
        "oldest_accepted_age": _age(kept.oldest_accepted, now, language, texts),
        "oldest_outbox_age": _age(kept.oldest_outbox, now, language, texts),
        "dedup_until": _day(kept.dedup_last_expiry),
        "oldest_sent_day": _day(kept.oldest_sent_id),
        "first_reference_day": _day(kept.first_reference_closed),
        "first_audit_day": _day(kept.first_audit),
    }


def render(cfg: Config, kept: Retention, now: float, language: Language | None = None) -> str:
    lang: Language = language or cfg.language
    return Templates(lang, cfg.templates_dir).page(
        "privacy_register.txt", context(cfg, kept, now, lang)
    )


def as_json(cfg: Config, kept: Retention, now: float) -> dict[str, Any]:
    """The same facts for a register kept as data: configured and measured."""
    return {
        "generated": dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z"),
        "mailbox": cfg.from_address,
        "recipients": [
            {
                "key": k.upper(),
                "label": d.label,
                "address": d.address,
                "encrypted": bool(d.certificate),
            }
            for k, d in sorted(cfg.destinations.items())
        ],
        "functionarissen": len(cfg.triage.functionarissen),
        "include_content": cfg.triage.include_content,
        "retention_configured": {
            "retain_in_mailbox": cfg.mailbox.retain_in_mailbox,
            "remind_after_seconds": cfg.triage.remind_after,
            "forward_retry_for_seconds": cfg.triage.forward_retry_for,
            "dedup_window_seconds": cfg.dedup_window,
            "ack_rate_window_seconds": cfg.reporters.ack_rate_limit[1],
        },
        "retention_measured": asdict(kept),
    }
