"""Server-sent events, read incrementally and written back (shared by the three LLM stream filters).

The parser follows the WHATWG event-stream rules (CRLF, LF or CR line ends; multi-line `data`; `:` comments; a blank
line dispatches) and keeps every block's exact bytes, so an event we do not change is forwarded byte for byte. Chunks
may split anywhere: inside a line, a CRLF pair or a UTF-8 character. A block larger than `max_event_bytes` is refused
rather than buffered without end.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aegis_proxy.errors import WireError

DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024  # a Responses `response.completed` carries the whole answer
_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True)
class SSEEvent:
    """One block of the stream, up to and including its blank line.

    `data` is None when the block has no data field (a keep-alive comment, a lone blank line): per the standard such
    a block dispatches nothing, but its bytes are still forwarded.
    """

    raw: bytes
    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()
    # `data` parsed as JSON, once for every reader of this event (wire.event_json); never mutated by a reader
    parsed: list[Any] = dataclasses.field(default_factory=list, compare=False, hash=False, repr=False)


class SSEParser:
    """Incremental parser: `feed(chunk)` returns the blocks completed by the chunk, `close()` checks the end."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()  # bytes not yet split into lines
        self._scanned = 0  # bytes of _buf known to hold no line end (a long line arriving in many chunks)
        self._raw = bytearray()  # complete lines of the current block, as received
        self._started = False  # a leading byte-order mark has been looked for
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[str] = []
        self._closed = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._closed:
            raise WireError("stream data after its end", hint="the upstream kept sending after the stream closed")
        self._buf += chunk
        return self._drain(final=False)

    def close(self) -> list[SSEEvent]:
        """The stream ended: a block left without its blank line is an error (a cut-off stream is not passed)."""
        events = self._drain(final=True)
        self._closed = True
        if self._buf or self._raw:
            raise WireError(
                "stream ended in the middle of an event",
                hint="the upstream closed the connection before finishing the event (blank line missing)",
            )
        return events

    def _drain(self, *, final: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buf = self._buf
        pos = 0
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(bytes(buf)) and not final:
                return events  # maybe a byte-order mark, split across chunks
            self._started = True
            if buf.startswith(_BOM):
                self._raw += _BOM
                pos = len(_BOM)
        n = len(buf)
        search = max(pos, self._scanned)
        scanned = n
        while pos < n:
            cr = buf.find(b"\r", search)
            lf = buf.find(b"\n", search)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 else cr if lf == -1 else min(cr, lf)
            if end == cr:
                if cr + 1 == n and not final:
                    scanned = cr  # a CR at the end of the chunk may be the first half of CRLF
                    break
                width = 2 if cr + 1 < n and buf[cr + 1] == 0x0A else 1
            else:
                width = 1
            line = bytes(buf[pos:end])
            self._raw += buf[pos : end + width]
            pos = search = end + width
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buf[:pos]
        self._scanned = max(scanned - pos, 0)
        if len(self._raw) + len(buf) > self._max:
            raise WireError(
                f"stream event larger than {self._max} bytes",
                hint="the upstream sent one server-sent event too large to inspect",
            )
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        if len(self._raw) > self._max:
            raise WireError(
                f"stream event larger than {self._max} bytes",
                hint="the upstream sent one server-sent event too large to inspect",
            )
        if not line:
            return self._dispatch()
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("stream line is not UTF-8", hint="server-sent events must be UTF-8") from None
        if text.startswith(":"):
            self._comments.append(text[1:])
            return None
        field, colon, value = text.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # other field names are ignored, as the standard (and every SDK's parser) does
        return None

    def _dispatch(self) -> SSEEvent:
        event = SSEEvent(
            raw=bytes(self._raw),
            data="\n".join(self._data) if self._data else None,
            event=self._event,
            id=self._id,
            retry=self._retry,
            comments=tuple(self._comments),
        )
        self._raw.clear()
        self._data = []
        self._event = None
        self._id = None
        self._retry = None
        self._comments = []
        return event


class EventFilter:
    """The base of the LLM stream filters (wire.EventStreamFilter): SSE parsing here, the protocol in `event`, `end`."""

    def __init__(self, max_event_bytes: int) -> None:
        self._parser = SSEParser(max_event_bytes)

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self.event(e) for e in self._parser.feed(chunk))

    def close(self) -> bytes:
        out = b"".join(self.event(e) for e in self._parser.close())
        return out + self.end()

    def event(self, event: SSEEvent) -> bytes:
        """Bytes to send for one complete event (may be b""). Raises WireError on a malformed stream."""
        raise NotImplementedError

    def end(self) -> bytes:
        """The stream's last event was read: the rest to send. Raises WireError if it ended mid-call."""
        raise NotImplementedError


def format_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event in the canonical form (LF line ends, `data: ` per line, blank line at the end)."""
    if "\r" in data or (event is not None and ("\r" in event or "\n" in event)):
        raise WireError("event text contains a line break where none may be", hint="this is a bug in the rewriter")
    lines: list[str] = []
    if event is not None:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend(f"data: {part}" for part in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")
