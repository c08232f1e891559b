"""Mails built to make one message expensive: the shapes that cost seconds or minutes
in a naive reader (quadratic de-duplication, the ``email`` package's slow headers,
deep or wide MIME trees, long lines for the regexes). Shared by the intake test, the
watchdog test and the latency benchmark.

Each shape is at most a few MB and is a well-formed enough mail to reach the mailbox
through SMTP or APPEND; what inboxd must do with each is the same: queue it (flagged
where it is malformed), acknowledge where due, and take no more than a moment.
"""

from __future__ import annotations

import uuid

from world import MAILBOX, OUTSIDER

from inboxd.references import ALPHABET, new_reference

REFERENCES = 70_000


def mail(
    *,
    sender: str = OUTSIDER,
    subject: bytes = b"Signaal",
    body: bytes = b"Ik zag iets vreemds.\r\n",
    ctype: bytes = b"text/plain; charset=utf-8",
    extra: bytes = b"",
    from_field: bytes | None = None,
) -> bytes:
    mid = f"<{uuid.uuid4().hex}@extern.example>".encode()
    sender_field = from_field if from_field is not None else f"Iemand <{sender}>".encode()
    return (
        b"From: " + sender_field + b"\r\n"
        b"To: " + MAILBOX.encode() + b"\r\n"
        b"Subject: " + subject + b"\r\n"
        b"Message-ID: " + mid + b"\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n" + extra + b"MIME-Version: 1.0\r\n"
        b"Content-Type: " + ctype + b"\r\n\r\n" + body
    )


def references(n: int = REFERENCES, prefix: str = "VV") -> list[str]:
    """``n`` distinct valid references (random, so distinct in practice; checked)."""
    found: dict[str, None] = {}
    while len(found) < n:
        found[new_reference(prefix)] = None
    return list(found)


def code(i: int) -> str:
    """Four characters, distinct for every ``i`` below 32**4."""
    return "".join(ALPHABET[(i >> (5 * k)) & 31] for k in range(4))


def near_miss(ref: str) -> str:
    """``ref`` with a wrong check character: a candidate that fails the check."""
    wrong = ALPHABET[(ALPHABET.index(ref[-1]) + 1) % len(ALPHABET)]
    return ref[:-1] + wrong


def many_references(n: int = REFERENCES, sender: str = OUTSIDER) -> bytes:
    """The issue's mail: ~1 MB whose body holds ``n`` distinct valid references, six
    to a line (so it passes SMTP's line length limit)."""
    refs = references(n)
    lines = "\r\n".join(" ".join(refs[i : i + 6]) for i in range(0, n, 6))
    return mail(sender=sender, subject=b"Overzicht", body=lines.encode() + b"\r\n")


def shapes() -> dict[str, bytes]:
    """Name → raw mail, one per hostile shape."""
    refs = references()
    parts = b"".join(
        b"--b\r\nContent-Type: text/plain\r\n\r\ndeel %d\r\n" % i for i in range(5_000)
    )
    nested = b"".join(
        b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i, i + 1)
        for i in range(3_000)
    )
    return {
        "70,000 distinct references": many_references(),
        "70,000 references with a wrong check": mail(
            body=" ".join(near_miss(r) for r in refs).encode() + b"\r\n"
        ),
        "3,000 references in the subject": mail(subject=" ".join(refs[:3_000]).encode()),
        "20,000 addresses in Cc": mail(
            extra=b"Cc: " + b", ".join(b"a%d@x.example" % i for i in range(20_000)) + b"\r\n"
        ),
        "20,000 addresses in From": mail(
            from_field=b", ".join(b"a%d@x.example" % i for i in range(20_000))
        ),
        "12,000 encoded-words in the subject": mail(
            subject=b" ".join(b"=?utf-8?q?ab=C3=A9?=" for _ in range(12_000))
        ),
        "10,000 MIME parameters": mail(
            ctype=b"text/plain" + b"".join(b"; p%d=v" % i for i in range(10_000))
        ),
        "10,000 Message-IDs in References and In-Reply-To": mail(
            extra=b"References: "
            + b" ".join(b"<%d@x.example>" % i for i in range(10_000))
            + b"\r\nIn-Reply-To: "
            + b" ".join(b"<%d@y.example>" % i for i in range(10_000))
            + b"\r\n"
        ),
        "5,000 MIME parts": mail(ctype=b'multipart/mixed; boundary="b"', body=parts + b"--b--\r\n"),
        "3,000 nested multiparts": mail(ctype=b'multipart/mixed; boundary="b0"', body=nested),
        "50,000 header fields": mail(
            extra=b"".join(b"X-Veld-%d: waarde\r\n" % i for i in range(50_000))
        ),
        "a 1 MB line of prefixes": mail(body=b"VV" * 500_000 + b"\r\n"),
        "a 1 MB line after a prefix": mail(body=b"VV-" + b"A" * 1_000_000 + b"\r\n"),
        "a 1 MB line of token look-alikes": mail(body=b"ABCD-" * 200_000 + b"\r\n"),
        "100,000 nested HTML elements": mail(ctype=b"text/html", body=b"<div>" * 100_000),
        "a bounce quoting 20,000 Message-IDs": mail(
            subject=b"Undelivered Mail Returned to Sender",
            extra=b"Auto-Submitted: auto-replied\r\n",
            body=b"".join(b"Message-ID: <%d@z.example>\r\n" % i for i in range(20_000)),
        ),
    }
