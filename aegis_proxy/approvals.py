"""Pending human approvals, in the database the audit log uses, so any replica and any terminal sees the same ones.

An approval is bound to one call: the SHA-256 of the RFC 8785 form of {tool, server, arguments} (`args_hash`), and to
the session or agent that made it. Every state change is one conditional UPDATE (`... WHERE status = 'pending'`), so
two processes racing (two approvers, an approver and the timeout, two replicas consuming) cannot both win: the database
decides, and exactly one UPDATE changes the row.

    pending --resolve--> approved --consume--> consumed      (used once: the held flow, or the identical retry)
            --resolve--> denied
            --expire---> timeout                             (nobody decided in time; its own outcome, not a deny)

An approved approval that nobody used within `grace` seconds is no longer consumable (a stale yes is not a yes).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import rfc8785
from pydantic import JsonValue
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from aegis_proxy.audit.migrate import create_tables
from aegis_proxy.errors import AegisError

ApprovalStatus = Literal["pending", "approved", "denied", "timeout", "consumed"]
STATUSES: tuple[ApprovalStatus, ...] = ("pending", "approved", "denied", "timeout", "consumed")

ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case: no 0/1/8/9 to confuse with O/I/B/g
ID_LENGTH = 10  # 50 bits: unguessable within an approval's lifetime, short enough to type
MAX_SUMMARY = 500
MAX_NAME = 256
HASH_DOMAIN = b"aegis-proxy/approval/v1\n"
_READ_ONLY = "aegis_audit_read_only"  # the audit store's execution option for connections that only read


class ApprovalError(AegisError):
    """An approval cannot be found, is not in the state the operation needs, or the database failed."""


metadata = MetaData()

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("created_at", Float(53), nullable=False),  # unix seconds
    Column("expires_at", Float(53), nullable=False),  # a pending approval becomes `timeout` after this
    Column("tool", Text, nullable=False),
    Column("server", Text),
    Column("args_hash", String(64), nullable=False),
    Column("session_id", Text),
    Column("agent_id", Text),
    Column("ask_seq", BigInteger),  # audit seq of the `ask` decision record
    Column("summary", Text, nullable=False),  # redacted, for humans
    Column("status", String(10), nullable=False),
    Column("resolver", Text),
    Column("resolved_at", Float(53)),
    Index("ix_approvals_hash", "args_hash", "status"),
    Index("ix_approvals_status", "status", "expires_at"),
)


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    created_at: float
    expires_at: float
    tool: str
    server: str | None
    args_hash: str
    session_id: str | None
    agent_id: str | None
    ask_seq: int | None
    summary: str
    status: ApprovalStatus
    resolver: str | None
    resolved_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def args_hash(tool: str, server: str | None, arguments: JsonValue) -> str:
    """Hex SHA-256 over a domain prefix and the RFC 8785 bytes of {tool, server, arguments}: the call's identity."""
    try:
        canonical = rfc8785.dumps({"tool": tool, "server": server, "arguments": arguments})
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as error:
        raise ApprovalError(
            f"the call's arguments have no canonical form: {error}",
            hint="arguments must be JSON without integers beyond 2^53 or non-finite numbers",
        ) from error
    return hashlib.sha256(HASH_DOMAIN + canonical).hexdigest()


def new_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def normalise_id(text: str) -> str:
    """What a human typed, as an id: case and surrounding space do not matter. Raises ApprovalError if malformed."""
    cleaned = text.strip().lower()
    if len(cleaned) != ID_LENGTH or any(char not in ID_ALPHABET for char in cleaned):
        shown = text.strip()[:40].encode("ascii", "backslashreplace").decode()
        raise ApprovalError(
            f"{shown!r} is not an approval id",
            hint=f"ids are {ID_LENGTH} characters a-z and 2-7; `aegis approvals list` shows them",
        )
    return cleaned


