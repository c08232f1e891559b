"""sd_notify over a real socket, and the unit file as systemd itself judges it."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from inboxd import sdnotify

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "inboxd.service"
DROPIN = ROOT / "systemd" / "inboxd.example.conf"
TEMPLATE = ROOT / "systemd" / "inboxd@.service"
ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
)


# --------------------------------------------------------------------- sd_notify


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in a temp dir standing in for systemd's notify socket."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _recv(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_helpers_send_exact_payloads(receiver: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert _recv(receiver) == b"READY=1"
    assert sdnotify.watchdog() is True
    assert _recv(receiver) == b"WATCHDOG=1"
    assert sdnotify.status("3 open, 1 forwarding") is True
    assert _recv(receiver) == b"STATUS=3 open, 1 forwarding"
    assert sdnotify.stopping() is True
    assert _recv(receiver) == b"STOPPING=1"


def test_status_cannot_inject_a_second_assignment(receiver: socket.socket) -> None:
    assert sdnotify.status("ok\nREADY=1\r\nX") is True
    assert _recv(receiver) == b"STATUS=ok READY=1 X"


def test_status_is_utf8(receiver: socket.socket) -> None:
    assert sdnotify.status("wachtrij leeg — ok") is True
    assert _recv(receiver) == "STATUS=wachtrij leeg — ok".encode()


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"inboxd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready() is True
        assert sock.recv(4096) == b"READY=1"


def test_unset_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.watchdog() is False


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("/nonexistent/dir/notify", "FileNotFoundError"),
        ("@inboxd-test-nobody-listens-" + uuid.uuid4().hex, "ConnectionRefusedError"),
        ("relative/path", "UnsupportedAddress"),
        ("@" + "x" * 200, "OSError"),  # longer than sun_path
    ],
)
def test_broken_socket_returns_false_and_logs(
    value: str, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    with capture_logs() as logs:
        assert sdnotify.ready() is False
    assert logs == [{"event": "sdnotify.error", "error": error, "log_level": "warning"}]


def test_send_to_a_file_that_is_not_a_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_socket = tmp_path / "plain"
    not_a_socket.write_text("x")
    monkeypatch.setenv("NOTIFY_SOCKET", str(not_a_socket))
    with capture_logs() as logs:
        assert sdnotify.watchdog() is False
    assert [e["error"] for e in logs] == ["ConnectionRefusedError"]


# ------------------------------------------------------------- watchdog interval


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "SELF"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "OTHER"}, None),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "1500"}, 0.00075),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "60s"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    resolved = {
        k: str(os.getpid()) if v == "SELF" else str(os.getpid() + 1) if v == "OTHER" else v
        for k, v in env.items()
    }
    assert sdnotify.watchdog_interval(resolved) == expected


def test_watchdog_interval_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 10.0
    assert sdnotify.Watchdog.from_env().interval == 10.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval() is None
    assert sdnotify.Watchdog.from_env().enabled is False


def test_maybe_ping_with_injected_clock() -> None:
    sent: list[int] = []

    def send() -> bool:
        sent.append(1)
        return True

    # WatchdogSec=60: pings at most 30 s apart, sent once 15 s have passed (the work
    # after a call may be long).
    dog = sdnotify.Watchdog(30.0, send=send)
    assert dog.enabled
    assert dog.step == 15.0
    assert dog.maybe_ping(1000.0) is True  # first call pings at once
    assert dog.maybe_ping(1000.0) is False
    assert dog.maybe_ping(1014.999) is False
    assert len(sent) == 1
    assert dog.maybe_ping(1015.0) is True
    assert dog.maybe_ping(1029.0) is False
    assert dog.maybe_ping(1030.0) is True
    assert len(sent) == 3
    # A clock that went backwards (it should not with monotonic) errs on the side of a ping.
    assert dog.maybe_ping(10.0) is True
    assert len(sent) == 4


def test_maybe_ping_disabled_never_sends() -> None:
    sent: list[int] = []

    def send() -> bool:
        sent.append(1)
        return True

    dog = sdnotify.Watchdog(None, send=send)
    assert dog.enabled is False
    assert all(dog.maybe_ping(t) is False for t in (0.0, 1e6, 1e9))
    assert sent == []


def test_failed_ping_is_not_retried_every_loop() -> None:
    calls: list[float] = []

    def send() -> bool:
        calls.append(0.0)
        return False

    dog = sdnotify.Watchdog(10.0, send=send)
    assert dog.maybe_ping(0.0) is False  # send failed
    assert dog.maybe_ping(1.0) is False
    assert len(calls) == 1
    dog.maybe_ping(5.0)
    assert len(calls) == 2


def test_default_watchdog_sends_to_the_socket(receiver: socket.socket) -> None:
    dog = sdnotify.Watchdog(30.0)
    assert dog.maybe_ping(0.0) is True
    assert _recv(receiver) == b"WATCHDOG=1"


# ------------------------------------------------------------------- unit file


def _directives(text: str) -> list[tuple[str, str, str]]:
    section = ""
    out: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def test_unit_has_the_contract_settings() -> None:
    d = _directives(UNIT.read_text())
    service = {(k, v) for s, k, v in d if s == "Service"}
    for item in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "60"),
        ("ExecStart", "/usr/local/bin/inboxd run --config /etc/inboxd/inboxd.toml"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "inboxd"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("TimeoutStopSec", "20"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RuntimeDirectory", "inboxd"),
        ("RuntimeDirectoryMode", "0755"),
    ]:
        assert item in service, item
    # The admin socket's default is in that RuntimeDirectory, and no user namespace
    # hides the admins' uids and groups from the daemon.
    from inboxd.config import AdminConfig

    assert AdminConfig().socket == "/run/inboxd/admin.sock"
    assert "PrivateUsers" not in {k for _, k, _ in d}
    creds = {v.split(":", 1)[0]: v.split(":", 1)[1] for k, v in service if k == "LoadCredential"}
    assert creds == {
        "master-key": "/etc/inboxd/credentials/master-key",
        "imap-password": "/etc/inboxd/credentials/imap-password",
        "smtp-password": "/etc/inboxd/credentials/smtp-password",
    }
    # systemd has no trailing comments: "60 # why" would be a parse error at runtime.
    assert not [v for _, _, v in d if "#" in v]


def test_the_instance_unit_is_the_main_unit_per_instance() -> None:
    """inboxd@.service: config, state, credentials and socket per instance, and
    otherwise exactly the main unit's settings (a hardening added to one and not the
    other fails here)."""
    per_instance = {
        ("Unit", "Description"): "inboxd signals mailbox daemon for %i",
        ("Service", "ExecStart"): "/usr/local/bin/inboxd run --config /etc/inboxd/%i.toml",
        ("Service", "StateDirectory"): "inboxd-%i",
        ("Service", "RuntimeDirectory"): "inboxd-%i",
    }
    main = _directives(UNIT.read_text())
    template = _directives(TEMPLATE.read_text())
    for (section, key), value in per_instance.items():
        assert (section, key, value) in template, (section, key)
    creds = [v for s, k, v in template if k == "LoadCredential"]
    assert creds == [
        f"{name}:/etc/inboxd/credentials/%i/{name}"
        for name in ("master-key", "imap-password", "smtp-password")
    ]

    def shared(d: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        return [x for x in d if (x[0], x[1]) not in per_instance and x[1] != "LoadCredential"]

    assert shared(template) == shared(main)
    assert not [v for _, _, v in template if "#" in v]


def _need_analyze() -> str:
    if ANALYZE is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    return ANALYZE


def _analyze(
    *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    env.update(env_extra or {})
    return subprocess.run(
        [_need_analyze(), "--no-pager", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


_EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) (\w+)")


def _exposure(
    proc: subprocess.CompletedProcess[str], unit: str = "inboxd.service"
) -> tuple[float, str]:
    match = _EXPOSURE.search(proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert match.group(1) == unit
    return float(match.group(2)), match.group(3)


@pytest.mark.parametrize("unit", ["inboxd.service", "inboxd@gemeente-a.service"])
def test_security_exposure_is_ok(unit: str, tmp_path: Path) -> None:
    env = {"SYSTEMD_UNIT_PATH": f"{_staged(tmp_path, with_dropin=False)}:"}
    proc = _analyze("security", "--offline=yes", unit, env_extra=env)
    assert proc.returncode == 0, proc.stderr
    exposure, verdict = _exposure(proc, unit)
    assert exposure <= 1.5, proc.stdout
    assert verdict in ("OK", "SAFE", "PERFECT")
    # Every directive parsed: an unknown or misspelt key is warned about on stderr.
    assert "inboxd" not in proc.stderr, proc.stderr


def _staged(tmp_path: Path, with_dropin: bool) -> Path:
    """The unit in a directory of its own, with ExecStart pointing at a binary that
    exists here (verify insists on it; inboxd is not installed on a test machine)."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    exec_line = "ExecStart=/usr/local/bin/inboxd "
    true_bin = shutil.which("true") or "/bin/true"
    for unit in (UNIT, TEMPLATE):
        text = unit.read_text()
        assert text.count(exec_line) == 1
        (unit_dir / unit.name).write_text(text.replace(exec_line, f"ExecStart={true_bin} "))
    if with_dropin:
        (unit_dir / "inboxd.service.d").mkdir()
        shutil.copy(DROPIN, unit_dir / "inboxd.service.d" / "site.conf")
    return unit_dir


