"""Multi-LoRA throughput: the same workload on the base model alone, then with every request
using one of N distinct adapters (all in one batch), through the offline engine; and the peer,
transformers + PEFT generating mixed-adapter batches (`adapter_names`, static batches of
--static-batch) on the first --peer-requests requests (it is slow; 0 skips it).

The adapters are written in PEFT's file format (adapter_config.json + adapter_model.safetensors,
random weights, bf16) for the model's shapes, so an 8B-shaped model needs no checkpoint.

  python bench/lora_throughput.py                                   # CPU: tiny llama, 8 adapters
  python bench/lora_throughput.py --shape llama3-8b --num-adapters 32 --rank 16 \\
      --num-requests 256 --input-len 128 --output-len 128          # CUDA
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from offline_throughput import (  # noqa: E402
    bench_llm,
    device_name,
    hf_model,
    print_report,
    shaped_model_dir,
    sync,
)

from llmserve.testing.random_adapters import write_adapter  # noqa: E402


def run(
    model: Path, args: argparse.Namespace, adapters: list[Path] | None, prompts: list[list[int]]
) -> tuple[float, int]:
    from runtime_service.engine.params import SamplingParams

    llm = bench_llm(
        model,
        args,
        enable_lora=adapters is not None,
        max_loras=max(1, len(adapters or [])),
        max_lora_rank=args.rank,
    )
    engine = llm.engine
    names = []
    for i, path in enumerate(adapters or []):
        engine.load_adapter(f"a{i}", path)
        names.append(f"a{i}")
    params = SamplingParams(
        temperature=0, max_tokens=args.output_len, ignore_eos=True, detokenize=False
    )

    def generate(batch: list[list[int]]) -> int:
        for j, prompt in enumerate(batch):
            engine.add_request(
                f"r{time.monotonic_ns()}-{j}",
                prompt,
                params,
                adapter=names[j % len(names)] if names else None,
            )
        tokens = 0
        while engine.has_unfinished_requests:
            tokens += sum(len(o.token_ids) for o in engine.step())
        return tokens

    generate(prompts[: max(4, len(names))])  # warm-up, every adapter into its slot
    sync(args.device)
    start = time.perf_counter()
    tokens = generate(prompts)
    sync(args.device)
    seconds = time.perf_counter() - start
    assert tokens == len(prompts) * args.output_len, tokens
    graphs = engine.runner.graphs
    if graphs is not None:
        print(
            f"[{'lora' if adapters else 'base'} engine] decode graphs: capture "
            f"{graphs.capture_seconds['decode']:.1f} s without LoRA, "
            f"{graphs.capture_seconds['decode+lora']:.1f} s with LoRA, "
            f"{graphs.memory_bytes / 2**20:.0f} MiB; replays {graphs.num_replays[False]} "
            f"without LoRA, {graphs.num_replays[True]} with LoRA",
            file=sys.stderr,
            flush=True,
        )
    return seconds, tokens


def run_peft(
    model: Path, args: argparse.Namespace, adapters: list[Path], prompts: list[list[int]]
) -> tuple[float, int]:
    """transformers + PEFT: all adapters loaded, each static batch mixing them per row."""
    from peft import PeftModel

    m = PeftModel.from_pretrained(hf_model(model, args, "sdpa"), adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], start=1):
        m.load_adapter(path, adapter_name=f"a{i}")
    m.eval()
    n = args.peer_output_len or args.output_len

    def generate(batch: list[list[int]], first: int, new_tokens: int) -> int:
        ids = torch.tensor(batch, device=args.device)
        names = [f"a{(first + j) % len(adapters)}" for j in range(len(batch))]
        out = m.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            adapter_names=names,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
        return (out.shape[1] - ids.shape[1]) * ids.shape[0]

    with torch.inference_mode():
        generate(prompts[:2], 0, 4)  # warm-up
        sync(args.device)
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(prompts), args.static_batch):
            tokens += generate(prompts[i : i + args.static_batch], i, n)
        sync(args.device)
    seconds = time.perf_counter() - start
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", help="random weights of this shape (see offline_throughput)")
    parser.add_argument("--num-adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--peer-requests", type=int, default=64, help="for PEFT; 0: skip it")
    parser.add_argument("--static-batch", type=int, default=64, help="PEFT's batch size")
    parser.add_argument(
        "--peer-output-len", type=int, default=0, help="PEFT's output tokens (0: --output-len)"
    )
    parser.add_argument("--report", type=Path, help="append the markdown table to this file")
    args = parser.parse_args()
    if args.shape:
        model = shaped_model_dir(args.shape)
    else:
        from llmserve.testing.tiny_models import tiny_model

        model = tiny_model("llama", REPO / ".cache" / "models")
    config = json.loads((model / "config.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="adapters-"))
    targets = args.targets.split(",")
    adapters = [
        write_adapter(tmp / f"a{i}", config, args.rank, targets, seed=i)
        for i in range(args.num_adapters)
    ]
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(
        100, config["vocab_size"] - 100, (args.num_requests, args.input_len), generator=g
    ).tolist()

    def note(what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    note("base model")
    base_s, tokens = run(model, args, None, prompts)
    gc.collect()  # the first engine's weights and KV cache go before the second's come
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    note(f"base: {tokens / base_s:,.0f} tok/s; {len(adapters)} adapters")
    lora_s, _ = run(model, args, adapters, prompts)
    note(f"adapters: {tokens / lora_s:,.0f} tok/s")
    peer = None
    if args.peer_requests:
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        note("transformers + PEFT")
        peer = run_peft(model, args, adapters, prompts[: args.peer_requests])
    lines = [
        f"Device: {device_name(args.device)}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}.",
        f"Workload: {args.num_requests} requests x {args.input_len} prompt tokens -> "
        f"{args.output_len} output tokens; {args.num_adapters} adapters of rank {args.rank} on "
        f"{', '.join(targets)}, request i using adapter i mod {args.num_adapters}.",
        "",
        "| run | output tokens | seconds | output tok/s |",
        "| --- | ---: | ---: | ---: |",
        f"| base model only | {tokens} | {base_s:.2f} | {tokens / base_s:,.0f} |",
        f"| {args.num_adapters} distinct adapters | {tokens} | {lora_s:.2f} | "
        f"{tokens / lora_s:,.0f} |",
    ]
    if peer is not None:
        peft_s, peft_tokens = peer
        lines.append(
            f"| transformers + PEFT, {args.num_adapters} adapters (first {args.peer_requests} "
            f"requests, {args.peer_output_len or args.output_len} output tokens each, static "
            f"batches of {args.static_batch}) | {peft_tokens} | {peft_s:.2f} | "
            f"{peft_tokens / peft_s:,.0f} |"
        )
    lines += ["", f"Multi-LoRA runs at {base_s / lora_s:.0%} of the base model's throughput."]
    print_report("\n".join(lines) + "\n", args.report)


if __name__ == "__main__":
    main()
