"""A tiny local HTTP server that answers every POST with fixed bytes, so the official SDKs parse our rewritten bodies
and streams exactly as they would parse an upstream's (no SDK mocks)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


# -- the contract every LLM wire module's stream filter keeps (each test file calls these with its own data) ---------


def run_filter(
    api: Any, stream: bytes, judge: Callable[[ToolCall], Ruling], pieces: list[bytes] | None = None
) -> bytes:
    """What the client receives when `stream` arrives in `pieces` (whole, by default)."""
    f = api.stream_filter(judge)
    return b"".join(f.feed(p) for p in (pieces if pieces is not None else [stream])) + f.close()


def rulings_of(api: Any, body: bytes, judge: Judge) -> dict[str, Ruling]:
    return {c.id: judge(c) for c in api.tool_calls(body)}


def assert_every_two_way_split_agrees(api: Any, stream: bytes, blocked: tuple[str, ...]) -> None:
    whole = run_filter(api, stream, Judge(*blocked))
    for cut in range(len(stream) + 1):
        assert run_filter(api, stream, Judge(*blocked), [stream[:cut], stream[cut:]]) == whole, cut


def assert_byte_by_byte_and_crlf_agree(api: Any, stream: bytes, final: Callable[[bytes], Any]) -> None:
    """Byte by byte gives the same bytes; CRLF line ends byte by byte give the same final answer (`final` parses
    a filtered stream into the SDK's model of it)."""
    whole = run_filter(api, stream, Judge("run_shell"))
    assert run_filter(api, stream, Judge("run_shell"), [stream[i : i + 1] for i in range(len(stream))]) == whole
    crlf = stream.replace(b"\n", b"\r\n")
    crlf_out = run_filter(api, crlf, Judge("run_shell"), [crlf[i : i + 1] for i in range(len(crlf))])
    assert final(crlf_out.replace(b"\r\n", b"\n")).model_dump() == final(whole).model_dump()


def assert_random_split_agrees(api: Any, stream: bytes, cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert run_filter(api, stream, Judge("run_shell"), pieces) == run_filter(api, stream, Judge("run_shell"))
