"""Task-grouped cross-validation of the call-risk head over the AgentDojo calls (part of `aegis probe eval`).

The held-out test slice has only five distinct attack calls (two injection tasks with calls), so one number from it
says little. Here every AgentDojo call of the data set (train and test splits) takes part: user tasks and injection
tasks are dealt into FOLDS folds by a hash, REPEATS times with different salts; a fold's test set holds the calls
whose tasks are all in that fold, its training set the calls with none of their tasks in it (calls that would mix
are left out of that fold), plus the corpus calls of the train split as the committed head has them. Each fold fits
a head with the committed head's layers, pooling and L2 strength (logistic regression; an MLP head is refitted as
the same MLP) and the tool-name baseline on the same training calls, and scores the fold's test calls. Reported: the
margin of the probe's AUROC over the baseline's, as mean, standard deviation, minimum and maximum over the folds, on
all AgentDojo calls and on the injected-context slice, with how many distinct attack calls the folds tested.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from typing import Any

from aegis_proxy.probe.backbone import require_torch
from aegis_proxy.probe.features import FeatureCache
from aegis_proxy.probe.head import Head, MLPSettings, fit_logistic, fit_mlp, mlp_scores
from aegis_proxy.probe.metrics import auroc
from aegis_proxy.probe.pipeline import DEFAULT_L2, Example, _fit_predict_tool_baseline, _messages_text
from aegis_proxy.probe.render import render_call, render_request

FOLDS = 3
REPEATS = 5
SALT = "aegis-probe-task-cv"


def _fold(task: str, repeat: int) -> int:
    digest = hashlib.sha256(f"{SALT}:{repeat}:{task}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % FOLDS


def fold_split(groups: list[list[str]], repeat: int, fold: int) -> tuple[list[int], list[int]]:
    """(train, test) indices of one fold: test items have all their tasks in the fold, train items none of them."""
    inside = [[_fold(task, repeat) == fold for task in tasks] for tasks in groups]
    test = [i for i, flags in enumerate(inside) if all(flags)]
    train = [i for i, flags in enumerate(inside) if not any(flags)]
    return train, test


def _text(item: dict[str, Any], head_input: str) -> str:
    request, data = _messages_text(item)
    if head_input == "render_call/1":
        return render_call(item["tool"], item["arguments"], request, data)
    return render_request(item["tool"], item["arguments"], request)


def _fit_score(head: Head, x_train: Any, y_train: Any, x_test: Any) -> list[float]:
    torch = require_torch()
    model = head.card.get("model", {})
    train, test = head.spec.select(x_train), head.spec.select(x_test)
    if head.kind == "mlp":
        known = {f.name for f in dataclasses.fields(MLPSettings)}
        tensors = fit_mlp(train, y_train, MLPSettings(**{k: v for k, v in model.items() if k in known}))
        return mlp_scores(tensors, test).tolist()
    # Float64 and rounded, as the tool-name baseline (and run on one thread, see below).
    train, test = train.double(), test.double()
    mean, scale, weight, bias = fit_logistic(train, y_train.double(), float(model.get("l2", DEFAULT_L2)))
    return [round(v, 6) for v in torch.sigmoid(((test - mean) / scale) @ weight + bias).tolist()]


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "folds": len(values),
    }


def task_cross_validation(items: list[dict[str, Any]], head: Head, cache: FeatureCache) -> dict[str, Any]:
    """The margins described above, from the data set's risk items and the committed head's settings."""
    torch = require_torch()
    agentdojo = [item for item in items if item["source"].startswith("agentdojo/")]
    corpus_train = [item for item in items if item["source"].startswith("corpus/") and item["split"] == "train"]
    texts = [_text(item, head.input) for item in agentdojo + corpus_train]
    x_all = cache.features(texts)
    y_all = torch.tensor([float(item["label"]) for item in agentdojo + corpus_train])
    threads = torch.get_num_threads()
    # One thread for the fits: L-BFGS follows a different path when sums are split differently, and the margins
    # must not depend on --threads.
    torch.set_num_threads(1)
    try:
        return _cross_validate(agentdojo, x_all, y_all, corpus_train, head)
    finally:
        torch.set_num_threads(threads)


def _cross_validate(
    agentdojo: list[dict[str, Any]], x_all: Any, y_all: Any, corpus_train: list[dict[str, Any]], head: Head
) -> dict[str, Any]:
    corpus_rows = list(range(len(agentdojo), len(agentdojo) + len(corpus_train)))
    margins: dict[str, list[float]] = {"agentdojo": [], "agentdojo, injected context": []}
    aurocs: dict[str, list[float]] = {"probe": [], "tool_name_baseline": []}
    attack_calls: list[int] = []
    for repeat in range(REPEATS):
        for fold in range(FOLDS):
            train, test = fold_split([item["groups"] for item in agentdojo], repeat, fold)
            train += corpus_rows
            labels = [int(agentdojo[i]["label"]) for i in test]
            if not test or len(set(labels)) < 2 or len({float(y_all[i]) for i in train}) < 2:
                continue
            probe = _fit_score(head, x_all[train], y_all[train], x_all[test])
            train_examples = [Example("", int(y_all[i]), "", (agentdojo + corpus_train)[i]["tool"], 0.0) for i in train]
            tool = _fit_predict_tool_baseline(train_examples, [agentdojo[i]["tool"] for i in test])
            attack_calls.append(
                len(
                    {
                        (agentdojo[i]["tool"], json.dumps(agentdojo[i]["arguments"], sort_keys=True))
                        for i in test
                        if agentdojo[i]["label"]
                    }
                )
            )
            probe_auroc, tool_auroc = auroc(labels, probe), auroc(labels, tool)
            aurocs["probe"].append(probe_auroc)
            aurocs["tool_name_baseline"].append(tool_auroc)
            margins["agentdojo"].append(probe_auroc - tool_auroc)
            hard = [k for k, i in enumerate(test) if agentdojo[i]["template"]]
            hard_labels = [labels[k] for k in hard]
            if len(set(hard_labels)) == 2:
                margins["agentdojo, injected context"].append(
                    auroc(hard_labels, [probe[k] for k in hard]) - auroc(hard_labels, [tool[k] for k in hard])
                )
    return {
        "folds": FOLDS,
        "repeats": REPEATS,
        "margin_over_tool_name_baseline": {name: _spread(values) for name, values in margins.items() if values},
        "auroc": {name: _spread(values) for name, values in aurocs.items() if values},
        "distinct_attack_calls_per_fold": _spread([float(n) for n in attack_calls]) if attack_calls else None,
    }


def cv_lines(section: dict[str, Any]) -> list[str]:
    """The README lines for one report's cross-validation."""
    lines = [
        f"- risk, task-grouped cross-validation over the AgentDojo calls ({section['repeats']} x {section['folds']} "
        "folds by user and injection task, train and test splits pooled; margin = probe AUROC - tool-name "
        "baseline AUROC per fold):"
    ]
    for name, spread in section["margin_over_tool_name_baseline"].items():
        lines.append(
            f"  {name}: margin {spread['mean']:+.3f} +/- {spread['std']:.3f} (min {spread['min']:+.3f}, "
            f"max {spread['max']:+.3f}, {spread['folds']} folds)"
        )
    probe, tool = section["auroc"]["probe"], section["auroc"]["tool_name_baseline"]
    calls = section["distinct_attack_calls_per_fold"]
    lines.append(
        f"  AUROC probe {probe['mean']:.3f} +/- {probe['std']:.3f}, tool-name baseline {tool['mean']:.3f} +/- "
        f"{tool['std']:.3f}; distinct attack calls per test fold {calls['mean']:.1f} (min {calls['min']:.0f})."
    )
    return lines
