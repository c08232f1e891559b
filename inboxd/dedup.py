"""When two deliveries are the same message: its content without the trace headers.

A relay that retries after a lost reply, a second route through another MX, a
server that redelivers after a crash: each copy carries the same Message-ID and the
same content, but the headers that servers prepend on the way differ (``Received``,
``Return-Path``, ``Delivered-To``, ``Authentication-Results``, ARC sets, Exchange's
transport stamps). These are left out of the dedup HMAC; everything else — every
other header, in order, and the body byte for byte — is in it, so a different
message that reuses a Message-ID is still a message of its own.

Only the top of the header section is read for this (trace fields are prepended),
at most :data:`HEADER_SCAN_MAX` bytes, in one linear pass; the body is handed on as
a view, never copied.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

HEADER_SCAN_MAX = 1 << 20

# Fields a server adds or rewrites on delivery (lower case).
TRACE_FIELDS = frozenset(
    {
        "received",
        "x-received",
        "return-path",
        "delivered-to",
        "x-original-to",
        "x-envelope-from",
        "x-envelope-to",
        "envelope-to",
        "authentication-results",
        "received-spf",
        "x-ms-exchange-crosstenant-originalarrivaltime",
        "x-ms-exchange-crosstenant-network-message-id",
        "x-ms-office365-filtering-correlation-id",
        "x-ms-traffictypediagnostic",
        "x-ms-publictraffictype",
        "x-eopattributedmessage",
        "x-eoptenantattributedmessage",
        "x-forefront-antispam-report",
        "x-microsoft-antispam",
        "x-microsoft-antispam-message-info",
        "x-virus-scanned",
    }
)
# Families of such fields (lower-case prefixes).
TRACE_PREFIXES = (
    "arc-",
    "x-ms-exchange-organization-",
    "x-ms-exchange-transport-",
    "x-ms-exchange-antispam-",
    "x-spam-",
    "x-rspamd-",
)

_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def is_trace_field(name: str) -> bool:
    n = name.lower()
    return n in TRACE_FIELDS or n.startswith(TRACE_PREFIXES)


def without_trace(raw: bytes) -> Iterator[bytes | memoryview]:
    """``raw`` in pieces, minus the trace fields (each with its folded lines) and a
    leading mbox ``From `` line; the pieces joined are what the dedup HMAC covers."""
    view = memoryview(raw)
    limit = min(len(raw), HEADER_SCAN_MAX)
    pos = 0
    run = 0  # start of the run of kept lines not yet handed on
    dropping = False
    while pos < limit:
        nl = raw.find(b"\n", pos, limit)
        if nl < 0:
            break  # a header line longer than the scan: the rest is content
        line = raw[pos : nl + 1]
        if line in (b"\n", b"\r\n"):
            break  # end of the header section
        if line[:1] in (b" ", b"\t"):
            pass  # a folded line goes with its field
        elif pos == 0 and line.startswith(b"From "):
            dropping = True
        else:
            m = _NAME.match(line)
            dropping = m is not None and is_trace_field(m.group(1).decode("ascii"))
        if dropping:
            if run < pos:
                yield view[run:pos]
            run = nl + 1
        pos = nl + 1
    yield view[run:]
