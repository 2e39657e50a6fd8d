"""Audit schema migrations: upgrade on SQLite and PostgreSQL, idempotence, and no drift from store.metadata."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_proxy.audit import migrate
from aegis_proxy.audit.errors import AuditError
from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.merkle import MerkleFrontier
from aegis_proxy.audit.merkle import root as merkle_root
from aegis_proxy.audit.store import AppendEntry, AuditStore, audit_head, audit_records, metadata
from aegis_proxy.audit.verify import verify_chain
from tests.pg import pg_schema_url

AUDIT_TABLES = {"audit_records", "audit_head", "audit_arguments", "audit_checkpoints", "audit_staged"}
HEAD = "0003"
AUDIT_INDEXES = {"ix_audit_records_time", "ix_audit_records_tool", "ix_audit_records_agent", "ix_audit_records_session"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        with pg_schema_url() as url:
            yield url


def inspect_db(url: str) -> tuple[set[str], set[str]]:
    """(table names, index names of audit_records) in the connection's default schema."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        tables = set(inspector.get_table_names())
        if "audit_records" not in tables:
            return tables, set()
        # PostgreSQL also lists the unique constraint's own index; only the declared indexes count here.
        indexes = {ix["name"] for ix in inspector.get_indexes("audit_records") if not ix.get("duplicates_constraint")}
        uniques = {(uc["name"], tuple(uc["column_names"])) for uc in inspector.get_unique_constraints("audit_records")}
        assert uniques == {("uq_audit_records_prev", ("origin", "prev_hash"))}
        return tables, indexes
    finally:
        engine.dispose()


def schema_diffs(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": migrate.VERSION_TABLE, "compare_type": True}
            )
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def test_upgrade_creates_all_tables_on_empty_database(db_url: str) -> None:
    assert inspect_db(db_url) == (set(), set())
    assert migrate.current_revision(db_url) is None
    migrate.upgrade(db_url)
    tables, indexes = inspect_db(db_url)
    assert tables == AUDIT_TABLES | {migrate.VERSION_TABLE}
    assert indexes == AUDIT_INDEXES
    assert migrate.current_revision(db_url) == HEAD


def test_upgrade_is_idempotent_and_keeps_data(db_url: str) -> None:
    migrate.upgrade(db_url)
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    store = AuditStore(db_url, origin="test/migrate", signer_key=key, replica="r1")
    try:
        store.append([AppendEntry(type="decision", decision="deny", tool="shell", arguments={"command": "ls"})])
    finally:
        store.close()
    migrate.upgrade(db_url)
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == HEAD
    assert inspect_db(db_url)[0] == AUDIT_TABLES | {migrate.VERSION_TABLE}
    store = AuditStore(db_url, origin="test/migrate", signer_key=key, replica="r1")
    try:
        assert store.head()[0] == 0  # the record written before the second upgrade is still there
        kid = key_id(key.public_key())
        verify_chain(store, {kid: TrustedKey(kid, key.public_key(), 0)})
    finally:
        store.close()


def test_migrated_schema_matches_store_metadata(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert schema_diffs(db_url) == []


def test_drift_check_is_real(db_url: str) -> None:
    # Guards the test above: if compare_metadata could not see a missing index, "no differences" would mean nothing.
    migrate.upgrade(db_url)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_audit_records_tool"))
    engine.dispose()
    diffs = schema_diffs(db_url)
    assert [(diff[0], diff[1].name) for diff in diffs] == [("add_index", "ix_audit_records_tool")]  # type: ignore[index]


def test_concurrent_upgrades_in_one_process_all_succeed(db_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate.upgrade(db_url)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert migrate.current_revision(db_url) == HEAD
    assert schema_diffs(db_url) == []


def _upgrade_in_child(url: str, start: threading.Barrier) -> None:
    start.wait(timeout=30)  # all children past their (slow) imports before anyone migrates
    migrate.upgrade(url)


def test_concurrent_upgrades_from_many_processes_on_postgresql() -> None:
    # Replicas starting at once: the advisory lock in env.py must let exactly one create the tables.
    with pg_schema_url() as db_url:
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(4)
        children = [context.Process(target=_upgrade_in_child, args=(db_url, start)) for _ in range(4)]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout=60)
        assert [child.exitcode for child in children] == [0, 0, 0, 0]
        assert migrate.current_revision(db_url) == HEAD
        assert schema_diffs(db_url) == []


def test_single_head() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrate.MIGRATIONS_DIR))
    assert script.get_heads() == [HEAD]


def test_missing_migrations_folder_raises_with_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", tmp_path / "nowhere")
    with pytest.raises(AuditError) as caught:
        migrate.upgrade(f"sqlite:///{tmp_path / 'audit.db'}")
    assert "not found" in caught.value.message
    assert "checkout" in caught.value.hint


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg2://postgres@127.0.0.1:1/nope", "sqlite:////nonexistent-dir/sub/audit.db"],
    ids=["unreachable_pg", "unwritable_sqlite"],
)
def test_bad_url_raises_audit_error(url: str) -> None:
    with pytest.raises(AuditError, match="migration failed"):
        migrate.upgrade(url)
    with pytest.raises(AuditError, match="cannot read"):
        migrate.current_revision(url)


