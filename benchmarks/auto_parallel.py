"""The same auto candidates evaluated one after another (``jobs=1``, in this process) and by 2
joblib workers (``jobs=2``), interleaved: wall time per mode and their ratio.

    python benchmarks/auto_parallel.py [--model models/resnet_digits.onnx] [--data models/digits_calib.npz]
                                       [--samples 64] [--reps 2] [--threads 2]

Each repetition runs both modes on the same four recipes (cluster 4 and 3 bits, prune 0.5 +
cluster 4 bits, cluster 3 bits with the sensitivity allocation), alternating which goes first.
``--threads`` is the total: jobs=1 runs with it, each of the 2 workers with half of it. Results
go to benchmarks/results/auto_parallel.json. On a shared machine quote only the ratio of one run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CANDIDATES = [[("cluster", {"bits": 4})], [("cluster", {"bits": 3})],
              [("prune", {"sparsity": 0.5}), ("cluster", {"bits": 4})],
              [("cluster", {"bits": 3, "allocation": "sensitivity"})]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "resnet_digits.onnx"))
    ap.add_argument("--data", default=str(ROOT / "models" / "digits_calib.npz"))
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import onnxcomp as oc
    from onnxcomp.data.calibration import load_data
    from onnxcomp.pipeline.auto import Search

    model = oc.load(args.model)
    data = load_data(args.data, model.proto, num_samples=args.samples)
    times: dict[int, list[float]] = {1: [], 2: []}
    ratios = {}
    for rep in range(args.reps):
        for jobs in ((1, 2) if rep % 2 == 0 else (2, 1)):
            s = Search(model, data, 0.01, threads=args.threads, goal=("size_ratio", 0.0), jobs=jobs)
            t0 = time.perf_counter()
            trials = s.evaluate_many(CANDIDATES)
            times[jobs].append(time.perf_counter() - t0)
            ratios[jobs] = [round(t.size_ratio, 5) for t in trials]
    rows = [{"jobs": j, "wall_s": [round(x, 1) for x in times[j]], "best_s": round(min(times[j]), 1),
             "size_ratios": ratios[j]} for j in (1, 2)]
    speedup = min(times[1]) / min(times[2])
    print(f"{Path(args.model).name}: {len(CANDIDATES)} candidates, {args.samples} samples, threads {args.threads}")
    print(f"{'jobs':>4} {'wall (s) per rep':>24} {'best':>6}")
    for r in rows:
        print(f"{r['jobs']:>4} {', '.join(map(str, r['wall_s'])):>24} {r['best_s']:>6}")
    print(f"jobs=2 is {speedup:.2f}x faster (best of {args.reps}, interleaved)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"model": Path(args.model).name, "samples": args.samples, "threads": args.threads, "rows": rows,
           "speedup": round(speedup, 3)}
    (RESULTS / "auto_parallel.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
