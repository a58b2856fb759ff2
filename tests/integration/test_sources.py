"""Sources against real servers: moto's S3 server and an HTTP server, both on loopback."""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from framefleet.settings import SourceSettings
from framefleet.workers.errors import FETCH_FAILED, FORBIDDEN, PermanentError, TransientError
from framefleet.workers.sources import fetched, s3_client
from tests.support.servers import FaultyProxy, FileServer, moto_s3_server
from tests.support.videos import write_video


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as url:
        yield url


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard AWS credentials and config, read by boto3 as in production."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[tuple[SourceSettings, object]]:
    settings = SourceSettings(s3_endpoint_url=s3_endpoint, fetch_timeout_s=5, fetch_backoff_s=0.01)
    client = s3_client(settings)
    client.create_bucket(Bucket="videos")
    yield settings, client
    for obj in client.list_objects_v2(Bucket="videos").get("Contents", []):
        client.delete_object(Bucket="videos", Key=obj["Key"])
    client.delete_bucket(Bucket="videos")


def test_local_reads_only_under_allowed_roots(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"x" * 10)
    (tmp_path / "secret.mp4").write_bytes(b"s")
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    settings = SourceSettings(allowed_roots=(root,))
    with fetched(str(root / "a.mp4"), settings) as (path, _):
        assert path.read_bytes() == b"x" * 10
    with fetched(f"file://{root}/a.mp4", settings) as (path, _):
        assert path == root / "a.mp4"
    for uri in (
        str(tmp_path / "secret.mp4"),
        str(root / ".." / "secret.mp4"),
        str(root / "link.mp4"),
        "/etc/passwd",
    ):
        with (
            pytest.raises(PermanentError, match="outside the allowed roots"),
            fetched(uri, settings),
        ):
            pass
    with (
        pytest.raises(PermanentError, match="none configured"),
        fetched(str(root / "a.mp4"), SourceSettings()),
    ):
        pass
    with (
        pytest.raises(PermanentError, match="no such file"),
        fetched(str(root / "missing.mp4"), settings),
    ):
        pass
    with (
        pytest.raises(PermanentError, match="over the limit"),
        fetched(str(root / "a.mp4"), SourceSettings(allowed_roots=(root,), max_video_bytes=5)),
    ):
        pass


def test_s3_download_and_cleanup(s3: tuple[SourceSettings, object]) -> None:
    settings, client = s3
    client.put_object(Bucket="videos", Key="2026/a.mp4", Body=b"video-bytes" * 1000)  # type: ignore[attr-defined]
    with fetched("s3://videos/2026/a.mp4", settings) as (path, _):
        assert path.read_bytes() == b"video-bytes" * 1000 and path.suffix == ".mp4"
    assert not path.exists()


def test_s3_cleanup_on_error_inside_the_block(s3: tuple[SourceSettings, object]) -> None:
    settings, client = s3
    client.put_object(Bucket="videos", Key="a.mp4", Body=b"v")  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError), fetched("s3://videos/a.mp4", settings) as (path, _):
        raise RuntimeError("decoder blew up")
    assert not path.exists()


def test_s3_missing_object_and_bucket_are_permanent(s3: tuple[SourceSettings, object]) -> None:
    settings, _ = s3
    with (
        pytest.raises(PermanentError, match="NoSuchKey"),
        fetched("s3://videos/missing.mp4", settings),
    ):
        pass
    with (
        pytest.raises(PermanentError, match="NoSuchBucket"),
        fetched("s3://no-bucket/a.mp4", settings),
    ):
        pass


def test_s3_size_limit(s3: tuple[SourceSettings, object]) -> None:
    settings, client = s3
    client.put_object(Bucket="videos", Key="big.mp4", Body=b"x" * 5000)  # type: ignore[attr-defined]
    small = SourceSettings(s3_endpoint_url=settings.s3_endpoint_url, max_video_bytes=4000)
    with (
        pytest.raises(PermanentError, match=r"over the limit|larger than"),
        fetched("s3://videos/big.mp4", small),
    ):
        pass


