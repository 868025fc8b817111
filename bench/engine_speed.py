"""Engine speed: the workloads of the engine-speed targets, through the offline LLM API.

  python bench/engine_speed.py --shape llama3-8b                   # every row, bf16, CUDA
  python bench/engine_speed.py --shape llama3-8b --rows single,throughput --quantization fp8
  python bench/engine_speed.py --rows single,throughput --peers hf-static   # + transformers

Rows (forced output lengths, random prompt ids, prefix caching off):
  single      one request, 128 in -> 512 out: output tok/s
  throughput  1,024 requests, 128 in / 128 out: output tok/s
  long        64 requests, 2,048 in / 128 out: (in + out) tok/s
  mixed       512 requests, inputs 32-1,024, outputs 16-512 (seed 0): output tok/s
  sampler     one sampling call on 256 rows x vocab: greedy, top-p/top-k, penalties, seeds;
              each against a greedy decode step of 256 rows
Peers (same prompts, same process): hf-static (transformers generate, static batches; prompts
of several lengths left-padded, per-request output lengths batched longest first) and hf-cb
(generate_batch; rows with one output length), on the rows named by --peer-rows.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.offline_throughput import (  # noqa: E402
    Result,
    device_name,
    print_report,
    run_hf_cb,
    run_hf_static,
    shaped_model_dir,
)


def workloads(vocab: int) -> dict[str, tuple[list[list[int]], list[int]]]:
    """Row name -> (prompts, output lengths)."""
    g = torch.Generator().manual_seed(0)

    def prompts(n: int, length: int) -> list[list[int]]:
        return torch.randint(100, vocab - 100, (n, length), generator=g).tolist()

    rng = random.Random(0)
    mixed_in = [rng.randint(32, 1024) for _ in range(512)]
    mixed_out = [rng.randint(16, 512) for _ in range(512)]
    return {
        "single": (prompts(1, 128), [512]),
        "throughput": (prompts(1024, 128), [128] * 1024),
        "long": (prompts(64, 2048), [128] * 64),
        "mixed": ([prompts(1, n)[0] for n in mixed_in], mixed_out),
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_row(llm, prompts: list[list[int]], out_lens: list[int]) -> tuple[int, int, float]:
    from runtime_service.engine.params import SamplingParams

    params = [
        SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False)
        for n in out_lens
    ]
    sync()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    sync()
    seconds = time.perf_counter() - start
    out_tokens = sum(len(o.token_ids) for o in outputs)
    assert out_tokens == sum(out_lens), (out_tokens, sum(out_lens))
    return sum(len(p) for p in prompts), out_tokens, seconds


def time_call(fn, repeats: int = 10) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


SAMPLER_SETTINGS = {
    "greedy": dict(temperature=0),
    "top-p 0.9 + top-k 50": dict(temperature=0.8, top_p=0.9, top_k=50),
    "top-p 0.9": dict(temperature=0.8, top_p=0.9),
    "penalties (rep 1.1, presence 0.5, frequency 0.5)": dict(
        temperature=0, repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5
    ),
    "per-request seeds": dict(temperature=1.0, seed=7),
    "top-k 50": dict(temperature=0.8, top_k=50),
    "top-p 0.9 + per-request seeds": dict(temperature=0.8, top_p=0.9, seed=7),
    "top-p 0.5": dict(temperature=0.8, top_p=0.5),
}
# Settings also timed as whole decode steps (the engine with every request so set).
STEP_SETTINGS = ("top-p 0.9 + top-k 50", "top-p 0.9", "penalties", "per-request seeds", "top-k 50")


def sampler_rows(llm, vocab: int) -> list[str]:
    """Sampling 256 rows, each setting against a greedy decode step of 256 rows.

    `ms` is one sample() call, host work and device work in series (it ends in the copy of
    the tokens to the host), on logits already on the device: an upper bound on what the
    setting adds to a step, since the engine launches the sampler behind the forward (async
    scheduling). `over greedy` subtracts the greedy call, which the greedy step already
    holds. `decode step` is the engine's step with every request so set, against the greedy
    step measured the same way: the cost in place.
    """
    from runtime_service.engine.params import SamplingParams
    from runtime_service.engine.request import Request
    from runtime_service.engine.sampler import sample

    device = llm.engine.core.device
    runner = llm.engine.core.runner
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (128,), generator=g).tolist()
    outputs = torch.randint(0, vocab, (100,), generator=g).tolist()
    logits = torch.randn(256, vocab, device=device)
    step = decode_step_seconds(llm, vocab)
    lines = [
        f"Greedy decode step, 256 rows (graph replay + greedy sample): {step * 1e3:.2f} ms",
        "",
    ]
    lines += [
        "| sampling (256 rows) | ms | share of a greedy step | over greedy | decode step ms "
        "| step over greedy |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    greedy = 0.0
    for name, kw in SAMPLER_SETTINGS.items():
        reqs = []
        for i in range(256):
            p = SamplingParams(**{**kw, **({"seed": i} if "seed" in kw else {})})
            r = Request(f"s{i}", prompt, p, (), 4096)
            for t in outputs:
                r.append_output_token(t, None)
            reqs.append(r)
        seconds = time_call(lambda reqs=reqs: sample(logits, reqs, runner.penalties))
        greedy = seconds if name == "greedy" else greedy
        in_step = " | "
        if name.startswith(STEP_SETTINGS):
            with_setting = decode_step_seconds(llm, vocab, kw)
            in_step = f"{with_setting * 1e3:.2f} | {(with_setting - step) / step:+.1%}"
        lines.append(
            f"| {name} | {seconds * 1e3:.2f} | {seconds / step:.1%} | "
            f"{(seconds - greedy) / step:.1%} | {in_step} |"
        )
        print(lines[-1], flush=True)
    return lines


def profile_decode(llm, vocab: int, batch: int, context: int, prefill: bool = False) -> None:
    """Prints the kernels of 4 decode steps of `batch` requests at ~`context` tokens, or
    (prefill) of their first step: batch x context prompt tokens, at most
    max_num_batched_tokens of them."""
    from torch.profiler import ProfilerActivity, profile

    from runtime_service.engine.params import SamplingParams

    g = torch.Generator().manual_seed(3)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, detokenize=False)
    for i in range(batch):
        prompt = torch.randint(100, vocab - 100, (context,), generator=g).tolist()
        engine.add_request(f"prof{i}", prompt, params)
    steps = 1 if prefill else 4
    graphs = engine.runner.graphs
    for i in range(0 if prefill else 64):  # until a decode-only step (every prompt is in)
        decodes = graphs.replays["decode"] if graphs is not None else 0
        engine.step()
        if (graphs.replays["decode"] > decodes) if graphs is not None else i == 3:
            break
    sync()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        sync()
    what = (
        f"prefill of {batch} x {context} tokens, 1 step"
        if prefill
        else f"{batch} decodes at ~{context} tokens, 4 steps"
    )
    print(f"--- profile: {what} ({time.perf_counter() - start:.3f} s under the profiler)")
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60)
    )
    while engine.has_unfinished_requests:
        engine.step()


def decode_step_seconds(llm, vocab: int, settings: dict | None = None) -> float:
    """Mean seconds of one step of 256 running decodes (from a timed stretch of steps),
    greedy or with `settings` (SamplingParams fields; a seed becomes each request's index)."""
    from runtime_service.engine.params import SamplingParams

    g = torch.Generator().manual_seed(2)
    engine = llm.engine
    kw = dict(settings or dict(temperature=0))
    for i in range(256):
        if "seed" in kw:
            kw["seed"] = i
        params = SamplingParams(**kw, max_tokens=64, ignore_eos=True, detokenize=False)
        engine.add_request(
            f"d{i}", torch.randint(100, vocab - 100, (128,), generator=g).tolist(), params
        )
    for _ in range(8):  # prefill and settle into decode
        engine.step()
    sync()
    start = time.perf_counter()
    for _ in range(32):
        engine.step()
    sync()
    seconds = (time.perf_counter() - start) / 32
    while engine.has_unfinished_requests:
        engine.step()
    return seconds


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The settings of the engine the rows run on (row_engine)."""
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--quantization", default="none", help="none, fp8, int8 or int4 (random weights)"
    )
    parser.add_argument("--max-num-seqs", type=int, default=1024)
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--no-async-scheduling", action="store_true")


def row_engine(model: Path, args: argparse.Namespace):
    """The offline engine of the rows: random weights, prefix caching off, add_engine_args'
    settings."""
    from runtime_service.engine.llm import LLM

    return LLM(
        str(model),
        dtype=args.dtype,
        load_format="dummy",
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=4096,
        enable_prefix_caching=False,
        enable_cuda_graphs=not args.no_cuda_graphs,
        async_scheduling=False if args.no_async_scheduling else None,
        dummy_quantization=args.quantization,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_engine_args(parser)
    parser.add_argument("--rows", default="single,throughput,long,mixed,sampler")
    parser.add_argument("--peers", default="none", help="hf-static, hf-cb (comma-separated)")
    parser.add_argument("--peer-rows", default="throughput")
    parser.add_argument("--static-batch", type=int, default=256)
    parser.add_argument("--report", type=Path)
    parser.add_argument(
        "--profile", default="",
        help="batch:context pairs to profile, e.g. 1:512,256:192 (decode steps); "
        "p16:1024 profiles the prefill step of 16 x 1,024 prompt tokens",
    )  # fmt: skip
    args = parser.parse_args()

    model = shaped_model_dir(args.shape)
    from bench.offline_throughput import SHAPES

    vocab = SHAPES[args.shape]["vocab_size"]
    rows = [r for r in args.rows.split(",") if r]
    loads = workloads(vocab)
    sync()
    start = time.perf_counter()
    llm = row_engine(model, args)
    load_seconds = time.perf_counter() - start
    llm.generate([loads["single"][0][0]] * 4)  # warm-up
    lines = [
        f"### Engine speed: {args.shape} shape, random weights, {args.dtype}, "
        f"quantization {args.quantization}",
        "",
        f"Device: {device_name('cuda' if torch.cuda.is_available() else 'cpu')}; torch "
        f"{torch.__version__}; {time.strftime('%Y-%m-%d')}; max_num_seqs {args.max_num_seqs}, "
        f"max_num_batched_tokens {args.max_num_batched_tokens}, CUDA graphs "
        f"{'off' if args.no_cuda_graphs else 'on'}, async scheduling "
        f"{'off' if args.no_async_scheduling else 'on'}; engine ready in {load_seconds:.1f} s "
        f"({llm.engine.block_manager.num_blocks} KV blocks).",
        "",
        "| row | system | in tokens | out tokens | seconds | tok/s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    graphs = None
    ours = {}  # row -> llmserve's tok/s, for the ratios to the peers
    for row in rows:
        if row == "sampler":
            continue
        prompts, outs = loads[row]
        graphs = llm.engine.runner.graphs
        before = dict(graphs.replays) if graphs is not None else {}
        n_in, n_out, seconds = run_row(llm, prompts, outs)
        rate = (n_in + n_out if row == "long" else n_out) / seconds
        ours[row] = rate
        lines.append(f"| {row} | llmserve | {n_in} | {n_out} | {seconds:.2f} | {rate:,.0f} |")
        print(lines[-1], flush=True)
        if graphs is not None:  # how the row's steps ran (not part of the report)
            ran = {k: v - before.get(k, 0) for k, v in graphs.replays.items()}
            print(f"  {row}: graph replays {ran}", file=sys.stderr, flush=True)
    tail = ["", *sampler_rows(llm, vocab)] if "sampler" in rows else []
    for pair in [p for p in args.profile.split(",") if p]:
        batch, context = (int(x) for x in pair.lstrip("p").split(":"))
        profile_decode(llm, vocab, batch, context, prefill=pair.startswith("p"))
    del llm, graphs  # the graphs hold the KV cache: the peers need the memory
    gc.collect()
    torch.cuda.empty_cache()
    ratios = []
    for peer in [p for p in args.peers.split(",") if p and p != "none"]:
        for row in args.peer_rows.split(","):
            prompts, outs = loads[row]
            ns = argparse.Namespace(
                device="cuda",
                dtype=args.dtype,
                shape=args.shape,
                output_len=outs[0],
                static_batch=args.static_batch,
            )
            if peer == "hf-static":
                r: Result = run_hf_static(ns, model, prompts, outs)
            elif len(set(outs)) == 1:
                r = run_hf_cb(ns, model, prompts)
            else:  # generate_batch takes one output length for all
                print(f"  {row}: hf-cb skipped (per-request output lengths)", file=sys.stderr)
                continue
            n_in = sum(len(p) for p in prompts)
            rate = (n_in + r.tokens if row == "long" else r.tokens) / r.seconds
            lines.append(
                f"| {row} | {r.system} | {n_in} | {r.tokens} | {r.seconds:.2f} | {rate:,.0f} |"
            )
            print(lines[-1], flush=True)
            gc.collect()
            torch.cuda.empty_cache()
            if row in ours:
                ratios.append(f"- {row}: llmserve / {r.system} = {ours[row] / rate:.1f}x")
    lines += ["", *ratios] if ratios else []
    print_report("\n".join(lines + tail) + "\n", args.report)


if __name__ == "__main__":
    main()
