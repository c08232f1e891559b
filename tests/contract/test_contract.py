"""The same life of a signal over every backend (IMAP, Maildir, EWS, Graph), in
process through ``inboxd.app.build`` + ``inboxd.daemon.once``: intake, triage by
reply, forward and hard delete, and what a crash between commit and delete leaves.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
import structlog
from contract_backends import (
    GRAPH_CLIENT,
    GRAPH_SECRET,
    Backend,
    EwsBackend,
    GraphBackend,
    ImapBackend,
    MaildirBackend,
)
from fakes.ews_server import EwsServer
from fakes.graph_server import GraphServer
from fakes.token_server import TokenServer
from servers import AUTHSERV_ID
from world import (
    F1,
    F2,
    KEDO,
    MAILBOX,
    NLA,
    REPORTER,
    RIEC,
    Installation,
    body_text,
    config_text,
    marker,
    parse,
    signal_mail,
)

from inboxd import logs
from inboxd.app import App, build
from inboxd.backends.connect import Backends
from inboxd.crypto import generate_key_file
from inboxd.daemon import once
from inboxd.mailbox.base import Mailbox
from inboxd.parsing import parse_message
from inboxd.references import find_references


class Crash(BaseException):
    """The process dies here (not an error any layer would catch)."""


@dataclass
class Contract(Installation):
    backend: Backend
    root: Path
    log: io.StringIO = field(default_factory=io.StringIO)

    def setup(self) -> Contract:
        self.root.mkdir()
        generate_key_file(self.root / "master-key")
        # The suite's configuration: the backend's sections and sender evidence.
        text = config_text(
            self.root, self.backend.config_sections(), rate="50/h", **self.backend.evidence()
        )
        self.config_path.write_text(text)
        return self

    def app(self, prepare: Callable[[Mailbox], None] | None = None) -> App:
        cfg = self.cfg()
        backends = Backends(cfg)
        mailbox = backends.mailbox()
        if prepare is not None:
            prepare(mailbox)
        return build(cfg, mailbox=mailbox, transport=backends.transport())

    def once(self) -> int:
        """One ``inboxd once``: a fresh process's worth of objects each time."""
        return once(self.app())

    def until_quiet(self, rounds: int = 5) -> None:
        for _ in range(rounds):
            self.once()
            if not self.backend.mailbox_contents() and self.outbox_size() == 0:
                return
        raise AssertionError(f"still busy after {rounds} rounds")

    def open_signals(self) -> int:
        with self.reading() as s:
            return len(s.signals())

    def accepted(self) -> int:
        """Taken from the mailbox and sealed, not yet processed into a signal."""
        with self.reading() as s:
            return s.inbound_count()

    def state_bytes(self) -> bytes:
        assert any(p.is_file() for p in (self.root / "state").rglob("*")), (
            "the store left no files at all?"
        )
        return super().state_bytes()


BACKENDS = ["imap", "maildir", "ews", "graph"]


# Here rather than in a conftest.py of its own: tests/conftest.py is the suite's one
# module named conftest, which lets mypy check tests/ as one tree.
@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """One parameter per backend (see ``contract_backends``); only ``imap`` starts
    Dovecot and the relay."""
    root = tmp_path / "backend"
    root.mkdir()
    kind = request.param
    if kind == "imap":
        # Only this parameter needs Dovecot: the others run without it.
        yield ImapBackend(request.getfixturevalue("mail"), root)
    elif kind == "maildir":
        yield MaildirBackend(root)
    elif kind == "ews":
        with EwsServer(auth="basic") as srv:
            yield EwsBackend(srv, root)
            assert srv.protocol_errors == [], "inboxd sent EWS requests Exchange would refuse"
    else:
        with (
            TokenServer(secrets={GRAPH_CLIENT: GRAPH_SECRET}) as aad,
            GraphServer(aad, mailbox=MAILBOX) as graph,
        ):
            yield GraphBackend(aad, graph, root)
            assert graph.protocol_errors == [], "inboxd sent Graph requests Graph would refuse"


