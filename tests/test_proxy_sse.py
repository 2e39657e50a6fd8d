from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aegis_proxy.proxy.sse import SSEEvent, SSEParser, format_event
from aegis_proxy.proxy.wire import WireError


def parse(stream: bytes, pieces: list[bytes] | None = None, **kwargs: int) -> list[SSEEvent]:
    parser = SSEParser(**kwargs)
    events: list[SSEEvent] = []
    for piece in pieces if pieces is not None else [stream]:
        events.extend(parser.feed(piece))
    return events + parser.close()


def fields(events: list[SSEEvent]) -> list[tuple[str | None, str | None, str | None, int | None, tuple[str, ...]]]:
    return [(e.event, e.data, e.id, e.retry, e.comments) for e in events]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: hello\n\n", [(None, "hello", None, None, ())]),
        (b"data: a\r\n\r\n", [(None, "a", None, None, ())]),
        (b"data: a\r\rdata: b\r\r", [(None, "a", None, None, ()), (None, "b", None, None, ())]),
        (b"data: a\r\n\ndata: b\n\r\n", [(None, "a", None, None, ()), (None, "b", None, None, ())]),
        (b"data: line1\ndata: line2\n\n", [(None, "line1\nline2", None, None, ())]),
        (b"event: message_start\ndata: {}\n\n", [("message_start", "{}", None, None, ())]),
        (b": keep-alive\n\n", [(None, None, None, None, (" keep-alive",))]),
        (b"\n", [(None, None, None, None, ())]),
        (b"data:no-space\n\n", [(None, "no-space", None, None, ())]),
        (b"data:  two spaces\n\n", [(None, " two spaces", None, None, ())]),
        (b"data\n\n", [(None, "", None, None, ())]),
        (b"data\ndata\n\n", [(None, "\n", None, None, ())]),
        (b"id: 7\nretry: 1500\ndata: x\n\n", [(None, "x", "7", 1500, ())]),
        (b"id: a\x00b\nretry: soon\ndata: x\n\n", [(None, "x", None, None, ())]),
        (b"unknown: field\ndata: x\n\n", [(None, "x", None, None, ())]),
        (b"\xef\xbb\xbfdata: bom\n\n", [(None, "bom", None, None, ())]),
        ("data: ünïcödé ✓ 🙂\n\n".encode(), [(None, "ünïcödé ✓ 🙂", None, None, ())]),
        (
            b"event: a\n: note\ndata: 1\n\nevent: b\ndata: 2\n\n",
            [("a", "1", None, None, (" note",)), ("b", "2", None, None, ())],
        ),
        (b"", []),
    ],
    ids=[
        "lf",
        "crlf",
        "cr",
        "mixed",
        "multi-line",
        "event-name",
        "comment",
        "blank",
        "no-space",
        "one-space-stripped",
        "field-without-colon",
        "two-empty-data",
        "id-retry",
        "bad-id-retry-ignored",
        "unknown-field-ignored",
        "bom",
        "unicode",
        "two-events",
        "empty",
    ],
)
def test_parse(stream: bytes, expected: list[tuple[object, ...]]) -> None:
    events = parse(stream)
    assert fields(events) == expected
    assert b"".join(e.raw for e in events) == stream  # every byte is kept, so unchanged events pass as they came


@pytest.mark.parametrize(
    "stream",
    [
        b"data: a\r\n\r\nevent: x\rdata: \xc3\xa9\r\r: c\n\n",
        "\ufeffdata: ü\n\ndata: 🙂\ndata: b\n\n".encode(),
        b"data: a\n\n" * 3,
    ],
    ids=["mixed-endings", "bom-unicode", "repeated"],
)
def test_every_split_gives_the_same_events(stream: bytes) -> None:
    whole = parse(stream)
    for cut in range(len(stream) + 1):
        assert parse(stream, [stream[:cut], stream[cut:]]) == whole, cut
    assert parse(stream, [stream[i : i + 1] for i in range(len(stream))]) == whole


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    [event] = parser.feed(b"\ndata: b")
    assert (event.data, event.raw) == ("a", b"data: a\n\n")
    assert parser.feed(b"\n") == []
    assert [e.data for e in parser.feed(b"\n")] == ["b"]


def test_a_trailing_cr_waits_for_a_possible_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == []
    [event] = parser.feed(b"\n")
    assert event.raw == b"data: a\r\n\r\n"


@pytest.mark.parametrize(
    ("pieces", "match"),
    [
        ([b"data: a\n"], "middle of an event"),
        ([b"data: a"], "middle of an event"),
        ([b"data: \xff\n\n"], "UTF-8"),
        ([b"data: \xe2\x9c\n\n"], "UTF-8"),
        ([b"data: " + b"x" * 200 + b"\n\n"], "larger than"),
        ([b"data: " + b"x" * 60 + b"\n"] * 4, "larger than"),
        ([b"data: " + b"x" * 200], "larger than"),
    ],
    ids=["no-blank-line", "no-line-end", "invalid-utf8", "cut-utf8", "big-line", "many-lines", "unterminated-big"],
)
def test_malformed_streams_are_refused(pieces: list[bytes], match: str) -> None:
    with pytest.raises(WireError, match=match):
        parse(b"", pieces, max_event_bytes=128)


def test_no_data_after_close() -> None:
    parser = SSEParser()
    parser.close()
    with pytest.raises(WireError):
        parser.feed(b"data: x\n\n")


@pytest.mark.parametrize(
    ("data", "event", "id", "raw"),
    [
        ("{}", None, None, b"data: {}\n\n"),
        ("a\nb", "message_delta", None, b"event: message_delta\ndata: a\ndata: b\n\n"),
        ("", None, "9", b"id: 9\ndata: \n\n"),
    ],
)
def test_format_event(data: str, event: str | None, id: str | None, raw: bytes) -> None:
    assert format_event(data, event=event, id=id) == raw
    [parsed] = parse(raw)
    assert (parsed.data, parsed.event, parsed.id) == (data, event, id)


@pytest.mark.parametrize(("data", "event"), [("a\rb", None), ("x", "a\nb")])
def test_format_event_refuses_line_breaks_that_would_change_the_event(data: str, event: str | None) -> None:
    with pytest.raises(WireError):
        format_event(data, event=event)


_text = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)


@given(
    st.lists(st.tuples(st.none() | _text.filter(bool), st.lists(_text, min_size=1, max_size=3)), max_size=5),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_random_streams_and_splits(events: list[tuple[str | None, list[str]]], newline: str, cuts: list[int]) -> None:
    stream = "".join(
        (f"event: {name}{newline}" if name is not None else "")
        + "".join(f"data: {line}{newline}" for line in lines)
        + newline
        for name, lines in events
    ).encode()
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    parsed = parse(stream, pieces)
    assert [(e.event, e.data) for e in parsed] == [(name, "\n".join(lines)) for name, lines in events]
    assert b"".join(e.raw for e in parsed) == stream
