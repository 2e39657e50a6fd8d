"""Loading a policy: includes, cycles, the digest, and bad files that fail with a clear error (never allow-all)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aegis_proxy.decide import Evidence
from aegis_proxy.models import CallContext, Effect, ToolCall
from aegis_proxy.policy.engine import PolicySet
from aegis_proxy.policy.errors import PolicyCheckError, PolicyError, PolicySyntaxError
from aegis_proxy.policy.loader import MAX_POLICY_BYTES, load_policy, policy_digest, read_sources


def write(root: Path, name: str, text: str | bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def decide(policy_set: PolicySet, tool: str, **args: object) -> Effect:
    evidence = Evidence(ToolCall(id="c", tool=tool, arguments=args), CallContext(), (), None, {})
    return policy_set.decide(evidence).effect


def test_includes_are_relative_to_the_including_file(tmp_path: Path) -> None:
    write(tmp_path, "main.aegis", 'default deny\ninclude "lib/common.aegis"\nallow read_file when args.path in safe\n')
    write(tmp_path, "lib/common.aegis", 'default allow\ninclude "more/extra.aegis"\nlet safe = ["/a", "/b"]\nask x\n')
    write(tmp_path, "lib/more/extra.aegis", "default deny\ndeny write_file\n")
    policy_set = load_policy([tmp_path / "main.aegis"])
    names = [file.path for file in policy_set.files]
    assert names == [
        str(tmp_path / "main.aegis"),
        str(tmp_path / "lib" / "common.aegis"),
        str(tmp_path / "lib" / "more" / "extra.aegis"),
    ]
    assert decide(policy_set, "read_file", path="/a") is Effect.ALLOW  # a let from the included file
    assert decide(policy_set, "read_file", path="/c") is Effect.DENY  # the strictest default
    assert decide(policy_set, "write_file") is Effect.DENY
    assert decide(policy_set, "x") is Effect.ASK


def test_digest_covers_every_file_in_load_order_with_root_relative_names(tmp_path: Path) -> None:
    main = write(tmp_path, "main.aegis", 'default deny\ninclude "lib/common.aegis"\nallow a\n')
    common = write(tmp_path, "lib/common.aegis", "default deny\nallow b\n")
    policy_set = load_policy(main)
    expected = hashlib.sha256(
        b"aegis-policy-v1\x00main.aegis\x00"
        + main.read_bytes()
        + b"\x00lib/common.aegis\x00"
        + common.read_bytes()
        + b"\x00"
    ).hexdigest()
    assert policy_set.digest == expected
    assert policy_digest([("main.aegis", main.read_bytes()), ("lib/common.aegis", common.read_bytes())]) == expected
    common.write_text("default deny\nallow c\n")
    assert load_policy(main).digest != expected  # an edit to an included file changes the digest


def test_digest_does_not_depend_on_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "p/main.aegis", 'default deny\ninclude "x.aegis"\nallow a\n')
    write(tmp_path, "p/x.aegis", "default deny\nallow b\n")
    absolute = load_policy(tmp_path / "p" / "main.aegis").digest
    monkeypatch.chdir(tmp_path)
    assert load_policy("p/main.aegis").digest == absolute
    monkeypatch.chdir(tmp_path / "p")
    assert load_policy("main.aegis").digest == absolute


def test_a_file_included_twice_is_loaded_once(tmp_path: Path) -> None:
    write(tmp_path, "main.aegis", 'default deny\ninclude "a.aegis"\ninclude "b.aegis"\nallow m\n')
    write(tmp_path, "a.aegis", 'default deny\ninclude "shared.aegis"\nallow a\n')
    write(tmp_path, "b.aegis", 'default deny\ninclude "./shared.aegis"\nallow b\n')
    write(tmp_path, "shared.aegis", "default deny\nrule shared-rule: allow s\n")
    policy_set = load_policy(tmp_path / "main.aegis")
    assert [Path(file.path).name for file in policy_set.files] == ["main.aegis", "a.aegis", "shared.aegis", "b.aegis"]
    assert [rule.id for rule in policy_set.rules].count("shared-rule") == 1


def test_several_root_files_form_one_set(tmp_path: Path) -> None:
    one = write(tmp_path, "one.aegis", "default allow\nallow a\n")
    two = write(tmp_path, "two.aegis", "default ask\ndeny b\n")
    policy_set = load_policy([one, two])
    assert decide(policy_set, "a") is Effect.ALLOW
    assert decide(policy_set, "b") is Effect.DENY
    assert decide(policy_set, "c") is Effect.ASK
    assert load_policy([one, two, one]).digest == policy_set.digest  # a root given twice is loaded once


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.aegis": 'default deny\ninclude "a.aegis"\nallow x\n'}, "include cycle: {d}/a.aegis -> {d}/a.aegis"),
        (
            {
                "a.aegis": 'default deny\ninclude "b.aegis"\nallow x\n',
                "b.aegis": 'default deny\ninclude "a.aegis"\nallow y\n',
            },
            "include cycle: {d}/a.aegis -> {d}/b.aegis -> {d}/a.aegis",
        ),
        (
            {
                "a.aegis": 'default deny\ninclude "sub/b.aegis"\nallow x\n',
                "sub/b.aegis": 'default deny\ninclude "../a.aegis"\nallow y\n',
            },
            "include cycle: {d}/a.aegis -> {d}/sub/b.aegis -> {d}/a.aegis",
        ),
    ],
    ids=["self", "two-files", "through-a-folder"],
)
def test_include_cycles_are_errors(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(PolicyCheckError) as info:
        load_policy(tmp_path / "a.aegis")
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.message == message.format(d=tmp_path)
    assert diagnostic.span.line == 2 and diagnostic.excerpt is not None and "include" in diagnostic.excerpt.line


BAD_FILES = [
    ("missing-include", 'default deny\ninclude "nope.aegis"\nallow x\n', "cannot read", 2),
    ("no-default", "allow x\n", "declares no `default`", 1),
    ("no-rules", "default allow\n", "no rules", 1),
    ("empty", "", "no `default`", 1),
    ("syntax", "default deny\nallow x when args.a = 1\n", "", 2),
    ("unknown-category", "default deny\nallow x when not finding(shel.*)\n", "no scanner emits", 2),
    ("unknown-function", "default deny\ndeny x when lenght(args.a) > 1\n", "unknown function", 2),
    ("bad-regex", 'default deny\ndeny x when args.a =~ "(?<=a)b"\n', "", 2),
    ("duplicate-id", "default deny\nrule a: allow x\nrule a: deny y\n", "", 3),
    ("not-utf8", b"default deny\nallow \xff\n", "not UTF-8", 2),
]


@pytest.mark.parametrize(("name", "text", "message", "line"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files_fail_with_a_located_error(
    tmp_path: Path, name: str, text: str | bytes, message: str, line: int
) -> None:
    path = write(tmp_path, "bad.aegis", text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    error = info.value
    assert isinstance(error, (PolicyCheckError, PolicySyntaxError))
    first = next(d for d in error.diagnostics if d.is_error)
    assert first.span.file == str(path) and first.span.line == line
    assert message in first.message
    assert f"{path}:{line}:" in error.render()


def test_unreadable_roots_are_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read .*missing\.aegis"):
        load_policy(tmp_path / "missing.aegis")
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy(tmp_path)
    with pytest.raises(PolicyError, match="no policy file given"):
        load_policy([])
    big = write(tmp_path, "big.aegis", b"#" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(big)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.aegis", "\ufeffdefault deny\nallow x\n".encode())
    assert decide(load_policy(path), "x") is Effect.ALLOW


def test_warnings_ride_along_without_failing_the_load(tmp_path: Path) -> None:
    path = write(tmp_path, "p.aegis", "default deny\ndeny * priority 1\nallow read_file\n")
    policy_set = load_policy(path)
    assert [d.severity for d in policy_set.warnings] == ["warning"]


def test_attempted_paths_are_reported_even_when_the_load_fails(tmp_path: Path) -> None:
    main = write(tmp_path, "main.aegis", 'default deny\ninclude "later.aegis"\nallow x\n')
    attempted: list[Path] = []
    with pytest.raises(PolicyError):
        load_policy(main, attempted=attempted)
    assert attempted == [main.resolve(), (tmp_path / "later.aegis").resolve()]


def test_deep_include_chains_are_refused(tmp_path: Path) -> None:
    for index in range(40):
        write(tmp_path, f"f{index}.aegis", f'default deny\ninclude "f{index + 1}.aegis"\nallow t{index}\n')
    write(tmp_path, "f40.aegis", "default deny\nallow last\n")
    with pytest.raises(PolicyCheckError, match="nest too deeply"):
        read_sources([tmp_path / "f0.aegis"])
