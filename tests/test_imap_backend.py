"""ImapMailbox against the real test Dovecot."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from servers import MailServer
from servers.tlsca import make_ca

from inboxd.logs import ALLOWED_FIELDS
from inboxd.mailbox import imap as imap_mod
from inboxd.mailbox.base import MailboxError, verify_deletion
from inboxd.mailbox.imap import (
    ImapMailbox,
    any_message_id,
    batches,
    has_new_mail,
    new_uids,
    parse_key,
    searchable_message_id,
    uids_for,
)

BOX = "vreemdverhaal@gemeente.example"


def msg(n: int, message_id: str | None = None) -> bytes:
    mid = message_id or f"<m{n}@gemeente.example>"
    return (
        f"From: melder@gemeente.example\r\nTo: {BOX}\r\nMessage-ID: {mid}\r\n"
        f"Subject: signaal {n}\r\n\r\nbericht {n}\r\n"
    ).encode()


@pytest.fixture
def make_box(mail: MailServer) -> Iterator[Callable[..., ImapMailbox]]:
    made: list[ImapMailbox] = []

    def make(security: str = "tls", **kw: Any) -> ImapMailbox:
        port = mail.imap_tls_port if security == "tls" else mail.imap_plain_port
        kw.setdefault("ca_file", mail.ca_file)
        kw.setdefault("timeout", 5.0)
        user = kw.pop("username", BOX)
        password = kw.pop("password", mail.password(user))
        mb = ImapMailbox(mail.imap_host, port, security, user, password, **kw)  # type: ignore[arg-type]
        made.append(mb)
        return mb

    yield make
    for mb in made:
        mb.close()


def flags_of(mail: MailServer, address: str, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
    with mail.imap(address) as c:
        c.select_folder(folder, readonly=True)
        uids = c.search("ALL")
        return {uid: d[b"FLAGS"] for uid, d in c.fetch(uids, ["FLAGS"]).items()} if uids else {}


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        t0 = time.monotonic()
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc
        out["ended"] = time.monotonic()
        out["took"] = out["ended"] - t0

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def watch_idle(mb: ImapMailbox) -> threading.Event:
    """An Event set whenever the mailbox enters IDLE (wraps the live client)."""
    idling = threading.Event()
    client = mb._client
    assert client is not None
    original = client.idle

    def idle() -> Any:
        result = original()
        idling.set()
        return result

    client.idle = idle  # type: ignore[method-assign]
    return idling


# --- pure helpers ------------------------------------------------------------------


def test_pure_helpers() -> None:
    assert parse_key("17:42") == (17, 42)
    assert parse_key("17:") is None and parse_key("x:1") is None and parse_key("1") is None
    assert uids_for(["5:1", "5:2", "6:3", "junk", "5:1"], 5) == [1, 2]
    # The "UID n:*" trap: the newest message (below n) comes back and is filtered.
    assert new_uids([3], 3) == []
    assert new_uids([9, 4, 5], 4) == [5, 9]
    assert new_uids([2, 1], None) == [1, 2]
    sizes = {1: 10, 2: 10, 3: 100, 4: 10}
    assert batches([1, 2, 3, 4, 9], sizes, max_count=2, max_bytes=50) == [[1, 2], [3], [4]]
    assert has_new_mail([(3, b"EXISTS")]) and has_new_mail([(1, b"RECENT")])
    assert not has_new_mail([(b"OK", b"Still here"), (2, b"FETCH", (b"FLAGS", ()))])
    assert searchable_message_id(" <a.b@c> ") == "<a.b@c>"
    for bad in ("<a\r\nX LOGOUT>", "<a b@c>", '<a"b@c>', "<a{5}@c>", "", "<ä@c>"):
        assert searchable_message_id(bad) is None


def test_security_none_only_to_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        ImapMailbox("mail.gemeente.example", 143, "none", BOX, "pw")
    ImapMailbox("127.0.0.1", 143, "none", BOX, "pw")
    ImapMailbox("localhost", 143, "none", BOX, "pw")
    ImapMailbox("::1", 143, "none", BOX, "pw")


# --- connecting ----------------------------------------------------------------------


@pytest.mark.parametrize("security", ["tls", "starttls", "none"])
def test_connect_list_fetch_without_setting_seen(
    mail: MailServer, make_box: Callable[..., ImapMailbox], security: str
) -> None:
    raws = [msg(i) for i in range(3)]
    mail.append_many(BOX, raws)
    mb = make_box(security)
    with structlog.testing.capture_logs() as logs:
        mb.open()
    connected = [e for e in logs if e["event"] == "mailbox.connected"]
    assert connected and connected[0]["security"] == security and connected[0]["idle"] is True
    assert set(connected[0]) <= ALLOWED_FIELDS | {"log_level"}
    keys = mb.list_new()
    assert len(keys) == 3
    assert all(k.startswith(f"{connected[0]['uidvalidity']}:") for k in keys)
    items = list(mb.fetch(keys))
    assert [i.raw for i in items] == raws  # APPENDed bytes come back unchanged
    assert [i.key for i in items] == keys
    assert all(b"\\Seen" not in f for f in flags_of(mail, BOX).values())


def test_starttls_is_verified(
    mail: MailServer, make_box: Callable[..., ImapMailbox], tmp_path: Path
) -> None:
    other_ca, _, _ = make_ca(tmp_path / "other")
    for security in ("tls", "starttls"):
        mb = make_box(security, ca_file=str(other_ca))
        with pytest.raises(MailboxError) as info:
            mb.open()
        assert not info.value.auth
        assert "certificate" in info.value.reason


def test_wrong_password_is_auth_error(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mb = make_box("tls", password="wrong")
    with structlog.testing.capture_logs() as logs, pytest.raises(MailboxError) as info:
        mb.open()
    assert info.value.auth is True
    assert "wrong" not in info.value.reason and BOX not in info.value.reason
    assert all("wrong" not in repr(e) and BOX not in repr(e) for e in logs)


def test_xoauth2(mail: MailServer) -> None:
    calls: list[bool] = []

    def good(force_refresh: bool = False) -> str:
        calls.append(force_refresh)
        return mail.oauth2_token(BOX)

    mb = ImapMailbox(
        mail.imap_host, mail.imap_tls_port, "tls", BOX, oauth2_token=good, ca_file=mail.ca_file
    )
    mb.open()
    assert mb.list_new() == [] and calls == [False]
    mb.close()

    bad_calls: list[bool] = []

    def bad(force_refresh: bool = False) -> str:
        bad_calls.append(force_refresh)
        return "verlopen-token"

    mb = ImapMailbox(
        mail.imap_host, mail.imap_tls_port, "tls", BOX, oauth2_token=bad, ca_file=mail.ca_file
    )
    with pytest.raises(MailboxError) as info:
        mb.open()
    assert info.value.auth is True
    assert bad_calls == [False, True]  # one retry with a fresh token


def test_token_provider_failure(mail: MailServer) -> None:
    from inboxd.tokens import TokenError

    def broken() -> str:
        raise TokenError("AADSTS50000 something", permanent=False)

    mb = ImapMailbox(
        mail.imap_host, mail.imap_tls_port, "tls", BOX, oauth2_token=broken, ca_file=mail.ca_file
    )
    with pytest.raises(MailboxError) as info:
        mb.open()
    assert info.value.auth is False  # the provider said: worth retrying
    assert "TokenError" in info.value.reason


def test_missing_folder_is_an_error(mail: MailServer, make_box: Callable[..., ImapMailbox]) -> None:
    mb = make_box("tls", folder="Bestaat niet")
    with pytest.raises(MailboxError):
        mb.open()


# --- listing -----------------------------------------------------------------------


def test_list_new_is_incremental_and_survives_newest_below_n(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mail.append_many(BOX, [msg(1), msg(2)])
    mb = make_box("tls")
    mb.open()
    first = mb.list_new()
    assert len(first) == 2
    # "UID SEARCH UID <last+1>:*" returns the newest message again: must be filtered.
    assert mb.list_new() == []
    assert mb.list_new() == []
    mail.deliver(msg(3), BOX)
    mail.wait_for_messages(BOX, 3)
    third = mb.list_new()
    assert len(third) == 1 and third[0] not in first
    assert mb.list_new() == []
    # open() while connected is a no-op; a real reconnect lists everything again.
    mb.open()
    assert mb.list_new() == []
    mb.close()
    mb.open()
    assert mb.list_new() == first + third


def test_empty_folder_then_first_message(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mb = make_box("starttls")
    mb.open()
    assert mb.list_new() == []
    assert mb.list_new() == []
    mail.append(BOX, msg(1))
    assert len(mb.list_new()) == 1


def test_uidvalidity_change_is_a_fresh_start(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    folder = "Signalen"
    mail.append(BOX, msg(1), folder=folder)
    mb = make_box("tls", folder=folder)
    mb.open()
    old = mb.list_new()
    assert len(old) == 1
    mb.close()
    with mail.imap(BOX) as c:
        c.delete_folder(folder)
    # Same name, new folder: Dovecot gives it a new UIDVALIDITY, and UIDs restart.
    wait_for(lambda: int(time.time()) > int(old[0].split(":")[0]), 2.0, "a new second")
    mail.append_many(BOX, [msg(2), msg(3)], folder=folder)
    mb.open()
    new = mb.list_new()
    assert len(new) == 2
    assert {k.split(":")[0] for k in new} != {old[0].split(":")[0]}
    # Keys of the old UIDVALIDITY name nothing any more: never fetched, never deleted.
    assert list(mb.fetch(old)) == []
    mb.delete(old)
    assert len(mail.messages(BOX, folder)) == 2


# --- fetching ----------------------------------------------------------------------


def test_fetch_in_bounded_batches_skips_vanished(
    mail: MailServer, make_box: Callable[..., ImapMailbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    raws = [msg(i) + b"x" * (i * 100) for i in range(23)]
    mail.append_many(BOX, raws)
    mb = make_box("tls")
    mb.open()
    keys = mb.list_new()
    # Another client removes two messages between listing and fetching.
    with mail.imap(BOX) as c:
        c.select_folder("INBOX")
        gone = [int(keys[3].split(":")[1]), int(keys[7].split(":")[1])]
        c.add_flags(gone, [b"\\Deleted"], silent=True)
        c.uid_expunge(gone)
    fetched_batches: list[int] = []
    client = mb._client
    assert client is not None
    original = client.fetch

    def counting_fetch(uids: Any, items: Any, *a: Any, **kw: Any) -> Any:
        if b"BODY.PEEK[]" in items:
            fetched_batches.append(len(uids))
        return original(uids, items, *a, **kw)

    client.fetch = counting_fetch  # type: ignore[method-assign]
    monkeypatch.setattr(imap_mod, "FETCH_BATCH", 5)
    monkeypatch.setattr(imap_mod, "FETCH_BATCH_BYTES", 1500)
    items = list(mb.fetch(keys + ["1:999999", "garbage"]))
    expected = [r for i, r in enumerate(raws) if i not in (3, 7)]
    assert [i.raw for i in items] == expected
    assert fetched_batches and max(fetched_batches) <= 5


def test_delete_between_fetched_items(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    """The intake deletes committed messages while the fetch generator is paused."""
    mail.append_many(BOX, [msg(i) for i in range(4)])
    mb = make_box("tls")
    mb.open()
    keys = mb.list_new()
    seen = []
    for item in mb.fetch(keys):
        seen.append(item.key)
        mb.delete([item.key])
    assert seen == keys
    assert mail.messages(BOX) == []


# --- deleting ------------------------------------------------------------------------


def test_delete_removes_exactly_the_given_uids(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    raws = [msg(i) for i in range(5)]
    mail.append_many(BOX, raws)
    mb = make_box("tls")
    mb.open()
    keys = mb.list_new()
    # Another client has marked message 4 \Deleted but not expunged it (yet).
    with mail.imap(BOX) as c:
        c.select_folder("INBOX")
        c.add_flags([int(keys[4].split(":")[1])], [b"\\Deleted"], silent=True)
    with structlog.testing.capture_logs() as logs:
        mb.delete([keys[0], keys[2]])
    assert [e.get("count") for e in logs if e["event"] == "mailbox.expunged"] == [2]
    assert mail.messages(BOX) == [raws[1], raws[3], raws[4]]
    assert b"\\Deleted" in flags_of(mail, BOX)[int(keys[4].split(":")[1])]
    # Gone already, unknown or of another UIDVALIDITY: not an error, nothing removed.
    mb.delete([keys[0], "1:3", "nonsense"])
    assert len(mail.messages(BOX)) == 3


def test_no_uidplus_refuses_to_expunge(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mail.append_many(BOX, [msg(1), msg(2)])
    mb = make_box("tls")
    mb.open()
    keys = mb.list_new()
    mb._caps = mb._caps - {b"UIDPLUS"}  # as a server without UIDPLUS would say
    with structlog.testing.capture_logs() as logs, pytest.raises(MailboxError):
        mb.delete(keys[:1])
    assert any(e["event"] == "mailbox.no_uidplus" for e in logs)
    assert len(mail.messages(BOX)) == 2
    assert all(b"\\Deleted" not in f for f in flags_of(mail, BOX).values())


def test_verify_deleted_searches_every_folder(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mail.append(BOX, msg(1, "<sig-1@gemeente.example>"))
    mail.append(BOX, msg(1, "<sig-1@gemeente.example>"), folder="Archief/2026")
    mail.append(BOX, msg(2, "<ander@gemeente.example>"), folder="Verwijderde items")
    mb = make_box("tls")
    mb.open()
    keys = mb.list_new()
    assert mb.verify_deleted(keys, ["<sig-1@gemeente.example>"]) == ["Archief/2026", "INBOX"]
    mb.delete(keys)
    with structlog.testing.capture_logs() as logs:
        assert not verify_deletion(mb, keys, ["<sig-1@gemeente.example>"])
    assert [(e["event"], e["folder"]) for e in logs] == [
        ("mailbox.delete_unverified", "Archief/2026")
    ]
    with mail.imap(BOX) as c:
        c.delete_folder("Archief/2026")
    with structlog.testing.capture_logs() as logs:
        assert verify_deletion(mb, keys, ["<sig-1@gemeente.example>"])
    assert [e["event"] for e in logs] == ["mailbox.delete_verified"]
    # Still usable on its own folder afterwards (re-selected read-write).
    mail.append(BOX, msg(3))
    new = mb.list_new()
    assert len(new) == 1
    mb.delete(new)
    assert mail.messages(BOX) == []


def test_verify_deleted_never_sends_a_hostile_message_id(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mail.append(BOX, msg(1))
    mb = make_box("tls")
    mb.open()
    with structlog.testing.capture_logs() as logs:
        assert mb.verify_deleted([], ["<x>\r\nA1 DELETE INBOX"]) == []
    assert [e.get("reason") for e in logs] == ["message_id_unsearchable"]
    assert len(mail.messages(BOX)) == 1


def test_verify_deleted_finds_any_of_many_message_ids_with_one_search_per_folder(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    ids = [f"<many-{i}@gemeente.example>" for i in range(45)]
    mail.append(BOX, msg(1, ids[37]), folder="Archief")
    mail.append(BOX, msg(2, "<other@gemeente.example>"), folder="Prullenbak")
    mb = make_box("tls")
    mb.open()
    assert mb.verify_deleted([], ids) == ["Archief"]
    assert mb.verify_deleted([], ids[:37] + ids[38:]) == []
    assert any_message_id(["<a@x>", "<b@x>", "<c@x>"]) == [
        "OR", "OR",
        "HEADER", "Message-ID", "<a@x>",
        "HEADER", "Message-ID", "<b@x>",
        "HEADER", "Message-ID", "<c@x>",
    ]  # fmt: skip


def test_verify_deletion_reports_a_failed_check_as_a_warning(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mb = make_box("tls", password="not-the-password")  # the check cannot log in
    with structlog.testing.capture_logs() as logs:
        assert not verify_deletion(mb, ["1:1"], [])
    assert [(e["event"], e["reason"]) for e in logs if e["event"].startswith("mailbox.del")] == [
        ("mailbox.delete_unverified", "check_failed")
    ]


# --- waiting -----------------------------------------------------------------------


def test_idle_returns_promptly_after_delivery(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mb = make_box("tls")
    mb.open()
    assert mb.list_new() == []
    idling = watch_idle(mb)
    stop = threading.Event()
    thread, out = run_in_thread(lambda: mb.wait(30, stop))
    assert idling.wait(5), "wait() never entered IDLE"
    delivered = time.monotonic()
    mail.deliver(msg(1), BOX)
    thread.join(5)
    assert not thread.is_alive(), "wait() did not return after a delivery"
    assert "error" not in out
    # Dovecot itself waits ~0.5 s before telling IDLE clients.
    assert out["ended"] - delivered < 2.0
    assert len(mb.list_new()) == 1


def test_idle_honours_stop(mail: MailServer, make_box: Callable[..., ImapMailbox]) -> None:
    mb = make_box("tls")
    mb.open()
    mb.list_new()
    idling = watch_idle(mb)
    stop = threading.Event()
    thread, out = run_in_thread(lambda: mb.wait(30, stop))
    assert idling.wait(5)
    stopped = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and "error" not in out
    assert out["ended"] - stopped < 1.5
    # The connection is still good after DONE.
    mail.append(BOX, msg(1))
    assert len(mb.list_new()) == 1


def test_wait_returns_at_once_for_mail_that_came_before_it(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mb = make_box("starttls")
    mb.open()
    mb.list_new()
    mail.deliver(msg(1), BOX)
    mail.wait_for_messages(BOX, 1)
    t0 = time.monotonic()
    mb.wait(10, threading.Event())
    assert time.monotonic() - t0 < 1.5
    assert len(mb.list_new()) == 1


def test_wait_times_out_and_renews_idle(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mb = make_box("tls", idle_renew=0.3)
    mb.open()
    mb.list_new()
    idling = watch_idle(mb)
    entered = 0
    original_set = idling.set

    def count() -> None:
        nonlocal entered
        entered += 1
        original_set()

    idling.set = count  # type: ignore[method-assign]
    t0 = time.monotonic()
    mb.wait(1.0, threading.Event())
    took = time.monotonic() - t0
    assert 0.9 <= took < 2.5
    assert entered >= 3  # renewed every 0.3 s
    mail.append(BOX, msg(1))
    assert len(mb.list_new()) == 1


def test_wait_without_idle_polls(mail: MailServer, make_box: Callable[..., ImapMailbox]) -> None:
    mb = make_box("tls", use_idle=False, poll_interval=0.2)
    mb.open()
    t0 = time.monotonic()
    mb.wait(30, threading.Event())
    assert 0.15 <= time.monotonic() - t0 < 1.0
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    make_box("tls", use_idle=False, poll_interval=30).wait(30, stop)
    assert time.monotonic() - t0 < 0.5


def test_other_thread_gets_the_connection_while_idling(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mb = make_box("tls")
    mb.open()
    mb.list_new()
    idling = watch_idle(mb)
    thread, out = run_in_thread(lambda: mb.wait(30, threading.Event()))
    assert idling.wait(5)
    mail.append(BOX, msg(1))
    t0 = time.monotonic()
    keys = mb.list_new()  # must not corrupt the IDLE, must not block for 30 s
    assert time.monotonic() - t0 < 2.0
    thread.join(5)
    assert not thread.is_alive() and "error" not in out
    assert len(keys) == 1


# --- faults --------------------------------------------------------------------------


def test_dovecot_restart_then_reconnect(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    mail.append_many(BOX, [msg(1), msg(2)])
    mb = make_box("tls")
    mb.open()
    keys = mb.list_new()
    mail.stop_dovecot()
    with pytest.raises(MailboxError) as info:
        mb.list_new()
    assert not info.value.auth
    with pytest.raises(MailboxError):
        mb.open()
    mail.start_dovecot()
    mb.open()
    assert mb.list_new() == keys  # a fresh session lists everything again
    assert [i.key for i in mb.fetch(keys)] == keys


def test_dovecot_stops_during_idle(mail: MailServer, make_box: Callable[..., ImapMailbox]) -> None:
    mb = make_box("tls")
    mb.open()
    mb.list_new()
    idling = watch_idle(mb)
    thread, out = run_in_thread(lambda: mb.wait(30, threading.Event()))
    assert idling.wait(5)
    stopped = time.monotonic()
    mail.stop_dovecot()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(out.get("error"), MailboxError)
    assert out["ended"] - stopped < 3.0
    mail.start_dovecot()
    mb.open()
    assert mb.list_new() == []


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_mail_arriving_just_before_idle_starts_is_not_missed(
    mail: MailServer, make_box: Callable[..., ImapMailbox], security: str
) -> None:
    """Dovecot reports mail that came between our last command and IDLE right after
    "+ idling", often in the same packet, where poll() cannot see it."""
    mb = make_box(security)
    mb.open()
    mb.list_new()
    client = mb._client
    assert client is not None
    original_noop = client.noop

    def noop_then_mail() -> Any:
        result = original_noop()
        mail.append(BOX, msg(1))  # lands after NOOP, before IDLE
        return result

    client.noop = noop_then_mail  # type: ignore[method-assign]
    t0 = time.monotonic()
    mb.wait(10, threading.Event())
    assert time.monotonic() - t0 < 1.5
    client.noop = original_noop  # type: ignore[method-assign]
    assert len(mb.list_new()) == 1


def test_connection_cut_without_bye_during_idle(
    mail: MailServer, make_box: Callable[..., ImapMailbox]
) -> None:
    """An imap process that dies (no BYE) closes the connection: wait() must notice
    at once instead of spinning or sleeping until the timeout."""
    mb = make_box("tls")
    mb.open()
    mb.list_new()
    idling = watch_idle(mb)
    thread, out = run_in_thread(lambda: mb.wait(30, threading.Event()))
    assert idling.wait(5)
    killed = kill_imap_processes(mail)
    assert killed, "no imap process found"
    cut = time.monotonic()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(out.get("error"), MailboxError)
    assert out["ended"] - cut < 3.0
    mb.open()
    assert mb.list_new() == []


def kill_imap_processes(mail: MailServer) -> list[int]:
    """SIGKILL every post-login imap process of the test Dovecot."""
    import os
    import signal

    from servers.dovecot import group_members

    proc = mail.dovecot._proc
    assert proc is not None
    killed = []
    for pid in group_members(proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                name = f.read().split(b"\0")[0]
        except OSError:
            continue
        if name.endswith(b"/imap"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def test_a_large_message_is_fetched_in_parts_byte_for_byte(
    mail: MailServer, make_box: Callable[..., ImapMailbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    part = 64 * 1024
    monkeypatch.setattr(imap_mod, "FETCH_PART_BYTES", part)
    body = bytes(range(33, 127)) * 1000
    raws = [
        msg(1, "<big-1@gemeente.example>").replace(b"\r\n\r\n", b"\r\n\r\n" + body, 1),
        msg(2),  # small: one FETCH as usual
    ]
    # Exactly a multiple of the part size: the last, empty part ends the loop.
    exact = msg(3)
    exact += b"x" * (2 * part - len(exact))
    raws.append(exact)
    for raw in raws:
        mail.append(BOX, raw)
    mb = make_box("tls")
    mb.open()
    sent: list[bytes] = []
    real_fetch = mb._ready()[0].fetch

    def spy(uids: Any, items: Any, *a: Any, **kw: Any) -> Any:
        sent.extend(i if isinstance(i, bytes) else str(i).encode() for i in items)
        return real_fetch(uids, items, *a, **kw)

    monkeypatch.setattr(mb._ready()[0], "fetch", spy)
    got = [item.raw for item in mb.fetch(mb.list_new())]
    assert [bytes(g) for g in got] == raws
    assert any(s.startswith(b"BODY.PEEK[]<0.") for s in sent), sent
    assert len([s for s in sent if s.startswith(b"BODY.PEEK[]<")]) >= len(raws[0]) // part
