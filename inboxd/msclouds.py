"""Microsoft's national clouds: which Graph host, which Outlook resource for EWS,
IMAP and SMTP tokens, and what each offers.

From https://learn.microsoft.com/en-us/graph/deployments (service root endpoints)
and the national-cloud table on each API's page: ``permanentDelete``
(https://learn.microsoft.com/en-us/graph/api/message-permanentdelete) exists only
in the global service; message ``delta``
(https://learn.microsoft.com/en-us/graph/api/message-delta) in the global service
and US Government L4/L5, not in China (21Vianet). The Outlook resource is the
Exchange Online host the token is for (a scope hard-wired to the global cloud was
a known bug elsewhere too: GNOME/evolution-ews merge request 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Cloud:
    name: str
    graph_host: str
    outlook_resource: str  # the ".default" scope's resource for EWS/IMAP/SMTP
    authority_hosts: frozenset[str]
    permanent_delete: bool
    message_delta: bool


GLOBAL = Cloud(
    "the global service",
    "graph.microsoft.com",
    "https://outlook.office365.com",
    frozenset({"login.microsoftonline.com"}),
    permanent_delete=True,
    message_delta=True,
)
US_GOV_L4 = Cloud(
    "US Government L4",
    "graph.microsoft.us",
    "https://outlook.office365.us",
    frozenset({"login.microsoftonline.us"}),
    permanent_delete=False,
    message_delta=True,
)
US_GOV_L5 = Cloud(
    "US Government L5 (DOD)",
    "dod-graph.microsoft.us",
    "https://outlook.office365.us",
    frozenset({"login.microsoftonline.us"}),
    permanent_delete=False,
    message_delta=True,
)
CHINA = Cloud(
    "China operated by 21Vianet",
    "microsoftgraph.chinacloudapi.cn",
    "https://partner.outlook.cn",
    frozenset({"login.chinacloudapi.cn", "login.partner.microsoftonline.cn"}),
    permanent_delete=False,
    message_delta=False,
)
CLOUDS = (GLOBAL, US_GOV_L4, US_GOV_L5, CHINA)

# Exchange Online hosts and the resource their tokens are for.
_OUTLOOK_HOSTS = {
    "outlook.office365.com": GLOBAL.outlook_resource,
    "outlook.office.com": GLOBAL.outlook_resource,
    "smtp.office365.com": GLOBAL.outlook_resource,
    "outlook.office365.us": US_GOV_L4.outlook_resource,
    "smtp.office365.us": US_GOV_L4.outlook_resource,
    "partner.outlook.cn": CHINA.outlook_resource,
}


def _host(url_or_host: str) -> str:
    if "//" in url_or_host:
        return (urlsplit(url_or_host).hostname or "").lower()
    return url_or_host.strip().lower()


def graph_cloud(endpoint: str) -> Cloud | None:
    """The cloud of a Graph endpoint; None for a host that is none of them (a
    proxy, a test)."""
    host = _host(endpoint)
    return next((c for c in CLOUDS if c.graph_host == host), None)


def graph_refusal(endpoint: str) -> str | None:
    """Why inboxd cannot work through Graph in this cloud, or None."""
    cloud = graph_cloud(endpoint)
    if cloud is None or (cloud.permanent_delete and cloud.message_delta):
        return None
    missing = [
        what
        for what, there in (
            ("permanentDelete (so no hard delete)", cloud.permanent_delete),
            ("message delta", cloud.message_delta),
        )
        if not there
    ]
    return (
        f"Microsoft Graph in {cloud.name} has no {' and no '.join(missing)}; "
        'use backend = "ews" (EWS, oauth2) or "imap" with auth = "xoauth2" in this cloud'
    )


def outlook_scope(host: str, authority: str) -> str:
    """The ``.default`` scope of a token for EWS, IMAP or SMTP at ``host``: the
    Exchange Online host's own cloud, else the cloud of the ``authority``."""
    resource = _OUTLOOK_HOSTS.get(_host(host))
    if resource is None:
        auth_host = _host(authority)
        cloud = next((c for c in CLOUDS if auth_host in c.authority_hosts), GLOBAL)
        resource = cloud.outlook_resource
    return resource + "/.default"
