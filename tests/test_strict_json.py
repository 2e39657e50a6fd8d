from __future__ import annotations

import json

import pytest

from aegis_proxy.strict_json import DuplicateKeyError, object_without_duplicates


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
