"""Linear layers written as Einsums: every command on them, old code beside new, and on the same
model written with MatMuls.

    python benchmarks/einsum.py [--old COMMIT] [--command quantize] [--only einsum|matmul]

TF/JAX exports and einsum-style layers write a linear layer as ``Einsum('bsi,io->bso', x, W)``.
The models: vit_mha_digits (models/, trained) with its four MLP MatMuls rewritten as such Einsums
(the down projections stored [out, in] as 'bsi,oi->bso'; ``as_einsum`` in
tests/test_unusual_shapes.py), and vit_mha_digits itself. Each command runs with ``--data
models/digits_calib.npz``; scored: size, accuracy on the 450 test digits, cosine of the logits to
the original's, and one interleaved one-thread batch-1 bench per model (speedup over its input).
Writes benchmarks/results/einsum.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import MODELS, outside_main, outside_rows  # noqa: E402
from tests.test_unusual_shapes import as_einsum  # noqa: E402

CALIB, TEST = MODELS / "digits_calib.npz", MODELS / "digits_test.npz"
COMMANDS = [("prune --sparsity 0.5", ["prune", "--sparsity", "0.5"]), ("cluster --bits 4", ["cluster", "--bits", "4"]),
            ("quantize", ["quantize"]), ("factorize --ratio 0.5", ["factorize", "--ratio", "0.5"]),
            ("prune --structured --ratio 0.3", ["prune", "--structured", "--ratio", "0.3"])]
MEMBERS = ["einsum", "matmul"]


def build(tmp: Path) -> None:
    src = onnx.load(str(MODELS / "vit_mha_digits.onnx"))
    onnx.save(as_einsum(src)[0], str(tmp / "einsum.onnx"))
    onnx.save(src, str(tmp / "matmul.onnx"))


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _one(name: str, tmp: Path, tools: list) -> dict:
    model = tmp / f"{name}.onnx"
    with np.load(TEST) as d:
        x, labels = d["input"], d["labels"]
    ref = logits(model, x)

    def score(path: Path) -> dict:
        y = logits(path, x)
        cos = float(np.sum(y * ref) / (np.linalg.norm(y) * np.linalg.norm(ref)))
        return {"accuracy": round(float(np.mean(y.argmax(1) == labels)), 4), "cosine": round(cos, 5),
                "einsums": sum(n.op_type == "Einsum" for n in onnx.load(str(path)).graph.node)}

    original = f"accuracy {np.mean(ref.argmax(1) == labels):.4f}, " \
               f"{sum(n.op_type == 'Einsum' for n in onnx.load(str(model)).graph.node)} Einsums"
    return outside_rows(name, model, COMMANDS, tools, lambda label: ["--data", str(CALIB), "--json"], score,
                        {"input": (1, 1, 16, 16)}, ["accuracy", "cosine", "einsums"], original)


def main() -> None:
    outside_main(__doc__, "einsum", MEMBERS, build, _one)


if __name__ == "__main__":
    main()
