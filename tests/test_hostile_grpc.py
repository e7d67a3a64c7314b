"""The gRPC port under attack, at the HTTP/2 frame level: what a red-team pass broke stays fixed.

Each attack runs against a real `modelpack serve --grpc-port` on a loopback socket, from a raw HTTP/2 client
(tests/hostile.py) or the `h2` library, while a probe times `/v2/health/live` and `ServerLive` on fresh
connections (each must stay under hostile.PROBE_BOUND_S) and a real client (tritonclient) keeps inferring.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from conftest import wait_until
from hostile import (
    CONTINUATION,
    DATA,
    HEADERS,
    INFER,
    PING,
    RST_STREAM,
    SETTINGS,
    Probe,
    RawH2,
    eof,
    frame,
    grpc_message,
    open_fds,
    rss_mb,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Process, free_port

from modelpack.serve.protocols.grpc_v2 import messages

pytestmark = pytest.mark.timeout(300)

KEY = "hostile-key-000001"
AUTH = {"authorization": f"Bearer {KEY}"}
X = np.random.default_rng(7).standard_normal((2, 16)).astype("float32")
ENHANCE_YOUR_CALM, COMPRESSION_ERROR, REFUSED_STREAM = 0xB, 0x9, 0x7
UNAUTHENTICATED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, UNIMPLEMENTED, UNAVAILABLE = 16, 3, 4, 12, 14


class Server:
    def __init__(self, package: Path, *args: str) -> None:
        self.grpc_port = free_port()
        self.proc = Process(package, "--grpc-port", str(self.grpc_port), "--api-key", KEY, *args)
        self.pid = self.proc.proc.pid
        self.client = triton.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")

    def infers(self) -> bool:
        tensor = triton.InferInput("features", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        return self.client.infer("mlp", [tensor], headers=AUTH, client_timeout=20).as_numpy("logits").shape == (2, 4)

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.proc.url}/metrics", headers=AUTH, timeout=10).text

    def probe(self) -> Probe:
        return Probe(self.proc.url, self.grpc_port)


@pytest.fixture(scope="module")
def server(mlp_package: Path):
    s = Server(mlp_package, "--body-timeout-s", "2", "--max-inflight-mb", "16")
    yield s
    s.proc.stop()


def _request(x: np.ndarray = X, name: str = "mlp", request_id: str = "") -> bytes:
    m = messages()
    request = m.ModelInferRequest(model_name=name, id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request.SerializeToString()


def _call(port: int, body: bytes, metadata: tuple[tuple[str, str], ...] = tuple(AUTH.items()),
          compression: grpc.Compression | None = None) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(body, metadata=metadata, timeout=30, compression=compression)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""


def test_unauthenticated_half_open_streams_do_not_shut_out_clients(server: Server) -> None:
    """1,000 ModelInfer streams, HEADERS only and no key, on one connection: each is answered UNAUTHENTICATED
    from its headers (it never holds a slot), and a real client keeps inferring while the connection stays open."""
    attacker = RawH2(server.grpc_port)
    try:
        with server.probe() as probe:
            ids = [attacker.open() for _ in range(1000)]
            wait_until(lambda: all(attacker.answered(i) for i in ids), 60, "every stream to be answered")
            assert {attacker.streams[i].grpc_status for i in ids} == {UNAUTHENTICATED}
            assert all(server.infers() for _ in range(20))
        probe.check()
        assert not attacker.closed.is_set()  # the attacker's connection was not needed closed to let clients in
    finally:
        attacker.close()


def test_authenticated_half_open_streams_are_capped_per_connection_and_reset(server: Server) -> None:
    """With a valid key, a connection holds at most --max-streams (100) open calls; the 101st is refused, and a
    call whose message has not come within --body-timeout-s (2 s here) gets DEADLINE_EXCEEDED."""
    attacker = RawH2(server.grpc_port)
    try:
        ids = [attacker.open(key=KEY) for _ in range(100)]
        extra = attacker.open(key=KEY)
        wait_until(lambda: attacker.answered(extra), 30, "the stream past the limit to be refused")
        assert attacker.streams[extra].reset == REFUSED_STREAM
        assert server.infers()  # other connections are not held up
        wait_until(lambda: all(attacker.answered(i) for i in ids), 60, "the half-open streams to time out")
        assert {attacker.streams[i].grpc_status for i in ids} == {DEADLINE_EXCEEDED}
        assert "--body-timeout-s" in attacker.streams[ids[0]].message
        assert 'reason="body_timeout"' in server.metrics()
    finally:
        attacker.close()


def _push_messages(port: int, streams: int, size: int, key: str | None) -> list[int]:
    """A flow-control-abiding client (the h2 library) sending `streams` messages of `size` bytes; returns the
    grpc-status of each stream (or -1 for a stream the server reset without one)."""
    import socket

    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", INFER), (":authority", "x"),
               ("content-type", "application/grpc"), ("te", "trailers")]
    if key:
        headers.append(("authorization", f"Bearer {key}"))
    body = grpc_message(b"\x0a\x03mlp" + b"\x00" * (size - 5))
    ids = []
    for _ in range(streams):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers)
        ids.append(stream_id)
    sent = dict.fromkeys(ids, 0)
    status: dict[int, int] = {}
    deadline = time.monotonic() + 120
    while len(status) < len(ids) and time.monotonic() < deadline:
        for stream_id in ids:
            if stream_id in status or sent[stream_id] >= len(body):
                continue
            try:
                for _ in range(8):  # up to 8 frames per stream per round
                    room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size,
                               len(body) - sent[stream_id])
                    if room <= 0:
                        break
                    end = sent[stream_id] + room >= len(body)
                    conn.send_data(stream_id, body[sent[stream_id]:sent[stream_id] + room], end_stream=end)
                    sent[stream_id] += room
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                status.setdefault(stream_id, -1)
        sock.sendall(conn.data_to_send())
        data = sock.recv(1 << 20)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                found = dict(event.headers)
                if b"grpc-status" in found:
                    status[event.stream_id] = int(found[b"grpc-status"])
            elif isinstance(event, h2.events.StreamReset):
                status.setdefault(event.stream_id, -1)
        sock.sendall(conn.data_to_send())
    sock.close()
    return [status.get(i, -2) for i in ids]


def test_unauthenticated_large_messages_are_never_read(server: Server) -> None:
    """4 connections x 5 streams of 15 MB messages without a key: refused from their headers, their bytes
    dropped as they come; the server's memory does not grow by what they sent (300 MB)."""
    before = rss_mb(server.pid)
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(_push_messages(server.grpc_port, 5, 15 << 20, None)))
               for _ in range(4)]
    with server.probe() as probe:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
    probe.check()
    assert len(results) == 4 and {s for r in results for s in r} == {UNAUTHENTICATED}
    assert rss_mb(server.pid) - before < 64, f"RSS grew from {before:.0f} to {rss_mb(server.pid):.0f} MB"
    assert server.infers()


