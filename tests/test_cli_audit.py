"""`aegis audit verify|list|show` and `aegis keys generate` on a real signed log in a temporary SQLite file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from aegis_proxy.audit.keys import load_key
from aegis_proxy.audit.store import AppendEntry, AuditStore, audit_head, audit_records
from aegis_proxy.cli import AUDIT_COMMANDS, KEYS_COMMANDS, build_parser, main

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


# --------------------------------------------------------------------------------------------------------------------
# audit verify


def test_verify_passes_and_prints_numbered_steps(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify(log, capsys)
    assert code == 0, out
    for number in range(1, 6):
        assert f"  {number}. " in out
    assert out.count(": OK") == 5
    assert "5 records verified (seq 0..4)" in out
    assert "unanchored" in out  # never a silent OK without a checkpoint


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
