"""moto's S3 server in a child process, for tests and benches of the S3 store (no AWS).

It serves moto's own WSGI application over real HTTP on loopback, with one change: requests
are handled one at a time. moto checks an S3 condition (If-None-Match, If-Match) and then
writes in two steps, so two threaded requests could both pass the check; real S3 decides
conditional writes atomically, and serializing requests restores that guarantee.

Run as `python -m llmserve.testing.s3_server PORT`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from llmserve.processes import REPO_ROOT, free_port

# Credentials moto accepts; real ones must never be needed.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            return list(app(environ, start_response))

    server = make_server(
        "127.0.0.1", port, serialized, threaded=True, request_handler=MotoRequestHandler
    )
    server.serve_forever()


class MotoS3Server:
    """`python -m llmserve.testing.s3_server` on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoS3Server:
        import urllib.request

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.testing.s3_server", str(self.port)],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **TEST_CREDENTIALS},
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto S3 server exited with status {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"moto S3 server not answering on {self.endpoint_url}")

    def client(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint_url)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    """Pytest fixture (import it into a conftest): moto's S3 server in a child process, with
    its credentials in os.environ for the session so that boto3 clients reach it."""
    saved = {k: os.environ.get(k) for k in TEST_CREDENTIALS}
    os.environ.update(TEST_CREDENTIALS)
    server = MotoS3Server().start()
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


if __name__ == "__main__":
    serve(int(sys.argv[1]))
