"""Two more trained models outside the corpus: ddddocr's captcha recogniser and detector, each
command side by side, scored against the original and against the rendered truth.

    python benchmarks/ddddocr.py [--old COMMIT] [--only recogniser|detector] [--command TEXT]

``ddddocr==1.6.1`` (downloaded with the corpus venv's pip, ``--no-deps``) ships ``common.onnx``
(54 MB, its "beta" recogniser: 21 convs, an LSTM and an 8210-class CTC Gemm; input
``input1[1, 1, 64, W]``, the batch fixed at 1) and ``common_det.onnx`` (20 MB, a YOLOX detector
of characters at 416 x 416: one output ``[1, 3549, 4 + 1 + 1]``, boxes, objectness and a class per
anchor). Data, rendered in the corpus venv with its DejaVu fonts (``build_corpus.font_paths``):
recogniser: 4-6 letters and digits on noisy 200 x 64 lines (128 calibration, 300 test), scored by
exact (case-insensitive) reading accuracy and by agreement with the original's reading;
detector: 3-5 large characters on 320 x 160 clutter, letterboxed to 416 as ddddocr feeds them
(64 calibration, 100 test), scored by detection F1 against the original's detections and against
the drawn boxes (score >= 0.3, NMS at IoU 0.45, a match at IoU >= 0.5). Speed: one interleaved
one-thread batch-1 ``bench`` per model. Each calibrated command costs 1-2 engine walks over the
calibration set (structured: plus its probe on a few samples). Writes benchmarks/results/ddddocr.json.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS_PYTHON, ROOT, detection_f1, outside_main, outside_rows  # noqa: E402

BUILD = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[2]); out = sys.argv[1]; sys.argv = [sys.argv[0], out]
from build_corpus import font_paths
from PIL import Image, ImageDraw, ImageFont
FONTS = font_paths()
def colour(rng, lo, hi):
    return tuple(int(v) for v in rng.integers(lo, hi, 3))
def line(rng, w=200, h=64):
    chars = list("abcdefghijkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ")
    text = "".join(rng.choice(chars, int(rng.integers(4, 7))))
    im = Image.new("RGB", (w, h), colour(rng, 200, 256)); d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        d.line([tuple(int(v) for v in rng.integers(0, [w, h])) for _ in range(2)], fill=colour(rng, 80, 200))
    font = ImageFont.truetype(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(28, 40)))
    x = int(rng.integers(4, 20))
    for ch in text:
        d.text((x, int(rng.integers(2, 20))), ch, font=font, fill=colour(rng, 0, 110))
        x += int(font.getlength(ch)) + int(rng.integers(-2, 5))
    a = np.asarray(im.convert("L"), np.float32) / 255 + rng.normal(0, 0.03, (h, w)).astype(np.float32)
    return text, np.clip(a, 0, 1)[None]
def clicks(rng, w=320, h=160):
    im = Image.new("RGB", (w, h), colour(rng, 150, 256)); d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 8))):
        x, y = (int(v) for v in rng.integers(0, [w, h])); r = int(rng.integers(10, 50))
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour(rng, 120, 256))
    boxes = []
    for _ in range(int(rng.integers(3, 6))):
        font = ImageFont.truetype(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(26, 44)))
        ch = str(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ2345678abdefghkmnqrt")))
        for _ in range(20):
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 45))
            bb = d.textbbox((x, y), ch, font=font)
            if all(bb[2] < b[0] or bb[0] > b[2] or bb[3] < b[1] or bb[1] > b[3] for b in boxes):
                break
        d.text((x, y), ch, font=font, fill=colour(rng, 0, 100)); boxes.append(bb)
    r = 416 / w
    small = np.asarray(im)[:, :, ::-1]  # BGR, as ddddocr reads with cv2
    small = np.asarray(Image.fromarray(small).resize((416, int(h * r)), Image.BILINEAR))
    pad = np.full((416, 416, 3), 114, np.uint8); pad[:small.shape[0]] = small
    return pad.transpose(2, 0, 1).astype(np.float32), (np.array(boxes, np.float32) * r).tolist()
def lines(n, seed):
    rng = np.random.default_rng(seed); items = [line(rng) for _ in range(n)]
    return [t for t, _ in items], np.stack([a for _, a in items])
def views(n, seed):
    rng = np.random.default_rng(seed); items = [clicks(rng) for _ in range(n)]
    return np.stack([a for a, _ in items]), [b for _, b in items]
np.savez(out + "/recogniser_calib.npz", input1=lines(128, 1)[1])
texts, x = lines(300, 2); np.savez(out + "/recogniser_test.npz", input1=x)
np.savez(out + "/detector_calib.npz", images=views(64, 11)[0])
x, boxes = views(100, 12); np.savez(out + "/detector_test.npz", images=x)
json.dump({"texts": texts, "boxes": boxes}, open(out + "/truth.json", "w"))
'''
MEMBERS = {"recogniser": "ddddocr/common.onnx", "detector": "ddddocr/common_det.onnx"}
SHAPES = {"recogniser": {"input1": (1, 1, 64, 200)}, "detector": {"images": (1, 3, 416, 416)}}
COMMON = [("prune --sparsity 0.5", ["prune", "--sparsity", "0.5"]),
          ("prune --sparsity 0.7", ["prune", "--sparsity", "0.7"]),
          ("prune --structured --ratio 0.3", ["prune", "--structured", "--ratio", "0.3"]),
          ("factorize --ratio 0.5", ["factorize", "--ratio", "0.5"]),
          ("cluster --bits 4", ["cluster", "--bits", "4"]),
          ("prune --sparsity 0.5 (no data)", ["prune", "--sparsity", "0.5"]),
          ("quantize", ["quantize"])]


def build(tmp: Path) -> None:
    pip = CORPUS_PYTHON.parent / "pip"
    subprocess.run([str(pip), "download", "ddddocr==1.6.1", "--no-deps", "-q", "-d", str(tmp)], check=True)
    with zipfile.ZipFile(next(tmp.glob("ddddocr-*.whl"))) as z:
        for name, member in MEMBERS.items():
            (tmp / f"{name}.onnx").write_bytes(z.read(member))
        ns: dict = {}
        exec(z.read("ddddocr/charsets.py").decode("utf-8"), ns)  # the wheel's own data: a list literal
        (tmp / "charset.txt").write_text("\n".join(ns["CHARSET_BETA"]), encoding="utf-8")
    subprocess.run([str(CORPUS_PYTHON), "-c", BUILD, str(tmp), str(ROOT.parent / "shared" / "corpus")], check=True)


def _outputs(path: Path, x: np.ndarray, name: str) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the recogniser declares its output [1, T]: one shape warning per run
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]


def reading(out: np.ndarray, charset: list[str]) -> str:
    """Greedy CTC decode of one [T, 1, C] output (index 0 is the blank)."""
    idx = out.reshape(-1, out.shape[-1]).argmax(1)
    keep = (idx != 0) & np.concatenate([[True], idx[1:] != idx[:-1]])
    return "".join(charset[i] for i in idx[keep] if i < len(charset))


def boxes(out: np.ndarray, conf: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX decode of one [1, 3549, 6] output: (boxes, classes) after NMS at IoU 0.45."""
    from common import nms

    grids, strides = [], []
    for s in (8, 16, 32):
        n = 416 // s
        gy, gx = np.divmod(np.arange(n * n), n)
        grids.append(np.stack([gx, gy], 1)), strides.append(np.full((n * n, 1), s))
    g, st = np.concatenate(grids), np.concatenate(strides)
    p = out.reshape(-1, 6).astype(np.float64)
    xy, wh = (p[:, :2] + g) * st, np.exp(p[:, 2:4]) * st
    score = p[:, 4] * p[:, 5]
    k = score >= conf
    b = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[k]
    return nms(b, np.zeros(int(k.sum()), int), score[k], 0.45)


