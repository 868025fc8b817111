"""Settings of the builder daemon (and of `llmserve build`, which shares the store ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmserve.config import require, setting
from llmserve.server import ServerConfig
from llmserve.store import StoreOptions
from llmserve.store.signing import read_key


@dataclass(kw_only=True)
class StoreSettings:
    """Where engines go and how the store is managed."""

    store: str = setting(
        "~/.cache/llmserve/store", "artifact store: a local directory or s3://bucket/prefix"
    )
    store_max_bytes: int = setting(
        0, "size cap of the store; least recently used unheld engines go first (0: no cap)"
    )
    store_lock_lease_s: float = setting(
        60.0, "S3 build locks not renewed for this long are taken over (a dead builder's)"
    )
    store_hold_ttl_s: float = setting(
        120.0, "a runtime's hold on an engine not refreshed for this long has expired"
    )
    s3_endpoint_url: str = setting(
        "", "S3-compatible endpoint (MinIO, ...); empty: boto3's default (AWS_ENDPOINT_URL_S3)"
    )
    manifest_signing_key_file: Path | None = setting(
        None,
        "file holding an HMAC key (>= 32 bytes, a Secret): sign every manifest published;"
        " runtimes given the same key serve only engines signed with it",
    )
    work_dir: Path = setting(
        Path("~/.cache/llmserve/builder"), "downloads of s3:// sources and measured perplexities"
    )
    awq_grid: int = setting(20, "int4: points of the activation-aware scale and clip searches")
    awq_samples: int = setting(256, "int4: calibration tokens measuring each layer's error")
    warm_kernels: bool = setting(
        True,
        "on a GPU, compile an engine's Triton kernels for this GPU's target at build time and"
        " ship them in the engine (a runtime's first start then compiles nothing)",
    )
    source_cache_size: int = setting(
        0, "checkpoints kept loaded after a build for the next build of the same model"
    )

    def validate_store(self) -> None:
        require(self.store != "", "store must be a directory or s3://bucket/prefix")
        require(
            self.store_max_bytes >= 0, f"store_max_bytes must be >= 0, got {self.store_max_bytes}"
        )
        require(self.store_lock_lease_s >= 1, "store_lock_lease_s must be >= 1")
        require(self.store_hold_ttl_s >= 1, "store_hold_ttl_s must be >= 1")
        require(
            self.source_cache_size >= 0,
            f"source_cache_size must be >= 0, got {self.source_cache_size}",
        )
        require(1 <= self.awq_grid <= 100, f"awq_grid must be in [1, 100], got {self.awq_grid}")
        require(
            8 <= self.awq_samples <= 65536,
            f"awq_samples must be in [8, 65536], got {self.awq_samples}",
        )

    def store_options(self) -> StoreOptions:
        return StoreOptions(
            max_bytes=self.store_max_bytes,
            lock_lease_s=self.store_lock_lease_s,
            hold_ttl_s=self.store_hold_ttl_s,
            s3_endpoint_url=self.s3_endpoint_url,
            signing_key=(
                read_key(self.manifest_signing_key_file) if self.manifest_signing_key_file else ""
            ),
        )


@dataclass(kw_only=True)
class BuilderConfig(ServerConfig, StoreSettings):
    """The builder's listener, its artifact store and its build settings."""

    port: int = setting(50053, "gRPC port (0 picks a free one)")
    max_concurrent_builds: int = setting(1, "builds running at once; more wait their turn")
    max_lora_rank: int = setting(64, "RegisterAdapter refuses LoRA adapters of a higher rank")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_store()
        require(
            self.max_concurrent_builds >= 1,
            f"max_concurrent_builds must be >= 1, got {self.max_concurrent_builds}",
        )
        require(
            1 <= self.max_lora_rank <= 512,
            f"max_lora_rank must be in [1, 512], got {self.max_lora_rank}",
        )
