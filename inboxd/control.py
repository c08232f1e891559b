"""The admin socket: how ``inboxd status``, ``stats``, ``queue`` and ``keys rotate``
reach the running service.

Like Dovecot's ``doveadm`` and Postfix's ``postqueue``, the admin shell does not open
the service's state itself: with ``DynamicUser=`` that state belongs to a uid no admin
has, and the master key exists only in the service's credentials. The daemon listens
on a unix socket in its RuntimeDirectory; the kernel tells it who connected
(``SO_PEERCRED``, ``SO_PEERGROUPS``), and it serves root, its own uid and members of
``[admin] group``. The command runs in the daemon, under its work lock, with its keys.

One request per connection: a JSON line naming the command and its few arguments;
one JSON reply (exit code, stdout, stderr) after which the daemon closes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inboxd.config import Config, ConfigError, admin_gid
from inboxd.logs import get_logger

if TYPE_CHECKING:
    # Only the daemon's side names them: the admin shell's client stays light.
    from inboxd.crypto import Keyring
    from inboxd.store import Store

log = get_logger(__name__)

# Linux >= 4.13; Python 3.11 does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
MAX_REQUEST = 64 * 1024
# A reply can be a whole statistics page; anything near this is not ours.
MAX_REPLY = 64 * 1024 * 1024
# How long the daemon waits for a connected client to send its request.
REQUEST_TIMEOUT = 10.0
# How long a client waits for the answer: a rotation of a large store takes a while,
# and the daemon finishes the message in hand before it takes the work lock.
REPLY_TIMEOUT = 300.0

# The commands the socket serves and the arguments each may carry, with their types.
COMMANDS: dict[str, dict[str, tuple[type, ...]]] = {
    "status": {"json": (bool,)},
    "stats": {"year": (int, type(None)), "format": (str,), "suppress_below": (int,)},
    "queue list": {},
    "queue purge": {"ref": (str,), "yes": (bool,)},
    "keys rotate": {},
    "privacy-register": {"format": (str,), "language": (str, type(None))},
}


# -- the pure part ------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gids: frozenset[int]


@dataclass(frozen=True)
class Reply:
    code: int
    stdout: str = ""
    stderr: str = ""


def permitted(peer: Peer, owner_uid: int, admin_gid: int | None) -> bool:
    """Root, the service's own uid, and members (primary or supplementary) of the
    admin group."""
    if peer.uid in (0, owner_uid):
        return True
    return admin_gid is not None and admin_gid in peer.gids


def request_of(args: argparse.Namespace) -> dict[str, Any]:
    from inboxd.admin import action_of

    action = action_of(args)
    return {"command": action, **{k: getattr(args, k) for k in COMMANDS[action]}}


def namespace_of(request: object) -> argparse.Namespace | None:
    """A request as the admin commands take it, or None when it is not one we serve
    (unknown command, unknown or mistyped argument)."""
    if not isinstance(request, dict):
        return None
    action = request.get("command")
    if not isinstance(action, str) or action not in COMMANDS:
        return None
    spec = COMMANDS[action]
    fields = {k: v for k, v in request.items() if k != "command"}
    if set(fields) != set(spec):
        return None
    for key, value in fields.items():
        # bool is an int in Python: keep a true/false from passing for a year.
        if type(value) not in spec[key]:
            return None
    command, _, sub = action.partition(" ")
    ns = argparse.Namespace(command=command, **fields)
    if sub:
        setattr(ns, f"{command}_command", sub)
    return ns


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True).encode() + b"\n"


# -- the server, inside the daemon -------------------------------------------------------
def peer_of(conn: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    gids = {gid}
    try:
        # Python caps the buffer at 1024 bytes: 256 groups.
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        gids.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:
        # An older kernel, or more than 256 groups: the primary group still counts.
        pass
    return Peer(pid=pid, uid=uid, gids=frozenset(gids))


Handler = Callable[[argparse.Namespace, int], Reply]


class ControlServer:
    """The listening socket and its thread. Requests are served one at a time: admin
    commands are rare, and they run under the daemon's work lock anyway."""

    def __init__(self, path: str, handler: Handler, admin_gid: int | None) -> None:
        self.path = path
        self.handler = handler
        self.admin_gid = admin_gid
        self.owner_uid = os.geteuid()
        self.stop = threading.Event()
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self, source_path: str) -> None:
        _clear_stale(self.path, source_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Everyone may connect; who may be served is decided on the peer's
            # credentials, which the kernel supplies and a client cannot forge.
            os.chmod(self.path, 0o666)  # noqa: S103
            sock.listen(8)
            sock.settimeout(0.5)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.thread = threading.Thread(target=self._serve, name="inboxd-admin", daemon=True)
        self.thread.start()
        log.info("admin.listening", config=source_path)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _serve(self) -> None:
        assert self.sock is not None
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("admin.error", error=type(exc).__name__)
                self.stop.wait(1.0)
                continue
            with conn:
                try:
                    self._one(conn)
                except Exception as exc:
                    # A client that went away, a malformed request: the next one is served.
                    log.warning("admin.error", error=type(exc).__name__)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        peer = peer_of(conn)
        # Read the request even from a peer that is refused: closing on unread data
        # would reset the connection before the client reads why.
        data = b""
        while not data.endswith(b"\n") and len(data) <= MAX_REQUEST:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        conn.settimeout(REPLY_TIMEOUT)
        if not permitted(peer, self.owner_uid, self.admin_gid):
            log.warning("admin.refused", uid=peer.uid, pid=peer.pid)
            who = "root" if self.admin_gid is None else "root and members of [admin] group"
            why = f"inboxd: not permitted: uid {peer.uid} is not one of {who}\n"
            conn.sendall(encode(asdict(Reply(2, stderr=why))))
            return
        try:
            ns = namespace_of(json.loads(data)) if len(data) <= MAX_REQUEST else None
        except ValueError:
            ns = None
        if ns is None:
            log.warning("admin.bad_request", uid=peer.uid)
            reply = Reply(2, stderr="inboxd: the service did not understand the request\n")
        else:
            reply = self.handler(ns, peer.uid)
        conn.sendall(encode(asdict(reply)))


def _clear_stale(path: str, source_path: str) -> None:
    """A socket left by a daemon that died is removed; one that answers belongs to a
    running inboxd, and taking it over would hide that one from its admins."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        Path(path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(
            source_path, "admin.socket", f"{path} exists and is not a socket; choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ConfigError(
        source_path,
        "admin.socket",
        f"another inboxd is listening on {path}; give each instance its own socket",
    )


def serve(
    cfg: Config, store: Store, keyring: Keyring, lock: threading.RLock
) -> ControlServer | None:
    """Start the admin socket for a running daemon: its commands run on the daemon's
    store, with its keys, under its work lock. A socket that cannot be made is logged
    and the daemon goes on: the signals matter more than the admin shell."""
    from inboxd import admin

    gid = admin_gid(cfg)

    def handle(ns: argparse.Namespace, uid: int) -> Reply:
        out, err = io.StringIO(), io.StringIO()
        try:
            with lock:
                code = admin.dispatch(
                    cfg, store, keyring, ns, uid=uid, out=out, err=err, running=True
                )
        except Exception as exc:
            log.error("admin.failed", action=admin.action_of(ns), uid=uid, error=type(exc).__name__)
            return Reply(1, stderr="inboxd: the command failed in the service; see its log\n")
        return Reply(code, out.getvalue(), err.getvalue())

    server = ControlServer(cfg.admin.socket, handle, gid)
    try:
        server.start(cfg.source_path)
    except OSError as exc:
        log.error("admin.unavailable", error=type(exc).__name__)
        return None
    return server


# -- the client, in the admin shell ----------------------------------------------------------
class NotRunning(Exception):
    """Nothing listens on the socket: the service is stopped (or not yet started)."""


class Unreachable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def call(path: str, request: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> Reply:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(path) from None
        except PermissionError:
            raise Unreachable(
                f"no permission to open {path}; run as root or as a member of the admin group"
            ) from None
        sock.sendall(encode(request))
        data = b""
        while len(data) <= MAX_REPLY:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise Unreachable(f"the service did not answer on {path} within {timeout:.0f} s") from None
    except OSError as exc:
        raise Unreachable(f"{path}: {type(exc).__name__}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
        return Reply(int(reply["code"]), str(reply["stdout"]), str(reply["stderr"]))
    except (ValueError, KeyError, TypeError):
        raise Unreachable(f"{path} gave no answer inboxd understands") from None
