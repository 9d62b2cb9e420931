"""How much the fitted calibration samples flatter each calibrated command, against held-out ones.

    python benchmarks/holdout.py [--corpus /tmp/corpus-cache] [--models resnet_digits,...] [--quick]

For each real model and command (prune 0.5, structured 0.3, cluster 4 bits, factorize 0.5, all
with data), the command is fitted to the first three quarters of the model's calibration set;
its output is then compared with the original's on those fitted samples and on the last quarter,
which it never saw (the fidelity headline: top-1 agreement for class scores, else cosine), and
scored on the model's own test set (digits accuracy, or the corpus evaluator). Each command costs
what the command costs (its engine walks over the fitted samples) plus two comparisons. Writes
benchmarks/results/holdout.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import real_models, table, write_json  # noqa: E402

COMMANDS = {
    "prune 0.5": lambda oc, m, d: oc.prune(m, sparsity=0.5, data=d),
    "structured 0.3": lambda oc, m, d: oc.prune(m, structured=True, ratio=0.3, data=d),
    "cluster 4 bits": lambda oc, m, d: oc.cluster(m, 4, data=d),
    "factorize 0.5": lambda oc, m, d: oc.factorize(m, data=d, ratio=0.5),
}


def main() -> None:
    import onnxcomp as oc

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--models", default=None, help="Comma-separated keys (default: all found).")
    ap.add_argument("--commands", default=None, help="Comma-separated, of: " + ", ".join(COMMANDS))
    args = ap.parse_args()
    keys = args.models.split(",") if args.models else None
    commands = args.commands.split(",") if args.commands else list(COMMANDS)
    rows, out = [], []
    for rm in real_models(args.corpus, keys):
        model = oc.load(rm.path)
        with np.load(rm.calib) as z:
            arrays = {k: z[k] for k in z.files if k != "labels"}
        n = len(next(iter(arrays.values())))
        cut = n - n // 4
        fitted = {k: v[:cut] for k, v in arrays.items()}
        held = {k: v[cut:] for k, v in arrays.items()}
        base, _ = rm.measure(model.proto)
        for name in commands:
            t = time.perf_counter()
            result = COMMANDS[name](oc, model, fitted)
            seconds = time.perf_counter() - t
            on_fit = oc.compare(model, result.model, fitted)
            on_held = oc.compare(model, result.model, held)
            metric, fit_value = on_fit.headline
            _, held_value = on_held.headline
            task, everything = rm.measure(result.model.proto)
            rows.append([rm.key, name, f"{metric} {fit_value:.4f}", f"{held_value:.4f}", f"{1 - fit_value:.4f}",
                         f"{1 - held_value:.4f}", f"{rm.metric} {task:.4f} ({base:.4f})", f"{seconds:.0f} s"])
            out.append({"model": rm.key, "command": name, "fitted_samples": cut, "held_out_samples": n - cut,
                        "metric": metric, "fitted": fit_value, "held_out": held_value, "task_metric": rm.metric,
                        "task": task, "task_original": base, "seconds": seconds, "evaluator": everything})
            print(table(["model", "command", "on fitted", "on held-out", "drop fitted", "drop held-out", "test set",
                         "time"], rows[-1:]), flush=True)
    print()
    print(table(["model", "command", "on fitted", "on held-out", "drop fitted", "drop held-out", "test set", "time"],
                rows))
    write_json("holdout", {"rows": out})


if __name__ == "__main__":
    main()
