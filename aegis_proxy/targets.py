"""Turn extracted strings into scan targets: decide which strings will be executed, and parse those as shell once.

Parsing happens here, not in each scanner, so that the shell, path, network and code scanners all see the same
commands, and a string is tokenised once per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from aegis_proxy.extract import ExtractedString
from aegis_proxy.safe_regex import compile_pattern
from aegis_proxy.scanners.base import ScanTarget, new_scan_target
from aegis_proxy.scanners.vocabulary import EXEC_TOOL_WORDS, argument_key
from aegis_proxy.shell import ShellCommand, looks_like_shell, parse_shell

# Tools whose purpose is to run a command: a word of EXEC_TOOL_WORDS between non-letters in the tool name
# (run_shell, bash, execute_command, terminal.exec, mcp__shell__run ...).
_EXEC_TOOL = compile_pattern(
    r"(^|[^a-z])(" + "|".join(sorted(EXEC_TOOL_WORDS)) + r")([^a-z]|$)",
    ignore_case=True,
)
# Argument names that hold a command line, whatever the tool is called.
_EXEC_KEY = frozenset(
    {"cmd", "command", "commands", "shell", "script", "bash", "sh", "cmdline", "command_line", "run", "exec", "line"}
)

_SHELL_SEPARATORS = ("|", ";", "&&", "$(", "`")
_ARGV_KEY = frozenset({"", "argv", "args", "arguments", "params", "parameters"})
_NOT_COMMAND_KEY = frozenset({"cwd", "workdir", "directory", "description"})
MAX_CACHED_TOOL_CHARS = 256  # longer (hostile) tool names are not kept in the cache


def is_exec_tool(tool: str) -> bool:
    return _is_exec_tool(tool) if len(tool) <= MAX_CACHED_TOOL_CHARS else _EXEC_TOOL.search(tool) is not None


@lru_cache(maxsize=1024)
def _is_exec_tool(tool: str) -> bool:
    # Cached: a call's strings all ask about the same tool, and agents call the same tools over and over.
    return _EXEC_TOOL.search(tool) is not None


def is_exec_position(tool: str, item: ExtractedString) -> bool:
    """True when the string will be run as a command line."""
    return _exec_position(item, is_exec_tool(tool))


def _exec_position(item: ExtractedString, exec_tool: bool) -> bool:
    if item.is_key:
        return False
    key = argument_key(item.path).lower()
    if key in _EXEC_KEY:
        return True
    # A command split into pieces and joined back by extraction: {"cmd": "rm", "args": [...]} joins at the
    # object's own path, ["rm", "-rf", "/"] at the array's; both are argv vectors when named so.
    if item.chain[-1:] == ("join",) and key in _ARGV_KEY:
        return True
    # An exec tool's string arguments are commands unless they are obviously something else (cwd, env, timeout).
    return exec_tool and key not in _NOT_COMMAND_KEY


def build_targets(tool: str, strings: Sequence[ExtractedString]) -> list[ScanTarget]:
    """Scan targets for every extracted string. A script the parser had to cut carries a marker command that the
    shell scanner reports (medium where it would be executed), so nothing is silently skipped."""
    targets: list[ScanTarget] = []
    exec_tool = is_exec_tool(tool)
    parsed: dict[str, tuple[ShellCommand, ...]] = {}  # the same text under several paths is parsed once
    for item in strings:
        text = item.text
        exec_position = _exec_position(item, exec_tool)
        commands: tuple[ShellCommand, ...] = ()
        if exec_position or looks_like_shell(text):
            commands = parsed.get(text)  # type: ignore[assignment]
            if commands is None:
                commands = parsed[text] = parse_shell(text).commands
            # A key is an identifier; a key that is a whole command line is payload smuggled where nobody looks,
            # so it is judged as if it ran.
            if item.is_key and commands and any(c in text for c in _SHELL_SEPARATORS):
                exec_position = True
        targets.append(new_scan_target(item.path, text, item.chain, item.is_key, exec_position, commands))
    return targets
