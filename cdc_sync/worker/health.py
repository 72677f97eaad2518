"""The worker's HTTP endpoint: /metrics (prometheus-client), /healthz and /readyz.

/healthz answers 200 while the sync loop is alive (it ticks on every event, retry and wait); /readyz answers
200 while it is streaming and the freshness heartbeat is younger than ``ready_max_lag_s``. Both return a
small JSON body that says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import make_wsgi_app


@dataclass(frozen=True)
class Health:
    alive: bool
    ready: bool
    detail: dict[str, Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the log; structlog carries the events that matter


class HealthServer:
    """Serves the three paths from a daemon thread."""

    def __init__(self, listen: str, health: Callable[[], Health]) -> None:
        host, _, port = listen.rpartition(":")
        self._health = health
        self._metrics = make_wsgi_app()
        self._server = make_server(host, int(port), self._app, _ThreadingServer, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="cdc-sync-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            health = self._health()
            ok = health.alive if path == "/healthz" else health.ready
            body = orjson.dumps({"ok": ok, "alive": health.alive, "ready": health.ready, **health.detail})
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [body]
        if path in ("/metrics", "/"):
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
