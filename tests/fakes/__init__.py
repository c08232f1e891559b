"""Local stand-ins for Microsoft's services, speaking their real wire protocols.

Every fake listens on 127.0.0.1 over TLS with a throw-away CA made here, so the
code under test verifies certificates exactly as it would against Microsoft, and
nothing can reach a real Microsoft host.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import http.server
import io
import ipaddress
import logging
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TestPki:
    ca_file: str  # PEM of the throw-away CA: what the client trusts
    server_context: ssl.SSLContext
    client_pem: str  # an RSA key + certificate for AAD certificate credentials
    client_cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@functools.lru_cache(maxsize=1)
def pki() -> TestPki:
    """One CA and server certificate for 127.0.0.1 per test session (EC: fast)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("inboxd test CA"))
        .issuer_name(_name("inboxd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    d = Path(tempfile.mkdtemp(prefix="inboxd-pki-"))
    # One per session: gone when the session ends, not left in /tmp run after run.
    atexit.register(shutil.rmtree, d, True)
    ca_path = d / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain = d / "server.pem"
    chain.write_bytes(
        srv_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + srv_cert.public_bytes(serialization.Encoding.PEM)
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain))

    cl_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cl_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("inboxd app"))
        .issuer_name(_name("inboxd app"))
        .public_key(cl_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(cl_key, hashes.SHA256())
    )
    client_pem = (
        cl_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cl_cert.public_bytes(serialization.Encoding.PEM)
    ).decode()
    return TestPki(str(ca_path), ctx, client_pem, cl_cert)


class FakeHTTPServer:
    """A ThreadingHTTPServer on 127.0.0.1 (TLS by default) run in a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], *, tls: bool = True):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.tls = tls
        if tls:
            self.httpd.socket = pki().server_context.wrap_socket(
                self.httpd.socket, server_side=True
            )
        self.httpd.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> FakeHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """inboxd's JSON logging into a buffer; the previous set-up is restored after."""
    from inboxd import logs

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    logs.configure(stream=buf)
    try:
        yield buf
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
