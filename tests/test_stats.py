"""Statistics (docs/contract.md, "What is stored" and ``inboxd stats``): counts per month × source ×
form × outcome that outlive the signals, drills left out, small cells suppressed,
the year before compared — and no per-signal trace once a signal is deleted."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from servers import MailServer
from world import (
    F1,
    F2,
    KEDO,
    OUTSIDER,
    REPORTER,
    RIEC,
    World,
    assert_absent,
    marker,
    parse,
    reply,
    signal_mail,
    submit,
)

from inboxd.admin import stats_csv, stats_report, stats_table, suppress
from inboxd.references import find_references
from inboxd.statspage import change
from inboxd.templates import Templates

MMA_SENDER = "collega@gemeente.example"  # in the ack domains, and yet source "mma"
MONTH = "2026-11"


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    w = World(mail, tmp_path / "w").setup()
    w.now = 1_795_435_200.0  # 2026-11-23 12:00 UTC
    text = w.config_path.read_text()
    mma = 'addresses = ["meldingen@meldmisdaadanoniem.example"]'
    assert mma in text
    w.config_path.write_text(
        text.replace(mma, f'addresses = ["meldingen@meldmisdaadanoniem.example", "{MMA_SENDER}"]')
    )
    return w


def stats(world: World, *extra: str, fmt: str = "json", year: int = 2026) -> str:
    out = world.cli("stats", "--format", fmt, "--year", str(year), *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout


def request_for(mail: MailServer, mark: str) -> tuple[str, bytes]:
    found = [
        m
        for m in mail.messages(F1)
        if str(parse(m)["Subject"]).strip().startswith("Triageverzoek") and mark.encode() in m
    ]
    assert len(found) == 1, f"one triage request for {mark}"
    return find_references(str(parse(found[0])["Subject"]), "VV")[0], found[0]


def run_signals(world: World, mail: MailServer) -> dict[str, tuple[str, str]]:
    """Five signals through their whole life; returns name → (marker, reference)."""
    plan = {
        # name: (sender, subject prefix, command)
        "intern1": (REPORTER, "", "KEDO\nVORM arbeid"),
        "extern": (OUTSIDER, "", "RIEC KEDO\nVORM seksueel"),
        "mma": (MMA_SENDER, "", "AFSLUITEN geen signaal"),
        "intern2": (REPORTER, "", "VORM arbeid\nKEDO"),
        "drill": (F1, "[TEST] ", "KEDO\nVORM overig"),
    }
    marks = {name: marker() for name in plan}
    for name, (sender, prefix, _) in plan.items():
        raw = signal_mail(
            marks[name], sender=sender, subject=f"{prefix}Signaal {marks[name]}", display="X"
        )
        submit(mail, raw, sender)
    world.once()
    out = {}
    for name, (_, _, cmd) in plan.items():
        ref, request = request_for(mail, marks[name])
        out[name] = (marks[name], ref)
        submit(mail, reply(request, cmd))
    world.until_quiet()
    assert world.status()["open"] == 0
    return out


EXPECTED = [
    {"month": MONTH, "source": "extern", "form": "seksueel", "outcome": "kedo+riec", "count": 1},
    {"month": MONTH, "source": "intern", "form": "arbeid", "outcome": "kedo", "count": 2},
    {"month": MONTH, "source": "mma", "form": "onbekend", "outcome": "afgesloten", "count": 1},
]


def table_numbers(table: str) -> dict[tuple[str, str], list[str]]:
    """(section, name) → the cells after the name, from ``stats --format table``."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in table.splitlines():
        if line.startswith("per "):
            section = line[4:].rstrip(":")
        elif line.strip() and not line.startswith("Signalen"):
            name, *cells = line.split()
            out[(section, name)] = cells
    return out


