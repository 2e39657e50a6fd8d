from __future__ import annotations

import pytest

from aegis_proxy.proxy.wire import WireError, blocked_text, dump_json, load_json


def _nested(depth: int) -> object:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
        ('{"emoji": "\\ud83d\\ude00", "é": "ü"}'.encode(), {"emoji": "😀", "é": "ü"}),
        ('"plain"', "plain"),
        (b"[" * 500 + b"]" * 500, _nested(500)),
    ],
    ids=["types", "escaped-pair-and-unicode", "str-input", "moderate-nesting"],
)
def test_load_json_reads_plain_json(body: bytes | str, value: object) -> None:
    assert load_json(body, "body") == value


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1', "invalid JSON"),
        (b"\xff{}", "not UTF-8"),
        (b"\xef\xbb\xbf{}", "invalid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
        (b'{"n": ' + b"9" * 5000 + b"}", "body"),
    ],
    ids=[
        "duplicate-key",
        "nan",
        "infinity",
        "truncated",
        "not-utf8",
        "bom",
        "deep",
        "lone-surrogate",
        "surrogate-key",
        "huge-int",
    ],
)
def test_load_json_refuses_what_parsers_read_differently(body: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        load_json(body, "body")


def test_dump_json_is_compact_and_keeps_unicode() -> None:
    assert dump_json({"a": ["ü", 1]}) == '{"a":["ü",1]}'
    with pytest.raises(ValueError):
        dump_json({"x": float("nan")})


@pytest.mark.parametrize(
    ("tool", "message", "text"),
    [
        ("run_shell", "destructive command", "[aegis-proxy blocked tool call `run_shell`: destructive command]"),
        ("run_shell", "  ", "[aegis-proxy blocked tool call `run_shell`]"),
    ],
)
def test_blocked_text(tool: str, message: str, text: str) -> None:
    assert blocked_text(tool, message) == text
