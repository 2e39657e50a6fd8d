"""Prometheus metrics of one aegis process, rendered in the text exposition format (version 0.0.4).

Written here rather than taken from prometheus-client: the few counters, gauges and histograms the firewall needs are
a page of code, and the core stays free of a dependency whose global registry would mix test processes' metrics.

`Metrics` is also the Gate's observer (`Gate(..., observer=metrics)`): the Gate reports every outcome, every durable
audit append, every approval wait and every policy event, and the admin server (`aegis_proxy.admin`) renders the lot
on `/metrics`. Observing never raises into the Gate, and no label carries request content: tool names and arguments
come from the agent (unbounded, attacker-chosen), so labels are only effects, causes, stages and the operator's own
rule ids, and a metric that somehow grows past MAX_SERIES label sets folds the rest into one `_other` series.

    aegis_decisions_total{effect,cause}          every Gate outcome: decide's allow|deny|ask (cause policy, approval,
                                                 error) and how held calls ended (approved, rejected, timeout)
    aegis_decision_rules_total{effect,rule}      the determining rules of each decision ("none" when there are none)
    aegis_decision_seconds{effect}               Gate.decide wall time: firewall + approvals lookup + durable record
    aegis_stage_seconds{stage}                   per pipeline stage: "firewall" (Firewall.check, its elapsed_ms)
    aegis_audit_append_seconds                   submit to durable (group commit included)
    aegis_audit_append_failures_total            appends that failed (each one denied a call)
    aegis_approval_wait_seconds{outcome}         how long held calls waited (approved|rejected|timeout|error)
    aegis_approvals_pending                      pending approvals in the shared database (all replicas)
    aegis_policy_reloads_total{result}           ok | failed (a failed reload keeps the old policy)
    aegis_policy_info{digest}                    1 for the policy in force (compare replicas)
    aegis_probe_status{status}                   1 for the probe's state: absent (none configured), ready, unavailable
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aegis_proxy import __version__

if TYPE_CHECKING:
    from aegis_proxy.gate import GateOutcome

log = logging.getLogger("aegis_proxy.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds. A decision is ~0.3 ms of firewall plus a commit (a few ms on SQLite/PostgreSQL); held calls wait minutes.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
MAX_SERIES = 500  # label sets per metric; more fold into one `_other` series (a bounded scrape, bounded memory)
OTHER = "_other"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str], existing: dict[tuple[str, ...], Any]) -> tuple[str, ...]:
        key = tuple(map(str, labels))
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {len(key)} values")
        if key not in existing and len(existing) >= MAX_SERIES:
            return (OTHER,) * len(key)
        return key

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            key = self._key(labels, self._values)
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = self.header()
        if not items and not self.labelnames:
            items = [((), 0.0)]
        lines += [f"{self.name}{_labels(self.labelnames, key)} {_number(value)}" for key, value in items]
        return lines


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set (Prometheus histogram)."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labelnames)
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram buckets must be increasing and distinct")
        self.buckets = tuple(float(bound) for bound in buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts (not cumulative), +Inf, sum

    def observe(self, value: float, *labels: str) -> None:
        if not value >= 0:  # NaN and negative durations are a clock bug, not a measurement
            return
        with self._lock:
            key = self._key(labels, self._series)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(self.buckets) + 2)
            index = bisect.bisect_left(self.buckets, value)  # the first bucket with value <= bound; past the last: +Inf
            series[index] += 1
            series[-1] += value

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((key, list(series)) for key, series in self._series.items())
        lines = self.header()
        for key, series in items:
            running = 0.0
            for bound, count in zip((*self.buckets, math.inf), series[:-1], strict=True):
                running += count
                lines.append(
                    f"{self.name}_bucket{_labels(self.labelnames, key, ('le', _number(bound)))} {_number(running)}"
                )
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(series[-1])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {_number(running)}")
        return lines


class Gauge(_Metric):
    """A value per label set, set directly or read from `collect` at scrape time. A failing `collect` drops the
    metric's samples from that scrape (and counts in aegis_metrics_collect_errors_total), it never breaks the page."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        collect: Callable[[], Iterable[tuple[tuple[str, ...], float]]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self.collect = collect

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self._values[self._key(labels, self._values)] = float(value)

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        if self.collect is not None:
            collected: dict[tuple[str, ...], float] = {}
            for labels, value in self.collect():
                collected[self._key(labels, collected)] = float(value)
            return sorted(collected.items())
        with self._lock:
            return sorted(self._values.items())

    def render(self) -> list[str]:
        return self.header() + [
            f"{self.name}{_labels(self.labelnames, key)} {_number(value)}" for key, value in self.samples()
        ]


