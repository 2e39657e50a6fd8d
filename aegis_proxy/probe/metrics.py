"""Ranking and calibration metrics for probe heads and their baselines (numpy; no scikit-learn needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aegis_proxy.probe.errors import INSTALL_HINT, ProbeUnavailable


def _np() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise ProbeUnavailable(f"probe metrics need numpy ({exc})", hint=INSTALL_HINT) from None
    return numpy


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half). NaN when one class is missing."""
    np = _np()
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_scores = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auprc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Average precision (step-wise area under precision-recall); tied scores enter together."""
    np = _np()
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        return float("nan")
    area, seen_tp, seen = 0.0, 0, 0
    for value in np.unique(s)[::-1]:
        at = s == value
        seen_tp_new = seen_tp + int(y[at].sum())
        seen += int(at.sum())
        area += (seen_tp_new - seen_tp) / positives * (seen_tp_new / seen)
        seen_tp = seen_tp_new
    return float(area)


def fpr_at_tpr(labels: Sequence[int], scores: Sequence[float], tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold that still flags `tpr` of the positives."""
    np = _np()
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.sum() == 0 or (~y).sum() == 0:
        return float("nan")
    threshold = threshold_at_tpr(labels, scores, tpr)
    return float((s[~y] >= threshold).mean())


def threshold_at_tpr(labels: Sequence[int], scores: Sequence[float], tpr: float = 0.95) -> float:
    np = _np()
    y = np.asarray(labels, dtype=bool)
    positives = np.sort(np.asarray(scores, dtype=float)[y])[::-1]
    if len(positives) == 0:
        return float("nan")
    needed = max(1, int(np.ceil(tpr * len(positives))))
    return float(positives[needed - 1])


def ece(labels: Sequence[int], scores: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error over equal-width bins of the score (meaningful for probabilities only)."""
    np = _np()
    y = np.asarray(labels, dtype=float)
    s = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    if len(s) == 0:
        return float("nan")
    which = np.minimum((s * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        at = which == b
        if at.any():
            total += at.sum() / len(s) * abs(s[at].mean() - y[at].mean())
    return float(total)


def summary(labels: Sequence[int], scores: Sequence[float], *, calibrated: bool = True) -> dict[str, Any]:
    """AUROC, AUPRC, FPR@95TPR, ECE (None for scores that are not probabilities) and the class counts."""
    positives = int(sum(1 for v in labels if v))

    def clean(value: float) -> float | None:
        return None if value != value else round(value, 4)  # NaN -> None (JSON has no NaN)

    return {
        "auroc": clean(auroc(labels, scores)),
        "auprc": clean(auprc(labels, scores)),
        "fpr_at_95tpr": clean(fpr_at_tpr(labels, scores)),
        "ece": clean(ece(labels, scores)) if calibrated else None,
        "positives": positives,
        "negatives": len(labels) - positives,
    }
