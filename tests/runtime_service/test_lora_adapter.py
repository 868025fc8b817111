"""Reading PEFT adapters: what is accepted, and bad adapters refused with the right error."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmserve.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime_service.engine.lora.adapter import read_adapter
from runtime_service.models.loader import read_hf_config
from tests.runtime_service.lora_reference import ALL_MODULES, lora_engine, make_adapter


def read(path: Path, base: Path, max_rank: int = 64):
    return read_adapter("x", path, read_hf_config(base), max_rank, torch.float32)


def test_reads_a_peft_adapter_into_fused_layers(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_model_dir("qwen3")  # q is 128 wide, k/v 64: parts of unequal size
    path = make_adapter(base, tmp_path / "a", rank=4, alpha=32, targets=("k_proj", "up_proj"))
    adapter = read(path, base)
    assert adapter.rank == 4 and adapter.spec.scaling == 8.0
    assert adapter.target_modules == ("k_proj", "up_proj")
    assert adapter.parts == {"qkv": (1,), "gate_up": (1,)}
    assert adapter.digest.startswith("sha256:") and len(adapter.digest) == 71
    qkv = adapter.layers[0, "qkv"]
    assert qkv.a.shape == (3, 4, 64) and qkv.b.shape == (128 + 64 + 64, 4)
    assert qkv.a[0].abs().sum() == 0 and qkv.a[1].abs().sum() > 0  # only k's part is set
    assert qkv.b[:128].abs().sum() == 0 and qkv.b[128:192].abs().sum() > 0
    # rsLoRA scales by alpha / sqrt(r).
    rs = make_adapter(base, tmp_path / "rs", rank=4, alpha=8, use_rslora=True)
    assert read(rs, base).spec.scaling == 4.0
    # Same files, same digest; other weights, another digest.
    assert read(path, base).digest == adapter.digest
    other = make_adapter(base, tmp_path / "b", rank=4, alpha=32, targets=("k_proj", "up_proj"),
                         seed=1)  # fmt: skip
    assert read(other, base).digest != adapter.digest


def test_rank_above_the_limit_is_invalid_argument(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_model_dir("llama")
    path = make_adapter(base, tmp_path / "a", rank=32)
    with pytest.raises(InvalidArgument, match=r"r = 32 is above this engine's max_lora_rank \(16"):
        read(path, base, max_rank=16)
    engine = lora_engine(base, max_lora_rank=16)
    with pytest.raises(InvalidArgument, match="max_lora_rank"):
        engine.load_adapter("big", path)
    assert engine.list_adapters() == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(use_dora=True), "use_dora = true is a PEFT feature this engine does not support"),
        (dict(bias="lora_only"), "bias = 'lora_only' is not supported"),
        (dict(rank_pattern={"q_proj": 2}), "rank_pattern"),
        (dict(alpha_pattern={"q_proj": 2}), "alpha_pattern"),
        (dict(targets=("q_proj", "lm_head")), "target module 'lm_head' is not supported"),
        (dict(targets=("embed_tokens",)), "target module 'embed_tokens' is not supported"),
    ],
)
def test_unsupported_peft_features_are_refused(
    options: dict, message: str, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_model_dir("llama")
    path = make_adapter(base, tmp_path / "a", rank=4, **options)
    with pytest.raises(InvalidArgument, match=message):
        read(path, base)


def test_adapter_for_another_base_model_is_failed_precondition(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    # The tiny llama has 2 KV heads of 16 (k_proj: 32 outputs), mistral one (16).
    path = make_adapter(tiny_model_dir("llama"), tmp_path / "a", rank=4, targets=ALL_MODULES)
    with pytest.raises(FailedPrecondition, match=r"k_proj has 16 output features, the adapter 32"):
        read(path, tiny_model_dir("mistral"))
    # qwen3's q_proj is 128 wide.
    with pytest.raises(FailedPrecondition, match=r"made for another base model"):
        read(path, tiny_model_dir("qwen3"))


def write_adapter(path: Path, tensors: dict[str, torch.Tensor], **config: object) -> Path:
    path.mkdir(parents=True)
    raw = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **config}
    (path / "adapter_config.json").write_text(json.dumps(raw))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def lora_pair(module: str, layer: int = 0, rank: int = 4, shape=(64, 64)) -> dict:
    prefix = f"base_model.model.model.layers.{layer}.{module}"
    return {
        f"{prefix}.lora_A.weight": torch.randn(rank, shape[1]),
        f"{prefix}.lora_B.weight": torch.randn(shape[0], rank),
    }


def test_malformed_and_foreign_tensors(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_model_dir("qwen2")  # 2 layers, hidden 64
    gpt2 = {"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": torch.randn(4, 64)}
    with pytest.raises(FailedPrecondition, match="another architecture"):
        read(write_adapter(tmp_path / "gpt2", gpt2), base)
    with pytest.raises(FailedPrecondition, match=r"no module self_attn\.qkv_proj"):
        read(write_adapter(tmp_path / "fused", lora_pair("self_attn.qkv_proj")), base)
    with pytest.raises(FailedPrecondition, match="layer 5, but the model has 2 layers"):
        read(write_adapter(tmp_path / "deep", lora_pair("self_attn.q_proj", layer=5)), base)
    only_a = dict(list(lora_pair("self_attn.q_proj").items())[:1])
    with pytest.raises(InvalidArgument, match="has lora_A but no lora_B"):
        read(write_adapter(tmp_path / "half", only_a), base)
    with pytest.raises(InvalidArgument, match=r"rank 8, but adapter_config\.json says r = 4"):
        read(write_adapter(tmp_path / "r8", lora_pair("self_attn.q_proj", rank=8)), base)
    with pytest.raises(InvalidArgument, match="holds no tensors"):
        read(write_adapter(tmp_path / "empty", {}), base)
    with pytest.raises(InvalidArgument, match="peft_type 'IA3' is not LORA"):
        read(write_adapter(tmp_path / "ia3", lora_pair("self_attn.q_proj"), peft_type="IA3"), base)
    bad_json = write_adapter(tmp_path / "json", lora_pair("self_attn.q_proj"))
    (bad_json / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="cannot be read"):
        read(bad_json, base)
    with pytest.raises(NotFound, match=r"adapter_config\.json does not exist"):
        read(tmp_path / "nowhere", base)
    good = write_adapter(tmp_path / "good", lora_pair("self_attn.q_proj", layer=1))
    assert read(good, base).layers.keys() == {(1, "qkv")}


def test_requests_naming_unknown_adapters(tiny_model_dir: Callable[[str], Path]) -> None:
    base = tiny_model_dir("qwen2")
    engine = lora_engine(base)
    with pytest.raises(NotFound, match="adapter 'nope' is not loaded"):
        engine.add_request("r", [1, 2, 3], adapter="nope")
    with pytest.raises(InvalidArgument, match="adapter name"):
        engine.load_adapter("../up", base)
    with pytest.raises(NotFound, match="'nope' is not loaded"):
        engine.unload_adapter("nope")
    off = lora_engine(base, enable_lora=False)
    with pytest.raises(NotFound, match="adapter 'nope': this engine serves no adapters"):
        off.add_request("r", [1, 2, 3], adapter="nope")
    with pytest.raises(FailedPrecondition, match="enable_lora is off"):
        off.load_adapter("a", base)
    assert not engine.requests and not off.requests


def test_int4_engine_with_folded_scales_refuses_lora_on_qkv_and_gate_up(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """The builder folds int4 AWQ scales into the norms before qkv and gate_up (they have no
    act_scale): their inputs arrive pre-divided, so an A there would be wrong. Refused;
    o and down (act_scale kept, applied inside the layer) are fine."""
    from builder_service.quantize import int4_group_size, quantize_int4
    from runtime_service.engine.lora import LoRAManager
    from runtime_service.models.llama import LlamaModel
    from runtime_service.models.weights import SafetensorsCheckpoint, fuse_hf_weights, linear_names

    base = tiny_model_dir("llama")
    config = read_hf_config(base)
    weights = dict(fuse_hf_weights(config, SafetensorsCheckpoint(base).get))
    for name in linear_names(config):
        w = weights.pop(name + ".weight").float()
        for key, t in quantize_int4(w, int4_group_size(w.shape[1])).items():
            weights[f"{name}.{key}"] = t
        if name.endswith((".o", ".down")):
            weights[name + ".act_scale"] = torch.ones(w.shape[1])
    model = LlamaModel(config, weights, "int4")
    manager = LoRAManager(model, max_loras=2, max_lora_rank=16)
    assert manager.reader.prescaled == ("qkv", "gate_up")
    attention = make_adapter(base, tmp_path / "qv", rank=4, targets=("q_proj", "v_proj"))
    with pytest.raises(FailedPrecondition, match="int4 qkv layers take inputs divided by"):
        manager.read("qv", attention)
    ok = make_adapter(base, tmp_path / "od", rank=4, targets=("o_proj", "down_proj"))
    assert manager.read("od", ok).target_modules == ("o_proj", "down_proj")
