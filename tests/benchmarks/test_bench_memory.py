"""(c) Peak RSS of ``inboxd once`` taking in one ~40 MiB message (one base64
attachment), against the interpreter's own footprint (``inboxd once`` on an empty
mailbox).

Three runs, each a fresh state directory and a separate process whose peak RSS comes
from ``os.wait4`` (its own ``ru_maxrss``, no other child mixed in):

- baseline: empty mailbox;
- relay: the 40 MiB signal through the test relay. The relay (aiosmtpd) advertises
  SIZE 32 MiB, so the two triage requests are built with the original, found too
  big, and sent without it (with a note): what a server with a smaller size limit
  than the signal does;
- sink: the same signal with SMTP pointed at a local sink without a size limit, so
  the triage requests really go out (the whole send path: render, smtplib);
- phases: the sink run once more in a child Python that wraps the steps of intake
  and of the drain and reads the peak RSS of each (Linux ``VmHWM``, reset between
  steps through ``/proc/self/clear_refs``): what each step adds to the RSS it found.
  RSS, not tracemalloc, because SQLite's and OpenSSL's copies are C allocations.

``include_content = "full"`` (the default): each triage request attaches the original.
Prints figures; asserts only that the runs worked. See README.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from servers import MailServer
from servers.dovecot import free_port
from world import MAILBOX, REPO, REPORTER, World, marker, signal_mail

pytestmark = pytest.mark.skipif(
    os.environ.get("INBOXD_BENCH") != "1",
    reason="benchmark: set INBOXD_BENCH=1 (and run pytest with -s to see the figures)",
)

MESSAGE_BYTES = 40 * 2**20
# base64 with 76-character lines and CRLF: 57 bytes of data per 78 bytes of mail.
ATTACHMENT_BYTES = MESSAGE_BYTES * 57 // 78 - 4096
RUN_TIMEOUT = 180.0
TARGET_RATIO = 4.0


def big_signal() -> bytes:
    data = os.urandom(ATTACHMENT_BYTES)  # incompressible, like a photo or a PDF
    return signal_mail(marker(), attachments=[("foto's.zip", data, "application/zip")])


@dataclass
class Run:
    code: int
    peak_kb: int
    seconds: float
    events: list[dict[str, Any]]

    def names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events]


# The child reports its own high-water mark. Not ``wait4``/``RUSAGE_CHILDREN``: a
# child started from this big pytest process inherits the parent's high-water mark at
# exec (Linux keeps the old mm's peak in signal->maxrss, and subprocess uses vfork), so
# ``ru_maxrss`` would show pytest's peak (measured: 626 MB for a 10 MB child of a
# 600 MB parent). ``VmHWM`` belongs to the new address space only.
_ONCE_WITH_PEAK = """\
import atexit, sys
out = sys.argv.pop()
def _peak():
    with open("/proc/self/status") as f:
        kb = next(x for x in f if x.startswith("VmHWM:")).split()[1]
    with open(out, "w") as f:
        f.write(kb)
atexit.register(_peak)
sys.argv[0] = "inboxd"
from inboxd.cli import main
raise SystemExit(main())
"""


def run_once(world: World, log: Path) -> Run:
    """``inboxd once`` (as ``python -m inboxd`` runs it) in a child process that
    reports its peak RSS (``VmHWM``) on exit."""
    peak_file = log.with_suffix(".peak")
    with log.open("w") as out:
        t = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _ONCE_WITH_PEAK,
                "once",
                "--config",
                str(world.config_path),
                str(peak_file),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            timeout=RUN_TIMEOUT,
        )
        seconds = time.monotonic() - t
    events = []
    for line in log.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": "(not json)", "line": line[:200]})
    return Run(proc.returncode, int(peak_file.read_text()), seconds, events)


def time_v_peak_kb(args: list[str]) -> int | None:
    """``/usr/bin/time``'s figure for a command (a small parent: no inherited peak)."""
    if not os.path.exists("/usr/bin/time"):
        return None
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    return int(out.stderr.strip().splitlines()[-1])


class Sink:
    """An SMTP server that accepts any size and keeps only the byte counts: STARTTLS
    with the test CA's certificate and any AUTH, as inboxd's config demands."""

    def __init__(self, mail: MailServer) -> None:
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls = mail.dovecot.tls
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        self.sizes: list[int] = []
        # aiosmtpd checks readiness by connecting to the port it was given: no port 0.
        self.port = free_port()
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=ctx,
            auth_required=True,
            auth_require_tls=True,
            authenticator=lambda *_args: AuthResult(success=True),
            data_size_limit=None,
            ready_timeout=10.0,
        )

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.sizes.append(len(envelope.original_content or b""))
        return "250 2.0.0 discarded"

    def __enter__(self) -> int:
        self.controller.start()
        return self.port

    def __exit__(self, *_exc: object) -> None:
        self.controller.stop()


