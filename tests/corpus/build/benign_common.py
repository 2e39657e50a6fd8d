"""Collector for hand-written benign calls. Each benign module calls `b(...)` once per call."""

from __future__ import annotations

from typing import Any

BENIGN: list[dict[str, Any]] = []


def b(
    agent: str,
    user: str | None,
    tool: str,
    arguments: Any,
    technique: str,
    scary: bool = False,
    msgs: tuple[dict[str, Any], ...] = (),
    source: str = "handwritten",
) -> None:
    """One benign call. `scary` marks calls that look dangerous to a naive filter but are normal work."""
    BENIGN.append(
        {
            "agent": agent,
            "user": user,
            "tool": tool,
            "arguments": arguments,
            "technique": technique,
            "scary": scary,
            "msgs": msgs,
            "source": source,
        }
    )


def tool_msg(name: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "name": name, "content": content}


def assistant(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}
