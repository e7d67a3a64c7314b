"""Running a model: one interface over onnxruntime, TFLite, TF SavedModel and Keras.

A Runner takes and returns tensors keyed by the signature's canonical names, so
callers never care which runtime sits underneath. Only the ONNX runner avoids
TensorFlow; the others import it lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import InputError, reason
from .formats import ModelRef, Repr
from .signature import Signature, match_names

Tensors = dict[str, np.ndarray]


class Runner(Protocol):
    signature: Signature

    def run(self, feeds: Tensors) -> Tensors: ...


# Session settings a manifest may record for an ONNX artifact (the latency objective measures them), and the
# values each takes. serve, predict and benchmark apply them; an explicit --threads wins over intra_op_threads.
EXECUTION_MODES = ("sequential", "parallel")
GRAPH_LEVELS = ("disable", "basic", "extended", "all")
SESSION_KEYS = ("intra_op_threads", "execution_mode", "graph_optimization_level", "disabled_optimizers")
# Set by serve's CPU budget (serve/budget.py): the intra-op threads of a session that names no count of its own,
# instead of onnxruntime's one per core; None leaves onnxruntime's default.
_DEFAULT_THREADS: int | None = None


def set_default_intra_op_threads(threads: int | None) -> None:
    """The intra-op threads of sessions built from now on in this process that name no thread count."""
    global _DEFAULT_THREADS
    _DEFAULT_THREADS = threads


def session_options(settings: Mapping[str, Any] | None = None, threads: int | None = None) -> Any:
    """onnxruntime SessionOptions with `settings` applied; `threads`, when given, sets the intra-op threads."""
    import onnxruntime as ort

    settings = dict(settings or {})
    opts = ort.SessionOptions()
    intra = threads or settings.get("intra_op_threads") or _DEFAULT_THREADS
    if intra:
        opts.intra_op_num_threads = int(intra)
    mode = settings.get("execution_mode")
    if mode is not None:
        if mode not in EXECUTION_MODES:
            raise InputError(f"session setting execution_mode '{mode}': use one of {', '.join(EXECUTION_MODES)}.")
        opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if mode == "parallel"
                               else ort.ExecutionMode.ORT_SEQUENTIAL)
    level = settings.get("graph_optimization_level")
    if level is not None:
        if level not in GRAPH_LEVELS:
            raise InputError(f"session setting graph_optimization_level '{level}': use one of "
                             f"{', '.join(GRAPH_LEVELS)}.")
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.log_severity_level = 4  # run errors become exceptions with the message; no log line too
    return opts


def disabled_optimizers(settings: Mapping[str, Any] | None) -> list[str]:
    """The onnxruntime graph optimizers `settings` turn off (an InferenceSession argument, not a SessionOptions
    field): on an int8 BERT, SkipLayerNormFusion's fused kernel costs more than the Add and LayerNorm it replaces."""
    found = (settings or {}).get("disabled_optimizers") or []
    if not isinstance(found, list) or not all(isinstance(n, str) and n for n in found):
        raise InputError(f"session setting disabled_optimizers {found!r}: use a list of onnxruntime optimizer names.")
    return list(found)


def applied_settings(session: Any) -> dict[str, Any]:
    """What a live onnxruntime session was built with, in the manifest's terms (read back from the session)."""
    import onnxruntime as ort

    opts = session.get_session_options()
    levels = {ort.GraphOptimizationLevel.ORT_DISABLE_ALL: "disable",
              ort.GraphOptimizationLevel.ORT_ENABLE_BASIC: "basic",
              ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED: "extended",
              ort.GraphOptimizationLevel.ORT_ENABLE_ALL: "all"}
    # onnxruntime does not report the optimizers a session was built without; OnnxRunner.applied adds them.
    return {"intra_op_threads": opts.intra_op_num_threads or None,
            "execution_mode": "parallel" if opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL else "sequential",
            "graph_optimization_level": levels.get(opts.graph_optimization_level, str(opts.graph_optimization_level))}


class OnnxRunner:
    """onnxruntime on the CPU; loads from a path or from bytes (for encrypted packages).

    `settings` are the session settings a manifest recorded for the artifact; `threads` overrides theirs."""

    def __init__(self, model: Path | bytes, signature: Signature, threads: int | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        import onnxruntime as ort

        # Kept to open the model again with other options (see ServedModel.prefer_one_thread); a large model
        # held in memory is not kept twice.
        self.source: Path | bytes | None = model if not isinstance(model, bytes) or len(model) <= 64 << 20 else None
        self.settings = {k: v for k, v in (settings or {}).items() if k in SESSION_KEYS and v is not None}
        self.threads = threads or self.settings.get("intra_op_threads")
        opts = session_options(self.settings, threads)
        disabled = disabled_optimizers(self.settings)
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"],
                                                **({"disabled_optimizers": disabled} if disabled else {}))
        except Exception as exc:
            where = "in-memory model" if isinstance(model, bytes) else f"'{model}'"
            raise InputError(f"onnxruntime cannot load {where}: {reason(exc, 200)}") from exc
        self.signature = signature
        self._in = match_names([i.name for i in self.session.get_inputs()], signature.input_names)
        self._in_rev = {v: k for k, v in self._in.items()}
        self._out_names = [o.name for o in self.session.get_outputs()]
        self._out = match_names(self._out_names, signature.output_names)

    def applied(self) -> dict[str, Any]:
        """The recorded settings as this session applied them: read back from onnxruntime where it can say."""
        found = {**applied_settings(self.session), "disabled_optimizers": disabled_optimizers(self.settings)}
        return {k: found[k] for k in self.settings}

    def run(self, feeds: Tensors) -> Tensors:
        native = {self._in_rev[name]: value for name, value in feeds.items()}
        results = self.session.run(self._out_names, native)
        return {self._out[n]: r for n, r in zip(self._out_names, results)}


