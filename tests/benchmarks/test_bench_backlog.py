"""(b) A backlog of 1,000 signals of ~5 KB, against the test Dovecot + relay:

- b1: raw baseline, a bare imapclient ``UID FETCH <all> BODY.PEEK[]`` in one command
  (implicit TLS, as inboxd connects);
- b2: inboxd's intake, ``Intake.run_once()`` (fetch, parse, classify, seal, durable
  commit, UID EXPUNGE), in this process;
- b3: the outbox drain that follows (1 acknowledgement + 2 triage requests per
  signal, ``include_content = "none"``), in this process;
- b4: plain smtplib sending the first 1,000 of those very mails (same bytes, same
  envelopes) over one STARTTLS+AUTH connection to the same relay.

Prints figures; asserts only that everything was done. See README.md.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import random
import smtplib
import socket
import sqlite3
import ssl
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from servers import MailServer
from world import MAILBOX, World, marker, signal_mail

import inboxd.intake
import inboxd.mailer
import inboxd.outbox

pytestmark = pytest.mark.skipif(
    os.environ.get("INBOXD_BENCH") != "1",
    reason="benchmark: set INBOXD_BENCH=1 (and run pytest with -s to see the figures)",
)

N = 1000
# INBOXD_BENCH_PROFILE=1: run b2 and b3 under cProfile and print where the time goes
# (the rates printed are then cProfile-inflated, the proportions are what counts).
PROFILE = os.environ.get("INBOXD_BENCH_PROFILE") == "1"
BODY_BYTES = 5000
BASELINE_RUNS = 3

WORDS = [
    "woning",
    "adres",
    "busje",
    "nacht",
    "werkgever",
    "paspoort",
    "schuld",
    "loon",
    "uren",
    "slapen",
    "kamer",
    "bewoners",
    "matrassen",
    "contant",
    "betaling",
    "vervoer",
    "ochtend",
    "buurvrouw",
    "melding",
    "signaal",
    "gemeente",
    "controle",
    "bedrijf",
    "uitzendbureau",
    "vrouwen",
    "mannen",
    "kinderen",
    "taal",
    "bang",
]


def backlog(n: int, seed: int = 7) -> list[bytes]:
    """``n`` distinct plain-text signals of ~5 KB (distinct, or dedup would drop them)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        mark = marker()
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < BODY_BYTES:
            words.append(rng.choice(WORDS))
        lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
        out.append(signal_mail(mark, body=f"Kenmerk {mark}.\n" + "\n".join(lines) + "\n"))
    return out


class Timers:
    """Wall time spent inside chosen functions, summed per label. Each wrapped call
    costs two ``perf_counter()`` calls (~0.1 µs): noise next to what is measured."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mp = monkeypatch
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def _add(self, label: str, t: float) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t
        self.calls[label] = self.calls.get(label, 0) + 1

    def wrap(self, target: Any, name: str, label: str) -> None:
        fn = getattr(target, name)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(label, t)

        self.mp.setattr(target, name, timed_call)

    def wrap_iter(self, target: Any, name: str, label: str) -> None:
        """For a generator: the time spent producing each item, not the caller's."""
        fn = getattr(target, name)

        def timed_iter(*args: Any, **kwargs: Any) -> Iterator[Any]:
            it = iter(fn(*args, **kwargs))
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    self._add(label, t)
                yield item

        self.mp.setattr(target, name, timed_iter)

    def sqlite(self, store: Any) -> None:
        """Every statement on the store's connection: COMMIT (the fsync) apart."""
        self.mp.setattr(store, "_c", TimedConnection(store._c, self))

    def report(self, total: float, count: int, unit: str) -> str:
        rows = [
            f"         {label:<34} {s:6.2f} s  {s / count * 1000:6.2f} ms/{unit}"
            f"  ({self.calls[label]} calls)"
            for label, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])
        ]
        # Nested labels (sqlite inside tx.commit) would double count: none are nested.
        rest = total - sum(self.seconds.values())
        rows.append(
            f"         {'everything else':<34} {rest:6.2f} s  {rest / count * 1000:6.2f} ms/{unit}"
        )
        return "\n".join(rows)


