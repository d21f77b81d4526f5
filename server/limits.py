"""The bounds of a request's strings and repeated fields, checked before any work.

The bounds themselves are in :mod:`server.config` (one place, documented in
``detector.proto``); a request beyond one raises ``ValueError`` (INVALID_ARGUMENT) whose
message quotes at most a short prefix of the offending value.
"""

from __future__ import annotations

from proto.detector.v1 import detector_pb2 as pb
from server.config import (
    MAX_CLASS_FILTER_ENTRIES,
    MAX_CLASS_NAME_CHARS,
    MAX_MODEL_NAME_CHARS,
    MAX_REQUEST_ID_CHARS,
    quoted,
)


def check_detect_request(request: pb.DetectRequest) -> None:
    """Refuse a ``DetectRequest`` with a string or repeated field beyond its bound.

    Raises:
        ValueError: the field, its size and its bound (and a short prefix of the value).
    """
    _check_chars("model", request.model, MAX_MODEL_NAME_CHARS)
    _check_chars("request_id", request.request_id, MAX_REQUEST_ID_CHARS)
    for field in ("class_ids", "class_names"):
        count = len(getattr(request, field))
        if count > MAX_CLASS_FILTER_ENTRIES:
            raise ValueError(
                f"{field} has {count} entries; at most {MAX_CLASS_FILTER_ENTRIES} are accepted"
            )
    for index, name in enumerate(request.class_names):
        _check_chars(f"class_names[{index}]", name, MAX_CLASS_NAME_CHARS)


def _check_chars(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise ValueError(
            f"{field} {quoted(value)} is too long: at most {limit} characters are accepted"
        )
