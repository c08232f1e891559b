"""Deleted for good, at once: the moment ``inboxd run`` logs ``signal.deleted``, no
file of the state directory holds a byte string of the signal's — its wrapped data
key, any sealed field, the sealed accepted copy of its mail — whichever way the
signal ended, while the daemon goes on running. And a daemon killed between the
deleting commit and the shredding shreds at its next start, before anything else."""

from __future__ import annotations

import json
import signal as signals
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import MailServer
from test_daemon import Daemon
from world import F1, F2, KEDO, REPORTER, RIEC, World, marker, parse, reply, signal_mail, submit

from inboxd.references import find_references

# Event waits are generous: up to 8 helpers share 2 cores while these run.
WAIT = 60.0

# A reader in a process of its own: opens a read transaction, says how many signals
# it sees, and holds the snapshot until it is killed.
READER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN")
print(c.execute("SELECT COUNT(*) FROM signals").fetchone()[0], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    w = World(mail, tmp_path / "w").setup()
    w.write_config(rate="100000/h")
    return w


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def connect(world: World) -> sqlite3.Connection:
    return sqlite3.connect(world.root / "state" / "inboxd.sqlite3", isolation_level=None)


def accept_only(world: World, raw: bytes, sender: str = REPORTER) -> list[bytes]:
    """Deliver ``raw`` and run only intake's first step (seal, commit, expunge), so the
    sealed accepted copy can be read before the daemon turns it into a signal."""
    submit(world.mail, raw, sender)
    app = world.app()
    try:
        app.mailbox.open()
        assert app.intake.accept().accepted == 1
    finally:
        app.close()
    conn = connect(world)
    try:
        rows = conn.execute("SELECT wrapped_key, raw FROM inbound").fetchall()
    finally:
        conn.close()
    assert len(rows) == 1
    return [bytes(rows[0][0]), bytes(rows[0][1])]


def signal_secrets(world: World, ref: str) -> list[bytes]:
    """The signal's wrapped data key and every sealed field, as stored. (This reader
    is closed again at once: an open one would hold up the shredding.)"""
    conn = connect(world)
    try:
        row = conn.execute("SELECT id, wrapped_key FROM signals WHERE ref = ?", (ref,)).fetchone()
        assert row is not None, f"{ref} is not in the store"
        fields = conn.execute(
            "SELECT name, blob FROM signal_fields WHERE signal_id = ?", (row[0],)
        ).fetchall()
    finally:
        conn.close()
    assert {"raw", "reporter", "subject"} <= {name for name, _ in fields}
    return [bytes(row[1])] + [bytes(blob) for _, blob in fields]


def found_in_state(world: World, secrets: list[bytes]) -> list[str]:
    """Which files of the state directory hold which of the secrets (by index)."""
    hits = []
    for path in sorted((world.root / "state").rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path.name}: secret {i}" for i, s in enumerate(secrets) if s in data]
    return hits


def wait_deleted(daemon: Daemon, ref: str) -> dict[str, object]:
    while True:
        e = daemon.wait_for("signal.deleted", timeout=WAIT)
        if e.get("ref") == ref:
            return e


def triage_request(mail: MailServer, mark: str) -> bytes:
    """The triage request about the signal carrying ``mark`` (in F1's mailbox, where
    a drill's acknowledgement may arrive first)."""
    for n in (1, 2, 3):
        for m in mail.wait_for_messages(F1, n, timeout=WAIT):
            if str(parse(m)["Subject"]).startswith("Triageverzoek") and mark.encode() in m:
                return m
    raise AssertionError("no triage request among the first three mails to F1")


def ref_of(request: bytes) -> str:
    return find_references(str(parse(request)["Subject"]), "VV")[0]


def start(world: World, daemons: list[Daemon]) -> Daemon:
    d = Daemon(world)
    daemons.append(d)
    d.wait_for("daemon.started", timeout=WAIT)
    return d


@pytest.mark.parametrize("path", ["forwarded", "closed", "drill", "purged"])
def test_nothing_of_a_signal_is_left_in_any_state_file_once_it_is_logged_deleted(
    world: World, mail: MailServer, daemons: list[Daemon], path: str
) -> None:
    mark = marker()
    drill = path == "drill"
    raw = (
        signal_mail(mark, sender=F1, subject=f"[TEST] oefening {mark}")
        if drill
        else signal_mail(mark)
    )
    secrets = accept_only(world, raw, F1 if drill else REPORTER)
    daemon = start(world, daemons)
    request = triage_request(mail, mark)
    ref = ref_of(request)
    secrets += signal_secrets(world, ref)

    if path == "purged":
        out = world.cli("queue", "purge", ref, "--yes", timeout=WAIT)
        assert out.returncode == 0, out.stderr
    else:
        command = {"forwarded": "KEDO RIEC", "closed": "AFSLUITEN", "drill": "KEDO"}[path]
        submit(mail, reply(request, command))
    event = wait_deleted(daemon, ref)

    assert found_in_state(world, secrets) == [], f"{path}: left behind after signal.deleted"
    assert daemon.proc.poll() is None, "the daemon is still running"
    expected = {
        "forwarded": "kedo+riec",
        "closed": "afgesloten",
        "drill": "kedo",
        "purged": "verwijderd",
    }[path]
    assert event["reason"] == expected
    if path == "forwarded":
        assert mail.messages(KEDO) and mail.messages(RIEC), "both destinations accepted it"
    if drill:
        assert mail.messages(KEDO) == [], "a drill goes to the functionarissen"
        assert any(b"[TEST]" in m or mark.encode() in m for m in mail.messages(F2))
    assert daemon.stop() == 0


def test_a_daemon_killed_between_the_deleting_commit_and_the_shredding_shreds_first_at_start(
    world: World, mail: MailServer, daemons: list[Daemon]
) -> None:
    mark = marker()
    secrets = accept_only(world, signal_mail(mark))
    daemon = start(world, daemons)
    request = triage_request(mail, mark)
    ref = ref_of(request)
    secrets += signal_secrets(world, ref)

    # Another reader (an administrator's sqlite3 shell, say) holds a snapshot in
    # which the signal still exists: the log cannot be emptied while it reads. It is
    # killed too, so that no connection of the test checkpoints on closing.
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(world.root / "state" / "inboxd.sqlite3")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "1", "the reader sees the signal"
        submit(mail, reply(request, "AFSLUITEN"))
        pending = daemon.wait_for("store.shred_pending", timeout=WAIT)
        assert pending["reason"] == "busy"
        assert not [e for e in _events(daemon) if e.get("event") == "signal.deleted"], (
            "signal.deleted is not logged before the shredding holds"
        )
        daemon.proc.send_signal(signals.SIGKILL)
        daemon.proc.wait(timeout=WAIT)
    finally:
        reader.kill()
        reader.wait(timeout=WAIT)

    assert found_in_state(world, secrets), "killed before the shredding: the bytes are still there"
    conn = sqlite3.connect(f"file:{world.root / 'state' / 'inboxd.sqlite3'}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT COUNT(*) FROM signals").fetchone() == (0,), "committed"
        assert conn.execute("SELECT ref FROM unshredded").fetchall() == [(ref,)]
    finally:
        conn.close()

    again = start(world, daemons)
    events = [e.get("event") for e in _events(again)]
    assert "signal.deleted" in events, "the next start shreds"
    assert events.index("signal.deleted") < events.index("daemon.started"), "before anything else"
    assert found_in_state(world, secrets) == []
    assert again.stop() == 0


def _events(daemon: Daemon) -> list[dict[str, object]]:
    out = []
    for line in list(daemon.lines):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
