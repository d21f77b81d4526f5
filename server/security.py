"""Who may call the server: TLS credentials and a bearer token.

* TLS: the server presents ``tls_cert`` (PEM chain) and ``tls_key``; with
  ``tls_client_ca`` it also requires a client certificate signed by that CA.
* Token: with a token, every call must carry ``authorization: Bearer <token>`` in its
  metadata (compared in constant time), else it ends UNAUTHENTICATED before its handler
  runs. The health service (``grpc.health.v1.Health``) stays open, for probes; server
  reflection follows the same rule as the detector service.

The client's side (:func:`channel_credentials`, :func:`bearer_metadata`) lives here too,
free of torch like the client.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

AUTHORIZATION = "authorization"  # call metadata key of the token (lower case, as gRPC sends it)
BEARER = "Bearer "
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)  # callable without the token


def read_token_file(path: str | Path) -> str:
    """The token in a file: its text, surrounding whitespace removed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no token, or one with characters a header cannot carry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist")
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    if not token.isascii() or not token.isprintable():
        raise ValueError(f"token file {path}: the token must be printable ASCII on one line")
    return token


def read_pem(path: str | Path, what: str) -> bytes:
    """The bytes of a PEM file; ``what`` names it in the error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return path.read_bytes()


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS credentials of a server; with ``client_ca``, clients must present a
    certificate signed by it."""
    pair = (read_pem(key, "--tls-key"), read_pem(cert, "--tls-cert"))
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=read_pem(client_ca, "--tls-client-ca"), require_client_auth=True
    )


def channel_credentials(
    ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials of a client: trust ``ca`` (None: the system's roots) and present
    the client certificate ``cert`` with ``key`` when given (both or neither)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca is None else read_pem(ca, "--tls-ca"),
        private_key=None if key is None else read_pem(key, "--tls-key"),
        certificate_chain=None if cert is None else read_pem(cert, "--tls-cert"),
    )


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (empty without one)."""
    return () if token is None else ((AUTHORIZATION, f"{BEARER}{token}"),)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Ends every call without ``authorization: Bearer <token>`` UNAUTHENTICATED, except
    calls of ``OPEN_METHOD_PREFIXES``."""

    def __init__(self, token: str):
        self._expected = f"{BEARER}{token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if self._authorized(details.invocation_metadata or ()):
            return handler
        return _refusal(handler)

    def _authorized(self, metadata) -> bool:
        given = b""
        for key, value in metadata:
            if key == AUTHORIZATION:
                given = value.encode() if isinstance(value, str) else bytes(value)
        return hmac.compare_digest(given, self._expected)


REFUSAL = "this server requires a token: call metadata 'authorization: Bearer <token>'"


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that ends the call UNAUTHENTICATED (without
    parsing its request: the bytes stay bytes)."""

    async def unary_response(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    async def stream_response(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
        yield  # never reached: makes this an async generator, as a streaming handler is

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_response)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary_response)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream_response)
    return grpc.unary_unary_rpc_method_handler(unary_response)
