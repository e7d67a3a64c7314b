"""Service registration and discovery in ZooKeeper: register, discover, call.

A running server holds one ephemeral sequential znode under the registry path,
`<path>/instance-0000000007`, whose data is a JSON record of where and what it
serves; a server of a model repository holds one per model and version, created
and deleted as versions come and go, the default version of each model marked. The znode lives as long as the server's ZooKeeper session: a clean stop
deletes it, a crash lets it expire with the session. Clients list the children,
pick one (round robin or random) and call it over the V2 protocol, moving on to
the next instance when a connection fails.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .errors import InputError, RegistryError, UsageError

log = logging.getLogger("modelpack.discovery")

PREFIX = "instance-"
SESSION_TIMEOUT_S = 4.0  # how soon a crashed server's entry disappears
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ZkAddress:
    hosts: str
    path: str

    def __str__(self) -> str:
        return f"zk://{self.hosts}{self.path}"


def parse_zk(url: str) -> ZkAddress:
    """zk://HOST:PORT[,HOST:PORT...]/PATH"""
    parts = urlsplit(url)
    if parts.scheme != "zk" or not parts.netloc or not parts.path or parts.path == "/":
        raise UsageError(f"'{url}': expected zk://HOST:PORT/PATH, e.g. zk://127.0.0.1:2181/modelpack.")
    for host in parts.netloc.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise UsageError(f"'{url}': '{host}' is not HOST:PORT.")
    return ZkAddress(parts.netloc, parts.path.rstrip("/"))


def _client(address: ZkAddress, forever: bool = False) -> Any:
    try:
        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry
    except ImportError as exc:  # pragma: no cover - kazoo ships with the serve extra
        raise UsageError("service discovery needs kazoo: pip install 'modelpack-toolkit[serve]'") from exc
    retry = KazooRetry(max_tries=-1 if forever else 2, delay=0.2, max_delay=5.0)
    logging.getLogger("kazoo.client").setLevel(logging.CRITICAL)  # its reconnect tracebacks are not ours to show
    return KazooClient(hosts=address.hosts, timeout=SESSION_TIMEOUT_S, connection_retry=retry)