# --- per-step peaks, in a child process -----------------------------------------------


def _proc_status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


@dataclass
class _Frame:
    label: str
    entry_kb: int
    peak_kb: int


@dataclass
class Peaks:
    """Peak RSS per wrapped step. Steps may nest: before a step resets the high-water
    mark, every enclosing step takes the mark so far, so none loses its peak."""

    stack: list[_Frame] = field(default_factory=list)
    rise_kb: dict[str, int] = field(default_factory=dict)
    peak_kb: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def _enter(self, label: str) -> None:
        hwm = _proc_status_kb("VmHWM")
        for f in self.stack:
            f.peak_kb = max(f.peak_kb, hwm)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        rss = _proc_status_kb("VmRSS")
        self.stack.append(_Frame(label, rss, rss))

    def _exit(self) -> None:
        frame = self.stack.pop()
        frame.peak_kb = max(frame.peak_kb, _proc_status_kb("VmHWM"))
        for f in self.stack:
            f.peak_kb = max(f.peak_kb, frame.peak_kb)
        label = frame.label
        self.rise_kb[label] = max(self.rise_kb.get(label, 0), frame.peak_kb - frame.entry_kb)
        self.peak_kb[label] = max(self.peak_kb.get(label, 0), frame.peak_kb)
        self.calls[label] = self.calls.get(label, 0) + 1

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        self._enter(label)
        try:
            yield
        finally:
            self._exit()

    def wrap(self, target: Any, name: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(target, name)

        def measured(*args: Any, **kwargs: Any) -> Any:
            with self.step(label):
                return fn(*args, **kwargs)

        setattr(target, name, measured)

    def wrap_iter(self, target: Any, name: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(target, name)

        def measured(*args: Any, **kwargs: Any) -> Iterator[Any]:
            it = iter(fn(*args, **kwargs))
            while True:
                with self.step(label):
                    item = next(it, None)
                if item is None:
                    return
                yield item

        setattr(target, name, measured)


def phase_profile(config_path: str) -> dict[str, Any]:
    """Runs in the child: ``once`` with every interesting step wrapped."""
    import inboxd.intake
    import inboxd.outbox
    import inboxd.sealed_columns
    import inboxd.sqlite_store
    import inboxd.sqlite_transaction
    from inboxd import config, logs
    from inboxd.app import build
    from inboxd.daemon import once
    from inboxd.intake import Intake
    from inboxd.outbox import Outbox

    logs.configure("json", "warning", stream=io.StringIO())
    start_kb = _proc_status_kb("VmRSS")
    app = build(config.load(config_path))
    p = Peaks()
    # Intake, in the order the steps happen.
    p.wrap_iter(app.mailbox, "fetch", "intake: IMAP fetch (imapclient)")
    p.wrap(inboxd.intake, "parse_message", "intake: parse_message")
    p.wrap(inboxd.sealed_columns, "seal", "intake: seal (small values, whole)")
    # The outbox entries of the acknowledgement and the triage requests seal theirs too.
    p.wrap(inboxd.sqlite_transaction, "seal", "intake: seal (small values, whole)")
    p.wrap(inboxd.sealed_columns, "seal_to", "intake: seal_to (large values, in pieces)")
    p.wrap(
        inboxd.sqlite_transaction.SqliteTransaction,
        "accept",
        "intake: step 1 accept (seal raw, INSERT)",
    )
    p.wrap(inboxd.sqlite_store.SqliteStore, "inbound", "intake: step 2 open accepted (decrypt)")
    p.wrap(
        inboxd.sqlite_transaction.SqliteTransaction,
        "add_signal",
        "intake: tx.add_signal (seals, INSERTs)",
    )
    p.wrap(Intake, "_commit", "intake: step 2 batch (_commit)")
    p.wrap(app.mailbox, "delete", "intake: UID EXPUNGE")
    # The drain: the triage requests attach the original.
    p.wrap(Outbox, "_attachments", "drain: read_field (decrypt original)")
    p.wrap(inboxd.outbox, "render", "drain: mails.render (triage mail)")
    p.wrap(inboxd.outbox, "render_pieces", "drain: mails.render_pieces (large mail)")
    p.wrap(app.transport, "send", "drain: transport.send (smtplib)")
    p.wrap(Outbox, "_send_one", "drain: whole mail (_send_one)")
    p.wrap(Intake, "run_once", "intake: Intake.run_once (all)")
    p.wrap(Outbox, "drain", "drain: Outbox.drain (all)")
    with p.step("the whole of `once`"):
        code = once(app)
    return {
        "code": code,
        "start_kb": start_kb,
        "steps": [
            {"label": k, "calls": p.calls[k], "rise_kb": p.rise_kb[k], "peak_kb": p.peak_kb[k]}
            for k in p.calls
        ],
    }


def run_phase_profile(world: World) -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    code = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(here.parent)!r}, {str(here)!r}]\n"
        "import test_bench_memory as m\n"
        "print(json.dumps(m.phase_profile(sys.argv[1])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(world.config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=RUN_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def fresh_world(mail: MailServer, root: Path, smtp_port: int | None = None) -> World:
    world = World(mail, root).setup()
    world.write_config(idle=False, include="full")
    if smtp_port is not None:
        text = world.config_path.read_text()
        old = f"port = {mail.smtp_port}\n"
        assert text.count(old) == 1
        world.config_path.write_text(text.replace(old, f"port = {smtp_port}\n"))
    return world


