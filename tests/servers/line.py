"""A TCP line between a client under test and one of the suite's servers: a slow
link (at most ``rate`` bytes a second each way), or one on which the server's
answers stop (``hold``) while the server itself is fine. What a slow or hung
connection does to a client, with the real server behind it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Line:
    PIECE = 16 * 1024

    def __init__(
        self, port: int, rate: float | None = None, *, hold_after: bytes | None = None
    ) -> None:
        self.target = port
        self.rate = rate
        # While set, nothing the server sends reaches the client (it waits, unread).
        self.hold = threading.Event()
        # Set ``hold`` as soon as the client has sent these bytes (before the server
        # sees them, so its answer to them is held for sure): a plain line only.
        self.hold_after = hold_after
        self._released = threading.Condition()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        with self._released:
            self.hold.clear()
            self._released.notify_all()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
                far = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                return
            far.settimeout(None)
            self.sockets += [near, far]
            threading.Thread(target=self._carry, args=(near, far, False), daemon=True).start()
            threading.Thread(target=self._carry, args=(far, near, True), daemon=True).start()

    def _carry(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        tail = b""
        try:
            while data := src.recv(self.PIECE):
                if not answers and self.hold_after:
                    if self.hold_after in tail + data:
                        self.hold.set()
                    tail = (tail + data)[-len(self.hold_after) :]
                if answers:
                    with self._released:
                        self._released.wait_for(lambda: not self.hold.is_set())
                started = time.monotonic()
                dst.sendall(data)
                if self.rate:
                    # Bandwidth, not synchronisation: each piece takes its time on the line.
                    time.sleep(max(0.0, len(data) / self.rate - (time.monotonic() - started)))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.release()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
