"""``detector serve``: serve every model of a folder over gRPC, with dynamic batching.

The same options drive ``python -m server``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The server's defaults (server.batcher.BatcherConfig, server.app.ServerConfig), repeated
# here so that --help does not import torch; tests check that they agree.
DEFAULT_PORT = 50051
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_DELAY_MS = 5.0
DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_STREAM_WINDOW = 16
DEFAULT_MAX_MESSAGE_MB = 64
DEFAULT_GRACE_S = 10.0
MAX_PORT = 65535

DESCRIPTION = """\
Serve every model file (*.safetensors) of a folder over gRPC (detector.v1.DetectorService),
each under its file name; requests that name no model get the default one. Also served:
the standard health service (grpc.health.v1: SERVING once the models are loaded) and
server reflection. Prometheus metrics on --metrics-port.

Each model has a dynamic batcher: a batch closes at --max-batch requests or
--max-delay-ms after its first request, and runs as one forward pass; a full queue
(--max-queue) answers RESOURCE_EXHAUSTED at once.

SIGTERM or SIGINT: health turns NOT_SERVING, new calls are refused, calls in flight get
--grace seconds to finish, then the server exits with 0.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``detector serve`` and ``python -m server``."""
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="folder of model files (default: the shipped weights/ folder)",
    )
    parser.add_argument(
        "--default",
        default=None,
        metavar="NAME",
        help="model for requests that name none (default: 'digits' if served, else the "
        "first by name)",
    )
    parser.add_argument("--host", default="[::]", help="interface to listen on (default: [::])")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on, 0 = any free port (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1..."
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"most images per forward pass; 1 turns batching off (default: {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=DEFAULT_MAX_DELAY_MS,
        help="longest a batch waits for more requests after its first "
        f"(default: {DEFAULT_MAX_DELAY_MS:g})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"requests waiting per model before RESOURCE_EXHAUSTED (default: {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image, width x height pixels (default: {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=None,
        help="threads decoding images (default: the number of CPUs)",
    )
    parser.add_argument(
        "--stream-window",
        type=int,
        default=DEFAULT_STREAM_WINDOW,
        help=f"requests of one stream processed at a time (default: {DEFAULT_STREAM_WINDOW})",
    )
    parser.add_argument(
        "--max-message-mb",
        type=int,
        default=DEFAULT_MAX_MESSAGE_MB,
        help=f"largest message in MiB (default: {DEFAULT_MAX_MESSAGE_MB})",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics over HTTP on this port, 0 = any free port (default: off)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help=f"seconds calls in flight get to finish on shutdown (default: {DEFAULT_GRACE_S:g})",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``detector`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve models over gRPC with dynamic batching",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    from detector.predict import WEIGHTS_DIR
    from server.app import ServerConfig, serve
    from server.batcher import BatcherConfig

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not 0 <= args.port <= MAX_PORT:
        raise ValueError(f"--port must be in [0, {MAX_PORT}], got {args.port}")
    batcher = BatcherConfig(
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        max_pixels=args.max_pixels,
    )
    config = ServerConfig(
        batcher=batcher,
        decode_workers=args.decode_workers or os.cpu_count() or 1,
        stream_window=args.stream_window,
        max_message_mb=args.max_message_mb,
        metrics_port=args.metrics_port,
        metrics_host=args.host.strip("[]"),
        grace_s=args.grace,
    )
    models = args.models if args.models is not None else WEIGHTS_DIR
    return asyncio.run(serve(args.host, args.port, models, args.default, args.device, config))
