"""MCP tool pinning: the defence against a server that changes its tools after they were trusted (a "rug pull").

On the first `tools/list` of a server, every tool's definition (name, title, description, inputSchema, outputSchema,
annotations and any other member except `_meta`) is pinned by the SHA-256 of its RFC 8785 canonical JSON. On later
lists (`ToolGuard.review`):

  changed   a pinned tool whose definition differs: finding `mcp.tool_changed` (high); the tool is hidden from the
            client until an operator accepts the new definition (`aegis mcp pins accept SERVER [TOOL]`), which is kept
            as the pin's pending "observed" definition so that the operator accepts what the proxy saw
  added     a tool never seen on that server: finding `mcp.tool_added` (medium); pinned from then on (trust on first
            use, per tool), not hidden
  removed   a pinned tool missing from a complete list: finding `mcp.tool_removed` (low: nothing is reachable, nothing
            to hide), reported once; accepting the removal forgets the pin
  denied    a tool the policy denies unconditionally is hidden too (no finding: it is the operator's own rule)

A list that is a page (the request had a cursor, or the result a nextCursor) is not complete: removals are not
judged from it. Pins live in a `PinStore`: in memory, or in SQL (`SqlPinStore`, table `mcp_tool_pins`, on the same
database URL as the audit log, so replicas share them). The first replica to pin a tool wins; a replica that saw a
different definition meanwhile reports it as changed.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import rfc8785
from sqlalchemy import Column, Float, MetaData, String, Table, Text, create_engine, delete, inspect, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from aegis_proxy.audit.migrate import create_tables
from aegis_proxy.errors import AegisError, InputError
from aegis_proxy.models import Finding, Severity

SCANNER = "mcp"
CHANGED = "mcp.tool_changed"
ADDED = "mcp.tool_added"
REMOVED = "mcp.tool_removed"
CATEGORIES = frozenset({CHANGED, ADDED, REMOVED})
_UNPINNED_MEMBERS = frozenset({"_meta"})  # free-form metadata (timestamps, tracing): not what the model reads
_DB_HINT = "give an SQLAlchemy URL, e.g. sqlite:///var/aegis/audit.db or postgresql+psycopg2://user@host/db"


class PinError(AegisError):
    """A pin store that cannot be opened or used, or an accept that has nothing to accept."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> bytes:
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as error:
        raise InputError(f"a tool definition cannot be canonicalised: {error}", hint="RFC 8785 JSON only") from None


@dataclasses.dataclass(frozen=True)
class ToolDefinition:
    """What is pinned of one tool: its canonical JSON and digests (whole, and of the parts people ask about)."""

    name: str
    canonical: str  # RFC 8785 JSON of the tool without `_meta`
    digest: str
    description_sha256: str
    schema_sha256: str
    annotations_sha256: str

    @classmethod
    def from_tool(cls, tool: Mapping[str, Any]) -> ToolDefinition:
        name = tool.get("name")
        if type(name) is not str or not name:
            raise InputError("a listed tool has no name", hint="every MCP tool has a non-empty string name")
        pinned = {key: value for key, value in tool.items() if key not in _UNPINNED_MEMBERS}
        canonical = _canonical(pinned)
        return cls(
            name=name,
            canonical=canonical.decode("utf-8"),
            digest=_sha256(canonical),
            description_sha256=_sha256(_canonical(pinned.get("description"))),
            schema_sha256=_sha256(_canonical(pinned.get("inputSchema"))),
            annotations_sha256=_sha256(_canonical(pinned.get("annotations"))),
        )

    @classmethod
    def from_canonical(cls, text: str) -> ToolDefinition:
        return cls.from_tool(json.loads(text))

    @property
    def value(self) -> dict[str, Any]:
        return json.loads(self.canonical)


class PinStatus(enum.StrEnum):
    PINNED = "pinned"  # the server lists what was pinned
    CHANGED = "changed"  # the server listed another definition: hidden until accepted
    REMOVED = "removed"  # missing from the server's last complete list


