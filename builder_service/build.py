"""The builder: a checkpoint in, an engine published in the artifact store out.

resolve   refuse what cannot be built (quantization vs target, bad fields): no work yet
loading   open the source (download from S3), digest it, derive the engine id; if the store
          has the engine, stop here (cached). Else, under the store's build lock: load it
          through transformers and measure its perplexity
converting fuse, (int4: collect calibration activations), quantize, cast; write files
validating load the staged engine with the runtime's loader; measure its perplexity
publishing  the store makes it visible at once
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from builder_service import calibration
from builder_service.convert import convert_weights
from builder_service.engine_files import tokenizer_info, write_model_files, write_weights
from builder_service.kernel_warmup import should_warm, warm_kernels
from builder_service.random_weights import RANDOM_SEED, compile_random
from builder_service.sources import LoadedSource, Source, load_source, open_source, read_hf_config
from builder_service.spec import BuildEvent, BuildSpec
from builder_service.validate import (
    check_bound_setting,
    check_validation,
    source_perplexity,
    validation_window,
)
from llmserve.device import DeviceInfo, device_info
from llmserve.errors import InvalidArgument
from llmserve.reasons import Reason
from llmserve.store import ENGINES, ArtifactStore, EngineManifest, Validation, engine_id
from runtime_service.models.config import ModelConfig
from runtime_service.models.linear import INT4_GROUP_SIZE
from runtime_service.models.llama import LlamaModel
from runtime_service.models.loader import load_engine
from runtime_service.models.scoring import perplexity
from runtime_service.models.weights import fuse_hf_weights

log = logging.getLogger(__name__)

Emit = Callable[[BuildEvent], None]
_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "llmserve")


def toolchain(device: DeviceInfo) -> dict[str, str]:
    versions = {"python": platform.python_version(), "builder_device": device.name}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclasses.dataclass(frozen=True, slots=True)
class AwqOptions:
    """Settings of the int4 scale search (part of an int4 engine's id)."""

    grid: int = 20  # alphas tried: 0, 1/grid, ..., (grid-1)/grid; also clip-ratio steps
    samples: int = 256  # calibration tokens whose layer inputs measure the output error

    def __post_init__(self) -> None:
        if not 1 <= self.grid <= 100:
            raise InvalidArgument(
                f"awq_grid must be in [1, 100], got {self.grid}",
                reason=Reason.INVALID_FIELD,
                field="awq_grid",
            )
        if not 8 <= self.samples <= 65536:
            raise InvalidArgument(
                f"awq_samples must be in [8, 65536], got {self.samples}",
                reason=Reason.INVALID_FIELD,
                field="awq_samples",
            )


class Builder:
    """Builds engines into one store. Safe to call from several threads at once."""

    def __init__(
        self,
        store: ArtifactStore,
        work_dir: Path,
        device: DeviceInfo | None = None,
        awq: AwqOptions = AwqOptions(),
        s3_client: Any = None,
        source_cache_size: int = 0,
        warm_kernels: bool = True,
    ) -> None:
        """source_cache_size: checkpoints kept loaded after a build, by digest, so that the
        next build of the same model (another quantization, say) skips loading it.
        warm_kernels: on a GPU, an engine for this GPU's target carries its compiled Triton
        kernels (kernel_warmup.py)."""
        self.store = store
        self.work_dir = work_dir.expanduser()
        self.device = device or device_info()
        self.awq = awq
        self.s3_client = s3_client
        self._source_cache_size = source_cache_size
        self.warm_kernels = warm_kernels
        self._sources: OrderedDict[str, LoadedSource] = OrderedDict()
        self._sources_lock = threading.Lock()
        self._configs: dict[str, dict[str, Any]] = {}  # digest -> config.json contents

    def build(self, spec: BuildSpec, emit: Emit = lambda event: None) -> BuildEvent:
        """Builds (or finds) the engine of `spec`; returns the final event, also emitted."""
        spec = spec.resolve(self.device.target)
        bound = check_bound_setting(spec.max_perplexity_increase, spec.quantization)
        emit(BuildEvent("loading", 0.0, f"opening {spec.source}"))
        downloads = self.work_dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            source = open_source(
                spec.source, Path(tmp), self.s3_client, weights_required=not spec.random_weights
            )
            emit(BuildEvent("loading", 1.0, "hashing the checkpoint"))
            digest = source.digest()
            config = ModelConfig.from_hf(self._hf_config(source, digest))
            max_len = spec.max_model_len or config.max_position_embeddings
            if max_len > config.max_position_embeddings:
                raise InvalidArgument(
                    f"max_model_len must be at most the model's limit "
                    f"{config.max_position_embeddings}, got {max_len}",
                    reason=Reason.INVALID_FIELD,
                    field="max_model_len",
                )
            options = self.build_options(spec.quantization, max_len)
            if spec.random_weights:
                options["random_weights"] = {"seed": RANDOM_SEED}
            eid = engine_id(digest, spec.target, spec.quantization, spec.dtype, options)

            def compile_into(staging: Path) -> dict[str, Any]:
                if spec.random_weights:  # no checkpoint loaded, no validation
                    fields = dict(engine_id=eid, model_digest=digest, source=spec.source)
                    fields.update(model_name=spec.model_name or source.default_name)
                    fields.update(max_model_len=max_len, build_options=options)
                    fields.update(toolchain=toolchain(self.device))
                    hf, device = self._hf_config(source, digest), self.device.torch_device
                    manifest = compile_random(staging, spec, source, hf, fields, device, emit)
                else:
                    manifest = self._compile(
                        staging, spec, source, digest, eid, options, bound, emit
                    )
                if self.warm_kernels and should_warm(spec.target, self.device):
                    emit(BuildEvent("publishing", 91.0, "compiling the engine's kernels"))
                    packed = warm_kernels(staging, manifest, self.device)
                    log.info("engine %s: %d compiled kernels packed", eid, packed)
                return manifest

            def waiting() -> None:
                emit(BuildEvent("waiting", 2.0, f"engine {eid} is being built elsewhere"))

            data, built = self.store.publish_once(ENGINES, eid, compile_into, on_wait=waiting)
        engine = EngineManifest.from_json(data)
        if not built and not spec.force:
            v = dataclasses.replace(engine.validation, max_relative_increase=bound)
            check_validation(v, spec.quantization, force=False)
        what = "built and published" if built else "already in the store"
        final = BuildEvent("done", 100.0, f"engine {eid} {what}", engine=engine, cached=not built)
        emit(final)
        return final

    def build_options(self, quantization: str, max_model_len: int) -> dict[str, Any]:
        """Options that decide an engine's bytes besides model, target, quantization, dtype."""
        options: dict[str, Any] = {"max_model_len": max_model_len}
        if quantization == "int4":
            options.update(
                int4_group_size=INT4_GROUP_SIZE,
                awq_grid=self.awq.grid,
                awq_samples=self.awq.samples,
                calibration_sha256=calibration.calibration_sha256(),
            )
        return options

    def _hf_config(self, source: Source, digest: str) -> dict[str, Any]:
        """The source's config; remembered by digest (reading a GGUF's takes seconds)."""
        if digest not in self._configs:
            self._configs[digest] = read_hf_config(source)
        return self._configs[digest]

    def _load(self, source: Source, digest: str) -> LoadedSource:
        with self._sources_lock:
            if digest in self._sources:
                self._sources.move_to_end(digest)
                return self._sources[digest]
        loaded = load_source(source)
        if self._source_cache_size > 0:
            with self._sources_lock:
                self._sources[digest] = loaded
                while len(self._sources) > self._source_cache_size:
                    self._sources.popitem(last=False)
        return loaded

    def _source_perplexity(
        self, loaded: LoadedSource, digest: str, ids: list[int], window: int
    ) -> float:
        """Perplexity of the source; remembered per (model, text, window, device)."""
        key = f"{digest}-{calibration.calibration_sha256()[:16]}-{window}-{self.device.target}"
        cache = self.work_dir / "source-perplexity" / f"{key}.json"
        if cache.exists():
            return float(json.loads(cache.read_text())["perplexity"])
        value = source_perplexity(loaded.model, ids, window)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{time.time_ns()}.tmp")
        tmp.write_text(json.dumps({"perplexity": value}))
        tmp.rename(cache)
        return value

    def _compile(
        self,
        staging: Path,
        spec: BuildSpec,
        source: Source,
        digest: str,
        eid: str,
        options: dict[str, Any],
        bound: float,
        emit: Emit,
    ) -> dict[str, Any]:
        device = torch.device(self.device.torch_device)
        max_len = options["max_model_len"]
        emit(BuildEvent("loading", 3.0, f"loading {source.default_name} through transformers"))
        loaded = self._load(source, digest)
        config = ModelConfig.from_hf(loaded.hf_config)
        ids = loaded.tokenizer(calibration.calibration_text(), verbose=False)["input_ids"]
        window = validation_window(max_len)
        emit(BuildEvent("loading", 15.0, "measuring the source model's perplexity"))
        source_ppl = self._source_perplexity(loaded, digest, ids, window)
        fused = {k: v.float() for k, v in fuse_hf_weights(config, loaded.model.state_dict().get)}
        num_parameters = sum(t.numel() for t in fused.values())
        tokenizer, generation_config = loaded.tokenizer, loaded.model.generation_config
        hf_config = loaded.hf_config
        del loaded

        layer_inputs = None
        if spec.quantization == "int4":
            emit(BuildEvent("converting", 25.0, "collecting calibration activations"))
            base = LlamaModel(config, {k: v.to(device) for k, v in fused.items()}, "none")
            layer_inputs = calibration.collect_layer_inputs(base, ids, window, self.awq.samples)
            del base

        last = [25.0]

        def converted(fraction: float, message: str) -> None:
            percent = 30.0 + 25.0 * fraction
            if percent - last[0] >= 1.0 or fraction == 1.0:
                last[0] = percent
                emit(BuildEvent("converting", percent, message))

        emit(BuildEvent("converting", 30.0, f"converting to {spec.quantization}/{spec.dtype}"))
        weights, report = convert_weights(
            config,
            fused,
            spec.quantization,
            getattr(torch, spec.dtype),
            layer_inputs,
            self.awq.grid,
            converted,
        )
        write_weights(weights, staging)
        del weights
        files = write_model_files(staging, hf_config, tokenizer, generation_config)
        manifest = EngineManifest(
            engine_id=eid,
            model_name=spec.model_name or source.default_name,
            model_digest=digest,
            architecture=config.architecture,
            source=spec.source,
            target=spec.target,
            quantization=spec.quantization,
            dtype=spec.dtype,
            max_model_len=max_len,
            num_parameters=num_parameters,
            build_options={**options, **report.to_json()},
            toolchain=toolchain(self.device),
            tokenizer=tokenizer_info(tokenizer, files, config.eos_token_ids),
            validation=Validation(source_ppl, float("nan"), bound, len(ids)),
        )
        manifest.write(staging)  # provisional, for the loader; the store writes the final one

        emit(BuildEvent("validating", 60.0, "measuring the engine's perplexity"))
        model = load_engine(staging, device, verify=False, check_target=False)
        engine_ppl = perplexity(model, ids, window)
        del model
        validation = Validation(source_ppl, engine_ppl, bound, len(ids))
        validation.forced = spec.force and not validation.passed
        manifest.validation = validation
        log.info(
            "engine %s: perplexity %.4f -> %.4f (%+.2f%%, bound %.2f%%)",
            eid,
            source_ppl,
            engine_ppl,
            100 * validation.relative_increase,
            100 * bound,
        )
        check_validation(validation, spec.quantization, spec.force)
        emit(BuildEvent("publishing", 90.0, f"publishing engine {eid} into {self.store.uri}"))
        return manifest.to_json()
