"""The HTTP port under attack, at the socket level: what a red-team pass broke stays fixed.

Each attack runs against a real `modelpack serve` on a loopback socket, from raw sockets that break the rules a
client library keeps (pipelining without reading, a head that never ends, bodies that inflate), while a probe
times `/v2/health/live` (and `ServerLive` when the gRPC port is on) on fresh connections.
"""

from __future__ import annotations

import gzip
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import wait_until
from hostile import Probe, eof, open_fds, rss_mb
from servers import Process

pytestmark = pytest.mark.timeout(300)

KEY = "hostile-key-000001"
AUTH = {"authorization": f"Bearer {KEY}"}
BODY = json.dumps({"inputs": [{"name": "features", "shape": [2, 16], "datatype": "FP32",
                               "data": [0.5] * 32}]}).encode()


def refused(proc: Process, reason: str) -> int:
    """modelpack_refused_total{protocol="http",reason=...} from the server's /metrics."""
    text = httpx.get(f"{proc.url}/metrics", headers=AUTH, timeout=10).text
    for line in text.splitlines():
        if line.startswith("modelpack_refused_total{") and 'protocol="http"' in line and f'reason="{reason}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def infers(proc: Process) -> bool:
    r = httpx.post(f"{proc.url}/v2/models/mlp/infer", content=BODY, headers=AUTH, timeout=20)
    return r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 8


def raw(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connect, so the window the server sees is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    return sock


def answer(sock: socket.socket, timeout: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def server(mlp_package: Path):
    proc = Process(mlp_package, "--api-key", KEY, "--max-connections", "10", "--write-timeout-s", "1",
                   "--max-inflight-mb", "1")
    yield proc
    proc.stop()


def _clean_log(proc: Process) -> None:
    for line in ("Exception in ASGI application", "Traceback", "RuntimeError", "Unsupported upgrade"):
        assert line not in proc.log, proc.log[-3000:]


def _slow_reader(port: int) -> socket.socket:
    """A client that pipelines 400 requests for the OpenAPI document (tens of KB each) and never reads: far more
    than any socket buffer holds."""
    request = f"GET /openapi.json HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n".encode()
    sock = raw(port, rcvbuf=4096)
    sock.setblocking(False)
    for _ in range(400):
        try:
            sock.send(request)
        except OSError:  # the server stopped reading: its buffers are full
            break
    return sock


def test_a_slow_reader_is_closed_past_the_write_deadline(server: Process) -> None:
    """One client that pipelines and never reads, with no other connection about: closed once its answers go
    undrained past --write-timeout-s (issue 22, item 6: it was held for ever)."""
    before = refused(server, "write_timeout")
    sock = _slow_reader(server.port)
    wait_until(lambda: refused(server, "write_timeout") > before, 30, "the slow reader to be closed")
    wait_until(lambda: eof(sock), 10, "the slow reader to see the connection closed")
    sock.close()


def test_slow_readers_are_closed_and_new_clients_get_in(server: Process) -> None:
    """Nine clients at --max-connections 10 pipeline requests and never read: each is closed, and the server
    then answers everyone else (issue 22, item 6: they locked every new client out for as long as they stayed)."""
    idle = open_fds(server.proc.pid)
    before = refused(server, "write_timeout") + refused(server, "max_connections")
    wait_until(lambda: open_fds(server.proc.pid) <= idle, 30, "the metrics request's connection to close")
    readers = [_slow_reader(server.port) for _ in range(9)]
    turned_away = 0  # this test's own /metrics requests answered 503 past --max-connections (counted too)

    def closed() -> int:
        nonlocal turned_away
        reply = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=10)
        if reply.status_code == 503:
            turned_away += 1
            return 0
        counts = {reason: 0.0 for reason in ("write_timeout", "max_connections")}
        for line in reply.text.splitlines():
            for reason in counts:
                if line.startswith("modelpack_refused_total{") and 'protocol="http"' in line and f'"{reason}"' in line:
                    counts[reason] = float(line.rsplit(" ", 1)[1])
        return int(sum(counts.values())) - turned_away - before

    # Every reader is closed by the server: past the write deadline, or (uvicorn counts a connection's next
    # pipelined request as one more task) answered 503 past --max-connections and closed; which of the two
    # comes first depends on how fast the answers are written. Counted by the server: reading the readers'
    # sockets to find out would drain them.
    wait_until(lambda: closed() >= 9, 30, "the nine slow readers to be closed")
    with Probe(server.url) as probe:
        assert infers(server)
    probe.check()
    wait_until(lambda: all(eof(s) for s in readers), 10, "the readers to see their connections closed")
    _clean_log(server)
    assert "Exceeded concurrency limit" not in server.log  # counted in /metrics, not a log line per request
    for sock in readers:
        sock.close()


def test_a_slow_reader_that_hangs_up_leaves_a_quiet_log(server: Process) -> None:
    """A pipelining client that hangs up with answers still queued: no 'Exception in ASGI application'."""
    request = f"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n" \
              f"content-length: {len(BODY)}\r\n\r\n".encode() + BODY
    for _ in range(5):
        sock = raw(server.port, rcvbuf=4096)
        sock.sendall(request * 50)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        sock.close()
    wait_until(lambda: infers(server), 30, "the server to answer after the hang-ups")
    _clean_log(server)


def test_a_huge_head_is_refused_early_and_the_loop_stays_fast(server: Process) -> None:
    """A 64 MB header line without a key: 431 after the documented 64 KB, and health probes stay fast
    (issue 22, item 7: it held the event loop 6.4 s)."""
    before = refused(server, "header_too_large")
    sock = raw(server.port)
    sent = 0
    with Probe(server.url) as probe:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-junk: ")
        chunk = b"a" * (1 << 20)
        try:
            while sent < 64 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = answer(sock)
    probe.check()
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"--max-header-kb" in reply
    assert sent < 64 << 20, "the server read the whole 64 MB head"
    assert refused(server, "header_too_large") == before + 1
    sock.close()


def test_gzip_bodies_count_inflated_bytes_against_the_inflight_budget(server: Process) -> None:
    """Twenty 16 KB gzip bodies that each inflate to 15 MB, at --max-inflight-mb 1: none is accepted, memory
    stays put, and the server keeps answering (issue 22, item 8: all 20 were accepted, RSS 100 -> 499 MB)."""
    inflated = BODY[:-2] + b" " * (15 << 20) + BODY[-2:]  # valid JSON, 15 MB once inflated
    body = gzip.compress(inflated, compresslevel=9)
    assert len(body) < 32 << 10
    start_rss = rss_mb(server.proc.pid)
    statuses: list[int] = []

    def post() -> None:
        r = httpx.post(f"{server.url}/v2/models/mlp/infer", content=body, timeout=60,
                       headers={**AUTH, "content-encoding": "gzip", "content-type": "application/json"})
        statuses.append(r.status_code)
        assert "max-inflight-mb" in r.text or "max-body-mb" in r.text, r.text

    # Eight at a time: with ten or more, the probe's own connection would be turned away at --max-connections 10.
    with Probe(server.url) as probe, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: post(), range(20), timeout=120))
    probe.check()
    assert len(statuses) == 20 and all(s in (413, 503) for s in statuses), statuses
    assert rss_mb(server.proc.pid) - start_rss < 60, f"RSS {start_rss:.0f} -> {rss_mb(server.proc.pid):.0f} MB"
    assert infers(server)