@dataclasses.dataclass(frozen=True)
class ToolPin:
    server: str
    tool: str
    digest: str
    description_sha256: str
    schema_sha256: str
    annotations_sha256: str
    definition: str  # canonical JSON of the pinned definition
    first_seen: float  # unix seconds
    pinned_at: float  # when the current definition was pinned (first seen, or accepted)
    observed_digest: str | None = None
    observed_definition: str | None = None  # the differing definition last listed, pending an operator's accept
    observed_at: float | None = None
    removed_at: float | None = None

    @property
    def status(self) -> PinStatus:
        if self.observed_digest is not None:
            return PinStatus.CHANGED
        if self.removed_at is not None:
            return PinStatus.REMOVED
        return PinStatus.PINNED

    def changed_members(self) -> tuple[str, ...]:
        """The top-level members that differ between the pinned and the observed definition."""
        if self.observed_definition is None:
            return ()
        return tuple(_changed_members(self.definition, self.observed_definition))


_MISSING = object()


def _new_pin(server: str, definition: ToolDefinition, now: float) -> ToolPin:
    return ToolPin(
        server=server,
        tool=definition.name,
        digest=definition.digest,
        description_sha256=definition.description_sha256,
        schema_sha256=definition.schema_sha256,
        annotations_sha256=definition.annotations_sha256,
        definition=definition.canonical,
        first_seen=now,
        pinned_at=now,
    )


class PinStore(Protocol):
    def pins(self, server: str) -> dict[str, ToolPin]:
        """Every pin of the server, by tool name."""
        ...

    def add(self, server: str, definitions: Sequence[ToolDefinition], now: float) -> None:
        """Pin tools that have no pin yet; an existing pin is kept (the first writer wins)."""
        ...

    def observe(self, server: str, tool: str, definition: ToolDefinition | None, now: float) -> None:
        """Record a differing definition (None: the tool is missing from a complete list)."""
        ...

    def clear(self, server: str, tool: str) -> None:
        """The server lists the pinned definition again: forget any pending observation or removal."""
        ...

    def accept(self, server: str, tool: str | None, now: float) -> list[str]:
        """Make pending observations the pins (and forget removed tools); the tools affected, sorted."""
        ...

    def list(self, server: str | None = None) -> list[ToolPin]:
        """Pins sorted by server and tool, optionally of one server."""
        ...

    def close(self) -> None: ...


def _accepted(pin: ToolPin, now: float) -> ToolPin | None:
    """The pin after an accept (None: forget it), or the pin itself when nothing is pending."""
    if pin.observed_definition is not None:
        new = ToolDefinition.from_canonical(pin.observed_definition)
        return dataclasses.replace(
            _new_pin(pin.server, new, now), first_seen=pin.first_seen, pinned_at=now, removed_at=None
        )
    if pin.removed_at is not None:
        return None
    return pin


def _nothing_to_accept(server: str, tool: str | None, known: Iterable[str]) -> PinError:
    if tool is not None and tool not in set(known):
        return PinError(f"no pin for tool {tool!r} of server {server!r}", hint="see `aegis mcp pins list`")
    what = f"tool {tool!r} of server {server!r}" if tool else f"server {server!r}"
    return PinError(f"nothing to accept for {what}: no changed or removed tool", hint="see `aegis mcp pins list`")


