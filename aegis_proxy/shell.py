"""Shell normalisation: see a command string the way a shell would run it.

(Contract only; the parser is being written.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ShellCommand:
    """One simple command after quote removal, expansion of the tricks attackers use, and unwrapping of wrappers."""

    argv: tuple[str, ...]  # argv[0] is the program's basename ("/usr/bin/rm" -> "rm"); long options expanded
    program_path: str = ""  # argv[0] as written, e.g. "/usr/bin/rm"
    wrappers: tuple[str, ...] = ()  # wrappers unwrapped to reach it, outermost first, e.g. ("sudo", "sh -c")
    pipeline: int = 0  # index of the pipeline within the script
    stage: int = 0  # position inside the pipeline; stage > 0 reads the previous stage's output
    redirects: tuple[tuple[str, str], ...] = ()  # (operator, target), e.g. (">>", "~/.bashrc")
    substitution: bool = False  # came from $(...) or backticks

    @property
    def program(self) -> str:
        return self.argv[0] if self.argv else ""


@dataclass(frozen=True, slots=True)
class ShellScript:
    commands: tuple[ShellCommand, ...]
    truncated: bool = False  # a bound (length, command count, nesting) was hit: possible evasion


def looks_like_shell(text: str) -> bool:
    """Cheap test: is this string worth parsing as a shell script?"""
    raise NotImplementedError


def parse_shell(text: str) -> ShellScript:
    """Parse `text` into commands. Never raises; unparseable input yields what could be read, `truncated` if cut."""
    raise NotImplementedError
