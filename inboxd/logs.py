"""Structured logging: JSON lines on stdout, with an allow-list as the last word.

Events carry references, states, counts and sizes. Whatever else a caller passes —
by mistake, or from a library — is dropped by :func:`redact` before rendering, so a
reporter's address or a subject can never reach the journal through a log call.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from inboxd.event_counts import count_event

# Field names a log event may carry. Values of these fields must never be mail
# content; exceptions are logged by type name (``error``), never by message.
ALLOWED_FIELDS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "ref",
        "refs",
        "state",
        "flags",
        "kind",
        "reason",
        "size",
        "count",
        "batch",
        "backend",
        "transport",
        "host",
        "port",
        "folder",
        "security",
        "idle",
        "uidvalidity",
        "template",
        "destination",
        "attempt",
        "delay",
        "seconds",
        "duration_ms",
        "error",
        "code",
        "outbox_id",
        "mail_kind",
        "key_id",
        "version",
        "config",
        "pid",
        "signal",
        "job",
        "open",
        "exception",
        "action",
        "uid",
        "authenticated",  # sender evidence: a boolean
        "evidence",  # verified | unverified | not_required
        "restart",  # an expired Graph delta: "location" | "scratch"
        "retry_after",  # seconds a server asked to be left alone
        "uploaded",  # parts of a Graph mail sent through upload sessions
    }
)


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop every field that is not on the allow-list (defence in depth)."""
    dropped = [k for k in event_dict if k not in ALLOWED_FIELDS]
    for key in dropped:
        del event_dict[key]
    if dropped:
        event_dict["redacted"] = len(dropped)
    return event_dict


def _safe_exception(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace exc_info with the exception's type and frames, without messages or locals.

    Exception messages of the email package and of servers can quote header values,
    so only the type name and the code locations are kept.
    """
    # Only this processor may write "exception": a caller's own value could be str(exc).
    event_dict.pop("exception", None)
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or exc_info[0] is None:
        return event_dict
    transformer = ExceptionDictTransformer(show_locals=False)
    stacks = transformer(exc_info)
    event_dict["exception"] = [
        {
            "type": stack.get("exc_type"),
            "frames": [
                {"file": f.get("filename"), "line": f.get("lineno"), "name": f.get("name")}
                for f in stack.get("frames", [])
            ],
        }
        for stack in stacks
    ]
    return event_dict


class _ConsoleRenderer:
    """structlog's console renderer, with our exception summary made one line."""

    def __init__(self) -> None:
        self._inner = structlog.dev.ConsoleRenderer(colors=False)

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        exc = event_dict.pop("exception", None)
        if isinstance(exc, list) and exc:
            last = exc[-1]
            frame = (last.get("frames") or [{}])[-1]
            event_dict["error_at"] = (
                f"{last.get('type')} at {frame.get('file')}:{frame.get('line')}"
            )
        return str(self._inner(logger, name, event_dict))


_configured = False


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog and route stdlib logging (imapclient, exchangelib, msal)
    through the same pipeline at WARNING."""
    global _configured
    out = stream if stream is not None else sys.stdout
    renderer: Any = _ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()

    shared: list[Any] = [
        count_event,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _safe_exception,
        redact,
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared[1:3]],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _foreign_to_safe,
                _safe_exception,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for noisy in ("imapclient", "exchangelib", "msal", "httpx", "httpcore", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def _foreign_to_safe(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A library's log message is free text that may quote a mail: keep only where it
    came from, never what it said."""
    event_dict["event"] = "library.log"
    return event_dict


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
