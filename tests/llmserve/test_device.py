"""Device facts through cuda-python, checked against torch's view of the same machine."""

from __future__ import annotations

import pytest
import torch

from llmserve.device import device_info
from llmserve.errors import FailedPrecondition, InvalidArgument
from llmserve.targets import parse_target, require_engine_target, require_quantization_supported


def test_device_matches_torch() -> None:
    info = device_info()
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        assert info.target == f"sm_{major}{minor}"
        assert info.compute_capability == (major, minor)
        assert info.name == torch.cuda.get_device_name(0)
        assert info.total_memory_bytes == torch.cuda.get_device_properties(0).total_memory
        assert info.torch_device == "cuda:0"
    else:
        assert info.target == "cpu"
        assert info.compute_capability is None
        assert info.torch_device == "cpu"
        assert info.total_memory_bytes > 0


@pytest.mark.parametrize(
    ("target", "expected"),
    [("cpu", None), ("sm_80", (8, 0)), ("sm_89", (8, 9)), ("sm_90", (9, 0)), ("sm_120", (12, 0))],
)
def test_parse_target(target: str, expected: tuple[int, int] | None) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize("target", ["cuda", "sm_9", "SM_90", "sm_90a", ""])
def test_malformed_targets_are_refused_by_name(target: str) -> None:
    with pytest.raises(InvalidArgument, match='target must be "cpu" or "sm_XY"'):
        parse_target(target)


@pytest.mark.parametrize(
    ("target", "quantization", "ok"),
    [
        ("cpu", "none", True),
        ("cpu", "int8", True),
        ("cpu", "int4", True),
        ("cpu", "fp8", False),
        ("sm_80", "fp8", False),
        ("sm_86", "fp8", False),
        ("sm_89", "fp8", True),
        ("sm_90", "fp8", True),
    ],
)
def test_quantization_support(target: str, quantization: str, ok: bool) -> None:
    if ok:
        require_quantization_supported(target, quantization)
    else:
        with pytest.raises(FailedPrecondition, match=rf"fp8 needs .*8\.9.*target {target}"):
            require_quantization_supported(target, quantization)


def test_foreign_engine_is_refused_naming_both_targets() -> None:
    require_engine_target("abc", "sm_90", "sm_90")
    with pytest.raises(FailedPrecondition, match=r"abc was built for target sm_90.*device is cpu"):
        require_engine_target("abc", "sm_90", "cpu")
