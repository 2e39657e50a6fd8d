"""Metrics: the Prometheus text format of counters, gauges and histograms, bounded label sets, and the Gate reporting
every outcome, audit append, approval wait and policy reload to its observer (a real Gate, real audit log)."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_proxy.audit.store import audit_head
from aegis_proxy.config import AegisConfig, load_config
from aegis_proxy.gate import Gate, GateOutcome
from aegis_proxy.metrics import MAX_SERIES, OTHER, Counter, Gauge, Histogram, Metrics, Registry
from aegis_proxy.models import CallContext, ToolCall

POLICY = """default allow
rule hold-writes: ask write_file priority 10
rule no-deletes: deny delete_file priority 10
"""
# One exposition-format sample line: name, optional {labels}, value (https://prometheus.io/docs/instrumenting/exposition_formats/)
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(-?[0-9.]+(e[+-]?[0-9]+)?|\+Inf|-Inf|NaN)$"
)


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, checking that every line is a comment or a valid sample."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        found[key] = float(value)
    return found


# -- the format -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "rendered"),
    [
        (("allow",), 'x_total{effect="allow"} 2'),
        (('say "hi"',), 'x_total{effect="say \\"hi\\""} 2'),
        (("back\\slash",), 'x_total{effect="back\\\\slash"} 2'),
        (("two\nlines",), 'x_total{effect="two\\nlines"} 2'),
    ],
)
def test_counter_escapes_label_values(labels: tuple[str, ...], rendered: str) -> None:
    counter = Counter("x_total", "help with a \\ and\nnewline", ["effect"])
    counter.inc(*labels)
    counter.inc(*labels)
    text = "\n".join(counter.render())
    assert rendered in text.splitlines()
    assert "# HELP x_total help with a \\\\ and\\nnewline" in text
    samples(text)


def test_counter_without_labels_renders_zero_and_refuses_to_go_down() -> None:
    counter = Counter("y_total", "y")
    assert counter.render()[-1] == "y_total 0"
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(amount=-1)
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc("unexpected")


@pytest.mark.parametrize(
    ("values", "expected_buckets"),
    [
        ([], None),
        ([0.0005], {"0.001": 1, "0.01": 1, "+Inf": 1}),
        ([0.002, 0.002, 5.0], {"0.001": 0, "0.01": 2, "+Inf": 3}),
        ([100.0], {"0.001": 0, "0.01": 0, "+Inf": 1}),
        ([0.001, 0.01], {"0.001": 1, "0.01": 2, "+Inf": 2}),  # a bucket's bound is inside it (le: less or equal)
        ([float("nan"), -1.0, 0.0], {"0.001": 1, "0.01": 1, "+Inf": 1}),  # nonsense durations are dropped
    ],
)
def test_histogram_buckets_are_cumulative(values: list[float], expected_buckets: dict[str, int] | None) -> None:
    histogram = Histogram("h_seconds", "h", ["stage"], buckets=(0.001, 0.01))
    for value in values:
        histogram.observe(value, "firewall")
    found = samples("\n".join(histogram.render()))
    if expected_buckets is None:
        assert found == {}
        return
    for bound, count in expected_buckets.items():
        assert found[f'h_seconds_bucket{{stage="firewall",le="{bound}"}}'] == count
    kept = [v for v in values if v >= 0]
    assert found['h_seconds_count{stage="firewall"}'] == len(kept)
    assert math.isclose(found['h_seconds_sum{stage="firewall"}'], sum(kept))


@pytest.mark.parametrize("buckets", [(), (0.1, 0.01), (0.1, 0.1)])
def test_histogram_refuses_bad_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "h", buckets=buckets)


def test_label_sets_are_bounded() -> None:
    counter = Counter("rules_total", "r", ["rule"])
    for n in range(MAX_SERIES + 50):
        counter.inc(f"rule-{n}")
    found = samples("\n".join(counter.render()))
    assert len(found) == MAX_SERIES + 1
    assert found[f'rules_total{{rule="{OTHER}"}}'] == 50


def test_a_failing_gauge_drops_its_samples_and_is_counted() -> None:
    registry = Registry()

    def broken() -> list[tuple[tuple[str, ...], float]]:
        raise RuntimeError("database down")

    registry.add(Gauge("ok_gauge", "fine", collect=lambda: [((), 3)]))
    registry.add(Gauge("broken_gauge", "fails", collect=broken))
    found = samples(registry.render())
    assert found["ok_gauge"] == 3
    assert "broken_gauge" not in found
    assert found['aegis_metrics_collect_errors_total{metric="broken_gauge"}'] == 1
    with pytest.raises(ValueError, match="twice"):
        registry.add(Gauge("ok_gauge", "again"))


def test_watch_reads_its_sources_at_scrape_time() -> None:
    metrics = Metrics()
    state = {"pending": 2, "digest": "abc", "probe": "ready"}
    metrics.watch(
        pending=lambda: state["pending"], policy_digest=lambda: state["digest"], probe_status=lambda: state["probe"]
    )
    first = samples(metrics.render())
    state.update(pending=5, digest="def", probe="unavailable: no weights")
    second = samples(metrics.render())
    assert (first["aegis_approvals_pending"], second["aegis_approvals_pending"]) == (2, 5)
    assert first['aegis_policy_info{digest="abc"}'] == 1 and 'aegis_policy_info{digest="abc"}' not in second
    assert second['aegis_probe_status{status="unavailable: no weights"}'] == 1


def test_unsynced_audit_commits_read_zero_until_watched_then_their_age() -> None:
    metrics = Metrics()
    assert samples(metrics.render())["aegis_audit_unsynced_seconds"] == 0
    age = {"seconds": 0.0}
    metrics.watch(unsynced_seconds=lambda: age["seconds"])
    age["seconds"] = 1.5
    assert samples(metrics.render())["aegis_audit_unsynced_seconds"] == 1.5


def test_probe_status_is_absent_until_a_probe_is_watched() -> None:
    assert samples(Metrics().render())['aegis_probe_status{status="absent"}'] == 1


# -- the Gate as the source -------------------------------------------------------------------------------------------


def make_config(tmp_path: Path, **overrides: object) -> AegisConfig:
    policy = tmp_path / "policy.aegis"
    policy.write_text(POLICY)
    values: dict[str, object] = {
        "data_dir": str(tmp_path / "state"),
        "policies": [str(policy)],
        "audit.origin": f"test/{uuid.uuid4().hex}",
        "approval_timeout": 30.0,
        "policy_reload_interval": 3600.0,  # the tests poll by hand
    }
    values.update(overrides)
    return load_config(None, values)


@pytest.fixture
def observed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gate, Metrics, AegisConfig]]:
    monkeypatch.chdir(tmp_path)
    config = make_config(tmp_path)
    metrics = Metrics()
    with Gate.from_config(config, observer=metrics) as gate:
        yield gate, metrics, config


def ctx() -> CallContext:
    return CallContext(session_id="s1", agent_id="a1")


@pytest.mark.parametrize(
    ("tool", "effect", "rule"),
    [("read_file", "allow", "default"), ("delete_file", "deny", "no-deletes"), ("write_file", "ask", "hold-writes")],
)
def test_gate_reports_each_decision(
    observed: tuple[Gate, Metrics, AegisConfig], tool: str, effect: str, rule: str
) -> None:
    gate, metrics, _ = observed
    outcome = gate.decide(ToolCall(id="c1", tool=tool, arguments={"path": "notes/a.txt"}), ctx())
    assert outcome.effect == effect
    found = samples(metrics.render())
    assert found[f'aegis_decisions_total{{effect="{effect}",cause="policy"}}'] == 1
    assert found[f'aegis_decision_rules_total{{effect="{effect}",rule="{rule}"}}'] == 1
    assert found[f'aegis_decision_seconds_count{{effect="{effect}"}}'] == 1
    assert found['aegis_stage_seconds_count{stage="firewall"}'] == 1
    assert found["aegis_audit_append_seconds_count"] == 2  # the policy.loaded record, then the decision's
    assert found["aegis_audit_append_failures_total"] == 0
    # The firewall's share is part of the whole decision's time.
    assert (
        found['aegis_stage_seconds_sum{stage="firewall"}'] <= found[f'aegis_decision_seconds_sum{{effect="{effect}"}}']
    )


@pytest.mark.parametrize(("approve", "outcome_label"), [(True, "approved"), (False, "rejected")])
def test_gate_reports_how_held_calls_end(
    observed: tuple[Gate, Metrics, AegisConfig], approve: bool, outcome_label: str
) -> None:
    gate, metrics, _ = observed
    held = gate.decide(ToolCall(id="c1", tool="write_file", arguments={"path": "notes/a.txt"}), ctx())
    assert held.approval_id is not None
    gate.approvals.resolve(held.approval_id, approve, "alice")
    final = asyncio.run(gate.await_approval(held, 10))
    found = samples(metrics.render())
    assert found[f'aegis_approval_wait_seconds_count{{outcome="{outcome_label}"}}'] == 1
    assert found[f'aegis_decisions_total{{effect="{final.effect}",cause="{final.cause}"}}'] == 1


def test_gate_reports_audit_failures(observed: tuple[Gate, Metrics, AegisConfig]) -> None:
    gate, metrics, _ = observed
    store = gate.writer.store
    with store.engine.begin() as conn:  # the log's head row gone: every append fails
        conn.execute(audit_head.delete().where(audit_head.c.origin == store.origin))
    outcome = gate.decide(ToolCall(id="c1", tool="read_file", arguments={"path": "a"}), ctx())
    assert (outcome.effect, outcome.cause) == ("deny", "error")
    found = samples(metrics.render())
    assert found["aegis_audit_append_failures_total"] == 1
    assert found['aegis_decisions_total{effect="deny",cause="error"}'] == 1
    health = metrics.append_health()
    assert health.last_failure is not None and health.last_ok is not None and health.last_failure > health.last_ok
    assert "audit" in health.last_error


def test_gate_reports_policy_reloads(observed: tuple[Gate, Metrics, AegisConfig]) -> None:
    gate, metrics, config = observed
    assert gate.watcher is not None
    config.policies[0].write_text(POLICY + "rule no-moves: deny move_file priority 10\n")
    assert gate.watcher.poll() is not None
    config.policies[0].write_text("this is not a policy\n")
    assert gate.watcher.poll() is not None
    found = samples(metrics.render())
    assert found['aegis_policy_reloads_total{result="ok"}'] == 1
    assert found['aegis_policy_reloads_total{result="failed"}'] == 1


class FailingObserver:
    """An observer whose every method raises: the Gate must decide as if it were not there."""

    def decided(self, outcome: GateOutcome, seconds: float) -> None:
        raise RuntimeError("metrics broke")

    def approval_resolved(self, outcome: GateOutcome, seconds: float) -> None:
        raise RuntimeError("metrics broke")

    def appended(self, seconds: float, error: BaseException | None) -> None:
        raise RuntimeError("metrics broke")

    def policy_event(self, kind: str) -> None:
        raise RuntimeError("metrics broke")


@pytest.mark.parametrize(("tool", "effect"), [("read_file", "allow"), ("delete_file", "deny"), ("write_file", "ask")])
def test_a_failing_observer_never_changes_a_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str, effect: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with Gate.from_config(make_config(tmp_path), observer=FailingObserver()) as gate:
        outcome = gate.decide(ToolCall(id="c1", tool=tool, arguments={"path": "a"}), ctx())
        assert (outcome.effect, outcome.cause) == (effect, "policy")
        assert outcome.audit_seq is not None
