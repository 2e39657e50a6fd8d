from __future__ import annotations

import pytest
from pydantic import ValidationError

from aegis_proxy.models import CallContext, Finding, Message, Role, Severity, ToolCall, Trust


@pytest.mark.parametrize(
    ("role", "trust"),
    [
        (Role.SYSTEM, Trust.TRUSTED),
        (Role.USER, Trust.TRUSTED),
        (Role.ASSISTANT, Trust.UNTRUSTED),
        (Role.TOOL, Trust.UNTRUSTED),
        (Role.DOCUMENT, Trust.UNTRUSTED),
    ],
)
def test_only_the_principal_is_trusted(role: Role, trust: Trust) -> None:
    assert Message(role=role, content="x").trust is trust


def test_models_are_frozen_and_strict() -> None:
    call = ToolCall(id="1", tool="t", arguments={"a": [1, "b", None]})
    with pytest.raises(ValidationError):
        call.tool = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ToolCall(id="1", tool="t", unexpected=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ToolCall(id="1", tool="")


@pytest.mark.parametrize(("text", "severity"), [("high", Severity.HIGH), ("CRITICAL", Severity.CRITICAL)])
def test_severity_parse(text: str, severity: Severity) -> None:
    assert Severity.parse(text) is severity


def test_severity_parse_rejects_unknown_with_the_choices() -> None:
    with pytest.raises(ValueError, match="info, low, medium, high, critical"):
        Severity.parse("severe")


def test_severity_orders() -> None:
    assert Severity.INFO < Severity.LOW < Severity.MEDIUM < Severity.HIGH < Severity.CRITICAL


def test_finding_where_joins_the_chain() -> None:
    f = Finding(
        scanner="shell",
        category="shell.destructive",
        severity=Severity.HIGH,
        path="args.cmd",
        chain=("base64", "shell"),
        message="m",
    )
    assert f.where == "args.cmd -> base64 -> shell"
    assert f.summary()["severity"] == "high"


def test_user_request_is_the_last_user_message() -> None:
    ctx = CallContext(
        messages=(
            Message(role=Role.USER, content="first"),
            Message(role=Role.TOOL, content="x"),
            Message(role=Role.USER, content="second"),
        )
    )
    assert ctx.user_request == "second"
    assert CallContext().user_request == ""
