"""Shared helpers for the benchmark scripts: real models, their quality metrics, tables, JSON."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
RESULTS = ROOT / "benchmarks" / "results"
CORPUS_EVAL = ROOT.parent / "shared" / "corpus" / "evaluate.py"
CORPUS_PYTHON = Path("/tmp/corpus-venv/bin/python")
_ARGS = argparse.Namespace(command="")  # what outside_args parsed, for outside_rows, write_json and builds


def parsed_args() -> argparse.Namespace:
    """The arguments :func:`outside_args` parsed (for a benchmark's ``build``)."""
    return _ARGS


@dataclass
class RealModel:
    """A real model, its calibration data and a quality metric (higher is better)."""

    key: str
    path: Path
    calib: Path
    metric: str
    score: Callable[[onnx.ModelProto], float]
    floor: float  # the quality floor of the issue for this model
    metrics: Callable[[onnx.ModelProto], dict] | None = None  # everything the evaluator reports

    def measure(self, proto: onnx.ModelProto) -> tuple[float, dict]:
        """The quality metric and every other metric the evaluator reports, from one evaluation."""
        if self.metrics is None:
            q = self.score(proto)
            return q, {self.metric: q}
        everything = self.metrics(proto)
        return float(everything[self.metric]), everything


def _digits_accuracy(proto: onnx.ModelProto) -> float:
    import onnxruntime as ort

    test = np.load(MODELS / "digits_test.npz")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"input": test["input"]})[0].argmax(1) == test["labels"]).mean())


def batched_outputs(path: Path, x: np.ndarray, name: str, batch: int) -> list[np.ndarray]:
    """Every output of the model at ``path`` on input ``name`` = ``x``, run ``batch`` samples at a time."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runs = [s.run(None, {name: x[i:i + batch]}) for i in range(0, len(x), batch)]
    return [np.concatenate(o) for o in zip(*runs)]


def _corpus_metrics(cache: Path, key: str) -> Callable[[onnx.ModelProto], dict]:
    def metrics(proto: onnx.ModelProto) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save_model(proto, str(path))
            out = subprocess.run([str(CORPUS_PYTHON), str(CORPUS_EVAL), "--cache", str(cache), key,
                                  str(path), "--threads", "2"], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    return metrics


def _corpus_model(cache: Path, key: str, metric: str, drop: float | None = None,
                  floor: float | None = None) -> RealModel:
    """A corpus model scored by ``metric``; its floor is ``floor`` or the original's score - ``drop``."""
    metrics = _corpus_metrics(cache, key)

    def score(proto: onnx.ModelProto) -> float:
        return float(metrics(proto)[metric])

    d = cache / key
    if floor is None:
        floor = score(onnx.load(str(d / "model.onnx"))) - drop
    return RealModel(key, d / "model.onnx", d / "calib.npz", metric, score, floor, metrics)


def real_models(corpus: Path | None, keys: list[str] | None = None) -> list[RealModel]:
    """models/ digits models always; the corpus models when a built corpus cache is given."""
    base = _digits_accuracy(onnx.load(str(MODELS / "resnet_digits.onnx")))
    out = [RealModel("resnet_digits", MODELS / "resnet_digits.onnx", MODELS / "digits_calib.npz",
                     "accuracy", _digits_accuracy, base - 0.005),
           RealModel("mobilenet_digits", MODELS / "mobilenet_digits.onnx", MODELS / "digits_calib.npz",
                     "accuracy", _digits_accuracy,
                     _digits_accuracy(onnx.load(str(MODELS / "mobilenet_digits.onnx"))) - 0.005)]
    if (MODELS / "vgg_digits.onnx").exists():
        out.append(RealModel("vgg_digits", MODELS / "vgg_digits.onnx", MODELS / "digits_calib.npz", "accuracy",
                             _digits_accuracy, _digits_accuracy(onnx.load(str(MODELS / "vgg_digits.onnx"))) - 0.005))
    if corpus is not None and CORPUS_PYTHON.exists():
        out.append(_corpus_model(corpus, "effnet_lite0", "top1_agree", floor=0.95))
        out.append(_corpus_model(corpus, "ocr_det_ppocrv4", "f1", drop=0.01))
        out.append(_corpus_model(corpus, "digits_cnn", "accuracy", drop=0.005))
    return [m for m in out if keys is None or m.key in keys]


def table(headers: list[str], rows: list[list]) -> str:
    from onnxcomp.report.tables import table as _table

    return _table(headers, rows)