class MemoryPinStore:
    """Pins in this process only (tests, single-process runs without a database). Thread-safe."""

    def __init__(self) -> None:
        self._pins: dict[tuple[str, str], ToolPin] = {}
        self._lock = threading.Lock()

    def pins(self, server: str) -> dict[str, ToolPin]:
        with self._lock:
            return {tool: pin for (s, tool), pin in self._pins.items() if s == server}

    def add(self, server: str, definitions: Sequence[ToolDefinition], now: float) -> None:
        with self._lock:
            for definition in definitions:
                self._pins.setdefault((server, definition.name), _new_pin(server, definition, now))

    def observe(self, server: str, tool: str, definition: ToolDefinition | None, now: float) -> None:
        with self._lock:
            pin = self._pins.get((server, tool))
            if pin is None:
                return
            if definition is None:
                self._pins[(server, tool)] = dataclasses.replace(
                    pin, observed_digest=None, observed_definition=None, observed_at=None, removed_at=now
                )
            else:
                self._pins[(server, tool)] = dataclasses.replace(
                    pin,
                    observed_digest=definition.digest,
                    observed_definition=definition.canonical,
                    observed_at=now,
                    removed_at=None,
                )

    def clear(self, server: str, tool: str) -> None:
        with self._lock:
            pin = self._pins.get((server, tool))
            if pin is not None:
                self._pins[(server, tool)] = dataclasses.replace(
                    pin, observed_digest=None, observed_definition=None, observed_at=None, removed_at=None
                )

    def accept(self, server: str, tool: str | None, now: float) -> list[str]:
        with self._lock:
            keys = [k for k in self._pins if k[0] == server and (tool is None or k[1] == tool)]
            done: list[str] = []
            for key in keys:
                pin = self._pins[key]
                after = _accepted(pin, now)
                if after is pin:
                    continue
                if after is None:
                    del self._pins[key]
                else:
                    self._pins[key] = after
                done.append(key[1])
            if not done:
                raise _nothing_to_accept(server, tool, (k[1] for k in keys))
            return sorted(done)

    def list(self, server: str | None = None) -> list[ToolPin]:
        with self._lock:
            return [self._pins[k] for k in sorted(self._pins) if server is None or k[0] == server]

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------------------------
# SQL store

metadata = MetaData()

mcp_tool_pins = Table(
    "mcp_tool_pins",
    metadata,
    Column("server", Text, primary_key=True),
    Column("tool", Text, primary_key=True),
    Column("digest", String(64), nullable=False),  # SHA-256 of the RFC 8785 definition
    Column("description_sha256", String(64), nullable=False),
    Column("schema_sha256", String(64), nullable=False),
    Column("annotations_sha256", String(64), nullable=False),
    Column("definition", Text, nullable=False),  # the pinned definition (canonical JSON), for review
    Column("first_seen", Float, nullable=False),  # unix seconds
    Column("pinned_at", Float, nullable=False),
    Column("observed_digest", String(64)),  # a differing definition listed since, pending an accept
    Column("observed_definition", Text),
    Column("observed_at", Float),
    Column("removed_at", Float),  # missing from the last complete list
)


def _row_pin(row: Any) -> ToolPin:
    return ToolPin(**{column.name: getattr(row, column.name) for column in mcp_tool_pins.columns})


def _pin_values(pin: ToolPin) -> dict[str, Any]:
    return {column.name: getattr(pin, column.name) for column in mcp_tool_pins.columns}


