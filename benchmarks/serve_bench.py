"""Serving throughput and latency against baselines, all in one run, with wrk on loopback.

    .venv/bin/python benchmarks/serve_bench.py [--duration 5] [--rounds 3] [--json out.json]

Needs wrk and h2load (Debian: apt-get install wrk nghttp2-client), C load generators, so the
client is not the bottleneck. MLServer is installed into its own venv under benchmarks/.peers on
first use (from PyPI); KServe comes with the dev dependencies. Each configuration runs `--rounds` times, interleaved with the others (in a rotated order each round), and
the median round is reported; ratios are between medians of the same run.

1. A tiny MLP (64-256-256-10), batch-1 JSON, 16 keep-alive connections:
   - bare: a minimal Starlette endpoint calling onnxruntime directly (no auth, metrics or validation);
   - modelpack serve, with an API key, metrics, validation and the request limits on (V2 JSON and /predict);
   - the peers, each serving the same ONNX file through onnxruntime with its documented custom-runtime API:
     MLServer 1.7.1 (an `MLModel`, `parallel_workers: 0`, its fastest setting for a model this small) and
     KServe 0.21's Python ModelServer (a `kserve.Model`, default settings);
   - naive Flask: the seed document's design, loading the model inside every request.
   The same MLP over KServe V2 gRPC (ModelInfer, raw tensor contents), driven by h2load (nghttp2-client)
   with a pre-encoded request, against modelpack serve --grpc-port, KServe and MLServer. h2load counts HTTP
   statuses only, so each server's gRPC answer is checked with a real client before and after the load.
2. Compute-heavier models, 32 connections, dynamic batching on and off: a wide MLP (memory-bound
   at batch 1, where batching shines) and a conv net (compute-bound, where it helps little).
3. Start-to-ready time of `modelpack serve` for the demo package.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KEY = "bench-key-0123456789"

BARE_APP = '''
import os, numpy as np, onnxruntime as ort, orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

session = ort.InferenceSession(os.environ["BENCH_MODEL"], providers=["CPUExecutionProvider"])
NAME = session.get_inputs()[0].name

async def infer(request):
    tensor = orjson.loads(await request.body())["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    (y,) = session.run(None, {NAME: x})
    body = {"outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel()}]}
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

app = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"])])
'''

FLASK_APP = '''
import os, numpy as np, onnxruntime as ort
from flask import Flask, request, jsonify

app = Flask(__name__)

@app.route("/predict", methods=["POST"])
def predict():
    data = request.get_json()
    model = ort.InferenceSession(os.environ["BENCH_MODEL"])  # the seed's design: load inside every request
    x = np.asarray(data["input_data"], dtype=np.float32)
    prediction = model.run(None, {model.get_inputs()[0].name: x})[0]
    return jsonify({"prediction": prediction.tolist()})

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
'''


KSERVE_APP = '''
import os, numpy as np, onnxruntime as ort
from kserve import InferOutput, InferResponse, Model, ModelServer

class OnnxMLP(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        (y,) = self.session.run(None, {self.input: payload.inputs[0].as_numpy()})
        out = InferOutput(name="y", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])

if __name__ == "__main__":
    ModelServer().start([OnnxMLP("m", os.environ["BENCH_MODEL"])])
'''

MLSERVER_RUNTIME = '''
import numpy as np, onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

class OnnxMLP(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        (y,) = self.session.run(None, {self.input: NumpyCodec.decode_input(payload.inputs[0])})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
'''
MLSERVER_REQUIREMENTS = ["mlserver==1.7.1", "onnxruntime>=1.20,<1.33"]
PEERS = ROOT / "benchmarks" / ".peers"


def peer_python(name: str, requirements: list[str]) -> Path:
    """A venv of its own for a peer whose pins clash with ours, made once under benchmarks/.peers."""
    venv = PEERS / name
    python = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    if not python.exists() or not stamp.exists() or stamp.read_text() != "\n".join(requirements):
        print(f"installing {', '.join(requirements)} into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
        stamp.write_text("\n".join(requirements))
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlp(path: Path, sizes: list[int]) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype("float32"), f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, "float32"), f"b{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out if out == "y" else f"g{i}"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def convnet(path: Path) -> Path:
    """A wider conv net on 32x32x3 inputs: a few MFLOPs per example, so batching has work to share."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:]))
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype("float32"), name)

    inits = [w("c1", (32, 3, 3, 3)), w("c2", (64, 32, 3, 3)), w("c3", (64, 64, 3, 3)),
             numpy_helper.from_array((rng.standard_normal((64, 10)) / 8).astype("float32"), "fc"),
             numpy_helper.from_array(np.array([0, 3, 1, 2], "int64"), "perm_unused")]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "c1"], ["a1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2"], ["a2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "c3"], ["a3"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "convnet",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32, 32, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits[:-1])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def package(model: Path, out: Path, name: str) -> Path:
    subprocess.run([str(BIN / "modelpack"), "optimize", str(model), "-o", str(out), "--name", name, "-q", "--force",
                    "export"], check=True)
    return out


class Server:
    def __init__(self, args: list[str], env: dict[str, str], ready_url: str, cwd: Path | None = None,
                 ok: int | None = None) -> None:
        """Start, and wait until `ready_url` answers (`ok` exactly, when given; else anything but a 5xx)."""
        self.started = time.perf_counter()
        # The log goes to a file: a peer that logs every request (KServe does) would block on a full pipe.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(args, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=self.log, text=True)
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{args} exited: {self.log.read()[-3000:]}")
            try:
                code = httpx.get(ready_url, timeout=1).status_code
                if code == ok if ok is not None else code < 500:
                    self.ready_s = time.perf_counter() - self.started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{args} never became ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wrk(url: str, body: dict, connections: int, duration: float, headers: dict[str, str], work: Path) -> dict:
    script = work / f"wrk-{abs(hash(url)) % 10**8}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(duration))}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": ms("50"),
            "p99_ms": ms("99"), "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock.group(1) if sock else ""}


GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


def grpc_request(model: str, x: np.ndarray) -> bytes:
    """A serialized ModelInferRequest with one raw FP32 input 'x'."""
    from modelpack.serve.protocols.grpc_v2 import messages

    request = messages().ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request.SerializeToString()


def grpc_answers(port: int, model: str, x: np.ndarray, expected: np.ndarray, headers: dict[str, str]) -> bool:
    """One real gRPC call: status OK and outputs equal to onnxruntime's (h2load cannot see grpc-status)."""
    import grpc

    from modelpack.serve.protocols.grpc_v2 import messages

    m = messages()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_PATH, request_serializer=lambda b: b,
                                   response_deserializer=m.ModelInferResponse.FromString)
        response = call(grpc_request(model, x), metadata=tuple((k.lower(), v) for k, v in headers.items()),
                        timeout=10)
    if response.raw_output_contents:
        y = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    else:
        y = np.asarray(response.outputs[0].contents.fp32_contents, dtype="float32")
    return bool(np.allclose(y, expected.ravel(), atol=1e-4))


