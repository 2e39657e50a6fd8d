from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from aegis_proxy.strict_json import DuplicateKeyError, NotANumberError, loads, object_without_duplicates


@pytest.mark.parametrize(
    ("text", "value"),
    [('{"a": 1, "b": {"a": 2}}', {"a": 1, "b": {"a": 2}}), ("[]", []), ('{"": 0}', {"": 0})],
)
def test_ordinary_objects_pass(text: str, value: object) -> None:
    assert json.loads(text, object_pairs_hook=object_without_duplicates) == value


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 1}',
        '{"x": {"k": 1, "k": 2}}',
        '[{"tool": "a", "tool": "b"}]',
        '{"' + "k" * 100 + '": 1, "' + "k" * 100 + '": 2}',
    ],
    ids=["same-value", "nested", "in-array", "long-key"],
)
def test_duplicate_keys_are_refused_with_the_key_named(text: str) -> None:
    with pytest.raises(DuplicateKeyError, match="duplicate key") as info:
        json.loads(text, object_pairs_hook=object_without_duplicates)
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) < 80  # an attacker's megabyte key is not echoed whole


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"a": 1, "a": 2}', DuplicateKeyError),
        ('[{"k": 1}, {"k": 1, "j": 2, "k": 3}]', DuplicateKeyError),
        ("NaN", NotANumberError),
        ('{"x": Infinity}', NotANumberError),
        ("[-Infinity]", NotANumberError),
        ("\ufeff{}", json.JSONDecodeError),
        ('{"a": 1,}', json.JSONDecodeError),
        ("", json.JSONDecodeError),
        ("[" * 100_000 + "]" * 100_000, RecursionError),
    ],
    ids=[
        "duplicate",
        "duplicate-in-array",
        "nan",
        "infinity",
        "minus-infinity",
        "bom",
        "trailing-comma",
        "empty",
        "deep",
    ],
)
def test_loads_refuses_what_other_parsers_read_differently(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        loads(text)


@pytest.mark.parametrize("text", ['{"a": [1, 2.5, "x", null, true], "b": {"c": {}}}', '"\\u00e9"', "0", "[]"])
def test_loads_reads_plain_json_as_json_loads_does(text: str) -> None:
    assert loads(text) == json.loads(text)


def test_one_decoder_serves_many_threads() -> None:
    documents = [json.dumps({f"k{i}": list(range(i)), "nested": [{"n": i}] * 5}) for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(loads, documents * 20))
    assert results == [json.loads(d) for d in documents * 20]
