"""Undo the encodings and visual tricks attackers wrap around a payload.

Each `try_*` function takes one string and returns what it decodes to, or None when it declines. Declining is the
normal case (almost every argument is plain text), so every function opens with a shape check made of a few C-level
string operations and does real work only when the input could be its encoding. A decoder also declines when the
result would not be readable text: decoding an ordinary word ("password"), an id or a hash as base64 or hex gives
random bytes, and handing those to the scanners only adds noise.

All of them accept any `str` (lone surrogates, megabytes, control characters) and never raise. Their cost is linear
in the input; the per-character Python work is confined to loops over the pieces between escape characters.

We avoid regexes here: the RE2 wrapper costs several microseconds per call even on short strings (about the cost
of extracting a whole small call), and Python's `re` must not run on attacker text. The one RE2 pattern
(mixed-script detection) runs only on text that already holds both Latin letters and look-alike letters.
"""

from __future__ import annotations

import binascii
import codecs
import json
import string
import unicodedata
from collections.abc import Iterator
from html.entities import html5 as _HTML5_ENTITIES
from typing import Final

from pydantic import JsonValue

from aegis_proxy.safe_regex import compile_pattern


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NOT_JSON: Final = _Sentinel("NOT_JSON")  # try_json: the text is not a JSON object or array
TOO_DEEP: Final = _Sentinel("TOO_DEEP")  # try_json: the text nests deeper than the parser can follow

# ---------------------------------------------------------------------------------------------------------------------
# Plausible text: the gate every byte-producing decoder (base64, hex) passes its output through.

_CONTROL_BYTES: Final = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])  # all but \t \n \r
_SHORT_TEXT: Final = 64  # up to this many bytes, a single control byte marks the result as binary
_HIGH_BYTES: Final = bytes(range(0x80, 0x100))
_SHORT_NON_ASCII: Final = 32  # a decoded result this short must be ASCII; longer ones at least 75% ASCII


