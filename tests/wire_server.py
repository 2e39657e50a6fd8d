"""A tiny local HTTP server that answers every POST with fixed bytes, so the official SDKs parse our rewritten bodies
and streams exactly as they would parse an upstream's (no SDK mocks)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aegis_proxy.models import ToolCall
from aegis_proxy.proxy.wire import Ruling


@contextmanager
def serve(body: bytes, *, content_type: str, chunk: int = 0) -> Iterator[str]:
    """Serve `body` to every POST; yields the base URL. `chunk` > 0 writes the body in pieces of that size."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = chunk or len(body) or 1
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                self.wfile.flush()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Judge:
    """Blocks the named tools and records every call it was asked about."""

    def __init__(self, *blocked: str, message: str = "destructive shell command") -> None:
        self.blocked = set(blocked)
        self.message = message
        self.seen: list[ToolCall] = []

    def __call__(self, call: ToolCall) -> Ruling:
        self.seen.append(call)
        return Ruling(call.id, call.tool not in self.blocked, self.message if call.tool in self.blocked else "")
