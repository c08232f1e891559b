"""The ``graph`` backend (Microsoft 365 through Microsoft Graph): the mailbox and the
transport from ``[mailbox]`` (one app, one mailbox), the Graph token they need, and
what Graph's refusals mean."""

from __future__ import annotations

from pathlib import Path

from inboxd.backends.microsoft import README, http_status, token_provider
from inboxd.backends.settings import GraphMailboxConfig
from inboxd.config import Config, constructed
from inboxd.graph_client import GraphConnection
from inboxd.mailbox.base import Mailbox
from inboxd.mailbox.graph import GraphMailbox
from inboxd.msauth import graph_scope
from inboxd.throttle import Throttle
from inboxd.tokens import TokenSource
from inboxd.transport.base import SentCopies, Transport
from inboxd.transport.graph import GraphTransport

# The delta link under state_dir (no mail content: an opaque server token and the
# mailbox it belongs to).
DELTA_STATE = "graph-delta-state"


def _token(cfg: Config, mb: GraphMailboxConfig) -> TokenSource:
    # Graph's own scope (a national cloud's endpoint has its own).
    return token_provider(cfg, "mailbox", scope=graph_scope(mb.endpoint))


def tokens(cfg: Config, mb: GraphMailboxConfig) -> list[tuple[str, TokenSource]]:
    return [("mailbox", _token(cfg, mb))]


def _connection(mb: GraphMailboxConfig, throttle: Throttle) -> GraphConnection:
    # The mailbox and the transport alike, with the one throttle of the account.
    return GraphConnection(endpoint=mb.endpoint, ca_file=mb.ca_file or None, throttle=throttle)


def mailbox(cfg: Config, mb: GraphMailboxConfig, throttle: Throttle) -> Mailbox:
    token, connection = _token(cfg, mb), _connection(mb, throttle)
    return constructed(
        cfg,
        "mailbox",
        lambda: GraphMailbox(
            mb.tenant_id,
            mb.client_id,
            mb.mailbox,
            token,
            folder=mb.graph_folder,
            delta_state_path=str(Path(cfg.state_dir) / DELTA_STATE),
            poll_interval=mb.poll_interval,
            **connection,
        ),
    )


def transport(
    cfg: Config, mb: GraphMailboxConfig, throttle: Throttle, copies: SentCopies | None = None
) -> Transport:
    token, connection = _token(cfg, mb), _connection(mb, throttle)
    return constructed(
        cfg, "mailbox", lambda: GraphTransport(mb.mailbox, token, copies=copies, **connection)
    )


def explain_login(mb: GraphMailboxConfig, reason: str) -> str:
    where = f"/users/{mb.mailbox}/mailFolders/{mb.graph_folder}"
    status = http_status(reason)
    if status == 403:
        return (
            f"Graph answered 403 for {where}: grant Mail.ReadWrite to the app via RBAC for "
            f"Applications scoped to this mailbox (New-ManagementRoleAssignment -App "
            f'{mb.client_id} -Role "Application Mail.ReadWrite" -CustomResourceScope …); {README}'
        )
    if status == 401:
        return (
            f"Graph answered 401 for {where}: the token was refused; check that mailbox.endpoint "
            f"and mailbox.authority are of the same cloud and that the app's service principal "
            f"is registered in Exchange (New-ServicePrincipal); {README}"
        )
    if status in (400, 404):
        return (
            f"Graph answered {status} for {where}: no such mailbox or folder; set mailbox.mailbox "
            "to the Exchange Online mailbox's address (or user id) and mailbox.folder to inbox"
        )
    return f"Graph refused {where} ({reason}); {README}"


def explain_transport(mb: GraphMailboxConfig, reason: str) -> str:
    status = http_status(reason)
    where = f"/users/{mb.mailbox}/mailFolders/sentitems"
    if status in (401, 403):
        return (
            f"Graph answered {status} for {where}: grant the app Application Mail.Send (to send) "
            "and Application Mail.ReadWrite (to delete the Sent Items copy) via RBAC for "
            f"Applications scoped to this mailbox; {README}"
        )
    return f"outgoing mail (graph): {reason}"
