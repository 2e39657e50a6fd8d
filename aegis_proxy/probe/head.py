"""Probe heads: logistic regression or a one-hidden-layer MLP on chosen layers and poolings, saved as safetensors
beside a JSON card.

A head is two files in a directory: `<name>.safetensors` (tensors `mean`, `scale`, `weight`, `bias`, and for an MLP
`hidden_weight`, `hidden_bias`) and `<name>.json`, its card: format, input, model kind, backbone (name, weight digest,
sizes, max length), layers, pooling, threshold, the training data manifest, metrics, and the SHA-256 of the tensor
file. Loading checks all of it; any mismatch is a ProbeError with a hint, never a crash and never a head that
silently scores something else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_proxy.probe.backbone import require_torch
from aegis_proxy.probe.errors import ProbeError
from aegis_proxy.probe.features import POOLINGS
from aegis_proxy.probe.precision import COMPUTE_PRECISIONS
from aegis_proxy.strict_json import object_without_duplicates

if TYPE_CHECKING:
    import torch

    from aegis_proxy.probe.backbone import Model


CARD_FORMAT = "aegis-probe-head/1"
HEADS = ("risk", "injection")
INPUTS = {"risk": "render_call/2", "injection": "segments/1"}  # what `train` writes
# What `load_head` accepts: risk heads trained before the data-set fix read the call with its untrusted data.
ACCEPTED_INPUTS = {"risk": ("render_call/1", "render_call/2"), "injection": ("segments/1",)}
MODEL_KINDS = ("logistic_regression", "mlp")
MLP_HIDDEN = 64
MAX_MLP_HIDDEN = 4096
MAX_CARD_BYTES = 1 << 20
MAX_DENSE_LAYERS = 12  # up to this many layers, every layer and every prefix is a candidate


@dataclass(frozen=True)
class HeadSpec:
    layers: tuple[int, ...]
    pooling: tuple[str, ...]

    def select(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, layers+1, 2, H) -> (N, D): the chosen layers and poolings, concatenated."""
        index = [POOLINGS.index(p) for p in self.pooling]
        return pooled[:, list(self.layers)][:, :, index].reshape(pooled.shape[0], -1)

    @property
    def label(self) -> str:
        return f"layers {','.join(map(str, self.layers))} / {'+'.join(self.pooling)}"


