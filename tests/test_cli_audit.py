"""`aegis audit verify|list|show` and `aegis keys generate` on a real signed log in a temporary SQLite file."""

from __future__ import annotations

import json
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from aegis_proxy.audit.keys import load_key
from aegis_proxy.audit.store import AppendEntry, AuditStore, audit_head, audit_records
from aegis_proxy.cli import AUDIT_COMMANDS, KEYS_COMMANDS, build_parser, main
from tests.audit_support import Log as DbLog
from tests.audit_support import db_log_fixture, db_url_fixture  # noqa: F401 - fixtures

ORIGIN = "proxy.example/test"
# (effect, tool, agent, session) of records 0..4
EVENTS = [
    ("allow", "shell", "a1", "s1"),
    ("deny", "shell", "a1", "s1"),
    ("ask", "send_email", "a2", "s2"),
    ("deny", "http_get", "a2", "s2"),
    ("allow", "read_file", "a1", "s3"),
]


class Log:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.key_path = tmp_path / "audit-key.pem"
        assert main(["keys", "generate", str(self.key_path)]) == 0
        generated = capsys.readouterr().out
        self.trusted = tmp_path / "trusted.toml"
        self.trusted.write_text(generated[generated.index("[[keys]]") :])
        self.url = f"sqlite:///{tmp_path / 'audit.db'}"
        store = AuditStore(self.url, origin=ORIGIN, signer_key=load_key(self.key_path), replica="r1")
        entries = [
            AppendEntry(type="decision", decision=e, tool=t, arguments={"n": i}, agent_id=a, session_id=s)
            for i, (e, t, a, s) in enumerate(EVENTS)
        ]
        store.append(entries)
        self.engine = store.engine

    def args(self, *extra: str) -> list[str]:
        return [*extra, "--db", self.url, "--origin", ORIGIN]

    def execute(self, statement: sa.Executable) -> None:
        with self.engine.begin() as conn:
            conn.execute(statement)

    def body(self, seq: int) -> bytes:
        with self.engine.connect() as conn:
            query = sa.select(audit_records.c.body).where(audit_records.c.seq == seq)
            return bytes(conn.execute(query).scalar_one())

    def set_column(self, seq: int, **values: object) -> None:
        self.execute(sa.update(audit_records).where(audit_records.c.seq == seq).values(**values))

    def set_raw(self, seq: int, column: str, value: object) -> None:
        """A raw SQL update, as with the sqlite3 shell: the value keeps its own type (TEXT, INTEGER), not BLOB."""
        self.execute(
            sa.text(f"UPDATE audit_records SET {column} = :value WHERE seq = :seq").bindparams(value=value, seq=seq)
        )


@pytest.fixture
def log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Log:
    return Log(tmp_path, capsys)


