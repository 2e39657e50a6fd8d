"""`aegis policy check|test|explain` and `aegis check --policy`: outputs and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aegis_proxy import cli
from aegis_proxy.cli import POLICY_COMMANDS, build_parser, main

SHELL_LINE = json.dumps({"id": "c1", "tool": "run_shell", "arguments": {"cmd": "ls"}})
EMAIL_LINE = json.dumps({"id": "c2", "tool": "send_email", "arguments": {"to": "a@b.example"}})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def outputs(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("name", [c[0] for c in POLICY_COMMANDS])
def test_every_policy_subcommand_has_an_example(name: str) -> None:
    parser = build_parser()
    policy = next(a for a in parser._actions if a.dest == "command").choices["policy"]  # type: ignore[union-attr]
    sub = next(a for a in policy._actions if a.dest == "group_command").choices[name]
    help_text = sub.format_help()
    assert "Example:" in help_text and f"aegis policy {name}" in help_text


def test_policy_without_a_subcommand_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy"]) == 2
    assert "check" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# aegis check --policy


def test_check_uses_the_given_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = write(tmp_path / "calls.jsonl", SHELL_LINE + "\n" + EMAIL_LINE + "\n")
    first = write(tmp_path / "a.aegis", "default allow\nrule no-shell: deny run_shell\n")
    second = write(tmp_path / "b.aegis", 'default allow\nrule hold-mail: ask send_email message "check"\n')
    assert main(["check", "--policy", str(first), "--policy", str(second), str(calls)]) == 0
    results = outputs(capsys)
    assert [(r["effect"], r["rules"]) for r in results] == [("deny", ["no-shell"]), ("ask", ["hold-mail"])]
    assert results[1]["message"] == "check"


def test_check_refuses_a_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = write(tmp_path / "calls.jsonl", SHELL_LINE + "\n")
    bad = write(tmp_path / "bad.aegis", "default allow\nallow run_shell when args.cmd = 1\n")
    assert main(["check", "--policy", str(bad), str(calls)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was judged with a half-loaded policy
    assert f"{bad}:2:" in captured.err and "hint:" in captured.err


def test_check_uses_policies_default_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = write(tmp_path / "calls.jsonl", SHELL_LINE + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "PROJECT_ROOT", tmp_path / "no-checkout")
    assert main(["check", str(calls)]) == 0
    assert outputs(capsys)[0]["rules"] == ["builtin.allow"]  # no policies anywhere: the built-in table
    write(tmp_path / "policies" / "default.aegis", "default allow\nrule shipped: ask run_shell\n")
    assert main(["check", str(calls)]) == 0
    assert outputs(capsys)[0]["rules"] == ["shipped"]


# --------------------------------------------------------------------------------------------------------------------
# aegis policy check


def test_policy_check_clean_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "p.aegis", 'default deny\nallow x\ntest "t" { call x() expect allow }\n')
    assert main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok (1 rule, 1 test, 1 file, digest ")


def test_policy_check_errors_exit_1_with_located_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good.aegis", "default deny\nallow x\n")
    bad = write(tmp_path / "bad.aegis", "default deny\ndeny x when finding(shel.*)\n")
    assert main(["policy", "check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{good}: ok" in out
    assert f"{bad}:2:" in out and ": error: " in out and "    2 | deny x when finding(shel.*)" in out
    assert f"{bad}: 1 error, 0 warnings" in out


def test_policy_check_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "bad.aegis", "default deny\nblock x\n")
    assert main(["policy", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:2:1: error:" in out and f"{bad}: does not load" in out


def test_policy_check_warnings_fail_only_when_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "p.aegis", "default deny\ndeny * priority 1\nallow read_file\n")
    assert main(["policy", "check", str(path)]) == 0
    assert ": warning: " in capsys.readouterr().out
    assert main(["policy", "check", "--strict", str(path)]) == 1


def test_policy_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(tmp_path / "none.aegis")]) == 1
    assert "cannot read" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# aegis policy test


def test_policy_test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good" / "p.aegis", 'default deny\nallow x\ntest "ok" { call x() expect allow }\n')
    bad = write(tmp_path / "bad" / "p.aegis", 'default deny\nallow x\ntest "no" { call x() expect deny }\n')
    assert main(["policy", "test", str(good)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 passed, 0 failed"
    assert main(["policy", "test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL: {bad}: no (" in out and out.splitlines()[-1] == "1 passed, 1 failed"
    assert main(["policy", "test", str(tmp_path / "nowhere")]) == 2


def test_policy_test_defaults_to_the_policies_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "policies" / "deep" / "p.aegis", 'default deny\nallow x\ntest "ok" { call x() expect allow }\n')
    monkeypatch.chdir(tmp_path)
    assert main(["policy", "test"]) == 0
    assert "PASS: policies/deep/p.aegis: ok (" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# aegis policy explain


def test_policy_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path / "p.aegis", 'default allow\nrule no-shell: deny run_shell when args.cmd != "pwd"\n')
    case = write(
        tmp_path / "case.json", json.dumps({"id": "c", "tool": "run_shell", "arguments": {"cmd": "ls"}}, indent=2)
    )
    assert main(["policy", "explain", "--policy", str(policy), str(case)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("decision: deny by no-shell\n")
    assert "  won    no-shell  deny   priority 100 " in out


def test_policy_explain_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path / "p.aegis", "default allow\nallow x\n")
    case = write(tmp_path / "case.json", "{not json")
    assert main(["policy", "explain", "--policy", str(policy), str(case)]) == 2
    assert "invalid JSON" in capsys.readouterr().err
    assert main(["policy", "explain", "--policy", str(policy), str(tmp_path / "none.json")]) == 2


def test_check_falls_back_to_the_shipped_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = write(tmp_path / "calls.jsonl", SHELL_LINE + "\n")
    monkeypatch.chdir(tmp_path)  # no ./policies here
    write(
        tmp_path / "checkout" / "policies" / "default.aegis", "default allow\nrule shipped-default: audit run_shell\n"
    )
    monkeypatch.setattr(cli, "PROJECT_ROOT", tmp_path / "checkout")
    assert main(["check", str(calls)]) == 0
    assert outputs(capsys)[0]["rules"] == ["shipped-default"]
