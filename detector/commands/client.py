"""``detector client``: call a running detector server (``detector serve``).

detector client detect --server localhost:50051 a.jpg b.png   # one JSON line per image
detector client models --server localhost:50051               # the served models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.convert import ModelInfo

DEFAULT_SERVER = "localhost:50051"
DEFAULT_TIMEOUT_S = 30.0
HASH_SHOWN = 12  # leading hex digits of a model's SHA-256 shown in the table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``client`` (with ``detect`` and ``models``) to the ``detector`` command."""
    parser = subparsers.add_parser(
        "client",
        help="call a detector server: detect objects in images, list its models",
        description="Call a running detector server (see 'detector serve').",
    )
    sub = parser.add_subparsers(dest="client_command", metavar="ACTION", required=True)

    detect = sub.add_parser(
        "detect",
        help="detect objects in image files on the server",
        description="Send image files (sent as their encoded bytes) in one DetectBatch "
        "call and print one JSON line per image: its path, image_size [height, width] and "
        "detections (box [x_min, y_min, x_max, y_max] in the image's pixels, score, "
        "class_id, label, and landmarks [[x, y], ...] when the model has them).",
    )
    _add_server_arguments(detect)
    detect.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    detect.add_argument("--model", default="", help="model name (default: the server's default)")
    detect.add_argument(
        "--score-threshold", type=float, default=None, help="in [0, 1] (default: the model's)"
    )
    detect.add_argument(
        "--iou-threshold", type=float, default=None, help="NMS IoU in [0, 1] (default: the model's)"
    )
    detect.add_argument(
        "--max-detections", type=int, default=None, help="per image (default: the model's)"
    )
    detect.add_argument(
        "--classes", nargs="+", default=None, help="keep only these class ids or names"
    )
    detect.add_argument(
        "--merge-iou",
        type=float,
        default=None,
        help="merge-NMS overlap in [0, 1], 0 = off (default: the model's)",
    )
    detect.set_defaults(func=run_detect)

    models = sub.add_parser(
        "models", help="list the server's models", description="List the server's models."
    )
    _add_server_arguments(models)
    models.add_argument("--json", action="store_true", help="one JSON line per model")
    models.set_defaults(func=run_models)


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"HOST:PORT (default: {DEFAULT_SERVER})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per call (default: {DEFAULT_TIMEOUT_S:g})",
    )
    add_connection_arguments(parser)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The TLS and token options of a client of a detector server."""
    group = parser.add_argument_group("connection security (default: plaintext, no token)")
    group.add_argument(
        "--tls", action="store_true", help="connect over TLS (implied by --tls-ca, --tls-cert)"
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        help="PEM CA that signed the server's certificate (default with --tls: system roots)",
    )
    group.add_argument(
        "--tls-cert", type=Path, default=None, help="PEM client certificate, with --tls-key"
    )
    group.add_argument("--tls-key", type=Path, default=None, help="PEM key of --tls-cert")
    group.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="file holding the server's token (sent as 'authorization: Bearer <token>')",
    )


def connection_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``DetectorClient`` that :func:`add_connection_arguments`
    options give.

    Raises:
        FileNotFoundError, ValueError: an unreadable token file, half a client certificate.
    """
    from server.security import read_token_file

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    token = None if args.auth_token_file is None else read_token_file(args.auth_token_file)
    return {
        "tls": args.tls or None,
        "tls_ca": args.tls_ca,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "auth_token": token,
    }


def run_detect(args: argparse.Namespace) -> int:
    from server.client import DetectorClient, RemoteError

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image files: {', '.join(missing)}")
    classes = [int(c) if c.isdigit() else c for c in args.classes] if args.classes else None
    with DetectorClient(args.server, timeout=args.timeout, **connection_options(args)) as client:
        try:
            results = client.detect_batch(
                args.images,
                model=args.model,
                score_threshold=args.score_threshold,
                iou_threshold=args.iou_threshold,
                max_detections=args.max_detections,
                classes=classes,
                merge_iou=args.merge_iou,
            )
        except RemoteError as err:
            print(f"error: {args.server}: {err}", file=sys.stderr)
            return 1
    for path, detections in zip(args.images, results, strict=True):
        print(json.dumps({"image": str(path), **detections.to_dict()}))
    return 0


def run_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from server.client import DetectorClient, RemoteError

    with DetectorClient(args.server, timeout=args.timeout, **connection_options(args)) as client:
        try:
            models = client.list_models()
        except RemoteError as err:
            print(f"error: {args.server}: {err}", file=sys.stderr)
            return 1
    for m in models:
        if args.json:
            print(json.dumps(asdict(m)))
            continue
        default = " (default)" if m.is_default else ""
        print(
            f"{m.name}{default}: {m.kind}, input {m.input_size}, {len(m.class_names)} classes "
            f"{list(m.class_names)}, {_landmarks_text(m)}, "
            f"sha256 {m.sha256[:HASH_SHOWN] or '-'}, score >= {m.default_score_threshold:g}, "
            f"iou {m.default_iou_threshold:g}, max {m.default_max_detections}, "
            f"merge {m.default_merge_iou:g}"
        )
    return 0


def _landmarks_text(model: ModelInfo) -> str:
    """``"0 landmarks"``, or ``"5 landmarks [names] skeleton [[0, 1], ...]"``."""
    text = f"{model.num_landmarks} landmarks"
    if model.landmark_names:
        text += f" {list(model.landmark_names)}"
    if model.skeleton:
        text += f" skeleton {[list(pair) for pair in model.skeleton]}"
    return text
