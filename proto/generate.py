"""Generate the Python stubs of the gRPC contract, reproducibly.

    uv run python proto/generate.py            # rewrite the committed stubs
    uv run python proto/generate.py --check    # exit 1 if they differ from a fresh run

The ``.proto`` files are compiled with ``grpc_tools.protoc`` (the version pinned in
``uv.lock``) from the repository root, so that the generated modules import each other
as ``proto.detector.v1...`` and never clash with the ``detector`` package. Each
``detector.proto`` gives ``detector_pb2.py`` (messages), ``detector_pb2.pyi`` (types)
and ``detector_pb2_grpc.py`` (service stub and servicer), next to it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("proto/detector/v1/detector.proto",)  # relative to REPO_ROOT
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_paths(proto_file: str) -> list[str]:
    """The stub files (relative to the output root) generated from one ``.proto``."""
    stem = proto_file.removesuffix(".proto")
    return [stem + suffix for suffix in GENERATED_SUFFIXES]


def generate(out_dir: Path) -> list[Path]:
    """Compile every file of ``PROTO_FILES`` into ``out_dir``; returns the files written.

    Raises:
        RuntimeError: ``protoc`` failed (its message is on stderr).
    """
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    for proto_file in PROTO_FILES:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={REPO_ROOT}",
            f"--proto_path={well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(REPO_ROOT / proto_file),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto_file}")
    return [out_dir / p for proto in PROTO_FILES for p in generated_paths(proto)]


def stale_stubs(root: Path = REPO_ROOT) -> list[str]:
    """Stub files under ``root`` that are missing or differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for proto in PROTO_FILES:
            for rel in generated_paths(proto):
                committed = root / rel
                if (
                    not committed.is_file()
                    or committed.read_bytes() != (Path(tmp) / rel).read_bytes()
                ):
                    stale.append(rel)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with a fresh generation; write nothing"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_stubs()
        for rel in stale:
            print(f"stale: {rel} (run: python proto/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in generate(REPO_ROOT):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
