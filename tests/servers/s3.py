"""A real S3 endpoint for tests: moto's ``ThreadedMotoServer`` on 127.0.0.1, a free port, in a thread.

Real boto3 talks to it over real sockets (SigV4, path-style addressing), so the S3 storage manager is tested
through the same client, retries and error parsing it meets in production. What moto does not reproduce
(see ../shared/anchors/test-servers.md §2): signatures are not checked, lifecycle rules never run.
``reset()`` wipes every bucket (``POST /moto-api/reset``); the session fixture calls it around each test.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import httpx

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret-key",
               "region_name": "us-east-1"}


class S3Server:
    """Start with ``with S3Server() as server``; ``server.url`` is the endpoint, ``server.client()`` a boto3 client."""

    def __init__(self) -> None:
        self.url = ""
        self._server: Any = None

    def __enter__(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # it logs every request at INFO
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session(**CREDENTIALS).client(
            "s3", endpoint_url=self.url,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    def manager_options(self) -> dict[str, Any]:
        """Keyword arguments of ``S3StorageManager`` for this server (bucket and prefix excepted)."""
        return {"endpoint_url": self.url, "region": CREDENTIALS["region_name"],
                "aws_access_key_id": CREDENTIALS["aws_access_key_id"],
                "aws_secret_access_key": CREDENTIALS["aws_secret_access_key"], "addressing_style": "path"}
