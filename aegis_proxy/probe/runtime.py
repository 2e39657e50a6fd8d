"""`ProbeScorer`: the probe at run time. Thread-safe, micro-batched, cached, bounded in time; never fails open.

    scorer = ProbeScorer.open(ProbeSettings())          # never raises: a probe that cannot load is "unavailable"
    item = ProbeItem.from_call(call, context)            # pure Python: renders the call, cuts untrusted text
    [scores] = scorer.score([item])                      # {"risk": 0.93, "injection": 0.12}; None = unknown
    [scores] = await scorer.score_async([item])          # the same, without blocking the event loop
    scorer.prefetch(context)                             # earlier, when the LLM request passes: returns at once

- One worker thread runs the backbone. Callers (threads, or coroutines through `score_async`) put their texts on a
  queue; the worker takes what is queued and, while other callers are on their way (inside `score`, not yet queued),
  waits at most `max_wait_ms` for them, then encodes up to `max_batch` texts at once, so concurrent calls share one
  forward pass. A lone caller is served at once: waiting for callers that are not coming would only add latency.
- Scores are cached by the SHA-256 of the head and the text: a session sends the same tool results with every call,
  so their segments are encoded once.
- `prefetch(context)` starts on a conversation's untrusted messages before any call needs them: the proxy sees a new
  tool result in the LLM request that carries it, hundreds of milliseconds before the LLM answers with the next tool
  call. It reads exactly the messages `ProbeItem.from_call` reads (`untrusted_texts`), returns at once (never waits,
  never raises), and queues only messages with a segment neither cached nor in flight; the worker cuts them (off the
  caller's thread: the caller may be the proxy's event loop) and encodes them into the cache. It is turned away, not
  queued, when the queue is full (`max_pending`), and it never makes the worker wait for other callers.
- Calls go before prefetches: the worker serves every queued call before any prefetch, a batch that serves a call
  takes no prefetch work along, and a prefetch is served at most `max_batch` segments at a time. So a decision waits
  at most for the one forward pass running when it arrives, never for other sessions' prefetches queued before it.
  A prefetch that a call needs (its message is in flight) is no longer a hint and goes with the calls.
- A text being encoded for one caller (or a prefetch) is in flight: another caller that needs it waits for that
  work rather than queueing it again, so nothing is encoded twice however the calls and prefetches interleave.
- Each text goes through the backbone only as deep as the head that reads it: the call text to the call-risk head's
  deepest layer, the segments to the injection head's (layer 2 of 6 for MiniLM, against 4 for the call). A call
  whose untrusted messages are all new has many more segments than calls, so this halves most of its work.
- A caller waits at most `timeout_s`; what is not scored by then is None ("unknown") and the policy decides. The work
  goes on and fills the cache for the next call. The queue is bounded: past `max_pending` texts, new texts are
  unknown at once rather than queued behind minutes of work.
- Each head runs only if it loaded.
- The backbone's precision (precision.py) is `settings.precision`; `auto` takes the fastest this machine runs well
  among those every head's card validates. `precision` and `describe()` say which one runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from aegis_proxy.errors import AegisError
from aegis_proxy.models import CallContext, Role, ToolCall
from aegis_proxy.probe.backbone import DEFAULT_BACKBONE, Model, default_threads, open_model, set_threads
from aegis_proxy.probe.errors import ProbeError
from aegis_proxy.probe.head import HEADS, Head, load_head_for
from aegis_proxy.probe.precision import AUTO, check_requested, choose
from aegis_proxy.probe.render import (
    MAX_SEGMENTS_PER_MESSAGE,
    MIN_SEGMENT_CHARS,
    data_for_call,
    render_data,
    render_request,
    segments,
    untrusted_messages,
)

SCORE_KEYS = HEADS  # the keys of every score dict: "risk", "injection"
PROBES_DIR = Path(__file__).resolve().parent.parent.parent / "probes"
MAX_MESSAGES = 8  # untrusted messages per call that the injection head reads, newest first
SEGMENTED_MESSAGES = 1024  # messages whose segmentation is remembered
V = TypeVar("V")


def untrusted_texts(context: CallContext) -> tuple[str, ...]:
    """The untrusted messages the injection head reads for a call in `context`: tool results and documents (what it
    was trained on; the assistant's own text is not data), newest first, at most MAX_MESSAGES."""
    return tuple(m.content for m in untrusted_messages(context) if m.role in (Role.TOOL, Role.DOCUMENT))[:MAX_MESSAGES]


@dataclass(frozen=True)
class ProbeItem:
    """What the probe reads for one call: the rendered call and request, and the untrusted texts around it.

    `data_text` is the newest untrusted content rendered as `data:` lines: only a call-risk head trained on
    `render_call/1` reads it (appended to `call_text`); current heads read `call_text` alone.
    """

    call_text: str
    untrusted: tuple[str, ...] = ()
    data_text: str = ""

    @classmethod
    def from_call(cls, call: ToolCall, context: CallContext | None = None) -> ProbeItem:
        context = context or CallContext()
        request = render_request(call.tool, call.arguments, context.user_request)
        return cls(request, untrusted_texts(context), render_data(data_for_call(context)))

    def risk_text(self, head_input: str) -> str:
        return self.call_text + self.data_text if head_input == "render_call/1" else self.call_text


@dataclass(frozen=True)
class ProbeSettings:
    backbone: str = DEFAULT_BACKBONE  # "minilm" or a local Hugging Face-format directory
    heads_dir: Path | None = None  # default: probes/<backbone name>/ of this checkout
    max_length: int = 256
    timeout_s: float = 0.25  # a caller waits at most this long; then the missing scores are None
    max_wait_ms: float = 2.0  # the worker waits at most this long for more callers before it runs a batch
    max_batch: int = 32
    max_pending: int = 4096  # texts queued; beyond this new texts are unknown at once
    cache_entries: int = 65_536
    threads: int | None = None  # torch CPU threads; None = AEGIS_PROBE_THREADS or 2
    device: str | None = None  # None = cuda when available, else cpu
    precision: str = AUTO  # auto | fp32 | bf16 | int8 (precision.py); auto never picks one the heads do not validate

    def __post_init__(self) -> None:
        check_requested(self.precision)
        checks = (
            (self.timeout_s > 0, "timeout_s must be positive"),
            (0 <= self.max_wait_ms <= 1000, "max_wait_ms must be in 0..1000"),
            (self.max_batch >= 1, "max_batch must be at least 1"),
            (self.max_pending >= 1, "max_pending must be at least 1"),
            (self.cache_entries >= 0, "cache_entries must be 0 or more"),
        )
        for ok, message in checks:
            if not ok:
                raise ProbeError(f"probe settings: {message}", hint="fix the probe settings")


def _key(head: str, text: str) -> str:
    """The cache key of one head's score of one text."""
    return hashlib.sha256(f"{head}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(eq=False)  # compared by identity: one request is one piece of queued work
class _Request:
    texts: dict[str, tuple[str, str]]  # key -> (head, text)
    cost: int  # what it counts in `_pending`: its texts (a prefetch: estimated before its messages are cut)
    messages: tuple[str, ...] = ()  # a prefetch's untrusted messages, cut into `texts` by the worker
    hint: bool = False  # a prefetch: served after every queued call
    future: Future[dict[str, float]] = field(default_factory=Future)


class _WorkQueue:
    """The worker's queue: calls before prefetches, each in arrival order. A decision waits for the forward pass
    running when it arrives, never for prefetches queued before it (they are hints; the decision is on a request's
    path). `close` lets the worker finish what is queued, then stop."""

    def __init__(self) -> None:
        self._calls: deque[_Request] = deque()
        self._hints: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def put(self, request: _Request, *, first: bool = False) -> None:
        """Queue `request` (a hint at the head of the hints when `first`: the rest of one being served)."""
        with self._ready:
            if not request.hint:
                self._calls.append(request)
            elif first:
                self._hints.appendleft(request)
            else:
                self._hints.append(request)
            self._ready.notify()

    def get(self, timeout: float | None = None, *, calls_only: bool = False) -> _Request | None:
        """The next request: a call if one is queued, else a hint (unless `calls_only`). Waits at most `timeout`
        (None: until there is one, or the queue is closed and empty); None when there is none."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while True:
                if self._calls:
                    return self._calls.popleft()
                if self._hints and not calls_only:
                    return self._hints.popleft()
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._ready.wait(remaining)

    def promote(self, request: _Request) -> None:
        """A queued hint that a call waits for is served as a call; anything else (a call, a hint the worker took
        already) is left alone."""
        if not request.hint:  # a call, or promoted already: no scan of the hints
            return
        with self._ready:
            try:
                self._hints.remove(request)
            except ValueError:
                return
            request.hint = False
            self._calls.append(request)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def qsize(self) -> int:
        with self._ready:
            return len(self._calls) + len(self._hints)


class _LRU(Generic[V]):
    """A thread-safe least-recently-used map with at most `entries` entries (0: remembers nothing)."""

    def __init__(self, entries: int) -> None:
        self._data: OrderedDict[str, V] = OrderedDict()
        self._entries = entries
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: V) -> None:
        if self._entries == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class ProbeScorer:
    """Scores tool calls with the loaded heads. Build with `open` (never raises) or `load` (raises ProbeError)."""

    def __init__(self, settings: ProbeSettings, backbone: Model | None, heads: dict[str, Head], status: str) -> None:
        self.settings = settings
        self.backbone = backbone
        self.heads = heads
        self.status = status  # "ready", or why the probe is off
        self._cache: _LRU[float] = _LRU(settings.cache_entries)
        # Each message's segments with their keys: a session resends the same tool results with every call, and
        # cutting a long message in Python costs more than the backbone's forward pass of the call itself.
        self._segmented: _LRU[tuple[tuple[str, str], ...]] = _LRU(min(settings.cache_entries, SEGMENTED_MESSAGES))
        self._queue = _WorkQueue()
        self._pending = 0
        self._arriving = 0  # callers inside `score` that have not queued their texts yet (guarded by _pending_lock)
        self._pending_lock = threading.Lock()
        # key -> the queued or running request that will score it (guarded by _pending_lock): a caller that needs a
        # text already on its way waits for that request instead of queueing the text again.
        self._inflight: dict[str, _Request] = {}
        self.batches = 0  # forward passes run (for tests and metrics)
        self.last_error: str | None = None
        self._worker: threading.Thread | None = None
        if backbone is not None and heads:
            self._worker = threading.Thread(target=self._run, name="aegis-probe", daemon=True)
            self._worker.start()

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: ProbeSettings | None = None, heads: Sequence[str] = HEADS) -> ProbeScorer:
        """Load the backbone and heads; raise ProbeError (with a hint) when anything is missing or malformed."""
        settings = settings or ProbeSettings()
        set_threads(settings.threads if settings.threads is not None else default_threads())
        # Opened at fp32 (no weights prepared twice): the precision is chosen below, once the heads are known.
        backbone = open_model(settings.backbone, max_length=settings.max_length, device=settings.device)
        directory = settings.heads_dir or PROBES_DIR / backbone.name
        loaded = {name: load_head_for(backbone, directory, name) for name in heads}
        # Only a precision every head was trained on or validated for: another would move the scores unmeasured.
        validated = frozenset.intersection(*(h.validated_precisions for h in loaded.values())) if loaded else None
        backbone.set_precision(choose(settings.precision, backbone.device, validated, backbone.implemented_precisions))
        return cls(settings, backbone, loaded, "ready")

    @classmethod
    def open(cls, settings: ProbeSettings | None = None, heads: Sequence[str] = HEADS) -> ProbeScorer:
        """Like `load`, but a probe that cannot load is returned switched off: every score is None."""
        settings = settings or ProbeSettings()
        try:
            return cls.load(settings, heads)
        except AegisError as exc:
            return cls.unavailable(settings, f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
        except Exception as exc:  # a backbone that breaks in a way we did not foresee must not take the proxy down
            return cls.unavailable(settings, f"{type(exc).__name__}: {exc}")

    @classmethod
    def unavailable(cls, settings: ProbeSettings | None, reason: str) -> ProbeScorer:
        return cls(settings or ProbeSettings(), None, {}, f"unavailable: {reason}")

    @property
    def ready(self) -> bool:
        return self._worker is not None

    @property
    def precision(self) -> str | None:
        """The precision the backbone runs (fp32, bf16, int8), None when the probe is off."""
        return None if self.backbone is None else self.backbone.precision

    # -- scoring --------------------------------------------------------------------------------------------------

    def score_call(self, call: ToolCall, context: CallContext) -> dict[str, float | None]:
        """decide.Scorer: the scores of one call in its context (what Firewall.check asks for)."""
        return self.score([ProbeItem.from_call(call, context)])[0]

    def score(self, items: Sequence[ProbeItem]) -> list[dict[str, float | None]]:
        """One dict per item with every key of SCORE_KEYS; None where the score is unknown. Never raises on input."""
        unknown: dict[str, float | None] = dict.fromkeys(SCORE_KEYS)
        if not self.ready:
            return [dict(unknown) for _ in items]
        with self._pending_lock:
            self._arriving += 1  # from here on the worker may wait for this caller's texts (see _run)
        try:
            plans, wanted = self._plans(items)
            known = {key: value for key in wanted if (value := self._cache.get(key)) is not None}
            missing = {key: text for key, text in wanted.items() if key not in known}
        except BaseException:
            self._arrived()
            raise
        if missing:
            known.update(self._wait(missing, arriving=True))
        else:
            self._arrived()
        return self._results(plans, known, unknown)

    def _arrived(self) -> None:
        with self._pending_lock:
            self._arriving -= 1

    def _plans(self, items: Sequence[ProbeItem]) -> tuple[list[tuple[str, list[str]]], dict[str, tuple[str, str]]]:
        """Per item: the call text's key and its segments' keys; and every (head, text) to score, by key."""
        plans: list[tuple[str, list[str]]] = []
        wanted: dict[str, tuple[str, str]] = {}
        for item in items:
            call_key = ""
            if "risk" in self.heads:
                call_text = item.risk_text(self.heads["risk"].input)
                call_key = _key("risk", call_text)
                wanted[call_key] = ("risk", call_text)
            segment_keys = []
            if "injection" in self.heads:
                for text in item.untrusted:
                    for key, segment in self._segments_of(text):
                        wanted[key] = ("injection", segment)
                        segment_keys.append(key)
            plans.append((call_key, segment_keys))
        return plans, wanted

    def _segments_of(self, text: str) -> tuple[tuple[str, str], ...]:
        """(key, text) of each segment of one untrusted message, cut once per distinct message."""
        message_key = _key("message", text)
        found = self._segmented.get(message_key)
        if found is None:
            found = tuple((_key("injection", segment.text), segment.text) for segment in segments(text))
            self._segmented.put(message_key, found)
        return found

    def _results(
        self,
        plans: list[tuple[str, list[str]]],
        known: dict[str, float],
        unknown: dict[str, float | None],
    ) -> list[dict[str, float | None]]:
        results = []
        for call_key, segment_keys in plans:
            result = dict(unknown)
            if "risk" in self.heads:
                result["risk"] = known.get(call_key)
            if "injection" in self.heads:
                values = [known.get(key) for key in segment_keys]
                # Any unknown segment makes the whole message unknown: the max of what we saw is no upper bound.
                if all(v is not None for v in values):
                    result["injection"] = max((v for v in values if v is not None), default=0.0)
            results.append(result)
        return results

    async def score_async(self, items: Sequence[ProbeItem]) -> list[dict[str, float | None]]:
        """`score` for asyncio callers: the wait happens in a thread, never on the event loop."""
        return await asyncio.to_thread(self.score, items)

    def prefetch(self, context: CallContext) -> None:
        """decide.Prefetcher: start scoring the untrusted messages a call in `context` will read, before it arrives.

        Returns at once: never waits, never raises. A no-op when the probe (or its injection head) is off, when every
        segment is cached or in flight, and when the queue is full (a prefetch is a hint: turned away, not queued)."""
        try:
            self.prefetch_texts(untrusted_texts(context))
        except Exception as exc:  # a hint that failed costs nothing but the hint; the call is still scored in full
            self.last_error = f"prefetch: {type(exc).__name__}: {exc}"

    def prefetch_texts(self, texts: Sequence[str]) -> bool:
        """`prefetch` of untrusted texts (a ProbeItem's `untrusted`). True if work was queued. Never waits."""
        if not self.ready or "injection" not in self.heads:
            return False
        cold = tuple(dict.fromkeys(text for text in texts if text and not self._warm(text)))
        if not cold:
            return False
        # Estimated generously (segments are mostly MIN..MAX_SEGMENT_CHARS long): under load, a hint gives way first.
        cost = sum(min(MAX_SEGMENTS_PER_MESSAGE, len(text) // MIN_SEGMENT_CHARS + 1) for text in cold)
        with self._pending_lock:
            if self._pending + cost > self.settings.max_pending:
                return False
            self._pending += cost
            self._queue.put(_Request({}, cost, cold, hint=True))
        return True

    def _warm(self, text: str) -> bool:
        """Whether every segment of `text` is cached or on its way (False when it has not been cut yet)."""
        cut = self._segmented.get(_key("message", text))
        return cut is not None and all(key in self._inflight or self._cache.get(key) is not None for key, _ in cut)

    def injection_spans(self, text: str) -> list[tuple[int, int, float | None]]:
        """Each segment of one untrusted text with its injection score: where in the text the injection is."""
        if "injection" not in self.heads:
            return [(s.start, s.end, None) for s in segments(text)]
        cut = segments(text)
        keys = {_key("injection", s.text): ("injection", s.text) for s in cut}
        known = {key: value for key in keys if (value := self._cache.get(key)) is not None}
        missing = {key: job for key, job in keys.items() if key not in known}
        if missing and self.ready:
            known.update(self._wait(missing))
        return [(s.start, s.end, known.get(_key("injection", s.text))) for s in cut]

    def _wait(self, missing: dict[str, tuple[str, str]], *, arriving: bool = False) -> dict[str, float]:
        """Queue the texts not already in flight and wait (at most `timeout_s` in all) for the requests that score
        them. `arriving`: the caller counted itself in `_arriving`."""
        started = time.monotonic()
        awaited: list[_Request] = []
        try:
            with self._pending_lock:
                own: dict[str, tuple[str, str]] = {}
                for key, job in missing.items():
                    other = self._inflight.get(key)
                    if other is None:
                        own[key] = job
                    elif other not in awaited:
                        awaited.append(other)
                if own:
                    if self._pending + len(own) > self.settings.max_pending:
                        return {}  # overloaded: unknown now beats a verdict in a minute
                    self._pending += len(own)
                    request = _Request(own, len(own))
                    for key in own:
                        self._inflight[key] = request
                    self._queue.put(request)
                    awaited.append(request)
                for other in awaited:  # a call waits for these now: a queued hint among them goes with the calls
                    self._queue.promote(other)
        finally:
            if arriving:
                self._arrived()  # queued (or turned away): the worker need not wait for it any more
        known: dict[str, float] = {}
        followed = set(awaited)  # requests hash by identity (eq=False)
        while awaited:
            request = awaited.pop(0)
            try:
                remaining = max(0.0, self.settings.timeout_s - (time.monotonic() - started))
                scores = request.future.result(timeout=remaining)
            except FutureTimeout:
                continue  # unknown; a later request may be done all the same
            except Exception as exc:  # the worker failed this batch: unknown, and say why
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            known.update((key, value) for key, value in scores.items() if key in missing)
            # A prefetch the worker split while this caller waited on it carries the rest of its texts in a request
            # of its own: follow them there (or find them cached).
            with self._pending_lock:
                for key in missing.keys() - known.keys():
                    if (value := self._cache.get(key)) is not None:
                        known[key] = value
                    elif (moved := self._inflight.get(key)) is not None and moved not in followed:
                        followed.add(moved)
                        awaited.append(moved)
                        self._queue.promote(moved)
        return known

    # -- the worker -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:  # closed, and everything queued was served
                return
            batch = [first]
            count = first.cost
            deadline = time.perf_counter() + self.settings.max_wait_ms / 1000
            while count < self.settings.max_batch:
                # A batch that serves a call takes no hint: the call would wait for the hint's forward pass.
                calls_only = any(not request.hint for request in batch)
                more = self._queue.get(0, calls_only=calls_only)  # already queued: always part of this batch
                if more is None:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or not self._arriving:  # nobody on the way: do not wait for no one
                        break
                    more = self._queue.get(remaining, calls_only=calls_only)
                    if more is None:
                        break
                batch.append(more)
                count += more.cost
            self._serve(batch)

    def _serve(self, batch: list[_Request]) -> None:
        texts: dict[str, tuple[str, str]] = {}
        try:
            # A call's texts are all served now; hints fill what is left of one batch, and the rest of them waits
            # behind any call that arrives meanwhile.
            room = self.settings.max_batch - sum(len(r.texts) for r in batch if not r.hint)
            for request in batch:
                if request.hint:
                    room -= self._cut(request, max(room, 0))
                texts.update(request.texts)
            scores = self._compute(texts)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            for request in batch:
                request.future.set_exception(exc)
            scores = None
        finally:
            # Cached (or failed) before it leaves the flight map: a caller that misses both queues it again.
            with self._pending_lock:
                self._pending -= sum(r.cost for r in batch)
                for request in batch:
                    for key in request.texts:
                        if self._inflight.get(key) is request:
                            del self._inflight[key]
        if scores is not None:
            for request in batch:
                request.future.set_result({key: scores[key] for key in request.texts})

    def _cut(self, request: _Request, room: int) -> int:
        """A prefetch's messages into the segments not cached yet (if not cut before), of which the first `room` are
        served with this batch; the others go back to the head of the hints as a request of their own. All of them
        are in flight from here on. Returns how many are served now."""
        for text in request.messages:
            for key, segment in self._segments_of(text):
                if self._cache.get(key) is None:
                    request.texts[key] = ("injection", segment)
        request.messages = ()
        later = dict(list(request.texts.items())[room:])
        with self._pending_lock:
            for key in request.texts:
                self._inflight.setdefault(key, request)
            if later:
                rest = _Request(later, len(later), hint=True)
                self._pending += rest.cost
                for key in later:
                    del request.texts[key]
                    if self._inflight.get(key) is request:
                        self._inflight[key] = rest
                self._queue.put(rest, first=True)
        return len(request.texts)

    def _compute(self, texts: dict[str, tuple[str, str]]) -> dict[str, float]:
        from aegis_proxy.probe.features import length_buckets, pool

        assert self.backbone is not None
        out: dict[str, float] = {}
        for key in texts:  # another caller's batch may have scored some of these meanwhile
            cached = self._cache.get(key)
            if cached is not None:
                out[key] = cached
        for name, head in self.heads.items():
            todo = [key for key, (wanted, _) in texts.items() if wanted == name and key not in out]
            for bucket in length_buckets([len(texts[key][1]) for key in todo], self.settings.max_batch):
                chunk = [todo[i] for i in bucket]
                # Only as deep as this head reads, and only those layers pooled.
                states, mask = self.backbone.hidden_states([texts[key][1] for key in chunk], upto=head.max_layer)
                features = pool(states[: head.max_layer + 1], mask).float().cpu()
                self.batches += 1
                for key, score in zip(chunk, head.score(features).tolist(), strict=True):
                    self._cache.put(key, float(score))
                    out[key] = float(score)
        return out

    def clear_cache(self) -> None:
        """Forget every score and segmentation: the next call is scored cold (benchmarks time the cold paths)."""
        self._cache.clear()
        self._segmented.clear()

    def close(self) -> None:
        """Stop the worker (queued work is finished first)."""
        if self._worker is not None:
            self._queue.close()
            self._worker.join(timeout=10)
            self._worker = None

    def describe(self) -> dict[str, Any]:
        """Status for logs and `aegis probe` output."""
        return {
            "status": self.status,
            "backbone": None if self.backbone is None else self.backbone.name,
            "precision": self.precision,
            "heads": {name: head.spec.label for name, head in self.heads.items()},
            "thresholds": {name: head.threshold for name, head in self.heads.items()},
            "cache_entries": len(self._cache),
            "last_error": self.last_error,
        }
