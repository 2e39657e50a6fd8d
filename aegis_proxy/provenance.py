"""Provenance: where did each argument value come from?

For every argument string, record whether it appears in what the principal wrote (system prompt, user messages), in
untrusted text (tool results, documents, the assistant's own text) and inside an injected block of untrusted text, as
`find_injection_spans` marks them. Long strings are also split into salient tokens (URLs, email addresses, account
numbers, file paths, domain names, long numbers), each traced on its own, so that `body="Click www.evil.example/login"`
is traced to the injected block that carries the same link. A one-word value with digits (an order number
"NW-88412", a user name "octo-helper-42") is an identifier: specific enough that finding it in injected text counts.

Copying values out of tool output is what agents do all day (a third of benign calls take an argument from a tool
message that also carries an injection), so appearing in untrusted text is only INFO. The strong signal is a value
that sits inside the injected instructions themselves and that the user never wrote: HIGH. When the same value also
appears in tool output outside the injected block, the agent may have taken it from there: MEDIUM (a human looks).
So is a value found only in weak spans (score below the injection scanner's MEDIUM_SCORE): a "TODO: email it to
x@y.example" in a document may be the user's own note, so a human decides rather than the firewall.

Matching is case-insensitive, whitespace-collapsed and NFKC, after removing invisible characters and undoing the JSON
escapes that tool results often carry. Injection spans are computed once per untrusted message and cached by content:
a session repeats the same messages on every call. The lookups of an argument string (its folded form and salient
tokens) are cached by text too; what they are found in is worked out afresh on every call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields

from aegis_proxy import safe_regex
from aegis_proxy.bounded_cache import BoundedCache
from aegis_proxy.extract import ExtractedString
from aegis_proxy.models import TRUSTED_ROLES, CallContext, Finding, Message, Role, Severity
from aegis_proxy.safe_regex import compile_pattern
from aegis_proxy.scanners.base import text_cache
from aegis_proxy.scanners.injection import MEDIUM_SCORE, analyse_text, visible_text

SCANNER = "provenance"
CATEGORY_INJECTED = "provenance.injected"
CATEGORY_UNTRUSTED = "provenance.untrusted"
CATEGORIES = frozenset({CATEGORY_INJECTED, CATEGORY_UNTRUSTED})

SOURCE_USER = "user"  # system prompt or user messages: what the principal wrote
SOURCE_UNTRUSTED = "untrusted"  # tool results, documents, assistant text
SOURCE_INJECTED = "injected"  # inside an injected block of untrusted text

_DATA_ROLES = frozenset({Role.TOOL, Role.DOCUMENT})  # where a value can legitimately be copied from
_SEPARATOR = "\x00"  # joins folded messages; folded values never contain it, so a match never straddles two


@dataclass(frozen=True, slots=True)
class ProvenanceLimits:
    max_strings: int = 512  # argument strings traced per call
    max_string_chars: int = 65_536  # characters of one argument string matched and tokenised
    max_tokens_per_string: int = 64  # salient tokens taken from one argument string
    max_context_chars: int = 4_000_000  # message text scanned per call, newest message first
    min_chars: int = 4  # shorter values (after trimming) say nothing about where they came from


_DEFAULT_LIMITS = ProvenanceLimits()  # built once: a frozen dataclass costs microseconds per call


@dataclass(frozen=True, slots=True)
class TracedValue:
    """One value looked up in the context: a whole argument string, or a salient token of it."""

    text: str  # folded form that was looked up
    kind: str  # value | url | email | account | number | path | domain
    chain: tuple[str, ...]  # decodings of the argument string it came from
    in_user: bool
    in_untrusted: bool
    in_injected: bool  # inside an injected span; only specific values count (not "Meeting")
    outside_injected: bool  # also in tool/document text outside the injected spans
    weak: bool = False  # inside injected spans, but only weak ones (score below MEDIUM_SCORE, e.g. a bare TODO)

    @property
    def sources(self) -> frozenset[str]:
        found = {SOURCE_USER} if self.in_user else set()
        if self.in_untrusted:
            found.add(SOURCE_UNTRUSTED)
        if self.in_injected:
            found.add(SOURCE_INJECTED)
        return frozenset(found)


# A frozen dataclass sets each field through object.__setattr__; a call makes a few of these per argument string, so
# `trace` fills the slots directly (half the cost). Same object, same fields: equality, hashing and repr are unchanged.
_TRACED_VALUE_SLOTS = tuple(getattr(TracedValue, member.name).__set__ for member in fields(TracedValue))


def _traced_value(
    text: str,
    kind: str,
    chain: tuple[str, ...],
    in_user: bool,
    in_untrusted: bool,
    in_injected: bool,
    outside_injected: bool,
    weak: bool,
) -> TracedValue:
    value = object.__new__(TracedValue)
    set_text, set_kind, set_chain, set_user, set_untrusted, set_injected, set_outside, set_weak = _TRACED_VALUE_SLOTS
    set_text(value, text)
    set_kind(value, kind)
    set_chain(value, chain)
    set_user(value, in_user)
    set_untrusted(value, in_untrusted)
    set_injected(value, in_injected)
    set_outside(value, outside_injected)
    set_weak(value, weak)
    return value


@dataclass(frozen=True, slots=True)
class PathTrace:
    path: str
    values: tuple[TracedValue, ...]

    @property
    def sources(self) -> frozenset[str]:
        return frozenset().union(*(value.sources for value in self.values))


@dataclass(frozen=True)
class ProvenanceReport:
    traces: tuple[PathTrace, ...] = ()
    truncated: bool = False  # a bound was hit: some strings or some context were not traced
    _by_path: dict[str, PathTrace] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_path", {trace.path: trace for trace in self.traces})

    def trace_of(self, path: str) -> PathTrace | None:
        return self._by_path.get(path)

    def of(self, path: str) -> frozenset[str]:
        """Where the value at `path` (or a salient token of it) appears, among "user", "untrusted", "injected"."""
        trace = self._by_path.get(path)
        return trace.sources if trace is not None else frozenset()

    def tainted(self, path: str) -> bool:
        return SOURCE_UNTRUSTED in self.of(path)

    def injected(self, path: str) -> bool:
        return SOURCE_INJECTED in self.of(path)

    def from_user(self, path: str) -> bool:
        return SOURCE_USER in self.of(path)

    def findings(self) -> list[Finding]:
        found: list[Finding] = []
        for trace in self.traces:
            # Tokens first: "url 'evil.example/login'" reads better than a whole body.
            copied = sorted(
                (value for value in trace.values if value.in_injected and not value.in_user),
                key=lambda value: value.kind == "value",
            )
            if copied:
                only_there = [value for value in copied if not value.outside_injected]
                confident = [value for value in only_there if not value.weak]
                worst = (confident or only_there or copied)[0]
                if confident:
                    where = "injected instructions"
                elif only_there:
                    where = "text that may be injected instructions"
                else:
                    where = "injected instructions and elsewhere in tool output"
                found.append(
                    Finding(
                        scanner=SCANNER,
                        category=CATEGORY_INJECTED,
                        severity=Severity.HIGH if confident else Severity.MEDIUM,
                        path=trace.path,
                        chain=worst.chain,
                        message=f"{worst.kind} {_display(worst)} appears in {where}, not in anything the user wrote",
                    )
                )
                continue
            unsourced = [value for value in trace.values if value.in_untrusted and not value.in_user]
            if unsourced:
                found.append(
                    Finding(
                        scanner=SCANNER,
                        category=CATEGORY_UNTRUSTED,
                        severity=Severity.INFO,
                        path=trace.path,
                        chain=unsourced[0].chain,
                        message=f"{unsourced[0].kind} {_display(unsourced[0])} appears only in untrusted text",
                    )
                )
        return found


# ---------------------------------------------------------------------------------------------------------------------
# Folding: the form in which values and messages are compared.

_JSON_ESCAPES = (("\\n", " "), ("\\r", " "), ("\\t", " "), ('\\"', '"'), ("\\/", "/"))


def fold(text: str) -> str:
    """Case-insensitive, whitespace-collapsed, NFKC, invisible characters removed, common JSON escapes undone."""
    text = visible_text(text)
    if "\\" in text:
        for escaped, plain in _JSON_ESCAPES:
            text = text.replace(escaped, plain)
    if _SEPARATOR in text:
        text = text.replace(_SEPARATOR, " ")
    return " ".join(text.casefold().split())


# ---------------------------------------------------------------------------------------------------------------------
# Salient tokens of a long argument string.

_TOKEN = compile_pattern(
    r"\b(?:https?|ftp|file)://[^\s<>\"'`\])}]{2,}"
    r"|\bwww\.[^\s<>\"'`\])}]{3,}"
    r"|[a-z0-9._%+\-]{1,64}@[a-z0-9\-]{1,63}(?:\.[a-z0-9\-]{1,63}){1,8}"
    r"|(?-i:\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b)"
    r"|(?:^|[\s\"'(=:,])(?:~|\.{1,2})?/[\w.\-~/]{3,}|\b[a-z]:\\[\w.\-\\ ]{2,}"
    r"|\b\d[\d\-]{3,40}\d\b"
    r"|\b(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.){1,8}[a-z]{2,24}\b",
    ignore_case=True,
)
_UNANCHORED = getattr(safe_regex, "_UNANCHORED", None)
_TOKEN_HINTS = frozenset("/@.\\0123456789")  # a string without any of these holds no salient token
_TRAILING = ".,;:!?)]}'\""

# Values that appear everywhere: finding them in a message says nothing.
_COMMON_WORDS = (
    "http https www. www com org net html json true false null none nan undefined yes no ok okay the and for with "
    "this that from your you have will are was were been not but all any can has had its our out who what when "
    "where which while here there then than them they their these those into onto over under about after before "
    "again also just more most some such only other very each both same own too off once user text body subject "
    "email mail message title name data file files path value type content string description note notes meeting "
    "today tomorrow yesterday hello thanks thank regards dear please best index.html localhost example.com"
)
_COMMON = frozenset(_COMMON_WORDS.split())


def _kind(token: str) -> str:
    if "://" in token or token.startswith("www."):
        return "url"
    if "@" in token:
        return "email"
    if token[:1] in "/~." or token[1:3] == ":\\":
        return "path"
    if token.replace("-", "").isdigit():
        return "number"
    if token[:2].isalpha() and token[2:4].isdigit() and token[:2].isupper():
        return "account"
    if "." not in token and any(char.isdigit() for char in token):
        return "id"  # an order number, a ticket, a user name with digits: NW-88412, octo-helper-42
    return "domain"


def _token_key(kind: str, token: str) -> str:
    """The part of a token that is looked up: a URL without its scheme and "www."."""
    token = token.rstrip(_TRAILING)
    if kind == "url":
        token = token.split("://", 1)[-1]
        token = token.removeprefix("www.").removeprefix("WWW.")
    return fold(token)


def _meaningful(folded: str) -> bool:
    if len(folded) < 4 or folded in _COMMON:
        return False
    digits = folded.replace("-", "").replace(" ", "")
    return not (digits.isdigit() and len(digits) < 5)


def _specific(kind: str, folded: str) -> bool:
    """Specific enough that finding it inside injected text is no coincidence ("Meeting" is not; an IBAN is)."""
    if kind == "id":
        return len(folded) >= 5 and sum(char.isdigit() for char in folded) >= 2
    if kind != "value":
        return kind != "domain" or "." in folded.strip(".")
    if len(folded) >= 16:
        return True
    if len(folded) >= 10 and " " in folded:
        return True
    return len(folded) >= 6 and any(char.isdigit() or char in "@./:_-\\" for char in folded)


# google-re2's wrapper builds a Python match object per hit (microseconds each); on ASCII text the compiled RE2 object
# is asked directly, as safe_regex's own fast path does. The loop mirrors the wrapper's on bytes, so the tokens are
# the same; a wrapper without these internals gets `finditer`.
_TOKEN_SEARCH = getattr(_TOKEN, "_match", None)
_TAIL_CHECK = 256  # tails up to this long are checked for a hint character (a bounded copy) before searching them


def _tokens(body: str) -> Iterator[str]:
    """The salient-token matches of `body`, in order, as the wrapper's `finditer` would give them."""
    if _TOKEN_SEARCH is None or _UNANCHORED is None or not body.isascii():
        for match in _TOKEN.finditer(body.encode("ascii") if body.isascii() else body):
            token = match.group(0)
            yield token.decode("ascii") if isinstance(token, bytes) else token
        return
    data = body.encode("ascii")
    end = len(data)
    pos = 0
    while True:
        start, stop = _TOKEN_SEARCH(_UNANCHORED, data, pos, end)[0]
        if start < 0:
            return
        yield body[start:stop]  # ASCII: byte offsets are character offsets
        if pos == end:
            return
        # Every token holds a hint character, so a short tail without one holds no further token: skip the search.
        if end - stop <= _TAIL_CHECK and _TOKEN_HINTS.isdisjoint(body[stop:]):
            return
        pos = pos + 1 if stop == pos else stop


