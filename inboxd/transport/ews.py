"""Sending through Exchange Web Services: ``CreateItem`` with
``MessageDisposition="SendOnly"`` and the raw MIME as ``MimeContent``.

SendOnly keeps no copy in Sent Items (``SendAndSaveCopy`` would leave the forwarded
signal on the server). EWS has no SMTP envelope: Exchange takes the recipients
from the item, so the envelope recipient is set as the item's only recipient, and
a message whose own To/Cc/Bcc name anyone else is refused rather than sent to
people the outbox did not ask for. The envelope sender is the mailbox itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from exchangelib import Account, Mailbox
from exchangelib import Message as EwsMessage
from exchangelib.errors import (
    ErrorInvalidRecipients,
    ErrorMailRecipientNotFound,
    ErrorMessageSizeExceeded,
    ErrorSendAsDenied,
)
from exchangelib.items import SEND_ONLY

from inboxd.ews_account import EwsAccount, EwsFailure, call, connect, disconnect, settings_of
from inboxd.logs import get_logger
from inboxd.pace import Beat, rest
from inboxd.transport.base import Envelope, Message, SendError, Transport, joined
from inboxd.transport.own_headers import refuse_other_recipients

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = get_logger(__name__)

T = TypeVar("T")

_PERMANENT = (
    ErrorInvalidRecipients,
    ErrorMailRecipientNotFound,
    ErrorMessageSizeExceeded,
    ErrorSendAsDenied,
)


class EwsTransport(Transport):
    name = "ews"

    def __init__(self, service_endpoint: str, username: str, **account: Unpack[EwsAccount]) -> None:
        # ``throttle``: the mailbox's, so that a back-off holds for the account.
        self.settings = settings_of(service_endpoint, username, **account)
        self._account: Account | None = None

    def __repr__(self) -> str:
        return f"EwsTransport({self.settings.host!r})"

    def _connected(self) -> Account:
        if self._account is None:
            self._account = connect(self.settings)
        return self._account

    def _call(self, fn: Callable[[Account], T], *, what: str) -> T:
        account = self._connected()
        try:
            return call(self.settings, account, lambda: fn(account), what=what)
        except EwsFailure as exc:
            log.warning("transport.error", transport="ews", kind=what, error=exc.reason)
            if exc.temporary:
                # Start from a fresh connection next time.
                self.close()
            raise SendError(
                f"ews {what}: {exc.reason}", temporary=exc.temporary, retry_after=exc.retry_after
            ) from None

    def send(self, envelope: Envelope, message: Message, *, beat: Beat = rest) -> None:
        mime = joined(message)
        refuse_other_recipients(mime, envelope, "ews")

        def create(account: Account) -> list[object]:
            item = EwsMessage(
                account=account,
                mime_content=mime,
                to_recipients=[Mailbox(email_address=envelope.recipient)],
            )
            return list(
                account.bulk_create(folder=None, items=[item], message_disposition=SEND_ONLY)
            )

        results = self._call(create, what="send")
        result = results[0] if results else None
        if isinstance(result, Exception):
            permanent = isinstance(result, _PERMANENT)
            log.warning(
                "transport.error", transport="ews", kind="send", error=type(result).__name__
            )
            raise SendError(f"ews send: {type(result).__name__}", temporary=not permanent)
        log.info("transport.sent", transport="ews", size=len(mime))

    def check(self) -> None:
        # GetFolder on the mailbox root: proves the credentials and the mailbox.
        self._call(lambda account: account.root, what="check")

    def close(self) -> None:
        account, self._account = self._account, None
        with contextlib.suppress(Exception):
            disconnect(account)
