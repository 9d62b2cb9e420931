"""Benchmark ``onnxcomp prune --structured``: speed/accuracy curves, real models, the zoo.

    /work/venv/bin/python benchmarks/structured.py [--quick] [--corpus /tmp/corpus-cache]

Prints tables and writes ``benchmarks/results/structured.json`` (git-ignored). Three parts:

1. ResNet-style ``models/resnet_digits.onnx`` (and the MobileNet-style one, and the transformer
   ``vit_digits`` and ``vit_sdpa_digits`` (+ its dynamo and nn.MultiheadAttention exports), criterion 1.5x for them): pruned at several
   ratios with the calibration set ``models/digits_calib.npz`` (activation importance,
   sensitivity allocation, least-squares refit), plus the data-free baseline (l1, uniform, no
   refit) at one ratio; test accuracy on ``models/digits_test.npz`` and latency of all of them
   side by side in one interleaved ``onnxcomp.measure.bench`` run, one thread, at batch 1 and batch 32
   (a 16x16 model is overhead-dominated at batch 1: both are reported). Criterion: >= 2x
   single-thread speedup at <= 1 point test-accuracy drop.
2. ``--corpus``: effnet_lite0 and ocr_det_ppocrv4 pruned at a few ratios with their calib.npz,
   scored with the corpus' own evaluate.py; latency interleaved at batch 1.
3. Every light zoo model in the onnx package: pruned at 0.5 (random data: l1, uniform), checked
   by onnx.checker, run in onnxruntime; MACs ratio and the frozen groups with their reasons.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

import onnxcomp as oc
from onnxcomp.measure.bench import bench
from onnxcomp.measure.fidelity import compare
from onnxcomp.report.tables import table

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
RESULTS = ROOT / "benchmarks" / "results" / "structured.json"
CALIB, TEST = MODELS / "digits_calib.npz", MODELS / "digits_test.npz"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
EVALUATE = Path("/work/shared/corpus/evaluate.py")
CORPUS_PY = Path("/tmp/corpus-venv/bin/python")
CORPUS = {"effnet_lite0": dict(max_samples=128, batch=8, shape=(1, 3, 224, 224)),
          "ocr_det_ppocrv4": dict(max_samples=16, batch=2, shape=(1, 3, 640, 640))}


EXTRA: dict = {}  # --importance / --allocation for the calibrated variants


def prune(model, ratio: float, out: Path, **kw) -> dict:
    """Prune, save, and describe the result (the groups go in ``_groups``, dropped from the JSON)."""
    if kw.get("data") is not None:
        kw = {**EXTRA, **kw}
    t0 = time.time()
    c = oc.prune_channels(model, ratio, **kw)
    oc.save(c.model, out, force=True)
    s = c.results[0].settings
    return {"_groups": c.results[0].groups, "ratio": ratio, "seconds": round(time.time() - t0, 1), "macs_ratio": s["macs_after"] / s["macs_before"],
            "importance": s["importance"], "allocation": s["allocation"], "refit": s["refit"],
            "groups_pruned": sum(g["status"] == "pruned" for g in c.results[0].groups),
            "model_passes": [{k: e.get(k) for k in ("walk", "segments", "batch_runs", "samples")}
                             for e in s.get("engine", [])]}


def latency(files: list[Path], rows: list[dict], batches, runs: dict, shapes=None) -> None:
    """Interleaved one-thread latency of ``files`` (the first is the original); speedups into rows."""
    for batch in batches:
        rep = bench(files, threads=1, runs=runs[batch], warmup=10, batch=batch,
                    input_shapes={k: (batch, *v[1:]) for k, v in (shapes or {}).items()} or None)
        base = rep.entries[0].p50_ms
        for row, e in zip(rows, rep.entries[1:]):
            row[f"speedup_b{batch}"] = round(base / e.p50_ms, 3)
            row[f"p50_ms_b{batch}"] = round(e.p50_ms, 3)
            row[f"original_p50_ms_b{batch}"] = round(base, 3)


def digits(name: str, ratios, quick: bool, tmp: Path, need: float = 2.0) -> dict:
    path = MODELS / f"{name}.onnx"
    m = oc.load(path)
    rows, files = [], [path]
    label = f"calib: {EXTRA.get('importance', 'auto')} + {EXTRA.get('allocation', 'auto')} + refit"
    variants = [dict(data=CALIB, label=label, ratio=r) for r in ratios]
    variants.append(dict(data=None, label="data-free: l1, uniform, no refit", ratio=0.5))
    for v in variants:
        out = tmp / f"{name}.{len(files)}.onnx"
        row = {"variant": v["label"], **prune(m, v["ratio"], out, data=v["data"])}
        row.pop("_groups")
        r = compare(m, out, TEST)
        row.update(acc_before=r.accuracy["original"], acc_after=r.accuracy["candidate"], drop=r.accuracy["drop"])
        rows.append(row)
        files.append(out)
    latency(files, rows, (1, 32), {1: 100 if quick else 300, 32: 20 if quick else 60})
    ok = [x for x in rows if x["drop"] <= 0.01 and x["speedup_b32"] >= need and x["speedup_b1"] >= need]
    return {"model": name, "rows": rows, "criterion": f"speedup >= {need}x at batch 1 and 32, drop <= 1 point",
            "met_by": [x["ratio"] for x in ok]}


def corpus_score(key: str, path: Path, cache: Path) -> dict:
    out = subprocess.run([str(CORPUS_PY), str(EVALUATE), "--cache", str(cache), key, str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def corpus(key: str, ratios, quick: bool, cache: Path, tmp: Path) -> dict:
    spec = CORPUS[key]
    path = cache / key / "model.onnx"
    m = oc.load(path)
    rows, files = [], [path]
    base = corpus_score(key, path, cache)
    for ratio in ratios:
        out = tmp / f"{key}.{len(files)}.onnx"
        data = oc.load_data(cache / key / "calib.npz", m, num_samples=spec["max_samples"], batch_size=spec["batch"])
        row = prune(m, ratio, out, data=data, threads=2)
        row.pop("_groups")
        row["score"] = {k: v for k, v in corpus_score(key, out, cache).items() if k not in ("model", "key")}
        rows.append(row)
        files.append(out)
    latency(files, rows, (1,), {1: 10 if quick else 30}, {next(iter(m.proto.graph.input)).name: spec["shape"]})
    return {"model": key, "original": base, "rows": rows}


def zoo(tmp: Path, quick: bool) -> list[dict]:
    names = sorted(p.name for p in LIGHT.glob("*.onnx"))
    if quick:
        names = [n for n in names if "vgg" not in n and "alexnet" not in n and "zfnet" not in n]
    rows = []
    for name in names:
        m = oc.load(LIGHT / name)
        out = tmp / name
        row = {"model": name, **prune(m, 0.5, out)}
        c = oc.load(out)
        onnx.checker.check_model(str(out))
        feed = {k: np.random.default_rng(0).standard_normal(v.shape).astype(v.dtype)
                for k, v in next(iter(oc.load_data(None, c.proto, batch_size=1))).items()}
        from onnxcomp.io.sessions import session

        y = session(c.proto).run(None, feed)[0]
        groups = row.pop("_groups")
        reasons = Counter(f"{r.split(' ', 1)[0]}: {r.split(': ', 1)[-1]}" if ": " in r else r
                          for g in groups if g["status"] == "frozen"
                          for r in g["reason"].split(" (+")[0].split("; "))
        row.update(runs=bool(np.isfinite(y).all()), frozen=sum(g["status"] == "frozen" for g in groups),
                   groups=len(groups), frozen_reasons=dict(reasons.most_common(4)))
        rows.append(row)
    return rows


def show(results: dict) -> None:
    for d in results["digits"]:
        print(f"\n{d['model']}: {d['criterion']}; met at ratios {d['met_by'] or 'none'}")
        print(table(["variant", "ratio", "MACs", "acc", "drop", "x b1", "x b32", "s"],
                    [[r["variant"], r["ratio"], f"{r['macs_ratio']:.3f}", f"{r['acc_after']:.4f}",
                      f"{100 * r['drop']:.2f}", r["speedup_b1"], r["speedup_b32"], r["seconds"]] for r in d["rows"]],
                    "lrrrrrrr"))
    for c in results.get("corpus", []):
        print(f"\n{c['model']}: original {c['original']}")
        print(table(["ratio", "MACs", "score", "x b1", "s"],
                    [[r["ratio"], f"{r['macs_ratio']:.3f}", json.dumps(r["score"]), r["speedup_b1"], r["seconds"]]
                     for r in c["rows"]], "rrlrr"))
    if not results["zoo"]:
        return
    print("\nlight zoo models (ratio 0.5, random data):")
    print(table(["model", "MACs", "runs", "frozen/groups", "frozen reasons"],
                [[z["model"], f"{z['macs_ratio']:.3f}", z["runs"], f"{z['frozen']}/{z['groups']}",
                  "; ".join(f"{k} x{v}" for k, v in z["frozen_reasons"].items())] for z in results["zoo"]],
                "lrllll"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer ratios and runs, skip the big zoo models")
    ap.add_argument("--corpus", type=Path, default=None, help="corpus cache (e.g. /tmp/corpus-cache)")
    ap.add_argument("--no-zoo", action="store_true", help="skip the light zoo models")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    ap.add_argument("--importance", default=None, help="channel choice of the calibrated variants (default: auto)")
    ap.add_argument("--allocation", default=None, help="allocation of the calibrated variants (default: auto)")
    args = ap.parse_args()
    EXTRA.update({k: v for k, v in (("importance", args.importance), ("allocation", args.allocation)) if v})
    results = {"digits": [], "corpus": [], "zoo": []}
    with tempfile.TemporaryDirectory(prefix="structured-bench-") as t:
        tmp = Path(t)
        ratios = (0.3, 0.5) if args.quick else (0.2, 0.3, 0.4, 0.5, 0.6)
        results["digits"].append(digits("resnet_digits", ratios, args.quick, tmp))
        results["digits"].append(digits("mobilenet_digits", ratios[-2:], args.quick, tmp))
        results["digits"].append(digits("vit_digits", ratios, args.quick, tmp, need=1.5))
        for name in ("vit_sdpa_digits", "vit_sdpa_digits_dynamo", "vit_mha_digits", "vit_mha_digits_dynamo"):  # run-time shapes
            results["digits"].append(digits(name, ratios, args.quick, tmp, need=1.5))
        if args.corpus is not None:
            for key in CORPUS:
                results["corpus"].append(corpus(key, (0.3,) if args.quick else (0.1, 0.2, 0.3), args.quick,
                                                args.corpus, tmp))
        results["zoo"] = [] if args.no_zoo else zoo(tmp, args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    show(results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