class Scorer:
    def __init__(self, tmp: Path, name: str) -> None:
        import json

        self.name, self.input = name, "input1" if name == "recogniser" else "images"
        self.x = np.load(tmp / f"{name}_test.npz")[self.input]
        self.truth = json.loads((tmp / "truth.json").read_text())
        self.charset = (tmp / "charset.txt").read_text(encoding="utf-8").split("\n")
        self.drawn = [(np.array(b, np.float64).reshape(-1, 4), np.zeros(len(b), int)) for b in self.truth["boxes"]]
        self.ref = self.read(tmp / f"{name}.onnx")

    def read(self, path: Path) -> list:
        outs = _outputs(path, self.x, self.input)
        if self.name == "recogniser":
            return [reading(o, self.charset) for o in outs]
        return [boxes(o) for o in outs]

    def score(self, path: Path) -> dict:
        got = self.read(path)
        if self.name == "recogniser":
            right = [g.lower() == t.lower() for g, t in zip(got, self.truth["texts"])]
            return {"accuracy": round(float(np.mean(right)), 4),
                    "agreement": round(float(np.mean([g == r for g, r in zip(got, self.ref)])), 4)}
        f, _, n = detection_f1(zip(self.ref, got))
        return {"det_f1": round(f, 4), "detections": n, "f1_truth": round(detection_f1(zip(self.drawn, got))[0], 4)}

    def original(self) -> str:
        if self.name == "recogniser":
            acc = np.mean([r.lower() == t.lower() for r, t in zip(self.ref, self.truth["texts"])])
            return f"reading accuracy {acc:.4f}"
        f, n_truth, n = detection_f1(zip(self.drawn, self.ref))
        return f"{n} detections of {n_truth} drawn characters, F1 {f:.4f}"


def _one(name: str, tmp: Path, tools: list) -> dict:
    scorer = Scorer(tmp, name)
    calib, shape = str(tmp / f"{name}_calib.npz"), SHAPES[name]
    no_data = [a for k, v in shape.items() for a in ("--input-shape", f"{k}={'x'.join(map(str, v))}")]
    metrics = ["accuracy", "agreement"] if name == "recogniser" else ["det_f1", "detections", "f1_truth"]
    return outside_rows(name, tmp / f"{name}.onnx", COMMON, tools,
                        lambda label: ["--json"] + (no_data if "no data" in label else ["--data", calib]),
                        scorer.score, shape, metrics, scorer.original())


def main() -> None:
    outside_main(__doc__, "ddddocr", list(MEMBERS), build, _one)


if __name__ == "__main__":
    main()
