"""A real MCP server (the `mcp` SDK's FastMCP over Streamable HTTP, served by uvicorn in a thread) with a small
in-memory workspace. The demo and the end-to-end tests put it behind the proxy.

Its tools do nothing outside the process: files live in a dict, commands and emails are only recorded. `calls`
lists every tool that really ran, so a test or the demo can show that a denied call never reached the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings

TOOL_NAMES = ("read_file", "write_file", "run_command", "send_email")


@dataclasses.dataclass
class Workspace:
    files: dict[str, str] = dataclasses.field(default_factory=lambda: {"/workspace/README.md": "# Demo project\n"})
    calls: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def record(self, tool: str, arguments: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((tool, arguments))


def build_app(workspace: Workspace, *, json_response: bool = False, stateless: bool = False) -> FastMCP:
    app = FastMCP(
        "aegis-demo-workspace",
        json_response=json_response,
        stateless_http=stateless,
        log_level="WARNING",  # FastMCP configures the root logger; the demo's output is the narrative
        # Behind the proxy the Host header is the proxy's; this server only ever listens on loopback.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    @app.tool()
    def read_file(path: str) -> str:
        """Read a text file from the workspace."""
        workspace.record("read_file", {"path": path})
        return workspace.files.get(path, f"(no file {path})")

    @app.tool()
    def write_file(path: str, content: str) -> str:
        """Write a text file in the workspace."""
        workspace.record("write_file", {"path": path, "content": content})
        workspace.files[path] = content
        return f"wrote {len(content)} characters to {path}"

    @app.tool()
    def run_command(command: str) -> str:
        """Run a shell command (this server only records it)."""
        workspace.record("run_command", {"command": command})
        return f"ran: {command}"

    @app.tool()
    def send_email(to: list[str], subject: str, body: str) -> str:
        """Send an email (this server only records it)."""
        workspace.record("send_email", {"to": to, "subject": subject, "body": body})
        return f"sent to {', '.join(to)}"

    return app


@dataclasses.dataclass
class RunningServer:
    url: str  # the MCP endpoint, e.g. http://127.0.0.1:41234/mcp
    app: FastMCP
    workspace: Workspace

    @property
    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        return self.workspace.calls

    def set_description(self, tool: str, description: str) -> None:
        """Change a tool's description while the server runs: what a "rug pull" looks like on the wire."""
        registered = self.app._tool_manager.get_tool(tool)
        if registered is None:
            raise KeyError(tool)
        registered.description = description


@contextlib.contextmanager
def serve_asgi(app: Any, name: str) -> Iterator[int]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 and an ephemeral port, in a thread; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"{name}-{port}")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def running_workspace_server(*, json_response: bool = False, stateless: bool = False) -> Iterator[RunningServer]:
    workspace = Workspace()
    app = build_app(workspace, json_response=json_response, stateless=stateless)
    with serve_asgi(app.streamable_http_app(), "mcp-workspace") as port:
        yield RunningServer(f"http://127.0.0.1:{port}/mcp", app, workspace)
