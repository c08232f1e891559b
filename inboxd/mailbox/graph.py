"""Microsoft 365 mailbox over Microsoft Graph (app-only, httpx).

Keys are Graph message ids. New mail is found with a delta query on the folder
(``messages/delta``, ids and received times only); the ``@odata.deltaLink`` is
kept in memory and, when the daemon gives a path, in a small file written
atomically only after the last page of a round, so that a crash mid-paging leaves
the previous link. The first listing after :meth:`GraphMailbox.open` reports every
message in the folder, whatever the stored link says. An expired link (a 410, with
or without ``Location``, or a 400/404 ``syncStateNotFound``/``resyncRequired``)
means a round from the ``Location`` or from scratch, which lists everything anyway.

Throttling (429/503/504) is waited out as ``Retry-After`` says, bounded; a 401 is
answered by fetching a new token once (:mod:`inboxd.graph_client`, shared with
:mod:`inboxd.transport.graph`); the state file is :mod:`inboxd.sync_state`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from inboxd.graph_client import GraphClient, GraphConnection, GraphFailure, odata_quote
from inboxd.logs import get_logger
from inboxd.mailbox.base import Mailbox, MailboxError, MailboxItem
from inboxd.pace import Beat, rest
from inboxd.sync_state import fresh_items, keep_state, read_state
from inboxd.tokens import TokenSource

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = get_logger(__name__)

T = TypeVar("T")

PAGE_SIZE = 100
DELETIONS_PATH = "/mailFolders/recoverableitemsdeletions/messages"
MAX_DELTA_ROUNDS = 3  # delta rounds in one listing when links keep expiring

# Error codes that mean "this delta link is dead, synchronise again"
# (https://learn.microsoft.com/en-us/graph/delta-query-overview; SyncStateInvalid:
# a link made without the ImmutableId preference, alcionai/corso#3176).
_RESYNC_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})


def delta_expired(exc: GraphFailure) -> bool:
    """Whether a delta request failed because its link expired: a 410, or a 4xx
    (400 and 404 are both seen) with a resync code."""
    if exc.status == 410:
        return True
    return 400 <= exc.status < 500 and exc.code.lower() in _RESYNC_CODES


# --- the mailbox -----------------------------------------------------------------------


class GraphMailbox(Mailbox):
    """A folder of a Microsoft 365 mailbox (see the module docstring).

    ``folder`` is a well-known folder name (``inbox``) or a folder id.
    """

    name = "graph"

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        mailbox: str,
        token: TokenSource,
        *,
        folder: str = "inbox",
        delta_state_path: str | None = None,
        poll_interval: float = 60.0,
        **connection: Unpack[GraphConnection],
    ) -> None:
        self.client = GraphClient(mailbox, token, **connection)
        self.folder = folder
        self.delta_state_path = delta_state_path
        self.poll_interval = poll_interval
        self._folder_path = f"/mailFolders/{quote(folder, safe='-_=')}"
        self._delta_link: str | None = None
        self._first = True
        self._open = False
        self._seen: set[str] = set()
        self._scope = {
            "backend": "graph",
            "endpoint": self.client.endpoint,
            "tenant": tenant_id,
            "client": client_id,
            "mailbox": mailbox.lower(),
            "folder": folder,
        }

    def __repr__(self) -> str:
        return f"GraphMailbox({self.client.host!r})"

    def _call(self, fn: Callable[[], T], what: str) -> T:
        with self._failures(what):
            return fn()

    @contextlib.contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        try:
            yield
        except GraphFailure as exc:
            log.warning("mailbox.error", backend="graph", kind=what, error=exc.reason)
            raise MailboxError(
                f"graph {what}: {exc.reason}", auth=exc.auth, retry_after=exc.retry_after
            ) from None

    def _get_json(
        self, url: str, what: str, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        resp = self.client.request("GET", url, what=what, headers=headers)
        try:
            doc = resp.json()
        except ValueError:
            raise GraphFailure("response is not JSON", auth=False, temporary=True) from None
        if not isinstance(doc, dict):
            raise GraphFailure("response is not an object", auth=False, temporary=True)
        return doc

    # --- connection ---

    def open(self) -> None:
        self.close()

        def probe() -> None:
            try:
                self._get_json(self.client.url(self._folder_path + "?$select=id"), "open")
            except GraphFailure as exc:
                if exc.status in (400, 404):
                    # No such mailbox or folder: configuration, not a network blip.
                    raise GraphFailure(
                        exc.reason, auth=True, temporary=False, status=exc.status
                    ) from None
                raise

        self._call(probe, "open")
        self._open = True
        self._first = True
        self._seen = set()
        log.info("mailbox.open", backend="graph", host=self.client.host, folder=self.folder)

    def close(self) -> None:
        self._open = False
        self.client.close()

    def _require(self) -> None:
        if not self._open:
            raise MailboxError("graph: not open")

    # --- listing ---

    def list_new(self) -> list[str]:
        self._require()
        present: list[tuple[str, str]] = []
        link = self._delta_link
        if self._first:
            link = read_state(self.delta_state_path, self._scope)
            if link is not None and not link.startswith(self.client.endpoint + "/"):
                link = None
            if link is not None:
                present = self._call(self._list_all, "list")
        changes, new_link = self._call(lambda: self._delta(link), "delta")
        fresh, removed = fresh_items(present, changes, self._seen)
        self._seen -= removed
        ordered = sorted(fresh, key=lambda k: fresh[k])  # ISO 8601 UTC sorts as text
        keep_state(self.delta_state_path, self._scope, new_link, "delta state")
        self._delta_link = new_link
        self._first = False
        self._seen.update(ordered)
        if ordered:
            log.info("mailbox.listed", backend="graph", count=len(ordered))
        return ordered

    def _delta(self, link: str | None) -> tuple[list[tuple[bool, str, str]], str]:
        """A delta round from ``link`` (from scratch when None). A link the service
        no longer honours, in any of the forms it uses, means a round from where
        the service says (a 410's ``Location``) or from scratch: that lists every
        message in the folder, and what was listed before is known by key, so
        nothing is lost and nothing is listed twice."""
        rounds = 0
        while True:
            rounds += 1
            try:
                return self._delta_round(link)
            except GraphFailure as exc:
                if not delta_expired(exc) or rounds >= MAX_DELTA_ROUNDS:
                    raise  # expired again and again: the next cycle tries anew
                restart = exc.location if exc.status == 410 else None
                if restart is not None and (
                    restart == link or not restart.startswith(self.client.endpoint + "/")
                ):
                    restart = None
                log.warning(
                    "mailbox.state_ignored",
                    backend="graph",
                    kind="delta_expired",
                    code=exc.status,
                    reason=exc.code or "-",
                    restart="location" if restart else "scratch",
                )
                link = restart

    def _delta_round(self, link: str | None) -> tuple[list[tuple[bool, str, str]], str]:
        """One delta round to its last page. Nothing is kept from an unfinished round."""
        url = link or self.client.url(
            self._folder_path + "/messages/delta?$select=id,receivedDateTime"
        )
        prefer = {"Prefer": f"odata.maxpagesize={PAGE_SIZE}"}
        out: list[tuple[bool, str, str]] = []
        while True:
            page = self._get_json(url, "delta", headers=prefer)
            for entry in page.get("value", []):
                key = entry.get("id")
                if not isinstance(key, str):
                    continue
                out.append(("@removed" in entry, key, str(entry.get("receivedDateTime") or "")))
            if "@odata.nextLink" in page:
                url = str(page["@odata.nextLink"])
                continue
            if "@odata.deltaLink" in page:
                return out, str(page["@odata.deltaLink"])
            raise GraphFailure("delta page without next or delta link", auth=False, temporary=True)

    def _list_all(self) -> list[tuple[str, str]]:
        url = self.client.url(
            self._folder_path
            + f"/messages?$select=id,receivedDateTime&$orderby=receivedDateTime%20asc&$top={PAGE_SIZE}"
        )
        out: list[tuple[str, str]] = []
        while True:
            page = self._get_json(url, "list")
            for entry in page.get("value", []):
                if isinstance(entry.get("id"), str):
                    out.append((entry["id"], str(entry.get("receivedDateTime") or "")))
            if "@odata.nextLink" not in page:
                return out
            url = str(page["@odata.nextLink"])

    # --- content ---

    def _message_url(self, key: str, suffix: str = "") -> str:
        return self.client.url(f"/messages/{quote(key, safe='-_=')}{suffix}")

    def fetch(self, keys: Sequence[str], *, beat: Beat = rest) -> Iterator[MailboxItem]:
        self._require()
        for key in keys:
            with self._failures("fetch"):
                resp = self.client.request(
                    "GET", self._message_url(key, "/$value"), what="fetch", tolerate=(404,)
                )
            if resp.status_code == 404:
                continue
            yield MailboxItem(key, resp.content)

    def delete(self, keys: Sequence[str]) -> None:
        self._require()
        for key in keys:
            with self._failures("delete"):
                self.client.request(
                    "POST",
                    self._message_url(key, "/permanentDelete"),
                    what="delete",
                    ok=(200, 204),
                    tolerate=(404,),
                )
            self._seen.discard(key)
        log.info("mailbox.deleted", backend="graph", count=len(keys))

    def verify_deleted(self, keys: Sequence[str], message_ids: Sequence[str]) -> list[str]:
        """Keys of messages still there: any of ``keys`` that still answers, and any
        message with one of ``message_ids`` in any mail folder of the mailbox
        (``/messages``) or in Recoverable Items\\Deletions
        (``recoverableitemsdeletions``, where the app may read it).

        What ``permanentDelete`` keeps under single item recovery or a hold goes to
        Recoverable Items\\Purges, which Graph cannot read: every check says so
        (``mailbox.verify_limited``), so that nobody takes "verified" to cover it.
        """
        self._require()
        if not keys and not message_ids:
            return []
        log.info(
            "mailbox.verify_limited",
            backend="graph",
            folder="recoverable_items_purges",
            reason="not_readable_by_graph",
        )
        still: list[str] = []
        for key in keys:
            with self._failures("verify"):
                resp = self.client.request(
                    "GET", self._message_url(key, "?$select=id"), what="verify", tolerate=(404,)
                )
            if resp.status_code != 404:
                still.append(key)
        places = ["/messages", DELETIONS_PATH]
        for mid in message_ids:
            if not mid:
                continue
            flt = quote(f"internetMessageId eq {odata_quote(mid)}", safe="")
            for place in places:
                url = self.client.url(place + f"?$select=id&$filter={flt}")
                with self._failures("verify"):
                    resp = self.client.request("GET", url, what="verify", tolerate=(403, 404))
                if resp.status_code in (403, 404):
                    log.info(
                        "mailbox.verify_limited",
                        backend="graph",
                        folder="recoverable_items_deletions",
                        reason="not_permitted",
                    )
                    places = places[:1]
                    continue
                try:
                    found = resp.json().get("value", [])
                except (ValueError, AttributeError):
                    raise MailboxError("graph verify: response is not JSON") from None
                for entry in found:
                    item = entry.get("id") if isinstance(entry, dict) else None
                    if isinstance(item, str) and item not in still:
                        still.append(item)
        return still

    def recoverable_items_reach(self) -> dict[str, str]:
        """What ``inboxd check`` reports: which parts of Recoverable Items this app
        can look into after a hard delete (``readable``, ``not permitted``, or
        ``not readable by Graph``)."""
        self._require()
        with self._failures("check"):
            resp = self.client.request(
                "GET",
                self.client.url(DELETIONS_PATH + "?$select=id&$top=1"),
                what="check",
                tolerate=(403, 404),
            )
        deletions = "not permitted" if resp.status_code in (403, 404) else "readable"
        return {"Deletions": deletions, "Purges": "not readable by Graph"}

    def wait(self, timeout: float, stop: threading.Event) -> None:
        stop.wait(max(0.0, min(timeout, self.poll_interval)))
