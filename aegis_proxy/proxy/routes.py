"""Routes: which upstream a request goes to, and what speaks there. Pure; no mitmproxy.

A route is `NAME=URL`. In reverse mode `http://proxy/NAME/rest` goes to `URL/rest`; a name `mcp/<server>` (or any
name whose URL path ends in `/mcp`) is an MCP server called <server>, every other route carries LLM traffic whose
protocol is recognised by path. In forward mode the request's own scheme, host and port pick the route.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Iterable, Sequence

from aegis_proxy.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_ROUTE_HINT = "write a route as NAME=URL, e.g. openai=https://api.openai.com or mcp/files=http://127.0.0.1:3000/mcp"


@dataclasses.dataclass(frozen=True)
class Route:
    name: str
    scheme: str  # http | https
    host: str
    port: int
    base_path: str  # "" or "/something", never a trailing slash
    mcp_server: str | None  # the MCP server's name when this route is an MCP server

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.base_path}"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one request goes: the route and the upstream path (route prefix removed, base path added)."""

    route: Route
    path: str  # upstream path with query, e.g. /v1/chat/completions
    endpoint: str  # the path relative to the route (no query), used to recognise the protocol


def parse_route(text: str) -> Route:
    name, sep, url = text.partition("=")
    name, url = name.strip().strip("/"), url.strip()
    if not sep or not name or not url:
        raise ConfigError(f"route {text!r} is not NAME=URL", hint=_ROUTE_HINT)
    if not _NAME.match(name):
        raise ConfigError(f"route name {name!r} is not usable in a URL path", hint=_ROUTE_HINT)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"route {name}: {url!r} is not an http(s) URL", hint=_ROUTE_HINT)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"route {name}: the URL may not carry a query, fragment or credentials", hint=_ROUTE_HINT)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise ConfigError(f"route {name}: {error}", hint=_ROUTE_HINT) from None
    base_path = parts.path.rstrip("/")
    mcp_server = name.split("/", 1)[1] if name.startswith("mcp/") else None
    return Route(name, parts.scheme, parts.hostname, port, base_path, mcp_server)


class RouteTable:
    """Compiled once when the configuration changes; the request path only looks things up."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        names = [route.name for route in self.routes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"route name(s) given twice: {', '.join(duplicates)}", hint="give each route once")
        # Longest name first, so that mcp/files-v2 is not taken for mcp/files.
        self._by_prefix = sorted(self.routes, key=lambda r: -len(r.name))

    @classmethod
    def parse(cls, texts: Sequence[str]) -> RouteTable:
        return cls(parse_route(text) for text in texts)

    def reverse(self, path: str) -> Target | None:
        """The target of a reverse-mode request path `/NAME/rest?query`, or None when no route has that name."""
        for route in self._by_prefix:
            prefix = "/" + route.name
            if path == prefix or path.startswith((prefix + "/", prefix + "?")):
                rest = path[len(prefix) :]  # "", "?query", "/more" or "/more?query"
                # /mcp/files goes to the route's URL exactly (http://host/mcp, not /mcp/: servers redirect that).
                upstream = route.base_path + rest if rest.startswith("/") else (route.base_path or "/") + rest
                return Target(route, upstream, rest.split("?", 1)[0] or "/")
        return None

    def forward(self, scheme: str, host: str, port: int, path: str) -> Target | None:
        """The target of a forward-mode request to scheme://host:port/path, or None when it is not a route's."""
        for route in self._by_prefix:
            if (route.scheme, route.host.lower(), route.port) != (scheme, host.lower(), port):
                continue
            bare = path.split("?", 1)[0]
            if route.base_path and not (bare == route.base_path or bare.startswith(route.base_path + "/")):
                continue
            return Target(route, path, bare[len(route.base_path) :] or "/")
        return None

    def intercepted_hosts(self) -> list[str]:
        """Regexes for mitmproxy's allow_hosts: in forward mode only these are decrypted, the rest are tunnelled."""
        return [f"^{re.escape(route.host)}:{route.port}$" for route in self.routes]
