"""The model repository against today's single-package server, and version swaps under load, in one run.

    .venv/bin/python benchmarks/repo_bench.py [--duration 5] [--rounds 3] [--baseline-ref main] [--json out.json]

1. One tiny MLP (64-256-256-10), batch-1 V2 JSON over 16 keep-alive connections (wrk), and the same over
   V2 gRPC (h2load), with an API key: the baseline is `modelpack serve PKG` from `--baseline-ref` (its `src/`,
   exported with `git archive`, run with the same venv); against it, this tree's `serve PKG` and this tree's
   `serve REPO` holding the same package as `m/1`. Rounds are interleaved in a rotated order; medians are
   compared.
3. Density: one `serve REPO` holding `--models` copies of the tiny MLP (m0 ... m19) against as many
   `serve PKG` processes: resident memory (VmRSS once ready) of the one against the sum of the many, and
   the throughput of one hot model with the others loaded against a single-package server; the load and
   unload latency of each model through the repository API (p50 and max); and the same repository in
   MLServer 1.7.1's multi-model serving (one `model-settings.json` per model, `parallel_workers: 0`, the
   onnxruntime `MLModel` of serve_bench.py) for memory and throughput side by side. MLServer comes from its
   venv under benchmarks/.peers (serve_bench.py makes it) or `--mlserver`; the row is skipped without it.
4. Workers: `serve PKG` and `serve REPO` with `--workers 1` and `--workers 2` (the CPU budget sizes each
   worker's intra-op threads as cores // workers), requests/s and p99 with wrk, interleaved rounds.
2. Version swaps under load: `serve REPO --poll-s 0.2` under wrk, while a new version is copied in (then
   renamed into place) every `--swap-every-s` seconds; failed requests, socket errors and the p99 are
   reported next to a steady run of the same length in the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from serve_bench import (
    BIN,
    KEY,
    MLSERVER_RUNTIME,
    PEERS,
    ROOT,
    Server,
    free_port,
    grpc_request,
    h2load,
    median_round,
    mlp,
    package,
    rotated,
    wrk,
)


def baseline_tree(ref: str, work: Path) -> Path:
    out = work / "baseline"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def start(src: Path, target: Path, port: int, grpc_port: int, *extra: str) -> Server:
    return Server([str(BIN / "python"), "-m", "modelpack", "serve", str(target), "--port", str(port),
                   "--grpc-port", str(grpc_port), *extra], {"MODELPACK_API_KEY": KEY, "PYTHONPATH": str(src)},
                  f"http://127.0.0.1:{port}/v2/health/ready", ok=200)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--swap-every-s", type=float, default=2.0)
    parser.add_argument("--sections", default="throughput,swaps,density,workers")
    parser.add_argument("--mlserver", type=Path, default=PEERS / "mlserver-1.7.1" / "bin" / "mlserver",
                        help="the mlserver executable of a venv with mlserver 1.7.1 and onnxruntime")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    work = Path(tempfile.mkdtemp(prefix="repo-bench-"))
    results: dict[str, dict] = {}
    try:
        here, before = ROOT / "src", baseline_tree(args.baseline_ref, work)
        tiny = package(mlp(work / "mlp.onnx", [64, 256, 256, 10]), work / "mlp-pkg", "m")
        repo = work / "repo"
        (repo / "m").mkdir(parents=True)
        shutil.copytree(tiny, repo / "m" / "1")
        x = np.random.default_rng(1).random((1, 64), dtype=np.float32)
        v2 = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
        auth = {"Authorization": f"Bearer {KEY}"}
        configs = {
            f"serve PKG, {args.baseline_ref} (baseline)": (before, tiny),
            "serve PKG, this tree": (here, tiny),
            "serve REPO (m/1), this tree": (here, repo),
        }
        if "throughput" in sections:
            http_rounds: dict[str, list[dict]] = {label: [] for label in configs}
            grpc_rounds: dict[str, list[dict]] = {label: [] for label in configs}
            body = grpc_request("m", x)
            for r in range(args.rounds):
                for label, (src, target) in rotated(configs, r):
                    port, grpc_port = free_port(), free_port()
                    server = start(src, target, port, grpc_port)
                    try:
                        url = f"http://127.0.0.1:{port}/v2/models/m/infer"
                        wrk(url, v2, 16, 1, auth, work)
                        http_rounds[label].append(wrk(url, v2, 16, args.duration, auth, work))
                        grpc_rounds[label].append(h2load(grpc_port, body, 16, args.duration, auth, work))
                    finally:
                        server.stop()
                    print(f"round {r + 1} {label}: HTTP {http_rounds[label][-1]['rps']:.0f} req/s, gRPC "
                          f"{grpc_rounds[label][-1]['rps']:.0f} req/s", file=sys.stderr)
            for name, rounds in (("http", http_rounds), ("grpc", grpc_rounds)):
                medians = {label: median_round(rs) for label, rs in rounds.items()}
                base = next(iter(medians.values()))["rps"]
                for value in medians.values():
                    value["vs_baseline"] = round(value["rps"] / base, 3)
                results[name] = medians
        if "swaps" in sections:
            results["swaps"] = swaps(here, tiny, work, args, v2, auth)
        if "density" in sections:
            results["density"] = density(here, tiny, work, args, v2, auth)
            results["mlserver_density"] = mlserver_density(work, args, v2)
        if "workers" in sections:
            results["workers"] = workers(here, tiny, repo, work, args, v2, auth)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def swaps(src: Path, tiny: Path, work: Path, args: argparse.Namespace, body: dict, auth: dict) -> dict:
    """wrk against a polled repository: a steady run, then a run while versions are swapped in."""
    repo = work / "swap-repo"
    (repo / "m").mkdir(parents=True)
    shutil.copytree(tiny, repo / "m" / "1")
    port, grpc_port = free_port(), free_port()
    server = start(src, repo, port, grpc_port, "--poll-s", "0.2")
    url = f"http://127.0.0.1:{port}/v2/models/m/infer"
    duration = max(args.duration * 4, 12.0)
    stop = threading.Event()
    swapped: list[int] = []

    def swapper() -> None:
        version = 2
        while not stop.wait(args.swap_every_s):
            tmp = repo / "m" / f".{version}.tmp"
            shutil.copytree(tiny, tmp)
            tmp.rename(repo / "m" / str(version))
            swapped.append(version)
            version += 1

    try:
        wrk(url, body, 16, 1, auth, work)
        steady = wrk(url, body, 16, duration, auth, work)
        thread = threading.Thread(target=swapper, daemon=True)
        thread.start()
        started = time.monotonic()
        during = wrk(url, body, 16, duration, auth, work)
        stop.set()
        thread.join()
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    return {"steady": steady, "during_swaps": during, "versions_swapped_in": len(swapped),
            "seconds": round(elapsed, 1), "p99_ratio": round(during["p99_ms"] / steady["p99_ms"], 2),
            "rps_ratio": round(during["rps"] / steady["rps"], 3)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def density(src: Path, tiny: Path, work: Path, args: argparse.Namespace, body: dict, auth: dict) -> dict:
    """One server of N models against N servers of one: memory, and one hot model's throughput."""
    repo = work / "density-repo"
    for i in range(args.models):
        (repo / f"m{i}").mkdir(parents=True)
        shutil.copytree(tiny, repo / f"m{i}" / "1")
    started = time.perf_counter()
    port = free_port()
    one = start(src, repo, port, free_port())
    one_ready_s = time.perf_counter() - started
    try:
        one_rss = rss_mb(one.proc.pid)
        url = f"http://127.0.0.1:{port}/v2/models/m0/infer"
        wrk(url, body, 16, 1, auth, work)
        hot = wrk(url, body, 16, args.duration, auth, work)
        unload_ms, load_ms = [], []
        for i in range(1, args.models):  # through the repository API, one model at a time, nothing else running
            for action, timings in (("unload", unload_ms), ("load", load_ms)):
                started_at = time.perf_counter()
                answer = httpx.post(f"http://127.0.0.1:{port}/v2/repository/models/m{i}/{action}", headers=auth,
                                    timeout=60)
                timings.append((time.perf_counter() - started_at) * 1e3)
                assert answer.status_code == 200, answer.text
    finally:
        one.stop()
    singles: list[Server] = []
    try:
        ports = []
        for _ in range(args.models):
            ports.append(free_port())
            singles.append(start(src, tiny, ports[-1], free_port()))
        many_rss = sum(rss_mb(s.proc.pid) for s in singles)
        url = f"http://127.0.0.1:{ports[0]}/v2/models/m/infer"
        wrk(url, body, 16, 1, auth, work)
        alone = wrk(url, body, 16, args.duration, auth, work)
    finally:
        for server in singles:
            server.stop()
    return {"models": args.models, "one_server_rss_mb": round(one_rss, 1), "many_servers_rss_mb": round(many_rss, 1),
            "rss_ratio": round(one_rss / many_rss, 3), "one_server_ready_s": round(one_ready_s, 2),
            "hot_model_rps": hot["rps"], "single_server_rps": alone["rps"],
            "hot_rps_ratio": round(hot["rps"] / alone["rps"], 3),
            "hot_p99_ms": hot["p99_ms"], "single_server_p99_ms": alone["p99_ms"],
            "load_ms_p50": round(float(np.median(load_ms)), 1), "load_ms_max": round(max(load_ms), 1),
            "unload_ms_p50": round(float(np.median(unload_ms)), 1), "unload_ms_max": round(max(unload_ms), 1)}


