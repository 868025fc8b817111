"""EngineConfig: the engine's settings, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmserve.errors import InvalidArgument


@dataclass(kw_only=True)
class EngineConfig:
    """Settings of one engine instance (one model on one device)."""

    model: Path  # Hugging Face directory or built engine directory
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto (bf16 on CUDA, fp32 on CPU)
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    block_size: int = 16
    # KV pool size: an explicit block count, else GPU memory fraction, else CPU bytes
    # (None: a tenth of the available memory, at least one max_model_len sequence).
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_bytes: int | None = None
    max_model_len: int | None = None  # default: the model's limit
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    # CUDA graphs of the decode step (captured at start-up); off: every step runs eagerly.
    enable_cuda_graphs: bool = True
    # Schedule and launch step n+1 before step n's tokens reach the host (placeholders stand
    # for them); None: on for CUDA, off on the CPU (where nothing runs while the host works).
    async_scheduling: bool | None = None
    load_format: str = "auto"  # auto: read the weights; dummy: random weights (benchmarks)
    dummy_quantization: str = "none"  # load_format dummy: none, fp8, int8 or int4
    cpu_threads: int = 0  # torch intra-op threads of the core; 0: torch's default (all cores)
    verify_engine: bool = True  # check a built engine's files against its manifest at load
    # The SHA-256 of the engine's manifest file as the runtime trusted it (served in place):
    # every read of the manifest in the core must find those bytes.
    engine_manifest_sha256: str | None = None
    # LoRA: device slots of stacked adapter weights (allocated up front, before the KV pool is
    # sized), the highest rank they hold, and a directory of adapters (<lora_dir>/<name>/) to
    # load on first use.
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 64
    lora_dir: Path | None = None
    # Tensor parallelism: the model split over this many processes (one per GPU from
    # `device` on, or CPU processes over gloo); see docs/tensor_parallel.md.
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        if self.lora_dir is not None:
            self.lora_dir = Path(self.lora_dir)
        checks = [
            (
                self.block_size in (8, 16, 32, 64, 128),
                f"block_size must be one of 8, 16, 32, 64, 128, got {self.block_size}",
            ),
            (
                self.num_kv_blocks is None or self.num_kv_blocks >= 1,
                f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}",
            ),
            (
                0 < self.gpu_memory_utilization <= 1,
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}",
            ),
            (
                self.max_model_len is None or self.max_model_len >= 2,
                f"max_model_len must be >= 2, got {self.max_model_len}",
            ),
            (self.max_num_seqs >= 1, f"max_num_seqs must be >= 1, got {self.max_num_seqs}"),
            (
                self.max_num_batched_tokens >= 1,
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}",
            ),
            (
                1 <= self.tensor_parallel_size <= 64,
                f"tensor_parallel_size must be in [1, 64], got {self.tensor_parallel_size}",
            ),
            (self.max_loras >= 1, f"max_loras must be >= 1, got {self.max_loras}"),
            (
                1 <= self.max_lora_rank <= 512,
                f"max_lora_rank must be in [1, 512], got {self.max_lora_rank}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgument(message)