class SqlPinStore:
    """Pins in an SQL database (SQLite or PostgreSQL), shared by every replica given the same URL."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """`create` False (the CLI): refuse a database without the table rather than create one at a mistyped URL."""
        try:
            parsed = make_url(url)
        except ArgumentError as error:
            raise PinError(f"{url!r} is not a database URL", hint=_DB_HINT) from error
        self._backend = parsed.get_backend_name()
        if not create and self._backend == "sqlite" and not (parsed.database and Path(parsed.database).is_file()):
            raise PinError(f"no database at {parsed.database or '(none)'}", hint="check the --db URL")
        try:
            if self._backend == "sqlite":
                self.engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
            if create:
                create_tables(self.engine, metadata)
            elif not inspect(self.engine).has_table(mcp_tool_pins.name):
                self.engine.dispose()
                raise PinError(f"{parsed!r} holds no MCP tool pins yet", hint="the proxy creates them on first list")
        except (NoSuchModuleError, SQLAlchemyError, ImportError) as error:
            raise PinError(f"cannot open the pin database {parsed!r}: {str(error)[:300]}", hint=_DB_HINT) from error

    def _insert(self) -> Any:
        if self._backend == "sqlite":
            return sqlite.insert(mcp_tool_pins)
        if self._backend == "postgresql":
            return postgresql.insert(mcp_tool_pins)
        raise PinError(f"pins need SQLite or PostgreSQL, not {self._backend}", hint=_DB_HINT)

    def _where(self, server: str, tool: str) -> Any:
        return (mcp_tool_pins.c.server == server) & (mcp_tool_pins.c.tool == tool)

    def pins(self, server: str) -> dict[str, ToolPin]:
        with self._errors("read"), self.engine.connect() as conn:
            rows = conn.execute(select(mcp_tool_pins).where(mcp_tool_pins.c.server == server)).all()
        return {row.tool: _row_pin(row) for row in rows}

    def add(self, server: str, definitions: Sequence[ToolDefinition], now: float) -> None:
        if not definitions:
            return
        values = [_pin_values(_new_pin(server, d, now)) for d in definitions]
        with self._errors("write"), self.engine.begin() as conn:
            conn.execute(self._insert().values(values).on_conflict_do_nothing())

    def observe(self, server: str, tool: str, definition: ToolDefinition | None, now: float) -> None:
        if definition is None:
            values: dict[str, Any] = {
                "observed_digest": None,
                "observed_definition": None,
                "observed_at": None,
                "removed_at": now,
            }
        else:
            values = {
                "observed_digest": definition.digest,
                "observed_definition": definition.canonical,
                "observed_at": now,
                "removed_at": None,
            }
        with self._errors("write"), self.engine.begin() as conn:
            conn.execute(update(mcp_tool_pins).where(self._where(server, tool)).values(**values))

    def clear(self, server: str, tool: str) -> None:
        values = {"observed_digest": None, "observed_definition": None, "observed_at": None, "removed_at": None}
        with self._errors("write"), self.engine.begin() as conn:
            conn.execute(update(mcp_tool_pins).where(self._where(server, tool)).values(**values))

    def accept(self, server: str, tool: str | None, now: float) -> list[str]:
        query = select(mcp_tool_pins).where(mcp_tool_pins.c.server == server)
        if tool is not None:
            query = query.where(mcp_tool_pins.c.tool == tool)
        done: list[str] = []
        with self._errors("write"), self.engine.begin() as conn:
            rows = conn.execute(query.with_for_update()).all()
            for row in rows:
                pin = _row_pin(row)
                after = _accepted(pin, now)
                if after is pin:
                    continue
                where = self._where(server, pin.tool) & (
                    mcp_tool_pins.c.observed_digest.is_not_distinct_from(pin.observed_digest)
                )  # accept exactly what the operator saw listed, not a newer observation
                if after is None:
                    conn.execute(delete(mcp_tool_pins).where(where))
                else:
                    values = _pin_values(after)
                    del values["server"], values["tool"]
                    conn.execute(update(mcp_tool_pins).where(where).values(**values))
                done.append(pin.tool)
        if not done:
            raise _nothing_to_accept(server, tool, (row.tool for row in rows))
        return sorted(done)

    def list(self, server: str | None = None) -> list[ToolPin]:
        query = select(mcp_tool_pins).order_by(mcp_tool_pins.c.server, mcp_tool_pins.c.tool)
        if server is not None:
            query = query.where(mcp_tool_pins.c.server == server)
        with self._errors("read"), self.engine.connect() as conn:
            return [_row_pin(row) for row in conn.execute(query).all()]

    def close(self) -> None:
        self.engine.dispose()

    def _errors(self, what: str) -> _PinErrors:
        return _PinErrors(what)


class _PinErrors:
    """Turns a database failure into a PinError (the proxy then fails closed on the tools/list answer)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> bool:
        if isinstance(error, SQLAlchemyError):
            raise PinError(
                f"cannot {self.what} MCP tool pins: {str(error)[:300]}", hint="check the database"
            ) from error
        return False


# --------------------------------------------------------------------------------------------------------------------
# Reviewing a list


@dataclasses.dataclass(frozen=True)
class ToolReview:
    """What one tools/list showed: findings to audit, and the tools the client must not see."""

    findings: tuple[Finding, ...] = ()
    hidden: frozenset[str] = frozenset()


def _path(tool: str) -> str:
    return f"tools[{json.dumps(tool, ensure_ascii=False)}]"


