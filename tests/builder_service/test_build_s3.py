"""Sources read from S3 and engines kept in an S3 store, against moto's S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from builder_service.build import Builder
from builder_service.calibration import calibration_text
from builder_service.sources import open_source
from builder_service.spec import BuildSpec
from llmserve.device import cpu_info
from llmserve.errors import NotFound
from llmserve.store import StoreOptions, open_store
from llmserve.store.engines import fetch_engine, list_engines
from llmserve.testing import smollm2
from llmserve.testing.s3_server import MotoS3Server
from runtime_service.models.loader import load_engine
from runtime_service.models.scoring import sequence_logits

TinyDir = Callable[[str], Path]


def new_bucket(server: MotoS3Server) -> str:
    bucket = f"build-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    return bucket


def test_build_from_s3_into_an_s3_store(
    s3_server: MotoS3Server, tiny_model_dir: TinyDir, tmp_path: Path
) -> None:
    client = s3_server.client()
    bucket = new_bucket(s3_server)
    local = tiny_model_dir("qwen2")
    for path in local.iterdir():
        client.upload_file(str(path), bucket, f"models/qwen2/{path.name}")
    store = open_store(f"s3://{bucket}/store", StoreOptions(s3_endpoint_url=s3_server.endpoint_url))
    builder = Builder(store, tmp_path / "work", device=cpu_info(), s3_client=client)

    remote = builder.build(BuildSpec(source=f"s3://{bucket}/models/qwen2"))
    assert remote.engine is not None and not remote.cached
    assert remote.engine.source == f"s3://{bucket}/models/qwen2"
    # The same bytes read from disk are the same model: same digest, same engine.
    again = builder.build(BuildSpec(source=str(local)))
    assert again.cached and again.engine is not None
    assert again.engine.engine_id == remote.engine.engine_id
    assert [e.engine_id for e in list_engines(store)] == [remote.engine.engine_id]

    path = fetch_engine(store, remote.engine.engine_id, tmp_path / "cache", device_target="cpu")
    model = load_engine(path, torch.device("cpu"))
    reference = AutoModelForCausalLM.from_pretrained(local, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(local)(calibration_text()[:400])["input_ids"]
    with torch.inference_mode():
        expected = reference(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(sequence_logits(model, ids), expected, rtol=1e-4, atol=1e-4)


def test_gguf_from_s3_has_the_local_files_digest(s3_server: MotoS3Server, tmp_path: Path) -> None:
    client = s3_server.client()
    bucket = new_bucket(s3_server)
    client.upload_file(str(smollm2.gguf_path()), bucket, "gguf/SmolLM2.gguf")
    remote = open_source(f"s3://{bucket}/gguf/SmolLM2.gguf", tmp_path / "dl", client)
    local = open_source(str(smollm2.gguf_path()), tmp_path / "unused")
    assert remote.is_gguf and remote.path.read_bytes() == local.path.read_bytes()
    assert remote.digest() == local.digest()
    with pytest.raises(NotFound, match="holds no model files"):
        open_source(f"s3://{bucket}/nothing-here", tmp_path / "dl2", client)
    with pytest.raises(NotFound, match="cannot be read"):
        open_source(f"s3://{bucket}/gguf/missing.gguf", tmp_path / "dl3", client)
