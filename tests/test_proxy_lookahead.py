"""LookaheadStream: a stream's tool calls decided as asyncio tasks while the stream goes on, with exactly the output
of the protocol's own filter deciding them synchronously (whatever the chunking and whenever the decisions finish),
and never a call released before its ruling."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aegis_proxy.demo.upstream import Reply, anthropic_stream, chat_stream, responses_stream
from aegis_proxy.models import ToolCall
from aegis_proxy.proxy.anthropic import Anthropic
from aegis_proxy.proxy.lookahead import LookaheadStream
from aegis_proxy.proxy.openai_chat import OpenAIChat
from aegis_proxy.proxy.openai_responses import OpenAIResponses
from aegis_proxy.proxy.wire import LLMProtocol, Ruling, WireError
from tests.wire_server import Judge, run_filter

REPLY = Reply(
    text="Tidying up.",
    tool_calls=(("read_file", {"path": "a.txt"}), ("run_shell", {"cmd": "rm -rf /"}), ("list_dir", {})),
)
PROTOCOLS: dict[str, tuple[LLMProtocol, Callable[..., Any]]] = {
    "openai-chat": (OpenAIChat(), chat_stream),
    "openai-responses": (OpenAIResponses(), responses_stream),
    "anthropic": (Anthropic(), anthropic_stream),
}


def events(protocol: str, reply: Reply = REPLY) -> list[bytes]:
    return list(PROTOCOLS[protocol][1](reply, "m", 1))


def run(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(scenario())


class Decider:
    """Starts each decision as a future that `judge` resolves when told to (`release`), as the gate would later."""

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self.started: list[tuple[ToolCall, asyncio.Future[Ruling]]] = []

    def __call__(self, call: ToolCall) -> asyncio.Future[Ruling]:
        future: asyncio.Future[Ruling] = asyncio.get_running_loop().create_future()
        self.started.append((call, future))
        return future

    def release(self) -> None:
        for call, future in self.started:
            if not future.done():
                future.set_result(self.judge(call))


def chunkings(stream: bytes, pieces: list[bytes]) -> dict[str, list[bytes]]:
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(stream)), 12))
    return {
        "whole": [stream],
        "as sent": pieces,
        "byte by byte": [stream[i : i + 1] for i in range(len(stream))],
        "random cuts": [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)],
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("when", ["between chunks", "only at the end"])
def test_output_is_the_synchronous_filters_whatever_the_chunking_and_timing(protocol: str, when: str) -> None:
    api = PROTOCOLS[protocol][0]
    pieces = events(protocol)
    stream = b"".join(pieces)
    for name, chunks in chunkings(stream, pieces).items():
        expected = run_filter(api, stream, Judge("run_shell"), chunks)

        async def scenario(chunks: list[bytes] = chunks) -> tuple[bytes, list[str]]:
            decider = Decider(Judge("run_shell"))
            lookahead = LookaheadStream(api.stream_filter, decider)
            out = b""
            for chunk in chunks:
                out += lookahead.feed(chunk)
                if when == "between chunks":
                    decider.release()
            decider.release()
            await lookahead.finish()
            return out + lookahead.close(), [call.tool for call, _ in decider.started]

        out, decided = run(scenario)
        assert out == expected, name
        assert decided == ["read_file", "run_shell", "list_dir"], name  # each call decided once, in order


def fed(api: LLMProtocol, pieces: list[bytes], judge: Judge) -> bytes:
    """What the protocol's own filter, deciding synchronously, has sent after reading `pieces` (no end yet)."""
    f = api.stream_filter(judge)
    return b"".join(f.feed(piece) for piece in pieces)


def until_a_decision(lookahead: LookaheadStream, decider: Decider, pieces: list[bytes]) -> tuple[bytes, int]:
    """Feed pieces up to the one that starts a decision: what was sent, and how many pieces were read."""
    sent, read = b"", 0
    while not decider.started:
        sent += lookahead.feed(pieces[read])
        read += 1
    return sent, read


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_text_passes_at_once_and_nothing_from_a_calls_end_on_before_its_ruling(protocol: str) -> None:
    api = PROTOCOLS[protocol][0]
    pieces = events(protocol, Reply(text="Reading it now.", tool_calls=(("read_file", {"path": "a.txt"}),)))

    async def scenario() -> None:
        decider = Decider(Judge())
        lookahead = LookaheadStream(api.stream_filter, decider)
        sent, read = until_a_decision(lookahead, decider, pieces)
        # Up to the chunk that completes the call, the client got what the synchronous filter sends; that chunk
        # waits whole, and so does everything after it, in order, until the ruling is made.
        assert sent == fed(api, pieces[: read - 1], Judge()) and b"Reading" in sent
        for piece in pieces[read:]:
            assert lookahead.feed(piece) == b""
        assert lookahead.pending
        decider.release()
        await lookahead.finish()
        assert sent + lookahead.close() == run_filter(api, b"".join(pieces), Judge(), pieces)

    run(scenario)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_chunk_that_arrives_after_the_ruling_releases_what_waited(protocol: str) -> None:
    api = PROTOCOLS[protocol][0]
    pieces = events(protocol)

    async def scenario() -> None:
        decider = Decider(Judge("run_shell"))
        lookahead = LookaheadStream(api.stream_filter, decider)
        sent, read = until_a_decision(lookahead, decider, pieces)
        decider.release()
        sent += lookahead.feed(pieces[read])  # finds the ruling made: what waited goes out with it
        assert sent == fed(api, pieces[: read + 1], Judge("run_shell"))
        for piece in pieces[read + 1 :]:
            sent += lookahead.feed(piece)
            decider.release()
        await lookahead.finish()
        assert sent + lookahead.close() == run_filter(api, b"".join(pieces), Judge("run_shell"), pieces)

    run(scenario)


