"""A model outside the corpus: the PP-OCRv4 text recogniser, every command with ``--data`` (two without).

    python benchmarks/recogniser.py [--old COMMIT] [--quick]

The recogniser (``ch_PP-OCRv4_rec_infer.onnx``, SVTR-LCNet with a 6625-class CTC head, weights in
Constant nodes, input ``x[N, 3, 48, W]``) ships inside the ``rapidocr_onnxruntime`` wheel that
``../shared/corpus/setup.sh`` installs into the corpus venv. Its data is rendered by that venv's
Python with the corpus' own text generator (fonts and words from pinned wheels): 128 calibration
lines and 300 test lines (other seeds), 48 x 320. Each command runs on the calibration set (the
"data-free" rows on none: ``--input-shape`` for their random-data check); each
output is scored on the test set: character agreement with the original's greedy CTC decode
(1 - edit distance / length), character accuracy against the rendered text, and the one-thread
batch-1 p50 latency ratio of all outputs in one interleaved run. ``--old COMMIT`` runs onnxcomp
at that commit too, side by side. Writes benchmarks/results/recogniser.json.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CORPUS_PYTHON, ROOT, batched_outputs, outside_args, side_by_side, table, versions,  # noqa: E402
                    write_json)

BUILD = r'''
import importlib.util, math, os, shutil, sys
import numpy as np
sys.path.insert(0, sys.argv[2]); sys.argv = [sys.argv[0], sys.argv[1]] + sys.argv[3:]
import build_corpus as B
from PIL import Image, ImageDraw, ImageFont
out = sys.argv[1]
pkg = list(importlib.util.find_spec("rapidocr_onnxruntime").submodule_search_locations)[0]
shutil.copyfile(os.path.join(pkg, "models", "ch_PP-OCRv4_rec_infer.onnx"), os.path.join(out, "rec.onnx"))

def lines(seed, n):
    rng = np.random.default_rng(seed); words = B.zen_words(); fonts = B.font_paths()
    xs, texts = np.zeros((n, 3, 48, 320), np.float32), []
    for i in range(n):
        size = int(rng.integers(16, 44))
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], size)
        text = " ".join(B.random_token(rng, words) for _ in range(int(rng.integers(1, 4))))
        l, t, r, b = font.getbbox(text)
        W, H = r - l + int(rng.integers(4, 16)), b - t + int(rng.integers(4, 12))
        bg = np.clip(rng.integers(170, 256, 3)[None, None] + rng.normal(0, 4, (H, W, 3)), 0, 255)
        im = Image.fromarray(bg.astype(np.uint8)); dr = ImageDraw.Draw(im)
        dr.text(((W - (r - l)) // 2 - l, (H - (b - t)) // 2 - t), text, font=font,
                fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
        rw = min(320, math.ceil(48 * W / H))
        a = np.asarray(im.resize((rw, 48), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0
        xs[i, :, :, :rw] = (a - 0.5) / 0.5  # rapidocr's normalisation; the rest stays 0 (its padding)
        texts.append(text)
    return xs, texts

np.savez(os.path.join(out, "calib.npz"), x=lines(101, 128)[0])
x, t = lines(202, 300)
np.savez(os.path.join(out, "test.npz"), x=x, text=np.array(t))
'''

COMMANDS = [
    ("prune 0.5", ["prune", "--sparsity", "0.5"]),
    ("prune 0.8", ["prune", "--sparsity", "0.8"]),
    ("cluster 4 bits", ["cluster", "--bits", "4"]),
    ("structured 0.3", ["prune", "--structured", "--ratio", "0.3"]),
    ("factorize 0.5", ["factorize", "--ratio", "0.5"]),
    ("prune 0.5 data-free", ["prune", "--sparsity", "0.5"]),
    ("cluster 4 bits data-free", ["cluster", "--bits", "4"]),
]
RANDOM = ["--input-shape", "x=1x3x48x320"]  # the data-free rows: fidelity checked on random lines of this size
QUICK = ("prune 0.8", "structured 0.3")


def build(tmp: Path) -> None:
    corpus = ROOT.parent / "shared" / "corpus"
    script = tmp / "build_rec.py"
    script.write_text(BUILD)
    subprocess.run([str(CORPUS_PYTHON), str(script), str(tmp), str(corpus)], check=True)


def decode(probs: np.ndarray) -> list[list[int]]:
    """Greedy CTC: argmax per step, repeats merged, blanks (class 0) dropped."""
    out = []
    for a in probs.argmax(-1):
        keep = np.concatenate([[True], a[1:] != a[:-1]]) & (a != 0)
        out.append(a[keep].tolist())
    return out


def edits(a: list, b: list) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def char_score(seqs: list[list[int]], refs: list[list[int]]) -> float:
    return 1.0 - sum(edits(s, r) for s, r in zip(seqs, refs)) / max(1, sum(len(r) for r in refs))


class Scorer:
    def __init__(self, tmp: Path) -> None:
        import onnx

        d = np.load(tmp / "test.npz")
        self.x, texts = d["x"], [str(t) for t in d["text"]]
        meta = {p.key: p.value for p in onnx.load(tmp / "rec.onnx", load_external_data=False).metadata_props}
        chars = {c: i for i, c in enumerate(["<blank>"] + meta["character"].splitlines() + [" "])}
        self.truth = [[chars.get(c, -1) for c in t] for t in texts]
        self.ref = self.run(tmp / "rec.onnx")
        self.ref_seqs = decode(self.ref)

    def run(self, path: Path) -> np.ndarray:
        return batched_outputs(path, self.x, "x", 50)[0]

    def score(self, path: Path) -> dict:
        p = self.run(path)
        seqs = decode(p)
        cos = float((p * self.ref).sum() / np.sqrt((p * p).sum() * (self.ref * self.ref).sum()))
        return {"char_agreement": round(char_score(seqs, self.ref_seqs), 4),
                "char_accuracy": round(char_score(seqs, self.truth), 4),
                "lines_equal": round(float(np.mean([a == b for a, b in zip(seqs, self.ref_seqs)])), 3),
                "cosine": round(cos, 4)}


def main() -> None:
    args = outside_args(__doc__, lambda ap: ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}"))
    with tempfile.TemporaryDirectory(prefix="onnxcomp-rec-") as t:
        tmp = Path(t)
        build(tmp)
        scorer = Scorer(tmp)
        original = {"command": "original", "version": "", "size_ratio": 1.0,
                    "char_accuracy": round(char_score(scorer.ref_seqs, scorer.truth), 4)}
        commands = [c for c in COMMANDS if not args.quick or c[0] in QUICK]
        rows, base = side_by_side(
            tmp / "rec.onnx", commands, versions(args.old, tmp),
            lambda label: (RANDOM if label.endswith("data-free") else ["--data", str(tmp / "calib.npz")]) + ["-q"],
            lambda out, stdout: scorer.score(out), {"x": (1, 3, 48, 320)})
    cols = ["command", "version", "exit", "seconds", "size_ratio", "speedup_b1", "char_agreement",
            "char_accuracy", "lines_equal", "cosine"]
    print(table(cols, [[r.get(c, "") for c in cols] for r in [original] + rows]))
    print(f"(original p50 {base:.2f} ms at batch 1, 1 thread; 300 test lines, 128 calibration lines)")
    write_json("recogniser", {"original": original, "rows": rows, "original_p50_ms": base})


if __name__ == "__main__":
    main()
