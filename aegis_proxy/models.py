"""The nouns of the firewall: what a tool call is, what we know around it, what we found, what we decided.

Every model is a frozen pydantic model: they cross every seam (wire adapters, the policy, the audit log, `aegis check`)
and must never be mutated on the way.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Severity(enum.IntEnum):
    """Ordered so that `max()` over findings gives the worst one."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}; expected one of {', '.join(s.label for s in cls)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Effect(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ASK = "ask"


class Trust(enum.StrEnum):
    """Who wrote a message. Only what the principal (system prompt, user) wrote is trusted."""

    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    DOCUMENT = "document"  # retrieved content that the agent read (RAG, web page, file contents)


# Roles whose text the principal wrote. The assistant's own text is not trusted: it may repeat an injection.
TRUSTED_ROLES = frozenset({Role.SYSTEM, Role.USER})


class Message(Frozen):
    role: Role
    content: str = ""
    name: str | None = None

    @property
    def trust(self) -> Trust:
        return Trust.TRUSTED if self.role in TRUSTED_ROLES else Trust.UNTRUSTED


class ToolCall(Frozen):
    id: str
    tool: str = Field(min_length=1)
    arguments: JsonValue = Field(default_factory=dict)
    protocol: str = "offline"  # openai-chat, openai-responses, anthropic, mcp, offline
    server: str | None = None  # MCP server name or upstream host
    raw_size: int = 0  # bytes of the arguments as they arrived on the wire


class PriorCall(Frozen):
    """A call made earlier in the same session, with what we decided about it."""

    tool: str
    arguments: JsonValue = Field(default_factory=dict)
    effect: Effect
    at: float = 0.0  # unix seconds


class CallContext(Frozen):
    agent_id: str | None = None
    session_id: str | None = None
    messages: tuple[Message, ...] = ()
    # Oldest first. A tuple, or the live session's history.HistoryView (its calls at one moment, not copied).
    history: Sequence[PriorCall] = ()

    @property
    def user_request(self) -> str:
        """The most recent thing the user asked for (empty if unknown)."""
        for message in reversed(self.messages):
            if message.role is Role.USER:
                return message.content
        return ""


class Finding(Frozen):
    scanner: str  # e.g. "shell"
    category: str  # e.g. "shell.destructive"; the policy language refers to findings by this name
    severity: Severity
    path: str  # JSON path of the argument, e.g. "args.cmd" or "args.headers{key}"
    chain: tuple[str, ...] = ()  # decodings that led here, e.g. ("base64", "shell")
    message: str

    @property
    def where(self) -> str:
        """`args.cmd -> base64 -> shell`: the path followed by each decoding."""
        return " -> ".join((self.path, *self.chain))

    def summary(self) -> dict[str, Any]:
        return {
            "scanner": self.scanner,
            "category": self.category,
            "severity": self.severity.label,
            "path": self.where,
            "message": self.message,
        }


class Decision(Frozen):
    effect: Effect
    reasons: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()  # ids of the rules (or built-in table rows) that determined the effect
    findings: tuple[Finding, ...] = ()
    risk: float = Field(default=0.0, ge=0.0, le=1.0)  # 0..1 summary used by `aegis check` and metrics
    scores: dict[str, float | None] = Field(default_factory=dict)  # probe scores; None = unknown
    message: str = ""  # what the agent is told when the call is blocked or held
    errors: tuple[str, ...] = ()  # evaluation errors that influenced the decision
    flagged: bool = False  # allowed but marked for review (policy effect `audit`)
    terminate: bool = False  # the policy asks that the agent's run end rather than continue
    policy_digest: str = ""  # SHA-256 of the policy sources that decided; "" for the built-in table
    elapsed_ms: float = 0.0
