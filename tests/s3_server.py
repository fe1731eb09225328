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


class Relay:
    """A TCP relay on 127.0.0.1 in front of the S3 server, for what a real network does to a
    client: it counts the requests (by method, from their first lines) and the bytes each way,
    and it can be cut (`stop`, or by itself when a request line holds `cut_on`: then only half of
    that request goes through), closing every connection and the port, as when an endpoint stops
    answering mid-write."""

    def __init__(self, endpoint: str, cut_on: bytes | None = None):
        import threading

        host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_on = cut_on
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list = []
        self.requests: dict[str, int] = {}  # method -> count
        self.lines: list[str] = []  # request lines, in order
        self.sent = self.received = 0  # bytes client -> server, server -> client
        self.cut = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # stopped
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.connections += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    _METHODS = (b"GET ", b"PUT ", b"HEAD ", b"POST ", b"DELETE ")

    def _pump(self, source, sink, requests: bool) -> None:
        try:
            while not self.cut.is_set() and (data := source.recv(65536)):
                if requests:
                    for line in data.split(b"\r\n"):  # request lines (a body rarely starts like one)
                        if line.startswith(self._METHODS) and line.endswith(b" HTTP/1.1"):
                            with self.lock:
                                method = line.split(b" ", 1)[0].decode()
                                self.requests[method] = self.requests.get(method, 0) + 1
                                self.lines.append(line.decode(errors="replace"))
                    if self.cut_on is not None and self.cut_on in data.split(b"\r\n", 1)[0]:
                        sink.sendall(data[: len(data) // 2])  # the headers and a part of the body
                        self.stop()
                        return
                with self.lock:
                    if requests:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self.cut.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a bare close would not)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for sock in self.connections:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass

    def counts(self) -> dict:
        with self.lock:
            return {"requests": dict(self.requests), "sent": self.sent, "received": self.received}
