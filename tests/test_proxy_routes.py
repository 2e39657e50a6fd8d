"""Route parsing and lookup (reverse paths, forward hosts)."""

from __future__ import annotations

import pytest

from aegis_proxy.errors import ConfigError
from aegis_proxy.proxy.routes import RouteTable, parse_route


@pytest.mark.parametrize(
    ("text", "url", "mcp_server"),
    [
        ("openai=https://api.openai.com", "https://api.openai.com:443", None),
        ("anthropic=https://api.anthropic.com/", "https://api.anthropic.com:443", None),
        ("local=http://127.0.0.1:9000/base/", "http://127.0.0.1:9000/base", None),
        ("mcp/files=http://127.0.0.1:3000/mcp", "http://127.0.0.1:3000/mcp", "files"),
        (" /openai/ = https://api.openai.com ", "https://api.openai.com:443", None),
    ],
)
def test_parse_route(text: str, url: str, mcp_server: str | None) -> None:
    route = parse_route(text)
    assert route.url == url
    assert route.mcp_server == mcp_server


@pytest.mark.parametrize(
    "text",
    [
        "openai",
        "=https://x",
        "openai=",
        "openai=ftp://x",
        "openai=https://",
        "open ai=https://x",
        "a/b/c=https://x",
        "openai=https://x/?q=1",
        "openai=https://user:pw@x",
        "openai=https://x:99999",
        "../x=https://x",
    ],
)
def test_bad_routes_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_route(text)
    assert info.value.hint


def test_duplicate_route_names_refused() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        RouteTable.parse(["a=http://x", "a=http://y"])


TABLE = RouteTable.parse(
    [
        "openai=https://api.openai.com",
        "local=http://127.0.0.1:9000/base",
        "mcp/files=http://127.0.0.1:3000/mcp",
        "mcp/files-v2=http://127.0.0.1:3001/mcp",
    ]
)


@pytest.mark.parametrize(
    ("path", "route", "upstream", "endpoint"),
    [
        ("/openai/v1/chat/completions", "openai", "/v1/chat/completions", "/v1/chat/completions"),
        ("/openai/v1/models?limit=2", "openai", "/v1/models?limit=2", "/v1/models"),
        ("/openai", "openai", "/", "/"),
        ("/local/v1/messages", "local", "/base/v1/messages", "/v1/messages"),
        ("/mcp/files", "mcp/files", "/mcp", "/"),
        ("/mcp/files?session=1", "mcp/files", "/mcp?session=1", "/"),
        ("/openai?x=1", "openai", "/?x=1", "/"),
        ("/mcp/files-v2/x", "mcp/files-v2", "/mcp/x", "/x"),
        ("/openaiX/v1", None, None, None),
        ("/nothing", None, None, None),
        ("/", None, None, None),
    ],
)
def test_reverse_lookup(path: str, route: str | None, upstream: str | None, endpoint: str | None) -> None:
    target = TABLE.reverse(path)
    if route is None:
        assert target is None
        return
    assert target is not None
    assert (target.route.name, target.path, target.endpoint) == (route, upstream, endpoint)


@pytest.mark.parametrize(
    ("scheme", "host", "port", "path", "route", "endpoint"),
    [
        ("https", "api.openai.com", 443, "/v1/chat/completions", "openai", "/v1/chat/completions"),
        ("https", "API.OpenAI.com", 443, "/v1/responses", "openai", "/v1/responses"),
        ("http", "api.openai.com", 80, "/v1/chat/completions", None, None),
        ("http", "127.0.0.1", 9000, "/base/v1/messages?x=1", "local", "/v1/messages"),
        ("http", "127.0.0.1", 9000, "/other", None, None),
        ("http", "127.0.0.1", 3001, "/mcp", "mcp/files-v2", "/"),
        ("https", "example.com", 443, "/", None, None),
    ],
)
def test_forward_lookup(scheme: str, host: str, port: int, path: str, route: str | None, endpoint: str | None) -> None:
    target = TABLE.forward(scheme, host, port, path)
    if route is None:
        assert target is None
        return
    assert target is not None
    assert (target.route.name, target.endpoint) == (route, endpoint)


def test_intercepted_hosts_are_anchored() -> None:
    assert TABLE.intercepted_hosts()[0] == r"^api\.openai\.com:443$"