def tree_rss_mb(pid: int) -> float:
    """VmRSS of a process and its children (MLServer may start helper processes)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += rss_mb(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            todo += [int(c) for c in children.read_text().split()]
    return total


def mlserver_density(work: Path, args: argparse.Namespace, body: dict) -> dict:
    """The same N-model repository in MLServer 1.7.1 (multi-model serving): memory and one hot model's rate."""
    if not args.mlserver.exists():
        message = f"skipped: no MLServer at {args.mlserver} (run benchmarks/serve_bench.py once, or pass --mlserver)"
        print(message, file=sys.stderr)
        return {"skipped": message}
    root = work / "mlserver-repo"
    root.mkdir()
    (root / "runtime.py").write_text(textwrap.dedent(MLSERVER_RUNTIME))
    onnx_file = work / "mlp.onnx"
    for i in range(args.models):
        (root / f"m{i}").mkdir()
        (root / f"m{i}" / "model-settings.json").write_text(json.dumps({
            "name": f"m{i}", "implementation": "runtime.OnnxMLP", "parameters": {"uri": str(onnx_file)}}))
    port = free_port()
    (root / "settings.json").write_text(json.dumps({"http_port": port, "grpc_port": free_port(),
                                                    "metrics_port": free_port(), "parallel_workers": 0}))
    started = time.perf_counter()
    server = Server([str(args.mlserver), "start", str(root)], {"PYTHONPATH": str(root)},
                    f"http://127.0.0.1:{port}/v2/models/m{args.models - 1}/ready", cwd=root, ok=200)
    ready_s = time.perf_counter() - started
    try:
        for i in range(args.models):  # every model, not only the last, is ready before memory is read
            assert httpx.get(f"http://127.0.0.1:{port}/v2/models/m{i}/ready", timeout=5).status_code == 200
        rss = tree_rss_mb(server.proc.pid)
        url = f"http://127.0.0.1:{port}/v2/models/m0/infer"
        wrk(url, body, 16, 1, {}, work)
        hot = wrk(url, body, 16, args.duration, {}, work)
    finally:
        server.stop()
    return {"models": args.models, "rss_mb": round(rss, 1), "ready_s": round(ready_s, 2), "hot_model_rps": hot["rps"],
            "hot_p99_ms": hot["p99_ms"], "non_2xx": hot["non_2xx"]}


