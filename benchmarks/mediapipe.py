"""TFLite models converted to ONNX: three of MediaPipe's, whose residual streams widen stage by
stage with padded channels, the speed rewrites side by side, scored against the original.

    python benchmarks/mediapipe.py [--old COMMIT] [--only NAME] [--command TEXT] [--tf-python PY]

``mediapipe==0.10.14`` ships TFLite files (downloaded with the corpus venv's pip, ``--no-deps``):
BlazeFace (``face_detection_short_range``, 0.10 M parameters, 128 x 128, 896 anchors of 16 box
and keypoint fields and a score logit), the palm detector (``palm_detection_lite``, 0.96 M, 192 x
192, 2016 anchors) and the face mesh (``face_landmark``, 0.60 M, 192 x 192, 468 3-D landmarks
and a face-flag logit). Each is converted by ``tf2onnx --tflite`` (opset 17) in ``--tf-python``,
a Python with ``tf2onnx`` and ``tensorflow-cpu`` (``python -m venv /tmp/tf-venv &&
/tmp/tf-venv/bin/pip install tf2onnx tensorflow-cpu``). Their inputs are NHWC, batch 1, scaled to
[-1, 1]. Data: 128 calibration and 96 test views (other seeds) of the corpus' 20 photos
(``build_corpus.photo_list``; astronaut and camera hold a face). Scores on the test views: the
worst output's cosine to the original, the landmark or box output's relative error, and for the
two detectors the F1 of the anchors whose score passes 0.5 against the original's (BlazeFace finds
few faces in these photos: the original passes about 125 anchors over 96 views, so a few
anchors move it). Speed: one interleaved one-thread batch-1 ``bench`` per model. ``--old COMMIT``
runs onnxcomp at that commit too. Writes benchmarks/results/mediapipe.json.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS_PYTHON, ROOT, batched_outputs, outside_main, outside_rows, parsed_args  # noqa: E402

BUILD = r'''
import sys
import numpy as np
sys.path.insert(0, sys.argv[2]); out, specs = sys.argv[1], sys.argv[3:]; sys.argv = [sys.argv[0], out]
from build_corpus import photo_list
from PIL import Image
photos = [Image.fromarray(a).convert("RGB") for _, a in photo_list()]
def views(seed, n, size):
    rng = np.random.default_rng(seed); xs = []
    for i in range(n):
        p = photos[i % len(photos)]; W, H = p.size
        s = int(rng.uniform(0.4, 1.0) * min(W, H)); x = rng.integers(0, W - s + 1); y = rng.integers(0, H - s + 1)
        im = p.crop((x, y, x + s, y + s)).resize((size, size), Image.BILINEAR)
        xs.append(np.asarray(im, np.float32) / 127.5 - 1.0)
    return np.stack(xs)
for name, size in [a.split(":") for a in specs]:
    np.savez(f"{out}/{name}_calib.npz", input=views(1, 128, int(size)))
    np.savez(f"{out}/{name}_test.npz", input=views(2, 96, int(size)))
'''
MODELS = {"face_detection_short_range": ("face_detection", 128), "palm_detection_lite": ("palm_detection", 192),
          "face_landmark": ("face_landmark", 192)}
COMMANDS = [("prune --structured --ratio 0.3", ["prune", "--structured", "--ratio", "0.3"]),
            ("prune --structured --ratio 0.1", ["prune", "--structured", "--ratio", "0.1"]),
            ("factorize --ratio 0.5", ["factorize", "--ratio", "0.5"])]
def build(tmp: Path) -> None:
    py = Path(parsed_args().tf_python)
    if not py.exists():
        sys.exit(f"error: {py} not found; make a Python with tf2onnx: python -m venv /tmp/tf-venv && "
                 "/tmp/tf-venv/bin/pip install tf2onnx tensorflow-cpu (or pass --tf-python)")
    pip = CORPUS_PYTHON.parent / "pip"
    subprocess.run([str(pip), "download", "mediapipe==0.10.14", "--no-deps", "-q", "-d", str(tmp)], check=True)
    with zipfile.ZipFile(next(tmp.glob("mediapipe-*.whl"))) as z:
        for name, (folder, _) in MODELS.items():
            (tmp / f"{name}.tflite").write_bytes(z.read(f"mediapipe/modules/{folder}/{name}.tflite"))
    for name in MODELS:
        subprocess.run([str(py), "-m", "tf2onnx.convert", "--tflite", str(tmp / f"{name}.tflite"), "--output",
                        str(tmp / f"{name}.raw.onnx"), "--opset", "17"], check=True, capture_output=True)
        _rename_input(tmp / f"{name}.raw.onnx", tmp / f"{name}.onnx")
    subprocess.run([str(CORPUS_PYTHON), "-c", BUILD, str(tmp), str(ROOT.parent / "shared" / "corpus"),
                    *[f"{n}:{s}" for n, (_, s) in MODELS.items()]], check=True)


def _rename_input(src: Path, dst: Path) -> None:
    """The converted model with its one input named ``input`` (the data files' key)."""
    import onnx

    m = onnx.load(str(src))
    old = m.graph.input[0].name
    m.graph.input[0].name = "input"
    for n in m.graph.node:
        n.input[:] = ["input" if i == old else i for i in n.input]
    onnx.save(m, str(dst))


class Scorer:
    def __init__(self, tmp: Path, name: str) -> None:
        self.x = np.load(tmp / f"{name}_test.npz")["input"]
        self.ref = self.run(tmp / f"{name}.onnx")

    def run(self, path: Path) -> list[np.ndarray]:
        return batched_outputs(path, self.x, "input", 1)

    def score(self, path: Path) -> dict:
        out = self.run(path)
        r, o = [a.reshape(len(a), -1).astype(np.float64) for a in self.ref], [b.reshape(len(b), -1) for b in out]
        cos = [float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))) for a, b in zip(r, o)]
        big = int(np.argmax([a.shape[1] for a in r]))  # the landmarks or boxes
        row = {"worst_cosine": round(min(cos), 4),
               "rel_err": round(float(np.linalg.norm(o[big] - r[big]) / np.linalg.norm(r[big])), 4)}
        scores = [k for k, a in enumerate(self.ref) if a.ndim == 3 and a.shape[-1] == 1]
        if scores:  # a detector: anchors whose score logit passes 0 (probability 0.5)
            a, b = self.ref[scores[0]] > 0, out[scores[0]] > 0
            row["anchor_f1"] = round(float(2 * (a & b).sum() / max(1, a.sum() + b.sum())), 4)
            row["anchors"] = f"{int(b.sum())} / {int(a.sum())}"
        return row


def _one(name: str, tmp: Path, tools: list) -> dict:
    scorer = Scorer(tmp, name)
    calib = str(tmp / f"{name}_calib.npz")
    metrics = ["worst_cosine", "rel_err"] + (["anchor_f1", "anchors"] if "detection" in name else [])
    return outside_rows(name, tmp / f"{name}.onnx", COMMANDS, tools, lambda label: ["--json", "--data", calib],
                        scorer.score, {"input": (1, *scorer.x.shape[1:])}, metrics,
                        "the converted TFLite model")


def main() -> None:
    outside_main(__doc__, "mediapipe", list(MODELS), build, _one, lambda ap: ap.add_argument(
        "--tf-python", default="/tmp/tf-venv/bin/python", help="a Python with tf2onnx and tensorflow-cpu"))


if __name__ == "__main__":
    main()
