"""The signals mailbox and the outgoing mail as the contract tests see them: the same
small API whatever backend serves them.

``backend`` is parametrised over:

- ``imap``: the real Dovecot + SMTP relay of ``tests/conftest.py``;
- ``maildir``: a local Maildir as the mailbox, ``transport = "maildir"`` out;
- ``ews``: the fake Exchange Server (SOAP over TLS, Basic auth), sending via EWS;
- ``graph``: the fake Microsoft Graph + Entra ID (client credentials), sending via
  Graph ``sendMail``.

Each exposes ``config_sections()`` (its ``[mailbox]`` and ``[smtp]`` TOML),
``deliver(raw)``, ``mailbox_contents()`` (everything the account can still see, in
every folder, Sent Items and soft-deleted items included) and ``received(address)``
(what a recipient got; for EWS and Graph: what the fake recorded as sent to them).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Protocol

from fakes.ews_server import EwsServer
from fakes.graph_server import GraphServer
from fakes.token_server import TokenServer
from servers import AUTHSERV_ID
from world import (
    MAILBOX,
    TomlValue,
    ews_sections,
    exchange_delivery,
    graph_sections,
    imap_sections,
    maildir_sections,
    submit,
)

from inboxd.transport.own_headers import header_recipients

GRAPH_CLIENT = "5d1e6c2a-0b7f-4a8e-9c3d-2f1a0b9c8d7e"
GRAPH_SECRET = "contract~secret.0123456789abcdef"


class Backend(Protocol):
    name: str

    def config_sections(self) -> str:
        """Its ``[mailbox]`` and ``[smtp]`` sections (see ``world.config_text``)."""
        ...

    def deliver(self, raw: bytes) -> None: ...

    def submit(self, raw: bytes, sender: str) -> None:
        """Mail from a member of staff, with what the backend's server stamps as
        evidence of who sent it."""

    def evidence(self) -> dict[str, TomlValue | None]:
        """The ``world.config_text`` options that name that evidence."""
        ...

    def forge(self, raw: bytes) -> None:
        """Mail from outside that claims, in its own headers, to be from staff."""

    def mailbox_contents(self) -> list[bytes]: ...

    def received(self, address: str) -> list[bytes]: ...


def _secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def _maildir_files(box: Path, subs: tuple[str, ...] = ("new", "cur", "tmp")) -> list[bytes]:
    out: list[tuple[float, str, bytes]] = []
    for sub in subs:
        d = box / sub
        if d.is_dir():
            for p in d.iterdir():
                out.append((p.stat().st_mtime, p.name, p.read_bytes()))
    return [raw for *_, raw in sorted(out)]


class ImapBackend:
    name = "imap"

    def __init__(self, mail: object, root: Path) -> None:
        from servers import MailServer

        assert isinstance(mail, MailServer)
        self.mail = mail
        self.root = root

    def config_sections(self) -> str:
        pw = _secret_file(self.root / "imap-password", self.mail.password(MAILBOX))
        return imap_sections(
            imap_port=self.mail.imap_tls_port,
            smtp_port=self.mail.smtp_port,
            ca=self.mail.ca_file,
            password_file=pw,
            idle=False,
        )

    def deliver(self, raw: bytes) -> None:
        # APPEND: the bytes land unchanged, as a delivery would leave them.
        self.mail.append(MAILBOX, raw)

    def submit(self, raw: bytes, sender: str) -> None:
        submit(self.mail, raw, sender)

    def forge(self, raw: bytes) -> None:
        # Unauthenticated, through the relay, as mail from outside arrives.
        self.mail.deliver(raw, MAILBOX, mail_from="forger@evil.example")

    def evidence(self) -> dict[str, TomlValue | None]:
        return {"trusted": [AUTHSERV_ID]}

    def mailbox_contents(self) -> list[bytes]:
        return [m for msgs in self.mail.all_messages(MAILBOX).values() for m in msgs]

    def received(self, address: str) -> list[bytes]:
        return self.mail.messages(address)


class MaildirBackend:
    name = "maildir"

    def __init__(self, root: Path) -> None:
        self.box = root / "vreemdverhaal"
        self.out = root / "outgoing"
        for sub in ("new", "cur", "tmp"):
            (self.box / sub).mkdir(parents=True)

    def config_sections(self) -> str:
        return maildir_sections(self.box, self.out, poll_interval="1s")

    def deliver(self, raw: bytes) -> None:
        name = f"{secrets.token_hex(8)}.contract"
        tmp = self.box / "tmp" / name
        tmp.write_bytes(raw)
        os.rename(tmp, self.box / "new" / name)

    def submit(self, raw: bytes, sender: str) -> None:
        self.deliver(raw)

    def forge(self, raw: bytes) -> None:
        self.deliver(raw)

    def evidence(self) -> dict[str, TomlValue | None]:
        # Files dropped into a local folder: no server exists that could vouch.
        return {"trusted": None, "allow_unauthenticated": True}

    def mailbox_contents(self) -> list[bytes]:
        return _maildir_files(self.box)

    def received(self, address: str) -> list[bytes]:
        return _maildir_files(self.out / address.lower(), ("new", "cur"))


class EwsBackend:
    name = "ews"

    def __init__(self, server: EwsServer, root: Path) -> None:
        self.server = server
        self.root = root

    def config_sections(self) -> str:
        st = self.server.state
        return ews_sections(
            service_endpoint=self.server.url,
            username=st.username,  # DOMAIN\user
            password_file=_secret_file(self.root / "ews-password", st.password),
            poll_interval="1s",
        )

    def deliver(self, raw: bytes) -> None:
        self.server.deliver(raw)

    def submit(self, raw: bytes, sender: str) -> None:
        self.server.deliver(exchange_delivery(raw, internal=True))

    def forge(self, raw: bytes) -> None:
        self.server.deliver(exchange_delivery(raw, internal=False))

    def evidence(self) -> dict[str, TomlValue | None]:
        return {"trusted": None}  # exchange_internal is the default for ews

    def mailbox_contents(self) -> list[bytes]:
        st = self.server.state
        with st.lock:
            seen = [i.mime for i in st.items.values()]
            seen += [i.mime for i in st.recycle_bin]  # soft-deleted: still recoverable
            # SendAndSaveCopy / SaveOnly would leave a copy in a folder of the account.
            seen += [s.mime for s in st.sent if s.disposition != "SendOnly" or s.saved_folder]
        return seen

    def received(self, address: str) -> list[bytes]:
        a = address.lower()
        return [s.mime for s in self.server.sent if a in (t.lower() for t in s.to)]


class GraphBackend:
    name = "graph"

    def __init__(self, aad: TokenServer, graph: GraphServer, root: Path) -> None:
        self.aad = aad
        self.graph = graph
        self.root = root

    def config_sections(self) -> str:
        return graph_sections(
            tenant_id=self.aad.tenant_id,
            client_id=GRAPH_CLIENT,
            authority=self.aad.authority,
            endpoint=self.graph.endpoint,
            client_secret_file=_secret_file(self.root / "graph-secret", GRAPH_SECRET),
            poll_interval="1s",
        )

    def deliver(self, raw: bytes) -> None:
        self.graph.deliver(raw)

    def submit(self, raw: bytes, sender: str) -> None:
        self.graph.deliver(exchange_delivery(raw, internal=True))

    def forge(self, raw: bytes) -> None:
        self.graph.deliver(exchange_delivery(raw, internal=False))

    def evidence(self) -> dict[str, TomlValue | None]:
        return {"trusted": None}  # exchange_internal is the default for graph

    def mailbox_contents(self) -> list[bytes]:
        st = self.graph.state
        with st.lock:
            # Every folder: Inbox, Drafts (sent mail waiting for transport), Sent
            # Items, Recoverable Items.
            return [m.mime for m in st.messages.values()]

    def received(self, address: str) -> list[bytes]:
        a = address.lower()
        return [m for m in self.graph.state.sent if a in header_recipients(m)]
