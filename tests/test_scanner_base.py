from __future__ import annotations

import pytest

from aegis_proxy.models import Severity
from aegis_proxy.scanners.base import (
    MAX_CACHED_TEXT_CHARS,
    FindingSink,
    ScanTarget,
    new_scan_target,
    text_cache,
)
from aegis_proxy.shell import ShellCommand


def test_new_scan_target_equals_the_dataclass_constructor() -> None:
    commands = (ShellCommand(argv=("ls", "-la")),)
    fast = new_scan_target("args.cmd", "ls -la", ("base64",), False, True, commands)
    assert fast == ScanTarget("args.cmd", "ls -la", ("base64",), False, True, commands)
    assert hash(fast) == hash(ScanTarget("args.cmd", "ls -la", ("base64",), False, True, commands))
    with pytest.raises(AttributeError):
        fast.text = "rm -rf /"  # type: ignore[misc]  # still frozen


@pytest.mark.parametrize(
    ("text", "cached"),
    [("git status", True), ("x" * MAX_CACHED_TEXT_CHARS, True), ("x" * (MAX_CACHED_TEXT_CHARS + 1), False)],
    ids=["short", "at-the-limit", "too-long"],
)
def test_text_cache_remembers_short_texts_only(text: str, cached: bool) -> None:
    calls: list[str] = []

    @text_cache
    def analyse(value: str, flag: bool = False) -> tuple[str, bool]:
        calls.append(value)
        return value[:3], flag

    assert analyse(text) == analyse(text) == (text[:3], False)
    assert len(calls) == (1 if cached else 2)
    assert analyse(text, True) == (text[:3], True)  # other arguments are part of the key
    analyse.cache_clear()  # type: ignore[attr-defined]
    analyse(text)
    assert len(calls) == (3 if cached else 4)


def test_finding_sink_stamps_scanner_path_and_chain() -> None:
    sink = FindingSink("paths")
    sink.add(ScanTarget("args.path", "~/.ssh/id_rsa", ("base64",)), "paths.sensitive", Severity.HIGH, "reads key")
    [finding] = sink.findings
    assert (finding.scanner, finding.path, finding.chain, finding.severity) == (
        "paths",
        "args.path",
        ("base64",),
        Severity.HIGH,
    )
