"""A local S3-compatible server for tests: moto in server mode on loopback, started by the tests.

One server per test session (`s3_server` fixture in conftest.py), on a free port of 127.0.0.1
only; tests make their own buckets (`S3Server.bucket`), so they do not see each other's objects.
The environment gets dummy credentials and the endpoint, the way a user points the tools at an
S3-compatible store (MinIO, Ceph): boto3/s3fs read AWS_ENDPOINT_URL, GDAL reads AWS_S3_ENDPOINT,
AWS_HTTPS and AWS_VIRTUAL_HOSTING.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import uuid


@dataclasses.dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    server: object  # moto.server.ThreadedMotoServer

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def bucket(self, prefix: str = "test") -> str:
        """A new, empty bucket with a unique name; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def environment(self) -> dict[str, str]:
        """Variables a subprocess (a `tcmoa` CLI run, a Ray worker) needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
            # GDAL's /vsis3/ takes the endpoint without the scheme, and plain HTTP, path-style
            "AWS_S3_ENDPOINT": self.host_port, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server() -> S3Server:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(endpoint=f"http://127.0.0.1:{port}", server=server)
