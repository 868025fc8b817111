"""`llmserve build SOURCE`: build an engine into the store locally, without a daemon.

Shows a progress bar on stderr, prints the engine id on stdout (so `ID=$(llmserve build ...)`
works), and exits 1 with the reason when the build is refused or fails.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from builder_service.build import AwqOptions, Builder
from builder_service.config import StoreSettings
from builder_service.spec import BuildEvent, BuildSpec
from llmserve.config import parse_config, require, setting
from llmserve.device import device_info
from llmserve.errors import LLMServeError
from llmserve.store import open_store
from llmserve.store.s3 import s3_client_for

DESCRIPTION = "Builds an engine into the artifact store locally, without a daemon."


@dataclass(kw_only=True)
class BuildCommandConfig(StoreSettings):
    """What to build (the BuildRequest fields) and where to put it."""

    source: str = setting("", "Hugging Face directory, .gguf file, or s3:// URI", positional=True)
    quantization: str = setting("none", "none, int8, int4 or fp8 (fp8: sm_89 and newer)")
    target: str = setting("", "cpu or sm_XY; default: this machine's device")
    dtype: str = setting("", "float32, bfloat16 or float16; default float32 on cpu, else bfloat16")
    max_model_len: int | None = setting(None, "longest sequence; default: the model's limit")
    model_name: str = setting("", "display name; default: the source's file or directory name")
    force: bool = setting(False, "publish even when validation exceeds its perplexity bound")
    random_weights: bool = setting(
        False, "random weights of the source's shapes (benchmarks; source may lack weights)"
    )
    max_perplexity_increase: float | None = setting(
        None, "largest relative perplexity rise; default 0.02 int8/fp8, 0.06 int4, 0.01 none"
    )

    def __post_init__(self) -> None:
        self.validate_store()
        require(self.source != "", "source is required: llmserve build SOURCE")


class ProgressBar:
    """A one-line bar on a terminal; one line per phase change elsewhere (logs, pipes)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.phase = ""

    def __call__(self, event: BuildEvent) -> None:
        if self.tty:
            width = max(10, min(40, shutil.get_terminal_size().columns - 60))
            filled = int(width * event.percent / 100)
            bar = "#" * filled + "." * (width - filled)
            line = f"[{bar}] {event.percent:5.1f}% {event.phase}: {event.message}"
            self.out.write("\r\x1b[2K" + line[: shutil.get_terminal_size().columns - 1])
            if event.phase == "done":
                self.out.write("\n")
        elif event.phase != self.phase:
            self.out.write(f"{event.percent:5.1f}% {event.phase}: {event.message}\n")
        self.phase = event.phase
        self.out.flush()


def main(argv: Sequence[str] | None = None, prog: str = "llmserve build") -> int:
    config = parse_config(BuildCommandConfig, argv, prog=prog, description=__doc__.splitlines()[0])
    spec = BuildSpec(
        source=config.source,
        model_name=config.model_name,
        target=config.target,
        quantization=config.quantization,
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        force=config.force,
        max_perplexity_increase=config.max_perplexity_increase,
        random_weights=config.random_weights,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the one on stderr
    try:
        store = open_store(config.store, config.store_options())
        builder = Builder(
            store,
            config.work_dir,
            device=device_info(),
            s3_client=s3_client_for(store, config.store_options()),
            awq=AwqOptions(grid=config.awq_grid, samples=config.awq_samples),
            source_cache_size=config.source_cache_size,
            warm_kernels=config.warm_kernels,
        )
        final = builder.build(spec, ProgressBar(sys.stderr))
    except LLMServeError as e:
        print(f"{prog}: {e.code}: {e}", file=sys.stderr)
        return 1
    engine = final.engine
    assert engine is not None
    v = engine.validation
    checked = (
        "validation skipped (random weights)"
        if v.skipped
        else f"perplexity {v.source_perplexity:.4f} -> {v.engine_perplexity:.4f} "
        f"({v.relative_increase:+.2%}, bound {v.max_relative_increase:.0%}"
        f"{', forced' if v.forced else ''})"
    )
    print(
        f"engine {engine.engine_id} ({engine.quantization}, {engine.dtype}, {engine.target}) "
        f"{'already in' if final.cached else 'published to'} {store.uri}: {checked}",
        file=sys.stderr,
    )
    print(engine.engine_id)
    return 0
