"""The lifecycle every local fake server shares: serve on 127.0.0.1 in a daemon thread, stop cleanly."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LocalServer:
    """Mixin for fakes: call :meth:`_serve` from ``start()``; ``_stopping`` ends any deliberate waits."""

    thread_name = "fake-server"
    _server: ThreadingHTTPServer | None = None
    _stopping: threading.Event

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _serve(self, handler_cls):
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
