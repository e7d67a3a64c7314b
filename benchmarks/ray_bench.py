"""Ray Serve's proxy against `modelpack serve` directly, in one run, with wrk on loopback.

    .venv/bin/python benchmarks/ray_bench.py [--duration 5] [--rounds 3] [--connections 16] [--json out.json]

Needs wrk and the `ray` extra. A tiny MLP (64-256-256-10), batch-1 V2 JSON with an API key:
1. `modelpack serve` on its own (the baseline), and the same package on a two-node Ray cluster on this machine
   (tests/raycluster.py: a head and a worker node, one CPU each) through Ray's HTTP proxy, with 1 and then
   2 replicas. The rounds alternate baseline and proxy; ratios are between medians of the same phase.
2. Time from `deploy --apply` to RUNNING and ready, for 1 replica and for the change to 2.
3. Requests failed per fault: with 2 replicas and two closed-loop clients (no retries), SIGKILL one replica's
   process, then the worker node's raylet (the node is then started again); each fault's failures are counted
   from the kill until Ray runs 2 replicas again.
On a two-core machine the proxy, the replicas and wrk share the same two cores: 2 replicas cannot scale here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # raycluster: the cluster the tests use

import raycluster  # noqa: E402
from serve_bench import BIN, Server, free_port, median_round, mlp, package, wrk  # noqa: E402

KEY = "bench-key"


class Load:
    """Closed-loop clients sending the request back to back through the proxy, no retries; statuses in order."""

    def __init__(self, url: str, body: dict, headers: dict[str, str], clients: int = 2) -> None:
        import threading

        self.url, self.body, self.headers = url, body, headers
        self.statuses: list[int] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=10) as client:
            while not self.stopped.is_set():
                try:
                    status = client.post(self.url, json=self.body, headers=self.headers).status_code
                except httpx.HTTPError:
                    status = 0
                self.statuses.append(status)

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=30)


def wait(predicate: object, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def running_replicas(cluster: raycluster.Cluster) -> list[dict]:
    app = cluster.applications().get("mlp") or {}
    if app.get("status") != "RUNNING":
        return []
    return [r for d in app["deployments"].values() for r in d["replicas"] if r["state"] == "RUNNING"]


def faults(cluster: raycluster.Cluster, url: str, body: dict, headers: dict[str, str]) -> dict[str, dict]:
    """Failed requests per fault (replica SIGKILL, worker raylet SIGKILL), each counted until 2 replicas run again."""
    import os
    import signal
    import time

    results: dict[str, dict] = {}
    load = Load(url, body, headers)
    try:
        wait(lambda: load.statuses.count(200) >= 50, 60, "answers before the faults")
        victim = running_replicas(cluster)[0]
        start, t0 = len(load.statuses), time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        wait(lambda: len(running_replicas(cluster)) == 2 and victim["replica_id"] not in
             {r["replica_id"] for r in running_replicas(cluster)}, 180, "the replica to be replaced")
        window = load.statuses[start:]
        results["replica_sigkill"] = {"failed": sum(s != 200 for s in window), "requests": len(window),
                                      "recovered_s": round(time.monotonic() - t0, 1)}
        worker = cluster.nodes[-1]
        raylet = raycluster.process_named(worker.proc.pid, "raylet")
        assert raylet is not None
        worker_id = next(n["node_id"] for n in cluster.alive_nodes() if not n["is_head_node"])
        start, t0 = len(load.statuses), time.monotonic()
        os.kill(raylet, signal.SIGKILL)
        wait(lambda: worker_id not in {n["node_id"] for n in cluster.alive_nodes()}, 120, "the node to be dead")
        dead_s = time.monotonic() - t0
        worker.stop()
        cluster.nodes.remove(worker)
        cluster.add_worker()
        wait(lambda: len({r["node_id"] for r in running_replicas(cluster)}) == 2, 240, "a replica on the new node")
        window = load.statuses[start:]
        results["worker_raylet_sigkill"] = {"failed": sum(s != 200 for s in window), "requests": len(window),
                                            "declared_dead_s": round(dead_s, 1),
                                            "recovered_s": round(time.monotonic() - t0, 1)}
    finally:
        load.stop()
    return results


def apply(pkg: Path, out: Path, dashboard: str, port: int, replicas: int) -> float:
    import subprocess

    proc = subprocess.run([str(BIN / "modelpack"), "deploy", str(pkg), "--target", "ray", "-o", str(out), "--force",
                           "--replicas", str(replicas), "--cpu", "1", "--memory", "256Mi", "--port", str(port),
                           "--grpc-port", "0",
                           "--apply", dashboard, "--json"], capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:
        raise RuntimeError(f"deploy --apply failed: {proc.stdout}{proc.stderr}")
    return float(json.loads(proc.stdout)["applied"]["seconds_to_ready"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    pkg = package(mlp(work / "mlp.onnx", [64, 256, 256, 10]), work / "pkg", "mlp")
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    direct_port = free_port()
    direct = Server([str(BIN / "modelpack"), "serve", str(pkg), "--port", str(direct_port)], {"MODELPACK_API_KEY": KEY},
                    f"http://127.0.0.1:{direct_port}/v2/health/ready", ok=200)
    results: dict[str, object] = {"connections": args.connections, "duration_s": args.duration, "rounds": args.rounds}
    try:
        env = {"PYTHONPATH": str(ROOT / "src"), "MODELPACK_API_KEY": KEY, "RAY_health_check_period_ms": "1000",
               "RAY_health_check_failure_threshold": "5", "RAY_health_check_timeout_ms": "5000"}
        with raycluster.Cluster(env=env) as cluster:
            cluster.start(workers=1)
            proxy_port = cluster.free_port()
            for replicas in (1, 2):
                ready_s = apply(pkg, work / "ray", cluster.dashboard, proxy_port, replicas)
                phase: dict[str, list[dict]] = {"direct": [], "proxy": []}
                for r in range(args.rounds):
                    order = [("direct", direct_port), ("proxy", proxy_port)]
                    for name, port in order[r % 2:] + order[:r % 2]:
                        phase[name].append(wrk(f"http://127.0.0.1:{port}/v2/models/mlp/infer", body,
                                               args.connections, args.duration, headers, work))
                medians = {name: median_round(rounds) for name, rounds in phase.items()}
                results[f"{replicas}_replica"] = {
                    "apply_to_ready_s": round(ready_s, 1), **medians,
                    "proxy_rps_ratio": round(medians["proxy"]["rps"] / medians["direct"]["rps"], 3),
                    "proxy_p99_ratio": round(medians["proxy"]["p99_ms"] / medians["direct"]["p99_ms"], 2)}
                print(json.dumps({f"{replicas}_replica": results[f"{replicas}_replica"]}), flush=True)
            results["faults"] = faults(cluster, f"http://127.0.0.1:{proxy_port}/v2/models/mlp/infer", body, headers)
            print(json.dumps({"faults": results["faults"]}), flush=True)
    finally:
        direct.stop()
        shutil.rmtree(work, ignore_errors=True)
    for replicas in (1, 2):
        row = results[f"{replicas}_replica"]
        assert isinstance(row, dict)
        print(f"{replicas} replica(s): proxy {row['proxy']['rps']:.0f} req/s p99 {row['proxy']['p99_ms']:.1f} ms, "
              f"direct {row['direct']['rps']:.0f} req/s p99 {row['direct']['p99_ms']:.1f} ms: "
              f"throughput {row['proxy_rps_ratio']}x, p99 {row['proxy_p99_ratio']}x; apply to ready "
              f"{row['apply_to_ready_s']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
