"""What hostile clients and files get from the real server: a documented 4xx, never a 500 or a hang."""

from __future__ import annotations

import base64
import io
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.protocol import send_without_delay
from app.settings import Settings
from tests.support.imagefiles import (
    ACCEPTED_SAMPLES,
    OTHER_FORMATS,
    image_bytes,
    mutations,
    noise_image,
    rotated_jpeg_with_a_text_resolution,
)
from tests.support.serving import serve


def post_image(http: httpx.Client, data: bytes) -> list[httpx.Response]:
    """The same image through every route that takes one: search, embed and a composed term."""
    return [http.post("/search/image", files={"file": ("x.jpg", data)}),
            http.post("/embed/image", files={"file": ("x.jpg", data)}),
            http.post("/search", json={"queries": [{"image_b64": base64.b64encode(data).decode()}]})]


def test_a_photo_with_an_ill_typed_exif_tag_is_searched_upright(http: httpx.Client) -> None:
    for response in post_image(http, rotated_jpeg_with_a_text_resolution()):
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("format", OTHER_FORMATS)
def test_formats_outside_the_accepted_list_get_422_naming_the_upload(http: httpx.Client, format: str) -> None:
    fields = ["file", "file", "queries[0].image_b64"]
    for response, field in zip(post_image(http, image_bytes(noise_image(8), format)), fields, strict=True):
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field
        assert "accepted format" in response.json()["reason"]


def test_damaged_uploads_of_every_accepted_format_never_get_a_server_error_nor_lose_the_connection(
        server_url: str) -> None:
    statuses: dict[int, int] = {}
    connections: set[object] = set()
    with httpx.Client(base_url=server_url, timeout=30) as http, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings about damaged files are not errors in production
        for number, (format, options) in enumerate(sorted(ACCEPTED_SAMPLES.items())):
            original = image_bytes(noise_image(9, (80, 60)), format, **options)
            for data in mutations(original, 12, seed=100 + number):
                response = http.post("/search/image", files={"file": ("x", data)})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.headers.get("connection") != "close"
                connections.add(response.extensions["network_stream"])
    print("statuses of 60 damaged uploads:", statuses)
    assert set(statuses) <= {200, 413, 422}
    assert len(connections) == 1  # every answer kept the same keep-alive connection open


def test_a_1x65000_image_is_searched_like_any_other(http: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 65000), (200, 30, 90)).save(buffer, "PNG")
    assert http.post("/search/image", files={"file": ("thin.png", buffer.getvalue())}).status_code == 200


@pytest.mark.parametrize(("range_header", "status"), [("bytes=5-2", 400), ("lines=0-5", 400),
                                                      ("bytes=999999999-", 416)])
def test_a_bad_range_header_gets_the_json_error(http: httpx.Client, range_header: str, status: int) -> None:
    response = http.get("/items/0/image", headers={"Range": range_header})
    assert response.status_code == status
    body = response.json()
    assert body["field"] == "Range" and body["reason"] and body["detail"].startswith("Range: ")
    if status == 416:
        assert response.headers["content-range"].startswith("bytes */")


def test_a_good_range_header_still_gets_part_of_the_file(http: httpx.Client) -> None:
    whole = http.get("/items/0/image").content
    part = http.get("/items/0/image", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole[:10]


@pytest.mark.parametrize("path", ["/health", "/ready", "/", "/info", "/items/0", "/items/0/image", "/static/app.js"])
def test_head_is_answered_wherever_get_is(http: httpx.Client, path: str) -> None:
    got, head = http.get(path), http.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


def test_head_on_a_post_only_route_is_refused_like_get(http: httpx.Client) -> None:
    response = http.head("/search/text")
    assert response.status_code == 405 and "POST" in response.headers["allow"]


@pytest.fixture(scope="module")
def strict_server(bundle_path: Path) -> Iterator[tuple[str, int]]:
    settings = Settings(bundle_path=bundle_path, device="cpu", header_timeout_s=0.5,  # type: ignore[call-arg]
                        body_timeout_s=0.5)
    with serve(settings) as url:
        yield "127.0.0.1", int(url.rsplit(":", 1)[1])


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a 10 s socket timeout guards a hang)."""
    connection.settimeout(10)
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return received


def test_headers_sent_a_byte_at_a_time_are_cut_off_with_408(strict_server: tuple[str, int]) -> None:
    with socket.create_connection(strict_server) as connection:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1500
        sent = 0
        try:
            for byte in request:  # one byte every 20 ms: 30 s for the whole, 60 times the 0.5 s limit
                connection.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(connection)
    assert sent < len(request)  # the server hung up before the client was done
    assert answer.startswith(b"HTTP/1.1 408 ") and b"the request headers did not arrive" in answer


def test_a_connection_that_sends_nothing_is_closed(strict_server: tuple[str, int]) -> None:
    with socket.create_connection(strict_server) as connection:
        assert read_until_closed(connection).startswith(b"HTTP/1.1 408 ")


def test_a_body_that_stalls_is_cut_off_with_408(strict_server: tuple[str, int]) -> None:
    with socket.create_connection(strict_server) as connection:
        connection.sendall(b"POST /search/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n{\"text\": ")
        answer = read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"the request body did not arrive" in answer


def test_connections_past_the_limit_are_answered_503_until_some_close(bundle_path: Path) -> None:
    # Header limit far above the test's length, so the idle connections stay open until closed here.
    settings = Settings(bundle_path=bundle_path, device="cpu", header_timeout_s=300, max_connections=4)  # type: ignore[call-arg]
    with serve(settings) as url:
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        refused, answer = connect_past_the_limit(host, port, 4)
    assert refused.status_code == 503
    assert answer.status_code == 200


def connect_past_the_limit(host: str, port: int, limit: int) -> tuple[httpx.Response, httpx.Response]:
    """A request while `limit` idle connections are open, then one after they have closed."""
    idle = [socket.create_connection((host, port)) for _ in range(limit)]
    try:
        refused = httpx.get(f"http://{host}:{port}/health")
    finally:
        for connection in idle:
            connection.close()
    for _ in range(100):  # the server notices the closed sockets on its next loop turns
        if (answer := httpx.get(f"http://{host}:{port}/health")).status_code == 200:
            break
    return refused, answer


class SocketOnly:
    """The one part of an asyncio transport send_without_delay reads."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection

    def get_extra_info(self, name: str) -> socket.socket | None:
        return self.connection if name == "socket" else None


def test_connections_accepted_from_a_plain_listening_socket_send_without_delay() -> None:
    # uvicorn's workers and serve() listen on socket.socket(), whose protocol number reads 0, so
    # asyncio leaves Nagle's algorithm on for every connection accepted from it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()), listener.accept()[0] as accepted:
            assert accepted.proto == 0 and accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            send_without_delay(SocketOnly(accepted))  # type: ignore[arg-type]
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
