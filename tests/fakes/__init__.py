"""Local stand-ins for Microsoft's services, speaking their real wire protocols.

Every fake listens on 127.0.0.1 over TLS with a certificate of the suite's one CA
(:func:`servers.tlsca.pki`, the test mail servers' too), so the code under test
verifies certificates exactly as it would against Microsoft, and nothing can reach a
real Microsoft host.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import structlog
from servers.tlsca import pki

__all__ = ["FakeHTTPServer", "captured_logs", "pki"]


class FakeHTTPServer:
    """A ThreadingHTTPServer on 127.0.0.1 (TLS by default) run in a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], *, tls: bool = True):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.tls = tls
        if tls:
            self.httpd.socket = pki().server_context.wrap_socket(
                self.httpd.socket, server_side=True
            )
        self.httpd.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> FakeHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def captured_logs(fmt: str = "json", level: str = "info") -> Iterator[io.StringIO]:
    """inboxd's logging (``logs.configure(fmt, level)``) into a buffer; the previous
    set-up is restored after, and the bound context variables are cleared."""
    from inboxd import logs

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    logs.configure(fmt, level, stream=buf)
    try:
        yield buf
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