def h2load(port: int, body: bytes, connections: int, duration: float, headers: dict[str, str], work: Path) -> dict:
    """Unary gRPC calls from h2load: a pre-encoded frame (flag byte, 4-byte length, message) per request."""
    frame = work / f"grpc-{port}.bin"
    frame.write_bytes(b"\0" + len(body).to_bytes(4, "big") + body)
    flags = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    for k, v in headers.items():
        flags += ["-H", f"{k.lower()}: {v}"]
    out = subprocess.run(["h2load", "-t1", f"-c{connections}", "-m1", f"-D{max(1, int(duration))}",
                          "--warm-up-time=1", "-d", str(frame), *flags, f"http://127.0.0.1:{port}{GRPC_PATH}"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     out)
    timing = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)

    def ms(value: str, unit: str) -> float:
        return float(value) / 1000 if unit == "us" else float(value) * 1000 if unit == "s" else float(value)

    return {"rps": rps, "mean_ms": ms(timing.group(5), timing.group(6)), "max_ms": ms(timing.group(3), timing.group(4)),
            "done": int(done.group(1)), "failed": int(done.group(3)) + int(done.group(4))}


def rotated(configs: dict, r: int) -> list:
    """The configurations in a different order each round, so that a machine that speeds up or slows down
    during the run does not favour whichever server always goes first."""
    items = list(configs.items())
    return items[r % len(items):] + items[:r % len(items)] if items else []