_Lookups = tuple[tuple[tuple[str, str], ...], bool]


@text_cache
def _default_values(text: str) -> _Lookups:
    """`_values` under the default limits, remembered by text: agents pass the same paths, names and ids again."""
    lookups, cut = _values(text, _DEFAULT_LIMITS)
    return tuple(lookups), cut


def _values(text: str, limits: ProvenanceLimits) -> tuple[list[tuple[str, str]], bool]:
    """(kind, folded) lookups for one argument string, and whether it had to be cut."""
    stripped = text.strip()
    if len(stripped) < limits.min_chars:
        return [], False
    cut = len(stripped) > limits.max_string_chars
    body = stripped[: limits.max_string_chars]
    hinted = not _TOKEN_HINTS.isdisjoint(body)
    if not hinted or len(body.split(maxsplit=1)) == 1:
        # One word: it is its own token. Skip the tokenizer (an RE2 call costs microseconds, most values are short).
        kind = _kind(body) if hinted else "value"
        key = _token_key(kind, body) if kind != "value" else fold(body)
        return ([(kind, key)] if _meaningful(key) else []), cut
    found: dict[str, str] = {}
    whole = fold(body)
    if _meaningful(whole):
        found[whole] = "value"
    for count, token in enumerate(_tokens(body)):
        if count >= limits.max_tokens_per_string:
            cut = True
            break
        token = token.lstrip(" \t\r\n\"'(=:,")
        kind = _kind(token)
        key = _token_key(kind, token)
        # An account number is written with and without spaces ("GB82 WEST 1234 ..."): look up both.
        for variant in (key, key.replace(" ", "")) if kind == "account" else (key,):
            if _meaningful(variant):
                found[variant] = kind if found.get(variant, "value") == "value" else found[variant]
    return [(kind, key) for key, kind in found.items()], cut


