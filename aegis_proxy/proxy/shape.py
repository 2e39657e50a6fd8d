"""Helpers shared by the wire modules. The type checks name where in the body a value sat and raise WireError
when it is wrong.

Wire modules read bodies as plain JSON (to forward what they do not change byte for byte) and check each value they
rely on with these helpers, so a wrong type is a clear error, never a crash or a silent skip.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from aegis_proxy.bounded_cache import BoundedCache
from aegis_proxy.models import Message, Role, ToolCall
from aegis_proxy.proxy.sse import DEFAULT_MAX_EVENT_BYTES
from aegis_proxy.proxy.wire import Decide, Ruling, WireError

DEFAULT_MAX_HELD_BYTES = 16 * 1024 * 1024  # a held tool call (all its fragments) larger than this is refused


def _message_key_chars(key: tuple[Role, str, str | None]) -> int:
    return len(key[1]) + len(key[2] or "")


# Messages by (role, content, name). An agent resends its whole conversation with every request, and building each
# Message anew (pydantic validation) cost more than reading its JSON: measured, the parse of a 61-message request
# (bench/proxy.py --turns 20) takes a fifth less with the earlier messages found here.
_MESSAGES: BoundedCache[tuple[Role, str, str | None], Message] = BoundedCache(
    max_entries=8192, max_chars=32 << 20, size=_message_key_chars
)


def message(role: Role, content: str, name: str | None = None) -> Message:
    """A conversation message read from a request: the same (frozen, so shareable) instance for the same role, text
    and name as on an earlier request."""
    key = (role, content, name)
    found = _MESSAGES.get(key)
    if found is None:
        found = Message(role=role, content=content, name=name)
        _MESSAGES.put(key, found)
    return found


def fail(where: str, problem: str) -> WireError:
    return WireError(f"{where}: {problem}", hint="the upstream body does not have the documented shape")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, f"expected an object, got {_kind(value)}")
    return value


def arr(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise fail(where, f"expected an array, got {_kind(value)}")
    return value


def opt_arr(value: object, where: str) -> list[Any]:
    """An array that may be null or absent (read as empty)."""
    return [] if value is None else arr(value, where)


def string(value: object, where: str, *, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise fail(where, f"expected a string, got {_kind(value)}")
    if nonempty and not value:
        raise fail(where, "expected a non-empty string")
    return value


def opt_string(value: object, where: str) -> str | None:
    return None if value is None else string(value, where)


def integer(value: object, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(where, f"expected an integer, got {_kind(value)}")
    if value < minimum:
        raise fail(where, f"expected an integer >= {minimum}, got {value}")
    return value


def opt_bool(value: object, where: str) -> bool:
    """A boolean that may be null or absent (read as false)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise fail(where, f"expected a boolean, got {_kind(value)}")
    return value


def arguments_object(value: object, where: str) -> dict[str, Any]:
    """Tool arguments must be a JSON object: every protocol's tool schema is an object at the top."""
    if not isinstance(value, dict):
        raise fail(where, f"tool arguments must be a JSON object, got {_kind(value)}")
    return value


def path_only(path: str) -> str:
    """The request path without its query string or trailing slash."""
    return path.split("?", 1)[0].rstrip("/")


def tool_call(protocol: str, call_id: str, name: str, arguments: dict[str, Any], raw_size: int) -> ToolCall:
    try:
        return ToolCall(id=call_id, tool=name, arguments=arguments, protocol=protocol, raw_size=raw_size)
    except ValidationError as exc:
        raise WireError(f"tool call {call_id[:40]!r} is not a valid call: {exc.errors()[0]['msg']}") from None


def ruling_for(rulings: Mapping[str, Ruling], call: ToolCall) -> Ruling:
    """The ruling for a call of a non-streamed response; a call nobody decided is an error, never a pass."""
    ruling = rulings.get(call.id)
    if ruling is None:
        raise WireError(f"no ruling for tool call {call.id[:40]!r}", hint="every call must be decided before rewriting")
    return ruling


def decide_call(decide: Decide, call: ToolCall) -> Ruling:
    """Ask the addon about one streamed call; a ruling for another call is a bug we refuse to act on."""
    ruling = decide(call)
    if ruling.call_id != call.id:
        raise WireError(
            f"ruling for {ruling.call_id[:40]!r} returned for call {call.id[:40]!r}",
            hint="the decide callback must answer for the call it was given",
        )
    return ruling


def content_text(content: object, where: str, text_parts: Mapping[str, str], silent_parts: Collection[str]) -> str:
    """The text of a message's content: a string, or a list of typed parts. `text_parts` maps a part type to the key
    holding its text; `silent_parts` carry no text we could read (images, audio, files); any other type is refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, raw in enumerate(arr(content, where)):
        part = obj(raw, f"{where}[{i}]")
        kind = string(part.get("type"), f"{where}[{i}].type")
        if kind in text_parts:
            texts.append(string(part.get(text_parts[kind]), f"{where}[{i}].{text_parts[kind]}"))
        elif kind not in silent_parts:
            raise fail(f"{where}[{i}].type", f"unknown content part type {kind[:40]!r}")
    return "\n".join(texts)


class Limits:
    """The bounds every LLM wire module takes: one SSE event, and one held tool call (all its fragments)."""

    def __init__(
        self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, max_held_bytes: int = DEFAULT_MAX_HELD_BYTES
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.max_held_bytes = max_held_bytes
