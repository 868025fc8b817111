"""The gateway's listener with mTLS, and `llmserve chat` connecting with certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.processes import DaemonProcess, RedisServer
from llmserve.v1 import gateway_pb2, gateway_pb2_grpc
from tests.gateway.gateway_harness import api_keys


def issue(
    directory: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate (a CA when `issuer` is None, else a leaf for 127.0.0.1) written as
    <name>.crt and <name>.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_mtls_listener_and_chat_client(
    tmp_path: Path, redis_server: RedisServer, runtimes: list[DaemonProcess]
) -> None:
    ca = issue(tmp_path, "ca", None)
    issue(tmp_path, "server", ca)
    issue(tmp_path, "client", ca)
    runtime = runtimes[0]
    keys_file, keys = api_keys(redis_server)
    gateway = DaemonProcess(
        "gateway",
        [
            "--redis", redis_server.url,
            "--runtime", runtime.address,
            "--api-keys-file", str(keys_file),
            "--tls-cert", str(tmp_path / "server.crt"),
            "--tls-key", str(tmp_path / "server.key"),
            "--tls-client-ca", str(tmp_path / "ca.crt"),
            "--log-format", "text",
        ],
        log_path=tmp_path / "gateway.log",
    ).start()  # fmt: skip
    tls = [f"--gateway-tls-{part}" for part in ("ca", "cert", "key")]
    files = [str(tmp_path / f) for f in ("ca.crt", "client.crt", "client.key")]
    try:
        credentials = grpc.ssl_channel_credentials(
            *((tmp_path / f).read_bytes() for f in ("ca.crt", "client.key", "client.crt"))
        )
        deadline = time.monotonic() + 30
        while True:
            with grpc.secure_channel(gateway.address, credentials) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
            assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            time.sleep(0.1)
        env = {**os.environ, "LLMSERVE_API_KEY": keys["alice"]}
        command = [sys.executable, "-m", "llmserve", "chat", "--gateway", gateway.address]
        with_certs = [*command, *(a for pair in zip(tls, files, strict=True) for a in pair)]
        out = subprocess.run(
            [*with_certs, "--temperature", "0", "--max-tokens", "16"],
            input="What is the capital of France?\n",
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        created, reply = out.stdout.splitlines()
        # The reply printed is the one stored in the session.
        with grpc.secure_channel(gateway.address, credentials) as channel:
            session = (
                gateway_pb2_grpc.GatewayStub(channel)
                .GetSession(
                    gateway_pb2.GetSessionRequest(session_id=created.split()[1]),
                    metadata=[("authorization", f"Bearer {keys['alice']}")],
                    timeout=10,
                )
                .session
            )
        assert [m.content for m in session.messages] == ["What is the capital of France?", reply]
        # Without a client certificate the handshake fails.
        no_cert = subprocess.run(
            [*command, "--gateway-tls-ca", files[0]], input="hi\n", capture_output=True, text=True,
            timeout=60, env=env,
        )  # fmt: skip
        assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr
    finally:
        gateway.terminate()