# --- revision 0002: checkpoints and the Merkle frontier ---------------------------------------------------------------

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_ID = key_id(KEY.public_key())


def alembic(url: str, action: Callable[[Config, str], None], revision: str) -> None:
    """Run an Alembic command (upgrade/downgrade/stamp) to `revision` the way migrate.upgrade does."""
    config = migrate._config()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.begin()
            config.attributes["connection"] = connection
            action(config, revision)
            connection.commit()
    finally:
        engine.dispose()


def head_frontier(url: str, origin: str) -> bytes:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return bytes(
                conn.execute(sa.select(audit_head.c.frontier).where(audit_head.c.origin == origin)).scalar_one()
            )
    finally:
        engine.dispose()


def leaf_hashes(url: str, origin: str) -> list[bytes]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(audit_records.c.leaf_hash).where(audit_records.c.origin == origin)
            return [bytes(leaf) for leaf in conn.execute(query.order_by(audit_records.c.seq)).scalars()]
    finally:
        engine.dispose()


def write_log(url: str, origin: str, records: int) -> None:
    store = AuditStore(url, origin=origin, signer_key=KEY, replica="r1", checkpoint_every=10_000)
    try:
        store.append(
            [AppendEntry(type="decision", decision="deny", tool="t", arguments={"n": i}) for i in range(records)]
        )
    finally:
        store.close()


@pytest.mark.parametrize("records", [0, 1, 37])
def test_upgrade_from_0001_computes_the_frontier_of_existing_records(db_url: str, records: int) -> None:
    write_log(db_url, "test/old", records)
    expected = head_frontier(db_url, "test/old")
    alembic(db_url, command.downgrade, "0001")
    assert migrate.current_revision(db_url) == "0001"
    assert inspect_db(db_url)[0] == AUDIT_TABLES - {"audit_checkpoints", "audit_staged"} | {migrate.VERSION_TABLE}
    migrate.upgrade(db_url)
    frontier = MerkleFrontier()
    frontier.extend(leaf_hashes(db_url, "test/old"))
    assert head_frontier(db_url, "test/old") == expected == b"".join(frontier.state()[1])
    assert schema_diffs(db_url) == []
    if records:  # the first checkpoint after the upgrade covers the records written before it
        store = AuditStore(db_url, origin="test/old", signer_key=KEY, replica="r1")
        try:
            assert store.checkpoint().root_hash == merkle_root(leaf_hashes(db_url, "test/old"))
            verify_chain(store, {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0)})
        finally:
            store.close()


def test_database_made_by_create_all_is_adopted_as_0001(db_url: str) -> None:
    # Earlier builds made the 0001 tables with metadata.create_all: same tables, no version table.
    write_log(db_url, "test/adopted", 3)
    alembic(db_url, command.downgrade, "0001")
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {migrate.VERSION_TABLE}"))
    engine.dispose()
    assert migrate.current_revision(db_url) is None
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == HEAD
    assert schema_diffs(db_url) == []
    assert len(leaf_hashes(db_url, "test/adopted")) == 3


def test_upgrade_refuses_a_log_with_a_gap_and_changes_nothing(db_url: str) -> None:
    write_log(db_url, "test/gap", 5)
    alembic(db_url, command.downgrade, "0001")
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.delete(audit_records).where(audit_records.c.seq == 2))
    engine.dispose()
    with pytest.raises(AuditError, match="expected seq 2, found 3"):
        migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == "0001"  # one transaction: the failed upgrade left nothing behind
    assert inspect_db(db_url)[0] == AUDIT_TABLES - {"audit_checkpoints", "audit_staged"} | {migrate.VERSION_TABLE}


def test_0003_adds_the_staged_decisions_table_and_removes_it_again(db_url: str) -> None:
    write_log(db_url, "test/staged", 2)
    alembic(db_url, command.downgrade, "0002")
    assert "audit_staged" not in inspect_db(db_url)[0]
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == HEAD
    assert "audit_staged" in inspect_db(db_url)[0]
    assert schema_diffs(db_url) == []
    assert len(leaf_hashes(db_url, "test/staged")) == 2


def test_side_tables_are_created_once_when_replicas_start_together() -> None:
    """Approvals and MCP pins tables beside the log: replicas racing on an empty PostgreSQL must all start."""
    import threading

    from aegis_proxy.approvals import ApprovalStore
    from aegis_proxy.tool_pins import SqlPinStore

    with pg_schema_url() as url:
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def start(kind: type) -> None:
            barrier.wait()
            try:
                kind(url).close()
            except BaseException as error:  # collected and reported below
                errors.append(error)

        threads = [threading.Thread(target=start, args=(kind,)) for kind in (ApprovalStore, SqlPinStore) * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        tables, _ = inspect_db(url)
        assert {"approvals", "mcp_tool_pins"} <= tables
