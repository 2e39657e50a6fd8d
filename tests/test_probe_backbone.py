"""Backbones: safetensors + JSON only, pickles refused, malformed files a ProbeError with a hint, the forward pass right."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from aegis_proxy.probe.backbone import Backbone, EncoderConfig, make_random_bert, resolve_backbone, weight_files
from aegis_proxy.probe.errors import ProbeError
from aegis_proxy.probe.features import pool, pooled


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture
def broken(tiny: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny model that a test may damage."""
    return Path(shutil.copytree(tiny, tmp_path / "model"))


def test_tiny_model_gives_hidden_states_per_layer(tiny: Path) -> None:
    backbone = Backbone(str(tiny), max_length=64, device="cpu")
    states, mask = backbone.hidden_states(["send email to the user", "read a file"])
    assert states.shape == (3, 2, mask.shape[1], 32)  # embeddings + 2 layers
    assert mask[0].sum() == 7 and mask[1].sum() == 5  # [CLS] words [SEP]; the second is padded
    assert torch.isfinite(states).all()
    features = pooled(backbone, ["send email to the user", "read a file"])
    assert features.shape == (2, 3, 2, 32)
    # Batching and padding do not change a text's features.
    alone = pooled(backbone, ["read a file"])
    assert torch.allclose(alone[0], features[1], atol=1e-5)


def test_upto_skips_later_layers_without_changing_earlier_ones(tiny: Path) -> None:
    backbone = Backbone(str(tiny), device="cpu")
    full, _ = backbone.hidden_states(["delete the file now"])
    partial, _ = backbone.hidden_states(["delete the file now"], upto=1)
    assert torch.allclose(full[:2], partial[:2])
    assert (partial[2] == 0).all()


def _reference_states(backbone: Backbone, texts: list[str]) -> torch.Tensor:
    """BERT written out the textbook way (separate query/key/value, softmax with a padding mask, every layer)."""
    ids, mask = backbone.tokenize(texts)
    w, cfg = backbone.weights, backbone.config
    h, heads = cfg.hidden_size, cfg.num_heads
    size = h // heads

    def norm(t: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(t, (h,), w[name + ".weight"], w[name + ".bias"], cfg.layer_norm_eps)

    def dense(t: torch.Tensor, name: str) -> torch.Tensor:
        return t @ w[name + ".weight"].T + w[name + ".bias"]

    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    states = [x]
    for n in range(cfg.num_layers):
        p = f"encoder.layer.{n}."
        q, k, v = (
            dense(x, p + f"attention.self.{name}").view(*ids.shape, heads, size).transpose(1, 2)
            for name in ("query", "key", "value")
        )
        scores = (q @ k.transpose(-1, -2)) / size**0.5
        scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(*ids.shape, h)
        x = norm(dense(attended, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        up = torch.nn.functional.gelu(dense(x, p + "intermediate.dense"))
        x = norm(dense(up, p + "output.dense") + x, p + "output.LayerNorm")
        states.append(x)
    return torch.stack(states)


@pytest.mark.parametrize(
    "texts",
    [["send email to the user"], ["send email to the user", "read a file", "do this now please"]],
    ids=["one text, no padding", "padded batch"],
)
def test_the_fused_forward_matches_the_textbook_one(tiny: Path, texts: list[str]) -> None:
    backbone = Backbone(str(tiny), device="cpu")
    states, mask = backbone.hidden_states(texts)
    expected = _reference_states(backbone, texts)
    real = mask.bool()  # padding positions hold no meaning in either
    assert torch.allclose(states[:, real], expected[:, real], atol=1e-5)


def test_truncation_at_max_length(tiny: Path) -> None:
    backbone = Backbone(str(tiny), max_length=8, device="cpu")
    _, mask = backbone.hidden_states(["a " * 100])
    assert mask.shape == (1, 8)


def test_pool_takes_mean_over_real_tokens_and_the_last_real_token() -> None:
    states = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).reshape(2, 1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    out = pool(states, mask)
    assert out.shape == (1, 2, 2, 2)
    assert torch.equal(out[0, 0, 0], states[0, 0, :2].mean(0))
    assert torch.equal(out[0, 1, 1], states[1, 0, 1])


def test_pickle_only_directory_is_refused_and_never_unpickled(broken: Path) -> None:
    (broken / "model.safetensors").unlink()
    marker = broken / "unpickled"
    # Unpickling this would create the marker file: proof that nothing unpickles it.
    payload = pickle.dumps(_Trap(str(marker)))
    (broken / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(ProbeError, match=r"pickled weights.*refused") as caught:
        Backbone(str(broken))
    assert "safetensors" in caught.value.hint
    assert not marker.exists()


class _Trap:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))  # type: ignore[return-value]


def test_a_pickle_renamed_to_safetensors_is_refused(broken: Path) -> None:
    marker = broken / "unpickled"
    (broken / "model.safetensors").write_bytes(pickle.dumps(_Trap(str(marker))))
    with pytest.raises(ProbeError, match="not a valid safetensors file"):
        Backbone(str(broken))
    assert not marker.exists()


def _edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"hidden_size": 30}, "not a multiple of num_attention_heads"),
        ({"num_hidden_layers": -1}, "num_hidden_layers must be an integer"),
        ({"vocab_size": "many"}, "vocab_size must be an integer"),
        ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
        ({"layer_norm_eps": 5}, "layer_norm_eps"),
        ({"num_attention_heads": None}, "num_attention_heads must be an integer"),
        ({"hidden_size": 64}, "has shape"),  # config and weights disagree
    ],
)
def test_malformed_config_is_a_clear_error(broken: Path, changes: dict[str, object], message: str) -> None:
    _edit_config(broken, **changes)
    with pytest.raises(ProbeError, match=message) as caught:
        Backbone(str(broken))
    assert caught.value.hint


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("config.json", b"{not json", "not valid JSON"),
        ("config.json", b'{"model_type": "bert", "model_type": "bert"}', "duplicate key"),
        ("config.json", b"[1, 2]", "not a JSON object"),
        ("tokenizer.json", b"{}", "cannot read tokenizer"),
        ("model.safetensors", b"\x00" * 16, "not a valid safetensors file"),
        ("model.safetensors", b"", "not a valid safetensors file"),
    ],
)
def test_malformed_files_are_clear_errors(broken: Path, name: str, content: bytes, message: str) -> None:
    (broken / name).write_bytes(content)
    with pytest.raises(ProbeError, match=message) as caught:
        Backbone(str(broken))
    assert caught.value.hint


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_files_are_clear_errors(broken: Path, missing: str) -> None:
    (broken / missing).unlink()
    with pytest.raises(ProbeError) as caught:
        Backbone(str(broken))
    assert caught.value.hint


