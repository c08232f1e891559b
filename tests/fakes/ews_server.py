"""A fake Exchange Server EWS endpoint (``/EWS/Exchange.asmx``) speaking SOAP 1.1.

It answers the operations the EWS backend sends — ``ConvertId`` (exchangelib's
version probe), ``GetFolder``, ``SyncFolderItems``, ``FindItem``, ``GetItem`` with
``MimeContent``, ``DeleteItem`` and ``CreateItem`` — with the envelopes Exchange
2019 returns, including the ``ServerVersionInfo`` header, message-level errors
(``ErrorItemNotFound``, ``ErrorAccessDenied``, ``ErrorInvalidSyncStateData``) and
the throttling fault (``ErrorServerBusy`` with ``BackOffMilliseconds``).

Requests are checked against the shapes the backend must send (XPath on the SOAP
body). A request that does not fit is answered with ``ErrorSchemaValidation``, as
Exchange would, and recorded in :attr:`EwsServer.protocol_errors` so that a test
can fail on it even where the client swallowed the error.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import spnego
import spnego.exceptions
from lxml import etree

from . import FakeHTTPServer
from .token_server import TokenServer

S = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
NS = {"s": S, "m": M, "t": T}

_VERSION_HEADER = (
    '<h:ServerVersionInfo MajorVersion="15" MinorVersion="2" MajorBuildNumber="1544" '
    'MinorBuildNumber="4" Version="V2017_07_11" '
    f'xmlns:h="{T}" xmlns="{T}" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema"/>'
)


class ProtocolError(Exception):
    """The client sent something Exchange would reject."""


@dataclass
class StoredItem:
    id: str
    changekey: str
    mime: bytes
    received: dt.datetime
    message_id: str
    # "inbox", a folder id of ``_State.folders``, "recoverable" (Recoverable
    # Items\Deletions) or "purges" (Recoverable Items\Purges)
    folder: str = "inbox"


@dataclass
class SentItem:
    mime: bytes
    to: list[str]
    disposition: str
    saved_folder: bool


@dataclass
class Call:
    operation: str
    body: etree._Element
    header: etree._Element | None
    http_headers: dict[str, str]


@dataclass
class _Event:
    seq: int
    kind: str  # "create" | "delete"
    item_id: str


@dataclass
class _State:
    username: str
    password: str
    mailbox: str
    auth: str
    tokens: TokenServer | None
    audience: str
    items: dict[str, StoredItem] = field(default_factory=dict)  # insertion = arrival order
    events: list[_Event] = field(default_factory=list)
    seq: int = 0
    sent: list[SentItem] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (item id, DeleteType)
    calls: list[Call] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)
    # operation -> queue of faults to answer with instead of doing the work
    faults: dict[str, list[str]] = field(default_factory=dict)
    hooks: dict[str, Callable[[], None]] = field(default_factory=dict)
    auth_failures: int = 0
    # Pull subscriptions: id -> the event seq its client has seen (the watermark).
    subscriptions: dict[str, int] = field(default_factory=dict)
    refuse_subscriptions: bool = False
    events_per_response: int = 50
    get_events_marks: list[int] = field(default_factory=list)  # watermark of each GetEvents
    # Mail folders besides the inbox (id -> display name), found by FindFolder.
    folders: dict[str, str] = field(default_factory=dict)
    # A hold or single item recovery: a HardDelete leaves the item in Recoverable
    # Items\Purges (see _op_DeleteItem). Each part of Recoverable Items may be
    # readable by the account or not (RBAC scope, impersonation rights).
    hold: bool = False
    recoverable_readable: bool = True  # Deletions
    purges_readable: bool = True
    recycle_bin: list[StoredItem] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)


_GONE = StoredItem("", "", b"", dt.datetime(2000, 1, 1, tzinfo=dt.UTC), "", "gone")


def new_item_id() -> str:
    # Real ids are base64 of ~110 bytes of store entry id, starting "AAMkA".
    return base64.b64encode(b"\x00\x00\x03$" + secrets.token_bytes(108)).decode()


def _changekey() -> str:
    return base64.b64encode(b"\x10\x00\x00\x00" + secrets.token_bytes(16)).decode()


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "Microsoft-IIS/10.0"
    protocol_version = "HTTP/1.1"
    # NTLM's handshake spans requests on one connection, i.e. one handler.
    _ntlm_ctx: spnego.ContextProxy | None = None
    _ntlm_user: str | None = None
    _ntlm_sent = False

    @property
    def state(self) -> _State:
        return self.server.fake.state  # type: ignore[attr-defined,no-any-return]

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _unauthorized(self) -> None:
        with self.state.lock:
            self.state.auth_failures += 1
        if self.state.auth == "oauth2":
            hdrs = {
                "WWW-Authenticate": (
                    'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
                    'token_types="app_asserted_user_v1 service_asserted_app_v1", '
                    'error="invalid_token"'
                ),
                "x-ms-diagnostics": (
                    '2000001;reason="The token has expired.";error_category="invalid_token"'
                ),
            }
        elif self.state.auth == "ntlm":
            hdrs = {"WWW-Authenticate": "NTLM"}
        else:
            hdrs = {"WWW-Authenticate": 'Basic realm="mail.example"'}
        self._send(401, b"", hdrs)

    def _authorized(self) -> bool:
        st = self.state
        header = self.headers.get("Authorization")
        if st.auth == "basic":
            want = base64.b64encode(f"{st.username}:{st.password}".encode()).decode()
            return header == f"Basic {want}"
        if st.auth == "oauth2":
            assert st.tokens is not None
            return st.tokens.check(header, st.audience)
        if st.auth == "ntlm":
            return self._ntlm(header)
        raise AssertionError(st.auth)

    def _ntlm(self, header: str | None) -> bool:
        """NTLM is per connection: Negotiate, a Challenge in a 401, Authenticate.

        Returns True once this connection is authenticated; otherwise it has sent
        the 401 itself (``_ntlm_sent``) or the caller sends a plain 401.
        """
        if self._ntlm_user is not None:
            return True
        if not header or not header.startswith("NTLM "):
            return False
        ctx = self._ntlm_ctx
        if ctx is None:
            # The acceptor reads the accounts from NTLM_USER_FILE (see EwsServer).
            ctx = self._ntlm_ctx = spnego.server(protocol="ntlm")
        try:
            out = ctx.step(base64.b64decode(header[5:]))
        except spnego.exceptions.SpnegoError:
            self._ntlm_ctx = None
            return False
        if not ctx.complete:
            self._ntlm_sent = True
            self._send(
                401,
                b"",
                {"WWW-Authenticate": "NTLM " + base64.b64encode(out or b"").decode()},
            )
            return False
        self._ntlm_ctx = None
        user = self._ntlm_user = ctx.client_principal
        return user is not None and user.lower() == self.state.username.lower()

    def do_GET(self) -> None:
        # Exchange answers browsers on the EWS URL with 401 too.
        self._unauthorized()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        if self.path.rstrip("/").lower() != "/ews/exchange.asmx":
            self._send(404, b"")
            return
        self._ntlm_sent = False
        if not self._authorized():
            if not self._ntlm_sent:
                self._unauthorized()
            return
        if not self.headers.get("Content-Type", "").startswith("text/xml"):
            self._send(415, b"")
            return
        try:
            root = etree.fromstring(data, parser=etree.XMLParser(resolve_entities=False))
        except etree.XMLSyntaxError:
            self._send(400, b"")
            return
        body = root.find(f"{{{S}}}Body")
        if body is None or len(body) == 0:
            self._fault("ErrorSchemaValidation", "No SOAP body.")
            return
        op_elem = body[0]
        op = etree.QName(op_elem).localname
        st = self.state
        header = root.find(f"{{{S}}}Header")
        with st.lock:
            st.calls.append(Call(op, op_elem, header, dict(self.headers.items())))
        if header is None or header.find(f"{{{T}}}RequestServerVersion") is None:
            self._protocol_error("no RequestServerVersion header")
            return
        if st.auth == "oauth2":
            # App-only tokens must say whose mailbox they act on (Exchange Online).
            who = header.findtext(
                f"{{{T}}}ExchangeImpersonation/{{{T}}}ConnectingSID/{{{T}}}PrimarySmtpAddress"
            )
            if (who or "").lower() != st.mailbox.lower():
                with st.lock:
                    st.protocol_errors.append("no ExchangeImpersonation header")
                self._fault(
                    "ErrorInvalidExchangeImpersonationHeaderData",
                    "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
                )
                return
        with st.lock:
            queued = st.faults.get(op) or []
            fault = queued.pop(0) if queued else None
            hook = st.hooks.pop(op, None)
        if hook is not None:
            hook()
        if fault in ("busy", "busy_long"):
            # Exchange Online answers throttling with ErrorServerBusy and a
            # BackOffMilliseconds that can be minutes; every request before it ends
            # prolongs it (https://learn.microsoft.com/en-us/exchange/client-developer/
            # exchange-web-services/ews-throttling-in-exchange; Office 365 clients that
            # kept asking: https://gitlab.gnome.org/GNOME/evolution-ews/-/issues/202).
            self._fault(
                "ErrorServerBusy",
                "The server cannot service this request right now. Try again later.",
                back_off_ms=2500 if fault == "busy" else 300_000,
            )
            return
        if fault == "drop":
            # The connection dies without an answer (a crash, a reset).
            self.close_connection = True
            return
        if fault == "http503":
            self._send(503, b"Service Unavailable", {"Content-Type": "text/html"})
            return
        if fault == "unauthorized":
            self._unauthorized()
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            self._protocol_error(f"unsupported operation {op}")
            return
        try:
            with st.lock:
                response = handler(op_elem, fault)
        except ProtocolError as exc:
            self._protocol_error(str(exc))
            return
        self._envelope(op, response)

    # --- envelopes ----------------------------------------------------------------

    def _envelope(self, op: str, messages: str) -> None:
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<s:Envelope xmlns:s="{S}"><s:Header>{_VERSION_HEADER}</s:Header>'
            '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
            f'<m:{op}Response xmlns:m="{M}" xmlns:t="{T}">'
            f"<m:ResponseMessages>{messages}</m:ResponseMessages>"
            f"</m:{op}Response></s:Body></s:Envelope>"
        )
        self._send(200, xml.encode(), {"Content-Type": "text/xml; charset=utf-8"})

    def _fault(self, code: str, text: str, back_off_ms: int | None = None) -> None:
        extra = (
            f'<t:MessageXml xmlns:t="{T}"><t:Value Name="BackOffMilliseconds">{back_off_ms}'
            "</t:Value></t:MessageXml>"
            if back_off_ms is not None
            else ""
        )
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<s:Envelope xmlns:s="{S}"><s:Body><s:Fault>'
            f'<faultcode xmlns:a="{T}">a:{code}</faultcode>'
            f'<faultstring xml:lang="en-US">{_esc(text)}</faultstring>'
            f'<detail><e:ResponseCode xmlns:e="{E}">{code}</e:ResponseCode>'
            f'<e:Message xmlns:e="{E}">{_esc(text)}</e:Message>{extra}</detail>'
            "</s:Fault></s:Body></s:Envelope>"
        )
        self._send(500, xml.encode(), {"Content-Type": "text/xml; charset=utf-8"})

    def _protocol_error(self, what: str) -> None:
        with self.state.lock:
            self.state.protocol_errors.append(what)
        self._fault("ErrorSchemaValidation", f"The request failed schema validation: {what}")

    @staticmethod
    def _message(op: str, inner: str = "") -> str:
        return (
            f'<m:{op}ResponseMessage ResponseClass="Success">'
            f"<m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{op}ResponseMessage>"
        )

    @staticmethod
    def _error(op: str, code: str, text: str) -> str:
        # Exchange serialises the (empty) sync fields in SyncFolderItems errors too.
        sync = (
            "<m:SyncState/><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>"
            if op == "SyncFolderItems"
            else ""
        )
        return (
            f'<m:{op}ResponseMessage ResponseClass="Error">'
            f"<m:MessageText>{_esc(text)}</m:MessageText>"
            f"<m:ResponseCode>{code}</m:ResponseCode>"
            f"<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{sync}</m:{op}ResponseMessage>"
        )

    def _access_denied(self, op: str) -> str:
        return self._error(
            op, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
        )

    # --- request checks -----------------------------------------------------------

    @staticmethod
    def _one(elem: etree._Element, path: str) -> etree._Element:
        found = elem.xpath(path, namespaces=NS)
        if len(found) != 1:
            raise ProtocolError(f"expected one {path}, found {len(found)}")
        return found[0]  # type: ignore[no-any-return]

    def _check_folder(self, elem: etree._Element, path: str) -> None:
        folder = self._one(elem, path)
        if folder.tag != f"{{{T}}}DistinguishedFolderId" or folder.get("Id") != "inbox":
            raise ProtocolError(f"unexpected folder {etree.tostring(folder)!r}")
        mbx = folder.find(f"{{{T}}}Mailbox/{{{T}}}EmailAddress")
        if mbx is not None and (mbx.text or "").lower() != self.state.mailbox.lower():
            raise ProtocolError("folder of another mailbox")

    # --- operations ---------------------------------------------------------------

    def _op_ConvertId(self, req: etree._Element, fault: str | None) -> str:
        return self._error("ConvertId", "ErrorInvalidIdMalformed", "Id is malformed.")

    def _op_GetFolder(self, req: etree._Element, fault: str | None) -> str:
        self._one(req, "m:FolderShape/t:BaseShape")
        ref = self._one(req, "m:FolderIds/*")
        wanted = ref.get("Id")
        if ref.tag == f"{{{T}}}DistinguishedFolderId":
            mbx = ref.find(f"{{{T}}}Mailbox/{{{T}}}EmailAddress")
            if mbx is not None and (mbx.text or "").lower() != self.state.mailbox.lower():
                raise ProtocolError("folder of another mailbox")
            wanted = {
                "root": _ROOT_ID,
                "inbox": _INBOX_ID,
                "msgfolderroot": _TOP_ID,
                "recoverableitemsdeletions": _RECOVERABLE_ID,
                "recoverableitemspurges": _PURGES_ID,
            }.get(wanted or "", "?")
        if fault == "access_denied":
            return self._access_denied("GetFolder")
        st = self.state
        if wanted in (_RECOVERABLE_ID, _PURGES_ID):
            readable = st.recoverable_readable if wanted == _RECOVERABLE_ID else st.purges_readable
            if not readable:
                return self._access_denied("GetFolder")
            name = "Deletions" if wanted == _RECOVERABLE_ID else "Purges"
            inner = (
                f'<t:FolderId Id="{_esc(wanted)}" ChangeKey="AQAAAA=="/>'
                f'<t:ParentFolderId Id="{_esc(_ROOT_ID)}" ChangeKey="AQAAAA=="/>'
                f"<t:DisplayName>{name}</t:DisplayName><t:TotalCount>0</t:TotalCount>"
                "<t:ChildFolderCount>0</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount>"
            )
        elif wanted == _TOP_ID:
            # "Top of Information Store": the folders a user sees live under it.
            inner = (
                f'<t:FolderId Id="{_esc(_TOP_ID)}" ChangeKey="AQAAAA=="/>'
                f'<t:ParentFolderId Id="{_esc(_ROOT_ID)}" ChangeKey="AQAAAA=="/>'
                "<t:FolderClass>IPF.Note</t:FolderClass>"
                "<t:DisplayName>Top of Information Store</t:DisplayName>"
                f"<t:TotalCount>0</t:TotalCount><t:ChildFolderCount>{1 + len(st.folders)}"
                "</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount>"
            )
        elif wanted == _ROOT_ID:
            # The mailbox root: no FolderClass, no name, one child (the IPM subtree).
            inner = (
                f'<t:FolderId Id="{_esc(_ROOT_ID)}" ChangeKey="AQAAAA=="/>'
                "<t:DisplayName></t:DisplayName><t:TotalCount>0</t:TotalCount>"
                "<t:ChildFolderCount>17</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount>"
            )
        elif wanted == _INBOX_ID:
            inner = (
                f'<t:FolderId Id="{_esc(_INBOX_ID)}" ChangeKey="AQAAABYAAAA="/>'
                f'<t:ParentFolderId Id="{_esc(_ROOT_ID)}" ChangeKey="AQAAAA=="/>'
                "<t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>Inbox</t:DisplayName>"
                f"<t:TotalCount>{len(st.items)}</t:TotalCount>"
                "<t:ChildFolderCount>0</t:ChildFolderCount>"
                f"<t:UnreadCount>{len(st.items)}</t:UnreadCount>"
            )
        else:
            return self._error(
                "GetFolder",
                "ErrorFolderNotFound",
                "The specified folder could not be found in the store.",
            )
        return self._message("GetFolder", f"<m:Folders><t:Folder>{inner}</t:Folder></m:Folders>")

    def _check_inbox_ref(self, req: etree._Element, path: str) -> None:
        folder = self._one(req, path)
        if folder.tag == f"{{{T}}}FolderId":
            if folder.get("Id") != _INBOX_ID:
                raise ProtocolError("unknown FolderId")
        else:
            self._check_folder(req, path)

    def _op_SyncFolderItems(self, req: etree._Element, fault: str | None) -> str:
        st = self.state
        shape = self._one(req, "m:ItemShape/t:BaseShape").text
        if shape != "IdOnly":
            raise ProtocolError(f"SyncFolderItems with BaseShape {shape}: ask only for ids")
        for uri in req.xpath("m:ItemShape/t:AdditionalProperties/*/@FieldURI", namespaces=NS):
            if uri in ("item:MimeContent", "item:Body", "item:Subject", "message:From"):
                raise ProtocolError(f"SyncFolderItems must not fetch content ({uri})")
        self._check_inbox_ref(req, "m:SyncFolderId/*")
        max_changes = int(self._one(req, "m:MaxChangesReturned").text or "0")
        if not 1 <= max_changes <= 512:
            raise ProtocolError("MaxChangesReturned out of range")
        if fault == "access_denied":
            return self._access_denied("SyncFolderItems")
        state_elem = req.find(f"{{{M}}}SyncState")
        since = 0
        if state_elem is not None and state_elem.text:
            try:
                token = base64.b64decode(state_elem.text, validate=True).decode()
                assert token.startswith("fake-sync:")
                since = int(token.split(":")[1])
                if since > st.seq:
                    raise ValueError
            except (ValueError, AssertionError, UnicodeDecodeError):
                return self._error(
                    "SyncFolderItems",
                    "ErrorInvalidSyncStateData",
                    "Synchronization state data is corrupt or otherwise invalid.",
                )
        created_before = {e.item_id for e in st.events if e.kind == "create" and e.seq <= since}
        changes: list[str] = []
        last = since
        pending = [e for e in st.events if e.seq > since]
        for ev in pending:
            if len(changes) == max_changes:
                break
            last = ev.seq
            if ev.kind == "create" and st.items.get(ev.item_id, _GONE).folder == "inbox":
                it = st.items[ev.item_id]
                changes.append(
                    "<t:Create><t:Message>"
                    f'<t:ItemId Id="{_esc(it.id)}" ChangeKey="{_esc(it.changekey)}"/>'
                    f"{self._received(req, it)}"
                    "</t:Message></t:Create>"
                )
            elif ev.kind == "delete" and ev.item_id in created_before:
                changes.append(f'<t:Delete><t:ItemId Id="{_esc(ev.item_id)}"/></t:Delete>')
        else:
            last = st.seq
        done = last >= st.seq
        new_state = base64.b64encode(f"fake-sync:{last}".encode()).decode()
        return self._message(
            "SyncFolderItems",
            f"<m:SyncState>{new_state}</m:SyncState>"
            f"<m:IncludesLastItemInRange>{'true' if done else 'false'}</m:IncludesLastItemInRange>"
            f"<m:Changes>{''.join(changes)}</m:Changes>",
        )

    @staticmethod
    def _received(req: etree._Element, it: StoredItem) -> str:
        uris = req.xpath(".//t:AdditionalProperties/t:FieldURI/@FieldURI", namespaces=NS)
        if "item:DateTimeReceived" in uris:
            stamp = it.received.strftime("%Y-%m-%dT%H:%M:%SZ")
            return f"<t:DateTimeReceived>{stamp}</t:DateTimeReceived>"
        return ""

    def _op_FindFolder(self, req: etree._Element, fault: str | None) -> str:
        if req.get("Traversal") != "Deep":
            raise ProtocolError("FindFolder: only a Deep walk is expected")
        parent = self._one(req, "m:ParentFolderIds/*")
        if parent.get("Id") not in ("msgfolderroot", _TOP_ID):
            raise ProtocolError("FindFolder from msgfolderroot only")
        st = self.state
        folders = [(_INBOX_ID, "Inbox"), *st.folders.items()]
        body = "".join(
            f'<t:Folder><t:FolderId Id="{_esc(fid)}" ChangeKey="AQAAABYAAAA="/>'
            f'<t:ParentFolderId Id="{_esc(_ROOT_ID)}" ChangeKey="AQAAAA=="/>'
            f"<t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>{_esc(name)}</t:DisplayName>"
            "<t:TotalCount>0</t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount>"
            "<t:UnreadCount>0</t:UnreadCount></t:Folder>"
            for fid, name in folders
        )
        return self._message(
            "FindFolder",
            f'<m:RootFolder TotalItemsInView="{len(folders)}" IncludesLastItemInRange="true">'
            f"<t:Folders>{body}</t:Folders></m:RootFolder>",
        )

    def _parent_folders(self, req: etree._Element) -> list[str] | None:
        """The folders a FindItem searches, in request order; None when one of them
        may not be read."""
        wanted: list[str] = []
        parents = req.xpath("m:ParentFolderIds/*", namespaces=NS)
        if not parents:
            raise ProtocolError("no ParentFolderIds")
        for ref in parents:
            if ref.tag == f"{{{T}}}DistinguishedFolderId":
                name = ref.get("Id")
                if name == "inbox":
                    wanted.append("inbox")
                elif name == "recoverableitemsdeletions":
                    if not self.state.recoverable_readable:
                        return None
                    wanted.append("recoverable")
                elif name == "recoverableitemspurges":
                    if not self.state.purges_readable:
                        return None
                    wanted.append("purges")
                else:
                    raise ProtocolError(f"unexpected distinguished folder {name}")
            elif ref.get("Id") == _INBOX_ID:
                wanted.append("inbox")
            elif ref.get("Id") == _RECOVERABLE_ID:
                if not self.state.recoverable_readable:
                    return None
                wanted.append("recoverable")
            elif ref.get("Id") == _PURGES_ID:
                if not self.state.purges_readable:
                    return None
                wanted.append("purges")
            elif ref.get("Id") in self.state.folders:
                wanted.append(ref.get("Id") or "")
            else:
                raise ProtocolError("unknown FolderId")
        return wanted

    def _op_FindItem(self, req: etree._Element, fault: str | None) -> str:
        st = self.state
        if req.get("Traversal") != "Shallow":
            raise ProtocolError("FindItem must be Shallow")
        shape = self._one(req, "m:ItemShape/t:BaseShape").text
        if shape != "IdOnly":
            raise ProtocolError("FindItem must ask for ids only")
        folders = self._parent_folders(req)
        if fault == "access_denied" or folders is None:
            return self._access_denied("FindItem")
        # Exchange answers one response message per parent folder, in order.
        return "".join(
            self._find_in(req, [i for i in st.items.values() if i.folder == f]) for f in folders
        )

    def _find_in(self, req: etree._Element, items: list[StoredItem]) -> str:
        restriction = req.find(f"{{{M}}}Restriction")
        if restriction is not None:
            items = self._restrict(restriction, items)
        view = req.find(f"{{{M}}}IndexedPageItemView")
        offset, count = 0, len(items)
        if view is not None:
            if view.get("BasePoint", "Beginning") != "Beginning":
                raise ProtocolError("IndexedPageItemView BasePoint")
            offset = int(view.get("Offset", "0"))
            count = int(view.get("MaxEntriesReturned", str(len(items))))
        order = req.xpath("m:SortOrder/t:FieldOrder", namespaces=NS)
        if order:
            uri = order[0].xpath("t:FieldURI/@FieldURI", namespaces=NS)
            if uri != ["item:DateTimeReceived"]:
                raise ProtocolError(f"unexpected sort {uri}")
            items.sort(key=lambda i: i.received, reverse=order[0].get("Order") == "Descending")
        page = items[offset : offset + count]
        last = offset + len(page) >= len(items)
        body = "".join(
            f'<t:Message><t:ItemId Id="{_esc(i.id)}" ChangeKey="{_esc(i.changekey)}"/>'
            f"{self._received(req, i)}</t:Message>"
            for i in page
        )
        next_offset = "" if last else f' IndexedPagingOffset="{offset + len(page)}"'
        return self._message(
            "FindItem",
            f'<m:RootFolder{next_offset} TotalItemsInView="{len(items)}" '
            f'IncludesLastItemInRange="{"true" if last else "false"}">'
            f"<t:Items>{body}</t:Items></m:RootFolder>",
        )

    def _restrict(self, restriction: etree._Element, items: list[StoredItem]) -> list[StoredItem]:
        # Only what verify_deleted sends: InternetMessageId equal to one (or Or of) value.
        wanted: set[str] = set()
        for eq in restriction.iter(f"{{{T}}}IsEqualTo"):
            uri = eq.xpath("t:FieldURI/@FieldURI", namespaces=NS)
            if uri != ["message:InternetMessageId"]:
                raise ProtocolError(f"unexpected restriction on {uri}")
            wanted.update(eq.xpath("t:FieldURIOrConstant/t:Constant/@Value", namespaces=NS))
        if not wanted:
            raise ProtocolError("empty restriction")
        return [i for i in items if i.message_id in wanted]

    def _ids(self, req: etree._Element) -> list[str]:
        ids = req.xpath("m:ItemIds/t:ItemId/@Id", namespaces=NS)
        if not ids:
            raise ProtocolError("no ItemIds")
        return [str(i) for i in ids]

    def _op_GetItem(self, req: etree._Element, fault: str | None) -> str:
        st = self.state
        uris = req.xpath("m:ItemShape/t:AdditionalProperties/t:FieldURI/@FieldURI", namespaces=NS)
        want_mime = "item:MimeContent" in uris
        if req.xpath("m:ItemShape/t:IncludeMimeContent[.='true']", namespaces=NS):
            want_mime = True
        out = []
        for item_id in self._ids(req):
            it = st.items.get(item_id)
            if fault == "access_denied":
                out.append(self._access_denied("GetItem"))
            elif it is None:
                out.append(
                    self._error(
                        "GetItem",
                        "ErrorItemNotFound",
                        "The specified object was not found in the store., "
                        "The process failed to get the correct properties.",
                    )
                )
            else:
                mime = (
                    '<t:MimeContent CharacterSet="UTF-8">'
                    f"{base64.b64encode(it.mime).decode()}</t:MimeContent>"
                    if want_mime
                    else ""
                )
                out.append(
                    self._message(
                        "GetItem",
                        f"<m:Items><t:Message>{mime}"
                        f'<t:ItemId Id="{_esc(it.id)}" ChangeKey="{_esc(it.changekey)}"/>'
                        "</t:Message></m:Items>",
                    )
                )
        return "".join(out)

    def _op_DeleteItem(self, req: etree._Element, fault: str | None) -> str:
        st = self.state
        delete_type = req.get("DeleteType", "")
        if delete_type not in ("HardDelete", "SoftDelete", "MoveToDeletedItems"):
            raise ProtocolError("DeleteType missing")
        out = []
        for item_id in self._ids(req):
            st.deletes.append((item_id, delete_type))
            if fault == "access_denied":
                out.append(self._access_denied("DeleteItem"))
            elif item_id not in st.items:
                out.append(
                    self._error(
                        "DeleteItem",
                        "ErrorItemNotFound",
                        "The specified object was not found in the store.",
                    )
                )
            else:
                # Only a hard delete removes the item from what a client can see
                # with a recoverable copy; the fake keeps soft-deleted ones in a bin.
                if delete_type != "HardDelete":
                    st.recycle_bin.append(st.items[item_id])
                kept = st.items[item_id]
                self.server.fake._remove(item_id)  # type: ignore[attr-defined]
                if st.hold and delete_type == "HardDelete":
                    # HardDelete: "permanently removed from the store" ([MS-OXWSCDATA]
                    # 2.2.5.9 DisposalType) - unless single item recovery or a hold is
                    # on: then Exchange keeps it in Recoverable Items\Purges, hidden
                    # from clients, which EWS can still read where permitted (exchangelib
                    # has RecoverableItemsPurges; administrators export from it over EWS:
                    # https://github.com/sunilkms/EWS/blob/master/Export-Emails/Export-Emails.ps1).
                    # A move gives an Exchange item a new id
                    # (https://learn.microsoft.com/en-us/graph/outlook-immutable-id).
                    moved = StoredItem(
                        new_item_id(), _changekey(), kept.mime, kept.received,
                        kept.message_id, "purges",
                    )  # fmt: skip
                    st.items[moved.id] = moved
                out.append(self._message("DeleteItem"))
        return "".join(out)

    # --- pull notifications -------------------------------------------------------

    def _op_Subscribe(self, req: etree._Element, fault: str | None) -> str:
        request = self._one(req, "m:PullSubscriptionRequest")
        self._check_inbox_ref(request, "t:FolderIds/*")
        types = request.xpath("t:EventTypes/t:EventType/text()", namespaces=NS)
        if not types:
            raise ProtocolError("no EventTypes")
        timeout = request.findtext(f"{{{T}}}Timeout")
        if not (timeout or "").isdigit() or not 1 <= int(timeout or "0") <= 1440:
            raise ProtocolError("Timeout must be 1..1440 minutes")
        st = self.state
        if st.refuse_subscriptions:
            return self._error(
                "Subscribe",
                "ErrorInvalidPullSubscriptionId",
                "Notifications are not available on this server.",
            )
        sub_id = new_item_id()
        st.subscriptions[sub_id] = st.seq
        return self._message(
            "Subscribe",
            f"<m:SubscriptionId>{sub_id}</m:SubscriptionId><m:Watermark>{st.seq}</m:Watermark>",
        )

    def _op_GetEvents(self, req: etree._Element, fault: str | None) -> str:
        sub_id = self._one(req, "m:SubscriptionId").text or ""
        mark = self._one(req, "m:Watermark").text or ""
        st = self.state
        if sub_id not in st.subscriptions:
            return self._error(
                "GetEvents",
                "ErrorSubscriptionNotFound",
                "The specified subscription was not found.",
            )
        if not mark.isdigit():
            raise ProtocolError("not a watermark this server gave out")
        since = int(mark)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        parent = f'<t:ParentFolderId Id="{_esc(_INBOX_ID)}" ChangeKey="AQAAABYAAAA="/>'
        pending = [ev for ev in st.events if ev.seq > since]
        # A queue longer than one response is delivered in parts: MoreEvents=true
        # says "issue another GetEvents", with the watermark of the last event
        # received (https://learn.microsoft.com/en-us/exchange/client-developer/
        # web-service-reference/moreevents; .../getevents: "the watermark from the
        # last event in the last GetEvents response is used"). The same watermark
        # again gets the same events again.
        batch, more = pending[: st.events_per_response], len(pending) > st.events_per_response
        events = []
        for ev in batch:
            kinds = ("NewMailEvent", "CreatedEvent") if ev.kind == "create" else ("DeletedEvent",)
            for kind in kinds:
                events.append(
                    f"<t:{kind}><t:Watermark>{ev.seq}</t:Watermark>"
                    f"<t:TimeStamp>{stamp}</t:TimeStamp>"
                    f'<t:ItemId Id="{_esc(ev.item_id)}" ChangeKey="CQAAAA=="/>{parent}</t:{kind}>'
                )
        if not events:
            events.append(f"<t:StatusEvent><t:Watermark>{since}</t:Watermark></t:StatusEvent>")
        st.subscriptions[sub_id] = batch[-1].seq if batch else since
        st.get_events_marks.append(since)
        return self._message(
            "GetEvents",
            f"<m:Notification><t:SubscriptionId>{sub_id}</t:SubscriptionId>"
            f"<t:PreviousWatermark>{since}</t:PreviousWatermark>"
            f"<t:MoreEvents>{'true' if more else 'false'}</t:MoreEvents>{''.join(events)}"
            "</m:Notification>",
        )

    def _op_Unsubscribe(self, req: etree._Element, fault: str | None) -> str:
        self.state.subscriptions.pop(self._one(req, "m:SubscriptionId").text or "", None)
        return self._message("Unsubscribe")

    def _op_CreateItem(self, req: etree._Element, fault: str | None) -> str:
        st = self.state
        disposition = req.get("MessageDisposition", "")
        if disposition not in ("SaveOnly", "SendOnly", "SendAndSaveCopy"):
            raise ProtocolError("MessageDisposition missing")
        messages = req.xpath("m:Items/t:Message", namespaces=NS)
        if len(messages) != 1:
            raise ProtocolError("CreateItem with other than one Message")
        msg = messages[0]
        mime_elem = self._one(msg, "t:MimeContent")
        try:
            mime = base64.b64decode(mime_elem.text or "", validate=True)
        except ValueError:
            raise ProtocolError("MimeContent is not base64") from None
        to = [
            str(a)
            for a in msg.xpath("t:ToRecipients/t:Mailbox/t:EmailAddress/text()", namespaces=NS)
        ]
        saved = req.find(f"{{{M}}}SavedItemFolderId") is not None
        if fault == "access_denied":
            return self._access_denied("CreateItem")
        if disposition != "SaveOnly" and not to and b"\nTo:" not in b"\n" + mime:
            return self._error(
                "CreateItem",
                "ErrorInvalidRecipients",
                "At least one recipient isn't valid., A message can't be sent because it "
                "contains no recipients.",
            )
        st.sent.append(SentItem(mime, to, disposition, saved))
        if disposition == "SendOnly":
            # SendOnly returns no item: nothing was saved anywhere.
            return self._message("CreateItem", "<m:Items/>")
        new_id = new_item_id()
        return self._message(
            "CreateItem",
            f'<m:Items><t:Message><t:ItemId Id="{new_id}" ChangeKey="{_changekey()}"/>'
            "</t:Message></m:Items>",
        )


_INBOX_ID = new_item_id()
_TOP_ID = new_item_id()
_RECOVERABLE_ID = new_item_id()
_PURGES_ID = new_item_id()
_ROOT_ID = new_item_id()


class EwsServer(FakeHTTPServer):
    """An Exchange mailbox over EWS. ``auth`` is "basic", "ntlm" (the username must
    be ``DOMAIN\\user``; the caller points ``NTLM_USER_FILE`` at a file holding
    ``DOMAIN:user:password``, see :meth:`ntlm_user_file`) or "oauth2" (tokens checked
    against ``tokens``, audience ``https://outlook.office365.com``)."""

    def __init__(
        self,
        *,
        mailbox: str = "vreemdverhaal@gemeente.example",
        username: str = "GEMEENTE\\svc-inboxd",
        password: str = "Exch-pa55word!",
        auth: str = "basic",
        tokens: TokenServer | None = None,
        audience: str = "https://outlook.office365.com",
        tls: bool = True,
    ) -> None:
        super().__init__(_Handler, tls=tls)
        self.state = _State(username, password, mailbox, auth, tokens, audience)

    @property
    def url(self) -> str:
        return f"{self.base_url}/EWS/Exchange.asmx"

    def ntlm_user_file(self, directory: str) -> str:
        """Write the NTLM account file spnego's acceptor reads; returns its path."""
        import os

        domain, _, user = self.state.username.partition("\\")
        path = os.path.join(directory, "ntlm-users")
        with open(path, "w") as fh:
            fh.write(f"{domain}:{user}:{self.state.password}\n")
        return path

    # --- what a test does to the mailbox -----------------------------------------

    def add_folder(self, name: str) -> str:
        """A mail folder beside the inbox (FindFolder lists it); returns its id."""
        with self.state.lock:
            fid = new_item_id()
            self.state.folders[fid] = name
            return fid

    def deliver(
        self, mime: bytes, *, received: dt.datetime | None = None, folder: str = "inbox"
    ) -> str:
        """A message arrives in the inbox (or is filed in ``folder``, a folder id);
        returns its item id."""
        st = self.state
        with st.lock:
            item_id = new_item_id()
            when = received or dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(
                seconds=len(st.events)
            )
            mid = ""
            for line in mime.split(b"\r\n\r\n", 1)[0].split(b"\n"):
                if line.lower().startswith(b"message-id:"):
                    mid = line.split(b":", 1)[1].strip().decode()
            st.items[item_id] = StoredItem(item_id, _changekey(), mime, when, mid, folder)
            if folder == "inbox":
                st.seq += 1
                st.events.append(_Event(st.seq, "create", item_id))
            return item_id

    def _remove(self, item_id: str) -> None:
        st = self.state
        with st.lock:
            del st.items[item_id]
            st.seq += 1
            st.events.append(_Event(st.seq, "delete", item_id))

    def remove(self, item_id: str) -> None:
        """Someone else (Outlook) deleted the message."""
        self._remove(item_id)

    def fail(self, operation: str, kind: str, times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` answer with ``kind``: "busy"
        (ErrorServerBusy, 2.5 s back-off), "busy_long" (300 s), "http503", "drop" (connection closed without an answer),
        "unauthorized", "access_denied"."""
        with self.state.lock:
            self.state.faults.setdefault(operation, []).extend([kind] * times)

    def refuse_subscriptions(self, refuse: bool = True) -> None:
        """Answer Subscribe with an error, as a server without notifications would."""
        with self.state.lock:
            self.state.refuse_subscriptions = refuse

    def expire_subscriptions(self) -> None:
        """Every subscription is forgotten (a server restart, a timeout)."""
        with self.state.lock:
            self.state.subscriptions.clear()

    def on(self, operation: str, hook: Callable[[], None]) -> None:
        """Run ``hook`` when ``operation`` arrives next (before it is answered)."""
        with self.state.lock:
            self.state.hooks[operation] = hook

    @property
    def items(self) -> dict[str, StoredItem]:
        with self.state.lock:
            return dict(self.state.items)

    @property
    def sent(self) -> list[SentItem]:
        return list(self.state.sent)

    @property
    def deletes(self) -> list[tuple[str, str]]:
        return list(self.state.deletes)

    @property
    def calls(self) -> list[Call]:
        return list(self.state.calls)

    def operations(self) -> list[str]:
        return [c.operation for c in self.state.calls]

    @property
    def protocol_errors(self) -> list[str]:
        return list(self.state.protocol_errors)
