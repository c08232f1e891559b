"""Exchange Server mailbox over EWS (exchangelib), with an explicit service endpoint.

Keys are EWS item ids. New mail is found with ``SyncFolderItems``; its sync state
is kept in memory and, when the daemon gives a path, in a small file written
atomically only once a sync ran to its end, so that a crash mid-paging leaves the
previous state. The first listing after :meth:`EwsMailbox.open` reports every
message in the folder (``FindItem``), whatever the stored state says: a crash
may have left messages that were listed but never queued.

exchangelib runs with its fail-fast policy; throttling (``ErrorServerBusy`` with the
server's back-off) is waited out here, bounded, and a 401 with an OAuth token is
answered by fetching a new token once.

The account set-up (:class:`EwsSettings`, :func:`connect`, :func:`call`) is
:mod:`inboxd.ews_account`, shared with :mod:`inboxd.transport.ews`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from exchangelib import Account
from exchangelib.errors import (
    ErrorAccessDenied,
    ErrorInvalidSyncStateData,
    ErrorItemNotFound,
)
from exchangelib.folders import DEEP, Folder, FolderCollection
from exchangelib.folders.known_folders import RecoverableItemsDeletions, RecoverableItemsPurges
from exchangelib.items import HARD_DELETE
from exchangelib.properties import CopiedEvent, CreatedEvent, ItemId, MovedEvent, NewMailEvent
from exchangelib.services import GetEvents

from inboxd.ews_account import EwsAccount, EwsFailure, call, connect, disconnect, settings_of
from inboxd.logs import get_logger
from inboxd.mailbox.base import Mailbox, MailboxError, MailboxItem
from inboxd.pace import Beat, rest
from inboxd.sync_state import fresh_items, keep_state, read_state

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = get_logger(__name__)

T = TypeVar("T")

# One MIME body per GetItem: a signal with attachments can be tens of MB, and
# exchangelib holds a whole response (base64) in memory while parsing it.
GET_CHUNK = 1
DELETE_CHUNK = 100
# A search for Message-IDs: this many ids in one restriction, over this many folders.
SEARCH_IDS = 20
SEARCH_FOLDERS = 50
PAGE_SIZE = 100  # FindItem page / SyncFolderItems MaxChangesReturned (Exchange caps at 512)
# Pull notifications (see EwsMailbox.wait): how often GetEvents is asked, and how
# long the server keeps an unasked subscription (minutes; each GetEvents renews it).
NOTIFY_INTERVAL = 2.0
SUBSCRIPTION_MINUTES = 10
MAX_EVENT_ROUNDS = 20  # GetEvents per wait step while the server says MoreEvents
NOTIFY_EVENT_TYPES = ("NewMailEvent", "CreatedEvent", "MovedEvent", "CopiedEvent")
_NEW_MAIL = (NewMailEvent, CreatedEvent, MovedEvent, CopiedEvent)
# Where Exchange keeps what was deleted: soft deletes in Deletions, hard deletes
# under single item recovery or a hold in Purges (both distinguished folders).
_RECOVERABLE_PARTS: tuple[tuple[str, type[Folder]], ...] = (
    ("Deletions", RecoverableItemsDeletions),
    ("Purges", RecoverableItemsPurges),
)


def in_chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


# --- the mailbox -----------------------------------------------------------------------


class EwsMailbox(Mailbox):
    """A folder of an Exchange mailbox over EWS (see the module docstring)."""

    name = "ews"

    def __init__(
        self,
        service_endpoint: str,
        username: str,
        *,
        folder: str = "inbox",
        poll_interval: float = 60.0,
        sync_state_path: str | None = None,
        notifications: bool = True,
        **account: Unpack[EwsAccount],
    ) -> None:
        if folder.lower() != "inbox":
            # Only the distinguished inbox: a folder path would need FindFolder
            # walks and a name that survives renames.
            raise ValueError('the EWS backend reads the inbox (folder = "inbox")')
        self.settings = settings_of(service_endpoint, username, **account)
        self.folder_name = "inbox"
        self.poll_interval = poll_interval
        self.sync_state_path = sync_state_path
        self.notifications = notifications
        self._notify_ok = notifications
        self._subscription: tuple[str, str] | None = None  # (id, watermark)
        self._account: Account | None = None
        self._folder: Folder | None = None
        self._sync_state: str | None = None
        self._first = True
        self._seen: set[str] = set()
        self._scope = {
            "backend": "ews",
            "endpoint": service_endpoint,
            "mailbox": self.settings.address.lower(),
            "folder": self.folder_name,
        }

    def __repr__(self) -> str:
        return f"EwsMailbox({self.settings.host!r})"

    # --- connection ---

    def open(self) -> None:
        self.close()
        account = connect(self.settings)
        try:
            folder = self._call(account, lambda: account.inbox, what="open")
        except MailboxError:
            disconnect(account)
            raise
        self._account, self._folder = account, folder
        # A new connection tries notifications again (the server may have been
        # restarted with them on); subscriptions expire by themselves, unasked.
        self._notify_ok = self.notifications
        self._subscription = None
        self._first = True
        self._seen = set()
        log.info("mailbox.open", backend="ews", host=self.settings.host, folder=self.folder_name)

    def close(self) -> None:
        account, self._account, self._folder = self._account, None, None
        disconnect(account)

    def _call(self, account: Account, fn: Callable[[], T], *, what: str) -> T:
        try:
            return call(self.settings, account, fn, what=what)
        except EwsFailure as exc:
            log.warning("mailbox.error", backend="ews", kind=what, error=exc.reason)
            raise MailboxError(
                f"ews {what}: {exc.reason}", auth=exc.auth, retry_after=exc.retry_after
            ) from None

    def _require(self) -> tuple[Account, Folder]:
        if self._account is None or self._folder is None:
            raise MailboxError("ews: not open")
        return self._account, self._folder

    # --- listing ---

    def list_new(self) -> list[str]:
        account, folder = self._require()
        present: list[tuple[str, Any]] = []
        state = self._sync_state
        if self._first:
            state = read_state(self.sync_state_path, self._scope)
            if state is not None:
                # What the last run may have listed without queueing is in the folder
                # still: list it all, then resume the incremental sync. (Without a
                # stored state the sync from scratch lists everything anyway.)
                present = self._call(account, lambda: self._find_all(folder), what="find")
        changes, new_state = self._call(account, lambda: self._sync(folder, state), what="sync")
        fresh, removed = fresh_items(
            present,
            ((kind == "delete", key, received) for kind, key, received in changes),
            self._seen,
        )
        self._seen -= removed
        # Oldest first; items without a received time keep the server's order.
        ordered = sorted(fresh, key=lambda k: (fresh[k] is None, fresh[k] or 0))
        keep_state(self.sync_state_path, self._scope, new_state, "sync state")
        self._sync_state = new_state
        self._first = False
        self._seen.update(ordered)
        if ordered:
            log.info("mailbox.listed", backend="ews", count=len(ordered))
        return ordered

    def _sync(self, folder: Folder, state: str | None) -> tuple[list[tuple[str, str, Any]], str]:
        """All changes since ``state`` (every item when None), and the new state.

        The generator is consumed to its end before anything is returned: only then
        has exchangelib the final sync state of the run. A state the server no
        longer accepts means a sync from scratch, which lists every item present.
        """
        try:
            return self._sync_once(folder, state)
        except ErrorInvalidSyncStateData:
            if state is None:
                raise
            log.warning("mailbox.state_ignored", backend="ews", kind="sync_state")
            return self._sync_once(folder, None)

    @staticmethod
    def _sync_once(folder: Folder, state: str | None) -> tuple[list[tuple[str, str, Any]], str]:
        folder.item_sync_state = state
        out: list[tuple[str, str, Any]] = []
        for change, item in folder.sync_items(
            sync_state=state,
            only_fields=["datetime_received"],
            max_changes_returned=PAGE_SIZE,
        ):
            if change == "delete":
                out.append(("delete", item.id, None))
            elif change == "read_flag_change":
                out.append(("update", item[0].id, None))
            else:
                out.append((change, item.id, getattr(item, "datetime_received", None)))
        new_state = folder.item_sync_state
        if not new_state:
            raise ErrorInvalidSyncStateData("no sync state in the response")
        return out, str(new_state)

    def _find_all(self, folder: Folder) -> list[tuple[str, Any]]:
        qs = folder.all().only("datetime_received").order_by("datetime_received")
        qs.page_size = PAGE_SIZE
        return [(item.id, item.datetime_received) for item in qs]

    # --- content ---

    def fetch(self, keys: Sequence[str], *, beat: Beat = rest) -> Iterator[MailboxItem]:
        account, folder = self._require()
        results = self._get_items(account, folder, keys, ["mime_content"], GET_CHUNK, "fetch")
        for key, result in results:
            if isinstance(result, ErrorItemNotFound):
                continue
            if isinstance(result, Exception):
                log.warning(
                    "mailbox.error", backend="ews", kind="fetch", error=type(result).__name__
                )
                raise MailboxError(
                    f"ews fetch: {type(result).__name__}",
                    auth=isinstance(result, ErrorAccessDenied),
                )
            raw = result.mime_content
            if raw is None:
                raise MailboxError("ews fetch: no MimeContent in the response")
            yield MailboxItem(key, bytes(raw))

    def _get_items(
        self,
        account: Account,
        folder: Folder,
        keys: Sequence[str],
        fields: list[str],
        chunk_size: int,
        what: str,
    ) -> Iterator[tuple[str, Any]]:
        """Each key with what GetItem answered for it (the item with ``fields``, or
        the error for that item), ``chunk_size`` keys a request, one request at a
        time as the caller goes on."""
        for chunk in in_chunks(keys, chunk_size):

            def get(chunk: list[str] = chunk) -> list[Any]:
                return list(
                    account.fetch(
                        ids=[ItemId(id=k) for k in chunk],
                        folder=folder,
                        only_fields=fields,
                        chunk_size=chunk_size,
                    )
                )

            yield from zip(chunk, self._call(account, get, what=what), strict=True)

    def delete(self, keys: Sequence[str]) -> None:
        account, _folder = self._require()
        failed: list[str] = []
        for chunk in in_chunks(keys, DELETE_CHUNK):

            def remove(chunk: list[str] = chunk) -> list[Any]:
                return list(
                    account.bulk_delete(
                        ids=[ItemId(id=k) for k in chunk],
                        delete_type=HARD_DELETE,
                        chunk_size=DELETE_CHUNK,
                    )
                )

            results = self._call(account, remove, what="delete")
            for key, result in zip(chunk, results, strict=True):
                if result is True or isinstance(result, ErrorItemNotFound):
                    self._seen.discard(key)
                else:
                    failed.append(type(result).__name__)
        if failed:
            log.warning(
                "mailbox.error", backend="ews", kind="delete", error=failed[0], count=len(failed)
            )
            raise MailboxError(
                f"ews delete: {failed[0]} ({len(failed)} not deleted)",
                auth=failed[0] == "ErrorAccessDenied",
            )
        log.info("mailbox.deleted", backend="ews", count=len(keys))

    def verify_deleted(self, keys: Sequence[str], message_ids: Sequence[str]) -> list[str]:
        """Keys of messages still there: any of ``keys`` that still exists, and any
        message whose Message-ID is one of ``message_ids`` in any mail folder or in
        Recoverable Items: Deletions (soft deletes) and Purges (where a hard delete
        lands while single item recovery or a hold is on). A part of Recoverable
        Items the account may not read is skipped and logged as
        ``mailbox.verify_limited``.
        """
        account, folder = self._require()
        results = self._get_items(account, folder, keys, ["id"], DELETE_CHUNK, "verify")
        still: list[str] = []
        for key, result in results:
            if isinstance(result, ErrorItemNotFound):
                continue
            if isinstance(result, Exception):
                raise MailboxError(f"ews verify: {type(result).__name__}")
            still.append(key)
        ids = [m for m in message_ids if m]
        if not ids:
            return still
        for key in self._found_by_message_id(account, ids):
            if key not in still:
                still.append(key)
        return still

    def _found_by_message_id(self, account: Account, ids: list[str]) -> list[str]:
        """Keys of the items with any of these Message-IDs, in every mail folder
        and the readable parts of Recoverable Items (a key may come twice)."""
        places = [*self._mail_folders(account), self._recoverable(account)]
        found: list[str] = []
        for chunk_ids in in_chunks(ids, SEARCH_IDS):
            for where in places:
                if not where:
                    continue

                def search(
                    where: list[Folder] = where, chunk_ids: list[str] = chunk_ids
                ) -> list[str]:
                    qs = FolderCollection(account=account, folders=where).filter(
                        message_id__in=chunk_ids
                    )
                    return [item.id for item in qs.only("id")]

                found += self._call(account, search, what="verify")
        return found

    def _mail_folders(self, account: Account) -> list[list[Folder]]:
        """Every mail folder under the mailbox's top (one FindFolder, deep: a rule or
        a colleague may have filed a copy anywhere), in groups of SEARCH_FOLDERS."""

        def find() -> list[Folder]:
            found = FolderCollection(
                account=account, folders=[account.msg_folder_root]
            ).find_folders(depth=DEEP)
            return [
                f
                for f in found
                if isinstance(f, Folder)
                and (f.folder_class is None or f.folder_class.startswith("IPF.Note"))
            ]

        return in_chunks(self._call(account, find, what="verify"), SEARCH_FOLDERS)

    def _recoverable(self, account: Account) -> list[Folder]:
        """The parts of Recoverable Items this account may read."""
        parts = (self._recoverable_part(account, *part) for part in _RECOVERABLE_PARTS)
        return [part for part in parts if part is not None]

    def _recoverable_part(
        self, account: Account, label: str, folder_cls: type[Folder]
    ) -> Folder | None:
        try:
            return self._call(
                account,
                lambda: folder_cls.get_distinguished(root=account.root),
                what="verify",
            )
        except MailboxError as exc:
            if not exc.auth:
                raise
            # Not permitted to look there: say so (every time), check the rest.
            log.info(
                "mailbox.verify_limited",
                backend="ews",
                folder=f"recoverable_items_{label.lower()}",
                reason="not_permitted",
            )
            return None

    def recoverable_items_reach(self) -> dict[str, str]:
        """What ``inboxd check`` reports: which parts of Recoverable Items this
        account can look into after a hard delete."""
        account, _folder = self._require()
        reach: dict[str, str] = {}
        for label, folder_cls in _RECOVERABLE_PARTS:
            part = self._recoverable_part(account, label, folder_cls)
            reach[label] = "readable" if part is not None else "not permitted"
        return reach

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Until the server announces new mail, ``timeout`` passes or ``stop`` is set.

        With a pull subscription (``Subscribe`` + ``GetEvents`` every
        :data:`NOTIFY_INTERVAL` seconds: one small request, no SyncFolderItems) new
        mail is noticed within seconds. Pull rather than streaming: a streaming
        ``GetStreamingEvents`` holds a request open for whole minutes, which a
        SIGTERM could not interrupt. A server that refuses subscriptions (or a
        subscription that cannot be renewed) means polling every ``poll_interval``
        until the next reconnect, logged once as ``mailbox.notify_unavailable``.
        """
        if not self._notify_ok or self._account is None or self._folder is None:
            stop.wait(max(0.0, min(timeout, self.poll_interval)))
            return
        deadline = time.monotonic() + max(0.0, timeout)
        while not stop.is_set():
            if self._announced(self._account, self._folder):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self._notify_ok:
                stop.wait(min(left, self.poll_interval))
                return
            stop.wait(min(NOTIFY_INTERVAL, left))

    def _announced(self, account: Account, folder: Folder) -> bool:
        """Whether new mail may be there: announced by an event, or a subscription
        was (re)made, and mail that came in before it would not be announced."""
        if self._subscription is None:
            try:
                sub_id, mark = call(
                    self.settings,
                    account,
                    lambda: folder.subscribe_to_pull(
                        event_types=NOTIFY_EVENT_TYPES, timeout=SUBSCRIPTION_MINUTES
                    ),
                    what="subscribe",
                )
            except EwsFailure as exc:
                self._notify_ok = False
                log.warning("mailbox.notify_unavailable", backend="ews", error=exc.reason)
                return False
            self._subscription = (str(sub_id), str(mark))
            return True
        sub_id, mark = self._subscription

        def poll() -> tuple[bool, str]:
            # Not Folder.get_events: with MoreEvents=true it asks again with the
            # same watermark, and the server answers the same events again. Each
            # request here carries the watermark of the last event received.
            found, latest = False, mark
            service = GetEvents(account=account)
            for _ in range(MAX_EVENT_ROUNDS):
                notification = service.get(subscription_id=sub_id, watermark=latest)
                for event in notification.events:
                    latest = event.watermark or latest
                    found = found or isinstance(event, _NEW_MAIL)
                if not notification.more_events or found:
                    break
            return found, latest

        try:
            found, latest = call(self.settings, account, poll, what="notify")
        except EwsFailure as exc:
            # Expired or forgotten (a server restart): subscribe afresh next time.
            log.info("mailbox.notify_renew", backend="ews", error=exc.reason)
            self._subscription = None
            return False
        self._subscription = (sub_id, latest)
        return found
