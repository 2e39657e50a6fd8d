"""MCP routes in the addon: `tools/call` requests are decided before the server sees them; answers are checked,
tool lists reviewed against the pins (rug pulls) and the policy (tools it always denies are hidden).

The byte-level work is proxy/mcp.py (pure); this module only moves flows through it and asks the Gate.
  request          POST: parse strictly, decide every tools/call (holding asks until a human answers), forward only
                   the allowed messages, or answer ourselves when nothing is left to forward
  responseheaders  an SSE answer is filtered event by event (McpStream): our blocked results first
  response         a JSON answer is reviewed whole (review_json_response)
A GET opens the server's own event stream, which is reviewed the same way; DELETE ends a session and passes.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from aegis_proxy.audit.store import AppendEntry
from aegis_proxy.models import CallContext, Finding
from aegis_proxy.proxy import identity, mcp
from aegis_proxy.proxy.routes import Target
from aegis_proxy.proxy.wire import Ruling
from aegis_proxy.tool_pins import PinStore, ToolGuard, open_pin_store

if TYPE_CHECKING:
    from aegis_proxy.config import AegisConfig
    from aegis_proxy.gate import Gate
    from aegis_proxy.proxy.addon import AegisAddon, FlowState

MCP_SESSION_HEADER = "mcp-session-id"
TOOL_REVIEW_RULE = "builtin.mcp-tool-review"  # the rule id of audited tool-list reviews


@dataclasses.dataclass
class McpExchange:
    """What the request hook learned, for the answer's hooks."""

    server: str
    plan: mcp.ForwardPlan | None  # None for a GET stream: answers to requests we did not see
    streamed: bool = False
    stream: mcp.McpStream | None = None
    answered: bool = False  # we answered the request ourselves: nothing went upstream, there is nothing to review


