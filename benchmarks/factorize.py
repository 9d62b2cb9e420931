"""Benchmark ``onnxcomp factorize``: speed vs accuracy, data-aware vs plain, corpus curves.

    /work/venv/bin/python benchmarks/factorize.py [--quick] [--corpus /tmp/corpus-cache]

Prints tables and writes ``benchmarks/results/factorize.json`` (git-ignored). Three parts:

1. speed/accuracy on the trained digit models (``models/resnet_digits.onnx``,
   ``models/vgg_digits.onnx``): factorized (and, for comparison, ``depthwise`` rows) with the
   calibration set ``models/digits_calib.npz``
   (data-aware), accuracy on the held-out ``models/digits_test.npz`` labels (onnxruntime), and
   latency of all candidates side by side in one interleaved ``onnxcomp.measure.bench`` run (1 thread;
   batch 1 and batch 32). Criterion: >= 1.5x faster at <= 1 point accuracy drop.
2. data-aware vs plain at the same ranks on every real model: the relative L2 error of the
   model outputs on held-out inputs (digits: the test set; corpus: the calib.npz samples not
   used for fitting) and the task metric.
3. speed/quality curves of effnet_lite0 and ocr_det_ppocrv4 (``--corpus``) at a few ratios,
   scored with the corpus' own ``evaluate.py`` (in its venv).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import onnxcomp as oc
from onnxcomp.measure.bench import bench
from onnxcomp.measure.fidelity import compare
from onnxcomp.report.tables import table

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
RESULTS = ROOT / "benchmarks" / "results" / "factorize.json"
CALIB, TEST = MODELS / "digits_calib.npz", MODELS / "digits_test.npz"
EVALUATE = Path("/work/shared/corpus/evaluate.py")
CORPUS_PY = Path("/tmp/corpus-venv/bin/python")


def speed_configs(quick: bool) -> list[dict]:
    configs = [dict(method="spatial", ratio=0.7), dict(method="spatial", ratio=0.6),
               dict(method="tucker2", ratio=0.7), dict(method="auto", ratio=0.7, max_error=0.15),
               dict(command="depthwise", multiplier=2), dict(command="depthwise", multiplier=4),
               dict(command="depthwise", groups=2)]
    return configs[:2] if quick else configs


def label(cfg: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items())


def accuracy(model, candidate) -> dict:
    r = compare(model, candidate, TEST)
    return {"acc_before": r.accuracy["original"], "acc_after": r.accuracy["candidate"],
            "drop": r.accuracy["drop"], "rel_l2": r.outputs[0]["rel_l2"]}


def speed_accuracy(name: str, quick: bool, tmp: Path) -> dict:
    """Factorize one digit model several ways; accuracy and interleaved latency of each."""
    path = MODELS / f"{name}.onnx"
    m = oc.load(path)
    rows, files = [], [path]
    for cfg in speed_configs(quick):
        t0 = time.time()
        kw = {k: v for k, v in cfg.items() if k != "command"}
        c = (oc.depthwise if cfg.get("command") == "depthwise" else oc.factorize)(m, data=CALIB, **kw)
        out = tmp / f"{name}.{len(files)}.onnx"
        oc.save(c.model, out)
        files.append(out)
        macs = oc.inspect(c.model).total_macs / oc.inspect(m).total_macs
        rows.append({"config": label(cfg), "seconds": time.time() - t0, "macs_ratio": macs,
                     "layers": len(c.results[0].applied), **accuracy(m, c.model)})
    for batch, runs in ((1, 100 if quick else 300), (32, 20 if quick else 60)):
        rep = bench(files, threads=1, runs=runs, warmup=10, batch=batch)
        for row, e in zip(rows, rep.entries[1:]):
            row[f"speedup_b{batch}"] = 1.0 / e.ratios["p50_ms"]
            row[f"p50_ms_b{batch}"] = e.p50_ms
        rows_base = rep.entries[0].p50_ms
        for row in rows:
            row[f"original_p50_ms_b{batch}"] = rows_base
    ok = [r for r in rows if r["drop"] <= 0.01]
    best = max(ok, key=lambda r: r["speedup_b1"], default=None)
    return {"model": name, "rows": rows, "best": best,
            "met_b1": bool(best and best["speedup_b1"] >= 1.5),
            "met_b32": any(r["drop"] <= 0.01 and r["speedup_b32"] >= 1.5 for r in rows)}


def corpus_models(corpus: Path | None) -> list[tuple[str, Path, dict, dict]]:
    """(name, model, fit data, held-out data) for every real model; digits first."""
    out = []
    for name in ("resnet_digits", "mobilenet_digits", "vgg_digits"):
        if (MODELS / f"{name}.onnx").exists():
            out.append((name, MODELS / f"{name}.onnx", CALIB, TEST))
    if corpus is None:
        return out
    for key, n_fit in (("digits_cnn", 64), ("effnet_lite0", 48), ("ocr_det_ppocrv4", 8)):
        folder = corpus / key
        if not (folder / "model.onnx").exists():
            continue
        with np.load(folder / "calib.npz") as z:
            arrays = {k: z[k] for k in z.files}
        held = {k: v[n_fit:n_fit + 16] for k, v in arrays.items()}
        out.append((key, folder / "model.onnx", {k: v[:n_fit] for k, v in arrays.items()}, held))
    return out


CORPUS_KEYS = ("digits_cnn", "effnet_lite0", "ocr_det_ppocrv4")


def corpus_metric(key: str, path: Path, corpus: Path | None) -> dict | None:
    """The corpus' own score (one JSON line from its evaluate.py, run in its venv)."""
    if corpus is None or not CORPUS_PY.exists() or key not in CORPUS_KEYS:
        return None
    done = subprocess.run([str(CORPUS_PY), str(EVALUATE), "--cache", str(corpus), key, str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def headline(metric: dict | None, test_acc: float | None = None) -> str:
    if metric is None:
        return "-" if test_acc is None else f"acc {test_acc:.4f}"
    for k in ("accuracy", "f1", "top1_agree"):
        if k in metric:
            return f"{k} {metric[k]:.4f}"
    return "?"


def data_aware_table(corpus: Path | None, quick: bool, tmp: Path) -> list[dict]:
    """Plain vs data-aware at the same ranks (the ratio fixes the ranks) on every real model."""
    rows = []
    for name, path, fit, held in corpus_models(corpus):
        m = oc.load(path)
        method, ratio = ("spatial", 0.3) if "digits" in name and name != "mobilenet_digits" else ("auto", 0.5)
        row = {"model": name, "method": method, "ratio": ratio}
        for key, kw in (("plain", dict(data_aware=False)), ("local", dict(data_aware=True, sequential=False)),
                        ("aware", dict(data_aware=True))):
            t0 = time.time()
            c = oc.factorize(m, method, ratio=1 - ratio, data=fit, **kw)  # ratio here: MACs kept
            ranks = {ch.name: ch.detail["rank"] for ch in c.results[0].applied}
            out = tmp / f"{name}.{key}.onnx"
            oc.save(c.model, out)
            r = compare(m, c.model, held)
            row[f"{key}_rel_l2"] = r.outputs[0]["rel_l2"]
            row[f"{key}_acc"] = r.accuracy["candidate"] if r.accuracy else None
            row[f"{key}_metric"] = corpus_metric(name, out, corpus)
            row[f"{key}_seconds"] = time.time() - t0
            row[f"{key}_ranks"] = ranks
        row["same_ranks"] = row["plain_ranks"] == row["aware_ranks"] == row["local_ranks"]
        row["layers"] = len(row["aware_ranks"])
        row["aware_wins"] = max(row["aware_rel_l2"], row["local_rel_l2"]) < row["plain_rel_l2"]
        rows.append(row)
        print(f"  {name}: plain {row['plain_rel_l2']:.4f} local {row['local_rel_l2']:.4f} "
              f"sequential {row['aware_rel_l2']:.4f}", flush=True)
    return rows


def curve(key: str, corpus: Path, ratios: list[float], tmp: Path,
          allocations: tuple[str, ...] = ("uniform", "error")) -> dict:
    """Metric and interleaved latency (batch 1, 1 thread) of the auto rewrite at several ratios,
    with each rank allocation (uniform: the ratio per layer; error: one budget by error per MAC)."""
    path = corpus / key / "model.onnx"
    m = oc.load(path)
    with np.load(corpus / key / "calib.npz") as z:
        fit = {k: z[k][:48 if key == "effnet_lite0" else 8] for k in z.files}
    shapes = {"x": (1, 3, 640, 640)} if key == "ocr_det_ppocrv4" else None
    points, files = [{"ratio": 1.0, "metric": corpus_metric(key, path, corpus)}], [path]
    for ratio, alloc in [(r, a) for r in ratios for a in allocations]:
        t0 = time.time()
        c = oc.factorize(m, "auto", ratio=1 - ratio, data=fit, allocation=alloc)  # ratio here: MACs kept
        out = tmp / f"{key}.{ratio}.{alloc}.onnx"
        oc.save(c.model, out)
        files.append(out)
        done = c.results[0].applied
        points.append({"ratio": ratio, "allocation": alloc, "layers": len(done), "seconds": time.time() - t0,
                       "layer_macs_ratio": sum(x.macs_after or 0 for x in done) /
                       max(1, sum(x.macs_before or 0 for x in done)),
                       "metric": corpus_metric(key, out, corpus)})
    rep = bench(files, threads=1, runs=40, warmup=5, batch=1, input_shapes=shapes)
    for p, e in zip(points, rep.entries):
        p["latency_ratio"], p["p50_ms"] = e.ratios["p50_ms"], e.p50_ms
    return {"model": key, "points": points}


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_speed(part: dict) -> None:
    rows = [[r["config"], r["layers"], _fmt(r["macs_ratio"]), f"{100 * r['acc_before']:.2f}",
             f"{100 * r['acc_after']:.2f}", f"{100 * r['drop']:.2f}", _fmt(r["rel_l2"], ".4f"),
             f"{r['speedup_b1']:.2f}x", f"{r['speedup_b32']:.2f}x"] for r in part["rows"]]
    print(f"\n{part['model']}: original p50 {part['rows'][0]['original_p50_ms_b1']:.3f} ms (batch 1), "
          f"{part['rows'][0]['original_p50_ms_b32']:.3f} ms (batch 32), 1 thread")
    print(table(["config (data-aware)", "layers", "MACs", "acc %", "after %", "drop pts", "rel L2",
                 "speedup b1", "speedup b32"], rows, "lrrrrrrrr"))
    best = part["best"]
    verdict = "MET" if part["met_b1"] else "NOT met"
    print(f"criterion >= 1.5x at <= 1 pt drop (batch 1): {verdict}"
          + (f" by '{best['config']}' ({best['speedup_b1']:.2f}x, drop {100 * best['drop']:.2f} pts)"
             if best else ""))


def print_data_aware(rows: list[dict]) -> None:
    out = [[r["model"], f"{r['method']} {r['ratio']}", r["layers"], "yes" if r["same_ranks"] else "NO",
            _fmt(r["plain_rel_l2"], ".4f"), _fmt(r["local_rel_l2"], ".4f"), _fmt(r["aware_rel_l2"], ".4f"),
            headline(r["plain_metric"], r["plain_acc"]), headline(r["local_metric"], r["local_acc"]),
            headline(r["aware_metric"], r["aware_acc"]), "yes" if r["aware_wins"] else "NO"] for r in rows]
    print("\ndata-aware (local: original inputs; sequential: the default) vs plain SVD at the same ranks;"
          " output rel L2 on held-out inputs, task metric")
    print(table(["model", "method ratio", "layers", "same ranks", "plain", "local", "sequential",
                 "plain task", "local task", "seq. task", "aware lower"], out, "llrlrrrlllr"))


def print_curve(c: dict) -> None:
    rows = [[p["ratio"], p.get("allocation", "-"), p.get("layers", "-"), _fmt(p.get("layer_macs_ratio")),
             headline(p["metric"]), _fmt(p["latency_ratio"]), f"{p['p50_ms']:.2f}"] for p in c["points"]]
    print(f"\n{c['model']}: speed/quality curve (method auto, data-aware; latency 1 thread, batch 1; "
          f"ratio: MACs kept)")
    print(table(["ratio", "allocation", "layers", "layer MACs", "metric", "latency", "p50 ms"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None, help="corpus cache, e.g. /tmp/corpus-cache")
    ap.add_argument("--quick", action="store_true", help="fewer configs and runs")
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "data", "curves"])
    args = ap.parse_args(argv)
    corpus = args.corpus if args.corpus and args.corpus.is_dir() else None
    result = {"command": " ".join([sys.executable] + sys.argv), "quick": args.quick, "speed": [],
              "data_aware": [], "curves": []}
    with tempfile.TemporaryDirectory(prefix="factorize-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if "speed" not in args.skip:
            for name in ("resnet_digits", "vgg_digits"):
                if (MODELS / f"{name}.onnx").exists():
                    result["speed"].append(speed_accuracy(name, args.quick, tmp))
                    print_speed(result["speed"][-1])
        if "data" not in args.skip:
            result["data_aware"] = data_aware_table(corpus, args.quick, tmp)
            print_data_aware(result["data_aware"])
        if corpus is not None and "curves" not in args.skip:
            ratios = {"effnet_lite0": [0.5] if args.quick else [0.9, 0.75, 0.6, 0.5],
                      "ocr_det_ppocrv4": [0.5, 0.3] if args.quick else [0.75, 0.5, 0.35, 0.25]}
            for key in ("effnet_lite0", "ocr_det_ppocrv4"):
                if (corpus / key / "model.onnx").exists():
                    result["curves"].append(curve(key, corpus, ratios[key], tmp))
                    print_curve(result["curves"][-1])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if args.skip and RESULTS.exists():  # a partial run keeps the other parts of the last run
        old = json.loads(RESULTS.read_text())
        for part, key in (("speed", "speed"), ("data", "data_aware"), ("curves", "curves")):
            if part in args.skip and key in old:
                result[key] = old[key]
    RESULTS.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