def _inboxd_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    # Warnings about the host's own units are not ours to fix; ours name inboxd.
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if "inboxd" in ln]


@pytest.mark.parametrize("unit", ["inboxd.service", "inboxd@gemeente-a.service"])
def test_verify_is_clean(unit: str, tmp_path: Path) -> None:
    env = {"SYSTEMD_UNIT_PATH": f"{_staged(tmp_path, with_dropin=False)}:"}
    proc = _analyze("verify", unit, env_extra=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _inboxd_lines(proc) == []


def test_verify_catches_a_bad_directive(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported (exit status stays 0)."""
    unit_dir = _staged(tmp_path, with_dropin=False)
    unit = unit_dir / "inboxd.service"
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    proc = _analyze("verify", str(unit))
    assert any("ProtectHom" in ln for ln in _inboxd_lines(proc))


def test_example_dropin_is_clean_and_tightens(tmp_path: Path) -> None:
    unit_dir = _staged(tmp_path, with_dropin=True)
    # A trailing ":" keeps the default search path after ours (for the targets).
    env = {"SYSTEMD_UNIT_PATH": f"{unit_dir}:"}
    proc = _analyze("verify", "inboxd.service", env_extra=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _inboxd_lines(proc) == []
    base, _ = _exposure(_analyze("security", "--offline=yes", str(UNIT)))
    with_dropin = _analyze("security", "--offline=yes", "inboxd.service", env_extra=env)
    tightened, _ = _exposure(with_dropin)
    assert tightened <= base
    assert "IP address allow list with non-localhost entries" in with_dropin.stdout
    # The overall figure is rounded to a tenth; the items show the difference.
    items = _item_exposures(str(UNIT))
    items_dropin = _item_exposures("inboxd.service", env_extra=env)
    assert items_dropin["IPAddressDeny="] < items["IPAddressDeny="]
    assert sum(items_dropin.values()) < sum(items.values())


def _item_exposures(unit: str, env_extra: dict[str, str] | None = None) -> dict[str, float]:
    proc = _analyze("security", "--offline=yes", "--json=short", unit, env_extra=env_extra)
    assert proc.returncode == 0, proc.stderr
    return {i["name"]: float(i["exposure"] or 0) for i in json.loads(proc.stdout)}


# ------------------------------------------- the dependencies under the sandbox


def _syscall_groups() -> dict[str, list[str]]:
    proc = _analyze("syscall-filter")
    assert proc.returncode == 0, proc.stderr
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in proc.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                current.append(entry)
        elif not line.strip():
            current = None
    return groups


def _expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    out: set[str] = set()
    for entry in groups[name]:
        out |= _expand(entry, groups)
    return out


def _allowed_syscalls() -> list[str]:
    """What the unit's SystemCallFilter= lines leave allowed, computed from the
    unit itself so that an edit there is what gets tested."""
    groups = _syscall_groups()
    allowed: set[str] = set()
    for section, key, value in _directives(UNIT.read_text()):
        if section != "Service" or key != "SystemCallFilter":
            continue
        deny = value.startswith("~")
        names = set().union(*(_expand(n, groups) for n in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    assert "read" in allowed and "setrlimit" not in allowed and "chroot" not in allowed
    return sorted(allowed)


# Runs in a child: installs the same seccomp filters systemd installs for
# SystemCallFilter= (allow-list, EPERM otherwise) and MemoryDenyWriteExecute=
# (systemd's own rules: no W+X mmap, no mprotect/pkey_mprotect to X, no SHM_EXEC),
# then exercises what the daemon depends on.
_CHILD = textwrap.dedent(
    r"""
    import ctypes, errno, mmap, os, sys

    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
    ALLOW = 0x7FFF0000
    EPERM = 0x00050000 | errno.EPERM
    MASKED_EQ = 7

    allow = lib.seccomp_init(EPERM)
    for name in sys.argv[1].split(","):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0:
            assert lib.seccomp_rule_add_array(allow, ALLOW, nr, 0, None) == 0, name

    mdwe = lib.seccomp_init(ALLOW)
    WX = mmap.PROT_WRITE | mmap.PROT_EXEC
    SHM_EXEC = 0o100000
    for name, argno, mask in [("mmap", 2, WX), ("mprotect", 2, mmap.PROT_EXEC),
                              ("pkey_mprotect", 2, mmap.PROT_EXEC), ("shmat", 2, SHM_EXEC)]:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        cmp = Cmp(argno, MASKED_EQ, mask, mask)
        assert lib.seccomp_rule_add_array(mdwe, EPERM, nr, 1, ctypes.byref(cmp)) == 0, name

    assert lib.seccomp_load(mdwe) == 0
    assert lib.seccomp_load(allow) == 0

    # The filters are really in force (so the rest of this proves something).
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | WX)
        raise SystemExit("W+X mapping was allowed")
    except PermissionError:
        pass
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))
        raise SystemExit("@resources was allowed")
    except PermissionError:
        pass

    # --- what the daemon does ---
    import json, pkgutil, importlib, socket, sqlite3, ssl, tempfile, threading
    import inboxd
    for mod in pkgutil.walk_packages(inboxd.__path__, "inboxd.", onerror=lambda name: None):
        if not mod.name.endswith("__main__"):
            try:
                importlib.import_module(mod.name)
            except Exception:
                print("IMPORT-FAILED", mod.name)
    import imapclient, exchangelib, msal, httpx, jinja2.sandbox, pydantic, structlog
    import apscheduler.schedulers.background, prometheus_client, inscriptis
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.serialization import pkcs7
    import datetime, email.message

    key = AESGCM.generate_key(bit_length=256)
    sub = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"t").derive(key)
    box = AESGCM(sub).encrypt(b"\0" * 12, b"signal", b"ref")
    assert AESGCM(sub).decrypt(b"\0" * 12, box, b"ref") == b"signal"

    rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "kedo")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(rkey.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(rkey, hashes.SHA256()))
    env = (pkcs7.PKCS7EnvelopeBuilder().set_data(b"body").add_recipient(cert)
           .encrypt(serialization.Encoding.SMIME, []))
    assert b"application/pkcs7-mime" in env or b"application/x-pkcs7-mime" in env
    signed = (pkcs7.PKCS7SignatureBuilder().set_data(b"body")
              .add_signer(cert, rkey, hashes.SHA256()).sign(serialization.Encoding.DER, []))
    assert signed

    pem = rkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"pw"))
    assert serialization.load_pem_private_key(pem, password=b"pw").key_size == 2048

    # cffi's ABI-mode callbacks need W+X memory and fail here; the test below makes
    # sure no installed dependency relies on them.
    import cffi
    try:
        cffi.FFI().callback("int(int)", lambda x: x + 1)
        raise SystemExit("ffi.callback worked: MemoryDenyWriteExecute not emulated?")
    except MemoryError:
        pass

    ctx = ssl.create_default_context()
    assert ctx.cert_store_stats()["x509_ca"] >= 0
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(os.path.join(d, "state.db"))
        db.execute("pragma journal_mode=wal")
        db.execute("create table t(x)")
        db.execute("insert into t values (1)")
        db.commit()
        assert db.execute("select x from t").fetchone() == (1,)
        db.close()
        os.chmod(d, 0o700)

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    t = threading.Thread(target=lambda: srv.accept()[0].sendall(b"* OK\r\n"))
    t.start()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        assert c.recv(16) == b"* OK\r\n"
    t.join(5)
    srv.close()
    socket.getaddrinfo("localhost", 993)

    env_ = jinja2.sandbox.SandboxedEnvironment(autoescape=True)
    assert env_.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    class M(pydantic.BaseModel):
        port: int
    assert M.model_validate({"port": "993"}).port == 993
    msg = email.message.EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("y")
    assert msg.as_bytes()
    print("CONFINED-OK")
    """
)


def test_dependencies_run_under_the_units_seccomp_filters() -> None:
    """MemoryDenyWriteExecute= and SystemCallFilter= kill or cripple a Python
    daemon whose libraries need W+X memory or a filtered call; catch that here,
    not on the production host."""
    allowed = _allowed_syscalls()
    from ctypes.util import find_library

    if find_library("seccomp") is None:
        pytest.skip("libseccomp not installed (Debian package: libseccomp2)")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, ",".join(allowed)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CONFINED-OK" in proc.stdout
    # A module of ours that does not import even unconfined is work in progress,
    # caught by its own tests; one that imports only unconfined is the sandbox's fault.
    failed = re.findall(r"^IMPORT-FAILED (\S+)$", proc.stdout, re.MULTILINE)
    if failed:
        check = "import importlib, sys\nfor n in sys.argv[1:]:\n"
        check += "    try: importlib.import_module(n); print('OK', n)\n    except Exception: pass\n"
        free = subprocess.run(
            [sys.executable, "-c", check, *failed],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert re.findall(r"^OK (\S+)$", free.stdout, re.MULTILINE) == []


def test_no_dependency_uses_cffi_callbacks() -> None:
    """``ffi.callback`` is what breaks under MemoryDenyWriteExecute= (see above).
    Any installed package built on cffi must not call it; cryptography >= 42 does
    not (its bindings are in Rust), a future dependency might."""
    from importlib.metadata import distributions

    users: list[str] = []
    scanned = 0
    for dist in distributions():
        requires = [r.split(";")[0] for r in (dist.requires or [])]
        if not any(re.match(r"cffi\b", r.strip()) for r in requires):
            continue
        for file in dist.files or []:
            if file.suffix != ".py":
                continue
            scanned += 1
            text = Path(str(dist.locate_file(file))).read_text(errors="replace")
            if re.search(r"ffi\.callback\(", text):
                users.append(f"{dist.metadata['Name']}: {file}")
    assert scanned > 0, "expected cryptography to depend on cffi"
    assert users == []


def test_the_operations_guide_shows_the_instance_units_paths() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    service = {k: v for s, k, v in _directives(TEMPLATE.read_text()) if s == "Service"}
    for name in ("gemeente-a", "gemeente-b"):
        state = "/var/lib/" + service["StateDirectory"].replace("%i", name)
        socket_ = "/run/" + service["RuntimeDirectory"].replace("%i", name) + "/admin.sock"
        assert f'`"{state}"`' in guide, state
        assert f'`"{socket_}"`' in guide, socket_
        assert f"/etc/inboxd/{name}.toml" in guide


def test_bound_cuts_a_wait_to_a_step() -> None:
    # WATCHDOG_USEC = 2 s: pings at most a second apart, no wait over half a second.
    assert sdnotify.Watchdog(1.0).bound(25.0) == 0.5
    assert sdnotify.Watchdog(1.0).bound(0.2) == 0.2
    assert sdnotify.Watchdog(30.0).bound(25.0) == 15.0
    assert sdnotify.Watchdog(None).bound(25.0) == 25.0
