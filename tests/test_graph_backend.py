"""Graph mailbox and transport against the fake Graph and Entra ID (real HTTP over TLS)."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
import structlog
from fakes import captured_logs, pki
from fakes.graph_server import GraphServer, rebuilt_mime
from fakes.token_server import TokenServer

from inboxd import graph_client
from inboxd.mailbox import graph as graph_module
from inboxd.mailbox.base import MailboxError
from inboxd.mailbox.graph import GraphMailbox
from inboxd.mails import Attachment, Mail, render
from inboxd.msauth import TokenProvider, graph_scope
from inboxd.parsing import parse_message
from inboxd.throttle import Throttle
from inboxd.transport.base import Envelope, SendError
from inboxd.transport.graph import GraphTransport
from inboxd.transport.own_headers import message_id

DATA = Path(__file__).parent / "data" / "graph"
SIGNAL = (DATA / "signal.eml").read_bytes()
FORWARD = (DATA / "forward.eml").read_bytes()
CLIENT, SECRET = "c0ffee00-1234-4abc-9def-0123456789ab", "graph~secret.0123456789abcdef"
KEDO = "intake-kedo@gemeente.example"


def msg(n: int) -> bytes:
    return (
        f"Message-ID: <g{n}@melder.example>\r\nFrom: melder{n}@gemeente.example\r\n"
        f"To: vreemdverhaal@gemeente.example\r\nSubject: signaal {n}\r\n\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
def aad() -> Iterator[TokenServer]:
    with TokenServer(secrets={CLIENT: SECRET}) as t:
        yield t


@pytest.fixture
def graph(aad: TokenServer) -> Iterator[GraphServer]:
    with GraphServer(aad) as g:
        yield g
        assert g.protocol_errors == []


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(graph_client, "_sleep", waited.append)
    return waited


def token(aad: TokenServer, graph: GraphServer, secret: str = SECRET) -> TokenProvider:
    return TokenProvider(
        aad.tenant_id,
        CLIENT,
        client_secret=secret,
        scope=graph_scope(graph.endpoint),
        authority=aad.authority,
        ca_file=pki().ca_file,
    )


def mailbox(
    aad: TokenServer, graph: GraphServer, tmp_path: Path | None = None, **kw: object
) -> GraphMailbox:
    args: dict[str, object] = {
        "endpoint": graph.endpoint,
        "ca_file": pki().ca_file,
        "timeout": 5.0,
    }
    if tmp_path is not None:
        args["delta_state_path"] = str(tmp_path / "graph.delta")
    args.update(kw)
    tp = args.pop("token", None) or token(aad, graph)
    return GraphMailbox(aad.tenant_id, CLIENT, graph.state.mailbox, tp, **args)  # type: ignore[arg-type]


def test_first_listing_has_everything_then_only_new(
    aad: TokenServer, graph: GraphServer, tmp_path: Path
) -> None:
    first = [graph.deliver(msg(i)) for i in range(3)]
    mb = mailbox(aad, graph, tmp_path)
    mb.open()
    assert mb.list_new() == first
    assert mb.list_new() == []
    later = graph.deliver(msg(3))
    assert mb.list_new() == [later]
    deltas = [r for r in graph.requests if r.route == "delta"]
    assert deltas[0].query["$select"] == "id,receivedDateTime"
    assert "$deltatoken" in deltas[-1].query  # the deltaLink, used as given
    assert deltas[0].headers["Prefer"] == "odata.maxpagesize=100"


def test_paging_follows_next_links(aad: TokenServer, graph: GraphServer) -> None:
    keys = [graph.deliver(msg(i)) for i in range(230)]
    mb = mailbox(aad, graph)
    mb.open()
    assert mb.list_new() == keys
    assert graph.routes().count("delta") == 3


def test_oldest_first(aad: TokenServer, graph: GraphServer) -> None:
    import datetime as dt

    t0 = dt.datetime(2026, 11, 3, 8, 0, tzinfo=dt.UTC)
    newer = graph.deliver(msg(1), received=t0 + dt.timedelta(hours=1))
    older = graph.deliver(msg(2), received=t0)
    mb = mailbox(aad, graph)
    mb.open()
    assert mb.list_new() == [older, newer]


def test_first_listing_after_open_lists_what_a_crash_left(
    aad: TokenServer, graph: GraphServer, tmp_path: Path
) -> None:
    keys = [graph.deliver(msg(i)) for i in range(2)]
    mb = mailbox(aad, graph, tmp_path)
    mb.open()
    assert mb.list_new() == keys
    mb.close()
    again = mailbox(aad, graph, tmp_path)
    again.open()
    new = graph.deliver(msg(5))
    assert again.list_new() == [*keys, new]
    assert "list" in graph.routes()  # reconciled with a plain listing
    assert again.list_new() == []


def test_delta_link_stored_only_after_the_last_page(
    aad: TokenServer, graph: GraphServer, tmp_path: Path
) -> None:
    state = tmp_path / "graph.delta"
    early = [graph.deliver(msg(i)) for i in range(2)]
    mb = mailbox(aad, graph, tmp_path)
    mb.open()
    assert mb.list_new() == early
    stored = state.read_bytes()
    assert "$deltatoken" in json.loads(stored)["state"]

    burst = [graph.deliver(msg(100 + i)) for i in range(250)]  # three pages
    graph.fail("delta", 0, after=1)  # the connection drops on the second page
    with pytest.raises(MailboxError) as ei:
        mb.list_new()
    assert not ei.value.auth
    assert graph.routes()[-2:] == ["delta", "delta"]
    assert state.read_bytes() == stored  # the old link, not a half-way one

    restarted = mailbox(aad, graph, tmp_path)
    restarted.open()
    assert restarted.list_new() == early + burst  # nothing lost
    assert state.read_bytes() != stored


EXPIRY_FORMS = [
    "410",
    "410-location",
    "400-syncStateNotFound",
    "404-syncStateNotFound",
    "400-resyncRequired",
    "404-resyncRequired",
]


@pytest.mark.parametrize("form", EXPIRY_FORMS)
def test_expired_delta_link_starts_over_in_every_form(
    aad: TokenServer, graph: GraphServer, tmp_path: Path, form: str
) -> None:
    a = graph.deliver(msg(1))
    mb = mailbox(aad, graph, tmp_path)
    mb.open()
    assert mb.list_new() == [a]
    b = graph.deliver(msg(2))
    graph.expire_delta_tokens(form)
    with captured_logs() as buf:  # the real pipeline, with its field allow-list
        assert mb.list_new() == [b]  # a fresh round lists a and b; a was seen already
    logs = [json.loads(line) for line in buf.getvalue().splitlines()]
    restarted = [e for e in logs if e["event"] == "mailbox.state_ignored"]
    assert len(restarted) == 1 and "redacted" not in restarted[0]
    assert restarted[0]["restart"] == ("location" if form == "410-location" else "scratch")
    deltas = [r for r in graph.requests if r.route == "delta"]
    assert "$deltatoken" in deltas[-2].query and "$deltatoken" not in deltas[-1].query
    c = graph.deliver(msg(3))
    assert mb.list_new() == [c]  # and the new link works: nothing twice
    # After a restart with an expired stored link: everything once, no stall.
    graph.expire_delta_tokens(form)
    again = mailbox(aad, graph, tmp_path)
    again.open()
    assert again.list_new() == [a, b, c]
    d = graph.deliver(msg(4))
    assert again.list_new() == [d]


def test_next_link_expiring_mid_round_starts_over(
    aad: TokenServer, graph: GraphServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_module, "PAGE_SIZE", 2)
    keys = [graph.deliver(msg(n)) for n in range(5)]
    mb = mailbox(aad, graph, tmp_path)
    mb.open()
    # The round's next links die between its pages (microsoft-graph-docs#2162).
    graph.expire_delta_tokens("404-syncStateNotFound", after=2)
    assert mb.list_new() == keys
    deltas = [r for r in graph.requests if r.route == "delta"]
    assert len(deltas) == 1 + 1 + 3  # a page, the dead next link, a new round of three


def test_removed_entries_and_deleted_items(aad: TokenServer, graph: GraphServer) -> None:
    a, b = graph.deliver(msg(1)), graph.deliver(msg(2))
    mb = mailbox(aad, graph)
    mb.open()
    assert mb.list_new() == [a, b]
    graph.remove(a)  # deleted in Outlook
    mb.delete([b])
    c = graph.deliver(msg(3))
    assert mb.list_new() == [c]


def same_content(a: bytes, b: bytes) -> bool:
    """What inboxd reads from a message: the same in both (bytes may differ)."""
    pa, pb = parse_message(a), parse_message(b)
    fields: tuple[str, ...] = (
        "message_id",
        "from_addr",
        "subject",
        "attachment_count",
        "auto",
        "report_type",
    )
    fields += ("in_reply_to", "references")
    return all(getattr(pa, f) == getattr(pb, f) for f in fields) and (
        " ".join(pa.text.split()) == " ".join(pb.text.split())
    )


def test_fetch_returns_the_mime_exchange_rebuilt_and_skips_vanished(
    aad: TokenServer, graph: GraphServer
) -> None:
    key = graph.deliver(SIGNAL)
    gone = graph.deliver(msg(1))
    graph.remove(gone)
    mb = mailbox(aad, graph)
    mb.open()
    items = list(mb.fetch([key, gone]))
    assert [i.key for i in items] == [key]
    # Not the delivered bytes (new boundaries, quoted-printable text, re-folded
    # headers), but the same message to the parser.
    assert items[0].raw != SIGNAL
    assert b'boundary="_001_' in items[0].raw and b"quoted-printable" in items[0].raw
    assert same_content(items[0].raw, SIGNAL)
    assert any(r.route == "value" and r.path.endswith("/$value") for r in graph.requests)


CORPUS = Path(__file__).parent / "data" / "corpus"


def test_the_parser_reads_rebuilt_mime_as_the_original() -> None:
    rebuilt = 0
    for path in sorted(CORPUS.iterdir()):
        if path.name == "SOURCES.md":
            continue
        raw = path.read_bytes()
        again = rebuilt_mime(raw)
        if again == raw:
            continue  # malformed: the fake serves it as it is
        rebuilt += 1
        assert same_content(again, raw), path.name
    assert rebuilt >= 60, rebuilt


def test_delete_is_permanent_and_exact(aad: TokenServer, graph: GraphServer) -> None:
    keep = graph.deliver(msg(1))
    drop = [graph.deliver(msg(2)), graph.deliver(msg(3))]
    mb = mailbox(aad, graph)
    mb.open()
    mb.delete(drop)
    assert graph.state.permanent_deletes == drop
    assert [m.id for m in graph.folder("inbox")] == [keep]
    assert all(r.route != "unknown" and r.method != "DELETE" for r in graph.requests)
    mb.delete(drop)  # already gone: fine
    assert [m.id for m in graph.folder("inbox")] == [keep]


def test_verify_deleted(aad: TokenServer, graph: GraphServer) -> None:
    a = graph.deliver(msg(1))
    b = graph.deliver(msg(2))
    copy = graph.deliver(msg(1))
    mb = mailbox(aad, graph)
    mb.open()
    mb.delete([a])
    assert mb.verify_deleted([a, b], ["<g1@melder.example>"]) == [b, copy]
    mb.delete([b, copy])
    assert mb.verify_deleted([a, b, copy], ["<g1@melder.example>", "<g2@melder.example>"]) == []


def test_verify_deleted_searches_every_folder_and_recoverable_items(
    aad: TokenServer, graph: GraphServer
) -> None:
    a = graph.deliver(msg(1))
    archived = graph.deliver(msg(1), folder="archive")  # a rule filed a copy
    mb = mailbox(aad, graph)
    mb.open()
    mb.delete([a])
    assert mb.verify_deleted([a], ["<g1@melder.example>"]) == [archived]
    graph.remove(archived)
    assert mb.verify_deleted([a], ["<g1@melder.example>"]) == []
    # A copy someone soft-deleted lies in Recoverable Items\Deletions: found.
    soft = graph.deliver(msg(3), folder="recoverableitemsdeletions")
    assert mb.verify_deleted([], ["<g3@melder.example>"]) == [soft]
    # Where the app may not read Deletions, the rest is still checked, and said.
    graph.state.recoverable_readable = False
    with structlog.testing.capture_logs() as logs:
        assert mb.verify_deleted([], ["<g3@melder.example>"]) == []
    assert [(e["event"], e["folder"]) for e in logs] == [
        ("mailbox.verify_limited", "recoverable_items_purges"),
        ("mailbox.verify_limited", "recoverable_items_deletions"),
    ]


def test_purges_are_out_of_graphs_sight_and_every_check_says_so(
    aad: TokenServer, graph: GraphServer
) -> None:
    # Single item recovery (on by default in Exchange Online) or a hold:
    # permanentDelete puts the message in Recoverable Items\Purges.
    graph.state.hold = True
    b = graph.deliver(msg(2))
    mb = mailbox(aad, graph)
    mb.open()
    mb.delete([b])
    assert [m.id for m in graph.folder("recoverableitemspurges")] == [b]  # it lives on
    for _ in range(2):
        with captured_logs() as buf:
            # Graph sees nothing of it: neither by id nor by Message-ID.
            assert mb.verify_deleted([b], ["<g2@melder.example>"]) == []
        logs = [json.loads(line) for line in buf.getvalue().splitlines()]
        limited = [e for e in logs if e["event"] == "mailbox.verify_limited"]
        assert [e["folder"] for e in limited] == ["recoverable_items_purges"]
        assert limited[0]["reason"] == "not_readable_by_graph"
    assert mb.recoverable_items_reach() == {
        "Deletions": "readable",
        "Purges": "not readable by Graph",
    }
    graph.state.recoverable_readable = False
    assert mb.recoverable_items_reach()["Deletions"] == "not permitted"


def test_throttling_honours_retry_after(
    aad: TokenServer, graph: GraphServer, sleeps: list[float]
) -> None:
    key = graph.deliver(msg(1))
    mb = mailbox(aad, graph)
    mb.open()
    graph.fail("value", 429, retry_after="7")
    graph.fail("delta", 503, retry_after="3")
    assert mb.list_new() == [key]
    assert [i.key for i in mb.fetch([key])] == [key]
    assert sleeps == [3.0, 7.0]


def test_throttling_is_bounded(aad: TokenServer, graph: GraphServer, sleeps: list[float]) -> None:
    graph.deliver(msg(1))
    mb = mailbox(aad, graph)
    mb.open()
    graph.fail("delta", 429, times=10, retry_after="1")
    with pytest.raises(MailboxError) as ei:
        mb.list_new()
    assert sleeps == [1.0] * graph_client.MAX_RETRIES
    assert ei.value.retry_after == 1.0  # the rest is the daemon's to wait out


def test_a_long_retry_after_is_carried_out_and_holds_mailbox_and_transport(
    aad: TokenServer, graph: GraphServer, sleeps: list[float]
) -> None:
    # Graph asks for minutes when it means it (learn.microsoft.com/en-us/answers/
    # questions/648796: Retry-After 315); every request before then prolongs it
    # (https://learn.microsoft.com/en-us/graph/throttling).
    key = graph.deliver(msg(1))
    now = [1000.0]
    throttle = Throttle(clock=lambda: now[0])
    mb = mailbox(aad, graph, throttle=throttle)
    tr = transport(aad, graph, throttle=throttle)  # one account: one back-off
    mb.open()
    graph.fail("delta", 429, retry_after="300")
    with pytest.raises(MailboxError) as ei:
        mb.list_new()
    assert not ei.value.auth and "429" in str(ei.value)
    assert ei.value.retry_after == 300.0 and sleeps == []
    before = len(graph.requests)
    now[0] += 299.5
    for attempt in (mb.list_new, lambda: list(mb.fetch([key]))):
        with pytest.raises(MailboxError) as ei:
            attempt()
        assert ei.value.retry_after == pytest.approx(0.5)
    with pytest.raises(SendError) as es:
        tr.send(Envelope("", KEDO), FORWARD)
    assert es.value.temporary and es.value.retry_after == pytest.approx(0.5)
    assert tr.purge_sent() == 0  # never raises, sends nothing
    assert len(graph.requests) == before, "a request went out during the back-off"
    now[0] += 0.5
    assert mb.list_new() == [key]
    tr.send(Envelope("", KEDO), FORWARD)
    assert len(graph.state.sent) == 1


def test_expired_token_is_refreshed_once(aad: TokenServer, graph: GraphServer) -> None:
    key = graph.deliver(msg(1))
    mb = mailbox(aad, graph)
    mb.open()
    assert len(aad.token_requests) == 1
    aad.revoke_all()
    assert mb.list_new() == [key]
    assert len(aad.token_requests) == 2
    graph.fail("value", 401, times=2)
    with pytest.raises(MailboxError) as ei:
        list(mb.fetch([key]))
    assert ei.value.auth


def test_wrong_secret_is_auth_error(aad: TokenServer, graph: GraphServer) -> None:
    mb = mailbox(aad, graph, token=token(aad, graph, secret="wrong"))
    with pytest.raises(MailboxError) as ei:
        mb.open()
    assert ei.value.auth and "AADSTS7000215" in str(ei.value)
    assert graph.requests == []


def test_access_denied_is_auth_error(aad: TokenServer, graph: GraphServer) -> None:
    graph.fail("folder", 403)
    with pytest.raises(MailboxError) as ei:
        mailbox(aad, graph).open()
    assert ei.value.auth


def test_unknown_folder_is_config_error(aad: TokenServer, graph: GraphServer) -> None:
    with pytest.raises(MailboxError) as ei:
        mailbox(aad, graph, folder="no-such-folder").open()
    assert ei.value.auth
    assert "ErrorInvalidIdMalformed" in str(ei.value)


def test_untrusted_certificate_is_refused(aad: TokenServer, graph: GraphServer) -> None:
    mb = mailbox(aad, graph, ca_file=None)
    with pytest.raises(MailboxError) as ei:
        mb.open()
    assert not ei.value.auth
    assert graph.requests == []


def test_links_outside_the_endpoint_are_not_followed(aad: TokenServer, graph: GraphServer) -> None:
    # A nextLink/deltaLink naming another host would carry our bearer token there.
    from inboxd.graph_client import GraphFailure

    client = mailbox(aad, graph).client
    with pytest.raises(GraphFailure):
        client.request("GET", "https://evil.example/v1.0/users/x/messages", what="test")
    with pytest.raises(GraphFailure):
        client.request("GET", graph.endpoint + ".evil.example/v1.0/users/x", what="test")
    assert graph.requests == []
    assert aad.token_requests == []


def test_wait_polls_and_stops(aad: TokenServer, graph: GraphServer) -> None:
    mb = mailbox(aad, graph, poll_interval=0.01)
    stop = threading.Event()
    mb.wait(60.0, stop)
    stop.set()
    mb.wait(60.0, stop)


def test_not_open(aad: TokenServer, graph: GraphServer) -> None:
    with pytest.raises(MailboxError):
        mailbox(aad, graph).list_new()


# --- transport -------------------------------------------------------------------------


def transport(aad: TokenServer, graph: GraphServer, **kw: object) -> GraphTransport:
    args: dict[str, object] = {"endpoint": graph.endpoint, "ca_file": pki().ca_file, "timeout": 5.0}
    args.update(kw)
    tp = args.pop("token", None) or token(aad, graph)
    return GraphTransport(graph.state.mailbox, tp, **args)  # type: ignore[arg-type]


def test_transport_sends_mime_unchanged_and_purges_sent_copy(
    aad: TokenServer, graph: GraphServer
) -> None:
    tr = transport(aad, graph)
    tr.check()
    tr.send(Envelope("vreemdverhaal@gemeente.example", KEDO), FORWARD)
    assert graph.state.sent == [FORWARD]
    create, send = [r for r in graph.requests if r.route in ("create", "send")]
    assert create.headers["Content-Type"] == "text/plain"
    for r in (create, send):
        assert r.headers["Prefer"] == 'IdType="ImmutableId"'
    assert graph.folder("sentitems") == [] and graph.folder("drafts") == []
    assert tr.pending_copies() == []
    assert len(graph.state.permanent_deletes) == 1


def test_transport_purges_copies_filed_later(aad: TokenServer, graph: GraphServer) -> None:
    graph.hold_sent_copies()  # in Drafts until transport took it
    tr = transport(aad, graph)
    tr.send(Envelope("", KEDO), FORWARD)
    [entry] = tr.pending_copies()
    assert entry.endswith(" " + str(message_id(FORWARD)))
    assert len(graph.folder("drafts")) == 1
    assert tr.purge_sent() == 1  # still on its way: deleting it could stop the send
    assert len(graph.folder("drafts")) == 1 and graph.state.permanent_deletes == []
    graph.file_held_copies()
    assert len(graph.folder("sentitems")) == 1
    assert tr.purge_sent() == 0
    assert graph.folder("sentitems") == [] and graph.folder("drafts") == []
    # After a restart the daemon passes the entries it remembers.
    tr2 = transport(aad, graph)
    graph.hold_sent_copies()
    tr2.send(Envelope("", KEDO), FORWARD)
    remembered = tr2.pending_copies()
    graph.file_held_copies()
    tr3 = transport(aad, graph)
    assert tr3.purge_sent(remembered) == 0
    assert graph.folder("sentitems") == []


def test_a_sent_copy_with_a_new_message_id_is_still_found(
    aad: TokenServer, graph: GraphServer
) -> None:
    # Exchange may give the Sent Items copy a Message-ID of its own: the copy is
    # found by the immutable id, not by the Message-ID.
    graph.state.rewrite_message_ids = True
    graph.hold_sent_copies()
    tr = transport(aad, graph)
    tr.send(Envelope("", KEDO), FORWARD)
    graph.file_held_copies()
    [copy] = graph.folder("sentitems")
    assert copy.internet_message_id != message_id(FORWARD)
    assert tr.purge_sent() == 0
    assert graph.folder("sentitems") == []


def test_an_entry_of_an_earlier_version_is_looked_for_in_every_folder(
    aad: TokenServer, graph: GraphServer
) -> None:
    # An earlier inboxd remembered Message-IDs only; the copy may still be in Drafts.
    mid = str(message_id(FORWARD))
    key = graph.deliver(FORWARD, folder="drafts")
    tr = transport(aad, graph)
    assert tr.purge_sent([mid]) == 1  # a draft: maybe still on its way
    graph.remove(key)
    graph.deliver(FORWARD, folder="sentitems")
    assert tr.purge_sent() == 0
    assert graph.folder("sentitems") == []


def test_a_failed_send_leaves_no_draft_behind(aad: TokenServer, graph: GraphServer) -> None:
    tr = transport(aad, graph)
    graph.fail("send", 500)
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), FORWARD)
    assert ei.value.temporary
    assert graph.state.sent == []
    assert graph.folder("drafts") == [] and tr.pending_copies() == []
    # If even the delete fails, the draft stays awaited and goes at the next purge.
    graph.fail("send", 500)
    graph.fail("permanentDelete", 503, times=10, retry_after="1")
    with pytest.raises(SendError):
        tr.send(Envelope("", KEDO), FORWARD)
    assert len(graph.folder("drafts")) == 1 and len(tr.pending_copies()) == 1


def test_transport_refuses_when_headers_name_others(aad: TokenServer, graph: GraphServer) -> None:
    tr = transport(aad, graph)
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", "a.jansen@gemeente.example"), FORWARD)
    assert not ei.value.temporary
    assert graph.state.sent == []


def test_transport_auth_failure_is_permanent(aad: TokenServer, graph: GraphServer) -> None:
    tr = transport(aad, graph, token=token(aad, graph, secret="nope"))
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), FORWARD)
    assert not ei.value.temporary
    with pytest.raises(SendError) as ei:
        tr.check()
    assert not ei.value.temporary


def test_transport_throttling_then_temporary(
    aad: TokenServer, graph: GraphServer, sleeps: list[float]
) -> None:
    tr = transport(aad, graph)
    graph.fail("send", 429, retry_after="2")
    tr.send(Envelope("", KEDO), FORWARD)
    assert sleeps == [2.0] and len(graph.state.sent) == 1
    graph.fail("create", 503, times=10, retry_after="1")
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), FORWARD)
    assert ei.value.temporary


def test_transport_refusal_is_permanent(aad: TokenServer, graph: GraphServer) -> None:
    tr = transport(aad, graph)
    graph.fail("create", 403)
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), FORWARD)
    assert not ei.value.temporary


# --- logs ------------------------------------------------------------------------------


def test_logs_carry_no_secret_token_or_content(
    aad: TokenServer, graph: GraphServer, sleeps: list[float]
) -> None:
    key = graph.deliver(SIGNAL)
    tp = token(aad, graph)
    with captured_logs() as buf:
        mb = mailbox(aad, graph, token=tp)
        mb.open()
        mb.list_new()
        graph.fail("value", 429, retry_after="1")
        list(mb.fetch([key]))
        mb.delete([key])
        with pytest.raises(MailboxError):
            mailbox(aad, graph, token=token(aad, graph, secret="hunter2")).open()
        tr = transport(aad, graph, token=tp)
        tr.send(Envelope("", KEDO), FORWARD)
    out = buf.getvalue()
    assert "graph.backoff" in out and "mailbox.open" in out
    for secret in (
        SECRET,
        "hunter2",
        tp(),
        graph.state.mailbox,
        KEDO,
        "Uitbuiting",
        "melder@gemeente.example",
        key[:40],
    ):
        assert secret not in out, secret
    for line in out.splitlines():
        json.loads(line)


# --- large mail: a draft with its large parts uploaded ----------------------------------


def big_forward(size: int) -> tuple[bytes, bytes]:
    """A forward to KEDO carrying an original of ``size`` bytes, and that original."""
    filler = (b"Uitbuiting gemeld, regel met tekst en meer tekst tot de rand.\r\n") * (
        size // 64 + 1
    )
    original = (
        b"Message-ID: <groot@melder.example>\r\nFrom: melder@gemeente.example\r\n"
        b"To: vreemdverhaal@gemeente.example\r\nSubject: groot signaal\r\n\r\n" + filler
    )[:size]
    mail = Mail(
        sender="Meldpunt <vreemdverhaal@gemeente.example>",
        to=KEDO,
        subject="Doorgestuurd signaal VV-TEST",
        body="Zie bijlage.",
        message_id="<inboxd.groot@gemeente.example>",
        auto_submitted="auto-generated",
        attachments=(Attachment(original),),
    )
    return render(mail), original


def test_a_30_mb_signal_reaches_kedo_through_an_upload_session(
    aad: TokenServer, graph: GraphServer
) -> None:
    forward, original = big_forward(30 * 1024 * 1024)
    tr = transport(aad, graph)
    tr.send(Envelope("", KEDO), forward)
    [sent] = graph.state.sent
    assert original in sent  # the original travels unchanged, as message/rfc822
    parsed = BytesParser(policy=policy.default).parsebytes(sent)
    assert parsed["Message-ID"] == "<inboxd.groot@gemeente.example>"
    [attached] = [p for p in parsed.iter_attachments() if p.get_content_type() == "message/rfc822"]
    # No request body above Graph's limit; the upload URL without our token.
    for r in graph.requests:
        assert int(r.headers.get("Content-Length", "0")) <= 4 * 1024 * 1024, r.route
    puts = [r for r in graph.requests if r.method == "PUT"]
    assert len(puts) >= 8 and all("Authorization" not in r.headers for r in puts)
    assert graph.folder("drafts") == [] and graph.folder("sentitems") == []
    assert tr.pending_copies() == []


def test_a_message_the_service_refuses_for_its_size_is_reported_as_that_size(
    aad: TokenServer, graph: GraphServer
) -> None:
    graph.state.max_send_size = 35 * 1000 * 1000  # the tenant's limit
    forward, _original = big_forward(40 * 1000 * 1000)
    tr = transport(aad, graph)
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), forward)
    assert not ei.value.temporary
    assert f"message of {round(len(forward) / 1_000_000)} MB too large" in ei.value.reason
    assert graph.state.sent == []
    assert graph.folder("drafts") == [] and tr.pending_copies() == []  # nothing left behind


def test_one_large_part_that_cannot_be_split_is_refused_with_its_size(
    aad: TokenServer, graph: GraphServer
) -> None:
    # An S/MIME-encrypted forward is one part: nothing to upload separately.
    blob = base64.encodebytes(os.urandom(4 * 1024 * 1024)).replace(b"\n", b"\r\n")
    smime = (
        b"From: vreemdverhaal@gemeente.example\r\nTo: " + KEDO.encode() + b"\r\n"
        b"Message-ID: <inboxd.smime@gemeente.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + blob
    )
    tr = transport(aad, graph)
    with pytest.raises(SendError) as ei:
        tr.send(Envelope("", KEDO), smime)
    assert not ei.value.temporary and "MB too large" in ei.value.reason
    assert graph.requests == []
