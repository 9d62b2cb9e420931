"""OBS pruning and GPTQ clustering with data: Ledoit-Wolf shrinkage of the layer statistics against D / (D + n).

    python benchmarks/shrinkage.py [--corpus /tmp/corpus-cache] [--models KEY ...]

Runs ``prune --sparsity S --data calib`` and ``cluster --bits B --data calib`` twice on every real
model, the statistics shrunk toward a
scaled identity by their measured Ledoit-Wolf intensity (a sample's positions counted as one
sample; the default) or by ``D / (D + n)``, side by side in one run, and scores both on held-out
data: the task metric, and a fidelity to the original that does not round (digit models: the
logits' relative error on the test set; corpus: every metric its evaluator prints, e.g. effnet's
KL to the original and ocr_det's bitmap IoU). A prune is two engine walks (OBS, then the
per-channel correction); a cluster run adds its per-layer sensitivity runs (``--allocation auto``).
Writes benchmarks/results/shrinkage.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, RealModel, real_models, table, write_json  # noqa: E402

import onnxcomp as oc  # noqa: E402
from onnxcomp.passes.cluster import layers  # noqa: E402
from onnxcomp.passes.prune import obs  # noqa: E402

SPARSITY = {"effnet_lite0": [0.5], "ocr_det_ppocrv4": [0.7]}  # others: 0.7 and 0.9
BITS = {"effnet_lite0": [4], "ocr_det_ppocrv4": [3]}  # others: 2 and 3


def _logits(proto: onnx.ModelProto) -> np.ndarray:
    test = np.load(MODELS / "digits_test.npz")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: test["input"]})[0].astype(np.float64)


def _fidelity(m: RealModel, original: onnx.ModelProto, proto: onnx.ModelProto, extra: dict) -> str:
    if m.path.parent == MODELS:
        a, b = _logits(original), _logits(proto)
        return f"logit rel. error {((a - b) ** 2).sum() / (a ** 2).sum():.5f}"
    keep = ("kl_ref_to_new", "top5_overlap", "bitmap_iou_vs_orig")
    return ", ".join(f"{k} {extra[k]:.4f}" for k in keep if k in extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--models", nargs="*", default=None)
    args = ap.parse_args()
    models = real_models(args.corpus, args.models)
    if (MODELS / "vit_digits.onnx").exists() and (args.models is None or "vit_digits" in args.models):
        acc = models[0].score
        vit = onnx.load(str(MODELS / "vit_digits.onnx"))
        models.append(RealModel("vit_digits", MODELS / "vit_digits.onnx", MODELS / "digits_calib.npz", "accuracy",
                                acc, acc(vit) - 0.005))
    rows, out = [], []
    heads = ["model", "command", "shrinkage", "original", "metric", "fidelity", "s"]
    for m in models:
        original = onnx.load(str(m.path))
        base, _ = m.measure(original)
        runs = [("prune", s) for s in SPARSITY.get(m.key, [0.7, 0.9])] + \
               [("cluster", b) for b in BITS.get(m.key, [2, 3])]
        for command, level in runs:
            for ledoit in (False, True):
                obs.LEDOIT = layers.LEDOIT = ledoit
                t0 = time.perf_counter()
                res = oc.prune(str(m.path), level, data=str(m.calib)) if command == "prune" else \
                    oc.cluster(str(m.path), level, data=str(m.calib))
                secs = time.perf_counter() - t0
                q, extra = m.measure(res.proto)
                fid = _fidelity(m, original, res.proto, extra)
                name = "ledoit-wolf" if ledoit else "D/(D+n)"
                what = f"{command} {'--sparsity' if command == 'prune' else '--bits'} {level}"
                rows.append([m.key, what, name, f"{base:.4f}", f"{q:.4f}", fid, f"{secs:.0f}"])
                out.append({"model": m.key, "command": what, "shrinkage": name, "original": base,
                            m.metric: q, "fidelity": fid, "metrics": extra, "seconds": round(secs, 1)})
                print(table(heads, rows[-1:]), flush=True)
    obs.LEDOIT = layers.LEDOIT = True
    print(table(heads, rows))
    print("wrote", write_json("shrinkage", {"rows": out}))


if __name__ == "__main__":
    main()
