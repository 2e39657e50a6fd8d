"""What every scanner sees and returns.

A scanner is a pure function of the call's extracted strings: it never decodes (extraction already did, and recorded
how in `chain`) and never parses shell (the firewall did, once, into `commands`). It returns findings with a severity;
the decision stage, not the scanner, turns severities into effects.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import ClassVar, ParamSpec, TypeVar

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


# A frozen dataclass's __init__ sets each field through object.__setattr__, which costs about as much as the rest of
# building a target; the pipeline builds one per extracted string, so `new_scan_target` fills the slots directly.
_TARGET_SLOTS = tuple(ScanTarget.__dict__[name].__set__ for name in ScanTarget.__slots__)  # in field order
_new_object = object.__new__


def new_scan_target(
    path: str, text: str, chain: tuple[str, ...], is_key: bool, exec_position: bool, commands: tuple[ShellCommand, ...]
) -> ScanTarget:
    """`ScanTarget(path, text, chain, is_key, exec_position, commands)`, faster (ScanTarget has no __post_init__)."""
    target = _new_object(ScanTarget)
    set_path, set_text, set_chain, set_is_key, set_exec_position, set_commands = _TARGET_SLOTS
    set_path(target, path)
    set_text(target, text)
    set_chain(target, chain)
    set_is_key(target, is_key)
    set_exec_position(target, exec_position)
    set_commands(target, commands)
    return target


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """Deployment knobs the scanners consult. Defaults are safe for an unconfigured install."""

    workspace_roots: tuple[str, ...] = ()  # empty: no workspace bound (sensitive paths are still flagged)
    allowed_hosts: tuple[str, ...] = ()  # hosts data may be sent to; glob patterns like "*.github.com"
    large_payload_bytes: int = 16_384  # a body this large to an unlisted host counts as possible exfiltration
    home: str = "/home/user"  # what `~` expands to when a path is judged


class FindingSink:
    """Helper that stamps the scanner name and the target's path/chain onto each finding.

    A plain slotted class rather than a dataclass: scanners make one per call, and a frozen dataclass with a
    default factory costs more to build than most scans of a benign call take.
    """

    __slots__ = ("findings", "scanner")

    def __init__(self, scanner: str, findings: list[Finding] | None = None) -> None:
        self.scanner = scanner
        self.findings: list[Finding] = [] if findings is None else findings

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


MAX_CACHED_TEXT_CHARS = 1_024  # texts up to this long are remembered by `text_cache` (keys, names, commands, URLs)
TEXT_CACHE_SIZE = 4_096  # entries per cached function: at most 4 MiB of cached text each

_P = ParamSpec("_P")
_R = TypeVar("_R")


def text_cache(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Remember a pure function of a string (and hashable flags) for texts up to MAX_CACHED_TEXT_CHARS (bounded LRU).

    For analyses that depend on the text alone, never on the call, the tool or the settings: agents send the same
    commands, paths and URLs over and over. The result is shared between callers, so it must be immutable (tuples,
    frozen dataclasses). `cache_clear` empties it, as on an `lru_cache`.
    """
    cached = lru_cache(maxsize=TEXT_CACHE_SIZE)(func)

    @wraps(func)
    def lookup(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        text = args[0]
        if isinstance(text, str) and len(text) <= MAX_CACHED_TEXT_CHARS:
            return cached(*args, **kwargs)
        return func(*args, **kwargs)

    lookup.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return lookup


class Scanner(abc.ABC):
    """A content risk scanner. Subclasses set `name` and implement `scan`."""

    name: ClassVar[str]
    # The finding categories this scanner can emit, "<name>.<kind>": the policy language checks names against it.
    categories: ClassVar[frozenset[str]]

    @abc.abstractmethod
    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        """Return the findings for this call. Must not raise on any input; the firewall denies if it does."""