def test_grpc_messages_and_http_bodies_share_the_inflight_budget(server: Server) -> None:
    """--max-inflight-mb 16: an HTTP body of which 12 MB has arrived holds 12 MB, so a 6 MB gRPC message is
    refused (UNAVAILABLE) while it is held, and accepted once it is gone; the metric shows the bytes held."""
    import socket

    body_size = 15 << 20
    sock = socket.create_connection(("127.0.0.1", server.proc.port), timeout=30)
    sock.sendall(f"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
                 f"content-type: application/json\r\ncontent-length: {body_size}\r\n\r\n".encode())
    sock.sendall(b" " * (12 << 20))
    held = lambda: _gauge(server.metrics(), "modelpack_inflight_request_bytes") >= 12 << 20  # noqa: E731
    wait_until(held, 30, "the HTTP body's 12 MB to be held")
    code, details = _call(server.grpc_port, _request(np.zeros((1, 6 << 18), "float32")))  # 6 MB
    assert code == grpc.StatusCode.UNAVAILABLE and "--max-inflight-mb" in details
    sock.close()
    wait_until(lambda: _gauge(server.metrics(), "modelpack_inflight_request_bytes") == 0, 30, "the body to go")
    code, details = _call(server.grpc_port, _request(np.zeros((1, 6 << 18), "float32")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "features" in details  # read and checked this time


def _gauge(text: str, name: str) -> float:
    import re

    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_a_message_over_the_limit_is_refused_from_its_prefix(server: Server) -> None:
    """A length prefix over --max-body-mb (16) is refused before the message's bytes come."""
    attacker = RawH2(server.grpc_port)
    try:
        stream = attacker.open(key=KEY)
        attacker.send(frame(DATA, 0, stream, b"\x00" + (100 << 20).to_bytes(4, "big")))
        wait_until(lambda: attacker.answered(stream), 30, "the oversized message to be refused")
        seen = attacker.streams[stream]
        assert seen.grpc_status == 8 and "--max-body-mb" in seen.message  # RESOURCE_EXHAUSTED
    finally:
        attacker.close()


def _requests(text: str, route: str, status: int) -> float:
    import re

    found = re.search(rf'^modelpack_requests_total{{[^}}]*route="{route}",status="{status}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_malformed_messages_are_invalid_argument_counted_and_not_logged(server: Server) -> None:
    before = _requests(server.metrics(), "grpc ModelInfer", 400)
    code, details = _call(server.grpc_port, b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed ModelInferRequest" in details
    assert _call(server.grpc_port, b"\xff\xff\xff\xff", metadata=())[0] == grpc.StatusCode.UNAUTHENTICATED
    assert _requests(server.metrics(), "grpc ModelInfer", 400) == before + 1
    # A stream reset right after a malformed message: nothing in the log but what the server logs anyway.
    attacker = RawH2(server.grpc_port)
    stream = attacker.open(key=KEY, message=grpc_message(b"\xff\xff\xff\xff"), end=True)
    attacker.send(frame(RST_STREAM, 0, stream, struct.pack(">I", 8)))
    assert server.infers()
    attacker.close()
    assert "Traceback" not in server.proc.log and "ERROR" not in server.proc.log


def test_compression_errors_and_long_ids_are_client_errors(server: Server) -> None:
    ok, _ = _call(server.grpc_port, _request(), compression=grpc.Compression.Gzip)
    assert ok == grpc.StatusCode.OK  # a well-formed gzip message is read
    attacker = RawH2(server.grpc_port)
    try:
        corrupt = attacker.open(key=KEY, extra=[("grpc-encoding", "gzip")],
                                message=grpc_message(b"not gzip at all", compressed=True), end=True)
        unknown = attacker.open(key=KEY, extra=[("grpc-encoding", "br")], message=grpc_message(b"x"), end=True)
        wait_until(lambda: attacker.answered(corrupt) and attacker.answered(unknown), 30, "both answers")
        assert attacker.streams[corrupt].grpc_status == INVALID_ARGUMENT
        assert "corrupt" in attacker.streams[corrupt].message
        assert attacker.streams[unknown].grpc_status == UNIMPLEMENTED
        assert any("grpc-accept-encoding" in h for h in attacker.streams[unknown].headers)
    finally:
        attacker.close()
    code, details = _call(server.grpc_port, _request(request_id="i" * (1 << 20)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "256" in details and len(details) < 2000


def test_rapid_reset_is_cut_off(server: Server) -> None:
    """CVE-2023-44487: open a full call and reset it at once, thousands of times: GOAWAY ENHANCE_YOUR_CALM."""
    attacker = RawH2(server.grpc_port)
    message = grpc_message(_request())
    try:
        with server.probe() as probe:
            for _ in range(3000):
                stream = attacker.open(key=KEY, message=message, end=True)
                if not attacker.send(frame(RST_STREAM, 0, stream, struct.pack(">I", 8))):
                    break
            wait_until(lambda: attacker.goaway is not None, 30, "the server to send GOAWAY")
            assert server.infers()
        probe.check()
        assert attacker.goaway is not None and attacker.goaway[1] == ENHANCE_YOUR_CALM
    finally:
        attacker.close()


@pytest.mark.parametrize("flood", ["ping", "settings", "empty_data", "continuation"])
def test_control_frame_floods_are_cut_off(server: Server, flood: str) -> None:
    attacker = RawH2(server.grpc_port)
    try:
        if flood == "ping":
            payload = frame(PING, 0, 0, b"12345678") * 5000
        elif flood == "settings":
            payload = frame(SETTINGS, 0, 0, b"") * 5000
        elif flood == "empty_data":
            stream = attacker.open(key=KEY)
            payload = frame(DATA, 0, stream, b"") * 5000
        else:
            payload = frame(HEADERS, 0, 1, attacker.header_block(key=KEY)) + frame(CONTINUATION, 0, 1, b"") * 5000
        attacker.send(payload)
        wait_until(lambda: attacker.goaway is not None, 30, "the server to send GOAWAY")
        assert attacker.goaway[1] == ENHANCE_YOUR_CALM, attacker.goaway
        wait_until(attacker.closed.is_set, 30, "the connection to close")
        assert server.infers()
    finally:
        attacker.close()


def test_header_blocks_over_the_limit_close_the_connection(server: Server) -> None:
    """--max-header-kb (64): a header block sent over CONTINUATION frames, and an HPACK bomb (a small block that
    decodes to 80 KB through the dynamic table), both end the connection with GOAWAY."""
    big = RawH2(server.grpc_port)
    bomb = RawH2(server.grpc_port)
    try:
        block = big.header_block(key=KEY, extra=[("x-pad", "p" * 200_000)])
        chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        big.send(frame(HEADERS, 0, 1, chunks[0]) + b"".join(
            frame(CONTINUATION, 0x4 if i == len(chunks) - 1 else 0, 1, c) for i, c in enumerate(chunks[1:], 1)))
        block = bomb.header_block(key=KEY, extra=[("x-bomb", "b" * 4000)] * 20)
        assert len(block) < 8000
        bomb.send(frame(HEADERS, 0x4, 1, block))
        wait_until(lambda: big.goaway is not None and bomb.goaway is not None, 30, "GOAWAY on both")
        assert big.goaway[1] == ENHANCE_YOUR_CALM and bomb.goaway[1] == COMPRESSION_ERROR
        assert server.infers()
    finally:
        big.close()
        bomb.close()


def test_connection_cap_and_deadlines_on_the_grpc_port(mlp_package: Path) -> None:
    """--max-connections 50, --header-timeout-s 1: of 150 connections (half send the preface, half nothing)
    100 are closed at once and the rest within the deadline; then clients get in, and no descriptor leaks."""
    import socket

    s = Server(mlp_package, "--max-connections", "50", "--header-timeout-s", "1")
    try:
        assert s.infers()
        fds = open_fds(s.pid)
        socks = [socket.create_connection(("127.0.0.1", s.grpc_port), timeout=30) for _ in range(150)]
        for sock in socks[::2]:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))
        wait_until(lambda: sum(eof(sock) for sock in socks) == 150, 60, "every idle connection to be closed")
        assert s.infers()
        assert 'reason="max_connections"' in s.metrics() and 'reason="idle_timeout"' in s.metrics()
        for sock in socks:
            sock.close()
        wait_until(lambda: open_fds(s.pid) <= fds + 2, 30, "the descriptors to be closed")
    finally:
        s.proc.stop()


def test_a_client_that_never_opens_its_window_is_closed(mlp_package: Path) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 0 and no WINDOW_UPDATE: the answer can never be sent; --write-timeout-s (1)
    closes the connection instead of holding the answer for ever."""
    s = Server(mlp_package, "--write-timeout-s", "1")
    try:
        attacker = RawH2(s.grpc_port, settings=struct.pack(">HI", 0x4, 0))
        attacker.open(key=KEY, message=grpc_message(_request()), end=True)
        wait_until(attacker.closed.is_set, 30, "the connection to be closed")
        assert 'protocol="grpc",reason="write_timeout"' in s.metrics()
        assert s.infers()
    finally:
        s.proc.stop()


def test_http1_on_the_grpc_port_is_told_what_the_port_speaks(server: Server) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=30) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b"gRPC" in answer


_DATATYPES = ["FP32", "FP64", "INT64", "INT32", "BOOL", "UINT8", "FP16", "BYTES", "NOPE", ""]


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    """ModelInfer messages built from the protocol's fields with hostile values, or raw bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    m = messages()
    request = m.ModelInferRequest(model_name=draw(st.sampled_from(["mlp", "", "nope", "m" * 300])),
                                  model_version=draw(st.sampled_from(["", "1", "2", "-1"])),
                                  id=draw(st.text(max_size=300)))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(st.sampled_from(["features", "x", ""])),
                                    datatype=draw(st.sampled_from(_DATATYPES)),
                                    shape=draw(st.lists(st.integers(-3, 1 << 40), max_size=5)))
        if draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=64)))
        if draw(st.booleans()):
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-(1 << 63), (1 << 63) - 1),
                                                                max_size=8)))
    for _ in range(draw(st.integers(0, 3))):
        request.raw_input_contents.append(draw(st.binary(max_size=256)))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(["logits", "nope", ""])))
    return request.SerializeToString()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=infer_requests())
def test_fuzzed_model_infer_messages_get_client_errors(server: Server, body: bytes) -> None:
    """Whatever a ModelInfer message holds, the answer is OK or a client error, never UNKNOWN or INTERNAL."""
    code, details = _call(server.grpc_port, body)
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, (code, details)
    assert len(details) <= 1100