def _display(value: TracedValue) -> str:
    """Short: digits masked but the last four (codes, account numbers), a URL without its query. No secret."""
    text = value.text
    if value.kind == "url":
        text = text.split("?", 1)[0]
    if len(text) > 60:
        text = text[:57] + "..."
    digits = sum(map(str.isdigit, text))  # map: no Python-level generator per character
    if digits > 4:
        seen = 0
        masked = []
        for char in text:
            if char.isdigit():
                seen += 1
                char = char if seen > digits - 4 else "*"
            masked.append(char)
        text = "".join(masked)
    return repr(text)


# ---------------------------------------------------------------------------------------------------------------------
# Messages, folded once and cached by content.


@dataclass(frozen=True, slots=True)
class _MessageView:
    folded: str
    injected: tuple[str, ...] = ()  # folded text of each injected span
    confident: tuple[str, ...] = ()  # the same, for the spans scored at or above MEDIUM_SCORE
    clean: str = ""  # folded text outside the injected spans
    truncated: bool = False


def _view_key_chars(key: tuple[bool, str]) -> int:
    return len(key[1])


# Message views by (untrusted, content): a session resends its messages with every call.
_CACHE: BoundedCache[tuple[bool, str], _MessageView] = BoundedCache(
    max_entries=4096, max_chars=64 << 20, size=_view_key_chars
)


