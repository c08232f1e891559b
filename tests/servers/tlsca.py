"""The suite's one certificate authority, for every server the tests run.

Clients under test must verify certificates for real, so every server — the real
ones (Dovecot, the SMTP relay) and the wire fakes of Exchange, Graph and the
Microsoft identity platform (``tests/fakes``) — presents the same certificate for
``localhost``/``127.0.0.1``/``::1``, signed by a CA that exists only in a temp dir
for one test session: :func:`pki`. A configuration names that one ``ca_file`` for
whichever backend it sets up. :func:`make_ca` makes another, unrelated CA, so that
tests can check that a wrong CA is refused.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import ipaddress
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path  # the CA certificate clients should trust
    cert_file: Path  # server certificate (leaf only)
    key_file: Path  # server private key, unencrypted PEM
    chain_file: Path  # leaf + CA, for servers that want the chain in one file


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "inboxd tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # Dovecot reads the key as root before dropping privileges; nobody else needs it.
    path.chmod(0o600)


def make_ca(
    directory: Path, name: str = "inboxd test CA"
) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Write ``<directory>/ca.pem`` and return its path, key and certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_file, key, cert


def make_tls_files(directory: Path) -> TlsFiles:
    """A fresh CA and a server certificate for localhost/127.0.0.1/::1 signed by it."""
    ca_file, ca_key, ca_cert = make_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert_pem)
    chain_file = directory / "chain.pem"
    chain_file.write_bytes(cert_pem + ca_cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    _write_key(key_file, key)
    return TlsFiles(ca_file=ca_file, cert_file=cert_file, key_file=key_file, chain_file=chain_file)


class TestPki:
    """The session's CA and what it issued (see :func:`pki`)."""

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.tls = make_tls_files(directory)
        # Dovecot's unprivileged processes and any test user may read the CA.
        directory.chmod(0o755)
        self.tls.ca_file.chmod(0o644)

    @property
    def ca_file(self) -> str:
        """The CA certificate (PEM) a client trusts: a configuration's ``ca_file``."""
        return str(self.tls.ca_file)

    @functools.cached_property
    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the certificate (for the fakes)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
        return ctx

    @functools.cached_property
    def _client(self) -> tuple[str, x509.Certificate]:
        # RSA, as Entra ID takes for an app's certificate credential; self-signed, as
        # an app registration's uploaded certificate usually is. Made when first used.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("inboxd app"))
            .issuer_name(_name("inboxd app"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + cert.public_bytes(serialization.Encoding.PEM)
        return pem.decode(), cert

    @property
    def client_pem(self) -> str:
        """An RSA key + certificate: an app's certificate credential for Entra ID."""
        return self._client[0]

    @property
    def client_cert(self) -> x509.Certificate:
        return self._client[1]


@functools.lru_cache(maxsize=1)
def pki() -> TestPki:
    """The one CA of this test session, made when first asked for."""
    directory = Path(tempfile.mkdtemp(prefix="inboxd-pki-"))
    # One per session: gone when the session ends, not left in /tmp run after run.
    atexit.register(shutil.rmtree, directory, True)
    return TestPki(directory)
