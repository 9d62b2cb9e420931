"""What each storage costs onnxruntime to load: file size, model RSS and load time, side by side.

    python benchmarks/load_memory.py [--corpus /tmp/corpus-cache] [--bits 4]
    python benchmarks/load_memory.py --commands [--corpus DIR] [--model M.onnx ...]
                                     [--input-shape x=1x3x48x320] [--old COMMIT]

``--commands``: `prune --sparsity 0.5` and `0.9`, `cluster --bits 4` and `compress --prune 0.5
--bits 4` (data-free) of each model (resnet_digits, vit_digits, effnet_lite0 with --corpus, and
every --model) as the default encoding stores them, and `prune 0.5 --encoding sparse` (every
pruned weight stored sparse), with this onnxcomp and the one at ``--old``; one `onnxcomp bench`
per model of the original and every output (model RSS: peak while the session is made and run).
Writes benchmarks/results/load_memory_commands.json.

Without ``--commands``:
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
from common import MODELS, table, versions, write_json  # noqa: E402

import onnxcomp as oc  # noqa: E402
from onnxcomp.encode import encode_weights  # noqa: E402
from onnxcomp.measure.bench import bench  # noqa: E402

FAMILIES = ("auto", "smallest", "fixed", "codebook8")


COMMANDS = (("prune 0.5", ["prune", "--sparsity", "0.5"]),
            ("prune 0.5 --encoding sparse", ["prune", "--sparsity", "0.5", "--encoding", "sparse"]),
            ("prune 0.9", ["prune", "--sparsity", "0.9"]), ("cluster 4", ["cluster", "--bits", "4"]),
            ("compress 0.5 / 4", ["compress", "--prune", "0.5", "--bits", "4"]))


def commands(args: argparse.Namespace) -> None:
    """The --commands table: file size and load memory of each command's output, old and new."""
    import subprocess
    import time

    models = [MODELS / "resnet_digits.onnx", MODELS / "vit_digits.onnx", *args.model]
    if args.corpus:
        models.insert(2, args.corpus / "effnet_lite0" / "model.onnx")
    shapes = dict(s.split("=") for s in args.input_shape)
    shapes = {k: tuple(int(d) for d in v.split("x")) for k, v in shapes.items()}
    out = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        tools = versions(args.old, tmp)
        for m, src in enumerate(models):
            files, rows = [src], []
            for label, argv in COMMANDS:
                for version, exe in tools:
                    dst = tmp / f"{m}-{len(files)}.onnx"
                    t0 = time.time()
                    proc = subprocess.run(exe + argv[:1] + [str(src)] + argv[1:] + ["-o", str(dst), "-q"],
                                          capture_output=True, text=True)
                    rows.append({"model": src.name, "command": label, "version": version, "exit": proc.returncode,
                                 "seconds": round(time.time() - t0, 1)})
                    if proc.returncode == 0:
                        files.append(dst)
                        rows[-1]["_file"] = str(dst)
            import onnx

            inputs = {i.name for i in onnx.load(str(src), load_external_data=False).graph.input}
            report = bench(files, threads=1, runs=5, warmup=1,
                           input_shapes={k: v for k, v in shapes.items() if k in inputs} or None)
            by = {e.path: e for e in report.entries}
            for r in rows:
                e = by.get(r.pop("_file", None))
                if e is not None:
                    r.update(size=round(e.ratios["file_size"], 3), model_rss=round(e.ratios["model_rss"], 2),
                             load=round(e.ratios["create_s"], 2))
            base = report.entries[0]
            print(f"\n{src.name}: {base.file_size / 1e6:.2f} MB, model RSS {base.model_rss / 1e6:.0f} MB, "
                  f"load {1000 * base.create_s:.0f} ms (ratios to these)")
            cols = ["command", "version", "exit", "seconds", "size", "model_rss", "load"]
            print(table(cols, [[r.get(c, "") for c in cols] for r in rows]))
            out += rows
    write_json("load_memory_commands", {"rows": out})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--commands", action="store_true", help="the table of the commands' default storage")
    ap.add_argument("--model", type=Path, action="append", default=[], help="(--commands) one more model")
    ap.add_argument("--input-shape", action="append", default=[], help="(--commands) NAME=DIMS for bench")
    ap.add_argument("--old", default=None, help="(--commands) also the onnxcomp at this commit")
    args = ap.parse_args()
    if args.commands:
        commands(args)
        return
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