class Registry:
    """Metrics in the order they were added; `render()` is the /metrics page."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self.collect_errors = Counter(
            "aegis_metrics_collect_errors_total",
            "Scrape-time gauges that failed to read (samples omitted).",
            ["metric"],
        )

    def add(self, metric: _Metric) -> Any:
        if any(existing.name == metric.name for existing in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            try:
                lines += metric.render()
            except Exception as error:  # one broken gauge must not hide every other metric
                log.warning("metrics: %s failed: %s", metric.name, error)
                self.collect_errors.inc(metric.name)
                lines += metric.header()
        lines += self.collect_errors.render()
        return "\n".join(lines) + "\n"


class GateObserver(Protocol):
    """What aegis_proxy.gate.Gate reports (Metrics implements it). The Gate logs and ignores an observer's failure."""

    def decided(self, outcome: GateOutcome, seconds: float) -> None: ...

    def approval_resolved(self, outcome: GateOutcome, seconds: float) -> None: ...

    def appended(self, seconds: float, error: BaseException | None) -> None: ...

    def policy_event(self, kind: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AppendHealth:
    """When audit appends last succeeded and failed (monotonic seconds; None = never), for readiness."""

    last_ok: float | None
    last_failure: float | None
    last_error: str


class Metrics:
    """The firewall's metrics, and the Gate's observer. Thread-safe; one per process."""

    def __init__(self) -> None:
        self.registry = Registry()
        add = self.registry.add
        self.started = time.time()
        self.decisions: Counter = add(
            Counter("aegis_decisions_total", "Gate outcomes of tool calls.", ["effect", "cause"])
        )
        self.decision_rules: Counter = add(
            Counter("aegis_decision_rules_total", "Determining rules of decisions.", ["effect", "rule"])
        )
        self.decision_seconds: Histogram = add(
            Histogram("aegis_decision_seconds", "Gate.decide: firewall, approvals lookup, durable record.", ["effect"])
        )
        self.stage_seconds: Histogram = add(
            Histogram("aegis_stage_seconds", "Time per pipeline stage of a decision.", ["stage"])
        )
        self.append_seconds: Histogram = add(
            Histogram("aegis_audit_append_seconds", "Audit record submitted until durable (group commit).")
        )
        self.append_failures: Counter = add(
            Counter("aegis_audit_append_failures_total", "Audit appends that failed (the call was denied).")
        )
        self.unsynced_seconds: Gauge = add(
            Gauge(
                "aegis_audit_unsynced_seconds",
                "Age of the oldest audit commit not yet synced to disk (audit.sync = normal on SQLite; else 0).",
                collect=lambda: [((), 0.0)],
            )
        )
        self.approval_wait: Histogram = add(
            Histogram(
                "aegis_approval_wait_seconds", "How long held calls waited for a human.", ["outcome"], WAIT_BUCKETS
            )
        )
        self.approvals_pending: Gauge = add(
            Gauge("aegis_approvals_pending", "Pending approvals in the shared database (all replicas).")
        )
        self.policy_reloads: Counter = add(
            Counter("aegis_policy_reloads_total", "Policy reloads; a failed one keeps the old policy.", ["result"])
        )
        self.policy_info: Gauge = add(Gauge("aegis_policy_info", "The policy in force (digest).", ["digest"]))
        self.probe_status: Gauge = add(Gauge("aegis_probe_status", "The probe's state.", ["status"]))
        add(
            Gauge(
                "aegis_build_info", "Version of this aegis-proxy.", ["version"], collect=lambda: [((__version__,), 1)]
            )
        )
        add(
            Gauge(
                "process_start_time_seconds",
                "Start time of the process since the epoch, in seconds.",
                collect=lambda: [((), self.started)],
            )
        )
        self._health_lock = threading.Lock()
        self._last_ok: float | None = None
        self._last_failure: float | None = None
        self._last_error = ""
        self.probe_status.collect = lambda: [(("absent",), 1)]

    # -- wiring to what is measured at scrape time -------------------------------------------------------------------

    def watch(
        self,
        *,
        pending: Callable[[], int] | None = None,
        policy_digest: Callable[[], str] | None = None,
        probe_status: Callable[[], str] | None = None,
        unsynced_seconds: Callable[[], float] | None = None,
    ) -> Metrics:
        """Read these at every scrape: pending approvals, the policy digest in force, the probe's status, the age of
        the oldest audit commit not yet on disk."""
        if unsynced_seconds is not None:
            self.unsynced_seconds.collect = lambda: [((), unsynced_seconds())]
        if pending is not None:
            self.approvals_pending.collect = lambda: [((), pending())]
        if policy_digest is not None:
            self.policy_info.collect = lambda: [((policy_digest() or "builtin",), 1)]
        if probe_status is not None:
            self.probe_status.collect = lambda: [((probe_status() or "absent",), 1)]
        return self

    def render(self) -> str:
        return self.registry.render()

    # -- the Gate's observer (aegis_proxy.gate.Gate calls these; none raises) ------------------------------------------

    def decided(self, outcome: GateOutcome, seconds: float) -> None:
        """One outcome of Gate.decide (allow, deny or ask), `seconds` after it started."""
        self.decisions.inc(outcome.effect, outcome.cause)
        for rule in outcome.decision.rules or ("none",):
            self.decision_rules.inc(outcome.effect, rule)
        self.decision_seconds.observe(seconds, outcome.effect)
        self.stage_seconds.observe(outcome.decision.elapsed_ms / 1000.0, "firewall")

    def approval_resolved(self, outcome: GateOutcome, seconds: float) -> None:
        """How a held call ended (Gate.await_approval), after waiting `seconds`."""
        label = {"approved": "approved", "rejected": "rejected", "timeout": "timeout"}.get(outcome.cause, "error")
        self.approval_wait.observe(seconds, label)
        self.decisions.inc(outcome.effect, outcome.cause)

    def appended(self, seconds: float, error: BaseException | None) -> None:
        """One audit append by the Gate: durable after `seconds`, or failed with `error`."""
        now = time.monotonic()
        if error is None:
            self.append_seconds.observe(seconds)
            with self._health_lock:
                self._last_ok = now
        else:
            self.append_failures.inc()
            with self._health_lock:
                self._last_failure = now
                self._last_error = str(getattr(error, "message", error))[:300]

    def policy_event(self, kind: str) -> None:
        """A policy reload ("reload") or a failed one (anything else)."""
        self.policy_reloads.inc("ok" if kind == "reload" else "failed")

    def append_health(self) -> AppendHealth:
        with self._health_lock:
            return AppendHealth(self._last_ok, self._last_failure, self._last_error)
