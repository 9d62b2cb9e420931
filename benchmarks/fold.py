"""The lossless fold the speed rewrites end with: elementwise ops left, outputs, one-thread speed.

    python benchmarks/fold.py [--corpus /tmp/corpus-cache] [--model PATH[,DATA.npz][,NAME=DIMS]] ... [--keep DIR]

For each model: the fold alone (``onnxcomp.graph.fold``), and ``prune --structured --ratio 0.3``
and ``factorize --ratio 0.5`` each run twice by the command line, ``--no-fold`` (what the code did
before the fold) beside the default; with real data (``DATA.npz``, the corpus' calib.npz) the
commands are calibrated on it and the outputs compared on it. Every file of a model is timed in one
interleaved ``onnxcomp bench`` (1 thread, batch 1); ``--corpus`` adds the corpus evaluator's line
F1 and bitmap IoU for ocr_det_ppocrv4. Cost: 4 compression runs per model (each a bounded number
of passes over the data) plus the bench. Writes benchmarks/results/fold.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS_EVAL, CORPUS_PYTHON, MODELS, table, write_json  # noqa: E402

import onnxcomp as oc  # noqa: E402
from onnxcomp.graph.fold import fold_affine  # noqa: E402
from onnxcomp.measure.bench import bench  # noqa: E402
from onnxcomp.pipeline import recipe as recipes  # noqa: E402

ELEMENTWISE = ("Add", "Mul", "Div", "Sub", "Clip", "HardSigmoid")
COMMANDS = {"structured 0.3": ["prune", "--structured", "--ratio", "0.3"],
            "factorize 0.5": ["factorize", "--ratio", "0.5"]}


def spec(text: str) -> tuple[Path, Path | None, dict]:
    """PATH[,DATA.npz][,NAME=DIMS] -> (model, data, input shapes)."""
    parts = text.split(",")
    data = next((Path(p) for p in parts[1:] if p.endswith(".npz")), None)
    shapes = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return Path(parts[0]), data, shapes


def fidelity(original: Path, other: Path, data: Path | None, shapes: dict) -> float | None:
    """The judged output's cosine (on the data, else on random inputs of the given shapes)."""
    from onnxcomp.measure.fidelity import compare

    try:
        rep = compare(str(original), str(other), data=None if data is None else str(data),
                      input_shapes={k: tuple(int(d) for d in v.split("x")) for k, v in shapes.items()} or None)
    except Exception as exc:  # noqa: BLE001 - a model random data cannot drive: say so in the row
        print(f"  (no fidelity: {exc})")
        return None
    value = rep.judged.get("cosine")
    return None if value is None else round(float(value), 5)


def corpus_scores(path: Path, corpus: Path) -> dict:
    out = subprocess.run([str(CORPUS_PYTHON), str(CORPUS_EVAL), "--cache", str(corpus), "ocr_det_ppocrv4",
                          str(path)], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    d = json.loads(out)
    return {"f1": d["f1"], "iou": d["bitmap_iou_vs_orig"]}


def one(path: Path, data: Path | None, shapes: dict, tmp: Path, runs: int, corpus: Path | None) -> list[dict]:
    model = onnx.load(path)
    done = fold_affine(model)
    name = path.stem if path.stem != "model" else path.parent.name
    ops = lambda m: sum(n.op_type in ELEMENTWISE for n in m.graph.node)  # noqa: E731
    if not done.total:
        print(f"{name}: nothing to fold")
        return [{"model": name, "variant": "fold alone", "folded": 0}]
    files, rows = [path], []
    out = tmp / f"{name}.fold.onnx"  # the user's path: a recipe step (subnormals zeroed, checked, encoded)
    oc.save(oc.replay(str(path), recipes.make([("fold", {})])).model, out, force=True)
    files.append(out)
    rows.append({"model": name, "variant": "fold alone", "folded": done.total,
                 "elementwise": f"{ops(onnx.load(path))} -> {ops(model)}"})
    extra = (["--data", str(data)] if data else []) + [f"--input-shape={k}={v}" for k, v in shapes.items()]
    for label, argv in COMMANDS.items():
        for fold in (False, True):
            dst = tmp / f"{name}.{label.split()[0]}.{int(fold)}.onnx"
            cmd = [sys.executable, "-m", "onnxcomp", *argv, str(path), *extra, "-o", str(dst), "--force", "--quiet",
                   *([] if fold else ["--no-fold"])]
            subprocess.run(cmd, check=True, capture_output=True)
            files.append(dst)
            rows.append({"model": name, "variant": f"{label}{'' if fold else ' --no-fold'}",
                         "elementwise": f"{ops(onnx.load(path))} -> {ops(onnx.load(dst))}"})
    rep = bench([str(f) for f in files], threads=1, runs=runs, warmup=5,
                input_shapes={k: tuple(int(d) for d in v.split("x")) for k, v in shapes.items()} or None)
    base = rep.entries[0].p50_ms
    for row, f, e in zip(rows, files[1:], rep.entries[1:]):
        row["p50"] = round(e.p50_ms / base, 3)
        row["cosine"] = fidelity(path, f, data, shapes)
        if corpus is not None and name == "ocr_det_ppocrv4":
            row.update(corpus_scores(f, corpus))
    rows.insert(0, {"model": name, "variant": "original", "p50_ms": round(base, 2),
                    **(corpus_scores(path, corpus) if corpus is not None and name == "ocr_det_ppocrv4" else {})})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="the corpus cache (adds ocr_det_ppocrv4 with its calib.npz)")
    ap.add_argument("--model", action="append", default=[], help="PATH[,DATA.npz][,NAME=DIMS] (repeatable)")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--keep", type=Path, help="write the models here (kept) instead of a temporary folder")
    args = ap.parse_args()
    specs = [spec(m) for m in args.model]
    if args.corpus:
        d = args.corpus / "ocr_det_ppocrv4"
        specs.insert(0, (d / "model.onnx", d / "calib.npz", {"x": "1x3x640x640"}))
    specs += [(p, None, {}) for p in sorted(MODELS.glob("*.onnx"))]  # nothing to fold in these: checked
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for path, data, shapes in specs:
            rows += one(path, data, shapes, out, args.runs, args.corpus)
    keys = ["model", "variant", "folded", "elementwise", "p50", "p50_ms", "cosine", "f1", "iou"]
    print(table(keys, [[r.get(k, "") for k in keys] for r in rows]))
    write_json("fold", {"rows": rows, "commands": COMMANDS})


if __name__ == "__main__":
    main()
