"""The ``backend`` fixture of the contract tests: one parameter per backend (see
``contract_backends``). Only ``imap`` starts Dovecot and the relay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
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
from world import MAILBOX

BACKENDS = ["imap", "maildir", "ews", "graph"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
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
