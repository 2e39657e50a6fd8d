"""Errors of the audit log. Verification failures name the exact index or seq that failed."""

from __future__ import annotations

from aegis_proxy.errors import AegisError


class AuditError(AegisError):
    """Base class of everything the audit log raises."""


class VerificationError(AuditError):
    """The log, a proof or a checkpoint does not verify.

    `index` is the leaf index / record seq at fault when one is known, so that `aegis audit verify` can point at it
    (sigstore-style: say what failed and where, never just "invalid").
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        hint: str = "the log or the proof was altered, truncated or forked; do not trust it",
    ) -> None:
        super().__init__(message, hint=hint)
        self.index = index
