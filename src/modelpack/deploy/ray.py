"""The `ray` target: a Ray Serve config (`serve deploy` / `serve run`) whose replicas run modelpack's own server.

Each replica is `modelpack.deploy.ray_app:ModelpackServer`: the same ASGI app `modelpack serve` runs (signature
checks, batcher, limits, API keys and scopes, metrics) behind Ray's HTTP proxy. This module writes files only and
never imports ray; `ray_app` does, inside the replica.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UsageError
from ..package import Package
from . import DeployOptions
from .capacity import Autoscaling, plan

CONFIG = "serve_config.yaml"
IMPORT_PATH = "modelpack.deploy.ray_app:build"
DEPLOYMENT = "ModelpackServer"
# A replica takes this many requests at once (Ray's default is 5): the batcher needs several to fill a batch.
MAX_ONGOING = 64
KUBE_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|K|M|G|T)?$")
UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpus(value: str) -> float:
    """A Kubernetes CPU quantity ("1", "0.5", "500m") as Ray's num_cpus."""
    match = KUBE_QUANTITY.match(value)
    if not match or match.group(2) not in (None, "m"):
        raise UsageError(f"--cpu '{value}': give a number of CPUs such as 1, 0.5 or 500m.")
    number = float(match.group(1))
    return number / 1000 if match.group(2) == "m" else number


def memory_bytes(value: str) -> int:
    """A Kubernetes memory quantity ("512Mi", "1Gi", "1G") as Ray's memory resource in bytes."""
    match = KUBE_QUANTITY.match(value)
    if not match or match.group(2) == "m":
        raise UsageError(f"--memory '{value}': give a size such as 512Mi or 1Gi.")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def _q(value: Any) -> str:
    """A YAML scalar (JSON is YAML), so names and paths never need YAML quoting rules."""
    return json.dumps(value)


def autoscaled(options: DeployOptions) -> bool:
    """Ray autoscales when asked to: a --max-replicas above --replicas, or a --peak-rps to plan for."""
    return options.peak_rps is not None or (options.max_replicas is not None and options.max_replicas > options.replicas)


def _replicas(options: DeployOptions, scaling: Autoscaling | None) -> str:
    if scaling is None or scaling.max_replicas <= scaling.min_replicas:
        return f"""\
    # A fixed number of replicas; pass --max-replicas (or --peak-rps) to write an autoscaling_config instead.
    num_replicas: {options.replicas}
"""
    # Replicas report their requests in flight this often, averaged over look_back_period_s: both well inside the
    # delays, so a decision waits for the delay, not for stale metrics.
    interval = min(10.0, max(0.5, scaling.upscale_delay_s / 2))
    look_back = min(30.0, max(2 * interval, scaling.upscale_delay_s))
    derivation = scaling.comment(prefix="    # ")
    return f"""\
    # Ray adds replicas while the requests in flight per replica stay above target_ongoing_requests for
    # upscale_delay_s, and removes them once they stay below it for downscale_delay_s.
{derivation}\
    # Delays: up = 3 x a replica's start time (at least 10 s) unless --upscale-delay; down = 10 x up (at least 60 s)
    # unless --downscale-delay, so a burst does not make replicas come and go.
    autoscaling_config:
      min_replicas: {scaling.min_replicas}
      max_replicas: {scaling.max_replicas}
      target_ongoing_requests: {scaling.target_ongoing}
      upscale_delay_s: {scaling.upscale_delay_s:g}
      downscale_delay_s: {scaling.downscale_delay_s:g}
      metrics_interval_s: {interval:g}
      look_back_period_s: {look_back:g}
"""


GRPC_SERVICER = "modelpack.deploy.ray_app:add_GRPCInferenceServiceServicer_to_server"


def _grpc(options: DeployOptions) -> str:
    if not options.grpc_port:
        return "# No gRPC proxy (--grpc-port 0); pass --grpc-port for KServe V2 gRPC through Ray's gRPC proxy.\n"
    return f"""\
grpc_options:
  # KServe V2 gRPC (inference.GRPCInferenceService) through Ray's gRPC proxy, for unmodified tritonclient.grpc.
  # Ray binds it on every address ([::]); with one application no `application` metadata is needed.
  port: {options.grpc_port}
  grpc_servicer_functions: [{_q(GRPC_SERVICER)}]
"""


