"""Assembly: configuration in, the running parts out. Which backend class goes with
which setting is :mod:`inboxd.backends`'s knowledge."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from inboxd.backends.connect import Backends
from inboxd.config import Config
from inboxd.crypto import Keyring
from inboxd.ending import Ending
from inboxd.intake import Intake
from inboxd.logs import get_logger
from inboxd.mailbox.base import Mailbox
from inboxd.mailer import Mailer
from inboxd.outbox import Outbox
from inboxd.schedule import Jobs
from inboxd.sent_copies import StoredSentCopies, purge_sent_copies
from inboxd.sqlite_store import SqliteStore
from inboxd.store import Store
from inboxd.templates import Templates
from inboxd.transport.base import Transport
from inboxd.triage import Triage

log = get_logger(__name__)


@dataclass
class App:
    cfg: Config
    keyring: Keyring
    store: Store
    mailbox: Mailbox
    transport: Transport
    intake: Intake
    outbox: Outbox
    jobs: Jobs
    clock: Callable[[], float]
    # The work lock: one transaction at a time, whether the loop, a timed job, a
    # scrape or an admin command asks.
    lock: threading.RLock
    # A store given to build() is closed by whoever opened it, not by the App.
    owns_store: bool = True

    def close(self) -> None:
        # Graph: one more try at the Sent Items copies still awaited, so that the
        # end of ``inboxd once`` and a stopping daemon leave none behind.
        if self.transport.pending_copies():
            purge_sent_copies(self.transport, self.lock)
        self.mailbox.close()
        self.transport.close()
        if self.owns_store:
            self.store.close()


def open_store(cfg: Config, keyring: Keyring, clock: Callable[[], float] = time.time) -> Store:
    """The store in ``cfg``'s state directory; the one place that names its
    implementation (the daemon, ``inboxd once`` and the offline admin commands)."""
    return SqliteStore(cfg.state_dir, keyring, clock=clock)


def build(
    cfg: Config,
    *,
    clock: Callable[[], float] = time.time,
    mailbox: Mailbox | None = None,
    transport: Transport | None = None,
    store: Store | None = None,
    keyring: Keyring | None = None,
) -> App:
    """Everything ``cfg`` names, wired. A test passes the parts it brings itself:
    mail servers, a store (then also the keyring it was opened with), a keyring."""
    if keyring is None:
        keyring = Keyring.from_files(cfg.crypto.key_files)
    owns_store = store is None
    if store is None:
        store = open_store(cfg, keyring, clock)
    backends = Backends(cfg)
    mb = mailbox or backends.mailbox()
    # Graph's Sent Items copies still awaited live in the store, so a restart goes on
    # looking for them.
    tr = transport or backends.transport(copies=StoredSentCopies(store))
    return _wired(cfg, clock, keyring, store, mb, tr, owns_store=owns_store)


def _wired(
    cfg: Config,
    clock: Callable[[], float],
    keyring: Keyring,
    store: Store,
    mb: Mailbox,
    tr: Transport,
    *,
    owns_store: bool,
) -> App:
    """The services around the adapters, each given what it works with, in the order
    they depend on each other."""
    templates = Templates(cfg.language, cfg.templates_dir)
    mailer = Mailer(cfg, templates, clock, keyring)
    ending = Ending(cfg, store, mailer)
    triage = Triage(
        cfg=cfg,
        store=store,
        keyring=keyring,
        mailer=mailer,
        templates=templates,
        ending=ending,
        clock=clock,
    )
    intake = Intake(cfg, store, keyring, mb, mailer, templates, clock, replies=triage)
    outbox = Outbox(
        store, tr, clock, cfg.triage.forward_retry_for, outcomes=triage, templates=templates
    )
    lock = threading.RLock()
    jobs = Jobs(
        cfg=cfg,
        store=store,
        mailer=mailer,
        templates=templates,
        intake=intake,
        outbox=outbox,
        transport=tr,
        clock=clock,
        lock=lock,
    )
    return App(
        cfg=cfg,
        keyring=keyring,
        store=store,
        mailbox=mb,
        transport=tr,
        intake=intake,
        outbox=outbox,
        jobs=jobs,
        clock=clock,
        lock=lock,
        owns_store=owns_store,
    )
