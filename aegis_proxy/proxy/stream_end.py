"""One hook mitmproxy lacks: `aegis_stream_end(stream)`, run when the upstream has finished a streamed response and
before mitmproxy asks the stream callable for its last bytes.

Why: a stream callable is synchronous, and mitmproxy's `response` hook runs only after the last streamed bytes were
written, so there is no point at which an addon can await something and still change what a stream ends with. A tool
call is usually complete only at the end of its answer, and deciding it inside the callable held the event loop, every
other flow, for the whole decision. With this hook the addon awaits the stream's decisions there
(proxy/lookahead.py), and the callable then releases the rest.

How: mitmproxy's HTTP layer (HttpStream) handles an upstream's end of message in `state_stream_response_body`. We
wrap that one method: for a stream whose callable asks for it (`awaits_end = True`, set by the addon's SafeStream), it
first yields our hook, a blocking `StartHook` like mitmproxy's own; the layer pauses (queueing any events) until every
addon's handler, async ones included, has returned, then mitmproxy's code runs unchanged. Every other stream is left
exactly as mitmproxy handles it.

The wrapped method is mitmproxy 11's; `install()` refuses to start on a mitmproxy whose layer does not have it
(a clear error at startup), and a stream whose hook did not run ends with an error event (lookahead.py), never open.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import version as mitmproxy_version
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import HttpStream, ResponseEndOfMessage

from aegis_proxy.errors import ConfigError

HOOK_NAME = "aegis_stream_end"
SUPPORTED_MAJOR = "11"


@dataclasses.dataclass
class StreamEndHook(commands.StartHook):
    """The upstream finished a streamed response; its last bytes have not been asked for yet. Carries the stream
    callable, not the flow: mitmproxy follows a hook about a flow with an `update` hook through every addon, which
    this one does not need."""

    name = HOOK_NAME
    stream: Any


class StreamEndUnavailable(ConfigError):
    """This mitmproxy's HTTP layer is not the one the hook was written for."""


def install() -> None:
    """Wrap HttpStream's streamed-body state once (idempotent). Raises StreamEndUnavailable on another mitmproxy."""
    current = HttpStream.__dict__.get("state_stream_response_body")
    if getattr(current, "aegis_stream_end", False):
        return
    major = mitmproxy_version.VERSION.split(".", 1)[0]
    if major != SUPPORTED_MAJOR or not callable(current):
        raise StreamEndUnavailable(
            f"aegis-proxy needs mitmproxy {SUPPORTED_MAJOR}.x, found {mitmproxy_version.VERSION}",
            hint=f"pip install 'mitmproxy>={SUPPORTED_MAJOR},<{int(SUPPORTED_MAJOR) + 1}' (streamed tool calls are "
            "decided in a hook added to that version's HTTP layer)",
        )
    HttpStream.state_stream_response_body = _with_stream_end(current)  # type: ignore[method-assign]


def installed() -> bool:
    return bool(getattr(HttpStream.__dict__.get("state_stream_response_body"), "aegis_stream_end", False))


def _with_stream_end(original: Callable[[Any, events.Event], Generator[Any, Any, None]]) -> Any:
    def state_stream_response_body(self: HttpStream, event: events.Event) -> Generator[Any, Any, None]:
        response = self.flow.response
        if (
            isinstance(event, ResponseEndOfMessage)
            and response is not None
            and getattr(response.stream, "awaits_end", False)
        ):
            yield StreamEndHook(response.stream)
        yield from original(self, event)

    state_stream_response_body.aegis_stream_end = True  # type: ignore[attr-defined]
    state_stream_response_body.__wrapped__ = original  # type: ignore[attr-defined]
    return state_stream_response_body
