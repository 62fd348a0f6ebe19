"""A local S3-compatible server (moto's, in a thread on 127.0.0.1) with a fresh bucket."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def env(self, prefix: str) -> dict[str, str]:
        """Environment for a process that keeps its artifacts under s3://bucket/prefix."""
        return {**CREDENTIALS, "SAGETRAIN_ARTIFACTS_URL": f"s3://{self.bucket}/{prefix}",
                "SAGETRAIN_S3_ENDPOINT_URL": self.endpoint_url}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # moto[server] is in the dev extra
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"moto[server] is required when CI=true: {exc}")
        pytest.skip(f"moto[server] is not installed: {exc}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(f"http://{host}:{port}", f"sagetrain-{secrets.token_hex(4)}")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in CREDENTIALS.items():
            mp.setenv(name, value)  # what boto3 reads, in this process
        s3.client().create_bucket(Bucket=s3.bucket)
        try:
            yield s3
        finally:
            server.stop()