class TFLiteRunner:
    def __init__(self, path: Path | None, signature: Signature, threads: int | None = None,
                 content: bytes | None = None) -> None:
        from .frameworks import tflite

        self.interpreter = tflite.interpreter(path, content=content, threads=threads)
        self.signature = signature
        sigs = self.interpreter.get_signature_list()
        if not sigs:  # an older converter's file: no signature runner, only input and output tensors
            self._runner = None
            ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
            self._in_rev = {v: k for k, v in match_names([d["name"] for d in ins], signature.input_names).items()}
            self._out = match_names([d["name"] for d in outs], signature.output_names)
            self._details = ({d["name"]: d for d in ins}, outs)
            self._dtypes = {d["name"]: d["dtype"] for d in ins}
            return
        key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        self._runner = self.interpreter.get_signature_runner(key)
        self._in = match_names(list(sigs[key]["inputs"]), signature.input_names)
        self._in_rev = {v: k for k, v in self._in.items()}
        self._out = match_names(list(sigs[key]["outputs"]), signature.output_names)
        self._dtypes = {n: d["dtype"] for n, d in self._runner.get_input_details().items()}

    def run(self, feeds: Tensors) -> Tensors:
        native = {
            self._in_rev[name]: np.ascontiguousarray(value, dtype=self._dtypes[self._in_rev[name]])
            for name, value in feeds.items()
        }
        if self._runner is None:
            ins, outs = self._details
            for name, value in native.items():
                if tuple(ins[name]["shape"]) != value.shape:
                    self.interpreter.resize_tensor_input(ins[name]["index"], value.shape)
                    self.interpreter.allocate_tensors()
                self.interpreter.set_tensor(ins[name]["index"], value)
            self.interpreter.invoke()
            return {self._out[d["name"]]: np.array(self.interpreter.get_tensor(d["index"])) for d in outs}
        results = self._runner(**native)
        return {self._out[n]: np.asarray(v) for n, v in results.items()}


class SavedModelRunner:
    def __init__(self, path: Path, signature: Signature) -> None:
        from .frameworks import savedmodel
        from .frameworks import tf as tfw

        self._tf = tfw.tensorflow()
        self._loaded = savedmodel.load(path)
        self._fn = savedmodel.serving_fn(self._loaded)
        self.signature = signature
        native_in = list(self._fn.structured_input_signature[1])
        self._in_rev = {v: k for k, v in match_names(native_in, signature.input_names).items()}
        self._out = match_names(list(self._fn.structured_outputs), signature.output_names)

    def run(self, feeds: Tensors) -> Tensors:
        native = {self._in_rev[name]: self._tf.constant(value) for name, value in feeds.items()}
        results = self._fn(**native)
        return {self._out[n]: v.numpy() for n, v in results.items()}


class KerasRunner:
    def __init__(self, ref: ModelRef, signature: Signature, safe: bool = True, model: Any = None) -> None:
        from .frameworks import keras

        self.model = model if model is not None else keras.load(ref, safe=safe)
        self.signature = signature

    def run(self, feeds: Tensors) -> Tensors:
        args = [feeds[name] for name in self.signature.input_names]
        out = self.model(args[0] if len(args) == 1 else args, training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return {name: np.asarray(o) for name, o in zip(self.signature.output_names, outs)}


def load_runner(ref: ModelRef, signature: Signature, *, threads: int | None = None, safe: bool = True) -> Runner:
    """A runner for `ref` on its own runtime, with the session settings its manifest recorded (`ref.session`)."""
    if ref.rep is Repr.ONNX:
        return OnnxRunner(ref.path, signature, threads, ref.session)
    if ref.rep is Repr.TFLITE:
        return TFLiteRunner(ref.path, signature, threads)
    if ref.rep is Repr.SAVEDMODEL:
        return SavedModelRunner(ref.path, signature)
    return KerasRunner(ref, signature, safe=safe)


def runner_from_bytes(rep: Repr, data: bytes, signature: Signature, threads: int | None = None,
                      session: Mapping[str, Any] | None = None) -> Runner:
    """A runner for a model held in memory (a decrypted artifact): ONNX or TFLite only."""
    if rep is Repr.ONNX:
        return OnnxRunner(data, signature, threads, session)
    if rep is Repr.TFLITE:
        return TFLiteRunner(None, signature, threads, content=data)
    raise InputError(f"a {rep} model cannot be loaded from memory; only ONNX and TFLite can.")
