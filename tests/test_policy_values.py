"""The policy's value domain: the error value has no truth value, kinds never cross, equality is type-strict."""

from __future__ import annotations

import pytest

from aegis_proxy.models import Severity
from aegis_proxy.policy.ast import Span
from aegis_proxy.policy.values import (
    BOOL,
    DURATION,
    ERROR,
    LIST,
    NULL,
    NUMBER,
    OBJECT,
    SEVERITY,
    STRING,
    DurationValue,
    EvalError,
    equal,
    is_error,
    kind,
    ordered,
    show,
)

SPAN = Span("p.aegis", 3, 7)


def test_error_value_has_no_truth_value() -> None:
    error = EvalError("args.x is missing", SPAN)
    with pytest.raises(TypeError, match="no truth value"):
        bool(error)
    with pytest.raises(TypeError):
        if error:  # the mistake this guards against
            pass
    with pytest.raises(TypeError):
        _ = not error


def test_error_value_is_immutable_and_says_where() -> None:
    error = EvalError("args.x is missing", SPAN)
    with pytest.raises(AttributeError):
        error.reason = "other"  # type: ignore[misc]
    assert str(error) == "args.x is missing (at p.aegis:3:7)"
    assert "args.x is missing" in repr(error)
    assert is_error(error) and not is_error(None) and not is_error(False)
    assert error != EvalError("args.x is missing", SPAN)  # identity: two errors are two facts


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, NULL),
        (True, BOOL),
        (False, BOOL),
        (0, NUMBER),
        (1.5, NUMBER),
        ("", STRING),
        ([], LIST),
        ((), LIST),
        ({}, OBJECT),
        (Severity.HIGH, SEVERITY),
        (DurationValue(60, "1m"), DURATION),
        (EvalError("x"), ERROR),
    ],
    ids=["null", "true", "false", "int", "float", "str", "list", "tuple", "dict", "severity", "duration", "error"],
)
def test_kinds(value: object, expected: str) -> None:
    assert kind(value) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("a", "a", True),
        ("a", "A", False),
        (1, 1.0, True),
        (1, True, False),  # booleans are not numbers
        (0, False, False),
        (Severity.HIGH, 3, False),  # severities are not numbers
        (Severity.HIGH, Severity.HIGH, True),
        (None, None, True),
        (None, "", False),
        (None, False, False),
        (["a", 1], ("a", 1), True),
        (["a", 1], ["a", True], False),
        ([["x"]], [["x"]], True),
        ({"a": [1]}, {"a": [1]}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": 1}, {"a": True}, False),
        (float("nan"), float("nan"), False),
        ("1", 1, False),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_equality_is_type_strict(left: object, right: object, expected: bool) -> None:
    assert equal(left, right) is expected
    assert equal(right, left) is expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (1, 2.5, True),
        ("a", "b", True),
        (Severity.LOW, Severity.HIGH, True),
        (DurationValue(1), DurationValue(2), True),
        (True, False, False),
        (1, "2", False),
        (Severity.LOW, 1, False),
        (None, None, False),
        ([1], [2], False),
        (DurationValue(60), 60, False),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_which_kinds_are_ordered(left: object, right: object, expected: bool) -> None:
    assert ordered(left, right) is expected


def test_durations_order_by_seconds_and_show_as_written() -> None:
    assert DurationValue(60, "1m") < DurationValue(3600, "1h")
    assert str(DurationValue(600, "10m")) == "10m"
    assert str(DurationValue(90)) == "90s"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Severity.CRITICAL, "critical"),
        (None, "null"),
        (True, "true"),
        ("hi", "'hi'"),
        (3, "3"),
        ("x" * 500, "'" + "x" * 56 + "..."),
    ],
    ids=["severity", "null", "bool", "string", "number", "long-string-cut"],
)
def test_show(value: object, expected: str) -> None:
    assert show(value) == expected
