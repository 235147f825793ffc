"""Connection limits of the real gateway (issue 13, item 6), over raw sockets on loopback.

A connection that sends nothing, half its headers, or holds its body back is timed out (closed,
or answered 408 and closed); an idle keep-alive connection is closed; one client address gets at
most `max_connections_per_client` connections (503 beyond); and a graceful shutdown does not wait
on a held-back body, which gets a 408 or a close, never a 500. Short limits keep this fast.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

NOOP = "noop"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
KEEP_ALIVE_TIMEOUT_S = 0.5
CAP = 6
LIMITS = {"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S,
          "keep_alive_timeout_s": KEEP_ALIVE_TIMEOUT_S, "max_connections_per_client": CAP}
#: Slack for scheduling on a loaded 2-core machine.
MARGIN_S = 2.0

INFER_BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                                     "data": [0.5] * 16}]}).encode()
INFER_HEAD = (f"POST /v2/models/{NOOP}/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(INFER_BODY)}\r\n\r\n").encode()
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway(models=[NOOP], isolation="thread", **LIMITS)


@pytest.fixture
def connect(gateway) -> Iterator:
    """`connect()` -> a socket to the gateway; every one is closed after the test."""
    opened: list[socket.socket] = []

    def open_one(port: int | None = None) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port or gateway.port), timeout=10)
        opened.append(sock)
        return sock

    yield open_one
    for sock in opened:
        sock.close()
    _wait_for_no_connections(gateway)


def _wait_for_no_connections(gateway, below: int = 1, timeout_s: float = 5.0) -> None:
    """Until the server counts fewer than `below` connections from loopback (it has seen them close)."""
    counts = gateway._server.config.http_protocol_class.open_per_client
    deadline = time.monotonic() + timeout_s
    while counts.get("127.0.0.1", 0) >= below:
        assert time.monotonic() < deadline, f"the server still counts {counts} connections"
        time.sleep(0.02)


def read_until_closed(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    sock.settimeout(timeout_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body, leaving the connection open."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def parse_closed(data: bytes) -> tuple[int, dict[str, str], dict]:
    """A whole response ended by the server's close; its body is JSON."""
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    return status, headers, json.loads(body)


def assert_timeout_answer(data: bytes) -> str:
    status, headers, body = parse_closed(data)
    assert status == 408, data
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert set(body) == {"error"} and body["error"]
    return body["error"]


# ------------------------------------------------------------------------------ serving
def test_a_normal_request_still_works_and_keeps_its_connection(connect):
    sock = connect()
    for _ in range(3):  # keep-alive: three requests on one connection
        sock.sendall(INFER_HEAD + INFER_BODY)
        status, _, body = read_response(sock)
        assert status == 200, body
        assert json.loads(body)["outputs"][0]["data"] == [0.5] * 16


def test_a_request_sent_in_small_pieces_within_the_limits_is_served(connect):
    """The body timeout is per pause: a body still arriving after longer than the timeout is fine."""
    sock = connect()
    sock.sendall(INFER_HEAD)
    pieces = [INFER_BODY[i:i + 40] for i in range(0, len(INFER_BODY), 40)]
    pause = BODY_TIMEOUT_S * 1.5 / len(pieces)
    for piece in pieces:
        time.sleep(pause)
        sock.sendall(piece)
    status, _, body = read_response(sock)
    assert status == 200, body


# ----------------------------------------------------------------------------- timeouts
def test_a_silent_connection_is_closed_after_the_header_timeout(connect):
    sock = connect()
    started = time.monotonic()
    assert read_until_closed(sock) == b""  # nothing was asked, so nothing is answered
    waited = time.monotonic() - started
    assert HEADER_TIMEOUT_S * 0.8 <= waited < HEADER_TIMEOUT_S + MARGIN_S


def test_half_headers_are_answered_408_and_closed(connect):
    sock = connect()
    started = time.monotonic()
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    message = assert_timeout_answer(read_until_closed(sock))
    assert "headers" in message
    assert time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S


def test_headers_trickled_byte_by_byte_are_cut_at_the_header_timeout(connect):
    """The header timeout is for all the headers, however steadily they trickle."""
    sock = connect()
    started = time.monotonic()
    trickle = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n" + b"X-Pad: a\r\n" * 100  # ~50 s at this pace
    for byte in trickle:
        sock.sendall(bytes([byte]))
        if select.select([sock], [], [], 0.05)[0]:  # the server answered or closed
            break
    cut_after = time.monotonic() - started
    assert_timeout_answer(read_until_closed(sock))
    assert HEADER_TIMEOUT_S * 0.8 <= cut_after < HEADER_TIMEOUT_S + MARGIN_S