def _message_view(content: str, untrusted: bool) -> _MessageView:
    key = (untrusted, content)
    view = _CACHE.get(key)
    if view is not None:
        return view
    if not untrusted:
        view = _MessageView(fold(content))
    else:
        spans, truncated = analyse_text(content)
        if spans:
            pieces, last = [], 0
            for span in spans:
                pieces.append(content[last : span.start])
                last = span.end
            pieces.append(content[last:])
            folded_spans = tuple(fold(content[span.start : span.end]) for span in spans)
            view = _MessageView(
                fold(content),
                folded_spans,
                tuple(text for text, span in zip(folded_spans, spans, strict=True) if span.score >= MEDIUM_SCORE),
                f" {_SEPARATOR} ".join(fold(piece) for piece in pieces),
                truncated,
            )
        else:
            folded = fold(content)
            view = _MessageView(folded, (), (), folded, truncated)
    _CACHE.put(key, view)
    return view


def seen(message: Message) -> bool:
    """Whether `trace` has this message's view cached: then tracing through it is substring searches in C, not the
    injection analysis and folding that a new message costs (a session resends its messages with every call)."""
    return _CACHE.get((message.role not in TRUSTED_ROLES, message.content)) is not None


def _in_budget(messages: Sequence[Message], budget: int) -> tuple[list[tuple[Message, str]], bool]:
    """The messages `trace` reads, newest first (the bound drops the oldest text), each with the part of its text
    within `budget` characters; and whether any text was left out."""
    kept: list[tuple[Message, str]] = []
    for message in reversed(messages):
        content = message.content
        if not content:
            continue
        if budget <= 0:
            return kept, True
        if len(content) > budget:
            kept.append((message, content[:budget]))
            return kept, True
        budget -= len(content)
        kept.append((message, content))
    return kept, False


