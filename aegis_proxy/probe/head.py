"""Probe heads: logistic regression on chosen layers and poolings, saved as safetensors beside a JSON card.

A head is two files in a directory: `<name>.safetensors` (tensors `mean`, `scale`, `weight`, `bias`) and
`<name>.json`, its card: format, backbone (name, weight digest, sizes, max length), layers, pooling, threshold, the
training data manifest, metrics, and the SHA-256 of the tensor file. Loading checks all of it; any mismatch is a
ProbeError with a hint, never a crash and never a head that silently scores something else.
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
from aegis_proxy.strict_json import object_without_duplicates

if TYPE_CHECKING:
    import torch

    from aegis_proxy.probe.backbone import Model

CARD_FORMAT = "aegis-probe-head/1"
HEADS = ("risk", "injection")
INPUTS = {"risk": "render_call/1", "injection": "segments/1"}
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


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardise, then fit class-balanced L2 logistic regression with L-BFGS. Returns mean, scale, weight, bias."""
    torch = require_torch()
    mean = x.mean(0)
    scale = x.std(0).clamp(min=1e-4)
    z = (x - mean) / scale
    positives = float(y.sum())
    negatives = float(len(y) - positives)
    if positives == 0 or negatives == 0:
        raise ProbeError("training data has only one class", hint="rebuild the data set; both labels are needed")
    sample_weight = torch.where(y > 0.5, len(y) / (2 * positives), len(y) / (2 * negatives))
    weight = torch.zeros(z.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
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

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        """Probabilities (N,) for pooled features (N, layers+1, 2, H)."""
        torch = require_torch()
        z = (self.spec.select(pooled) - self.mean) / self.scale
        return torch.sigmoid(z @ self.weight + self.bias)

    @property
    def max_layer(self) -> int:
        return max(self.spec.layers)

    def save(self, directory: Path) -> Path:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors_path = directory / f"{self.name}.safetensors"
        tensors = {"mean": self.mean, "scale": self.scale, "weight": self.weight, "bias": self.bias.reshape(1)}
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(tensors_path))
        card = {
            **self.card,
            "format": CARD_FORMAT,
            "head": self.name,
            "input": INPUTS[self.name],
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
    if card.get("input") != INPUTS[name]:
        raise _bad(card_path, f"input {card.get('input')!r} is not {INPUTS[name]!r}")
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