class TimedConnection:
    """Proxy for the store's sqlite3 connection, timing ``execute``."""

    def __init__(self, inner: sqlite3.Connection, timers: Timers) -> None:
        self._inner = inner
        self._timers = timers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    def _timed(self, method: str, sql: str, *args: Any) -> Any:
        label = (
            "sqlite COMMIT (fsync)"
            if sql.strip().upper() == "COMMIT"
            else "sqlite other statements"
        )
        t = time.perf_counter()
        try:
            return getattr(self._inner, method)(sql, *args)
        finally:
            self._timers._add(label, t)

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed("execute", sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed("executemany", sql, *args)


def timed(label: str, fn: Any) -> tuple[Any, float]:
    """``fn()`` and its wall time; under INBOXD_BENCH_PROFILE=1 also a cProfile summary."""
    prof = cProfile.Profile() if PROFILE else None
    t = time.perf_counter()
    if prof is not None:
        prof.enable()
    try:
        value = fn()
    finally:
        if prof is not None:
            prof.disable()
    seconds = time.perf_counter() - t
    if prof is not None:
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        print(f"\n--- cProfile of {label} ---\n{out.getvalue()}")
    return value, seconds


def bare_fetch(mail: MailServer) -> tuple[float, int, int]:
    """One ``UID FETCH`` of every message, ``BODY.PEEK[]``: (seconds, messages, bytes)."""
    ctx = ssl.create_default_context(cafile=mail.ca_file)
    c = IMAPClient(mail.imap_host, port=mail.imap_tls_port, ssl=True, ssl_context=ctx, timeout=60)
    try:
        c.login(MAILBOX, mail.password(MAILBOX))
        c.select_folder("INBOX", readonly=True)
        # imapclient 4 takes no "1:*" range: list the UIDs first (not timed), then one
        # UID FETCH of all of them (a comma-separated UID list).
        uids = c.search("ALL")
        t = time.perf_counter()
        data = c.fetch(uids, [b"BODY.PEEK[]"])
        seconds = time.perf_counter() - t
        return seconds, len(data), sum(len(v[b"BODY[]"]) for v in data.values())
    finally:
        c.logout()


def test_backlog_of_1000(mail: MailServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(mail, tmp_path / "w").setup()
    # One reporter sends all 1,000: lift the ack limit so every signal is acknowledged,
    # and the flood brake (request_limit, notice_limit) so every one is triaged: the
    # figure is for a backlog of genuine signals, not for a flood.
    world.write_config(
        rate="100000/h",
        include="none",
        idle=False,
        request_limit="100000/h",
        notice_limit="100000/h",
    )
    raws = backlog(N)
    size = sum(len(r) for r in raws)

    t = time.perf_counter()
    mail.append_many(MAILBOX, raws)
    append_s = time.perf_counter() - t

    # b1: the bare fetch, a few times (the first may meet colder caches); median.
    runs = [bare_fetch(mail) for _ in range(BASELINE_RUNS)]
    assert all(r[1] == N for r in runs), [r[1] for r in runs]
    fetched_bytes = runs[0][2]
    b1_s = statistics.median(r[0] for r in runs)

    # b2: intake, its two steps timed apart: accept (fetch → seal → commit → expunge,
    # the "intake rate") and process (parse, classify, signal, ack + triage
    # requests into the outbox).
    app = world.app()
    app.mailbox.open()
    intake_t = Timers(monkeypatch)
    intake_t.wrap(app.mailbox, "list_new", "imap list_new")
    intake_t.wrap_iter(app.mailbox, "fetch", "imap fetch")
    intake_t.wrap(app.mailbox, "delete", "imap UID EXPUNGE")
    intake_t.wrap(inboxd.intake, "parse_message", "parse_message")
    intake_t.wrap(inboxd.intake, "classify", "classify")
    intake_t.wrap(app.intake.mailer.templates, "render", "templates.render")
    intake_t.wrap(inboxd.mailer, "entry", "outbox.entry (asdict, json)")
    intake_t.sqlite(app.store)
    result, b2_s = timed("b2 Intake.accept", app.intake.accept)
    assert result.accepted == N, result
    assert result.expunged == N, result
    assert mail.messages(MAILBOX) == []
    accept_report = intake_t.report(b2_s, N, "msg")
    monkeypatch.undo()
    intake_t = Timers(monkeypatch)
    intake_t.wrap(inboxd.intake, "parse_message", "parse_message")
    intake_t.wrap(inboxd.intake, "classify", "classify")
    intake_t.wrap(app.intake.mailer.templates, "render", "templates.render")
    intake_t.wrap(inboxd.mailer, "entry", "outbox.entry (asdict, json)")
    intake_t.sqlite(app.store)
    result, b2p_s = timed("b2p Intake.process", lambda: app.intake.process(result=result))
    assert result.queued == N, result
    assert app.store.inbound_count() == 0
    monkeypatch.undo()

    # b3: the outbox drain of everything intake queued.
    queued_mails = app.store.outbox_size()
    drain_t = Timers(monkeypatch)
    drain_t.wrap(app.transport, "send", "transport.send (SMTP)")
    drain_t.wrap(inboxd.outbox, "render", "mails.render")
    drain_t.sqlite(app.store)
    accepted_before = mail.relay.accepted
    drained, b3_s = timed("b3 Outbox.drain", lambda: app.outbox.drain(limit=10 * queued_mails))
    monkeypatch.undo()
    app.close()
    assert drained.sent == queued_mails == 3 * N, (drained, queued_mails)
    assert mail.relay.accepted - accepted_before == queued_mails
    sent = mail.relay.received[accepted_before:]
    sent_bytes = sum(len(r.raw) for r in sent)

    # b4: plain smtplib, the first 1,000 of the same mails, one connection.
    replay = sent[:N]
    helo = socket.getfqdn()
    ctx = ssl.create_default_context(cafile=mail.ca_file)
    t = time.perf_counter()
    with smtplib.SMTP(mail.smtp_host, mail.smtp_port, local_hostname=helo, timeout=60) as s:
        s.starttls(context=ctx)
        s.login(MAILBOX, mail.password(MAILBOX))
        for r in replay:
            assert not s.sendmail(r.mail_from, list(r.rcpt_tos), r.raw)
        b4_s = time.perf_counter() - t
        # inboxd's transport sends a NOOP only on a connection idle for 5 s or more:
        # what one costs on this connection.
        t = time.perf_counter()
        for _ in range(200):
            s.noop()
        noop_ms = (time.perf_counter() - t) / 200 * 1000

    b1 = N / b1_s
    b2 = N / b2_s
    b3 = queued_mails / b3_s
    b4 = len(replay) / b4_s
    kb = size / N / 1024
    print()
    print(f"(b) backlog of {N} signals, {kb:.1f} KB each ({size / 1e6:.1f} MB in all)")
    print(f"    MULTIAPPEND into the mailbox (set-up)   {N / append_s:8.0f} msg/s")
    print(
        f"    b1 bare UID FETCH <all> BODY.PEEK[]      {b1:8.0f} msg/s  "
        f"({fetched_bytes / b1_s / 1e6:.1f} MB/s; runs "
        + ", ".join(f"{N / r[0]:.0f}" for r in runs)
        + ")"
    )
    b2p = N / b2p_s
    print(f"    b2 inboxd intake step 1: accept          {b2:8.0f} msg/s  ({b2_s:.2f} s)")
    print("       (fetch → seal → durable commit → UID EXPUNGE)")
    print(f"       ratio b2/b1                          {b2 / b1:8.2f}  (target >= 0.3)")
    print("       where the time went (wall time inside):")
    print(accept_report)
    print(f"    b2p intake step 2: process              {b2p:8.0f} msg/s  ({b2p_s:.2f} s)")
    print("       (parse, classify, signal row, 1 ack + 2 triage requests into the outbox)")
    both = N / (b2_s + b2p_s)
    print(f"       both steps: {both:.0f} msg/s = {both / b1:.2f}x b1")
    print("       where the time went (wall time inside):")
    print(intake_t.report(b2p_s, N, "msg"))
    print(
        f"    b3 inboxd outbox drain                  {b3:8.0f} mails/s  "
        f"({queued_mails} mails: {N} acks + {2 * N} triage requests, "
        f"{sent_bytes / queued_mails / 1024:.1f} KB avg, {b3_s:.1f} s)"
    )
    print("       where the time went (wall time inside):")
    print(drain_t.report(b3_s, queued_mails, "mail"))
    print(f"    b4 plain smtplib, same first {len(replay)} mails {b4:8.0f} mails/s  ({b4_s:.1f} s)")
    print(f"       ratio b3/b4                          {b3 / b4:8.2f}  (target >= 0.8)")
    print(f"       one SMTP NOOP on this connection     {noop_ms:8.2f} ms")
