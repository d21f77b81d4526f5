"""Who may call the server: loopback by default, a bearer token, TLS and client
certificates, through real channels (certificates made by the ``openssl`` command)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_fixtures import random_images, run, serving

from detector import cli
from detector.commands import serve as serve_command
from server.app import create_server
from server.client import DetectorClient, RemoteError
from server.config import DEFAULT_HOST, ServerConfig

Code = grpc.StatusCode
TOKEN = "s3cret-token"
CALL_S = 10.0  # generous timeout of one call
IMAGE = random_images(1, seed=2)[0]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(f"{TOKEN}\n")
    return path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all
    signed by the CA: ca.pem, server.pem/.key, client.pem/.key."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make test certificates")
    folder = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test ca", cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip
    return folder


def _models(client: DetectorClient) -> list[str] | Code:
    try:
        return [m.name for m in client.list_models()]
    except RemoteError as err:
        return err.code


def test_defaults_listen_on_loopback_and_the_default_client_address_works(repository):
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    assert parser.parse_args([]).host == DEFAULT_HOST == "localhost"
    assert "0.0.0.0 or [::] exposes" in " ".join(parser.format_help().split())

    async def main():
        server, port = await create_server("localhost:0", repository, ServerConfig())
        try:
            with DetectorClient(f"localhost:{port}", timeout=CALL_S) as client:
                return await asyncio.to_thread(_models, client)
        finally:
            await server.stop(0)

    assert run(main()) == ["faces", "m", "pets"]


def test_token_is_required_except_for_health(repository, token_file):
    def calls(address):
        with (
            DetectorClient(address, timeout=CALL_S) as anonymous,
            DetectorClient(address, timeout=CALL_S, auth_token="wrong") as wrong,
            DetectorClient(address, timeout=CALL_S, auth_token=TOKEN) as trusted,
        ):
            refused = [_models(anonymous), _models(wrong)]
            with pytest.raises(RemoteError) as stream_refused:
                list(anonymous.stream_detect([IMAGE]))
            reflection = reflection_pb2_grpc.ServerReflectionStub(anonymous._channel)
            with pytest.raises(grpc.RpcError) as reflection_refused:
                list(
                    reflection.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                        timeout=CALL_S,
                    )
                )
            reflection = reflection_pb2_grpc.ServerReflectionStub(trusted._channel)
            listed = next(
                reflection.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                    timeout=CALL_S,
                    metadata=(("authorization", f"Bearer {TOKEN}"),),
                )
            )
            return (
                refused,
                stream_refused.value.code,
                reflection_refused.value.code(),
                bool(listed.list_services_response.service),
                anonymous.health(),
                _models(trusted),
                len(trusted.detect(IMAGE, score_threshold=0.0)),
                len(list(trusted.stream_detect([IMAGE, IMAGE]))),
            )

    async def main():
        async with serving(repository, auth_token_file=token_file) as (_, address):
            return await asyncio.to_thread(calls, address)

    refused, stream, reflection, listed, health, models, detected, streamed = run(main())
    assert refused == [Code.UNAUTHENTICATED, Code.UNAUTHENTICATED]
    assert stream == reflection == Code.UNAUTHENTICATED
    assert listed
    assert health == "SERVING"
    assert models == ["faces", "m", "pets"]
    assert detected > 0 and streamed == 2


def test_tls_server_answers_tls_clients_only(repository, pki):
    def calls(address):
        with (
            DetectorClient(address, timeout=CALL_S, tls_ca=pki / "ca.pem") as secure,
            DetectorClient(address, timeout=CALL_S) as plaintext,
            DetectorClient(address, timeout=CALL_S, tls=True) as untrusted_ca,
        ):
            return _models(secure), _models(plaintext), _models(untrusted_ca)

    async def main():
        config = {"tls_cert": pki / "server.pem", "tls_key": pki / "server.key"}
        async with serving(repository, **config) as (_, address):
            return await asyncio.to_thread(calls, address)

    secure, plaintext, untrusted = run(main())
    assert secure == ["faces", "m", "pets"]
    assert plaintext == Code.UNAVAILABLE
    assert untrusted == Code.UNAVAILABLE  # the system's roots do not trust the test CA


def test_client_certificates_are_required_with_tls_client_ca(repository, pki, token_file, capsys):
    def calls(address):
        with (
            DetectorClient(address, timeout=CALL_S, tls_ca=pki / "ca.pem") as no_cert,
            DetectorClient(
                address,
                timeout=CALL_S,
                tls_ca=pki / "ca.pem",
                tls_cert=pki / "client.pem",
                tls_key=pki / "client.key",
                auth_token=TOKEN,
            ) as with_cert,
        ):
            return _models(no_cert), _models(with_cert)

    async def main():
        config = {
            "tls_cert": pki / "server.pem",
            "tls_key": pki / "server.key",
            "tls_client_ca": pki / "ca.pem",
            "auth_token_file": token_file,
        }
        async with serving(repository, **config) as (_, address):
            outcomes = await asyncio.to_thread(calls, address)
            command = ["client", "models", "--server", address, "--tls-ca", str(pki / "ca.pem")]
            command += ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
            codes = [
                await asyncio.to_thread(cli.main, command),
                await asyncio.to_thread(cli.main, [*command, "--auth-token-file", str(token_file)]),
            ]
            return outcomes, codes

    (no_cert, with_cert), codes = run(main())
    assert no_cert == Code.UNAVAILABLE
    assert with_cert == ["faces", "m", "pets"]
    assert codes == [1, 0]
    printed = capsys.readouterr()
    assert "UNAUTHENTICATED" in printed.err and "pets: grid" in printed.out


def test_half_a_tls_pair_is_refused():
    with pytest.raises(ValueError, match="--tls-cert and --tls-key"):
        ServerConfig(tls_cert=Path("a.pem"))
    with pytest.raises(ValueError, match="--tls-client-ca needs TLS"):
        ServerConfig(tls_client_ca=Path("ca.pem"))
    with pytest.raises(ValueError, match="--tls-cert and --tls-key"):
        DetectorClient("localhost:1", tls_cert="a.pem")
