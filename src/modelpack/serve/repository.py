"""The repository of loaded models, below the protocols: {name: {version: loaded model}}, labels, defaults.

Every protocol asks `Repository.get(name, version, label)` for the model a request goes to; a request without a
version goes to the model's default (its `default` label or version, else its highest). `serve PKG` is a
repository of one model. With a repository (`serve REPO`), versions come and go while serving (polling, SIGHUP,
the V2 repository API): a new version is verified, loaded and warmed up off the event loop before it is put in
the table; the version it replaces leaves the table at once and is unloaded when its in-flight requests are
done. A request holds the version it resolved (see `HELD`) until it is answered, so a version is never unloaded
under a request that chose it.

With a memory budget (`--memory-budget-mb`, or `memory_budget_mb` in the repository file) nothing is loaded at
start-up: a version loads on its first request (concurrent first requests share one load), and when a load would
take the models over the budget the least recently used *idle* version (no request holding it, nothing queued) is
unloaded first. A version that cannot fit, even with every idle one unloaded, is answered 503 naming the model
and the budget. How a model's memory is measured, and the CPU budget, are in `budget.py`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, IntegrityError, ModelpackError, NotFound, RequestError, reason
from . import budget
from .batcher import Batcher
from .metrics import Metrics, model_labels
from .model import WARM_UP_FAILED_MS, ServedModel
from .sources import ModelSource, RepositorySpec, read_repository
from .tensors import clip

if TYPE_CHECKING:
    from .config import ServeConfig

log = logging.getLogger("modelpack.serve")
# A model faster than this (batch 1, measured at warm-up) runs on the event loop: a thread hop costs more.
INLINE_BELOW_MS = 0.5


@dataclass(eq=False)
class Loaded:
    """One loaded version: the model, its batcher, and the requests holding it."""

    model: ServedModel
    batcher: Batcher
    source: Path | None = None
    stamp: tuple[float, int] = (0.0, 0)
    warm_failed: bool = False
    inflight: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    memory_bytes: int = 0  # measured after load and warm-up (see budget.py)
    used: int = 0  # the repository's request count when it last served one: the LRU order

    labels: str = ""  # the metric labels of its model and version, made once

    def __post_init__(self) -> None:
        self.labels = model_labels(self.model.name, self.model.version)

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self.retired:
            self.idle.set()


# The versions the current request resolved; the transports set a list per request and release it at the end.
HELD: contextvars.ContextVar[list[Loaded] | None] = contextvars.ContextVar("modelpack_held", default=None)


def release_held(token: contextvars.Token[list[Loaded] | None]) -> Loaded | None:
    """Release what the request held (see HELD); returns the last version it used, for its metrics."""
    held = HELD.get()
    HELD.reset(token)
    for loaded in held or ():
        loaded.release()
    return held[-1] if held else None


@dataclass
class Entry:
    """One model of the repository: its live versions (replaced whole, never edited), labels and default."""

    name: str
    source: ModelSource | None  # None: the single package of `serve PKG`
    versions: dict[str, Loaded] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    default: str | None = None
    unloaded: bool = False  # unloaded through the repository API: polling leaves it so until it is loaded
    refused: dict[tuple[int, tuple[float, int]], str] = field(default_factory=dict)  # not retried until changed
    stuck: dict[str, int] = field(default_factory=dict)  # labels left where they were, and the version they wanted
    servable: dict[str, Path] = field(default_factory=dict)  # what the policy serves, loaded or not (memory budget)
    evicted: set[str] = field(default_factory=set)  # unloaded to fit the memory budget, until loaded again

    def default_version(self) -> Loaded | None:
        if self.default is not None:
            version = self.labels.get(self.default, self.default)
            if version in self.versions:
                return self.versions[version]
        if not self.versions:
            return None
        return self.versions[max(self.versions, key=_order)]


def _order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _artifact_bytes(path: Path) -> int:
    """The largest file of a version (its model, as a rule): what it holds in memory at the least."""
    try:
        if path.is_file():
            return path.stat().st_size
        return max((f.stat().st_size for f in path.rglob("*") if f.is_file()), default=0)
    except OSError:
        return 0


def _stamp(path: Path) -> tuple[float, int]:
    """What tells a changed version from the one loaded: its manifest's (or archive's) mtime and size."""
    target = path / "modelpack.json" if path.is_dir() else path
    try:
        st = target.stat()
    except OSError:
        return (0.0, 0)
    return (st.st_mtime, st.st_size)


class LoadFailed(ModelpackError):
    """A version that could not be verified, loaded or warmed up; `stage` is the metric's reason."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Served:
    """One version being served, as the registry lists it."""

    name: str
    version: str
    signature: dict[str, Any]
    default: bool  # what a request naming the model without a version gets
    labels: tuple[str, ...]


