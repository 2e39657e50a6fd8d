"""The aegis_stream_end hook added to mitmproxy's HTTP layer: yielded first, for our streams only, on the end of a
streamed response; refused at startup on a mitmproxy it was not written for. The real layer runs it in
test_proxy_e2e.py (streamed answers through the running proxy)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from mitmproxy.proxy.layers.http import HttpStream, ResponseData, ResponseEndOfMessage
from mitmproxy.test import tflow

from aegis_proxy.proxy import stream_end


class Ours:
    awaits_end = True

    def __call__(self, chunk: bytes) -> list[bytes]:
        return [chunk]


def original(_self: Any, event: Any) -> Generator[Any, Any, None]:
    yield ("mitmproxy's own handling of", type(event).__name__)


def commands(stream: Any, event: Any) -> list[Any]:
    flow = tflow.tflow(resp=True)
    flow.response.stream = stream

    class Layer:
        pass

    layer = Layer()
    layer.flow = flow  # type: ignore[attr-defined]
    return list(stream_end._with_stream_end(original)(layer, event))


@pytest.mark.parametrize(
    ("stream", "event", "hooked"),
    [
        (Ours(), ResponseEndOfMessage(1), True),
        (Ours(), ResponseData(1, b"data: {}\n\n"), False),  # only the end waits
        (True, ResponseEndOfMessage(1), False),  # a plain mitmproxy stream: untouched
        (lambda chunk: chunk, ResponseEndOfMessage(1), False),  # someone else's stream callable: untouched
    ],
)
def test_the_hook_comes_first_on_the_end_of_our_streams_only(stream: Any, event: Any, hooked: bool) -> None:
    out = commands(stream, event)
    assert out[-1] == ("mitmproxy's own handling of", type(event).__name__)  # then mitmproxy's code, unchanged
    if hooked:
        assert len(out) == 2 and isinstance(out[0], stream_end.StreamEndHook) and out[0].args() == [stream]
        assert out[0].name == "aegis_stream_end" and out[0].blocking  # the layer pauses until our handler returns
    else:
        assert len(out) == 1


def test_install_is_idempotent() -> None:
    stream_end.install()
    wrapped = HttpStream.__dict__["state_stream_response_body"]
    stream_end.install()
    assert stream_end.installed() and HttpStream.__dict__["state_stream_response_body"] is wrapped


def test_another_mitmproxy_is_refused_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    stream_end.install()
    unwrapped = HttpStream.__dict__["state_stream_response_body"].__wrapped__
    monkeypatch.setattr(HttpStream, "state_stream_response_body", unwrapped)
    monkeypatch.setattr(stream_end.mitmproxy_version, "VERSION", "12.0.0")
    assert not stream_end.installed()
    with pytest.raises(stream_end.StreamEndUnavailable, match=r"needs mitmproxy 11\.x, found 12\.0\.0") as raised:
        stream_end.install()
    assert "pip install" in raised.value.hint
