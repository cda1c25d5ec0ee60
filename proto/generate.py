"""Regenerates the committed Python stubs of kakeya/v1/runtime.proto.

Run `python proto/generate.py` after editing the .proto file; unit/test_proto_stubs.py fails
while the committed stubs differ from what this script would write.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
PROTO_FILE = "kakeya/v1/runtime.proto"
STUB_DIR = PROTO_ROOT / "v1"
STUB_NAMES = ("runtime_pb2.py", "runtime_pb2.pyi", "runtime_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> None:
    """Writes the stubs into out_dir, with the gRPC module importing its sibling relatively."""
    from grpc_tools import protoc  # a build-time tool, not a runtime dependency

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_ROOT / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + PROTO_FILE)
        generated = pathlib.Path(tmp) / "kakeya" / "v1"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in STUB_NAMES:
            text = (generated / name).read_text()
            # protoc writes an absolute import of the proto package path; the stubs live
            # in kakeya.proto.v1, so the sibling import must be relative.
            text = text.replace("from kakeya.v1 import runtime_pb2", "from . import runtime_pb2")
            (out_dir / name).write_text(text)


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else STUB_DIR)