class Repository:
    def __init__(self, config: ServeConfig, metrics: Metrics, model: ServedModel | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.models: dict[str, Entry] = {}
        self.default_model: str | None = None
        self.spec: RepositorySpec | None = None
        self.generation = 0  # bumped on every change, so that documents built from the table are rebuilt
        self.failures: Counter[tuple[str, str, str]] = Counter()
        self._given = model
        self._lock = asyncio.Lock()
        self._by_model: dict[int, Loaded] = {}
        self._poller: asyncio.Task[None] | None = None
        self._spec_error: str | None = None
        self._publish: Callable[[list[Served]], None] | None = None  # the ZooKeeper entries' keeper (--register)
        self._published: list[Served] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._oci_refused: dict[str, str] = {}  # model -> the digest whose pull failed its checks: not retried
        self._oci_error: dict[str, str] = {}  # model -> the last pull error, logged once
        metrics.load_failures = self.failures
        self.budget_bytes: int | None = None  # the models' memory budget in this process (see `startup`)
        self.cpu: budget.CpuBudget | None = None
        self._tick = 0
        self._loading: dict[tuple[str, str], asyncio.Task[None]] = {}  # first-request loads, shared by their waiters
        self._waiting: Counter[tuple[str, str]] = Counter()  # requests waiting for a load: not to be evicted
        self._sizes: dict[tuple[Path, tuple[float, int]], int] = {}  # memory measured per version source
        self._stopping: set[asyncio.Task[None]] = set()  # evicted versions' batchers stopping

    # -- what the protocols ask --------------------------------------------------------------------------------

    def get(self, name: str | None, version: str | None = None, label: str | None = None) -> Loaded:
        """The loaded version a request goes to, held until the request is answered; NotFound otherwise."""
        entry = self._entry(name)
        if label is not None:
            target = entry.labels.get(label)
            if target is None:
                raise NotFound(f"model '{entry.name}' has no label {clip(label)} (labels: "
                               f"{', '.join(sorted(entry.labels)) or 'none'}).")
            version = target
        if version is None:
            loaded = entry.default_version()
        else:
            loaded = entry.versions.get(version)
            if loaded is None:
                have = sorted(entry.versions, key=_order)
                raise NotFound(f"model '{entry.name}' has no version {clip(version)} (this server has "
                               f"version{'s' if len(have) != 1 else ''} {', '.join(have) or 'none loaded'}).")
        if loaded is None:
            raise NotFound(f"model '{entry.name}' is not loaded; load it with POST "
                           f"/v2/repository/models/{entry.name}/load.")
        held = HELD.get()
        if held is not None:
            loaded.inflight += 1
            held.append(loaded)
        self._tick += 1
        loaded.used = self._tick
        return loaded

    def name_of(self, name: str | None) -> str:
        """The model a request goes to: `name`, or the default model when it names none (NotFound if none)."""
        if name is not None:
            return name
        return self._entry(None).name

    async def acquire(self, name: str | None, version: str | None = None, label: str | None = None) -> Loaded:
        """`get`, loading the version first under a memory budget if it is not loaded (a 503 if it cannot fit)."""
        if self.budget_bytes is None:
            return self.get(name, version, label)
        entry = self._entry(name)
        target = self._target(entry, version, label)
        if target is None or target in entry.versions or target not in entry.servable or entry.unloaded:
            return self.get(name, version, label)
        key = (entry.name, target)
        self._waiting[key] += 1
        try:
            task = self._loading.get(key)
            if task is None:
                task = self._loading[key] = asyncio.get_running_loop().create_task(self._load_on_demand(entry,
                                                                                                       target))
                task.add_done_callback(lambda done: self._loaded_on_demand(key, done))
            await asyncio.shield(task)
            return self.get(name, version, label)
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    def _loaded_on_demand(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # its waiters got it; a load whose waiters all left must not warn

    def _target(self, entry: Entry, version: str | None, label: str | None) -> str | None:
        """The version a request means, loaded or not (what `get` resolves, over the servable versions)."""
        if label is not None:
            return entry.labels.get(label)
        if version is not None:
            return version
        if entry.default is not None:
            wanted = entry.labels.get(entry.default, entry.default)
            if wanted in entry.servable or wanted in entry.versions:
                return wanted
        choices = set(entry.servable) | set(entry.versions)
        return max(choices, key=_order) if choices else None

    def _entry(self, name: str | None) -> Entry:
        if name is None:
            name = self.default_model
            if name is None:
                if len(self.models) != 1:
                    raise NotFound(f"this server serves several models ({self._names()}) and no default_model; "
                                   "name one, e.g. POST /v2/models/NAME/infer.")
                name = next(iter(self.models))
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model {clip(name)}; this server serves {self._names()}.")
        return entry

    def _names(self) -> str:
        return ", ".join(f"'{n}'" for n in self.models)

    def loaded_of(self, model: ServedModel) -> Loaded:
        loaded = self._by_model.get(id(model))
        if loaded is None:  # unloaded under a request that outlived --graceful-timeout-s
            raise RequestError(f"model '{model.name}' version {model.version} was unloaded; retry.", status=503,
                               headers={"Retry-After": "1"})
        return loaded

    def versions(self, name: str) -> list[str]:
        entry = self.models.get(name)
        return sorted(entry.versions, key=_order) if entry else []

    def primary(self) -> ServedModel | None:
        """The model a request without a name goes to, if there is one (the docs' examples use it)."""
        try:
            entry = self._entry(None)
        except RequestError:
            return None
        loaded = entry.default_version()
        return loaded.model if loaded else None

    def all_loaded(self) -> list[Loaded]:
        return [loaded for entry in self.models.values() for loaded in entry.versions.values()]

    def fallback_labels(self) -> str:
        """Metric labels for requests no model answered: the model's when there is one, else empty."""
        loaded = self.all_loaded()
        if len(loaded) == 1:
            return loaded[0].labels
        return model_labels("", "")

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: every version the sources offer, with its state."""
        rows: list[dict[str, Any]] = []
        for name, entry in self.models.items():
            offered: set[str] = set(entry.versions)
            refused: dict[str, str] = {}
            if entry.source is not None:
                try:
                    offered |= {str(v) for v in entry.source.available()}
                except InputError:
                    pass
                refused = {str(v): text for (v, _), text in entry.refused.items()}
            for version in sorted(offered, key=_order):
                if version in entry.versions:
                    row: dict[str, Any] = {"name": name, "version": version, "state": "READY", "reason": ""}
                    memory = entry.versions[version].memory_bytes
                    if memory:
                        row["memory_mb"] = round(memory / 2**20, 1)
                    rows.append(row)
                elif not ready_only:
                    why = "unloaded" if entry.unloaded else refused.get(version, "not served by the version policy")
                    if self.budget_bytes is not None and not entry.unloaded and version not in refused \
                            and version in entry.servable:
                        why = (f"{'evicted' if version in entry.evicted else 'not loaded yet'}: loads on its next "
                               f"request (memory budget {self._budget_mb()})")
                    rows.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": why})
        return rows

    def _budget_mb(self) -> str:
        return f"{(self.budget_bytes or 0) / 2**20:g} MB"

    def describe(self) -> list[dict[str, Any]]:
        """Every model with its versions, labels and tensors, for /openapi.json and /docs."""
        out = []
        for name, entry in self.models.items():
            loaded = entry.default_version()
            item: dict[str, Any] = {"name": name, "versions": self.versions(name), "labels": dict(entry.labels),
                                    "default_version": loaded.model.version if loaded else None}
            if loaded is not None:
                meta = loaded.model.metadata()
                item.update(platform=meta["platform"], inputs=meta["inputs"], outputs=meta["outputs"])
            out.append(item)
        return out

    # -- loading and unloading ---------------------------------------------------------------------------------

    def served(self) -> list[Served]:
        """Every version being served, for the registry (one ZooKeeper entry each)."""
        out = []
        for name, entry in self.models.items():
            default = entry.default_version()
            for version in sorted(entry.versions, key=_order):
                loaded = entry.versions[version]
                out.append(Served(name, version, loaded.model.signature.to_dict(), loaded is default,
                                  tuple(sorted(label for label, v in entry.labels.items() if v == version))))
        return out

    def watch(self, publish: Callable[[list[Served]], None]) -> None:
        """Call `publish` (on the event loop; it must not block) with what is served, now and on every change."""
        self._publish, self._published = publish, None
        self._changed()

    def _changed(self) -> None:
        if self._publish is None:
            return
        served = self.served()
        if served != self._published:
            self._published = served
            self._publish(served)

    async def startup(self) -> None:
        """Load everything (a failure here stops the server: nothing has been served yet).

        With a memory budget, load nothing: check the sources and serve each version on its first request."""
        self.loop = asyncio.get_running_loop()
        config = self.config
        self.spec = (await asyncio.to_thread(read_repository, config.repository, config.oci_cache)
                     if config.repository is not None else None)
        self.cpu = budget.cpu_budget(config.workers, config.threads, config.repository is not None,
                                     config.max_batch_size, config.batch_timeout_ms)
        budget.apply(self.cpu)
        memory_mb = config.memory_budget_mb
        if memory_mb is None and self.spec is not None:
            memory_mb = self.spec.memory_budget_mb
        if memory_mb is not None and self.spec is not None:
            memory_mb /= config.workers  # each worker holds its own models: together they stay within the budget
            self.budget_bytes = int(memory_mb * 2**20)
            self.metrics.memory_budget_bytes = self.budget_bytes
            await asyncio.to_thread(self._prime)
        count = len(self.spec.models) if self.spec is not None else 1
        log.info("%s", self.cpu.describe(count, memory_mb if self.budget_bytes is not None else None))
        if self.config.repository is None:
            model = self._given if self._given is not None else self.config.load_model()
            entry = Entry(model.name, None)
            self.models = {model.name: entry}
            loaded = self._serve(model, model.warm_up(), None, allow_one_thread=True)
            self._install(entry, {model.version: loaded})
            return
        assert self.spec is not None
        self.default_model = self.spec.default_model
        for name, source in self.spec.models.items():
            entry = self.models[name] = Entry(name, source)
            if source.oci is not None:
                await self._sync_oci(entry, startup=True)
            await self._refresh(entry, startup=True)

    def _prime(self) -> None:
        """Pay the process's one-time costs of a load (the runtime's set-up, the modules a package load imports,
        the loading thread's heap) before any model is measured: open the smallest version and let it go."""
        assert self.spec is not None
        budget.prime()
        versions = [(name, v, path) for name, source in self.spec.models.items()
                    for v, path in source.wanted().items()]
        if not versions:
            return
        name, version, path = min(versions, key=lambda item: _artifact_bytes(item[2]))
        source = self.spec.models[name]
        try:
            self._open(name, version, path, source.key_file or self.config.key_file)
        except LoadFailed:
            pass  # its own first request will say why

    async def shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for loaded in self.all_loaded():
            await loaded.batcher.stop()

    def begin_drain(self) -> None:
        for loaded in self.all_loaded():
            loaded.batcher.drain()

    def start_polling(self) -> None:
        if self.config.poll_s and self.config.repository is not None:
            self.metrics.polls = 0
            self._poller = asyncio.get_running_loop().create_task(self._poll(self.config.poll_s))

    async def _poll(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.rescan()
            except Exception:  # a bug must not stop polling for good
                log.exception("repository poll failed")

    async def rescan(self) -> None:
        """Re-read the repository (directory or file) and bring every model to what it says."""
        if self.config.repository is None:
            return
        async with self._lock:
            try:
                if self.metrics.polls is not None:
                    self.metrics.polls += 1
                spec = await asyncio.to_thread(read_repository, self.config.repository, self.config.oci_cache)
            except InputError as exc:
                if str(exc) != self._spec_error:  # one line per distinct problem, not one per poll
                    log.error("repository not re-read, the models being served stay: %s", exc)
                    self._spec_error = str(exc)
                return
            self._spec_error = None
            self.spec = spec
            self.default_model = spec.default_model
            for name in [n for n in self.models if n not in spec.models]:
                log.info("model %s left the repository; unloading it", name)
                gone = self.models.pop(name)
                await self._retire(gone, set(gone.versions))
            for name, source in spec.models.items():
                entry = self.models.get(name)
                if entry is None:
                    entry = self.models[name] = Entry(name, source)
                entry.source = source
                if not entry.unloaded:
                    if source.oci is not None:
                        await self._sync_oci(entry)
                    await self._refresh(entry)
            self._changed()

    async def load(self, name: str) -> None:
        """The repository API's load: (re)read the model's source and serve what its policy says."""
        async with self._lock:
            entry = self._entry(name)
            entry.unloaded = False
            if entry.source is None:  # the single package: load it again from where it came
                model = await asyncio.to_thread(self.config.load_model)
                loaded = self._serve(model, await asyncio.to_thread(model.warm_up), None, allow_one_thread=True)
                old = list(entry.versions.values())
                self._install(entry, {model.version: loaded})
                await self._retire_loaded(entry, old)
                self._changed()
                return
            entry.refused.clear()  # an explicit load tries again what polling refused
            if entry.source.oci is not None:
                self._oci_refused.pop(name, None)
                await self._sync_oci(entry)
            failed = await self._refresh(entry)
            self._changed()
            if failed:
                raise RequestError(f"failed to load model '{name}': {failed}")
            target = self._target(entry, None, None)
            if self.budget_bytes is not None and target is not None and target not in entry.versions:
                await self._load_servable(entry, target)  # an explicit load loads, budget or not

    async def unload(self, name: str) -> None:
        """The repository API's unload: take every version out of the table, then drain and free them."""
        async with self._lock:
            entry = self._entry(name)
            entry.unloaded = True
            await self._retire(entry, set(entry.versions))
            self._changed()

    async def _sync_oci(self, entry: Entry, startup: bool = False) -> None:
        """Pull the digest an oci:// source's tag points at, as a new version, if it is new (off the loop).

        A pull that fails its checks (a digest, the signature) is refused until the tag moves; an unreachable
        registry is tried again at the next poll. Either is one log line per distinct problem, and the versions
        being served stay. At start-up, a failure stops the server unless earlier pulls left versions."""
        from .oci_source import current_digest, pull_version, read_index

        source = entry.source
        assert source is not None and source.oci is not None and source.directory is not None
        digest = None
        try:
            digest = await asyncio.to_thread(current_digest, source.oci, source.plain_http)
            if digest in read_index(source.directory) or self._oci_refused.get(entry.name) == digest:
                return
            log.info("model %s: %s points at %s; pulling it", entry.name, source.oci, digest)
            version = await asyncio.to_thread(pull_version, source.oci, digest, source.directory,
                                              pubkey=self.config.require_signature, plain_http=source.plain_http)
        except ModelpackError as exc:
            if startup and not source.available():
                raise InputError(f"{source.where}: {source.oci}: {reason(exc)}") from None
            message = reason(exc)
            if isinstance(exc, IntegrityError) and digest is not None:
                self._oci_refused[entry.name] = digest
            if self._oci_error.get(entry.name) != message:
                self._oci_error[entry.name] = message
                self.failures[(entry.name, "", "pull")] += 1
                log.error("model %s: %s not pulled, the versions being served stay: %s", entry.name, source.oci,
                          message)
            return
        self._oci_error.pop(entry.name, None)
        log.info("model %s: pulled %s as version %d", entry.name, digest, version)

    async def _refresh(self, entry: Entry, startup: bool = False) -> str | None:
        """Load the versions the policy wants and are not loaded, then retire those it no longer wants.

        Returns the last refusal's message (None when everything wanted is served)."""
        source = entry.source
        assert source is not None
        available = source.available()
        for key in [k for k in entry.refused if available.get(k[0]) is None or _stamp(available[k[0]]) != k[1]]:
            del entry.refused[key]  # the refused version changed or left: it may be tried again
        loaded = dict(entry.versions)
        failure: str | None = None
        while True:  # a refused version leaves the choice: choose again among the rest (e.g. keep both of latest 2)
            refused_now = {v for v, _ in entry.refused}
            offered = {v: p for v, p in available.items() if v not in refused_now}
            wanted = source.policy.choose(list(offered))
            refused_here = False
            newest = max((int(v) for v in loaded if v.isdigit()), default=None)
            for version in wanted:
                path = offered[version]
                current = loaded.get(str(version))
                if current is not None and current.stamp == _stamp(path):
                    continue
                if current is None and self.budget_bytes is not None and (newest is None or version <= newest):
                    continue  # under a memory budget, loaded on its first request; a newer version of a model
                    # in use replaces it now, warmed up, as without a budget
                try:
                    new = await self._load_version(entry, version, path, startup)
                except LoadFailed as exc:
                    if startup:
                        raise InputError(f"{path}: {exc}") from None
                    entry.refused[(version, _stamp(path))] = str(exc)
                    self.failures[(entry.name, str(version), exc.stage)] += 1
                    log.error("model %s version %s refused (%s), the versions being served stay: %s", entry.name,
                              version, exc.stage, exc)
                    failure, refused_here = str(exc), True
                    continue
                loaded[str(version)] = new
            if not refused_here:
                break
        entry.servable = {str(v): offered[v] for v in wanted}
        keep = {str(v) for v in wanted} & set(loaded)
        if not keep and entry.versions and not startup:
            keep = set(entry.versions)  # nothing wanted could load: the old versions keep serving
        table = {v: loaded[v] for v in sorted(keep, key=_order)}
        current_versions = set(map(id, entry.versions.values()))
        for name, unused in loaded.items():  # loaded in an earlier pass, then not chosen: never served
            if name not in table and id(unused) not in current_versions:
                await unused.batcher.stop()
                self.metrics.remove_model(unused.labels)
        gone = [old for v, old in entry.versions.items() if table.get(v) is not old]
        self._install(entry, table)
        self._set_labels(entry, source)
        for loaded_version in gone:
            log.info("model %s version %s replaced; unloading it once its requests finish", entry.name,
                     loaded_version.model.version)
        await self._retire_loaded(entry, gone)
        return failure

    def _set_labels(self, entry: Entry, source: ModelSource) -> None:
        labels = {}
        for label, version in source.labels.items():
            if str(version) in entry.versions or (self.budget_bytes is not None and str(version) in entry.servable):
                labels[label] = str(version)
            elif label in entry.labels:
                labels[label] = entry.labels[label]  # its version is not served (refused?): the label stays
                if entry.stuck.get(label) != version:  # one line per label and version, not one per poll
                    entry.stuck[label] = version
                    log.error("model %s: label %s -> %s names a version that is not loaded; it stays on %s",
                              entry.name, label, version, entry.labels[label])
        if labels != entry.labels:
            entry.labels = labels
            self.generation += 1
        entry.default = source.default

    async def _load_version(self, entry: Entry, version: int, path: Path, startup: bool) -> Loaded:
        """Verify, load and warm up one version, off the event loop."""
        source = entry.source
        assert source is not None
        if self.budget_bytes is not None:
            self._fit(entry, str(version), self._sizes.get((path, _stamp(path))) or _artifact_bytes(path))
        model, warm_ms, memory = await asyncio.to_thread(self._open, entry.name, version, path,
                                                         source.key_file or self.config.key_file)
        self._sizes[(path, _stamp(path))] = memory
        if self.budget_bytes is not None:
            try:
                self._fit(entry, str(version), memory)
            except LoadFailed:
                del model  # measured over what fits: freed, not served
                raise
        previous = entry.default_version()
        warm_failed = warm_ms >= WARM_UP_FAILED_MS
        if warm_failed and not startup and previous is not None and not previous.warm_failed:
            raise LoadFailed("warmup", "it failed its warm-up run on random inputs (see the warning above), "
                                       "which the version it replaces passed")
        loaded = self._serve(model, warm_ms, path)
        loaded.warm_failed = warm_failed
        loaded.memory_bytes = memory
        self.metrics.models[loaded.labels].memory_bytes = memory
        self.metrics.loads[(entry.name, str(version))] += 1
        self._tick += 1
        loaded.used = self._tick  # the newest load is the most recently used: not the next to go
        log.info("model %s version %s ready (%s, loaded in %.2fs, %.1f MB)", entry.name, version, model.platform,
                 model.load_seconds, memory / 2**20)
        return loaded

    def _fit(self, entry: Entry, version: str, need: int) -> None:
        """Make room for `need` bytes under the budget: unload idle versions, least recently used first.

        The model's own versions are left alone (a swap keeps the old one serving until the new one is in), and
        so are versions with requests holding them, queued or waiting for their load. LoadFailed("memory")
        when it cannot fit; the versions already chosen to go are gone by then (they were idle)."""
        assert self.budget_bytes is not None
        budget_mb = self._budget_mb()
        if need > self.budget_bytes:
            raise LoadFailed("memory", f"model '{entry.name}' version {version} needs {need / 2**20:.1f} MB, over "
                                       f"the memory budget of {budget_mb}; raise --memory-budget-mb "
                                       "(memory_budget_mb in the repository file) or serve it elsewhere.")
        held = sum(lv.memory_bytes for lv in self.all_loaded())
        idle = sorted((lv for e in self.models.values() if e is not entry for lv in e.versions.values()
                       if lv.inflight == 0 and lv.batcher.depth == 0
                       and not self._waiting.get((e.name, lv.model.version))), key=lambda lv: lv.used)
        chosen: list[Loaded] = []
        for candidate in idle:
            if held + need <= self.budget_bytes:
                break
            chosen.append(candidate)
            held -= candidate.memory_bytes
        if held + need > self.budget_bytes:
            raise LoadFailed("memory", f"model '{entry.name}' version {version} needs {need / 2**20:.1f} MB and the "
                                       f"memory budget of {budget_mb} holds {held / 2**20:.1f} MB of models "
                                       "that are in use; retry.")
        for gone in chosen:
            self._evict(gone)

    def _evict(self, loaded: Loaded) -> None:
        """Unload an idle version at once (nothing holds it) to make room; its next request loads it again."""
        name, version = loaded.model.name, loaded.model.version
        entry = self.models[name]
        self._install(entry, {v: lv for v, lv in entry.versions.items() if lv is not loaded})
        entry.evicted.add(version)
        loaded.retired = True
        loaded.batcher.drain()
        self._by_model.pop(id(loaded.model), None)
        self.metrics.remove_model(loaded.labels)
        self.metrics.evictions[(name, version)] += 1
        task = asyncio.get_running_loop().create_task(loaded.batcher.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        log.info("model %s version %s unloaded to fit the memory budget of %s (least recently used, idle; "
                 "%.1f MB)", name, version, self._budget_mb(), loaded.memory_bytes / 2**20)

    async def _load_on_demand(self, entry: Entry, version: str) -> None:
        """The first request's load of a version under a memory budget (one load however many requests wait)."""
        async with self._lock:
            await self._load_servable(entry, version)

    async def _load_servable(self, entry: Entry, version: str) -> None:
        """Load one servable version now, under the budget (the caller holds the lock); RequestError if not."""
        path = entry.servable.get(version)
        if version in entry.versions or path is None or entry.unloaded or self.models.get(entry.name) is not entry:
            return  # loaded meanwhile, or gone: `get` answers
        stamp = _stamp(path)
        refused = entry.refused.get((int(version), stamp))
        if refused is not None:
            raise RequestError(f"model '{entry.name}' version {version} failed to load: {refused}", status=503)
        try:
            new = await self._load_version(entry, int(version), path, startup=False)
        except LoadFailed as exc:
            if exc.stage == "memory":
                raise RequestError(str(exc), status=503, headers={"Retry-After": "1"}) from None
            entry.refused[(int(version), stamp)] = str(exc)
            self.failures[(entry.name, version, exc.stage)] += 1
            log.error("model %s version %s refused (%s): %s", entry.name, version, exc.stage, exc)
            raise RequestError(f"model '{entry.name}' version {version} failed to load: {exc}",
                               status=503) from None
        entry.evicted.discard(version)
        self._install(entry, {**entry.versions, version: new})

    def _open(self, name: str, version: int, path: Path, key_file: Path | None) -> tuple[ServedModel, float, int]:
        """Verify, load and warm up; returns the model, its batch-1 latency and the memory it took (budget.py)."""
        from ..package import open_any

        config = self.config
        try:
            with open_any(path, key_file=key_file, need="memory") as pkg:
                pkg.verify(pubkey=config.require_signature, load=False, option="--require-signature")
        except ModelpackError as exc:
            raise LoadFailed("verify", reason(exc)) from None
        try:
            # Opened again: a .mpk is extracted for the load and the warm-up, and removed after them.
            before = budget.resident_bytes()
            with open_any(path, key_file=key_file, need="memory") as pkg:
                model = ServedModel.load(pkg, pkg.artifact(config.runtime)["format"], config.max_batch_size,
                                         config.threads)
                model.name, model.version = name, str(version)
                warm_ms = model.warm_up()
                if warm_ms < INLINE_BELOW_MS and config.threads is None:
                    model.prefer_one_thread()
            memory = max(budget.resident_bytes() - before, _artifact_bytes(path))
            return model, warm_ms, memory
        except ModelpackError as exc:
            raise LoadFailed("load", reason(exc)) from None
        except Exception as exc:  # the runtime refused the artifact
            raise LoadFailed("load", reason(exc)) from None

    def _serve(self, model: ServedModel, warm_ms: float, source: Path | None,
               allow_one_thread: bool = False) -> Loaded:
        """The batcher for a loaded, warmed-up model, started on this loop."""
        config = self.config
        inline = warm_ms < INLINE_BELOW_MS
        if allow_one_thread and inline and config.threads is None and model.prefer_one_thread():
            log.info("one intra-op thread: it runs this model faster than a thread pool (--threads overrides)")
        labels = model_labels(model.name, model.version)
        gauges = self.metrics.add_model(labels, model.load_seconds)
        batcher = Batcher(model.runner.run, max_batch_size=config.max_batch_size,
                          timeout_ms=config.batch_timeout_ms, max_queue=config.max_queue,
                          on_batch=gauges.batch.observe, inline=inline, mergeable=model.signature.simple_batch)
        batcher.start()
        gauges.queue_depth = lambda: batcher.depth
        gauges.dropped = lambda: batcher.dropped
        return Loaded(model, batcher, source, _stamp(source) if source is not None else (0.0, 0))

    def _install(self, entry: Entry, table: dict[str, Loaded]) -> None:
        """Put a new version table in place, in one assignment: a request sees the old one or the new one."""
        entry.versions = table
        for loaded in table.values():
            self._by_model[id(loaded.model)] = loaded
        self.generation += 1
        self._changed()  # the registry hears of it before the old versions drain

    async def _retire(self, entry: Entry, versions: Iterable[str]) -> None:
        names = set(versions)
        gone = [loaded for v, loaded in entry.versions.items() if v in names]
        self._install(entry, {v: loaded for v, loaded in entry.versions.items() if v not in names})
        for loaded in gone:
            log.info("model %s version %s unloading once its requests finish", entry.name, loaded.model.version)
        await self._retire_loaded(entry, gone)

    async def _retire_loaded(self, entry: Entry, gone: list[Loaded]) -> None:
        """Wait for each version's in-flight requests (within --graceful-timeout-s), then stop and free it."""
        for loaded in gone:
            loaded.retired = True
            if loaded.inflight == 0:
                loaded.idle.set()
            try:
                await asyncio.wait_for(loaded.idle.wait(), self.config.graceful_timeout_s)
            except TimeoutError:
                log.warning("model %s version %s: %d request(s) still running after --graceful-timeout-s; "
                            "unloading anyway", entry.name, loaded.model.version, loaded.inflight)
            await loaded.batcher.stop()
            self._by_model.pop(id(loaded.model), None)
            if not any(lv.labels == loaded.labels for lv in self.all_loaded()):
                self.metrics.remove_model(loaded.labels)
            log.info("model %s version %s unloaded", entry.name, loaded.model.version)
        if gone:
            self.generation += 1

