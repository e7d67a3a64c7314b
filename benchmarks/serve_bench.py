"""Serving throughput and latency against baselines, all in one run, with wrk on loopback.

    .venv/bin/python benchmarks/serve_bench.py [--duration 5] [--rounds 3] [--json out.json]

Needs wrk (Debian: apt-get install wrk), a C load generator, so the client is not the
bottleneck. Each configuration runs `--rounds` times, interleaved with the others, and
the median round is reported; ratios are between medians of the same run.

1. A tiny MLP (64-256-256-10), batch-1 JSON, 16 keep-alive connections:
   - bare: a minimal Starlette endpoint calling onnxruntime directly (no auth, metrics or validation);
   - modelpack serve, with an API key, metrics and validation on (V2 JSON and /predict);
   - naive Flask: the seed document's design, loading the model inside every request.
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
    def __init__(self, args: list[str], env: dict[str, str], ready_url: str, cwd: Path | None = None) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(args, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args} exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(ready_url, timeout=1).status_code < 500:
                    self.ready_s = time.perf_counter() - self.started
                    return
            except httpx.HTTPError:
                time.sleep(0.02)
        raise RuntimeError(f"{args} never became ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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


def median_round(rounds: list[dict]) -> dict:
    mid = sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]
    return {**mid, "rps_rounds": [round(r["rps"]) for r in rounds]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
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

        def start(kind: str, port: int) -> Server:
            if kind == "bare":
                return Server([str(BIN / "python"), "-m", "uvicorn", "bare:app", "--port", str(port), *uvicorn_flags],
                              {"BENCH_MODEL": str(work / "mlp.onnx")}, f"http://127.0.0.1:{port}/", cwd=work)
            if kind == "flask":
                return Server([str(BIN / "python"), "naive_flask.py"], {"BENCH_MODEL": str(work / "mlp.onnx"),
                                                                        "PORT": str(port)},
                              f"http://127.0.0.1:{port}/", cwd=work)
            return Server([str(BIN / "modelpack"), "serve", str(tiny), "--port", str(port)], {"MODELPACK_API_KEY": KEY},
                          f"http://127.0.0.1:{port}/v2/health/ready")

        configs = {
            "bare Starlette + onnxruntime (V2 JSON)": ("bare", "/v2/models/m/infer", v2, {}),
            "modelpack serve (V2 JSON, auth+metrics+validation)": ("modelpack", "/v2/models/mlp/infer", v2, auth),
            "modelpack serve (/predict, auth+metrics+validation)": ("modelpack", "/predict", simple, auth),
            "naive Flask, model loaded per request (/predict)": ("flask", "/predict", simple, {}),
        }
        rounds: dict[str, list[dict]] = {label: [] for label in configs}
        for r in range(args.rounds):
            for label, (kind, path, body, headers) in configs.items():
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
        for _ in range(3):
            port = free_port()
            server = Server([str(BIN / "modelpack"), "serve", str(demo), "--port", str(port)], {},
                            f"http://127.0.0.1:{port}/v2/health/ready")
            ready.append(server.ready_s)
            server.stop()
        results["start_to_ready_s"] = {"package": str(demo), "median": round(statistics.median(ready), 3),
                                       "runs": [round(r, 3) for r in ready]}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bare = results["tiny_mlp"]["bare Starlette + onnxruntime (V2 JSON)"]["rps"]
    flask = results["tiny_mlp"]["naive Flask, model loaded per request (/predict)"]["rps"]
    print("\nTiny MLP (64-256-256-10), batch-1 JSON, 16 connections, wrk on loopback, median of "
          f"{args.rounds} interleaved {args.duration:g}s rounds:\n")
    print("| server | req/s | p50 ms | p99 ms | vs bare | vs naive Flask | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    for label, r in results["tiny_mlp"].items():
        print(f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps'] / bare:.2f}x | "
              f"{r['rps'] / flask:.1f}x | {r['non_2xx']} |")
    print("\nDynamic batching, batch-1 JSON requests, 32 connections:\n")
    print("| model | modelpack serve | req/s | p50 ms | p99 ms | vs batching off |")
    print("|---|---|---|---|---|---|")
    for model_label, rows in results["batching"].items():
        off = rows["batching off (--max-batch-size 1)"]["rps"]
        for label, r in rows.items():
            print(f"| {model_label} | {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                  f"{r['rps'] / off:.2f}x |")
    sr = results["start_to_ready_s"]
    print(f"\nStart to ready ({Path(sr['package']).name}): median {sr['median']:.2f} s over {len(sr['runs'])} starts")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
