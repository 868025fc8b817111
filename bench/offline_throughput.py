"""Offline throughput: N requests of fixed input/output length, output tokens per second.

The engine runs every request to exactly --output-len tokens (ignore_eos). The same prompts go
through Hugging Face transformers in the same run, as peers:
  hf-cb      generate_batch (continuous batching; paged attention where transformers has it)
  hf-static  generate in static batches of --static-batch

  python bench/offline_throughput.py                          # CPU: SmolLM2, 32 x 64 in/32 out
  python bench/offline_throughput.py --shape llama3-8b \\
      --num-requests 256 --input-len 128 --output-len 128    # CUDA: Llama-3-8B shape, random bf16

--shape builds the model's config with random weights in place (no checkpoint needed).
--dtypes: the engine and every peer run once in each (default: bfloat16 on CUDA; float32 on a
CPU, and bfloat16 too where the CPU multiplies bf16 in hardware, AMX or AVX512-BF16); the report
gives each engine row's ratio to each peer row.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPES = {
    "llama3-8b": dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
        hidden_act="silu",
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
}


@dataclass
class Result:
    system: str
    tokens: int
    seconds: float
    note: str = ""
    dtype: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def shaped_model_dir(shape: str, out: Path | None = None, config: dict | None = None) -> Path:
    """A directory (`out`, default a new temporary one) with the shape's config.json (or
    `config`) and a (tiny) tokenizer; weights are dummy."""
    from llmserve.testing.tiny_models import tiny_model

    out = out or Path(tempfile.mkdtemp(prefix=f"{shape}-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config or SHAPES[shape]))
    tok_src = tiny_model("llama", REPO / ".cache" / "models")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((tok_src / name).read_bytes())
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_llm(model: Path, args: argparse.Namespace, **settings: object):
    """The engine as every throughput bench runs it: the workload's lengths, no prefix
    caching, dummy weights for a --shape."""
    from runtime_service.engine.llm import LLM

    return LLM(
        str(model),
        cpu_threads=torch.get_num_threads() if args.device == "cpu" else 0,
        dtype=args.dtype,
        device=args.device,
        load_format="dummy" if args.shape else "auto",
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.input_len + args.output_len + 16,
        enable_prefix_caching=False,
        **settings,
    )


def print_report(text: str, report: Path | None) -> None:
    """Prints a bench's markdown and appends it to --report."""
    print(text)
    if report:
        with report.open("a") as f:
            f.write(text + "\n")


def run_engine(args: argparse.Namespace, model: Path, prompts: list[list[int]]) -> Result:
    from runtime_service.engine.params import SamplingParams

    llm = bench_llm(model, args)
    params = SamplingParams(
        temperature=0, max_tokens=args.output_len, ignore_eos=True, detokenize=False
    )
    llm.generate(
        prompts[:4], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, detokenize=False)
    )  # warm-up
    sync(args.device)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    sync(args.device)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for o in outputs)
    assert tokens == len(prompts) * args.output_len, tokens
    blocks = llm.engine.block_manager.num_blocks
    del llm
    return Result("llmserve", tokens, seconds, f"{blocks} KV blocks")


def hf_model(model: Path, args: argparse.Namespace, attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = {
        "auto": torch.bfloat16 if args.device.startswith("cuda") else torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
    }[args.dtype]
    if args.shape:
        config = AutoConfig.from_pretrained(model)
        with torch.device(args.device):
            m = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    else:
        m = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation=attn)
        m.to(args.device)
    m.eval()
    m.generation_config.eos_token_id = None  # forced output length, like ignore_eos
    m.generation_config.pad_token_id = 0
    return m


