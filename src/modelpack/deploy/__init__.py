"""`modelpack deploy`: from a package to the files a platform runs.

One module per target: docker, k8s, kserve, triton, tfserving, ray. Each exposes
`write(pkg, out, options) -> list[str]` (the next steps to tell the user) and is
written into a staging directory that is renamed into place when complete.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_dir, check_output
from ..errors import UsageError
from ..package import open_any
from ..package.manifest import Manifest

TARGETS = ("docker", "k8s", "kserve", "triton", "tfserving", "ray")
PORT = 8000
GRPC_PORT = 8001  # KServe V2 gRPC, as Triton numbers it
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class DeployOptions:
    image: str | None = None
    replicas: int = 2
    max_replicas: int | None = None
    namespace: str = "default"
    cpu: str = "1"
    memory: str = "1Gi"
    port: int = PORT
    grpc_port: int | None = GRPC_PORT  # None: HTTP only
    max_batch_size: int = 32
    model_version: str | None = None
    requirement: str | None = None  # install this from an index instead of the context's wheels
    platform: str = "linux/amd64"  # the image's platform: the wheels in the context are for it
    host: str = "127.0.0.1"  # ray: the address Ray Serve's HTTP proxy binds
    # Autoscaling (ray, k8s): measure one replica's capacity at this p99, or write defaults (measure=False).
    measure: bool = True
    p99_ms: float = 100.0
    peak_rps: float | None = None  # the traffic to plan for: max replicas = peak / one replica's capacity
    upscale_delay_s: float | None = None  # None: derived from the replica's measured start time
    downscale_delay_s: float | None = None
    register: str | None = None  # ray: zk://HOST:PORT/PATH where each replica registers its node's proxy
    prometheus: str = "http://prometheus.monitoring.svc:9090"  # k8s: the server KEDA's prometheus trigger queries


@dataclass
class DeployResult:
    target: str
    output: Path
    files: list[str]
    next_steps: list[str]
    image: str  # the container image the files refer to (docker, k8s, kserve)


def k8s_name(name: str) -> str:
    """A package name as a Kubernetes object name (DNS-1123 label)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    if not DNS_LABEL.match(label):
        raise UsageError(f"package name '{name}' cannot become a Kubernetes name; rebuild it with --name my-model.")
    return label


def default_image(manifest: Manifest) -> str:
    return f"{k8s_name(manifest['name'])}:{manifest['version']}"


def deploy(package: Path, target: str, output: Path, options: DeployOptions, force: bool = False) -> DeployResult:
    if target not in TARGETS:
        raise UsageError(f"--target '{target}': use one of {', '.join(TARGETS)}.")
    check_output(output, force)
    module: Any = importlib.import_module(f"{__name__}.{target}")
    with open_any(package) as pkg:
        pkg.check_checksums()
        with atomic_dir(output.absolute(), force=force) as staging:
            steps = module.write(pkg, staging, options, output)
            files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        image = options.image or default_image(pkg.manifest)
    return DeployResult(target, output, files, steps, image)


def dump_yaml(path: Path, documents: list[dict[str, Any]]) -> None:
    import yaml

    path.write_text(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False), encoding="utf-8")