def test_s3_forbidden_is_permanent(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto authorising every request against its IAM: a user allowed to create buckets and
    put objects but not to get them is refused with 403 AccessDenied, a permanent error (a
    retry is refused the same way)."""
    with moto_s3_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as url:
        iam = boto3.client("iam", endpoint_url=url)
        iam.create_user(UserName="writer")
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        iam.put_user_policy(
            UserName="writer",
            PolicyName="write-only",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["s3:CreateBucket", "s3:PutObject"],
                            "Resource": "*",
                        }
                    ],
                }
            ),
        )  # the three unauthenticated actions; from here on moto checks each request
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        settings = SourceSettings(s3_endpoint_url=url, fetch_attempts=3, fetch_backoff_s=0.01)
        client = s3_client(settings)
        client.create_bucket(Bucket="videos")
        client.put_object(Bucket="videos", Key="a.mp4", Body=b"x" * 100)
        with (
            pytest.raises(PermanentError, match="AccessDenied") as refused,
            fetched("s3://videos/a.mp4", settings),
        ):
            pass
        assert refused.value.cls == FORBIDDEN


def test_s3_5xx_is_retried_then_transient(s3: tuple[SourceSettings, object]) -> None:
    """A proxy in front of the S3 server answers 503 first: two failures are retried and
    the object comes from S3; failures past fetch_attempts make a transient error."""
    settings, client = s3
    client.put_object(Bucket="videos", Key="a.mp4", Body=b"0123456789" * 50)  # type: ignore[attr-defined]
    endpoint = settings.s3_endpoint_url or ""
    with FaultyProxy(endpoint, failures=2) as proxy:
        flaky = replace(settings, s3_endpoint_url=proxy.url, fetch_attempts=3)
        with fetched("s3://videos/a.mp4", flaky) as (path, _):
            assert path.read_bytes() == b"0123456789" * 50
        assert proxy.requests == 3
    with FaultyProxy(endpoint, failures=100) as proxy:
        down = replace(settings, s3_endpoint_url=proxy.url, fetch_attempts=3)
        with (
            pytest.raises(TransientError, match="ServiceUnavailable") as failed,
            fetched("s3://videos/a.mp4", down),
        ):
            pass
        assert proxy.requests == 3 and failed.value.cls == FETCH_FAILED


def test_http_download_and_errors(tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"0123456789" * 100)
    settings = SourceSettings(
        fetch_attempts=3,
        fetch_backoff_s=0.01,
        fetch_timeout_s=1,
        allow_private_urls="127.0.0.0/8",  # the test server is on loopback
    )
    with FileServer(tmp_path) as server:
        with fetched(server.url + "/v.mp4", settings) as (path, _):
            assert path.read_bytes() == b"0123456789" * 100
        assert not path.exists()
        with fetched(server.url + "/flaky/2/v.mp4", settings) as (path, _):  # 503, 503, then 200
            assert path.stat().st_size == 1000
        with (
            pytest.raises(PermanentError, match="404"),
            fetched(server.url + "/missing.mp4", settings),
        ):
            pass
        with (
            pytest.raises(PermanentError, match="403"),
            fetched(server.url + "/status/403", settings),
        ):
            pass
        with (
            pytest.raises(TransientError, match="500"),
            fetched(server.url + "/status/500", settings),
        ):
            pass
        assert server.hits["/status/500"] == 3
        with (
            pytest.raises(TransientError, match="timed out"),
            fetched(server.url + "/hang", settings),
        ):
            pass
        with (
            pytest.raises(PermanentError, match="over the limit"),
            fetched(server.url + "/v.mp4", replace(settings, max_video_bytes=10)),
        ):
            pass


def test_unsupported_scheme() -> None:
    with (
        pytest.raises(PermanentError, match="unsupported uri scheme"),
        fetched("ftp://h/v.mp4", SourceSettings()),
    ):
        pass


class Dribbler:
    """A loopback HTTP server that sends its answer one byte at a time, each well within
    the per-read timeout: the status line (`/status`), the headers (`/headers`), or a
    chunked body's size lines (`/chunks`); to a TLS client, its ServerHello (a record that
    announces 16 KiB, then its bytes one by one). Until stopped."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Dribbler:
        accepting = threading.Thread(target=self._accept, daemon=True)
        accepting.start()
        self.threads.append(accepting)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(10)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            serving = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            serving.start()
            self.threads.append(serving)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request = conn.recv(4096)
            path = "" if request[:1] == b"\x16" else request.split(b" ")[1].decode()
            head = b"HTTP/1.1 200 OK\r\n"
            if not path:  # a TLS ClientHello: a handshake record, never ending
                answer = b"\x16\x03\x03\x40\x00" + b"\x00" * 100_000
            elif path.startswith("/status"):
                answer = head * 1000
            elif path.startswith("/trailer"):  # a whole chunked body, then an endless trailer
                head += b"Transfer-Encoding: chunked\r\n\r\n"
                answer = head + b"4\r\nabcd\r\n0\r\nX-T: " + b"a" * 100_000
            elif path.startswith("/headers"):
                answer = head + b"X-Slow: " + b"a" * 100_000
            else:
                head += b"Transfer-Encoding: chunked\r\n\r\n"
                answer = head + b"0" * 100_000
            for byte in answer:
                if self.stopping.wait(self.every_s):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return