def run_hf_cb(args: argparse.Namespace, model: Path, prompts: list[list[int]]) -> Result:
    from transformers import GenerationConfig

    attn = "paged|sdpa" if args.device.startswith("cuda") else "sdpa"
    try:
        m = hf_model(model, args, attn)
    except (ValueError, KeyError):
        attn = "sdpa"
        m = hf_model(model, args, attn)
    config = GenerationConfig(
        max_new_tokens=args.output_len, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    m.generate_batch(inputs=prompts[:4], generation_config=config)  # warm-up
    sync(args.device)
    start = time.perf_counter()
    outputs = m.generate_batch(inputs=prompts, generation_config=config)
    sync(args.device)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    del m
    return Result("transformers generate_batch", tokens, seconds, f"attn={attn}")


def left_padded(prompts: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of any lengths as one batch, padded on the left (id 0), with its attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def run_hf_static(
    args: argparse.Namespace,
    model: Path,
    prompts: list[list[int]],
    outs: list[int] | None = None,
) -> Result:
    """transformers generate in static batches of --static-batch requests, each forced to
    --output-len tokens, or to its own length in `outs`: then requests are batched longest
    output first (what a static batcher that knows the lengths would do), a batch generates
    its longest output, and only each request's own tokens count."""
    m = hf_model(model, args, "sdpa")
    outs = outs or [args.output_len] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -outs[i])
    with torch.inference_mode():
        ids, mask = left_padded(prompts[:2], args.device)
        m.generate(ids, attention_mask=mask, max_new_tokens=4)  # warm-up
        sync(args.device)
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(order), args.static_batch):
            batch = order[i : i + args.static_batch]
            ids, mask = left_padded([prompts[j] for j in batch], args.device)
            n = max(outs[j] for j in batch)
            out = m.generate(
                ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
            assert out.shape[1] - ids.shape[1] == n, (out.shape, ids.shape, n)
            tokens += sum(outs[j] for j in batch)
        sync(args.device)
    seconds = time.perf_counter() - start
    del m
    return Result(
        f"transformers generate (static, batch {args.static_batch})", tokens, seconds, "attn=sdpa"
    )


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def dtype_name(args: argparse.Namespace) -> str:
    if args.dtype != "auto":
        return args.dtype
    return "bfloat16" if args.device.startswith("cuda") else "float32"


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def run_dtypes(args: argparse.Namespace) -> list[str]:
    """The dtypes the engine and its peers each run in (see --dtypes)."""
    if args.dtypes != "auto":
        return [d for d in args.dtypes.split(",") if d]
    if args.dtype != "auto" or args.device.startswith("cuda"):
        return [dtype_name(args)]
    return ["float32", "bfloat16"] if cpu_has_bf16() else ["float32"]


def ratios(results: list[Result]) -> list[str]:
    """Each engine row's throughput over each peer row's, measured in the same run."""
    ours = [r for r in results if r.system == "llmserve"]
    peers = [r for r in results if r.system != "llmserve" and r.tokens]
    return [
        f"- llmserve {a.dtype} / {b.system} {b.dtype}: "
        f"{a.tokens_per_second / b.tokens_per_second:.2f}x"
        for a in ours
        for b in peers
    ]


def report(args: argparse.Namespace, model_desc: str, results: list[Result]) -> str:
    import transformers

    lines = [
        f"### Offline throughput: {model_desc}",
        "",
        f"Device: {device_name(args.device)}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; {time.strftime('%Y-%m-%d')}.",
        f"Workload: {args.num_requests} requests x {args.input_len} prompt tokens (random ids) "
        f"-> {args.output_len} output tokens each (forced length); the fastest of "
        f"{args.rounds} interleaved round(s).",
        "",
        "| system | dtype | output tokens | seconds | output tok/s | notes |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        note = r.note.replace("|", "\\|")  # a literal | would split the table cell
        lines.append(
            f"| {r.system} | {r.dtype} | {r.tokens} | {r.seconds:.2f} "
            f"| {r.tokens_per_second:,.0f} | {note} |"
        )
    lines += ["", "Ratios (same run):", *ratios(results)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="Hugging Face directory (default: SmolLM2)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random weights of this shape")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", help="one dtype (see --dtypes)")
    parser.add_argument(
        "--dtypes", default="auto", help="comma-separated dtypes, each run by all (see above)"
    )
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument(
        "--peers", default="hf-cb,hf-static", help="comma-separated: hf-cb, hf-static, or none"
    )
    parser.add_argument("--static-batch", type=int, default=64)
    parser.add_argument("--report", type=Path, help="append the markdown table to this file")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every system this many times, interleaved, and keep each one's fastest "
        "(a shared machine's load then weighs on all alike)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.shape:
        model, desc = shaped_model_dir(args.shape), f"{args.shape} shape, random weights"
    else:
        from llmserve.testing.smollm2 import hf_dir

        model = args.model or hf_dir(REPO / ".cache" / "models")
        desc = model.name
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(
        100, vocab - 100, (args.num_requests, args.input_len), generator=g
    ).tolist()

    runners = {"llmserve": run_engine, "hf-cb": run_hf_cb, "hf-static": run_hf_static}
    systems = ["llmserve", *[p for p in args.peers.split(",") if p and p != "none"]]
    runs = [(system, dtype) for system in systems for dtype in run_dtypes(args)]
    best: dict[tuple[str, str], Result] = {}
    for _ in range(args.rounds):  # every system once per round; each keeps its fastest
        for system, dtype in runs:
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            run_args = argparse.Namespace(**{**vars(args), "dtype": dtype})
            try:
                result = runners[system](run_args, model, prompts)
            except Exception as e:
                if system == "llmserve":
                    raise
                result = Result(f"{system} (failed)", 0, float("nan"), repr(e)[:120])
            result.dtype = dtype
            print(result, flush=True)
            kept = best.get((system, dtype))
            if kept is None or result.seconds < kept.seconds:
                best[(system, dtype)] = result
    print_report(report(args, desc, list(best.values())), args.report)


if __name__ == "__main__":
    main()