def _row(row: Any) -> Approval:
    return Approval(
        id=row.id,
        created_at=float(row.created_at),
        expires_at=float(row.expires_at),
        tool=row.tool,
        server=row.server,
        args_hash=row.args_hash,
        session_id=row.session_id,
        agent_id=row.agent_id,
        ask_seq=row.ask_seq,
        summary=row.summary,
        status=cast(ApprovalStatus, row.status),
        resolver=row.resolver,
        resolved_at=None if row.resolved_at is None else float(row.resolved_at),
    )


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # the audit store uses WAL on the same file
        cursor.execute("PRAGMA synchronous=FULL")  # a consumed approval stays consumed after a crash
        cursor.close()


class ApprovalStore:
    """The `approvals` table behind an SQLAlchemy URL (or an engine shared with the audit store). Thread-safe."""

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        grace: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if grace <= 0:
            raise ApprovalError("approval grace must be positive", hint="seconds an approved call stays usable")
        self.grace = grace
        self._clock = clock
        self._owns_engine = isinstance(url_or_engine, str)
        try:
            if isinstance(url_or_engine, str):
                if url_or_engine.startswith("sqlite"):
                    self.engine = create_engine(url_or_engine, connect_args={"timeout": 60, "check_same_thread": False})
                    _sqlite_pragmas(self.engine)
                else:
                    self.engine = create_engine(url_or_engine, pool_pre_ping=True)
            else:
                self.engine = url_or_engine
            create_tables(self.engine, metadata)
        except SQLAlchemyError as error:
            raise ApprovalError(
                f"cannot open the approvals database: {_short(error)}", hint="check the audit database URL"
            ) from error

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def now(self) -> float:
        """The store's clock (unix seconds): deadlines are compared against it."""
        return self._clock()

    def _reader(self) -> Connection:
        # On an engine shared with the audit store (SQLite), this option makes reads begin deferred instead of taking
        # the write lock (see audit/store.py); other engines ignore it.
        return self.engine.connect().execution_options(**{_READ_ONLY: True})

    # -- operations ---------------------------------------------------------------------------------------------------

    def create(
        self,
        *,
        tool: str,
        server: str | None,
        args_hash: str,
        session_id: str | None,
        agent_id: str | None,
        ask_seq: int | None,
        summary: str,
        timeout: float,
    ) -> Approval:
        """A new pending approval that becomes `timeout` after `timeout` seconds."""
        if not timeout > 0:
            raise ApprovalError("approval timeout must be positive", hint="seconds a human has to decide")
        if len(args_hash) != 64:
            raise ApprovalError("args_hash must be a hex SHA-256", hint="use approvals.args_hash(...)")
        now = self._clock()
        for _ in range(5):  # a 50-bit id collides essentially never; retry rather than fail if it does
            values = {
                "id": new_id(),
                "created_at": now,
                "expires_at": now + timeout,
                "tool": tool,
                "server": server,
                "args_hash": args_hash,
                "session_id": session_id,
                "agent_id": agent_id,
                "ask_seq": ask_seq,
                "summary": summary[:MAX_SUMMARY],
                "status": "pending",
                "resolver": None,
                "resolved_at": None,
            }
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(approvals).values(**values))
            except IntegrityError:
                continue
            except SQLAlchemyError as error:
                raise ApprovalError(f"cannot store the approval: {_short(error)}", hint="the call is denied") from error
            return _row(_Values(values))
        raise ApprovalError("could not allocate an approval id", hint="the call is denied; retry")

    def get(self, approval_id: str) -> Approval:
        found = self._get(normalise_id(approval_id))
        if found is None:
            raise ApprovalError(
                f"no approval {approval_id.strip()!r}", hint="`aegis approvals list --all` shows the known ones"
            )
        return found

    def resolve(self, approval_id: str, approve: bool, by: str) -> Approval:
        """pending -> approved or denied, exactly once; anything else raises ApprovalError naming the current state."""
        key = normalise_id(approval_id)
        resolver = by.strip()
        if not resolver or len(resolver) > MAX_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in resolver):
            raise ApprovalError(
                "the approver's name must be 1-256 printable characters", hint="pass --by NAME (e.g. your login)"
            )
        now = self._clock()
        status: ApprovalStatus = "approved" if approve else "denied"
        changed = self._transition(
            key,
            and_(approvals.c.status == "pending", approvals.c.expires_at > now),
            status=status,
            resolver=resolver,
            resolved_at=now,
        )
        if changed:
            return self.get(key)
        current = self.get(key)
        if current.status == "pending":  # past its deadline; the waiter or the sweeper records the timeout
            raise ApprovalError(
                f"cannot resolve {key}: it expired (nobody decided within its timeout)",
                hint="the agent must make the call again for a new approval",
            )
        verb = "approve" if approve else "deny"
        raise ApprovalError(
            f"cannot {verb} {key}: it is {current.status}" + (f" (by {current.resolver})" if current.resolver else ""),
            hint="only pending approvals can be resolved; the agent must make the call again for a new one",
        )

    def list(self, *, include_all: bool = False, limit: int | None = None) -> list[Approval]:
        """Pending approvals (or all of them), newest first. A pending one past `expires_at` is about to time out."""
        query = select(approvals).order_by(approvals.c.created_at.desc(), approvals.c.id)
        if not include_all:
            query = query.where(approvals.c.status == "pending")
        if limit is not None:
            query = query.limit(limit)
        try:
            with self._reader() as conn:
                return [_row(row) for row in conn.execute(query)]
        except SQLAlchemyError as error:
            raise ApprovalError(f"cannot read approvals: {_short(error)}", hint="check the database URL") from error

    async def wait(self, approval_id: str, timeout: float, *, poll: float = 0.2) -> Approval:
        """The approval once it leaves `pending`, or as it is when `timeout` seconds passed or it expired (then still
        `pending`: the caller decides whether to `time_out` it). Reads run in a worker thread, off the event loop."""
        key = normalise_id(approval_id)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            current = await asyncio.to_thread(self.get, key)
            if current.status != "pending":
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0 or current.expires_at <= self._clock():
                return current
            await asyncio.sleep(min(poll, remaining))

    def wait_sync(self, approval_id: str, timeout: float, *, poll: float = 0.2) -> Approval:
        """`wait` for threads."""
        key = normalise_id(approval_id)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            current = self.get(key)
            if current.status != "pending":
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0 or current.expires_at <= self._clock():
                return current
            time.sleep(min(poll, remaining))

    def consume(self, approval_id: str) -> Approval | None:
        """approved -> consumed for this one approval (the held flow using its own approval); None if it is not approved
        (or was approved longer than `grace` ago)."""
        key = normalise_id(approval_id)
        fresh = and_(approvals.c.status == "approved", approvals.c.resolved_at >= self._clock() - self.grace)
        if self._transition(key, fresh, status="consumed"):
            return self.get(key)
        return None

    def consume_approved(self, args_hash: str, *, session_id: str | None, agent_id: str | None) -> Approval | None:
        """Use an approval of this exact call (same hash; same session or same agent) once; None if there is none.

        Candidates are tried oldest first, each with a conditional UPDATE: of racing callers exactly one changes the
        row, the others see rowcount 0 and try the next candidate or return None.
        """
        now = self._clock()
        if session_id is None and agent_id is None:
            same_caller = and_(approvals.c.session_id.is_(None), approvals.c.agent_id.is_(None))
        else:
            same = []
            if session_id is not None:
                same.append(approvals.c.session_id == session_id)
            if agent_id is not None:
                same.append(approvals.c.agent_id == agent_id)
            same_caller = or_(*same)
        query = (
            select(approvals.c.id)
            .where(
                approvals.c.args_hash == args_hash,
                approvals.c.status == "approved",
                approvals.c.resolved_at >= now - self.grace,
                same_caller,
            )
            .order_by(approvals.c.resolved_at, approvals.c.id)
            .limit(16)
        )
        try:
            with self._reader() as conn:
                candidates = [row.id for row in conn.execute(query)]
        except SQLAlchemyError as error:
            raise ApprovalError(f"cannot read approvals: {_short(error)}", hint="the call is denied") from error
        for candidate in candidates:
            if self._transition(candidate, approvals.c.status == "approved", status="consumed"):
                return self.get(candidate)
        return None

    def time_out(self, approval_id: str) -> Approval | None:
        """pending -> timeout now (a waiter gave up); the timed-out approval if this call moved it, else None (it had
        already been resolved or timed out by someone else: `get` says how)."""
        key = normalise_id(approval_id)
        if self._transition(key, approvals.c.status == "pending", status="timeout", resolved_at=self._clock()):
            return self.get(key)
        return None

    def expire(self, *, older_than: float = 0.0) -> list[Approval]:
        """Mark pending approvals more than `older_than` seconds past their deadline as `timeout`; return the ones this
        call changed (so that exactly one process audits each timeout)."""
        now = self._clock() - older_than
        query = select(approvals).where(approvals.c.status == "pending", approvals.c.expires_at <= now)
        try:
            with self._reader() as conn:
                overdue = [_row(row) for row in conn.execute(query)]
        except SQLAlchemyError as error:
            raise ApprovalError(f"cannot read approvals: {_short(error)}", hint="check the database") from error
        return [moved for moved in (self._expire_one(item, now) for item in overdue) if moved is not None]

    # -- internals ----------------------------------------------------------------------------------------------------

    def _get(self, key: str) -> Approval | None:
        try:
            with self._reader() as conn:
                row = conn.execute(select(approvals).where(approvals.c.id == key)).first()
        except SQLAlchemyError as error:
            raise ApprovalError(f"cannot read approval {key}: {_short(error)}", hint="check the database") from error
        return None if row is None else _row(row)

    def _expire_one(self, item: Approval, now: float) -> Approval | None:
        condition = and_(approvals.c.status == "pending", approvals.c.expires_at <= now)
        if self._transition(item.id, condition, status="timeout", resolved_at=self._clock()):
            return self.get(item.id)
        return None

    def _transition(self, key: str, condition: Any, **values: Any) -> bool:
        """One conditional UPDATE; True if this call changed the row (the database arbitrates races)."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(update(approvals).where(approvals.c.id == key, condition).values(**values))
                return result.rowcount == 1
        except SQLAlchemyError as error:
            raise ApprovalError(f"cannot update approval {key}: {_short(error)}", hint="check the database") from error


class _Values:
    """Attribute access over the inserted values, so `create` returns exactly what it wrote."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


# -- for humans (the CLI prints these) --------------------------------------------------------------------------------

_UNPRINTABLE = str.maketrans({code: "?" for code in (*range(0x20), 0x7F)})


def printable(text: str | None, limit: int = 200) -> str:
    """Database text made safe for a terminal: no control characters (escape sequences), bounded length."""
    if text is None:
        return "-"
    shown = text.translate(_UNPRINTABLE)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _age(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def approval_row(approval: Approval, now: float) -> dict[str, str]:
    """One line of `aegis approvals list`: id, status, when, tool, who asked, what."""
    if approval.status == "pending":
        left = approval.expires_at - now
        when = f"expires in {_age(left)}" if left > 0 else f"expired {_age(left)} ago"
    elif approval.resolved_at is not None:
        when = f"{approval.status} {_age(now - approval.resolved_at)} ago"
    else:
        when = approval.status
    tool = approval.tool if approval.server is None else f"{approval.tool}@{approval.server}"
    return {
        "id": approval.id,
        "status": approval.status + (f" by {printable(approval.resolver, 40)}" if approval.resolver else ""),
        "when": when,
        "tool": printable(tool, 60),
        "session": printable(approval.session_id, 24),
        "summary": printable(approval.summary, 120),
    }
