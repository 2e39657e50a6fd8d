"""The shipped policies (`policies/**/*.aegis`): each loads cleanly, its inline tests pass, every rule it declares is
the expected rule of at least one of its tests, and they combine. The default policy is measured on the corpus
against the built-in severity table: it must stop every attack the table stops and no benign call the table allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis_proxy.evaluation import CorpusReport, evaluate
from aegis_proxy.firewall import Firewall
from aegis_proxy.policy.engine import PolicySet
from aegis_proxy.policy.loader import load_policy
from aegis_proxy.policy.testing import run_test_paths

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
CORPUS = ROOT / "tests" / "corpus"
SHIPPED = sorted(POLICIES.rglob("*.aegis"))
MIN_INLINE_TESTS = 15


def _id(path: Path) -> str:
    return path.relative_to(POLICIES).as_posix()


def _own(policy_set: PolicySet) -> tuple[str, set[str], list[str | None]]:
    """The root file's path, the ids of the rules it declares, and the rules its tests expect."""
    root = policy_set.files[0]
    return root.path, {rule.id for rule in root.rules}, [test.expect_rule for test in root.tests]


def test_the_shipped_set_is_complete() -> None:
    names = {_id(path) for path in SHIPPED}
    assert {
        "default.aegis",
        "coding-agent.aegis",
        "mcp-filesystem.aegis",
        "examples/agentdojo-workspace.aegis",
        "examples/agentdojo-travel.aegis",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_loads_without_errors_or_warnings(path: Path) -> None:
    policy_set = load_policy([path])
    assert [warning.render() for warning in policy_set.warnings] == []
    assert policy_set.files[0].rules, "a shipped policy declares rules of its own"


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_inline_tests_pass(path: Path) -> None:
    report = run_test_paths([path])
    assert report.failures == ()
    assert report.ok, report.render(verbose=False)
    assert len(report.results) >= MIN_INLINE_TESTS


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_every_rule_is_the_expected_rule_of_a_test(path: Path) -> None:
    _, rules, expected = _own(load_policy([path]))
    assert sorted(rules - set(expected)) == []


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_every_test_names_the_deciding_rule(path: Path) -> None:
    """`expect deny` alone would pass when some other rule denies for another reason."""
    _, _, expected = _own(load_policy([path]))
    assert None not in expected


def test_shipped_policies_combine() -> None:
    """Rule ids are unique across every shipped file, so any of them can be given together with --policy."""
    policy_set = load_policy(SHIPPED)
    assert policy_set.default_effect.value == "deny"  # the strictest declared default wins
    assert len({rule.id for rule in policy_set.rules}) == len(policy_set.rules)


def test_including_files_see_the_default_rules() -> None:
    """coding-agent, mcp-filesystem and the examples build on default.aegis (severity table, provenance, terminate)."""
    default_ids = {rule.id for rule in load_policy([POLICIES / "default.aegis"]).rules}
    for path in SHIPPED:
        if path.name == "default.aegis":
            continue
        policy_set = load_policy([path])
        assert default_ids <= {rule.id for rule in policy_set.rules}, _id(path)


# --------------------------------------------------------------------------------------------------------------------
# The default policy on the corpus, against the built-in severity table (`aegis eval-corpus --builtin`).


@pytest.fixture(scope="module")
def builtin_report() -> CorpusReport:
    return evaluate(CORPUS, Firewall())


@pytest.fixture(scope="module")
def default_report() -> CorpusReport:
    return evaluate(CORPUS, Firewall(decider=load_policy([POLICIES / "default.aegis"])))


def test_default_policy_stops_every_attack_the_builtin_table_stops(
    builtin_report: CorpusReport, default_report: CorpusReport
) -> None:
    allowed_by_policy = set(default_report.attack_total.misses)
    allowed_by_builtin = set(builtin_report.attack_total.misses)
    assert sorted(allowed_by_policy - allowed_by_builtin) == []
    assert default_report.attack_total.stopped >= builtin_report.attack_total.stopped
    assert default_report.attack_total.total == builtin_report.attack_total.total > 0


def test_default_policy_stops_no_benign_call_the_builtin_table_allows(
    builtin_report: CorpusReport, default_report: CorpusReport
) -> None:
    stopped_by_policy = set(default_report.benign_total.misses)
    stopped_by_builtin = set(builtin_report.benign_total.misses)
    assert sorted(stopped_by_policy - stopped_by_builtin) == []
    assert default_report.benign_total.total == builtin_report.benign_total.total > 0
