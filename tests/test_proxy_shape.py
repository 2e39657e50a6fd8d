"""proxy/shape.py's message cache: a resent conversation reuses its Messages, and only an identical message does."""

from __future__ import annotations

import json

import pytest

from aegis_proxy.models import Message, Role
from aegis_proxy.proxy import shape
from aegis_proxy.proxy.anthropic import Anthropic
from aegis_proxy.proxy.openai_chat import OpenAIChat
from aegis_proxy.proxy.openai_responses import OpenAIResponses
from aegis_proxy.proxy.wire import LLMProtocol

CONVERSATIONS: list[tuple[LLMProtocol, dict[str, object]]] = [
    (OpenAIChat(), {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
    (OpenAIResponses(), {"model": "m", "instructions": "s", "input": [{"role": "user", "content": "u"}]}),
    (Anthropic(), {"model": "m", "max_tokens": 9, "system": "s", "messages": [{"role": "user", "content": "u"}]}),
]


@pytest.mark.parametrize(("protocol", "body"), CONVERSATIONS, ids=lambda v: getattr(v, "name", ""))
def test_a_resent_conversation_reuses_its_messages(protocol: LLMProtocol, body: dict[str, object]) -> None:
    first = protocol.parse_request(json.dumps(body).encode()).messages
    again = protocol.parse_request(json.dumps(body).encode()).messages
    assert [(m.role, m.content) for m in first] == [(Role.SYSTEM, "s"), (Role.USER, "u")]
    assert all(a is b for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize(
    "other",
    [(Role.TOOL, "same text", None), (Role.USER, "same text", "bob"), (Role.USER, "other text", None)],
)
def test_only_an_identical_message_is_shared(other: tuple[Role, str, str | None]) -> None:
    first = shape.message(Role.USER, "same text")
    second = shape.message(*other)
    assert second is not first
    assert second == Message(role=other[0], content=other[1], name=other[2])
