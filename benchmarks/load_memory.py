"""What each storage costs onnxruntime to load: file size, model RSS and load time, side by side.

    python benchmarks/load_memory.py [--corpus /tmp/corpus-cache] [--bits 4]

Clusters a model (effnet_lite0 from the corpus when given, else resnet_digits) to ``--bits``
(dense values), stores the same values with each ``--encoding`` family, and runs ``onnxcomp bench``
on the original and every file in one interleaved run (1 thread). Model RSS = peak resident memory
during session creation and runs, minus the process before it: onnxruntime folds the in-graph
decoders at load and keeps every temporary until its constant folding ends. Writes
benchmarks/results/load_memory.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, table, write_json  # noqa: E402

import onnxcomp as oc  # noqa: E402
from onnxcomp.encode import encode_weights  # noqa: E402
from onnxcomp.measure.bench import bench  # noqa: E402

FAMILIES = ("auto", "smallest", "fixed", "codebook8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--bits", type=int, default=4)
    args = ap.parse_args()
    src = args.corpus / "effnet_lite0" / "model.onnx" if args.corpus else MODELS / "resnet_digits.onnx"
    dense = oc.cluster(src, args.bits, encoding="dense")
    names = {c.name for c in dense.result.applied}
    with tempfile.TemporaryDirectory() as tmp:
        paths, kinds = [src], {}
        for fam in FAMILIES:
            m = dense.model.copy()
            chosen = encode_weights(m.proto, names, fam)
            kinds[fam] = sorted({c.kind for c in chosen})
            paths.append(oc.save(m, Path(tmp) / f"{fam}.onnx", force=True, verify=False))
        report = bench(paths, threads=1, runs=20, warmup=2)
    base = report.entries[0]
    rows, out = [], []
    for e, fam in zip(report.entries, ("fp32",) + FAMILIES):
        row = {"storage": fam, "file_bytes": e.file_size, "model_rss": e.model_rss, "load_ms": 1000 * e.create_s,
               "p50_ms": e.p50_ms, "rss_ratio": e.model_rss / base.model_rss, "kinds": kinds.get(fam, [])}
        out.append(row)
        rows.append([fam, f"{e.file_size / 1e6:.2f} MB", f"{e.model_rss / 1e6:.0f} MB", f"{row['rss_ratio']:.2f}x",
                     f"{row['load_ms']:.0f}", f"{e.p50_ms:.2f}", ", ".join(row["kinds"])])
    print(f"{src.name}, cluster {args.bits} bits, 1 thread")
    print(table(["storage", "file", "model RSS", "vs fp32", "load ms", "p50 ms", "encodings"], rows))
    write_json("load_memory", {"model": src.name, "bits": args.bits, "rows": out})


if __name__ == "__main__":
    main()