def test_the_end_without_finish_is_an_error_not_a_pass() -> None:
    api = Anthropic()

    async def scenario() -> None:
        decider = Decider(Judge())
        lookahead = LookaheadStream(api.stream_filter, decider)
        for piece in events("anthropic"):
            lookahead.feed(piece)
        decider.release()
        with pytest.raises(WireError, match="before its tool calls were decided"):
            lookahead.close()

    run(scenario)


@pytest.mark.parametrize("failure", ["exception", "cancelled"])
def test_a_decision_that_failed_is_an_error_not_a_pass(failure: str) -> None:
    api = OpenAIResponses()

    async def scenario() -> bytes:
        decider = Decider(Judge())
        lookahead = LookaheadStream(api.stream_filter, decider)
        out = b"".join(lookahead.feed(piece) for piece in events("openai-responses"))
        for _, future in decider.started:
            if failure == "exception":
                future.set_exception(RuntimeError("gate down"))
            else:
                future.cancel()
        await lookahead.finish()
        with pytest.raises(WireError, match="has no decision"):
            out += lookahead.close()
        for _, future in decider.started:  # retrieved, as the addon's tasks never fail
            assert future.cancelled() or isinstance(future.exception(), RuntimeError)
        return out

    out = run(scenario)
    assert b"rm -rf" not in out and b"a.txt" not in out


def test_a_stream_cut_mid_event_is_the_filters_error_at_the_end() -> None:
    api = OpenAIChat()
    stream = b"".join(events("openai-chat"))

    async def scenario() -> None:
        decider = Decider(Judge())
        lookahead = LookaheadStream(api.stream_filter, decider)
        lookahead.feed(stream[:-1])  # the last blank line never comes
        decider.release()
        await lookahead.finish()  # never raises; the problem surfaces in close
        with pytest.raises(WireError, match="in the middle of an event"):
            lookahead.close()

    run(scenario)


def test_a_ruling_for_another_call_than_the_scout_saw_is_refused() -> None:
    # Both readers are one filter class on the same bytes, so they ask about the same calls; if they ever did not,
    # the stream must end, not pass a call under another call's ruling.
    api = Anthropic()
    made: list[int] = []

    def make_filter(decide: Any) -> Any:
        made.append(1)
        if len(made) == 1:
            return api.stream_filter(decide)

        def renamed(call: ToolCall) -> Ruling:
            return decide(call.model_copy(update={"tool": "other"}))

        return api.stream_filter(renamed)

    async def scenario() -> None:
        decider = Decider(Judge())
        lookahead = LookaheadStream(make_filter, decider)
        with pytest.raises(WireError, match="differs from the one decided"):
            for piece in events("anthropic"):
                lookahead.feed(piece)
                decider.release()

    run(scenario)


def test_what_waits_for_a_decision_is_bounded() -> None:
    # An upstream that keeps streaming after a call while it is being decided is not held without end.
    api = Anthropic()
    pieces = events("anthropic", Reply(tool_calls=(("read_file", {"path": "a.txt"}),)))
    chatter = b"event: ping\ndata: " + b'{"type": "ping"}' + b"\n\n"

    async def scenario() -> None:
        decider = Decider(Judge())
        lookahead = LookaheadStream(api.stream_filter, decider, max_waiting_bytes=4096)
        for piece in pieces[:-2]:  # up to the call's end (before message_delta and message_stop)
            lookahead.feed(piece)
        assert decider.started
        with pytest.raises(WireError, match="while a tool call was being decided"):
            for _ in range(4096 // len(chatter) + 2):
                lookahead.feed(chatter)

    run(scenario)


def test_without_a_pending_decision_nothing_waits_however_much_arrives() -> None:
    api = Anthropic()
    text = events("anthropic", Reply(text="word " * 2000))

    async def scenario() -> bytes:
        lookahead = LookaheadStream(api.stream_filter, Decider(Judge()), max_waiting_bytes=4096)
        out = b"".join(lookahead.feed(piece) for piece in text)
        await lookahead.finish()
        return out + lookahead.close()

    assert run(scenario) == b"".join(text)


@given(
    protocol=st.sampled_from(sorted(PROTOCOLS)),
    blocked=st.sets(st.sampled_from(["read_file", "run_shell", "list_dir"])),
    cuts=st.lists(st.integers(min_value=1, max_value=10_000), max_size=20),
    releases=st.lists(st.booleans(), min_size=1, max_size=40),
)
def test_any_chunking_and_any_decision_timing_give_the_synchronous_output(
    protocol: str, blocked: set[str], cuts: list[int], releases: list[bool]
) -> None:
    api = PROTOCOLS[protocol][0]
    stream = b"".join(events(protocol))
    points = sorted({c % len(stream) for c in cuts} - {0})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    expected = run_filter(api, stream, Judge(*blocked), chunks)

    async def scenario() -> bytes:
        decider = Decider(Judge(*blocked))
        lookahead = LookaheadStream(api.stream_filter, decider)
        out = b""
        for n, chunk in enumerate(chunks):
            out += lookahead.feed(chunk)
            if releases[n % len(releases)]:  # decisions finish between some chunks, not others
                decider.release()
        decider.release()
        await lookahead.finish()
        return out + lookahead.close()

    assert run(scenario) == expected
