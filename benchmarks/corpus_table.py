"""Every modelpack command on every model of the real-model corpus, as the corpus table in docs/corpus.md.

    python benchmarks/corpus_table.py            # the light corpus
    python benchmarks/corpus_table.py --all      # with ResNet50 and EfficientNetB0
    python benchmarks/corpus_table.py --docs     # ... and rewrite the corpus table of docs/corpus.md, dated
    python benchmarks/corpus_table.py --docs --from-json build/corpus.json   # render a saved run again

`exercise()` is also what `tests/test_corpus.py` runs, so the table and the tests cannot disagree.
Fidelity is against the source model on its eval data (cosine: worst output's mean; agree: top-1).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import corpus  # noqa: E402


def _cli(*args: Any) -> tuple[int, str]:
    from click.testing import CliRunner

    from modelpack.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _quality(package: Path) -> str:
    manifest = json.loads((package / "modelpack.json").read_text())
    stage = manifest["lineage"]["stages"][-1]["metrics"]
    parts = []
    if "top1_agreement" in stage:
        parts.append(f"agree {stage['top1_agreement']:.1f}%")
    if "cosine" in stage:
        parts.append(f"cos {stage['cosine']:.3f}")
    if "speedup" in stage:
        parts.append(f"{stage['speedup']:.2f}× speed")
    return ", ".join(parts) or "ok"


def _step(row: dict[str, Any], command: str, *args: Any, package: Path | None = None, na: str | None = None) -> bool:
    if na is not None:
        row["commands"][command] = {"status": "n/a", "detail": na}
        return False
    start = time.perf_counter()
    code, output = _cli(*args)
    seconds = round(time.perf_counter() - start, 2)
    if code != 0:
        row["commands"][command] = {"status": "failed", "detail": output.strip().splitlines()[-1][:300] if output.strip()
                                    else f"exit {code}", "seconds": seconds}
        return False
    detail = _quality(package) if package is not None else "ok"
    row["commands"][command] = {"status": "ok", "detail": detail, "seconds": seconds}
    return True


def _serve(package: Path, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> str:
    """V2 JSON and binary requests to the real app (in-process ASGI), every input and output."""
    import httpx

    from modelpack.serve.app import build_app
    from modelpack.serve.config import ServeConfig
    from modelpack.serve.tensors import v2_datatype

    app = build_app(ServeConfig(package_dir=package))
    name = json.loads((package / "modelpack.json").read_text())["name"]

    async def calls() -> list[dict[str, np.ndarray]]:
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://corpus") as client:
                body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": v2_datatype(v.dtype.name),
                                    "data": v.ravel().tolist()} for k, v in feeds.items()]}
                answer = await client.post(f"/v2/models/{name}/infer", json=body)
                assert answer.status_code == 200, answer.text
                as_json = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer.json()["outputs"]}
                header = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": v2_datatype(v.dtype.name),
                                      "parameters": {"binary_data_size": v.nbytes}} for k, v in feeds.items()],
                          "parameters": {"binary_data_output": True}}
                head = json.dumps(header).encode()
                answer = await client.post(f"/v2/models/{name}/infer",
                                           content=head + b"".join(np.ascontiguousarray(v).tobytes()
                                                                   for v in feeds.values()),
                                           headers={"Inference-Header-Content-Length": str(len(head))})
                assert answer.status_code == 200, answer.text
                length = int(answer.headers["inference-header-content-length"])
                meta = json.loads(answer.content[:length])
                offset, as_binary = length, {}
                for out in meta["outputs"]:
                    size = out["parameters"]["binary_data_size"]
                    dtype = {"FP32": np.float32, "INT64": np.int64, "FP16": np.float16}.get(out["datatype"], np.float32)
                    as_binary[out["name"]] = np.frombuffer(answer.content[offset:offset + size], dtype).reshape(
                        out["shape"])
                    offset += size
                return [as_json, as_binary]
        finally:
            await app.shutdown()

    results = asyncio.run(calls())
    for got in results:
        assert set(got) == set(expected), (sorted(got), sorted(expected))
        for key, value in expected.items():
            assert np.allclose(got[key], value, atol=1e-4), key
    return f"V2 JSON + binary, {len(feeds)} in / {len(expected)} out"


def exercise(model: corpus.CorpusModel, work: Path) -> dict[str, Any]:
    """Run every command on `model`; a row of the corpus table."""
    from modelpack.data import load_dataset
    from modelpack.formats import Repr, detect
    from modelpack.inspection import signature_of

    ref = detect(model.path)
    signature = signature_of(ref)
    row: dict[str, Any] = {"model": model.name, "origin": model.origin, "format": ref.describe(), "commands": {},
                           "inputs": ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in signature.inputs),
                           "outputs": len(signature.outputs)}
    e = ("--eval-data", model.eval_data, "-q")
    _step(row, "inspect", "inspect", model.path)
    formats = {Repr.KERAS: ["onnx", "savedmodel", "tflite"], Repr.SAVEDMODEL: ["onnx", "savedmodel", "tflite"],
               Repr.ONNX: ["onnx"], Repr.TFLITE: ["tflite"]}[ref.rep]
    exported = work / "export"
    flags = [x for f in formats for x in ("--format", f)]
    if not _step(row, "export", "optimize", model.path, "-o", exported, *e, "export", *flags, package=exported):
        return row
    row["commands"]["export"]["detail"] = "→ " + ", ".join(formats)
    onnx_input = exported / "model.onnx" if "onnx" in formats else None
    prunable = ref.rep in (Repr.KERAS, Repr.ONNX)
    _step(row, "prune", "optimize", model.path, "-o", work / "prune", *e, "prune", "--sparsity", "0.5",
          package=work / "prune", na=None if prunable else "TFLite weights are not prunable")
    for method in ("int8", "dynamic", "static", "float16"):
        _step(row, f"quantize {method}", "optimize", onnx_input or model.path, "-o", work / method, *e, "quantize",
              "--method", method, package=work / method,
              na=None if onnx_input else "a TFLite input is already converted; quantize its source model")
    # lzma runs at a few MB/s in Python: large models take deflate, so the table stays quick to regenerate.
    codec = "lzma" if (onnx_input or model.path).stat().st_size < 32 << 20 else "deflate"
    # QAT fine-tunes: it needs labelled training data for every output, which no pretrained corpus model ships.
    with np.load(model.eval_data) as arrays:
        labelled = "y" in arrays.files and len(signature.outputs) == 1
    _step(row, "quantize qat", "optimize", model.path, "-o", work / "qat", *e, "quantize", "--method", "qat",
          "--train-data", model.eval_data, "--epochs", "1", package=work / "qat",
          na=None if ref.rep is Repr.KERAS and labelled else
          ("QAT trains Keras models" if ref.rep is not Repr.KERAS else "needs labels for every output"))
    compress = (["compress", "--graph", "basic", "--archive", codec] if onnx_input else
                ["compress", "--archive", codec])
    _step(row, "compress", "optimize", onnx_input or model.path, "-o", work / "compress", *e, *compress,
          package=work / "compress")
    _step(row, "benchmark", "benchmark", exported, "--eval-data", model.eval_data, "--duration", "0.2",
          "--repeats", "2", "--no-memory", "--no-record")
    _step(row, "report", "report", exported, "-o", work / "report.html")
    _step(row, "verify", "verify", exported)
    _step(row, "pack", "pack", exported, "-o", work / "pkg.mpk")
    data = load_dataset(model.eval_data, signature)
    sample = data.take(np.arange(data.fixed_batch or 2))
    np.savez(work / "x.npz", **sample.inputs)
    if _step(row, "predict", "predict", work / "pkg.mpk", "--input", work / "x.npz", "-o", work / "y.npz"):
        expected = dict(np.load(work / "y.npz"))
        try:
            row["commands"]["serve"] = {"status": "ok", "detail": _serve(exported, sample.inputs, expected)}
        except Exception as exc:  # the table says what failed; the test asserts on it
            row["commands"]["serve"] = {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    return row


COLUMNS = ("export", "prune", "quantize int8", "quantize dynamic", "quantize static", "quantize float16",
           "quantize qat", "compress", "benchmark", "serve")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | source | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for row in rows:
        cells = []
        for column in COLUMNS:
            found = row["commands"].get(column, {"status": "failed", "detail": "not reached"})
            mark = {"ok": "✓", "n/a": "n/a", "failed": "✗"}[found["status"]]
            detail = found["detail"] if column not in ("benchmark", "serve") or found["status"] != "ok" else ""
            cells.append(f"{mark} {detail}".strip())
        lines.append(f"| {row['model']} | {row['origin']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DOCS_PAGE = ROOT / "docs" / "corpus.md"
START, END = "<!-- corpus-table:start -->", "<!-- corpus-table:end -->"


def write_docs(table: str, header: str) -> None:
    """Replace the generated corpus table of docs/corpus.md (between its markers), atomically."""
    text = DOCS_PAGE.read_text()
    if START not in text:
        raise SystemExit(f"{DOCS_PAGE.relative_to(ROOT)} has no {START} … {END} section to rewrite")
    block = f"{START}\n{header}\n\n{table}\n{END}"
    text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    tmp = DOCS_PAGE.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, DOCS_PAGE)


def main() -> None:
    saved = ROOT / "build" / "corpus.json"
    if "--from-json" in sys.argv:
        found = json.loads(Path(sys.argv[sys.argv.index("--from-json") + 1]).read_text())
    else:
        names = list(corpus.MODELS) if "--all" in sys.argv else corpus.LIGHT
        run = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
               "all": "--all" in sys.argv}
        t0 = time.perf_counter()
        rows = []
        for name in names:
            model = corpus.get(name)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                rows.append(exercise(model, Path(tmp)))
                print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        run.update(seconds=round(time.perf_counter() - t0), load=round(os.getloadavg()[0], 1))
        found = {"_run": run, "rows": rows}
        saved.parent.mkdir(exist_ok=True)
        saved.write_text(json.dumps(found, indent=2, default=str))
    table = markdown(found["rows"])
    print(table)
    if "--docs" in sys.argv or "--readme" in sys.argv:
        run = found["_run"]
        command = "python benchmarks/corpus_table.py --docs" + (" --all" if run.get("all") else "")
        write_docs(table, f"Generated by `{command}` (`make bench-corpus`) in one run of "
                   f"{run['seconds'] / 60:.0f} min ({run['started']}) on this {run['cpus']}-core machine, which "
                   f"other jobs shared (load average {run['load']:.1f} at the end). Speeds are each stage's own "
                   "timing of its output against its input (batch 1, onnxruntime's default threads, interleaved); "
                   "`quantize int8` is the default, under the latency objective.")


if __name__ == "__main__":
    main()