def test_unauthenticated_long_paths_do_not_pin_memory(server: Process) -> None:
    """2,000 requests without a key for 60 KB model names: 414 before any route pattern is tried (matching one
    cost 2.5 ms of the event loop), and RSS stays within 60 MB (issue 22, item 9: the route cache kept every raw
    path, 3,714 of them raised RSS by 456 MB for good). A name at the limit still reaches the key check."""
    start_rss, start_fds = rss_mb(server.proc.pid), open_fds(server.proc.pid)
    statuses = set()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(2000):
            name = f"{i:06d}" + "m" * (60 << 10)
            statuses.add(client.post(f"/v2/models/{name}/infer", content=BODY).status_code)
        near = client.post(f"/v2/models/{'m' * 255}/versions/1/infer", content=BODY)
        far = client.post(f"/v1/models/{'m' * 1100}:predict", content=b"{}")
    assert statuses == {414}
    assert near.status_code == 401, near.text
    assert far.status_code == 414 and "at most 1,024" in far.json()["error"], far.text
    grown = rss_mb(server.proc.pid) - start_rss
    assert grown < 60, f"RSS grew {grown:.0f} MB over 2,000 unauthenticated requests"
    wait_until(lambda: open_fds(server.proc.pid) <= start_fds + 2, 30, "the flood's connections to be released")


@pytest.mark.parametrize("value", [b"\xb2", b"9" * 5000, b"-1", b"1e3"])
def test_a_bad_inference_header_length_is_400_not_500(server: Process, value: bytes) -> None:
    """`Inference-Header-Content-Length` that str.isdigit() accepts but int() does not (a superscript two,
    5,000 digits): 400 naming the header, no traceback (issue 22, item 10)."""
    sock = raw(server.port)
    sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                 b"authorization: Bearer " + KEY.encode() + b"\r\ncontent-type: application/octet-stream\r\n"
                 b"inference-header-content-length: " + value + b"\r\ncontent-length: " +
                 str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    reply = answer(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]
    assert b"Inference-Header-Content-Length" in reply
    _clean_log(server)
    assert infers(server)


def test_a_websocket_upgrade_is_answered_as_http_and_not_logged(server: Process) -> None:
    """A WebSocket (or h2c) upgrade on any path: a plain HTTP answer, never uvicorn's plain-text 500, and no
    log line per request (issue 22, item 10)."""
    for path, upgrade in [("/v2/health/live", b"websocket"), ("/v2/models/mlp/infer", b"websocket"),
                          ("/anything", b"h2c")]:
        sock = raw(server.port)
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n".encode() + b"connection: Upgrade\r\nupgrade: " + upgrade +
                     b"\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        reply = answer(sock)
        sock.close()
        status = int(reply.split(b" ", 2)[1])
        assert status < 500, reply[:300]
        assert b"application/json" in reply.split(b"\r\n\r\n")[0].lower(), reply[:300]
    wait_until(lambda: infers(server), 30, "the server to keep answering")
    _clean_log(server)
    assert "WARNING" not in server.log, server.log[-2000:]