def test_the_download_deadline_holds_against_a_slow_s3_endpoint(tmp_path: Path, aws: None) -> None:
    """An S3-compatible endpoint that sends the object's body a byte every 0.2 s (each well
    within the read timeout): botocore's body read waits for all it asked for (1 MiB), so
    the deadline was checked never; now each read returns what came."""
    (tmp_path / "v.mp4").write_bytes(b"x" * 50_000)
    settings = SourceSettings(fetch_attempts=1, fetch_timeout_s=1, fetch_deadline_s=2)
    with moto_s3_server() as endpoint, FaultyProxy(endpoint, 0, dribble_s=0.2) as proxy:
        s3_client(SourceSettings(s3_endpoint_url=endpoint)).create_bucket(Bucket="slow")
        s3_client(SourceSettings(s3_endpoint_url=endpoint)).put_object(
            Bucket="slow", Key="v.mp4", Body=(tmp_path / "v.mp4").read_bytes()
        )
        slow = replace(settings, s3_endpoint_url=proxy.url)
        started = time.monotonic()
        with (
            pytest.raises(TransientError, match="fetch_deadline_s"),
            fetched("s3://slow/v.mp4", slow),
        ):
            pass
        assert time.monotonic() - started < 6


def test_the_download_deadline_covers_the_whole_download(tmp_path: Path) -> None:
    """FRAMEFLEET_FETCH_DEADLINE_S holds whatever the server dribbles one byte a read
    timeout: the status line, the headers, a chunked body's size lines. It was checked only
    between body reads: a 2 s deadline held a fetch for over 15 s, its thread stuck for good."""
    settings = SourceSettings(
        fetch_attempts=1,
        fetch_timeout_s=1,  # each byte comes within it
        fetch_deadline_s=2,
        allow_private_urls="127.0.0.0/8",
    )
    # Python bounds a TLS handshake as a whole by the socket's timeout: the watchdog is what
    # bounds it when the read timeout is the longer
    tls = replace(settings, fetch_timeout_s=30)
    with Dribbler() as server:
        https = server.url.replace("http://", "https://") + "/handshake.mp4"
        paths = ("/status.mp4", "/headers.mp4", "/chunks.mp4", "/trailer.mp4")
        cases = [(server.url + p, settings) for p in paths]
        for url, each in [*cases, (https, tls)]:
            started = time.monotonic()
            with (
                pytest.raises(TransientError, match="fetch_deadline_s"),
                fetched(url, each),
            ):
                pass
            took = time.monotonic() - started
            assert took < 6, f"{url}: {took:.1f} s for a 2 s deadline"
    gc.collect()  # a connection left open would warn now (ResourceWarning is an error here)


def test_a_host_name_is_resolved_once_and_connected_to_at_the_checked_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers an allowed address when it is checked and another
    one after. The connection goes to the address that was checked (else the fetch would
    go to the second answer, here an address that does not answer)."""
    write_video(tmp_path / "v.mp4", frames=3)
    real = socket.getaddrinfo
    answers: list[str] = []

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        address = "127.0.0.1" if not answers else "10.255.255.1"  # then an unrouted one
        answers.append(address)
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    settings = SourceSettings(
        allow_private_urls="127.0.0.1/32", fetch_timeout_s=2, fetch_attempts=1
    )
    with FileServer(tmp_path) as server:
        port = server.url.rsplit(":", 1)[1]
        with fetched(f"http://rebind.test:{port}/v.mp4", settings) as (path, _):
            assert path.read_bytes() == (tmp_path / "v.mp4").read_bytes()
    assert answers == ["127.0.0.1"]  # asked once


def test_http_proxy_settings_are_not_used_for_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would see (and could answer for) every source URL, and the address checks
    would check the proxy, not the source: `http_proxy`/`https_proxy` are not used."""
    write_video(tmp_path / "v.mp4", frames=3)
    dead = socket.create_server(("127.0.0.1", 0))  # a proxy that never answers
    try:
        proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        settings = SourceSettings(
            allow_private_urls="127.0.0.1/32", fetch_timeout_s=2, fetch_attempts=1
        )
        with FileServer(tmp_path) as server, fetched(server.url + "/v.mp4", settings) as (path, _):
            assert path.read_bytes() == (tmp_path / "v.mp4").read_bytes()
    finally:
        dead.close()