def _standardised_balanced(
    x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every head's fit starts from: (mean, scale, standardised x, class-balancing sample weights)."""
    torch = require_torch()
    mean = x.mean(0)
    scale = x.std(0).clamp(min=1e-4)
    positives = float(y.sum())
    negatives = float(len(y) - positives)
    if positives == 0 or negatives == 0:
        raise ProbeError("training data has only one class", hint="rebuild the data set; both labels are needed")
    sample_weight = torch.where(y > 0.5, len(y) / (2 * positives), len(y) / (2 * negatives))
    return mean, scale, (x - mean) / scale, sample_weight


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardise, then fit class-balanced L2 logistic regression with L-BFGS. Returns mean, scale, weight, bias."""
    torch = require_torch()
    mean, scale, z, sample_weight = _standardised_balanced(x, y)
    weight = torch.zeros(z.shape[1], dtype=z.dtype, requires_grad=True)
    bias = torch.zeros(1, dtype=z.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = z @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=sample_weight)
        loss = loss + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return mean, scale, weight.detach(), bias.detach()


@dataclass(frozen=True)
class MLPSettings:
    hidden: int = MLP_HIDDEN
    input_dropout: float = 0.2  # features are thousands of correlated activations: dropout keeps the fit honest
    weight_decay: float = 1e-2
    epochs: int = 60
    batch: int = 64
    learning_rate: float = 1e-3
    seed: int = 0

    def card(self) -> dict[str, Any]:
        return {
            "kind": "mlp",
            "hidden": self.hidden,
            "activation": "gelu",
            "input_dropout": self.input_dropout,
            "weight_decay": self.weight_decay,
            "epochs": self.epochs,
            "batch": self.batch,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "standardised": True,
            "class_balanced": True,
        }


DEFAULT_MLP = MLPSettings()


def fit_mlp(x: torch.Tensor, y: torch.Tensor, settings: MLPSettings = DEFAULT_MLP) -> dict[str, torch.Tensor]:
    """Standardise, then fit a class-balanced MLP (input dropout, one GELU hidden layer) with AdamW; deterministic for
    a given seed. Returns the tensors a head saves: mean, scale, hidden_weight, hidden_bias, weight, bias."""
    torch = require_torch()
    mean, scale, z, sample_weight = _standardised_balanced(x, y)
    generator = torch.Generator().manual_seed(settings.seed)
    hidden = torch.nn.Linear(z.shape[1], settings.hidden)
    out = torch.nn.Linear(settings.hidden, 1)
    with torch.no_grad():  # initialised from our generator, not the global one: the same data gives the same head
        for layer in (hidden, out):
            bound = 1 / layer.in_features**0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    parameters = [*hidden.parameters(), *out.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    functional = torch.nn.functional
    with torch.enable_grad():
        for _ in range(settings.epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), settings.batch):
                rows = order[start : start + settings.batch]
                keep = torch.rand(len(rows), z.shape[1], generator=generator) >= settings.input_dropout
                inputs = z[rows] * keep / (1 - settings.input_dropout)
                logits = out(functional.gelu(hidden(inputs))).squeeze(1)
                loss = functional.binary_cross_entropy_with_logits(logits, y[rows], weight=sample_weight[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return {
        "mean": mean,
        "scale": scale,
        "hidden_weight": hidden.weight.detach().clone(),
        "hidden_bias": hidden.bias.detach().clone(),
        "weight": out.weight.detach()[0].clone(),
        "bias": out.bias.detach().clone(),
    }


def mlp_scores(tensors: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Probabilities of `fit_mlp`'s tensors on (N, D) features (what `Head.score` computes for an MLP head)."""
    torch = require_torch()
    z = (features - tensors["mean"]) / tensors["scale"]
    hidden = torch.nn.functional.gelu(z @ tensors["hidden_weight"].T + tensors["hidden_bias"])
    return torch.sigmoid(hidden @ tensors["weight"] + tensors["bias"])


@dataclass
class Head:
    name: str
    spec: HeadSpec
    mean: Any
    scale: Any
    weight: Any
    bias: Any
    threshold: float
    card: dict[str, Any] = field(default_factory=dict)
    hidden_weight: Any = None  # an MLP's hidden layer (hidden, D) and its bias; None for logistic regression
    hidden_bias: Any = None
    input: str = ""  # what text the head reads (INPUTS); "" = the current one for its name

    def __post_init__(self) -> None:
        if not self.input:
            self.input = INPUTS[self.name]

    @property
    def kind(self) -> str:
        return "logistic_regression" if self.hidden_weight is None else "mlp"

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        """Probabilities (N,) for pooled features (N, layers+1, 2, H)."""
        torch = require_torch()
        z = (self.spec.select(pooled) - self.mean) / self.scale
        if self.hidden_weight is not None:
            z = torch.nn.functional.gelu(z @ self.hidden_weight.T + self.hidden_bias)
        return torch.sigmoid(z @ self.weight + self.bias)

    @property
    def max_layer(self) -> int:
        return max(self.spec.layers)

    @property
    def trained_precision(self) -> str:
        """The backbone precision of the features the head was fitted on (cards before the setting: fp32)."""
        return str(self.card.get("backbone", {}).get("precision", "fp32"))

    @property
    def validated_precisions(self) -> frozenset[str]:
        """Precisions the head may read features of: the one it was trained on and those `check-precision` accepted."""
        checked = self.card.get("precisions", {}).get("validated", [])
        return frozenset({self.trained_precision, *checked})

    def save(self, directory: Path) -> Path:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors_path = directory / f"{self.name}.safetensors"
        tensors = {"mean": self.mean, "scale": self.scale, "weight": self.weight, "bias": self.bias.reshape(1)}
        if self.hidden_weight is not None:
            tensors |= {"hidden_weight": self.hidden_weight, "hidden_bias": self.hidden_bias}
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(tensors_path))
        card = {
            **self.card,
            "format": CARD_FORMAT,
            "head": self.name,
            "input": self.input,
            "layers": list(self.spec.layers),
            "pooling": list(self.spec.pooling),
            "threshold": self.threshold,
            "tensors_sha256": hashlib.sha256(tensors_path.read_bytes()).hexdigest(),
        }
        self.card = card
        card_path = directory / f"{self.name}.json"
        card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return card_path


