"""Generate the Python code of ``proto/modserve/v1/*.proto`` into ``serving/_proto/``.

Run by ``make install`` (``python -m serving.rpc.protogen``); the output is not
committed. The proto root is mapped to ``serving/_proto`` so the generated
modules import each other as ``serving._proto.modserve.v1...``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_PACKAGE = "serving/_proto"


def generate() -> list[Path]:
    from grpc_tools import protoc  # grpcio-tools: only needed here, at install time

    protos = sorted(p.relative_to(ROOT) for p in PROTO_DIR.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{OUT_PACKAGE}={PROTO_DIR.relative_to(ROOT)}",
        "--python_out=.",
        "--pyi_out=.",
        "--grpc_python_out=.",
        *(str(p) for p in protos),
    ]
    out = ROOT / OUT_PACKAGE
    out.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    try:
        os.chdir(ROOT)  # protoc writes paths relative to the working directory
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {[str(p) for p in protos]}")
    finally:
        os.chdir(cwd)
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()  # regular packages: importable and seen by tools
    return sorted(out.rglob("*_pb2*.py"))


def main() -> int:
    for path in generate():
        print(f"generated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