def _registration(options: DeployOptions) -> str:
    if options.register is None:
        return ""
    return f"""\
    # Each replica, once ready, registers its node's HTTP proxy (this port) in ZooKeeper as `modelpack serve
    # --register` registers a server: an ephemeral entry that lives with the replica's session, so `modelpack
    # discover` and `predict --discover` find the proxy while replicas run, and a dead replica's entry goes.
    register: {_q(options.register)}
    proxy_port: {options.port}
    # The address clients dial: the proxy's bind address, or each node's own IP when it binds every address.
    advertise_host: {_q(None if options.host in ("0.0.0.0", "::") else options.host)}
"""


def config(pkg: Package, options: DeployOptions, package_dir: Path, scaling: Autoscaling | None = None) -> str:
    """The Serve config file's text: one application whose only deployment is modelpack's server."""
    num_cpus, memory = cpus(options.cpu), memory_bytes(options.memory)
    return f"""\
# Ray Serve config generated by modelpack {__version__} for package {pkg.name} version {pkg.version}.
#   serve deploy {CONFIG} --address http://HEAD:8265     (a running cluster's dashboard address)
#   serve run {CONFIG}                                   (a local cluster, in the foreground)
# Every node needs modelpack installed (pip install 'modelpack-toolkit[serve,ray]') and the package at
# args.package (a shared filesystem, or the same path on each node).
proxy_location: EveryNode
http_options:
  # 127.0.0.1 keeps the proxy on this machine; 0.0.0.0 serves other hosts (deploy --host).
  host: {_q(options.host)}
  port: {options.port}
  request_timeout_s: 60
{_grpc(options)}\
applications:
- name: {_q(pkg.name)}
  # modelpack's routes are absolute (/v2/..., /v1/models/..., /predict), as tritonclient expects.
  route_prefix: "/"
  import_path: {_q(IMPORT_PATH)}
  args:
    package: {_q(str(package_dir))}
    # The API key comes from each node's environment (MODELPACK_API_KEY when `ray start` runs, or
    # runtime_env.env_vars), never from this file; api_keys_file names a keys file on every node instead.
    api_keys_file: null
    max_batch_size: {options.max_batch_size}
    # The runtime's threads per replica: its CPUs, as the capacity was measured.
    threads: {max(1, math.ceil(num_cpus))}
{_registration(options)}\
  deployments:
  - name: {DEPLOYMENT}
{_replicas(options, scaling)}\
    # Requests one replica holds at once; its own batcher and --max-queue limits apply inside it.
    max_ongoing_requests: {MAX_ONGOING}
    graceful_shutdown_timeout_s: 30
    # Ray replaces a replica whose check_health (the server's readiness) fails this often.
    health_check_period_s: 10
    health_check_timeout_s: 30
    ray_actor_options:
      num_cpus: {num_cpus:g}
      memory: {memory}
"""


README = """\
# {name} {version} on Ray Serve

Generated by `modelpack deploy --target ray`. Each replica runs modelpack's own server (the same one
`modelpack serve` runs), so Ray's HTTP proxy speaks KServe V2 (JSON and binary), TF Serving REST and `/predict`.

1. Install modelpack with Ray on every node: `pip install 'modelpack-toolkit[serve,ray]'`.
2. Start the cluster, with the API key in each node's environment:
   `MODELPACK_API_KEY=... ray start --head`, then `MODELPACK_API_KEY=... ray start --address HEAD:6379` per node.
3. `serve deploy {config} --address http://HEAD:8265`, and `serve status` until the application is RUNNING.
4. `curl -H "Authorization: Bearer $MODELPACK_API_KEY" http://{host}:{port}/v2/models/{name}`

The package is read from `{package}` on each node: copy this directory to the same path on every node, or put it on
a shared filesystem and edit `args.package`. Replicas, CPUs and memory per replica are in `{config}`.
"""