def test_a_year_of_signals_counted_by_source_form_and_outcome(
    world: World, mail: MailServer
) -> None:
    # The year before, inserted through the store, to compare against.
    store = world.store()
    try:
        with store.transaction() as tx:
            for _ in range(2):
                tx.count("2025-03", "intern", "arbeid", "kedo", "1-3d")
    finally:
        store.close()
    signals = run_signals(world, mail)

    # The drill ran its whole life to the functionarissen, never to KEDO.
    drill_mark = signals["drill"][0]
    for f in (F1, F2):
        forwards = [
            m
            for m in mail.messages(f)
            if str(parse(m)["Subject"]).strip().startswith("Signaal mensenhandel")
        ]
        assert len(forwards) == 1 and drill_mark.encode() in forwards[0]
        assert "[OEFENING]" in str(parse(forwards[0])["Subject"])
    assert len(mail.messages(KEDO)) == 3 and len(mail.messages(RIEC)) == 1
    assert all(drill_mark.encode() not in m for m in mail.messages(KEDO))

    report = json.loads(stats(world))
    assert report["year"] == 2026
    assert report["rows"] == EXPECTED, "the drill is not counted"
    assert report["total"] == 4
    assert report["previous_year"] == {
        "year": 2025,
        "total": 2,
        "rows": [
            {
                "month": "2025-03",
                "source": "intern",
                "form": "arbeid",
                "outcome": "kedo",
                "count": 2,
            }
        ],
    }
    assert report["change"] == "+100%"
    assert sum(r["count"] for r in report["triage_time"]) == 4
    assert {r["month"] for r in report["triage_time"]} == {MONTH}

    # Published with small cells hidden.
    small = json.loads(stats(world, "--suppress-below", "2"))
    assert [r["count"] for r in small["rows"]] == ["<2", 2, "<2"]
    assert small["total"] == 4 and small["previous_year"]["total"] == 2

    # CSV: the same rows and numbers.
    rows = list(csv.DictReader(io.StringIO(stats(world, fmt="csv"))))
    assert [{**r, "count": int(r["count"])} for r in rows] == EXPECTED
    rows = list(csv.DictReader(io.StringIO(stats(world, "--suppress-below", "2", fmt="csv"))))
    assert [r["count"] for r in rows] == ["<2", "2", "<2"]

    # Table: the same totals per source, form and outcome, against the year before.
    t = table_numbers(stats(world, fmt="table"))
    assert t[("", "totaal")] == ["4", "2", "+100%"]
    assert t[("bron", "intern")] == ["2", "2", "+0%"]
    assert t[("bron", "extern")] == ["1", "0", "nieuw"]
    assert t[("bron", "mma")] == ["1", "0", "nieuw"]
    assert t[("vorm", "arbeid")] == ["2", "2", "+0%"]
    assert t[("vorm", "seksueel")] == ["1", "0", "nieuw"]
    assert t[("vorm", "onbekend")] == ["1", "0", "nieuw"]
    assert t[("uitkomst", "kedo")] == ["2", "2", "+0%"]
    assert t[("uitkomst", "kedo+riec")] == ["1", "0", "nieuw"]
    assert t[("uitkomst", "afgesloten")] == ["1", "0", "nieuw"]
    assert ("vorm", "overig") not in t, "the drill's form is not counted"
    t = table_numbers(stats(world, "--suppress-below", "2", fmt="table"))
    assert t[("bron", "extern")] == ["<2", "0", "nieuw"]
    assert t[("bron", "intern")] == ["2", "2", "+0%"]

    # The year before, asked for itself, is compared with the year before that.
    before = json.loads(stats(world, year=2025))
    assert before["total"] == 2 and before["change"] == "nieuw"

    # No per-signal trace is left: only the bare references, marked closed.
    db = sqlite3.connect(f"file:{world.root / 'state' / 'inboxd.sqlite3'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT COUNT(*) FROM signals").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM signal_fields").fetchone() == (0,)
        refs = db.execute("SELECT * FROM refs_used").fetchall()
        assert sorted(r[0] for r in refs) == sorted(ref for _, ref in signals.values())
        assert all(len(r) == 2 and r[1] is not None for r in refs), "ref and closed_at only"
        assert all(r[1] % 86400 == 0 for r in refs), "closed on a day, not at a time"
        assert db.execute("SELECT COUNT(*) FROM stats").fetchone() == (4,)
        assert db.execute("SELECT SUM(count) FROM stats").fetchone() == (6,)
    finally:
        db.close()
    state = world.state_bytes()
    for mark, _ in signals.values():
        assert_absent(mark, where="the store on disk", data=state)
    for address in (REPORTER, OUTSIDER, MMA_SENDER):
        assert_absent(address, where="the store on disk", data=state)


def test_an_empty_year() -> None:
    report = stats_report([], [], 2030, 0)
    assert report["total"] == 0 and report["rows"] == [] and report["change"] == "n.v.t."
    assert "totaal" in stats_table([], [], 2030, 5)
    assert stats_csv([], 5) == "month,source,form,outcome,count\n"


@pytest.mark.parametrize(
    ("count", "below", "shown"),
    [(0, 5, 0), (1, 5, "<5"), (4, 5, "<5"), (5, 5, 5), (1, 0, 1), (1, 1, 1)],
)
def test_suppress(count: int, below: int, shown: Any) -> None:
    assert suppress(count, below) == shown


@pytest.mark.parametrize(
    ("now", "before", "text"),
    [(0, 0, "n.v.t."), (3, 0, "nieuw"), (0, 4, "-100%"), (3, 2, "+50%"), (2, 3, "-33%")],
)
def test_change(now: int, before: int, text: str) -> None:
    assert change(now, before) == text


def test_the_table_speaks_the_language_it_is_given() -> None:
    rows = [
        {"month": "2030-01", "source": "intern", "form": "arbeid", "outcome": "kedo", "count": 3}
    ]
    en = stats_table(rows, [], 2030, 0, Templates("en")).splitlines()
    assert en[0] == "Signals 2030 (compared with 2029)"
    assert en[2].split() == ["total", "3", "0", "new"] and "per source:" in en
    nl = stats_table(rows, [], 2030, 0).splitlines()
    assert nl[0] == "Signalen 2030 (vergeleken met 2029)" and "per bron:" in nl
    # The JSON report keeps its fixed values whatever the language.
    assert stats_report(rows, [], 2030, 0)["change"] == "nieuw"