def unseen(context: CallContext) -> list[tuple[str, bool]]:
    """The (text, untrusted) of each message `trace` would read in `context` whose view is not cached yet: what a
    call's check in this conversation will have to analyse."""
    kept, _ = _in_budget(context.messages, _DEFAULT_LIMITS.max_context_chars)
    texts = ((content, message.role not in TRUSTED_ROLES) for message, content in kept)
    return [(content, untrusted) for content, untrusted in texts if _CACHE.get((untrusted, content)) is None]


def warm(texts: Sequence[tuple[str, bool]]) -> None:
    """Analyse and cache the views of `texts` (from `unseen`) ahead of the check that will read them: the Gate does it
    while the LLM thinks, so that a call's check finds its conversation's new messages done."""
    for content, untrusted in texts:
        _message_view(content, untrusted)


def clear_cache() -> None:
    """Forget cached message views and argument lookups (tests; a reload)."""
    _CACHE.clear()
    _default_values.cache_clear()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------------------------


def trace(
    strings: Sequence[ExtractedString], context: CallContext, limits: ProvenanceLimits | None = None
) -> ProvenanceReport:
    """Trace every argument string of a call through the call's context. Never raises on any content."""
    limits = limits or _DEFAULT_LIMITS
    trusted: list[str] = []
    untrusted: list[str] = []
    injected: list[str] = []
    confident: list[str] = []
    data_clean: list[str] = []
    kept, truncated = _in_budget(context.messages, limits.max_context_chars)
    cached = _CACHE.get  # the common case, a message seen on an earlier call, without a function call more
    for message, content in kept:
        if message.role in TRUSTED_ROLES:  # = message.trust is TRUSTED, without a property call per message
            view = cached((False, content)) or _message_view(content, untrusted=False)
            trusted.append(view.folded)
            continue
        view = cached((True, content)) or _message_view(content, untrusted=True)
        truncated = truncated or view.truncated
        untrusted.append(view.folded)
        injected.extend(view.injected)
        confident.extend(view.confident)
        if message.role in _DATA_ROLES:
            data_clean.append(view.clean)
    trusted_text = _SEPARATOR.join(trusted)
    untrusted_text = _SEPARATOR.join(untrusted)
    injected_text = _SEPARATOR.join(injected)
    confident_text = _SEPARATOR.join(confident) if len(confident) < len(injected) else injected_text
    clean_text = _SEPARATOR.join(data_clean)

    by_path: dict[str, dict[str, TracedValue]] = {}
    traced = 0
    for string in strings:
        if string.is_key:
            continue  # keys are the tool's schema, not values someone could have planted
        if traced >= limits.max_strings:
            truncated = True
            break
        traced += 1
        lookups, cut = _default_values(string.text) if limits is _DEFAULT_LIMITS else _values(string.text, limits)
        truncated = truncated or cut
        values = by_path.setdefault(string.path, {})
        for kind, key in lookups:
            if key in values:
                continue
            in_injected = bool(injected_text) and _specific(kind, key) and key in injected_text
            outside = in_injected and key in clean_text
            weak = in_injected and key not in confident_text
            values[key] = _traced_value(
                key, kind, string.chain, key in trusted_text, key in untrusted_text, in_injected, outside, weak
            )
    traces = tuple(PathTrace(path, tuple(values.values())) for path, values in by_path.items())
    return ProvenanceReport(traces, truncated)