class ToolGuard:
    """Reviews tool lists against the pins; `denies(tool, server)` (PolicySet.denies_unconditionally) hides more."""

    def __init__(
        self,
        store: PinStore,
        denies: Callable[[str, str | None], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.denies = denies
        self.clock = clock

    def review(self, server: str, tools: Sequence[Mapping[str, Any]], complete: bool) -> ToolReview:
        now = self.clock()
        definitions: dict[str, ToolDefinition] = {}
        for tool in tools:
            definition = ToolDefinition.from_tool(tool)
            if definition.name in definitions:
                raise InputError(f"tool {definition.name!r} listed twice", hint="tool names are unique")
            definitions[definition.name] = definition
        pins = self.store.pins(server)
        first_sight = not pins
        new = [d for name, d in definitions.items() if name not in pins]
        if new:
            self.store.add(server, new, now)
            pins = self.store.pins(server)  # another replica may have pinned some of them first
        findings: list[Finding] = []
        hidden: set[str] = set()
        for name, definition in definitions.items():
            pin = pins.get(name)
            if pin is None:  # cannot happen unless the store lost the row: never show an unpinned tool
                hidden.add(name)
                continue
            if pin.digest != definition.digest:
                if pin.observed_digest != definition.digest:
                    self.store.observe(server, name, definition, now)
                members = _changed_members(pin.definition, definition.canonical)
                findings.append(
                    Finding(
                        scanner=SCANNER,
                        category=CHANGED,
                        severity=Severity.HIGH,
                        path=_path(name),
                        message=(
                            f"tool {name!r} of MCP server {server!r} changed since it was pinned "
                            f"({', '.join(members)}); hidden until `aegis mcp pins accept {server} {name}`"
                        ),
                    )
                )
                hidden.add(name)
                continue
            if pin.observed_digest is not None or pin.removed_at is not None:
                self.store.clear(server, name)
            if not first_sight and any(d.name == name for d in new) and pin.first_seen == now:
                findings.append(
                    Finding(
                        scanner=SCANNER,
                        category=ADDED,
                        severity=Severity.MEDIUM,
                        path=_path(name),
                        message=f"MCP server {server!r} lists a new tool {name!r}; pinned from now on",
                    )
                )
        if complete:
            for name, pin in sorted(pins.items()):
                if name not in definitions and pin.removed_at is None:
                    self.store.observe(server, name, None, now)
                    findings.append(
                        Finding(
                            scanner=SCANNER,
                            category=REMOVED,
                            severity=Severity.LOW,
                            path=_path(name),
                            message=f"MCP server {server!r} no longer lists tool {name!r}",
                        )
                    )
        if self.denies is not None:
            hidden.update(name for name in definitions if self.denies(name, server))
        return ToolReview(tuple(findings), frozenset(hidden))

    def pending_change(self, server: str, tool: str) -> bool:
        """Whether the tool is hidden for a change no operator accepted: a call to it comes from a stale list (or
        from instructions naming it), and the addon may refuse it before the policy is even asked."""
        pin = self.store.pins(server).get(tool)
        return pin is not None and pin.status is PinStatus.CHANGED


def _changed_members(old_text: str, new_text: str) -> list[str]:
    old, new = json.loads(old_text), json.loads(new_text)
    return sorted(k for k in set(old) | set(new) if old.get(k, _MISSING) != new.get(k, _MISSING)) or ["definition"]


def open_pin_store(url: str | None, *, create: bool = True) -> PinStore:
    """An SQL store for a URL (the audit log's), or an in-memory one for None."""
    return MemoryPinStore() if url is None else SqlPinStore(url, create=create)


def pin_row(pin: ToolPin) -> dict[str, str]:
    """One pin as the columns `aegis mcp pins list` prints (and its --json lines hold)."""
    changed = ", ".join(pin.changed_members())
    return {
        "server": pin.server,
        "tool": pin.tool,
        "status": pin.status.value,
        "digest": pin.digest[:16],
        "first_seen": _utc(pin.first_seen),
        "pinned_at": _utc(pin.pinned_at),
        "pending": changed or (_utc(pin.removed_at) if pin.removed_at is not None else ""),
    }


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
