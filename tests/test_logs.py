"""Logging (docs/contract.md, "What is stored"; README "Logs"): JSON lines, an allow-list as the last word, exceptions by
type and location only, library log text never rendered."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from fakes import captured_logs

from inboxd import logs


class Captured:
    def __init__(self, buf: io.StringIO) -> None:
        self.buf = buf

    @property
    def text(self) -> str:
        return self.buf.getvalue()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    with captured_logs() as buf:
        yield Captured(buf)


def marker() -> str:
    return f"MARKER{uuid.uuid4().hex}"


def test_output_is_json_lines_with_level_and_timestamp(captured: Captured) -> None:
    log = logs.get_logger("inboxd.test")
    log.info("intake.queued", ref="VV-7K3M-9QXD", size=1234, state="queued")
    log.warning("outbox.retry", attempt=2, delay=30.0)
    (first, second) = captured.events()
    assert first["event"] == "intake.queued"
    assert first["ref"] == "VV-7K3M-9QXD" and first["size"] == 1234 and first["state"] == "queued"
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert "redacted" not in first
    assert second["level"] == "warning" and second["attempt"] == 2


@pytest.mark.parametrize(
    "field", ["subject", "sender", "body", "reporter", "to", "address", "text", "filename"]
)
def test_fields_off_the_allow_list_are_dropped(captured: Captured, field: str) -> None:
    m = marker()
    logs.get_logger().info("intake.queued", ref="VV-7K3M-9QXD", **{field: m})
    assert m not in captured.text
    (event,) = captured.events()
    assert field not in event
    assert event["redacted"] == 1
    assert event["ref"] == "VV-7K3M-9QXD"


def test_several_dropped_fields_are_counted(captured: Captured) -> None:
    m = marker()
    logs.get_logger().info("x", subject=m, sender=m, body=m)
    assert m not in captured.text
    assert captured.events()[0]["redacted"] == 3


def test_bound_and_context_fields_are_redacted_too(captured: Captured) -> None:
    m = marker()
    structlog.contextvars.bind_contextvars(sender=m, ref="VV-7K3M-9QXD")
    logs.get_logger().bind(subject=m).info("bound")
    assert m not in captured.text
    (event,) = captured.events()
    assert event["ref"] == "VV-7K3M-9QXD"


def test_redact_keeps_only_allowed_fields() -> None:
    ed: dict[str, Any] = {"event": "e", "ref": "r", "subject": "s", "x": 1}
    out = logs.redact(None, "info", ed)
    assert dict(out) == {"event": "e", "ref": "r", "redacted": 2}
    assert set(logs.ALLOWED_FIELDS).isdisjoint(
        {"subject", "sender", "body", "from", "to", "address", "reporter", "text", "question"}
    )


def test_exception_message_and_locals_are_not_logged(captured: Captured) -> None:
    m = marker()

    def parse_mail(raw: str) -> None:
        secret_local = f"local {m}"  # noqa: F841
        raise ValueError(f"bad header in {raw}")

    try:
        parse_mail(m)
    except ValueError:
        logs.get_logger().error("intake.parse_failed", exc_info=True, ref="VV-7K3M-9QXD")
    assert m not in captured.text
    (event,) = captured.events()
    assert event["event"] == "intake.parse_failed"
    (stack,) = event["exception"]
    assert stack["type"] == "ValueError"
    names = [f["name"] for f in stack["frames"]]
    assert "parse_mail" in names
    assert all(set(f) == {"file", "line", "name"} for f in stack["frames"])


def test_logger_exception_method_and_chained_causes(captured: Captured) -> None:
    m = marker()
    try:
        try:
            raise KeyError(m)
        except KeyError as inner:
            raise RuntimeError(f"wrapped {m}") from inner
    except RuntimeError:
        logs.get_logger().exception("outbox.failed")
    assert m not in captured.text
    (event,) = captured.events()
    assert [s["type"] for s in event["exception"]] == ["RuntimeError", "KeyError"]


def test_exception_instance_as_exc_info(captured: Captured) -> None:
    m = marker()
    try:
        raise OSError(m)
    except OSError as exc:
        err = exc
    logs.get_logger().error("mailbox.error", exc_info=err, error=type(err).__name__)
    assert m not in captured.text
    (event,) = captured.events()
    assert event["error"] == "OSError"
    assert event["exception"][0]["type"] == "OSError"


def test_caller_supplied_exception_text_is_not_logged(captured: Captured) -> None:
    m = marker()
    logs.get_logger().error("oops", exception=f"ValueError: {m}")
    assert m not in captured.text


@pytest.mark.parametrize("name", ["imapclient", "imapclient.imapclient", "exchangelib", "msal"])
def test_library_logs_come_out_as_library_log_without_text(captured: Captured, name: str) -> None:
    m = marker()
    lib = logging.getLogger(name)
    lib.warning("FETCH response: Subject: %s", m)
    lib.error("From: <%s@example>", m)
    assert m not in captured.text
    events = captured.events()
    assert len(events) == 2
    for event in events:
        assert event["event"] == "library.log"
        assert event["logger"] == name
        assert event["level"] in ("warning", "error")


def test_library_exceptions_keep_only_the_type(captured: Captured) -> None:
    m = marker()
    try:
        raise ConnectionError(f"server said {m}")
    except ConnectionError:
        logging.getLogger("exchangelib").error("SOAP body %s", m, exc_info=True)
    assert m not in captured.text
    (event,) = captured.events()
    assert event["event"] == "library.log"
    assert event["exception"][0]["type"] == "ConnectionError"


def test_library_debug_and_info_are_not_emitted(captured: Captured) -> None:
    m = marker()
    logging.getLogger("exchangelib").debug("<soap>%s</soap>", m)
    logging.getLogger("imapclient").info("> FETCH %s", m)
    assert captured.text == ""


def test_library_extra_fields_are_redacted(captured: Captured) -> None:
    m = marker()
    logging.getLogger("msal").warning("token", extra={"subject": m, "username": m})
    assert m not in captured.text
    (event,) = captured.events()
    assert event["event"] == "library.log"


def test_level_filter() -> None:
    with captured_logs(level="warning") as buf:
        log = logs.get_logger()
        log.info("quiet")
        log.warning("loud")
        lines = [json.loads(x) for x in buf.getvalue().splitlines()]
        assert [e["event"] for e in lines] == ["loud"]


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    with captured_logs("console") as buf:
        yield buf


def test_console_format_is_redacted_too(console: io.StringIO) -> None:
    m = marker()
    logs.get_logger().info("intake.queued", ref="VV-7K3M-9QXD", subject=m)
    logging.getLogger("imapclient").warning("%s", m)
    out = console.getvalue()
    assert "intake.queued" in out and "VV-7K3M-9QXD" in out
    assert "library.log" in out
    assert m not in out


def test_console_format_logs_exceptions(console: io.StringIO) -> None:
    m = marker()
    try:
        raise ValueError(m)
    except ValueError:
        logs.get_logger().error("boom", exc_info=True)
    out = console.getvalue()
    assert "boom" in out and "ValueError" in out
    assert m not in out
