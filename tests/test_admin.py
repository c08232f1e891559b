"""Administrator commands on the store (docs/contract.md, "Command line"): ``queue list`` (metadata only),
``queue purge`` (refused without --yes, audited, mailbox copy expunged), ``keys
rotate`` (whole, interrupted by SIGKILL and run again, with a key missing)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from servers import MailServer
from world import (
    F1,
    KEDO,
    MAILBOX,
    REPO,
    REPORTER,
    World,
    assert_absent,
    marker,
    parse,
    reply,
    signal_mail,
    submit,
)

from inboxd.crypto import Keyring, generate_key_file
from inboxd.lifecycle import KeyStatus, MailKind
from inboxd.references import find_references, new_reference
from inboxd.store import NewSignal, OutboxEntry


def year_of(world: World) -> str:
    """The year the signals were counted in (the injected clock's)."""
    return str(dt.datetime.fromtimestamp(world.now, dt.UTC).year)


def new_signal(world: World, mail: MailServer, mark: str, **kw: object) -> tuple[str, bytes]:
    submit(mail, signal_mail(mark, **kw), str(kw.get("sender", REPORTER)))  # type: ignore[arg-type]
    world.once()
    found = [
        m
        for m in mail.messages(F1)
        if str(parse(m)["Subject"]).strip().startswith("Triageverzoek") and mark.encode() in m
    ]
    assert len(found) == 1
    return find_references(str(parse(found[0])["Subject"]), "VV")[0], found[0]


def db(world: World) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{world.root / 'state' / 'inboxd.sqlite3'}?mode=ro", uri=True)


def log_events(stdout: str) -> list[dict[str, object]]:
    out = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# -- queue list -----------------------------------------------------------------------


def test_queue_list_shows_metadata_only(world: World, mail: MailServer) -> None:
    out = world.cli("queue", "list")
    assert out.returncode == 0 and "no open signals" in out.stdout
    marks = [marker(), marker()]
    refs = []
    for m in marks:
        refs.append(new_signal(world, mail, m)[0])
        world.now += 60  # the list is oldest first
    _, request = new_signal(world, mail, marker(), sender=F1, subject="[TEST] oefening")
    submit(mail, reply(request, "WACHT\nVORM arbeid"))
    world.until_quiet()
    out = world.cli("queue", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    for ref, line in zip(refs, lines[:2], strict=True):
        assert line.startswith(ref) and "queued" in line and "hold=no" in line
    assert "flags=drill" in lines[2] and "form=arbeid" in lines[2] and "hold=yes" in lines[2]
    for mark in marks:
        assert_absent(mark, where="queue list", data=out.stdout + out.stderr)
    assert_absent(REPORTER, where="queue list", data=out.stdout + out.stderr)
    assert "oefening" not in out.stdout, "not even a drill's subject"


# -- queue purge ----------------------------------------------------------------------


def test_purge_needs_yes_is_audited_and_expunges_the_mailbox_copy(
    world: World, mail: MailServer
) -> None:
    world.write_config(retain="forwarded")
    mark = marker()
    ref, _ = new_signal(world, mail, mark)
    assert len(mail.messages(MAILBOX)) == 1, "the original is retained until deletion"

    out = world.cli("queue", "purge", ref)
    assert out.returncode == 2 and "--yes" in out.stderr
    assert world.status()["open"] == 1, "nothing deleted without --yes"
    bad = world.cli("queue", "purge", "VV-0000-0001", "--yes")
    assert bad.returncode == 2 and "not a valid reference" in bad.stderr
    unknown = world.cli("queue", "purge", new_reference("VV"), "--yes")
    assert unknown.returncode == 2 and "no open signal" in unknown.stderr

    out = world.cli("queue", "purge", ref.lower(), "--yes")  # as a person may type it
    assert out.returncode == 0, out.stderr
    assert f"{ref} deleted" in out.stdout
    purged = [e for e in log_events(out.stderr) if e["event"] == "queue.purged"]
    assert purged == [{**purged[0], "ref": ref, "level": "warning"}]
    assert world.status()["open"] == 0
    conn = db(world)
    try:
        # Every attempt, refused or not, with the uid that made it (this test runs
        # the commands itself: the service is not running).
        audit = conn.execute(
            "SELECT action, ref, uid, at FROM audit WHERE action = 'queue purge' ORDER BY at"
        ).fetchall()
        uid = os.getuid()
        assert [(a, r, u) for a, r, u, _ in audit] == [
            ("queue purge", ref, uid),
            ("queue purge", None, uid),
            (audit[2][0], audit[2][1], uid),
            ("queue purge", ref, uid),
        ]
        assert audit[2][1] != ref
        assert abs(audit[-1][3] - time.time()) < 300
        assert conn.execute("SELECT COUNT(*) FROM signal_fields").fetchone() == (0,)
    finally:
        conn.close()
    stats = json.loads(world.cli("stats", "--format", "json", "--year", year_of(world)).stdout)
    assert [(r["source"], r["outcome"], r["count"]) for r in stats["rows"]] == [
        ("intern", "verwijderd", 1)
    ]

    assert len(mail.messages(MAILBOX)) == 1, "the daemon expunges, not the CLI"
    world.once()
    assert all(not msgs for msgs in mail.all_messages(MAILBOX).values()), "every copy is gone"
    assert_absent(mark, where="the store on disk", data=world.state_bytes())
    assert mail.messages(KEDO) == [], "a purge forwards nothing"
    assert len(mail.messages(REPORTER)) == 1, "and sends no feedback (only the ack)"


def test_purging_a_drill_is_not_counted(world: World, mail: MailServer) -> None:
    ref, _ = new_signal(world, mail, marker(), sender=F1, subject="[OEFENING] proef")
    assert world.cli("queue", "purge", ref, "--yes").returncode == 0
    stats = json.loads(world.cli("stats", "--format", "json", "--year", year_of(world)).stdout)
    assert stats["rows"] == []


def test_purge_of_a_signal_with_a_forward_waiting_forwards_nothing(
    world: World, mail: MailServer
) -> None:
    mark = marker()
    ref, request = new_signal(world, mail, mark)
    submit(mail, reply(request, "KEDO"))
    mail.fail_next(count=1, code=451)  # the forward waits in the outbox for a retry
    world.once()
    assert world.status()["by_state"] == {"forwarding": 1}
    assert world.cli("queue", "purge", ref, "--yes").returncode == 0
    world.now += 3 * 3600
    world.until_quiet()
    assert mail.messages(KEDO) == [], "deleted for good, without forwarding"


# -- keys rotate ----------------------------------------------------------------------

N_SIGNALS = 300
N_OUTBOX = 20


def fill(world: World, n: int = N_SIGNALS, outbox: int = N_OUTBOX) -> dict[str, bytes]:
    """``n`` signals and a few outbox entries under the current key, straight into
    the store (fast); returns ref → the raw field to read back."""
    expected = {}
    with world.reading() as store, store.transaction() as tx:
        for i in range(n):
            ref = new_reference("VV")
            raw = f"Subject: signaal {i}\r\n\r\n{marker()}\r\n".encode()
            tx.add_signal(
                NewSignal(
                    ref=ref,
                    source="intern",
                    flags=set(),
                    size=len(raw),
                    attachment_count=0,
                    fields={"raw": raw, "reporter": REPORTER.encode()},
                    received_at=world.now,
                )
            )
            expected[ref] = raw
        for i in range(outbox):
            tx.enqueue(
                OutboxEntry(
                    kind=MailKind.ACK,
                    ref=None,
                    message_id=f"<rot-{i}@gemeente.example>",
                    sender=MAILBOX,
                    recipient=REPORTER,
                    payload=f"payload {i}".encode(),
                ),
                not_before=world.now + 10 * 86400,  # kept out of the way of ``once``
            )
    return expected


def use_keys(world: World, *names: str) -> None:
    text = world.config_path.read_text()
    start = text.index("key_files = [")
    end = text.index("]", start) + 1
    files = ", ".join(f'"{world.root / n}"' for n in names)
    world.config_path.write_text(text[:start] + f"key_files = [{files}]" + text[end:])


def key_ids(world: World) -> dict[str, int]:
    conn = db(world)
    try:
        out: dict[str, int] = {}
        for table in ("signals", "outbox"):
            for key_id, n in conn.execute(f"SELECT key_id, COUNT(*) FROM {table} GROUP BY key_id"):
                out[key_id] = out.get(key_id, 0) + n
        return out
    finally:
        conn.close()


def assert_all_readable(world: World, expected: dict[str, bytes]) -> None:
    """Every signal and outbox entry opens with the keys now configured."""
    with world.reading() as store:
        signals = store.signals()
        assert len(signals) == len(expected)
        for s in signals:
            assert store.read_field(s, "raw") == expected[s.ref]
            assert store.read_field(s, "reporter") == REPORTER.encode()
        mails = store.due_mail(world.now + 11 * 86400, limit=1000)
        assert sorted(m.payload for m in mails) == sorted(
            f"payload {i}".encode() for i in range(N_OUTBOX)
        )
        assert {m.recipient for m in mails} == {REPORTER}


def test_keys_rotate_rewraps_everything_under_the_newest_key(world: World) -> None:
    expected = fill(world)
    old = Keyring.from_files([str(world.root / "master-key")]).newest.key_id
    new = generate_key_file(world.root / "master-key-2")
    use_keys(world, "master-key", "master-key-2")
    out = world.cli("keys", "rotate")
    assert out.returncode == 0, out.stderr
    total = N_SIGNALS + N_OUTBOX
    assert f"{total} data keys re-wrapped under {new}; 0 left under older keys" in out.stdout
    assert key_ids(world) == {new: total}
    assert old not in key_ids(world)
    use_keys(world, "master-key-2")
    assert_all_readable(world, expected)
    again = world.cli("keys", "rotate")
    assert again.returncode == 0
    assert f"0 data keys re-wrapped under {new}; 0 left" in again.stdout
    conn = db(world)
    try:
        assert conn.execute("SELECT action, ref, uid FROM audit").fetchall() == [
            ("keys rotate", None, os.getuid()),
            ("keys rotate", None, os.getuid()),
        ]
    finally:
        conn.close()


# A ``keys rotate`` that stops (blocks) in the middle of its second batch, after
# telling the test so; the test then kills it with SIGKILL.
HOOKED_ROTATE = """
import sys, time
import inboxd.sqlite_transaction as store
original = store.SqliteTransaction.rewrap
calls = 0
def rewrap(self, *args):
    global calls
    calls += 1
    if calls == 150:
        open(sys.argv[1], "w").close()
        time.sleep(120)
    return original(self, *args)
store.SqliteTransaction.rewrap = rewrap
from inboxd.cli import main
sys.exit(main(["keys", "rotate", "--config", sys.argv[2]]))
"""


def test_interrupted_rotation_leaves_everything_readable_and_is_run_again(
    world: World, tmp_path: Path
) -> None:
    expected = fill(world)
    old = Keyring.from_files([str(world.root / "master-key")]).newest.key_id
    new = generate_key_file(world.root / "master-key-2")
    use_keys(world, "master-key", "master-key-2")
    sentinel = tmp_path / "in-second-batch"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOOKED_ROTATE, str(sentinel), str(world.config_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not sentinel.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "rotation never reached its second batch"
            time.sleep(0.02)
        proc.kill()  # SIGKILL, in the middle of a transaction
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    total = N_SIGNALS + N_OUTBOX
    assert key_ids(world) == {new: 100, old: total - 100}, "the first batch, and only it"
    assert_all_readable(world, expected)

    out = world.cli("keys", "rotate")
    assert out.returncode == 0, out.stderr
    assert f"{total - 100} data keys re-wrapped under {new}; 0 left" in out.stdout
    use_keys(world, "master-key-2")
    assert_all_readable(world, expected)
    again = world.cli("keys", "rotate")
    assert again.returncode == 0 and "0 left under older keys" in again.stdout


def test_rotation_with_an_old_key_already_removed_says_so_and_does_the_rest(
    world: World,
) -> None:
    fill(world, 10, outbox=0)
    second = generate_key_file(world.root / "master-key-2")
    use_keys(world, "master-key", "master-key-2")
    fill(world, 5, outbox=0)  # under key 2
    third = generate_key_file(world.root / "master-key-3")
    use_keys(world, "master-key-2", "master-key-3")  # key 1 removed too early
    out = world.cli("keys", "rotate")
    assert out.returncode == 1
    assert f"5 data keys re-wrapped under {third}" in out.stdout
    assert "could not be unwrapped" in out.stderr and "key_files" in out.stderr
    assert "Traceback" not in out.stderr
    assert key_ids(world)[third] == 5
    assert second not in key_ids(world)


def test_keys_rotate_includes_messages_accepted_but_not_yet_processed(world: World) -> None:
    """A daemon stopped between its two intake steps leaves sealed raw mail in the
    store: a rotation must re-wrap those keys too, or removing the old key loses them."""
    raws = [f"Subject: geaccepteerd {i}\r\n\r\n{marker()}\r\n".encode() for i in range(3)]
    with world.reading() as store, store.transaction() as tx:
        for i, raw in enumerate(raws):
            tx.accept(f"1:{i + 1}", raw, KeyStatus.EXPUNGE)
    new = generate_key_file(world.root / "master-key-2")
    use_keys(world, "master-key", "master-key-2")
    out = world.cli("keys", "rotate")
    assert out.returncode == 0, out.stderr
    assert f"3 data keys re-wrapped under {new}; 0 left under older keys" in out.stdout
    use_keys(world, "master-key-2")  # the old key is gone: the accepted mail must still open
    with world.reading() as store:
        assert [a.raw for a in store.inbound(10, 10**9)] == raws
