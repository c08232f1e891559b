"""``inboxd run`` as a process: IDLE, faults, signals, sd_notify."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import MailServer
from world import MAILBOX, REPO, REPORTER, World, marker, signal_mail


@pytest.fixture
def world(mail: MailServer, tmp_path: Path) -> World:
    return World(mail, tmp_path / "w").setup()


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