def verify(log: Log, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(log.args("audit", "verify", "--trusted-keys", str(log.trusted)))
    return code, capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize(
    ("group", "name"), [("audit", c[0]) for c in AUDIT_COMMANDS] + [("keys", c[0]) for c in KEYS_COMMANDS]
)
def test_every_subcommand_has_an_example(group: str, name: str) -> None:
    parser = build_parser()
    group_parser = next(a for a in parser._actions if a.dest == "command").choices[group]  # type: ignore[union-attr]
    sub = next(a for a in group_parser._actions if a.dest == "group_command").choices[name]
    help_text = sub.format_help()
    assert "Example:" in help_text and f"aegis {group} {name}" in help_text


@pytest.mark.parametrize("group", ["audit", "keys"])
def test_group_without_a_subcommand_is_usage(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([group]) == 2
    assert "SUBCOMMAND" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# keys generate


def test_keys_generate_writes_an_owner_only_key_and_its_trust_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.pem"
    assert main(["keys", "generate", str(path), "--first-seq", "7"]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    key_id = out.split("key id ")[1].split()[0]
    assert f'key_id = "{key_id}"' in out and "first_seq = 7" in out
    load_key(path)  # the key loads under the 0600 rule


def test_keys_generate_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.pem"
    path.write_text("precious")
    assert main(["keys", "generate", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert path.read_text() == "precious"


def test_keys_trust_entry_of_the_proxys_own_key_verifies_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first-run story: `aegis run` made .aegis/audit.key; trust-entry (no arguments) prints what a verifier needs."""
    from aegis_proxy.config import load_config
    from aegis_proxy.gate import Gate
    from aegis_proxy.models import CallContext, ToolCall

    monkeypatch.chdir(tmp_path)
    config = load_config(None, {})
    with Gate.from_config(config) as gate:
        assert gate.decide(ToolCall(id="1", tool="read_file", arguments={"path": "README.md"}), CallContext()).audit_seq
    assert main(["keys", "trust-entry"]) == 0
    trusted = tmp_path / "trusted-keys.toml"
    trusted.write_text(capsys.readouterr().out)
    assert main(["audit", "verify", "--trusted-keys", str(trusted)]) == 0
    assert "OK:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mode", "message"), [(0o644, "others can read it"), (None, "not found|no such|does not exist|cannot read")]
)
def test_keys_trust_entry_refuses_what_the_signer_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int | None, message: str
) -> None:
    path = tmp_path / "k.pem"
    if mode is not None:
        assert main(["keys", "generate", str(path)]) == 0
        path.chmod(mode)
    capsys.readouterr()
    assert main(["keys", "trust-entry", str(path)]) == 2
    assert re.search(message, capsys.readouterr().err, re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------------
# audit verify


def test_verify_passes_and_prints_numbered_steps(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify(log, capsys)
    assert code == 0, out
    for number in range(1, 9):
        assert f"  {number}. " in out
    assert out.count(": OK") == 6
    assert "  7. trusted checkpoints are signed by trusted keys and name this log: skipped" in out
    assert "5 records verified (seq 0..4)" in out
    assert "unanchored: seq 0..4 (5 records; anchored by no --trusted checkpoint)" in out  # never a silent OK


def test_verify_reports_staged_decisions_apart_from_the_records(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    store = AuditStore(log.url, origin=ORIGIN, signer_key=load_key(log.key_path), replica="r1")
    store.stage(AppendEntry(type="decision", decision="allow", tool="t", arguments={}))
    store.stage(AppendEntry(type="decision", decision="deny", tool="t", arguments={}))
    oldest = store.staged()[1]
    store.close()
    code, out = verify(log, capsys)
    assert code == 0, out
    assert "5 records verified (seq 0..4)" in out  # not counted as records: they are not chained, not signed
    assert f"staged: 2 decisions durable but not yet chained (the oldest at {oldest})" in out


def test_verify_names_the_seq_of_an_edited_body_byte(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    body = bytearray(log.body(2))
    body[body.index(b'"ask"') + 1] = ord("b")  # "ask" -> "bsk"
    log.set_column(2, body=bytes(body))
    code, out = verify(log, capsys)
    assert code == 1
    assert "2. every record verifies on its own" in out and "FAILED at seq 2" in out
    assert "  1. seq is contiguous from 0: OK" in out and "3. every prev" not in out
    assert "2 records verified before the failure" in out


def test_verify_catches_a_body_rewritten_as_text(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    # What `sqlite3 audit.db "update ... set body = replace(body, ...)"` leaves: a TEXT value, not a BLOB.
    log.set_raw(1, "body", log.body(1).decode().replace('"deny"', '"allow"'))
    code, out = verify(log, capsys)
    assert code == 1 and "FAILED at seq 1" in out


@pytest.mark.parametrize(
    ("seq", "values", "step"),
    [
        pytest.param(3, {"decision": "allow"}, "4. indexed columns", id="indexed-column-deny-to-allow"),
        pytest.param(4, {"signature": bytes(64)}, "2. every record", id="zeroed-signature"),
        pytest.param(2, {"signature": 64}, "2. every record", id="signature-not-a-blob"),
        pytest.param(1, {"leaf_hash": "x" * 32}, "2. every record", id="leaf-hash-as-text"),
    ],
)
def test_verify_names_the_seq_of_an_edited_column(
    log: Log, capsys: pytest.CaptureFixture[str], seq: int, values: dict[str, object], step: str
) -> None:
    for column, value in values.items():
        log.set_raw(seq, column, value)
    code, out = verify(log, capsys)
    assert code == 1
    assert f"{step}" in out and f"FAILED at seq {seq}" in out


def test_verify_catches_a_deleted_middle_record(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    log.execute(sa.delete(audit_records).where(audit_records.c.seq == 2))
    code, out = verify(log, capsys)
    assert code == 1 and "1. seq is contiguous from 0: FAILED at seq 3" in out


def test_verify_catches_a_head_row_out_of_step(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    log.execute(sa.delete(audit_records).where(audit_records.c.seq == 4))  # truncation the head row still remembers
    code, out = verify(log, capsys)
    assert code == 1 and "5. head row matches the last record: FAILED" in out


def test_verify_with_someone_elses_key_fails(log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", str(tmp_path / "other.pem")]) == 0
    generated = capsys.readouterr().out
    log.trusted.write_text(generated[generated.index("[[keys]]") :])
    code, out = verify(log, capsys)
    assert code == 1 and "FAILED at seq 0" in out and "unknown key id" in out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param({"trusted": "missing.toml"}, "cannot read trusted keys", id="missing-trusted-keys"),
        pytest.param({"trusted": "bad.toml"}, "is invalid", id="invalid-trusted-keys"),
        pytest.param({"url": "not a url"}, "is not a database URL", id="bad-url"),
        pytest.param({"url": "sqlite:///{tmp}/none.db"}, "no audit database", id="missing-sqlite-file"),
        pytest.param({"url": "sqlite:///{tmp}/empty.db"}, "holds no audit log", id="not-an-audit-database"),
        pytest.param({"origin": "someone/else"}, "origins here: proxy.example/test", id="unknown-origin"),
    ],
)
def test_verify_usage_errors_exit_2_with_a_hint(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str], expected: str
) -> None:
    (tmp_path / "bad.toml").write_text("[[keys]]\nkey_id = 1\n")
    sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}").connect().close()
    url = change.get("url", log.url).replace("{tmp}", str(tmp_path))
    trusted = str(tmp_path / change["trusted"]) if "trusted" in change else str(log.trusted)
    origin = change.get("origin", ORIGIN)
    code = main(["audit", "verify", "--db", url, "--origin", origin, "--trusted-keys", trusted])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "hint:" in err


def test_verify_creates_nothing(log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["audit", "verify", "--db", log.url, "--origin", "typo", "--trusted-keys", str(log.trusted)])
    main(["audit", "verify", "--db", f"sqlite:///{tmp_path / 'typo.db'}", "--origin", ORIGIN, "--trusted-keys", "x"])
    capsys.readouterr()
    with log.engine.connect() as conn:
        assert conn.execute(sa.select(audit_head.c.origin)).scalars().all() == [ORIGIN]
    assert not (tmp_path / "typo.db").exists()


# --------------------------------------------------------------------------------------------------------------------
# audit list


@pytest.mark.parametrize(
    ("filters", "seqs"),
    [
        pytest.param([], [0, 1, 2, 3, 4], id="all"),
        pytest.param(["--effect", "deny"], [1, 3], id="effect"),
        pytest.param(["--tool", "shell"], [0, 1], id="tool"),
        pytest.param(["--agent", "a2"], [2, 3], id="agent"),
        pytest.param(["--session", "s1", "--effect", "allow"], [0], id="session-and-effect"),
        pytest.param(["--limit", "2"], [3, 4], id="limit-keeps-most-recent"),
        pytest.param(["--tool", "no_such_tool"], [], id="no-match"),
        pytest.param(
            ["--since", "2000-01-01T00:00:00Z", "--until", "2999-01-01T00:00:00+02:00"],
            [0, 1, 2, 3, 4],
            id="wide-window",
        ),
        pytest.param(["--since", "2999-01-01T00:00:00Z"], [], id="since-future"),
        pytest.param(["--until", "2000-01-01T00:00:00Z"], [], id="until-past"),
    ],
)
def test_list_filters(log: Log, capsys: pytest.CaptureFixture[str], filters: list[str], seqs: list[int]) -> None:
    assert main(log.args("audit", "list", "--json", *filters)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == seqs
    for line in lines:
        effect, tool, agent, session = EVENTS[line["seq"]]
        assert (line["decision"], line["tool"], line["agent_id"], line["session_id"]) == (effect, tool, agent, session)


def test_list_time_window_selects_by_record_time(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(log.args("audit", "list", "--json")) == 0
    times = [json.loads(line)["time"] for line in capsys.readouterr().out.splitlines()]
    assert main(log.args("audit", "list", "--json", "--since", times[1], "--until", times[3])) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [1, 2, 3]


def test_list_prints_a_table_by_default(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(log.args("audit", "list", "--effect", "ask")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "TYPE", "EFFECT", "TOOL", "AGENT", "SESSION"]
    assert lines[1].split()[0] == "2" and lines[1].split()[2:] == ["decision", "ask", "send_email", "a2", "s2"]
    assert lines[2].startswith("(1 record;")


def test_list_escapes_control_characters_from_tampered_columns(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    log.set_column(0, tool="shell\x1b[2J")
    assert main(log.args("audit", "list", "--limit", "5")) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "shell\\x1b[2J" in out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(["--since", "yesterday"], "not an RFC 3339 time", id="bad-time"),
        pytest.param(["--since", "2026-11-29T10:00:00"], "with a zone", id="time-without-zone"),
        pytest.param(["--limit", "0"], "at least 1", id="zero-limit"),
    ],
)
def test_list_usage_errors(log: Log, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str) -> None:
    assert main(log.args("audit", "list", *flags)) == 2
    assert expected in capsys.readouterr().err


def test_list_rejects_an_unknown_effect(log: Log) -> None:
    with pytest.raises(SystemExit) as info:
        main(log.args("audit", "list", "--effect", "maybe"))
    assert info.value.code == 2


# --------------------------------------------------------------------------------------------------------------------
# audit show


def test_show_prints_body_leaf_hash_key_and_signature(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(log.args("audit", "show", "3", "--trusted-keys", str(log.trusted))) == 0
    out = capsys.readouterr().out
    body = json.loads(out[: out.index("\nleaf hash:")])
    assert (body["seq"], body["decision"], body["tool"], body["origin"]) == (3, "deny", "http_get", ORIGIN)
    assert f"leaf hash: {_leaf(log, 3)}" in out and "MISMATCH" not in out
    assert f"key id: {body['key_id']}" in out
    assert "signature: OK" in out


def test_show_without_trusted_keys_does_not_claim_a_signature_check(
    log: Log, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(log.args("audit", "show", "0")) == 0
    assert "signature: not checked" in capsys.readouterr().out


def test_show_flags_an_edited_body(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    log.set_column(1, body=log.body(1).replace(b'"deny"', b'"ask"'))
    assert main(log.args("audit", "show", "1", "--trusted-keys", str(log.trusted))) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "signature: leaf hash mismatch" in out


def test_show_a_missing_seq_is_usage(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(log.args("audit", "show", "99")) == 2
    assert "no record with seq 99" in capsys.readouterr().err


def _leaf(log: Log, seq: int) -> str:
    with log.engine.connect() as conn:
        query = sa.select(audit_records.c.leaf_hash).where(audit_records.c.seq == seq)
        return bytes(conn.execute(query).scalar_one()).hex()


# --------------------------------------------------------------------------------------------------------------------
# On SQLite and PostgreSQL: verify with checkpoints and exports, checkpoint, export, tail, list --rule (audit_support)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def db_args(db_log: DbLog, *extra: str) -> list[str]:
    return [*extra, "--db", db_log.url, "--origin", db_log.origin]


def test_verify_against_an_exported_checkpoint(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    anchor = db_log.export_checkpoint(6)
    trusted = ["--trusted-keys", str(db_log.trusted_path), "--trusted", str(anchor)]
    code, out, _ = run(db_args(db_log, "audit", "verify", *trusted), capsys)
    assert code == 0, out
    assert "  8. the log is a consistent extension of every trusted checkpoint: OK (trusted sizes 6)" in out
    assert "unanchored: seq 6..7 (2 records; anchored by the trusted checkpoint at size 6)" in out
    code, out, _ = run(
        db_args(db_log, "audit", "verify", *trusted[:2], "--trusted", str(db_log.export_checkpoint())), capsys
    )
    assert code == 0 and "anchored: every record is covered by the trusted checkpoint at size 8" in out


def test_verify_names_the_truncation_an_anchor_reveals(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    anchor = db_log.export_checkpoint()
    db_log.delete(6, 7)
    db_log.delete_checkpoints_from(7)
    db_log.reset_head()
    argv = db_args(db_log, "audit", "verify", "--trusted-keys", str(db_log.trusted_path), "--trusted", str(anchor))
    code, out, _ = run(argv, capsys)
    assert code == 1
    assert "  7. trusted checkpoints are signed by trusted keys and name this log: OK" in out
    assert (
        "  8. the log is a consistent extension of every trusted checkpoint: FAILED at seq 6 (checkpoint size 8)" in out
    )
    assert "records 6..7 were deleted" in out and "unanchored" not in out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(["--trusted", "{tmp}/missing.checkpoint"], "cannot read checkpoint", id="missing-anchor-file"),
        pytest.param(["--export", "{tmp}/x.jsonl"], "not both", id="db-and-export"),
    ],
)
def test_verify_checkpoint_usage_errors(
    db_log: DbLog, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    flags = [f.replace("{tmp}", str(db_log.tmp_path)) for f in flags]
    code, _, err = run(db_args(db_log, "audit", "verify", "--trusted-keys", str(db_log.trusted_path), *flags), capsys)
    assert code == 2 and expected in err


def test_export_then_verify_the_file(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    db_log.store.checkpoint()
    out_file = db_log.tmp_path / "audit.jsonl"
    code, out, _ = run(
        db_args(db_log, "audit", "export", "--format", "jsonl", "--proofs", "--out", str(out_file)), capsys
    )
    assert code == 0 and out == ""
    assert len(out_file.read_text().splitlines()) == 9
    verify_argv = ["audit", "verify", "--export", str(out_file), "--trusted-keys", str(db_log.trusted_path)]
    code, out, _ = run([*verify_argv, "--origin", db_log.origin], capsys)
    assert code == 0, out
    assert f"verifying export {out_file} of log {db_log.origin!r}" in out
    assert "  6. every inclusion proof leads from its record to the checkpoint's root: OK (8 proofs)" in out
    assert "unanchored: seq 0..7" in out
    code, out, _ = run([*verify_argv, "--trusted", str(db_log.export_checkpoint())], capsys)
    assert code == 0 and "anchored: every record" in out
    code, out, _ = run([*verify_argv, "--origin", "someone/else"], capsys)
    assert code == 1 and "the export is of log" in out


def test_export_to_stdout_and_a_tampered_export(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(db_args(db_log, "audit", "export"), capsys)
    assert code == 0
    lines = out.splitlines(keepends=True)
    assert json.loads(lines[0])["proofs"] is False and len(lines) == 9
    tampered = db_log.tmp_path / "tampered.jsonl"
    tampered.write_text("".join([lines[0], lines[1], lines[3], *lines[4:]]))
    argv = ["audit", "verify", "--export", str(tampered), "--trusted-keys", str(db_log.trusted_path)]
    code, out, _ = run(argv, capsys)
    assert code == 1
    assert "  2. every line is a well-formed record line" in out and "FAILED at seq 1: line 3: seq 2 is not" in out


def test_export_proofs_without_a_checkpoint_is_usage(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(db_args(db_log, "audit", "export", "--proofs"), capsys)
    assert code == 2 and "no stored checkpoint" in err


def test_checkpoint_show_and_export(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    trusted = ["--trusted-keys", str(db_log.trusted_path)]
    code, out, _ = run(db_args(db_log, "audit", "checkpoint"), capsys)
    assert code == 0 and "has no stored checkpoint yet (8 records)" in out
    db_log.store.checkpoint()
    db_log.append(2)
    code, out, _ = run(db_args(db_log, "audit", "checkpoint", *trusted), capsys)
    assert code == 0, out
    assert f"checkpoint of log {db_log.origin!r} at size 8" in out
    assert "  signature: OK" in out and "  log's tree at size 8: OK" in out
    assert "2 records after the newest checkpoint (seq 8..9) are not covered yet" in out
    folder = db_log.tmp_path / "anchors"
    folder.mkdir()
    code, out, _ = run(db_args(db_log, "audit", "checkpoint", *trusted, "--export", str(folder)), capsys)
    written = folder / "proxy.example_tamper.8.checkpoint"
    assert code == 0 and f"{written}: written" in out
    assert written.read_text() == db_log.store.latest_checkpoint().note  # type: ignore[union-attr]
    code, out, _ = run(db_args(db_log, "audit", "checkpoint", *trusted, "--export", str(folder)), capsys)
    assert code == 0 and "already exported" in out
    # the exported note anchors the log
    verify_argv = db_args(db_log, "audit", "verify", *trusted, "--trusted", str(written))
    code, out, _ = run(verify_argv, capsys)
    assert code == 0 and "unanchored: seq 8..9" in out


def test_checkpoint_export_refuses_a_checkpoint_that_does_not_verify(
    db_log: DbLog, capsys: pytest.CaptureFixture[str]
) -> None:
    db_log.store_checkpoint(5, db_log.note(5, leaves=[bytes(32)] * 8))  # signed, but not this log's tree
    folder = db_log.tmp_path / "anchors"
    folder.mkdir()
    argv = db_args(db_log, "audit", "checkpoint", "--trusted-keys", str(db_log.trusted_path), "--export", str(folder))
    code, out, _ = run(argv, capsys)
    assert code == 1
    assert "log's tree at size 5: the log's first 5 records have another root" in out and "not written" in out
    assert list(folder.iterdir()) == []


def test_checkpoint_export_never_overwrites_a_different_checkpoint(
    db_log: DbLog, capsys: pytest.CaptureFixture[str]
) -> None:
    db_log.store.checkpoint()
    folder = db_log.tmp_path / "anchors"
    folder.mkdir()
    existing = folder / "proxy.example_tamper.8.checkpoint"
    existing.write_text(db_log.note(8, leaves=[bytes(32)] * 8))  # another history of the same size
    argv = db_args(db_log, "audit", "checkpoint", "--trusted-keys", str(db_log.trusted_path), "--export", str(folder))
    code, out, _ = run(argv, capsys)
    assert code == 1 and "FORK" in out
    assert existing.read_text() == db_log.note(8, leaves=[bytes(32)] * 8)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(["--export", "{tmp}"], "needs --trusted-keys", id="export-without-keys"),
        pytest.param(["--trusted-keys", "{keys}", "--export", "{tmp}/none"], "is not a directory", id="no-directory"),
        pytest.param(["--count", "0"], "at least 1", id="zero-count"),
    ],
)
def test_checkpoint_usage_errors(
    db_log: DbLog, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    flags = [f.replace("{tmp}", str(db_log.tmp_path)).replace("{keys}", str(db_log.trusted_path)) for f in flags]
    code, _, err = run(db_args(db_log, "audit", "checkpoint", *flags), capsys)
    assert code == 2 and expected in err


@pytest.mark.parametrize(
    ("flags", "seqs"),
    [
        pytest.param(["--rule", "no-curl-pipe-sh"], [1, 3], id="rule"),
        pytest.param(["--rule", "no-curl-pipe-sh", "--limit", "1"], [3], id="rule-limit-keeps-most-recent"),
        pytest.param(["--rule", "no-curl-pipe-sh", "--effect", "deny", "--tool", "shell"], [1], id="rule-and-columns"),
        pytest.param(["--rule", "no-such-rule"], [], id="rule-no-match"),
        pytest.param(["--since", "1h"], list(range(8)), id="since-relative"),
        pytest.param(["--until", "1h"], [], id="until-relative"),
        pytest.param(["--since", "2d", "--until", "2026-11-29T00:00:00Z", "--rule", "no-rm-rf"], [], id="mixed"),
    ],
)
def test_list_rule_and_relative_times(
    db_log: DbLog, capsys: pytest.CaptureFixture[str], flags: list[str], seqs: list[int]
) -> None:
    code, out, _ = run(db_args(db_log, "audit", "list", "--json", *flags), capsys)
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == seqs


def test_list_rule_reports_bodies_it_cannot_read(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    db_log.update(2, body=b"not json")
    code, out, err = run(db_args(db_log, "audit", "list", "--json", "--rule", "no-curl-pipe-sh"), capsys)
    assert code == 0 and [json.loads(line)["seq"] for line in out.splitlines()] == [1, 3]
    assert "warning: seq 2: body does not parse" in err


def test_list_rejects_a_bad_relative_time(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(db_args(db_log, "audit", "list", "--since", "5x"), capsys)
    assert code == 2 and "nor an age like 15m" in err


def test_tail_prints_the_last_records(db_log: DbLog, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(db_args(db_log, "audit", "tail", "-n", "2"), capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["SEQ", "TIME", "TYPE", "EFFECT", "TOOL", "AGENT", "SESSION"]
    assert [line.split()[0] for line in lines[1:]] == ["6", "7"]
    assert lines[2].split()[2:] == ["decision", "deny", "write_file", "a1", "s1"]
    code, out, _ = run(db_args(db_log, "audit", "tail", "--json", "-n", "3"), capsys)
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [5, 6, 7]


def test_tail_follow_prints_new_records_and_exits_0_on_ctrl_c(db_log: DbLog) -> None:
    argv = [sys.executable, "-m", "aegis_proxy.cli", "audit", "tail", "-f", "-n", "1", "--json", "--interval", "0.1"]
    process = subprocess.Popen(
        db_args(db_log, *argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        # A test run started in the background (`pytest &` in a script) inherits SIGINT ignored, and so would the
        # child: give it the disposition a terminal gives, or Ctrl-C below would do nothing.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [seen.put(line) for line in process.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        assert json.loads(seen.get(timeout=60))["seq"] == 7  # -n 1: the last record, then it follows
        db_log.append(2)
        assert [json.loads(seen.get(timeout=30))["seq"] for _ in range(2)] == [8, 9]
        db_log.append(1)
        assert json.loads(seen.get(timeout=30))["seq"] == 10
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()  # never leave a follower running after the test
            raise
    assert code == 0, process.stderr.read()  # type: ignore[union-attr]
