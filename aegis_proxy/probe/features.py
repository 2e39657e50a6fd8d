"""Features: per-layer pooled hidden states (mean over tokens, and the last token), cached on disk by text.

`pooled(backbone, texts)` -> (N, layers+1, 2, hidden) float32: index 0 of the pooling axis is the mean, 1 the last
real token. A head picks the layers and poolings it was trained on. The cache is one safetensors file per backbone
digest, max length and precision; each row is keyed by the SHA-256 of its text, so a rebuilt data set reuses what it
can.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aegis_proxy.probe.backbone import Model, require_torch
from aegis_proxy.probe.errors import ProbeError

if TYPE_CHECKING:
    import torch

POOLINGS = ("mean", "last")
DEFAULT_CACHE_DIR = Path("probes") / ".cache" / "features"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(layers+1, B, T, H) and (B, T) -> (B, layers+1, 2, H)."""
    torch = require_torch()
    weights = mask.to(states.dtype)[None, :, :, None]
    mean = (states * weights).sum(2) / weights.sum(2).clamp(min=1.0)
    last_index = (mask.sum(1) - 1).clamp(min=0)
    last = states[:, torch.arange(states.shape[1], device=states.device), last_index]
    return torch.stack((mean, last), dim=2).transpose(0, 1).contiguous()


def length_buckets(lengths: Sequence[int], max_batch: int, ratio: float = 1.5) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, at most `max_batch`, longest <= ratio x shortest + 16).

    A batch is padded to its longest text, and attention grows with the square of the length: on a CPU, one batch of
    mixed lengths costs more than several batches of similar ones.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < max_batch and lengths[index] <= lengths[batches[-1][0]] * ratio + 16:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def pooled(backbone: Model, texts: Sequence[str], batch_size: int = 16, upto: int | None = None) -> torch.Tensor:
    """Pooled features of every text, in order. Texts are batched by length so padding stays small."""
    torch = require_torch()
    if not texts:
        return torch.zeros(0, backbone.num_layers + 1, len(POOLINGS), backbone.hidden_size)
    out = torch.zeros(len(texts), backbone.num_layers + 1, len(POOLINGS), backbone.hidden_size)
    for chunk in length_buckets([len(text) for text in texts], batch_size):
        states, mask = backbone.hidden_states([texts[i] for i in chunk], upto)
        out[torch.tensor(chunk)] = pool(states, mask).float().cpu()
    return out


class FeatureCache:
    """Pooled features by text hash, persisted as safetensors (+ the keys in its metadata)."""

    def __init__(self, directory: Path, backbone: Model) -> None:
        name = f"features-{backbone.digest[:16]}-{backbone.max_length}-{backbone.precision}.safetensors"
        self.path = directory / name
        self.backbone = backbone
        self._rows: dict[str, torch.Tensor] = {}
        self._dirty = False
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), "pt") as handle:
                keys = json.loads((handle.metadata() or {}).get("keys", "[]"))
                tensor = handle.get_tensor("features")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProbeError(
                f"feature cache {self.path} is unreadable: {exc}", hint="delete it; it is rebuilt"
            ) from None
        if tensor.shape[0] != len(keys):
            raise ProbeError(f"feature cache {self.path} is inconsistent", hint="delete it; it is rebuilt")
        self._rows = {key: tensor[i] for i, key in enumerate(keys)}

    def features(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        torch = require_torch()
        keys = [text_key(text) for text in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._rows:
                missing[key] = text
        if missing:
            computed = pooled(self.backbone, list(missing.values()), batch_size)
            for i, key in enumerate(missing):
                self._rows[key] = computed[i].to(torch.float16)  # half the disk; probes are not that precise
            self._dirty = True
        if not keys:
            return torch.zeros(0, self.backbone.num_layers + 1, len(POOLINGS), self.backbone.hidden_size)
        return torch.stack([self._rows[key] for key in keys]).float()

    def save(self) -> None:
        if not self._dirty:
            return
        torch = require_torch()
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._rows)
        tmp = self.path.with_suffix(".tmp")
        save_file(
            {"features": torch.stack([self._rows[k] for k in keys])}, str(tmp), metadata={"keys": json.dumps(keys)}
        )
        tmp.replace(self.path)
        self._dirty = False
