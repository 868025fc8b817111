"""Entry point of the builder daemon: `python -m builder_service` or `llmserve builder`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from builder_service.build import AwqOptions, Builder
from builder_service.config import BuilderConfig
from builder_service.service import BuilderService
from llmserve.config import parse_config
from llmserve.device import device_info
from llmserve.server import Daemon, Service, run_daemon
from llmserve.store import open_store
from llmserve.store.s3 import s3_client_for
from llmserve.v1 import builder_pb2_grpc

DESCRIPTION = "The llmserve builder: compiles checkpoints into engines in the artifact store."
log = logging.getLogger(__name__)


def make_builder(config: BuilderConfig) -> Builder:
    store = open_store(config.store, config.store_options())
    return Builder(
        store,
        config.work_dir,
        device=device_info(),
        s3_client=s3_client_for(store, config.store_options()),
        awq=AwqOptions(grid=config.awq_grid, samples=config.awq_samples),
        source_cache_size=config.source_cache_size,
        warm_kernels=config.warm_kernels,
    )


def setup(config: BuilderConfig, daemon: Daemon) -> None:
    builder = make_builder(config)
    log.info(
        "builder on %s (%s), store %s", builder.device.name, builder.device.target, config.store
    )
    servicer = BuilderService(builder, config.max_concurrent_builds, config.max_lora_rank)
    daemon.add_service(
        Service("llmserve.v1.Builder", servicer, builder_pb2_grpc.add_BuilderServicer_to_server)
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m builder_service") -> int:
    config = parse_config(BuilderConfig, argv, prog=prog, description=DESCRIPTION)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the Build stream reports progress; keep logs JSON
    return run_daemon("builder", config, lambda daemon: setup(config, daemon))
