"""``inboxd privacy-register``: the GDPR/AVG article 30 entry, from the configuration
and the live store — purposes, data subjects and data, recipients with their labels,
retention as configured and as measured, security measures — and nothing of a
signal itself."""

from __future__ import annotations

import json
import re
import time
from dataclasses import fields

import pytest
from servers import MailServer
from test_admin import new_signal
from test_control import Service, admin_shell, audit_rows, wait_for
from test_control import service as service  # noqa: F401 (the fixture)
from world import KEDO, REPORTER, World, assert_absent, marker, signal_mail

from inboxd import register
from inboxd.config import GraphMailboxConfig
from inboxd.store import Retention

DAY = 86400.0


def test_register_from_configuration_and_live_store(world: World, mail: MailServer) -> None:
    mark = marker()
    # A signal that has been open three days and some.
    world.now = time.time() - 3 * DAY - 600
    ref, _ = new_signal(world, mail, mark, display=f"Melder {mark}", subject=f"Signaal {mark}")

    p = world.cli("privacy-register")
    assert p.returncode == 0, p.stderr
    text = p.stdout
    cfg = world.cfg()
    # Article 30(1) a–g, in the configured language.
    for heading in (
        "a. VERWERKINGSVERANTWOORDELIJKE",
        "b. DOELEINDEN",
        "c. CATEGORIEËN BETROKKENEN EN PERSOONSGEGEVENS",
        "d. ONTVANGERS",
        "e. DOORGIFTE BUITEN DE EER",
        "f. BEWAARTERMIJNEN",
        "g. TECHNISCHE EN ORGANISATORISCHE MAATREGELEN",
    ):
        assert heading in text
    # Recipients: every destination with its label and address.
    for key, dest in cfg.destinations.items():
        assert f"{key.upper()}: {dest.label} <{dest.address}>" in text
    # Retention as configured …
    assert "30 dagen na het verwijderen" in text  # dedup_window
    assert "na 2 dagen krijgen de functionarissen" in text  # remind_after
    # … and measured: the open signal, three days old, and its duplicate record.
    assert "Open signalen: 1; het oudste staat 3 dagen open" in text
    assert re.search(r"Kenmerken tegen dubbel ontvangen: [1-9]", text), text
    # What the municipality must fill in is marked, not invented.
    assert text.count("[in te vullen]") >= 4
    # Nothing of the signal: no content, no sender, no reference.
    for where in (text, p.stderr):
        assert_absent(mark, where="privacy-register", data=where)
        assert REPORTER not in where
        assert ref not in where

    j = world.cli("privacy-register", "--format", "json")
    assert j.returncode == 0, j.stderr
    data = json.loads(j.stdout)
    measured = data["retention_measured"]
    assert measured["open_signals"] == 1
    assert measured["oldest_open"] == pytest.approx(world.now, abs=5)
    assert {r["key"] for r in data["recipients"]} == {k.upper() for k in cfg.destinations}
    assert KEDO in {r["address"] for r in data["recipients"]}
    assert data["retention_configured"]["dedup_window_seconds"] == 30 * DAY
    assert_absent(mark, where="privacy-register json", data=j.stdout)
    assert ref not in j.stdout

    en = world.cli("privacy-register", "--language", "en")
    assert en.returncode == 0, en.stderr
    assert "RECORD OF PROCESSING ACTIVITIES — GDPR ARTICLE 30(1)" in en.stdout
    assert "Open signals: 1; the oldest has been open 3 days" in en.stdout


def retention(**kw: object) -> Retention:
    # Counts zero, times and months absent: an empty store.
    base: dict[str, object] = {f.name: 0 if f.type == "int" else None for f in fields(Retention)}
    base.update(kw)
    return Retention(**base)  # type: ignore[arg-type]


def test_empty_store_and_statistics_range(world: World) -> None:
    cfg = world.cfg()
    now = time.time()
    kept = retention(
        stats_rows=14, stats_first_month="2025-01", stats_last_month="2026-11", stats_signals=73
    )
    text = register.render(cfg, kept, now)
    assert "Open signalen: 0." in text
    assert "Statistiek: 14 regels, 2025-01 tot en met 2026-11, samen 73 signalen." in text


def test_sender_evidence_and_encryption_are_reported_as_configured(world: World) -> None:
    now = time.time()
    world.write_config(trusted=[], allow_unauthenticated=True)
    text = " ".join(register.render(world.cfg(), retention(), now).split())
    assert "LET OP: triage.allow_unauthenticated = true" in text
    world.write_config(trusted=["mail.gemeente.test"], allow_unauthenticated=False)
    text = " ".join(register.render(world.cfg(), retention(), now).split())
    assert "LET OP" not in text
    assert (
        "dat de afzender het zelf verstuurde (Authentication-Results van mail.gemeente.test)"
        in text
    )
    assert "S/MIME naar 0 van de 3 bestemmingen" in text
    assert "mailbox tls" in text  # the configured IMAP security


def test_microsoft_365_asks_about_transfers(world: World) -> None:
    cfg = world.cfg()
    # A model per backend: the Graph section is its own model, not a changed backend key.
    graph = cfg.model_copy(update={"mailbox": GraphMailboxConfig(mailbox="vv@x.example")})

    def words(c: object) -> str:
        return " ".join(register.render(c, retention(), time.time(), "en").split())  # type: ignore[arg-type]

    assert (
        "Microsoft 365: where Microsoft stores and processes the mailbox (EU Data Boundary)"
        in words(graph)
    )
    assert "EU Data Boundary" not in words(cfg)


def test_register_comes_from_the_running_service_without_the_key(service: Service) -> None:
    mark = marker()
    (service.root / "vreemdverhaal" / "new" / "1.eml").write_bytes(
        signal_mail(mark, subject=f"Signaal {mark}")
    )
    service.start()

    def open_signals() -> int:
        p = admin_shell(service, "status", "--json")
        return int(json.loads(p.stdout)["open"]) if p.returncode == 0 else -1

    wait_for(lambda: open_signals() == 1, "the signal to be queued", service)
    p = admin_shell(service, "privacy-register", "--language", "en")
    assert p.returncode == 0, p.stderr
    assert "Open signals: 1; the oldest has been open" in p.stdout
    assert "not running" not in p.stderr  # answered by the service, over its socket
    assert_absent(mark, where="privacy-register over the socket", data=p.stdout)
    service.stop()
    assert ("privacy-register", None, 0) in audit_rows(service)
