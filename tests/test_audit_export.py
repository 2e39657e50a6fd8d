"""`aegis audit export --format jsonl` and export.verify_export: round trip on SQLite and PostgreSQL, a table of
targeted mutations (lines, fields, inclusion proofs, anchors), and item 15 of the issue: Hypothesis shows that every
random single mutation of an exported log is flagged and that malformed exports only ever raise VerificationError.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_proxy.audit.commands import export_log
from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.export import EXPORT_STEPS, dump_line, verify_export
from aegis_proxy.audit.merkle import node_hash
from tests.audit_support import TRUSTED, Log, db_url_fixture, log_fixture  # noqa: F401 - fixtures


def export(log: Log, proofs: bool = True) -> list[str]:
    return list(export_log(log.url, log.origin, proofs))


def test_round_trip_with_proofs(log: Log) -> None:
    log.store.checkpoint()  # size 8
    log.append(3)  # 11 records; 8..10 are after the newest checkpoint
    lines = export(log)
    header = json.loads(lines[0])
    assert (header["format"], header["v"], header["origin"], header["records"], header["proofs"]) == (
        "aegis-audit-export",
        1,
        log.origin,
        11,
        True,
    )
    records = [json.loads(line) for line in lines[1:]]
    assert [r["seq"] for r in records] == list(range(11))
    assert base64.b64decode(records[3]["body"]) == log.signed(3).body_bytes  # the exact stored bytes
    assert [r["proof"] is not None for r in records] == [True] * 8 + [False] * 3
    assert all(r["proof"]["size"] == 8 for r in records[:8])
    report = verify_export(lines, TRUSTED, [log.note(8)])
    assert (report.origin, report.records, report.checkpoint_size, report.proofs) == (log.origin, 11, 8, 8)
    assert report.trusted_sizes == (8,) and report.anchored == 8


def test_round_trip_without_proofs_or_checkpoint(log: Log) -> None:
    lines = export(log, proofs=False)
    assert json.loads(lines[0])["checkpoint"] is None
    report = verify_export(lines, TRUSTED)
    assert (report.records, report.checkpoint_size, report.proofs, report.anchored) == (8, None, 0, 0)


def test_proofs_need_a_stored_checkpoint(log: Log) -> None:
    with pytest.raises(AuditError, match="no stored checkpoint"):
        export(log)


def test_exporter_refuses_a_checkpoint_the_records_do_not_match(log: Log) -> None:
    log.store.checkpoint()
    log.update(2, leaf_hash=bytes(32))
    with pytest.raises(AuditError, match="does not match the log's records"):
        export(log)


def test_every_line_is_in_its_one_canonical_form(log: Log) -> None:
    log.store.checkpoint()
    for line in export(log):
        assert line == dump_line(json.loads(line)) and line.isascii()


# --------------------------------------------------------------------------------------------------------------------
# targeted mutations: (mutation of the line list, step, text)

Lines = list[str]


def _edit(index: int, change: Callable[[dict[str, Any]], None]) -> Callable[[Lines], Lines]:
    def mutate(lines: Lines) -> Lines:
        value = json.loads(lines[index])
        change(value)
        return [*lines[:index], dump_line(value), *lines[index + 1 :]]

    return mutate


def _set(index: int, key: str, value: Any) -> Callable[[Lines], Lines]:
    return _edit(index, lambda d: d.__setitem__(key, value))


def _proof(index: int, change: Callable[[dict[str, Any]], None]) -> Callable[[Lines], Lines]:
    return _edit(index, lambda d: change(d["proof"]))


def _flip_hex(text: str) -> str:
    return ("1" if text[0] == "0" else "0") + text[1:]


def _note_size(note: str) -> str:
    return note.replace("\n8\n", "\n7\n", 1)  # same root and signature, claims 7 leaves


def _interior_node_as_leaf(lines: Lines) -> Lines:
    # Present the node over leaves 0 and 1 as leaf 0 with the rest of leaf 0's path: a proof one level short.
    first, second = json.loads(lines[1]), json.loads(lines[2])
    first["leaf_hash"] = node_hash(bytes.fromhex(first["leaf_hash"]), bytes.fromhex(second["leaf_hash"])).hex()
    first["proof"]["hashes"] = first["proof"]["hashes"][1:]
    return [lines[0], dump_line(first), *lines[2:]]


MUTATIONS: list[tuple[str, Callable[[Lines], Lines], int, str]] = [
    ("empty-file", lambda lines: [], 1, "empty"),
    ("header-deleted", lambda lines: lines[1:], 1, "fields wrong"),
    ("header-wrong-format", _set(0, "format", "other"), 1, "format"),
    ("header-count-lowered", _set(0, "records", 7), 1, "larger than the 7 records"),
    ("header-count-raised", _set(0, "records", 9), 2, "ends after 8 of the 9"),
    ("header-proofs-denied", _set(0, "proofs", False), 6, "does not announce"),
    ("header-checkpoint-dropped", _set(0, "checkpoint", None), 1, "no checkpoint"),
    ("last-line-deleted", lambda lines: lines[:-1], 2, "ends after 7 of the 8"),
    ("middle-line-deleted", lambda lines: lines[:3] + lines[4:], 2, "not the expected seq 2"),
    ("lines-swapped", lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], 2, "not the expected seq 0"),
    ("line-duplicated", lambda lines: [*lines[:3], lines[2], *lines[3:]], 2, "not the expected seq 2"),
    ("trailing-newline-cut", lambda lines: [*lines[:-1], lines[-1][:-1]], 2, "does not end with a newline"),
    ("re-serialised-line", lambda lines: [lines[0], json.dumps(json.loads(lines[1])) + "\n", *lines[2:]], 2, "form"),
    ("body-byte-edited", _edit(4, lambda d: d.__setitem__("body", d["body"][:-6] + "AAAAA=")), 3, "seq 3"),
    ("leaf-hash-edited", _edit(2, lambda d: d.__setitem__("leaf_hash", _flip_hex(d["leaf_hash"]))), 3, "leaf hash"),
    ("signature-edited", _edit(5, lambda d: d.__setitem__("signature", _flip_hex(d["signature"]))), 3, "signature"),
    ("key-id-edited", _edit(5, lambda d: d.__setitem__("key_id", _flip_hex(d["key_id"]))), 3, "unknown key id"),
    ("seq-edited", _set(3, "seq", 7), 2, "not the expected seq 2"),
    ("extra-field", _set(3, "note", "hello"), 2, "fields wrong"),
    ("proof-bit-flip", _proof(3, lambda p: p["hashes"].__setitem__(0, _flip_hex(p["hashes"][0]))), 6, "not in the"),
    ("proof-size-plus-one", _proof(3, lambda p: p.__setitem__("size", 9)), 6, "not 8"),
    ("proof-size-minus-one", _proof(3, lambda p: p.__setitem__("size", 7)), 6, "not 8"),
    ("proof-truncated", _proof(3, lambda p: p["hashes"].pop()), 6, "too short"),
    ("proof-extended", _proof(3, lambda p: p["hashes"].append("00" * 32)), 6, "longer than the tree"),
    ("proof-root-edited", _proof(3, lambda p: p.__setitem__("root", _flip_hex(p["root"]))), 6, "root is not"),
    ("proof-removed", _set(3, "proof", None), 6, "has no inclusion proof"),
    ("interior-node-as-leaf", _interior_node_as_leaf, 3, "leaf hash mismatch"),
    (
        "checkpoint-note-edited",
        _edit(0, lambda d: d.__setitem__("checkpoint", _note_size(d["checkpoint"]))),
        5,
        "does not match",
    ),
]


@pytest.fixture(name="exported")
def exported_fixture(log: Log) -> Iterator[tuple[Log, Lines]]:
    log.store.checkpoint()
    yield log, export(log)


@pytest.mark.parametrize(
    ("mutate", "step", "text"), [(m, s, t) for _, m, s, t in MUTATIONS], ids=[i for i, _, _, _ in MUTATIONS]
)
def test_mutation_is_flagged_at_its_step_and_line(
    exported: tuple[Log, Lines], mutate: Callable[[Lines], Lines], step: int, text: str
) -> None:
    _, lines = exported
    verify_export(lines, TRUSTED)  # the original verifies
    with pytest.raises(VerificationError) as caught:
        verify_export(mutate(lines), TRUSTED)
    assert caught.value.message.startswith(f"step {step}: line "), caught.value.message
    assert text in caught.value.message


def test_anchors_catch_a_truncated_export(exported: tuple[Log, Lines]) -> None:
    log, lines = exported
    anchor = log.note(8)
    # Cut the last 3 records and rewrite the header consistently (no checkpoint): only the anchor knows better.
    header = json.loads(lines[0]) | {"records": 5, "checkpoint": None, "proofs": False}
    records = [dump_line(json.loads(line) | {"proof": None}) for line in lines[1:6]]
    shortened = [dump_line(header), *records]
    assert verify_export(shortened, TRUSTED).records == 5  # alone, it is a valid (unanchored) 5-record log
    with pytest.raises(VerificationError, match=r"^step 8: the log has 5 records but a trusted checkpoint has 8"):
        verify_export(shortened, TRUSTED, [anchor])


def test_anchors_catch_a_fork_in_an_export(exported: tuple[Log, Lines]) -> None:
    log, lines = exported
    forked = log.note(8, leaves=[bytes(32), *log.leaves()[1:]])
    with pytest.raises(VerificationError, match=r"^step 8: fork"):
        verify_export(lines, TRUSTED, [forked])


def test_export_steps_match_the_database_steps_for_anchors() -> None:
    from aegis_proxy.audit.commands import VERIFY_STEPS

    assert EXPORT_STEPS[6:] == VERIFY_STEPS[6:] and len(EXPORT_STEPS) == 8


# --------------------------------------------------------------------------------------------------------------------
# item 15: Hypothesis


@pytest.fixture(scope="module")
def module_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """A real export (SQLite) of 8 records with proofs, as bytes; and the trusted note of its checkpoint."""
    log = Log(f"sqlite:///{tmp_path_factory.mktemp('export') / 'audit.db'}", tmp_path_factory.mktemp("keys"))
    try:
        log.store.checkpoint()
        return "".join(export(log)).encode("ascii"), log.note(8)
    finally:
        log.close()


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _single_mutation(data: bytes, draw: st.DrawFn) -> bytes:
    lines = _lines(data)
    kind = draw(st.sampled_from(["flip", "delete", "swap", "duplicate", "truncate"]))
    if kind == "flip":
        position = draw(st.integers(0, len(data) - 1))
        delta = draw(st.integers(1, 255))
        return data[:position] + bytes([data[position] ^ delta]) + data[position + 1 :]
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "delete":
        return b"".join(lines[:i] + lines[i + 1 :])
    if kind == "duplicate":
        return b"".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    j = draw(st.integers(0, len(lines) - 1).filter(lambda j: j != i))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_random_single_mutation_is_flagged(module_export: tuple[bytes, str], data: st.DataObject) -> None:
    original, anchor = module_export
    mutated = _single_mutation(original, data.draw)
    assert mutated != original
    with pytest.raises(VerificationError):
        verify_export(_lines(mutated), TRUSTED, [anchor])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_field_value_is_flagged(module_export: tuple[bytes, str], data: st.DataObject) -> None:
    original, anchor = module_export
    lines = [line.decode() for line in _lines(original)]
    index = data.draw(st.integers(0, len(lines) - 1))
    value = json.loads(lines[index])
    key = data.draw(st.sampled_from(sorted(value)))
    replacement = data.draw(_JSON.filter(lambda v: v != value[key]))
    lines[index] = dump_line(value | {key: replacement})
    with pytest.raises(VerificationError):
        verify_export(lines, TRUSTED, [anchor])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.binary(max_size=200), max_size=6))
def test_arbitrary_bytes_never_crash_the_verifier(lines: list[bytes]) -> None:
    with pytest.raises(VerificationError):
        verify_export(lines, TRUSTED)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_JSON, max_size=5), header=st.booleans())
def test_arbitrary_json_lines_never_crash_the_verifier(values: list[Any], header: bool) -> None:
    lines = (
        [
            dump_line(
                {
                    "format": "aegis-audit-export",
                    "v": 1,
                    "origin": "o",
                    "records": 2,
                    "checkpoint": None,
                    "proofs": False,
                }
            )
        ]
        if header
        else []
    )
    lines += [json.dumps(v) + "\n" for v in values]
    with pytest.raises(VerificationError):
        verify_export(lines, TRUSTED)


def test_the_verifier_reads_the_file_form(module_export: tuple[bytes, str], tmp_path: Path) -> None:
    original, anchor = module_export
    assert verify_export(_lines(original), TRUSTED, [anchor]).records == 8
    assert verify_export(original.decode().splitlines(keepends=True), TRUSTED, [anchor]).proofs == 8
