"""The command line: every command documented with an example, exit codes as promised."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_proxy.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def subcommand_parsers() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_every_command_has_help_with_an_example(name: str) -> None:
    help_text = subcommand_parsers()[name].format_help()  # type: ignore[attr-defined]
    assert "Example:" in help_text and f"aegis {name}" in help_text


def test_top_level_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for name, *_ in COMMANDS:
        assert name in text


def test_commands_are_kebab_case() -> None:
    for name, *_ in COMMANDS:
        assert name == name.lower() and "_" not in name


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, object]]:
    """Every runnable command, nested ones included ("audit verify", "mcp pins list"), with its parser."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield " ".join(path), parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from leaf_commands(sub, (*path, name))


LEAVES = dict(leaf_commands(build_parser()))


def test_nested_commands_are_found() -> None:
    assert {"run", "audit verify", "probe check-precision", "mcp pins accept"} <= LEAVES.keys()


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_command_is_in_the_readme_with_an_example_in_its_help(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"aegis {name}" in readme, f"README does not document 'aegis {name}'"
    help_text = LEAVES[name].format_help()  # type: ignore[attr-defined]
    assert "Example:" in help_text and f"aegis {name}" in help_text, f"'aegis {name} --help' shows no example"


def test_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "a", "tool": "run_shell", "arguments": {"cmd": "ls"}}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{broken\n")
    assert main(["check", str(good)]) == 0
    assert main(["check", str(bad)]) == 1
    assert main(["check", str(tmp_path / "missing.jsonl")]) == 2
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["effect"] for o in out] == ["allow", "allow", "error"]


def test_check_reads_stdin_through_the_console_script() -> None:
    line = json.dumps({"id": "x", "tool": "bash", "arguments": {"command": "rm -rf --no-preserve-root /"}})
    proc = subprocess.run(
        [sys.executable, "-m", "aegis_proxy.cli", "check"],
        input=line,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["effect"] == "deny"


def test_bad_usage_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--no-such-flag"])
    assert info.value.code == 2


def test_shipped_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "examples" / "calls.jsonl")]) == 0
    effects = {json.loads(x)["id"]: json.loads(x)["effect"] for x in capsys.readouterr().out.splitlines()}
    assert "allow" in effects.values() and "deny" in effects.values() and "ask" in effects.values()
