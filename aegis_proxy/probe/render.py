"""What the probe reads: a tool call rendered as text in its context, and untrusted text cut into segments.

Pure Python (no torch): the data set builder and the runtime render the same way, so a head sees at run time exactly
the kind of text it was trained on.

- call-risk: the call first (it is what is judged, and a backbone truncates from the end), then the user's request
  (`render_call/2`, what heads trained since the data-set fix read). Heads trained before it read the newest untrusted
  content as well (`render_call/1`: the same text with `data:` lines appended). Validation found the data lines add
  nothing to the call-risk head once attacks no longer always follow the injected output (untrusted text is the
  injection head's input), while they double the tokens a call costs on AgentDojo-like contexts.
- injection: each untrusted message (tool result, document) is cut into segments of a few sentences; each segment is
  scored on its own, so a high score points at the injected span, not just at the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from aegis_proxy.models import CallContext, Message, Role, ToolCall

MAX_ARGUMENT_CHARS = 1_200  # of the rendered arguments; a backbone reads a few hundred tokens at most anyway
MAX_REQUEST_CHARS = 600
MAX_UNTRUSTED_CHARS = 1_200
MIN_SEGMENT_CHARS = 60  # a lone "Signed," says nothing; short units are merged with their neighbours
MAX_SEGMENT_CHARS = 360
MAX_SEGMENTS_PER_MESSAGE = 64  # bound per message: beyond it the tail is one last segment
_UNTRUSTED_ROLES = frozenset({Role.TOOL, Role.DOCUMENT, Role.ASSISTANT})


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_arguments(arguments: object) -> str:
    try:
        text = json.dumps(arguments, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    except (TypeError, ValueError):
        text = repr(arguments)
    return _clip(text, MAX_ARGUMENT_CHARS)


def render_request(tool: str, arguments: object, user_request: str) -> str:
    """The call and the user's latest request: the call-risk head's input (`render_call/2`)."""
    return (
        f"call: {tool}({render_arguments(arguments)})\nuser: {_clip(' '.join(user_request.split()), MAX_REQUEST_CHARS)}"
    )


def render_data(untrusted: tuple[str, ...]) -> str:
    """The newest untrusted texts as `data:` lines (each after a newline), bounded in total; "" when there are none."""
    parts = []
    budget = MAX_UNTRUSTED_CHARS
    for text in untrusted:
        if budget <= 0:
            break
        flat = " ".join(text.split())
        parts.append(f"\ndata: {_clip(flat, budget)}")
        budget -= len(flat)
    return "".join(parts)


def render_call(tool: str, arguments: object, user_request: str, untrusted: tuple[str, ...] = ()) -> str:
    """The call, the request, then the untrusted texts (newest first): `render_call/1`, the older heads' input."""
    return render_request(tool, arguments, user_request) + render_data(untrusted)


def untrusted_messages(context: CallContext) -> tuple[Message, ...]:
    """The messages whose text nobody vouches for, newest first."""
    return tuple(m for m in reversed(context.messages) if m.role in _UNTRUSTED_ROLES and m.content)


def data_for_call(context: CallContext) -> tuple[str, ...]:
    """The untrusted texts `render_call/1` appends: tool results and documents, newest first."""
    return tuple(m.content for m in untrusted_messages(context) if m.role is not Role.ASSISTANT)


def render_for_call(call: ToolCall, context: CallContext) -> str:
    return render_call(call.tool, call.arguments, context.user_request, data_for_call(context))


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of one untrusted text; offsets index that text."""

    start: int
    end: int
    text: str


def _units(text: str) -> Iterator[tuple[int, int]]:
    """Lines and sentences: split at newlines and after ". ", "! ", "? "."""
    start = 0
    length = len(text)
    i = 0
    while i < length:
        char = text[i]
        cut = char == "\n" or (char in ".!?" and i + 1 < length and text[i + 1] in " \t")
        if cut:
            yield start, i + 1
            start = i + 1
        i += 1
    if start < length:
        yield start, length


def segments(text: str) -> list[Segment]:
    """Cut untrusted text into segments of about MIN..MAX_SEGMENT_CHARS characters, along lines and sentences."""
    pieces: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for start, end in _units(text):
        if not text[start:end].strip():
            continue
        if current is None:
            current = (start, end)
        elif current[1] - current[0] < MIN_SEGMENT_CHARS and end - current[0] <= MAX_SEGMENT_CHARS:
            current = (current[0], end)
        else:
            pieces.append(current)
            current = (start, end)
        while current[1] - current[0] > MAX_SEGMENT_CHARS:  # one very long line: hard cuts
            pieces.append((current[0], current[0] + MAX_SEGMENT_CHARS))
            current = (current[0] + MAX_SEGMENT_CHARS, current[1])
    if current is not None:
        if (
            pieces
            and current[1] - current[0] < MIN_SEGMENT_CHARS // 2
            and current[1] - pieces[-1][0] <= MAX_SEGMENT_CHARS
        ):
            pieces[-1] = (pieces[-1][0], current[1])  # a short tail joins the segment before it
        else:
            pieces.append(current)
    if len(pieces) > MAX_SEGMENTS_PER_MESSAGE:
        pieces = [*pieces[: MAX_SEGMENTS_PER_MESSAGE - 1], (pieces[MAX_SEGMENTS_PER_MESSAGE - 1][0], pieces[-1][1])]
    return [Segment(start, end, " ".join(text[start:end].split())) for start, end in pieces]


def overlap(segment: Segment, start: int, end: int) -> float:
    """Fraction of the segment's characters inside [start, end)."""
    inside = max(0, min(segment.end, end) - max(segment.start, start))
    return inside / max(1, segment.end - segment.start)