def test_a_missing_tensor_is_named(broken: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(ProbeError, match=r"lack encoder\.layer\.1\.output\.dense\.weight"):
        Backbone(str(broken))


def test_sharded_weights_load_through_their_index(broken: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(broken / "model.safetensors"))
    names = sorted(tensors)
    first, second = names[: len(names) // 2], names[len(names) // 2 :]
    save_file({n: tensors[n] for n in first}, str(broken / "model-1.safetensors"))
    save_file({n: tensors[n] for n in second}, str(broken / "model-2.safetensors"))
    (broken / "model.safetensors").unlink()
    weight_map = {n: "model-1.safetensors" for n in first} | {n: "model-2.safetensors" for n in second}
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert [p.name for p in weight_files(broken)] == ["model-1.safetensors", "model-2.safetensors"]
    assert Backbone(str(broken)).num_layers == 2


def test_index_naming_a_file_outside_the_directory_is_refused(broken: Path) -> None:
    (broken / "model.safetensors").unlink()
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../evil.safetensors"}}))
    with pytest.raises(ProbeError, match="names shard"):
        Backbone(str(broken))


@pytest.mark.parametrize(
    ("spec", "message"),
    [("no/such/dir", "neither 'minilm' nor a directory"), ("", "neither 'minilm' nor a directory")],
)
def test_unknown_backbone_spec(spec: str, message: str) -> None:
    with pytest.raises(ProbeError, match=message):
        resolve_backbone(spec)


@pytest.mark.parametrize("max_length", [1, 100_000])
def test_max_length_outside_the_position_table(tiny: Path, max_length: int) -> None:
    with pytest.raises(ProbeError, match="max_length"):
        Backbone(str(tiny), max_length=max_length)


def test_bad_device_is_refused(tiny: Path) -> None:
    with pytest.raises(ProbeError, match="device 'tpu'"):
        Backbone(str(tiny), device="tpu")


def test_the_packaged_minilm_loads_offline_and_understands_text() -> None:
    """The one test on the real default backbone: its sentence embeddings put paraphrases together."""
    backbone = Backbone("minilm", max_length=128, device="cpu")
    assert (backbone.num_layers, backbone.hidden_size) == (6, 384)
    assert EncoderConfig.from_file(backbone.path / "config.json").vocab_size == 30522
    features = pooled(
        backbone, ["Send the invoice to the client.", "Email the bill to the customer.", "The cat sleeps."]
    )
    mean_last = torch.nn.functional.normalize(features[:, 6, 0], dim=-1)
    similar = float(mean_last[0] @ mean_last[1])
    unrelated = float(mean_last[0] @ mean_last[2])
    assert similar > unrelated + 0.3
