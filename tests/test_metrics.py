"""The Prometheus endpoint (``[metrics] listen``) of ``inboxd run``: gauges that match
``status --json``, event counters that move, and nothing but counts."""

from __future__ import annotations

import io
import logging
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
from fakes import captured_logs
from prometheus_client import generate_latest
from servers import MailServer
from test_daemon import Daemon
from world import F1, MAILBOX, REPORTER, World, marker, signal_mail

from inboxd import __version__, logs, metrics
from inboxd.crypto import Keyring
from inboxd.intake import status_snapshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` → value, comments skipped."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    w = World(mail, tmp_path / "w").setup()
    w.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    return w


@pytest.fixture
def daemon(world: World) -> Iterator[Daemon]:
    d = Daemon(world)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def scrape(world: World) -> str:
    listen = world.cfg().metrics
    assert listen is not None
    url = f"http://{listen.listen}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:  # loopback only
        return str(r.read().decode())


def scrape_until(world: World, ok: object, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            last = parse_metrics(scrape(world))
        except OSError:
            last = {}
        if last and ok(last):  # type: ignore[operator]
            return last
        time.sleep(0.1)
    raise AssertionError(f"metrics never got there; last scrape: {last}")


def events(m: dict[str, float], name: str) -> float:
    return m.get(f'inboxd_events_total{{event="{name}"}}', 0.0)


def gauges(m: dict[str, float]) -> dict[str, float]:
    return {
        k: v
        for k, v in m.items()
        if k.startswith(("inboxd_signals", "inboxd_open", "inboxd_outbox"))
    }


def test_metrics_match_status_and_count_events(
    world: World, mail: MailServer, daemon: Daemon
) -> None:
    marks = [marker(), marker()]
    mail.deliver(signal_mail(marks[0]), MAILBOX)
    daemon.wait_for("daemon.started")
    first = scrape_until(
        world,
        lambda m: events(m, "signal.queued") == 1 and m.get("inboxd_outbox") == 0,
    )
    assert events(first, "ack.sent") == 1 and events(first, "triage_request.sent") == 2
    assert first["inboxd_open_signals"] == 1

    mail.deliver(signal_mail(marks[1]), MAILBOX)
    m = scrape_until(
        world, lambda m: events(m, "signal.queued") == 2 and m.get("inboxd_outbox") == 0
    )
    assert events(m, "ack.sent") == 2
    status = world.status()
    again = parse_metrics(scrape(world))
    assert gauges(again) == gauges(m), "nothing moved while status was read"
    assert m["inboxd_open_signals"] == status["open"] == 2
    assert m["inboxd_outbox"] == status["outbox"] == 0
    by_state = {
        k.split('"')[1]: int(v) for k, v in m.items() if k.startswith("inboxd_signals{state=")
    }
    assert by_state == status["by_state"] == {"queued": 2}
    assert m["inboxd_oldest_open_seconds"] >= 0
    assert m["inboxd_last_fetch_timestamp_seconds"] > time.time() - 300
    assert m["inboxd_last_send_timestamp_seconds"] > time.time() - 300

    text = scrape(world)
    store = world.store()
    try:
        refs = [s.ref for s in store.signals()]
    finally:
        store.close()
    assert len(refs) == 2
    for needle in [*refs, *marks, REPORTER, F1, MAILBOX, "@", "VV-"]:
        assert needle not in text, f"{needle} in the metrics"
    labels = set(re.findall(r'\{([a-z_]+)="', text))
    assert labels <= {"event", "state"}, labels

    assert status["keys"] == [Keyring.from_files(world.cfg().crypto.key_files).newest.key_id]
    assert status["version"] == __version__
    assert daemon.stop() == 0


# -- in process ------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    with captured_logs() as buf:
        yield buf


def counter(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value("inboxd_events_total", {"event": name})
    return value or 0.0


def test_every_dotted_event_is_counted_and_free_text_never_a_label(
    captured: io.StringIO,
) -> None:
    log = logs.get_logger("inboxd.test")
    before = counter("cycle.failed"), counter("store.error")
    log.error("cycle.failed", error="RuntimeError")
    log.error("store.error", error="OperationalError")
    assert (counter("cycle.failed"), counter("store.error")) == (before[0] + 1, before[1] + 1)
    log.info("Signaal van melder@gemeente.example over iets")
    log.info("a.b.c.d.e")
    text = generate_latest(metrics.REGISTRY).decode()
    assert "melder" not in text and "a.b.c.d.e" not in text


def test_two_apps_in_one_process_each_have_their_own_gauges(
    mail: MailServer, tmp_path: Path
) -> None:
    worlds = [World(mail, tmp_path / f"w{i}").setup() for i in range(2)]
    mail.deliver(signal_mail(marker()), MAILBOX)
    worlds[0].once()
    apps = [w.app() for w in worlds]
    try:
        texts = [
            parse_metrics(generate_latest(metrics.registry_for(a.store, a.clock, a.lock)).decode())
            for a in apps
        ]
        for app, m in zip(apps, texts, strict=True):
            snap = status_snapshot(app.store, app.clock())
            assert m["inboxd_open_signals"] == snap["open"]
            assert m["inboxd_outbox"] == snap["outbox"]
            assert m["inboxd_shred_pending"] == snap["shred_pending"] == 0
        assert [m["inboxd_open_signals"] for m in texts] == [1, 0]
    finally:
        for a in apps:
            a.close()


# -- the stop signal and the log/counter locks (belongs with test_daemon.py) -------------


class BlockingStream(io.StringIO):
    """A log stream whose writes wait until released: the main thread caught in the
    middle of writing a log line (structlog holds its per-file lock meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.release.wait(30)
        return super().write(s)


def test_the_stop_signal_handler_never_waits_for_the_log() -> None:
    from inboxd.daemon import Daemon as RealDaemon

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = BlockingStream()
    logs.configure(stream=stream)
    try:
        writer = threading.Thread(
            target=lambda: logs.get_logger("t").info("mailbox.connected"), daemon=True
        )
        writer.start()
        assert stream.entered.wait(10)
        d = RealDaemon(SimpleNamespace())  # type: ignore[arg-type]
        handler = threading.Thread(target=d._on_signal, args=(signal.SIGTERM, None), daemon=True)
        handler.start()
        handler.join(2)
        stopped_at_once = not handler.is_alive() and d.stop.is_set()
    finally:
        stream.release.set()
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert stopped_at_once
