"""Tiny random checkpoints of the Llama family, made locally (no network) for tests and benches.

Each is a complete Hugging Face directory: config.json, generation_config.json,
model.safetensors and a tokenizer (tokenizer.json trained here with the `tokenizers` library on
llmserve/data/calibration.txt, with a ChatML chat template). The four architectures cover what
the engine must get right:

- llama:   GQA 4:2, Llama-3.1 rope scaling, untied embeddings, sentencepiece-style tokenizer
           (Metaspace + byte fallback) that adds BOS
- mistral: MQA 4:1, sliding-window attention (window 48), untied, sentencepiece-style
- qwen2:   MHA 4:4, q/k/v biases, tied embeddings, byte-level BPE tokenizer without BOS
- qwen3:   GQA 4:2, q/k RMSNorm, head_dim 32 decoupled from hidden/heads, tied, byte-level BPE

Weights are drawn with a fixed seed and a wide init (std 0.1) so that logits have clear
winners and greedy decoding is not decided by rounding. Checkpoints are cached by name under a
folder the caller gives; `FIXTURE_VERSION` is part of the path, so a change here rebuilds them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

FIXTURE_VERSION = 2
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
CORPUS = Path(__file__).resolve().parent.parent / "data" / "calibration.txt"
VOCAB_SIZE = 1024
MAX_POSITIONS = 256

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_COMMON: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_POSITIONS,
    initializer_range=0.1,
    rms_norm_eps=1e-6,
)


def _corpus_lines() -> list[str]:
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def _sentencepiece_style_tokenizer() -> Any:
    """A Llama-2/Mistral-style tokenizer: Metaspace pieces, byte fallback, BOS added.

    The 256 byte tokens <0x00>..<0xFF> are ordinary vocabulary entries (not special tokens),
    as in Llama's tokenizer, so text outside the training corpus decodes through them.
    """
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - 256, special_tokens=specials)
    trained.train_from_iterator(_corpus_lines(), trainer)
    model = json.loads(trained.to_str())["model"]
    vocab: dict[str, int] = {}
    for token in [*specials, *(f"<0x{i:02X}>" for i in range(256))]:
        vocab[token] = len(vocab)
    for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _byte_level_tokenizer() -> Any:
    """A GPT-2/Qwen-style byte-level BPE tokenizer that adds no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus_lines(), trainer)
    return tok, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}


def _config(arch: str, vocab_size: int, token_ids: dict[str, int | None]) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    ids = dict(
        vocab_size=vocab_size,
        bos_token_id=token_ids.get("bos"),
        eos_token_id=token_ids["eos"],
        pad_token_id=token_ids.get("pad"),
    )
    if arch == "llama":
        return LlamaConfig(
            **_COMMON,
            **ids,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        )
    if arch == "mistral":
        return MistralConfig(
            **_COMMON,
            **ids,
            num_key_value_heads=1,
            tie_word_embeddings=False,
            sliding_window=48,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    if arch == "qwen2":
        return Qwen2Config(
            **_COMMON,
            **ids,
            num_key_value_heads=4,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    if arch == "qwen3":
        return Qwen3Config(
            **_COMMON,
            **ids,
            num_key_value_heads=2,
            head_dim=32,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {arch!r}")


def build_tiny_model(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Writes a tiny random checkpoint of `arch` to out_dir (which must not exist)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    if arch in ("llama", "mistral"):
        raw, special = _sentencepiece_style_tokenizer()
    else:
        raw, special = _byte_level_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=MAX_POSITIONS,
        **special,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    token_ids = {
        "bos": raw.token_to_id(special["bos_token"]) if "bos_token" in special else None,
        "eos": raw.token_to_id(special["eos_token"]),
        "pad": raw.token_to_id(special["pad_token"]) if "pad_token" in special else None,
    }
    config = _config(arch, raw.get_vocab_size(), token_ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids["bos"],
        eos_token_id=token_ids["eos"],
        pad_token_id=token_ids["pad"] if token_ids["pad"] is not None else token_ids["eos"],
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "llmserve_fixture.json").write_text(
            json.dumps({"arch": arch, "seed": seed, "version": FIXTURE_VERSION})
        )
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def tiny_model(arch: str, cache_dir: Path, seed: int = 0) -> Path:
    """The cached tiny checkpoint of `arch` under cache_dir, built on first use."""
    out = cache_dir / f"tiny-{arch}-v{FIXTURE_VERSION}-s{seed}"
    if not (out / "llmserve_fixture.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        try:
            build_tiny_model(arch, out, seed)
        except OSError:
            # Another process built it first (the rename lost the race): use theirs.
            if not (out / "llmserve_fixture.json").exists():
                raise
    return out
