"""`explain`: every candidate rule with what it did for one call, and the sub-expression that decided it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aegis_proxy.errors import InputError
from aegis_proxy.policy.explain import explain_line
from aegis_proxy.policy.loader import load_policy

POLICY = """default deny
rule secrets: deny read_file when finding(paths.sensitive) priority 10 message "no secrets"
rule workspace: allow read_file when args.path startswith "/workspace/" and not args.path contains ".."
rule sized: allow read_file when args.limit < 100
rule scored: allow read_file when risk < 0.2
rule broad: deny read_* when args.path endswith ".log"
rule other: allow write_file
"""


def explain(tmp_path: Path, **arguments: object) -> object:
    path = tmp_path / "p.aegis"
    path.write_text(POLICY)
    line = json.dumps({"id": "c1", "tool": "read_file", "arguments": arguments})
    return explain_line(load_policy(path), line)


def test_every_candidate_is_explained(tmp_path: Path) -> None:
    explanation = explain(tmp_path, path="/workspace/app/debug.log", limit="all")
    assert explanation.decision.effect.value == "deny"
    assert explanation.decision.rules == ("broad",)
    why = {item.outcome.rule.id: (item.outcome.status, item.why) for item in explanation.rules}
    assert list(why) == [
        "secrets",
        "broad",
        "workspace",
        "sized",
        "scored",
    ]  # evaluation order; `other` is not a candidate
    assert why["broad"] == ("won", "condition is true")
    assert why["workspace"] == ("lost", "matched, but lost to broad")
    assert why["sized"] == (
        "error",
        "error in `args.limit < 100`: `<` cannot compare string with number; an allow rule does not match on error",
    )
    assert why["scored"][0] == "error" and "risk score is unknown" in why["scored"][1]
    status, text = why["secrets"]
    assert status == "false" and text == "`finding(paths.sensitive)` is false"
    assert explanation.evaluation.not_candidates == 1


def test_the_first_false_conjunct_is_named(tmp_path: Path) -> None:
    explanation = explain(tmp_path, path="/workspace/../etc/hosts", limit=500)
    why = {item.outcome.rule.id: item.why for item in explanation.rules}
    assert why["workspace"] == '`not args.path contains ".."` is false'
    assert why["sized"] == "`args.limit < 100` is false"
    assert explanation.decision.rules == ("default",)


def test_a_fail_closed_deny_says_so(tmp_path: Path) -> None:
    explanation = explain(tmp_path, file="/x")  # no `path`: broad's condition is an error, and a deny matches
    item = next(item for item in explanation.rules if item.outcome.rule.id == "broad")
    assert item.outcome.status == "won"
    assert item.why == (
        "error in `args.path`: args.path is missing; a deny/ask rule matches when its condition is an error"
    )
    assert any("broad: args.path is missing" in error for error in explanation.decision.errors)


def test_rendering(tmp_path: Path) -> None:
    text = explain(tmp_path, path="/etc/shadow").render()
    lines = text.splitlines()
    assert lines[0] == "decision: deny by secrets"
    assert lines[1] == "message: no secrets"
    assert lines[2].startswith("policy: sha256:") and lines[2].endswith("(1 file)")
    assert any(line.startswith("  ") and "paths.sensitive" in line for line in lines)
    assert "rules (5 apply to this tool, 1 do not), in evaluation order:" in lines
    assert "  won    secrets    deny   priority 10    " in text
    assert '         -> `args.path endswith ".log"` is false' in text
    assert lines[-1].startswith("default: deny (declared at ") and lines[-1].endswith("; not used")


def test_a_line_that_is_not_a_call_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "p.aegis"
    path.write_text(POLICY)
    with pytest.raises(InputError):
        explain_line(load_policy(path), '{"id": "x"}')
