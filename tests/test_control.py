"""The admin socket (``inboxd.control``): an admin shell reaches the running service.

``inboxd run`` holds the master key only through ``$CREDENTIALS_DIRECTORY``; the
admin commands run in processes without it (no such variable, no key next to the
configuration), as root, as a member of the admin group, and as ``nobody`` (refused).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from world import marker, signal_mail

from inboxd import control
from inboxd.config import ConfigError, admin_gid, load
from inboxd.crypto import generate_key_file

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "inboxd.example.toml"
NOBODY = 65534
# A group that exists on every Debian system and that nobody is not in.
ADMIN_GROUP = "adm"
ADMIN_GID = 4


# -- the pure part -----------------------------------------------------------------------


def test_who_is_permitted() -> None:
    def peer(uid: int, *gids: int) -> control.Peer:
        return control.Peer(pid=1, uid=uid, gids=frozenset(gids))

    owner = 61234
    assert control.permitted(peer(0, 0), owner, None)
    assert control.permitted(peer(owner, owner), owner, None), "the service's own uid"
    assert not control.permitted(peer(1000, 1000), owner, None), "no admin group: root only"
    assert not control.permitted(peer(1000, 1000), owner, 4)
    assert control.permitted(peer(1000, 1000, 4), owner, 4), "a supplementary group counts"
    assert control.permitted(peer(1000, 4), owner, 4), "so does the primary group"
    assert not control.permitted(peer(NOBODY, NOBODY), owner, 4)


def ns(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**kw)


@pytest.mark.parametrize(
    "args",
    [
        ns(command="status", json=True),
        ns(command="stats", year=2026, format="csv", suppress_below=5),
        ns(command="stats", year=None, format="table", suppress_below=0),
        ns(command="stats", year=None, format="html", suppress_below=5),
        ns(command="queue", queue_command="list"),
        ns(command="queue", queue_command="purge", ref="VV-AAAA-AAAA", yes=True),
        ns(command="keys", keys_command="rotate"),
    ],
)
def test_a_request_carries_exactly_the_commands_arguments(args: argparse.Namespace) -> None:
    request = control.request_of(args)
    assert json.loads(control.encode(request)) == request
    assert control.namespace_of(json.loads(control.encode(request))) == args


@pytest.mark.parametrize(
    "request_",
    [
        None,
        [],
        "status",
        {"command": "run"},
        {"command": "keys generate", "out": "/etc/passwd"},
        {"command": "status"},  # an argument missing
        {"command": "status", "json": True, "config": "/x"},  # one too many
        {"command": "status", "json": "yes"},
        {"command": "stats", "year": True, "format": "csv", "suppress_below": 0},
        {"command": "stats", "year": 2026, "format": "csv", "suppress_below": 1.5},
        {"command": "queue purge", "ref": ["VV"], "yes": True},
    ],
)
def test_anything_else_is_not_a_request(request_: object) -> None:
    assert control.namespace_of(request_) is None


def test_state_and_socket_must_be_where_the_unit_puts_them(tmp_path: Path) -> None:
    from inboxd.config import check_unit_directories

    cfg = load(str(world_config(tmp_path, tmp_path / "run" / "admin.sock")))
    (tmp_path / "run").mkdir()
    (tmp_path / "state").mkdir()
    check_unit_directories(cfg, {})
    check_unit_directories(
        cfg,
        {"RUNTIME_DIRECTORY": str(tmp_path / "run"), "STATE_DIRECTORY": str(tmp_path / "state")},
    )
    with pytest.raises(ConfigError) as exc:
        check_unit_directories(cfg, {"RUNTIME_DIRECTORY": "/run/inboxd-b"})
    assert exc.value.key == "admin.socket"
    assert 'set it to "/run/inboxd-b/admin.sock"' in exc.value.problem
    with pytest.raises(ConfigError) as exc:
        check_unit_directories(cfg, {"STATE_DIRECTORY": "/var/lib/inboxd-b"})
    assert exc.value.key == "state_dir"
    assert 'set it to "/var/lib/inboxd-b"' in exc.value.problem


def test_an_admin_group_that_does_not_exist_is_a_configuration_error(tmp_path: Path) -> None:
    """Found when the configuration is loaded (``inboxd check``), not first when the
    service opens its socket."""
    path = world_config(tmp_path, tmp_path / "admin.sock", group="no-such-group-here")
    with pytest.raises(ConfigError) as exc:
        load(str(path))
    assert exc.value.key == "admin.group" and "groupadd" in exc.value.problem
    assert admin_gid(load(str(world_config(tmp_path, tmp_path / "s", group="4")))) == 4


def test_a_socket_path_too_long_for_unix_is_a_configuration_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "admin.sock"
    with pytest.raises(ConfigError) as exc:
        load(str(world_config(tmp_path, deep)))
    assert exc.value.key == "admin.socket" and "at most 107" in exc.value.problem


# -- the running service -----------------------------------------------------------------


def world_config(root: Path, socket_path: Path, group: str = ADMIN_GROUP) -> Path:
    """The example world under ``root``; the key is named relatively, so it is found
    only through $CREDENTIALS_DIRECTORY."""
    text = EXAMPLE.read_text(encoding="utf-8").replace("/tmp/inboxd-example", str(root))
    text = text.replace(f'key_files = ["{root}/master-key"]', 'key_files = ["master-key"]')
    text = (
        text[: text.index("\n[admin]")]
        + f'\n[admin]\nsocket = "{socket_path}"\ngroup = "{group}"\n'
    )
    path = root / "inboxd.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
    return path


class Service:
    """``inboxd run`` as systemd would start it: the key only in CREDENTIALS_DIRECTORY,
    the socket in RUNTIME_DIRECTORY."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.creds = root / "credentials"
        self.creds.mkdir(mode=0o700)
        self.run_dir = root / "run"
        self.run_dir.mkdir(mode=0o755)
        self.socket = self.run_dir / "admin.sock"
        self.config = world_config(root, self.socket)
        (root / "vreemdverhaal" / "new").mkdir(parents=True)
        for d in ("cur", "tmp"):
            (root / "vreemdverhaal" / d).mkdir()
        self.key_ids = [generate_key_file(self.creds / "master-key")]
        self.proc: subprocess.Popen[str] | None = None
        self.log = root / "service.log"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("INBOXD_CONFIG", "NOTIFY_SOCKET")}
        env.update(
            CREDENTIALS_DIRECTORY=str(self.creds),
            RUNTIME_DIRECTORY=str(self.run_dir),
            STATE_DIRECTORY=str(self.root / "state"),
        )
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "inboxd", "run", "--config", str(self.config)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        wait_for(lambda: self.socket.exists(), "the admin socket to appear", self)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None

    def events(self) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def wait_for(ok: Callable[[], object], what: str, service: Service, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not ok():
        if service.proc is not None and service.proc.poll() is not None:
            pytest.fail(f"inboxd run exited ({service.proc.returncode}): {service.log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit:.0f} s for {what}; log: {service.log.read_text()[-2000:]}")
        time.sleep(0.1)


@pytest.fixture
def service() -> Iterator[Service]:
    # Under /tmp, 0755, not pytest's 0700 tmp_path: nobody must reach the socket and
    # read the configuration (as on a real host: /etc/inboxd and /run/inboxd).
    root = Path(tempfile.mkdtemp(prefix="inboxd-ctl-", dir="/tmp"))
    root.chmod(0o755)
    svc = Service(root)
    try:
        yield svc
    finally:
        svc.stop()
        shutil.rmtree(root)


# A shell of another uid. The interpreter lives where only root may look (pyenv under
# /root), so the child imports what the command needs first, then drops to the uid
# and groups, then runs the command: the socket sees only the new credentials.
AS_USER = """
import importlib, os, pkgutil, sys
import inboxd
for module in pkgutil.walk_packages(inboxd.__path__, "inboxd."):
    if module.name != "inboxd.__main__":
        importlib.import_module(module.name)
uid, gid, groups = int(sys.argv[1]), int(sys.argv[2]), [int(g) for g in sys.argv[3].split(",") if g]
os.setgroups(groups)
os.setgid(gid)
os.setuid(uid)
assert os.getuid() == uid and os.geteuid() == uid
sys.exit(inboxd.cli.main(sys.argv[4:]))
"""


def admin_shell(
    service: Service, *args: str, uid: int | None = None, groups: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """An inboxd command from a shell that has neither the credentials nor the state."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("INBOXD_CONFIG", "CREDENTIALS_DIRECTORY", "RUNTIME_DIRECTORY")
    }
    command = [*args, "--config", str(service.config)]
    if uid is None:
        argv = [sys.executable, "-m", "inboxd", *command]
    else:
        ids = [str(uid), str(NOBODY), ",".join(map(str, groups))]
        argv = [sys.executable, "-c", AS_USER, *ids, *command]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def audit_rows(service: Service) -> list[tuple[str, str | None, int | None]]:
    conn = sqlite3.connect(f"file:{service.root / 'state' / 'inboxd.sqlite3'}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT action, ref, uid FROM audit ORDER BY at")]
    finally:
        conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as other uids")
def test_an_admin_shell_reaches_the_running_service(service: Service) -> None:
    mark = marker()
    (service.root / "vreemdverhaal" / "new" / "1.eml").write_bytes(signal_mail(mark))
    service.start()

    def status() -> dict[str, object]:
        p = admin_shell(service, "status", "--json")
        assert p.returncode == 0, p.stderr
        return dict(json.loads(p.stdout))

    wait_for(lambda: status()["open"] == 1, "the signal to be queued", service)
    snap = status()
    assert snap["service"] == "running"
    assert snap["keys"] == service.key_ids, "the service's keys, read by the service"

    listing = admin_shell(service, "queue", "list")
    assert listing.returncode == 0, listing.stderr
    ref = listing.stdout.split()[0]
    assert ref.startswith("VV-") and "queued" in listing.stdout
    assert "not running" not in listing.stderr

    # Without the key: a rotation done here would fail with "key file not found".
    assert not (service.root / "master-key").exists()

    # A second key: the service restarts with both and rotates on request.
    service.stop()
    service.key_ids.append(generate_key_file(service.creds / "master-key-2"))
    text = service.config.read_text(encoding="utf-8")
    service.config.write_text(
        text.replace('key_files = ["master-key"]', 'key_files = ["master-key", "master-key-2"]')
    )
    service.start()
    rotate = admin_shell(service, "keys", "rotate")
    assert rotate.returncode == 0, rotate.stderr
    assert "data keys re-wrapped under " + service.key_ids[1] + "; 0 left" in rotate.stdout
    assert not rotate.stdout.startswith("0 ")

    # A member of the admin group (a supplementary group) may; nobody may not.
    member = admin_shell(
        service, "stats", "--format", "json", "--suppress-below", "1", uid=NOBODY, groups=(4,)
    )
    assert member.returncode == 0, member.stderr
    assert json.loads(member.stdout)["year"] >= 2026
    # The statistics page comes over the socket; --out is written by the admin's shell.
    page = service.root / "stats.html"
    html = admin_shell(service, "stats", "--format", "html", "--out", str(page))
    assert html.returncode == 0, html.stderr
    assert html.stdout == "" and f"written to {page}" in html.stderr
    assert page.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    for args in (("status",), ("queue", "list"), ("queue", "purge", ref, "--yes")):
        refused = admin_shell(service, *args, uid=NOBODY)
        assert refused.returncode == 2, refused
        assert (
            refused.stderr
            == f"inboxd: not permitted: uid {NOBODY} is not one of root and members of [admin] group\n"
        )
        assert refused.stdout == ""
    assert status()["open"] == 1, "the refused purge deleted nothing"

    purge = admin_shell(service, "queue", "purge", ref, "--yes")
    assert purge.returncode == 0, purge.stderr
    assert f"{ref} deleted" in purge.stdout
    assert status()["open"] == 0

    service.stop()
    # Every action, with its uid, and nothing of the signal.
    rows = audit_rows(service)
    actions = [(a, r, u) for a, r, u in rows if a != "status"]
    assert actions == [
        ("queue list", None, 0),
        ("keys rotate", None, 0),
        ("stats", None, NOBODY),
        ("stats", None, 0),
        ("queue purge", ref, 0),
    ]
    assert ("status", None, 0) in rows
    events = service.events()
    refused_events = [e for e in events if e["event"] == "admin.refused"]
    assert len(refused_events) == 3 and {e["uid"] for e in refused_events} == {NOBODY}
    commands = [(e["action"], e["uid"]) for e in events if e["event"] == "admin.command"]
    assert ("queue purge", 0) in commands and ("stats", NOBODY) in commands
    assert mark not in service.log.read_text()
    assert mark.encode() not in (service.root / "state" / "inboxd.sqlite3").read_bytes()
    assert not service.socket.exists(), "the socket goes with the service"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as other uids")
def test_without_the_service_read_only_commands_need_no_key(service: Service) -> None:
    service.start()
    service.stop()
    p = admin_shell(service, "status")
    assert p.returncode == 0, p.stderr
    assert "service: not running" in p.stdout
    assert "master keys: not loaded" in p.stdout
    assert p.stderr == ""
    for args in (("stats",), ("queue", "list")):
        assert admin_shell(service, *args).returncode == 0
    rotate = admin_shell(service, "keys", "rotate")
    assert rotate.returncode == 2 and "key file not found" in rotate.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as other uids")
def test_a_second_service_on_the_same_socket_does_not_start(service: Service) -> None:
    service.start()
    env = {k: v for k, v in os.environ.items() if k not in ("INBOXD_CONFIG", "NOTIFY_SOCKET")}
    env["CREDENTIALS_DIRECTORY"] = str(service.creds)
    second = subprocess.run(
        [sys.executable, "-m", "inboxd", "run", "--config", str(service.config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert f"another inboxd is listening on {service.socket}" in second.stderr
    assert admin_shell(service, "status").returncode == 0, "the first one still answers"


def test_a_store_from_before_the_uid_gets_the_column(tmp_path: Path) -> None:
    from inboxd.crypto import Keyring
    from inboxd.sqlite_store import SqliteStore

    conn = sqlite3.connect(tmp_path / "inboxd.sqlite3")
    conn.execute("CREATE TABLE audit (at REAL NOT NULL, action TEXT NOT NULL, ref TEXT)")
    conn.execute("INSERT INTO audit VALUES (1.0, 'purge', 'VV-AAAA-AAAA')")
    conn.commit()
    conn.close()
    store = SqliteStore(tmp_path, Keyring.locked())
    try:
        store.audit("status", None, 1000)
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "inboxd.sqlite3")
    try:
        rows = conn.execute("SELECT action, ref, uid FROM audit ORDER BY at").fetchall()
    finally:
        conn.close()
    assert rows == [("purge", "VV-AAAA-AAAA", None), ("status", None, 1000)]


def test_a_locked_keyring_decrypts_nothing() -> None:
    from inboxd.crypto import DecryptError, Keyring

    ring = Keyring.locked()
    assert ring.keys == []
    with pytest.raises(DecryptError):
        ring.wrap(b"k" * 32, "signal:1")
    with pytest.raises(DecryptError):
        ring.unwrap("abcd1234", b"x" * 60, "signal:1")
    with pytest.raises(DecryptError):
        ring.sender_digest("a@b.example")


@pytest.fixture
def second_service() -> Iterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="inboxd-ctl-", dir="/tmp"))
    root.chmod(0o755)
    svc = Service(root)
    try:
        yield svc
    finally:
        svc.stop()
        shutil.rmtree(root)


def test_two_instances_side_by_side(service: Service, second_service: Service) -> None:
    """As inboxd@a and inboxd@b: each its own configuration, state, key and socket;
    each admin command reaches the instance its configuration names."""
    service.start()
    second_service.start()
    for svc in (service, second_service):
        p = admin_shell(svc, "status", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["keys"] == svc.key_ids
    assert service.key_ids != second_service.key_ids
    # An instance whose configuration names a socket outside its RuntimeDirectory (a
    # copied configuration, say) does not start.
    env = {k: v for k, v in os.environ.items() if k not in ("INBOXD_CONFIG", "NOTIFY_SOCKET")}
    env.update(
        CREDENTIALS_DIRECTORY=str(second_service.creds), RUNTIME_DIRECTORY=str(service.run_dir)
    )
    wrong = subprocess.run(
        [sys.executable, "-m", "inboxd", "run", "--config", str(second_service.config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2, wrong.stderr
    assert "admin.socket: is not in this service's RUNTIME_DIRECTORY" in wrong.stderr