def median_round(rounds: list[dict]) -> dict:
    mid = sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]
    return {**mid, "rps_rounds": [round(r["rps"]) for r in rounds]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--sections", default="http,grpc,batching,ready",
                        help="comma-separated: http (tiny MLP over HTTP), grpc, batching, ready (start to ready)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    for tool, package_name in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install {package_name}")
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    results: dict[str, dict] = {}
    try:
        (work / "bare.py").write_text(textwrap.dedent(BARE_APP))
        (work / "naive_flask.py").write_text(textwrap.dedent(FLASK_APP))
        tiny = package(mlp(work / "mlp.onnx", [64, 256, 256, 10]), work / "mlp-pkg", "mlp")
        conv = package(convnet(work / "conv.onnx"), work / "conv-pkg", "conv")
        x = np.random.default_rng(1).random((1, 64), dtype=np.float32)
        v2 = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
        simple = {"input_data": x.tolist()}
        auth = {"Authorization": f"Bearer {KEY}"}
        uvicorn_flags = ["--no-access-log", "--log-level", "warning"]

        (work / "kserve_app.py").write_text(textwrap.dedent(KSERVE_APP))
        mls_dir = work / "mlserver"
        mls_dir.mkdir()
        (mls_dir / "runtime.py").write_text(textwrap.dedent(MLSERVER_RUNTIME))
        (mls_dir / "model-settings.json").write_text(json.dumps({
            "name": "m", "implementation": "runtime.OnnxMLP", "parameters": {"uri": str(work / "mlp.onnx")}}))
        mlserver = peer_python("mlserver-1.7.1", MLSERVER_REQUIREMENTS).parent / "mlserver"

        def start(kind: str, port: int, grpc_port: int | None = None) -> Server:
            model_env = {"BENCH_MODEL": str(work / "mlp.onnx")}
            grpc_port = grpc_port or free_port()
            if kind == "bare":
                return Server([str(BIN / "python"), "-m", "uvicorn", "bare:app", "--port", str(port), *uvicorn_flags],
                              model_env, f"http://127.0.0.1:{port}/", cwd=work)
            if kind == "flask":
                return Server([str(BIN / "python"), "naive_flask.py"], {**model_env, "PORT": str(port)},
                              f"http://127.0.0.1:{port}/", cwd=work)
            if kind == "kserve":
                return Server([str(BIN / "python"), "kserve_app.py", "--http_port", str(port), "--grpc_port",
                               str(grpc_port)], model_env, f"http://127.0.0.1:{port}/v2/models/m/ready", cwd=work, ok=200)
            if kind == "mlserver":
                (mls_dir / "settings.json").write_text(json.dumps({
                    "http_port": port, "grpc_port": grpc_port, "metrics_port": free_port(), "parallel_workers": 0}))
                return Server([str(mlserver), "start", str(mls_dir)], {}, f"http://127.0.0.1:{port}/v2/models/m/ready",
                              cwd=mls_dir, ok=200)
            return Server([str(BIN / "modelpack"), "serve", str(tiny), "--port", str(port), "--grpc-port",
                           str(grpc_port)], {"MODELPACK_API_KEY": KEY}, f"http://127.0.0.1:{port}/v2/health/ready")

        configs = {
            "bare Starlette + onnxruntime (V2 JSON)": ("bare", "/v2/models/m/infer", v2, {}),
            "modelpack serve (V2 JSON, auth+metrics+validation+limits)": ("modelpack", "/v2/models/mlp/infer", v2,
                                                                          auth),
            "modelpack serve (/predict, auth+metrics+validation+limits)": ("modelpack", "/predict", simple, auth),
            "MLServer 1.7.1 (V2 JSON)": ("mlserver", "/v2/models/m/infer", v2, {}),
            "KServe 0.21 ModelServer (V2 JSON)": ("kserve", "/v2/models/m/infer", v2, {}),
            "naive Flask, model loaded per request (/predict)": ("flask", "/predict", simple, {}),
        }
        configs = configs if "http" in sections else {}
        rounds: dict[str, list[dict]] = {label: [] for label in configs}
        for r in range(args.rounds):
            for label, (kind, path, body, headers) in rotated(configs, r):
                port = free_port()
                server = start(kind, port)
                try:
                    # Warm up the server and the client's connections before measuring.
                    wrk(f"http://127.0.0.1:{port}{path}", body, 16, 1, headers, work)
                    rounds[label].append(wrk(f"http://127.0.0.1:{port}{path}", body, 16,
                                             args.duration, headers, work))
                finally:
                    server.stop()
                print(f"round {r + 1} {label}: {rounds[label][-1]['rps']:.0f} req/s", file=sys.stderr)
        tiny_results = {label: median_round(rs) for label, rs in rounds.items()}
        results["tiny_mlp"] = tiny_results

        import onnxruntime as ort

        expected = ort.InferenceSession(str(work / "mlp.onnx")).run(None, {"x": x})[0]
        grpc_configs = {
            "modelpack serve --grpc-port (auth+metrics+validation+limits)": ("modelpack", "mlp", auth),
            "KServe 0.21 ModelServer (gRPC)": ("kserve", "m", {}),
            "MLServer 1.7.1 (gRPC)": ("mlserver", "m", {}),
        }
        grpc_configs = grpc_configs if "grpc" in sections else {}
        grounds: dict[str, list[dict]] = {label: [] for label in grpc_configs}
        for r in range(args.rounds):
            for label, (kind, model_name, headers) in rotated(grpc_configs, r):
                port, grpc_port = free_port(), free_port()
                server = start(kind, port, grpc_port)
                try:
                    if not grpc_answers(grpc_port, model_name, x, expected, headers):
                        raise RuntimeError(f"{label}: wrong gRPC answer before the load")
                    grounds[label].append(h2load(grpc_port, grpc_request(model_name, x), 16, args.duration, headers,
                                                 work))
                    if not grpc_answers(grpc_port, model_name, x, expected, headers):
                        raise RuntimeError(f"{label}: wrong gRPC answer after the load")
                finally:
                    server.stop()
                print(f"round {r + 1} {label}: {grounds[label][-1]['rps']:.0f} req/s", file=sys.stderr)
        results["grpc"] = {label: median_round(rs) for label, rs in grounds.items()}

        wide = package(mlp(work / "wide.onnx", [512, 2048, 2048, 2048, 10]), work / "wide-pkg", "wide")
        xw = np.random.default_rng(2).random((1, 512), dtype=np.float32)
        xc = np.random.default_rng(3).random((1, 32, 32, 3), dtype=np.float32)
        heavy = {
            "wide MLP (512-2048-2048-2048-10, 10M weights)": (wide, "wide", {"inputs": [
                {"name": "x", "shape": [1, 512], "datatype": "FP32", "data": xw.ravel().tolist()}]}),
            "conv net (32x32x3, 3 conv layers)": (conv, "conv", {"inputs": [
                {"name": "x", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": xc.ravel().tolist()}]}),
        }
        batch_configs = {"batching on (--max-batch-size 32)": ["--max-batch-size", "32"],
                         "batching off (--max-batch-size 1)": ["--max-batch-size", "1"]}
        heavy = heavy if "batching" in sections else {}
        results["batching"] = {}
        for model_label, (pkg, name, body) in heavy.items():
            brounds: dict[str, list[dict]] = {label: [] for label in batch_configs}
            for r in range(args.rounds):
                for label, flags in batch_configs.items():
                    port = free_port()
                    server = Server([str(BIN / "modelpack"), "serve", str(pkg), "--port", str(port), *flags],
                                    {"MODELPACK_API_KEY": KEY}, f"http://127.0.0.1:{port}/v2/health/ready")
                    url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
                    try:
                        wrk(url, body, 32, 1, auth, work)
                        brounds[label].append(wrk(url, body, 32, args.duration, auth, work))
                    finally:
                        server.stop()
                    print(f"round {r + 1} {name} {label}: {brounds[label][-1]['rps']:.0f} req/s", file=sys.stderr)
            results["batching"][model_label] = {label: median_round(rs) for label, rs in brounds.items()}

        demo = ROOT / "build" / "demo"
        if not (demo / "modelpack.json").exists():
            demo = package(ROOT / "examples" / "digits" / "model.keras", work / "demo", "digits")
        ready = []
        for _ in range(3 if "ready" in sections else 0):
            port = free_port()
            server = Server([str(BIN / "modelpack"), "serve", str(demo), "--port", str(port)], {},
                            f"http://127.0.0.1:{port}/v2/health/ready")
            ready.append(server.ready_s)
            server.stop()
        if ready:
            results["start_to_ready_s"] = {"package": str(demo), "median": round(statistics.median(ready), 3),
                                           "runs": [round(r, 3) for r in ready]}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict, args: argparse.Namespace) -> None:
    rounds = f"median of {args.rounds} interleaved {args.duration:g}s rounds"
    if results.get("tiny_mlp"):
        tiny = results["tiny_mlp"]
        bare = tiny["bare Starlette + onnxruntime (V2 JSON)"]["rps"]
        flask = tiny["naive Flask, model loaded per request (/predict)"]["rps"]
        mls = tiny["MLServer 1.7.1 (V2 JSON)"]["rps"]
        kserve = tiny["KServe 0.21 ModelServer (V2 JSON)"]["rps"]
        print(f"\nTiny MLP (64-256-256-10), batch-1 JSON, 16 connections, wrk on loopback, {rounds}:\n")
        print("| server | req/s | p50 ms | p99 ms | vs bare | vs MLServer | vs KServe | vs naive Flask | non-2xx |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, r in tiny.items():
            print(f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps'] / bare:.2f}x | "
                  f"{r['rps'] / mls:.1f}x | {r['rps'] / kserve:.1f}x | {r['rps'] / flask:.1f}x | {r['non_2xx']} |")
    if results.get("grpc"):
        grpc = results["grpc"]
        kserve_grpc = grpc["KServe 0.21 ModelServer (gRPC)"]["rps"]
        print(f"\nThe same MLP over KServe V2 gRPC (ModelInfer, raw contents), h2load, 16 connections, {rounds}:\n")
        print("| server | req/s | mean ms | max ms | vs KServe | failed |")
        print("|---|---|---|---|---|---|")
        for label, r in grpc.items():
            print(f"| {label} | {r['rps']:.0f} | {r['mean_ms']:.2f} | {r['max_ms']:.2f} | "
                  f"{r['rps'] / kserve_grpc:.2f}x | {r['failed']} |")
    if results.get("batching"):
        print("\nDynamic batching, batch-1 JSON requests, 32 connections:\n")
        print("| model | modelpack serve | req/s | p50 ms | p99 ms | vs batching off |")
        print("|---|---|---|---|---|---|")
        for model_label, rows in results["batching"].items():
            off = rows["batching off (--max-batch-size 1)"]["rps"]
            for label, r in rows.items():
                print(f"| {model_label} | {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                      f"{r['rps'] / off:.2f}x |")
    sr = results.get("start_to_ready_s")
    if sr:
        print(f"\nStart to ready ({Path(sr['package']).name}): median {sr['median']:.2f} s over {len(sr['runs'])} "
              "starts")


if __name__ == "__main__":
    sys.exit(main())
