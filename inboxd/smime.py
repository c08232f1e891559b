"""S/MIME encryption of outgoing mail (RFC 8551 enveloped-data, AES-256, RSA).

The mail is rendered as usual; its content (the MIME headers and body) goes inside
the envelope, and the outer message keeps only the routing headers and a neutral
subject, so that the subject line — which mail servers log and phones show on a
lock screen — carries nothing but the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

_CRLF = b"\r\n"
_INNER = (b"content-", b"mime-version:")


class CertificateError(Exception):
    pass


def load_certificate(path: str) -> x509.Certificate:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read certificate {path} ({type(exc).__name__})") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        try:
            cert = x509.load_der_x509_certificate(data)
        except ValueError:
            raise CertificateError(f"{path} is not a PEM or DER certificate") from None
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise CertificateError(
            f"{path}: only RSA certificates can be encrypted to (cryptography's S/MIME)"
        )
    return cert


def _split(rendered: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = rendered.partition(_CRLF + _CRLF)
    fields: list[bytes] = []
    for line in head.split(_CRLF):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += _CRLF + line
        else:
            fields.append(line)
    return fields, body


def encrypt(
    rendered: bytes, certificates: Sequence[x509.Certificate], neutral_subject: str
) -> bytes:
    """Wrap a rendered mail (CRLF line endings, as :func:`inboxd.mails.render` makes it)."""
    fields, body = _split(rendered)
    inner = [
        f
        for f in fields
        if f.lower().startswith(_INNER) and not f.lower().startswith(b"mime-version:")
    ]
    outer = [
        f
        for f in fields
        if not f.lower().startswith(_INNER) and not f.lower().startswith(b"subject:")
    ]
    entity = _CRLF.join(inner) + _CRLF + _CRLF + body
    builder = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(entity)
        .set_content_encryption_algorithm(algorithms.AES256)
    )
    for cert in certificates:
        builder = builder.add_recipient(cert)
    smime = builder.encrypt(serialization.Encoding.SMIME, [])
    # cryptography writes LF line endings; the wire wants CRLF.
    smime = smime.replace(b"\r\n", b"\n").replace(b"\n", _CRLF)
    subject = neutral_subject.encode("ascii", "replace")
    return _CRLF.join(outer) + _CRLF + b"Subject: " + subject + _CRLF + smime