def test_a_held_back_body_is_answered_408_and_the_server_keeps_serving(connect):
    sock = connect()
    sock.sendall(INFER_HEAD + INFER_BODY[:10])
    started = time.monotonic()
    message = assert_timeout_answer(read_until_closed(sock))
    assert "body" in message
    assert BODY_TIMEOUT_S * 0.8 <= time.monotonic() - started < BODY_TIMEOUT_S + MARGIN_S
    other = connect()
    other.sendall(INFER_HEAD + INFER_BODY)
    assert read_response(other)[0] == 200


def test_a_held_back_openai_body_gets_the_openai_error_shape(connect):
    sock = connect()
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"input\":")
    status, _, body = parse_closed(read_until_closed(sock))
    assert status == 408
    assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"


def test_an_idle_keep_alive_connection_is_closed(connect):
    sock = connect()
    sock.sendall(LIVE)
    assert read_response(sock)[0] == 200
    started = time.monotonic()
    assert read_until_closed(sock) == b""
    assert time.monotonic() - started < KEEP_ALIVE_TIMEOUT_S + MARGIN_S


def test_half_headers_of_a_second_request_are_answered_408(connect):
    sock = connect()
    sock.sendall(LIVE)
    assert read_response(sock)[0] == 200
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
    assert_timeout_answer(read_until_closed(sock))


# ------------------------------------------------------------------------ per-client cap
def test_the_connection_over_the_per_client_cap_is_refused_with_503(gateway, connect):
    _wait_for_no_connections(gateway)
    held = []
    for _ in range(CAP):  # each one really served, so each one counts
        sock = connect()
        sock.sendall(LIVE)
        assert read_response(sock)[0] == 200
        held.append(sock)
    extra = connect()
    status, headers, body = parse_closed(read_until_closed(extra))
    assert status == 503
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert "connections" in body["error"]
    # One closes: once the server has seen it go, a new connection is accepted again.
    held.pop().close()
    _wait_for_no_connections(gateway, below=CAP)
    sock = connect()
    sock.sendall(LIVE)
    assert read_response(sock)[0] == 200


def test_a_refused_client_that_sends_its_request_first_still_reads_the_503(gateway, connect):
    _wait_for_no_connections(gateway)
    held = [connect() for _ in range(CAP)]
    for sock in held:
        sock.sendall(LIVE)
        assert read_response(sock)[0] == 200
    extra = connect()
    extra.sendall(INFER_HEAD + INFER_BODY)  # sent before reading: the answer must survive the close
    status, _, _ = parse_closed(read_until_closed(extra))
    assert status == 503


# ---------------------------------------------------------------------------- shutdown
def test_shutdown_answers_a_held_back_body_at_once(start_gateway):
    """Graceful shutdown (as on SIGTERM) does not wait its 10 s grace period on a held-back body."""
    gateway = start_gateway(models=[NOOP], isolation="thread", **(LIMITS | {"body_timeout_s": 60.0,
                                                                            "header_timeout_s": 60.0}))
    held = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    half = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    idle = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    try:
        held.sendall(INFER_HEAD + INFER_BODY[:10])
        half.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        idle.sendall(LIVE)
        assert read_response(idle)[0] == 200
        time.sleep(0.3)  # the server has read the held-back request's headers
        answers: dict[str, bytes] = {}

        def read(name: str, sock: socket.socket) -> None:
            answers[name] = read_until_closed(sock, 30)

        readers = [threading.Thread(target=read, args=item) for item in
                   (("held", held), ("half", half), ("idle", idle))]
        for reader in readers:
            reader.start()
        started = time.monotonic()
        gateway.stop()
        stopped_in = time.monotonic() - started
        for reader in readers:
            reader.join(10)
    finally:
        for sock in (held, half, idle):
            sock.close()
    assert stopped_in < 5.0  # the grace period is 10 s
    assert answers["idle"] == b""  # idle: closed at once
    for name in ("held", "half"):
        if answers[name]:  # a clean 408, never a 500
            assert_timeout_answer(answers[name])
    assert answers["held"], "the held-back request got no answer"


def test_a_connection_answered_before_its_body_came_is_still_timed_out_when_idle(connect):
    """The gateway may answer before reading the body (here 405); once the body is in, the
    connection is idle and the keep-alive timeout applies again."""
    sock = connect()
    sock.sendall(b"POST /v2/health/live HTTP/1.1\r\nHost: test\r\nContent-Length: 20\r\n\r\n")
    status, _, _ = read_response(sock)
    assert status == 405
    time.sleep(0.2)
    sock.sendall(b"x" * 20)
    started = time.monotonic()
    assert read_until_closed(sock) == b""
    assert time.monotonic() - started < KEEP_ALIVE_TIMEOUT_S + MARGIN_S
