"""How many calibration samples a calibrated command needs: the same command fitted to 32, 128 and
512 samples, judged on the corpus test set it never saw.

    python benchmarks/calib_size.py --corpus /tmp/corpus-cache [--sizes 32,128,512] [--commands prune,cluster]

effnet_lite0 only: more views of the corpus photos are drawn the way the corpus draws its
calibration set (``build_corpus.random_view_224``, seed 777, so none is a test view), in the
corpus venv (it has the photos' packages). Each row: the command fitted to the first N views, its
fidelity on those N (what onnxcomp reports by default), and the corpus evaluator on its 160 test
views (top-1 agreement, KL from the original's softmax). Each command costs its engine walks over
N samples (prune: 2 walks, cluster: 3). Writes benchmarks/results/calib_size.json.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS_PYTHON, ROOT, real_models, table, write_json  # noqa: E402

BUILD = r'''
import sys
import numpy as np
sys.path.insert(0, sys.argv[2]); out, n = sys.argv[1], int(sys.argv[3]); sys.argv = [sys.argv[0], out]
import build_corpus as B
from PIL import Image
photos = [Image.fromarray(a) for _, a in B.photo_list()]
rng = np.random.default_rng(777)
views = np.stack([B.random_view_224(photos[p], rng) for p in B.photo_order(n, len(photos))])
np.save(out + "/views.npy", ((views.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
'''
COMMANDS = {
    "prune": ("prune --sparsity 0.5", lambda oc, m, d: oc.prune(m, sparsity=0.5, data=d)),
    "cluster": ("cluster --bits 4", lambda oc, m, d: oc.cluster(m, 4, data=d)),
    "quantize": ("quantize", lambda oc, m, d: oc.quantize(m, data=d)),
}


def main() -> None:
    import onnxcomp as oc

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--commands", default="prune,cluster", help="Comma-separated, of: " + ", ".join(COMMANDS))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rm = real_models(args.corpus, ["effnet_lite0"])
    if not rm:
        raise SystemExit(f"needs the corpus cache (--corpus) and its venv at {CORPUS_PYTHON}")
    rm = rm[0]
    model = oc.load(rm.path)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(CORPUS_PYTHON), "-c", BUILD, tmp, str(ROOT.parent / "shared" / "corpus"),
                        str(max(sizes))], check=True)
        views = np.load(Path(tmp) / "views.npy")
    rows, out = [], []
    for key in args.commands.split(","):
        label, run = COMMANDS[key]
        for n in sizes:
            data = {"input": views[:n]}
            t = time.perf_counter()
            result = run(oc, model, data)
            seconds = time.perf_counter() - t
            fitted = oc.compare(model, result.model, data).headline[1]
            _, test = rm.measure(result.model.proto)
            rows.append([label, n, f"{seconds:.0f} s", f"{fitted:.4f}", f"{test['top1_agree']:.4f}",
                         f"{test['kl_ref_to_new']:.4f}"])
            out.append({"command": label, "samples": n, "seconds": round(seconds, 1), "fitted_top1": fitted,
                        "test": test})
            print(table(["command", "samples", "time", "top-1 on fitted", "top-1 test", "KL test"], rows[-1:]),
                  flush=True)
    print(table(["command", "samples", "time", "top-1 on fitted", "top-1 test", "KL test"], rows))
    write_json("calib_size", {"model": "effnet_lite0", "test_views": 160, "rows": out})


if __name__ == "__main__":
    main()
