"""Crash safety: ``kill -9`` at any moment, repeatedly, loses no signal and queues
none twice (docs/contract.md, "The life of a signal", step 2)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from servers import MailServer
from world import MAILBOX, REPO, REPORTER, World, parse, signal_mail

from inboxd.pace import rest
from inboxd.references import find_references
from inboxd.sqlite_store import SqliteStore

BACKLOG = 300


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    w = World(mail, tmp_path / "w").setup()
    w.write_config(rate="100000/h", include="text", idle=True)
    return w


def _run_until(world: World, events_wanted: int, deadline: float) -> tuple[int, bool]:
    """Start ``inboxd run``; SIGKILL it after ``events_wanted`` queue/send events.
    Returns how many such events were seen and whether the kill happened."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "inboxd", "run", "--config", str(world.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        text=True,
    )
    seen = 0
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), True)
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line).get("event", "")
            except ValueError:
                continue
            if event in ("signal.queued", "ack.sent", "triage_request.sent", "mailbox.expunged"):
                seen += 1
            if seen >= events_wanted:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                return seen, True
            if time.monotonic() > deadline:
                break
        return seen, False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_sigkill_during_a_backlog_loses_nothing_and_duplicates_nothing(
    world: World, mail: MailServer
) -> None:
    ids = [f"<crash-{i}-{uuid.uuid4().hex[:8]}@gemeente.example>" for i in range(BACKLOG)]
    raws = [signal_mail(f"n{i}", message_id=mid) for i, mid in enumerate(ids)]
    # Every fifth message comes a second time, as a relay's retry: other trace headers.
    redelivered = [
        b"Received: from mx2.gemeente.example; Mon, 23 Nov 2026 10:05:08 +0100\r\n"
        b"Return-Path: <retry@relay.example>\r\n" + r
        for r in raws[::5]
    ]
    mail.append_many(MAILBOX, [*raws, *redelivered])
    rng = random.Random(7)
    deadline = time.monotonic() + 240
    kills = 0
    for _ in range(5):
        _, killed = _run_until(world, rng.randint(5, 120), deadline)
        kills += killed
    assert kills >= 3, "the daemon should have been killed mid-run several times"
    world.now = time.time() + 1  # the killed daemons ran on the real clock
    world.until_quiet(rounds=10)

    assert mail.messages(MAILBOX) == [], "everything taken in and expunged"
    store = world.store()
    try:
        signals = store.signals()
        queued_ids = [store.read_field(s, "message_id") for s in signals]
    finally:
        store.close()
    assert len(signals) == BACKLOG, f"{len(signals)} signals for {BACKLOG} messages"
    assert sorted(q.decode() for q in queued_ids if q) == sorted(ids), (
        "each message queued exactly once"
    )

    acks = mail.messages(REPORTER)
    acked = [find_references(str(parse(m)["Subject"]), "VV")[0] for m in acks]
    missing = {s.ref for s in signals} - set(acked)
    assert not missing, (
        f"{len(missing)} of {len(signals)} not acknowledged; outbox {world.outbox_size()}; log tail: {world.log_text()[-3000:]}"
    )
    # A duplicate is possible only when a kill fell between SMTP acceptance and its record.
    assert len(acked) - len(set(acked)) <= kills


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing catches it."""


def _reply_kedo_riec(world: World, mail: MailServer) -> str:
    from world import reply, submit

    from inboxd.references import find_references as refs_in

    mail.deliver(signal_mail(f"fwd-{uuid.uuid4().hex[:6]}"), MAILBOX)
    world.once()
    request = mail.wait_for_messages("a.jansen@gemeente.example", 1)[0]
    submit(mail, reply(request, "KEDO RIEC"))
    return refs_in(str(parse(request)["Subject"]), "VV")[0]


@pytest.mark.parametrize("when", ["after_acceptance", "after_record"])
def test_crash_during_forwarding_never_deletes_early_nor_forwards_twice_outside_the_window(
    world: World, mail: MailServer, when: str
) -> None:
    from world import KEDO, RIEC

    world.write_config(rate="100000/h", include="full")
    ref = _reply_kedo_riec(world, mail)
    app = world.app()
    app.mailbox.open()
    app.intake.run_once()  # the command: both forwards are now in the outbox
    forwards_sent = 0
    if when == "after_acceptance":
        real_send = app.transport.send

        def send(envelope, message, *, beat=rest):  # type: ignore[no-untyped-def]
            nonlocal forwards_sent
            real_send(envelope, message, beat=beat)
            if b"Signaal mensenhandel" in message:
                forwards_sent += 1
                raise Crash  # accepted by the server, not yet recorded

        app.transport.send = send  # type: ignore[method-assign]
    else:
        real_sent = app.store.mail_sent

        def mail_sent(due, now, then=None):  # type: ignore[no-untyped-def]
            real_sent(due, now, then)
            if due.kind.startswith("forward:"):
                raise Crash  # recorded, then the process dies

        app.store.mail_sent = mail_sent  # type: ignore[method-assign]
    with pytest.raises(Crash):
        app.outbox.drain()
    assert isinstance(app.store, SqliteStore)
    app.store._c.close()  # the process is gone; nothing else is committed

    status = world.status()
    assert status["open"] == 1, "not deleted before every destination accepted it"
    # A fresh process finishes the job.
    world.now = time.time() + 1
    world.until_quiet()
    assert world.status()["open"] == 0
    kedo, riec = mail.messages(KEDO), mail.messages(RIEC)
    assert len(riec) == 1, "the destination that was not in flight gets it exactly once"
    if when == "after_acceptance":
        assert len(kedo) == 2, "the documented window: accepted but not recorded is sent again"
    else:
        assert len(kedo) == 1
    assert all(ref in str(parse(m)["Subject"]) for m in kedo + riec)