@pytest.fixture
def contract(backend: Backend, tmp_path: Path) -> Iterator[Contract]:
    c = Contract(backend, tmp_path / "inboxd")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("json", "debug", stream=c.log)
    try:
        yield c.setup()
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def absent(mark: str, where: str, data: bytes | str | list[bytes]) -> None:
    hay = b"".join(data) if isinstance(data, list) else data
    hay_b = hay if isinstance(hay, bytes) else hay.encode()
    assert mark.encode().lower() not in hay_b.lower(), f"marker found in {where}"


def attached_originals(raw: bytes) -> list[bytes]:
    msg = parse(raw)
    out = []
    for part in msg.iter_attachments():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_content()
            assert isinstance(inner, EmailMessage)
            out.append(inner.as_bytes())
    return out


def triage_requests(backend: Backend, address: str, ref: str) -> list[bytes]:
    return [
        m
        for m in backend.received(address)
        if ref in str(parse(m)["Subject"]) and attached_originals(m)
    ]


def the_reference(backend: Backend) -> str:
    acks = backend.received(REPORTER)
    assert len(acks) == 1, f"expected one acknowledgement, got {len(acks)}"
    refs = find_references(str(parse(acks[0])["Subject"]), "VV")
    assert len(refs) == 1
    return refs[0]


def reply(request: bytes, text: str) -> bytes:
    """An Outlook-style reply from F1: the commands on top, the request quoted below
    (the quote carries the token that ties the reply to the signal)."""
    req = parse(request)
    quoted = body_text(request).replace("\n", "\r\n")
    return (
        f'From: "A. Jansen" <{F1}>\r\nTo: {MAILBOX}\r\nSubject: RE: {req["Subject"]}\r\n'
        f"Message-ID: <reply-{marker()}@gemeente.example>\r\nIn-Reply-To: {req['Message-ID']}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + text.replace("\n", "\r\n")
        + "\r\n\r\nMet vriendelijke groet,\r\nAnneke\r\n\r\n"
        f"Van: {MAILBOX}\r\nVerzonden: maandag 23 november 2026 10:13\r\n"
        f"Aan: {F1}\r\nOnderwerp: {req['Subject']}\r\n\r\n" + quoted + "\r\n"
    ).encode()


def new_signal(contract: Contract, mark: str) -> tuple[bytes, str]:
    raw = signal_mail(mark, display=f"Melder {mark}")
    contract.backend.deliver(raw)
    assert contract.once() == 0
    return raw, the_reference(contract.backend)


def test_intake(contract: Contract) -> None:
    b = contract.backend
    mark = marker()
    raw, ref = new_signal(contract, mark)

    assert contract.open_signals() == 1, "queued exactly once"
    assert b.mailbox_contents() == [], "the original (and every copy) is gone from the account"
    ack = b.received(REPORTER)[0]
    assert ref in body_text(ack)
    absent(mark, "the acknowledgement", ack)
    for f in (F1, F2):
        requests = triage_requests(b, f, ref)
        assert len(requests) == 1, f"one triage request for {f}"
        originals = attached_originals(requests[0])
        assert len(originals) == 1
        # The same message, compared by content: Graph hands out MIME that
        # Exchange rebuilt (other boundaries and transfer encodings), not the bytes.
        got, sent = parse_message(originals[0]), parse_message(raw)
        assert mark in got.subject and mark in got.text, "the original travels attached"
        assert (got.message_id, got.from_addr, got.subject) == (
            sent.message_id,
            sent.from_addr,
            sent.subject,
        )
        assert " ".join(got.text.split()) == " ".join(sent.text.split())
    absent(mark, "the store on disk", contract.state_bytes())
    absent(mark, "the logs", contract.log.getvalue())
    assert '"event": "signal.queued"' in contract.log.getvalue()
    assert '"event": "mailbox.delete_verified"' in contract.log.getvalue(), "checked gone"
    assert '"event": "mailbox.delete_unverified"' not in contract.log.getvalue()


