"""TokenProvider against a fake Entra ID over TLS: MSAL's real HTTP traffic."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fakes import captured_logs, pki
from fakes.token_server import TokenServer, thumbprint_sha1_hex

from inboxd.msauth import OUTLOOK_SCOPE, TokenProvider, graph_scope
from inboxd.tokens import TokenError

SECRET = "s3cr3t~Value.With-Chars_0123456789"
CLIENT = "2d4f6a8c-1b3d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def aad() -> Iterator[TokenServer]:
    with TokenServer(secrets={CLIENT: SECRET}, certificates={"cert-app": pki().client_cert}) as srv:
        yield srv


def provider(aad: TokenServer, **kw: object) -> TokenProvider:
    args: dict[str, object] = {
        "client_secret": SECRET,
        "authority": aad.authority,
        "ca_file": pki().ca_file,
        "timeout": 5.0,
    }
    args.update(kw)
    return TokenProvider(aad.tenant_id, str(args.pop("client_id", CLIENT)), **args)  # type: ignore[arg-type]


def test_secret_gives_token_valid_for_scope_and_is_cached(aad: TokenServer) -> None:
    tp = provider(aad)
    tok = tp()
    assert aad.check(f"Bearer {tok}", "https://outlook.office365.com")
    assert tp() == tok
    reqs = aad.token_requests
    assert len(reqs) == 1
    assert reqs[0].form["grant_type"] == "client_credentials"
    assert reqs[0].form["scope"] == OUTLOOK_SCOPE
    assert reqs[0].form["client_secret"] == SECRET
    # MSAL asked only our authority for the tenant's metadata, never Microsoft.
    assert f"/{aad.tenant_id}/v2.0/.well-known/openid-configuration" in aad.state.discovery_requests
    assert "/common/discovery/instance" not in aad.state.discovery_requests


def test_token_close_to_expiry_is_renewed(aad: TokenServer) -> None:
    # A token with less than five minutes left counts as expired: the next call
    # fetches a new one instead of handing out one that dies mid-request.
    aad.set_lifetime(290)
    tp = provider(aad)
    first = tp()
    second = tp()
    assert first != second
    assert len(aad.token_requests) == 2
    aad.set_lifetime(3599)
    third = tp()
    assert tp() == third
    assert len(aad.token_requests) == 3


def test_force_refresh_replaces_a_revoked_token(aad: TokenServer) -> None:
    tp = provider(aad)
    old = tp()
    aad.revoke_all()
    assert not aad.check(f"Bearer {old}", "https://outlook.office365.com")
    assert tp() == old  # the cache cannot know
    new = tp(force_refresh=True)
    assert new != old
    assert aad.check(f"Bearer {new}", "https://outlook.office365.com")


def test_graph_scope_for_national_cloud() -> None:
    assert graph_scope("https://graph.microsoft.us/") == "https://graph.microsoft.us/.default"


def test_wrong_secret_names_aadsts_code_never_the_secret(aad: TokenServer) -> None:
    tp = provider(aad, client_secret="wrong-" + SECRET)
    with captured_logs() as buf, pytest.raises(TokenError) as ei:
        tp()
    err = ei.value
    assert err.permanent
    assert err.code == "AADSTS7000215"
    assert "AADSTS7000215" in str(err)
    assert "invalid_client" in str(err)
    for text in (str(err), repr(err), repr(tp), buf.getvalue()):
        assert SECRET not in text
        assert "wrong-" not in text


def test_unknown_client_is_permanent(aad: TokenServer) -> None:
    with pytest.raises(TokenError) as ei:
        provider(aad, client_id="00000000-0000-0000-0000-000000000000")()
    assert ei.value.permanent and ei.value.code == "AADSTS700016"


def test_unknown_tenant_is_permanent(aad: TokenServer) -> None:
    tp = TokenProvider(
        "no-such-tenant.example",
        CLIENT,
        client_secret=SECRET,
        authority=aad.authority,
        ca_file=pki().ca_file,
    )
    with pytest.raises(TokenError) as ei:
        tp()
    assert ei.value.permanent
    assert ei.value.code == "AADSTS90002"


def test_directory_outage_is_temporary(aad: TokenServer) -> None:
    aad.fail_next(1)
    with pytest.raises(TokenError) as ei:
        provider(aad)()
    assert not ei.value.permanent


def test_unreachable_authority_is_temporary() -> None:
    srv = TokenServer()
    authority = srv.authority
    srv.stop()  # port closed: connection refused
    tp = TokenProvider(
        srv.tenant_id,
        CLIENT,
        client_secret=SECRET,
        authority=authority,
        ca_file=pki().ca_file,
        timeout=2.0,
    )
    with pytest.raises(TokenError) as ei:
        tp()
    assert not ei.value.permanent


def test_untrusted_authority_certificate_is_refused(aad: TokenServer) -> None:
    # Without the test CA the fake's certificate must not be accepted.
    tp = provider(aad, ca_file=None)
    with pytest.raises(TokenError):
        tp()
    assert aad.token_requests == []


@pytest.mark.parametrize("with_thumbprint", [False, True])
def test_certificate_credential(aad: TokenServer, with_thumbprint: bool) -> None:
    cert = pki().client_cert
    tp = TokenProvider(
        aad.tenant_id,
        "cert-app",
        client_certificate_pem=pki().client_pem,
        thumbprint=thumbprint_sha1_hex(cert) if with_thumbprint else None,
        authority=aad.authority,
        ca_file=pki().ca_file,
        scope=graph_scope("https://graph.example"),
    )
    tok = tp()
    assert aad.check(f"Bearer {tok}", "https://graph.example")
    form = aad.token_requests[0].form
    assert "client_secret" not in form
    assert form["client_assertion_type"].endswith("jwt-bearer")


def test_certificate_of_another_app_is_refused(aad: TokenServer) -> None:
    aad.state.certificates["other-app"] = aad.state.certificates.pop("cert-app")
    aad.state.certificates["cert-app"] = _other_cert()
    tp = TokenProvider(
        aad.tenant_id,
        "cert-app",
        client_certificate_pem=pki().client_pem,
        authority=aad.authority,
        ca_file=pki().ca_file,
    )
    with pytest.raises(TokenError) as ei:
        tp()
    assert ei.value.permanent and ei.value.code == "AADSTS700027"


def _other_cert():  # type: ignore[no-untyped-def]
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_constructor_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        TokenProvider("t", CLIENT)  # no credential
    with pytest.raises(ValueError):
        TokenProvider("t", CLIENT, client_secret="x", client_certificate_pem="y")
    with pytest.raises(ValueError):
        TokenProvider("t", CLIENT, client_secret="x", authority="http://login.example")
    with pytest.raises(ValueError):
        TokenProvider("t", CLIENT, client_certificate_pem="-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError):
        TokenProvider("t", CLIENT, client_secret="x", ca_file="/nonexistent/ca.pem")


def test_log_line_on_new_token_has_no_token(aad: TokenServer) -> None:
    with captured_logs() as buf:
        tok = provider(aad)()
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert any(line["event"] == "msauth.token" for line in lines)
    assert tok not in buf.getvalue()
