"""Builds of the tiny Hugging Face checkpoints for cpu (and, cross-built, for sm_90).

Every number is checked against something the builder did not compute: transformers' loss,
logits and generate, hashlib, and the runtime's loader and scoring on the fetched engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from builder_service.build import Builder
from builder_service.calibration import calibration_text
from builder_service.spec import BuildSpec
from llmserve.errors import DataLoss, FailedPrecondition, InvalidArgument
from llmserve.store.engines import fetch_engine, list_engines
from llmserve.testing.references import engine_greedy, reference_perplexity, transformers_greedy
from runtime_service.models.loader import load_engine
from runtime_service.models.scoring import perplexity, sequence_logits

CPU = torch.device("cpu")
TinyDir = Callable[[str], Path]


def hf_model(path: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def calibration_ids(path: Path) -> list[int]:
    return AutoTokenizer.from_pretrained(path)(calibration_text(), verbose=False)["input_ids"]


@pytest.mark.parametrize("quantization", ["none", "int8", "int4"])
def test_tiny_llama_builds_for_cpu(
    quantization: str, builder: Builder, tiny_model_dir: TinyDir, tmp_path: Path
) -> None:
    source = tiny_model_dir("llama")
    final = builder.build(BuildSpec(source=str(source), quantization=quantization))
    engine = final.engine
    assert engine is not None and not final.cached
    assert (engine.target, engine.dtype, engine.quantization) == ("cpu", "float32", quantization)
    assert engine.architecture == "LlamaForCausalLM"
    assert engine.max_model_len == 256
    reference = hf_model(source)
    assert engine.num_parameters == sum(p.numel() for p in reference.parameters())

    path = fetch_engine(builder.store, engine.engine_id, tmp_path / "cache", device_target="cpu")
    for name, entry in engine.files.items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == entry.sha256
    assert {"config.json", "tokenizer.json", "weights-00001-of-00001.safetensors"} <= set(
        engine.files
    )
    assert json.loads((path / "manifest.json").read_text())["engine_id"] == engine.engine_id

    ids = calibration_ids(source)
    v = engine.validation
    assert v.num_tokens == len(ids)
    assert v.source_perplexity == pytest.approx(reference_perplexity(reference, ids, 256), 1e-4)
    model = load_engine(path, CPU)
    assert v.engine_perplexity == pytest.approx(perplexity(model, ids, 256), 1e-6)
    assert v.passed and not v.forced

    with safe_open(str(path / "weights-00001-of-00001.safetensors"), "pt") as f:
        names = set(f.keys())
        qkv = f.get_tensor("layers.0.qkv.weight")
        norm = f.get_tensor("layers.0.attn_norm.weight")
        embed = f.get_tensor("embed.weight")
        lm_head = f.get_tensor("lm_head.weight")
    source_norm = reference.model.layers[0].input_layernorm.weight
    expected_dtype = {"none": torch.float32, "int8": torch.int8, "int4": torch.uint8}
    assert qkv.dtype == expected_dtype[quantization]
    # Embeddings and the LM head stay unquantized.
    torch.testing.assert_close(embed, reference.model.embed_tokens.weight.detach())
    torch.testing.assert_close(lm_head, reference.lm_head.weight.detach())
    if quantization == "int4":
        assert qkv.shape == (64 + 32 + 32, 32)  # 64 input channels, two per byte
        assert "layers.0.o.act_scale" in names and "layers.0.down.act_scale" in names
        # qkv's activation scale is folded into the norm before it instead.
        assert "layers.0.qkv.act_scale" not in names
        assert not torch.allclose(norm, source_norm)
    else:
        assert not any(n.endswith("act_scale") for n in names)
        torch.testing.assert_close(norm, source_norm.detach())


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_unquantized_engine_equals_the_source_model(
    arch: str, builder: Builder, tiny_model_dir: TinyDir, tmp_path: Path
) -> None:
    source = tiny_model_dir(arch)
    engine = builder.build(BuildSpec(source=str(source))).engine
    assert engine is not None
    model = load_engine(fetch_engine(builder.store, engine.engine_id, tmp_path / "c"), CPU)
    reference = hf_model(source)
    prompt = calibration_ids(source)[:80]  # longer than mistral's sliding window of 48
    with torch.inference_mode():
        expected = reference(input_ids=torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(sequence_logits(model, prompt), expected, rtol=1e-4, atol=1e-4)
    assert engine_greedy(model, prompt[:20], 12) == transformers_greedy(reference, prompt[:20], 12)


def test_quantization_the_target_cannot_run_is_refused_before_any_work(builder: Builder) -> None:
    # The source does not even exist: the refusal comes before anything looks at it.
    spec = BuildSpec(source="/nonexistent/model", quantization="fp8", target="cpu")
    with pytest.raises(FailedPrecondition, match=r"fp8 needs compute capability >= 8\.9"):
        builder.build(spec)
    with pytest.raises(FailedPrecondition, match="target sm_80 cannot run it"):
        builder.build(BuildSpec(source="/nonexistent/model", quantization="fp8", target="sm_80"))
    assert list_engines(builder.store) == []
    assert not (builder.work_dir / "downloads").exists()


def test_fp8_cross_build_for_sm90_is_refused_by_a_cpu_runtime(
    builder: Builder, tiny_model_dir: TinyDir, tmp_path: Path
) -> None:
    source = tiny_model_dir("qwen3")
    engine = builder.build(BuildSpec(source=str(source), quantization="fp8", target="sm_90")).engine
    assert engine is not None
    assert (engine.target, engine.dtype, engine.quantization) == ("sm_90", "bfloat16", "fp8")
    assert engine.validation.passed, engine.validation
    with pytest.raises(FailedPrecondition, match="built for target sm_90, but this device is cpu"):
        fetch_engine(builder.store, engine.engine_id, tmp_path / "c", device_target="cpu")
    path = builder.store.fetch("engines", engine.engine_id, tmp_path / "c")
    with pytest.raises(FailedPrecondition, match=r"sm_90.*cpu"):
        load_engine(path, CPU)
    model = load_engine(path, CPU, check_target=False)
    assert model.layers[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert model.embed.dtype == torch.bfloat16


def test_max_model_len(builder: Builder, tiny_model_dir: TinyDir) -> None:
    source = str(tiny_model_dir("qwen2"))
    with pytest.raises(InvalidArgument, match=r"max_model_len must be at most .* 256, got 300"):
        builder.build(BuildSpec(source=source, max_model_len=300))
    with pytest.raises(InvalidArgument, match="max_model_len must be >= 1, got 0"):
        builder.build(BuildSpec(source=source, max_model_len=0))
    short = builder.build(BuildSpec(source=source, max_model_len=64)).engine
    full = builder.build(BuildSpec(source=source)).engine
    assert short is not None and full is not None
    assert (short.max_model_len, full.max_model_len) == (64, 256)
    assert short.engine_id != full.engine_id
    assert short.model_digest == full.model_digest
    # The perplexity windows follow the limit: shorter windows, less context, higher perplexity.
    assert short.validation.source_perplexity != full.validation.source_perplexity


def test_validation_bound_fails_the_build_unless_forced(
    builder: Builder, tiny_model_dir: TinyDir
) -> None:
    # int4 raises the tiny mistral's perplexity a little (+0.13%): a zero bound refuses it.
    spec = BuildSpec(
        source=str(tiny_model_dir("mistral")), quantization="int4", max_perplexity_increase=0.0
    )
    with pytest.raises(FailedPrecondition, match=r"validation failed: int4 raised perplexity"):
        builder.build(spec)
    assert list_engines(builder.store) == []
    engine = builder.build(dataclasses.replace(spec, force=True)).engine
    assert engine is not None
    v = engine.validation
    assert v.relative_increase > 0 and not v.passed and v.forced
    assert [e.engine_id for e in list_engines(builder.store)] == [engine.engine_id]


def test_second_build_is_cached(builder: Builder, tiny_model_dir: TinyDir) -> None:
    spec = BuildSpec(source=str(tiny_model_dir("llama")), quantization="int8")
    first = builder.build(spec)
    events = []
    second = builder.build(spec, events.append)
    assert not first.cached and second.cached
    assert first.engine is not None and second.engine is not None
    assert second.engine.engine_id == first.engine.engine_id
    assert second.engine.create_time == first.engine.create_time
    assert "converting" not in {e.phase for e in events}


def test_corrupted_engine_file_is_named_at_load(
    builder: Builder, tiny_model_dir: TinyDir, tmp_path: Path
) -> None:
    engine = builder.build(BuildSpec(source=str(tiny_model_dir("llama")))).engine
    assert engine is not None
    path = fetch_engine(builder.store, engine.engine_id, tmp_path / "cache")
    weights = path / "weights-00001-of-00001.safetensors"
    good = weights.read_bytes()
    want = hashlib.sha256(good).hexdigest()
    # A flipped byte in a tensor, then in the header: the loader hashes the file in the read
    # that loads it and names it with both digests (a broken header stops the read early).
    for offset in (len(good) // 2, 20):
        data = bytearray(good)
        data[offset] ^= 0x01
        weights.write_bytes(bytes(data))
        got = hashlib.sha256(bytes(data)).hexdigest()
        with pytest.raises(
            DataLoss,
            match=rf"file weights-00001-of-00001\.safetensors is corrupt: sha256 {got}, "
            rf"the manifest says {want}",
        ):
            load_engine(path, CPU)
    weights.write_bytes(good[:-1])
    with pytest.raises(DataLoss, match=r"safetensors is corrupt: \d+ bytes, the manifest says"):
        load_engine(path, CPU)
    weights.write_bytes(good)
    (path / "weights-00002-of-00002.safetensors").write_bytes(good)  # unlisted: refused
    with pytest.raises(DataLoss, match=r"weights-00002-of-00002\.safetensors is not in the man"):
        load_engine(path, CPU)
    weights.rename(path / "weights-00001-of-00002.safetensors")
    with pytest.raises(DataLoss, match=r"weights-00001-of-00001\.safetensors is missing"):
        load_engine(path, CPU)
