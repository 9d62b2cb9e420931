"""Data-free commands on a transformer-sized model: wall time and peak RSS as multiples of a plain
``onnx.load`` + ``onnx.save`` of the same file, and of the model's bytes.

    python benchmarks/datafree.py [--layers 6] [--width 384] [--vocab 30522] [--old COMMIT] [--repeat 3]

Builds a BERT-small-shaped graph (token embedding Gather, then per layer Q/K/V/output MatMuls
width x width and an MLP width x 4 width x width, LayerNorm; 22.6 M parameters at the defaults)
with random weights — enough for cost, not for quality — and runs, as child processes,
``cluster --bits 4`` and ``prune --sparsity 0.9`` without data, beside a load+save of the file
(``--old COMMIT``: onnxcomp at that commit too, interleaved round by round; medians of
``--repeat`` rounds). Writes benchmarks/results/datafree.json.

Peak RSS is each child's ``ru_maxrss``. A forked child starts from its parent's resident size, so
the model is built in a child too and this process stays small (before, every row read the
~410 MB this process reached while building the model: load+save and prune alike).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, install_old, table, write_json  # noqa: E402


def transformer(layers: int, width: int, vocab: int, seq: int = 128) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def w(name: str, shape) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.02).astype(np.float32), name))
        return name

    nodes.append(helper.make_node("Gather", [w("embed", (vocab, width)), "ids"], ["h0"], name="embed"))
    h = "h0"
    for i in range(layers):
        p = f"l{i}"
        ln = f"{p}_ln"
        nodes.append(helper.make_node("LayerNormalization", [h, w(f"{p}_g", (width,)), w(f"{p}_b", (width,))],
                                      [ln], name=ln, axis=-1))
        for part in ("q", "k", "v"):
            nodes.append(helper.make_node("MatMul", [ln, w(f"{p}_{part}", (width, width))], [f"{p}_{part}o"],
                                          name=f"{p}_{part}"))
        nodes.append(helper.make_node("Add", [f"{p}_qo", f"{p}_ko"], [f"{p}_qk"], name=f"{p}_mix"))
        nodes.append(helper.make_node("Add", [f"{p}_qk", f"{p}_vo"], [f"{p}_att"], name=f"{p}_mix2"))
        nodes.append(helper.make_node("MatMul", [f"{p}_att", w(f"{p}_o", (width, width))], [f"{p}_ao"],
                                      name=f"{p}_o"))
        nodes.append(helper.make_node("MatMul", [f"{p}_ao", w(f"{p}_up", (width, 4 * width))], [f"{p}_u"],
                                      name=f"{p}_up"))
        nodes.append(helper.make_node("Relu", [f"{p}_u"], [f"{p}_r"], name=f"{p}_relu"))
        nodes.append(helper.make_node("MatMul", [f"{p}_r", w(f"{p}_down", (4 * width, width))], [f"{p}_d"],
                                      name=f"{p}_down"))
        nodes.append(helper.make_node("Add", [h, f"{p}_d"], [f"h{i + 1}"], name=f"{p}_res"))
        h = f"h{i + 1}"
    graph = helper.make_graph(nodes, "bertish", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", seq])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["N", seq, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def build(path: str, layers: int, width: int, vocab: int) -> None:
    """Write the model to ``path`` (run in a child process: see the module docstring)."""
    model = transformer(layers, width, vocab)
    onnx.save(model, path)
    print(sum(int(np.prod(i.dims)) for i in model.graph.initializer))


def timed(argv: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    return {"seconds": time.perf_counter() - t0, "peak_rss": usage.ru_maxrss * 1024,
            "exit": os.waitstatus_to_exitcode(status), "stderr": err[-300:]}


COMMANDS = {"cluster --bits 4": ["cluster", "{m}", "--bits", "4"],
            "prune --sparsity 0.9": ["prune", "{m}", "--sparsity", "0.9"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--old", default=None, metavar="COMMIT", help="Also run onnxcomp at this commit, interleaved.")
    ap.add_argument("--repeat", type=int, default=1, help="Rounds (medians are reported).")
    ap.add_argument("--build", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        return build(args.build, args.layers, args.width, args.vocab)
    tools = {"new": str(Path(sys.executable).with_name("onnxcomp"))}
    with tempfile.TemporaryDirectory() as t:
        if args.old:
            tools = {"old": str(install_old(args.old, Path(t))), **tools}
        src = Path(t) / "bertish.onnx"
        params = int(subprocess.run([sys.executable, __file__, "--build", str(src), "--layers", str(args.layers),
                                     "--width", str(args.width), "--vocab", str(args.vocab)],
                                    check=True, capture_output=True, text=True).stdout)
        size = src.stat().st_size
        code = f"import onnx; m = onnx.load({str(src)!r}); onnx.save(m, {str(Path(t) / 'copy.onnx')!r})"
        runs: dict = {}
        for _ in range(args.repeat):  # every round runs everything once: the load is shared alike
            runs.setdefault("load+save", []).append(timed([sys.executable, "-c", code]))
            for name, argv in COMMANDS.items():
                for version, tool in tools.items():
                    out = Path(t) / f"out-{version}.onnx"
                    r = timed([tool, *[a.format(m=src) for a in argv], "-o", str(out), "--force", "--quiet"])
                    r["output_ratio"] = out.stat().st_size / size if r["exit"] == 0 else None
                    runs.setdefault((name, version), []).append(r)
        if args.old:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(t) / "old-tree")],
                           capture_output=True)

    def med(key: str, field: str) -> float:
        return float(np.median([r[field] for r in runs[key]]))

    base_s, base_rss = med("load+save", "seconds"), med("load+save", "peak_rss")
    rows = [{"command": name, "code": version, "seconds": med(key, "seconds"), "peak_rss": med(key, "peak_rss"),
             "time_vs_load_save": med(key, "seconds") / base_s, "rss_vs_model": med(key, "peak_rss") / size,
             "output_ratio": runs[key][0]["output_ratio"], "exit": max(r["exit"] for r in runs[key]),
             "stderr": runs[key][0]["stderr"]}
            for key in runs if key != "load+save" for name, version in [key]]
    print(f"{params / 1e6:.1f} M params, {size / 1e6:.1f} MB; onnx load + save {base_s:.2f} s, peak RSS "
          f"{base_rss / 1e6:.0f} MB ({base_rss / size:.2f}x the model); medians of {args.repeat} interleaved round(s)")
    print(table(["command", "code", "seconds", "x load+save", "peak RSS", "x model bytes", "output", "exit"],
                [[r["command"], r["code"] if r["code"] == "new" else f"old {args.old}", f"{r['seconds']:.2f}",
                  f"{r['time_vs_load_save']:.2f}x", f"{r['peak_rss'] / 1e6:.0f} MB", f"{r['rss_vs_model']:.2f}x",
                  "-" if r["output_ratio"] is None else f"{r['output_ratio']:.3f}x", r["exit"]] for r in rows]))
    write_json("datafree", {"params": params, "model_bytes": size, "repeat": args.repeat, "old": args.old,
                            "load_save": {"seconds": base_s, "peak_rss": base_rss}, "rows": rows})


if __name__ == "__main__":
    main()
