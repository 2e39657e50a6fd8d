"""A stream filter whose tool calls are decided while the stream goes on, off the stream callable.

mitmproxy calls a stream callable synchronously for each chunk, so a StreamFilter that decides a call inside `feed`
holds mitmproxy's event loop (every other flow) for the whole decision: the firewall, the probe's forward pass, the
audit record's commit (an fsync with `audit.sync = "full"`, a round trip to PostgreSQL). `LookaheadStream` runs the
same filter without that wait:

1. The stream is parsed into server-sent events once, here.
2. A scout (a second instance of the protocol's filter) reads each event first. Its `decide` only starts the call's
   decision (an asyncio task: `Gate.decide_async`, which moves slow work to threads) and answers a provisional allow;
   the scout's output is thrown away.
3. The filter whose output the client gets reads an event only once every decision the scout started up to and
   including that event has finished; until then the event waits here, in order. Both instances read the same events,
   and what a filter reads never depends on a ruling (only what it writes does), so the filter asks for the same calls
   in the same order and is answered with the finished rulings. An event's JSON is parsed once for both
   (wire.event_json).
4. When the upstream's stream ends, `finish()` (awaited by the `aegis_stream_end` hook, proxy/stream_end.py, before
   mitmproxy asks for the stream's last bytes) reads the stream's end and waits for every decision; `close()` then
   releases the rest.

Text before a call passes at once (time to first token unchanged); what follows the event that completes a call waits
for its ruling, as the filter holds a call's events back anyway. Fail closed: a call the filter asks about that is not
the next one the scout saw, or whose decision did not finish or failed, is a WireError (the stream ends with an error
event), never a pass.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from aegis_proxy.models import ToolCall
from aegis_proxy.proxy.shape import DEFAULT_MAX_HELD_BYTES
from aegis_proxy.proxy.sse import DEFAULT_MAX_EVENT_BYTES, SSEEvent, SSEParser
from aegis_proxy.proxy.wire import Decide, EventStreamFilter, Ruling, WireError

StartDecision = Callable[[ToolCall], "asyncio.Future[Ruling]"]
_END = None  # in the waiting queue: the stream's end, after its last event


class LookaheadStream:
    """A StreamFilter (see the module's steps) built from a protocol's `stream_filter` and a decision starter."""

    def __init__(
        self,
        make_filter: Callable[[Decide], EventStreamFilter],
        start: StartDecision,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_waiting_bytes: int = DEFAULT_MAX_HELD_BYTES,
    ) -> None:
        self._start = start
        self._parser = SSEParser(max_event_bytes)
        self._max_waiting = max_waiting_bytes  # what may wait for decisions here, as a filter bounds what it holds
        self._waiting_bytes = 0
        self._scout = make_filter(self._scouted)
        self._filter = make_filter(self._ruled)
        self._decisions: deque[tuple[ToolCall, asyncio.Future[Ruling]]] = deque()  # started, not yet ruled on
        # events the filter has not read yet (_END: the stream's end), each with the decisions it waits for
        self._waiting: deque[tuple[SSEEvent | None, list[asyncio.Future[Ruling]]]] = deque()
        self._started: list[asyncio.Future[Ruling]] = []  # decisions started by what the scout is reading
        self._finished = False
        self._end_error: WireError | None = None

    @property
    def pending(self) -> bool:
        """Whether anything read waits for a decision."""
        return bool(self._waiting)

    def feed(self, chunk: bytes) -> bytes:
        for event in self._parser.feed(chunk):
            self._scout_read(event)
        return self._release()

    async def finish(self) -> None:
        """The upstream's stream ended: read its end and wait for every decision. Never raises: a problem surfaces
        in `close()`, which fails closed."""
        if self._finished:
            return
        self._finished = True
        try:
            for event in self._parser.close():
                self._scout_read(event)
            self._scout_read(_END)
        except WireError as error:
            self._end_error = error  # the stream is malformed at its end; raised by close(), after what came before
        futures = [future for _, future in self._decisions]
        if futures:
            await asyncio.wait(futures)

    def close(self) -> bytes:
        if not self._finished:
            raise WireError(
                "the stream ended before its tool calls were decided",
                hint="aegis-proxy's stream-end hook did not run; the rest of the answer is not forwarded",
            )
        out = self._release()
        if self._end_error is not None:
            raise self._end_error
        if self._waiting:
            raise WireError("a streamed tool call was not decided", hint="its decision did not finish; not forwarded")
        return out

    # -- the two readers -------------------------------------------------------------------------------------------

    def _scout_read(self, event: SSEEvent | None) -> None:
        self._started = []
        if event is _END:
            self._scout.end()
        else:
            self._scout.event(event)
            self._waiting_bytes += len(event.raw)
            if self._waiting_bytes > self._max_waiting and not all(f.done() for _, f in self._decisions):
                raise WireError(
                    f"more than {self._max_waiting} bytes of the stream arrived while a tool call was being decided",
                    hint="the upstream kept streaming after a tool call; it is not held without bound",
                )
        self._waiting.append((event, self._started))

    def _scouted(self, call: ToolCall) -> Ruling:
        future = self._start(call)
        self._decisions.append((call, future))
        self._started.append(future)
        return Ruling(call_id=call.id, allow=True)  # provisional: the scout's output is never sent

    def _release(self) -> bytes:
        """Hand the filter every waiting event whose decisions have all finished, in order."""
        out: list[bytes] = []
        while self._waiting and all(future.done() for future in self._waiting[0][1]):
            event, _ = self._waiting.popleft()
            if event is _END:
                out.append(self._filter.end())
            else:
                self._waiting_bytes -= len(event.raw)
                out.append(self._filter.event(event))
        return b"".join(out)

    def _ruled(self, call: ToolCall) -> Ruling:
        if not self._decisions:
            raise WireError(f"tool call {call.id[:40]!r} was not seen ahead", hint="this is a bug in aegis-proxy")
        seen, future = self._decisions.popleft()
        if (seen.id, seen.tool, seen.arguments) != (call.id, call.tool, call.arguments):
            raise WireError(f"tool call {call.id[:40]!r} differs from the one decided", hint="a bug in aegis-proxy")
        if not future.done() or future.cancelled() or future.exception() is not None:
            raise WireError(f"tool call {call.id[:40]!r} has no decision", hint="its decision failed; not forwarded")
        return future.result()