class McpFlows:
    def __init__(self, gate: Gate, guard: ToolGuard | None) -> None:
        self.gate = gate
        self.guard = guard

    @classmethod
    def from_config(cls, gate: Gate, config: AegisConfig) -> McpFlows:
        store: PinStore = open_pin_store(config.audit.db)
        watcher = gate.watcher

        def denies(tool: str, server: str | None) -> bool:
            return watcher is not None and watcher.current().denies_unconditionally(tool, server)

        return cls(gate, ToolGuard(store, denies))

    def close(self) -> None:
        if self.guard is not None:
            self.guard.store.close()

    # -- hooks (called by AegisAddon inside its fail-closed wrappers) ----------------------------------------------

    async def request(self, addon: AegisAddon, flow: http.HTTPFlow, target: Target) -> None:
        from aegis_proxy.proxy.addon import STATE_KEY, FlowState

        server = target.route.mcp_server
        assert server is not None
        request = flow.request
        headers = request.headers
        context = CallContext(
            agent_id=identity.agent_id(headers),
            session_id=identity.session_id(headers, ()) or _mcp_session(headers),
        )
        state = FlowState(target=target, protocol=None, context=context)
        flow.metadata[STATE_KEY] = state
        request.headers["accept-encoding"] = "identity"  # SSE answers are filtered chunk by chunk
        if request.method == "GET":
            state.mcp = McpExchange(server, None)
            return
        if request.method != "POST":
            return  # DELETE (end of session), OPTIONS: no messages
        parsed = mcp.parse_request(request.get_content(strict=True) or b"", server)
        rulings: dict[str, Ruling] = {}
        for item in parsed.calls:
            call = item.call
            if self.guard is not None and self.guard.pending_change(server, call.tool):
                message = (
                    f"aegis-proxy blocked `{call.tool}`: the MCP server {server!r} changed this tool since it was "
                    f"pinned, and no operator accepted the change (`aegis mcp pins accept {server} {call.tool}`)"
                )
                self.gate.record_failure(request_id=flow.id, context=context, where="mcp.tool-changed", error=message)
                rulings[call.id] = Ruling(call.id, False, message)
                continue
            rulings[call.id] = await addon.ruling(flow, context, call)
        plan = mcp.plan_forward(parsed, rulings)
        state.mcp = McpExchange(server, plan)
        if plan.forward is None:
            body, content_type = plan.own_response()
            flow.response = http.Response.make(200, body, {"content-type": content_type})
            state.mcp.answered = True
            return
        if plan.forward != parsed.body:
            request.set_content(plan.forward)

    def responseheaders(self, flow: http.HTTPFlow, state: FlowState) -> None:
        exchange = state.mcp
        if exchange is None or exchange.answered or flow.response is None or not 200 <= flow.response.status_code < 300:
            return
        if mcp.content_kind(flow.response.headers.get("content-type")) != "sse":
            return
        if flow.response.headers.get("content-encoding", "identity").lower() != "identity":
            return  # the response hook reviews the decoded whole, or blocks
        from aegis_proxy.proxy.addon import SafeStream

        exchange.stream = mcp.McpStream(exchange.plan, exchange.server, self._reviewer(flow, state))
        flow.response.stream = SafeStream(
            exchange.stream,
            "mcp",
            lambda reason: self.gate.record_failure(
                request_id=flow.id, context=state.context, where="mcp stream", error=reason
            ),
        )
        exchange.streamed = True

    async def response(self, flow: http.HTTPFlow, state: FlowState) -> None:
        exchange = state.mcp
        response = flow.response
        if exchange is None or response is None or exchange.streamed or exchange.answered:
            return
        if response.status_code == 202 and exchange.plan is not None and exchange.plan.blocked:
            # Only notifications went up, yet the client awaits our answers to its blocked calls.
            body, content_type = exchange.plan.own_response()
            flow.response = http.Response.make(200, body, {"content-type": content_type})
            return
        if not 200 <= response.status_code < 300 or not response.raw_content:
            return  # an HTTP error or an empty 202: no tool ran that we did not allow, nothing to read
        body = response.get_content(strict=True) or b""
        kind = mcp.content_kind(response.headers.get("content-type"))
        reviewer = self._reviewer(flow, state)
        if kind == "sse":  # a compressed stream we could not filter live
            stream = mcp.McpStream(exchange.plan, exchange.server, reviewer)
            response.set_content(stream.feed(body) + stream.close())
            return
        review = mcp.review_json_response(body, exchange.plan, exchange.server, reviewer)
        if review.body != body:
            response.set_content(review.body)

    def _reviewer(self, flow: http.HTTPFlow, state: FlowState) -> mcp.ToolReviewer | None:
        """Reviews tool lists with the pins and the policy, and audits what a review found."""
        guard = self.guard
        if guard is None:
            return None

        def review(server: str, tools: Any, complete: bool) -> Any:
            result = guard.review(server, tools, complete)
            if result.findings or result.hidden:
                self._audit_review(flow, state, server, result.findings, result.hidden)
            return result

        return review

    def _audit_review(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        server: str,
        findings: tuple[Finding, ...],
        hidden: frozenset[str],
    ) -> None:
        """A tool list that changed, or had tools hidden, is a decision of ours: audited before the client sees it.
        If it cannot be audited, the answer is blocked (the AuditError propagates to the fail-closed hook)."""
        from aegis_proxy.gate import summarize_findings

        self.gate.writer.append_sync(
            AppendEntry(
                type="decision",
                decision="deny" if hidden else "allow",
                tool=mcp.TOOLS_LIST,
                arguments={"server": server, "hidden": sorted(hidden)},
                request_id=flow.id,
                session_id=state.context.session_id,
                agent_id=state.context.agent_id,
                rules=(TOOL_REVIEW_RULE,),
                findings=summarize_findings(findings),
            )
        )


def _mcp_session(headers: Any) -> str | None:
    value = headers.get(MCP_SESSION_HEADER)
    return f"mcp-{identity.digest_of('mcp-session', value)}" if value else None
