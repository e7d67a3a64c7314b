"""SavedModel to ONNX through tf2onnx, on a leaner path than `python -m tf2onnx.convert`.

Measured on ResNet50 (25.6 M parameters) here, the command-line converter peaks at 7.6 GB and takes
25 s. Two things cost most of that:
- by default tf2onnx deep-copies the whole graph, weights included, before each of its optimizers, so
  that a failing optimizer can be skipped; the copies are cyclic garbage that piles up until a
  collection. Running the optimizers without the copies (TF2ONNX_CATCH_ERRORS=FALSE) cuts the peak to
  4.2 GB and the optimizer time from 10 s to 2 s;
- the loaded SavedModel is garbage once the graph is frozen; collecting it returns 1.4 GB;
- freezing the SavedModel through grappler (`tf_optimize`) serialises and copies the frozen graph,
  weights and all, many times over: 15 GB for VGG16's 553 MB. tf2onnx's own large-model freezing
  skips grappler (peak 3 GB); the folding grappler would have done (batch norms into convolutions)
  is done afterwards on the ONNX graph by onnxruntime's basic, standard-ONNX-only optimizer;
- after every optimizer pass, tf2onnx rewrites each node's protobuf, copying every weight tensor into
  the node's protobuf arena; the old copies are freed only with the node, so memory grows by the
  model's whole size per pass (24 passes on VGG16: 12.5 GB, and 2 s a pass). A constant whose value
  has not changed since its last rewrite is not rewritten again, and a rewritten node gets a fresh
  NodeProto, so the old copy goes.
If an optimizer does fail on the lean path, the conversion is redone on tf2onnx's usual, careful one.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"


def convert_savedmodel(path: Path, opset: int) -> Any:
    """The ONNX ModelProto of the SavedModel's serving_default signature, on the lean path when it works.

    The lean path's graph still holds the batch norms grappler would have folded: run
    `frameworks.ort.optimize_graph(..., "basic")` on the saved result, as `convert` does."""
    try:
        return _convert(path, opset, lean=True)
    except Exception:  # an optimizer or the large-model freezing failed: tf2onnx's usual path
        gc.collect()
        return _convert(path, opset, lean=False)


def _convert(path: Path, opset: int, lean: bool) -> Any:
    from . import tf as tfw

    tf = tfw.tensorflow()
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
        str(path), None, None, None, ["serving_default"], None, lean,  # lean: freeze without grappler
        return_initialized_tables=True, return_tensors_to_rename=True,
    )
    gc.collect()  # the loaded SavedModel, now frozen into graph_def
    previous = os.environ.get(CATCH_ERRORS)
    os.environ[CATCH_ERRORS] = "FALSE" if lean else "TRUE"
    try:
        with tf.device("/cpu:0"), (_fresh_node_protos() if lean else contextlib.nullcontext()):
            model, _ = tf2onnx_convert._convert_common(
                graph_def, name=str(path), opset=opset, input_names=inputs, output_names=outputs,
                tensors_to_rename=renames, initialized_tables=tables,
            )
        return model
    finally:
        if previous is None:
            os.environ.pop(CATCH_ERRORS, None)
        else:
            os.environ[CATCH_ERRORS] = previous


@contextlib.contextmanager
def _fresh_node_protos() -> Iterator[None]:
    """Give each node a new NodeProto (its own arena) whenever tf2onnx rewrites it; restore tf2onnx after."""
    import onnx
    from tf2onnx.graph import Node

    original = Node.update_proto

    def update_proto(self: Any, external_tensor_storage: Any = None) -> None:
        stamp = None
        if self.type == "Const" and external_tensor_storage is None:
            stamp = (self.attr.get("value"), tuple(self.output), tuple(self.attr))
            last = getattr(self, "_modelpack_written", None)
            if last is not None and last[0] is stamp[0] and last[1:] == stamp[1:]:
                return  # unchanged since written (tf2onnx sets a new attribute object for every new value)
        old = self._op
        self._op = onnx.NodeProto(name=old.name, op_type=old.op_type, domain=old.domain, doc_string=old.doc_string)
        original(self, external_tensor_storage)
        if stamp is not None:
            self._modelpack_written = stamp

    Node.update_proto = update_proto
    try:
        yield
    finally:
        Node.update_proto = original
