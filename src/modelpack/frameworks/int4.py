"""int4 weight-only quantization with onnxruntime: MatMulNBits for MatMul weights, GatherBlockQuantized for
embedding tables.

Weights are stored as 4-bit integers in blocks along the reduction axis, each block with its own scale and
zero point; activations stay float (accuracy_level 0) or are quantized to int8 inside the kernel
(accuracy_level 4), which is what makes int4 fast or slow on a CPU (onnxruntime#23004). Neither the block
size nor the accuracy level is a given: `tune` builds each block size, times both levels against the float
model and an int8 reference, and keeps the smallest model that meets the fidelity target. When none does,
the MatMuls that add the most error are moved to 8-bit blocks, most sensitive first (1, 2, 4, ...), until
the target holds: a mixed-precision model is still far smaller than float.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import reason
from .int8 import Candidate, Target, _fmt, _time

BLOCK_SIZES = (16, 32, 64, 128)  # 16: MiniLM needs it for cosine 0.98 (0.9803, 5.08× smaller)
ACCURACY_LEVELS = (0, 4)  # 0: float compute on dequantized weights; 4: int8 compute


def applies(src: Path) -> bool:
    """Whether the model has a MatMul or Gather over a constant weight that int4 can hold."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    return any((n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in consts)
               or (n.op_type == "Gather" and n.input and n.input[0] in consts) for n in model.graph.node)


def weight_matmuls(src: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant weight (what MatMulNBits replaces)."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in consts]


def quantize(src: Path, out: Path, block_size: int, accuracy_level: int, eight_bit: list[str] | None = None) -> None:
    """int4 weights for every constant MatMul and Gather of `src`; the MatMuls in `eight_bit` get 8-bit blocks."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger("root").setLevel(logging.ERROR)  # the quantizer warns about the opset it raises for int4
    level = accuracy_level or None  # 0 is the kernel's default; the quantizer omits the attribute then
    keep = list(eight_bit or [])
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=level,
                                          op_types_to_quantize=("MatMul", "Gather"),
                                          quant_axes=(("MatMul", 0), ("Gather", 1)), bits=4)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config, nodes_to_exclude=keep)
    quantizer.process()
    model = quantizer.model.model
    if keep:
        config8 = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=level,
                                               op_types_to_quantize=("MatMul",), bits=8)
        second = MatMulNBitsQuantizer(model, algo_config=config8, nodes_to_include=keep)
        second.process()
        model = second.model.model
    onnx.save(model, str(out))


def tune(src: Path, work: Path, feeds: dict[str, np.ndarray],
         measure: Callable[[Path], tuple[float | None, float | None]],
         time_all: Callable[[list[Path]], list[float]], size_of: Callable[[Path], int], target: Target,
         note: Callable[[str], None], reference: Candidate | None = None,
         max_rounds: int = 5) -> tuple[Candidate, list[Candidate]]:
    """Build every block size at both accuracy levels, measure and time them; keep the smallest faithful one.

    `reference` (an int8 model already built) is timed in the same loop, so int4's speed is stated against
    int8 as well as float. Returns the chosen candidate and every candidate measured."""
    from . import ort

    named, _ = ort._name_nodes_and_find_heads(src, work / "int4-named.onnx")
    tried: list[Candidate] = []
    for block in BLOCK_SIZES:
        for level in ACCURACY_LEVELS:
            c = _candidate(block, level, [], work)
            _build(c, named, feeds, measure, target, size_of)
            tried.append(c)
    timed = tried + ([reference] if reference is not None else [])
    _time(timed, time_all)
    for c in tried:
        note(f"int4 candidate: {c.name}: " + (f"failed ({c.error})" if c.error else
             f"{c.size_bytes} bytes, {c.speedup:.2f}× float speed, cosine {_fmt(c.cosine)}"))
    usable = [c for c in tried if c.error is None]
    if not usable:
        raise ValueError("int4 could not quantize this model: " + "; ".join(f"{c.name}: {c.error}" for c in tried))
    good = [c for c in usable if c.meets_target]
    if good:
        return _smallest_then_fastest(good), tried
    # None met the target: from the most faithful block size, at its faster accuracy level, move the
    # MatMuls that add the most error to 8-bit blocks.
    base = max(usable, key=lambda c: (c.cosine or 0.0, c.speedup or 0.0))
    assert base.path is not None and base.block_size is not None and base.accuracy_level is not None
    ranked = _sensitive_matmuls(named, base.path, feeds, work)
    count = 1
    for _ in range(max_rounds):
        if count > len(ranked):
            count = len(ranked)
        trial = _candidate(base.block_size, base.accuracy_level, ranked[:count], work)
        _build(trial, named, feeds, measure, target, size_of)
        tried.append(trial)
        if trial.error is None:
            _time([trial] + ([reference] if reference is not None else []), time_all)
            note(f"int4 fallback: {count} MatMul(s) at 8 bits: {trial.size_bytes} bytes, {trial.speedup:.2f}× float "
                 f"speed, cosine {_fmt(trial.cosine)}")
            if trial.meets_target:
                return trial, tried
        if count == len(ranked):
            break
        count *= 2
    return max((c for c in tried if c.error is None), key=lambda c: (c.cosine or 0.0, -(c.size_bytes or 0))), tried


def _candidate(block: int, level: int, eight_bit: list[str], work: Path) -> Candidate:
    kept = f", {len(eight_bit)} most sensitive MatMul(s) at 8 bits" if eight_bit else ""
    name = f"int4 weights, block {block}, accuracy_level {level}{kept}"
    path = work / f"int4-b{block}-a{level}-k{len(eight_bit)}.onnx"
    return Candidate(name, "int4", quant_format="QOperator", activations="float" if level == 0 else "int8",
                     per_channel=False, excluded=list(eight_bit), path=path, block_size=block,
                     accuracy_level=level)


def _build(c: Candidate, src: Path, feeds: dict[str, np.ndarray],
           measure: Callable[[Path], tuple[float | None, float | None]], target: Target,
           size_of: Callable[[Path], int]) -> None:
    from . import ort

    assert c.path is not None and c.block_size is not None and c.accuracy_level is not None
    try:
        quantize(src, c.path, c.block_size, c.accuracy_level, c.excluded)
        ort.check_loads(c.path, "quantize", feeds)
        c.cosine, c.top1_agreement = measure(c.path)
        c.meets_target = target.met(c.cosine, c.top1_agreement)
        c.size_bytes = size_of(c.path)
    except Exception as exc:  # a model int4 cannot hold is a measured outcome, not a failure
        c.error = reason(exc, 200)


def _smallest_then_fastest(good: list[Candidate]) -> Candidate:
    """The smallest faithful candidate; between accuracy levels of the same weights, the faster."""
    smallest = min(c.size_bytes or 0 for c in good)
    same = [c for c in good if (c.size_bytes or 0) <= smallest * 1.005]
    return max(same, key=lambda c: c.speedup or 0.0)


def _sensitive_matmuls(float_path: Path, quant_path: Path, feeds: dict[str, np.ndarray], work: Path) -> list[str]:
    """The weight MatMuls of `float_path`, most error-adding first in the int4 model at `quant_path`."""
    from .int8 import sensitivity

    names = set(weight_matmuls(float_path))
    return [n for n in sensitivity(float_path, quant_path, feeds, work, only=names) if n in names]
