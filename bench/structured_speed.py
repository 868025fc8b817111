"""Structured output speed: N requests each under a JSON Schema against the same N requests
unconstrained, on one engine in one run (the structured-output target: >= 90% of the
unconstrained throughput).

  python bench/structured_speed.py --shape llama3-8b                     # CUDA, random weights
  python bench/structured_speed.py --model tiny --device cpu -n 16 --input-len 32 --output-len 16

Both rows use the same random prompt ids and force every request to its full output length:
unconstrained with ignore_eos; constrained with a schema whose shortest answer is longer than
the output length (an array of at least 32 objects with an integer in bounds, an enum and a
string), so the mask never lets a request stop early. The schema is compiled once before the
timed run (its compile time is reported on its own). Prefix caching is off.

The shaped model's tokenizer is the tiny test one (1,024 tokens, padded to the shape's
vocabulary): its masks are cheap to fill. `--tokenizer DIR` puts a real one in its place
(e.g. SmolLM2's 49,152 tokens), as a real deployment's grammar sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.offline_throughput import SHAPES, device_name, print_report, shaped_model_dir  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0, "maximum": 100000},
                    "kind": {"enum": ["alpha", "beta", "gamma"]},
                    "name": {"type": "string", "maxLength": 12},
                },
                "required": ["id", "kind", "name"],
            },
            "minItems": 32,
        }
    },
    "required": ["items"],
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(llm, prompts: list[list[int]], output_len: int, constraint) -> tuple[int, float, list]:
    from runtime_service.engine.params import SamplingParams

    params = SamplingParams(
        temperature=0,
        max_tokens=output_len,
        ignore_eos=constraint is None,
        detokenize=False,
        constraint=constraint,
    )
    sync()
    start = time.perf_counter()
    outputs = llm.generate(prompts, [params] * len(prompts))
    sync()
    seconds = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for o in outputs)
    short = [o for o in outputs if len(o.token_ids) != output_len]
    if short:  # reported, not hidden: the row's tok/s counts the tokens actually made
        o = short[0]
        print(
            f"{len(short)} of {len(outputs)} requests ended early ({o.finish_reason} after "
            f"{len(o.token_ids)} tokens; stop reason {o.stop_reason}; last ids "
            f"{o.token_ids[-5:]})"
        )
    return tokens, seconds, outputs


def count_valid(llm, constraint, outputs: list, output_len: int) -> int:
    """Outputs xgrammar's own matcher accepts token by token (a fresh matcher with the
    engine's stop tokens), each either complete or cut off at output_len."""
    import xgrammar as xgr

    compiled = llm.engine.core.structured.cache.submit(constraint).result()
    stops = sorted(set(llm.engine.processor.eos_token_ids))
    valid = 0
    for o in outputs:
        matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=stops)
        fits = all(matcher.accept_token(t) for t in o.token_ids)
        valid += fits and (matcher.is_terminated() or len(o.token_ids) == output_len)
    return valid


def model_dir(args: argparse.Namespace) -> Path:
    if args.model == "tiny":
        from llmserve.testing.tiny_models import tiny_model

        return tiny_model("llama", REPO / ".cache" / "models")
    if args.model:
        return Path(args.model)
    out = shaped_model_dir(args.shape)
    if args.tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (out / name).write_bytes((args.tokenizer / name).read_bytes())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    parser.add_argument("--model", default="", help="a model directory, or 'tiny' (CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("-n", "--num-requests", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument(
        "--async-scheduling", choices=("auto", "on", "off"), default="auto",
        help="auto: on with CUDA, off on the CPU (the engine's default)",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer", type=Path, help="a directory with tokenizer.json (for a --shape)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()

    from runtime_service.engine.llm import LLM
    from runtime_service.engine.structured import Constraint

    model = model_dir(args)
    llm = LLM(
        str(model),
        device=args.device,
        dtype=args.dtype,
        load_format="auto" if args.model else "dummy",
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=max(8192, args.input_len * 8),
        max_model_len=args.input_len + args.output_len + 16,
        enable_prefix_caching=False,
        async_scheduling={"auto": None, "on": True, "off": False}[args.async_scheduling],
    )
    vocab = llm.engine.core.info.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(
        100, vocab - 100, (args.num_requests, args.input_len), generator=g
    ).tolist()
    constraint = Constraint("json_schema", json.dumps(SCHEMA))
    start = time.perf_counter()
    llm.engine.core.structured.cache.submit(constraint).result()
    compile_s = time.perf_counter() - start
    run(llm, prompts[:4], 8, None)  # warm-up of both paths
    run(llm, prompts[:4], 8, constraint)
    rows = []
    host = llm.engine.core.structured.host_seconds
    fill = accept = 0.0
    for r in range(1, args.rounds + 1):  # interleaved: one-time costs hit the first round
        for name, c in (("unconstrained", None), ("json_schema", constraint)):
            before = dict(host)
            tokens, seconds, outputs = run(llm, prompts, args.output_len, c)
            rows.append((r, name, tokens, seconds, tokens / seconds))
            print(rows[-1], flush=True)
        # Per decode step of the constrained run (output_len steps, each with every row).
        fill += (host["fill"] - before["fill"]) / args.output_len / args.rounds * 1e3
        accept += (host["accept"] - before["accept"]) / args.output_len / args.rounds * 1e3
    valid = count_valid(llm, constraint, outputs, args.output_len)
    best = {
        name: max(rate for _, row_name, _, _, rate in rows if row_name == name)
        for name in ("unconstrained", "json_schema")
    }
    ratio = best["json_schema"] / best["unconstrained"]
    device = str(llm.engine.core.info.device)
    lines = [
        f"### Structured output: {args.model or args.shape}, {args.num_requests} requests, "
        f"{args.input_len} in / {args.output_len} out",
        "",
        f"Device: {device_name(device)}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}; dtype {llm.engine.core.info.dtype}; async scheduling "
        f"{'on' if llm.engine.core.async_scheduling else 'off'}; schema compiled in "
        f"{compile_s:.2f} s (before the timed runs); tokenizer "
        f"{llm.engine.tokenizer.__class__.__name__} of {len(llm.engine.tokenizer)} tokens.",
        "",
        "| round | row | out tokens | seconds | tok/s | vs unconstrained, same round |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {r} | {name} | {tokens} | {seconds:.2f} | {rate:,.0f} | "
            f"{rate / rows[2 * (r - 1)][4]:.1%} |"
            for r, name, tokens, seconds, rate in rows
        ),
        "",
        f"JSON Schema throughput (best round of each): {ratio:.1%} of unconstrained "
        f"(target >= 90%); "
        f"{valid}/{len(outputs)} constrained outputs accepted whole by xgrammar's matcher "
        f"(complete, or a valid prefix cut at {args.output_len} tokens). Host time per "
        f"step of {args.num_requests} rows (mean of the rounds): mask fill {fill:.2f} ms, "
        f"matchers' accepts {accept:.2f} ms.",
    ]
    print_report("\n".join(lines) + "\n", args.report)


if __name__ == "__main__":
    main()
