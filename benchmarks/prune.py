"""Benchmark `onnxcomp prune`: file size, bit-exactness, sparsity-vs-quality curves, speed.

    python benchmarks/prune.py [--corpus /tmp/corpus-cache] [--quick] [--models KEY ...]

Prints tables and writes benchmarks/results/prune.json. Methods compared on every real model:
  uniform      uniform per-tensor magnitude (what a naive tool does), no data
  global       one global magnitude threshold, no data
  default      onnxcomp's default without data (LAMP allocation, per-channel magnitude)
  default+data onnxcomp's default with the model's calibration set (adds per-channel correction)
For each, the highest sparsity on the grid whose quality stays above the model's floor.
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
from common import MODELS, real_models, table, write_json  # noqa: E402

import onnxcomp as oc  # noqa: E402
from onnxcomp.graph.weights import find_weights, set_weight  # noqa: E402

METHODS = {
    "uniform": dict(allocation="uniform", granularity="tensor", data=False),
    "global": dict(allocation="global", granularity="tensor", data=False),
    "default": dict(data=False),
    "default+data": dict(data=True),
}
GRIDS = {
    "resnet_digits": [0.3, 0.5, 0.7, 0.8, 0.9, 0.95],
    "mobilenet_digits": [0.3, 0.5, 0.7, 0.8, 0.9],
    "effnet_lite0": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5],
    "ocr_det_ppocrv4": [0.1, 0.2, 0.3, 0.5, 0.7, 0.8],
}


def size_section(tmp: Path) -> dict:
    """File-size ratios of the ResNet-style model and the bit-exactness of the encodings."""
    src = MODELS / "resnet_digits.onnx"
    x = {"input": np.load(MODELS / "digits_test.npz")["input"][:64]}
    rows, out = [], {}
    for s in (0.5, 0.9):
        c = oc.prune(src, s)
        path = oc.save(c.model, tmp / f"p{s}.onnx")
        dense = oc.prune(src, s, encoding="dense")
        a = ort.InferenceSession(str(path)).run(None, x)[0]
        b = ort.InferenceSession(dense.proto.SerializeToString()).run(None, x)[0]
        ratio = path.stat().st_size / src.stat().st_size
        kinds = sorted({e.kind for e in c.encodings})
        out[str(s)] = {"ratio": ratio, "bit_exact": bool(np.array_equal(a, b)), "encodings": kinds}
        rows.append([f"{s:.0%}", f"{ratio:.3f}x", "yes" if np.array_equal(a, b) else "NO", ",".join(kinds)])
    print("\n== file size, resnet_digits (target: 90 % <= 0.14x, 50 % <= 0.70x) ==")
    print(table(["sparsity", "file ratio", "bit-exact", "encodings"], rows))
    return out


def curve(model, method: dict, grid: list[float]) -> list[float]:
    kw = {k: v for k, v in method.items() if k != "data"}
    data = str(model.calib) if method["data"] else None
    return [model.score(oc.prune(model.path, s, data=data, encoding="dense", **kw).proto) for s in grid]


def quality_section(models, quick: bool) -> dict:
    out = {}
    for m in models:
        grid = GRIDS[m.key][::2] if quick else GRIDS[m.key]
        base = m.score(onnx.load(str(m.path)))
        res = {"baseline": base, "floor": m.floor, "grid": grid, "metric": m.metric, "methods": {}}
        rows = []
        for name, method in METHODS.items():
            t0 = time.perf_counter()
            q = curve(m, method, grid)
            ok = [s for s, v in zip(grid, q) if v >= m.floor]
            reach = max(ok) if ok and ok == grid[: len(ok)] else (max(ok) if ok else 0.0)
            res["methods"][name] = {"quality": q, "max_sparsity_at_floor": reach,
                                    "seconds": round(time.perf_counter() - t0, 1)}
            rows.append([name] + [f"{v:.4f}" for v in q] + [f"{reach:.0%}"])
            print(f"  {m.key} {name}: {[round(v, 4) for v in q]}", file=sys.stderr, flush=True)
        uni = res["methods"]["uniform"]["max_sparsity_at_floor"]
        for name in ("default", "default+data"):
            best = res["methods"][name]["max_sparsity_at_floor"]
            res["methods"][name]["vs_uniform"] = (best / uni) if uni else None
        print(f"\n== {m.key}: {m.metric} vs sparsity (baseline {base:.4f}, floor {m.floor:.4f}) ==")
        print(table(["method"] + [f"{s:.0%}" for s in grid] + ["max at floor"], rows))
        out[m.key] = res
    return out


def speed_section() -> dict:
    """Pruning a 25 M-parameter model: light_resnet50 with its weights materialized."""
    path = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
    model = oc.load(path).proto
    rng = np.random.default_rng(0)
    for w in find_weights(model):
        scale = rng.lognormal(0, 1, w.shape[0]).astype(np.float32).reshape(-1, *[1] * (len(w.shape) - 1))
        set_weight(model, w, rng.standard_normal(w.shape, dtype=np.float32) * scale)
    params = sum(w.size for w in find_weights(model))
    t0 = time.perf_counter()
    c = oc.prune(model, 0.9)
    seconds = time.perf_counter() - t0
    print(f"\n== speed: {params / 1e6:.2f} M params pruned to 90 % and encoded in {seconds:.1f} s "
          f"(target < 20 s on 2 cores) ==")
    return {"params": params, "seconds": seconds, "encodings": len(c.encodings)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None, help="built corpus cache (../shared/corpus)")
    ap.add_argument("--quick", action="store_true", help="every other grid point")
    ap.add_argument("--models", nargs="*", default=None, help="only these model keys")
    ap.add_argument("--skip", nargs="*", default=[], choices=["size", "quality", "speed"])
    args = ap.parse_args()
    import tempfile

    payload = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "size" not in args.skip:
            payload["size"] = size_section(Path(tmp))
        if "speed" not in args.skip:
            payload["speed"] = speed_section()
        if "quality" not in args.skip:
            payload["quality"] = quality_section(real_models(args.corpus, args.models), args.quick)
    write_json("prune", payload)


if __name__ == "__main__":
    main()
