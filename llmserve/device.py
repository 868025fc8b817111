"""Facts about the accelerator this process runs on, read through cuda-python.

`device_info()` answers with the compute capability, name and memory of one CUDA device, or
with the `cpu` pseudo-device where no GPU is usable: no NVIDIA driver, no device, or no
cuda-python at all. It never raises for a missing GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CPU_TARGET = "cpu"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One device: a CUDA GPU, or the CPU."""

    target: str  # "sm_90" for compute capability 9.0, or "cpu"
    name: str
    total_memory_bytes: int
    compute_capability: tuple[int, int] | None = None  # None on the CPU
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.compute_capability is not None

    @property
    def torch_device(self) -> str:
        """The device string torch uses: "cuda:0" or "cpu"."""
        return f"cuda:{self.index}" if self.is_cuda else "cpu"


def cpu_info() -> DeviceInfo:
    """The CPU as a device: its model name and the machine's physical memory."""
    name = "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        memory = 0
    return DeviceInfo(target=CPU_TARGET, name=name, total_memory_bytes=memory)


def _cuda_device(index: int) -> DeviceInfo | None:
    """The CUDA device `index` through the CUDA runtime API, or None if there is none."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    try:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or count <= index:
            return None
        err, prop = cudart.cudaGetDeviceProperties(index)
        if err != cudart.cudaError_t.cudaSuccess:
            return None
    except Exception:  # the runtime library itself is missing or cannot load
        return None
    raw_name = prop.name
    name = raw_name.split(b"\0", 1)[0].decode() if isinstance(raw_name, bytes) else str(raw_name)
    return DeviceInfo(
        target=f"sm_{prop.major}{prop.minor}",
        name=name,
        total_memory_bytes=int(prop.totalGlobalMem),
        compute_capability=(int(prop.major), int(prop.minor)),
        index=index,
    )


def device_info(index: int = 0) -> DeviceInfo:
    """CUDA device `index` if there is one, else the CPU."""
    return _cuda_device(index) or cpu_info()