def plausible_text(data: bytes, *, partial: bool = False) -> str | None:
    """`data` as text if it reads as text: strict UTF-8 (or UTF-16LE, as PowerShell -EncodedCommand uses) with
    almost no control characters, mostly ASCII. `partial` allows a character cut off at the end (a decoded prefix).

    Declines empty input, invalid UTF-8, control characters (other than tab and line breaks) in short results or in
    more than 2% of long ones, and non-ASCII characters in results up to 32 characters or in more than a quarter of
    longer ones: the marks of random bytes, hashes read as base64, and binary files such as images and archives.
    Text mostly in a non-Latin script is therefore not decoded from base64 or hex (a known gap; attacks we look for
    are commands, URLs and English instructions).
    """
    if not data:
        return None
    if b"\x00" in data and len(data) >= 4 and data[1::2].count(0) * 10 >= (len(data) // 2) * 9:
        # Mostly-ASCII UTF-16LE: every second byte is zero.
        text, _ = codecs.utf_16_le_decode(data, "replace", not partial)
        data = text.encode("utf-8", "surrogatepass")
    elif data.isascii():
        text = data.decode("ascii")
    else:
        # "replace" instead of catching UnicodeDecodeError: random bytes are the common case here, and raising costs
        # more than the whole check. A U+FFFD in the result means the bytes were not UTF-8.
        text, _ = codecs.utf_8_decode(data, "replace", not partial)
    if "\ufffd" in text:
        return None
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if controls and (len(data) <= _SHORT_TEXT or controls * 50 > len(data)):
        return None
    if not text.isascii():
        # Random bytes that happen to be valid UTF-8 come out as a few scattered CJK/Arabic/Hebrew characters
        # ("Semantic" read as base64); real payloads are commands and prose, mostly ASCII.
        non_ascii = len(text) - len(data.translate(None, _HIGH_BYTES))
        if len(text) <= _SHORT_NON_ASCII or non_ascii * 4 > len(text):
            return None
    return text or None


# ---------------------------------------------------------------------------------------------------------------------
# Base64 and hex: whole-string encodings of bytes.

_B64_MIN_LEN: Final = 8  # "cm0gLXJm" is "rm -rf"; shorter strings are ordinary words far more often than base64
_B64_MIN_ALPHA_LEN: Final = 12  # letters only (no digit, no +/=) and shorter: a camelCase or Titlecase word
_B64_PREFIX_CHARS: Final = 256  # decode this much first, so binary payloads (images) are declined cheaply
_B64_STD: Final = string.ascii_letters + string.digits + "+/"
_B64_ANY: Final = _B64_STD + "-_="
_URL_TO_STD: Final = str.maketrans("-_", "+/")
_HEX_DIGITS: Final = string.hexdigits
_HEX_FORM: Final = _HEX_DIGITS + "xX\\ ,:"  # 0x72 0x6d, \x72\x6d, 72:6d, 72 6d
_HEX_MIN_DIGITS: Final = 8
_HEX_MIN_BARE_DIGITS: Final = 16  # "rm -rf /" is 16 digits
_DIGITS: Final = frozenset(string.digits)


def _mixed_case(text: str) -> bool:
    """Base64 of text is mixed-case; words, identifiers in one case, numbers and hex hashes are not."""
    # Neither all-lower nor all-upper also holds for text with no letters at all ("%41%41"): rule that out too.
    return not text.islower() and not text.isupper() and text.swapcase() != text


def may_encode_text(text: str) -> bool:
    """Cheap gate for `try_base64`, `try_hex` and `embedded_tokens`: False means all three would decline.

    Base64 of text is mixed-case and hex of ASCII text has digits (the high nibble of every byte is 2-7), so
    single-case text without digits (`ls -la /tmp`, most prose, paths and identifiers) is skipped in well under 1 µs.
    """
    # Not all-lower and not all-upper: mixed case, or no letters at all (then base64 still declines, but it is rare
    # enough not to be worth the extra check here).
    return len(text) >= _B64_MIN_LEN and ((not text.islower() and not text.isupper()) or not _DIGITS.isdisjoint(text))


def try_base64(text: str) -> str | None:
    """Decode standard or URL-safe base64, padded or not, MIME line breaks allowed; also `data:...;base64,` URLs.

    Declines when: shorter than 8 characters; any character outside the alphabets (spaces, dots); both alphabets
    mixed; misplaced padding; an impossible length; not mixed-case (plain words, SHOUTING_IDS, digits, hex hashes);
    letters only and shorter than 12 (camelCase and Titlecase words); or the decoded bytes are not plausible text
    (see `plausible_text`).
    """
    if text.startswith("data:"):
        head, sep, body = text.partition(",")
        return try_base64(body) if sep and head.endswith(";base64") else None
    if len(text) < _B64_MIN_LEN:
        return None
    if "\n" in text:
        text = text.replace("\r", "").replace("\n", "")
    if text.strip(_B64_ANY) or not _mixed_case(text):  # strip() leaves something if a character is outside the set
        return None
    body = text.rstrip("=")
    if len(text) - len(body) > 2 or "=" in body or len(body) % 4 == 1:
        return None
    if len(body) < _B64_MIN_ALPHA_LEN and body.isalpha():  # "Installs", "endsWith": words, not base64
        return None
    url_safe = "-" in body or "_" in body
    if url_safe:
        if "+" in body or "/" in body:
            return None
        body = body.translate(_URL_TO_STD)
    body += "=" * (-len(body) % 4)
    try:
        if (
            len(body) > _B64_PREFIX_CHARS
            and plausible_text(binascii.a2b_base64(body[:_B64_PREFIX_CHARS]), partial=True) is None
        ):
            return None
        return plausible_text(binascii.a2b_base64(body))
    except (binascii.Error, ValueError):
        return None


def try_hex(text: str) -> str | None:
    """Decode hex-encoded bytes: `726d202d7266202f`, `0x726d...`, `72 6d 20`, `72:6d:20`, `\\x72\\x6d`, `0x72,0x6d`.

    Declines when: any character other than hex digits and those markers; an odd digit count; only decimal digits
    (a number); fewer than 16 digits when bare (short hex ids and commit prefixes read as printable bytes too
    often), or 8 with an explicit marker; or the bytes are not plausible text (hashes, UUIDs, MAC addresses
    decode to random bytes).
    """
    if len(text) < _HEX_MIN_DIGITS or text[0] not in _HEX_FORM or text.strip(_HEX_FORM):
        return None
    digits = text
    minimum = _HEX_MIN_BARE_DIGITS
    if digits.strip(_HEX_DIGITS):  # separators or prefixes present: someone meant this as hex
        for mark in ("\\x", "0x", "0X", " ", ",", ":"):
            digits = digits.replace(mark, "")
        if digits.strip(_HEX_DIGITS):
            return None
        minimum = _HEX_MIN_DIGITS
    if len(digits) < minimum or len(digits) % 2 or digits.isdigit():
        return None
    return plausible_text(bytes.fromhex(digits))


# ---------------------------------------------------------------------------------------------------------------------
# Percent-encoding, HTML entities, backslash escapes: encodings embedded in otherwise plain text.

_HEX_PAIR: Final = {  # b"6d", b"6D" -> b"m": the table that percent-decoding looks pairs up in
    (high + low).encode(): bytes([int(high + low, 16)]) for high in _HEX_DIGITS for low in _HEX_DIGITS
}


def try_percent(text: str) -> str | None:
    """Decode one round of percent-encoding (`%72%6d` -> `rm`); bytes are read as UTF-8, invalid ones become U+FFFD.

    Declines when there is no `%` followed by two hex digits. One round only: the caller decodes the result again,
    so `%2572` takes two steps and the chain shows how deep the encoding was. `+` is left alone (it is a space only
    in form bodies, and a plus in paths and base64).
    """
    if "%" not in text:
        return None
    data = text.encode("utf-8", "surrogatepass")
    pieces = data.split(b"%")
    pair = _HEX_PAIR.get
    out = [pieces[0]]
    for piece in pieces[1:]:
        byte = pair(piece[:2])
        out.append(b"%" + piece if byte is None else byte + piece[2:])
    decoded = b"".join(out)
    return None if decoded == data else decoded.decode("utf-8", "replace")


_ENTITY_NAME_MAX: Final = 32


def _numeric_entity(piece: str) -> tuple[str, int] | None:
    """`#114;` / `#x72;` / `#114` at the start of `piece` -> (character, length consumed)."""
    hexadecimal = piece[1:2] in ("x", "X")
    start = 2 if hexadecimal else 1
    allowed = _HEX_DIGITS if hexadecimal else string.digits
    end = start
    while end < len(piece) and end - start < 10 and piece[end] in allowed:
        end += 1
    if end == start:
        return None
    code = int(piece[start:end], 16 if hexadecimal else 10)
    if piece[end : end + 1] == ";":
        end += 1
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return "\ufffd", end
    return chr(code), end


def try_html(text: str) -> str | None:
    """Decode HTML character references: named (`&lt;`, `&sol;`), decimal (`&#114;`) and hex (`&#x72;`).

    Named references need their `;` (so `?a=1&copy=2` in a URL stays as it is); numeric ones may omit it, as
    browsers allow. Declines when there is no `&` or nothing decodes.
    """
    if "&" not in text:
        return None
    pieces = text.split("&")
    out = [pieces[0]]
    changed = False
    for piece in pieces[1:]:
        decoded: tuple[str, int] | None = None
        if piece[:1] == "#":
            decoded = _numeric_entity(piece)
        else:
            end = piece.find(";", 0, _ENTITY_NAME_MAX)
            if end > 0:
                value = _HTML5_ENTITIES.get(piece[: end + 1])
                if value is not None:
                    decoded = value, end + 1
        changed |= _rejoin(out, "&", piece, decoded)
    return "".join(out) if changed else None


def _rejoin(out: list[str], marker: str, piece: str, decoded: tuple[str, int] | None) -> bool:
    """Append the text that followed a `marker` split: decoded (value, then the rest of the piece) or as written.
    True when it was decoded. `decoded` is (value, characters of `piece` it replaces)."""
    if decoded is None:
        out.append(marker)
        out.append(piece)
        return False
    out.append(decoded[0])
    out.append(piece[decoded[1] :])
    return True


_OCTAL: Final = "01234567"


def _unicode_escape(piece: str) -> tuple[str, int] | None:
    """`u0072`, `U00000072`, `u{72}` at the start of `piece` -> (code point as str, length consumed)."""
    kind = piece[:1]
    if kind == "u" and piece[1:2] == "{":
        end = piece.find("}", 2, 10)
        digits = piece[2:end] if end > 2 else ""
        consumed = end + 1
    else:
        width = 4 if kind == "u" else 8
        digits = piece[1 : 1 + width]
        consumed = 1 + width
        if len(digits) != width:
            return None
    if not digits or digits.strip(_HEX_DIGITS):
        return None
    code = int(digits, 16)
    if code > 0x10FFFF:
        return None
    return chr(code), consumed


def try_escapes(text: str) -> str | None:
    """Decode backslash escapes: `\\xNN` and 3-digit octal `\\NNN` (bytes, read as UTF-8 when consecutive ones form
    a character, else Latin-1), `\\uXXXX` (surrogate pairs joined), `\\UXXXXXXXX` and `\\u{X...}`.

    Declines when there is no backslash or nothing decodes. Other escapes (`\\n`, `\\\\`) are left as written.
    """
    if "\\" not in text:
        return None
    pieces = text.split("\\")
    out: list[str] = [pieces[0]]
    pending = bytearray()  # consecutive byte escapes, decoded together so multi-byte UTF-8 survives
    changed = False
    for piece in pieces[1:]:
        kind = piece[:1]
        if kind == "x" and len(piece) >= 3 and not piece[1:3].strip(_HEX_DIGITS):
            pending.append(int(piece[1:3], 16))
            rest = piece[3:]
        elif kind and kind in "0123" and len(piece) >= 3 and not piece[1:3].strip(_OCTAL):
            pending.append(int(piece[:3], 8))
            rest = piece[3:]
        else:
            if pending:
                out.append(_bytes_to_text(pending))
                pending.clear()
            decoded = _unicode_escape(piece) if kind in ("u", "U") else None
            changed |= _rejoin(out, "\\", piece, decoded)
            continue
        changed = True
        if rest:
            out.append(_bytes_to_text(pending))
            pending.clear()
            out.append(rest)
    if pending:
        out.append(_bytes_to_text(pending))
    if not changed:
        return None
    joined = "".join(out)
    if not joined.isascii():  # join \ud83d\ude00 surrogate pairs; a lone surrogate becomes U+FFFD
        joined = joined.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return joined


def _bytes_to_text(data: bytearray) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ---------------------------------------------------------------------------------------------------------------------
# JSON inside a string.


def json_shaped(text: str) -> bool:
    """True when `text` starts with `{`/`[` and ends with the matching `}`/`]`, ignoring surrounding whitespace."""
    first, last = text[:1], text[-1:]
    if first.isspace():
        first = text.lstrip()[:1]
    if last.isspace():
        last = text.rstrip()[-1:]
    return (first == "{" and last == "}") or (first == "[" and last == "]")


def try_json(text: str) -> JsonValue | _Sentinel:
    """Parse `text` as JSON when it is an object or array: returns the value, NOT_JSON, or TOO_DEEP.

    Declines (NOT_JSON) unless `json_shaped(text)`, or when it does not parse. The parser is recursive in C and
    raises RecursionError on deep nesting ("[" * 10000); that becomes TOO_DEEP, so the caller can report the
    nesting bound instead of crashing.
    """
    if not json_shaped(text):
        return NOT_JSON
    try:
        value = json.loads(text)
    except RecursionError:
        return TOO_DEEP
    except ValueError:  # JSONDecodeError, and integers beyond the digit limit
        return NOT_JSON
    return value if isinstance(value, (dict, list)) else NOT_JSON


# ---------------------------------------------------------------------------------------------------------------------
# Encoded tokens inside longer text: `echo cm0gLXJmIC8= | base64 -d | sh`, `echo 726d202d7266202f | xxd -r -p`.

_EMBEDDED_MIN_LEN: Final = _B64_MIN_LEN
_TOKEN_BYTES: Final = frozenset((_B64_STD + "-_").encode())  # "=" splits too: key=value; padding is optional
_NOT_TOKEN: Final = bytes(b if b in _TOKEN_BYTES else 0x20 for b in range(256))  # everything else splits tokens


def may_decode_token(token: str) -> bool:
    """Cheap gate for one `embedded_tokens` candidate: False means `try_hex` and `try_base64` would both decline it.

    A token holds no `=`, so it is its own base64 body: `try_base64` declines single-case tokens, lengths of 4n+1, and
    letters-only tokens shorter than 12; hex is hex digits (and `x`) only. So words like `summarise`, `Tuesday` or
    `README_FILE` cost a few C-level checks instead of two decode attempts.
    """
    if not token.strip(_HEX_FORM):
        return True  # may be hex
    return not (
        token.islower()
        or token.isupper()
        or len(token) % 4 == 1
        or (len(token) < _B64_MIN_ALPHA_LEN and token.isalpha())
    )


def embedded_tokens(text: str) -> Iterator[str]:
    """Distinct runs of base64/hex characters, at least 8 long, inside `text`: candidates for `try_base64` and
    `try_hex`, lazily (the caller stops when its budget does). None when `text` itself is one such run (decode the
    whole string instead). Gate calls with `may_encode_text`: when it is False no candidate can decode.
    """
    if len(text) < _EMBEDDED_MIN_LEN or not text.strip(_B64_ANY):  # too short, or one run: the whole text
        return
    runs = text.encode("utf-8", "surrogatepass").translate(_NOT_TOKEN).split()
    for run in dict.fromkeys([run for run in runs if len(run) >= _EMBEDDED_MIN_LEN]):  # distinct, in order
        yield run.decode("ascii")


# ---------------------------------------------------------------------------------------------------------------------
# Unicode tag characters: invisible ASCII look-alikes (U+E0020-E007E) used to smuggle instructions to a model.

_TAG_MARKER: Final = b"\xf3\xa0"  # UTF-8 lead bytes of every code point in U+E0000-U+E0FFF


def count_unicode_tags(text: str) -> int:
    """How many characters in U+E0000-U+E0FFF `text` holds (the work `try_unicode_tags` would do); 0 for ASCII."""
    return 0 if text.isascii() else text.encode("utf-8", "surrogatepass").count(_TAG_MARKER)


def try_unicode_tags(text: str) -> str | None:
    """The ASCII message hidden in Unicode tag characters (`hi` + U+E0072 U+E006D -> `rm`); runs joined by spaces.

    Declines when the text holds no tag characters (checked on the UTF-8 bytes, so plain text costs one encode).
    Run it on the text *before* `normalize`, which deletes tag characters as invisible.
    """
    if text.isascii():
        return None
    data = text.encode("utf-8", "surrogatepass")
    if _TAG_MARKER not in data:
        return None
    # Byte level, so the cost is per tag character, not per character of text: U+E0000+n is F3 A0 (80|n>>6) (80|n&3F).
    runs: list[str] = []
    current: list[str] = []
    for piece in data.split(_TAG_MARKER)[1:]:
        code = ((piece[0] & 0x3F) << 6 | (piece[1] & 0x3F)) if len(piece) >= 2 else 0
        if 0x20 <= code <= 0x7E:
            current.append(chr(code))
        ends_run = len(piece) != 2 or not 0x20 <= code <= 0x7E  # text after the tag, or a non-ASCII tag
        if ends_run and current:
            runs.append("".join(current))
            current = []
    if current:
        runs.append("".join(current))
    return " ".join(runs) or None


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation: what a human (or a shell) sees, not what bytes were sent.

_INVISIBLE: Final = (
    "\u00ad"  # soft hyphen
    "\u034f"  # combining grapheme joiner
    "\u061c"  # Arabic letter mark
    "\u115f\u1160\u3164\uffa0"  # Hangul fillers
    "\u17b4\u17b5"  # Khmer inherent vowels
    "\u180b\u180c\u180d\u180e\u180f"  # Mongolian variation selectors and vowel separator
    "\u200b\u200c\u200d\u200e\u200f"  # zero-width space / non-joiner / joiner, LRM, RLM
    "\u202a\u202b\u202c\u202d\u202e"  # bidi embeddings and overrides
    "\u2060\u2061\u2062\u2063\u2064"  # word joiner, invisible operators
    "\u2066\u2067\u2068\u2069"  # bidi isolates
    "\u206a\u206b\u206c\u206d\u206e\u206f"  # deprecated format characters
    "\ufe00\ufe01\ufe02\ufe03\ufe04\ufe05\ufe06\ufe07\ufe08\ufe09\ufe0a\ufe0b\ufe0c\ufe0d\ufe0e\ufe0f"  # variation sel.
    "\ufeff"  # zero-width no-break space (BOM)
    "\U0001bca0\U0001bca1\U0001bca2\U0001bca3"  # shorthand format controls
    "\U0001d173\U0001d174\U0001d175\U0001d176\U0001d177\U0001d178\U0001d179\U0001d17a"  # musical formatting
)
_INVISIBLE_SET: Final = frozenset(_INVISIBLE) | frozenset(chr(c) for c in range(0xE0000, 0xE1000))  # + plane-14 tags
_SHORT: Final = 256  # below this, per-character set checks beat one C-level scan per invisible character


def _strip_plane14(text: str) -> str:
    """Delete U+E0000-U+E0FFF (tags, variation selectors supplement): byte-level split, linear in the input."""
    data = text.encode("utf-8", "surrogatepass")
    if _TAG_MARKER not in data:
        return text
    pieces = data.split(_TAG_MARKER)
    return b"".join([pieces[0], *(piece[2:] for piece in pieces[1:])]).decode("utf-8", "surrogatepass")


def _valid_unicode(text: str) -> str:
    """Lone surrogates (possible in JSON: "\\ud800") become U+FFFD; RE2, the scanners and logs need valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # The UTF-8 codec's error paths are C loops (the UTF-16 ones call back per error); each surrogate comes
        # out as three U+FFFD, one per byte, folded back into one.
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\ufffd\ufffd\ufffd", "\ufffd")
    return text


_NFKC_CHUNK: Final = 1 << 16


def _nfkc(text: str, limit: int | None) -> str:
    """NFKC, in chunks when a `limit` is given: one character can expand to 18 (U+FDFA), so a megabyte of them
    would become 18 MB; we stop once `limit` characters are produced. Chunks end before a space, where no
    composition can span the cut."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    if limit is None or len(text) <= _NFKC_CHUNK:
        return unicodedata.normalize("NFKC", text)
    pieces: list[str] = []
    produced = start = 0
    while start < len(text) and produced < limit:
        end = start + _NFKC_CHUNK
        space = text.find(" ", end, end + 1024)
        end = space if space != -1 else end
        piece = unicodedata.normalize("NFKC", text[start:end])
        pieces.append(piece)
        produced += len(piece)
        start = end
    return "".join(pieces)


def normalize(text: str, limit: int | None = None) -> str:
    """What the text looks like: invisible characters removed, then NFKC (fullwidth `ｒｍ` -> `rm`, `ﬁ` -> `fi`).

    Removes zero-width and bidi controls, soft hyphens, variation selectors, Hangul fillers and tag characters (see
    `_INVISIBLE`); replaces lone surrogates with U+FFFD. ASCII text is returned as it is, at the cost of one check.
    With `limit`, the result may stop early once it is longer than `limit` (the caller keeps only that much).
    """
    if text.isascii():
        return text
    text = _valid_unicode(text)
    if len(text) <= _SHORT:
        if not _INVISIBLE_SET.isdisjoint(text):
            text = "".join(char for char in text if char not in _INVISIBLE_SET)
    else:
        for char in _INVISIBLE:
            if char in text:
                text = text.replace(char, "")
        text = _strip_plane14(text)
    return _nfkc(text, limit)


# Cyrillic and Greek letters that render like Latin ones (a subset of Unicode's confusables.txt, chosen for
# lowercase shell and code text plus the capitals that are exact look-alikes).
_CONFUSABLES: Final = {
    # Cyrillic lowercase
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j",
    "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l",
    # Cyrillic capitals
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "Х": "X", "У": "Y", "Ү": "Y", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W", "Ӏ": "I",
    # Greek lowercase
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
    # Greek capitals
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}  # fmt: skip
_CONFUSABLE_SET: Final = frozenset(_CONFUSABLES)
_FOLD_TABLE: Final = str.maketrans(_CONFUSABLES)
_LOOKALIKES: Final = "".join(_CONFUSABLES)
# Script mixing worth folding: a Latin letter touching a look-alike inside one word ("сurl"), or a word made only of
# look-alikes ("ехес") in text that also has Latin letters (the caller checks that).
_MIXED_SCRIPT: Final = compile_pattern(
    f"[A-Za-z][{_LOOKALIKES}]|[{_LOOKALIKES}][A-Za-z]|(?:^|[^\\pL\\pM])[{_LOOKALIKES}]{{2,}}(?:[^\\pL\\pM]|$)"
)
_LATIN_LETTERS: Final = string.ascii_letters.encode()
_NOT_LATIN: Final = bytes(b for b in range(256) if b not in _LATIN_LETTERS)


def fold_confusables(text: str) -> str:
    """Map Cyrillic/Greek look-alikes to Latin (`сurl` with Cyrillic `с` -> `curl`) when the text mixes scripts.

    Declines (returns `text` unchanged) for ASCII, for text without look-alikes, for text without Latin letters
    (genuine Russian or Greek), and when no word mixes scripts: "Привет, world" is left alone, "рython" is folded.
    When it folds, it folds the whole string. Expects `normalize`d text.
    """
    if text.isascii():
        return text
    if len(text) <= _SHORT:
        if _CONFUSABLE_SET.isdisjoint(text):
            return text
    elif not any(char in text for char in _LOOKALIKES):
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data.translate(None, _NOT_LATIN)) == 0:  # no Latin letter at all: a single-script text
        return text
    try:
        if _MIXED_SCRIPT.search(text) is None:
            return text
    except UnicodeEncodeError:  # lone surrogates (not normalised): RE2 needs UTF-8, and we do not guess
        return text
    if len(text) <= _SHORT:
        return text.translate(_FOLD_TABLE)
    for char, latin in _CONFUSABLES.items():
        if char in text:
            text = text.replace(char, latin)
    return text


__all__ = [
    "NOT_JSON",
    "TOO_DEEP",
    "count_unicode_tags",
    "embedded_tokens",
    "fold_confusables",
    "json_shaped",
    "may_encode_text",
    "normalize",
    "plausible_text",
    "try_base64",
    "try_escapes",
    "try_hex",
    "try_html",
    "try_json",
    "try_percent",
    "try_unicode_tags",
]