def write(pkg: Package, out: Path, options: DeployOptions, final: Path) -> list[str]:
    host = options.host
    shutil.copytree(pkg.root, out / "package", symlinks=False)
    package_dir = final.absolute() / "package"
    scaling = plan(pkg.root, options, out, autoscaled(options)) if autoscaled(options) else None
    (out / CONFIG).write_text(config(pkg, options, package_dir, scaling), encoding="utf-8")
    (out / "README.md").write_text(README.format(name=pkg.name, version=pkg.version, config=CONFIG, host=host,
                                                 port=options.port, package=package_dir), encoding="utf-8")
    return [f"serve deploy {final / CONFIG} --address http://HEAD:8265   # a running Ray cluster's dashboard",
            f"serve status --address http://HEAD:8265   # until application '{pkg.name}' is RUNNING",
            f"curl -H \"Authorization: Bearer $MODELPACK_API_KEY\" http://{host}:{options.port}/v2/models/{pkg.name}"]


APPLICATIONS = "/api/serve/applications/"  # the dashboard's Serve REST API, which `serve deploy` and `serve status` use
APPLY_TIMEOUT_S = 300.0


def _request(method: str, url: str, body: Any = None, timeout: float = 30.0) -> Any:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


def apply(output: Path, address: str, timeout_s: float = APPLY_TIMEOUT_S) -> float:
    """`serve deploy` the written config to the cluster whose dashboard is `address`, then wait until the
    application is RUNNING and the proxy answers its readiness probe. Returns the seconds that took.

    Like `serve deploy`, this declares the cluster's whole set of Serve applications: others are removed."""
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    import yaml

    from ..errors import StageFailed

    address = address.rstrip("/")
    if not urllib.parse.urlsplit(address).hostname:
        raise UsageError(f"--apply '{address}': give the Ray dashboard's address, e.g. http://HEAD:8265.")
    config = yaml.safe_load((output / CONFIG).read_text(encoding="utf-8"))
    (app,) = config["applications"]

    def status() -> dict[str, Any] | None:
        try:
            found = (_request("GET", address + APPLICATIONS) or {}).get("applications", {}).get(app["name"])
        except (OSError, ValueError):  # the dashboard may drop a poll while it is busy; the deadline bounds the wait
            return None
        return found if isinstance(found, dict) else None

    start = time.monotonic()
    try:
        before = _request("GET", address + APPLICATIONS)  # also: is a dashboard there at all
        previous = ((before or {}).get("applications", {}).get(app["name"]) or {}).get("last_deployed_time_s")
        _request("PUT", address + APPLICATIONS, config)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip().splitlines()[-1:] or [exc.reason]
        raise StageFailed("deploy", f"Ray refused the config at {address} ({exc.code}): {detail[0][:300]}") from exc
    except OSError as exc:
        raise StageFailed("deploy", f"no Ray dashboard answers at {address} ({exc}); start the cluster "
                                    f"(ray start --head) or pass its dashboard address, http://HEAD:8265.") from exc
    host = config["http_options"]["host"]
    probe_host = urllib.parse.urlsplit(address).hostname if host in ("0.0.0.0", "::") else host
    ready_url = f"http://{probe_host}:{config['http_options']['port']}/v2/health/ready"
    deadline = start + timeout_s
    while time.monotonic() < deadline:
        current = status()
        # Ray stamps every apply; an older stamp is the previous deployment's state, not this one's.
        if current is not None and current.get("last_deployed_time_s") != previous:
            if current["status"] == "DEPLOY_FAILED":
                reason = (current.get("message") or "no message").strip().splitlines()[0][:300]
                raise StageFailed("deploy", f"Ray could not deploy '{app['name']}': {reason}; see `serve status`.")
            if current["status"] == "RUNNING":
                try:
                    with urllib.request.urlopen(ready_url, timeout=5) as response:
                        if response.status == 200:
                            return time.monotonic() - start
                except OSError:
                    pass
        time.sleep(0.5)
    raise StageFailed("deploy", f"'{app['name']}' was not RUNNING and ready at {ready_url} within {timeout_s:g} s; "
                                f"see `serve status --address {address}`.")
