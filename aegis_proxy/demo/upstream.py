"""A local, scripted LLM server that speaks OpenAI Chat Completions, OpenAI Responses and Anthropic Messages, streamed
and not. The demo, the end-to-end tests and the benchmark put it behind the proxy instead of a real provider.

Each request takes the next scripted `Reply` (or the default, plain text). Streamed replies are sent as several SSE
events with the tool-call arguments split into fragments, the way the providers do it. Every request body is kept
in `requests` so tests can assert what reached the "provider".
"""

from __future__ import annotations

import collections
import dataclasses
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Reply:
    text: str = ""
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()  # (name, arguments)


DEFAULT_REPLY = Reply(text="Done.")
_FRAGMENT = 7  # bytes of argument JSON per streamed fragment: small, so calls really arrive in pieces


def _fragments(text: str) -> list[str]:
    return [text[i : i + _FRAGMENT] for i in range(0, len(text), _FRAGMENT)] or [""]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + (data if isinstance(data, str) else json.dumps(data)) + "\n\n").encode()


# -- OpenAI Chat Completions ------------------------------------------------------------------------------------------


def chat_completion(reply: Reply, model: str, serial: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{serial}_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(reply.tool_calls)
        ]
    return {
        "id": f"chatcmpl-{serial}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def chat_stream(reply: Reply, model: str, serial: int) -> Iterator[bytes]:
    base = {"id": f"chatcmpl-{serial}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    for word in reply.text.split(" ") if reply.text else []:
        yield chunk({"content": word + " "})
    for i, (name, arguments) in enumerate(reply.tool_calls):
        pieces = _fragments(json.dumps(arguments))
        first = {
            "index": i,
            "id": f"call_{serial}_{i}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        yield chunk({"tool_calls": [first]})
        for piece in pieces:
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
    yield _sse("[DONE]")


# -- OpenAI Responses -------------------------------------------------------------------------------------------------


def _response_items(reply: Reply, serial: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reply.text:
        items.append(
            {
                "type": "message",
                "id": f"msg_{serial}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
            }
        )
    for i, (name, arguments) in enumerate(reply.tool_calls):
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{serial}_{i}",
                "call_id": f"call_{serial}_{i}",
                "name": name,
                "arguments": json.dumps(arguments),
                "status": "completed",
            }
        )
    return items


def response_object(reply: Reply, model: str, serial: int, status: str = "completed") -> dict[str, Any]:
    return {
        "id": f"resp_{serial}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": _response_items(reply, serial) if status == "completed" else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 10,
            "total_tokens": 20,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def responses_stream(reply: Reply, model: str, serial: int) -> Iterator[bytes]:
    seq = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(seq), **fields}, kind)

    yield event("response.created", response=response_object(reply, model, serial, "in_progress"))
    for index, item in enumerate(_response_items(reply, serial)):
        if item["type"] == "message":
            empty = {**item, "status": "in_progress", "content": []}
            yield event("response.output_item.added", output_index=index, item=empty)
            part = {"type": "output_text", "text": "", "annotations": []}
            yield event(
                "response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part
            )
            for word in reply.text.split(" "):
                yield event(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=word + " ",
                )
            yield event(
                "response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=reply.text
            )
            done_part = {"type": "output_text", "text": reply.text, "annotations": []}
            yield event(
                "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=done_part
            )
        else:
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            for piece in _fragments(item["arguments"]):
                yield event(
                    "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece
                )
            yield event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=response_object(reply, model, serial))


# -- Anthropic Messages -----------------------------------------------------------------------------------------------


def anthropic_message(reply: Reply, model: str, serial: int) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for i, (name, arguments) in enumerate(reply.tool_calls):
        content.append({"type": "tool_use", "id": f"toolu_{serial}_{i}", "name": name, "input": arguments})
    return {
        "id": f"msg_{serial}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 10},
    }


def anthropic_stream(reply: Reply, model: str, serial: int) -> Iterator[bytes]:
    start = {**anthropic_message(reply, model, serial), "content": [], "stop_reason": None}
    yield _sse({"type": "message_start", "message": start}, "message_start")
    index = 0
    if reply.text:
        yield _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        )
        yield _sse({"type": "ping"}, "ping")
        for word in reply.text.split(" "):
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word + " "}}
            yield _sse(delta, "content_block_delta")
        yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        index = 1
    for i, (name, arguments) in enumerate(reply.tool_calls):
        block = {"type": "tool_use", "id": f"toolu_{serial}_{i}", "name": name, "input": {}}
        yield _sse({"type": "content_block_start", "index": index, "content_block": block}, "content_block_start")
        for piece in _fragments(json.dumps(arguments)):
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield _sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta")
        yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
        index += 1
    stop = "tool_use" if reply.tool_calls else "end_turn"
    yield _sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 10},
        },
        "message_delta",
    )
    yield _sse({"type": "message_stop"}, "message_stop")


# -- the server -------------------------------------------------------------------------------------------------------


class ScriptedLLM:
    """The server. `enqueue(Reply)` scripts the next answers; `url` is its base URL (no /v1)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        reply_for: Callable[[dict[str, Any]], Reply] | None = None,
    ) -> None:
        """`reply_for` makes the server stateless: each answer is computed from its request body (load tests with
        many clients) instead of taken from the `enqueue` script."""
        self._reply_for = reply_for
        self._replies: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._serial = 0
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (path, body) of every request received
        llm = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and the peer's
            # delayed ACK stall every answer by ~40 ms, which would swamp what the benchmark measures.
            disable_nagle_algorithm = True

            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:  # http.server's naming
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, b'{"error": {"message": "bad json"}}', "application/json")
                    return
                try:
                    reply, serial = llm._next(self.path, body)
                except (ValueError, TypeError, KeyError, IndexError, StopIteration):
                    self._send(400, b'{"error": {"message": "bad request"}}', "application/json")
                    return
                model = str(body.get("model", "scripted"))
                path = self.path.split("?", 1)[0]
                renderers = {
                    "/v1/chat/completions": (chat_completion, chat_stream),
                    "/v1/responses": (response_object, responses_stream),
                    "/v1/messages": (anthropic_message, anthropic_stream),
                }
                if path not in renderers:
                    self._send(404, b'{"error": {"message": "unknown endpoint"}}', "application/json")
                    return
                whole, streamed = renderers[path]
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for event in streamed(reply, model, serial):
                        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                self._send(200, json.dumps(whole(reply, model, serial)).encode(), "application/json")

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._scheme = "http"
        if tls is not None:  # an HTTPS upstream, for forward-mode (TLS interception) tests
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-llm", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def _next(self, path: str, body: dict[str, Any]) -> tuple[Reply, int]:
        """The answer to one request and its serial. Scripted: the next queued reply, and the request is kept in
        `requests`. Stateless (`reply_for`): computed from the body, nothing kept (load tests run for long)."""
        computed = self._reply_for(body) if self._reply_for is not None else None
        with self._lock:
            self._serial += 1
            if computed is not None:
                return computed, self._serial
            self.requests.append((path, body))
            return (self._replies.popleft() if self._replies else DEFAULT_REPLY), self._serial

    def serve_forever(self) -> None:
        """Serve in the calling thread (an upstream in its own process) until the process ends."""
        self._server.serve_forever()

    def start(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
