"""Why a request was not answered with detections (free of gRPC).

The servicer maps each to a status code (``server.servicer.status_of``); a bad image is
:class:`server.images.ImageError`, a bad setting a plain ``ValueError``.
"""

from __future__ import annotations


class BatcherError(Exception):
    """Base of the errors a :class:`Batcher` raises for a request."""


class QueueFullError(BatcherError):
    """The model's queue is full; the request was not admitted (retry later)."""


class DeadlineExpiredError(BatcherError):
    """The request's deadline passed before it ran; it was not run."""


class BatcherClosedError(BatcherError):
    """The batcher is shutting down and admits no more requests."""


class InferenceError(BatcherError):
    """The model failed on this request's image, even when run alone."""


class ModelNotFoundError(LookupError):
    """No served model has the requested name."""
