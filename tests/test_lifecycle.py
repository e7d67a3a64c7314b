"""A request's life on a real server: dropped when its client goes away, traced with OTLP when asked.

Each test runs `modelpack serve` as a process on a loopback port and waits on conditions (a metric, a log line,
a span arriving), never on the clock. The model takes time in proportion to its input's `rows`, so one big
request holds the model's one worker (`--max-batch-size 1`) while the test queues others behind it.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_cli, wait_until
from servers import Process, free_port

BUSY_ROWS = 12000  # about 2 s of the model on an idle machine: long enough to queue and hang up behind it


def make_slow_onnx(path: Path, size: int = 512, steps: int = 48) -> Path:
    """x [batch, rows, 1] -> `steps` MatMul+Tanh of [rows, size] -> out [batch]: its time grows with rows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = numpy_helper.from_array(np.ones((1, size), "float32"), "c")
    w = numpy_helper.from_array((rng.standard_normal((size, size)) / np.sqrt(size)).astype("float32"), "w")
    nodes = [helper.make_node("Mul", ["x", "c"], ["y0"])]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"y{i}", "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"y{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"y{steps}"], ["out"], axes=[1, 2], keepdims=0))
    graph = helper.make_graph(nodes, "slow",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "rows", 1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch"])], [c, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="handmade")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def slow_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("slow")
    out = base / "pkg"
    result = run_cli("optimize", make_slow_onnx(base / "slow.onnx"), "-o", out, "-q", "export")
    assert result.exit_code == 0, result.output
    return out


def _body(rows: int) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": [1, rows, 1], "datatype": "FP32", "data": [0.5] * rows}]}


class Busy:
    """One long request on a thread, holding the model's worker until it is answered."""

    def __init__(self, server: Process) -> None:
        self.status: int | None = None
        runs = server.metric("modelpack_batch_size_count")
        self.thread = threading.Thread(target=self._run, args=(server,), daemon=True)
        self.thread.start()
        # The batch-size histogram counts a batch as it starts: the long request is running.
        wait_until(lambda: server.metric("modelpack_batch_size_count") > runs or self.status is not None, 120,
                   "the long request to start running")

    def _run(self, server: Process) -> None:
        self.status = httpx.post(f"{server.url}/v2/models/slow/infer", json=_body(BUSY_ROWS), timeout=300).status_code

    def join(self) -> int | None:
        self.thread.join(timeout=300)
        return self.status


@pytest.fixture(scope="module")
def slow_server(slow_package: Path):
    grpc_port = free_port()
    server = Process(slow_package, "--max-batch-size", "1", "--grpc-port", str(grpc_port))
    server.grpc_port = grpc_port  # type: ignore[attr-defined]
    yield server
    server.stop()


def _runs(server: Process) -> float:
    return server.metric("modelpack_batch_size_count")


def _send_infer(server: Process, rows: int) -> socket.socket:
    body = json.dumps(_body(rows)).encode()
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                   b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return client


def test_a_queued_http_request_whose_client_hangs_up_never_runs(slow_server: Process) -> None:
    server = slow_server
    runs, dropped = _runs(server), server.metric("modelpack_dropped_total")
    busy = Busy(server)
    assert busy.status is None, "the long request finished before the test could queue behind it"
    stays = _send_infer(server, 8)
    wait_until(lambda: server.metric("modelpack_queue_depth") == 1, 60, "the first short request to be queued")
    leaves = _send_infer(server, 8)
    wait_until(lambda: server.metric("modelpack_queue_depth") == 2, 60, "the second short request to be queued")
    leaves.close()  # its client goes away while it waits, behind another request that stays
    wait_until(lambda: server.metric("modelpack_dropped_total") == dropped + 1, 60, "the request to be dropped")
    assert server.metric("modelpack_queue_depth") == 1
    assert busy.join() == 200
    stays.settimeout(120)
    assert stays.recv(65536).startswith(b"HTTP/1.1 200 ")  # the one that stayed is answered
    stays.close()
    # The long request and the one that stayed ran; the dropped one never reached the model.
    assert _runs(server) == runs + 2
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'modelpack_dropped_total{model="slow",version="' in metrics and 'reason="client_gone"}' in metrics
    assert 'route="/v2/models/{name}/infer",status="499"} 1' in metrics
    # The server goes on answering.
    answer = httpx.post(f"{server.url}/v2/models/slow/infer", json=_body(8), timeout=60)
    assert answer.status_code == 200 and _runs(server) == runs + 3
    assert "Traceback" not in server.log and "Exception in ASGI" not in server.log, server.log


def test_a_queued_grpc_call_cancelled_by_its_client_never_runs(slow_server: Process) -> None:
    import tritonclient.grpc as grpcclient

    server = slow_server
    runs, dropped = _runs(server), server.metric("modelpack_dropped_total")
    busy = Busy(server)
    assert busy.status is None, "the long request finished before the test could queue behind it"
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")  # type: ignore[attr-defined]
    feed = grpcclient.InferInput("x", [1, 8, 1], "FP32")
    feed.set_data_from_numpy(np.full((1, 8, 1), 0.5, np.float32))
    outcome: list[object] = []
    call = client.async_infer("slow", [feed], callback=lambda result, error: outcome.append(error))
    wait_until(lambda: server.metric("modelpack_queue_depth") == 1, 60, "the gRPC call to be queued")
    call.cancel()  # RST_STREAM(CANCEL)
    wait_until(lambda: server.metric("modelpack_dropped_total") == dropped + 1, 60, "the call to be dropped")
    assert server.metric("modelpack_queue_depth") == 0
    assert busy.join() == 200
    assert _runs(server) == runs + 1
    wait_until(lambda: bool(outcome), 60, "the client to hear of its cancelled call")
    assert outcome[0] is not None and "cancel" in str(outcome[0]).lower()
    client.close()
    assert "Traceback" not in server.log, server.log


# -- tracing ---------------------------------------------------------------------------------------------------

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class OtlpReceiver:
    """A real OTLP/HTTP receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest; keeps every span."""

    def __init__(self) -> None:
        import gzip
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[object] = []
        self.paths: list[str] = []
        spans, paths = self.spans, self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                paths.append(self.path)
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        spans.extend(scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def named(self, name: str) -> list[object]:
        return [s for s in list(self.spans) if s.name == name]  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attributes(span: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:  # type: ignore[attr-defined]
        value = kv.value
        out[kv.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


def _check_trace(receiver: OtlpReceiver, root_name: str) -> None:
    roots = [s for s in receiver.named(root_name) if s.trace_id.hex() == TRACE_ID]  # type: ignore[attr-defined]
    assert len(roots) == 1, [s.name for s in receiver.spans]  # type: ignore[attr-defined]
    root = roots[0]
    assert root.parent_span_id.hex() == PARENT_ID  # type: ignore[attr-defined]
    assert _attributes(root)["modelpack.model"] == "mlp" and _attributes(root)["modelpack.model_version"] == "1"
    assert _attributes(root)["modelpack.batch_rows"] == 2
    children = [s for s in receiver.spans if s.parent_span_id == root.span_id]  # type: ignore[attr-defined]
    assert [s.name for s in sorted(children, key=lambda s: s.start_time_unix_nano)] == [  # type: ignore[attr-defined]
        "decode", "queue wait", "batch", "run", "encode"]
    for child in children:
        assert child.trace_id.hex() == TRACE_ID  # type: ignore[attr-defined]
        assert root.start_time_unix_nano <= child.start_time_unix_nano  # type: ignore[attr-defined]
        assert child.end_time_unix_nano <= root.end_time_unix_nano  # type: ignore[attr-defined]
        assert _attributes(child) == {"modelpack.model": "mlp", "modelpack.model_version": "1"}


def test_requests_are_traced_to_an_otlp_receiver_with_the_incoming_traceparent(mlp_package: Path) -> None:
    import tritonclient.grpc as grpcclient

    receiver = OtlpReceiver()
    grpc_port = free_port()
    x = np.ones((2, 16), np.float32)
    server = Process(mlp_package, "--grpc-port", str(grpc_port), "--otlp-endpoint", receiver.url,
                     env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    try:
        assert server.logged(f"tracing requests to {receiver.url}/v1/traces")
        unsampled = "11111111111111111111111111111111"  # a caller that does not sample this trace (flags 00)
        body = {"inputs": [{"name": "features", "shape": [2, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
        answer = httpx.post(f"{server.url}/v2/models/mlp/infer", json=body,
                            headers={"traceparent": f"00-{unsampled}-{PARENT_ID}-00"})
        assert answer.status_code == 200, answer.text
        answer = httpx.post(f"{server.url}/v2/models/mlp/infer", headers={"traceparent": TRACEPARENT}, json={
            "inputs": [{"name": "features", "shape": [2, 16], "datatype": "FP32", "data": x.ravel().tolist()}]})
        assert answer.status_code == 200, answer.text
        wait_until(lambda: len(receiver.named("POST /v2/models/{name}/infer")) == 1, 60, "the HTTP request's trace")
        wait_until(lambda: len(receiver.named("encode")) == 1, 60, "its encode span")
        _check_trace(receiver, "POST /v2/models/{name}/infer")
        assert set(receiver.paths) == {"/v1/traces"}
        # Spans leave in order, so the unsampled request's would have come first: there are none.
        assert not [sp for sp in receiver.spans if sp.trace_id.hex() == unsampled]  # type: ignore[attr-defined]
        assert len(receiver.named("POST /v2/models/{name}/infer")) == 1 and len(receiver.named("run")) == 1
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # no model: no trace
        http_spans = len(receiver.spans)

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        feed = grpcclient.InferInput("features", [2, 16], "FP32")
        feed.set_data_from_numpy(x)
        client.infer("mlp", [feed], headers={"traceparent": TRACEPARENT})
        client.close()
        wait_until(lambda: len(receiver.named("grpc ModelInfer")) == 1, 60, "the gRPC call's trace")
        wait_until(lambda: len(receiver.spans) == http_spans + 6, 60, "its five stage spans")
        _check_trace(receiver, "grpc ModelInfer")
    finally:
        server.stop()
        receiver.close()


def test_serving_without_tracing_imports_no_opentelemetry(mlp_package: Path) -> None:
    import subprocess
    import sys

    code = (f"import sys\nfrom modelpack.testing import InProcessClient\nc = InProcessClient({str(mlp_package)!r})\n"
            "r = c.post('/v2/models/mlp/infer', json={'inputs': [{'name': 'features', 'shape': [1, 16], "
            "'datatype': 'FP32', 'data': [0.0] * 16}]})\nassert r.status_code == 200, r.text\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_otlp_endpoint_must_be_a_url(mlp_package: Path) -> None:
    result = run_cli("serve", mlp_package, "--otlp-endpoint", "localhost:4318")
    assert result.exit_code == 2 and "--otlp-endpoint 'localhost:4318': an http:// or https:// URL" in result.output
