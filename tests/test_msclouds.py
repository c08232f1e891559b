"""National clouds: scopes, Graph endpoints and what each cloud lacks."""

from __future__ import annotations

import pytest

from inboxd.msclouds import graph_cloud, graph_refusal, outlook_scope


@pytest.mark.parametrize(
    ("host", "authority", "scope"),
    [
        (
            "outlook.office365.com",
            "https://login.microsoftonline.com",
            "https://outlook.office365.com/.default",
        ),
        (
            "https://outlook.office365.com/EWS/Exchange.asmx",
            "https://login.microsoftonline.com",
            "https://outlook.office365.com/.default",
        ),
        (
            "smtp.office365.us",
            "https://login.microsoftonline.us",
            "https://outlook.office365.us/.default",
        ),
        (
            "https://outlook.office365.us/EWS/Exchange.asmx",
            "https://login.microsoftonline.us",
            "https://outlook.office365.us/.default",
        ),
        (
            "partner.outlook.cn",
            "https://login.partner.microsoftonline.cn",
            "https://partner.outlook.cn/.default",
        ),
        # An on-premises or test host: the authority says which cloud.
        (
            "mail.gemeente.example",
            "https://login.microsoftonline.us",
            "https://outlook.office365.us/.default",
        ),
        ("127.0.0.1", "https://127.0.0.1:8443", "https://outlook.office365.com/.default"),
    ],
)
def test_outlook_scope_follows_the_cloud(host: str, authority: str, scope: str) -> None:
    assert outlook_scope(host, authority) == scope


def test_graph_is_refused_where_permanent_delete_or_delta_is_missing() -> None:
    assert graph_refusal("https://graph.microsoft.com") is None
    assert graph_refusal("https://127.0.0.1:9443") is None  # a proxy or a test: not refused
    for endpoint in ("https://graph.microsoft.us", "https://dod-graph.microsoft.us"):
        why = graph_refusal(endpoint)
        assert why is not None and "permanentDelete" in why and "message delta" not in why
        assert 'backend = "ews"' in why
    china = graph_refusal("https://microsoftgraph.chinacloudapi.cn/")
    assert china is not None and "permanentDelete" in china and "message delta" in china
    cloud = graph_cloud("https://dod-graph.microsoft.us")
    assert cloud is not None and cloud.name == "US Government L5 (DOD)"
