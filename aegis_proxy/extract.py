"""Deep argument extraction: every string in a tool call's arguments, as the attacker meant it to be read.

`extract` walks every JSON value and every object key, and emits each string with its JSON path. It emits the string
as sent, then every decoded form (JSON, base64, hex, percent-encoding, HTML entities, backslash escapes, Unicode tag
characters), decoding each result again until nothing changes. Each emitted text is normalised (invisible characters
removed, NFKC, Cyrillic/Greek look-alikes folded when scripts are mixed), because the scanners must see what a shell
or a model would see. `chain` records how a text was reached, outermost first:

    "key"          the string is an object key; its path is the object's path
    "json"         parsed from JSON text; members continue the path (`args.payload.cmd`)
    "base64" "hex" "url" "html" "escape" "tags"
                   one decoding each; percent-encoding is one "url" step per round, so `%2572` -> ("url", "url")
    "normalize"    removing invisible characters or NFKC changed the text (the raw form was obfuscated)
    "confusables"  look-alike letters were mapped to Latin
    "join"         an all-strings array, or a command member plus its argument list, joined with spaces

Paths: the root is "args"; members are `.name` when the key is a short ASCII identifier, else `["key"]` with the key
JSON-escaped to ASCII (so a printed path never carries bidi or zero-width characters) and cut at 64 characters. A
key's own path is its object's path. A joined string sits at the path of the array, or of the object holding the
command member. The same (path, text) is emitted once, whichever decoding reached it first.

Everything is bounded by `ExtractionLimits`. Reaching a bound is reported as one `extract.bound` finding per kind of
bound (MEDIUM: a human should look), at the path where it was first hit, never as an exception and never silently.
The walk is an explicit stack, so nesting depth never touches Python's recursion limit, and JSON text too deep for
the parser is reported as the depth bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Final, NamedTuple

from pydantic import JsonValue

from aegis_proxy.decoders import (
    NOT_JSON,
    TOO_DEEP,
    count_unicode_tags,
    embedded_tokens,
    fold_confusables,
    json_shaped,
    may_decode_token,
    may_encode_text,
    normalize,
    try_base64,
    try_escapes,
    try_hex,
    try_html,
    try_json,
    try_percent,
    try_unicode_tags,
)
from aegis_proxy.models import Finding, Severity


@dataclass(frozen=True, slots=True)
class ExtractedString:
    path: str  # "args", "args.cmd", "args.files[2].name", 'args["odd key"]'
    text: str  # after decoding and normalisation
    chain: tuple[str, ...] = ()  # e.g. ("base64", "json"); ("key",) for an object key
    is_key: bool = False

    @property
    def normalized(self) -> bool:
        """True when what was sent differs from `text` by invisible characters, compatibility forms or look-alikes."""
        return "normalize" in self.chain or "confusables" in self.chain


# A frozen dataclass's __init__ sets each field through object.__setattr__; extraction makes one per string, so
# `_emit` fills the slots directly (as scanners.base.new_scan_target does). Same object: equality and repr unchanged.
_STRING_SLOTS = tuple(ExtractedString.__dict__[name].__set__ for name in ExtractedString.__slots__)  # field order
_new_object = object.__new__


@dataclass(frozen=True, slots=True)
class ExtractionLimits:
    max_depth: int = 64  # JSON nesting (including JSON decoded from strings)
    max_strings: int = 10_000
    max_decode_depth: int = 6  # decodings stacked on one string
    max_decoded_bytes: int = 4 << 20  # total bytes produced by decoding, per call
    max_scan_bytes: int = 8 << 20  # total text handed to the scanners, per call (counted in characters)
    # Escape sequences (%XX, &...;, \xNN), embedded base64/hex tokens and tag characters decoded per call: each costs
    # Python work, so this caps the time a string made of nothing but escapes can take (well under a second).
    max_fragments: int = 50_000


@dataclass(frozen=True, slots=True)
class Extraction:
    strings: tuple[ExtractedString, ...]
    findings: tuple[Finding, ...] = ()  # "extract.bound" when a limit was hit: never a silent skip


ROOT: Final = "args"
_DEFAULT_LIMITS: Final = ExtractionLimits()
BOUND_CATEGORY: Final = "extract.bound"

# Decoders applied to every string, in the order their results are emitted. "Marked" encodings need a marker
# character, "shaped" ones a minimum length; JSON yields a value to walk rather than a string, and embedded tokens
# are only looked for when the text is not JSON (its strings are walked one by one instead).
_MARKED_DECODERS: Final[tuple[tuple[str, str, Callable[[str], str | None]], ...]] = (
    ("url", "%", try_percent),
    ("html", "&", try_html),
    ("escape", "\\", try_escapes),
)
_SHAPE_DECODERS: Final[tuple[tuple[str, Callable[[str], str | None]], ...]] = (
    ("hex", try_hex),
    ("base64", try_base64),
)
_MIN_ENCODED_LEN: Final = 8  # hex and base64 decline anything shorter (see decoders)
_JSON_START: Final = "{[ \t\r\n"
# isinstance with tuples: an X | Y union costs three times as much per check, and this runs per value.
_WALKED: Final = (str, dict, list, tuple)
_SEQUENCES: Final = (list, tuple)
# An object {"cmd": "rm", "args": ["-rf", "/"]} runs as "rm -rf /": join it so the scanners see the whole command.
COMMAND_KEYS: Final = frozenset({"cmd", "command", "program", "executable", "binary"})
ARGUMENT_KEYS: Final = frozenset({"args", "argv", "arguments", "params"})
_PATH_KEY_MAX: Final = 64  # longer keys are cut in paths: a path is a label, and every descendant repeats it

_Chain = tuple[str, ...]
_Decoded = tuple[str, object, int]  # (step, decoded value, decoded size)
# One unit of pending work: value, path, chain, nesting depth, decode depth, is_key.
_Item = tuple[object, str, _Chain, int, int, bool]


def extract(arguments: JsonValue, limits: ExtractionLimits | None = None) -> Extraction:
    """All strings in `arguments` (keys included), decoded and normalised, with their paths; plus bound findings.

    Never raises on a JSON value. Non-JSON Python values are tolerated: tuples walk like lists, non-string keys are
    shown with `str()`, other leaves (numbers, booleans, None, anything else) hold no text and are skipped.
    """
    return _Walk(limits or _DEFAULT_LIMITS).run(arguments)


MAX_CACHED_DECODE_CHARS: Final = 1_024  # texts up to this long are decoded once and remembered (bounded LRU)


class _TextDecodings(NamedTuple):  # a NamedTuple: cheap to make, and one is made per new short string
    """What the text decoders (all but JSON) make of one short string, before any budget is charged."""

    marked: tuple[tuple[str, int, str | None], ...]  # (step, markers in the text = fragments it costs, decoded)
    shaped: tuple[tuple[str, str, int], ...]  # (step, decoded, size): the whole text as hex or base64
    tokens: int  # embedded base64/hex tokens tried, one fragment each
    token_hits: tuple[tuple[int, str, str, int], ...]  # (token index, step, decoded, size)


@lru_cache(maxsize=4096)
def _short_text_decodings(text: str) -> _TextDecodings:
    # A pure function of the text (the budgets are charged by the caller), and short strings repeat: keys, values,
    # commands. Decoded values are strings, so sharing them is safe.
    marked: tuple[tuple[str, int, str | None], ...] = ()
    if "%" in text or "&" in text or "\\" in text:
        marked = tuple(
            (step, text.count(marker), decoder(text)) for step, marker, decoder in _MARKED_DECODERS if marker in text
        )
    if not may_encode_text(text):
        return _TextDecodings(marked, (), 0, ())
    shaped = []
    for step, decoder in _SHAPE_DECODERS:
        decoded = decoder(text)
        if decoded is not None:
            shaped.append((step, decoded, len(decoded)))
    tokens = list(embedded_tokens(text))
    hits = []
    for index, token in enumerate(tokens):
        hit = _decode_token(token)
        if hit is not None:
            hits.append((index, *hit))
    return _TextDecodings(marked, tuple(shaped), len(tokens), tuple(hits))


def _decode_token(token: str) -> tuple[str, str, int] | None:
    """(step, decoded, size) of one embedded token: hex first, then base64."""
    if not may_decode_token(token):
        return None
    decoded = try_hex(token)
    step = "hex"
    if decoded is None:
        decoded, step = try_base64(token), "base64"
    return (step, decoded, len(decoded)) if decoded is not None else None


def _member_path(path: str, key: str) -> str:
    if len(key) <= _PATH_KEY_MAX and key.isascii() and key.isidentifier():
        return f"{path}.{key}"
    shown = key if len(key) <= _PATH_KEY_MAX else key[:_PATH_KEY_MAX] + "..."
    return f"{path}[{json.dumps(shown)}]"  # ASCII-escaped: no bidi or zero-width characters in a printed path


def _has_marker(text: str) -> bool:
    """Could a short string hold JSON, percent-encoding, entities or escapes? (Longer ones are always tried.)"""
    return text[0] in _JSON_START or "%" in text or "&" in text or "\\" in text


def _key_text(key: object) -> str:
    try:
        return str(key)
    except Exception:  # a hostile __str__ on a non-JSON key must not abort the walk
        return "?"


class _Walk:
    """One extraction: the pending stack, what was emitted, and what is left of each budget."""

    __slots__ = (
        "bounds_hit",
        "decoded_left",
        "findings",
        "fragments_left",
        "limits",
        "scan_left",
        "seen",
        "stack",
        "stopped",
        "strings",
    )

    def __init__(self, limits: ExtractionLimits) -> None:
        self.limits = limits
        self.strings: list[ExtractedString] = []
        self.findings: list[Finding] = []
        self.seen: set[tuple[str, str]] = set()  # (path, text) already emitted
        self.bounds_hit: set[str] = set()
        self.stack: list[_Item] = []
        self.scan_left = limits.max_scan_bytes
        self.decoded_left = limits.max_decoded_bytes
        self.fragments_left = limits.max_fragments
        self.stopped = False  # a global bound (strings, scan bytes) was reached: nothing more can be emitted

    def run(self, arguments: object) -> Extraction:
        stack = self.stack
        stack.append((arguments, ROOT, (), 0, 0, False))
        while stack and not self.stopped:
            value, path, chain, depth, decode_depth, is_key = stack.pop()
            if isinstance(value, str):
                self._string(value, path, chain, depth, decode_depth, is_key)
            elif isinstance(value, dict):
                self._object(value, path, chain, depth, decode_depth)
            elif isinstance(value, _SEQUENCES):
                self._array(value, path, chain, depth, decode_depth)
        return Extraction(strings=tuple(self.strings), findings=tuple(self.findings))

    # -- containers ---------------------------------------------------------------------------------------------------

    def _object(self, value: dict, path: str, chain: _Chain, depth: int, decode_depth: int) -> None:
        if depth >= self.limits.max_depth:
            self._bound_depth(path, chain)
            return
        stack = self.stack
        first_child = len(stack)
        key_chain = (*chain, "key")
        command: str | None = None
        command_args: list | str | None = None
        for key, child in reversed(value.items()):  # pushed in reverse so they pop in document order
            name = key if isinstance(key, str) else _key_text(key)
            if isinstance(child, _WALKED):
                stack.append((child, _member_path(path, name), chain, depth + 1, decode_depth, False))
            stack.append((name, path, key_chain, depth + 1, decode_depth, True))
            if len(name) <= 12:
                lowered = name.lower()
                if lowered in COMMAND_KEYS and isinstance(child, str):
                    command = child
                elif lowered in ARGUMENT_KEYS and isinstance(child, (list, str)):
                    command_args = child
        if command is not None and command_args:
            parts = [command_args] if isinstance(command_args, str) else command_args
            if all(isinstance(part, str) for part in parts):
                joined = " ".join([command, *parts])
                stack.insert(first_child, (joined, path, (*chain, "join"), depth, decode_depth, False))  # after members

    def _array(self, value: list | tuple, path: str, chain: _Chain, depth: int, decode_depth: int) -> None:
        if depth >= self.limits.max_depth:
            self._bound_depth(path, chain)
            return
        stack = self.stack
        if len(value) >= 2 and all(isinstance(item, str) for item in value):  # argv split to dodge patterns
            stack.append((" ".join(value), path, (*chain, "join"), depth, decode_depth, False))
        for index in range(len(value) - 1, -1, -1):
            item = value[index]
            if isinstance(item, _WALKED):
                stack.append((item, f"{path}[{index}]", chain, depth + 1, decode_depth, False))

    # -- strings ------------------------------------------------------------------------------------------------------

    def _string(self, raw: str, path: str, chain: _Chain, depth: int, decode_depth: int, is_key: bool) -> None:
        if not raw:
            return
        if raw.isascii() and len(raw) <= self.scan_left:  # the common case: nothing to normalise, nothing to cut
            if self._emit(path, raw, chain, is_key) and (len(raw) >= _MIN_ENCODED_LEN or _has_marker(raw)):
                self._decode(raw, raw, path, chain, depth, decode_depth, is_key)
            return
        cut = len(raw) > self.scan_left
        sent = raw[: self.scan_left] if cut else raw
        readable, shown, read_chain, shown_chain = sent, sent, chain, chain
        if not sent.isascii():
            readable = normalize(sent, self.scan_left)
            if readable != sent:
                read_chain = shown_chain = (*chain, "normalize")
            if len(readable) > self.scan_left:  # NFKC can expand (one ligature -> up to 18 characters)
                readable, cut = readable[: self.scan_left], True
            shown = fold_confusables(readable)
            if shown != readable:
                shown_chain = (*read_chain, "confusables")
        emitted = bool(shown) and self._emit(path, shown, shown_chain, is_key)
        if cut:
            self._bound_scan(path, shown_chain)
        elif emitted or not shown:  # nothing visible is left, but tag characters may still hide a message
            self._decode(sent, readable, path, read_chain, depth, decode_depth, is_key)

    def _emit(self, path: str, text: str, chain: _Chain, is_key: bool) -> bool:
        """Record one string unless this (path, text) was already emitted; False when it was not recorded."""
        key = (path, text)
        if key in self.seen:
            return False
        if len(self.strings) >= self.limits.max_strings:
            self._bound(
                "strings", path, chain, f"more than {self.limits.max_strings} strings; the rest were not scanned"
            )
            self.stopped = True
            return False
        self.seen.add(key)
        string = _new_object(ExtractedString)
        set_path, set_text, set_chain, set_is_key = _STRING_SLOTS
        set_path(string, path)
        set_text(string, text)
        set_chain(string, chain)
        set_is_key(string, is_key)
        self.strings.append(string)
        self.scan_left -= len(text)
        return True

    def _decode(
        self, sent: str, text: str, path: str, chain: _Chain, depth: int, decode_depth: int, is_key: bool
    ) -> None:
        """Queue every decoding of `text` (and of the tag characters in `sent`) to be emitted and decoded in turn."""
        found: list[tuple[str, object, int]] = []  # (step, decoded value, decoded size)
        # Each decoder checks its own shape; the character tests here only save the calls for plain text.
        is_json = False
        if text and text[0] in _JSON_START and json_shaped(text):
            if len(text) > self.decoded_left:
                self._bound_decoded(path, chain)
            else:
                value = try_json(text)
                if value is TOO_DEEP:
                    self._bound_depth(path, (*chain, "json"))
                elif value is not NOT_JSON:
                    found.append(("json", value, len(text)))
                    is_json = True
        # JSON text's escapes are decoded by the parser; its strings are walked one by one. Most strings hold no
        # marker and no mixed case or digits: no text decoder could read them, and there is nothing to charge.
        decodable = bool(text) and not is_json and ("%" in text or "&" in text or "\\" in text or may_encode_text(text))
        if decodable and len(text) <= MAX_CACHED_DECODE_CHARS:
            self._replay(_short_text_decodings(text), path, chain, found)
        elif decodable:
            # Long text: each decoder runs only once the budget has paid for it (hostile input is mostly long).
            for step, marker, decoder in _MARKED_DECODERS:
                if marker in text and self._charge_fragments(text.count(marker), path, chain):
                    decoded = decoder(text)
                    if decoded is not None:
                        found.append((step, decoded, len(decoded)))
            if may_encode_text(text):
                for step, decoder in _SHAPE_DECODERS:
                    decoded = decoder(text)
                    if decoded is not None:
                        found.append((step, decoded, len(decoded)))
                self._embedded(text, path, chain, found)
        if not sent.isascii():
            tags = count_unicode_tags(sent)
            if tags and self._charge_fragments(tags, path, chain):
                hidden = try_unicode_tags(sent)
                if hidden is not None:
                    found.append(("tags", hidden, len(hidden)))
        if not found:
            return
        if decode_depth >= self.limits.max_decode_depth:
            self._bound(
                "decode_depth",
                path,
                chain,
                f"more than {self.limits.max_decode_depth} encodings stacked on one string; "
                "the innermost layers were not decoded",
            )
            return
        for step, decoded, size in reversed(found):  # reversed: they pop in the order found
            if size > self.decoded_left:
                self._bound_decoded(path, chain)
                continue
            self.decoded_left -= size
            # A decoded key is still the key; the members of JSON decoded from a key are ordinary values.
            self.stack.append((decoded, path, (*chain, step), depth, decode_depth + 1, is_key and step != "json"))

    def _replay(self, decodings: _TextDecodings, path: str, chain: _Chain, found: list[_Decoded]) -> None:
        """Use the decodings of a short text, charging the budget exactly as decoding it here would."""
        for step, count, decoded in decodings.marked:
            if self._charge_fragments(count, path, chain) and decoded is not None:
                found.append((step, decoded, len(decoded)))
        found.extend(decodings.shaped)
        covered = min(decodings.tokens, self.fragments_left)
        self.fragments_left -= covered
        found.extend((step, decoded, size) for index, step, decoded, size in decodings.token_hits if index < covered)
        if decodings.tokens > covered:
            self._charge_fragments(1, path, chain)  # the first token the budget does not cover: reports the bound

    def _embedded(self, text: str, path: str, chain: _Chain, found: list[tuple[str, object, int]]) -> None:
        """Base64/hex tokens inside longer text (`echo cm0g... | base64 -d | sh`). Each attempt is one fragment: the
        attempts, not only the successes, are the work an attacker can multiply."""
        # Charged in one go for the tokens the budget covers (one more is read to know if it runs out: then that
        # token's charge fails and reports the bound, as charging one by one would).
        tokens = list(islice(embedded_tokens(text), self.fragments_left + 1))
        covered = min(len(tokens), self.fragments_left)
        self.fragments_left -= covered
        for token in tokens[:covered]:
            decoded = _decode_token(token)
            if decoded is not None:
                found.append(decoded)
        if len(tokens) > covered:
            self._charge_fragments(1, path, chain)

    # -- bounds -------------------------------------------------------------------------------------------------------

    def _bound(self, kind: str, path: str, chain: _Chain, message: str) -> None:
        if kind in self.bounds_hit:  # one finding per kind of bound: the first place it was hit
            return
        self.bounds_hit.add(kind)
        self.findings.append(
            Finding(
                scanner="extract",
                category=BOUND_CATEGORY,
                severity=Severity.MEDIUM,
                path=path,
                chain=chain,
                message=message,
            )
        )

    def _bound_depth(self, path: str, chain: _Chain) -> None:
        self._bound(
            "depth",
            path,
            chain,
            f"arguments nest deeper than {self.limits.max_depth} levels; the deeper values were not scanned",
        )

    def _bound_scan(self, path: str, chain: _Chain) -> None:
        self._bound(
            "scan_bytes",
            path,
            chain,
            f"more than {self.limits.max_scan_bytes} characters of text; the rest was not scanned",
        )
        self.stopped = True

    def _charge_fragments(self, count: int, path: str, chain: _Chain) -> bool:
        """Take `count` fragments from the budget; False (and a finding) when there are not that many left."""
        if count > self.fragments_left:
            self._bound(
                "fragments",
                path,
                chain,
                f"more than {self.limits.max_fragments} escape sequences or encoded tokens; some were not decoded",
            )
            return False
        self.fragments_left -= count
        return True

    def _bound_decoded(self, path: str, chain: _Chain) -> None:
        self._bound(
            "decoded_bytes",
            path,
            chain,
            f"decoding would produce more than {self.limits.max_decoded_bytes} bytes; some values were not decoded",
        )