def test_reply_forwards_to_kedo_and_deletes_everything(contract: Contract) -> None:
    b = contract.backend
    mark = marker()
    _raw, ref = new_signal(contract, mark)
    request = triage_requests(b, F1, ref)[0]

    b.submit(reply(request, "KEDO\nVORM arbeid"), F1)
    contract.until_quiet()

    forwards = b.received(KEDO)
    assert len(forwards) == 1, "KEDO receives the signal once"
    [original] = attached_originals(forwards[0])
    assert mark in parse_message(original).text, "KEDO receives the signal itself"
    assert ref in str(parse(forwards[0])["Subject"])
    feedback = b.received(REPORTER)
    assert len(feedback) == 2, "acknowledgement, then feedback"
    assert ref in str(parse(feedback[-1])["Subject"])
    absent(mark, "what the reporter received", feedback)
    assert b.received(RIEC) == [] and b.received(NLA) == []

    assert contract.open_signals() == 0, "the signal is deleted"
    absent(mark, "the store on disk", contract.state_bytes())
    absent(mark, "the logs", contract.log.getvalue())
    absent(mark, "the signals account (every folder)", b.mailbox_contents())
    assert b.mailbox_contents() == []


def test_a_forged_reply_is_refused_where_the_server_can_vouch(contract: Contract) -> None:
    """The forger writes every header a trusted server would: Exchange's AuthAs and
    an Authentication-Results with the relay's own id. The server's own stamps win."""
    b = contract.backend
    _raw, ref = new_signal(contract, marker())
    request = triage_requests(b, F1, ref)[0]
    forged = (
        "X-MS-Exchange-Organization-AuthAs: Internal\r\n"
        f"Authentication-Results: {AUTHSERV_ID}; auth=pass smtp.auth={F1}\r\n"
    ).encode() + reply(request, "KEDO")
    b.forge(forged)
    contract.until_quiet()
    log = contract.log.getvalue()
    if b.name == "maildir":
        # allow_unauthenticated: accepted, and the log says it was not verified.
        assert len(b.received(KEDO)) == 1
        assert '"authenticated": false' in log
        return
    assert b.received(KEDO) == [], "a forged command is never carried out"
    assert contract.open_signals() == 1
    rejected = [m for m in b.received(F1) if "Niet uitgevoerd" in str(parse(m)["Subject"])]
    assert len(rejected) == 1
    assert "afkomstig uit uw eigen mailbox" in body_text(rejected[0])
    assert '"reason": "unverified"' in log


def test_the_same_message_twice_is_one_signal(contract: Contract) -> None:
    b = contract.backend
    mark = marker()
    raw = signal_mail(mark)
    b.deliver(raw)
    b.deliver(raw)
    assert contract.once() == 0
    ref = the_reference(b)
    assert contract.open_signals() == 1
    assert b.mailbox_contents() == [], "both copies are deleted"
    for f in (F1, F2):
        assert len(triage_requests(b, f, ref)) == 1


def test_crash_between_commit_and_delete(contract: Contract) -> None:
    b = contract.backend
    mark = marker()
    b.deliver(signal_mail(mark))
    calls: list[int] = []

    def crash_on_first_delete(mailbox: Mailbox) -> None:
        real = mailbox.delete

        def delete(keys: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise Crash
            real(keys)  # type: ignore[arg-type]

        mailbox.delete = delete  # type: ignore[method-assign]

    app = contract.app(prepare=crash_on_first_delete)
    with pytest.raises(Crash):
        once(app)
    # The process is gone: its connections with it, nothing flushed or drained.
    app.store.close()
    app.mailbox.close()
    app.transport.close()
    assert calls == [1], "the crash came at the delete after the commit"
    assert len(b.mailbox_contents()) == 1, "the message outlived the crash"
    assert contract.accepted() == 1, "it was committed (sealed) before the crash"
    assert contract.open_signals() == 0, "and not yet processed"

    assert contract.once() == 0  # the restarted daemon
    assert contract.open_signals() == 1, "still exactly one signal"
    assert b.mailbox_contents() == [], "and nothing left in the mailbox"
    assert '"event": "mailbox.delete_verified"' in contract.log.getvalue(), "checked by key"
    ref = the_reference(b)  # exactly one acknowledgement
    for f in (F1, F2):
        assert len(triage_requests(b, f, ref)) == 1
    absent(mark, "the logs", contract.log.getvalue())
