"""A model above 2 GB (external data) through `onnxcomp prune`: peak memory against weight bytes.

    python benchmarks/bigmodel.py [--layers 8] [--width 8192] [--sparsity 0.5] [--keep]

Writes a MatMul chain with ``layers`` random float32 weights of width x (width + 256) (8 x 8192 x
8448 = 2.2 GB) straight to external data (one layer in memory at a time), runs
``onnxcomp prune MODEL --sparsity S --num-samples 1 -o OUT`` as a child process, and reports its
wall time, its peak resident memory (ru_maxrss of the child, i.e. VmHWM) and that peak as a
multiple of the weight bytes (the target: at most 3x). Results go to
benchmarks/results/bigmodel.json. Needs ~2.5x the weight bytes of free disk in the temp folder.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def write_chain(folder: Path, layers: int, width: int, seed: int = 0) -> tuple[Path, int]:
    """model.onnx + model.onnx.data in ``folder``; returns (path, weight bytes)."""
    rng = np.random.default_rng(seed)
    data = folder / "model.onnx.data"
    inits, nodes, offset = [], [], 0
    dims = [width + 256 * (i % 2) for i in range(layers + 1)]  # alternate widths: no square-only path
    x = "x"
    with open(data, "wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((dims[i], dims[i + 1]), dtype=np.float32) / np.sqrt(dims[i])).astype(np.float32)
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=list(w.shape))
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(w.nbytes))):
                t.external_data.add(key=key, value=value)
            offset += w.nbytes
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
            x = f"h{i}"
            del w
    nodes.append(helper.make_node("Relu", [x], ["y"], name="out"))
    graph = helper.make_graph(nodes, "bigchain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dims[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dims[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return path, offset


def run_child(argv: list[str]) -> tuple[int, float, int, str]:
    """(exit code, seconds, peak RSS bytes of the child, stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: kilobytes
    return proc.returncode, seconds, peak, (proc.stderr or "") + (proc.stdout or "")[-2000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--tmp", type=Path, default=None, help="work folder (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the model and output files")
    ap.add_argument("--json", type=Path, default=RESULTS / "bigmodel.json")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="onnxcomp-big-", dir=args.tmp))
    t0 = time.perf_counter()
    model, weight_bytes = write_chain(folder, args.layers, args.width)
    print(f"wrote {model} with {weight_bytes / 1e9:.2f} GB of weights in {time.perf_counter() - t0:.0f} s")
    out = folder / "out.onnx"
    argv = [sys.executable, "-c", "import sys; from onnxcomp.cli import main; sys.exit(main(sys.argv[1:]))",
            "prune", str(model), "--sparsity", str(args.sparsity), "--num-samples", "1", "--threads", "2",
            "-o", str(out), "--json"]
    code, seconds, peak, log = run_child(argv)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    result = {"layers": args.layers, "width": args.width, "weight_bytes": weight_bytes,
              "sparsity": args.sparsity, "exit_code": code, "seconds": round(seconds, 1),
              "peak_rss_bytes": peak, "peak_over_weights": round(peak / weight_bytes, 2),
              "files": sizes, "command": " ".join(["onnxcomp", *argv[3:]])}
    print(f"onnxcomp prune: exit {code} in {seconds:.0f} s; peak RSS {peak / 1e9:.2f} GB = "
          f"{peak / weight_bytes:.2f}x the {weight_bytes / 1e9:.2f} GB of weights (target <= 3x)")
    print("files: " + ", ".join(f"{k} {v / 1e9:.3f} GB" for k, v in sorted(sizes.items())))
    if code != 0:
        print(log[-3000:])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    if not args.keep:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return 0 if code == 0 and peak <= 3 * weight_bytes else 1


if __name__ == "__main__":
    sys.exit(main())
