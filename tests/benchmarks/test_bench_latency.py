"""(a) Latency from SMTP delivery to the acknowledgement in the reporter's mailbox,
with ``inboxd run`` idling (IMAP IDLE) on the signals mailbox; and the floor of that
figure: how long Dovecot takes to tell a bare IDLE client about a delivery.

Prints figures; asserts only that things worked (not how fast). Run with
``INBOXD_BENCH=1 .venv/bin/python -m pytest -s tests/benchmarks`` (see README.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import hostile
import pytest
from imapclient import IMAPClient
from servers import MailServer
from world import MAILBOX, REPO, REPORTER, World, marker, signal_mail

pytestmark = pytest.mark.skipif(
    os.environ.get("INBOXD_BENCH") != "1",
    reason="benchmark: set INBOXD_BENCH=1 (and run pytest with -s to see the figures)",
)

N = 20
ARRIVAL_TIMEOUT = 10.0
POLL = 0.005  # resolution of the arrival check (a NOOP on the reporter's mailbox)
# Pacing between signals, not synchronisation: real signals arrive minutes apart, so
# each one should find the daemon back in IDLE, as it would in production.
PACE = 0.3


def ms(values: list[float]) -> str:
    s = sorted(values)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return (
        f"median {statistics.median(s) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   "
        f"max {s[-1] * 1000:7.1f} ms   min {s[0] * 1000:7.1f} ms   (n={len(s)})"
    )


class Daemon:
    """``inboxd run`` with its JSON log lines read on a thread."""

    def __init__(self, world: World) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inboxd", "run", "--config", str(world.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            text=True,
            # On a hang the benchmark sends SIGABRT: faulthandler then prints every
            # thread's stack to stderr, which the failure message shows.
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        self.events: queue.Queue[dict[str, object]] = queue.Queue()
        self.lines: list[str] = []
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        # A full stderr pipe would block the daemon: drain it too.
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    def wait_for(self, event: str, timeout: float = 20.0, **match: object) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
                return e
        raise AssertionError(
            f"no {event} {match} within {timeout}s; log tail: {''.join(self.lines[-15:])}"
            f" stderr: {''.join(self.errors[-10:])}"
        )

    def stacks(self) -> str:
        """Every thread's stack of a hung daemon (faulthandler, on SIGABRT)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self._err_reader.join(timeout=5)
        return "".join(self.errors[-60:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stamp(event: dict[str, object]) -> float:
    """The daemon's ISO timestamp as epoch seconds (same clock as ``time.time()``)."""
    return dt.datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


class Counter:
    """A persistent IMAP session on one mailbox; NOOP shows new mail at once
    (unlike IDLE, which Dovecot delays by ~0.5 s), so a NOOP poll is the honest clock."""

    def __init__(self, mail: MailServer, address: str) -> None:
        self._cm = mail.imap(address)
        self.client: IMAPClient = self._cm.__enter__()
        self.count = int(self.client.select_folder("INBOX", readonly=True)[b"EXISTS"])

    def wait_above(self, n: int, timeout: float) -> float:
        """Poll until the mailbox holds more than ``n`` messages; the time.time() then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _text, responses = self.client.noop()
            for r in responses:
                if isinstance(r, tuple) and len(r) == 2 and r[1] == b"EXISTS":
                    self.count = int(r[0])
            if self.count > n:
                return time.time()
            time.sleep(POLL)
        raise AssertionError(f"mailbox still at {self.count} after {timeout}s")

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def test_delivery_to_acknowledgement_under_idle(mail: MailServer, tmp_path: Path) -> None:
    world = World(mail, tmp_path / "w").setup()
    # 20 signals from one reporter inside the hour: lift the ack rate limit and the
    # flood brake, so each signal is acknowledged and triaged (a latency, not a flood).
    world.write_config(idle=True, rate="1000/h", request_limit="1000/h", notice_limit="1000/h")
    reporter = Counter(mail, REPORTER)
    daemon = Daemon(world)
    try:
        t_start = time.monotonic()
        daemon.wait_for("daemon.started")
        daemon.wait_for("mailbox.connected")
        startup = time.monotonic() - t_start

        total, deliver, pickup, queued_to_sent = [], [], [], []
        for i in range(N):
            mark = marker()
            raw = signal_mail(mark)
            before = reporter.count
            t0 = time.time()
            mail.deliver(raw, MAILBOX)
            t_delivered = time.time()
            t_arrived = reporter.wait_above(before, ARRIVAL_TIMEOUT)
            q = daemon.wait_for("signal.queued", timeout=5)
            s = daemon.wait_for("ack.sent", timeout=5, ref=q["ref"])
            # Both triage requests go out after the ack: wait for them, so the next
            # signal meets an idle daemon.
            daemon.wait_for("triage_request.sent", timeout=10, ref=q["ref"])
            daemon.wait_for("triage_request.sent", timeout=10, ref=q["ref"])
            total.append(t_arrived - t0)
            deliver.append(t_delivered - t0)
            pickup.append(stamp(q) - t_delivered)
            queued_to_sent.append(stamp(s) - stamp(q))
            assert mark not in "".join(daemon.lines)
            if i < N - 1:
                threading.Event().wait(PACE)

        t_stop = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            code = daemon.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "inboxd run did not exit within 10 s of SIGTERM; log tail:\n"
                f"{''.join(daemon.lines[-10:])}\nstacks (SIGABRT):\n{daemon.stacks()}"
            ) from None
        stop_s = time.monotonic() - t_stop
    finally:
        daemon.kill()
        reporter.close()
    assert code == 0, "".join(daemon.errors[-10:])

    floor, floor_after_delivery = idle_floor(mail)

    print()
    print("(a) delivery -> acknowledgement in the reporter's mailbox, inboxd run + IDLE")
    print(f"    daemon start to mailbox.connected      {startup * 1000:7.0f} ms")
    print(f"    total (t0 before SMTP submission)      {ms(total)}")
    print(f"      of which SMTP submission + LMTP      {ms(deliver)}")
    print(f"      delivered -> signal.queued (log)     {ms(pickup)}")
    print(f"      signal.queued -> ack.sent (log)      {ms(queued_to_sent)}")
    print(f"    floor: bare IDLE client, t0 -> EXISTS  {ms(floor)}")
    print(f"      of which after delivery returned     {ms(floor_after_delivery)}")
    print(f"    SIGTERM -> exit code {code}              {stop_s * 1000:7.0f} ms")
    print(
        f"    median total minus median IDLE floor   "
        f"{(statistics.median(total) - statistics.median(floor)) * 1000:7.1f} ms (inboxd's own share)"
    )


HOSTILE_RUNS = 5
# The timing: the genuine signal is sent one second after the hostile mail.
AFTER_HOSTILE = 1.0


def test_a_genuine_signal_right_after_the_70000_reference_mail(
    mail: MailServer, tmp_path: Path
) -> None:
    """A ~1 MB mail naming 70,000 distinct valid references, then one second later a
    reporter's signal: how long until that reporter has the acknowledgement (it took
    133 s when references were de-duplicated on lists)."""
    world = World(mail, tmp_path / "w").setup()
    world.write_config(idle=True, rate="1000/h")
    reporter = Counter(mail, REPORTER)
    daemon = Daemon(world)
    # Each round its own mail (a copy of the same one would be a duplicate).
    hostiles = [hostile.many_references() for _ in range(HOSTILE_RUNS)]
    total, hostile_cost = [], []
    try:
        daemon.wait_for("mailbox.connected")
        for i, raw_hostile in enumerate(hostiles):
            t_h = time.time()
            mail.deliver(raw_hostile, MAILBOX)
            threading.Event().wait(max(0.0, t_h + AFTER_HOSTILE - time.time()))
            before = reporter.count
            t0 = time.time()
            mail.deliver(signal_mail(marker()), MAILBOX)
            total.append(reporter.wait_above(before, 300) - t0)
            # Delivered first, so queued first (the same batch at worst).
            q_h = daemon.wait_for("signal.queued", timeout=300)
            assert int(str(q_h["size"])) >= len(raw_hostile)
            hostile_cost.append(stamp(q_h) - t_h)
            q = daemon.wait_for("signal.queued", timeout=10)
            for _ in range(2):  # the next round meets an idle daemon
                daemon.wait_for("triage_request.sent", timeout=30, ref=q["ref"])
            if i < HOSTILE_RUNS - 1:
                threading.Event().wait(PACE)
    finally:
        daemon.kill()
        reporter.close()
    print()
    print("(a2) a genuine signal sent 1 s after a ~1 MB mail with 70,000 distinct references")
    print(f"    hostile mail: t0 -> its signal.queued     {ms(hostile_cost)}")
    print(f"    genuine signal: t0 -> acknowledgement     {ms(total)}   (target < 2 s)")


def idle_floor(mail: MailServer) -> tuple[list[float], list[float]]:
    """Delivery -> IDLE notification for a bare imapclient on the signals mailbox (over
    implicit TLS, as inboxd connects). Run with no daemon: nothing else touches it."""
    ctx = ssl.create_default_context(cafile=mail.ca_file)
    client = IMAPClient(
        mail.imap_host, port=mail.imap_tls_port, ssl=True, ssl_context=ctx, timeout=30
    )
    floor, after = [], []
    try:
        client.login(MAILBOX, mail.password(MAILBOX))
        client.select_folder("INBOX")
        for _ in range(N):
            client.idle()
            t0 = time.time()
            mail.deliver(signal_mail(marker()), MAILBOX)
            t_delivered = time.time()
            deadline = time.monotonic() + ARRIVAL_TIMEOUT
            seen = None
            while seen is None and time.monotonic() < deadline:
                for r in client.idle_check(timeout=max(0.01, deadline - time.monotonic())):
                    if isinstance(r, tuple) and len(r) >= 2 and r[1] == b"EXISTS":
                        seen = time.time()
            client.idle_done()
            assert seen is not None, "no EXISTS within the timeout"
            floor.append(seen - t0)
            after.append(seen - t_delivered)
    finally:
        try:
            client.logout()
        except Exception:
            client.shutdown()
    return floor, after
