"""EWS mailbox and transport against the fake Exchange (real SOAP over TLS)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from fakes import captured_logs, pki
from fakes.ews_server import EwsServer
from fakes.token_server import TokenServer

from inboxd import ews_account
from inboxd.mailbox import ews as ews_module
from inboxd.mailbox.base import MailboxError
from inboxd.mailbox.ews import EwsMailbox
from inboxd.msauth import OUTLOOK_SCOPE, TokenProvider
from inboxd.throttle import Throttle
from inboxd.transport.base import Envelope, SendError
from inboxd.transport.ews import EwsTransport
from inboxd.transport.own_headers import header_recipients

DATA = Path(__file__).parent / "data" / "ews"
SIGNAL = (DATA / "signal.eml").read_bytes()
CLIENT, SECRET = "7a1c0e52-93b4-4c0e-8d0b-5b2f3c4d5e6f", "app-secret~0123456789abcdef"


def msg(n: int) -> bytes:
    return (
        f"Message-ID: <m{n}@melder.example>\r\nFrom: melder{n}@gemeente.example\r\n"
        f"To: vreemdverhaal@gemeente.example\r\nSubject: signaal {n}\r\n\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
def srv() -> Iterator[EwsServer]:
    with EwsServer() as s:
        yield s
        assert s.protocol_errors == []


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(ews_account, "_sleep", waited.append)
    return waited


def mailbox(srv: EwsServer, tmp_path: Path | None = None, **kw: object) -> EwsMailbox:
    args: dict[str, object] = {
        "password": srv.state.password,
        "auth_type": "basic",
        "primary_smtp_address": srv.state.mailbox,
        "ca_file": pki().ca_file,
        "timeout": 5.0,
        "poll_interval": 30.0,
    }
    if tmp_path is not None:
        args["sync_state_path"] = str(tmp_path / "ews.sync")
    args.update(kw)
    mb = EwsMailbox(srv.url, srv.state.username, **args)  # type: ignore[arg-type]
    return mb


def test_first_listing_has_everything_then_only_new(srv: EwsServer, tmp_path: Path) -> None:
    first = [srv.deliver(msg(i)) for i in range(3)]
    mb = mailbox(srv, tmp_path)
    mb.open()
    assert mb.list_new() == first
    assert mb.list_new() == []
    later = srv.deliver(msg(3))
    assert mb.list_new() == [later]
    # Incremental: after the first sync every request carries the last SyncState.
    syncs = [c.body for c in srv.calls if c.operation == "SyncFolderItems"]
    assert syncs[0].find("{*}SyncState") is None
    assert all(s.find("{*}SyncState") is not None for s in syncs[1:])


def test_oldest_first_within_a_listing(srv: EwsServer) -> None:
    import datetime as dt

    base = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
    newer = srv.deliver(msg(1), received=base + dt.timedelta(minutes=5))
    older = srv.deliver(msg(2), received=base)
    mb = mailbox(srv)
    mb.open()
    assert mb.list_new() == [older, newer]


def test_first_listing_after_open_lists_what_a_crash_left(srv: EwsServer, tmp_path: Path) -> None:
    keys = [srv.deliver(msg(i)) for i in range(2)]
    mb = mailbox(srv, tmp_path)
    mb.open()
    assert mb.list_new() == keys  # listed, then the daemon died before queueing them
    mb.close()
    again = mailbox(srv, tmp_path)  # a new process, with the stored sync state
    again.open()
    new = srv.deliver(msg(9))
    assert again.list_new() == [*keys, new]
    assert "FindItem" in srv.operations()
    assert again.list_new() == []
    # Reopening the same instance also starts over.
    again.open()
    assert again.list_new() == [*keys, new]


def test_fetch_returns_bytes_unchanged_and_skips_vanished(srv: EwsServer) -> None:
    key = srv.deliver(SIGNAL)
    gone = srv.deliver(msg(1))
    srv.remove(gone)
    mb = mailbox(srv)
    mb.open()
    items = list(mb.fetch([key, gone]))
    assert [i.key for i in items] == [key]
    assert items[0].raw == SIGNAL  # byte for byte: 8-bit, CRLF, binary attachment
    get = [c.body for c in srv.calls if c.operation == "GetItem"][0]
    assert get.xpath("//*[local-name()='FieldURI']/@FieldURI") == ["item:MimeContent"]


def test_fetch_in_chunks(srv: EwsServer) -> None:
    keys = [srv.deliver(msg(i)) for i in range(23)]
    mb = mailbox(srv)
    mb.open()
    assert [i.raw for i in mb.fetch(keys)] == [msg(i) for i in range(23)]
    assert srv.operations().count("GetItem") == 23  # one MIME body per response


def test_delete_hard_deletes_exactly_the_given_ids(srv: EwsServer) -> None:
    keep = srv.deliver(msg(1))
    drop = [srv.deliver(msg(2)), srv.deliver(msg(3))]
    mb = mailbox(srv)
    mb.open()
    mb.delete(drop)
    assert srv.deletes == [(k, "HardDelete") for k in drop]
    assert list(srv.items) == [keep]
    assert srv.state.recycle_bin == []
    # Already gone is not an error, and touches nothing else.
    mb.delete(drop)
    assert list(srv.items) == [keep]


def test_deleted_items_are_not_listed_again(srv: EwsServer) -> None:
    a, b = srv.deliver(msg(1)), srv.deliver(msg(2))
    mb = mailbox(srv)
    mb.open()
    assert mb.list_new() == [a, b]
    mb.delete([a])
    assert mb.list_new() == []


def test_verify_deleted(srv: EwsServer) -> None:
    a = srv.deliver(msg(1))
    b = srv.deliver(msg(2))
    copy = srv.deliver(msg(1))  # same Message-ID arrived twice
    mb = mailbox(srv)
    mb.open()
    mb.delete([a])
    assert mb.verify_deleted([a, b], ["<m1@melder.example>"]) == [b, copy]
    mb.delete([b, copy])
    assert mb.verify_deleted([a, b], ["<m1@melder.example>", "<m2@melder.example>"]) == []


def test_verify_deleted_searches_every_folder_and_recoverable_items(srv: EwsServer) -> None:
    archive = srv.add_folder("Archief")
    a = srv.deliver(msg(1))
    filed = srv.deliver(msg(1), folder=archive)  # a rule filed a copy
    mb = mailbox(srv)
    mb.open()
    assert mb.list_new() == [a], "the inbox only"
    mb.delete([a])
    assert mb.verify_deleted([a], ["<m1@melder.example>"]) == [filed]
    finds = [c.body for c in srv.calls if c.operation == "FindFolder"]
    assert finds and finds[-1].get("Traversal") == "Deep"
    srv.remove(filed)
    assert mb.verify_deleted([a], ["<m1@melder.example>"]) == []
    # Single item recovery or a hold: the hard delete moves the item to
    # Recoverable Items\Purges (with a new id), where EWS can still find it.
    srv.state.hold = True
    b = srv.deliver(msg(2))
    mb.list_new()
    mb.delete([b])
    purged = [i.id for i in srv.items.values() if i.folder == "purges"]
    assert len(purged) == 1 and purged != [b]
    assert mb.verify_deleted([b], ["<m2@melder.example>"]) == purged
    assert mb.recoverable_items_reach() == {"Deletions": "readable", "Purges": "readable"}
    # Not permitted to read Purges: said every time, the other folders still checked.
    srv.state.purges_readable = False
    for _ in range(2):
        with structlog.testing.capture_logs() as logs:
            assert mb.verify_deleted([b], ["<m2@melder.example>"]) == []
        limited = [e for e in logs if e["event"] == "mailbox.verify_limited"]
        assert [e["folder"] for e in limited] == ["recoverable_items_purges"]
    assert mb.recoverable_items_reach()["Purges"] == "not permitted"
    # Deletions still searched: a soft-deleted copy there is found.
    soft = srv.deliver(msg(3), folder="recoverable")
    assert mb.verify_deleted([], ["<m3@melder.example>"]) == [soft]
    srv.state.recoverable_readable = False
    with structlog.testing.capture_logs() as logs:
        assert mb.verify_deleted([], ["<m3@melder.example>"]) == []
    assert sorted(e["folder"] for e in logs if e["event"] == "mailbox.verify_limited") == [
        "recoverable_items_deletions",
        "recoverable_items_purges",
    ]
    assert mb.recoverable_items_reach() == {
        "Deletions": "not permitted",
        "Purges": "not permitted",
    }


def test_state_is_stored_only_after_the_sync_completed(
    srv: EwsServer, tmp_path: Path, sleeps: list[float]
) -> None:
    state_file = tmp_path / "ews.sync"
    early = [srv.deliver(msg(i)) for i in range(2)]
    mb = mailbox(srv, tmp_path)
    mb.open()
    assert mb.list_new() == early
    stored = state_file.read_bytes()
    assert json.loads(stored)["scope"]["backend"] == "ews"

    burst = [srv.deliver(msg(100 + i)) for i in range(250)]  # three pages of 100
    # The connection dies while the second page is requested.
    srv.on("SyncFolderItems", lambda: srv.fail("SyncFolderItems", "drop"))
    with pytest.raises(MailboxError) as ei:
        mb.list_new()
    assert not ei.value.auth
    assert srv.operations()[-2:] == ["SyncFolderItems", "SyncFolderItems"]
    assert state_file.read_bytes() == stored  # the old state, not a half-way one

    restarted = mailbox(srv, tmp_path)
    restarted.open()
    assert restarted.list_new() == early + burst  # nothing lost
    assert state_file.read_bytes() != stored


def test_server_error_without_back_off_is_retried(srv: EwsServer, sleeps: list[float]) -> None:
    key = srv.deliver(msg(1))
    mb = mailbox(srv)
    mb.open()
    srv.fail("SyncFolderItems", "http503")
    assert mb.list_new() == [key]
    assert len(sleeps) == 1


def test_invalid_stored_state_falls_back_to_full_sync(srv: EwsServer, tmp_path: Path) -> None:
    key = srv.deliver(msg(1))
    state_file = tmp_path / "ews.sync"
    doc = {
        "version": 1,
        "scope": {
            "backend": "ews",
            "endpoint": srv.url,
            "mailbox": srv.state.mailbox,
            "folder": "inbox",
        },
        "state": "bm90IGEgc3luYyBzdGF0ZQ==",
    }
    state_file.write_text(json.dumps(doc))
    mb = mailbox(srv, tmp_path)
    mb.open()
    assert mb.list_new() == [key]
    assert json.loads(state_file.read_text())["state"] != doc["state"]


def test_state_of_another_mailbox_is_ignored(srv: EwsServer, tmp_path: Path) -> None:
    key = srv.deliver(msg(1))
    (tmp_path / "ews.sync").write_text(
        json.dumps({"version": 1, "scope": {"backend": "ews"}, "state": "x"})
    )
    mb = mailbox(srv, tmp_path)
    mb.open()
    assert mb.list_new() == [key]
    assert "FindItem" not in srv.operations()


def test_throttling_waits_the_servers_back_off(srv: EwsServer, sleeps: list[float]) -> None:
    key = srv.deliver(msg(1))
    mb = mailbox(srv)
    mb.open()
    srv.fail("GetItem", "busy", times=2)
    assert [i.key for i in mb.fetch([key])] == [key]
    assert sleeps == [2.5, 2.5]  # BackOffMilliseconds=2500, honoured


def test_throttling_is_bounded(srv: EwsServer, sleeps: list[float]) -> None:
    srv.deliver(msg(1))
    mb = mailbox(srv)
    mb.open()
    srv.fail("SyncFolderItems", "busy", times=50)
    with pytest.raises(MailboxError) as ei:
        mb.list_new()
    assert not ei.value.auth
    assert "ErrorServerBusy" in str(ei.value)
    assert len(sleeps) == ews_account.MAX_BUSY_RETRIES


def test_a_long_back_off_is_carried_out_and_holds_every_request(
    srv: EwsServer, sleeps: list[float]
) -> None:
    srv.deliver(msg(1))
    now = [1000.0]
    throttle = Throttle(clock=lambda: now[0])
    mb = mailbox(srv, throttle=throttle)
    tr = transport(srv, throttle=throttle)  # the same account: one back-off
    mb.open()
    srv.fail("SyncFolderItems", "busy_long")
    with pytest.raises(MailboxError) as ei:
        mb.list_new()
    assert ei.value.retry_after == 300.0 and sleeps == []  # not slept inside the call
    before = len(srv.calls)
    now[0] += 299.0
    with pytest.raises(MailboxError) as ei:
        mb.list_new()
    assert ei.value.retry_after == pytest.approx(1.0)
    with pytest.raises(SendError) as es:
        tr.send(Envelope("", KEDO), FORWARD)
    assert es.value.temporary and es.value.retry_after == pytest.approx(1.0)
    assert len(srv.calls) == before, "a request went to the server during its back-off"
    now[0] += 1.0
    assert len(mb.list_new()) == 1
    tr.send(Envelope("", KEDO), FORWARD)
    assert len(srv.sent) == 1


def test_wrong_password_is_an_auth_error(srv: EwsServer) -> None:
    mb = mailbox(srv, password="not-the-password")
    with pytest.raises(MailboxError) as ei:
        mb.open()
    assert ei.value.auth
    assert "not-the-password" not in str(ei.value)


def test_access_denied_is_an_auth_error(srv: EwsServer) -> None:
    srv.fail("GetFolder", "access_denied", times=5)
    srv.fail("FindItem", "access_denied", times=5)
    with pytest.raises(MailboxError) as ei:
        mailbox(srv).open()
    assert ei.value.auth


def test_server_certificate_must_verify(srv: EwsServer) -> None:
    with pytest.raises(MailboxError) as ei:
        mailbox(srv, ca_file=None).open()
    assert not ei.value.auth
    assert srv.calls == []


def test_unreachable_server_is_not_an_auth_error() -> None:
    s = EwsServer()
    url = s.url
    s.stop()
    mb = EwsMailbox(
        url, "u@x.example", password="p", auth_type="basic", ca_file=pki().ca_file, timeout=2.0
    )
    with pytest.raises(MailboxError) as ei:
        mb.open()
    assert not ei.value.auth


def test_not_open_raises_mailbox_error(srv: EwsServer) -> None:
    with pytest.raises(MailboxError):
        mailbox(srv).list_new()


def test_wait_polls_and_stops() -> None:
    mb = EwsMailbox(
        "https://127.0.0.1:1/EWS/Exchange.asmx", "u@x.example", password="p", poll_interval=0.01
    )
    stop = threading.Event()
    mb.wait(60.0, stop)  # returns after poll_interval, not 60 s
    stop.set()
    mb.wait(60.0, stop)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        EwsMailbox("https://e/EWS/Exchange.asmx", "u@x.example")  # ntlm without password
    with pytest.raises(ValueError):
        EwsMailbox("https://e/EWS/Exchange.asmx", "u@x.example", auth_type="oauth2")
    with pytest.raises(ValueError):
        EwsMailbox("https://e/EWS/Exchange.asmx", "DOMAIN\\user", password="p")  # no address
    with pytest.raises(ValueError):
        EwsMailbox("https://e/EWS/Exchange.asmx", "u@x.example", password="p", folder="Signalen")
    with pytest.raises(ValueError):
        EwsMailbox("http://mail.example/EWS/Exchange.asmx", "u@x.example", password="p")
    with pytest.raises(ValueError):
        EwsMailbox("https://e/EWS/Exchange.asmx", "u@x.example", password="p", ca_file="/no/ca")


# --- OAuth2 (Exchange Online style: app token + impersonation) -------------------------


@pytest.fixture
def aad() -> Iterator[TokenServer]:
    with TokenServer(secrets={CLIENT: SECRET}) as t:
        yield t


def oauth_mailbox(srv: EwsServer, aad: TokenServer, secret: str = SECRET) -> EwsMailbox:
    token = TokenProvider(
        aad.tenant_id,
        CLIENT,
        client_secret=secret,
        scope=OUTLOOK_SCOPE,
        authority=aad.authority,
        ca_file=pki().ca_file,
    )
    return EwsMailbox(
        srv.url,
        srv.state.mailbox,
        auth_type="oauth2",
        token=token,
        ca_file=pki().ca_file,
        timeout=5.0,
    )


def test_oauth2_token_is_renewed_once_on_401(aad: TokenServer) -> None:
    with EwsServer(auth="oauth2", tokens=aad) as srv:
        key = srv.deliver(msg(1))
        mb = oauth_mailbox(srv, aad)
        mb.open()
        assert len(aad.token_requests) == 1
        aad.revoke_all()  # e.g. the admin rotated the app's access
        assert mb.list_new() == [key]
        assert len(aad.token_requests) == 2
        assert srv.state.auth_failures == 1
        # Impersonation of the mailbox, as Exchange Online wants for app tokens
        # (the fake refuses requests without it).
        last = srv.calls[-1]
        assert last.http_headers["X-AnchorMailbox"] == srv.state.mailbox
        assert srv.protocol_errors == []


def test_oauth2_token_refused_twice_is_auth_error(aad: TokenServer) -> None:
    with EwsServer(auth="oauth2", tokens=aad) as srv:
        mb = oauth_mailbox(srv, aad)
        mb.open()
        srv.fail("SyncFolderItems", "unauthorized", times=2)
        with pytest.raises(MailboxError) as ei:
            mb.list_new()
        assert ei.value.auth


def test_oauth2_wrong_secret_is_auth_error(aad: TokenServer) -> None:
    with EwsServer(auth="oauth2", tokens=aad) as srv:
        with pytest.raises(MailboxError) as ei:
            oauth_mailbox(srv, aad, secret="wrong").open()
        assert ei.value.auth
        assert "AADSTS7000215" in str(ei.value)
        assert srv.calls == []


# --- transport -------------------------------------------------------------------------


def transport(srv: EwsServer, **kw: object) -> EwsTransport:
    args: dict[str, object] = {
        "password": srv.state.password,
        "auth_type": "basic",
        "primary_smtp_address": srv.state.mailbox,
        "ca_file": pki().ca_file,
        "timeout": 5.0,
    }
    args.update(kw)
    return EwsTransport(srv.url, srv.state.username, **args)  # type: ignore[arg-type]


FORWARD = (DATA / "forward.eml").read_bytes()
KEDO = "intake-kedo@gemeente.example"


def test_transport_sends_mime_unchanged_send_only(srv: EwsServer) -> None:
    tr = transport(srv)
    tr.check()
    tr.send(Envelope("vreemdverhaal@gemeente.example", KEDO), FORWARD)
    tr.send(Envelope("vreemdverhaal@gemeente.example", KEDO), FORWARD)
    assert len(srv.sent) == 2
    sent = srv.sent[0]
    assert sent.mime == FORWARD
    assert sent.disposition == "SendOnly"
    assert not sent.saved_folder  # no copy in Sent Items
    assert sent.to == [KEDO]
    create = [c.body for c in srv.calls if c.operation == "CreateItem"][0]
    assert create.get("MessageDisposition") == "SendOnly"
    # One login for the batch: the version probe ran once.
    assert srv.operations().count("ConvertId") == 1
    tr.close()


def test_transport_refuses_when_headers_name_others(srv: EwsServer) -> None:
    tr = transport(srv)
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", "someone-else@gemeente.example"), FORWARD)
    assert not ei.value.temporary
    assert srv.sent == []


def test_header_recipients() -> None:
    raw = b"To: A <a@x.example>, b@x.example\r\nCc: \r\nBcc: C@X.example\r\nSubject: s\r\n\r\nTo: d@x\r\n"
    assert header_recipients(raw) == ["a@x.example", "b@x.example", "c@x.example"]
    assert header_recipients(b"Subject: none\r\n\r\n") == []


def test_transport_auth_failure_is_permanent(srv: EwsServer) -> None:
    tr = transport(srv, password="wrong")
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), FORWARD)
    assert not ei.value.temporary
    with pytest.raises(SendError) as ei:
        tr.check()
    assert not ei.value.temporary


def test_transport_busy_server_is_temporary(srv: EwsServer, sleeps: list[float]) -> None:
    tr = transport(srv)
    tr.check()
    srv.fail("CreateItem", "busy", times=20)
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), FORWARD)
    assert ei.value.temporary
    assert srv.sent == []


def test_transport_server_refusal_is_permanent(srv: EwsServer) -> None:
    tr = transport(srv)
    srv.fail("CreateItem", "access_denied")
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), FORWARD)
    assert not ei.value.temporary


# --- logs ------------------------------------------------------------------------------


def test_logs_carry_no_secret_address_or_content(srv: EwsServer, sleeps: list[float]) -> None:
    key = srv.deliver(SIGNAL)
    with captured_logs() as buf:
        mb = mailbox(srv)
        mb.open()
        mb.list_new()
        list(mb.fetch([key]))
        srv.fail("DeleteItem", "busy")
        mb.delete([key])
        with pytest.raises(MailboxError):
            mailbox(srv, password="hunter2-wrong").open()
        tr = transport(srv)
        tr.send(Envelope("", KEDO), FORWARD)
        with pytest.raises(SendError):
            tr.send(Envelope("", "x@y.example"), FORWARD)
        # exchangelib logs whole SOAP bodies when a request fails unexpectedly.
        logging.getLogger("exchangelib.util").error("Request XML: %s", FORWARD.decode("latin-1"))
    out = buf.getvalue()
    assert "mailbox.open" in out and "ews.backoff" in out and "library.log" in out
    for secret in (
        srv.state.password,
        "hunter2-wrong",
        srv.state.mailbox,
        KEDO,
        "Uitbuiting",
        "melder@gemeente.example",
        key[:40],
    ):
        assert secret not in out, secret
    for line in out.splitlines():
        json.loads(line)


# --- NTLM (the default for Exchange Server) ---------------------------------------------


@pytest.fixture
def ntlm_srv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EwsServer]:
    with EwsServer(auth="ntlm") as s:
        monkeypatch.setenv("NTLM_USER_FILE", s.ntlm_user_file(str(tmp_path)))
        yield s
        assert s.protocol_errors == []


def test_ntlm_handshake_and_reuse(ntlm_srv: EwsServer) -> None:
    key = ntlm_srv.deliver(msg(1))
    mb = mailbox(ntlm_srv, auth_type="ntlm")
    mb.open()
    assert mb.list_new() == [key]
    assert [i.raw for i in mb.fetch([key])] == [msg(1)]
    # One handshake (two 401s: plain, then the challenge) for the whole session.
    assert ntlm_srv.state.auth_failures == 1


def test_ntlm_wrong_password_is_auth_error(ntlm_srv: EwsServer) -> None:
    with pytest.raises(MailboxError) as ei:
        mailbox(ntlm_srv, auth_type="ntlm", password="Wrong-pa55").open()
    assert ei.value.auth


# -- pull notifications in wait() -------------------------------------------------------


def _timed_wait(mb: EwsMailbox, timeout: float, stop: threading.Event) -> float:
    t = time.monotonic()
    mb.wait(timeout, stop)
    return time.monotonic() - t


def test_wait_returns_soon_after_new_mail_is_announced(
    srv: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ews_module, "NOTIFY_INTERVAL", 0.05)
    mb = mailbox(srv, poll_interval=300.0)
    mb.open()
    assert mb.list_new() == []
    stop = threading.Event()
    # The first wait makes the subscription and returns at once (mail that came
    # before it would never be announced), the next one waits for an event.
    assert _timed_wait(mb, 60.0, stop) < 2.0
    timer = threading.Timer(0.3, lambda: srv.deliver(msg(1)))
    timer.start()
    took = _timed_wait(mb, 60.0, stop)
    timer.join()
    assert took < 3.0, f"new mail announced, but wait() took {took:.1f} s"
    assert len(mb.list_new()) == 1
    ops = srv.operations()
    assert ops.count("Subscribe") == 1 and "GetEvents" in ops
    subscribe = next(c.body for c in srv.calls if c.operation == "Subscribe")
    assert subscribe.xpath("//*[local-name()='EventType']/text()") == list(
        ews_module.NOTIFY_EVENT_TYPES
    )
    # Quiet mailbox: the wait runs to its timeout, asking GetEvents, never syncing.
    syncs = ops.count("SyncFolderItems")
    assert 0.3 <= _timed_wait(mb, 0.4, stop) < 2.0
    assert srv.operations().count("SyncFolderItems") == syncs


def test_more_events_are_fetched_from_the_last_watermark(
    srv: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long queue comes in parts with MoreEvents=true; each next GetEvents must
    # carry the watermark of the last event received, or it gets the same part
    # again (exchangelib's Folder.get_events asks with the same watermark).
    monkeypatch.setattr(ews_module, "NOTIFY_INTERVAL", 0.05)
    srv.state.events_per_response = 2
    old = [srv.deliver(msg(n)) for n in range(5)]
    mb = mailbox(srv, poll_interval=300.0)
    mb.open()
    assert len(mb.list_new()) == 5
    stop = threading.Event()
    mb.wait(60.0, stop)  # subscribes
    for key in old:
        srv.remove(key)  # five events that are not new mail
    srv.deliver(msg(9))  # and then one that is
    marks_before = len(srv.state.get_events_marks)
    assert _timed_wait(mb, 5.0, stop) < 2.0, "the new mail behind MoreEvents was not seen"
    marks = srv.state.get_events_marks[marks_before:]
    assert len(marks) == 3 and marks == sorted(set(marks)), marks  # 2 + 2 + 2 events
    assert len(mb.list_new()) == 1


def test_wait_with_notifications_honours_stop(
    srv: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ews_module, "NOTIFY_INTERVAL", 0.05)
    mb = mailbox(srv)
    mb.open()
    stop = threading.Event()
    mb.wait(60.0, stop)  # subscribes
    threading.Timer(0.2, stop.set).start()
    assert _timed_wait(mb, 60.0, stop) < 2.0


def test_a_server_without_subscriptions_is_polled(
    srv: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ews_module, "NOTIFY_INTERVAL", 0.05)
    srv.refuse_subscriptions()
    mb = mailbox(srv, poll_interval=0.3)
    mb.open()
    stop = threading.Event()
    with structlog.testing.capture_logs() as logs:
        took = [_timed_wait(mb, 60.0, stop) for _ in range(3)]
    assert all(0.25 <= t < 2.0 for t in took), took  # poll_interval, not 60 s
    events = [e["event"] for e in logs]
    assert events.count("mailbox.notify_unavailable") == 1, events
    assert srv.operations().count("Subscribe") == 1, "asked once per connection"
    srv.refuse_subscriptions(False)
    mb.open()  # a reconnect tries again
    mb.wait(60.0, stop)
    assert srv.operations().count("Subscribe") == 2


def test_an_expired_subscription_is_renewed_without_an_error(
    srv: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ews_module, "NOTIFY_INTERVAL", 0.05)
    mb = mailbox(srv, poll_interval=300.0)
    mb.open()
    stop = threading.Event()
    mb.wait(60.0, stop)  # subscribes
    srv.expire_subscriptions()
    # GetEvents fails (ErrorSubscriptionNotFound), a new Subscribe follows, and the
    # wait returns so that a sync covers what the lost subscription might have seen.
    assert _timed_wait(mb, 60.0, stop) < 2.0
    assert srv.operations().count("Subscribe") == 2
    timer = threading.Timer(0.3, lambda: srv.deliver(msg(2)))
    timer.start()
    assert _timed_wait(mb, 60.0, stop) < 3.0
    timer.join()
    assert len(mb.list_new()) == 1
