"""One error family for the whole project. Every error carries a hint a human can act on."""

from __future__ import annotations


class AegisError(Exception):
    """Base class. `hint` says what to do about it; the CLI prints both."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(AegisError):
    """A setting, flag or file the user gave is not usable."""


class InputError(AegisError):
    """A request, line or record is malformed; we refuse it rather than guess."""


class WireError(InputError):
    """A body of a known endpoint (an LLM or MCP request, answer or stream) that we cannot parse exactly. The flow is
    blocked, never forwarded as-is (aegis_proxy/proxy/wire.py)."""


class PatternError(AegisError):
    """A regular expression cannot be compiled by the linear-time engine."""
