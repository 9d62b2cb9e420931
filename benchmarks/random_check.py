"""Data-free commands: does the random-data check warn when the model is really broken?

    python benchmarks/random_check.py [--corpus /tmp/corpus-cache] [--model KEY=MODEL,DATA[,NAME=DIMS]]...

Runs each data-free command (no --data) on each model, reads the fidelity the command measured
on random inputs and whether it warned, then compares the output with the original on real data
(``onnxcomp compare --data``: the test set of models/, a corpus model's calib.npz, or the DATA of
``--model``, which also takes an --input-shape for models with dynamic dims). A model "lost" when
its real-data headline (top-1 agreement, else cosine) is below 0.9. The table puts both warning
rules side by side: the headline below 0.5 on random data (the rule before), and the rule now
(that, or an output's SQNR below 6 dB). One model pass over 16 random samples and one over the
real data per row. Writes benchmarks/results/random_check.json.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, table, write_json  # noqa: E402

COMMANDS = ["prune --sparsity 0.5", "prune --sparsity 0.8", "prune --nm 2:4", "prune --structured --ratio 0.3",
            "factorize --ratio 0.5", "depthwise", "cluster --bits 4", "compress"]
LOST = 0.9  # below this real-data headline the user should have been warned


def models(args: argparse.Namespace) -> list[tuple[str, Path, Path, list[str]]]:
    out = [(m, MODELS / f"{m}.onnx", MODELS / "digits_test.npz", []) for m in
           ("resnet_digits", "mobilenet_digits", "vit_digits")]
    if args.corpus:
        c = Path(args.corpus)
        out += [("effnet_lite0", c / "effnet_lite0" / "model.onnx", c / "effnet_lite0" / "calib.npz", []),
                ("digits_cnn", c / "digits_cnn" / "model.onnx", c / "digits_cnn" / "calib.npz", [])]
    for spec in args.model:
        key, rest = spec.split("=", 1)
        parts = rest.split(",")
        out.append((key, Path(parts[0]), Path(parts[1]), ["--input-shape", parts[2]] if len(parts) > 2 else []))
    return out


def _worst(fidelity: dict) -> float:
    """The lowest SQNR over the outputs (an unchanged output's infinite SQNR is null in JSON)."""
    return min(math.inf if o["sqnr_db"] is None else o["sqnr_db"] for o in fidelity["outputs"])


def onnxcomp(*argv: str) -> tuple[int, dict | None, str]:
    p = subprocess.run([str(Path(sys.executable).with_name("onnxcomp")), *argv, "--json", "--quiet"],
                       capture_output=True, text=True)
    try:
        return p.returncode, json.loads(p.stdout), p.stderr
    except json.JSONDecodeError:
        return p.returncode, None, p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="a built corpus cache (adds effnet_lite0 and digits_cnn)")
    ap.add_argument("--model", action="append", default=[], metavar="KEY=MODEL,DATA[,NAME=DIMS]")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, path, data, shape in models(args):
            for command in COMMANDS:
                out = Path(tmp) / "out.onnx"
                code, res, err = onnxcomp(*command.split(), str(path), *shape, "-o", str(out), "--force")
                fid = (res or {}).get("write", {}).get("fidelity")
                if code != 0 or fid is None:
                    rows.append({"model": key, "command": command, "exit": code, "error": err.strip()[-200:]})
                    continue
                metric, value = fid["headline"]["metric"], fid["headline"]["value"]
                worst_db = _worst(fid)
                _, real, err = onnxcomp("compare", str(path), str(out), "--data", str(data))
                if real is None:
                    rows.append({"model": key, "command": command, "exit": code, "error": err.strip()[-200:]})
                    continue
                rows.append({"model": key, "command": command, "exit": code, "metric": metric,
                             "random": value, "random_sqnr_db": worst_db, "real": real["headline"]["value"],
                             "real_sqnr_db": _worst(real),
                             "warned_before": value is not None and value < 0.5,
                             "warned": bool(res["write"]["warnings"])})
                print(key, command, rows[-1], file=sys.stderr, flush=True)
    done = [r for r in rows if "real" in r]
    print(table(["model", "command", "metric", "random", "random SQNR", "real", "real SQNR", "warned before",
                 "warned now"],
                [[r["model"], r["command"], r["metric"], f"{r['random']:.3f}", f"{r['random_sqnr_db']:.1f} dB",
                  f"{r['real']:.3f}", f"{r['real_sqnr_db']:.1f} dB", "yes" if r["warned_before"] else "-",
                  "yes" if r["warned"] else "-"] for r in done]))
    lost = [r for r in done if r["real"] < LOST]
    kept = [r for r in done if r["real"] >= LOST]
    summary = {rule: {"lost_caught": sum(r[rule] for r in lost), "lost": len(lost),
                      "false_alarms": sum(r[rule] for r in kept), "kept": len(kept)}
               for rule in ("warned_before", "warned")}
    for rule, s in summary.items():
        print(f"{rule}: warned on {s['lost_caught']} of {s['lost']} outputs that lost (real headline < {LOST}), "
              f"and on {s['false_alarms']} of {s['kept']} that kept it")
    for r in rows:
        if "error" in r:
            print(f"{r['model']} {r['command']}: exit {r['exit']}: {r['error']}")
    write_json("random_check", {"commands": COMMANDS, "lost_below": LOST, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
