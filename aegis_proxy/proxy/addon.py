"""The mitmproxy addon: route each request, hand tool calls to the Gate, apply its outcome to the flow.

Hooks and what they do (each one fails closed, see `_fail_closed`):
  request          route (reverse: /NAME/... -> the route's URL; forward: the route whose host this is); parse the LLM
                   request into a conversation, or decide MCP `tools/call` requests before the server sees them
  responseheaders  a streamed (SSE) LLM answer gets a StreamFilter: text passes at once, tool calls wait for a ruling
  response         a whole LLM answer: decide every tool call, hold asks until approved, rewrite blocked calls;
                   an MCP answer: add our results for blocked calls, pin tool lists

mitmproxy logs and swallows an exception raised in a hook and then lets the flow through. So no hook of ours lets an
exception escape: it becomes a blocked flow (an error response the SDKs raise on, or an error event ending a stream),
and the failure is audited when the audit log can still be written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from mitmproxy import ctx, http
from mitmproxy.net.http import url

from aegis_proxy.models import CallContext, ToolCall
from aegis_proxy.proxy import identity
from aegis_proxy.proxy.routes import RouteTable, Target
from aegis_proxy.proxy.wire import LLMProtocol, RequestView, Ruling, StreamFilter, WireError

log = logging.getLogger(__name__)

STATE_KEY = "aegis"  # flow.metadata key of the FlowState
FAILED_KEY = "aegis_failed"  # set when responseheaders failed: the response hook blocks the flow
# Endpoints of LLM routes that cannot carry tool calls and pass without a parse; any other POST to a path no wire
# module knows is blocked, since we cannot see what it would make the agent do.
TOOL_FREE_ENDPOINTS = (
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/messages/count_tokens",
    "/v1/audio/",
    "/v1/images/",
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STORED_RESPONSE = re.compile(r"^(/v1)?/responses/[A-Za-z0-9_-]+/?$")  # GET: a stored answer, which may hold calls


class GateLike(Protocol):
    """What the addon needs from aegis_proxy.gate.Gate (a Protocol so the addon's tests can use a real Gate)."""

    def decide(self, call: ToolCall, context: CallContext, *, request_id: str) -> Any: ...

    def decide_async(self, call: ToolCall, context: CallContext, *, request_id: str) -> Awaitable[Any]: ...

    def await_approval(self, outcome: Any, timeout: float) -> Awaitable[Any]: ...

    def record_failure(self, *, request_id: str, context: CallContext | None, where: str, error: str) -> None: ...


@dataclasses.dataclass
class FlowState:
    target: Target
    protocol: LLMProtocol | None
    context: CallContext
    streamed: bool = False
    mcp: Any = None  # mcp_flow.McpExchange on MCP routes


class BlockedFlow(Exception):
    """Raised inside a hook to block the flow with a status and a message for the agent."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(protocol: str | None, message: str) -> bytes:
    """An error body the client's SDK raises on: Anthropic's shape for Anthropic routes, OpenAI's otherwise."""
    if protocol == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": "permission_error", "message": message}}
    else:
        body = {"error": {"message": message, "type": "aegis_blocked", "code": "aegis_blocked", "param": None}}
    return json.dumps(body).encode()


def stream_error_event(protocol: str | None, message: str) -> bytes:
    """The SSE event that ends a stream we can no longer vouch for; each SDK raises on it."""
    if protocol == "anthropic":
        data = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
    data = {"error": {"message": message, "type": "aegis_blocked", "code": "aegis_blocked"}}
    return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"


def _blocked_response(flow: http.HTTPFlow, status: int, message: str) -> None:
    state = flow.metadata.get(STATE_KEY)
    protocol = state.protocol.name if isinstance(state, FlowState) and state.protocol else None
    flow.response = http.Response.make(status, error_body(protocol, message), {"content-type": "application/json"})


def _fail_closed(phase: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a hook so that any failure blocks the flow instead of letting mitmproxy forward it."""

    def wrap(hook: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(hook):

            @functools.wraps(hook)
            async def async_hook(self: AegisAddon, flow: http.HTTPFlow) -> None:
                try:
                    await hook(self, flow)
                except Exception as error:  # every failure becomes a block, by design
                    self.block_on_failure(flow, phase, error)

            return async_hook

        @functools.wraps(hook)
        def sync_hook(self: AegisAddon, flow: http.HTTPFlow) -> None:
            try:
                hook(self, flow)
            except Exception as error:
                self.block_on_failure(flow, phase, error)

        return sync_hook

    return wrap


class SafeStream:
    """mitmproxy's stream callable around a StreamFilter. A failure ends the stream with an error event and drops
    everything after it: held tool-call events are never released (fail closed)."""

    def __init__(self, inner: StreamFilter, protocol: str, on_failure: Callable[[str], None]) -> None:
        self.inner = inner
        self.protocol = protocol
        self.on_failure = on_failure
        self.failed = False

    def __call__(self, chunk: bytes) -> list[bytes]:
        # A list, never b"": mitmproxy sends each item as a chunk, and an empty HTTP/1 chunk ends the body.
        if self.failed:
            return []
        try:
            out = self.inner.close() if chunk == b"" else self.inner.feed(chunk)
            return [out] if out else []
        except Exception as error:
            self.failed = True
            reason = error.message if isinstance(error, WireError) else f"{type(error).__name__}: {error}"
            try:
                self.on_failure(reason)
            except Exception:  # the block below must still happen
                log.exception("aegis: recording a stream failure failed")
            return [stream_error_event(self.protocol, f"aegis-proxy blocked the rest of this response: {reason}")]


class AegisAddon:
    """One addon for all routes: routing, LLM protocols and MCP share the Gate and the route table."""

    def __init__(self, gate: GateLike, protocols: Sequence[LLMProtocol], *, mcp: Any | None = None) -> None:
        self.gate = gate
        self.protocols = tuple(protocols)
        self.mcp = mcp
        self.routes = RouteTable(())
        self.reverse = True
        self.approval_timeout = 300.0

    # -- options ---------------------------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option("aegis_routes", Sequence[str], [], "Routes NAME=URL (reverse: /NAME/... goes to URL/...).")
        loader.add_option("aegis_approval_timeout", float, 300.0, "Seconds a held call waits for an approval.")

    def configure(self, updated: set[str]) -> None:
        if "aegis_routes" in updated:
            self.routes = RouteTable.parse(ctx.options.aegis_routes)
        if "aegis_approval_timeout" in updated:
            self.approval_timeout = float(ctx.options.aegis_approval_timeout)
        if "mode" in updated:
            self.reverse = any(str(mode).startswith("reverse") for mode in ctx.options.mode)

    # -- failures --------------------------------------------------------------------------------------------------

    def block_on_failure(self, flow: http.HTTPFlow, phase: str, error: Exception) -> None:
        if isinstance(error, BlockedFlow):
            _blocked_response(flow, error.status, error.message)
            return
        reason = error.message if isinstance(error, WireError) else f"{type(error).__name__}: {error}"
        log.warning("aegis: blocked %s %s in %s: %s", flow.request.method, flow.request.pretty_url, phase, reason)
        state = flow.metadata.get(STATE_KEY)
        try:
            self.gate.record_failure(
                request_id=flow.id,
                context=state.context if isinstance(state, FlowState) else None,
                where=phase,
                error=reason,
            )
        except Exception:  # the block must happen even when the audit log is down
            log.exception("aegis: could not audit a hook failure")
        try:
            if phase == "responseheaders" and flow.response is not None:
                # The body is still to come and would overwrite a replacement: mark the flow, read the body whole
                # (not streamed), and let the response hook block it.
                flow.response.stream = False
                flow.metadata[FAILED_KEY] = reason
                return
            status = 403 if phase == "request" else 502
            _blocked_response(flow, status, f"aegis-proxy blocked this {phase}: {reason}")
        except Exception:  # last resort: drop the connection rather than pass the flow
            flow.kill()

    # -- hooks -----------------------------------------------------------------------------------------------------

    @_fail_closed("request")
    async def request(self, flow: http.HTTPFlow) -> None:
        target = self._route(flow)
        if target is None:
            return
        if target.route.mcp_server is not None:
            if self.mcp is None:
                raise BlockedFlow(403, "aegis-proxy has no MCP support configured for this route")
            await self.mcp.request(self, flow, target)
            return
        if flow.request.method == "GET" and STORED_RESPONSE.match(target.endpoint):
            # A stored Responses answer (retrieved, or its stream resumed) carries function calls like a fresh one.
            stored = next((p for p in self.protocols if p.name == "openai-responses"), None)
            if stored is None:
                raise BlockedFlow(403, "aegis-proxy cannot read stored responses on this route")
            headers = identity.identity_headers(flow.request.headers.fields)
            context = CallContext(agent_id=identity.agent_id(headers), session_id=None)
            flow.metadata[STATE_KEY] = FlowState(target=target, protocol=stored, context=context)
            flow.request.headers["accept-encoding"] = "identity"
            return
        protocol = next((p for p in self.protocols if p.matches(target.endpoint)), None)
        if protocol is None:
            if flow.request.method in SAFE_METHODS or target.endpoint.startswith(TOOL_FREE_ENDPOINTS):
                return
            raise BlockedFlow(
                403,
                f"aegis-proxy does not understand {flow.request.method} {target.endpoint} on route "
                f"{target.route.name}, so it cannot see the tool calls it may carry; the request was not sent",
            )
        body = flow.request.get_content(strict=True) or b""
        view: RequestView = protocol.parse_request(body)
        headers = identity.identity_headers(flow.request.headers.fields)
        context = CallContext(
            agent_id=identity.agent_id(headers),
            session_id=identity.session_id(headers, view.messages),
            messages=view.messages,
        )
        flow.metadata[STATE_KEY] = FlowState(target=target, protocol=protocol, context=context)
        # Streams are filtered chunk by chunk, which needs them uncompressed.
        flow.request.headers["accept-encoding"] = "identity"

    @_fail_closed("responseheaders")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(STATE_KEY)
        if not isinstance(state, FlowState) or flow.response is None:
            return
        if state.protocol is None:
            if self.mcp is not None:
                self.mcp.responseheaders(flow, state)
            return
        content_type = flow.response.headers.get("content-type", "")
        if not content_type.lower().startswith("text/event-stream"):
            return
        if flow.response.headers.get("content-encoding", "identity").lower() != "identity":
            # Not streamed: the response hook decodes the whole body, or blocks it if it cannot.
            return
        protocol = state.protocol
        decide = functools.partial(self._stream_ruling, flow, state)
        flow.response.stream = SafeStream(
            protocol.stream_filter(decide),
            protocol.name,
            lambda reason: self.gate.record_failure(
                request_id=flow.id, context=state.context, where="stream", error=reason
            ),
        )
        state.streamed = True

    @_fail_closed("response")
    async def response(self, flow: http.HTTPFlow) -> None:
        failed = flow.metadata.get(FAILED_KEY)
        if failed is not None:
            raise BlockedFlow(502, f"aegis-proxy blocked this response: {failed}")
        state = flow.metadata.get(STATE_KEY)
        if not isinstance(state, FlowState) or flow.response is None:
            return
        if state.protocol is None:
            if self.mcp is not None:
                await self.mcp.response(flow, state)
            return
        if state.streamed or not 200 <= flow.response.status_code < 300:
            return  # a stream was decided chunk by chunk; an error answer carries no tool call
        body = flow.response.get_content(strict=True) or b""
        if flow.response.headers.get("content-type", "").lower().startswith("text/event-stream"):
            # A stream we could not filter live (compressed): run the same filter over the whole body.
            stream = state.protocol.stream_filter(functools.partial(self._stream_ruling, flow, state))
            flow.response.set_content(stream.feed(body) + stream.close())
            return
        calls = state.protocol.tool_calls(body)
        if not calls:
            return
        rulings = {call.id: await self.ruling(flow, state.context, call) for call in calls}
        if not all(ruling.allow for ruling in rulings.values()):
            flow.response.set_content(state.protocol.rewrite(body, rulings))

    # -- deciding --------------------------------------------------------------------------------------------------

    async def ruling(self, flow: http.HTTPFlow, context: CallContext, call: ToolCall) -> Ruling:
        """Decide one call without blocking the event loop (Gate.decide_async: small calls are judged on the loop,
        their audit record awaited from the writer thread); hold an ask until a human answers or the timeout passes."""
        outcome = await self.gate.decide_async(call, context, request_id=flow.id)
        if outcome.effect == "ask":
            outcome = await self.gate.await_approval(outcome, self.approval_timeout)
        return Ruling(call_id=call.id, allow=outcome.effect == "allow", message=outcome.message)

    def _stream_ruling(self, flow: http.HTTPFlow, state: FlowState, call: ToolCall) -> Ruling:
        """A streamed call: decided synchronously (stream callables cannot await). An ask cannot be held inside a
        stream, so the agent is told the approval id; once approved, the identical call passes once."""
        outcome = self.gate.decide(call, state.context, request_id=flow.id)
        return Ruling(call_id=call.id, allow=outcome.effect == "allow", message=outcome.message)

    # -- routing ---------------------------------------------------------------------------------------------------

    def _route(self, flow: http.HTTPFlow) -> Target | None:
        request = flow.request
        if self.reverse:
            target = self.routes.reverse(request.path)
            if target is None:
                names = ", ".join("/" + route.name for route in self.routes.routes) or "(none configured)"
                raise BlockedFlow(404, f"aegis-proxy has no route for {request.path.split('?', 1)[0]}; routes: {names}")
            retarget(request, target)
            return target
        return self.routes.forward(request.scheme, request.host, request.port, request.path)


def retarget(request: http.Request, target: Target) -> None:
    """Point a reverse-mode request at its route's upstream: what setting `scheme`, `host`, `port`, `path` and
    `host_header` one by one does, with the Host header written once, not three times (mitmproxy's host and port
    setters each rewrite it: measured 11 us against 3 us)."""
    route = target.route
    data = request.data
    data.scheme, data.host, data.port = route.scheme.encode("ascii"), route.host, route.port
    if data.authority:  # as the setters do: an absolute-form or HTTP/2 request names its target here too
        request.authority = url.hostport(route.scheme, route.host, route.port)
    request.path = target.path
    request.host_header = route.host if route.port in (80, 443) else f"{route.host}:{route.port}"
