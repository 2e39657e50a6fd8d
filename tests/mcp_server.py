"""A real MCP server for tests: FastMCP over Streamable HTTP, served by uvicorn in a thread on an ephemeral port.

Its tools are harmless: each records that it ran (tool name and arguments) in `McpTestServer.calls`, so a test can
assert that a denied call never executed. The ASGI app is wrapped in a recorder that keeps every HTTP exchange's
request and response bytes exactly as they crossed the wire (`McpTestServer.exchanges`), for parser tests.

    with running_mcp_server() as server:
        async with streamablehttp_client(server.url) as (read, write, _):
            ...
        assert server.calls == [("read_file", {"path": "/workspace/a.txt"})]
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

from mcp.server.fastmcp import FastMCP

from aegis_proxy.demo.mcp_server import TOOL_NAMES, Workspace, build_app, serve_asgi

__all__ = ["TOOL_NAMES", "Exchange", "McpTestServer", "running_mcp_server"]


@dataclasses.dataclass(frozen=True)
class Exchange:
    """One HTTP exchange as the server saw it."""

    method: str
    path: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    response_chunks: tuple[bytes, ...]  # the body as the server sent it, chunk by chunk

    @property
    def response_body(self) -> bytes:
        return b"".join(self.response_chunks)

    @property
    def content_type(self) -> str:
        return self.response_headers.get("content-type", "")


class _Recorder:
    """ASGI middleware that records request and response bytes (HTTP only; lifespan passes through)."""

    def __init__(self, app: Any, exchanges: list[Exchange], lock: threading.Lock) -> None:
        self.app = app
        self.exchanges = exchanges
        self.lock = lock

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_body = bytearray()
        status = 0
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def recording_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                request_body.extend(message.get("body", b""))
            return message

        async def recording_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers.update((k.decode().lower(), v.decode()) for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body" and message.get("body"):
                chunks.append(bytes(message["body"]))
            await send(message)

        try:
            await self.app(scope, recording_receive, recording_send)
        finally:
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            exchange = Exchange(
                scope["method"], scope["path"], headers, bytes(request_body), status, response_headers, tuple(chunks)
            )
            with self.lock:
                self.exchanges.append(exchange)


@dataclasses.dataclass
class McpTestServer:
    url: str  # the MCP endpoint, e.g. http://127.0.0.1:41234/mcp
    app: FastMCP
    calls: list[tuple[str, dict[str, Any]]]
    exchanges: list[Exchange]

    def set_description(self, tool: str, description: str) -> None:
        """Change a tool's description while the server runs (a "rug pull")."""
        registered = self.app._tool_manager.get_tool(tool)
        if registered is None:
            raise KeyError(tool)
        registered.description = description

    def remove_tool(self, tool: str) -> None:
        self.app.remove_tool(tool)


@contextlib.contextmanager
def running_mcp_server(*, json_response: bool = False, stateless: bool = False) -> Iterator[McpTestServer]:
    """The demo's workspace server (aegis_proxy.demo.mcp_server) with every HTTP exchange recorded.

    `json_response=True` answers requests with application/json instead of an SSE stream.
    """
    workspace = Workspace()
    exchanges: list[Exchange] = []
    app = build_app(workspace, json_response=json_response, stateless=stateless)
    with serve_asgi(_Recorder(app.streamable_http_app(), exchanges, threading.Lock()), "mcp-test-server") as port:
        yield McpTestServer(f"http://127.0.0.1:{port}/mcp", app, workspace.calls, exchanges)
