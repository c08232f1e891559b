"""A fake Microsoft Graph (v1.0) for one mailbox, over TLS on 127.0.0.1.

Serves the mail endpoints the Graph backend uses, with Graph's JSON shapes:

- ``GET  /v1.0/users/{m}/mailFolders/{folder}`` (``$select=id``)
- ``GET  /v1.0/users/{m}/mailFolders/{folder}/messages/delta`` — pages of
  ``odata.maxpagesize``, ``@odata.nextLink`` / ``@odata.deltaLink``, ``@removed``
  entries, 410 for a delta token it no longer knows
- ``GET  /v1.0/users/{m}/mailFolders/{folder}/messages`` (``$select``, ``$top``,
  ``$orderby=receivedDateTime asc``, ``$filter=internetMessageId eq '…'``, paging)
- ``GET  /v1.0/users/{m}/messages/{id}`` (``$select=id``) and ``…/$value`` (MIME)
- ``POST /v1.0/users/{m}/messages/{id}/permanentDelete`` (204)
- ``POST /v1.0/users/{m}/sendMail`` with ``text/plain`` base64 MIME (202), which,
  like Exchange Online, files a copy in Sent Items

Tokens are checked with the fake Entra ID (audience: this server's base URL); an
expired or revoked token gets Graph's 401 ``InvalidAuthenticationToken``. Faults
can be queued per route: 429/503 with ``Retry-After``, 401, 403, a dropped
connection. Requests that do not fit what Graph accepts get Graph's 400 and are
recorded in :attr:`GraphServer.protocol_errors`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import http.server
import io
import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from email import encoders
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import FakeHTTPServer
from .token_server import TokenServer


@dataclass
class GraphMessage:
    id: str
    mime: bytes
    received: dt.datetime
    internet_message_id: str
    # "inbox" | "drafts" | "sentitems" | "archive" | "recoverableitemsdeletions" |
    # "recoverableitemspurges" (out of Graph's reach, see _r_permanentDelete)
    folder: str
    # The id asked for with Prefer: IdType="ImmutableId": it stays with the item
    # when it moves; the default id changes with every move
    # (https://learn.microsoft.com/en-us/graph/outlook-immutable-id).
    immutable_id: str = ""
    # File attachments a draft received through upload sessions: (name, type, bytes).
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.immutable_id:
            self.immutable_id = "imm-" + self.id


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    route: str


@dataclass
class _Event:
    seq: int
    kind: str
    id: str


@dataclass
class _State:
    mailbox: str
    tokens: TokenServer
    messages: dict[str, GraphMessage] = field(default_factory=dict)
    events: list[_Event] = field(default_factory=list)
    seq: int = 0
    expired_before: int = 0  # delta and next links of rounds begun below this seq expire
    expire_in: tuple[int, str] | None = None  # (delta requests to go, form)
    expiry: str = "410"  # how an expired link is answered (see GraphServer.expire_delta_tokens)
    sent: list[bytes] = field(default_factory=list)
    permanent_deletes: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)
    faults: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)  # requests let through first
    file_sent_copies: bool = True
    # Sent messages still in Drafts, waiting for transport (default ids).
    held_copies: list[str] = field(default_factory=list)
    # Exchange may give the Sent Items copy a Message-ID of its own.
    rewrite_message_ids: bool = False
    # Upload sessions: token -> (draft id, name, content type, size, bytes so far).
    uploads: dict[str, tuple[str, str, str, int, bytearray]] = field(default_factory=dict)
    # $value answers MIME that Exchange rebuilt from its store (see rebuilt_mime).
    rebuild_mime: bool = True
    # The tenant's message size limit (MaxSendSize), on the message as transmitted.
    max_send_size: int = 150 * 1024 * 1024
    # A hold / single item recovery (on by default in Exchange Online):
    # permanentDelete keeps the item in Recoverable Items\Purges, which Graph
    # cannot read at all (see _r_permanentDelete for the source).
    hold: bool = False
    recoverable_readable: bool = True
    lock: threading.RLock = field(default_factory=threading.RLock)


class _Denied(Exception):
    pass


def new_message_id() -> str:
    # Graph REST ids: URL-safe base64 of the store entry id, padded.
    return base64.urlsafe_b64encode(b"\x00\x00\x03$\x00\x00" + secrets.token_bytes(136)).decode()


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _graph_error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }


class ProtocolError(Exception):
    pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"

    @property
    def fake(self) -> GraphServer:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    @property
    def state(self) -> _State:
        return self.fake.state

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        hdrs = {"request-id": str(uuid.uuid4()), **headers}
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(
        self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send(
            status,
            json.dumps(doc).encode(),
            {
                "Content-Type": "application/json;odata.metadata=minimal;charset=utf-8",
                **(headers or {}),
            },
        )

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        st = self.state
        route = self._route(method, parts.path)
        with st.lock:
            st.requests.append(
                Request(method, parts.path, query, dict(self.headers.items()), route)
            )
        if method == "PUT" and parts.path.startswith("/upload/"):
            self._upload(parts.path.removeprefix("/upload/"), query, body)
            return
        if not self.fake.tokens.check(self.headers.get("Authorization"), self.fake.base_url):
            self._json(
                *_graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    "Access token has expired or is not yet valid.",
                ),
                headers={
                    "WWW-Authenticate": (
                        'Bearer realm="", authorization_uri="https://login.microsoftonline.com/'
                        'common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'
                    )
                },
            )
            return
        with st.lock:
            queued = st.faults.get(route) or []
            fault = None
            if queued and st.passes.get(route, 0) > 0:
                st.passes[route] -= 1
            elif queued:
                fault = queued.pop(0)
        if fault is not None:
            status, hdrs = fault
            if status == 0:
                self.close_connection = True  # dropped without an answer
                return
            code, text = {
                429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
                503: ("ServiceUnavailable", "Service is temporarily unavailable."),
                401: (
                    "InvalidAuthenticationToken",
                    "Access token has expired or is not yet valid.",
                ),
                403: ("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
            }.get(status, ("UnknownError", ""))
            self._json(*_graph_error(status, code, text), headers=hdrs)
            return
        try:
            handler = getattr(self, f"_r_{route}", None)
            if handler is None:
                raise ProtocolError(f"unsupported {method} {parts.path}")
            handler(method, parts.path, query, body)
        except ProtocolError as exc:
            with st.lock:
                st.protocol_errors.append(str(exc))
            self._json(*_graph_error(400, "BadRequest", str(exc)))

    # --- routing --------------------------------------------------------------------

    _ROUTES = (
        ("GET", r"/mailFolders/(?P<f>[^/]+)/messages/delta", "delta"),
        ("GET", r"/mailFolders/(?P<f>[^/]+)/messages", "list"),
        ("GET", r"/messages", "list_all"),
        ("GET", r"/mailFolders/(?P<f>[^/]+)", "folder"),
        ("GET", r"/messages/(?P<id>[^/]+)/\$value", "value"),
        ("GET", r"/messages/(?P<id>[^/]+)", "message"),
        ("POST", r"/messages/(?P<id>[^/]+)/permanentDelete", "permanentDelete"),
        ("POST", r"/sendMail", "sendMail"),
        ("POST", r"/messages", "create"),
        ("POST", r"/messages/(?P<id>[^/]+)/send", "send"),
        ("POST", r"/messages/(?P<id>[^/]+)/attachments/createUploadSession", "uploadSession"),
    )

    def _route(self, method: str, path: str) -> str:
        prefix = f"/v1.0/users/{quote(self.state.mailbox, safe='@')}"
        if not path.startswith(prefix):
            return "unknown"
        rest = path[len(prefix) :]
        for m, pattern, name in self._ROUTES:
            match = re.fullmatch(pattern, rest)
            if m == method and match:
                self._params = {k: unquote(v) for k, v in match.groupdict().items()}
                return name
        return "unknown"

    def _folder(self) -> str:
        folder = self._params["f"].lower()
        if folder == "recoverableitemsdeletions" and not self.state.recoverable_readable:
            raise _Denied
        if folder not in ("inbox", "drafts", "sentitems", "archive", "recoverableitemsdeletions"):
            # Not a well-known folder name Graph knows (Purges is none:
            # https://learn.microsoft.com/en-us/graph/api/resources/mailfolder).
            raise ProtocolError(f"unknown folder {folder}")
        return folder

    def _select(self, query: dict[str, str], allowed: set[str]) -> list[str]:
        sel = [s.strip() for s in query.get("$select", "").split(",") if s.strip()]
        if not sel:
            raise ProtocolError("$select missing: ask only for what is needed")
        extra = set(sel) - allowed
        if extra:
            raise ProtocolError(f"$select asks for {sorted(extra)}")
        return sel

    def _immutable(self) -> bool:
        return 'IdType="ImmutableId"' in self.headers.get("Prefer", "")

    def _lookup(self, key: str) -> GraphMessage | None:
        st = self.state
        with st.lock:
            if self._immutable():
                found = [m for m in st.messages.values() if m.immutable_id == key]
                return found[0] if found else None
            return st.messages.get(key)

    def _entry(self, msg: GraphMessage, sel: list[str]) -> dict[str, Any]:
        key = msg.immutable_id if self._immutable() else msg.id
        out: dict[str, Any] = {"@odata.etag": 'W/"CQAAABYAAAB' + msg.id[-12:] + '"', "id": key}
        if "parentFolderId" in sel:
            out["parentFolderId"] = FOLDER_IDS.get(msg.folder, "AAMkAGI2-" + msg.folder)
        if "isDraft" in sel:
            out["isDraft"] = msg.folder == "drafts"
        if "receivedDateTime" in sel:
            out["receivedDateTime"] = _stamp(msg.received)
        if "internetMessageId" in sel:
            out["internetMessageId"] = msg.internet_message_id
        return out

    def _link(self, path: str, **params: str) -> str:
        q = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return f"{self.fake.base_url}{path}?{q}"

    # --- handlers ----------------------------------------------------------------------

    def _r_folder(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        if self._params["f"].lower() not in FOLDER_IDS:
            self._json(*_graph_error(400, "ErrorInvalidIdMalformed", "Id is malformed."))
            return
        folder = self._folder()
        self._select(query, {"id", "displayName"})
        self._json(
            200,
            {
                "@odata.context": (
                    f"{self.fake.base_url}/v1.0/$metadata#users('{quote(self.state.mailbox)}')"
                    "/mailFolders(id)/$entity"
                ),
                "id": FOLDER_IDS[folder],
            },
        )

    def _r_delta(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        st = self.state
        with st.lock:
            if st.expire_in is not None:
                left, form = st.expire_in
                st.expire_in = (left - 1, form) if left > 1 else None
                if left <= 1:
                    self.fake.expire_delta_tokens(form)
        folder = self._folder()
        page_size = 10  # Graph's default for messages delta
        prefer = self.headers.get("Prefer", "")
        m = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        if m:
            page_size = int(m.group(1))
        if "$deltatoken" in query or "$skiptoken" in query:
            if set(query) - {"$deltatoken", "$skiptoken"}:
                raise ProtocolError("a delta or next link must be used as given")
            token = query.get("$deltatoken") or query["$skiptoken"]
            try:
                kind, since_s, offset_s, sel_s, born_s = (
                    base64.urlsafe_b64decode(token).decode().split("|")
                )
                since, offset, born = int(since_s), int(offset_s), int(born_s)
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise ProtocolError("malformed delta token") from None
            if born < st.expired_before:
                self._expired()
                return
            sel = sel_s.split(",")
        else:
            sel = self._select(query, {"id", "receivedDateTime"})
            since, offset, born = 0, 0, st.seq
        with st.lock:
            current = st.seq
            if since == 0:
                # Initial round: what is in the folder now.
                entries: list[dict[str, Any]] = [
                    self._entry(msg, sel) for msg in st.messages.values() if msg.folder == folder
                ]
            else:
                created_before = {e.id for e in st.events if e.kind == "create" and e.seq <= since}
                entries = []
                for ev in st.events:
                    if ev.seq <= since:
                        continue
                    msg = st.messages.get(ev.id)
                    if ev.kind == "create" and msg is not None and msg.folder == folder:
                        entries.append(self._entry(msg, sel))
                    elif ev.kind == "delete" and ev.id in created_before:
                        entries.append(
                            {
                                "@odata.type": "#microsoft.graph.message",
                                "id": ev.id,
                                "@removed": {"reason": "deleted"},
                            }
                        )
        page = entries[offset : offset + page_size]
        doc: dict[str, Any] = {
            "@odata.context": f"{self.fake.base_url}/v1.0/$metadata#Collection(message)",
            "value": page,
        }
        base = path
        if offset + page_size < len(entries):
            tok = base64.urlsafe_b64encode(
                f"skip|{since}|{offset + page_size}|{','.join(sel)}|{born}".encode()
            ).decode()
            doc["@odata.nextLink"] = self._link(base, **{"$skiptoken": tok})
        else:
            tok = base64.urlsafe_b64encode(
                f"delta|{current}|0|{','.join(sel)}|{current}".encode()
            ).decode()
            doc["@odata.deltaLink"] = self._link(base, **{"$deltatoken": tok})
        self._json(200, doc)

    def _expired(self) -> None:
        """A delta or next link the service no longer honours, in each form Graph
        uses. https://learn.microsoft.com/en-us/graph/delta-query-overview names two
        resync signals for Outlook resources: 410 Gone with a Location header (after
        tenant maintenance or migration) and a 40x with ``syncStateNotFound`` when
        the token expired (its lifetime depends on an internal cache, no fixed
        days). Users report 410 ``SyncStateNotFound`` without Location
        (microsoftgraph/microsoft-graph-docs#2350), expired next links within a
        round (#2162) and 400 ``syncStateNotFound``
        (devblogs.microsoft.com/microsoft365dev/duration-of-change-tracking-tokens-
        for-identity-and-education-resources); ``resyncRequired`` is in Graph's
        error-code list (https://learn.microsoft.com/en-us/graph/errors)."""
        text = (
            "The sync state generation is not found. The delta token is expired and "
            "data must be synchronized again."
        )
        form = self.state.expiry
        if form == "410-location":
            fresh = self._link(self.path.split("?", 1)[0], **{"$select": "id,receivedDateTime"})
            self._json(*_graph_error(410, "SyncStateNotFound", text), headers={"Location": fresh})
        elif form == "410":
            self._json(*_graph_error(410, "SyncStateNotFound", text))
        else:
            status, code = form.split("-", 1)
            self._json(*_graph_error(int(status), code, text))

    def _r_list_all(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        """``/users/{id}/messages``: every mail folder, not Recoverable Items."""
        self._r_list(method, path, query, body, everywhere=True)

    def _r_list(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        *,
        everywhere: bool = False,
    ) -> None:
        st = self.state
        try:
            folder = "" if everywhere else self._folder()
        except _Denied:
            self._json(*_graph_error(403, "ErrorAccessDenied", "Access is denied."))
            return
        sel = self._select(
            query, {"id", "receivedDateTime", "internetMessageId", "isDraft", "parentFolderId"}
        )
        top = int(query.get("$top", "10"))
        skip = int(query.get("$skip", "0"))
        with st.lock:
            msgs = [
                m
                for m in st.messages.values()
                if m.folder == folder or (everywhere and m.folder not in _RECOVERABLE)
            ]
        flt = query.get("$filter")
        if flt is not None:
            m = re.fullmatch(r"internetMessageId eq '((?:[^']|'')*)'", flt)
            if not m:
                raise ProtocolError(f"unsupported $filter {flt!r}")
            wanted = m.group(1).replace("''", "'")
            msgs = [x for x in msgs if x.internet_message_id == wanted]
        order = query.get("$orderby")
        if order is not None:
            if order not in ("receivedDateTime asc", "receivedDateTime desc", "receivedDateTime"):
                raise ProtocolError(f"unsupported $orderby {order!r}")
            msgs.sort(key=lambda x: x.received, reverse=order.endswith("desc"))
        page = msgs[skip : skip + top]
        doc: dict[str, Any] = {
            "@odata.context": f"{self.fake.base_url}/v1.0/$metadata#users('x')/messages",
            "value": [self._entry(x, sel) for x in page],
        }
        if skip + top < len(msgs):
            nxt = dict(query)
            nxt["$skip"] = str(skip + top)
            doc["@odata.nextLink"] = self._link(path, **nxt)
        self._json(200, doc)

    def _not_found(self) -> None:
        self._json(
            *_graph_error(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        )

    def _r_message(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        sel = self._select(query, {"id", "isDraft", "parentFolderId"})
        msg = self._lookup(self._params["id"])
        if msg is None or msg.folder == "recoverableitemspurges":
            self._not_found()
            return
        self._json(200, self._entry(msg, sel))

    def _r_value(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        msg = self._lookup(self._params["id"])
        if msg is None or msg.folder == "recoverableitemspurges":
            self._not_found()
            return
        mime = rebuilt_mime(msg.mime) if self.state.rebuild_mime else msg.mime
        self._send(200, mime, {"Content-Type": "text/plain"})

    def _r_permanentDelete(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> None:
        if body:
            raise ProtocolError("permanentDelete takes no body")
        st = self.state
        with st.lock:
            found = self._lookup(self._params["id"])
            st.permanent_deletes.append(self._params["id"])
            if found is None or found.folder == "recoverableitemspurges":
                self._not_found()
                return
            key = found.id
            if st.hold:
                # "Permanently delete a message and place it in the Purges folder in the
                # dumpster in the user's mailbox. Email clients such as Outlook or Outlook
                # on the web can't access permanently deleted items. Unless there's a
                # hold set on the mailbox, the items are permanently deleted after a set
                # period of time." (https://learn.microsoft.com/en-us/graph/api/
                # message-permanentdelete). Single item recovery keeps them 14 days by
                # default in Exchange Online. Purges is not a well-known folder name in
                # Graph: no Graph request reaches the item any more.
                kept = st.messages[key]
                self.fake._remove(key)
                st.messages[key] = GraphMessage(
                    kept.id, kept.mime, kept.received, kept.internet_message_id,
                    "recoverableitemspurges", kept.immutable_id,
                )  # fmt: skip
            else:
                self.fake._remove(key)
        self._send(204, b"", {})

    def _mime_body(self, body: bytes) -> bytes | None:
        """The MIME of a request that carries it (sendMail, create message), or None
        when Graph's error was answered."""
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("text/plain"):
            raise ProtocolError(f"MIME needs Content-Type text/plain, got {ctype!r}")
        if len(body) > MAX_REQUEST_BYTES:
            # "the request size limit is generally around 4 MB. If your request
            # exceeds this size, you will encounter a 413 error" (Microsoft's answer
            # at learn.microsoft.com/en-in/answers/questions/1824204); base64 makes
            # that about 3 MB of MIME.
            self._json(
                *_graph_error(413, "RequestEntityTooLarge", "The request body is too large.")
            )
            return None
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            self._json(
                *_graph_error(
                    400,
                    "ErrorMimeContentInvalidBase64String",
                    "Invalid base64 string for MIME content.",
                )
            )
            return None

    def _draft(self, mime: bytes) -> GraphMessage:
        msg = GraphMessage(
            new_message_id(), mime, dt.datetime.now(dt.UTC), _header(mime, b"message-id"), "drafts"
        )
        self.state.messages[msg.id] = msg
        return msg

    def _transmit(self, msg: GraphMessage) -> None:
        """Hand a draft to transport: it leaves Drafts for Sent Items only once
        transport has it (at once, or at GraphServer.file_held_copies)."""
        st = self.state
        st.sent.append(msg.mime)
        if st.file_sent_copies:
            self.fake._file(msg.id)
        else:
            st.held_copies.append(msg.id)

    def _r_sendMail(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        # A MIME sendMail is created as a message in Drafts first and moved to Sent
        # Items once transport took it (a copy is always saved: saveToSentItems
        # exists only for JSON): https://learn.microsoft.com/en-us/graph/api/
        # user-sendmail, and users watching Drafts: microsoftgraph/msgraph-sdk-dotnet
        # #2947, microsoft-graph-docs#6250 (the Sent Items item is a new copy with a
        # new id).
        mime = self._mime_body(body)
        if mime is None:
            return
        with self.state.lock:
            self._transmit(self._draft(mime))
        self._send(202, b"", {})

    def _r_create(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        """``POST /messages`` with MIME: a draft (201), as Graph's create message."""
        mime = self._mime_body(body)
        if mime is None:
            return
        with self.state.lock:
            msg = self._draft(mime)
        self._json(201, self._entry(msg, ["id", "isDraft", "parentFolderId"]))

    def _r_send(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        if body:
            raise ProtocolError("send takes no body")
        with self.state.lock:
            msg = self._lookup(self._params["id"])
            if msg is None or msg.folder != "drafts":
                self._not_found()
                return
            if msg.attachments:
                msg.mime = _with_attachments(msg.mime, msg.attachments)
                msg.attachments = []
            if len(msg.mime) > self.state.max_send_size:
                # Exchange Online's message size limit (35 MB by default, up to
                # 150 MB, set per mailbox): the tip on https://learn.microsoft.com/
                # en-us/graph/api/attachment-createuploadsession.
                self._json(
                    *_graph_error(
                        413,
                        "ErrorMessageSizeExceeded",
                        "The message exceeds the maximum supported size.",
                    )
                )
                return
            self._transmit(msg)
        self._send(202, b"", {})

    def _r_uploadSession(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        """Large attachments (3 to 150 MB) go to a draft through an upload session:
        https://learn.microsoft.com/en-us/graph/api/attachment-createuploadsession
        and https://learn.microsoft.com/en-us/graph/outlook-large-attachments. The
        upload URL carries its own token: the PUTs must not send Authorization."""
        try:
            item = json.loads(body)["AttachmentItem"]
            name, size = str(item["name"]), int(item["size"])
            ctype = str(item.get("contentType") or "application/octet-stream")
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("createUploadSession needs AttachmentItem name and size") from None
        if item.get("attachmentType") != "file":
            raise ProtocolError("AttachmentItem attachmentType must be file")
        if not 0 < size <= 150 * 1024 * 1024:
            self._json(*_graph_error(400, "ErrorAttachmentSizeLimitExceeded", "Too large."))
            return
        with self.state.lock:
            msg = self._lookup(self._params["id"])
            if msg is None or msg.folder != "drafts":
                self._not_found()
                return
            token = secrets.token_urlsafe(16)
            self.state.uploads[token] = (msg.id, name, ctype, size, bytearray())
        self._json(
            201,
            {
                "@odata.context": f"{self.fake.base_url}/v1.0/$metadata#microsoft.graph.uploadSession",
                "uploadUrl": f"{self.fake.base_url}/upload/{token}?authtoken={secrets.token_hex(8)}",
                "expirationDateTime": _stamp(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)),
                "nextExpectedRanges": ["0-"],
            },
        )

    def _upload(self, token: str, query: dict[str, str], body: bytes) -> None:
        st = self.state
        try:
            if "Authorization" in self.headers:
                raise ProtocolError("the upload URL must be called without Authorization")
            if "authtoken" not in query:
                raise ProtocolError("the upload URL must be used as given")
            with st.lock:
                if token not in st.uploads:
                    self._not_found()
                    return
                draft, name, ctype, size, got = st.uploads[token]
                m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", self.headers.get("Content-Range", ""))
                if not m:
                    raise ProtocolError("PUT without Content-Range bytes a-b/total")
                first, last, total = (int(g) for g in m.groups())
                if total != size or first != len(got) or last - first + 1 != len(body):
                    raise ProtocolError("Content-Range does not continue the upload")
                if len(body) > 4 * 1024 * 1024:
                    raise ProtocolError("upload chunks are at most 4 MB")
                got += body
                if len(got) < size:
                    self._json(200, {"nextExpectedRanges": [f"{len(got)}"]})
                    return
                del st.uploads[token]
                msg = st.messages.get(draft)
                if msg is not None:
                    msg.attachments.append((name, ctype, bytes(got)))
            self._send(201, b"", {"Location": f"{self.fake.base_url}/attachments/{token}"})
        except ProtocolError as exc:
            with st.lock:
                st.protocol_errors.append(str(exc))
            self._json(*_graph_error(400, "BadRequest", str(exc)))


def rebuilt_mime(raw: bytes) -> bytes:
    """The MIME ``$value`` answers: Exchange does not keep a message's MIME, it
    generates it from the stored item ("Even though Outlook does not save messages
    in MIME format, you can use a $value segment to get the MIME content",
    microsoftgraph/microsoft-graph-docs#3564; https://learn.microsoft.com/en-us/
    graph/outlook-get-mime-message). So the bytes differ from what was delivered:
    headers re-folded, new boundaries (Exchange's ``_000_…_`` form, derived from the
    message so that the same message is rebuilt the same way), text parts in
    quoted-printable, other parts in base64. What does not parse is served as is."""
    try:
        msg = BytesParser(policy=compat32).parsebytes(raw)
        if msg.defects or any(p.defects for p in msg.walk()):
            return raw  # not clean enough for the fake to rebuild faithfully
        seed = hashlib.sha256(raw).hexdigest()[:24].upper()
        _rebuild(msg, seed, [0])
        out = io.BytesIO()
        BytesGenerator(
            out, mangle_from_=False, maxheaderlen=78, policy=compat32.clone(linesep="\r\n")
        ).flatten(msg)
        return out.getvalue()
    except Exception:
        return raw


def _rebuild(part: Message, seed: str, count: list[int]) -> None:
    # Unfolded values, so that the generator folds them at its own places (only
    # ASCII ones: the fake does not guess at raw 8-bit headers).
    items = list(part.items())
    if all(isinstance(v, str) and v.isascii() for _k, v in items):
        for key in {k for k, _ in items}:
            del part[key]
        for key, value in items:
            part[key] = re.sub(r"\r?\n[ \t]+", " ", value)
    if part.is_multipart():
        count[0] += 1
        part.set_boundary(f"_{count[0]:03d}_{seed}_")
        subparts = part.get_payload()
        assert isinstance(subparts, list)
        for sub in subparts:
            assert isinstance(sub, Message)
            _rebuild(sub, seed, count)
        return
    if part.get_content_type() == "message/rfc822":
        return
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return
    del part["Content-Transfer-Encoding"]
    if part.get_content_maintype() == "text":
        if cte == "quoted-printable":
            part["Content-Transfer-Encoding"] = cte
            return
        part.set_payload(data)
        encoders.encode_quopri(part)
    else:
        part.set_payload(data)
        encoders.encode_base64(part)


def _with_attachments(mime: bytes, files: list[tuple[str, str, bytes]]) -> bytes:
    """The message as Exchange transmits a draft with file attachments: its own
    MIME with each file appended as a part (message/rfc822 as it is, others in
    base64)."""
    head, _, body = mime.partition(b"\r\n\r\n")
    m = re.search(rb'boundary="?([^";\r\n]+)"?', head)
    if m is None:
        raise ProtocolError("the fake joins attachments to multipart drafts only")
    delim = b"--" + m.group(1)
    closing = body.rindex(delim + b"--")
    parts = []
    for name, ctype, data in files:
        if ctype.lower().startswith("message/rfc822"):
            part = (
                f'Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="{name}"\r\n\r\n'.encode()
                + data
            )
        else:
            encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
            part = (
                f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
                f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
            ).encode() + encoded
        parts.append(delim + b"\r\n" + part + b"\r\n")
    return head + b"\r\n\r\n" + body[:closing] + b"".join(parts) + body[closing:]


def _header(mime: bytes, name: bytes) -> str:
    for line in mime.split(b"\r\n\r\n", 1)[0].split(b"\n"):
        if line.lower().startswith(name + b":"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


_RECOVERABLE = ("recoverableitemsdeletions", "recoverableitemspurges")
MAX_REQUEST_BYTES = 4 * 1024 * 1024

FOLDER_IDS = {
    "inbox": "AQMkADAwATM0MDAAMS1iNTcwLWI2NTEtMDACLTAwCgAuAAADiQ8RE6fqaEOyolbOQFkY_wEAhpLPQ4Jl0km1OXh3XTeZLwAAAgEMAAAA",
    "sentitems": "AQMkADAwATM0MDAAMS1iNTcwLWI2NTEtMDACLTAwCgAuAAADiQ8RE6fqaEOyolbOQFkY_wEAhpLPQ4Jl0km1OXh3XTeZLwAAAgEJAAAA",
    "drafts": "AQMkADAwATM0MDAAMS1iNTcwLWI2NTEtMDACLTAwCgAuAAADiQ8RE6fqaEOyolbOQFkY_wEAhpLPQ4Jl0km1OXh3XTeZLwAAAgEPAAAA",
}


class GraphServer(FakeHTTPServer):
    def __init__(
        self, tokens: TokenServer, *, mailbox: str = "vreemdverhaal@gemeente.example"
    ) -> None:
        super().__init__(_Handler)
        self.tokens = tokens
        self.state = _State(mailbox, tokens)

    @property
    def endpoint(self) -> str:
        return self.base_url

    def _add(self, msg: GraphMessage) -> None:
        st = self.state
        with st.lock:
            st.messages[msg.id] = msg
            st.seq += 1
            st.events.append(_Event(st.seq, "create", msg.id))

    def _remove(self, key: str) -> None:
        st = self.state
        with st.lock:
            del st.messages[key]
            st.seq += 1
            st.events.append(_Event(st.seq, "delete", key))

    # --- what a test does ----------------------------------------------------------

    def deliver(
        self, mime: bytes, *, received: dt.datetime | None = None, folder: str = "inbox"
    ) -> str:
        with self.state.lock:
            when = received or dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC) + dt.timedelta(
                seconds=self.state.seq
            )
            msg = GraphMessage(new_message_id(), mime, when, _header(mime, b"message-id"), folder)
            if folder == "inbox":
                self._add(msg)
            else:  # not in the inbox's delta
                self.state.messages[msg.id] = msg
            return msg.id

    def remove(self, key: str) -> None:
        self._remove(key)

    def fail(
        self,
        route: str,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        after: int = 0,
    ) -> None:
        """After ``after`` good answers, the next ``times`` requests to ``route``
        (delta, list, folder, value, message, permanentDelete, sendMail) answer
        ``status`` (0: the connection drops without an answer)."""
        hdrs = {"Retry-After": retry_after} if retry_after is not None else {}
        with self.state.lock:
            self.state.faults.setdefault(route, []).extend([(status, hdrs)] * times)
            self.state.passes[route] = after

    def expire_delta_tokens(self, form: str = "410", *, after: int = 0) -> None:
        """Every delta and next link given out so far expires, answered as ``form``:
        "410", "410-location" (with a Location to start over from), or
        "<status>-<code>" such as "404-syncStateNotFound", "400-resyncRequired".
        With ``after``, that happens when the ``after``-th delta request from now
        arrives (so a round's next links can die between its pages)."""
        with self.state.lock:
            if after:
                self.state.expire_in = (after, form)
                return
            self.state.seq += 1  # links handed out from now on are new
            self.state.expired_before = self.state.seq
            self.state.expiry = form

    def hold_sent_copies(self) -> None:
        """Sent Items copies appear only at :meth:`file_held_copies` (Exchange files them
        a moment after the 202)."""
        self.state.file_sent_copies = False

    def file_held_copies(self) -> None:
        with self.state.lock:
            for key in self.state.held_copies:
                self._file(key)
            self.state.held_copies.clear()

    def _file(self, key: str) -> None:
        """A sent draft moves to Sent Items: a new default id, the same immutable
        id, and (``rewrite_message_ids``) a Message-ID of Exchange's own, as users
        report (mailcore2#1095; microsoft-graph-docs-contrib#7700)."""
        st = self.state
        with st.lock:
            msg = st.messages.pop(key, None)
            if msg is None:  # deleted while in Drafts
                return
            mid, mime = msg.internet_message_id, msg.mime
            if st.rewrite_message_ids:
                new_mid = f"<{secrets.token_hex(8)}@AM0PR07MB1234.eurprd07.prod.outlook.com>"
                mime = mime.replace(mid.encode(), new_mid.encode(), 1) if mid else mime
                mid = new_mid
            self._add(
                GraphMessage(
                    new_message_id(), mime, msg.received, mid, "sentitems", msg.immutable_id
                )
            )

    def folder(self, name: str) -> list[GraphMessage]:
        with self.state.lock:
            return [m for m in self.state.messages.values() if m.folder == name]

    @property
    def requests(self) -> list[Request]:
        return list(self.state.requests)

    def routes(self) -> list[str]:
        return [r.route for r in self.state.requests]

    @property
    def protocol_errors(self) -> list[str]:
        return list(self.state.protocol_errors)