def workers(src: Path, tiny: Path, repo: Path, work: Path, args: argparse.Namespace, body: dict, auth: dict) -> dict:
    """`--workers 1` against `--workers 2`, for one package and for a repository of it, in interleaved rounds."""
    configs = {f"serve {kind}, --workers {n}": (target, n, path) for kind, target, path in
               (("PKG", tiny, "/v2/models/m/infer"), ("REPO", repo, "/v2/models/m/infer")) for n in (1, 2)}
    rounds: dict[str, list[dict]] = {label: [] for label in configs}
    for r in range(args.rounds):
        for label, (target, n, path) in rotated(configs, r):
            port = free_port()
            server = start(src, target, port, free_port(), "--workers", str(n))
            try:
                url = f"http://127.0.0.1:{port}{path}"
                wrk(url, body, 16, 1, auth, work)
                rounds[label].append(wrk(url, body, 16, args.duration, auth, work))
            finally:
                server.stop()
            print(f"round {r + 1} {label}: {rounds[label][-1]['rps']:.0f} req/s, p99 "
                  f"{rounds[label][-1]['p99_ms']:.2f} ms", file=sys.stderr)
    medians = {label: median_round(rs) for label, rs in rounds.items()}
    for label, value in medians.items():
        one = medians[label.replace("--workers 2", "--workers 1")]
        value["rps_vs_one_worker"] = round(value["rps"] / one["rps"], 3)
    return medians


if __name__ == "__main__":
    sys.exit(main())
