"""Generates the Python stubs of the public contract (protos/llmserve/v1) with grpcio-tools.

`make protos` writes them into llmserve/v1/, where they are committed; the tests regenerate
them into a temporary folder and fail when the committed copy is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PACKAGE_DIR = "llmserve/v1"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The contract's .proto files, relative to proto_root, in a stable order."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / PACKAGE_DIR).glob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc on the contract, writing *_pb2.py, *_pb2.pyi and *_pb2_grpc.py under out_dir.

    Returns the generated files, relative to out_dir.
    """
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    files = proto_files(proto_root)
    include = Path(protoc.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, files),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(p.relative_to(out_dir) for p in (out_dir / PACKAGE_DIR).glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: repo)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
