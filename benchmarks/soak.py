"""Soak: valid traffic over HTTP and gRPC while the hostile suites' attacks run, against the same traffic without them.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--block-s 60] [--json out.json]

One `modelpack serve` (a small ONNX MLP, an API key, `--grpc-port`) takes valid traffic for the whole run:
wrk (V2 JSON, 8 connections) and h2load (V2 gRPC ModelInfer, 8 connections), C load generators so the client is
not the bottleneck. The run alternates blocks of `--block-s` seconds: a clean block (valid traffic only) and an
attacked block (valid traffic while attacker threads loop through the attacks of tests/test_hostile_grpc.py and
tests/test_hostile_http.py), until `--minutes` of attacked time have run; the clean blocks are the baseline,
measured in the same run and interleaved, so a machine that speeds up or slows down affects both alike.

Reported: the valid traffic's throughput in attacked blocks against clean blocks (HTTP and gRPC apart), its
errors, the server's RSS and open file descriptors before any attack, at the start (after a warm-up of valid
traffic and one pass of every attack) and at the end (after the last attack has stopped and its connections
are gone). Goals (issue 22): at least 80% of the attack-free throughput, RSS back within 10% of its start, no
descriptor leak.

On a 2-core machine the attackers and the load generators share the CPU with the server; the server is pinned
to core 0 and everything else to core 1 (when the machine has two cores or more), so a drop in throughput is
the server's, not the attackers' CPU use.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from hostile import PING, RST_STREAM, RawH2, frame, grpc_message, open_fds, rss_mb  # noqa: E402
from serve_bench import BIN, KEY, Server, grpc_answers, grpc_request, h2load, wrk  # noqa: E402

AUTH = {"Authorization": f"Bearer {KEY}"}


def mlp(path: Path) -> Path:
    """A 16-256-4 ONNX MLP with a dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((16, 256)).astype("float32"), rng.standard_normal((256, 4)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


class Attacker:
    """Threads that loop through the attacks until stopped; each attack is short, and is counted."""

    def __init__(self, http_port: int, grpc_port: int, request: bytes) -> None:
        self.http_port, self.grpc_port, self.request = http_port, grpc_port, request
        self.stop = threading.Event()
        self.count: Counter[str] = Counter()
        self.threads: list[threading.Thread] = []
        self.attacks = [self.half_open, self.rapid_reset, self.ping_flood, self.big_unauthenticated, self.malformed,
                        self.idle, self.slow_reader, self.huge_head, self.gzip_bomb, self.long_paths]
        self.pause_s = 0.5  # between one attack and the next, per attacker thread
        # Built once: the attackers share a core with the load generators, and their own CPU time must not be
        # what slows the valid traffic down.
        self.big = grpc_message(b"\0" * (15 << 20))
        self.bomb = gzip.compress(b'{"inputs": []' + b" " * (15 << 20) + b"}", compresslevel=9)
        self.long = [f"POST /v2/models/{i:06d}{'m' * (60 << 10)}/infer HTTP/1.1\r\nhost: x\r\n"
                     "content-length: 2\r\n\r\n{}".encode() for i in range(200)]

    def start(self) -> None:
        self.stop.clear()
        attacks = self.attacks
        self.threads = [threading.Thread(target=self._loop, args=(attacks[i::3],), daemon=True) for i in range(3)]
        for t in self.threads:
            t.start()

    def once(self) -> None:
        """Every attack once, one after another."""
        for attack in self.attacks:
            attack()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def _loop(self, attacks: list) -> None:
        while not self.stop.is_set():
            for attack in attacks:
                if self.stop.is_set():
                    return
                try:
                    attack()
                    self.count[attack.__name__] += 1
                except OSError:
                    self.count[attack.__name__ + "_oserror"] += 1
                self.stop.wait(self.pause_s)

    # gRPC port
    def half_open(self) -> None:
        """500 ModelInfer streams without a key, HEADERS only, held for a second."""
        h = RawH2(self.grpc_port)
        for _ in range(500):
            h.open()
        self.stop.wait(1)
        h.close()

    def rapid_reset(self) -> None:
        h = RawH2(self.grpc_port)
        message = grpc_message(self.request)
        for _ in range(2000):
            stream = h.open(key=KEY, message=message, end=True)
            if not h.send(frame(RST_STREAM, 0, stream, struct.pack(">I", 8))):
                break
        h.closed.wait(5)
        h.close()

    def ping_flood(self) -> None:
        h = RawH2(self.grpc_port)
        h.send(frame(PING, 0, 0, b"12345678") * 5000)
        h.closed.wait(5)
        h.close()

    def big_unauthenticated(self) -> None:
        """Two 15 MB messages without a key."""
        h = RawH2(self.grpc_port)
        for _ in range(2):
            h.send(RawH2.data_frames(h.open(), self.big))
        h.close()

    def malformed(self) -> None:
        h = RawH2(self.grpc_port)
        ids = [h.open(key=KEY, message=grpc_message(b"\xff\xff\xff" * 50), end=True) for _ in range(50)]
        deadline = time.monotonic() + 5
        while not all(h.answered(i) for i in ids) and time.monotonic() < deadline:
            self.stop.wait(0.01)
        h.close()

    def idle(self) -> None:
        """20 TCP connections to each port that never send a byte, held 2 s."""
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10)
                 for port in (self.grpc_port, self.http_port) for _ in range(10)]
        self.stop.wait(2)
        for s in socks:
            s.close()

    # HTTP port
    def slow_reader(self) -> None:
        """Pipelines 400 OpenAPI requests and never reads; hangs up after 3 s."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.http_port))
        sock.setblocking(False)
        request = f"GET /openapi.json HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n".encode()
        for _ in range(400):
            try:
                sock.send(request)
            except OSError:
                break
        self.stop.wait(3)
        sock.close()

    def huge_head(self) -> None:
        """A 16 MB header line without a key."""
        sock = socket.create_connection(("127.0.0.1", self.http_port), timeout=10)
        try:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-junk: ")
            for _ in range(16):
                sock.sendall(b"a" * (1 << 20))
        except OSError:
            pass
        sock.close()

    def gzip_bomb(self) -> None:
        """Five gzip bodies of about 16 KB that inflate to 15 MB each, at once."""
        import httpx

        body = self.bomb
        headers = {**AUTH, "content-encoding": "gzip", "content-type": "application/json"}

        def post() -> None:
            try:
                httpx.post(f"http://127.0.0.1:{self.http_port}/v2/models/mlp/infer", content=body, headers=headers,
                           timeout=30)
            except httpx.HTTPError:
                pass

        threads = [threading.Thread(target=post) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def long_paths(self) -> None:
        """200 requests without a key for 60 KB model names, one after another on one connection."""
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=10) as sock:
            reader = sock.makefile("rb")
            for request in self.long:
                sock.sendall(request)
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if not line:
                    break
                reader.read(length)


def pin(pid: int, core: int) -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(pid, {core})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="attacked time in all (the same again clean)")
    parser.add_argument("--block-s", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    pkg = work / "pkg"
    subprocess.run([str(BIN / "modelpack"), "optimize", str(mlp(work / "mlp.onnx")), "-o", str(pkg), "--name", "mlp",
                    "-q", "export"], check=True)
    http_port, grpc_port = free(), free()
    server = Server([str(BIN / "modelpack"), "serve", str(pkg), "--port", str(http_port), "--grpc-port",
                     str(grpc_port), "--api-key", KEY, "--max-connections", "64", "--max-inflight-mb", "16",
                     "--write-timeout-s", "2", "--header-timeout-s", "5", "--body-timeout-s", "5", "-q"],
                    {}, f"http://127.0.0.1:{http_port}/v2/health/ready", ok=200)
    pin(server.proc.pid, 0)
    pin(os.getpid(), 1)  # the load generators and attackers inherit this
    x = np.random.default_rng(1).standard_normal((1, 16)).astype("float32")
    import onnxruntime as ort

    expected = ort.InferenceSession(str(work / "mlp.onnx")).run(None, {"x": x})[0]
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}

    request = grpc_request("mlp", x)
    attacker = Attacker(http_port, grpc_port, request)
    url = f"http://127.0.0.1:{http_port}/v2/models/mlp/infer"

    def block(attacked: bool) -> dict:
        results: dict = {}
        if attacked:
            attacker.start()
        threads = [threading.Thread(target=lambda: results.update(http=wrk(url, body, 8, args.block_s, AUTH, work))),
                   threading.Thread(target=lambda: results.update(grpc=h2load(grpc_port, request, 8, args.block_s,
                                                                                AUTH, work)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if attacked:
            attacker.join()
        return results

    assert grpc_answers(grpc_port, "mlp", x, expected, AUTH)
    wrk(url, body, 8, 3, AUTH, work)  # warm-up
    wait_settled(server.proc.pid)
    before = {"rss_mb": rss_mb(server.proc.pid), "fds": open_fds(server.proc.pid)}
    # ... and each attack once: what the first of each costs for good (code paths, first-use caches and
    # allocator arenas) is a cost, not a leak; the start is measured after it, the growth from `before` is shown.
    attacker.once()
    wait_settled(server.proc.pid, before["fds"])
    start = {"rss_mb": rss_mb(server.proc.pid), "fds": open_fds(server.proc.pid)}
    clean: list[dict] = []
    attacked: list[dict] = []
    blocks = max(1, round(args.minutes * 60 / args.block_s))
    for i in range(blocks):
        for kind in (("clean", "attacked") if i % 2 == 0 else ("attacked", "clean")):
            result = block(kind == "attacked")
            (attacked if kind == "attacked" else clean).append(result)
            print(f"block {i + 1}/{blocks} {kind:8s}: HTTP {result['http']['rps']:8.0f} req/s "
                  f"({result['http']['non_2xx']} non-2xx) | gRPC {result['grpc']['rps']:8.0f} req/s "
                  f"({result['grpc']['failed']} failed) | RSS {rss_mb(server.proc.pid):6.1f} MB, "
                  f"{open_fds(server.proc.pid)} fds", flush=True)
    assert grpc_answers(grpc_port, "mlp", x, expected, AUTH), "the server's gRPC answers changed under the soak"
    wait_settled(server.proc.pid, start["fds"])
    end = {"rss_mb": rss_mb(server.proc.pid), "fds": open_fds(server.proc.pid)}
    server.stop()

    def total(results: list[dict], proto: str) -> float:
        return statistics.fmean(r[proto]["rps"] for r in results)

    report = {
        "minutes_attacked": blocks * args.block_s / 60, "block_s": args.block_s,
        "http": {"clean_rps": total(clean, "http"), "attacked_rps": total(attacked, "http"),
                 "ratio": total(attacked, "http") / total(clean, "http"),
                 "errors_attacked": sum(r["http"]["non_2xx"] for r in attacked)},
        "grpc": {"clean_rps": total(clean, "grpc"), "attacked_rps": total(attacked, "grpc"),
                 "ratio": total(attacked, "grpc") / total(clean, "grpc"),
                 "errors_attacked": sum(r["grpc"]["failed"] for r in attacked)},
        "before_attacks": before, "start": start, "end": end, "rss_change": end["rss_mb"] / start["rss_mb"] - 1,
        "rss_change_from_before": end["rss_mb"] / before["rss_mb"] - 1,
        "attacks": dict(attacker.count),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = (report["http"]["ratio"] >= 0.8 and report["grpc"]["ratio"] >= 0.8 and abs(report["rss_change"]) <= 0.10
          and end["fds"] <= start["fds"])
    print("goals met" if ok else "goals NOT met")
    return 0 if ok else 1


def wait_settled(pid: int, fds: int | None = None, timeout: float = 60) -> None:
    """Until the connections of past attacks are gone (open descriptors back to `fds`), and RSS stops moving."""
    deadline = time.monotonic() + timeout
    while fds is not None and open_fds(pid) > fds and time.monotonic() < deadline:
        time.sleep(0.2)
    last = rss_mb(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = rss_mb(pid)
        if abs(now - last) < 0.5:
            return
        last = now


def free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
