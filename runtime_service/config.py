"""Settings of the runtime daemon."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmserve.config import require, setting
from llmserve.server import ServerConfig
from llmserve.store import StoreOptions
from llmserve.store.signing import read_key
from llmserve.targets import QUANTIZATION_MIN_CAPABILITY


@dataclass(kw_only=True)
class RuntimeConfig(ServerConfig):
    """Which engine to serve, on which device, and the engine's batching limits."""

    port: int = setting(50052, "gRPC port (0 picks a free one)")
    store: str = setting(
        "~/.cache/llmserve/store", "artifact store: a local directory or s3://bucket/prefix"
    )
    engine: str = setting("", "id of the engine to serve, from the store")
    model_name: str = setting(
        "", "serve the newest engine of this model built for this device (with --quantization)"
    )
    quantization: str = setting("none", "with --model-name: none, int8, int4 or fp8")
    model_source: str = setting(
        "", "checkpoint the builder builds a missing engine from (names the model by default)"
    )
    builder: str = setting("", "builder HOST:PORT asked to build a missing engine for this device")
    wait_for_engine: bool = setting(False, "without --builder: wait for the engine to be built")
    engine_poll_s: float = setting(10.0, "with --wait-for-engine: how often the store is read")
    model_path: Path | None = setting(
        None, "development: serve a Hugging Face directory or .gguf file, built in place"
    )
    engine_cache_dir: Path = setting(
        Path("~/.cache/llmserve/engines"), "local copies of engines fetched from the store"
    )
    kernel_cache_dir: Path | None = setting(
        None,
        "Triton's compiled kernels (TRITON_CACHE_DIR for the engine): on a persistent volume,"
        " later starts compile nothing; default TRITON_CACHE_DIR, else"
        " <engine-cache-dir>/.kernels/triton",
    )
    served_model_name: str = setting("", "model name reported to clients (default: the engine's)")
    device: str = setting("auto", "cpu, cuda, cuda:N, or auto")
    dtype: str = setting("auto", "with --model-path: float32, bfloat16, float16 or auto")
    gpu_memory_utilization: float = setting(0.9, "fraction of GPU memory for weights + KV cache")
    cpu_kv_cache_bytes: int = setting(512 * 1024 * 1024, "KV cache size on CPU")
    num_kv_blocks: int | None = setting(None, "KV cache blocks (overrides the two above)")
    block_size: int = setting(16, "tokens per KV cache block")
    max_model_len: int | None = setting(None, "longest sequence (default: the engine's)")
    max_num_seqs: int = setting(256, "most requests running at once")
    max_num_batched_tokens: int = setting(4096, "most tokens computed per step")
    max_waiting: int = setting(1024, "most requests waiting to start; beyond: RESOURCE_EXHAUSTED")
    enable_prefix_caching: bool = setting(True, "reuse KV blocks of shared prompt prefixes")
    enable_chunked_prefill: bool = setting(True, "split long prompts across steps")
    enable_cuda_graphs: bool = setting(
        True, "replay decode steps as CUDA graphs captured at start-up (off: eager steps)"
    )
    async_scheduling: bool = setting(
        True, "on CUDA, launch each step before the previous step's tokens reach the host"
    )
    enable_lora: bool = setting(False, "serve LoRA adapters (reserves device slots for them)")
    max_loras: int = setting(
        4, "adapters held on the device at once (LRU; the rest in host memory)"
    )
    max_lora_rank: int = setting(64, "highest LoRA rank accepted")
    lora_dir: Path | None = setting(
        None, "directory of adapters (<dir>/<name>/) loaded on a request's first use"
    )
    manifest_signing_key_file: Path | None = setting(
        None,
        "file holding the builder's HMAC key (a Secret): serve only engines and adapters whose"
        " manifests are signed with it",
    )
    adapter_path_root: Path | None = setting(
        None,
        "LoadAdapter by path takes only directories under this one (symlinks resolved);"
        " unset: any path the runtime can read (trust the callers: see service_token_file)",
    )
    cpu_threads: int = setting(
        0, "CPU threads of the engine (0: all cores); set it when runtimes share a machine"
    )
    load_format: str = setting(
        "auto", "with --model-path: auto, or dummy (random weights; benchmarks)"
    )
    tensor_parallel_size: int = setting(
        1,
        "split the model over this many GPUs of the node (from --device's on; one worker"
        " process each), or CPU processes",
    )

    def store_options(self) -> StoreOptions:
        """Options of the runtime's store client (its signing key, if any)."""
        key_file = self.manifest_signing_key_file
        return StoreOptions(signing_key=read_key(key_file) if key_file else "")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            bool(self.engine or self.by_key) != (self.model_path is not None),
            "give exactly one of --engine (an engine id in --store) or --model-name/--model-source"
            " (the engine of a model for this device; with --engine, it must match), or"
            " --model-path (a path), not --model-path with the others",
        )
        require(
            self.quantization in QUANTIZATION_MIN_CAPABILITY,
            f"quantization must be one of {tuple(QUANTIZATION_MIN_CAPABILITY)}, "
            f"got {self.quantization!r}",
        )
        require(not self.builder or self.model_source, "--builder needs --model-source")
        require(self.engine_poll_s > 0, f"engine_poll_s must be > 0, got {self.engine_poll_s}")
        require(self.max_waiting >= 0, f"max_waiting must be >= 0, got {self.max_waiting}")
        require(
            0 < self.gpu_memory_utilization <= 1,
            f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        require(self.max_loras >= 1, f"max_loras must be >= 1, got {self.max_loras}")
        require(
            1 <= self.max_lora_rank <= 512,
            f"max_lora_rank must be in [1, 512], got {self.max_lora_rank}",
        )
        require(self.lora_dir is None or self.enable_lora, "lora_dir needs --enable-lora")
        require(self.cpu_threads >= 0, f"cpu_threads must be >= 0, got {self.cpu_threads}")
        require(
            1 <= self.tensor_parallel_size <= 64,
            f"tensor_parallel_size must be in [1, 64], got {self.tensor_parallel_size}",
        )
        require(self.max_num_seqs >= 1, f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        require(
            self.load_format in ("auto", "dummy"),
            f"load_format must be auto or dummy, got {self.load_format!r}",
        )
        self.engine_cache_dir = self.engine_cache_dir.expanduser()
        if self.kernel_cache_dir is not None:
            self.kernel_cache_dir = self.kernel_cache_dir.expanduser()
        if not self.store.startswith("s3://"):
            self.store = str(Path(self.store).expanduser())

    @property
    def by_key(self) -> bool:
        """Serving the engine of a model (and quantization) for this device."""
        return bool(self.model_name or self.model_source)
