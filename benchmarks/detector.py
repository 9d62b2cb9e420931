"""A trained detector outside the corpus: YOLOv8n (NudeNet 3.4.2's ``320n.onnx``), the calibrated
commands side by side, scored by detection F1 against the original.

    python benchmarks/detector.py [--old COMMIT] [--quick] [--command TEXT]

The model ships inside the ``nudenet==3.4.2`` wheel (downloaded with the corpus venv's pip,
``--no-deps``; 12 MB, an ultralytics YOLOv8n export: one output ``[N, 4 + 18, anchors]`` that
concatenates box coordinates in pixels with 18 class probabilities). The commands run with
their defaults (factorize also with each allocation). Data: 128 calibration and
480 test views (other seeds) of the corpus' 20 photos (``build_corpus.photo_list``: astronaut,
camera, coffee, ...), random square crops resized to 320 x 320, scaled to [0, 1] as NudeNet feeds
them. Each output is scored on the test views: detection F1 against the original's detections
(score >= 0.25, class-wise NMS at IoU 0.45, a match is the same class at IoU >= 0.5), the mean
cosine of the class-score block, and the one-thread batch-1 p50 latency ratio of all outputs in
one interleaved run. Every command costs 1-2 engine walks over the 128 views (structured: plus its
probe on a few views). ``--old COMMIT`` runs onnxcomp at that commit too. Writes
benchmarks/results/detector.json.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CORPUS_PYTHON, ROOT, batched_outputs, detection_f1, nms, outside_args,  # noqa: E402
                    side_by_side, table, versions, write_json)

BUILD = r'''
import sys
import numpy as np
sys.path.insert(0, sys.argv[2]); out = sys.argv[1]; sys.argv = [sys.argv[0], out]
from build_corpus import photo_list
from PIL import Image
photos = [Image.fromarray(a).convert("RGB") for _, a in photo_list()]
def views(seed, n):
    rng = np.random.default_rng(seed); xs = []
    for i in range(n):
        p = photos[i % len(photos)]; W, H = p.size
        s = int(rng.uniform(0.4, 1.0) * min(W, H)); x = rng.integers(0, W - s + 1); y = rng.integers(0, H - s + 1)
        im = p.crop((x, y, x + s, y + s)).resize((320, 320), Image.BILINEAR)
        if rng.random() < 0.5: im = im.transpose(Image.FLIP_LEFT_RIGHT)
        xs.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(xs)
np.savez(out + "/calib.npz", images=views(1, 128)); np.savez(out + "/test.npz", images=views(2, 480))
'''
COMMANDS = [("prune --structured --ratio 0.3", ["prune", "--structured", "--ratio", "0.3"]),
            ("factorize --ratio 0.5", ["factorize", "--ratio", "0.5"]),
            ("factorize --ratio 0.5 --allocation uniform", ["factorize", "--ratio", "0.5", "--allocation", "uniform"]),
            ("factorize --ratio 0.5 --allocation error", ["factorize", "--ratio", "0.5", "--allocation", "error"]),
            ("prune --sparsity 0.5", ["prune", "--sparsity", "0.5"]),
            ("cluster --bits 4", ["cluster", "--bits", "4"]),
            ("quantize", ["quantize"])]
QUICK = ("prune --structured --ratio 0.3", "factorize --ratio 0.5")


def build(tmp: Path) -> None:
    pip = CORPUS_PYTHON.parent / "pip"
    subprocess.run([str(pip), "download", "nudenet==3.4.2", "--no-deps", "-q", "-d", str(tmp)], check=True)
    with zipfile.ZipFile(next(tmp.glob("nudenet-*.whl"))) as z:
        (tmp / "det.onnx").write_bytes(z.read("nudenet/320n.onnx"))
    subprocess.run([str(CORPUS_PYTHON), "-c", BUILD, str(tmp), str(ROOT.parent / "shared" / "corpus")], check=True)


def detections(out: np.ndarray, conf: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(boxes x1y1x2y2, classes) of one image's ``[4 + C, anchors]`` output after class-wise NMS."""
    o = out.T
    score, cls = o[:, 4:].max(1), o[:, 4:].argmax(1)
    k = score >= conf
    c, s, (x, y, w, h) = cls[k], score[k], o[k, :4].T
    return nms(np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1), c, s, 0.45)


def f1(ref: np.ndarray, new: np.ndarray) -> tuple[float, int, int]:
    return detection_f1((detections(a), detections(b)) for a, b in zip(ref, new))


class Scorer:
    def __init__(self, tmp: Path) -> None:
        self.x = np.load(tmp / "test.npz")["images"]
        self.ref = self.run(tmp / "det.onnx")

    def run(self, path: Path) -> np.ndarray:
        return batched_outputs(path, self.x, "images", 32)[0]

    def score(self, path: Path) -> dict:
        p = self.run(path)
        f, n_ref, n_new = f1(self.ref, p)
        a, b = self.ref[:, 4:].reshape(len(p), -1), p[:, 4:].reshape(len(p), -1)
        cos = np.sum(a * b, 1) / np.sqrt(np.sum(a * a, 1) * np.sum(b * b, 1))
        return {"det_f1": round(f, 4), "detections": f"{n_new} / {n_ref}", "score_cosine": round(float(cos.mean()), 4)}


def main() -> None:
    args = outside_args(__doc__, lambda ap: ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}"))
    with tempfile.TemporaryDirectory(prefix="onnxcomp-det-") as t:
        tmp = Path(t)
        build(tmp)
        scorer = Scorer(tmp)
        commands = [c for c in COMMANDS if (not args.quick or c[0] in QUICK) and args.command in c[0]]
        rows, base = side_by_side(tmp / "det.onnx", commands, versions(args.old, tmp),
                                  lambda label: ["--data", str(tmp / "calib.npz"), "--json"],
                                  lambda out, stdout: {**scorer.score(out), "reported_cosine": _reported(stdout)},
                                  {"images": (1, 3, 320, 320)})
    cols = ["command", "version", "exit", "seconds", "size_ratio", "speedup_b1", "det_f1", "detections",
            "score_cosine", "reported_cosine"]
    print(table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    print(f"(original p50 {base:.2f} ms at batch 1, 1 thread; 480 test views, 128 calibration views)")
    write_json("detector", {"rows": rows, "original_p50_ms": base})


def _reported(stdout: str):
    """The fidelity headline onnxcomp printed in --json (what a user or a gate would read)."""
    import json

    try:
        return round(json.loads(stdout)["write"]["fidelity"]["headline"]["value"], 4)
    except (ValueError, KeyError, TypeError):
        return ""


if __name__ == "__main__":
    main()
