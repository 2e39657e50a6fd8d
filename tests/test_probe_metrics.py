"""Ranking and calibration metrics of the probe evaluation, on cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from aegis_proxy.probe.metrics import auprc, auroc, ece, fpr_at_tpr, summary, threshold_at_tpr


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1], [0.5, 0.5], 0.5),  # a tie counts half
        ([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.75),  # 3 of the 4 (pos, neg) pairs ordered right
    ],
)
def test_auroc(labels: list[int], scores: list[float], expected: float) -> None:
    assert auroc(labels, scores) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([1, 0, 1], [0.9, 0.8, 0.7], (1 / 1 + 2 / 3) / 2),
        ([0, 1], [0.5, 0.5], 0.5),  # both at once: precision 1/2 at full recall
    ],
)
def test_auprc(labels: list[int], scores: list[float], expected: float) -> None:
    assert auprc(labels, scores) == pytest.approx(expected)


def test_fpr_at_95_tpr_takes_the_threshold_that_keeps_95_percent_of_positives() -> None:
    labels = [1] * 20 + [0] * 10
    scores = [0.9] * 19 + [0.1] + [0.5] * 5 + [0.05] * 5
    assert threshold_at_tpr(labels, scores) == pytest.approx(0.9)  # 19/20 = 95% flagged at 0.9
    assert fpr_at_tpr(labels, scores) == pytest.approx(0.0)
    scores[0:2] = [0.4, 0.4]  # now 0.4 is needed to reach 95%: the five 0.5 negatives are flagged
    assert fpr_at_tpr(labels, scores) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([1, 0], [1.0, 0.0], 0.0),
        ([1, 0], [0.0, 1.0], 1.0),
        ([1, 1, 0, 0], [0.55, 0.55, 0.55, 0.55], 0.05),  # one bin: |0.55 - 0.5|
    ],
)
def test_ece(labels: list[int], scores: list[float], expected: float) -> None:
    assert ece(labels, scores) == pytest.approx(expected)


@pytest.mark.parametrize("labels", [[1, 1], [0, 0]])
def test_one_class_gives_none_not_a_number(labels: list[int]) -> None:
    assert math.isnan(auroc(labels, [0.1, 0.2]))
    row = summary(labels, [0.1, 0.2])
    assert row["auroc"] is None and row["auprc"] is None and row["fpr_at_95tpr"] is None


def test_summary_of_uncalibrated_scores_has_no_ece() -> None:
    row = summary([0, 1], [0.0, 3.0], calibrated=False)
    assert row == {"auroc": 1.0, "auprc": 1.0, "fpr_at_95tpr": 0.0, "ece": None, "positives": 1, "negatives": 1}
