"""A file-type classifier outside the corpus (Google's magika), each command side by side, scored
against the original on files of this machine.

    python benchmarks/magika.py [--old COMMIT] [--command TEXT]

``magika==1.0.3`` ships ``standard_v3_3/model.onnx`` (3.2 MB, exported by jax2tf: a one-hot byte
embedding, a 5-tap conv, LayerNorms and tanh-GELUs written out as Mul/Add/ReduceSum, a global max
pool and a 214-class dense layer; input ``bytes[N, 2048]`` int32). The wheel is downloaded with the
corpus venv's pip (``--no-deps``). Data: the files of the corpus venv and of its Python's standard
library (pinned versions: the same files on every machine), at most 6 per file extension, drawn
with a fixed seed; each is read as magika reads it (the first 1024 bytes after leading whitespace,
the last 1024 before trailing whitespace, padded with token 256). 128 files calibrate, up to 1000
others test. Scores: top-1 agreement with the original and the mean cosine of the class
probabilities. Speed: one interleaved one-thread batch-1 ``bench`` of every output and of
onnxruntime's ``quantize_dynamic`` of the same model. Writes benchmarks/results/magika.json.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS_PYTHON, batched_outputs, outside_main, outside_rows  # noqa: E402

WHEEL, MEMBER = "magika==1.0.3", "magika/models/standard_v3_3/model.onnx"
SIDE, PAD, PER_EXT = 1024, 256, 6
COMMANDS = [("prune --sparsity 0.5", ["prune", "--sparsity", "0.5"]),
            ("prune --nm 2:4", ["prune", "--nm", "2:4"]),
            ("factorize --ratio 0.5", ["factorize", "--ratio", "0.5"]),
            ("cluster --bits 4", ["cluster", "--bits", "4"]),
            ("quantize", ["quantize"]),
            ("compress", ["compress"]),
            ("prune --sparsity 0.5 (no data)", ["prune", "--sparsity", "0.5"]),
            ("cluster --bits 4 (no data)", ["cluster", "--bits", "4"])]


def features(blob: bytes) -> np.ndarray:
    """magika's input for one file: its first and last bytes, whitespace stripped, padded."""
    out = np.full(2 * SIDE, PAD, np.int32)
    beg, end = blob.lstrip()[:SIDE], blob.rstrip()[-SIDE:]
    out[:len(beg)] = np.frombuffer(beg, np.uint8)
    out[2 * SIDE - len(end):] = np.frombuffer(end, np.uint8)
    return out


def files() -> list[Path]:
    """The corpus venv's files and its standard library's, a few per extension, in a fixed order."""
    stdlib = subprocess.run([str(CORPUS_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    by_ext: dict[str, list[Path]] = {}
    for root in (CORPUS_PYTHON.parent.parent / "lib", Path(stdlib)):
        for p in sorted(root.rglob("*")):
            if "__pycache__" not in p.parts and p.is_file() and not p.is_symlink() and p.stat().st_size >= 16:
                by_ext.setdefault(p.suffix.lower(), []).append(p)
    rng = np.random.default_rng(0)
    picked = [p for ext in sorted(by_ext) for p in rng.permutation(np.array(by_ext[ext], object))[:PER_EXT]]
    return [picked[i] for i in rng.permutation(len(picked))]


def build(tmp: Path) -> None:
    subprocess.run([str(CORPUS_PYTHON.parent / "pip"), "download", WHEEL, "--no-deps", "-q", "-d", str(tmp)],
                   check=True)
    with zipfile.ZipFile(next(tmp.glob("magika-*.whl"))) as z:
        (tmp / "magika.onnx").write_bytes(z.read(MEMBER))
    x = np.stack([features(p.read_bytes()) for p in files()])
    np.savez(tmp / "calib.npz", bytes=x[:128])
    np.savez(tmp / "test.npz", bytes=x[128:1128])
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(tmp / "magika.onnx"), str(tmp / "ort_dynamic.onnx"))


class Scorer:
    def __init__(self, tmp: Path) -> None:
        self.x = np.load(tmp / "test.npz")["bytes"]
        self.ref = self.run(tmp / "magika.onnx")

    def run(self, path: Path) -> np.ndarray:
        return batched_outputs(path, self.x, "bytes", 100)[0]

    def score(self, path: Path) -> dict:
        out = self.run(path)
        cos = (out * self.ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(self.ref, axis=1)
        return {"agreement": round(float((out.argmax(1) == self.ref.argmax(1)).mean()), 4),
                "cosine": round(float(cos.mean()), 4)}


def _one(name: str, tmp: Path, tools: list) -> dict:
    scorer = Scorer(tmp)
    calib = str(tmp / "calib.npz")
    return outside_rows(name, tmp / "magika.onnx", COMMANDS, tools,
                        lambda label: ["--json"] + ([] if "no data" in label else ["--data", calib]),
                        scorer.score, {"bytes": (1, 2 * SIDE)}, ["agreement", "cosine"],
                        f"{len(scorer.x)} test files, {len(set(scorer.ref.argmax(1)))} classes predicted",
                        extra=[("onnxruntime quantize_dynamic", tmp / "ort_dynamic.onnx")])


def main() -> None:
    outside_main(__doc__, "magika", ["magika"], build, _one)


if __name__ == "__main__":
    main()
