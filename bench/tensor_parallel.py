"""Tensor parallelism: single-stream decode of one model at TP=1 and TP=N, in the same run.

  python bench/tensor_parallel.py --shape llama3-8b --sizes 1,2            # 2 GPUs, bf16
  python bench/tensor_parallel.py --model DIR --sizes 1,2 --device cpu      # gloo, any model

One request of --input-len prompt tokens decodes --output-len tokens (greedy, forced length);
decode tok/s = (output_len - 1) / (its time - the time of the same request with one output
token), so the prefill is not counted. Each size runs in a fresh engine (TP=N on devices
0..N-1 of --device). NOTE: TP>1 runs its decode steps eagerly (the decode CUDA graphs do not
capture the workers' half of a step yet); --no-cuda-graphs makes TP=1 eager too, for a like-
for-like comparison of the split itself.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.offline_throughput import device_name, print_report, shaped_model_dir  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(llm, prompt: list[int], out_len: int, device: str) -> float:
    from runtime_service.engine.params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True, detokenize=False)
    sync(device)
    start = time.perf_counter()
    (out,) = llm.generate([prompt], params)
    sync(device)
    assert len(out.token_ids) == out_len
    return time.perf_counter() - start


def decode_rate(args: argparse.Namespace, model: Path, size: int, prompt: list[int]) -> dict:
    from runtime_service.engine.llm import LLM

    start = time.perf_counter()
    llm = LLM(
        str(model),
        dtype=args.dtype,
        device=args.device,
        load_format="dummy" if args.shape else "auto",
        max_model_len=args.input_len + args.output_len + 16,
        max_num_seqs=4,
        enable_prefix_caching=False,
        enable_cuda_graphs=not args.no_cuda_graphs,
        tensor_parallel_size=size,
        **({"num_kv_blocks": 64} if args.device == "cpu" else {}),
    )
    ready = time.perf_counter() - start
    try:
        timed(llm, prompt, 4, args.device)  # warm-up
        first = min(timed(llm, prompt, 1, args.device) for _ in range(args.repeats))
        whole = min(timed(llm, prompt, args.output_len, args.device) for _ in range(args.repeats))
        graphs = llm.engine.runner.graphs is not None
    finally:
        llm.engine.core.close()
        del llm
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    seconds = max(whole - first, 1e-9)
    return dict(
        size=size,
        ready=ready,
        ms_per_token=seconds / (args.output_len - 1) * 1e3,
        tok_s=(args.output_len - 1) / seconds,
        graphs=graphs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shape", help="random weights of this shape (bench/offline_throughput)")
    source.add_argument("--model", type=Path, help="a Hugging Face directory")
    parser.add_argument("--sizes", default="1,2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    if args.output_len < 2:
        parser.error("--output-len must be >= 2")
    model = shaped_model_dir(args.shape) if args.shape else args.model
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.device.startswith("cuda") and max(sizes) > torch.cuda.device_count():
        parser.error(f"--sizes {args.sizes} needs {max(sizes)} GPUs; {torch.cuda.device_count()}")
    prompt = torch.randint(100, 1000, (args.input_len,), generator=torch.Generator().manual_seed(0))
    rows = [decode_rate(args, model, size, prompt.tolist()) for size in sizes]
    base = rows[0]["tok_s"]
    lines = [
        f"### Tensor parallelism: single-stream decode, {args.shape or model.name}, {args.dtype}",
        "",
        f"Device: {device_name(args.device)} x {max(sizes)}; torch {torch.__version__};"
        f" {time.strftime('%Y-%m-%d')}; one request, {args.input_len} in -> {args.output_len}"
        " out (prefill time subtracted).",
        "",
        "| TP | CUDA graphs | ready (s) | ms / token | decode tok/s | vs first row |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {'on' if r['graphs'] else 'off'} | {r['ready']:.1f} |"
            f" {r['ms_per_token']:.2f} | {r['tok_s']:,.1f} | {r['tok_s'] / base:.2f}x |"
        )
    print_report("\n".join(lines) + "\n", args.report)


if __name__ == "__main__":
    main()
