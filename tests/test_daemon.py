"""``inboxd run`` as a process: IDLE, faults, signals, sd_notify."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hostile
import pytest
from servers import MailServer
from servers.line import Line
from world import MAILBOX, OUTSIDER, REPO, REPORTER, World, marker, signal_mail


class Daemon:
    """``inboxd run`` with its JSON log lines read on a thread, so a test can wait for
    an event with a bounded timeout."""

    def __init__(self, world: World, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inboxd", "run", "--config", str(world.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.events: queue.Queue[dict[str, object]] = queue.Queue()
        self.lines: list[str] = []
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        # Drain stderr too: a full pipe would block the daemon.
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def wait_for(self, event: str, timeout: float = 15.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            if e.get("event") == event:
                return e
        raise AssertionError(f"no {event} within {timeout}s; log: {''.join(self.lines[-20:])}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"inboxd run did not stop within {timeout}s of SIGTERM; log: "
                f"{''.join(self.lines[-10:])} stderr: {''.join(self.errors[-10:])}"
            ) from None


@pytest.fixture
def daemon(world: World) -> Iterator[Daemon]:
    d = Daemon(world)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_run_acknowledges_under_idle_and_stops_cleanly_on_sigterm(
    world: World, mail: MailServer, daemon: Daemon
) -> None:
    daemon.wait_for("daemon.started")
    daemon.wait_for("mailbox.connected")
    mark = marker()
    mail.deliver(signal_mail(mark), MAILBOX)
    assert len(mail.wait_for_messages(REPORTER, 1, timeout=10)) == 1
    assert daemon.stop() == 0
    log = "".join(daemon.lines)
    assert '"event": "daemon.stopped"' in log
    assert mark not in log and REPORTER not in log


def test_dovecot_restart_during_run_loses_nothing(
    world: World, mail: MailServer, daemon: Daemon
) -> None:
    daemon.wait_for("mailbox.connected")
    mail.deliver(signal_mail(marker()), MAILBOX)
    mail.wait_for_messages(REPORTER, 1, timeout=10)
    mail.stop_dovecot()
    daemon.wait_for("mailbox.error", timeout=40)
    mail.start_dovecot()
    daemon.wait_for("mailbox.connected", timeout=40)
    mail.deliver(signal_mail(marker()), MAILBOX)
    assert len(mail.wait_for_messages(REPORTER, 2, timeout=30)) == 2
    assert daemon.stop() == 0
    assert world.status()["open"] == 2
    assert mail.messages(MAILBOX) == []


def test_sd_notify_ready_and_stopping(world: World, mail: MailServer, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    d = Daemon(world, env={"NOTIFY_SOCKET": path})
    try:
        assert sock.recv(4096) == b"READY=1"
        d.wait_for("mailbox.connected")
        assert d.stop() == 0
        seen = []
        while b"STOPPING=1" not in seen:
            seen.append(sock.recv(4096))
    finally:
        sock.close()
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


# Linux's SO_TIMESTAMPNS (asm-generic; Python's socket module does not name it): the
# kernel stamps each datagram when it arrives, so the times below are the daemon's,
# not those of this busy test process (it also runs the SMTP relay) reading them.
SO_TIMESTAMPNS = 35


class Notifications:
    """A datagram socket standing in for systemd's: every datagram with the time the
    kernel received it (``time.time()``'s clock), read on a thread."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.2)
        self.path = str(path)
        self.received: list[tuple[float, bytes]] = []
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            except OSError:
                return
            stamps = [
                struct.unpack("qq", cdata[:16])
                for level, kind, cdata in ancillary
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS
            ]
            sec, nsec = stamps[0] if stamps else (0, 0)
            self.received.append((sec + nsec / 1e9 if stamps else time.time(), data))

    def pings(self) -> list[float]:
        return [t for t, d in self.received if d == b"WATCHDOG=1"]

    def close(self) -> None:
        self._done.set()
        self._reader.join(timeout=5)
        self.sock.close()


def silence(pings: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest stretch of [start, end] without a ping (the edges count too)."""
    marks = [start, *(t for t in pings if start <= t <= end), end]
    return max(zip(marks, marks[1:], strict=False), key=lambda ab: ab[1] - ab[0])


def longest_silence(pings: list[float], start: float, end: float) -> float:
    a, b = silence(pings, start, end)
    return b - a


def events_between(lines: list[str], a: float, b: float) -> list[str]:
    """What the daemon logged in [a, b], and when: where a silence went."""
    out = []
    for line in lines:
        try:
            e = json.loads(line)
            t = dt.datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00"))
        except (ValueError, KeyError):
            continue
        if a <= t.timestamp() <= b:
            out.append(f"{e.get('event')}@{t.timestamp() - a:.2f}s")
    return out


BACKLOG = 5_000


def test_waiting_for_a_job_that_holds_the_lock_keeps_the_watchdog_fed(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler job (a long drain, a VACUUM) holds the work lock: the loop waits
    for it in slices and pings between them, instead of going silent."""
    listener = Notifications(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    from inboxd.daemon import Daemon as Loop

    app = world.app()
    loop = Loop(app)
    held = threading.Event()
    release = threading.Event()

    def job() -> None:
        with app.lock:
            held.set()
            release.wait(10)

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert held.wait(10)
        t0 = time.time()
        threading.Timer(3.0, release.set).start()
        with loop.locked():
            t1 = time.time()
    finally:
        release.set()
        worker.join(10)
        app.close()
        listener.close()
    assert t1 - t0 >= 2.9, "the lock was not held as long as the job ran"
    silence = longest_silence(listener.pings(), t0, t1)
    assert silence < 1.0, f"{silence:.2f}s without a ping while waiting for the lock"


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``condition`` came true within ``timeout`` (looked at every 50 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_long_wait_for_the_work_lock_is_logged_once(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop pings while it waits for the lock, so a job that hangs holding it
    is no watchdog matter: the log says the loop waits, once per wait."""
    listener = Notifications(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # slices of 0.1 s
    from inboxd.daemon import Daemon as Loop

    app = world.app()
    loop = Loop(app, lock_wait_logged=0.3)
    held = threading.Event()
    seen: dict[str, bool] = {}

    def job() -> None:
        with app.lock:
            held.set()
            seen["told"] = until(lambda: "daemon.lock_waiting" in world.log_text())
            # Several more slices of waiting: the line must not come again.
            pings = len(listener.pings())
            seen["waited on"] = until(lambda: len(listener.pings()) >= pings + 4)

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert held.wait(10)
        with loop.locked():
            pass
    finally:
        worker.join(30)
        app.close()
        listener.close()
    assert seen == {"told": True, "waited on": True}
    lines = [json.loads(x) for x in world.log_text().splitlines() if "lock_waiting" in x]
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "warning" and lines[0]["seconds"] >= 0


def watched_daemon(world: World, tmp_path: Path, usec: int) -> tuple[Notifications, Daemon]:
    """``inboxd run`` under a watchdog of ``usec``, its notifications recorded."""
    listener = Notifications(tmp_path / "notify")
    return listener, Daemon(world, env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(usec)})


def assert_fed_in_every_phase(
    listener: Notifications, d: Daemon, phases: dict[str, tuple[float, float]], usec: int
) -> list[float]:
    """No phase had a silence between pings as long as the watchdog's interval (the
    log lines around the longest one say what the daemon was doing); the pings."""
    interval = usec / 1_000_000
    pings = listener.pings()
    silences = {k: round(longest_silence(pings, *v), 2) for k, v in phases.items()}
    late = {k: v for k, v in silences.items() if v >= interval}
    where = {k: events_between(d.lines, *silence(pings, *phases[k]))[-12:] for k in late}
    assert not late, f"WATCHDOG_USEC={usec}: longest silence per phase {silences}; {where}"
    return pings


@pytest.mark.parametrize("usec", [2_000_000, 4_000_000])
def test_watchdog_is_fed_while_idle_through_a_hostile_mail_and_a_backlog(
    world: World, mail: MailServer, tmp_path: Path, usec: int
) -> None:
    """systemd kills the service when no WATCHDOG=1 came for WATCHDOG_USEC: there must
    be one at least every interval, whatever the daemon is doing."""
    interval = usec / 1_000_000
    backlog = [
        signal_mail(f"B{i:05d}", sender=OUTSIDER, subject=f"Signaal {i}") for i in range(BACKLOG)
    ]
    listener, d = watched_daemon(world, tmp_path, usec)
    phases: dict[str, tuple[float, float]] = {}
    try:
        d.wait_for("mailbox.connected")
        # Idle: nothing to do but wait for mail, for a few intervals.
        t0 = time.time()
        with pytest.raises(subprocess.TimeoutExpired):
            d.proc.wait(timeout=3 * interval)  # it must simply stay up
        phases["idle"] = (t0, time.time())

        t0 = time.time()
        mail.append(MAILBOX, hostile.many_references())
        assert int(str(d.wait_for("signal.queued", timeout=60)["size"])) > 900_000
        d.wait_for("intake.done")
        phases["hostile mail"] = (t0, time.time())

        t0 = time.time()
        mail.append_many(MAILBOX, backlog)
        queued = 0
        deadline = time.time() + 600
        while queued < BACKLOG and time.time() < deadline:
            queued += int(str(d.wait_for("intake.done", timeout=600)["batch"]))
        assert queued == BACKLOG
        phases["backlog"] = (t0, time.time())
        assert d.stop(timeout=60) == 0
    finally:
        listener.close()
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    pings = assert_fed_in_every_phase(listener, d, phases, usec)
    every = longest_silence(pings, pings[0], phases["backlog"][1])
    assert every < interval, f"a silence of {every:.2f}s between pings"


# 24 MiB over a line of at most 5 MiB/s (less on a loaded machine): five seconds
# or more to fetch it, as long for each mail that attaches it, while WatchdogSec is
# four; an IMAP part (4 MiB) takes about one, building a mail around it under one.
LARGE_SIGNAL = 24 * 2**20
LINE_RATE = 5 * 2**20


@pytest.mark.slow
def test_a_very_large_signal_is_fetched_sent_and_forwarded_with_the_watchdog_fed(
    world: World, mail: MailServer, tmp_path: Path
) -> None:
    """One fetch or one send of a message of tens of MiB can take longer than
    WatchdogSec: the beat reaches between the parts an IMAP fetch brings in, the
    pieces an SMTP send writes, and into the wait for the server's answer."""
    from world import F1, F2, RIEC, config_text, imap_sections, reply, submit

    usec = 4_000_000
    interval = usec / 1_000_000
    imap = Line(mail.imap_tls_port, LINE_RATE)
    smtp = Line(mail.smtp_port, LINE_RATE)
    sections = imap_sections(
        imap_port=imap.port,
        smtp_port=smtp.port,
        ca=mail.ca_file,
        password_file=world.root / "imap-password",
        smtp_password_file=world.root / "smtp-password",
    )
    world.config_path.write_text(config_text(world.root, sections))
    photo = os.urandom(LARGE_SIGNAL * 57 // 78)  # base64 lines: 57 bytes in 78
    raw = signal_mail(marker(), attachments=[("foto.jpg", photo, "image/jpeg")])
    assert len(raw) > LARGE_SIGNAL - 2**20
    listener, d = watched_daemon(world, tmp_path, usec)
    phases: dict[str, tuple[float, float]] = {}
    try:
        d.wait_for("mailbox.connected")
        t0 = time.time()
        mail.append(MAILBOX, raw)  # straight into Dovecot, not over the slow line
        d.wait_for("signal.queued", timeout=120)
        phases["fetched"] = (t0, time.time())
        t0 = time.time()
        requests = [mail.wait_for_messages(f, 1, timeout=120)[0] for f in (F1, F2)]
        assert all(len(r) > len(raw) for r in requests), "the original attached to both"
        phases["sent"] = (t0, time.time())
        t0 = time.time()
        submit(mail, reply(requests[0], "RIEC"))
        forward = mail.wait_for_messages(RIEC, 1, timeout=120)[0]
        assert len(forward) > len(raw), "the original forwarded"
        phases["forwarded"] = (t0, time.time())
        assert d.stop(timeout=60) == 0
    finally:
        listener.close()
        imap.close()
        smtp.close()
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    took = {k: round(b - a, 1) for k, (a, b) in phases.items()}
    assert took["fetched"] > interval and took["forwarded"] > interval, f"too fast: {took}"
    assert_fed_in_every_phase(listener, d, phases, usec)
