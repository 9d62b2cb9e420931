"""Weight sharing benchmark: quality per bits, sizes, bit-exactness and k-means speed.

    /work/venv/bin/python benchmarks/cluster.py [--corpus /tmp/corpus-cache] [--quick]

Prints tables and writes benchmarks/results/cluster.json. Not part of the test run.
- quality: cluster (per-channel, calibration-weighted) at 3..8 bits on models/ (accuracy via
  models/evaluate.py) and the corpus (the corpus evaluate.py metric), plus the per-tensor
  64-cluster baseline on effnet_lite0 and an onnxruntime dynamic int8 row for reference;
- size: file ratio of 4-bit codebooks per granularity; prune 90 % + 4 bits + pack;
- exact: onnxruntime output of the encoded model vs the same clustered weights stored dense;
- speed: light_resnet50 (25.5 M weights, random per-channel-scaled values) to 16 clusters per
  output channel.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxcomp as oc  # noqa: E402
from onnxcomp.measure import hessian  # noqa: E402
from onnxcomp.report.tables import table  # noqa: E402

LOCAL = {"resnet_digits": ROOT / "models" / "resnet_digits.onnx", "mobilenet_digits": ROOT / "models" / "mobilenet_digits.onnx"}
CORPUS = ("ocr_det_ppocrv4", "effnet_lite0", "digits_cnn")
CORPUS_PY = "/tmp/corpus-venv/bin/python"
CORPUS_EVAL = "/work/shared/corpus/evaluate.py"
TMP = Path(tempfile.mkdtemp(prefix="cluster-bench-"))


def score(key: str, path: Path, corpus: Path) -> dict:
    """The task metric of a model file: accuracy (models/) or the corpus metric."""
    if key in LOCAL:
        out = subprocess.run([sys.executable, str(ROOT / "models" / "evaluate.py"), str(path)],
                             capture_output=True, text=True, check=True).stdout
        return {"accuracy": json.loads(out)["accuracy"]}
    out = subprocess.run([CORPUS_PY, CORPUS_EVAL, "--cache", str(corpus), key, str(path)],
                         capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    keep = {"ocr_det_ppocrv4": ("f1", "bitmap_iou_vs_orig"), "effnet_lite0": ("top1_agree", "kl_ref_to_new"),
            "digits_cnn": ("accuracy",)}[key]
    return {k: res.get(k) for k in keep}


def memo_importance() -> None:
    """Measure calibration importance once per model (every bits setting reuses it)."""
    original = hessian.importance
    cache: dict = {}

    @functools.wraps(original)
    def cached(model, weights, data, **kw):
        key = (getattr(data, "_description", None), tuple(w.name for w in weights))
        if key not in cache:
            cache[key] = original(model, weights, data, **kw)
        return cache[key]

    hessian.importance = cached


def quality(models: dict[str, tuple[Path, Path]], bits_list: list[int], corpus: Path) -> list[dict]:
    rows = []
    for key, (path, calib) in models.items():
        base = score(key, path, corpus)
        rows.append({"model": key, "setting": "original", "bits": 32, "ratio": 1.0, **base})
        runs = [(b, "channel", "uniform", True) for b in bits_list]
        runs += [(4, "tensor", "uniform", True), (4, "shared", "uniform", True), (5, "channel", "mixed", True)]
        if key == "effnet_lite0":
            runs.append((6, "tensor", "uniform", False))  # the per-tensor 64-cluster baseline
        for bits, gran, alloc, weighted in runs:
            t = time.time()
            c = oc.cluster(path, bits, granularity=gran, allocation=alloc, data=calib if weighted else None)
            seconds = time.time() - t
            out = TMP / f"{key}.{gran}.{alloc}.{bits}.onnx"
            oc.save(c.model, out, force=True)
            setting = f"{gran}{' mixed' if alloc == 'mixed' else ''}{' weighted' if weighted else ''}"
            rows.append({"model": key, "setting": setting, "bits": bits, "ratio": out.stat().st_size / path.stat().st_size,
                         "seconds": round(seconds, 1), **score(key, out, corpus)})
            print(json.dumps(rows[-1]), flush=True)
        rows.append(ort_int8(key, path, corpus))
    return rows


def ort_int8(key: str, path: Path, corpus: Path) -> dict:
    """What users already have: onnxruntime dynamic quantization (int8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = TMP / f"{key}.ort_int8.onnx"
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
        return {"model": key, "setting": "onnxruntime quantize_dynamic int8", "bits": 8,
                "ratio": out.stat().st_size / path.stat().st_size, **score(key, out, corpus)}
    except Exception as exc:  # noqa: BLE001 - report, do not stop the benchmark
        return {"model": key, "setting": "onnxruntime quantize_dynamic int8", "bits": 8, "error": str(exc)[:120]}


def size_pipeline() -> dict:
    path = LOCAL["resnet_digits"]
    pipe = oc.compress(path, 0.9, 4, data=ROOT / "models" / "digits_calib.npz")
    out = TMP / "resnet.compress.onnx"
    oc.save(pipe.model, out, force=True)
    archive = oc.pack(out, TMP / "resnet.compress.onnxc", force=True)
    acc = score("resnet_digits", out, Path("."))["accuracy"]
    return {"model": "resnet_digits", "prune": 0.9, "bits": 4, "onnx_ratio": out.stat().st_size / path.stat().st_size,
            "packed_ratio": archive.archive_bytes / path.stat().st_size, "accuracy": acc,
            "stages": [{"stage": s.name, "bytes": s.bytes, "ratio": s.ratio} for s in pipe.stages],
            "streams": [vars(s) for s in archive.streams]}


def exactness() -> dict:
    """ORT(encoded) == ORT(same clustered weights stored dense), bit for bit."""
    from onnxcomp.encode import encode_weights
    from onnxcomp.io.sessions import session

    out = {}
    x = np.load(ROOT / "models" / "digits_calib.npz")["input"]
    for gran in ("tensor", "channel", "shared"):
        dense = oc.cluster(LOCAL["mobilenet_digits"], 4, granularity=gran, encoding="dense")
        enc = dense.model.copy()
        kinds = sorted({c.kind for c in encode_weights(enc.proto, {c.name for c in dense.result.applied})})
        a = session(dense.proto).run(None, {"input": x})[0]
        b = session(enc.proto).run(None, {"input": x})[0]
        out[gran] = {"bit_exact": bool(np.array_equal(a, b)), "encodings": kinds}
    return out


def speed() -> dict:
    from onnxcomp.graph.weights import find_weights, set_weight
    from onnxcomp.config import ClusterConfig
    from onnxcomp.encode import encode_weights
    from onnxcomp.passes.base import Context
    from onnxcomp.passes.cluster.cluster import ClusterPass

    model = onnx.load(str(Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"))
    rng = np.random.default_rng(0)
    total = 0
    for w in find_weights(model):
        shape = w.shape
        scale = rng.lognormal(-3, 1, size=(shape[w.out_axis],) if w.out_axis is not None else ())
        scale = np.expand_dims(scale, tuple(i for i in range(len(shape)) if i != w.out_axis)) if w.out_axis is not None else scale
        set_weight(model, w, (rng.standard_normal(shape) * scale).astype(np.float32))
        total += w.size if not w.is_bias else 0
    t = time.time()
    res = ClusterPass(ClusterConfig(bits=4, granularity="channel", min_params=0)).run(model, Context())
    fit_s = time.time() - t
    t = time.time()
    encode_weights(model, {c.name for c in res.applied})
    enc_s = time.time() - t
    clustered = sum(c.params_before for c in res.applied)
    return {"model": "light_resnet50 (random per-channel-scaled weights)", "weights": total,
            "clustered": clustered, "clusters": 16, "granularity": "channel", "cluster_seconds": round(fit_s, 2),
            "encode_seconds": round(enc_s, 2), "cores": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="/tmp/corpus-cache")
    ap.add_argument("--quick", action="store_true", help="4 and 6 bits only; models/ + effnet + ocr")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cluster.json"))
    args = ap.parse_args()
    corpus = Path(args.corpus)
    memo_importance()
    models = {k: (p, ROOT / "models" / "digits_calib.npz") for k, p in LOCAL.items()}
    for key in CORPUS[:2] if args.quick else CORPUS:
        if (corpus / key / "model.onnx").is_file():
            models[key] = (corpus / key / "model.onnx", corpus / key / "calib.npz")
    bits = [4, 6] if args.quick else [3, 4, 5, 6, 8]
    results = {"speed": speed()}
    print(json.dumps(results["speed"]), flush=True)
    results["exact"] = exactness()
    results["size"] = size_pipeline()
    results["quality"] = quality(models, bits, corpus)
    metrics = ("accuracy", "f1", "bitmap_iou_vs_orig", "top1_agree", "kl_ref_to_new")
    rows = [[r["model"], r["setting"], r["bits"], f"{r.get('ratio', float('nan')):.3f}",
             *[("" if r.get(m) is None else f"{r[m]:.4f}") for m in metrics], r.get("seconds", "")]
            for r in results["quality"]]
    print(table(["model", "setting", "bits", "ratio", *metrics, "s"], rows))
    s = results["size"]
    print(f"\nprune 90 % + 4 bits on resnet_digits: {s['onnx_ratio']:.3f}x as .onnx, {s['packed_ratio']:.3f}x packed "
          f"({1 / s['packed_ratio']:.1f}x smaller), accuracy {s['accuracy']:.4f}")
    print("bit-exact (ORT encoded vs dense clustered):", results["exact"])
    sp = results["speed"]
    print(f"speed: {sp['clustered'] / 1e6:.1f} M weights to 16 clusters per channel in {sp['cluster_seconds']} s "
          f"(+ {sp['encode_seconds']} s encoding) on {sp['cores']} cores")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
