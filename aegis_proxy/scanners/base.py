"""What every scanner sees and returns.

A scanner is a pure function of the call's extracted strings: it never decodes (extraction already did, and recorded
how in `chain`) and never parses shell (the firewall did, once, into `commands`). It returns findings with a severity;
the decision stage, not the scanner, turns severities into effects.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from aegis_proxy.models import Finding, Severity, ToolCall
from aegis_proxy.shell import ShellCommand


@dataclass(frozen=True, slots=True)
class ScanTarget:
    """One string of the call, as an attacker would have it run."""

    path: str  # JSON path of the argument it came from, e.g. "args.cmd", "args.files[2].name"
    text: str  # decoded and normalised (NFKC, zero-width and bidi controls removed)
    chain: tuple[str, ...] = ()  # decodings that produced `text`, outermost first, e.g. ("base64", "json")
    is_key: bool = False  # the string is an object key, not a value
    # True when the string sits where a command is executed: a shell-like tool, or a command-like argument name.
    exec_position: bool = False
    commands: tuple[ShellCommand, ...] = ()  # the string parsed as a shell script, when it looks like one


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """Deployment knobs the scanners consult. Defaults are safe for an unconfigured install."""

    workspace_roots: tuple[str, ...] = ()  # empty: no workspace bound (sensitive paths are still flagged)
    allowed_hosts: tuple[str, ...] = ()  # hosts data may be sent to; glob patterns like "*.github.com"
    large_payload_bytes: int = 16_384  # a body this large to an unlisted host counts as possible exfiltration
    home: str = "/home/user"  # what `~` expands to when a path is judged


@dataclass(frozen=True, slots=True)
class FindingSink:
    """Helper that stamps the scanner name and the target's path/chain onto each finding."""

    scanner: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, target: ScanTarget, category: str, severity: Severity, message: str) -> None:
        self.findings.append(
            Finding(
                scanner=self.scanner,
                category=category,
                severity=severity,
                path=target.path,
                chain=target.chain,
                message=message,
            )
        )


class Scanner(abc.ABC):
    """A content risk scanner. Subclasses set `name` and implement `scan`."""

    name: ClassVar[str]
    # The finding categories this scanner can emit, "<name>.<kind>": the policy language checks names against it.
    categories: ClassVar[frozenset[str]]

    @abc.abstractmethod
    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        """Return the findings for this call. Must not raise on any input; the firewall denies if it does."""