def backbone_section(backbone: Model) -> dict[str, Any]:
    """The card's description of the backbone a head reads: a head loads only on the same weights."""
    return {
        "name": backbone.name,
        "digest": backbone.digest,
        "num_layers": backbone.num_layers,
        "hidden_size": backbone.hidden_size,
        "max_length": backbone.max_length,
        "precision": backbone.precision,
    }


def _bad(path: Path, what: str) -> ProbeError:
    return ProbeError(
        f"probe head card {path}: {what}", hint="retrain the head (aegis probe train) or restore it from git"
    )


def read_card(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProbeError(
            f"cannot read probe head card {path}: {exc.strerror}", hint="aegis probe train writes it"
        ) from None
    if len(raw) > MAX_CARD_BYTES:
        raise _bad(path, f"{len(raw)} bytes is too large for a card")
    try:
        card = json.loads(raw, object_pairs_hook=object_without_duplicates)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise _bad(path, "not a JSON object")
    if card.get("format") != CARD_FORMAT:
        raise _bad(path, f"format {card.get('format')!r} is not {CARD_FORMAT!r}")
    return card


def load_head_for(model: Model, directory: Path, name: str) -> Head:
    """`load_head` for the backbone `model`: a head trained on other weights or sizes is refused."""
    return load_head(
        directory, name, backbone_digest=model.digest, num_layers=model.num_layers, hidden_size=model.hidden_size
    )


def load_head(
    directory: Path,
    name: str,
    *,
    backbone_digest: str | None = None,
    num_layers: int | None = None,
    hidden_size: int | None = None,
) -> Head:
    """Load and check one head. Give the backbone's digest and sizes to refuse a head trained on another backbone."""
    torch = require_torch()
    if name not in HEADS:
        raise ProbeError(f"unknown probe head {name!r}", hint=f"heads are {', '.join(HEADS)}")
    card_path = directory / f"{name}.json"
    card = read_card(card_path)
    if card.get("head") != name:
        raise _bad(card_path, f"it describes head {card.get('head')!r}, not {name!r}")
    if card.get("input") not in ACCEPTED_INPUTS[name]:
        raise _bad(card_path, f"input {card.get('input')!r} is not one of {', '.join(ACCEPTED_INPUTS[name])}")
    model = card.get("model", {"kind": "logistic_regression"})
    kind = model.get("kind") if isinstance(model, dict) else None
    if kind not in MODEL_KINDS:
        raise _bad(card_path, f"model kind {kind!r} is not one of {', '.join(MODEL_KINDS)}")
    backbone = card.get("backbone")
    if not isinstance(backbone, dict):
        raise _bad(card_path, "no backbone section")
    if backbone_digest is not None and backbone.get("digest") != backbone_digest:
        raise ProbeError(
            f"probe head {card_path} was trained on backbone {backbone.get('name')!r} "
            f"(weights {str(backbone.get('digest'))[:12]}...), not on the one loaded ({backbone_digest[:12]}...)",
            hint="load the backbone the head was trained on, or retrain the head on this one",
        )
    layers = card.get("layers")
    pooling = card.get("pooling")
    top = num_layers if num_layers is not None else backbone.get("num_layers")
    if (
        not isinstance(layers, list)
        or not layers
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in layers)
        or not isinstance(top, int)
        or not all(0 <= n <= top for n in layers)
    ):
        raise _bad(card_path, f"layers {layers!r} are not layer numbers of the backbone")
    if not isinstance(pooling, list) or not pooling or not all(p in POOLINGS for p in pooling):
        raise _bad(card_path, f"pooling {pooling!r} is not a list of {', '.join(POOLINGS)}")
    trained = backbone.get("precision", "fp32")
    checked = card.get("precisions", {"validated": []})
    validated = checked.get("validated") if isinstance(checked, dict) else None
    if (
        trained not in COMPUTE_PRECISIONS
        or not isinstance(validated, list)
        or not all(p in COMPUTE_PRECISIONS for p in validated)
    ):
        raise _bad(card_path, f"precisions {trained!r} / {validated!r} are not of {', '.join(COMPUTE_PRECISIONS)}")
    threshold = card.get("threshold")
    if not isinstance(threshold, float | int) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise _bad(card_path, f"threshold {threshold!r} is not in 0..1")
    tensors_path = directory / f"{name}.safetensors"
    try:
        raw = tensors_path.read_bytes()
    except OSError as exc:
        raise ProbeError(
            f"cannot read probe head {tensors_path}: {exc.strerror}", hint="restore it with its card"
        ) from None
    if hashlib.sha256(raw).hexdigest() != card.get("tensors_sha256"):
        raise _bad(card_path, f"{tensors_path.name} does not match the card's tensors_sha256 (edited or swapped)")
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        tensors = load_bytes(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise _bad(card_path, f"{tensors_path.name} is not a valid safetensors file ({exc})") from None
    hidden = hidden_size if hidden_size is not None else backbone.get("hidden_size")
    if not isinstance(hidden, int):
        raise _bad(card_path, "backbone.hidden_size is missing")
    width = len(layers) * len(pooling) * hidden
    expected = {"mean": (width,), "scale": (width,), "weight": (width,), "bias": (1,)}
    if kind == "mlp":
        units = model.get("hidden")
        if not isinstance(units, int) or isinstance(units, bool) or not 1 <= units <= MAX_MLP_HIDDEN:
            raise _bad(card_path, f"model.hidden {units!r} is not a layer width in 1..{MAX_MLP_HIDDEN}")
        expected |= {"hidden_weight": (units, width), "hidden_bias": (units,), "weight": (units,)}
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise _bad(card_path, f"tensors {unexpected} do not belong to a {kind} head")
    for key, shape in expected.items():
        tensor = tensors.get(key)
        if tensor is None or tuple(tensor.shape) != shape or not tensor.is_floating_point():
            got = None if tensor is None else tuple(tensor.shape)
            raise _bad(card_path, f"tensor {key!r} should have shape {shape}, has {got}")
        if not bool(torch.isfinite(tensor).all()):
            raise _bad(card_path, f"tensor {key!r} holds NaN or infinite values")
    if bool((tensors["scale"] <= 0).any()):
        raise _bad(card_path, "tensor 'scale' has values <= 0")
    return Head(
        name=name,
        spec=HeadSpec(tuple(layers), tuple(pooling)),
        mean=tensors["mean"].float(),
        scale=tensors["scale"].float(),
        weight=tensors["weight"].float(),
        bias=tensors["bias"].float()[0],
        threshold=float(threshold),
        card=card,
        hidden_weight=tensors["hidden_weight"].float() if kind == "mlp" else None,
        hidden_bias=tensors["hidden_bias"].float() if kind == "mlp" else None,
        input=card["input"],
    )


def candidate_specs(num_layers: int) -> list[HeadSpec]:
    """Layer/pooling choices tried by validation: each layer alone, the top two, every prefix 1..k (k >= 2); mean,
    last, both. Prefixes matter at run time: the backbone stops at the deepest layer a head reads."""
    if num_layers > MAX_DENSE_LAYERS:
        # A deep decoder: every layer alone and every prefix would be hundreds of fits on tens of thousands of
        # features. Every `step`-th layer instead, alone and as strided prefixes.
        step = -(-num_layers // 6)
        picks = [*range(step, num_layers, step), num_layers]
        layer_sets = [(n,) for n in picks] + [tuple(picks[:k]) for k in range(2, len(picks) + 1)]
        layer_sets.append((num_layers - 1, num_layers))
        return [
            HeadSpec(layers, pooling) for layers in layer_sets for pooling in (("mean",), ("last",), ("mean", "last"))
        ]
    layer_sets: list[tuple[int, ...]] = [(n,) for n in range(1, num_layers + 1)]
    if num_layers >= 2:
        layer_sets.append((num_layers - 1, num_layers))
        layer_sets.extend(tuple(range(1, k + 1)) for k in range(2, num_layers + 1))
    return [HeadSpec(layers, pooling) for layers in layer_sets for pooling in (("mean",), ("last",), ("mean", "last"))]
