"""The engine's Triton kernels compiled at build time and shipped inside it (kernels/triton).

A runtime's first start on a node with an empty Triton cache compiles every kernel variant
of the step (~15 s for an 8B engine on an H200: the KV profiling step and the decode graph
capture). When the builder builds for its own device's target on a GPU, it runs the staged
engine once there, as a runtime would start it (runtime_service.engine.llm.LLM: the KV
profiling step, the CUDA graph capture, then a few greedy and sampled generations for the
sampler's kernels), in a child process whose TRITON_CACHE_DIR is an empty directory, and
packs what Triton wrote there into the engine under kernels/triton/. The runtime copies those
keys into its own cache before it compiles (runtime_service/kernel_cache.py).

The files are part of the engine's manifest (hashed, signed with it) but not of its id: they
do not change what the engine computes, and a runtime whose Triton or GPU differs computes
other keys and compiles as without them. A warm-up that fails is logged and the engine is
published without kernels: they only save time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmserve.device import DeviceInfo
from llmserve.store.manifest import ENGINE_TRITON_CACHE, MANIFEST_NAME

log = logging.getLogger(__name__)

WARMUP_TIMEOUT_S = 900.0


def should_warm(target: str, device: DeviceInfo) -> bool:
    """Whether a build for `target` on `device` can compile the engine's kernels."""
    return device.is_cuda and target == device.target


def pack_kernel_cache(cache: Path, dest: Path) -> int:
    """Copies Triton's complete cache keys (cache/<key>/ holding files, Triton's own
    temporary directories left out) into dest; the number of keys packed."""
    packed = 0
    for key in sorted(cache.iterdir()) if cache.is_dir() else []:
        files = [p for p in key.iterdir() if p.is_file()] if key.is_dir() else []
        if key.name.startswith(".") or not files:
            continue
        (dest / key.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, dest / key.name / f.name)
        packed += 1
    return packed


def warm_kernels(
    staging: Path,
    manifest: dict[str, Any],
    device: DeviceInfo,
    run: Callable[[Path, Path, str], None] | None = None,
) -> int:
    """Compiles the staged engine's kernels on `device` and packs them into staging (see the
    module docstring); the number of cache keys packed, 0 if the warm-up failed.
    `run(staging, cache_dir, torch_device)` runs the engine with TRITON_CACHE_DIR=cache_dir
    (default: this module's main in a child process)."""
    run = run or _run_child
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # the child needs the memory the build's tensors had
    marker = staging / MANIFEST_NAME  # what the runtime's loader reads; the store's comes later
    marker.write_text(json.dumps({**manifest, "files": {}}))
    try:
        with tempfile.TemporaryDirectory(prefix="triton-warmup-") as cache:
            run(staging, Path(cache), device.torch_device)
            return pack_kernel_cache(Path(cache), staging / ENGINE_TRITON_CACHE)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("engine %s: kernels not compiled at build: %s", manifest.get("id", ""), e)
        shutil.rmtree(staging / ENGINE_TRITON_CACHE, ignore_errors=True)
        return 0
    finally:
        marker.unlink(missing_ok=True)


def _run_child(staging: Path, cache: Path, torch_device: str) -> None:
    env = dict(os.environ, TRITON_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "builder_service.kernel_warmup", str(staging), torch_device]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=WARMUP_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise subprocess.SubprocessError(f"warm-up exited with {done.returncode}:\n{tail}")


def main(argv: list[str]) -> None:
    """Starts the engine at argv[0] on device argv[1] as a runtime does, then generates."""
    from runtime_service.engine.llm import LLM
    from runtime_service.engine.params import SamplingParams

    # verify_engine=False: the builder wrote these files a moment ago (the manifest written
    # for the warm-up lists none; the store hashes them at publish).
    llm = LLM(argv[0], device=argv[1], verify_engine=False)
    prompts = [[1 + (i * 7 + j) % 100 for j in range(n)] for i, n in enumerate((3, 17, 130))]
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, detokenize=False)
    sampled = SamplingParams(
        temperature=0.8,
        top_p=0.9,
        top_k=50,
        repetition_penalty=1.1,
        seed=1,
        max_tokens=4,
        ignore_eos=True,
        detokenize=False,
    )
    llm.generate(prompts, greedy)
    llm.generate(prompts, sampled)


if __name__ == "__main__":
    main(sys.argv[1:])
