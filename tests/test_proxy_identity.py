"""Session and agent ids: from headers, else derived; credentials never appear in them."""

from __future__ import annotations

import pytest
from mitmproxy.http import Headers

from aegis_proxy.models import Message, Role
from aegis_proxy.proxy.identity import agent_id, identity_headers, session_id

CONVERSATION = (
    Message(role=Role.SYSTEM, content="You are a coding agent."),
    Message(role=Role.USER, content="Fix the failing test."),
)


def test_session_header_wins() -> None:
    assert session_id({"x-aegis-session": "s-42"}, CONVERSATION) == "s-42"


def test_session_derived_is_stable_across_turns() -> None:
    later = (*CONVERSATION, Message(role=Role.ASSISTANT, content="ok"), Message(role=Role.USER, content="thanks"))
    assert session_id({}, CONVERSATION) == session_id({}, later)
    assert session_id({}, CONVERSATION).startswith("conv-")


def test_sessions_of_different_conversations_differ() -> None:
    other = (CONVERSATION[0], Message(role=Role.USER, content="Write docs."))
    assert session_id({}, CONVERSATION) != session_id({}, other)


@pytest.mark.parametrize("bad", ["", "   ", "has space", "x" * 129, "tab\there", "ünï"])
def test_unusable_session_header_falls_back_to_derived(bad: str) -> None:
    assert session_id({"x-aegis-session": bad}, CONVERSATION) == session_id({}, CONVERSATION)


def test_no_conversation_no_session() -> None:
    assert session_id({}, ()) is None


@pytest.mark.parametrize("header", ["authorization", "x-api-key", "api-key"])
def test_agent_from_credential_never_contains_it(header: str) -> None:
    secret = "sk-live-1234567890abcdef"
    derived = agent_id({header: f"Bearer {secret}" if header == "authorization" else secret})
    assert derived is not None and derived.startswith("key-")
    assert secret not in derived and "1234" not in derived


def test_agent_header_wins_and_keys_differ() -> None:
    assert agent_id({"x-aegis-agent": "ci-bot", "authorization": "Bearer a"}) == "ci-bot"
    assert agent_id({"authorization": "Bearer a"}) != agent_id({"authorization": "Bearer b"})
    assert agent_id({}) is None


@pytest.mark.parametrize(
    "fields",
    [
        [(b"Authorization", b"Bearer sk-1"), (b"Content-Type", b"application/json")],
        [(b"X-Aegis-Session", b"s-1"), (b"x-aegis-agent", b"bot-7"), (b"x-api-key", b"k")],
        [(b"x-aegis-session", b"a"), (b"X-AEGIS-SESSION", b"b")],  # repeated: joined, so unusable as a label
        [(b"api-key", b"\xff\xfe raw bytes"), (b"authorization", b"")],
        [(b"Accept", b"*/*")],
    ],
)
def test_identity_headers_read_what_mitmproxy_headers_read(fields: list[tuple[bytes, bytes]]) -> None:
    headers = Headers(fields)
    picked = identity_headers(fields)
    assert agent_id(picked) == agent_id(headers)
    assert session_id(picked, CONVERSATION) == session_id(headers, CONVERSATION)
    for name in ("x-aegis-session", "x-aegis-agent", "authorization", "x-api-key", "api-key"):
        assert picked.get(name) == headers.get(name)
