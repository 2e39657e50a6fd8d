"""Probe heads: fit, save as safetensors + JSON card, load with every check; tampered or malformed heads refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from aegis_proxy.probe.backbone import Backbone, make_random_bert
from aegis_proxy.probe.errors import ProbeError
from aegis_proxy.probe.head import (
    Head,
    HeadSpec,
    MLPSettings,
    backbone_section,
    candidate_specs,
    fit_logistic,
    fit_mlp,
    load_head,
    mlp_scores,
)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    return Backbone(str(make_random_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")), device="cpu")


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled-feature-shaped data (N, layers+1, 2, H) whose label depends on layer 2's mean."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 3, 2, 32, generator=generator)
    y = (x[:, 2, 0, :4].sum(1) > 0).float()
    return x, y


@pytest.fixture
def saved(backbone: Backbone, tmp_path: Path) -> Path:
    x, y = _data()
    spec = HeadSpec((2,), ("mean",))
    mean, scale, weight, bias = fit_logistic(spec.select(x), y, 1e-3)
    head = Head("injection", spec, mean, scale, weight, bias, 0.5, card={"backbone": backbone_section(backbone)})
    head.save(tmp_path)
    return tmp_path


def _load(directory: Path, backbone: Backbone) -> Head:
    return load_head(
        directory,
        "injection",
        backbone_digest=backbone.digest,
        num_layers=backbone.num_layers,
        hidden_size=backbone.hidden_size,
    )


def test_logistic_head_learns_a_separable_rule_and_survives_a_round_trip(saved: Path, backbone: Backbone) -> None:
    x, y = _data(seed=1)  # fresh data from the same rule
    head = _load(saved, backbone)
    scores = head.score(x)
    accuracy = float(((scores > 0.5).float() == y).float().mean())
    assert accuracy > 0.9
    card = json.loads((saved / "injection.json").read_text())
    assert card["layers"] == [2] and card["pooling"] == ["mean"] and card["threshold"] == 0.5
    assert card["backbone"]["digest"] == backbone.digest
    assert head.max_layer == 2


def _xor_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rule no linear head can learn (the sign of a product), on layer 2's mean; 8 informative-or-noise features."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(600, 3, 2, 32, generator=generator)
    x[..., 8:] = 0.0  # constant features: standardised to zero, so 600 examples are enough for the fit
    y = ((x[:, 2, 0, 0] * x[:, 2, 0, 1]) > 0).float()
    return x, y


@pytest.fixture
def saved_mlp(backbone: Backbone, tmp_path: Path) -> Path:
    x, y = _xor_data(0)
    spec = HeadSpec((2,), ("mean",))
    settings = MLPSettings(hidden=16, input_dropout=0.0, epochs=40, learning_rate=1e-2)
    t = fit_mlp(spec.select(x), y, settings)
    card = {"backbone": backbone_section(backbone), "model": settings.card()}
    head = Head(
        "injection",
        spec,
        t["mean"],
        t["scale"],
        t["weight"],
        t["bias"],
        0.5,
        card,
        hidden_weight=t["hidden_weight"],
        hidden_bias=t["hidden_bias"],
    )
    head.save(tmp_path)
    return tmp_path


def test_mlp_head_learns_what_logistic_regression_cannot_and_survives_a_round_trip(
    saved_mlp: Path, backbone: Backbone
) -> None:
    x, y = _xor_data(1)
    spec = HeadSpec((2,), ("mean",))
    mean, scale, weight, bias = fit_logistic(spec.select(_xor_data(0)[0]), _xor_data(0)[1], 1e-3)
    linear = torch.sigmoid(((spec.select(x) - mean) / scale) @ weight + bias)
    head = _load(saved_mlp, backbone)
    assert head.kind == "mlp" and head.hidden_weight.shape == (16, 32)
    mlp_accuracy = float(((head.score(x) > 0.5).float() == y).float().mean())
    linear_accuracy = float(((linear > 0.5).float() == y).float().mean())
    assert mlp_accuracy > 0.85 > 0.65 > linear_accuracy


def test_mlp_training_is_deterministic_and_scores_match_the_loaded_head(saved_mlp: Path, backbone: Backbone) -> None:
    x, y = _xor_data(0)
    spec = HeadSpec((2,), ("mean",))
    settings = MLPSettings(hidden=16, input_dropout=0.0, epochs=40, learning_rate=1e-2)
    again = fit_mlp(spec.select(x), y, settings)
    head = _load(saved_mlp, backbone)
    assert torch.equal(again["hidden_weight"], head.hidden_weight)
    assert torch.allclose(mlp_scores(again, spec.select(x)), head.score(x))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: {k: v for k, v in t.items() if k != "hidden_weight"}, "tensor 'hidden_weight' should have shape"),
        (lambda t: {**t, "hidden_weight": t["hidden_weight"][:8]}, "tensor 'hidden_weight' should have shape"),
        (lambda t: {**t, "weight": torch.zeros(32)}, "tensor 'weight' should have shape"),
        (lambda t: {**t, "extra": torch.zeros(1)}, r"tensors \['extra'\] do not belong"),
    ],
)
def test_malformed_mlp_tensors_are_refused(saved_mlp: Path, backbone: Backbone, edit: Any, message: str) -> None:
    _replace_tensors(saved_mlp, edit(_good(saved_mlp)))
    with pytest.raises(ProbeError, match=message):
        _load(saved_mlp, backbone)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"kind": "forest"}, "model kind 'forest'"),
        ({"kind": "mlp", "hidden": 0}, "model.hidden 0"),
        ({"kind": "mlp", "hidden": "16"}, "model.hidden '16'"),
    ],
)
def test_malformed_model_sections_are_refused(
    saved_mlp: Path, backbone: Backbone, model: dict[str, Any], message: str
) -> None:
    _rewrite_card(saved_mlp, {"model": model})
    with pytest.raises(ProbeError, match=message):
        _load(saved_mlp, backbone)


def test_a_logistic_card_over_mlp_tensors_is_refused(saved_mlp: Path, backbone: Backbone) -> None:
    _rewrite_card(saved_mlp, {"model": {"kind": "logistic_regression"}})
    with pytest.raises(ProbeError, match=r"tensors \['hidden_bias', 'hidden_weight'\] do not belong to a logistic"):
        _load(saved_mlp, backbone)


def test_one_class_training_data_is_refused() -> None:
    with pytest.raises(ProbeError, match="only one class"):
        fit_logistic(torch.randn(10, 4), torch.zeros(10), 1e-2)


def _rewrite_card(directory: Path, change: dict[str, Any]) -> None:
    path = directory / "injection.json"
    card = json.loads(path.read_text())
    for key, value in change.items():
        if value is None:
            card.pop(key)
        else:
            card[key] = value
    path.write_text(json.dumps(card))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something/2"}, "format"),
        ({"head": "risk"}, "describes head 'risk'"),
        ({"input": "raw"}, "input 'raw'"),
        ({"layers": [7]}, "layers"),
        ({"layers": []}, "layers"),
        ({"layers": [True]}, "layers"),
        ({"pooling": ["max"]}, "pooling"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"backbone": None}, "no backbone section"),
        ({"tensors_sha256": "0" * 64}, "does not match the card"),
    ],
)
def test_malformed_cards_are_refused_with_a_hint(
    saved: Path, backbone: Backbone, change: dict[str, Any], message: str
) -> None:
    _rewrite_card(saved, change)
    with pytest.raises(ProbeError, match=message) as caught:
        _load(saved, backbone)
    assert caught.value.hint


@pytest.mark.parametrize(
    ("content", "message"), [(b"{", "not valid JSON"), (b"[]", "not a JSON object"), (b"", "not valid JSON")]
)
def test_unparseable_cards_are_refused(saved: Path, backbone: Backbone, content: bytes, message: str) -> None:
    (saved / "injection.json").write_bytes(content)
    with pytest.raises(ProbeError, match=message):
        _load(saved, backbone)


def _replace_tensors(directory: Path, tensors: dict[str, torch.Tensor] | bytes) -> None:
    from safetensors.torch import save_file

    path = directory / "injection.safetensors"
    if isinstance(tensors, bytes):
        path.write_bytes(tensors)
    else:
        save_file(tensors, str(path))
    _rewrite_card(directory, {"tensors_sha256": hashlib.sha256(path.read_bytes()).hexdigest()})


def _good(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "injection.safetensors"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: {**t, "weight": torch.full_like(t["weight"], float("nan"))}, "NaN or infinite"),
        (lambda t: {**t, "bias": torch.tensor([float("inf")])}, "NaN or infinite"),
        (lambda t: {**t, "scale": torch.zeros_like(t["scale"])}, "'scale' has values <= 0"),
        (lambda t: {**t, "weight": torch.zeros(5)}, "tensor 'weight' should have shape"),
        (lambda t: {k: v for k, v in t.items() if k != "mean"}, "tensor 'mean' should have shape"),
        (lambda t: {**t, "weight": t["weight"].to(torch.int32)}, "tensor 'weight' should have shape"),
        (lambda t: b"\x00" * 8, "not a valid safetensors file"),
    ],
)
def test_malformed_tensors_are_refused(saved: Path, backbone: Backbone, edit: Any, message: str) -> None:
    _replace_tensors(saved, edit(_good(saved)))
    with pytest.raises(ProbeError, match=message):
        _load(saved, backbone)


def test_a_head_trained_on_another_backbone_is_refused(saved: Path, backbone: Backbone) -> None:
    with pytest.raises(ProbeError, match="trained on backbone") as caught:
        load_head(saved, "injection", backbone_digest="f" * 64)
    assert "retrain" in caught.value.hint


def test_missing_files_and_unknown_heads(saved: Path, backbone: Backbone) -> None:
    with pytest.raises(ProbeError, match="cannot read probe head card"):
        load_head(saved, "risk")
    with pytest.raises(ProbeError, match="unknown probe head"):
        load_head(saved, "vibes")
    (saved / "injection.safetensors").unlink()
    with pytest.raises(ProbeError, match="cannot read probe head"):
        _load(saved, backbone)


@pytest.mark.parametrize(("layers", "count"), [(1, 3), (2, 12), (6, 36), (30, 36)])
def test_candidate_specs(layers: int, count: int) -> None:
    specs = candidate_specs(layers)
    assert len(specs) == count
    assert all(1 <= n <= layers for spec in specs for n in spec.layers)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([(0.90, HeadSpec((1, 2, 3), ("mean",))), (0.897, HeadSpec((2,), ("mean",)))], (2,)),  # within tolerance
        ([(0.90, HeadSpec((1, 2, 3), ("mean",))), (0.89, HeadSpec((2,), ("mean",)))], (1, 2, 3)),  # too far
        ([(0.90, HeadSpec((3,), ("mean",))), (0.90, HeadSpec((1, 2, 3), ("mean",)))], (3,)),  # fewer features
    ],
)
def test_layer_choice_prefers_shallow_layers_within_tolerance(
    results: list[tuple[float, HeadSpec]], expected: tuple[int, ...]
) -> None:
    from aegis_proxy.probe.pipeline import cheapest_within

    assert cheapest_within(results, 0.005).layers == expected