def test_peak_rss_for_a_40_mib_message(mail: MailServer, tmp_path: Path) -> None:
    empty = fresh_world(mail, tmp_path / "empty")
    baseline = run_once(empty, tmp_path / "empty.log")
    assert baseline.code == 0, baseline.events[-5:]
    cross_check = time_v_peak_kb(
        [str(Path(sys.executable).parent / "inboxd"), "once", "--config", str(empty.config_path)]
    )

    raw = big_signal()
    size = len(raw)

    mail.append(MAILBOX, raw)
    relay = run_once(fresh_world(mail, tmp_path / "relay"), tmp_path / "relay.log")
    assert "signal.queued" in relay.names(), relay.events[-10:]
    assert mail.messages(MAILBOX) == []
    assert len(mail.wait_for_messages(REPORTER, 1)) == 1

    sink_server = Sink(mail)
    with sink_server as port:
        sink_world = fresh_world(mail, tmp_path / "sink", smtp_port=port)
        mail.append(MAILBOX, raw)
        sink = run_once(sink_world, tmp_path / "sink.log")
        phases_world = fresh_world(mail, tmp_path / "phases", smtp_port=port)
        mail.append(MAILBOX, raw)
        phases = run_phase_profile(phases_world)
    assert phases["code"] == 0, phases
    assert sink.code == 0, sink.events[-10:]
    assert "signal.queued" in sink.names(), sink.events[-10:]

    mib = 2**20
    print()
    print(f"(c) peak RSS of `inboxd once`, message of {size / mib:.1f} MiB (one base64 attachment)")
    print(
        f"    baseline, empty mailbox                {baseline.peak_kb / 1024:7.1f} MiB"
        + (
            f"  (/usr/bin/time -f %M on .venv/bin/inboxd once: {cross_check / 1024:.1f} MiB)"
            if cross_check
            else ""
        )
    )
    for label, r in (
        ("relay (SIZE: sent without original)", relay),
        ("sink (triage really sent)", sink),
    ):
        peak = r.peak_kb * 1024
        extra = peak - baseline.peak_kb * 1024
        print(
            f"    {label:<38} {peak / mib:7.1f} MiB  = {peak / size:.2f}x the message; "
            f"above baseline {extra / mib:.1f} MiB = {extra / size:.2f}x  "
            f"(exit {r.code}, {r.seconds:.1f} s)"
        )
    refused = [
        e
        for e in relay.events
        if e.get("event") in ("mail.failed", "transport.refused", "mail.attachment_left_out")
    ]
    print(
        "    relay run, mail events: "
        + ", ".join(
            f"{e.get('event')} {e.get('mail_kind') or ''} {e.get('code') or ''}".strip()
            for e in refused
        )
    )
    print(f"    sink received: {', '.join(f'{s / mib:.2f} MiB' for s in sink_server.sizes)}")
    print(
        f"    steps (child process, sink; RSS after imports {phases['start_kb'] / 1024:.0f} MiB): "
        "step, calls, peak RSS, rise over the RSS at the step's entry"
    )
    for st in phases["steps"]:
        print(
            f"      {st['label']:<42} {st['calls']:3d}  {st['peak_kb'] / 1024:7.1f} MiB  "
            f"+{st['rise_kb'] / 1024:6.1f} MiB = {st['rise_kb'] * 1024 / size:.2f}x"
        )
    print(f"    target: peak < {TARGET_RATIO:.0f}x the message size")
