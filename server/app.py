"""The gRPC server: models, batchers, servicer, health, reflection, metrics and shutdown.

    server, port = await create_server("127.0.0.1:0", repository, ServerConfig())
    try:
        ...
    finally:
        await server.stop(grace=5)

:func:`serve` runs a server until SIGTERM or SIGINT: health turns ``NOT_SERVING``, new
calls are refused, calls in flight get ``grace_s`` seconds to finish, then it returns 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proto.detector.v1 import detector_pb2 as pb
from server.batcher import Batcher
from server.config import ServerConfig
from server.images import DecodeBudget, silence_codec_logs
from server.metrics import ServerMetrics
from server.repository import ModelRepository
from server.security import TokenAuthInterceptor, read_token_file, server_credentials
from server.servicer import DetectorServicer, add_to_server

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DetectorService"].full_name
OVERALL_HEALTH = ""  # the health service's name for the server as a whole
MIB = 1 << 20


class DetectorServer:
    """A running server; :func:`create_server` builds and starts one."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        batchers: dict[str, Batcher],
        servicer: DetectorServicer,
        decode_pool: ThreadPoolExecutor,
        decode_budget: DecodeBudget,
        metrics: ServerMetrics,
        metrics_port: int | None,
    ):
        self.grpc_server = grpc_server
        self.health = health_servicer
        self.batchers = batchers
        self.servicer = servicer
        self.metrics = metrics
        self.metrics_port = metrics_port  # actual port of /metrics, or None
        self._decode_pool = decode_pool
        self._decode_budget = decode_budget
        self._stopped = False

    async def stop(self, grace: float | None) -> None:
        """Shut down: NOT_SERVING, refuse new calls, stop reading streams (each answers
        the frames it read, then ends with UNAVAILABLE), give calls in flight ``grace``
        seconds (None: cancel them now), then stop the batchers, threads and metrics
        endpoint. Returns as soon as the last call has finished."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        self.servicer.begin_shutdown()
        await self.grpc_server.stop(grace)
        for batcher in self.batchers.values():
            await batcher.close()
        self._decode_pool.shutdown(wait=True)
        self._decode_budget.shutdown()
        self.metrics.stop_http()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(
    address: str, repository: ModelRepository, config: ServerConfig | None = None
) -> tuple[DetectorServer, int]:
    """Build and start a server for ``repository`` on ``address`` (``host:port``, port 0 =
    any free port). Returns the server and the port it listens on; health is SERVING.

    With ``config.tls_cert``/``tls_key`` it speaks TLS only (``tls_client_ca``: clients
    must present a certificate); with ``config.auth_token_file`` every call but the
    health service's needs the token (see :mod:`server.security`).

    Must run on the event loop that will serve the calls.
    """
    config = config or ServerConfig()
    silence_codec_logs()  # bad images are answered INVALID_ARGUMENT, not logged per call
    interceptors = []
    if config.auth_token_file is not None:
        interceptors.append(TokenAuthInterceptor(read_token_file(config.auth_token_file)))
    credentials = None
    if config.tls_cert is not None:
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    metrics = ServerMetrics()
    decode_pool = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="decode")
    decode_budget = DecodeBudget(config.decode_budget_pixels)
    batchers = {
        model.name: Batcher(
            model.detector,
            config.batcher,
            decode_pool,
            metrics.observer(model.name),
            decode_budget,
        )
        for model in repository
    }
    max_bytes = config.max_message_mb * MIB
    grpc_server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ],
    )
    servicer = DetectorServicer(
        repository, batchers, metrics, config.stream_window, config.batcher.max_queue
    )
    add_to_server(servicer, grpc_server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )
    if credentials is None:
        port = grpc_server.add_insecure_port(address)
    else:
        port = grpc_server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    metrics_port = None
    if config.metrics_port is not None:
        metrics_port = metrics.serve_http(config.metrics_host, config.metrics_port)
    for batcher in batchers.values():
        batcher.start()
    await grpc_server.start()
    for name in (OVERALL_HEALTH, SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server = DetectorServer(
        grpc_server,
        health_servicer,
        batchers,
        servicer,
        decode_pool,
        decode_budget,
        metrics,
        metrics_port,
    )
    return server, port


async def serve(
    host: str,
    port: int,
    models: Path,
    default: str | None,
    device: str,
    config: ServerConfig,
    backend: str = "torch",
) -> int:
    """Load the models of ``models``, serve them until SIGTERM/SIGINT, shut down
    gracefully; returns the exit code (0). Prints the address it listens on.

    A signal while the models load is the caller's to handle (``detector serve``
    installs a handler that stops at once); from then on it stops the server gracefully.
    """
    print(f"loading models from {models}", flush=True)
    repository = ModelRepository.from_folder(models, default, device, backend)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # from here on a signal stops gracefully
        loop.add_signal_handler(sig, stop.set)
    server, bound = await create_server(f"{host}:{port}", repository, config)
    names = ", ".join(
        f"{m.name} ({m.detector.kind}){' [default]' if m.name == repository.default else ''}"
        for m in repository
    )
    security = ", ".join(
        word
        for word, on in (
            ("TLS", config.tls_cert is not None),
            ("client certificates required", config.tls_client_ca is not None),
            ("token required", config.auth_token_file is not None),
        )
        if on
    )
    print(f"serving {names} on {host}:{bound} ({security or 'plaintext, no token'})", flush=True)
    if server.metrics_port is not None:
        metrics_host = config.metrics_host
        if ":" in metrics_host:  # an IPv6 address
            metrics_host = f"[{metrics_host}]"
        print(f"metrics on http://{metrics_host}:{server.metrics_port}/metrics", flush=True)
    try:
        await stop.wait()
        print(f"shutting down: finishing calls in flight (grace {config.grace_s:g} s)", flush=True)
    finally:
        await server.stop(config.grace_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    print("stopped", flush=True)
    return 0