def signature_digest(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()


def instance_record(*, host: str, port: int, model: str, version: str, signature: dict[str, Any],
                    scheme: str = "http", grpc_port: int | None = None) -> dict[str, Any]:
    base = f"{scheme}://{host}:{port}"
    record: dict[str, Any] = {
        "host": host, "port": port, "scheme": scheme, "model": model, "version": version,
        "signature_digest": signature_digest(signature), "protocols": ["v2", "tfserving-rest", "predict"],
        "health": f"{base}/v2/health/ready", "infer": f"{base}/v2/models/{model}/versions/{version}/infer",
        "pid": os.getpid(), "registered_at": time.time()}
    if grpc_port is not None:
        record["protocols"].append("v2-grpc")
        record["grpc_port"] = grpc_port
    return record


def advertised_host(bind: str) -> str:
    """What other machines should dial: the bind address, or this host's address when bound to all."""
    if bind not in ("0.0.0.0", "::", ""):
        return bind
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()


class Registration:
    """One server's entries: connect first (fail fast if required), register once ready, keep them, remove them.

    A single package has one entry (`register`); a repository one per model and version (`sync`), each keyed by
    (model, version) so that a version that stays keeps its znode while others come and go."""

    def __init__(self, address: ZkAddress, required: bool = False,
                 note: Callable[[str], None] = log.warning) -> None:
        self.address = address
        self.required = required
        self.note = note
        self.records: dict[tuple[str, str], dict[str, Any]] | None = None  # None until there is something to hold
        self.nodes: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._client = _client(address, forever=not required)
        self._client.add_listener(self._state_changed)

    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> bool:
        """Start the session. Unreachable: raise if required, else keep retrying in the background."""
        event = self._client.start_async()
        event.wait(timeout)
        if self._client.connected:
            return True
        if self.required:
            self._client.stop()
            self._client.close()
            raise RegistryError(f"ZooKeeper at {self.address.hosts} is unreachable (no session within {timeout:g} s) "
                                f"and --register-required is set; not serving.")
        self.note(f"ZooKeeper at {self.address.hosts} is unreachable; serving anyway and retrying the "
                  f"registration in the background.")
        return False

    @property
    def node(self) -> str | None:
        """The znode of a single package's entry."""
        return next(iter(self.nodes.values()), None)

    def register(self, record: dict[str, Any]) -> None:
        """Create the entry now if connected, else as soon as the session comes up."""
        self.sync([record])

    def sync(self, records: list[dict[str, Any]]) -> None:
        """Hold exactly these entries (one per model and version): create the new, delete those gone, and
        replace one whose record changed. Blocking: call it off the event loop."""
        with self._lock:
            self.records = {(r["model"], r["version"]): r for r in records}
            if self._client.connected:
                self._ensure_nodes()

    def _state_changed(self, state: str) -> None:
        # Runs on kazoo's event thread, which must not block: hand the work to a thread.
        if state == "CONNECTED" and self.records is not None:
            threading.Thread(target=self._reconnected, daemon=True).start()

    def _reconnected(self) -> None:
        with self._lock:
            self._ensure_nodes()

    def _ensure_nodes(self) -> None:
        """Bring ZooKeeper to `records` (the lock is held)."""
        if self.records is None:
            return
        try:
            for key in [k for k in self.nodes if k not in self.records]:
                gone = self.nodes.pop(key)
                if self._client.exists(gone):
                    self._client.delete(gone)
                self.note(f"deregistered {gone} ({key[0]} version {key[1]})")
            for key, record in self.records.items():
                node = self.nodes.get(key)
                if node is not None and self._client.exists(node):
                    data, _ = self._client.get(node)
                    if json.loads(data).get("default") == record.get("default"):
                        continue
                    self._client.delete(node)  # its default mark moved: its record is replaced
                self._client.ensure_path(self.address.path)
                self.nodes[key] = self._client.create(f"{self.address.path}/{PREFIX}", json.dumps(record).encode(),
                                                      ephemeral=True, sequence=True)
                self.note(f"registered {self.nodes[key]} in ZooKeeper at {self.address.hosts}")
        except Exception as exc:  # the session may drop mid-call; the next CONNECTED retries
            self.note(f"ZooKeeper registration failed ({type(exc).__name__}); will retry on reconnect")

    def close(self) -> None:
        """Remove the entries (a clean stop) and end the session."""
        with self._lock:
            self.records = None
            for node in self.nodes.values():
                try:
                    if self._client.connected:
                        self._client.delete(node)
                except Exception:  # gone already, or ZooKeeper down: the session's end removes it anyway
                    pass
            self.nodes = {}
            self._client.stop()
            self._client.close()


def discover(address: ZkAddress, model: str | None = None, timeout: float = CONNECT_TIMEOUT_S,
             version: str | None = None) -> list[dict[str, Any]]:
    """The live instances under the path (optionally only those serving `model`, and `version`), ordered by
    znode."""
    client = _client(address)
    try:
        client.start(timeout=timeout)
    except Exception as exc:
        raise RegistryError(f"ZooKeeper at {address.hosts} is unreachable ({type(exc).__name__}).") from exc
    try:
        if not client.exists(address.path):
            return []
        found = []
        for child in sorted(client.get_children(address.path)):
            try:
                data, _ = client.get(f"{address.path}/{child}")
                record = json.loads(data)
            except Exception:  # vanished between list and get, or not ours
                continue
            if isinstance(record, dict) and (model is None or record.get("model") == model) and (
                    version is None or record.get("version") == version):
                found.append({"znode": f"{address.path}/{child}", **record})
        return found
    finally:
        client.stop()
        client.close()


class Balancer:
    """The order in which to try instances: round robin (rotating across calls) or random."""

    def __init__(self, policy: str = "round-robin", seed: int | None = None) -> None:
        if policy not in ("round-robin", "random"):
            raise UsageError(f"--pick '{policy}': use round-robin or random.")
        self.policy = policy
        self._next = 0
        self._rng = random.Random(seed)

    def order(self, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not instances:
            return []
        if self.policy == "random":
            return self._rng.sample(instances, len(instances))
        start = self._next % len(instances)
        self._next += 1
        return instances[start:] + instances[:start]


def _connection(instance: dict[str, Any], timeout: float) -> http.client.HTTPConnection:
    cls = http.client.HTTPSConnection if instance.get("scheme") == "https" else http.client.HTTPConnection
    return cls(instance["host"], int(instance["port"]), timeout=timeout)


def fetch_signature(instances: list[dict[str, Any]], api_key: str | None = None) -> dict[str, Any] | None:
    """The V2 metadata of the first instance that answers, as a package signature; None if none answers."""
    from .datatypes import V2_TO_NUMPY

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for instance in instances:
        conn = _connection(instance, 5.0)
        try:
            conn.request("GET", f"/v2/models/{instance['model']}", headers=headers)
            response = conn.getresponse()
            meta = json.loads(response.read())
        except (OSError, ValueError, http.client.HTTPException):
            continue
        finally:
            conn.close()
        if response.status == 200:
            return {kind: [{"name": t["name"], "dtype": V2_TO_NUMPY[t["datatype"]].name, "shape": t["shape"]}
                           for t in meta[kind]] for kind in ("inputs", "outputs")}
    return None


def infer_v2(instance: dict[str, Any], inputs: dict[str, np.ndarray], api_key: str | None = None,
             timeout: float = 30.0) -> dict[str, np.ndarray]:
    """One V2 JSON inference call to one instance. Connection failures raise OSError."""
    from .datatypes import v2_datatype

    body = {"inputs": [{"name": n, "shape": list(v.shape), "datatype": v2_datatype(v.dtype.name),
                        "data": v.ravel().tolist()} for n, v in inputs.items()]}
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    conn = _connection(instance, timeout)
    try:
        conn.request("POST", f"/v2/models/{instance['model']}/versions/{instance['version']}/infer",
                     json.dumps(body), headers)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    if response.status >= 500:
        raise ConnectionError(f"{instance['host']}:{instance['port']} answered {response.status}")
    data = json.loads(payload or b"{}")
    if response.status >= 400:
        raise InputError(f"{instance['host']}:{instance['port']} refused the request ({response.status}): "
                         f"{data.get('error', payload[:200])}")
    from .datatypes import V2_TO_NUMPY

    return {o["name"]: np.asarray(o["data"], dtype=V2_TO_NUMPY.get(o["datatype"], np.dtype("float32")))
            .reshape(o["shape"]) for o in data["outputs"]}


def pick(instances: list[dict[str, Any]], version: str | None = None) -> list[dict[str, Any]]:
    """Without a version, each server's default version of the model: a repository server registers every
    version it serves, a request without one goes where that server would send it."""
    if version is not None:
        return instances
    return [i for i in instances if i.get("default", True)]


def predict(address: ZkAddress, model: str, inputs: dict[str, np.ndarray], *, api_key: str | None = None,
            balancer: Balancer | None = None, timeout: float = 30.0, version: str | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Call one live instance of `model` (its `version`, else the default version of a repository server);
    on a connection failure, the next. Returns outputs and who was tried."""
    instances = pick(discover(address, model, version=version), version)
    if not instances:
        what = f"model '{model}'" + (f" version {version}" if version else "")
        raise RegistryError(f"no live instance of {what} under {address}; is a server registered there?")
    tried: list[str] = []
    last: Exception | None = None
    for instance in (balancer or Balancer()).order(instances):
        where = f"{instance['host']}:{instance['port']}"
        tried.append(where)
        try:
            return infer_v2(instance, inputs, api_key, timeout), tried
        except (OSError, ConnectionError, http.client.HTTPException) as exc:
            log.warning("instance %s failed (%s); trying the next", where, type(exc).__name__)
            last = exc
    raise RegistryError(f"every instance of '{model}' failed ({', '.join(tried)}); last error: {last}")
