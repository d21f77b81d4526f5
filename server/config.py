"""The server's settings: torch- and grpc-free, so ``detector serve --help`` shows their
defaults without loading the model stack."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 50051
DEFAULT_HOST = "localhost"  # loopback only; 0.0.0.0 or [::] exposes the server
DEFAULT_MAX_PIXELS = 8192 * 8192  # width * height above which an image is refused

# Bounds of a request's strings and repeated fields (detector.proto documents them); a
# request beyond one is refused with INVALID_ARGUMENT before any work is done.
MAX_MODEL_NAME_CHARS = 128  # DetectRequest.model
MAX_REQUEST_ID_CHARS = 128  # DetectRequest.request_id
MAX_CLASS_FILTER_ENTRIES = 1024  # DetectRequest.class_ids, and class_names, each
MAX_CLASS_NAME_CHARS = 128  # each of DetectRequest.class_names
MAX_ECHOED_CHARS = 40  # a request value quoted in an error message is cut to this
MAX_STATUS_MESSAGE_CHARS = 2048  # a status message is cut to this, whatever it quotes


def quoted(text: str, limit: int = MAX_ECHOED_CHARS) -> str:
    """How a request's string is quoted in an error message: ``repr(text)`` if it has at
    most ``limit`` characters, else the ``repr`` of its first ``limit`` followed by
    ``…(N chars)``."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)} chars)"


@dataclass(frozen=True)
class BatcherConfig:
    """Settings of one model's batcher."""

    max_batch: int = 8  # most images in one forward pass
    max_delay_ms: float = 5.0  # a batch closes at most this long after its first request
    max_queue: int = 64  # requests admitted and not yet running; more -> QueueFullError
    max_pixels: int = DEFAULT_MAX_PIXELS  # width * height above which an image is refused

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.max_delay_ms >= 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {self.max_delay_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server (the models come separately, as a ModelRepository)."""

    batcher: BatcherConfig = field(default_factory=BatcherConfig)  # one batcher per model
    decode_workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # shared pool
    # Pixels of large images (above 2048x2048) decoded at once, all models together;
    # more wait their turn (small images never wait). One image at the pixel limit fits.
    decode_budget_pixels: int = DEFAULT_MAX_PIXELS
    stream_window: int = 16  # requests of one StreamDetect processed at a time
    max_message_mb: int = 64  # largest request or response message
    metrics_port: int | None = None  # HTTP port of /metrics; None = off, 0 = any free port
    metrics_host: str = "127.0.0.1"  # interface of the /metrics endpoint (plain HTTP)
    grace_s: float = 10.0  # time calls in flight get to finish on shutdown
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key the server speaks TLS
    tls_key: Path | None = None  # PEM private key of tls_cert
    tls_client_ca: Path | None = None  # PEM CA: clients must present a certificate it signed
    auth_token_file: Path | None = None  # calls must carry "authorization: Bearer <its token>"

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs TLS: give --tls-cert and --tls-key too")
        for name in ("decode_workers", "decode_budget_pixels", "stream_window", "max_message_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")
