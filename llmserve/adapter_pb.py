"""AdapterManifest -> llmserve.v1.Adapter, for the builder and runtime servicers (the one place
a stored adapter's manifest meets protobuf)."""

from __future__ import annotations

from typing import Any

from llmserve.store.adapters import AdapterManifest


def adapter_to_pb(manifest: AdapterManifest) -> Any:
    """The stored adapter; `state` and `active_requests` are left for a runtime to fill in."""
    from llmserve.v1 import common_pb2

    return common_pb2.Adapter(
        name=manifest.name,
        adapter_id=manifest.adapter_id,
        base_model_digest=manifest.base_model_digest,
        rank=manifest.rank,
        alpha=manifest.alpha,
        target_modules=manifest.target_modules,
    )
