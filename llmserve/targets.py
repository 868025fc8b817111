"""Build targets: "cpu" or a CUDA architecture "sm_XY", and what each one can run.

An engine is compiled for exactly one target; a runtime serves only engines built for its own
device's target, and a builder refuses a quantization its target cannot run before doing any
work.
"""

from __future__ import annotations

import re

from llmserve.device import CPU_TARGET
from llmserve.errors import FailedPrecondition, InvalidArgument
from llmserve.reasons import Reason

_SM = re.compile(r"^sm_(\d)(\d)$|^sm_(\d\d)(\d)$")
# Weight quantizations and the smallest compute capability that runs each (None: any device).
QUANTIZATION_MIN_CAPABILITY: dict[str, tuple[int, int] | None] = {
    "none": None,
    "int8": None,
    "int4": None,
    "fp8": (8, 9),
}


def parse_target(target: str, field: str = "target") -> tuple[int, int] | None:
    """The compute capability of "sm_XY" (None for "cpu"); InvalidArgument otherwise."""
    if target == CPU_TARGET:
        return None
    match = _SM.match(target)
    if match is None:
        raise InvalidArgument(
            f'{field} must be "cpu" or "sm_XY" (e.g. sm_90), got {target!r}',
            reason=Reason.INVALID_FIELD,
            field=field,
        )
    major, minor = (match.group(1), match.group(2)) if match.group(1) else match.groups()[2:]
    return int(major), int(minor)


def require_quantization_supported(target: str, quantization: str) -> None:
    """FailedPrecondition unless an engine for `target` can run `quantization` weights."""
    if quantization not in QUANTIZATION_MIN_CAPABILITY:
        raise InvalidArgument(
            f"quantization must be one of {tuple(QUANTIZATION_MIN_CAPABILITY)}, "
            f"got {quantization!r}",
            reason=Reason.INVALID_FIELD,
            field="quantization",
        )
    needed = QUANTIZATION_MIN_CAPABILITY[quantization]
    if needed is None:
        return
    capability = parse_target(target)
    if capability is None or capability < needed:
        raise FailedPrecondition(
            f"quantization {quantization} needs compute capability >= {needed[0]}.{needed[1]} "
            f"(sm_{needed[0]}{needed[1]}); target {target} cannot run it",
            reason=Reason.TARGET_MISMATCH,
        )


def require_engine_target(engine_id: str, engine_target: str, device_target: str) -> None:
    """FailedPrecondition naming both targets unless the engine was built for this device."""
    if engine_target != device_target:
        raise FailedPrecondition(
            f"engine {engine_id} was built for target {engine_target}, but this device is "
            f"{device_target}; build an engine for {device_target}",
            reason=Reason.TARGET_MISMATCH,
        )
