"""Real signed audit logs on SQLite and PostgreSQL for the tamper, export and CLI tests.

Each PostgreSQL log lives in a fresh schema (made the connection's default through search_path), so tests never see
each other's tables and a dropped schema removes everything a test wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_proxy.audit.checkpoint import Checkpoint, parse_checkpoint, sign_checkpoint
from aegis_proxy.audit.keys import TrustedKey, key_id, public_key_hex
from aegis_proxy.audit.merkle import MerkleFrontier, root
from aegis_proxy.audit.record import RecordBody, SignedRecord, parse_body, sign_record
from aegis_proxy.audit.store import (
    AppendEntry,
    AuditStore,
    audit_checkpoints,
    audit_head,
    audit_records,
    checkpoint_key_name,
)
from tests.pg import pg_schema_url

ORIGIN = "proxy.example/tamper"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_ID = key_id(KEY.public_key())
TRUSTED = {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0)}
# (effect, tool, agent, session, rules) of records 0..7
EVENTS = [
    ("allow", "read_file", "a1", "s1", ()),
    ("deny", "shell", "a1", "s1", ("no-curl-pipe-sh",)),
    ("ask", "send_email", "a2", "s2", ("ask-external-mail",)),
    ("deny", "http_get", "a2", "s2", ("no-metadata-ip", "no-curl-pipe-sh")),
    ("allow", "read_file", "a1", "s3", ()),
    ("deny", "shell", "a3", "s3", ("no-rm-rf",)),
    ("allow", "list_dir", "a3", "s3", ()),
    ("deny", "write_file", "a1", "s1", ("no-system-writes",)),
]


def trust_toml(*keys: tuple[Ed25519PrivateKey, int, int | None]) -> str:
    entries = []
    for key, first, last in keys:
        public = key.public_key()
        entry = f'[[keys]]\nkey_id = "{key_id(public)}"\npublic_key = "{public_key_hex(public)}"\nfirst_seq = {first}\n'
        entries.append(entry + ("" if last is None else f"last_seq = {last}\n"))
    return "\n".join(entries)


@pytest.fixture(name="db_url", params=["sqlite", "postgresql"])
def db_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        with pg_schema_url() as url:
            yield url


class Log:
    """A log of len(EVENTS) records signed by KEY, plus the raw-SQL tools a tamperer (or a test) uses on it."""

    def __init__(self, url: str, tmp_path: Path, origin: str = ORIGIN, events: int = len(EVENTS)) -> None:
        self.url, self.origin, self.tmp_path = url, origin, tmp_path
        self.trusted_path = tmp_path / "trusted.toml"
        self.trusted_path.write_text(trust_toml((KEY, 0, None)))
        self.store = AuditStore(url, origin=origin, signer_key=KEY, replica="r1", checkpoint_interval=3600)
        self.engine = self.store.engine
        self.append(events)

    def append(self, count: int) -> None:
        start = self.size
        entries = []
        for n in range(start, start + count):
            effect, tool, agent, session, rules = EVENTS[n % len(EVENTS)]
            entries.append(
                AppendEntry(
                    type="decision",
                    decision=effect,
                    tool=tool,
                    arguments={"n": n},
                    agent_id=agent,
                    session_id=session,
                    rules=rules,
                )
            )
        if entries:
            self.store.append(entries)

    def close(self) -> None:
        self.store.close()

    # reading ------------------------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.store.head()[0] + 1

    def rows(self) -> dict[int, sa.Row[tuple[object, ...]]]:
        with self.engine.connect() as conn:
            query = sa.select(audit_records).where(audit_records.c.origin == self.origin)
            return {row.seq: row for row in conn.execute(query)}

    def signed(self, seq: int) -> SignedRecord:
        row = self.rows()[seq]
        return SignedRecord(
            body_bytes=bytes(row.body),
            leaf_hash=bytes(row.leaf_hash),
            key_id=row.key_id,
            signature=bytes(row.signature),
        )

    def body(self, seq: int) -> RecordBody:
        return parse_body(self.signed(seq).body_bytes)

    def leaves(self) -> list[bytes]:
        rows = self.rows()
        return [bytes(rows[seq].leaf_hash) for seq in sorted(rows)]

    # checkpoints --------------------------------------------------------------------------------------------------

    def note(self, size: int, key: Ed25519PrivateKey = KEY, leaves: list[bytes] | None = None) -> str:
        """A checkpoint note of the log's first `size` records, signed as the store signs them."""
        tree = (self.leaves() if leaves is None else leaves)[:size]
        name = checkpoint_key_name(self.origin, key_id(key.public_key()))
        return sign_checkpoint(Checkpoint(self.origin, size, root(tree)), name, key)

    def export_checkpoint(self, size: int | None = None) -> Path:
        """An off-box copy of the checkpoint at `size` (default: the whole log), as `aegis audit checkpoint
        --export` would write it."""
        size = self.size if size is None else size
        path = self.tmp_path / f"anchor-{size}-{uuid.uuid4().hex[:6]}.checkpoint"
        path.write_text(self.note(size))
        return path

    def store_checkpoint(self, size: int, note: str | None = None) -> None:
        """Insert a checkpoint row (as the store would) unless one of that size exists."""
        note = self.note(size) if note is None else note
        tree_root = parse_checkpoint(note)[0].root  # the row's copy of the note's root, as the store writes it
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(audit_checkpoints.c.size).where(
                    audit_checkpoints.c.origin == self.origin, audit_checkpoints.c.size == size
                )
            ).first()
            if exists is None:
                conn.execute(
                    sa.insert(audit_checkpoints).values(
                        origin=self.origin,
                        size=size,
                        root_hash=tree_root,
                        note=note,
                        time="2026-11-29T10:00:00.000000Z",
                    )
                )

    def checkpoint_sizes(self) -> list[int]:
        with self.engine.connect() as conn:
            query = sa.select(audit_checkpoints.c.size).where(audit_checkpoints.c.origin == self.origin)
            return sorted(conn.execute(query).scalars())

    # tampering ----------------------------------------------------------------------------------------------------

    def execute(self, statement: sa.Executable) -> None:
        with self.engine.begin() as conn:
            conn.execute(statement)

    def where(self, seq: int) -> sa.ColumnElement[bool]:
        return sa.and_(audit_records.c.origin == self.origin, audit_records.c.seq == seq)

    def update(self, seq: int, **values: object) -> None:
        self.execute(sa.update(audit_records).where(self.where(seq)).values(**values))

    def delete(self, *seqs: int) -> None:
        self.execute(
            sa.delete(audit_records).where(audit_records.c.origin == self.origin, audit_records.c.seq.in_(seqs))
        )

    def delete_checkpoints_from(self, size: int) -> None:
        self.execute(
            sa.delete(audit_checkpoints).where(
                audit_checkpoints.c.origin == self.origin, audit_checkpoints.c.size >= size
            )
        )

    def reset_head(self) -> None:
        """Point the head row (seq, leaf hash, Merkle frontier) at the records now present, as a careful tamperer
        would after deleting or rewriting some, so that only the signatures and checkpoints can give it away."""
        leaves = self.leaves()
        frontier = MerkleFrontier()
        frontier.extend(leaves)
        self.execute(
            sa.update(audit_head)
            .where(audit_head.c.origin == self.origin)
            .values(
                seq=len(leaves) - 1,
                leaf_hash=leaves[-1] if leaves else bytes(32),
                frontier=b"".join(frontier.state()[1]),
            )
        )

    def write_record(self, body: RecordBody, key: Ed25519PrivateKey = KEY, *, insert: bool = False) -> SignedRecord:
        """Put a body signed by `key` at its seq, with matching columns (an insider holding a key)."""
        signed = sign_record(body, key)
        values = {
            "body": signed.body_bytes,
            "leaf_hash": signed.leaf_hash,
            "prev_hash": bytes.fromhex(body.prev),
            "key_id": signed.key_id,
            "signature": signed.signature,
            "time": body.time,
            "type": body.type,
            "tool": body.tool,
            "decision": body.decision,
            "agent_id": body.agent_id,
            "session_id": body.session_id,
        }
        if insert:
            self.execute(sa.insert(audit_records).values(origin=self.origin, seq=body.seq, **values))
        else:
            self.update(body.seq, **values)
        return signed


@pytest.fixture(name="log")
def log_fixture(db_url: str, tmp_path: Path) -> Iterator[Log]:
    audit_log = Log(db_url, tmp_path)
    yield audit_log
    audit_log.close()


@pytest.fixture(name="db_log")
def db_log_fixture(db_url: str, tmp_path: Path) -> Iterator[Log]:
    """The same log as `log`, for test modules that already have a fixture of that name."""
    audit_log = Log(db_url, tmp_path)
    yield audit_log
    audit_log.close()