def write_json(name: str, payload: dict) -> Path:
    """benchmarks/results/NAME.json (NAME.COMMAND.json when ``--command`` chose some commands)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "".join(c if c.isalnum() else "_" for c in _ARGS.command)
    path = RESULTS / (f"{name}.{command}.json" if command else f"{name}.json")
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(f"\nwrote {path}", file=sys.stderr)
    return path


def install_old(commit: str, tmp: Path) -> Path:
    """A venv with onnxcomp at ``commit`` (git worktree + pip install); its onnxcomp script."""
    tree = tmp / "old-tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), commit], check=True,
                   capture_output=True)
    venv = tmp / "old-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(tree)], check=True)
    return venv / "bin" / "onnxcomp"


def versions(old: str | None, tmp: Path) -> list[tuple[str, list[str]]]:
    """(label, command line) of onnxcomp here, and at commit ``old`` too when given."""
    out = [("new", [sys.executable, "-m", "onnxcomp"])]
    if old:
        out.append((f"old {old}", [str(install_old(old, tmp))]))
    return out


def side_by_side(model: Path, commands: list[tuple[str, list[str]]], versions: list[tuple[str, list[str]]],
                 args: Callable[[str], list[str]], score: Callable[[Path, str], dict],
                 input_shapes: dict[str, tuple[int, ...]] | None,
                 extra: list[tuple[str, Path]] = ()) -> tuple[list[dict], float]:
    """Each command with each onnxcomp version on ``model`` (``args(label)`` after the model path),
    its output scored by ``score(path, stdout)``, then one interleaved one-thread batch-1 bench of
    every output and of the ``extra`` (label, file) made by other tools: the rows (with
    ``speedup_b1``) and the original's p50 in ms."""
    import time

    from onnxcomp.measure.bench import bench

    rows, files = [], [model]
    for label, argv in commands:
        for version, exe in versions:
            out = model.parent / f"{len(files)}.onnx"
            t0 = time.time()
            proc = subprocess.run(exe + argv + [str(model), *args(label), "-o", str(out)], capture_output=True,
                                  text=True)
            row = {"command": label, "version": version, "exit": proc.returncode, "seconds": round(time.time() - t0, 1)}
            if proc.returncode == 0:
                row.update(score(out, proc.stdout), size_ratio=round(out.stat().st_size / model.stat().st_size, 3))
                files.append(out)
                row["_file"] = out
            rows.append(row)
    for label, path in extra:
        rows.append({"command": label, "version": "", "exit": 0, **score(path, ""), "_file": path,
                     "size_ratio": round(path.stat().st_size / model.stat().st_size, 3)})
        files.append(path)
    if input_shapes is None:  # no speed: the model cannot run on random feeds
        for row in rows:
            row.pop("_file", None)
        return rows, float("nan")
    rep = bench(files, threads=1, runs=40, warmup=5, input_shapes=input_shapes)
    base = rep.entries[0].p50_ms
    timed = {e.path: base / e.p50_ms for e in rep.entries[1:]}
    for row in rows:
        if "_file" in row:
            row["speedup_b1"] = round(timed[str(row.pop("_file"))], 3)
    return rows, base


def outside_rows(name: str, model: Path, commands: list[tuple[str, list[str]]], tools: list[tuple[str, list[str]]],
                 args: Callable[[str], list[str]], score: Callable[[Path], dict],
                 input_shapes: dict[str, tuple[int, ...]] | None, metrics: list[str], original: str,
                 extra: list[tuple[str, Path]] = ()) -> dict:
    """:func:`side_by_side` on one model from outside the corpus, printed as a table; its JSON part."""
    chosen = [c for c in commands if _ARGS.command in c[0]]
    rows, base = side_by_side(model, chosen, tools, args, lambda out, stdout: score(out), input_shapes, extra)
    cols = ["command", "version", "exit", "seconds", "size_ratio", "speedup_b1", *metrics]
    print(f"\n{name}: original {original}, p50 {base:.2f} ms (batch 1, 1 thread)")
    print(table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    return {"rows": rows, "original_p50_ms": base, "original": original}


def outside_main(doc: str, name: str, members: list[str],
                 build: Callable[[Path], None], each: Callable[[str, Path, list], dict],
                 add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The frame of a benchmark on models from wheels: arguments (``--only`` one of ``members``,
    and what ``add`` declares), a temp folder ``build`` fills, ``each(member, folder, onnxcomp
    versions)`` per model (usually :func:`outside_rows`), the results in benchmarks/results/NAME.json."""
    import tempfile

    def declare(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--only", choices=sorted(members), help="one model only")
        if add is not None:
            add(ap)

    args = outside_args(doc, declare)
    results = {}
    with tempfile.TemporaryDirectory(prefix=f"onnxcomp-{name}-") as t:
        tmp = Path(t)
        build(tmp)
        tools = versions(args.old, tmp)
        for member in [args.only] if args.only else list(members):
            results[member] = each(member, tmp, tools)
    write_json(name, results)
    return args


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` (x1, y1, x2, y2) with each of ``b`` [n, 4]."""
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - w * h + 1e-9)


def nms(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, classes) kept by class-wise non-maximum suppression at IoU ``overlap``."""
    keep, order = [], np.argsort(-scores)
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        order = rest[(iou(boxes[i], boxes[rest]) < overlap) | (classes[rest] != classes[i])]
    return boxes[keep], classes[keep]


def detection_f1(pairs) -> tuple[float, int, int]:
    """F1 of detections against reference ones, over ``pairs`` of ((boxes, classes) reference,
    (boxes, classes) new) per image: a match is the same class at IoU >= 0.5, each box used once.
    Returns (F1, reference count, new count)."""
    tp = n_ref = n_new = 0
    for (ba, ca), (bb, cb) in pairs:
        n_ref, n_new, used = n_ref + len(ba), n_new + len(bb), np.zeros(len(bb), bool)
        for box, c in zip(ba, ca):
            if len(bb):
                u = np.where((cb == c) & ~used, iou(box, bb), 0.0)
                if u.max() >= 0.5:
                    tp, used[u.argmax()] = tp + 1, True
    return 2 * tp / max(1, n_ref + n_new), n_ref, n_new


def outside_args(doc: str, add: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """The arguments of a benchmark on models from wheels outside the corpus (``--old`` plus what
    ``add`` declares); exits with the set-up command when the corpus venv that downloads them is missing."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--old", help="also run onnxcomp at this commit, side by side")
    ap.add_argument("--command", default="", help="only the commands whose label contains this, e.g. quantize")
    add(ap)
    args = ap.parse_args()
    vars(_ARGS).update(vars(args))
    if not CORPUS_PYTHON.exists():
        sys.exit(f"error: {CORPUS_PYTHON} not found; build the corpus venv: bash ../shared/corpus/setup.sh "
                 "/tmp/corpus-venv /tmp/corpus-cache")
    return args
