"""``detector serve``: serve every model of a folder over gRPC, with dynamic batching.

The same options drive ``python -m server``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

from detector.commands import add_backend_option
from server.config import DEFAULT_HOST, DEFAULT_PORT, BatcherConfig, ServerConfig

MAX_PORT = 65535
BATCHER = BatcherConfig()  # defaults of the options (server.config, torch-free)
SERVER = ServerConfig()

DESCRIPTION = """\
Serve every model file (*.safetensors) of a folder over gRPC (detector.v1.DetectorService),
each under its file name; requests that name no model get the default one. Also served:
the standard health service (grpc.health.v1: SERVING once the models are loaded) and
server reflection. Prometheus metrics on --metrics-port.

Each model has a dynamic batcher: a batch closes at --max-batch requests or
--max-delay-ms after its first request, and runs as one forward pass; a full queue
(--max-queue) answers RESOURCE_EXHAUSTED at once.

Who may connect: by default the server (and /metrics) listen on loopback only
(--host localhost), in plaintext and without authentication. --host 0.0.0.0 or [::]
exposes them on every interface; then use --tls-cert/--tls-key (TLS),
--tls-client-ca (clients must present a certificate signed by that CA) and/or
--auth-token-file (calls must carry "authorization: Bearer <token>"; the health
service stays open for probes). /metrics is plain HTTP without a token.

SIGTERM or SIGINT: health turns NOT_SERVING, new calls are refused, calls in flight get
--grace seconds to finish, then the server exits with 0. One that comes while the
server starts (the model stack imports, the models load) stops it at once, also with 0
and one line saying so.
"""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupInterrupted(Exception):
    """SIGTERM or SIGINT arrived before the server was serving."""


def _interrupt_startup(signum: int, frame: object) -> None:
    raise StartupInterrupted(signal.Signals(signum).name)


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
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"interface to listen on, also for /metrics (default: {DEFAULT_HOST}, loopback "
        "only; 0.0.0.0 or [::] exposes the server on every interface)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on, 0 = any free port (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1..."
    )
    add_backend_option(parser)
    parser.add_argument(
        "--max-batch",
        type=int,
        default=BATCHER.max_batch,
        help=f"most images per forward pass; 1 turns batching off (default: {BATCHER.max_batch})",
    )
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=BATCHER.max_delay_ms,
        help="longest a batch waits for more requests after its first "
        f"(default: {BATCHER.max_delay_ms:g})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=BATCHER.max_queue,
        help=f"requests waiting per model before RESOURCE_EXHAUSTED (default: {BATCHER.max_queue})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=BATCHER.max_pixels,
        help=f"largest image, width x height pixels (default: {BATCHER.max_pixels})",
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
        default=SERVER.stream_window,
        help=f"requests of one stream processed at a time (default: {SERVER.stream_window})",
    )
    parser.add_argument(
        "--max-message-mb",
        type=int,
        default=SERVER.max_message_mb,
        help=f"largest message in MiB (default: {SERVER.max_message_mb})",
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
        default=SERVER.grace_s,
        help=f"seconds calls in flight get to finish on shutdown (default: {SERVER.grace_s:g})",
    )

    security = parser.add_argument_group("security (default: plaintext, no token)")
    security.add_argument(
        "--tls-cert", type=Path, default=None, help="PEM certificate chain: serve TLS only"
    )
    security.add_argument(
        "--tls-key", type=Path, default=None, help="PEM private key of --tls-cert"
    )
    security.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="PEM CA: require client certificates signed by it (needs --tls-cert)",
    )
    security.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="file holding a token every call must carry as 'authorization: Bearer <token>' "
        "(health checks excepted)",
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


def run(args: argparse.Namespace) -> NoReturn:
    """Serve until SIGTERM/SIGINT, then END THE PROCESS with 0 (also when the signal
    comes while the server starts); see :func:`_exit_now`.

    Raises:
        ValueError, FileNotFoundError: bad options or model folder, before serving.
    """
    previous = {sig: signal.signal(sig, _interrupt_startup) for sig in STOP_SIGNALS}
    try:
        code = _run(args)
    except StartupInterrupted as err:
        print(f"stopped by {err} while starting, before serving", flush=True)
        code = 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    """Exit at once, without the interpreter's teardown: the server has stopped (every
    call answered, threads joined) or never started, and all that is left is freeing
    the modules, which took 1-3 s with torch loaded on a small machine (``import torch``
    alone: about 1 s) and held up a supervisor waiting for the exit after SIGTERM."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from detector.predict import WEIGHTS_DIR
    from server.app import serve

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
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_token_file=args.auth_token_file,
    )
    models = args.models if args.models is not None else WEIGHTS_DIR
    return asyncio.run(
        serve(args.host, args.port, models, args.default, args.device, config, args.backend)
    )
