"""The values a policy condition computes with, and the error value that stands for "cannot tell".

A condition evaluates to a JSON value, a `Severity`, a `DurationValue`, or an `EvalError`. The error value is how the
language fails closed (spec, semantics 4-5): a missing argument, a type mismatch or an unknown probe score is an
`EvalError` that every operator propagates, never `null` and never `false`. It has no truth value: `if err:` raises
`TypeError`, so code that forgets to test for it fails loudly in tests instead of silently treating it as false.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aegis_proxy.models import Severity

if TYPE_CHECKING:  # only for the type of `EvalError.span`
    from aegis_proxy.policy.ast import Span


class EvalError:
    """Why a (sub)expression has no value, and where it was written. Immutable; compared by identity."""

    __slots__ = ("reason", "span")

    reason: str
    span: Span | None

    def __init__(self, reason: str, span: Span | None = None) -> None:
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "span", span)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("EvalError is immutable")

    def __bool__(self) -> bool:
        raise TypeError("an EvalError has no truth value: test `is_error(value)` before using a value as a boolean")

    def __repr__(self) -> str:
        return f"EvalError({self.reason!r}, {self.span})" if self.span else f"EvalError({self.reason!r})"

    def __str__(self) -> str:
        return f"{self.reason} (at {self.span})" if self.span else self.reason


def is_error(value: object) -> bool:
    return type(value) is EvalError


@dataclass(frozen=True, slots=True, order=True)
class DurationValue:
    """A duration literal (`10m`), kept apart from numbers so `within = 600` is not silently read as seconds."""

    seconds: float
    text: str = ""

    def __str__(self) -> str:
        return self.text or f"{self.seconds:g}s"


# Kind names, used in messages ("`<` needs two numbers, got string and number") and by the operators below.
NULL: Final = "null"
BOOL: Final = "boolean"
NUMBER: Final = "number"
STRING: Final = "string"
LIST: Final = "list"
OBJECT: Final = "object"
SEVERITY: Final = "severity"
DURATION: Final = "duration"
ERROR: Final = "error"
OTHER: Final = "value"

_KINDS: Final[Mapping[type, str]] = {
    type(None): NULL,
    bool: BOOL,
    int: NUMBER,
    float: NUMBER,
    str: STRING,
    list: LIST,
    tuple: LIST,
    dict: OBJECT,
    Severity: SEVERITY,
    DurationValue: DURATION,
    EvalError: ERROR,
}


def kind(value: object) -> str:
    """The language's type of a Python value. `bool` and `Severity` are ints to Python but not to the policy."""
    return _KINDS.get(type(value), OTHER)


def is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


def show(value: object, limit: int = 60) -> str:
    """A short rendering of a value for messages; request content is cut, never printed whole."""
    if isinstance(value, Severity):
        text = value.label
    elif value is None:
        text = "null"
    elif value is True or value is False:
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def equal(left: object, right: object) -> bool:
    """`==`: same kind and same value; numbers compare numerically (1 == 1.0), nothing else crosses kinds."""
    left_kind, right_kind = kind(left), kind(right)
    if left_kind != right_kind:
        return False
    if left_kind == LIST:
        assert isinstance(left, Sequence) and isinstance(right, Sequence)
        return len(left) == len(right) and all(equal(a, b) for a, b in zip(left, right, strict=True))
    if left_kind == OBJECT:
        assert isinstance(left, Mapping) and isinstance(right, Mapping)
        return left.keys() == right.keys() and all(equal(left[key], right[key]) for key in left)
    if left_kind == NUMBER and (isinstance(left, float) and math.isnan(left)):
        return False
    return left == right


def ordered(left: object, right: object) -> bool:
    """Whether `<`, `<=`, `>`, `>=` are defined between the two: numbers, strings, severities or durations."""
    left_kind = kind(left)
    return left_kind in (NUMBER, STRING, SEVERITY, DURATION) and left_kind == kind(right)
