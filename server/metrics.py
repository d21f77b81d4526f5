"""Prometheus metrics of one server, in its own registry (several servers may share a process).

Exposed names (``model`` and ``method`` are labels):

- ``detector_requests_total{method, code}``: RPCs by method and final status code;
- ``detector_request_seconds{method}``: RPC latency;
- ``detector_decode_seconds{model}``: decoding and letterboxing one image;
- ``detector_queue_seconds{model}``: from queued (decoded) to the start of its batch;
- ``detector_inference_seconds{model}``: one batch's forward and post-processing;
- ``detector_batch_size{model}``: images per batch;
- ``detector_queue_depth{model}``: requests admitted and not yet running;
- ``detector_dropped_total{model, reason}``: requests not run (queue_full, deadline,
  cancelled).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The metrics of one server and, optionally, the HTTP endpoint that exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "detector_requests", "RPCs by method and status code", ["method", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "detector_request_seconds",
            "RPC latency",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "detector_decode_seconds",
            "decoding and letterboxing one image",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "detector_queue_seconds",
            "time from queued to the start of the batch",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "detector_inference_seconds",
            "one batch: forward and post-processing",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "detector_batch_size",
            "images per batch",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "detector_queue_depth", "requests admitted and not yet running", ["model"], registry=r
        )
        self.dropped = Counter(
            "detector_dropped", "requests not run, by reason", ["model", "reason"], registry=r
        )
        self._http: WSGIServer | None = None

    def observer(self, model: str) -> ModelObserver:
        """A :class:`~server.batcher.BatchObserver` that records under ``model``."""
        return ModelObserver(self, model)

    def request(self, method: str, code: str, seconds: float) -> None:
        """Count one finished RPC."""
        self.requests.labels(method, code).inc()
        self.request_seconds.labels(method).observe(seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Expose ``/metrics`` over HTTP on ``host:port`` (0 = any free port); returns the port."""
        self._http, _ = start_http_server(port, host, registry=self.registry)
        return int(self._http.server_address[1])

    def stop_http(self) -> None:
        """Stop the ``/metrics`` endpoint, in the background: ``WSGIServer.shutdown``
        waits for its serving loop's next poll (every 0.5 s), which delayed the server's
        exit by 0.3-0.5 s. The port is free once that thread has run."""
        if self._http is None:
            return
        http, self._http = self._http, None

        def stop() -> None:
            http.shutdown()
            http.server_close()

        threading.Thread(target=stop, name="metrics-stop", daemon=True).start()


class ModelObserver:
    """Batcher measurements of one model (implements ``server.batcher.BatchObserver``)."""

    def __init__(self, metrics: ServerMetrics, model: str):
        self._decode = metrics.decode_seconds.labels(model)
        self._queue = metrics.queue_seconds.labels(model)
        self._inference = metrics.inference_seconds.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._depth = metrics.queue_depth.labels(model)
        self._dropped = metrics.dropped
        self._model = model

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def dropped(self, reason: str) -> None:
        self._dropped.labels(self._model, reason).inc()

    def decoded(self, seconds: float) -> None:
        self._decode.observe(seconds)

    def batch(self, size: int, inference_s: float, queue_s: Sequence[float]) -> None:
        self._batch.observe(size)
        self._inference.observe(inference_s)
        for seconds in queue_s:
            self._queue.observe(seconds)
